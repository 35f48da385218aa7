//! What this replica remembers of the write records it stored, bounded, and
//! how it puts them back into a Redis that lost them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::redis::conn::{EPOCH_GRACE, Redis, millis};

/// How long restoring keeps trying (Redis may still be loading).
const RESTORE_FOR: Duration = Duration::from_secs(30);

/// The records this replica wrote, kept in memory until they expire, bounded;
/// the oldest go first.
#[derive(Default)]
pub(super) struct Mirror {
    /// Redis key -> (value, expiry, generation).
    map: HashMap<String, (String, Instant, u64)>,
    order: VecDeque<(u64, String)>,
    bytes: usize,
    generation: u64,
    /// The key of the outcome stored last.
    newest_done: Option<String>,
}

impl Mirror {
    pub(super) fn put(&mut self, key: &str, value: String, ttl: Duration) {
        self.generation += 1;
        let g = self.generation;
        let size = key.len() + value.len();
        if let Some((old, _, _)) = self
            .map
            .insert(key.to_string(), (value, Instant::now() + ttl, g))
        {
            self.bytes -= key.len() + old.len();
        }
        self.bytes += size;
        if self
            .map
            .get(key)
            .is_some_and(|(v, _, _)| v.starts_with("d|"))
        {
            self.newest_done = Some(key.to_string());
        }
        self.order.push_back((g, key.to_string()));
        while self.map.len() > MIRROR_RECORDS
            || self.bytes > MIRROR_BYTES
            || self.order.len() > 2 * MIRROR_RECORDS
        {
            let Some((g, k)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, _, at)| *at == g)
                && let Some((v, _, _)) = self.map.remove(&k)
            {
                self.bytes -= k.len() + v.len();
            }
        }
    }

    /// The outcome stored last, if still held: its key and the time it has left.
    pub(super) fn newest_done(&self) -> Option<(String, Duration)> {
        let k = self.newest_done.as_ref()?;
        let (v, left) = self.get(k)?;
        v.starts_with("d|").then(|| (k.clone(), left))
    }

    /// Puts a running value unless the key already holds an outcome.
    pub(super) fn put_unless_done(&mut self, key: &str, value: String, ttl: Duration) {
        if self
            .map
            .get(key)
            .is_some_and(|(v, _, _)| v.starts_with("d|"))
        {
            return;
        }
        self.put(key, value, ttl);
    }

    pub(super) fn get(&self, key: &str) -> Option<(String, Duration)> {
        let (v, until, _) = self.map.get(key)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some((v.clone(), left))
    }

    pub(super) fn forget(&mut self, key: &str) {
        if let Some((v, _, _)) = self.map.remove(key) {
            self.bytes -= key.len() + v.len();
        }
    }

    /// Forgets the record under `key` when the token `token_hex` holds it
    /// (running or committed); a record another holds, or an outcome, stays.
    pub(super) fn forget_held(&mut self, key: &str, token_hex: &str) {
        let held = self.map.get(key).is_some_and(|(v, _, _)| {
            ["r|", "c|"].iter().any(|state| {
                v.strip_prefix(state)
                    .and_then(|rest| rest.strip_prefix(token_hex))
                    .is_some_and(|rest| rest.starts_with('|'))
            })
        });
        if held {
            self.forget(key);
        }
    }

    /// What has not expired: key, value, time left.
    pub(super) fn live(&self) -> Vec<(String, String, Duration)> {
        let now = Instant::now();
        self.map
            .iter()
            .filter_map(|(k, (v, until, _))| {
                until
                    .checked_duration_since(now)
                    .map(|left| (k.clone(), v.clone(), left))
            })
            .collect()
    }
}

/// Records (and bytes) one replica keeps to put back into a Redis that lost them.
const MIRROR_RECORDS: usize = 50_000;
const MIRROR_BYTES: usize = 32 << 20;

/// Puts `live` records back (`SET NX`: what another replica wrote since wins),
/// in pipelines of a bounded size, trying again for up to `RESTORE_FOR` while
/// Redis is not ready (a restarted Redis may still be loading), and keeping the
/// grace period (`restoring_key`) up while it works so that no write whose
/// record is on its way runs.
pub(super) async fn put_back(
    redis: &Redis,
    restoring_key: &str,
    live: &[(String, String, Duration)],
) {
    let until = tokio::time::Instant::now() + RESTORE_FOR;
    let mut restored = 0usize;
    for chunk in live.chunks(500) {
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(restoring_key)
                .arg(1)
                .arg("PX")
                .arg(millis(EPOCH_GRACE))
                .ignore();
            for (k, v, left) in chunk {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(v)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(*left))
                    .ignore();
            }
            match redis
                .run(async move |mut c| pipe.query_async::<()>(&mut c).await)
                .await
            {
                Ok(()) => {
                    restored += chunk.len();
                    break;
                }
                Err(e) if tokio::time::Instant::now() < until => {
                    tracing::warn!(error = %e, restored, "putting write records back into Redis: trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, restored, left = live.len() - restored, "putting write records back into Redis failed: those writes may run again if retried");
                    return;
                }
            }
        }
    }
    tracing::info!(restored, "write records put back into Redis");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_holders_abandon_forgets_its_record() {
        let mut m = Mirror::default();
        let ttl = Duration::from_secs(60);
        m.put("run", "r|aa|fp".into(), ttl);
        m.put("com", "c|bb|fp|{}".into(), ttl);
        m.put("done", "d|fp|{}".into(), ttl);
        m.forget_held("run", "a");
        m.forget_held("run", "bb");
        m.forget_held("com", "aa");
        m.forget_held("done", "aa");
        assert!(m.get("run").is_some() && m.get("com").is_some() && m.get("done").is_some());
        m.forget_held("run", "aa");
        m.forget_held("com", "bb");
        assert!(m.get("run").is_none() && m.get("com").is_none());
    }

    #[tokio::test]
    async fn the_mirror_is_bounded_and_keeps_its_byte_count() {
        let mut m = Mirror::default();
        for i in 0..MIRROR_RECORDS + 10 {
            m.put(&format!("k{i}"), "v".repeat(10), Duration::from_secs(60));
        }
        assert_eq!(m.map.len(), MIRROR_RECORDS);
        assert!(m.get("k0").is_none(), "the oldest went first");
        assert!(m.get(&format!("k{}", MIRROR_RECORDS + 9)).is_some());
        // Replacing a record (running -> done) counts its bytes once.
        m.put("k100", "x".repeat(1000), Duration::from_secs(60));
        let sum: usize = m.map.iter().map(|(k, (v, _, _))| k.len() + v.len()).sum();
        assert_eq!(m.bytes, sum);
        m.forget("k100");
        let sum: usize = m.map.iter().map(|(k, (v, _, _))| k.len() + v.len()).sum();
        assert_eq!(m.bytes, sum);
        // Large records are bounded by bytes.
        let mut m = Mirror::default();
        for i in 0..100 {
            m.put(
                &format!("k{i}"),
                "v".repeat(1 << 20),
                Duration::from_secs(60),
            );
        }
        assert!(m.bytes <= MIRROR_BYTES);
        assert!(m.live().len() <= 32);
    }
}
