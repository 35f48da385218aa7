//! Recent outcomes of credential checks, by the credential's SHA-256 (never the
//! credential itself): a credential that verified is not verified again for a
//! while (and is not held up by failure throttling), and one that failed is
//! refused again without the work of a check. Both are bounded, and forgotten
//! when the key sets change (a rotation, a revoked API key).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{AuthError, Caller};

/// Entries kept at most, each way.
const CAPACITY: usize = 10_000;
/// How long a verified credential is trusted without a check (a JWT no longer
/// than its own expiry).
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// How long a refused credential is refused without a check.
pub const REFUSED_FOR: Duration = Duration::from_secs(60);

pub type Digest32 = [u8; 32];

pub fn digest(credential: &str) -> Digest32 {
    Sha256::digest(credential.as_bytes()).into()
}

struct Entry<V> {
    value: V,
    until: Instant,
    generation: u64,
}

/// Values by digest, each until its time (and its generation) passes, at most
/// `CAPACITY` of them.
pub(crate) struct Bounded<V> {
    map: HashMap<Digest32, Entry<V>>,
}

impl<V: Clone> Bounded<V> {
    pub(crate) fn new() -> Self {
        Self {
            map: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, k: &Digest32, generation: u64) -> Option<V> {
        let e = self.map.get(k)?;
        if e.until > Instant::now() && e.generation == generation {
            return Some(e.value.clone());
        }
        self.map.remove(k);
        None
    }

    pub(crate) fn remove(&mut self, k: &Digest32) {
        self.map.remove(k);
    }

    pub(crate) fn put(&mut self, k: Digest32, value: V, ttl: Duration, generation: u64) {
        if self.map.len() >= CAPACITY && !self.map.contains_key(&k) {
            let now = Instant::now();
            self.map
                .retain(|_, e| e.until > now && e.generation == generation);
            if self.map.len() >= CAPACITY {
                // Still full of live entries: make room by dropping a tenth.
                let drop: Vec<Digest32> = self.map.keys().take(CAPACITY / 10).copied().collect();
                for d in drop {
                    self.map.remove(&d);
                }
            }
        }
        self.map.insert(
            k,
            Entry {
                value,
                until: Instant::now() + ttl,
                generation,
            },
        );
    }
}

pub struct CredentialCache {
    verified: Mutex<Bounded<Caller>>,
    refused: Mutex<Bounded<AuthError>>,
}

impl Default for CredentialCache {
    fn default() -> Self {
        Self {
            verified: Mutex::new(Bounded::new()),
            refused: Mutex::new(Bounded::new()),
        }
    }
}

impl CredentialCache {
    pub fn verified(&self, k: &Digest32, generation: u64) -> Option<Caller> {
        self.verified.lock().ok()?.get(k, generation)
    }

    pub fn refused(&self, k: &Digest32, generation: u64) -> Option<AuthError> {
        self.refused.lock().ok()?.get(k, generation)
    }

    pub fn remember_verified(&self, k: Digest32, c: &Caller, ttl: Duration, generation: u64) {
        if let Ok(mut m) = self.verified.lock() {
            m.put(k, c.clone(), ttl.min(VERIFIED_FOR), generation);
        }
    }

    pub fn remember_refused(&self, k: Digest32, e: &AuthError, generation: u64) {
        if let Ok(mut m) = self.refused.lock() {
            m.put(k, e.clone(), REFUSED_FOR, generation);
        }
    }
}
