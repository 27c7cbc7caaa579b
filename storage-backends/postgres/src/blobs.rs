//! Files (`ctx.storage`) in the deployment's schema, so that they move with the deployment
//! between hosts: `blob_chunks(upload, n, data)` holds each upload's bytes in 1 MiB rows
//! written as they arrive; `blobs(sha256, upload, size)` names the finished ones. A blob
//! exists once its `blobs` row commits (after all its chunks), so a crash leaves only chunks no
//! row names, which opening the store deletes.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_blobs::{BlobError, BlobRef, BlobStore, BlobStoreFactory, OpenBlob};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::{PostgresFactory, Sql, migrate, schema_of};

/// Bytes per chunk row.
const CHUNK: usize = 1 << 20;

fn db(e: impl std::fmt::Display) -> BlobError {
    BlobError::Database(format!("PostgreSQL: {e}"))
}

/// One deployment's blobs on PostgreSQL.
pub struct PostgresBlobs {
    pool: deadpool_postgres::Pool,
    sql: Arc<Sql>,
}

impl std::fmt::Debug for PostgresBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBlobs").field("schema", &self.sql.schema).finish_non_exhaustive()
    }
}

#[async_trait]
impl BlobStoreFactory for PostgresFactory {
    async fn open_blobs(&self, name: &str) -> kiln_blobs::Result<Arc<dyn BlobStore>> {
        Ok(Arc::new(PostgresBlobs::open(self, name).await?))
    }
}

impl PostgresBlobs {
    /// Opens deployment `name`'s blobs (creating its schema if new), deleting what unfinished
    /// uploads left.
    pub async fn open(factory: &PostgresFactory, name: &str) -> kiln_blobs::Result<PostgresBlobs> {
        let sql = Arc::new(Sql { schema: schema_of(name).map_err(db)? });
        let client = factory.pool.get().await.map_err(db)?;
        migrate(&client, &sql).await.map_err(db)?;
        let sweep = format!(
            "DELETE FROM {chunks} c WHERE NOT EXISTS (SELECT 1 FROM {blobs} b WHERE b.upload = c.upload)",
            chunks = sql.t("blob_chunks"),
            blobs = sql.t("blobs")
        );
        client.execute(&sweep, &[]).await.map_err(db)?;
        Ok(PostgresBlobs { pool: factory.pool.clone(), sql })
    }

    async fn client(&self) -> kiln_blobs::Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(db)
    }

    /// Writes `body` as chunks of a new upload; returns the upload and the blob it holds.
    async fn write_chunks(
        &self,
        client: &tokio_postgres::Client,
        upload: i64,
        body: &mut (dyn AsyncRead + Send + Unpin),
        max_bytes: u64,
    ) -> kiln_blobs::Result<BlobRef> {
        let insert = format!("INSERT INTO {} (upload, n, data) VALUES ($1, $2, $3)", self.sql.t("blob_chunks"));
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        for n in 0i32.. {
            // Fill a whole chunk (reads may return less).
            let mut filled = 0;
            while filled < CHUNK {
                let read = body.read(&mut buf[filled..]).await.map_err(BlobError::Body)?;
                if read == 0 {
                    break;
                }
                filled += read;
                if size + filled as u64 > max_bytes {
                    return Err(BlobError::TooLarge { max_bytes });
                }
            }
            if filled == 0 && n > 0 {
                break;
            }
            hasher.update(&buf[..filled]);
            size += filled as u64;
            client.execute(&insert, &[&upload, &n, &&buf[..filled]]).await.map_err(db)?;
            if filled < CHUNK {
                break;
            }
        }
        Ok(BlobRef { sha256: hasher.finalize().into(), size })
    }

    async fn delete_upload(&self, client: &tokio_postgres::Client, upload: i64) {
        let delete = format!("DELETE FROM {} WHERE upload = $1", self.sql.t("blob_chunks"));
        if let Err(e) = client.execute(&delete, &[&upload]).await {
            tracing::warn!(schema = %self.sql.schema, error = %e, "deleting an upload's chunks failed");
        }
    }
}

