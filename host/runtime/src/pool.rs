//! The worker pool: a fixed set of OS threads that run guest code, so that synchronous wasm
//! execution never blocks the async reactor. Jobs queue when every worker is busy.
//!
//! Jobs belong to tenants (deployments), and the pool is shared fairly between them: each
//! tenant has its own queue, queued jobs are taken from the tenants in turn, and no tenant
//! runs on more than `threads - 1` workers at once, so one tenant's slow or spinning calls
//! always leave a worker to the others.
//!
//! Idle workers take jobs last-in first-out: under light load the same two or so threads
//! serve the calls, one running a call while the other finishes the previous call's cleanup
//! (a slot reset), instead of four threads taking turns and the scheduler putting a new call
//! on the core that is still busy with that cleanup.
//!
//! A caller whose job is the only one in flight waits for its reply actively for a short
//! while (yielding its core at every look) instead of parking its thread. Parking lets the
//! core go idle, and on a virtual machine whose idle cores halt, waking one costs 15–20 µs —
//! twice per call, once for the worker and once for the caller, which is more than a small
//! call's own work. A yielding caller keeps its core awake and lends it to the worker it woke,
//! which the scheduler places beside it. Under load no job is alone, so nobody waits actively;
//! nor does anybody once recent jobs took longer than the wait allows.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

type Run = Box<dyn FnOnce() + Send>;

/// A job and the tenant it runs for.
struct Job {
    tenant: u64,
    run: Run,
}

/// What the workers share: jobs not yet taken (a queue per tenant, and the tenants with
/// queued jobs in turn order), jobs running per tenant, the idle workers (most recently idle
/// last), and each worker's mailbox.
struct State {
    queues: HashMap<u64, VecDeque<Run>>,
    turns: VecDeque<u64>,
    running: HashMap<u64, usize>,
    /// Workers one tenant may occupy at once.
    cap: usize,
    idle: Vec<usize>,
    mailbox: Vec<Option<Job>>,
    closed: bool,
}

impl State {
    fn start(&mut self, tenant: u64) {
        *self.running.entry(tenant).or_default() += 1;
    }

    fn finish(&mut self, tenant: u64) {
        if let Some(n) = self.running.get_mut(&tenant) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(&tenant);
            }
        }
    }

    fn may_start(&self, tenant: u64) -> bool {
        self.running.get(&tenant).copied().unwrap_or(0) < self.cap
    }

    fn enqueue(&mut self, job: Job) {
        let queue = self.queues.entry(job.tenant).or_default();
        if queue.is_empty() {
            self.turns.push_back(job.tenant);
        }
        queue.push_back(job.run);
    }

    /// The next queued job of the first tenant in turn that may start one; that tenant's
    /// turn moves to the back.
    fn next_queued(&mut self) -> Option<Job> {
        let at = self.turns.iter().position(|&t| self.may_start(t))?;
        let tenant = self.turns.remove(at)?;
        let queue = self.queues.get_mut(&tenant)?;
        let run = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&tenant);
        } else {
            self.turns.push_back(tenant);
        }
        self.start(tenant);
        Some(Job { tenant, run })
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Vec<Condvar>,
    /// Jobs submitted and not yet replied to.
    in_flight: AtomicUsize,
    /// A moving average of jobs' time from start to reply, in nanoseconds.
    reply_ns: AtomicU64,
    /// Active waits begun, and those that saw their reply.
    waits: [AtomicU64; 2],
}

/// A fixed-size pool of guest-running threads.
pub struct WorkerPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// How long a lone job's caller waits for its reply actively; zero never does.
    active_wait: Duration,
}

/// Counts a job as in flight until it replies (or is dropped unrun, or unwinds).
struct InFlight(Arc<Shared>);

