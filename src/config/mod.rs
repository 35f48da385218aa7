//! One typed settings struct, layered: defaults < TOML file (`--config`) < environment
//! (`ATTACHMENT_GATEWAY_`, nested keys joined by `__`) < command-line flags.
//!
//! Invalid settings fail at start with a message naming the setting.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The prefix of every environment variable the gateway reads.
pub const ENV_PREFIX: &str = "ATTACHMENT_GATEWAY_";

/// Settings read from the environment as plain strings, never parsed: credentials
/// and identifiers whose every character counts (keys as figment names them).
const VERBATIM_ENV: &[&str] = &["upstream__client_id", "upstream__client_secret"];

mod auth;
mod checks;
mod events;
mod limits;
mod log;
mod rate_limit;
mod sandbox;
mod server;
mod shared_state;
mod telemetry;
mod tls;
mod upstream;
mod webhooks;

pub use self::auth::{
    ApiKeySettings, AuthSettings, FailedAttemptSettings, JwtSettings, MtlsSettings,
};
pub use self::checks::ConfigError;
use self::checks::invalid;
pub use self::events::EventSettings;
pub use self::limits::{LimitSettings, MAX_UPLOAD_LIMIT};
pub use self::log::{LogFormat, LogSettings};
pub use self::rate_limit::{Rate, RateLimitSettings};
pub use self::sandbox::SandboxSettings;
pub use self::server::{MAX_WORKER_THREADS, ServerSettings};
pub use self::shared_state::SharedStateSettings;
pub use self::telemetry::TelemetrySettings;
pub use self::tls::TlsSettings;
pub use self::upstream::UpstreamSettings;
pub use self::webhooks::{SignatureAlgorithm, SignedPart, WebhookSettings, WebhookVerify};

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct Settings {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    #[garde(dive)]
    pub upstream: UpstreamSettings,
    #[garde(dive)]
    pub limits: LimitSettings,
    #[garde(dive)]
    pub server: ServerSettings,
    pub tls: TlsSettings,
    #[garde(dive)]
    pub auth: AuthSettings,
    #[garde(dive)]
    pub rate_limit: RateLimitSettings,
    pub telemetry: TelemetrySettings,
    pub log: LogSettings,
    pub sandbox: SandboxSettings,
    #[garde(dive)]
    pub events: EventSettings,
    #[garde(dive)]
    pub webhooks: WebhookSettings,
    #[garde(dive)]
    pub shared_state: SharedStateSettings,
    /// Which settings were given explicitly (file, environment or flag) rather
    /// than left at their defaults. Not a setting itself.
    #[serde(skip)]
    pub explicit: Explicit,
}

/// Settings whose handling depends on whether the operator set them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Explicit {
    /// `telemetry.admin_listen`: with `--sandbox`, a default address that is
    /// taken gives way to a free port; an explicit one must be bound.
    pub admin_listen: bool,
    /// Any `webhooks.*` setting other than `listen`: with `--sandbox`, the
    /// emulator's certificate is trusted only when none was given.
    pub webhooks_verification: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            upstream: UpstreamSettings::default(),
            limits: LimitSettings::default(),
            server: ServerSettings::default(),
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            rate_limit: RateLimitSettings::default(),
            telemetry: TelemetrySettings::default(),
            log: LogSettings::default(),
            sandbox: SandboxSettings::default(),
            events: EventSettings::default(),
            webhooks: WebhookSettings::default(),
            shared_state: SharedStateSettings::default(),
            explicit: Explicit::default(),
        }
    }
}

/// Command-line values that override every other layer, when given.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_listen: Option<SocketAddr>,
    pub sandbox: bool,
}

