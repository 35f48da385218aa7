//! JWT bearer tokens verified against a JWKS, from a file (reloaded when it changes)
//! or a URL (fetched again every `jwks_refresh`, and at once, rate-limited, when a
//! token names a `kid` not in the set: key rotation needs no restart). Asymmetric
//! algorithms only (RS*, PS*, ES*), so Kubernetes projected service-account tokens
//! work as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{AuthError, AuthMethod, Caller, Scopes, SetupError};
use crate::config::JwtSettings;
use crate::secret::Secret;

/// The largest JWKS answer read (a real set is a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

enum Source {
    File(PathBuf),
    Url(String),
}

pub struct JwtVerifier {
    keys: RwLock<Arc<Vec<Key>>>,
    source: Source,
    http: reqwest::Client,
    token_file: Option<PathBuf>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    default_scopes: Vec<String>,
    subject_scopes: BTreeMap<String, Vec<String>>,
    /// Callers are `<iss> <sub>` (more than one issuer is accepted).
    names_issuer: bool,
    /// Bumped whenever the key set changes, so cached verifications are dropped.
    generation: AtomicU64,
    /// The SHA-256 of the JWKS last loaded, to tell a change from a refetch.
    set_digest: std::sync::Mutex<Option<[u8; 32]>>,
    /// When the last fetch for an unknown `kid` ended; held during such a fetch,
    /// so concurrent unknown `kid`s wait for its result instead of fetching again.
    last_forced: Mutex<Option<Instant>>,
    /// The shortest time from the end of one unknown-`kid` fetch to the next.
    unknown_kid_interval: Duration,
    file_mtime: std::sync::Mutex<Option<SystemTime>>,
    /// How often the keys are loaded again (see [`JwtVerifier::keep_fresh`]).
    refresh_every: Duration,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<u64>,
    scope: Option<Value>,
    scp: Option<Value>,
}

fn default_alg(params: &AlgorithmParameters) -> Option<Algorithm> {
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        _ => None,
    }
}

fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            .or_else(|| default_alg(&jwk.algorithm));
        let Some(alg) = alg.filter(|a| asymmetric(*a)) else {
            continue; // symmetric or unsupported keys are never used
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            }),
            Err(e) => {
                tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipping an unusable JWKS key")
            }
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable RSA or EC signing key".into());
    }
    Ok(keys)
}

/// The RSA algorithms (PKCS#1 v1.5 and PSS): one key serves them all.
fn rsa(a: Algorithm) -> bool {
    matches!(
        a,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
    )
}

fn asymmetric(a: Algorithm) -> bool {
    rsa(a) || matches!(a, Algorithm::ES256 | Algorithm::ES384)
}

fn same_family(a: Algorithm, b: Algorithm) -> bool {
    a == b || (rsa(a) && rsa(b))
}

