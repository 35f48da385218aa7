//! Who is calling, and what they may do. Credentials come from `authorization:
//! Bearer …` (a JWT, or an API key) or `x-api-key`, or from the client certificate
//! of an mTLS connection. Scopes: `attachments.read` (List, GetDownloadUrl,
//! Download) and `attachments.write` (Upload, Update, Delete).

mod api_keys;
pub(crate) mod cache;
mod jwt;
mod mtls;
pub(crate) mod throttle;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

pub use self::api_keys::{ApiKeyStore, hash_key};
use self::cache::CredentialCache;
pub use self::jwt::JwtVerifier;
pub use self::mtls::identity_from_cert;
use self::throttle::FailureThrottle;
use crate::config::{AuthSettings, MtlsSettings};
use crate::methods::{self, Access};
use crate::metrics::CheckLabel;
pub use crate::scopes::Scopes;

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    Mtls,
    /// No credentials, where the settings allow it.
    Anonymous,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
            Self::Mtls => "mtls",
            Self::Anonymous => "anonymous",
        }
    }
}

/// The authenticated caller, put into request extensions for later layers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: Arc<str>,
    pub method: AuthMethod,
    pub scopes: Scopes,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.method.as_str(), self.id)
    }
}

/// What a gRPC method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// Health: never behind auth (probes carry no credentials).
    Nothing,
    /// Reflection and unknown methods: any authenticated caller.
    Authenticated,
    Read,
    Write,
}

impl Needed {
    /// Whether `scopes` are enough for this requirement.
    pub fn allowed_by(self, scopes: Scopes) -> bool {
        match self {
            Self::Read => scopes.read,
            Self::Write => scopes.write,
            Self::Authenticated | Self::Nothing => true,
        }
    }

    pub fn scope_name(self) -> &'static str {
        match self {
            Self::Read => Scopes::READ,
            Self::Write => Scopes::WRITE,
            Self::Authenticated | Self::Nothing => "",
        }
    }
}

/// The requirement of a request path `/package.Service/Method`.
pub fn needed_for(path: &str, public_reflection: bool) -> Needed {
    match methods::method(path).access {
        Access::Open => Needed::Nothing,
        Access::Reflection if public_reflection => Needed::Nothing,
        Access::Reflection | Access::Unknown => Needed::Authenticated,
        Access::Read => Needed::Read,
        Access::Write => Needed::Write,
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `authorization: Bearer <token>` or `x-api-key: <key>`")]
    Missing,
    #[error("the bearer token is not valid: {0}")]
    InvalidToken(String),
    #[error("the API key is not known")]
    UnknownKey,
    #[error(
        "API keys cannot be checked: the gateway's API key file is broken; its operators must fix it"
    )]
    KeysUnavailable,
    #[error("the client certificate names no usable identity")]
    NoCertIdentity,
    #[error("caller `{caller}` lacks the scope `{needed}`")]
    MissingScope {
        caller: String,
        needed: &'static str,
    },
    /// Too many failed authentications: the credential was not checked.
    #[error("{0}")]
    Throttled(crate::limits::Refusal),
}

impl AuthError {
    /// The `ErrorInfo.reason` for this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "MISSING_CREDENTIALS",
            Self::InvalidToken(_) => "INVALID_TOKEN",
            Self::UnknownKey => "UNKNOWN_API_KEY",
            Self::KeysUnavailable => "API_KEYS_UNAVAILABLE",
            Self::NoCertIdentity => "NO_CERTIFICATE_IDENTITY",
            Self::MissingScope { .. } => "MISSING_SCOPE",
            Self::Throttled(_) => "TOO_MANY_FAILED_ATTEMPTS",
        }
    }
}

