//! Scheduled functions: `ctx.scheduler.runAfter/runAt/cancel` write jobs into the system
//! table `_scheduled_functions` (in the scheduling mutation's transaction, so nothing is
//! scheduled unless it commits), and one executor per deployment runs them when due.
//!
//! A scheduled mutation marks its job `success` in its own transaction, after checking that
//! the job is still `pending`: it commits exactly once, also when the process dies and the
//! executor runs it again after a restart, or when a job is dispatched twice. An action is
//! marked `inProgress` before it starts; one found `inProgress` when the executor starts
//! was interrupted and ends `failed` (actions run at most once).
//!
//! The executor reads due jobs through an index on `(state.kind, scheduledTime)` and sleeps
//! until the next job is due or a commit changes what it read (a store subscription): it
//! does not poll.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_persistence::Order;
use kiln_store::query::{Query, RangeExpr, RangeOp, Source};
use kiln_store::{Store, StoreError, Subscription, Transaction};
use kiln_value::{DocumentId, FieldPath, Object, Value};
use tokio::task::JoinSet;

use crate::call::wall_clock_ms;
use crate::deployment::{Deployment, normalize_path};
use crate::error::CallError;
use crate::{CallRequest, FunctionKind, Shared};

/// The system table of scheduled jobs.
pub(crate) const TABLE: &str = "_scheduled_functions";
/// Its index by state and due time.
pub(crate) const BY_STATE: &str = "by_state_time";
/// The fields of [`BY_STATE`].
pub(crate) const BY_STATE_FIELDS: [&str; 2] = ["state.kind", "scheduledTime"];

/// The field of a component's job naming its instance.
const COMPONENT: &str = "component";

/// The error a scheduled mutation ends with when its job is no longer pending (canceled, or
/// already run by an earlier dispatch): its writes are discarded.
pub(crate) const NOT_PENDING: &str = "ScheduledJobNotPending";

/// Errors after which a job is tried again later instead of failing: nothing of the
/// function's own doing.
const TRANSIENT: &[&str] = &[
    "ShuttingDown",
    "Overloaded",
    "StoreClosed",
    "StoreFailed",
    "StorageFull",
    "StorageReadOnly",
    "QuotaExceeded",
    "OptimisticConcurrencyControlFailure",
    "SnapshotTooOld",
];

fn store_error(e: StoreError) -> CallError {
    CallError::new(e.code(), e.to_string())
}

