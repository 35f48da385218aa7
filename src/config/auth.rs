//! The `auth` section: who may call (JWT, API keys, mTLS) and the failed-attempt budgets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, at_least_a_second, https_or_loopback, invalid, nonzero};
use super::rate_limit::Rate;

/// Inbound authentication (who calls) and authorization (read/write scopes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct AuthSettings {
    /// Serve callers without credentials (all scopes). Only with `--sandbox` or
    /// this set; a warning is logged at start.
    pub allow_unauthenticated: bool,
    /// Serve reflection without credentials. Default: only in sandbox mode.
    pub public_reflection: Option<bool>,
    #[garde(dive)]
    pub jwt: JwtSettings,
    #[garde(dive)]
    pub api_keys: ApiKeySettings,
    pub mtls: MtlsSettings,
    #[garde(dive)]
    pub failed_attempts: FailedAttemptSettings,
}

/// Budgets of failed authentications (bad tokens, unknown API keys). Past one,
/// credentials that did not verify recently are refused without a check.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct FailedAttemptSettings {
    /// From one source address.
    #[garde(dive)]
    pub per_source: Rate,
    /// From everywhere, on this replica.
    #[garde(dive)]
    pub total: Rate,
}

impl Default for FailedAttemptSettings {
    fn default() -> Self {
        Self {
            per_source: Rate { rps: 2, burst: 20 },
            total: Rate {
                rps: 50,
                burst: 200,
            },
        }
    }
}

/// JWT bearer tokens checked against a JWKS (e.g. Kubernetes projected
/// service-account tokens: RS256/ES256).
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct JwtSettings {
    pub enabled: bool,
    /// A JWKS file (reloaded when it changes).
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (HTTPS; plain HTTP only on loopback), fetched and cached.
    pub jwks_url: Option<String>,
    /// Extra CA (PEM) trusted for the JWKS URL, e.g. the cluster's CA for
    /// `https://kubernetes.default.svc/openid/v1/jwks`.
    pub jwks_ca_file: Option<PathBuf>,
    /// A bearer token file sent with the JWKS request (read at each fetch), e.g.
    /// the gateway's own service-account token.
    pub jwks_token_file: Option<PathBuf>,
    /// How often the JWKS is fetched (or the file checked) again.
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_least_a_second))]
    pub jwks_refresh: Duration,
    /// Accepted `iss` values. Required when JWT is on, unless `allow_any_issuer`.
    pub issuers: Vec<String>,
    /// Accepted `aud` values. Required when JWT is on, unless `allow_any_audience`:
    /// without it, any token the issuer minted for another service (say, any
    /// service-account token of the cluster) would be accepted.
    pub audiences: Vec<String>,
    /// Accept tokens of any issuer (no `iss` check). A warning is logged at start.
    pub allow_any_issuer: bool,
    /// Accept tokens minted for any audience (no `aud` check). A warning is logged
    /// at start.
    pub allow_any_audience: bool,
    /// After a token names a key (`kid`) not in the set, the JWKS is fetched again
    /// at once, but not sooner than this after the previous such fetch ended.
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_least_a_second))]
    pub unknown_kid_refresh_interval: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Scopes given to every valid token that carries no `scope`/`scp` claim.
    pub default_scopes: Vec<String>,
    /// Scopes by caller (e.g. `system:serviceaccount:billing:billing-api`);
    /// they replace the token's own and the default. A caller is its `sub`
    /// when one issuer is accepted, else `<iss> <sub>` (callers of different
    /// issuers are never one caller).
    pub subject_scopes: BTreeMap<String, Vec<String>>,
}

impl JwtSettings {
    /// Whether a JWT caller is named by its issuer and subject (`<iss> <sub>`)
    /// rather than its subject alone: when more than one issuer is accepted.
    pub fn names_issuer(&self) -> bool {
        self.allow_any_issuer || self.issuers.len() > 1
    }
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_token_file: None,
            jwks_refresh: Duration::from_secs(300),
            issuers: Vec::new(),
            audiences: Vec::new(),
            allow_any_issuer: false,
            allow_any_audience: false,
            unknown_kid_refresh_interval: Duration::from_secs(30),
            leeway: Duration::from_secs(30),
            default_scopes: Vec::new(),
            subject_scopes: BTreeMap::new(),
        }
    }
}

/// Static API keys, stored as SHA-256 hashes in a TOML file.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct ApiKeySettings {
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub reload_interval: Duration,
    /// When the file becomes unreadable or invalid, how long the last good keys
    /// stay in force; then every API key is refused until the file is fixed.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
}

impl Default for ApiKeySettings {
    fn default() -> Self {
        Self {
            file: None,
            reload_interval: Duration::from_secs(10),
            max_stale: Duration::from_secs(60),
        }
    }
}

/// Scopes of mTLS callers, by the identity in their certificate's SAN (a URI such
/// as a SPIFFE id, else the first DNS name).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtlsSettings {
    pub default_scopes: Vec<String>,
    pub identities: BTreeMap<String, Vec<String>>,
}

impl AuthSettings {
    /// The scopes named, and what JWT auth needs when it is on.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let scopes = self
            .jwt
            .default_scopes
            .iter()
            .chain(self.jwt.subject_scopes.values().flatten())
            .chain(self.mtls.default_scopes.iter())
            .chain(self.mtls.identities.values().flatten());
        for s in scopes {
            if crate::scopes::Scopes::parse(s).is_none() {
                return Err(invalid(
                    "auth",
                    format!("unknown scope `{s}` (known: attachments.read, attachments.write)"),
                ));
            }
        }
        if self.jwt.enabled {
            self.jwt.validate()?;
        }
        Ok(())
    }
}

impl JwtSettings {
    /// Where the keys come from, and whose tokens are accepted.
    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) => {
                return Err(invalid(
                    "auth.jwt.jwks_file",
                    "JWT auth needs auth.jwt.jwks_file or auth.jwt.jwks_url",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth.jwt.jwks_url",
                    "set auth.jwt.jwks_file or auth.jwt.jwks_url, not both",
                ));
            }
            (None, Some(url)) => {
                https_or_loopback("auth.jwt.jwks_url", url, None)?;
            }
            (Some(_), None) => {}
        }
        if self.issuers.is_empty() && !self.allow_any_issuer {
            return Err(invalid(
                "auth.jwt.issuers",
                "JWT auth needs the accepted issuers (e.g. the cluster's service-account issuer); set auth.jwt.allow_any_issuer = true to accept any",
            ));
        }
        if self.audiences.is_empty() && !self.allow_any_audience {
            return Err(invalid(
                "auth.jwt.audiences",
                "JWT auth needs the accepted audiences (callers project tokens for this gateway's audience); set auth.jwt.allow_any_audience = true to accept tokens minted for any service",
            ));
        }
        if self.names_issuer()
            && let Some(k) = self.subject_scopes.keys().find(|k| !k.contains(' '))
        {
            return Err(invalid(
                "auth.jwt.subject_scopes",
                format!(
                    "with more than one issuer accepted, a JWT caller is `<iss> <sub>` (one issuer's subject is not another's): `{k}` names no issuer"
                ),
            ));
        }
        Ok(())
    }
}
