//! Cron jobs: the app's `convex/crons.ts` (`cronJobs().export()` in the manifest) is checked
//! and written into the system table `_cron_jobs` at deploy (replacing what the previous
//! version registered); the scheduler's executor turns each cron whose `nextTs` has come
//! into a scheduled function, advancing `nextTs` past *now* in the same transaction, so a
//! cron missed during downtime runs once, not once per missed period.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use kiln_store::query::{Query, Source};
use kiln_store::{Order, Store, StoreError, Transaction};
use kiln_value::{DocumentId, Object, Value, from_convex_json};
use serde_json::Value as Json;

use crate::FunctionKind;
use crate::call::wall_clock_ms;
use crate::deployment::{Version, normalize_path};
use crate::scheduler::committed;

/// The system table of registered cron jobs.
pub(crate) const TABLE: &str = "_cron_jobs";
/// Its index by the next run's time.
pub(crate) const BY_NEXT: &str = "by_next_ts";
/// The fields of [`BY_NEXT`].
pub(crate) const BY_NEXT_FIELDS: [&str; 1] = ["nextTs"];

/// When a cron runs.
#[derive(Clone, Debug)]
enum Timing {
    /// Every so many milliseconds, the first run at registration.
    Every(f64),
    /// At the times a cron pattern (UTC) matches.
    Pattern(Box<croner::Cron>),
}

impl Timing {
    /// The first run of a cron registered at `now`.
    fn first(&self, now: f64) -> Option<f64> {
        match self {
            Timing::Every(_) => Some(now),
            Timing::Pattern(_) => self.after(now),
        }
    }

    /// The first run strictly after `t` (ms since the epoch).
    fn after(&self, t: f64) -> Option<f64> {
        match self {
            Timing::Every(ms) => Some(t + ms),
            Timing::Pattern(cron) => {
                let at = DateTime::<Utc>::from_timestamp_millis(t as i64)?;
                cron.find_next_occurrence(&at, false).ok().map(|next| next.timestamp_millis() as f64)
            }
        }
    }
}

/// One cron job of an app.
#[derive(Clone, Debug)]
pub(crate) struct CronSpec {
    name: String,
    path: String,
    args: Value,
    /// The schedule as `convex/server` exports it (kept in `_cron_jobs`).
    schedule: Value,
    timing: Timing,
}

const WEEKDAYS: [&str; 7] = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];

fn number(
    schedule: &Json,
    field: &str,
    range: std::ops::RangeInclusive<u32>,
    default: Option<u32>,
) -> Result<u32, String> {
    let n = match schedule.get(field) {
        None | Some(Json::Null) => default.ok_or_else(|| format!("`{field}` is required"))?,
        Some(v) => {
            let f = v.as_f64().ok_or_else(|| format!("`{field}` must be a number"))?;
            if f.fract() != 0.0 || f < 0.0 || f > f64::from(u32::MAX) {
                return Err(format!("`{field}` must be a whole number"));
            }
            f as u32
        }
    };
    if !range.contains(&n) {
        return Err(format!("`{field}` must be between {} and {}", range.start(), range.end()));
    }
    Ok(n)
}

/// The timing of a schedule as `convex/server`'s `Crons` exports it.
fn timing(schedule: &Json) -> Result<Timing, String> {
    let kind = schedule.get("type").and_then(Json::as_str).unwrap_or_default();
    let minute = || number(schedule, "minuteUTC", 0..=59, Some(0));
    let pattern = match kind {
        "interval" => {
            let (field, unit) = if schedule.get("seconds").is_some() {
                ("seconds", 1e3)
            } else if schedule.get("minutes").is_some() {
                ("minutes", 60e3)
            } else {
                ("hours", 3600e3)
            };
            let n = schedule.get(field).and_then(Json::as_f64).ok_or("an interval needs seconds, minutes or hours")?;
            let ms = n * unit;
            if !ms.is_finite() || ms < 1000.0 {
                return Err("an interval must be at least one second".into());
            }
            return Ok(Timing::Every(ms));
        }
        "hourly" => format!("{} * * * *", minute()?),
        "daily" => format!("{} {} * * *", minute()?, number(schedule, "hourUTC", 0..=23, None)?),
        "weekly" => {
            let day = schedule.get("dayOfWeek").and_then(Json::as_str).unwrap_or_default();
            let day = WEEKDAYS.iter().position(|d| *d == day).ok_or_else(|| format!("unknown dayOfWeek {day:?}"))?;
            format!("{} {} * * {day}", minute()?, number(schedule, "hourUTC", 0..=23, None)?)
        }
        "monthly" => format!(
            "{} {} {} * *",
            minute()?,
            number(schedule, "hourUTC", 0..=23, None)?,
            number(schedule, "day", 1..=31, None)?
        ),
        "cron" => {
            schedule.get("cron").and_then(Json::as_str).ok_or("a cron schedule needs a `cron` string")?.to_owned()
        }
        other => return Err(format!("unknown schedule type {other:?}")),
    };
    let cron = croner::Cron::from_str(&pattern).map_err(|e| format!("cron pattern {pattern:?}: {e}"))?;
    Ok(Timing::Pattern(Box::new(cron)))
}