impl InFlight {
    /// Counts a new job; whether it is the only one in flight.
    fn begin(shared: &Arc<Shared>) -> (InFlight, bool) {
        let alone = shared.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        (InFlight(shared.clone()), alone)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WorkerPool {
    /// Starts `threads` workers named `name-<i>` with `stack_bytes` stacks, at the OS
    /// scheduling priority `nice` (0: the process's own); callers of lone jobs wait for their
    /// reply actively for up to `active_wait`.
    pub fn new(
        name: &str,
        threads: usize,
        stack_bytes: usize,
        nice: i32,
        active_wait: Duration,
    ) -> std::io::Result<WorkerPool> {
        let n = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queues: HashMap::new(),
                turns: VecDeque::new(),
                running: HashMap::new(),
                cap: (n - 1).max(1),
                idle: Vec::with_capacity(n),
                mailbox: (0..n).map(|_| None).collect(),
                closed: false,
            }),
            wake: (0..n).map(|_| Condvar::new()).collect(),
            in_flight: AtomicUsize::new(0),
            reply_ns: AtomicU64::new(0),
            waits: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let mut pool = WorkerPool { shared: shared.clone(), threads: Vec::with_capacity(n), active_wait };
        for i in 0..n {
            let shared = shared.clone();
            let thread =
                std::thread::Builder::new().name(format!("{name}-{i}")).stack_size(stack_bytes).spawn(move || {
                    if nice != 0 {
                        lower_priority(nice);
                    }
                    work(&shared, i)
                })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Runs `f` on a worker and waits for the first part of its result without blocking the
    /// reactor (beyond a lone job's short active wait); the second part is dropped on the
    /// worker after replying, so cleanup stays off the caller's path.
    pub async fn run<R: Send + 'static, D: 'static>(
        &self,
        tenant: u64,
        f: impl FnOnce() -> (R, D) + Send + 'static,
    ) -> Option<R> {
        let (reply, mut rx) = oneshot::channel();
        let (in_flight, alone) = InFlight::begin(&self.shared);
        let run: Run = Box::new(move || {
            let started = Instant::now();
            let (result, cleanup) = f();
            let took = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            let average = &in_flight.0.reply_ns;
            let old = average.load(Ordering::Relaxed);
            // Races between workers lose a sample now and then; an average needs no more.
            average.store(old - old / 8 + took / 8, Ordering::Relaxed);
            drop(in_flight);
            let _ = reply.send(result);
            drop(cleanup);
        });
        self.submit(Job { tenant, run })?;
        if alone && let Some(result) = self.wait_actively(&mut rx) {
            return result;
        }
        rx.await.ok()
    }

    /// Polls `rx`, yielding the core between looks, while recent jobs replied within the
    /// active wait and until it has passed; `None` if the reply has not come by then.
    fn wait_actively<R>(&self, rx: &mut oneshot::Receiver<R>) -> Option<Option<R>> {
        let budget = self.active_wait.as_nanos().min(u64::MAX as u128) as u64;
        if budget == 0 || self.shared.reply_ns.load(Ordering::Relaxed) > budget {
            return None;
        }
        let until = Instant::now().checked_add(self.active_wait)?;
        self.shared.waits[0].fetch_add(1, Ordering::Relaxed);
        loop {
            match rx.try_recv() {
                Ok(result) => {
                    self.shared.waits[1].fetch_add(1, Ordering::Relaxed);
                    return Some(Some(result));
                }
                Err(TryRecvError::Closed) => return Some(None),
                Err(TryRecvError::Empty) if Instant::now() < until => std::thread::yield_now(),
                Err(TryRecvError::Empty) => return None,
            }
        }
    }

    /// Active waits begun, and those that saw their reply.
    #[cfg(test)]
    fn active_waits(&self) -> (u64, u64) {
        (self.shared.waits[0].load(Ordering::Relaxed), self.shared.waits[1].load(Ordering::Relaxed))
    }

    /// Hands `job` to the most recently idle worker if its tenant may start another job,
    /// or queues it; `None` once closed.
    fn submit(&self, job: Job) -> Option<()> {
        let mut state = self.shared.state.lock();
        if state.closed {
            return None;
        }
        if !state.may_start(job.tenant) {
            state.enqueue(job);
            return Some(());
        }
        match state.idle.pop() {
            Some(worker) => {
                state.start(job.tenant);
                state.mailbox[worker] = Some(job);
                drop(state);
                self.shared.wake[worker].notify_one();
            }
            None => state.enqueue(job),
        }
        Some(())
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux sets it per thread).
fn lower_priority(nice: i32) {
    // SAFETY: plain system calls on the calling thread's own id.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) } != 0;
    if failed {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "could not lower a worker's priority");
    }
}

/// A worker's loop: its mailbox, then the queue, else wait as the most recently idle worker.
/// Jobs handed out or queued before the pool closed still run.
fn work(shared: &Shared, me: usize) {
    let mut finished = None;
    loop {
        let job = {
            let mut state = shared.state.lock();
            if let Some(tenant) = finished.take() {
                state.finish(tenant);
            }
            loop {
                if let Some(job) = state.mailbox[me].take() {
                    break Some(job);
                }
                if let Some(job) = state.next_queued() {
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
            Some(Job { tenant, run }) => {
                run();
                finished = Some(tenant);
            }
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
        let pool = Arc::new(WorkerPool::new("test", 3, 1 << 20, 0, Duration::from_micros(100)).expect("pool"));
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
                    pool.run(0, move || {
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
        let pool = WorkerPool::new("test", 1, 1 << 20, 0, Duration::from_secs(1)).expect("pool");
        pool.shared.state.lock().closed = true;
        assert_eq!(pool.run(0, || (1, ())).await, None);
        assert_eq!(pool.shared.in_flight.load(Ordering::SeqCst), 0, "a refused job is not in flight");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_lone_jobs_caller_waits_actively() {
        let pool = Arc::new(WorkerPool::new("test", 2, 1 << 20, 0, Duration::from_secs(1)).expect("pool"));
        for i in 0..20 {
            assert_eq!(pool.run(0, move || (i, ())).await, Some(i));
        }
        assert_eq!(pool.active_waits(), (20, 20), "each sequential job was alone and quick");

        // A job in flight: the next caller parks instead.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let first = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(0, move || {
                    let _ = started.send(());
                    let _ = blocked.recv();
                    ("first", ())
                })
                .await
            })
        };
        running.await.expect("first job started");
        // (Another tenant: the first one may not take both workers.)
        assert_eq!(pool.run(1, || ("second", ())).await, Some("second"));
        release.send(()).expect("release");
        assert_eq!(first.await.expect("task"), Some("first"));
        assert_eq!(pool.active_waits().0, 21, "only the first job was alone");

        let quiet = WorkerPool::new("test", 1, 1 << 20, 0, Duration::ZERO).expect("pool");
        for i in 0..5 {
            assert_eq!(quiet.run(0, move || (i, ())).await, Some(i));
        }
        assert_eq!(quiet.active_waits(), (0, 0), "a zero wait never waits actively");
        let endless = WorkerPool::new("test", 1, 1 << 20, 0, Duration::MAX).expect("pool");
        assert_eq!(endless.run(0, || (7, ())).await, Some(7), "a wait past the clock's end is not taken");
    }

    /// A gate jobs wait at until it opens.
    #[derive(Default)]
    struct Gate(parking_lot::Mutex<bool>, parking_lot::Condvar);

    impl Gate {
        fn wait(&self) {
            let mut open = self.0.lock();
            while !*open {
                self.1.wait(&mut open);
            }
        }

        fn open(&self) {
            *self.0.lock() = true;
            self.1.notify_all();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_tenant_occupies_every_worker() {
        let pool = Arc::new(WorkerPool::new("test", 3, 1 << 20, 0, Duration::ZERO).expect("pool"));
        let gate = Arc::new(Gate::default());
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let blocked: Vec<_> = (0..6)
            .map(|i| {
                let (pool, gate, running, most) = (pool.clone(), gate.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(7, move || {
                        most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        gate.wait();
                        running.fetch_sub(1, Ordering::SeqCst);
                        (i, ())
                    })
                    .await
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the first tenant's jobs never started");
            tokio::task::yield_now().await;
        }
        // Tenant 7 waits at the gate on two of the three workers; another tenant still runs.
        let other = tokio::time::timeout(Duration::from_secs(10), pool.run(8, || ("other", ()))).await;
        assert_eq!(other.expect("the other tenant's job ran while tenant 7 waited"), Some("other"));
        assert_eq!(most.load(Ordering::SeqCst), 2, "tenant 7 never ran on more than threads - 1 workers");
        gate.open();
        for (i, job) in blocked.into_iter().enumerate() {
            assert_eq!(job.await.expect("task"), Some(i));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_tenants_take_turns() {
        let pool = Arc::new(WorkerPool::new("test", 1, 1 << 20, 0, Duration::ZERO).expect("pool"));
        let gate = Arc::new(Gate::default());
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (started, running) = tokio::sync::oneshot::channel();
        let first = {
            let (pool, gate) = (pool.clone(), gate.clone());
            tokio::spawn(async move {
                pool.run(9, move || {
                    let _ = started.send(());
                    gate.wait();
                    ((), ())
                })
                .await
            })
        };
        running.await.expect("the blocking job started");
        let mut queued = Vec::new();
        for (tenant, name) in [(1, "a1"), (1, "a2"), (1, "a3"), (2, "b1"), (3, "c1")] {
            let (submitter, order) = (pool.clone(), order.clone());
            queued
                .push(tokio::spawn(async move { submitter.run(tenant, move || (order.lock().push(name), ())).await }));
            // Queued in this order: each job reaches the pool before the next is spawned.
            while pool.shared.in_flight.load(Ordering::SeqCst) < queued.len() + 1 {
                tokio::task::yield_now().await;
            }
        }
        gate.open();
        first.await.expect("task");
        for job in queued {
            job.await.expect("task");
        }
        assert_eq!(*order.lock(), ["a1", "b1", "c1", "a2", "a3"], "one job of each tenant in turn");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_jobs_turn_active_waiting_off_until_jobs_are_quick_again() {
        let pool = WorkerPool::new("test", 1, 1 << 20, 0, Duration::from_millis(2)).expect("pool");
        for i in 0..30 {
            let out = pool
                .run(0, move || {
                    std::thread::sleep(Duration::from_millis(10));
                    (i, ())
                })
                .await;
            assert_eq!(out, Some(i), "a reply later than the wait still arrives");
        }
        let (begun, answered) = pool.active_waits();
        assert!(begun <= 3, "waits begun once jobs took 10 ms: {begun}");
        assert_eq!(answered, 0);
        for i in 0..60 {
            assert_eq!(pool.run(0, move || (i, ())).await, Some(i));
        }
        assert!(pool.active_waits().1 > 0, "quick jobs are waited for actively again");
    }
}