/// Why authentication cannot start: the setting at fault, and why.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting cannot work (checked here too: `serve` may be given settings
    /// that were never validated).
    #[error("{setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: &'static str,
    },
    /// A file a setting names cannot be read.
    #[error("{setting}: cannot read {}: {source}", path.display())]
    Read {
        setting: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file a setting names holds nothing usable (the JWKS, the API keys).
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    /// The JWKS client cannot be built (its extra CA, say).
    #[error("{setting}: {source}")]
    Client {
        setting: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// Checks credentials with whichever modes the settings enable.
pub struct Authenticator {
    jwt: Option<Arc<JwtVerifier>>,
    keys: Option<Arc<ApiKeyStore>>,
    cache: CredentialCache,
    throttle: FailureThrottle,
    metrics: Arc<crate::metrics::Metrics>,
    mtls: Option<MtlsSettings>,
    anonymous: bool,
    public_reflection: bool,
}

/// What authentication is asked to do: its own settings section, and what the
/// rest of the settings decide for it.
pub struct AuthConfig<'a> {
    pub settings: &'a AuthSettings,
    /// Client certificates are required (mTLS), so they identify callers.
    pub mtls: bool,
    /// Callers without credentials are served, with every scope.
    pub anonymous: bool,
    /// Reflection is served without credentials.
    pub public_reflection: bool,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Authenticator {
    pub async fn start(c: AuthConfig<'_>) -> Result<Self, SetupError> {
        let s = c.settings;
        let jwt = if s.jwt.enabled {
            Some(JwtVerifier::start(&s.jwt).await?)
        } else {
            None
        };
        let keys = match &s.api_keys.file {
            Some(path) => Some(ApiKeyStore::start(
                path.clone(),
                s.api_keys.reload_interval,
                s.api_keys.max_stale,
                Arc::clone(&c.metrics),
            )?),
            None => None,
        };
        if c.anonymous {
            tracing::warn!("authentication is off: every caller may read and write attachments");
        }
        Ok(Self {
            jwt,
            keys,
            cache: CredentialCache::default(),
            metrics: Arc::clone(&c.metrics),
            throttle: FailureThrottle::new(s.failed_attempts.per_source, s.failed_attempts.total),
            mtls: c.mtls.then(|| s.mtls.clone()),
            anonymous: c.anonymous,
            public_reflection: c.public_reflection,
        })
    }

    /// Starts reloading what may change under a running gateway: the JWKS,
    /// the API key file. Until then the keys loaded at start are in force.
    pub fn keep_fresh(&self) {
        if let Some(jwt) = &self.jwt {
            jwt.keep_fresh();
        }
        if let Some(keys) = &self.keys {
            keys.keep_fresh();
        }
    }

    pub fn public_reflection(&self) -> bool {
        self.public_reflection
    }

    /// The caller of a request, from its headers and (for mTLS) its peer
    /// certificate; `peer` is the address the request came from.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer_cert: Option<&[u8]>,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        if let Some(credential) = credential(headers) {
            if self.jwt.is_some() || self.keys.is_some() {
                return self.check_credential(credential, peer).await;
            }
            if !self.anonymous && self.mtls.is_none() {
                return Err(AuthError::InvalidToken("no token mode is enabled".into()));
            }
        }
        if let (Some(m), Some(cert)) = (&self.mtls, peer_cert) {
            let id = identity_from_cert(cert).ok_or(AuthError::NoCertIdentity)?;
            let scopes = match m.identities.get(&id) {
                Some(names) => Scopes::from_names(names.iter().map(String::as_str)),
                None => Scopes::from_names(m.default_scopes.iter().map(String::as_str)),
            };
            return Ok(Caller {
                id: id.into(),
                method: AuthMethod::Mtls,
                scopes,
            });
        }
        if self.anonymous {
            return Ok(Caller {
                id: "anonymous".into(),
                method: AuthMethod::Anonymous,
                scopes: Scopes::all(),
            });
        }
        Err(AuthError::Missing)
    }
}

/// The reason a JWT names a key not in the set.
pub(crate) const UNKNOWN_KEY: &str = "signed by an unknown key";

impl Authenticator {
    fn count(&self, label: CheckLabel) {
        self.metrics.credential_checks.get_or_create(&label).inc();
    }

