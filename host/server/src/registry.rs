//! The server's own records: the instance admin key and, per deployment, its admin key,
//! auth configuration and environment variables. Kept in `<data>/kiln-server.json`, written
//! atomically (temporary file, fsync, rename). Only hashes of admin keys are stored; the
//! instance key itself is also written to `<data>/admin_key` (mode 0600) so that local tools
//! (`kiln dev`, `kiln deployments`) can use it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// The registry, loaded in memory; every change is written through.
pub struct Registry {
    path: PathBuf,
    file: RegistryFile,
}

/// SHA-256 in hex: keys are stored and compared hashed (so comparing leaks no key's bytes).
pub(crate) fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the instance admin key begins with (`instance|<secret>`): no deployment has this name.
pub const INSTANCE_KEY_NAME: &str = "instance";

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

impl Registry {
    /// Opens the registry in `data_dir`, creating it (and the instance admin key) if new.
    /// Returns the registry and, when it was just created, the new instance key.
    pub fn open(data_dir: &Path) -> Result<(Registry, Option<String>)> {
        std::fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, e))?;
        let path = data_dir.join("kiln-server.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file = serde_json::from_slice(&bytes)
                    .map_err(|e| ServerError::Internal(format!("{} is corrupt: {e}", path.display())))?;
                Ok((Registry { path, file }, None))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = format!("{INSTANCE_KEY_NAME}|{}", new_secret());
                write_atomic(&data_dir.join("admin_key"), format!("{key}\n").as_bytes(), true)?;
                let mut registry =
                    Registry { path, file: RegistryFile { instance_key_sha256: hash(&key), ..Default::default() } };
                registry.save()?;
                Ok((registry, Some(key)))
            }
            Err(e) => Err(io_error(&path, e)),
        }
    }

    fn save(&mut self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.file).map_err(|e| ServerError::Internal(e.to_string()))?;
        write_atomic(&self.path, &bytes, true)
    }

    /// The names of all deployments.
    pub fn names(&self) -> Vec<String> {
        self.file.deployments.keys().cloned().collect()
    }

    /// A deployment's record.
    pub fn get(&self, name: &str) -> Option<&DeploymentRecord> {
        self.file.deployments.get(name)
    }

    /// Records a new deployment; returns its admin key (shown once, never stored).
    pub fn create(&mut self, name: &str) -> Result<String> {
        if self.file.deployments.contains_key(name) {
            return Err(ServerError::DeploymentExists(name.to_owned()));
        }
        let key = format!("{name}|{}", new_secret());
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.file.deployments.insert(
            name.to_owned(),
            DeploymentRecord { admin_key_sha256: hash(&key), created_ms, ..Default::default() },
        );
        self.save()?;
        Ok(key)
    }

    /// Changes a deployment's auth configuration and environment.
    pub fn update(
        &mut self,
        name: &str,
        auth: Option<AuthConfig>,
        env: Option<BTreeMap<String, String>>,
        fetch: Option<FetchConfig>,
    ) -> Result<()> {
        let record =
            self.file.deployments.get_mut(name).ok_or_else(|| ServerError::DeploymentNotFound(name.to_owned()))?;
        if let Some(auth) = auth {
            record.auth = auth;
        }
        if let Some(env) = env {
            record.env = env;
        }
        if let Some(fetch) = fetch {
            record.fetch = fetch;
        }
        self.save()
    }

    /// Whether `key` is the instance admin key.
    pub fn is_instance_key(&self, key: &str) -> bool {
        hash(key) == self.file.instance_key_sha256
    }

    /// Whether `key` may administer `deployment` (its own key, or the instance key).
    pub fn is_admin_key(&self, deployment: &str, key: &str) -> bool {
        let h = hash(key);
        h == self.file.instance_key_sha256
            || self.file.deployments.get(deployment).is_some_and(|d| d.admin_key_sha256 == h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_hash_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (mut reg, instance) = Registry::open(dir.path()).unwrap();
        let instance = instance.unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("admin_key")).unwrap().trim(), instance);
        let key = reg.create("chat").unwrap();
        assert!(reg.is_admin_key("chat", &key));
        assert!(reg.is_admin_key("chat", &instance));
        assert!(!reg.is_admin_key("other", &key), "a deployment key is only good for its deployment");
        assert!(!reg.is_admin_key("chat", "chat|wrong"));
        assert!(matches!(reg.create("chat"), Err(ServerError::DeploymentExists(_))));
        drop(reg);
        let (reg, again) = Registry::open(dir.path()).unwrap();
        assert!(again.is_none());
        assert!(reg.is_admin_key("chat", &key));
        assert!(!std::fs::read_to_string(dir.path().join("kiln-server.json")).unwrap().contains(&key));
    }
}
