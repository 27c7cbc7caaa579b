//! The server's own records: the instance admin key and, per deployment, its admin key,
//! auth configuration and environment variables. On one host they are kept in
//! `<data>/kiln-server.json`, written atomically (temporary file, fsync, rename); hosts sharing
//! a database keep them there as shared records (`deployment/<name>`, `instance_key`), so any
//! host can serve any deployment. Only hashes of deployments' admin keys are stored; the
//! instance key itself is also written to `<data>/admin_key` (mode 0600) so that local tools
//! (`kiln dev`, `kiln deployments`) can use it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_persistence::cluster::Cluster;
use parking_lot::RwLock;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::AuthConfig;
use crate::error::{Result, ServerError};

/// What the server records about a deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    /// SHA-256 (hex) of the deployment's admin key.
    pub admin_key_sha256: String,
    /// Accepted identity providers.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Environment variables (`process.env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where its actions may fetch, besides the server's own lists.
    #[serde(default)]
    pub fetch: FetchConfig,
    /// When it was created (ms since the epoch).
    #[serde(default)]
    pub created_ms: u64,
}

/// A deployment's fetch configuration (see `kiln_runtime::FetchPolicy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchConfig {
    /// Hosts its actions may fetch even at loopback, private or link-local addresses.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Hosts its actions may never fetch.
    #[serde(default)]
    pub denied_hosts: Vec<String>,
    /// Only allowed hosts may be fetched at all.
    #[serde(default)]
    pub only_allowed: bool,
}

