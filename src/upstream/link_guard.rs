//! Where the gateway agrees to fetch a download link from. The link comes from the
//! upstream's answer, so it is outside data: it could point at a cloud metadata
//! address or a service inside the cluster, whose answer would then stream back to
//! any caller with read scope. A link must be https (unless allowed), its host
//! must be in the allowlist when there is one, and every address it reaches must be
//! public: checked on the resolved addresses at connect time (so DNS cannot answer
//! one thing to a check and another to the connection) and again on every
//! redirect hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a link (or a hop of it) is refused. Names the rule and the host, never the
/// link (its query is a signature).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the download link is refused: {rule} ({host})")]
pub struct LinkRefused {
    pub rule: &'static str,
    pub host: String,
}

/// The rules a download link is held to.
#[derive(Debug, Clone, Default)]
pub struct LinkPolicy {
    /// Hosts allowed, exactly or as `*.suffix`; empty: any public host.
    pub hosts: Vec<String>,
    /// Loopback, private, link-local and other non-public addresses are allowed
    /// (the sandbox and tests, whose storage is on loopback).
    pub allow_private: bool,
    /// Plain http links are allowed.
    pub allow_http: bool,
}

impl LinkPolicy {
    /// Checks a link (or a redirect's target) before it is requested.
    pub fn check_url(&self, url: &Url) -> Result<(), LinkRefused> {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let refuse = |rule| {
            Err(LinkRefused {
                rule,
                host: host.clone(),
            })
        };
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return refuse("plain http links are refused (upstream.allow_http_downloads)");
            }
            _ => return refuse("not an http(s) link"),
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|p| host_matches(p, &host)) {
            return refuse("the host is not in upstream.download_hosts");
        }
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if let Some(ip) = literal
            && !self.address_allowed(ip)
        {
            return refuse("the address is not public (upstream.allow_private_download_addresses)");
        }
        Ok(())
    }

    /// Whether the gateway may connect to `ip` for a download.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip)
    }
}

/// `pattern` is a host name, or `*.suffix` for every name under `suffix`.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => host == pattern,
    }
}

/// Whether an address is a public unicast one: not loopback, private, link-local
/// (cloud metadata), shared (CGNAT), multicast, reserved or unspecified, also when
/// wrapped in IPv6 (mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_multicast()
        || a.is_documentation()
        || o0 == 0
        || (o0 == 100 && (64..128).contains(&o1)) // shared address space (CGNAT)
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
        || (o0 == 198 && (18..20).contains(&o1)) // benchmarking
        || o0 >= 240) // reserved
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = a.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

/// Resolves a link's host and keeps only the addresses the policy allows; none
/// left is an error naming the rule.
pub struct GuardedResolver {
    policy: Arc<LinkPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<LinkPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.address_allowed(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(LinkRefused {
                    rule: "the host resolves to no public address (upstream.allow_private_download_addresses)",
                    host,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Follows at most 5 redirects, each held to the policy.
pub fn redirect_policy(policy: Arc<LinkPolicy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            let host = attempt.url().host_str().unwrap_or_default().to_string();
            return attempt.error(LinkRefused {
                rule: "more than 5 redirects",
                host,
            });
        }
        match policy.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    })
}

/// The refusal inside an error's chain, if the policy made it.
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<LinkRefused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<LinkRefused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public}");
        }
    }

    #[test]
    fn links_are_checked_for_scheme_host_and_literal_address() {
        let p = LinkPolicy {
            hosts: vec!["*.blob.example.net".into(), "files.example.org".into()],
            allow_private: false,
            allow_http: false,
        };
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(
            p.check_url(&url("https://a.blob.example.net/x?sig=1"))
                .is_ok()
        );
        assert!(p.check_url(&url("https://files.example.org/x")).is_ok());
        for bad in [
            "http://a.blob.example.net/x",
            "https://blob.example.net/x",
            "https://evil.example.com/x",
            "https://a.blob.example.net.evil.com/x",
            "ftp://files.example.org/x",
        ] {
            assert!(p.check_url(&url(bad)).is_err(), "{bad}");
        }
        let open = LinkPolicy::default();
        assert!(
            open.check_url(&url("https://169.254.169.254/latest"))
                .is_err()
        );
        assert!(open.check_url(&url("https://[::1]/x")).is_err());
        assert!(open.check_url(&url("https://93.184.216.34/x")).is_ok());
        let sandbox = LinkPolicy {
            allow_private: true,
            allow_http: true,
            ..LinkPolicy::default()
        };
        assert!(
            sandbox
                .check_url(&url("http://127.0.0.1:9/files/x"))
                .is_ok()
        );
    }
}
