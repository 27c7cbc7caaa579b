//! Document ids: opaque, URL-safe strings bound to a table.
//!
//! An id is the lowercase base32 (`0123456789abcdefghjkmnpqrstvwxyz`) of
//! `varint(table number) ‖ 16-byte internal id ‖ CRC-16 of the preceding bytes (big-endian)`;
//! the internal id is a millisecond time prefix and random bits (`InternalId::fresh`).
//! Within one table all ids have the same length and the string order equals the order of the
//! internal ids, so `_id` order is the same whether compared as strings or as internal ids.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ValueError};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The number of a table within a deployment; ids carry it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableNumber(pub u32);

/// The part of a document id after its table number, unique within its table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InternalId(pub [u8; 16]);

impl InternalId {
    /// A fresh id: 48 bits of milliseconds since the Unix epoch, then 80 random bits.
    ///
    /// The time prefix puts new documents at the end of the storage's primary key instead of
    /// at random places in it, so a batch of inserts touches a few pages, not one each
    /// (`_creationTime` already reveals the same time).
    pub fn fresh() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::at(ms)
    }

    /// A fresh id with the time prefix `ms` (milliseconds since the Unix epoch).
    pub fn at(ms: u64) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        // getrandom only fails when the OS has no entropy source at all; fall back to a
        // process-wide counter, which keeps ids unique within the process.
        if !random_bytes(&mut b[6..]) {
            use std::sync::atomic::{AtomicU64, Ordering};
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            b[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        }
        InternalId(b)
    }
}

/// Bytes of OS randomness a thread fetches at once: one `getrandom` syscall serves ~100 ids
/// instead of one each (a syscall per insert was ~0.5 % of a transfer's CPU).
const RANDOM_POOL: usize = 1024;

/// Fills `out` (at most [`RANDOM_POOL`] bytes) from the calling thread's pool of OS random
/// bytes, each handed out once; false if the OS has no entropy source.
fn random_bytes(out: &mut [u8]) -> bool {
    use std::cell::RefCell;
    thread_local! {
        /// Unused random bytes and how many of them are left (at the end of the buffer).
        static POOL: RefCell<([u8; RANDOM_POOL], usize)> = const { RefCell::new(([0; RANDOM_POOL], 0)) };
    }
    POOL.with_borrow_mut(|(bytes, left)| {
        if *left < out.len() {
            if getrandom::fill(bytes).is_err() {
                return false;
            }
            *left = RANDOM_POOL;
        }
        let start = RANDOM_POOL - *left;
        out.copy_from_slice(&bytes[start..start + out.len()]);
        *left -= out.len();
        true
    })
}

/// A document's identity: its table and its internal id.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocumentId {
    /// The table the document lives in.
    pub table: TableNumber,
    /// The document's id within the table.
    pub internal: InternalId,
}

impl DocumentId {
    /// Builds an id from its parts.
    pub fn new(table: TableNumber, internal: InternalId) -> Self {
        DocumentId { table, internal }
    }

    /// The id's string form, as stored in `_id` and seen by clients.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(23);
        let mut n = self.table.0;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                bytes.push(b);
                break;
            }
            bytes.push(b | 0x80);
        }
        bytes.extend_from_slice(&self.internal.0);
        let crc = crc16(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        base32_encode(&bytes)
    }

    /// Parses an id string of any table.
    pub fn decode(s: &str) -> Result<DocumentId> {
        let bad = |reason| ValueError::InvalidId { id: s.chars().take(64).collect(), reason };
        if s.len() < 31 || s.len() > 37 {
            return Err(bad("wrong length"));
        }
        let bytes = base32_decode(s).ok_or_else(|| bad("not lowercase base32"))?;
        let (table, used) = read_varint(&bytes).ok_or_else(|| bad("bad table number"))?;
        if bytes.len() != used + 18 {
            return Err(bad("wrong length"));
        }
        let (body, crc) = bytes.split_at(used + 16);
        if crc16(body).to_be_bytes() != crc {
            return Err(bad("checksum mismatch"));
        }
        let mut internal = [0u8; 16];
        internal.copy_from_slice(&body[used..]);
        Ok(DocumentId { table: TableNumber(table), internal: InternalId(internal) })
    }

    /// Parses an id string that must belong to `table` (named `table_name` in errors).
    pub fn decode_for_table(s: &str, table: TableNumber, table_name: &str) -> Result<DocumentId> {
        let id = Self::decode(s)?;
        if id.table != table {
            return Err(ValueError::IdWrongTable { id: s.to_owned(), expected: table_name.to_owned() });
        }
        Ok(id)
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Reads a canonical (shortest-form) LEB128 u32.
fn read_varint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // A trailing zero group would be a second spelling of a smaller number.
            if i > 0 && b == 0 {
                return None;
            }
            return u32::try_from(n).ok().map(|n| (n, i + 1));
        }
    }
    None
}

