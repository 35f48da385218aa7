//! Writes remembered by who sent them and the message id they carry, so that a
//! caller that lost an answer and retries gets the first answer instead of a
//! second upload, and never another request's answer.
//!
//! A record is keyed by [`WriteKey`] (the caller's identity, the call, the work
//! order, the message id) and holds the request's [`Fingerprint`]: the same key
//! with another fingerprint is another request reusing the id. While a write runs,
//! its record is a lease that expires unless renewed, so a replica that dies
//! mid-write does not block the key forever. Just before the write is sent
//! whole (its commit point), the lease becomes a committed record that lasts
//! the TTL (see [`WriteStore`]); when the write ends, the outcome is stored in
//! its place. Writes that provably did not happen are forgotten (a retry may
//! run again); a committed write whose answer was lost waits for a retry that
//! reconciles it with what the upstream shows.

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
        /// Found by reconciling with the upstream after the answer was lost,
        /// not received from it.
        #[serde(default)]
        reconciled: bool,
    },
    /// Updates and deletes answer their message id.
    MessageId(String),
}

/// What an upload sent, to find the attachment it may have created when its
/// answer is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAttempt {
    pub name: String,
    pub mime_type: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// The attachments of the work order that could have been this upload,
    /// listed before it was sent; `None` when that list could not be had.
    pub preexisting: Option<Vec<String>>,
}

/// What an update asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateAttempt {
    pub attachment_id: String,
    pub name: String,
    /// The upstream spelling; `None` when not asked to change.
    pub document_type: Option<String>,
}

/// What a write sent, for reconciling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attempt {
    Upload(UploadAttempt),
    Update(UpdateAttempt),
    Delete { attachment_id: String },
}

/// A write that was sent whole upstream (its commit point passed) and whose
/// outcome is not recorded yet: its holder waits for the upstream's answer, or
/// lost it (`given_up`), or died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// When the write was sent whole, in ms since the Unix epoch (the
    /// committing replica's clock).
    pub committed_at_ms: u64,
    /// The holder lost the upstream's answer and stopped waiting for it.
    pub given_up: bool,
    /// The message id sent upstream.
    pub message_id: String,
    pub attempt: Attempt,
}

/// Proves that the holder runs the write under a key (a random value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub u128);

impl LeaseToken {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u128())
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
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
    /// A write under the key runs now (its lease is live), not sent whole yet.
    Running { fingerprint: Fingerprint },
    /// A write under the key was sent whole; its outcome is not recorded (yet).
    Committed {
        fingerprint: Fingerprint,
        /// Its holder's token: what `complete`, `take_over` and `abandon` name.
        token: LeaseToken,
        pending: Pending,
    },
}

