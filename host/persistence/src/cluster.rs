//! The `Cluster` trait: what several hosts sharing one database need from it. Which hosts are
//! alive and where they are reached, who owns each deployment (its lease), and the records
//! every host must read the same (deployments, their keys and configuration, deployed apps).
//! The database decides; hosts only read and race on conditional writes.

use async_trait::async_trait;

use crate::Result;

/// A host of the cluster, as its heartbeats describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    /// Its id (unique per process start).
    pub id: String,
    /// Where other hosts and tools reach it (`--advertise`).
    pub url: String,
    /// Whether its last heartbeat is younger than the lease time.
    pub alive: bool,
    /// Milliseconds since its last heartbeat.
    pub seen_ms_ago: u64,
}

/// Who holds a deployment's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The deployment.
    pub deployment: String,
    /// The host id holding (or last holding) it.
    pub owner: String,
    /// Its fencing epoch.
    pub epoch: i64,
    /// Milliseconds until it expires (negative: since it expired).
    pub expires_in_ms: i64,
}

/// One database shared by several hosts.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This host's id: the owner its leases carry.
    fn host_id(&self) -> &str;

    /// Records that this host is alive and reached at `url`.
    async fn heartbeat(&self, url: &str) -> Result<()>;

    /// Removes this host from the list (a clean stop).
    async fn leave(&self) -> Result<()>;

    /// Every host that sent a heartbeat recently (dead ones are forgotten after a while).
    async fn hosts(&self) -> Result<Vec<HostEntry>>;

    /// The leases of the deployments `names` (a deployment never opened has none).
    async fn leases(&self, names: &[String]) -> Result<Vec<LeaseEntry>>;

    /// A shared record.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Every shared record whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Writes a shared record.
    async fn put(&self, key: &str, value: &[u8]) -> Result<()>;

    /// Writes a record only if there is none under `key`; false if there was.
    async fn put_new(&self, key: &str, value: &[u8]) -> Result<bool>;
}
