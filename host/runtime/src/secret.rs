//! Randomness of calls. Actions draw from the operating system's CSPRNG. Queries and
//! mutations are deterministic per execution (a re-run at the same snapshot draws the same
//! numbers, which the query cache relies on), so their seed is derived from the call, but
//! keyed by a per-deployment secret: without it, anyone who knows the function, its arguments
//! and the time could compute the numbers a call will draw.

use kiln_store::{Store, StoreError, Timestamp};
use kiln_value::{InternalId, Object, Value};
use sha2::{Digest, Sha256};

/// The system table holding the deployment's secrets.
pub(crate) const TABLE: &str = "_kiln_secrets";
/// The record of the seed key.
const SEED_KEY: InternalId = InternalId([0; 16]);
/// The field holding it.
const SEED_FIELD: &str = "seedKey";

/// A deployment's key for the seeds of its queries and mutations.
#[derive(Clone)]
pub(crate) struct SeedKey([u8; 32]);

impl std::fmt::Debug for SeedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeedKey(..)")
    }
}

impl SeedKey {
    /// The deployment's key, made from the operating system's CSPRNG and persisted in its
    /// store the first time (the table must exist: see `open_deployment`).
    pub(crate) async fn load(store: &Store) -> Result<SeedKey, StoreError> {
        let mut tx = store.begin_system();
        if let Some(doc) = tx.get_record(TABLE, SEED_KEY).await?
            && let Some(Value::Bytes(bytes)) = doc.value.get(SEED_FIELD)
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            tx.commit().await?;
            return Ok(SeedKey(key));
        }
        let mut key = [0u8; 32];
        os_random(&mut key);
        let fields: Object = [(SEED_FIELD.to_owned(), Value::Bytes(key.to_vec()))].into();
        tx.put_record(TABLE, SEED_KEY, fields).await?;
        tx.commit().await?;
        Ok(SeedKey(key))
    }

    /// The key itself (other keys of the deployment are derived from it).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The seed of a query or mutation of `path` with `args` (MessagePack) at snapshot `ts`.
    pub(crate) fn snapshot_seed(&self, path: &str, args: &[u8], ts: Timestamp) -> u64 {
        keyed_seed(&self.0, &[path.as_bytes(), args, &ts.0.to_le_bytes()])
    }
}

/// A seed for a nested query or mutation, from its caller's seed (itself keyed).
pub(crate) fn nested_seed(parent: u64, path: &str, args: &[u8]) -> u64 {
    keyed_seed(&parent.to_le_bytes(), &[path.as_bytes(), args])
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn os_random(buf: &mut [u8]) {
    // The kernel's generator does not fail once initialized; if it ever did, a call must
    // not go on with predictable numbers.
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random number generator failed: {e}");
    }
}

/// 64 bits from the operating system's CSPRNG (what `env.seed` answers an action each time).
pub(crate) fn os_random_u64() -> u64 {
    let mut b = [0u8; 8];
    os_random(&mut b);
    u64::from_le_bytes(b)
}

/// SHA-256 of the key and the length-prefixed parts, truncated to 64 bits.
fn keyed_seed(key: &[u8], parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_le_bytes());
    h.update(key);
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize()[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_the_key_and_every_part() {
        let (a, b) = (SeedKey([1; 32]), SeedKey([2; 32]));
        let ts = Timestamp(42);
        let s = a.snapshot_seed("m:f", b"args", ts);
        assert_eq!(s, a.snapshot_seed("m:f", b"args", ts), "deterministic");
        assert_ne!(s, b.snapshot_seed("m:f", b"args", ts), "another deployment's key");
        assert_ne!(s, a.snapshot_seed("m:g", b"args", ts));
        assert_ne!(s, a.snapshot_seed("m:f", b"arg", ts));
        assert_ne!(s, a.snapshot_seed("m:f", b"args", Timestamp(43)));
        // Length prefixes: moving a byte from one part to the next changes the seed.
        assert_ne!(a.snapshot_seed("m:fa", b"rgs", ts), s);
        assert_ne!(nested_seed(s, "m:f", b"x"), nested_seed(s.wrapping_add(1), "m:f", b"x"));
    }

    #[tokio::test]
    async fn the_key_is_made_once_and_kept_across_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || async {
            let persistence =
                kiln_sqlite::SqlitePersistence::open_in_dir(dir.path(), "d", Default::default()).expect("persistence");
            let store = Store::open(std::sync::Arc::new(persistence), Default::default()).await.expect("store");
            let mut tx = store.begin_system();
            tx.create_system_table(TABLE).expect("table");
            tx.commit().await.expect("commit");
            store
        };
        let store = open().await;
        let first = SeedKey::load(&store).await.expect("key");
        assert_eq!(SeedKey::load(&store).await.expect("key").0, first.0);
        store.close().await;
        let store = open().await;
        assert_eq!(SeedKey::load(&store).await.expect("key").0, first.0, "the same key after reopening");
        assert_ne!(first.0, [0; 32]);
    }

    #[test]
    fn os_randomness_differs_between_draws() {
        let draws: std::collections::HashSet<u64> = (0..1000).map(|_| os_random_u64()).collect();
        assert_eq!(draws.len(), 1000);
    }
}
