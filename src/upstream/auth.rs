//! OAuth 2.0 client credentials toward the upstream: one cached access token,
//! refreshed ahead of expiry in the background, fetched by a single request however
//! many calls wait for it, and dropped when the upstream refuses it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::body::read_bounded;
use super::error::{UpstreamError, parse_error_body};
use super::json::{get_ci, value_str};
use crate::config::UpstreamSettings;
use crate::secret::Secret;

/// Lifetime assumed when the token answer has no usable `expires_in` (the
/// upstream's tokens live 20 minutes).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(1199);
/// A token is not used during its last seconds, so a call never carries one that
/// expires on the way.
const EXPIRY_SAFETY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct CachedToken {
    value: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

pub struct TokenCache {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    refresh_margin: Duration,
    /// Bound of one token request, connect to last byte: a token endpoint that
    /// accepts and never answers must not hold every call (they wait on the fetch).
    timeout: Duration,
    max_body: usize,
    current: RwLock<Option<CachedToken>>,
    /// Held by whoever is fetching a token: one request in flight at a time.
    fetching: Arc<Mutex<()>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl TokenCache {
    /// A cache for the credentials and token settings of `s`.
    pub fn new(
        http: reqwest::Client,
        s: &UpstreamSettings,
        max_body: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            http,
            token_url: s.token_url.clone(),
            client_id: s.client_id.clone(),
            client_secret: s.client_secret.clone(),
            refresh_margin: s.token_refresh_margin,
            timeout: s.token_timeout,
            max_body,
            current: RwLock::new(None),
            fetching: Arc::new(Mutex::new(())),
            metrics,
        })
    }

    fn cached(&self) -> Option<CachedToken> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// A token good for at least a few more seconds.
    pub async fn token(self: &Arc<Self>) -> Result<Secret, UpstreamError> {
        let now = Instant::now();
        if let Some(t) = self.cached() {
            if now < t.refresh_at {
                return Ok(t.value);
            }
            if now < t.expires_at {
                // Still good: use it, and refresh in the background (once).
                self.spawn_refresh();
                return Ok(t.value);
            }
        }
        let _guard = self.fetching.lock().await;
        if let Some(t) = self.cached()
            && Instant::now() < t.expires_at
        {
            return Ok(t.value);
        }
        self.fetch().await
    }

    fn spawn_refresh(self: &Arc<Self>) {
        let Ok(guard) = Arc::clone(&self.fetching).try_lock_owned() else {
            return; // a fetch is already under way
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = guard;
            if let Some(t) = this.cached()
                && Instant::now() < t.refresh_at
            {
                return;
            }
            if let Err(e) = this.fetch().await {
                tracing::warn!(error = %e, "background token refresh failed; the current token stays in use");
            }
        });
    }

    /// Drops `failed` if it is still the cached token (the upstream refused it).
    pub fn invalidate(&self, failed: &Secret) {
        if let Ok(mut g) = self.current.write()
            && g.as_ref().is_some_and(|t| &t.value == failed)
        {
            *g = None;
        }
    }

    async fn fetch(&self) -> Result<Secret, UpstreamError> {
        let result = match tokio::time::timeout(self.timeout, self.fetch_once()).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "the token endpoint did not answer in time");
                Err(UpstreamError::Timeout)
            }
        };
        if result.is_err() {
            self.metrics.token_fetch_failures.inc();
        }
        result
    }

    async fn fetch_once(&self) -> Result<Secret, UpstreamError> {
        self.metrics.token_refreshes.inc();
        let started = Instant::now();
        let resp = self
            .http
            .post(&self.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose()),
            ])
            .send()
            .await
            .map_err(UpstreamError::from_reqwest)?;
        let status = resp.status().as_u16();
        let body = read_bounded(resp, self.max_body).await?;
        if status == 400 || status == 401 || status == 403 {
            let e = parse_error_body(status, &body, None);
            tracing::error!(
                http_status = status,
                upstream_message = e.message.as_deref().unwrap_or(""),
                "the token endpoint refused the gateway's client credentials"
            );
            return Err(UpstreamError::CredentialsRejected("token endpoint"));
        }
        if status != 200 {
            return Err(UpstreamError::Api(Box::new(parse_error_body(
                status, &body, None,
            ))));
        }
        let (value, lifetime) = parse_token(&body)?;
        let expires_at = started + lifetime.saturating_sub(EXPIRY_SAFETY);
        let margin = self.refresh_margin.min(lifetime / 2);
        let refresh_at = started + lifetime.saturating_sub(margin);
        tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "fetched an upstream access token"
        );
        if let Ok(mut g) = self.current.write() {
            *g = Some(CachedToken {
                value: value.clone(),
                refresh_at,
                expires_at,
            });
        }
        Ok(value)
    }
}

/// Reads `{"access_token": "…", "token_type": "bearer", "expires_in": 1199}`.
fn parse_token(body: &[u8]) -> Result<(Secret, Duration), UpstreamError> {
    let garbage =
        || UpstreamError::Protocol("the token endpoint's answer has no access_token".into());
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(garbage());
    };
    let token = get_ci(&obj, &["access_token"])
        .and_then(value_str)
        .filter(|t| !t.trim().is_empty() && t.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(garbage)?;
    let lifetime = get_ci(&obj, &["expires_in"])
        .and_then(|v| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .filter(|s| s.is_finite() && *s >= 10.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
        .unwrap_or(DEFAULT_LIFETIME);
    Ok((Secret::new(token), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token endpoint's answer as CorrigoPro's documentation shows it;
    /// only its placeholder `…` (not a token: no header may carry it) is
    /// replaced, by a token of the documented `<data><---->sig` shape.
    #[test]
    fn the_documented_token_answer() {
        const DOC: &str = r#"{"access_token": "…", "token_type": "bearer", "expires_in": 1199}"#;
        assert!(parse_token(DOC.as_bytes()).is_err(), "`…` is no token");
        let body = DOC.replace(
            '…',
            "H4sIAAAAAAAEAKtWyk0tLk5MT1WyUlAqLU4tUqoFAHb6Ex8VAAAA<---->c2ln",
        );
        let (t, l) = parse_token(body.as_bytes()).unwrap();
        assert!(t.expose().contains("<---->"));
        assert_eq!(l, Duration::from_secs(1199));
    }

    #[test]
    fn parses_token_answers() {
        let (t, l) =
            parse_token(br#"{"access_token":"abc","token_type":"bearer","expires_in":1199}"#)
                .unwrap();
        assert_eq!((t.expose(), l), ("abc", Duration::from_secs(1199)));
        let (_, l) = parse_token(br#"{"access_token":"abc","expires_in":"600"}"#).unwrap();
        assert_eq!(l, Duration::from_secs(600));
        let (_, l) = parse_token(br#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(l, DEFAULT_LIFETIME);
        for bad in [
            &b"nope"[..],
            br#"{"token":"x"}"#,
            br#"{"access_token":""}"#,
            br#"{"access_token":"a b"}"#,
        ] {
            assert!(parse_token(bad).is_err());
        }
    }
}
