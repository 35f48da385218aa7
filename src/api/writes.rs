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

use super::deadline::Bounds;
use super::error::{Error, Op};
use crate::domain::MessageId;
use crate::proto::wire::UploadAttachmentResponse;
use crate::upstream::UpstreamError;

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

/// How a remembered write starts.
pub enum Start {
    /// Done before: answer as then.
    Replay(Answer),
    /// Go ahead; complete the guard (when there is one) with the answer.
    Go(Option<Guard>),
}

/// The writes of this gateway, remembered by the caller's message id.
#[derive(Clone)]
pub struct Writes {
    record: Arc<WriteRecord>,
}

impl Writes {
    pub fn new(ttl: Duration) -> Self {
        Self {
            record: WriteRecord::new(ttl),
        }
    }

    /// Starts a write, remembered by the caller's message id when it sent one.
    pub fn begin(
        &self,
        call: &'static str,
        work_order_id: i64,
        caller_message_id: &str,
    ) -> Result<Start, Error> {
        if caller_message_id.is_empty() {
            return Ok(Start::Go(None));
        }
        match self.record.begin(Key {
            call,
            work_order_id,
            message_id: caller_message_id.to_string(),
        }) {
            Begin::Replay(answer) => Ok(Start::Replay(answer)),
            Begin::Running => Err(Error::WriteInProgress),
            Begin::Go(guard) => Ok(Start::Go(Some(guard))),
        }
    }

    /// Runs a metadata write (update, delete) once per caller message id: a retry
    /// of a completed write gets the first answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn once(
        &self,
        bounds: &Bounds,
        call: &'static str,
        work_order_id: i64,
        caller_message_id: &str,
        sent: &MessageId,
        deadline: Instant,
        what: &'static str,
        fut: impl Future<Output = Result<Option<String>, UpstreamError>>,
    ) -> Result<String, Error> {
        let guard = match self.begin(call, work_order_id, caller_message_id)? {
            Start::Replay(Answer::MessageId(m)) => return Ok(m),
            Start::Replay(Answer::Upload(_)) => None,
            Start::Go(g) => g,
        };
        let received = bounds.run(deadline, Op::Write, what, fut).await?;
        // The upstream's message id when it answers one, else the one sent.
        let message_id = received.unwrap_or_else(|| sent.as_str().to_string());
        if let Some(g) = guard {
            g.complete(Answer::MessageId(message_id.clone()));
        }
        Ok(message_id)
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
