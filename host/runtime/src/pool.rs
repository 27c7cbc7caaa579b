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
//! A job that runs long (a spinning query, say) gives up its worker's priority: the call
//! [`demote_current_worker`], which starts a replacement thread for the worker's place (at the
//! pool's own priority) and lowers its own thread's priority for the rest of the call; the
//! thread ends after it. Lowering a thread's priority needs no privilege, raising it back
//! would, hence the replacement. A neighbour's short calls then take the cores from spinning
//! calls at once, instead of sharing them equally.
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
    /// How the pool's threads are made: name prefix, stack size, priority.
    name: String,
    stack_bytes: usize,
    priority: Priority,
    /// The priority of a demoted thread; no demotion when it is the pool's own.
    demoted: Priority,
    /// Threads demoted and still running their job, and how many may be at once (each holds
    /// an instance slot beside its replacement's).
    demoted_now: AtomicUsize,
    max_demoted: usize,
    /// Replacement threads, joined when the pool is dropped.
    replacements: Mutex<Vec<JoinHandle<()>>>,
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
    /// scheduling `priority`; callers of lone jobs wait for their reply actively for up to
    /// `active_wait`.
    pub fn new(
        name: &str,
        threads: usize,
        stack_bytes: usize,
        priority: Priority,
        active_wait: Duration,
    ) -> std::io::Result<WorkerPool> {
        WorkerPool::with_demotion(name, threads, stack_bytes, priority, priority, active_wait)
    }

    /// [`WorkerPool::new`] whose threads running a long job may be demoted to `demoted`
    /// (see [`demote_current_worker`]); at most `threads` are demoted at once.
    pub fn with_demotion(
        name: &str,
        threads: usize,
        stack_bytes: usize,
        priority: Priority,
        demoted: Priority,
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
            name: name.to_owned(),
            stack_bytes,
            priority,
            demoted,
            demoted_now: AtomicUsize::new(0),
            max_demoted: n,
            replacements: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            reply_ns: AtomicU64::new(0),
            waits: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let mut pool = WorkerPool { shared: shared.clone(), threads: Vec::with_capacity(n), active_wait };
        for i in 0..n {
            pool.threads.push(spawn_worker(&shared, i)?);
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

/// Starts a thread serving as worker `me` of the pool.
fn spawn_worker(shared: &Arc<Shared>, me: usize) -> std::io::Result<JoinHandle<()>> {
    let shared = shared.clone();
    std::thread::Builder::new().name(format!("{}-{me}", shared.name)).stack_size(shared.stack_bytes).spawn(move || {
        lower_priority(shared.priority);
        kiln_persistence::allow_blocking_reads();
        CURRENT.with(|c| *c.borrow_mut() = Some(Current { shared: shared.clone(), me, demoted: false }));
        work(&shared, me);
        CURRENT.with(|c| c.borrow_mut().take());
    })
}

/// The pool and place of the worker running on this thread.
struct Current {
    shared: Arc<Shared>,
    me: usize,
    /// Set once the thread has handed its place to a replacement.
    demoted: bool,
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Current>> = const { std::cell::RefCell::new(None) };
}

/// Called by a long job on a worker: hands the worker's place to a new thread and lowers this
/// thread's priority for the rest of the job, after which the thread ends. Nothing happens
/// off a worker, on a thread already demoted, in a pool without demotion, or while as many
/// threads as the pool has workers are demoted. Whether it happened.
pub(crate) fn demote_current_worker() -> bool {
    CURRENT.with(|c| {
        let mut current = c.borrow_mut();
        let Some(cur) = current.as_mut() else { return false };
        let shared = &cur.shared;
        if cur.demoted || shared.demoted == shared.priority {
            return false;
        }
        if shared.demoted_now.fetch_add(1, Ordering::AcqRel) >= shared.max_demoted {
            shared.demoted_now.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        match spawn_worker(shared, cur.me) {
            Ok(thread) => {
                let mut replacements = shared.replacements.lock();
                // Replacements demoted in turn have ended: their handles need no join.
                replacements.retain(|t| !t.is_finished());
                replacements.push(thread);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start a worker to replace a demoted one");
                shared.demoted_now.fetch_sub(1, Ordering::AcqRel);
                return false;
            }
        }
        cur.demoted = true;
        lower_priority(shared.demoted);
        true
    })
}

/// Whether this thread was demoted (its place belongs to a replacement now).
fn was_demoted() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|cur| cur.demoted))
}

/// The OS scheduling priority of a pool's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// The process's own.
    Normal,
    /// A higher nice value (1 to 19), with a long time slice (see [`lower_priority`]): a
    /// smaller share of busy cores, and no delay for threads of normal priority that wake.
    Low(i32),
    /// Linux's `SCHED_IDLE`: the cores only when no thread of another policy wants them.
    Idle,
}