impl FetchConfig {
    /// Checks every host entry: a host name, `*.suffix`, `host:port`, an IP address or
    /// `[v6]:port`, without schemes, paths or spaces.
    pub fn validate(&self) -> Result<()> {
        for entry in self.allowed_hosts.iter().chain(&self.denied_hosts) {
            let ok = !entry.is_empty()
                && entry.len() <= 255
                && entry.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:*[]_".contains(&b));
            if !ok {
                return Err(ServerError::BadRequest(format!(
                    "invalid fetch host {entry:?}: give a host name, *.suffix, host:port or an IP address"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistryFile {
    instance_key_sha256: String,
    #[serde(default)]
    deployments: BTreeMap<String, DeploymentRecord>,
}

/// Where the records are kept.
enum Backend {
    /// `<data>/kiln-server.json`.
    File(PathBuf),
    /// Shared records of the hosts' database.
    Cluster(Arc<dyn Cluster>),
}

/// The registry, loaded in memory; every change is written through before it is seen.
pub struct Registry {
    backend: Backend,
    file: RwLock<RegistryFile>,
    /// One change at a time (each read-modify-write sees the one before).
    writes: tokio::sync::Mutex<()>,
}

/// SHA-256 in hex: keys are stored and compared hashed (so comparing leaks no key's bytes).
pub(crate) fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the instance admin key begins with (`instance|<secret>`): no deployment has this name.
pub const INSTANCE_KEY_NAME: &str = "instance";

/// The shared record of the instance admin key.
const INSTANCE_RECORD: &str = "instance_key";
/// The shared records of deployments: `deployment/<name>`.
const DEPLOYMENT_RECORDS: &str = "deployment/";

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Internal(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(&tmp).map_err(|e| io_error(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ServerError::Internal(e.to_string()))
}

/// Reads every deployment record of the cluster.
async fn load_deployments(cluster: &dyn Cluster) -> Result<BTreeMap<String, DeploymentRecord>> {
    let mut deployments = BTreeMap::new();
    for (key, value) in cluster.list(DEPLOYMENT_RECORDS).await? {
        let name = key[DEPLOYMENT_RECORDS.len()..].to_owned();
        let record = serde_json::from_slice(&value)
            .map_err(|e| ServerError::Internal(format!("the shared record of deployment {name:?} is corrupt: {e}")))?;
        deployments.insert(name, record);
    }
    Ok(deployments)
}

impl Registry {
    /// Opens the registry in `data_dir`, creating it (and the instance admin key) if new.
    /// Returns the registry and, when it was just created, the new instance key.
    pub fn open(data_dir: &Path) -> Result<(Registry, Option<String>)> {
        std::fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, e))?;
        let path = data_dir.join("kiln-server.json");
        let (file, created) = match std::fs::read(&path) {
            Ok(bytes) => {
                let file = serde_json::from_slice(&bytes)
                    .map_err(|e| ServerError::Internal(format!("{} is corrupt: {e}", path.display())))?;
                (file, None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = format!("{INSTANCE_KEY_NAME}|{}", new_secret());
                write_atomic(&data_dir.join("admin_key"), format!("{key}\n").as_bytes(), true)?;
                let file = RegistryFile { instance_key_sha256: hash(&key), ..Default::default() };
                write_atomic(&path, &to_json(&file)?, true)?;
                (file, Some(key))
            }
            Err(e) => return Err(io_error(&path, e)),
        };
        let registry =
            Registry { backend: Backend::File(path), file: RwLock::new(file), writes: tokio::sync::Mutex::new(()) };
        Ok((registry, created))
    }

    /// Opens the registry the hosts of `cluster` share, creating the instance admin key if
    /// no host did yet; every host writes it to `<data_dir>/admin_key`. Returns the key
    /// when this host created it.
    pub async fn open_shared(data_dir: &Path, cluster: Arc<dyn Cluster>) -> Result<(Registry, Option<String>)> {
        std::fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, e))?;
        let fresh = format!("{INSTANCE_KEY_NAME}|{}", new_secret());
        let created = cluster.put_new(INSTANCE_RECORD, fresh.as_bytes()).await?;
        let key = match cluster.get(INSTANCE_RECORD).await? {
            Some(bytes) => String::from_utf8(bytes)
                .map_err(|_| ServerError::Internal("the shared instance admin key is not text".into()))?,
            None => return Err(ServerError::Internal("the shared instance admin key vanished".into())),
        };
        let key_path = data_dir.join("admin_key");
        if std::fs::read_to_string(&key_path).map(|k| k.trim() != key).unwrap_or(true) {
            write_atomic(&key_path, format!("{key}\n").as_bytes(), true)?;
        }
        let file = RegistryFile { instance_key_sha256: hash(&key), deployments: load_deployments(&*cluster).await? };
        let registry = Registry {
            backend: Backend::Cluster(cluster),
            file: RwLock::new(file),
            writes: tokio::sync::Mutex::new(()),
        };
        Ok((registry, created.then_some(key)))
    }

    /// Reads the shared records again (other hosts create and change deployments); on one
    /// host there is nothing to do.
    pub async fn refresh(&self) -> Result<()> {
        let Backend::Cluster(cluster) = &self.backend else { return Ok(()) };
        let _writing = self.writes.lock().await;
        let deployments = load_deployments(&**cluster).await?;
        self.file.write().deployments = deployments;
        Ok(())
    }

    /// The names of all deployments.
    pub fn names(&self) -> Vec<String> {
        self.file.read().deployments.keys().cloned().collect()
    }

    /// A deployment's record.
    pub fn get(&self, name: &str) -> Option<DeploymentRecord> {
        self.file.read().deployments.get(name).cloned()
    }

    /// Whether a deployment of that name is recorded.
    pub fn contains(&self, name: &str) -> bool {
        self.file.read().deployments.contains_key(name)
    }

    /// Writes `name`'s record durably (`new`: only if no host recorded that name yet).
    async fn save(&self, name: &str, record: &DeploymentRecord, new: bool) -> Result<()> {
        match &self.backend {
            Backend::File(path) => {
                let mut file = self.file.read().clone();
                file.deployments.insert(name.to_owned(), record.clone());
                write_atomic(path, &to_json(&file)?, true)
            }
            Backend::Cluster(cluster) => {
                let key = format!("{DEPLOYMENT_RECORDS}{name}");
                if new {
                    if !cluster.put_new(&key, &to_json(record)?).await? {
                        return Err(ServerError::DeploymentExists(name.to_owned()));
                    }
                    Ok(())
                } else {
                    Ok(cluster.put(&key, &to_json(record)?).await?)
                }
            }
        }
    }

    /// Records a new deployment; returns its admin key (shown once, never stored).
    pub async fn create(&self, name: &str) -> Result<String> {
        let _writing = self.writes.lock().await;
        if self.contains(name) {
            return Err(ServerError::DeploymentExists(name.to_owned()));
        }
        let key = format!("{name}|{}", new_secret());
        let record = DeploymentRecord { admin_key_sha256: hash(&key), created_ms: now_ms(), ..Default::default() };
        self.save(name, &record, true).await?;
        self.file.write().deployments.insert(name.to_owned(), record);
        Ok(key)
    }

    /// Changes a deployment's record with `change`, writes it, then runs `apply` with the new
    /// record before any other change may start (so what `apply` configures follows the
    /// records' order).
    pub async fn modify<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut DeploymentRecord) -> Result<()>,
        apply: impl FnOnce(&DeploymentRecord) -> Result<T>,
    ) -> Result<T> {
        let _writing = self.writes.lock().await;
        let mut record = self.get(name).ok_or_else(|| ServerError::DeploymentNotFound(name.to_owned()))?;
        change(&mut record)?;
        self.save(name, &record, false).await?;
        self.file.write().deployments.insert(name.to_owned(), record.clone());
        apply(&record)
    }

    /// Whether `key` is the instance admin key.
    pub fn is_instance_key(&self, key: &str) -> bool {
        hash(key) == self.file.read().instance_key_sha256
    }

    /// Whether `key` may administer `deployment` (its own key, or the instance key).
    pub fn is_admin_key(&self, deployment: &str, key: &str) -> bool {
        let h = hash(key);
        let file = self.file.read();
        h == file.instance_key_sha256 || file.deployments.get(deployment).is_some_and(|d| d.admin_key_sha256 == h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_checked_by_hash_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, instance) = Registry::open(dir.path()).unwrap();
        let instance = instance.unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("admin_key")).unwrap().trim(), instance);
        let key = reg.create("chat").await.unwrap();
        assert!(reg.is_admin_key("chat", &key));
        assert!(reg.is_admin_key("chat", &instance));
        assert!(!reg.is_admin_key("other", &key), "a deployment key is only good for its deployment");
        assert!(!reg.is_admin_key("chat", "chat|wrong"));
        assert!(matches!(reg.create("chat").await, Err(ServerError::DeploymentExists(_))));
        drop(reg);
        let (reg, again) = Registry::open(dir.path()).unwrap();
        assert!(again.is_none());
        assert!(reg.is_admin_key("chat", &key));
        assert!(!std::fs::read_to_string(dir.path().join("kiln-server.json")).unwrap().contains(&key));
    }
}