fn claim_scopes(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

impl JwtVerifier {
    pub async fn start(s: &JwtSettings) -> Result<Arc<Self>, SetupError> {
        let setting = |setting, reason| SetupError::Setting { setting, reason };
        let source = match (&s.jwks_file, &s.jwks_url) {
            (Some(f), _) => Source::File(f.clone()),
            (None, Some(u)) => Source::Url(u.clone()),
            (None, None) => {
                return Err(setting(
                    "auth.jwt.jwks_file",
                    "JWT auth needs a JWKS file or URL",
                ));
            }
        };
        if s.issuers.is_empty() && !s.allow_any_issuer {
            return Err(setting(
                "auth.jwt.issuers",
                "JWT auth needs the accepted issuers",
            ));
        }
        if s.audiences.is_empty() && !s.allow_any_audience {
            return Err(setting(
                "auth.jwt.audiences",
                "JWT auth needs the accepted audiences",
            ));
        }
        if s.allow_any_issuer && s.issuers.is_empty() {
            tracing::warn!("auth.jwt.allow_any_issuer: JWT tokens of any issuer are accepted");
        }
        if s.allow_any_audience && s.audiences.is_empty() {
            tracing::warn!(
                "auth.jwt.allow_any_audience: JWT tokens minted for any audience are accepted"
            );
        }
        // No redirects: a JWKS that moved is a configuration to fix, and following
        // one could leave https for plain http.
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &s.jwks_ca_file {
            let pem = std::fs::read(ca).map_err(|source| SetupError::Read {
                setting: "auth.jwt.jwks_ca_file",
                path: ca.clone(),
                source,
            })?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|source| SetupError::Client {
                    setting: "auth.jwt.jwks_ca_file",
                    source,
                })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|source| SetupError::Client {
            setting: "auth.jwt",
            source,
        })?;
        // A file is cheap to look at: checked every 10 s at most.
        let refresh_every = match source {
            Source::File(_) => s.jwks_refresh.min(Duration::from_secs(10)),
            Source::Url(_) => s.jwks_refresh,
        };
        let this = Arc::new(Self {
            keys: RwLock::new(Arc::new(Vec::new())),
            source,
            http,
            token_file: s.jwks_token_file.clone(),
            issuers: s.issuers.clone(),
            audiences: s.audiences.clone(),
            leeway: s.leeway,
            default_scopes: s.default_scopes.clone(),
            subject_scopes: s.subject_scopes.clone(),
            names_issuer: s.names_issuer(),
            generation: AtomicU64::new(0),
            set_digest: std::sync::Mutex::new(None),
            last_forced: Mutex::new(None),
            unknown_kid_interval: s.unknown_kid_refresh_interval,
            file_mtime: std::sync::Mutex::new(None),
            refresh_every,
        });
        match (&this.source, this.refresh().await) {
            (_, Ok(())) => {}
            // A file must be right at start; a URL may be briefly unreachable.
            (Source::File(_), Err(reason)) => {
                return Err(SetupError::Invalid {
                    setting: "auth.jwt.jwks_file",
                    reason,
                });
            }
            (Source::Url(_), Err(e)) => {
                tracing::error!(error = %e, "cannot fetch the JWKS yet; retrying in the background")
            }
        }
        Ok(this)
    }

    /// Loads the keys again every `auth.jwt.jwks_refresh` (a file is checked
    /// every 10 s at most), for as long as the verifier lives.
    pub fn keep_fresh(self: &Arc<Self>) {
        crate::periodic::every(self, self.refresh_every, |this| async move {
            if let Err(e) = this.refresh().await {
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the current keys");
            }
        });
    }

    /// Loads the JWKS again; the current keys stay until a good set arrives.
    async fn refresh(&self) -> Result<(), String> {
        let bytes = match &self.source {
            Source::File(path) => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let unchanged = self
                    .file_mtime
                    .lock()
                    .map(|g| g.is_some() && *g == mtime)
                    .unwrap_or(false);
                if unchanged {
                    return Ok(());
                }
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if let Ok(mut g) = self.file_mtime.lock() {
                    *g = mtime;
                }
                bytes
            }
            Source::Url(url) => {
                let mut req = self.http.get(url);
                if let Some(f) = &self.token_file {
                    let token = Secret::from_file(f).map_err(|e| e.to_string())?;
                    req = req.bearer_auth(token.expose());
                }
                let mut resp = req.send().await.map_err(|e| e.without_url().to_string())?;
                if !resp.status().is_success() {
                    return Err(format!(
                        "the JWKS URL answered HTTP {} (redirects are not followed)",
                        resp.status().as_u16()
                    ));
                }
                let too_large = || format!("the JWKS answer is larger than {MAX_JWKS_BYTES} bytes");
                if resp
                    .content_length()
                    .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
                {
                    return Err(too_large());
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| e.without_url().to_string())?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        let keys = parse_jwks(&bytes)?;
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let changed = match self.set_digest.lock() {
            Ok(mut d) => d.replace(digest) != Some(digest),
            Err(_) => true,
        };
        if !changed {
            return Ok(());
        }
        tracing::info!(keys = keys.len(), "JWKS loaded");
        if let Ok(mut g) = self.keys.write() {
            *g = Arc::new(keys);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<(DecodingKey, Algorithm)> {
        let keys = self.keys.read().ok()?.clone();
        let found = match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => keys.iter().find(|k| k.alg == alg),
        };
        found
            .filter(|k| same_family(k.alg, alg))
            .map(|k| (k.key.clone(), alg))
    }

    /// Changes whenever the key set does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The caller a token names, and how long the token stays valid.
    pub async fn verify(&self, token: &str) -> Result<(Caller, Duration), AuthError> {
        let invalid = |why: &str| AuthError::InvalidToken(why.to_string());
        let header = decode_header(token).map_err(|_| invalid("malformed"))?;
        if !asymmetric(header.alg) {
            return Err(invalid(
                "the algorithm is not accepted (RS*, PS*, ES* only)",
            ));
        }
        let mut found = self.find(header.kid.as_deref(), header.alg);
        if found.is_none() && header.kid.is_some() {
            // Perhaps the keys rotated: fetch again, one fetch at a time, and not
            // again until the interval has passed since the last one ended (a slow
            // or failing JWKS endpoint must not be hit by every unknown kid).
            let mut last = self.last_forced.lock().await;
            if last.is_none_or(|t| t.elapsed() >= self.unknown_kid_interval) {
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "JWKS refresh for an unknown kid failed");
                }
                *last = Some(Instant::now());
            }
            drop(last);
            found = self.find(header.kid.as_deref(), header.alg);
        }
        let (key, alg) = found.ok_or_else(|| invalid(super::UNKNOWN_KEY))?;
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if self.issuers.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&self.issuers);
        }
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
        }
        let data = decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "expired",
                K::ImmatureSignature => "not valid yet (nbf)",
                K::InvalidIssuer => "issuer not accepted",
                K::InvalidAudience => "audience not accepted",
                K::InvalidSignature => "bad signature",
                K::MissingRequiredClaim(_) => "a required claim is missing",
                _ => "malformed",
            })
        })?;
        let c = data.claims;
        // Who the caller is: its subject, and its issuer when more than one is
        // accepted (subjects of two issuers are two callers: their records,
        // rates, watches and scopes are apart). A token that names neither
        // cannot be told from another's, and is refused.
        let sub = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("the token names no subject (sub)"))?;
        let sub = if self.names_issuer {
            let iss = c
                .iss
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("the token names no issuer (iss)"))?;
            format!("{iss} {sub}")
        } else {
            sub
        };
        let scopes = match self.subject_scopes.get(&sub) {
            Some(names) => Scopes::from_names(names.iter().map(String::as_str)),
            None => {
                let mut names = Vec::new();
                for v in [&c.scope, &c.scp].into_iter().flatten() {
                    names.extend(claim_scopes(v));
                }
                if names.is_empty() {
                    Scopes::from_names(self.default_scopes.iter().map(String::as_str))
                } else {
                    Scopes::from_names(names.iter().map(String::as_str))
                }
            }
        };
        let valid_for = c
            .exp
            .and_then(|exp| {
                let now = SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?;
                Duration::from_secs(exp).checked_sub(now)
            })
            .unwrap_or(Duration::ZERO);
        Ok((
            Caller {
                id: sub.into(),
                method: AuthMethod::Jwt,
                scopes,
            },
            valid_for,
        ))
    }
}
