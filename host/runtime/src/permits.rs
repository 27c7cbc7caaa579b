//! A deployment's permits for queries and mutations in progress on workers: a counting
//! semaphore with two FIFO lanes. A released permit goes to the first waiter of the priority
//! lane, else to the first of the normal lane.
//!
//! Why two lanes: a retry that takes its turn among writers of the same documents holds that
//! turn until its commit is validated, and the writers behind it wait for it. Queued behind
//! every first attempt for a permit (64 clients on 4 permits: ~10 ms), it held the turn that
//! long and the queue behind it grew to tens of milliseconds (the hot-account tail). Retries
//! that hold turns take the priority lane: the turn is held for about one call.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The permits of one deployment.
pub(crate) struct Permits {
    state: Mutex<State>,
}

struct State {
    /// Free permits; below zero after the limit shrank while permits were out (those are not
    /// given again when they come back).
    available: i64,
    priority: VecDeque<oneshot::Sender<Permit>>,
    normal: VecDeque<oneshot::Sender<Permit>>,
}

/// A permit, given back when dropped.
pub(crate) struct Permit {
    permits: Arc<Permits>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.release();
    }
}

impl Permits {
    /// `n` permits.
    pub(crate) fn new(n: usize) -> Arc<Self> {
        let available = i64::try_from(n).unwrap_or(i64::MAX);
        Arc::new(Permits { state: Mutex::new(State { available, priority: VecDeque::new(), normal: VecDeque::new() }) })
    }

    /// Waits for a permit in the priority lane or the normal one. Dropping the future gives
    /// up its place (and a permit it was just handed goes back). `None` cannot happen while
    /// the permits exist (a waiter's sender is dropped only once it has sent).
    pub(crate) async fn acquire(self: &Arc<Self>, priority: bool) -> Option<Permit> {
        let waiting = {
            let mut s = self.state.lock();
            let ahead = if priority { s.priority.len() } else { s.priority.len() + s.normal.len() };
            if s.available > 0 && ahead == 0 {
                s.available -= 1;
                return Some(Permit { permits: self.clone() });
            }
            let (tx, rx) = oneshot::channel();
            if priority {
                s.priority.push_back(tx)
            } else {
                s.normal.push_back(tx)
            }
            rx
        };
        waiting.await.ok()
    }

    /// Adds `n` permits (the limit grew).
    pub(crate) fn add(self: &Arc<Self>, n: usize) {
        for _ in 0..n {
            self.release();
        }
    }

    /// Takes `n` permits out of circulation (the limit shrank): free ones at once, the rest
    /// as they come back.
    pub(crate) fn forget(&self, n: usize) {
        self.state.lock().available -= i64::try_from(n).unwrap_or(i64::MAX);
    }

    /// Hands a permit to the first live waiter, or makes it free.
    fn release(self: &Arc<Self>) {
        loop {
            let next = {
                let mut s = self.state.lock();
                let next =
                    if s.available >= 0 { s.priority.pop_front().or_else(|| s.normal.pop_front()) } else { None };
                match next {
                    Some(tx) => tx,
                    None => {
                        s.available += 1;
                        return;
                    }
                }
            };
            match next.send(Permit { permits: self.clone() }) {
                Ok(()) => return,
                // That waiter gave up: the permit goes to the next one (without the drop that
                // would release it again).
                Err(permit) => std::mem::forget(permit),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `f` finishes within a short while.
    async fn ready<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(50), f).await.ok()
    }

    #[tokio::test]
    async fn a_released_permit_goes_to_the_priority_lane_first_and_fifo_within_a_lane() {
        let permits = Permits::new(1);
        let held = permits.acquire(false).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [("n1", false), ("n2", false), ("p1", true), ("p2", true)] {
            let (permits, order) = (permits.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = permits.acquire(priority).await.unwrap();
                order.lock().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Queued in this order.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), vec!["p1", "p2", "n1", "n2"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_permit() {
        let permits = Permits::new(1);
        let held = permits.acquire(false).await.unwrap();
        // Gives up while queued.
        assert!(ready(permits.acquire(true)).await.is_none());
        drop(held);
        let again = ready(permits.acquire(false)).await.flatten().expect("the permit came back");
        // Handed a permit, then dropped before it was taken: it comes back too.
        let (permits2, waiter) = (
            permits.clone(),
            tokio::spawn({
                let permits = permits.clone();
                async move { permits.acquire(false).await }
            }),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        drop(again);
        let _ = waiter.await;
        assert!(ready(permits2.acquire(false)).await.flatten().is_some());
    }

    #[tokio::test]
    async fn the_limit_grows_and_shrinks() {
        let permits = Permits::new(2);
        let (a, b) = (permits.acquire(false).await.unwrap(), permits.acquire(false).await.unwrap());
        assert!(ready(permits.acquire(false)).await.is_none());
        permits.add(1);
        let c = ready(permits.acquire(false)).await.flatten().expect("a third permit");
        permits.forget(2);
        drop(a);
        drop(b);
        // Two of the three out were taken out of circulation: one remains, and it is out.
        assert!(ready(permits.acquire(false)).await.is_none());
        drop(c);
        assert!(ready(permits.acquire(false)).await.flatten().is_some());
    }
}
