//! Idempotency records of mutations: a client that resends a mutation after a reconnect
//! (same session and request id) must not apply it twice. The first attempt that commits
//! writes a record in the same transaction as its own writes; a later call with the same key
//! finds it and replays the result. Because the lookup is a read of the mutation's
//! transaction, two concurrent calls with one key conflict, and the retry finds the record.

use std::time::Duration;

use kiln_store::query::Query;
use kiln_store::{Store, StoreError, Transaction};
use kiln_value::{InternalId, Object, Value, from_msgpack, to_msgpack};
use sha2::{Digest, Sha256};

use crate::error::CallError;

/// The system table of the records.
pub(crate) const TABLE: &str = "_kiln_mutations";

/// Results larger than this are not kept; a replay of such a mutation reports that it was
/// applied without repeating its value (documents are capped at 1 MiB).
const MAX_INLINE_RESULT: usize = 900 << 10;

fn record_id(key: &str) -> InternalId {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    InternalId(id)
}

fn store_error(e: StoreError) -> CallError {
    CallError::new(e.code(), e.to_string())
}

/// The recorded result of the mutation with `key`, if one committed.
pub(crate) async fn replay(txn: &mut Transaction, key: &str) -> Result<Option<Value>, CallError> {
    let Some(doc) = txn.get_record(TABLE, record_id(key)).await.map_err(store_error)? else { return Ok(None) };
    if doc.value.get("key").and_then(Value::as_str) != Some(key) {
        // A different key with the same 128-bit hash prefix: treat as absent.
        return Ok(None);
    }
    match doc.value.get("result") {
        Some(Value::Bytes(bytes)) => from_msgpack(bytes)
            .map(Some)
            .map_err(|e| CallError::new("InternalError", format!("unreadable mutation record: {e}"))),
        _ => Err(CallError::new(
            "MutationAlreadyApplied",
            "this mutation was already applied; its result was too large to keep for a replay",
        )),
    }
}

/// Records the result of the mutation with `key` in its own transaction.
pub(crate) async fn record(txn: &mut Transaction, key: &str, value: &Value) -> Result<(), CallError> {
    let bytes = to_msgpack(value);
    let mut fields: Object = [("key".to_owned(), Value::String(key.to_owned()))].into();
    if bytes.len() <= MAX_INLINE_RESULT {
        fields.insert("result".to_owned(), Value::Bytes(bytes));
    }
    txn.put_record(TABLE, record_id(key), fields).await.map_err(store_error)
}

/// Deletes up to `batch` records older than `retention`; returns how many.
pub(crate) async fn prune(store: &Store, retention: Duration, batch: usize) -> Result<usize, StoreError> {
    let cutoff = crate::call::wall_clock_ms() - retention.as_secs_f64() * 1000.0;
    let mut tx = store.begin_system();
    let stream = tx.open_query(Query::full_table_scan(TABLE))?;
    let mut old = Vec::new();
    while old.len() < batch {
        let Some(doc) = tx.next(stream).await? else { break };
        if doc.creation_time() >= cutoff {
            break;
        }
        old.push(doc.id);
    }
    tx.close_query(stream)?;
    for id in &old {
        tx.delete(*id).await?;
    }
    if !old.is_empty() {
        tx.commit().await?;
    }
    Ok(old.len())
}