/// Where writes are remembered.
///
/// A record goes: free -> running (a lease, renewed while the write is
/// prepared and its body streams) -> committed (the lease turned into a record
/// that lasts the TTL, in one step that succeeds only while the lease is held,
/// just before the write is sent whole) -> done (its outcome). A write that
/// failed before its commit point is abandoned (free again); one refused by
/// the upstream after it is abandoned too. A committed write whose answer was
/// lost stays committed until a retry reconciles it: `complete` with what the
/// upstream shows, or `take_over` to run it again when it provably did not
/// happen.
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
    /// `false` when it was lost. Never takes a key that is not held.
    async fn renew(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Turns the holder's live lease into a committed record kept for `ttl`;
    /// `false` (and nothing changed) when the lease is not the holder's any
    /// more: the write must not be sent.
    async fn commit(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        pending: &Pending,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Stores the outcome for `ttl` in place of the lease or committed record
    /// `token` holds (or of nothing: a record the store lost); `false` when
    /// another holds the key now.
    async fn complete(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        outcome: &Outcome,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Replaces the committed record `token` holds with `pending` (its holder
    /// lost the answer), keeping its expiry.
    async fn give_up(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        pending: &Pending,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Turns the committed record `token` holds into a new lease, for a retry
    /// that found the write provably not applied and runs it again; `None` when
    /// the record changed meanwhile.
    async fn take_over(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Option<LeaseToken>, StoreError>;

    /// Drops the lease or committed record `token` holds: the write did not
    /// happen, and a retry may run it again.
    async fn abandon(&self, key: &WriteKey, token: LeaseToken) -> Result<(), StoreError>;

    /// Whether leases expire unless renewed (shared stores); an in-process lease
    /// lives as long as the write that holds it.
    fn leases_expire(&self) -> bool;
}

/// The most records remembered at once, per process; the oldest go first.
const CAPACITY: usize = 100_000;

/// A record as the in-process store holds it.
#[derive(Debug, Clone)]
enum Record {
    Running {
        token: LeaseToken,
        fingerprint: Fingerprint,
    },
    Committed {
        token: LeaseToken,
        fingerprint: Fingerprint,
        pending: Pending,
    },
    Done {
        fingerprint: Fingerprint,
        outcome: Outcome,
    },
}

impl Record {
    /// Whether `token` holds it (running or committed).
    fn held_by(&self, t: LeaseToken) -> bool {
        matches!(self, Self::Running { token, .. } | Self::Committed { token, .. } if *token == t)
    }
}

#[derive(Default)]
struct Inner {
    /// Each record, and when it was stored (committed and done records expire
    /// after the TTL; running ones live as long as their holder).
    records: HashMap<WriteKey, (Instant, Record)>,
    order: VecDeque<(Instant, WriteKey)>,
}

/// The in-process store: the default, for one replica.
pub struct MemoryWrites {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl MemoryWrites {
    /// Committed and completed writes are kept for `ttl` (the TTL given to
    /// `commit` and `complete` is the same setting).
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
            // CAPACITY records at most; the order holds up to two entries
            // per record (its commit and its outcome), and entries a later
            // step made stale go as they reach the front.
            if now.duration_since(*t) < ttl
                && self.records.len() <= CAPACITY
                && self.order.len() <= 2 * CAPACITY
            {
                break;
            }
            if let Some((t, k)) = self.order.pop_front()
                && self
                    .records
                    .get(&k)
                    .is_some_and(|(at, r)| *at == t && !matches!(r, Record::Running { .. }))
            {
                self.records.remove(&k);
            }
        }
    }

    fn store(&mut self, key: &WriteKey, r: Record) {
        let now = Instant::now();
        let lasting = !matches!(r, Record::Running { .. });
        self.records.insert(key.clone(), (now, r));
        if lasting {
            self.order.push_back((now, key.clone()));
        }
    }

    fn held(&self, key: &WriteKey, token: LeaseToken) -> bool {
        self.records.get(key).is_some_and(|(_, r)| r.held_by(token))
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
        if let Some((_, r)) = g.records.get(key) {
            return Ok(match r.clone() {
                Record::Running { fingerprint, .. } => Begin::Running { fingerprint },
                Record::Committed {
                    token,
                    fingerprint,
                    pending,
                } => Begin::Committed {
                    fingerprint,
                    token,
                    pending,
                },
                Record::Done {
                    fingerprint,
                    outcome,
                } => Begin::Done {
                    fingerprint,
                    outcome,
                },
            });
        }
        let token = LeaseToken::new();
        g.store(key, Record::Running { token, fingerprint });
        Ok(Begin::Go(token))
    }

    async fn renew(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        _: Fingerprint,
        _: Duration,
    ) -> Result<bool, StoreError> {
        Ok(matches!(
            self.lock()?.records.get(key),
            Some((_, Record::Running { token: t, .. })) if *t == token
        ))
    }

    async fn commit(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        pending: &Pending,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        if !matches!(g.records.get(key), Some((_, Record::Running { token: t, .. })) if *t == token)
        {
            return Ok(false);
        }
        g.store(
            key,
            Record::Committed {
                token,
                fingerprint,
                pending: pending.clone(),
            },
        );
        Ok(true)
    }

    async fn complete(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        outcome: &Outcome,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        g.expire(self.ttl);
        if g.records.contains_key(key) && !g.held(key, token) {
            return Ok(false);
        }
        g.store(
            key,
            Record::Done {
                fingerprint,
                outcome: outcome.clone(),
            },
        );
        Ok(true)
    }

    async fn give_up(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        pending: &Pending,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        match g.records.get_mut(key) {
            Some((_, r @ Record::Committed { .. })) if r.held_by(token) => {
                *r = Record::Committed {
                    token,
                    fingerprint,
                    pending: pending.clone(),
                };
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn take_over(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        _lease: Duration,
    ) -> Result<Option<LeaseToken>, StoreError> {
        let mut g = self.lock()?;
        if !matches!(g.records.get(key), Some((_, Record::Committed { token: t, .. })) if *t == token)
        {
            return Ok(None);
        }
        let new = LeaseToken::new();
        g.store(
            key,
            Record::Running {
                token: new,
                fingerprint,
            },
        );
        Ok(Some(new))
    }

    async fn abandon(&self, key: &WriteKey, token: LeaseToken) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if g.held(key, token) {
            g.records.remove(key);
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

    /// Each write leaves two entries in the order (its commit, its outcome):
    /// the bound is on records, so as many writes as CAPACITY stay remembered
    /// for their TTL.
    #[tokio::test]
    async fn the_bound_counts_records_not_steps() {
        let r = MemoryWrites::new(Duration::from_secs(600));
        let ttl = Duration::from_secs(600);
        let n = CAPACITY * 3 / 4;
        for i in 0..n {
            let (k, fp) = (key("c", &i.to_string()), Fingerprint::of(&[b"d"]));
            let Begin::Go(t) = r.begin(&k, fp, LEASE).await.unwrap() else {
                panic!("first")
            };
            let pending = Pending {
                committed_at_ms: 0,
                given_up: false,
                message_id: i.to_string(),
                attempt: Attempt::Delete {
                    attachment_id: "a".into(),
                },
            };
            assert!(r.commit(&k, t, fp, &pending, ttl).await.unwrap());
            let done = Outcome::MessageId(i.to_string());
            assert!(r.complete(&k, t, fp, &done, ttl).await.unwrap());
        }
        let first = r
            .begin(&key("c", "0"), Fingerprint::of(&[b"d"]), LEASE)
            .await;
        assert!(matches!(first, Ok(Begin::Done { .. })), "{first:?}");
        let g = r.lock().unwrap();
        assert!(g.records.len() <= CAPACITY && g.order.len() <= 2 * CAPACITY);
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
