//! The worker pool: a fixed set of OS threads that run guest code, so that synchronous wasm
//! execution never blocks the async reactor. Jobs queue when every worker is busy.
//!
//! Idle workers take jobs last-in first-out: under light load the same two or so threads
//! serve the calls, one running a call while the other finishes the previous call's cleanup
//! (a slot reset), instead of four threads taking turns and the scheduler putting a new call
//! on the core that is still busy with that cleanup.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// What the workers share: jobs not yet taken, the idle workers (most recently idle last),
/// and each worker's mailbox.
struct State {
    queue: VecDeque<Job>,
    idle: Vec<usize>,
    mailbox: Vec<Option<Job>>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Vec<Condvar>,
}

/// A fixed-size pool of guest-running threads.
pub struct WorkerPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `threads` workers with `stack_bytes` stacks.
    pub fn new(threads: usize, stack_bytes: usize) -> std::io::Result<WorkerPool> {
        let n = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: Vec::with_capacity(n),
                mailbox: (0..n).map(|_| None).collect(),
                closed: false,
            }),
            wake: (0..n).map(|_| Condvar::new()).collect(),
        });
        let mut pool = WorkerPool { shared: shared.clone(), threads: Vec::with_capacity(n) };
        for i in 0..n {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("kiln-worker-{i}"))
                .stack_size(stack_bytes)
                .spawn(move || work(&shared, i))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Runs `f` on a worker and waits for the first part of its result without blocking the
    /// reactor; the second part is dropped on the worker after replying, so cleanup stays
    /// off the caller's path.
    pub async fn run<R: Send + 'static, D: 'static>(&self, f: impl FnOnce() -> (R, D) + Send + 'static) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let (result, cleanup) = f();
            let _ = reply.send(result);
            drop(cleanup);
        });
        self.submit(job)?;
        rx.await.ok()
    }

    /// Hands `job` to the most recently idle worker, or queues it; `None` once closed.
    fn submit(&self, job: Job) -> Option<()> {
        let mut state = self.shared.state.lock();
        if state.closed {
            return None;
        }
        match state.idle.pop() {
            Some(worker) => {
                state.mailbox[worker] = Some(job);
                drop(state);
                self.shared.wake[worker].notify_one();
            }
            None => state.queue.push_back(job),
        }
        Some(())
    }
}

/// A worker's loop: its mailbox, then the queue, else wait as the most recently idle worker.
/// Jobs handed out or queued before the pool closed still run.
fn work(shared: &Shared, me: usize) {
    loop {
        let job = {
            let mut state = shared.state.lock();
            loop {
                if let Some(job) = state.mailbox[me].take() {
                    break Some(job);
                }
                if let Some(job) = state.queue.pop_front() {
                    state.idle.retain(|&w| w != me);
                    break Some(job);
                }
                if state.closed {
                    break None;
                }
                if !state.idle.contains(&me) {
                    state.idle.push(me);
                }
                shared.wake[me].wait(&mut state);
            }
        };
        match job {
            Some(job) => job(),
            None => return,
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
        for wake in &self.shared.wake {
            wake.notify_all();
        }
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last reference may be dropped by a worker itself; it cannot join itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_runs_once_and_cleanup_follows_the_reply() {
        let pool = Arc::new(WorkerPool::new(3, 1 << 20).expect("pool"));
        let (runs, cleanups) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        struct Cleanup(Arc<AtomicUsize>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(1));
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (pool, runs, cleanups) = (pool.clone(), runs.clone(), cleanups.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        (i, Cleanup(cleanups))
                    })
                    .await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.expect("task"), Some(i));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 200);
        // Dropping the pool waits for the workers, so every cleanup has run by then.
        drop(Arc::into_inner(pool).expect("last reference"));
        assert_eq!(cleanups.load(Ordering::SeqCst), 200);
    }

    #[tokio::test]
    async fn a_closed_pool_refuses_jobs() {
        let pool = WorkerPool::new(1, 1 << 20).expect("pool");
        pool.shared.state.lock().closed = true;
        assert_eq!(pool.run(|| (1, ())).await, None);
    }
}
