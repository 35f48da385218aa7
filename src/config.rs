//! One typed settings struct, layered: defaults < TOML file (`--config`) < environment
//! (`ATTACHMENT_GATEWAY_`, nested keys joined by `__`) < command-line flags.
//!
//! Invalid settings fail at start with a message naming the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::DEFAULT_MAX_UPLOAD_BYTES;
use crate::secret::Secret;

/// The prefix of every environment variable the gateway reads.
pub const ENV_PREFIX: &str = "ATTACHMENT_GATEWAY_";

/// The largest upload limit the gateway accepts as a setting (the upstream's is 20 MB).
pub const MAX_UPLOAD_LIMIT: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    pub upstream: UpstreamSettings,
    pub limits: LimitSettings,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub sandbox: SandboxSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            upstream: UpstreamSettings::default(),
            limits: LimitSettings::default(),
            server: ServerSettings::default(),
            log: LogSettings::default(),
            sandbox: SandboxSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// The Direct API's base URL; `/api/attachments` is appended.
    pub base_url: String,
    /// The OAuth 2.0 token endpoint (client credentials grant).
    pub token_url: String,
    pub client_id: String,
    /// The client secret; prefer `client_secret_file` (a mounted Kubernetes secret).
    pub client_secret: Secret,
    pub client_secret_file: Option<PathBuf>,
    /// TCP + TLS connect timeout toward the upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound of a unary call when the caller sets no shorter gRPC deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bound of an upload or download stream when the caller sets no shorter deadline.
    #[serde(with = "humantime_serde")]
    pub transfer_timeout: Duration,
    /// Refresh the access token this long before it expires.
    #[serde(with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    /// The query parameter of `GET /api/attachments` that names the work order.
    pub work_order_query_param: String,
    /// The most bytes read from one upstream answer (list, link, token).
    pub max_response_bytes: u64,
    /// Idle upstream connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: "https://am-api.corrigopro.com/Direct".into(),
            token_url: "https://oauth-pro-v2.corrigo.com/OAuth/Token".into(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            transfer_timeout: Duration::from_secs(600),
            token_refresh_margin: Duration::from_secs(120),
            work_order_query_param: "workOrderId".into(),
            max_response_bytes: 16 * 1024 * 1024,
            pool_idle_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// The largest file accepted, in bytes (the upstream's own limit: 20 MiB).
    pub max_upload_bytes: u64,
    /// The largest `chunk` in one upload message, in bytes.
    pub max_chunk_bytes: u64,
    /// The size of the `chunk` messages of a download, in bytes.
    pub download_chunk_bytes: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_chunk_bytes: 4 * 1024 * 1024,
            download_chunk_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// After SIGTERM, health says NOT_SERVING for this long before the listener closes
    /// (so load balancers stop sending new calls).
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the listener closes, in-flight calls get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections are closed (gracefully) after this age, so clients reconnect and
    /// spread over replicas. Unset: never.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// Concurrent streams (calls) per client connection.
    pub max_concurrent_streams: u32,
    /// Serve gRPC server reflection (v1 and v1alpha).
    pub reflection: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            max_connection_age: None,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            reflection: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `attachment_gateway=debug,info`; `RUST_LOG`
    /// wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Start the embedded CorrigoPro emulator and use it as the upstream.
    pub enabled: bool,
    /// Where the emulator listens (loopback; port 0 picks a free port).
    pub listen: SocketAddr,
    /// How long the emulator's download links work.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// How long the emulator's access tokens live.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            link_ttl: crate::domain::DOWNLOAD_LINK_TTL,
            token_ttl: Duration::from_secs(1199),
        }
    }
}

/// A setting that cannot be used, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid settings: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
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
    pub sandbox: bool,
}

impl Settings {
    /// Loads the layers in order, reads the secret file, and validates the result.
    pub fn load(config_file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
        if let Some(listen) = flags.listen {
            fig = fig.merge(Serialized::default("listen", listen));
        }
        if let Some(url) = &flags.upstream_base_url {
            fig = fig.merge(Serialized::default("upstream.base_url", url));
        }
        if let Some(format) = flags.log_format {
            fig = fig.merge(Serialized::default("log.format", format));
        }
        if flags.sandbox {
            fig = fig.merge(Serialized::default("sandbox.enabled", true));
        }
        let mut settings: Settings = fig.extract().map_err(Box::new)?;
        settings.resolve_secret_file()?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_secret_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.upstream.client_secret_file else {
            return Ok(());
        };
        if !self.upstream.client_secret.is_empty() {
            return Err(invalid(
                "upstream.client_secret_file",
                "set either upstream.client_secret or upstream.client_secret_file, not both",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "upstream.client_secret_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        self.upstream.client_secret = Secret::new(text.trim_end_matches(['\r', '\n']));
        Ok(())
    }

    /// Checks every setting that could make the gateway misbehave later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url("upstream.base_url", &self.upstream.base_url)?;
        check_url("upstream.token_url", &self.upstream.token_url)?;
        if !self.sandbox.enabled {
            if self.upstream.client_id.trim().is_empty() {
                return Err(invalid(
                    "upstream.client_id",
                    format!(
                        "required (set {ENV_PREFIX}UPSTREAM__CLIENT_ID), or run with --sandbox"
                    ),
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
        }
        let q = &self.upstream.work_order_query_param;
        if q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "upstream.work_order_query_param",
                "must be a non-empty name of letters, digits and `_`",
            ));
        }
        for (name, d) in [
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.request_timeout", self.upstream.request_timeout),
            ("upstream.transfer_timeout", self.upstream.transfer_timeout),
            (
                "upstream.pool_idle_timeout",
                self.upstream.pool_idle_timeout,
            ),
            (
                "server.http2_keepalive_interval",
                self.server.http2_keepalive_interval,
            ),
            (
                "server.http2_keepalive_timeout",
                self.server.http2_keepalive_timeout,
            ),
        ] {
            if d.is_zero() {
                return Err(invalid(name, "must be greater than 0"));
            }
        }
        if self.upstream.max_response_bytes < 1024 {
            return Err(invalid(
                "upstream.max_response_bytes",
                "must be at least 1024",
            ));
        }
        let l = &self.limits;
        if l.max_upload_bytes == 0 || l.max_upload_bytes > MAX_UPLOAD_LIMIT {
            return Err(invalid(
                "limits.max_upload_bytes",
                format!("must be between 1 and {MAX_UPLOAD_LIMIT}"),
            ));
        }
        if !(1024 * 1024..=64 * 1024 * 1024).contains(&l.max_chunk_bytes) {
            return Err(invalid(
                "limits.max_chunk_bytes",
                "must be between 1 MiB and 64 MiB",
            ));
        }
        if !(1024..=4 * 1024 * 1024).contains(&l.download_chunk_bytes) {
            return Err(invalid(
                "limits.download_chunk_bytes",
                "must be between 1 KiB and 4 MiB",
            ));
        }
        if self.server.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be greater than 0",
            ));
        }
        if self.sandbox.enabled && !self.sandbox.listen.ip().is_loopback() {
            return Err(invalid(
                "sandbox.listen",
                "the sandbox listens on loopback only",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    /// The TOML the settings amount to, secrets redacted (`--check-config` prints it).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

fn check_url(setting: &'static str, value: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(value).map_err(|e| invalid(setting, format!("{e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(setting, "must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(setting, "must not carry a query or fragment"));
    }
    Ok(())
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
    }
}