/// The app's cron jobs, checked against its functions; an error names the cron at fault.
pub(crate) fn parse(crons: Option<&Json>, version: &Version) -> Result<Vec<CronSpec>, String> {
    let Some(crons) = crons else { return Ok(Vec::new()) };
    let jobs = crons.as_object().ok_or("convex/crons.ts: the default export is not a cronJobs() object")?;
    let mut specs = Vec::new();
    for (name, job) in jobs {
        let fail = |why: String| format!("cron job {name:?} (convex/crons.ts): {why}");
        let function = job.get("name").and_then(Json::as_str).ok_or_else(|| fail("it names no function".into()))?;
        let path = normalize_path(function);
        match version.function(&path).map(|f| f.kind) {
            Some(FunctionKind::Mutation | FunctionKind::Action) => {}
            Some(kind) => {
                return Err(fail(format!("{path} is a {kind:?}; only mutations and actions can run as cron jobs")));
            }
            None => return Err(fail(format!("{path} is not a function of this app"))),
        }
        let args = match job.get("args") {
            Some(Json::Array(a)) if a.len() == 1 => from_convex_json(&a[0]).map_err(|e| fail(e.to_string()))?,
            None => Value::Object(Object::new()),
            Some(_) => return Err(fail("its arguments are not one object".into())),
        };
        if !matches!(args, Value::Object(_)) {
            return Err(fail("its arguments are not an object".into()));
        }
        let raw = job.get("schedule").ok_or_else(|| fail("it has no schedule".into()))?;
        let timing = timing(raw).map_err(fail)?;
        let schedule = from_convex_json(raw).map_err(|e| fail(e.to_string()))?;
        specs.push(CronSpec { name: name.clone(), path, args, schedule, timing });
    }
    Ok(specs)
}

fn store_error(e: StoreError) -> crate::RuntimeError {
    crate::RuntimeError::Store(e)
}

fn spec_value(spec: &CronSpec) -> Value {
    Value::Object(
        [
            ("udfPath".to_owned(), Value::String(spec.path.clone())),
            ("udfArgs".to_owned(), Value::Array(vec![spec.args.clone()])),
            ("cronSchedule".to_owned(), spec.schedule.clone()),
        ]
        .into(),
    )
}

/// All registered crons: id and fields.
async fn registered(txn: &mut Transaction) -> Result<Vec<(DocumentId, Object)>, StoreError> {
    let stream = txn.open_query(Query::full_table_scan(TABLE))?;
    let mut all = Vec::new();
    while let Some(doc) = txn.next(stream).await? {
        all.push((doc.id, doc.value.clone()));
    }
    txn.close_query(stream)?;
    Ok(all)
}

fn without_system_fields(mut fields: Object) -> Object {
    fields.remove("_id");
    fields.remove("_creationTime");
    fields
}

/// Replaces the registered crons with `specs`: unchanged ones keep their next run, changed
/// and new ones are due at their first run from now, and the rest are removed.
pub(crate) async fn register(store: &Store, specs: &[CronSpec]) -> Result<(), crate::RuntimeError> {
    let mut attempt = 0u32;
    loop {
        let mut txn = store.begin_system();
        let now = wall_clock_ms();
        let mut existing = registered(&mut txn).await.map_err(store_error)?;
        for spec in specs {
            let wanted = spec_value(spec);
            let found = existing.iter().position(|(_, f)| f.get("name").and_then(Value::as_str) == Some(&spec.name));
            let old = found.map(|i| existing.swap_remove(i));
            if let Some((_, fields)) = &old
                && fields.get("cronSpec") == Some(&wanted)
            {
                continue;
            }
            let Some(next) = spec.timing.first(now) else { continue };
            let fields: Object = [
                ("name".to_owned(), Value::String(spec.name.clone())),
                ("cronSpec".to_owned(), wanted),
                ("nextTs".to_owned(), Value::Float64(next)),
            ]
            .into();
            match old {
                Some((id, _)) => txn.put_record(TABLE, id.internal, fields).await,
                None => txn.insert_record(TABLE, fields).await.map(drop),
            }
            .map_err(store_error)?;
        }
        for (id, _) in existing {
            txn.delete(id).await.map_err(store_error)?;
        }
        if committed(txn, &mut attempt).await.map_err(store_error)? {
            return Ok(());
        }
    }
}

