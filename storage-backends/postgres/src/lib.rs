//! PostgreSQL persistence: one schema per deployment, group commit, pooled reads.
//!
//! Each deployment's data lives in its own schema (`kiln_<name>`): `documents(table_id, id,
//! ts, value)` and `index_entries(index_id, key, ts, doc_table, doc_id)`, both keyed by
//! (key…, ts) as in the SQLite backend, so a snapshot read keeps, per key, the newest revision
//! at or before the read timestamp (`DISTINCT ON`); `meta` holds the newest timestamp, the
//! catalog, pruning progress and the schema's format version; `blobs` and `blob_chunks` hold its
//! files ([`blobs`]). A schema per deployment (rather
//! than a deployment column) keeps every key and plan as small as one deployment's, lets an
//! operator dump, restore or drop one deployment with Postgres's own tools, and makes a
//! deployment's tables the unit a lock names.
//!
//! A deployment is open on one host at a time: opening takes its lease (a row of
//! `kiln_cluster.leases`: owner, fencing epoch, expiry), renewed while it is open and released
//! when it closes; another host takes it once it has expired, raising the epoch. Every commit
//! reads the lease row (`FOR SHARE`, so a takeover waits for commits in flight) and is refused
//! when the epoch moved: a host that lost its lease (paused, cut off) cannot commit. All
//! commits go through one writer task on a dedicated connection; it drains every commit
//! waiting into one transaction (arrays unnested into one `INSERT` per table), so concurrent
//! commits share one durable Postgres commit. Reads take a connection from a pool shared by
//! the factory's deployments.

pub mod blobs;
pub mod cluster;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use kiln_persistence::{
    CommitRecord, DocumentRevision, IndexId, KeyRange, Order, Persistence, PersistenceError, RecoveredState, Result,
    ScanHit, StepResult, Timestamp,
};
use kiln_value::{DocumentId, InternalId, TableNumber};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

/// Tunables of the PostgreSQL backend.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Read connections the pool keeps (shared by every deployment of the factory).
    pub pool_size: usize,
    /// Most commits written in one Postgres transaction.
    pub max_batch: usize,
    /// How long connecting (or waiting for a pooled connection) may take before a call
    /// fails with a clear error.
    pub connect_timeout: Duration,
    /// How long opening a deployment waits for another host's lease to be released or to
    /// expire before it fails with `StorageLocked`.
    pub lock_wait: Duration,
    /// This host's name in the leases it holds (each factory has its own by default).
    pub host_id: String,
    /// How long a lease lasts without renewal: how long a deployment whose host died stays
    /// unserved.
    pub lease_ttl: Duration,
    /// How often the lease is renewed (`None`: every third of `lease_ttl`).
    pub renew_every: Option<Duration>,
}

impl PostgresOptions {
    /// Defaults for `url`.
    pub fn new(url: &str) -> PostgresOptions {
        PostgresOptions {
            url: url.to_owned(),
            pool_size: 8,
            max_batch: 512,
            connect_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(12),
            host_id: fresh_host_id(),
            lease_ttl: Duration::from_secs(10),
            renew_every: None,
        }
    }
}

/// A host id no other factory has: this process, the time, and a counter.
fn fresh_host_id() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n}", std::process::id())
}

fn storage(e: impl std::fmt::Display) -> PersistenceError {
    PersistenceError::Storage(format!("PostgreSQL: {e}"))
}

fn corrupt(what: &str) -> PersistenceError {
    PersistenceError::Corrupt(format!("PostgreSQL: {what}"))
}

/// Opens deployments' persistence on one PostgreSQL database.
#[derive(Clone)]
pub struct PostgresFactory {
    options: PostgresOptions,
    config: tokio_postgres::Config,
    pool: Pool,
}

impl std::fmt::Debug for PostgresFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresFactory").field("pool_size", &self.options.pool_size).finish_non_exhaustive()
    }
}

