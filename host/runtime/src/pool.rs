//! The worker pool: a fixed set of OS threads that run guest code, so that synchronous wasm
//! execution never blocks the async reactor. Jobs queue when every worker is busy.

use std::thread::JoinHandle;

use crossbeam_channel::{Sender, unbounded};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed-size pool of guest-running threads.
pub struct WorkerPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `threads` workers with `stack_bytes` stacks.
    pub fn new(threads: usize, stack_bytes: usize) -> std::io::Result<WorkerPool> {
        let (tx, rx) = unbounded::<Job>();
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new().name(format!("kiln-worker-{i}")).stack_size(stack_bytes).spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(WorkerPool { tx: Some(tx), threads })
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
        self.tx.as_ref()?.send(job).ok()?;
        rx.await.ok()
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.tx.take();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last reference may be dropped by a worker itself; it cannot join itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}