/// The query of crons in order of their next run.
pub(crate) fn by_next_query() -> Query {
    Query {
        source: Source::IndexRange { table: TABLE.to_owned(), index: BY_NEXT.to_owned(), range: Vec::new() },
        order: Order::Asc,
        operators: Vec::new(),
    }
}

/// The next run of a cron document.
pub(crate) fn next_ts(fields: &Object) -> Option<f64> {
    match fields.get("nextTs") {
        Some(Value::Float64(ts)) => Some(*ts),
        _ => None,
    }
}

/// Fires cron `id` if it is due: schedules its function now and moves its next run past
/// now, in one transaction (retried on conflicts), so each due time fires once.
pub(crate) async fn fire(store: &Store, id: DocumentId) -> Result<(), StoreError> {
    let mut attempt = 0u32;
    loop {
        let mut txn = store.begin_system();
        let now = wall_clock_ms();
        let Some(doc) = txn.get_record(TABLE, id.internal).await? else { return Ok(()) };
        let fields = without_system_fields(doc.value.clone());
        let Some(due) = next_ts(&fields).filter(|ts| *ts <= now) else { return Ok(()) };
        let spec = fields.get("cronSpec").and_then(Value::as_object);
        let path = spec.and_then(|s| s.get("udfPath")).and_then(Value::as_str).unwrap_or_default().to_owned();
        let args = match spec.and_then(|s| s.get("udfArgs")) {
            Some(Value::Array(a)) => a.first().cloned().unwrap_or(Value::Object(Object::new())),
            _ => Value::Object(Object::new()),
        };
        let schedule = spec.and_then(|s| s.get("cronSchedule")).map(kiln_value::to_convex_json);
        let next = schedule.as_ref().and_then(|s| timing(s).ok()).and_then(|t| t.after(now.max(due)));
        let job = crate::scheduler::NewJob { component: "", path: &path, args, ts_ms: now };
        crate::scheduler::schedule(&mut txn, job).await?;
        let mut updated = fields;
        updated.insert("prevTs".to_owned(), Value::Float64(due));
        match next {
            Some(next) => updated.insert("nextTs".to_owned(), Value::Float64(next)),
            // A pattern that never matches again: the cron stays registered, idle.
            None => updated.remove("nextTs"),
        };
        txn.put_record(TABLE, id.internal, updated).await?;
        if committed(txn, &mut attempt).await? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> f64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis() as f64
    }

    #[test]
    fn schedules_of_every_kind_find_their_next_run_in_utc() {
        let from = at("2026-12-06T23:16:47Z"); // a Sunday
        let cases = [
            (serde_json::json!({"type": "hourly", "minuteUTC": 5}), "2026-12-07T00:05:00Z"),
            (serde_json::json!({"type": "daily", "hourUTC": 7, "minuteUTC": 15}), "2026-12-07T07:15:00Z"),
            (serde_json::json!({"type": "weekly", "dayOfWeek": "tuesday", "hourUTC": 9}), "2026-12-08T09:00:00Z"),
            (serde_json::json!({"type": "monthly", "day": 1, "hourUTC": 16, "minuteUTC": 0}), "2027-01-01T16:00:00Z"),
            (serde_json::json!({"type": "cron", "cron": "*/10 * * * *"}), "2026-12-06T23:20:00Z"),
        ];
        for (schedule, expected) in cases {
            let t = timing(&schedule).unwrap();
            assert_eq!(t.after(from), Some(at(expected)), "{schedule}");
            assert_eq!(t.first(from), Some(at(expected)), "{schedule}");
        }
        let every = timing(&serde_json::json!({"type": "interval", "minutes": 2})).unwrap();
        assert_eq!(every.first(from), Some(from), "an interval cron first runs when registered");
        assert_eq!(every.after(from), Some(from + 120_000.0));
    }

    #[test]
    fn bad_schedules_are_refused_with_a_reason() {
        for (schedule, reason) in [
            (serde_json::json!({"type": "interval", "seconds": 0.5}), "at least one second"),
            (serde_json::json!({"type": "daily", "hourUTC": 24}), "between 0 and 23"),
            (serde_json::json!({"type": "weekly", "dayOfWeek": "caturday", "hourUTC": 1}), "unknown dayOfWeek"),
            (serde_json::json!({"type": "cron", "cron": "not a cron"}), "cron pattern"),
            (serde_json::json!({"type": "yearly"}), "unknown schedule type"),
        ] {
            let e = timing(&schedule).unwrap_err();
            assert!(e.contains(reason), "{schedule}: {e}");
        }
    }
}