impl PostgresFactory {
    /// A factory for the database `options.url` names (nothing is connected yet).
    pub fn new(options: PostgresOptions) -> Result<PostgresFactory> {
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|e| storage(format!("invalid database URL: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("kiln");
        }
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(storage)?;
        Ok(PostgresFactory { options, config, pool })
    }

    /// Opens deployment `name`'s persistence (creating or upgrading its schema).
    pub async fn open_deployment(&self, name: &str) -> Result<PostgresPersistence> {
        PostgresPersistence::open(self, name).await
    }
}

#[async_trait]
impl kiln_persistence::PersistenceFactory for PostgresFactory {
    async fn open(&self, name: &str) -> Result<Arc<dyn Persistence>> {
        Ok(Arc::new(self.open_deployment(name).await?))
    }
}

/// The schema of deployment `name` (`[A-Za-z0-9_-]`, 1-64), quoted. Postgres truncates
/// identifiers past 63 bytes, so long names keep a prefix and a hash of the whole.
fn schema_of(name: &str) -> Result<String> {
    let valid =
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(storage(format!("invalid deployment name {name:?}")));
    }
    let plain = format!("kiln_{name}");
    if plain.len() <= 63 {
        return Ok(format!("\"{plain}\""));
    }
    // FNV-1a: stable across versions and platforms, which std's hasher does not promise.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    Ok(format!("\"kiln_{}_{hash:016x}\"", &name[..40]))
}

/// The schema's migrations, in order; `{s}` is the quoted schema. `meta.format_version`
/// records how many were applied. The third serves ascending snapshot scans (`DISTINCT ON`
/// keeps each key's first row in `key, ts DESC` order; the primary keys' `key, ts` order
/// serves only descending ones, read backwards): without it an ascending scan sorts every
/// revision in its range before its `LIMIT` applies. The fourth finds what pruning must look
/// at (revisions written since the last pruning) without reading the tables: timestamps grow
/// with insertion, so block ranges (BRIN) index them at almost no cost.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE {s}.documents (
    table_id bigint NOT NULL,
    id bytea NOT NULL,
    ts bigint NOT NULL,
    value bytea,
    PRIMARY KEY (table_id, id, ts)
);
CREATE INDEX documents_by_table_ts ON {s}.documents (table_id, ts, id);
CREATE TABLE {s}.index_entries (
    index_id bigint NOT NULL,
    key bytea NOT NULL,
    ts bigint NOT NULL,
    doc_table bigint,
    doc_id bytea,
    PRIMARY KEY (index_id, key, ts)
);
",
    "
CREATE TABLE {s}.blobs (sha256 bytea PRIMARY KEY, upload bigint NOT NULL, size bigint NOT NULL);
CREATE TABLE {s}.blob_chunks (
    upload bigint NOT NULL,
    n integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (upload, n)
);
CREATE SEQUENCE {s}.blob_uploads;
",
    "
CREATE INDEX documents_latest ON {s}.documents (table_id, id, ts DESC);
CREATE INDEX index_entries_latest ON {s}.index_entries (index_id, key, ts DESC);
",
    "
CREATE INDEX documents_by_ts ON {s}.documents USING brin (ts);
CREATE INDEX index_entries_by_ts ON {s}.index_entries USING brin (ts);
",
];

/// The statements of one deployment, with its schema filled in.
struct Sql {
    schema: String,
}

impl Sql {
    fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.schema)
    }

    /// Raises the number `meta.<name>` to `$1` (never lowers it).
    fn raise_meta(&self, name: &str) -> String {
        let meta = self.t("meta");
        format!(
            "INSERT INTO {meta} (name, int_value) VALUES ('{name}', $1)
             ON CONFLICT (name) DO UPDATE SET int_value = GREATEST({meta}.int_value, EXCLUDED.int_value)"
        )
    }

    fn scan_table(&self, order: Order, bounded: bool) -> String {
        let dir = if order == Order::Asc { "ASC" } else { "DESC" };
        let end = if bounded { "AND id < $3" } else { "AND $3::bytea IS NULL" };
        format!(
            "SELECT id, ts, value FROM (
                SELECT DISTINCT ON (id) id, ts, value FROM {docs}
                WHERE table_id = $1 AND id >= $2 {end} AND ts <= $4
                ORDER BY id {dir}, ts DESC
            ) latest WHERE value IS NOT NULL ORDER BY id {dir} LIMIT $5",
            docs = self.t("documents")
        )
    }

    fn scan_index(&self, order: Order, bounded: bool) -> String {
        let dir = if order == Order::Asc { "ASC" } else { "DESC" };
        let end = if bounded { "AND key < $3" } else { "AND $3::bytea IS NULL" };
        format!(
            "SELECT e.key, e.doc_table, e.doc_id, d.ts, d.value FROM (
                SELECT key, doc_table, doc_id FROM (
                    SELECT DISTINCT ON (key) key, doc_table, doc_id FROM {entries}
                    WHERE index_id = $1 AND key >= $2 {end} AND ts <= $4
                    ORDER BY key {dir}, ts DESC
                ) latest WHERE doc_id IS NOT NULL ORDER BY key {dir} LIMIT $5
            ) e CROSS JOIN LATERAL (
                SELECT ts, value FROM {docs} WHERE table_id = e.doc_table AND id = e.doc_id AND ts <= $4
                ORDER BY ts DESC LIMIT 1
            ) d ORDER BY e.key {dir}",
            entries = self.t("index_entries"),
            docs = self.t("documents")
        )
    }
}