/// CRC-16/CCITT-FALSE: detects every error burst up to 16 bits, so every single changed
/// base32 character. Table-driven: ids are decoded several times per database call.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0xffff, |crc, &b| (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)])
}

/// The CRC of each byte value, shifted through the polynomial 0x1021.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes base32; the unused low bits of the last character must be zero (one spelling per id).
/// The value of each byte as a base32 digit of [`ALPHABET`], or 0xff.
const BASE32_VALUES: [u8; 256] = {
    let mut values = [0xffu8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        values[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    values
};

fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match BASE32_VALUES[usize::from(c)] {
            0xff => return None,
            v => u32::from(v),
        };
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits >= 5 || acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_crc16_ccitt_false() {
        // The catalogue check value: ids written before the table-driven version stay valid.
        assert_eq!(crc16(b"123456789"), 0x29b1);
        assert_eq!(crc16(b""), 0xffff);
    }

    #[test]
    fn round_trip_and_order() {
        for table in [1, 127, 128, 10_001, u32::MAX] {
            let a = DocumentId::new(TableNumber(table), InternalId([3; 16]));
            let b = DocumentId::new(TableNumber(table), InternalId([4; 16]));
            assert_eq!(DocumentId::decode(&a.encode()).unwrap(), a);
            assert!(a.encode() < b.encode());
            assert!(a.encode().bytes().all(|c| ALPHABET.contains(&c)));
        }
        assert_eq!(DocumentId::new(TableNumber(5), InternalId::fresh()).encode().len(), 31);
    }

    #[test]
    fn random_parts_differ_across_threads_and_pool_refills() {
        // 4 threads × 1000 ids: each thread refills its pool ~10 times.
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..1000).map(|_| InternalId::at(7)).collect::<Vec<_>>())).collect();
        let all: std::collections::BTreeSet<InternalId> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert_eq!(all.len(), 4000);
    }

    #[test]
    fn fresh_ids_sort_by_their_millisecond_and_differ_within_one() {
        let (early, late) = (InternalId::at(1_700_000_000_000), InternalId::at(1_700_000_000_001));
        assert!(early < late);
        assert_eq!(&early.0[..6], &1_700_000_000_000u64.to_be_bytes()[2..]);
        let same: std::collections::BTreeSet<InternalId> = (0..1000).map(|_| InternalId::at(5)).collect();
        assert_eq!(same.len(), 1000, "the random part keeps ids of one millisecond apart");
        let now = InternalId::fresh();
        assert!(now > early, "a fresh id carries the current time");
        let (a, b) = (DocumentId::new(TableNumber(9), early), DocumentId::new(TableNumber(9), late));
        assert!(a.encode() < b.encode(), "string order follows the time prefix");
    }

    #[test]
    fn corruption_and_wrong_tables_are_rejected() {
        let id = DocumentId::new(TableNumber(7), InternalId::fresh()).encode();
        for i in 0..id.len() {
            let mut chars: Vec<u8> = id.bytes().collect();
            chars[i] = if chars[i] == b'0' { b'1' } else { b'0' };
            let s = String::from_utf8(chars).unwrap();
            assert_eq!(DocumentId::decode(&s).unwrap_err().code(), "InvalidId", "{s}");
        }
        assert_eq!(DocumentId::decode("hello").unwrap_err().code(), "InvalidId");
        assert_eq!(DocumentId::decode(&id.to_uppercase()).unwrap_err().code(), "InvalidId");
        assert_eq!(DocumentId::decode_for_table(&id, TableNumber(8), "users").unwrap_err().code(), "IdWrongTable");
    }
}