    /// A version of the key sets: cached outcomes from another version are stale.
    fn generation(&self) -> u64 {
        let j = self.jwt.as_ref().map_or(0, |j| j.generation());
        let k = self.keys.as_ref().map_or(0, |k| k.generation());
        j.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k
    }

    /// A bearer token or API key: from the cache when it was checked recently,
    /// else checked (unless failures are throttled), the outcome remembered.
    async fn check_credential(
        &self,
        credential: &str,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        let key = cache::digest(credential);
        let generation = self.generation();
        if let Some(c) = self.cache.verified(&key, generation) {
            self.count(CheckLabel::cached("verified"));
            return Ok(c);
        }
        if let Some(e) = self.cache.refused(&key, generation) {
            self.count(CheckLabel::cached("refused"));
            self.throttle.failed(peer);
            return Err(e);
        }
        self.throttle.check(peer).map_err(AuthError::Throttled)?;
        let looks_like_jwt = credential.bytes().filter(|b| *b == b'.').count() == 2;
        let checked = match (&self.jwt, &self.keys) {
            (Some(jwt), _) if looks_like_jwt => jwt.verify(credential).await,
            (_, Some(keys)) => keys.lookup(credential).map(|c| (c, cache::VERIFIED_FOR)),
            (Some(jwt), None) => jwt.verify(credential).await,
            (None, None) => Err(AuthError::InvalidToken("no token mode is enabled".into())),
        };
        self.count(CheckLabel::checked(if checked.is_ok() {
            "verified"
        } else {
            "refused"
        }));
        // An outcome is remembered only if the key sets did not change during the
        // check: it would belong to neither.
        let remember = self.generation() == generation;
        match checked {
            Ok((caller, valid_for)) => {
                if remember {
                    self.cache
                        .remember_verified(key, &caller, valid_for, generation);
                }
                Ok(caller)
            }
            Err(e) => {
                // A key file past max_stale is not the caller's failure.
                if e != AuthError::KeysUnavailable {
                    // A token signed by a key not (yet) in the set may verify
                    // once the set rotates: it is checked again each time (the
                    // unknown-kid fetch has its own bound).
                    let lasting = !matches!(&e, AuthError::InvalidToken(why) if why == UNKNOWN_KEY);
                    if remember && lasting {
                        self.cache.remember_refused(key, &e, generation);
                    }
                    self.throttle.failed(peer);
                }
                Err(e)
            }
        }
    }
}

/// The credential a request carries: `authorization: Bearer X` or `x-api-key: X`.
fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some((scheme, rest)) = v.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
            && !rest.trim().is_empty()
        {
            return Some(rest.trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_scopes() {
        let svc = "/corrigopro.attachments.v1.AttachmentService/";
        assert_eq!(
            needed_for(&format!("{svc}ListAttachments"), false),
            Needed::Read
        );
        assert_eq!(
            needed_for(&format!("{svc}DownloadAttachment"), false),
            Needed::Read
        );
        assert_eq!(
            needed_for(&format!("{svc}UploadAttachment"), false),
            Needed::Write
        );
        assert_eq!(
            needed_for(&format!("{svc}DeleteAttachment"), false),
            Needed::Write
        );
        assert_eq!(
            needed_for(&format!("{svc}Nope"), false),
            Needed::Authenticated
        );
        assert_eq!(
            needed_for("/grpc.health.v1.Health/Check", false),
            Needed::Nothing
        );
        assert_eq!(
            needed_for(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                false
            ),
            Needed::Authenticated
        );
        assert_eq!(
            needed_for(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                true
            ),
            Needed::Nothing
        );
    }

    #[test]
    fn credentials_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(credential(&h), Some("k1"));
        h.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(credential(&h), Some("abc.def.ghi"));
        h.insert("authorization", "Basic Zm9v".parse().unwrap());
        assert_eq!(credential(&h), Some("k1"));
    }
}