fn ts_sql(ts: Timestamp) -> i64 {
    i64::try_from(ts.0).unwrap_or(i64::MAX)
}

fn ts_from_sql(ts: i64) -> Result<Timestamp> {
    u64::try_from(ts).map(Timestamp).map_err(|_| corrupt("a negative timestamp"))
}

fn internal_id(bytes: &[u8]) -> Result<InternalId> {
    <[u8; 16]>::try_from(bytes).map(InternalId).map_err(|_| corrupt("a document id that is not 16 bytes"))
}

fn table_number(n: i64) -> Result<TableNumber> {
    u32::try_from(n).map(TableNumber).map_err(|_| corrupt("a table number out of range"))
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A commit waiting for the writer.
struct Pending {
    record: CommitRecord,
    done: oneshot::Sender<Result<()>>,
}

/// One deployment's persistence on PostgreSQL.
pub struct PostgresPersistence {
    pool: Pool,
    sql: Arc<Sql>,
    writer: mpsc::UnboundedSender<Pending>,
    /// Dropped with the persistence: the lease's renewals stop.
    _open: Arc<()>,
}

/// The lease table every deployment's host takes a row of.
const LEASES: &str = "kiln_cluster.leases";

/// Takes the lease of `sql`'s deployment for `host` if it is free, expired or already this
/// host's; returns the new fencing epoch, or `None` while another host holds it.
async fn acquire(client: &Client, sql: &Sql, host: &str, ttl: Duration) -> Result<Option<i64>> {
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO {LEASES} AS l (deployment, owner, epoch, expires_at)
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3))
                 ON CONFLICT (deployment) DO UPDATE
                 SET owner = EXCLUDED.owner, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at
                 WHERE l.expires_at < now() OR l.owner = EXCLUDED.owner
                 RETURNING epoch"
            ),
            &[&sql.schema, &host, &ttl.as_secs_f64()],
        )
        .await
        .map_err(storage)?;
    Ok(row.map(|r| r.get(0)))
}

/// Extends the lease while the persistence is open; stops when it is dropped or the lease
/// was taken (the writer then refuses commits: its epoch is gone). An expired lease nobody
/// took keeps its epoch and is extended again: no other host committed meanwhile. Renewals
/// use a connection of their own: busy reads holding every pooled one must not let the lease
/// lapse.
async fn renew(
    config: tokio_postgres::Config,
    sql: Arc<Sql>,
    epoch: i64,
    ttl: Duration,
    every: Duration,
    open: std::sync::Weak<()>,
) {
    let query = format!(
        "UPDATE {LEASES} SET expires_at = now() + make_interval(secs => $3)
         WHERE deployment = $1 AND epoch = $2"
    );
    let mut client: Option<Client> = None;
    loop {
        tokio::time::sleep(every).await;
        if open.strong_count() == 0 {
            return;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(&config).await.ok();
        }
        let renewed = match &client {
            Some(c) => c.execute(&query, &[&sql.schema, &epoch, &ttl.as_secs_f64()]).await.map_err(storage),
            None => Err(storage("cannot connect to the database")),
        };
        match renewed {
            Ok(0) => {
                tracing::warn!(schema = %sql.schema, epoch, "the deployment's lease expired or moved to another host");
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(schema = %sql.schema, error = %e, "renewing the deployment's lease failed"),
        }
    }
}

impl std::fmt::Debug for PostgresPersistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPersistence").field("schema", &self.sql.schema).finish_non_exhaustive()
    }
}

