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

    /// The position of the newest entry (0 for none yet).
    pub fn last_seq(&self) -> u64 {
        self.history.lock().0
    }

    /// Entries after `seq`, and a receiver for later ones (subscribed before the history is
    /// read, so nothing falls between them; duplicates are filtered by `seq`).
    pub fn follow(&self, after: u64) -> (Vec<LogEntry>, broadcast::Receiver<LogEntry>) {
        let rx = self.tx.subscribe();
        let entries = self.history.lock().1.iter().filter(|e| e.seq > after).cloned().collect();
        (entries, rx)
    }
}

/// How long `GET /api/stream_function_logs` waits for a new entry before answering none.
pub const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(20);

impl LogEntry {
    /// The entry as the `convex` CLI's `FunctionExecution` (a `Completion`), for
    /// `npx convex logs`.
    pub fn execution_json(&self) -> serde_json::Value {
        let seconds = self.ts_ms as f64 / 1000.0;
        let lines: Vec<serde_json::Value> = self
            .lines
            .iter()
            .map(|line| {
                // Lines are kept as `[LEVEL] text` (see `log_lines`).
                let (level, text) =
                    line.strip_prefix('[').and_then(|rest| rest.split_once("] ")).unwrap_or(("LOG", line.as_str()));
                serde_json::json!({
                    "messages": [text],
                    "isTruncated": false,
                    "timestamp": self.ts_ms,
                    "level": level,
                })
            })
            .collect();
        let udf_type = match self.kind {
            "query" => "Query",
            "mutation" => "Mutation",
            _ => "Action",
        };
        let zero_usage = serde_json::json!({
            "databaseReadBytes": 0, "databaseWriteBytes": 0, "databaseIoReadBytes": 0,
            "databaseIoWriteBytes": 0, "databaseReadDocuments": 0, "databaseWriteDocuments": 0,
            "databaseWriteIndexRows": 0, "storageReadBytes": 0, "storageWriteBytes": 0,
            "vectorIndexReadBytes": 0, "vectorIndexWriteBytes": 0, "memoryUsedMb": 0,
        });
        serde_json::json!({
            "kind": "Completion",
            "udfType": udf_type,
            "identifier": self.path,
            "logLines": lines,
            "timestamp": seconds,
            "executionTimestamp": seconds,
            "cachedResult": self.cached,
            "caller": "",
            "executionTime": self.wall_us as f64 / 1e6,
            "success": null,
            "error": self.error,
            "requestId": format!("{:016x}", self.seq),
            "executionId": format!("{:016x}", self.seq),
            "usageStats": zero_usage,
            "willRetry": false,
            "identityType": "",
            "environment": "isolate",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_as_the_clis_function_execution() {
        let entry = LogEntry {
            seq: 7,
            ts_ms: 1_700_000_000_500,
            kind: "mutation",
            path: "values:shout".into(),
            outcome: "ConvexError".into(),
            error: Some("Uncaught ConvexError: boom".into()),
            fuel: 1,
            wall_us: 2_500,
            replayed: false,
            cached: false,
            lines: vec!["[WARN] careful: 5".into(), "[LOG] a [b] c".into()],
        };
        let json = entry.execution_json();
        assert_eq!(json["kind"], "Completion");
        assert_eq!(json["udfType"], "Mutation");
        assert_eq!(json["identifier"], "values:shout");
        assert_eq!(json["timestamp"], 1_700_000_000.5);
        assert_eq!(json["executionTime"], 0.0025);
        assert_eq!(json["error"], "Uncaught ConvexError: boom");
        assert_eq!(json["logLines"][0]["level"], "WARN");
        assert_eq!(json["logLines"][0]["messages"][0], "careful: 5");
        assert_eq!(json["logLines"][1]["messages"][0], "a [b] c");
    }
}