impl Settings {
    /// Loads the layers in order, reads the secret file, and validates the result.
    pub fn load(config_file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        // Everything the operator gave, without the defaults: it tells which
        // settings were set explicitly.
        let mut given = Figment::new();
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            given = given.merge(Toml::file(path));
        }
        // Strings taken verbatim from the environment: figment would read `0042` as
        // the number 42 and `{a=1}` as a table (and a type error would print the
        // value, a secret among them).
        given = given.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(VERBATIM_ENV));
        for key in VERBATIM_ENV {
            let var = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
            if let Some(value) = std::env::var_os(&var) {
                let Some(value) = value.to_str().map(str::to_string) else {
                    return Err(invalid("environment", format!("{var} is not valid UTF-8")));
                };
                given = given.merge(Serialized::default(&key.replace("__", "."), value));
            }
        }
        if let Some(listen) = flags.listen {
            given = given.merge(Serialized::default("listen", listen));
        }
        if let Some(url) = &flags.upstream_base_url {
            given = given.merge(Serialized::default("upstream.base_url", url));
        }
        if let Some(admin) = flags.admin_listen {
            given = given.merge(Serialized::default("telemetry.admin_listen", admin));
        }
        if let Some(addr) = flags.webhook_listen {
            given = given.merge(Serialized::default("webhooks.listen", addr));
        }
        if let Some(format) = flags.log_format {
            given = given.merge(Serialized::default("log.format", format));
        }
        if flags.sandbox {
            given = given.merge(Serialized::default("sandbox.enabled", true));
        }
        let explicit = Explicit {
            admin_listen: given.contains("telemetry.admin_listen"),
            webhooks_verification: [
                "webhooks.verify",
                "webhooks.certificate_file",
                "webhooks.shared_secret_file",
            ]
            .iter()
            .any(|k| given.contains(k)),
        };
        let fig = Figment::from(Serialized::defaults(Settings::default())).merge(given);
        let mut settings: Settings = fig.extract().map_err(Box::new)?;
        settings.explicit = explicit;
        settings.resolve_secret_file()?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_secret_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.upstream.client_secret_file else {
            return Ok(());
        };
        if self.sandbox.enabled {
            // The sandbox brings its own credentials; the file is not needed.
            return Ok(());
        }
        if !self.upstream.client_secret.is_empty() {
            return Err(invalid(
                "upstream.client_secret_file",
                "set either upstream.client_secret or upstream.client_secret_file, not both",
            ));
        }
        self.upstream.client_secret =
            Secret::from_file(path).map_err(|source| ConfigError::File {
                setting: "upstream.client_secret_file",
                source,
            })?;
        Ok(())
    }

    /// Checks every setting that could make the gateway misbehave later: the
    /// ranges declared on the fields, each section's own rules, then the rules
    /// that tie sections together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(report) = garde::Validate::validate(self) {
            let (path, error) = report
                .iter()
                .next()
                .map(|(p, e)| (p.to_string(), e.to_string()))
                .unwrap_or_default();
            return Err(ConfigError::Invalid {
                setting: path.into(),
                reason: error,
            });
        }
        self.upstream.validate()?;
        if !self.sandbox.enabled {
            self.validate_credentials()?;
        }
        self.server.validate()?;
        self.sandbox.validate()?;
        self.auth.validate()?;
        let any_mode =
            self.auth.jwt.enabled || self.auth.api_keys.file.is_some() || self.tls.mtls();
        if !any_mode && !self.auth.allow_unauthenticated && !self.sandbox.enabled {
            return Err(invalid(
                "auth",
                "no authentication is configured: enable auth.jwt, auth.api_keys.file or mTLS (tls.client_ca_file), or set auth.allow_unauthenticated = true",
            ));
        }
        self.rate_limit.validate()?;
        if self.rate_limit.max_inflight_upload_bytes < self.limits.max_chunk_bytes {
            return Err(invalid(
                "rate_limit.max_inflight_upload_bytes",
                "must be at least limits.max_chunk_bytes",
            ));
        }
        self.tls.validate()?;
        self.webhooks.validate()?;
        self.validate_webhook_verification()?;
        self.shared_state.validate()?;
        self.events.validate()?;
        self.log.validate()
    }

    /// The upstream client id and secret, unless the sandbox brings its own.
    fn validate_credentials(&self) -> Result<(), ConfigError> {
        if self.upstream.client_id.trim().is_empty() {
            return Err(invalid(
                "upstream.client_id",
                format!("required (set {ENV_PREFIX}UPSTREAM__CLIENT_ID), or run with --sandbox"),
            ));
        }
        if self.upstream.client_secret.is_empty() {
            return Err(invalid(
                "upstream.client_secret",
                format!(
                    "required (set {ENV_PREFIX}UPSTREAM__CLIENT_SECRET_FILE or {ENV_PREFIX}UPSTREAM__CLIENT_SECRET), or run with --sandbox"
                ),
            ));
        }
        Ok(())
    }

    /// How webhooks are verified, once they are on (the sandbox trusts its own
    /// emulator unless told how to verify).
    fn validate_webhook_verification(&self) -> Result<(), ConfigError> {
        let w = &self.webhooks;
        if w.listen.is_none() && !self.sandbox.enabled {
            return Ok(());
        }
        let sandbox_trust = self.sandbox.enabled && !self.explicit.webhooks_verification;
        match w.verify {
            WebhookVerify::SignedToken if w.certificate_file.is_none() && !sandbox_trust => {
                Err(invalid(
                    "webhooks.certificate_file",
                    "webhooks.verify = \"signed-token\" needs CorrigoPro's certificate (PEM), downloaded from the integration's settings page",
                ))
            }
            WebhookVerify::SharedSecret if w.shared_secret_file.is_none() => Err(invalid(
                "webhooks.shared_secret_file",
                "webhooks.verify = \"shared-secret\" needs the file that holds the secret",
            )),
            _ => Ok(()),
        }
    }

    /// Whether calls without credentials are served (and given every scope).
    pub fn unauthenticated_allowed(&self) -> bool {
        self.auth.allow_unauthenticated
            || (self.sandbox.enabled
                && !self.auth.jwt.enabled
                && self.auth.api_keys.file.is_none()
                && !self.tls.mtls())
    }

    /// Whether reflection is served without credentials.
    pub fn reflection_public(&self) -> bool {
        self.auth.public_reflection.unwrap_or(self.sandbox.enabled)
    }

    /// The TOML the settings amount to, secrets redacted (`--check-config` prints it):
    /// secret values, and any credentials a URL carries.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        shown.upstream.base_url = redact_url(&shown.upstream.base_url);
        shown.upstream.token_url = redact_url(&shown.upstream.token_url);
        if let Some(u) = shown.shared_state.redis_url.as_mut() {
            *u = redact_url(u);
        }
        if let Some(u) = &mut shown.auth.jwt.jwks_url {
            *u = redact_url(u);
        }
        if let Some(u) = &mut shown.webhooks.forward_url {
            *u = redact_url(u);
        }
        toml::to_string_pretty(&shown)
    }
}