/// Commits a host transaction: `Ok(true)` once committed, `Ok(false)` after a conflict worth
/// another attempt (having waited a little longer each time).
pub(crate) async fn committed(txn: Transaction, attempt: &mut u32) -> Result<bool, StoreError> {
    match txn.commit().await {
        Ok(_) => Ok(true),
        Err(e) if e.is_retryable() && *attempt < 32 => {
            *attempt += 1;
            tokio::time::sleep(Duration::from_millis(1 << (*attempt).min(8))).await;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn state(kind: &str) -> Value {
    Value::Object([("kind".to_owned(), Value::String(kind.to_owned()))].into())
}

/// What one call has scheduled so far (the limits count the call and the calls it makes).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scheduled {
    pub count: usize,
    pub arg_bytes: usize,
}

/// Checks a new job of `path` (a function of kind `kind`) against the call's limits.
pub(crate) fn check(
    dep: &Deployment,
    so_far: &mut Scheduled,
    path: &str,
    kind: FunctionKind,
    args: &Value,
    ts_ms: f64,
) -> Result<(), CallError> {
    let limits = dep.config.read().limits.clone();
    if !ts_ms.is_finite() || ts_ms < 0.0 {
        return Err(CallError::new("InvalidScheduledTime", format!("cannot schedule {path} at time {ts_ms}")));
    }
    if !matches!(kind, FunctionKind::Mutation | FunctionKind::Action) {
        return Err(CallError::new(
            "InvalidScheduledFunction",
            format!("{path} is a {kind:?}: only mutations and actions can be scheduled"),
        ));
    }
    if !matches!(args, Value::Object(_)) {
        return Err(CallError::new("InvalidArgs", format!("{path}: arguments must be an object")));
    }
    kiln_value::validation::validate_value(args).map_err(|e| CallError::new("InvalidArgs", format!("{path}: {e}")))?;
    if so_far.count >= limits.max_scheduled_per_call {
        return Err(CallError::new(
            "TooManyFunctionsScheduled",
            format!(
                "Too many functions scheduled by this call (limit: {}); schedule fewer, or schedule a function that schedules the rest",
                limits.max_scheduled_per_call
            ),
        ));
    }
    let bytes = so_far.arg_bytes + args.size();
    if bytes > limits.max_scheduled_args_bytes {
        return Err(CallError::new(
            "ScheduledFunctionsArgumentsTooLarge",
            format!(
                "The arguments of the functions scheduled by this call total {bytes} bytes, over the limit of {}",
                limits.max_scheduled_args_bytes
            ),
        ));
    }
    so_far.count += 1;
    so_far.arg_bytes = bytes;
    Ok(())
}

/// A job to schedule.
pub(crate) struct NewJob<'a> {
    /// The component instance whose function it runs (`""`: the app's).
    pub component: &'a str,
    /// `module:export` within the instance.
    pub path: &'a str,
    pub args: Value,
    pub ts_ms: f64,
}

/// Writes a pending job into `txn`; returns its id.
pub(crate) async fn schedule(txn: &mut Transaction, job: NewJob<'_>) -> Result<DocumentId, StoreError> {
    let mut fields: Object = [
        ("name".to_owned(), Value::String(job.path.to_owned())),
        ("args".to_owned(), Value::Array(vec![job.args])),
        ("scheduledTime".to_owned(), Value::Float64(job.ts_ms)),
        ("state".to_owned(), state("pending")),
    ]
    .into();
    // One table holds every instance's jobs; a component's carry its instance.
    if !job.component.is_empty() {
        fields.insert(COMPONENT.to_owned(), Value::String(job.component.to_owned()));
    }
    txn.insert_record(TABLE, fields).await
}

/// Schedules a job in a transaction of its own (from an action).
pub(crate) async fn schedule_now(store: &Store, job: NewJob<'_>) -> Result<DocumentId, CallError> {
    let mut txn = store.begin_system();
    let id = schedule(&mut txn, job).await.map_err(store_error)?;
    txn.commit().await.map_err(store_error)?;
    Ok(id)
}

/// Cancels a job in a transaction of its own (from an action), retried on conflicts.
pub(crate) async fn cancel_now(store: &Store, component: &str, id: DocumentId) -> Result<(), CallError> {
    let mut attempt = 0u32;
    loop {
        let mut txn = store.begin_system();
        cancel(&mut txn, component, id).await?;
        if committed(txn, &mut attempt).await.map_err(store_error)? {
            return Ok(());
        }
    }
}

/// A job as the executor needs it.
#[derive(Clone, Debug)]
struct Job {
    id: DocumentId,
    component: String,
    name: String,
    args: Value,
}

/// The job's current document (a point read: a concurrent change of the job conflicts).
async fn read(txn: &mut Transaction, id: DocumentId) -> Result<Option<Object>, CallError> {
    let doc = txn.get_record(TABLE, id.internal).await.map_err(store_error)?;
    Ok(doc.filter(|d| d.id == id).map(|d| d.value.clone()))
}

/// The instance whose function a job runs (`""`: the app).
fn component_of(job: &Object) -> &str {
    job.get(COMPONENT).and_then(Value::as_str).unwrap_or_default()
}

fn kind_of(job: &Object) -> Option<&str> {
    job.get("state").and_then(Value::as_object).and_then(|s| s.get("kind")).and_then(Value::as_str)
}

/// Moves job `id` from one of the states `from` to `to` in `txn`; `Ok(false)` when it is in
/// another state (or gone).
async fn transition(txn: &mut Transaction, id: DocumentId, from: &[&str], to: Value) -> Result<bool, CallError> {
    let Some(mut job) = read(txn, id).await? else { return Ok(false) };
    if !kind_of(&job).is_some_and(|k| from.contains(&k)) {
        return Ok(false);
    }
    let done = to.as_object().and_then(|s| s.get("kind")).and_then(Value::as_str) != Some("inProgress");
    job.remove("_id");
    job.remove("_creationTime");
    job.insert("state".to_owned(), to);
    if done {
        job.insert("completedTime".to_owned(), Value::Float64(wall_clock_ms()));
    }
    txn.put_record(TABLE, id.internal, job).await.map_err(store_error)?;
    Ok(true)
}

/// Cancels job `id` in `txn` if it has not finished (a running action runs on, and its end
/// no longer changes the state). Unknown ids are refused; a finished job is left alone.
pub(crate) async fn cancel(txn: &mut Transaction, component: &str, id: DocumentId) -> Result<(), CallError> {
    // An instance sees its own jobs only.
    if read(txn, id).await?.is_none_or(|job| component_of(&job) != component) {
        return Err(CallError::new(
            "ScheduledJobNotFound",
            format!("no scheduled function has the id {}", id.encode()),
        ));
    }
    transition(txn, id, &["pending", "inProgress"], state("canceled")).await.map(drop)
}

/// In a scheduled mutation's own transaction: marks its job a success, or refuses with
/// [`NOT_PENDING`] when it is no longer pending.
pub(crate) async fn complete(txn: &mut Transaction, id: DocumentId) -> Result<(), CallError> {
    if transition(txn, id, &["pending"], state("success")).await? {
        Ok(())
    } else {
        Err(CallError::new(NOT_PENDING, format!("scheduled function {} is no longer pending", id.encode())))
    }
}

/// Moves a job in a transaction of its own (retried on conflicts).
async fn transition_now(store: &Store, id: DocumentId, from: &[&str], to: Value) -> Result<bool, CallError> {
    let mut attempt = 0u32;
    loop {
        let mut txn = store.begin_system();
        let changed = transition(&mut txn, id, from, to.clone()).await?;
        if !changed {
            return Ok(false);
        }
        if committed(txn, &mut attempt).await.map_err(store_error)? {
            return Ok(true);
        }
    }
}

fn failed(message: &str) -> Value {
    Value::Object(
        [
            ("kind".to_owned(), Value::String("failed".to_owned())),
            ("error".to_owned(), Value::String(message.to_owned())),
        ]
        .into(),
    )
}

fn pending_query(kind: &str, order: Order) -> Query {
    let field = FieldPath::parse("state.kind").unwrap_or_else(|_| unreachable!("a valid field path"));
    Query {
        source: Source::IndexRange {
            table: TABLE.to_owned(),
            index: BY_STATE.to_owned(),
            range: vec![RangeExpr { op: RangeOp::Eq, field, value: Some(Value::String(kind.to_owned())) }],
        },
        order,
        operators: Vec::new(),
    }
}

/// What one look at the pending jobs found.
struct Scan {
    due: Vec<Job>,
    /// When the first job or cron not yet due is due (ms since the epoch).
    next_ms: Option<f64>,
    /// Cron jobs whose next run has come.
    crons: Vec<DocumentId>,
    /// Fires when a commit changes what the scan read.
    changed: Subscription,
}

/// Reads up to `want` due jobs that are not `busy`, oldest first.
async fn scan(store: &Store, busy: &HashSet<DocumentId>, want: usize) -> Result<Scan, StoreError> {
    let mut txn = store.begin_system_read_only();
    let stream = txn.open_query(pending_query("pending", Order::Asc))?;
    let now = wall_clock_ms();
    let (mut due, mut next_ms) = (Vec::new(), None);
    while due.len() < want {
        let Some(doc) = txn.next(stream).await? else { break };
        let ts = match doc.value.get("scheduledTime") {
            Some(Value::Float64(ts)) => *ts,
            _ => 0.0,
        };
        if ts > now {
            next_ms = Some(ts);
            break;
        }
        if busy.contains(&doc.id) {
            continue;
        }
        let name = doc.value.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let args = match doc.value.get("args") {
            Some(Value::Array(a)) => a.first().cloned().unwrap_or(Value::Object(Object::new())),
            _ => Value::Object(Object::new()),
        };
        let component = component_of(&doc.value).to_owned();
        due.push(Job { id: doc.id, component, name, args });
    }
    txn.close_query(stream)?;
    let mut crons = Vec::new();
    let stream = txn.open_query(crate::crons::by_next_query())?;
    while let Some(doc) = txn.next(stream).await? {
        let Some(ts) = crate::crons::next_ts(&doc.value) else { continue };
        if ts > now {
            next_ms = Some(next_ms.map_or(ts, |n: f64| n.min(ts)));
            break;
        }
        crons.push(doc.id);
    }
    txn.close_query(stream)?;
    let changed = store.subscribe(&txn.read_token());
    Ok(Scan { due, next_ms, crons, changed })
}

/// Marks actions the previous process left `inProgress` as failed: they may have done part
/// of their work, and actions are not run twice.
async fn fail_interrupted(store: &Store) -> Result<usize, CallError> {
    let mut txn = store.begin_system_read_only();
    let stream = txn.open_query(pending_query("inProgress", Order::Asc)).map_err(store_error)?;
    let mut ids = Vec::new();
    while let Some(doc) = txn.next(stream).await.map_err(store_error)? {
        ids.push(doc.id);
    }
    let message = "Transient error while executing action: the server stopped while it ran";
    for &id in &ids {
        transition_now(store, id, &["inProgress"], failed(message)).await?;
    }
    Ok(ids.len())
}

/// How a job's run ended, for the executor.
enum Ran {
    Done,
    /// A transient failure: try again after this long.
    Retry(Duration),
}

/// Runs one due job.
async fn run_job(shared: Arc<Shared>, dep: Arc<Deployment>, job: Job, attempt: u32) -> Ran {
    let path = normalize_path(&job.name);
    let span = tracing::info_span!("scheduled", deployment = %dep.name, %path, job = %job.id.encode());
    tracing::Instrument::instrument(run_job_inner(shared, dep, job, path, attempt), span).await
}

async fn run_job_inner(shared: Arc<Shared>, dep: Arc<Deployment>, job: Job, path: String, attempt: u32) -> Ran {
    let kind = dep.version().and_then(|v| v.function_in(&job.component, &path).map(|f| f.kind));
    let shared_for_report = shared.clone();
    let retry = Ran::Retry(Duration::from_millis(100 << attempt.min(9)));
    let mut request = CallRequest::new(kind.unwrap_or(FunctionKind::Mutation), &path, job.args.clone());
    request.component = job.component.clone();
    let path = crate::call::display_path(&job.component, &path);
    request.internal = true;
    request.request_id = format!("scheduled-{}", job.id.encode());
    let outcome = match kind {
        Some(FunctionKind::Mutation) => {
            request.scheduled_job = Some(job.id);
            let outcome = crate::call::call(shared, dep.clone(), request).await;
            crate::report_background(&shared_for_report, &dep, &path, FunctionKind::Mutation, &outcome);
            match outcome.result {
                Ok(_) => return Ran::Done,
                Err(e) if e.code == NOT_PENDING => return Ran::Done,
                Err(e) if TRANSIENT.contains(&e.code.as_str()) => return retry,
                Err(e) => Err(e),
            }
        }
        Some(FunctionKind::Action) => {
            match transition_now(&dep.store, job.id, &["pending"], state("inProgress")).await {
                Ok(true) => {}
                Ok(false) => return Ran::Done,
                Err(e) => {
                    tracing::warn!(error = %e, "starting a scheduled action failed");
                    return retry;
                }
            }
            let outcome = crate::call::call(shared, dep.clone(), request).await;
            crate::report_background(&shared_for_report, &dep, &path, FunctionKind::Action, &outcome);
            outcome.result.map(drop)
        }
        Some(FunctionKind::Query) => Err(CallError::new(
            "InvalidScheduledFunction",
            format!("{path} is now a query: only mutations and actions can be scheduled"),
        )),
        None => Err(CallError::new(
            "FunctionNotFound",
            format!(
                "Could not find function for '{path}'. Did you forget to run `npx convex dev` or `npx convex deploy`?"
            ),
        )),
    };
    let (from, to): (&[&str], Value) = match &outcome {
        Ok(()) => (&["inProgress"], state("success")),
        Err(e) if kind == Some(FunctionKind::Action) => (&["inProgress"], failed(&e.message)),
        Err(e) => (&["pending"], failed(&e.message)),
    };
    match transition_now(&dep.store, job.id, from, to).await {
        Ok(_) => Ran::Done,
        Err(e) => {
            tracing::warn!(error = %e, "recording a scheduled function's end failed");
            retry
        }
    }
}

/// A job that failed transiently: when to try it again, and how many tries failed.
struct Later {
    at: Instant,
    attempts: u32,
}

/// Runs a deployment's due jobs until the task is aborted.
pub(crate) async fn execute(shared: Arc<Shared>, dep: Arc<Deployment>) {
    match fail_interrupted(&dep.store).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(deployment = %dep.name, actions = n, "scheduled actions interrupted by a restart failed")
        }
        Err(e) => tracing::warn!(deployment = %dep.name, error = %e, "failing interrupted scheduled actions failed"),
    }
    let mut running: JoinSet<(DocumentId, Ran)> = JoinSet::new();
    // Jobs running, or waiting to be tried again: scans skip them.
    let mut busy: HashSet<DocumentId> = HashSet::new();
    let mut later: HashMap<DocumentId, Later> = HashMap::new();
    loop {
        while let Some(done) = running.try_join_next() {
            settle(done, &mut busy, &mut later);
        }
        let now = Instant::now();
        for (id, l) in &later {
            if l.at <= now {
                busy.remove(id);
            }
        }
        let limit = dep.config.read().limits.scheduler_concurrency.max(1);
        // Refill once half the slots are free: one scan per many jobs, not one per job.
        let free = limit.saturating_sub(running.len());
        let (mut next_ms, mut changed) = (None, None);
        if free * 2 >= limit || running.is_empty() {
            match scan(&dep.store, &busy, free).await {
                Ok(found) if !found.crons.is_empty() => {
                    // Due crons become scheduled functions, which the next scan finds.
                    for id in found.crons {
                        if let Err(e) = crate::crons::fire(&dep.store, id).await {
                            tracing::warn!(deployment = %dep.name, error = %e, "starting a cron job failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    continue;
                }
                Ok(found) => {
                    for job in found.due {
                        let attempt = later.get(&job.id).map_or(0, |l| l.attempts);
                        busy.insert(job.id);
                        let (shared, dep) = (shared.clone(), dep.clone());
                        running.spawn(async move {
                            let id = job.id;
                            (id, run_job(shared, dep, job, attempt).await)
                        });
                    }
                    next_ms = found.next_ms;
                    changed = Some(found.changed);
                }
                Err(e) => {
                    tracing::warn!(deployment = %dep.name, error = %e, "reading scheduled functions failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let full = running.len() >= limit;
        let due_in = next_ms.map(|ms| Duration::from_secs_f64(((ms - wall_clock_ms()) / 1000.0).clamp(0.0, 60.0)));
        let now = Instant::now();
        let retry_in = later.values().filter(|l| l.at > now).map(|l| l.at - now).min();
        let wake = match (due_in, retry_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            done = running.join_next(), if !running.is_empty() => {
                if let Some(done) = done {
                    settle(done, &mut busy, &mut later);
                }
            }
            _ = async {
                match &changed {
                    Some(s) if !full => { s.invalidated().await; }
                    _ => std::future::pending::<()>().await,
                }
            } => {}
            _ = async {
                match wake {
                    Some(d) if !full => tokio::time::sleep(d).await,
                    _ => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
}

/// Records the end of a job's run.
fn settle(
    done: Result<(DocumentId, Ran), tokio::task::JoinError>,
    busy: &mut HashSet<DocumentId>,
    later: &mut HashMap<DocumentId, Later>,
) {
    let Ok((id, ran)) = done else { return };
    match ran {
        Ran::Done => {
            busy.remove(&id);
            later.remove(&id);
        }
        // Stays busy (skipped by scans) until its time comes.
        Ran::Retry(wait) => {
            let attempts = later.get(&id).map_or(0, |l| l.attempts) + 1;
            later.insert(id, Later { at: Instant::now() + wait, attempts });
        }
    }
}

/// Deletes up to `batch` finished jobs that finished longer than `retention` ago; returns
/// how many.
pub(crate) async fn prune(store: &Store, retention: Duration, batch: usize) -> Result<usize, StoreError> {
    let cutoff = wall_clock_ms() - retention.as_secs_f64() * 1000.0;
    let mut txn = store.begin_system();
    let mut old = Vec::new();
    for kind in ["success", "failed", "canceled"] {
        let stream = txn.open_query(pending_query(kind, Order::Asc))?;
        while old.len() < batch {
            let Some(doc) = txn.next(stream).await? else { break };
            // Ordered by scheduled time; a job finishes after it is due.
            let scheduled = match doc.value.get("scheduledTime") {
                Some(Value::Float64(ts)) => *ts,
                _ => 0.0,
            };
            if scheduled >= cutoff {
                break;
            }
            let completed = match doc.value.get("completedTime") {
                Some(Value::Float64(ts)) => *ts,
                _ => scheduled,
            };
            if completed < cutoff {
                old.push(doc.id);
            }
        }
        txn.close_query(stream)?;
    }
    for id in &old {
        txn.delete(*id).await?;
    }
    if !old.is_empty() {
        txn.commit().await?;
    }
    Ok(old.len())
}
