//! A deployment's function log: one entry per call (path, kind, outcome, fuel, time, log
//! lines), kept in a bounded history and broadcast to followers (`kiln logs --follow`).

use std::collections::VecDeque;

use kiln_runtime::{CallOutcome, FunctionKind};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

/// One call in the log.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Position in the deployment's log (increasing).
    pub seq: u64,
    /// Wall-clock time the call finished (ms since the epoch).
    pub ts_ms: u64,
    /// `query`, `mutation` or `action`.
    pub kind: &'static str,
    /// The function.
    pub path: String,
    /// `ok` or the error code.
    pub outcome: String,
    /// The error message, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Fuel used.
    pub fuel: u64,
    /// Wall time in microseconds.
    pub wall_us: u64,
    /// A mutation resent by its client, answered from its idempotency record.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// A query answered from the query cache (nothing ran).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Log lines (`[LEVEL] text`).
    pub lines: Vec<String>,
}

/// The kind's name on the wire.
pub fn kind_name(kind: FunctionKind) -> &'static str {
    match kind {
        FunctionKind::Query => "query",
        FunctionKind::Mutation => "mutation",
        FunctionKind::Action => "action",
    }
}

/// Log lines in Convex's `[LEVEL] text` form.
pub fn log_lines(out: &CallOutcome) -> Vec<String> {
    out.logs.iter().map(|l| format!("[{}] {}", l.level, l.text)).collect()
}

/// A deployment's log.
pub struct FunctionLog {
    history: Mutex<(u64, VecDeque<LogEntry>)>,
    capacity: usize,
    tx: broadcast::Sender<LogEntry>,
}

impl FunctionLog {
    /// A log keeping `capacity` entries.
    pub fn new(capacity: usize) -> FunctionLog {
        FunctionLog {
            history: Mutex::new((0, VecDeque::new())),
            capacity: capacity.max(1),
            tx: broadcast::channel(1024).0,
        }
    }

    /// Records a call.
    pub fn record(&self, kind: FunctionKind, path: &str, out: &CallOutcome) {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (outcome, error) = match &out.result {
            Ok(_) => ("ok".to_owned(), None),
            Err(e) => (e.code.clone(), Some(e.message.clone())),
        };
        let mut history = self.history.lock();
        history.0 += 1;
        let entry = LogEntry {
            seq: history.0,
            ts_ms,
            kind: kind_name(kind),
            path: path.to_owned(),
            outcome,
            error,
            fuel: out.fuel,
            wall_us: out.wall.as_micros() as u64,
            replayed: out.replayed,
            cached: out.cached,
            lines: log_lines(out),
        };
        if history.1.len() == self.capacity {
            history.1.pop_front();
        }
        history.1.push_back(entry.clone());
        drop(history);
        let _ = self.tx.send(entry);
    }

    /// Entries after `seq`, and a receiver for later ones (subscribed before the history is
    /// read, so nothing falls between them; duplicates are filtered by `seq`).
    pub fn follow(&self, after: u64) -> (Vec<LogEntry>, broadcast::Receiver<LogEntry>) {
        let rx = self.tx.subscribe();
        let entries = self.history.lock().1.iter().filter(|e| e.seq > after).cloned().collect();
        (entries, rx)
    }
}