impl PostgresPersistence {
    async fn open(factory: &PostgresFactory, name: &str) -> Result<PostgresPersistence> {
        let sql = Arc::new(Sql { schema: schema_of(name)? });
        let options = &factory.options;
        let client = connect(&factory.config).await?;
        migrate(&client, &sql).await?;
        let started = std::time::Instant::now();
        let epoch = loop {
            if let Some(epoch) = acquire(&client, &sql, &options.host_id, options.lease_ttl).await? {
                break epoch;
            }
            if started.elapsed() >= options.lock_wait {
                return Err(PersistenceError::Locked(format!(
                    "deployment {name:?} is open on another host (its lease has not expired)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let (send, receive) = mpsc::unbounded_channel();
        let open = Arc::new(());
        let writer = Writer { client, epoch, fenced: None };
        tokio::spawn(writer.run(factory.config.clone(), sql.clone(), receive, options.max_batch.max(1)));
        let (ttl, every) = (options.lease_ttl, options.renew_every.unwrap_or(options.lease_ttl / 3));
        let renewals = renew(factory.config.clone(), sql.clone(), epoch, ttl, every, Arc::downgrade(&open));
        tokio::spawn(renewals);
        Ok(PostgresPersistence { pool: factory.pool.clone(), sql, writer: send, _open: open })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| storage(format!("cannot reach the database: {e}")))
    }

    /// Runs a scan (`Sql::scan_table`, `Sql::scan_index`) of the table or index numbered
    /// `number` over `range`.
    async fn scan(
        &self,
        query: &str,
        number: i64,
        range: &KeyRange,
        ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<tokio_postgres::Row>> {
        if range.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(query).await.map_err(storage)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&number, &range.start, &range.end, &ts_sql(ts), &limit_sql(limit)];
        client.query(&statement, &params).await.map_err(storage)
    }
}

/// Creates the schema and applies the migrations it lacks, under a transaction-scoped lock so
/// that hosts opening deployments at once do not race.
async fn migrate(client: &Client, sql: &Sql) -> Result<()> {
    client.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('kiln migrations'));").await.map_err(storage)?;
    let result = async {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS kiln_cluster;
                 CREATE TABLE IF NOT EXISTS {LEASES} (
                     deployment text PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL,
                     expires_at timestamptz NOT NULL);
                 CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.meta (name text PRIMARY KEY, int_value bigint, blob_value bytea);",
                s = sql.schema
            ))
            .await
            .map_err(storage)?;
        let row = client
            .query_opt(&format!("SELECT int_value FROM {} WHERE name = 'format_version'", sql.t("meta")), &[])
            .await
            .map_err(storage)?;
        let applied = row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0);
        let applied = usize::try_from(applied).map_err(|_| corrupt("a negative format version"))?;
        if applied > MIGRATIONS.len() {
            return Err(corrupt(&format!(
                "schema {} has format version {applied}, newer than this Kiln knows ({})",
                sql.schema,
                MIGRATIONS.len()
            )));
        }
        for migration in &MIGRATIONS[applied..] {
            client.batch_execute(&migration.replace("{s}", &sql.schema)).await.map_err(storage)?;
        }
        let version = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        client
            .execute(
                &format!(
                    "INSERT INTO {} (name, int_value) VALUES ('format_version', $1)
                     ON CONFLICT (name) DO UPDATE SET int_value = EXCLUDED.int_value",
                    sql.t("meta")
                ),
                &[&version],
            )
            .await
            .map_err(storage)?;
        Ok(())
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await.map_err(storage)?;
    result
}

/// A new connection (its driver runs on its own task).
async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let (client, connection) =
        config.connect(NoTls).await.map_err(|e| storage(format!("cannot connect to the database: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The writer: its connection, the lease epoch it commits under, and why it may no longer
/// commit (its lease moved).
struct Writer {
    client: Client,
    epoch: i64,
    fenced: Option<PersistenceError>,
}

impl Writer {
    /// Writes batches of commits until every sender is gone, then releases the lease. After a
    /// failure the connection is opened again for the next batch.
    async fn run(
        mut self,
        config: tokio_postgres::Config,
        sql: Arc<Sql>,
        mut receive: mpsc::UnboundedReceiver<Pending>,
        max_batch: usize,
    ) {
        let mut alive = true;
        while let Some(first) = receive.recv().await {
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match receive.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let result = self.batch(&config, &sql, &mut alive, &batch).await;
            for p in batch {
                let _ = p.done.send(result.clone());
            }
        }
        if alive && self.fenced.is_none() {
            let release = format!(
                "UPDATE {LEASES} SET expires_at = now() - interval '1 second' WHERE deployment = $1 AND epoch = $2"
            );
            if let Err(e) = self.client.execute(&release, &[&sql.schema, &self.epoch]).await {
                tracing::warn!(schema = %sql.schema, error = %e, "releasing the deployment's lease failed");
            }
        }
    }

    /// Writes one batch; `alive` tracks whether the connection is usable.
    async fn batch(
        &mut self,
        config: &tokio_postgres::Config,
        sql: &Sql,
        alive: &mut bool,
        batch: &[Pending],
    ) -> Result<()> {
        if let Some(fenced) = &self.fenced {
            return Err(fenced.clone());
        }
        if !*alive || self.client.is_closed() {
            self.client = connect(config).await?;
            *alive = true;
        }
        let records: Vec<&CommitRecord> = batch.iter().map(|p| &p.record).collect();
        match self.write(sql, &records).await {
            Ok(()) => Ok(()),
            Err(Written::Before(e)) => Err(e),
            Err(Written::Fenced(e)) => {
                self.fenced = Some(e.clone());
                Err(e)
            }
            // The connection failed while Postgres committed, or not: a new connection reads
            // which.
            Err(Written::Unknown(e)) => {
                *alive = false;
                let last = records.last().map_or(Timestamp::ZERO, |r| r.ts);
                let probe = records.iter().rev().find_map(|r| {
                    r.documents.first().map(|(id, _)| (i64::from(id.table.0), id.internal.0.to_vec(), r.ts))
                });
                resolve(config, sql, self.epoch, probe, last, e).await
            }
        }
    }

    async fn write(&mut self, sql: &Sql, records: &[&CommitRecord]) -> std::result::Result<(), Written> {
        let before = |e: tokio_postgres::Error| Written::Before(storage(e));
        let epoch = self.epoch;
        let txn = self.client.transaction().await.map_err(before)?;
        // The fence: a host that took the lease raised the epoch (and waited for this read's
        // share lock to go, so no commit of the old epoch lands after its takeover).
        let lease = format!("SELECT epoch FROM {LEASES} WHERE deployment = $1 FOR SHARE");
        let current: Option<i64> = txn.query_opt(&lease, &[&sql.schema]).await.map_err(before)?.map(|r| r.get(0));
        if current != Some(epoch) {
            return Err(Written::Fenced(PersistenceError::Locked(format!(
                "the lease of deployment schema {} moved to another host (epoch {epoch} is now {})",
                sql.schema,
                current.map_or("gone".to_owned(), |c| c.to_string())
            ))));
        }
        let (mut tables, mut ids, mut tss, mut values) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut indexes, mut keys, mut its, mut doc_tables, mut doc_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut catalog = None;
        let mut max_ts = 0i64;
        for record in records {
            let ts = ts_sql(record.ts);
            max_ts = max_ts.max(ts);
            // A key written twice in one commit keeps its last write.
            let mut seen = std::collections::HashSet::new();
            for (id, value) in record.documents.iter().rev() {
                if seen.insert(*id) {
                    tables.push(i64::from(id.table.0));
                    ids.push(id.internal.0.to_vec());
                    tss.push(ts);
                    values.push(value.clone());
                }
            }
            let mut seen = std::collections::HashSet::new();
            for w in record.indexes.iter().rev() {
                if seen.insert((w.index, w.key.clone())) {
                    indexes.push(i64::from(w.index.0));
                    keys.push(w.key.clone());
                    its.push(ts);
                    doc_tables.push(w.doc.map(|d| i64::from(d.table.0)));
                    doc_ids.push(w.doc.map(|d| d.internal.0.to_vec()));
                }
            }
            if record.catalog.is_some() {
                catalog = record.catalog.clone();
            }
        }
        if !tables.is_empty() {
            let insert = format!(
                "INSERT INTO {} (table_id, id, ts, value)
                 SELECT * FROM UNNEST($1::bigint[], $2::bytea[], $3::bigint[], $4::bytea[])",
                sql.t("documents")
            );
            txn.execute(&insert, &[&tables, &ids, &tss, &values]).await.map_err(before)?;
        }
        if !indexes.is_empty() {
            let insert = format!(
                "INSERT INTO {} (index_id, key, ts, doc_table, doc_id)
                 SELECT * FROM UNNEST($1::bigint[], $2::bytea[], $3::bigint[], $4::bigint[], $5::bytea[])",
                sql.t("index_entries")
            );
            txn.execute(&insert, &[&indexes, &keys, &its, &doc_tables, &doc_ids]).await.map_err(before)?;
        }
        let meta = sql.t("meta");
        txn.execute(&sql.raise_meta("max_ts"), &[&max_ts]).await.map_err(before)?;
        if let Some(catalog) = catalog {
            txn.execute(
                &format!(
                    "INSERT INTO {meta} (name, blob_value) VALUES ('catalog', $1)
                     ON CONFLICT (name) DO UPDATE SET blob_value = EXCLUDED.blob_value"
                ),
                &[&catalog],
            )
            .await
            .map_err(before)?;
        }
        txn.commit().await.map_err(|e| Written::Unknown(storage(e)))
    }
}

/// How a batch's write failed.
enum Written {
    /// Before the commit was sent: nothing was written.
    Before(PersistenceError),
    /// The lease moved to another host: nothing was written, and nothing more will be.
    Fenced(PersistenceError),
    /// While committing: Postgres may or may not have committed.
    Unknown(PersistenceError),
}

/// Whether the batch ending at `ts` committed, read on a new connection: a document revision
/// it wrote (`probe`: table, id, timestamp), which no other commit has, is there; without
/// one, `max_ts` (written in the same transaction) reached `ts` while the lease is still at
/// `epoch` (another host's commits raise `max_ts` too). `Err(failed)` if it did not, or
/// cannot be known now (then the commit is reported failed although it may have happened, as
/// any database client would after losing its connection during COMMIT).
async fn resolve(
    config: &tokio_postgres::Config,
    sql: &Sql,
    epoch: i64,
    probe: Option<(i64, Vec<u8>, Timestamp)>,
    ts: Timestamp,
    failed: PersistenceError,
) -> Result<()> {
    let Ok((client, connection)) = config.connect(NoTls).await else { return Err(failed) };
    let task = tokio::spawn(connection);
    let committed = match probe {
        Some((table, id, at)) => {
            let query = format!("SELECT 1 FROM {} WHERE table_id = $1 AND id = $2 AND ts = $3", sql.t("documents"));
            matches!(client.query_opt(&query, &[&table, &id, &ts_sql(at)]).await, Ok(Some(_)))
        }
        None => {
            let query = format!(
                "SELECT m.int_value, l.epoch FROM {} m, {LEASES} l WHERE m.name = 'max_ts' AND l.deployment = $1",
                sql.t("meta")
            );
            match client.query_opt(&query, &[&sql.schema]).await {
                Ok(Some(row)) => {
                    row.get::<_, Option<i64>>(0).is_some_and(|max| max >= ts_sql(ts)) && row.get::<_, i64>(1) == epoch
                }
                _ => false,
            }
        }
    };
    drop(client);
    task.abort();
    if committed { Ok(()) } else { Err(failed) }
}

/// One pruning step of `table` (keyed by `k1, k2, ts`; `live` is NULL in tombstones): at most
/// `$2` revisions that one written after the previous completed pruning (`$3`) and at or
/// before the cutoff (`$1`) supersedes, and such tombstones with nothing older left under them
/// (a tombstone whose older revisions go in this step goes in the next). The `ts` range is
/// found through the BRIN index of migration 4, so a step reads what was written since the
/// last pruning, not the table.
fn prune_sql(table: &str, k1: &str, k2: &str, live: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE ctid IN (
            SELECT old.ctid FROM {table} n JOIN {table} old
                ON old.{k1} = n.{k1} AND old.{k2} = n.{k2} AND old.ts < n.ts
            WHERE n.ts > $3 AND n.ts <= $1
            UNION ALL
            SELECT t.ctid FROM {table} t WHERE t.ts > $3 AND t.ts <= $1 AND t.{live} IS NULL
                AND NOT EXISTS (SELECT 1 FROM {table} o WHERE o.{k1} = t.{k1} AND o.{k2} = t.{k2} AND o.ts < t.ts)
            LIMIT $2)"
    )
}

#[async_trait]
impl Persistence for PostgresPersistence {
    async fn recover(&self) -> Result<RecoveredState> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT name, int_value, blob_value FROM {}", self.sql.t("meta")), &[])
            .await
            .map_err(storage)?;
        let mut state = RecoveredState::default();
        for row in rows {
            let name: String = row.get(0);
            let int: Option<i64> = row.get(1);
            match name.as_str() {
                "max_ts" => state.max_ts = ts_from_sql(int.unwrap_or(0))?,
                "pruned_up_to" => state.pruned_up_to = ts_from_sql(int.unwrap_or(0))?,
                "catalog" => state.catalog = row.get(2),
                _ => {}
            }
        }
        Ok(state)
    }

    async fn commit(&self, record: CommitRecord) -> Result<()> {
        let (done, result) = oneshot::channel();
        self.writer.send(Pending { record, done }).map_err(|_| PersistenceError::Closed)?;
        result.await.map_err(|_| PersistenceError::Closed)?
    }

    async fn get_document(&self, id: DocumentId, ts: Timestamp) -> Result<Option<DocumentRevision>> {
        let client = self.client().await?;
        let query = format!(
            "SELECT ts, value FROM {} WHERE table_id = $1 AND id = $2 AND ts <= $3 ORDER BY ts DESC LIMIT 1",
            self.sql.t("documents")
        );
        let statement = client.prepare_cached(&query).await.map_err(storage)?;
        let row = client
            .query_opt(&statement, &[&i64::from(id.table.0), &&id.internal.0[..], &ts_sql(ts)])
            .await
            .map_err(storage)?;
        row.map(|r| Ok(DocumentRevision { id, ts: ts_from_sql(r.get(0))?, value: r.get(1) })).transpose()
    }

    async fn scan_table(
        &self,
        table: TableNumber,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>> {
        let query = self.sql.scan_table(order, range.end.is_some());
        let rows = self.scan(&query, i64::from(table.0), range, ts, limit).await?;
        rows.into_iter()
            .map(|r| {
                let key: Vec<u8> = r.get(0);
                let id = DocumentId::new(table, internal_id(&key)?);
                Ok(ScanHit { key, revision: DocumentRevision { id, ts: ts_from_sql(r.get(1))?, value: r.get(2) } })
            })
            .collect()
    }

    async fn scan_index(
        &self,
        index: IndexId,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>> {
        let query = self.sql.scan_index(order, range.end.is_some());
        let rows = self.scan(&query, i64::from(index.0), range, ts, limit).await?;
        let mut hits = Vec::with_capacity(rows.len());
        for r in rows {
            let value: Option<Vec<u8>> = r.get(4);
            // An entry whose document is deleted at the scan's timestamp is not a hit.
            if value.is_none() {
                continue;
            }
            let doc_id: Vec<u8> = r.get(2);
            let id = DocumentId::new(table_number(r.get(1))?, internal_id(&doc_id)?);
            hits.push(ScanHit { key: r.get(0), revision: DocumentRevision { id, ts: ts_from_sql(r.get(3))?, value } });
        }
        Ok(hits)
    }

    async fn scan_revisions(
        &self,
        table: TableNumber,
        since: Timestamp,
        until: Timestamp,
        after: Option<(Timestamp, InternalId)>,
        limit: usize,
    ) -> Result<Vec<DocumentRevision>> {
        let client = self.client().await?;
        let query = format!(
            "SELECT ts, id, value FROM {} WHERE table_id = $1 AND ts > $2 AND ts <= $3 AND (ts, id) > ($4, $5)
             ORDER BY ts, id LIMIT $6",
            self.sql.t("documents")
        );
        let statement = client.prepare_cached(&query).await.map_err(storage)?;
        let (after_ts, after_id) = match after {
            Some((ts, id)) => (ts_sql(ts), id.0.to_vec()),
            None => (ts_sql(since), Vec::new()),
        };
        let rows = client
            .query(
                &statement,
                &[&i64::from(table.0), &ts_sql(since), &ts_sql(until), &after_ts, &after_id, &limit_sql(limit)],
            )
            .await
            .map_err(storage)?;
        rows.into_iter()
            .map(|r| {
                let id: Vec<u8> = r.get(1);
                Ok(DocumentRevision {
                    id: DocumentId::new(table, internal_id(&id)?),
                    ts: ts_from_sql(r.get(0))?,
                    value: r.get(2),
                })
            })
            .collect()
    }

    async fn write_index_entries(
        &self,
        index: IndexId,
        ts: Timestamp,
        entries: Vec<(Vec<u8>, DocumentId)>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let (mut keys, mut tables, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        for (key, doc) in entries {
            keys.push(key);
            tables.push(i64::from(doc.table.0));
            ids.push(doc.internal.0.to_vec());
        }
        let query = format!(
            "INSERT INTO {} (index_id, key, ts, doc_table, doc_id)
             SELECT $1::bigint, k, $2::bigint, t, i FROM UNNEST($3::bytea[], $4::bigint[], $5::bytea[]) AS u(k, t, i)
             ON CONFLICT (index_id, key, ts) DO NOTHING",
            self.sql.t("index_entries")
        );
        client.execute(&query, &[&i64::from(index.0), &ts_sql(ts), &keys, &tables, &ids]).await.map_err(storage)?;
        Ok(())
    }

    async fn delete_index_entries(&self, index: IndexId, max_rows: usize) -> Result<StepResult> {
        let client = self.client().await?;
        let entries = self.sql.t("index_entries");
        let query =
            format!("DELETE FROM {entries} WHERE ctid IN (SELECT ctid FROM {entries} WHERE index_id = $1 LIMIT $2)");
        let deleted = client.execute(&query, &[&i64::from(index.0), &limit_sql(max_rows)]).await.map_err(storage)?;
        Ok(StepResult { rows_deleted: deleted, done: deleted < max_rows as u64 })
    }

    async fn prune(&self, cutoff: Timestamp, max_rows: usize) -> Result<StepResult> {
        let client = self.client().await?;
        // What the last completed pruning covered is gone already: only revisions written
        // after it can supersede anything left (or be bare tombstones).
        let previous = format!("SELECT int_value FROM {} WHERE name = 'pruned_up_to'", self.sql.t("meta"));
        let previous: i64 =
            client.query_opt(&previous, &[]).await.map_err(storage)?.and_then(|r| r.get(0)).unwrap_or(0);
        let cutoff_sql = ts_sql(cutoff);
        let mut deleted = 0;
        for (table, k1, k2, live) in
            [("documents", "table_id", "id", "value"), ("index_entries", "index_id", "key", "doc_id")]
        {
            let left = (max_rows as u64).saturating_sub(deleted);
            if left == 0 {
                break;
            }
            let budget = i64::try_from(left).unwrap_or(i64::MAX);
            let step = prune_sql(&self.sql.t(table), k1, k2, live);
            deleted += client.execute(&step, &[&cutoff_sql, &budget, &previous]).await.map_err(storage)?;
        }
        let done = deleted == 0;
        if done {
            client.execute(&self.sql.raise_meta("pruned_up_to"), &[&cutoff_sql]).await.map_err(storage)?;
        }
        Ok(StepResult { rows_deleted: deleted, done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_quoted_and_fit_postgres_identifiers() {
        assert_eq!(schema_of("shop-1").ok().as_deref(), Some("\"kiln_shop-1\""));
        let long = "a".repeat(64);
        let schema = schema_of(&long).unwrap_or_default();
        assert!(schema.len() - 2 <= 63, "{schema}");
        assert_ne!(schema, schema_of(&format!("{}b", "a".repeat(63))).unwrap_or_default());
        for bad in ["", "a\"b", "a b", &"x".repeat(65)] {
            assert!(schema_of(bad).is_err(), "{bad:?}");
        }
    }
}
