//! What the sections' checks share: the error naming a setting, the duration
//! checks of the fields, and the one rule for the URLs the gateway calls.

use std::time::Duration;

/// A setting that cannot be used, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid settings: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A file a setting names cannot be read.
    #[error("invalid setting `{setting}`: {source}")]
    File {
        setting: &'static str,
        #[source]
        source: crate::secret::SecretFileError,
    },
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: std::borrow::Cow<'static, str>,
        reason: String,
    },
}

pub(super) fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        reason: reason.into(),
    }
}

/// A duration that must be greater than zero.
pub(super) fn nonzero(d: &Duration, _: &()) -> garde::Result {
    if d.is_zero() {
        return Err(garde::Error::new("must be greater than 0"));
    }
    Ok(())
}

/// A duration of at most one hour.
pub(super) fn at_most_an_hour(d: &Duration, _: &()) -> garde::Result {
    if *d > Duration::from_secs(3600) {
        return Err(garde::Error::new("must be at most 1h"));
    }
    Ok(())
}

/// A duration of at least one second.
pub(super) fn at_least_a_second(d: &Duration, _: &()) -> garde::Result {
    if *d < Duration::from_secs(1) {
        return Err(garde::Error::new("must be at least 1s"));
    }
    Ok(())
}

/// The one rule for the URLs the gateway calls (the upstream's base and token
/// URLs, the JWKS, the webhook forward target): `https://`, or plain `http://`
/// to a loopback IP address (`127.0.0.0/8`, `[::1]`) or `localhost`, where
/// nothing travels beyond this host. `plain_http` names the setting that
/// allows plain http elsewhere, when the section has one, and whether it is set.
pub(super) fn https_or_loopback(
    setting: &'static str,
    value: &str,
    plain_http: Option<(&'static str, bool)>,
) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(value).map_err(|e| invalid(setting, e.to_string()))?;
    let loopback = url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback || plain_http.is_some_and(|(_, allowed)| allowed) => Ok(url),
        "http" => {
            let mut reason = String::from(
                "plain http to a host other than loopback: what the gateway sends there (credentials, tokens, notifications) would travel in clear; use https",
            );
            if let Some((allow, _)) = plain_http {
                reason.push_str(&format!(", or set {allow} = true"));
            }
            Err(invalid(setting, reason))
        }
        _ => Err(invalid(
            setting,
            "must be an https:// URL (http:// only to a loopback address or localhost)",
        )),
    }
}
