//! The commit log's row format: one group commit's records in a compact binary encoding.
//!
//! A group commit is made durable as one row of `commit_log` (a few sequential pages) instead
//! of as the documents' and index entries' rows themselves (a random B-tree leaf per document);
//! the writer copies logged commits into those tables later, many group commits at a time,
//! so a hot leaf is written once per copy rather than once per group commit.
//!
//! Layout, little-endian: a record count (u32), then per record its timestamp (u64), its
//! documents (u32 count; per document table u32, id 16 bytes, then a value as an optional
//! byte string), its index writes (u32 count; per write index u32, key as a byte string, then
//! an optional document: flag byte, table u32, id 16 bytes) and its optional catalog. A byte
//! string is a u32 length and the bytes; an optional one is a flag byte (0 or 1) first.

use kiln_persistence::{CommitRecord, IndexId, IndexWrite, PersistenceError, Result, Timestamp};
use kiln_value::{DocumentId, InternalId, TableNumber};

/// Encodes `records` as one commit-log row.
pub(crate) fn encode(records: &[&CommitRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| crate::materialize::record_bytes(r)).sum::<usize>());
    put_len(&mut out, records.len());
    for r in records {
        out.extend_from_slice(&r.ts.0.to_le_bytes());
        put_len(&mut out, r.documents.len());
        for (id, value) in &r.documents {
            put_id(&mut out, id);
            put_optional(&mut out, value.as_deref());
        }
        put_len(&mut out, r.indexes.len());
        for w in &r.indexes {
            out.extend_from_slice(&w.index.0.to_le_bytes());
            put_bytes(&mut out, &w.key);
            match &w.doc {
                Some(id) => {
                    out.push(1);
                    put_id(&mut out, id);
                }
                None => out.push(0),
            }
        }
        put_optional(&mut out, r.catalog.as_deref());
    }
    out
}

/// Decodes a commit-log row written by [`encode`].
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<CommitRecord>> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.len()?;
    let mut records = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let ts = Timestamp(r.u64()?);
        let n = r.len()?;
        let mut documents = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let id = r.id()?;
            documents.push((id, r.optional()?));
        }
        let n = r.len()?;
        let mut indexes = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let index = IndexId(r.u32()?);
            let key = r.bytes()?.to_vec();
            let doc = match r.flag()? {
                true => Some(r.id()?),
                false => None,
            };
            indexes.push(IndexWrite { index, key, doc });
        }
        let catalog = r.optional()?;
        records.push(CommitRecord { ts, documents, indexes, catalog });
    }
    if r.at != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(records)
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // Lengths come from in-memory values far below 4 GiB (a commit is capped well below it).
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

fn put_optional(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn put_id(out: &mut Vec<u8>, id: &DocumentId) {
    out.extend_from_slice(&id.table.0.to_le_bytes());
    out.extend_from_slice(&id.internal.0);
}

fn corrupt(what: &str) -> PersistenceError {
    PersistenceError::Corrupt(format!("commit log row: {what}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| corrupt("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len(&mut self) -> Result<usize> {
        usize::try_from(self.u32()?).map_err(|_| corrupt("length"))
    }

    fn flag(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(corrupt("bad flag")),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn optional(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(if self.flag()? { Some(self.bytes()?.to_vec()) } else { None })
    }

    fn id(&mut self) -> Result<DocumentId> {
        let table = TableNumber(self.u32()?);
        let mut internal = [0; 16];
        internal.copy_from_slice(self.take(16)?);
        Ok(DocumentId::new(table, InternalId(internal)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = DocumentId> {
        (any::<u32>(), any::<[u8; 16]>()).prop_map(|(t, i)| DocumentId::new(TableNumber(t), InternalId(i)))
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..40)
    }

    fn record() -> impl Strategy<Value = CommitRecord> {
        let docs = proptest::collection::vec((id(), proptest::option::of(bytes())), 0..4);
        let write = (any::<u32>(), bytes(), proptest::option::of(id())).prop_map(|(i, key, doc)| IndexWrite {
            index: IndexId(i),
            key,
            doc,
        });
        let indexes = proptest::collection::vec(write, 0..4);
        (any::<u64>(), docs, indexes, proptest::option::of(bytes())).prop_map(|(ts, documents, indexes, catalog)| {
            CommitRecord { ts: Timestamp(ts), documents, indexes, catalog }
        })
    }

    proptest! {
        #[test]
        fn rows_round_trip(records in proptest::collection::vec(record(), 0..5)) {
            let refs: Vec<&CommitRecord> = records.iter().collect();
            prop_assert_eq!(decode(&encode(&refs)).unwrap(), records);
        }

        #[test]
        fn a_damaged_row_is_an_error_not_a_panic(records in proptest::collection::vec(record(), 1..3), cut in any::<prop::sample::Index>(), junk in any::<u8>()) {
            let refs: Vec<&CommitRecord> = records.iter().collect();
            let row = encode(&refs);
            let short = &row[..cut.index(row.len())];
            prop_assert!(decode(short).is_err());
            let mut longer = row.clone();
            longer.push(junk);
            prop_assert!(decode(&longer).is_err());
        }
    }
}
