//! Metering: every call's fuel, time and outcome; running totals per deployment and function,
//! persisted in the deployment's store; and the fuel quota checked before each call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kiln_store::Store;
use kiln_store::query::Query;
use kiln_value::{Object, Value};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::FunctionKind;
use crate::error::CallError;
use crate::knobs::Quotas;

/// The reserved table holding usage totals.
pub(crate) const USAGE_TABLE: &str = "_kiln_usage";
/// Recent call records kept in memory.
const RECENT_CALLS: usize = 1000;

/// Totals for one function (or a whole deployment).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionUsage {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Fuel consumed (nested calls included).
    pub fuel: u64,
    /// Wall time, in microseconds.
    pub wall_micros: u64,
}

impl FunctionUsage {
    fn add(&mut self, r: &CallRecord) {
        self.calls += 1;
        self.errors += u64::from(r.outcome != "ok");
        self.fuel += r.fuel;
        self.wall_micros += r.wall.as_micros() as u64;
    }
}

/// A deployment's usage: totals, per-function totals, and the current quota period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Totals over every function.
    pub total: FunctionUsage,
    /// Totals per function path.
    pub functions: BTreeMap<String, FunctionUsage>,
    /// When the current quota period started (ms since the epoch).
    pub period_start_ms: u64,
    /// Fuel consumed in the current period.
    pub period_fuel: u64,
    /// The part of the totals spent in each mounted component instance (its functions run by
    /// the app, by other components and by the scheduler; calls it makes included). Already
    /// counted in `total`: the deployment pays for its components.
    #[serde(default)]
    pub components: BTreeMap<String, FunctionUsage>,
}

/// One call, as metered.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    /// The function.
    pub path: String,
    /// Its kind.
    pub kind: FunctionKind,
    /// Fuel consumed (nested calls and retries included).
    pub fuel: u64,
    /// Wall time.
    pub wall: Duration,
    /// `ok`, or the error code.
    pub outcome: String,
}

/// A deployment's meter.
#[derive(Default)]
pub(crate) struct Metering {
    usage: Mutex<Usage>,
    recent: Mutex<VecDeque<CallRecord>>,
    dirty: AtomicBool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Metering {
    /// Loads persisted totals.
    pub(crate) async fn load(store: &Store) -> Result<Metering, kiln_store::StoreError> {
        let mut tx = store.begin_system();
        let docs = tx.collect(Query::full_table_scan(USAGE_TABLE)).await?;
        let usage = docs
            .first()
            .and_then(|d| d.value.get("json").and_then(Value::as_str).map(str::to_owned))
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        let mut usage: Usage = usage;
        if usage.period_start_ms == 0 {
            usage.period_start_ms = now_ms();
        }
        Ok(Metering { usage: Mutex::new(usage), ..Metering::default() })
    }

    /// Writes the totals if they changed since the last flush.
    pub(crate) async fn flush(&self, store: &Store) -> Result<(), kiln_store::StoreError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let json = serde_json::to_string(&*self.usage.lock()).unwrap_or_default();
        let fields: Object = [("json".to_owned(), Value::String(json))].into();
        let result = async {
            let mut tx = store.begin_system();
            let existing = tx.collect(Query::full_table_scan(USAGE_TABLE)).await?;
            match existing.first() {
                Some(doc) => {
                    tx.replace(doc.id, fields).await?;
                }
                None => {
                    tx.insert(USAGE_TABLE, fields).await?;
                }
            }
            tx.commit().await.map(|_| ())
        }
        .await;
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }

    /// The fuel a call may use: `per_call`, reduced to what the period quota has left.
    pub(crate) fn fuel_budget(&self, quotas: &Quotas, per_call: u64, path: &str) -> Result<u64, CallError> {
        let Some(quota) = quotas.fuel_per_period else { return Ok(per_call) };
        let mut usage = self.usage.lock();
        let now = now_ms();
        if now.saturating_sub(usage.period_start_ms) >= quotas.period.as_millis() as u64 {
            usage.period_start_ms = now;
            usage.period_fuel = 0;
        }
        let left = quota.saturating_sub(usage.period_fuel);
        if left == 0 {
            return Err(CallError::new(
                "QuotaExceeded",
                format!("{path}: the deployment used its fuel quota of {quota} for this period"),
            ));
        }
        Ok(per_call.min(left))
    }

    /// Records a finished call.
    pub(crate) fn record(&self, record: CallRecord) {
        {
            let mut usage = self.usage.lock();
            usage.total.add(&record);
            usage.functions.entry(record.path.clone()).or_default().add(&record);
            usage.period_fuel += record.fuel;
        }
        let mut recent = self.recent.lock();
        if recent.len() == RECENT_CALLS {
            recent.pop_front();
        }
        recent.push_back(record);
        self.dirty.store(true, Ordering::Release);
    }

    /// Records the part of a call spent in component instance `instance` (a call of one of
    /// its functions), into the per-component breakdown only.
    pub(crate) fn record_component(&self, instance: &str, record: &CallRecord) {
        self.usage.lock().components.entry(instance.to_owned()).or_default().add(record);
        self.dirty.store(true, Ordering::Release);
    }

    /// The current totals.
    pub(crate) fn usage(&self) -> Usage {
        self.usage.lock().clone()
    }

    /// The most recent calls, oldest first.
    pub(crate) fn recent(&self) -> Vec<CallRecord> {
        self.recent.lock().iter().cloned().collect()
    }
}