/// Lowers the calling thread's scheduling priority (Linux sets it per thread).
///
/// `Low` also asks for a long time slice, which Linux's EEVDF scheduler (6.12 and later)
/// takes for ordinary threads: a waking thread with the default, shorter slice then preempts
/// this one at once, where otherwise it waited for the running thread's slice to end however
/// low its priority (~1.5 ms a wait: a neighbour's point query had a p99 of 4.4 ms instead of
/// 0.4 ms beside 16 spinning actions). Older kernels ignore the slice.
fn lower_priority(priority: Priority) {
    /// Linux's `struct sched_attr` (`SCHED_ATTR_SIZE_VER0`).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let (policy, nice) = match priority {
        Priority::Normal => return,
        Priority::Low(nice) => (libc::SCHED_OTHER, nice.clamp(1, 19)),
        Priority::Idle => (libc::SCHED_IDLE, 19),
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy as u32,
        flags: 0,
        nice,
        priority: 0,
        // The longest slice the kernel accepts for ordinary threads.
        runtime: 100_000_000,
        deadline: 0,
        period: 0,
    };
    // SAFETY: `attr` is a valid `sched_attr` of the size it states; pid 0 is this thread.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } == 0 {
        return;
    }
    // Kernels before `sched_setattr`: the nice value alone.
    // SAFETY: a plain system call on the calling thread's own id.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) } != 0;
    if failed {
        tracing::warn!(?priority, error = %std::io::Error::last_os_error(), "could not lower a worker's priority");
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
                if was_demoted() {
                    // The place is the replacement's: account for the job, hand a job it
                    // unblocked to an idle worker, and end.
                    let mut state = shared.state.lock();
                    state.finish(tenant);
                    if state.turns.iter().any(|&t| state.may_start(t))
                        && let Some(&worker) = state.idle.last()
                    {
                        shared.wake[worker].notify_one();
                    }
                    drop(state);
                    shared.demoted_now.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
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
        let replacements = std::mem::take(&mut *self.shared.replacements.lock());
        for t in self.threads.drain(..).chain(replacements) {
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
        let pool =
            Arc::new(WorkerPool::new("test", 3, 1 << 20, Priority::Normal, Duration::from_micros(100)).expect("pool"));
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
        let pool = WorkerPool::new("test", 1, 1 << 20, Priority::Normal, Duration::from_secs(1)).expect("pool");
        pool.shared.state.lock().closed = true;
        assert_eq!(pool.run(0, || (1, ())).await, None);
        assert_eq!(pool.shared.in_flight.load(Ordering::SeqCst), 0, "a refused job is not in flight");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_lone_jobs_caller_waits_actively() {
        let pool =
            Arc::new(WorkerPool::new("test", 2, 1 << 20, Priority::Normal, Duration::from_secs(1)).expect("pool"));
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

        let quiet = WorkerPool::new("test", 1, 1 << 20, Priority::Normal, Duration::ZERO).expect("pool");
        for i in 0..5 {
            assert_eq!(quiet.run(0, move || (i, ())).await, Some(i));
        }
        assert_eq!(quiet.active_waits(), (0, 0), "a zero wait never waits actively");
        let endless = WorkerPool::new("test", 1, 1 << 20, Priority::Normal, Duration::MAX).expect("pool");
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
        let pool = Arc::new(WorkerPool::new("test", 3, 1 << 20, Priority::Normal, Duration::ZERO).expect("pool"));
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
        let pool = Arc::new(WorkerPool::new("test", 1, 1 << 20, Priority::Normal, Duration::ZERO).expect("pool"));
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
    async fn a_demoted_job_runs_on_at_low_priority_while_a_replacement_takes_its_place() {
        assert!(!demote_current_worker(), "not on a worker");
        let pool = Arc::new(
            WorkerPool::with_demotion("test", 2, 1 << 20, Priority::Normal, Priority::Low(10), Duration::ZERO)
                .expect("pool"),
        );
        let gate = Arc::new(Gate::default());
        let (demoted_tx, demoted_rx) = tokio::sync::oneshot::channel();
        let long = {
            let (pool, gate) = (pool.clone(), gate.clone());
            tokio::spawn(async move {
                pool.run(1, move || {
                    let first = demote_current_worker();
                    let again = demote_current_worker();
                    // SAFETY: a plain system call on this thread's own id.
                    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
                    let _ = demoted_tx.send((first, again, nice));
                    gate.wait();
                    ("long", ())
                })
                .await
            })
        };
        assert_eq!(demoted_rx.await.expect("demoted"), (true, false, 10), "demoted once, to nice 10");
        // Two other tenants' jobs now run at once on the two workers' places, while the
        // demoted thread still holds its job.
        let (both, started) = (Arc::new(std::sync::Barrier::new(2)), Arc::new(AtomicUsize::new(0)));
        let others: Vec<_> = [2, 3]
            .into_iter()
            .map(|tenant| {
                let (pool, both, started) = (pool.clone(), both.clone(), started.clone());
                tokio::spawn(async move {
                    pool.run(tenant, move || {
                        started.fetch_add(1, Ordering::SeqCst);
                        both.wait();
                        // SAFETY: as above.
                        (unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }, ())
                    })
                    .await
                })
            })
            .collect();
        for other in others {
            let nice = tokio::time::timeout(Duration::from_secs(10), other).await.expect("both ran at once");
            assert_eq!(nice.expect("task"), Some(0), "replacements run at the pool's priority");
        }
        gate.open();
        assert_eq!(long.await.expect("task"), Some("long"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.shared.demoted_now.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < deadline, "the demoted thread never finished");
            tokio::task::yield_now().await;
        }
        // The pool keeps serving with its replacement; the demoted thread has ended.
        assert_eq!(pool.run(1, || (5, ())).await, Some(5));
        drop(Arc::into_inner(pool).expect("last reference"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_jobs_turn_active_waiting_off_until_jobs_are_quick_again() {
        let pool = WorkerPool::new("test", 1, 1 << 20, Priority::Normal, Duration::from_millis(2)).expect("pool");
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
