//! Static API keys from a TOML file (a mounted Kubernetes secret), stored as SHA-256
//! hashes and compared in constant time; the file is reloaded when it changes.
//!
//! ```toml
//! [[keys]]
//! caller = "billing-api"
//! sha256 = "<hex SHA-256 of the key>"   # printf %s "$KEY" | sha256sum
//! scopes = ["attachments.read", "attachments.write"]
//! ```

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use tokio::time::Instant;

use super::{AuthError, AuthMethod, Caller, Scopes, SetupError};
use crate::metrics::Metrics;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    caller: String,
    sha256: String,
    scopes: Vec<String>,
}

struct Loaded {
    caller: Arc<str>,
    hash: [u8; 32],
    scopes: Scopes,
}

pub struct ApiKeyStore {
    path: PathBuf,
    entries: RwLock<Arc<Vec<Loaded>>>,
    mtime: std::sync::Mutex<Option<SystemTime>>,
    /// Since when the file cannot be read (or parsed); `None` while it can.
    failing_since: std::sync::Mutex<Option<Instant>>,
    /// How long the last good keys stay in force while the file is broken.
    max_stale: Duration,
    metrics: Arc<Metrics>,
    /// Bumped whenever the keys in force change.
    generation: std::sync::atomic::AtomicU64,
    /// How often the file is checked for changes (see [`ApiKeyStore::keep_fresh`]).
    reload_interval: Duration,
}

/// The hex SHA-256 of a key, as the key file stores it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn parse(text: &str) -> Result<Vec<Loaded>, String> {
    let file: KeyFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, e) in file.keys.into_iter().enumerate() {
        let bytes =
            hex::decode(e.sha256.trim()).map_err(|_| format!("keys[{i}].sha256 is not hex"))?;
        let hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("keys[{i}].sha256 is not 32 bytes of hex"))?;
        if e.caller.trim().is_empty() {
            return Err(format!("keys[{i}].caller is empty"));
        }
        for s in &e.scopes {
            if Scopes::parse(s).is_none() {
                return Err(format!("keys[{i}] has an unknown scope `{s}`"));
            }
        }
        out.push(Loaded {
            caller: e.caller.trim().into(),
            hash,
            scopes: Scopes::from_names(e.scopes.iter().map(String::as_str)),
        });
    }
    Ok(out)
}

impl ApiKeyStore {
    /// Loads the file, which must be valid now; [`Self::keep_fresh`] watches it
    /// for changes. When the file later becomes unreadable or invalid, the last
    /// good keys stay in force for `max_stale`, then every API key is refused
    /// until it is fixed: a broken file must not keep revoked keys alive.
    pub fn start(
        path: PathBuf,
        reload_interval: Duration,
        max_stale: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, SetupError> {
        let this = Arc::new(Self {
            path,
            entries: RwLock::new(Arc::new(Vec::new())),
            mtime: std::sync::Mutex::new(None),
            failing_since: std::sync::Mutex::new(None),
            max_stale,
            metrics,
            generation: std::sync::atomic::AtomicU64::new(0),
            reload_interval,
        });
        this.reload().map_err(|reason| SetupError::Invalid {
            setting: "auth.api_keys.file",
            reason,
        })?;
        Ok(this)
    }

    /// Checks the file for changes every `reload_interval`, for as long as
    /// the store lives.
    pub fn keep_fresh(self: &Arc<Self>) {
        crate::periodic::every(
            self,
            self.reload_interval.max(Duration::from_millis(100)),
            |this| async move { this.reload_and_report() },
        );
    }

    /// One periodic reload, with its failure counted and logged.
    fn reload_and_report(&self) {
        let Err(e) = self.reload() else {
            if let Ok(mut f) = self.failing_since.lock()
                && f.take().is_some()
            {
                tracing::info!("the API key file is readable again");
            }
            self.metrics.api_key_file_stale_seconds.set(0);
            return;
        };
        self.metrics.api_key_reload_failures.inc();
        let since = match self.failing_since.lock() {
            Ok(mut f) => *f.get_or_insert_with(Instant::now),
            Err(_) => Instant::now(),
        };
        let stale = since.elapsed();
        self.metrics
            .api_key_file_stale_seconds
            .set(i64::try_from(stale.as_secs()).unwrap_or(i64::MAX));
        if stale < self.max_stale {
            tracing::error!(error = %e, stale_s = stale.as_secs(), max_stale = ?self.max_stale, "the API key file cannot be loaded: the last good keys stay in force until max_stale, then API keys are refused");
        } else {
            tracing::error!(error = %e, stale_s = stale.as_secs(), "the API key file cannot be loaded: every API key is refused until it is fixed");
        }
    }

    /// Reads the file again if it changed.
    pub fn reload(&self) -> Result<(), String> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if let Ok(g) = self.mtime.lock()
            && g.is_some()
            && *g == mtime
        {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let entries = parse(&text)?;
        tracing::info!(keys = entries.len(), "API keys loaded");
        if let Ok(mut g) = self.entries.write() {
            *g = Arc::new(entries);
        }
        if let Ok(mut g) = self.mtime.lock() {
            *g = mtime;
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Changes whenever the keys in force change, or stop being in force (the
    /// file broken for longer than `max_stale`).
    pub fn generation(&self) -> u64 {
        let g = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        g * 2 + u64::from(self.stale_too_long())
    }

    fn stale_too_long(&self) -> bool {
        self.failing_since
            .lock()
            .map(|f| f.is_some_and(|t| t.elapsed() >= self.max_stale))
            .unwrap_or(true)
    }

    /// The caller a key belongs to. Every stored hash is compared, in constant time.
    pub fn lookup(&self, key: &str) -> Result<Caller, AuthError> {
        if self.stale_too_long() {
            return Err(AuthError::KeysUnavailable);
        }
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let entries = self
            .entries
            .read()
            .map(|g| Arc::clone(&g))
            .map_err(|_| AuthError::UnknownKey)?;
        let mut found: Option<&Loaded> = None;
        for e in entries.iter() {
            if bool::from(e.hash.ct_eq(&presented)) {
                found = Some(e);
            }
        }
        found
            .map(|e| Caller {
                id: Arc::clone(&e.caller),
                method: AuthMethod::ApiKey,
                scopes: e.scopes,
            })
            .ok_or(AuthError::UnknownKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let h = hash_key("k");
        let ok = format!(
            "[[keys]]\ncaller = \"a\"\nsha256 = \"{h}\"\nscopes = [\"attachments.read\"]\n"
        );
        let e = parse(&ok).unwrap();
        assert_eq!(&*e[0].caller, "a");
        assert!(e[0].scopes.read && !e[0].scopes.write);
        assert!(parse("[[keys]]\ncaller = \"a\"\nsha256 = \"zz\"\nscopes = []\n").is_err());
        let bad_scope =
            format!("[[keys]]\ncaller = \"a\"\nsha256 = \"{h}\"\nscopes = [\"admin\"]\n");
        assert!(parse(&bad_scope).is_err());
        assert!(parse("").unwrap().is_empty());
    }
}
