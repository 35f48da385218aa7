//! Periodic background work tied to an object's life: key and file reloads, the
//! forgetting of idle state. The task holds only a weak reference, so it ends
//! once the object is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `work` on `target` every `period`, the first time one period from now,
/// until `target` is dropped everywhere else. A run that overruns delays the
/// next one instead of piling up.
pub fn every<T, F, Fut>(target: &Arc<T>, period: Duration, work: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak: Weak<T> = Arc::downgrade(target);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(target) = weak.upgrade() else { return };
            work(target).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn runs_each_period_and_stops_with_its_target() {
        let n = Arc::new(AtomicU32::new(0));
        every(&n, Duration::from_secs(10), |n| async move {
            n.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
        let weak = Arc::downgrade(&n);
        drop(n);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            weak.upgrade().is_none(),
            "the task keeps no strong reference"
        );
    }
}
