//! [`Cluster`] on PostgreSQL: `kiln_cluster.hosts` (heartbeats), `kiln_cluster.records` (the
//! shared registry and deployed apps) and the leases of [`crate::LEASES`].

use std::time::Duration;

use async_trait::async_trait;
use kiln_persistence::Result;
use kiln_persistence::cluster::{Cluster, HostEntry, LeaseEntry};

use crate::{LEASES, PostgresFactory, connect, schema_of, storage};

/// Hosts silent for this many lease times are dropped from the list.
const FORGET_AFTER_LEASES: f64 = 30.0;

/// The cluster of hosts sharing the factory's database.
pub struct PostgresCluster {
    pool: deadpool_postgres::Pool,
    host_id: String,
    ttl: Duration,
}

impl std::fmt::Debug for PostgresCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCluster").field("host_id", &self.host_id).finish_non_exhaustive()
    }
}

impl PostgresCluster {
    /// Joins the cluster of `factory`'s database as its host (creating the shared tables).
    pub async fn open(factory: &PostgresFactory) -> Result<PostgresCluster> {
        let client = connect(&factory.config).await?;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext('kiln migrations'));
                 CREATE SCHEMA IF NOT EXISTS kiln_cluster;
                 CREATE TABLE IF NOT EXISTS {LEASES} (
                     deployment text PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL,
                     expires_at timestamptz NOT NULL);
                 CREATE TABLE IF NOT EXISTS kiln_cluster.hosts (
                     id text PRIMARY KEY, url text NOT NULL, seen_at timestamptz NOT NULL);
                 CREATE TABLE IF NOT EXISTS kiln_cluster.records (key text PRIMARY KEY, value bytea NOT NULL);
                 COMMIT;"
            ))
            .await
            .map_err(storage)?;
        Ok(PostgresCluster {
            pool: factory.pool.clone(),
            host_id: factory.options.host_id.clone(),
            ttl: factory.options.lease_ttl,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| storage(format!("cannot reach the database: {e}")))
    }
}

#[async_trait]
impl Cluster for PostgresCluster {
    fn host_id(&self) -> &str {
        &self.host_id
    }

    async fn heartbeat(&self, url: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO kiln_cluster.hosts (id, url, seen_at) VALUES ($1, $2, now())
                 ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, seen_at = EXCLUDED.seen_at",
                &[&self.host_id, &url],
            )
            .await
            .map_err(storage)?;
        client
            .execute(
                "DELETE FROM kiln_cluster.hosts WHERE seen_at < now() - make_interval(secs => $1)",
                &[&(self.ttl.as_secs_f64() * FORGET_AFTER_LEASES)],
            )
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn leave(&self) -> Result<()> {
        let client = self.client().await?;
        client.execute("DELETE FROM kiln_cluster.hosts WHERE id = $1", &[&self.host_id]).await.map_err(storage)?;
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, url, seen_at > now() - make_interval(secs => $1),
                        (extract(epoch FROM now() - seen_at) * 1000)::bigint
                 FROM kiln_cluster.hosts ORDER BY id",
                &[&self.ttl.as_secs_f64()],
            )
            .await
            .map_err(storage)?;
        Ok(rows
            .iter()
            .map(|r| HostEntry {
                id: r.get(0),
                url: r.get(1),
                alive: r.get(2),
                seen_ms_ago: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            })
            .collect())
    }

    async fn leases(&self, names: &[String]) -> Result<Vec<LeaseEntry>> {
        let mut by_schema = std::collections::HashMap::new();
        for name in names {
            by_schema.insert(schema_of(name)?, name.clone());
        }
        let schemas: Vec<&String> = by_schema.keys().collect();
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT deployment, owner, epoch, (extract(epoch FROM expires_at - now()) * 1000)::bigint
                  FROM {LEASES} WHERE deployment = ANY($1)"
                ),
                &[&schemas],
            )
            .await
            .map_err(storage)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let name = by_schema.get(&r.get::<_, String>(0))?;
                Some(LeaseEntry { deployment: name.clone(), owner: r.get(1), epoch: r.get(2), expires_in_ms: r.get(3) })
            })
            .collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT value FROM kiln_cluster.records WHERE key = $1", &[&key])
            .await
            .map_err(storage)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT key, value FROM kiln_cluster.records WHERE starts_with(key, $1) ORDER BY key", &[&prefix])
            .await
            .map_err(storage)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO kiln_cluster.records (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn put_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO kiln_cluster.records (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .await
            .map_err(storage)?;
        Ok(n == 1)
    }
}