/// A URL fit for a log line or `--check-config`: user and password replaced, query
/// and fragment dropped (they may carry credentials too).
pub fn redact_url(value: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(value) else {
        return "<not a valid URL>".into();
    };
    let had_credentials = !url.username().is_empty() || url.password().is_some();
    if had_credentials {
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    url.set_query(None);
    url.set_fragment(None);
    let text = url.to_string();
    match (had_credentials, text.split_once("://")) {
        (true, Some((scheme, rest))) => format!("{scheme}://<redacted>@{rest}"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_credentials_unless_sandbox() {
        let s = Settings::default();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("upstream.client_id"), "{err}");
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_setting() {
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.upstream.base_url = "ftp://x".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("upstream.base_url")
        );
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.limits.max_upload_bytes = 0;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_upload_bytes")
        );
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.server.worker_threads = 100_000;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("server.worker_threads")
        );
        s.server.worker_threads = 2;
        s.validate().unwrap();
    }

    #[test]
    fn one_url_rule_for_every_url_the_gateway_calls() {
        let base = || {
            let mut s = Settings::default();
            s.sandbox.enabled = true;
            s
        };
        let jwks = |url: &str| {
            let mut s = base();
            s.auth.jwt.enabled = true;
            s.auth.jwt.jwks_url = Some(url.into());
            s.auth.jwt.allow_any_issuer = true;
            s.auth.jwt.allow_any_audience = true;
            s
        };
        let forward = |url: &str| {
            let mut s = base();
            s.webhooks.forward_url = Some(url.into());
            s
        };
        let token = |url: &str| {
            let mut s = base();
            s.upstream.token_url = url.into();
            s
        };
        for make in [&jwks as &dyn Fn(&str) -> Settings, &forward, &token] {
            for ok in [
                "https://example.test/x",
                "http://127.0.0.1:8080/x",
                "http://127.0.0.2/x",
                "http://[::1]:8080/x",
                "http://LOCALHOST/x",
            ] {
                make(ok).validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
            }
            for bad in [
                "http://example.test/x",
                "http://10.0.0.1/x",
                "ftp://127.0.0.1/x",
                "not a url",
            ] {
                assert!(make(bad).validate().is_err(), "{bad}");
            }
        }
    }
}
