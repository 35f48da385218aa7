//! Writes remembered by who sent them and the message id they carry, so that a
//! caller that lost an answer and retries gets the first answer instead of a
//! second upload, and never another request's answer.
//!
//! A record is keyed by [`WriteKey`] (the caller's identity, the call, the work
//! order, the message id) and holds the request's [`Fingerprint`]: the same key
//! with another fingerprint is another request reusing the id. While a write runs,
//! its record is a lease that expires unless renewed, so a replica that dies
//! mid-write does not block the key forever; when the write ends, the outcome is
//! stored for the TTL. Failed writes are forgotten (a retry may run again).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::error::StoreError;

/// What a remembered write is known by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteKey {
    /// The caller's identity with its kind, e.g. `api_key:billing`.
    pub caller: Arc<str>,
    /// `upload`, `update` or `delete`.
    pub call: &'static str,
    pub work_order_id: i64,
    /// The caller's message id.
    pub message_id: String,
}

/// A digest of a request's fields: two requests with the same key and another
/// fingerprint are two requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The SHA-256 of `fields`, each length-prefixed so that no two lists of
    /// fields share a digest by moving bytes between them.
    pub fn of(fields: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for f in fields {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f);
        }
        Self(h.finalize().into())
    }
}

/// What a completed write answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Upload {
        attachment_id: String,
        message_id: String,
        size_bytes: u64,
        sha256: String,
    },
    /// Updates and deletes answer their message id.
    MessageId(String),
}

/// Proves that the holder runs the write under a key (a random value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub u128);

impl LeaseToken {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u128())
    }
}

/// What is known of a key when a write starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Nothing (or a failed or expired attempt): the caller runs the write.
    Go(LeaseToken),
    /// A write under the key completed.
    Done {
        fingerprint: Fingerprint,
        outcome: Outcome,
    },
    /// A write under the key runs now (its lease is live).
    Running { fingerprint: Fingerprint },
}

/// Where writes are remembered.
#[tonic::async_trait]
pub trait WriteStore: Send + Sync + 'static {
    /// Looks the key up; when it is free, takes a lease on it for `lease`.
    async fn begin(
        &self,
        key: &WriteKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError>;

    /// Extends a lease the holder still has (the write of `fingerprint`);
    /// `false` when it was lost.
    async fn renew(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Stores the outcome of the write for `ttl`, replacing the lease.
    async fn complete(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        outcome: &Outcome,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Drops the lease of a write that failed: a retry may run it again.
    async fn abandon(&self, key: &WriteKey, token: LeaseToken) -> Result<(), StoreError>;

    /// Whether leases expire unless renewed (shared stores); an in-process lease
    /// lives as long as the write that holds it.
    fn leases_expire(&self) -> bool;
}

/// The most completed writes remembered at once, per process; the oldest go first.
const CAPACITY: usize = 100_000;

struct Running {
    token: LeaseToken,
    fingerprint: Fingerprint,
}

#[derive(Default)]
struct Inner {
    done: HashMap<WriteKey, (Instant, Fingerprint, Outcome)>,
    order: VecDeque<(Instant, WriteKey)>,
    running: HashMap<WriteKey, Running>,
}

/// The in-process store: the default, for one replica.
pub struct MemoryWrites {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl MemoryWrites {
    /// Completed writes are kept for `ttl` (the TTL given to `complete` is the
    /// same setting).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError("the in-process write record is poisoned".into()))
    }
}

impl Inner {
    fn expire(&mut self, ttl: Duration) {
        let now = Instant::now();
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < ttl && self.order.len() <= CAPACITY {
                break;
            }
            if let Some((t, k)) = self.order.pop_front()
                && self.done.get(&k).is_some_and(|(at, _, _)| *at == t)
            {
                self.done.remove(&k);
            }
        }
    }
}

#[tonic::async_trait]
impl WriteStore for MemoryWrites {
    async fn begin(
        &self,
        key: &WriteKey,
        fingerprint: Fingerprint,
        _lease: Duration,
    ) -> Result<Begin, StoreError> {
        let mut g = self.lock()?;
        g.expire(self.ttl);
        if let Some((_, fp, outcome)) = g.done.get(key) {
            return Ok(Begin::Done {
                fingerprint: *fp,
                outcome: outcome.clone(),
            });
        }
        if let Some(r) = g.running.get(key) {
            return Ok(Begin::Running {
                fingerprint: r.fingerprint,
            });
        }
        let token = LeaseToken::new();
        g.running
            .insert(key.clone(), Running { token, fingerprint });
        Ok(Begin::Go(token))
    }

    async fn renew(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        _: Fingerprint,
        _: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self
            .lock()?
            .running
            .get(key)
            .is_some_and(|r| r.token == token))
    }

    async fn complete(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        outcome: &Outcome,
        _ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if g.running.get(key).is_some_and(|r| r.token == token) {
            g.running.remove(key);
        }
        let now = Instant::now();
        g.done
            .insert(key.clone(), (now, fingerprint, outcome.clone()));
        g.order.push_back((now, key.clone()));
        g.expire(self.ttl);
        Ok(())
    }

    async fn abandon(&self, key: &WriteKey, token: LeaseToken) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if g.running.get(key).is_some_and(|r| r.token == token) {
            g.running.remove(key);
        }
        Ok(())
    }

    fn leases_expire(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(caller: &str, id: &str) -> WriteKey {
        WriteKey {
            caller: caller.into(),
            call: "delete",
            work_order_id: 1,
            message_id: id.into(),
        }
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn replays_within_the_ttl_only() {
        let r = MemoryWrites::new(Duration::from_secs(60));
        let fp = Fingerprint::of(&[b"a"]);
        let Begin::Go(t) = r.begin(&key("c", "a"), fp, LEASE).await.unwrap() else {
            panic!("first")
        };
        assert_eq!(
            r.begin(&key("c", "a"), fp, LEASE).await.unwrap(),
            Begin::Running { fingerprint: fp }
        );
        let done = Outcome::MessageId("m".into());
        r.complete(&key("c", "a"), t, fp, &done, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            r.begin(&key("c", "a"), fp, LEASE).await.unwrap(),
            Begin::Done {
                fingerprint: fp,
                outcome: done
            }
        );
        assert!(
            matches!(
                r.begin(&key("other", "a"), fp, LEASE).await.unwrap(),
                Begin::Go(_)
            ),
            "another caller's id is another key"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            r.begin(&key("c", "a"), fp, LEASE).await.unwrap(),
            Begin::Go(_)
        ));
    }

    #[tokio::test]
    async fn a_failed_write_is_not_remembered() {
        let r = MemoryWrites::new(Duration::from_secs(60));
        let fp = Fingerprint::of(&[b"b"]);
        let Begin::Go(t) = r.begin(&key("c", "b"), fp, LEASE).await.unwrap() else {
            panic!("first")
        };
        r.abandon(&key("c", "b"), t).await.unwrap();
        assert!(matches!(
            r.begin(&key("c", "b"), fp, LEASE).await.unwrap(),
            Begin::Go(_)
        ));
    }

    #[test]
    fn fingerprints_are_length_prefixed() {
        assert_ne!(
            Fingerprint::of(&[b"ab", b"c"]),
            Fingerprint::of(&[b"a", b"bc"])
        );
        assert_eq!(Fingerprint::of(&[b"a"]), Fingerprint::of(&[b"a"]));
    }
}
