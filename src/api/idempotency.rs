//! Completed writes, remembered for `upstream.idempotency_ttl` by (call, work
//! order, the caller's message id). A caller that retries a write after losing its
//! answer gets the first answer again instead of a second upload or a NOT_FOUND
//! from a second delete; a retry while the first is still running gets ABORTED.
//! Writes without a caller-given message id are not remembered (the gateway made
//! the id up, so no retry can carry it). The record is per replica.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::proto::wire::UploadAttachmentResponse;

/// The most writes remembered at once; the oldest go first.
const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub call: &'static str,
    pub work_order_id: i64,
    pub message_id: String,
}

#[derive(Debug, Clone)]
pub enum Answer {
    Upload(UploadAttachmentResponse),
    MessageId(String),
}

#[derive(Default)]
struct Inner {
    done: HashMap<Key, (Instant, Answer)>,
    order: VecDeque<(Instant, Key)>,
    running: HashSet<Key>,
}

pub struct WriteRecord {
    ttl: Duration,
    inner: Mutex<Inner>,
}

pub enum Begin {
    /// Done before: here is its answer.
    Replay(Answer),
    /// The same write is running now.
    Running,
    /// Go ahead; complete the guard with the answer on success.
    Go(Guard),
}

pub struct Guard {
    record: Arc<WriteRecord>,
    key: Key,
}

impl Guard {
    pub fn complete(self, answer: Answer) {
        if let Ok(mut g) = self.record.inner.lock() {
            let now = Instant::now();
            g.done.insert(self.key.clone(), (now, answer));
            g.order.push_back((now, self.key.clone()));
            while g.order.len() > CAPACITY {
                if let Some((_, k)) = g.order.pop_front() {
                    g.done.remove(&k);
                }
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut g) = self.record.inner.lock() {
            g.running.remove(&self.key);
        }
    }
}

impl WriteRecord {
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn begin(self: &Arc<Self>, key: Key) -> Begin {
        let Ok(mut g) = self.inner.lock() else {
            return Begin::Go(Guard {
                record: Arc::clone(self),
                key,
            });
        };
        let now = Instant::now();
        while let Some((t, _)) = g.order.front() {
            if now.duration_since(*t) < self.ttl {
                break;
            }
            if let Some((t, k)) = g.order.pop_front()
                && g.done.get(&k).is_some_and(|(at, _)| *at == t)
            {
                g.done.remove(&k);
            }
        }
        if let Some((_, answer)) = g.done.get(&key) {
            return Begin::Replay(answer.clone());
        }
        if !g.running.insert(key.clone()) {
            return Begin::Running;
        }
        Begin::Go(Guard {
            record: Arc::clone(self),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        Key {
            call: "delete",
            work_order_id: 1,
            message_id: id.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replays_within_the_ttl_only() {
        let r = WriteRecord::new(Duration::from_secs(60));
        let Begin::Go(g) = r.begin(key("a")) else {
            panic!("first")
        };
        assert!(matches!(r.begin(key("a")), Begin::Running));
        g.complete(Answer::MessageId("m".into()));
        assert!(matches!(r.begin(key("a")), Begin::Replay(Answer::MessageId(m)) if m == "m"));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(r.begin(key("a")), Begin::Go(_)));
    }

    #[tokio::test]
    async fn a_failed_write_is_not_remembered() {
        let r = WriteRecord::new(Duration::from_secs(60));
        let Begin::Go(g) = r.begin(key("b")) else {
            panic!("first")
        };
        drop(g); // failed: no answer
        assert!(matches!(r.begin(key("b")), Begin::Go(_)));
    }
}
