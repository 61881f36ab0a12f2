//! Online backup: a RocksDB checkpoint of the warm store, streamed as a tar
//! archive (`manifest.json` + `db/`). Every acknowledged write is in the
//! store once applied, so the checkpoint plus an empty WAL is a complete,
//! consistent data directory (`engram restore` builds exactly that).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use engram_graph::Graph;
use serde_json::json;

use crate::model::{ErrorBody, rfc3339};
use crate::{ApiError, AppState, VERSION};

/// Name of the manifest inside a backup.
pub const MANIFEST: &str = "manifest.json";
/// Backup format written into the manifest.
pub const FORMAT: u64 = 1;
/// Scratch directory inside the data directory.
const SCRATCH: &str = "backup-tmp";

/// One backup at a time: they share the scratch directory.
static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Bytes handed to the HTTP body at a time, and chunks buffered ahead of
/// the client: the archive never exists in full anywhere but the client.
const CHUNK: usize = 64 * 1024;
const CHUNKS_AHEAD: usize = 4;

#[utoipa::path(post, path = "/api/v1/system/backup", tag = "system",
    responses(
        (status = 200, description = "A tar archive holding `manifest.json` and the checkpoint under `db/`, streamed as it is written (an error mid-stream aborts the connection)", content_type = "application/x-tar"),
        (status = 503, description = "Not ready", body = ErrorBody)))]
pub(crate) async fn backup(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let graph = s.graph()?;
    if !s.is_ready() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_ready",
            message: "the server is starting or stopping".into(),
            detail: None,
        });
    }
    let one = RUNNING
        .acquire()
        .await
        .map_err(|_| ApiError::internal("backup: the backup lock is closed"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_AHEAD);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
    // The checkpoint (hard links) is made first, so its failure is still a
    // proper error status; then the tar is written into the response.
    tokio::task::spawn_blocking(move || {
        let _one = one;
        let prepared = prepare(&graph);
        let (_cleanup, db, manifest) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        if ready_tx.send(Ok(())).is_err() {
            return;
        }
        let started = std::time::Instant::now();
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let written = stream_tar(&mut out, &manifest, &db).and_then(|()| out.finish());
        match written {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "backup archive streamed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "backup stream ended early");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::internal("backup: the worker ended early")),
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok((
        [(CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `std::io::Write` into the response body, a chunk at a time (blocks while
/// the client is behind; fails once the client has gone).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client closed the backup download",
            )
        })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn stream_tar(out: &mut ChannelWriter, manifest: &Path, db: &Path) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.append_path_with_name(manifest, MANIFEST)?;
    tar.append_dir_all("db", db)?;
    tar.finish()
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("backup: {what} {}: {e}", path.display()))
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                tracing::warn!(path = %self.0.display(), error = %e, "removing backup scratch failed");
            }
        }
    }
}

/// Makes the checkpoint and manifest in the scratch directory; returns
/// (scratch, checkpoint, manifest); dropping the first removes them.
fn prepare(graph: &Graph) -> Result<(RemoveOnDrop, PathBuf, PathBuf), ApiError> {
    let store = graph.engine().store();
    let data_dir = store
        .path()
        .parent()
        .ok_or_else(|| ApiError::internal("backup: the store has no parent directory"))?;
    let scratch = data_dir.join(SCRATCH);
    // Leftovers of a backup interrupted by a crash.
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| io("clearing", &scratch, e))?;
    }
    std::fs::create_dir_all(&scratch).map_err(|e| io("creating", &scratch, e))?;
    let cleanup = RemoveOnDrop(scratch.clone());
    let db = scratch.join("db");
    // The LSN is read under the engine's apply lock: exactly what the
    // checkpoint holds. A checkpoint is hard links: no copy of the data.
    let applied_lsn = graph
        .engine()
        .checkpoint(&db)
        .map_err(|e| ApiError::internal(format!("backup: {e}")))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let manifest = json!({
        "format": FORMAT,
        "version": VERSION,
        "created_at": rfc3339(now_ms),
        "applied_lsn": applied_lsn,
    });
    let manifest_path = scratch.join(MANIFEST);
    std::fs::write(&manifest_path, manifest.to_string())
        .map_err(|e| io("writing", &manifest_path, e))?;
    tracing::info!(applied_lsn, "backup checkpoint ready; streaming");
    Ok((cleanup, db, manifest_path))
}