#[async_trait]
impl BlobStore for PostgresBlobs {
    async fn put(&self, body: &mut (dyn AsyncRead + Send + Unpin), max_bytes: u64) -> kiln_blobs::Result<BlobRef> {
        let client = self.client().await?;
        let next = format!("SELECT nextval('{}')", self.sql.t("blob_uploads"));
        let upload: i64 = client.query_one(&next, &[]).await.map_err(db)?.get(0);
        let blob = match self.write_chunks(&client, upload, body, max_bytes).await {
            Ok(blob) => blob,
            Err(e) => {
                // Nothing of a refused or failed upload stays.
                self.delete_upload(&client, upload).await;
                return Err(e);
            }
        };
        let name = format!(
            "INSERT INTO {} (sha256, upload, size) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
            self.sql.t("blobs")
        );
        let size = i64::try_from(blob.size).map_err(db)?;
        let named = client.execute(&name, &[&blob.sha256.as_slice(), &upload, &size]).await.map_err(db)?;
        if named == 0 {
            // The same bytes are stored already: keep the one copy.
            self.delete_upload(&client, upload).await;
        }
        Ok(blob)
    }

    async fn open(&self, sha256: &[u8; 32], range: Option<Range<u64>>) -> kiln_blobs::Result<Option<OpenBlob>> {
        let client = self.client().await?;
        let find = format!("SELECT upload, size FROM {} WHERE sha256 = $1", self.sql.t("blobs"));
        let Some(row) = client.query_opt(&find, &[&sha256.as_slice()]).await.map_err(db)? else { return Ok(None) };
        let (upload, size): (i64, i64) = (row.get(0), row.get(1));
        let size = u64::try_from(size).map_err(db)?;
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(BlobError::InvalidRange { start: range.start, end: range.end, size });
        }
        let len = range.end - range.start;
        // A task streams the chunks the range covers into a pipe the reader drains; a failure
        // ends the stream early (the reader then gets fewer than `len` bytes).
        let (mut writer, reader) = tokio::io::duplex(CHUNK);
        let query = format!("SELECT data FROM {} WHERE upload = $1 AND n = $2", self.sql.t("blob_chunks"));
        let schema = self.sql.schema.clone();
        tokio::spawn(async move {
            let chunk = CHUNK as u64;
            let mut at = range.start;
            while at < range.end {
                let n = i32::try_from(at / chunk).unwrap_or(i32::MAX);
                let data: Vec<u8> = match client.query_opt(&query, &[&upload, &n]).await {
                    Ok(Some(row)) => row.get(0),
                    Ok(None) => {
                        tracing::error!(%schema, upload, n, "a stored file lacks a chunk");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%schema, error = %e, "reading a stored file failed");
                        return;
                    }
                };
                let from = usize::try_from(at % chunk).unwrap_or(usize::MAX).min(data.len());
                let to =
                    usize::try_from((range.end - n as u64 * chunk).min(chunk)).unwrap_or(usize::MAX).min(data.len());
                if from >= to || writer.write_all(&data[from..to]).await.is_err() {
                    return;
                }
                at += (to - from) as u64;
            }
        });
        Ok(Some(OpenBlob { reader: Box::new(reader.take(len)), len, size }))
    }

    async fn contains(&self, sha256: &[u8; 32]) -> kiln_blobs::Result<bool> {
        let client = self.client().await?;
        let find = format!("SELECT 1 FROM {} WHERE sha256 = $1", self.sql.t("blobs"));
        Ok(client.query_opt(&find, &[&sha256.as_slice()]).await.map_err(db)?.is_some())
    }

    async fn delete(&self, sha256: &[u8; 32]) -> kiln_blobs::Result<bool> {
        let client = self.client().await?;
        let delete = format!("DELETE FROM {} WHERE sha256 = $1 RETURNING upload", self.sql.t("blobs"));
        let Some(row) = client.query_opt(&delete, &[&sha256.as_slice()]).await.map_err(db)? else { return Ok(false) };
        self.delete_upload(&client, row.get(0)).await;
        Ok(true)
    }

    async fn list(&self) -> kiln_blobs::Result<Vec<[u8; 32]>> {
        let client = self.client().await?;
        let all = format!("SELECT sha256 FROM {} ORDER BY sha256", self.sql.t("blobs"));
        let rows = client.query(&all, &[]).await.map_err(db)?;
        Ok(rows.iter().filter_map(|r| <[u8; 32]>::try_from(r.get::<_, &[u8]>(0)).ok()).collect())
    }
}
