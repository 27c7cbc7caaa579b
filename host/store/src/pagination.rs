//! Pagination cursors: opaque, signed positions in a query's index range.
//!
//! A cursor is `base64url(version ‖ query fingerprint ‖ position ‖ HMAC-SHA256 tag)`. The tag
//! (keyed by the deployment's secret) makes a tampered cursor fail verification; the
//! fingerprint (index, range, order) makes a cursor of another query fail too. Positions are
//! index keys, so a cursor stays meaningful while documents are inserted and deleted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use kiln_persistence::{IndexId, KeyRange, Order};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// Where a page starts or ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// Just after this index key.
    After(Vec<u8>),
    /// The end of the range.
    End,
}

/// Identifies a query's ordered key space.
pub(crate) fn fingerprint(index: IndexId, range: &KeyRange, order: Order) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(index.0.to_le_bytes());
    h.update((range.start.len() as u64).to_le_bytes());
    h.update(&range.start);
    match &range.end {
        Some(e) => {
            h.update([1]);
            h.update(e);
        }
        None => h.update([0]),
    }
    h.update([matches!(order, Order::Desc) as u8]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize()[..8]);
    out
}

fn mac(key: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Encodes a signed cursor.
pub(crate) fn encode(key: &[u8; 32], fingerprint: [u8; 8], position: &Position) -> String {
    let mut payload = vec![VERSION];
    payload.extend_from_slice(&fingerprint);
    match position {
        Position::End => payload.push(0),
        Position::After(k) => {
            payload.push(1);
            payload.extend_from_slice(k);
        }
    }
    let mut m = mac(key);
    m.update(&payload);
    payload.extend_from_slice(&m.finalize().into_bytes()[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(payload)
}

/// Decodes and verifies a cursor for the query with `fingerprint`.
pub(crate) fn decode(key: &[u8; 32], fingerprint: [u8; 8], cursor: &str) -> Result<Position> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| StoreError::InvalidCursor("not a cursor"))?;
    if bytes.len() < 1 + 8 + 1 + TAG_LEN {
        return Err(StoreError::InvalidCursor("not a cursor"));
    }
    let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let mut m = mac(key);
    m.update(payload);
    m.verify_truncated_left(tag).map_err(|_| {
        StoreError::InvalidCursor("signature mismatch: the cursor was altered or comes from another deployment")
    })?;
    if payload[0] != VERSION {
        return Err(StoreError::InvalidCursor("unsupported cursor version"));
    }
    if payload[1..9] != fingerprint {
        return Err(StoreError::InvalidCursor("the cursor belongs to a different query"));
    }
    match payload[9] {
        0 if payload.len() == 10 => Ok(Position::End),
        1 => Ok(Position::After(payload[10..].to_vec())),
        _ => Err(StoreError::InvalidCursor("malformed position")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let key = [7u8; 32];
        let fp = fingerprint(IndexId(3), &KeyRange::all(), Order::Asc);
        for pos in [Position::End, Position::After(b"key".to_vec())] {
            let c = encode(&key, fp, &pos);
            assert_eq!(decode(&key, fp, &c).unwrap(), pos);
        }
        let c = encode(&key, fp, &Position::After(b"key".to_vec()));
        let mut raw = URL_SAFE_NO_PAD.decode(&c).unwrap();
        raw[11] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(decode(&key, fp, &tampered).unwrap_err().code(), "InvalidCursor");
        assert!(decode(&[8u8; 32], fp, &c).is_err());
        let other = fingerprint(IndexId(4), &KeyRange::all(), Order::Asc);
        assert!(decode(&key, other, &c).is_err());
        assert!(decode(&key, fp, "!!").is_err());
    }
}
