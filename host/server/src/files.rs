//! File storage over HTTP: `POST /api/storage/upload?token=…` (the URLs
//! `ctx.storage.generateUploadUrl` makes) streams the body into a new file and answers
//! `{"storageId": …}`; `GET /api/storage/<id>` (the URLs `getUrl` answers) streams a file
//! back, with its content type, length and single byte ranges. Neither holds a file in memory.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::AppState;
use crate::error::{Result, ServerError};
use crate::routing::Deployment;

/// Bytes per chunk of a download.
const CHUNK: usize = 256 << 10;

fn storage_error(e: kiln_runtime::CallError) -> ServerError {
    ServerError::Storage { code: e.code, message: e.message }
}

/// Query of an upload.
#[derive(Deserialize)]
pub struct UploadQuery {
    token: Option<String>,
}

/// `POST /api/storage/upload?token=…`: stores the body as a new file (its `Content-Type`
/// recorded) and answers `{"storageId": …}`. A body that stalls longer than the server's body
/// timeout between two chunks is refused.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    Query(query): Query<UploadQuery>,
    req: Request,
) -> Result<Response> {
    let dep = state.runtime.deployment(&d).ok_or_else(|| ServerError::DeploymentNotFound(d.clone()))?;
    let token = query.token.ok_or_else(|| ServerError::Storage {
        code: "InvalidUploadToken".into(),
        message: "the upload URL has no token; get one from ctx.storage.generateUploadUrl()".into(),
    })?;
    dep.check_upload_token(&token).map_err(storage_error)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let mut body = StreamReader::new(Box::pin(idle_limited(req.into_body(), state.config.body_timeout)));
    let meta = dep.store_file(&mut body, content_type).await.map_err(storage_error)?;
    tracing::debug!(deployment = %d, size = meta.size, "file uploaded");
    Ok(axum::Json(json!({ "storageId": meta.id.encode() })).into_response())
}

/// The body's chunks as I/O results, failing when none arrives within `idle`.
fn idle_limited(body: Body, idle: Duration) -> impl futures::Stream<Item = std::io::Result<axum::body::Bytes>> + Send {
    futures::stream::unfold(Some(body.into_data_stream()), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => {
                Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no data for {idle:?}"))), None))
            }
        }
    })
}

/// `GET /api/storage/<id>`: the file's bytes (`Range: bytes=…` answers 206 with that range).
pub async fn download(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let dep = state.runtime.deployment(&d).ok_or_else(|| ServerError::DeploymentNotFound(d.clone()))?;
    let not_found = || ServerError::Storage {
        code: "StorageFileNotFound".into(),
        message: format!("no stored file has id {id:?}"),
    };
    let meta = dep.file(&id).await.map_err(storage_error)?.ok_or_else(not_found)?;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(spec) => match parse_range(spec, meta.size) {
            Ok(range) => range,
            Err(()) => {
                let mut response = ServerError::Storage {
                    code: "InvalidRange".into(),
                    message: format!("range {spec:?} is not within the file's {} bytes", meta.size),
                }
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(response);
            }
        },
        None => None,
    };
    let blob = dep.open_file(&meta, range.clone()).await.map_err(storage_error)?.ok_or_else(not_found)?;
    let content_type = meta.content_type.as_deref().unwrap_or("application/octet-stream");
    let mut response = Response::builder()
        .status(if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, blob.len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Digest", format!("sha-256={}", base64::engine::general_purpose::STANDARD.encode(meta.sha256)))
        // Stored files never change: the id names these bytes for good.
        .header(header::CACHE_CONTROL, "private, max-age=2592000, immutable");
    if let Some(r) = &range {
        response = response.header(header::CONTENT_RANGE, format!("bytes {}-{}/{}", r.start, r.end - 1, blob.size));
    }
    let body = Body::from_stream(ReaderStream::with_capacity(blob.reader, CHUNK));
    response.body(body).map_err(|e| ServerError::Internal(format!("building the response: {e}")))
}

/// The byte range of a `Range` header over a file of `size` bytes (end exclusive): `None`
/// to serve the whole file (a header of another unit or several ranges, which a server may
/// ignore), `Err` when the range is not satisfiable.
fn parse_range(spec: &str, size: u64) -> std::result::Result<Option<Range<u64>>, ()> {
    let Some(set) = spec.trim().strip_prefix("bytes=") else { return Ok(None) };
    if set.contains(',') {
        return Ok(None);
    }
    let (first, last) = set.trim().split_once('-').ok_or(())?;
    let range = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            size.saturating_sub(n)..size
        }
        (start, "") => start.parse().map_err(|_| ())?..size,
        (start, end) => {
            let (start, end): (u64, u64) = (start.parse().map_err(|_| ())?, end.parse().map_err(|_| ())?);
            if end < start {
                return Err(());
            }
            start..end.saturating_add(1).min(size)
        }
    };
    if range.start >= size { Err(()) } else { Ok(Some(range)) }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(parse_range("bytes=-500", 100), Ok(Some(0..100)));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some(50..100)));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-2", 100), Err(()));
        assert_eq!(parse_range("bytes=-0", 100), Err(()));
        assert_eq!(parse_range("bytes=0-0", 0), Err(()));
        assert_eq!(parse_range("bytes=x-", 100), Err(()));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
    }
}
