//! Bounds on work in progress: at most N at once on this replica, and at most M of
//! them for any one caller, so one caller cannot hold every slot. Refused at once,
//! never queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Refusal;

/// Slots for one kind of work (uploads, downloads).
pub struct Concurrency {
    /// `uploads` or `downloads`: the limits are `concurrent_<what>` and
    /// `concurrent_<what>_per_caller`.
    limit: &'static str,
    per_caller_limit: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    max_per_caller: usize,
    /// Slots held per caller; a caller's entry goes with its last slot, so the map
    /// holds at most `max` entries.
    held: Mutex<HashMap<Arc<str>, usize>>,
}

/// One slot, released when dropped.
pub struct Slot {
    owner: Arc<Concurrency>,
    caller: Arc<str>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.owner.held.lock()
            && let Some(n) = held.get_mut(&self.caller)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

impl Concurrency {
    pub fn new(
        limit: &'static str,
        per_caller_limit: &'static str,
        max: usize,
        max_per_caller: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_caller_limit,
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            max_per_caller: max_per_caller.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `caller` (its identity with its kind), or says which limit
    /// refuses it.
    pub fn try_acquire(self: &Arc<Self>, caller: &Arc<str>) -> Result<Slot, Refusal> {
        let Ok(mut held) = self.held.lock() else {
            return Err(self.refusal(self.limit, "gateway".into(), self.max, "on this replica"));
        };
        let mine = held.get(caller).copied().unwrap_or(0);
        if mine >= self.max_per_caller {
            return Err(self.refusal(
                self.per_caller_limit,
                format!("caller:{caller}"),
                self.max_per_caller,
                "per caller on this replica",
            ));
        }
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Err(self.refusal(self.limit, "gateway".into(), self.max, "on this replica"));
        };
        *held.entry(Arc::clone(caller)).or_insert(0) += 1;
        Ok(Slot {
            owner: Arc::clone(self),
            caller: Arc::clone(caller),
            _permit: permit,
        })
    }

    fn refusal(&self, limit: &'static str, subject: String, n: usize, scope: &str) -> Refusal {
        let what = self.limit.trim_start_matches("concurrent_");
        Refusal {
            limit,
            subject,
            description: format!("at most {n} {what} at once {scope}"),
            retry_after: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_cannot_take_every_slot() {
        let c = Concurrency::new("concurrent_uploads", "concurrent_uploads_per_caller", 3, 2);
        let a: Arc<str> = "api_key:a".into();
        let b: Arc<str> = "api_key:b".into();
        let a1 = c.try_acquire(&a).unwrap();
        let _a2 = c.try_acquire(&a).unwrap();
        assert_eq!(
            c.try_acquire(&a).err().map(|r| r.limit),
            Some("concurrent_uploads_per_caller")
        );
        let _b1 = c.try_acquire(&b).unwrap();
        assert_eq!(
            c.try_acquire(&b).err().map(|r| r.limit),
            Some("concurrent_uploads"),
            "the replica's bound"
        );
        drop(a1);
        let _b2 = c.try_acquire(&b).unwrap();
        assert_eq!(c.held.lock().unwrap().len(), 2);
    }
}
