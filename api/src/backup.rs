//! Online backup: a RocksDB checkpoint of the warm store, streamed as a tar
//! archive (`manifest.json` + `db/`). Every acknowledged write is in the
//! store once applied, so the checkpoint plus an empty WAL is a complete,
//! consistent data directory (`engram restore` builds exactly that).

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use engram_graph::Graph;
use serde_json::json;

use crate::http::blocking;
use crate::model::{ErrorBody, rfc3339};
use crate::{ApiError, AppState, VERSION};

/// Name of the manifest inside a backup.
pub const MANIFEST: &str = "manifest.json";
/// Backup format written into the manifest.
pub const FORMAT: u64 = 1;
/// Scratch directory inside the data directory.
const SCRATCH: &str = "backup-tmp";

/// One backup at a time: they share the scratch directory.
static RUNNING: Mutex<()> = Mutex::new(());

#[utoipa::path(post, path = "/api/v1/system/backup", tag = "system",
    responses(
        (status = 200, description = "A tar archive holding `manifest.json` and the checkpoint under `db/`", content_type = "application/x-tar"),
        (status = 503, description = "Not ready", body = ErrorBody)))]
pub(crate) async fn backup(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let graph = s.graph()?;
    if !s.is_ready() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_ready",
            message: "the server is starting or stopping".into(),
        });
    }
    let file = blocking(move || archive(&graph)).await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [(CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("backup: {what} {}: {e}", path.display()))
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir_all(self.0) {
                tracing::warn!(path = %self.0.display(), error = %e, "removing backup scratch failed");
            }
        }
    }
}

/// Writes the archive to an unlinked temporary file and returns it open.
fn archive(graph: &Graph) -> Result<File, ApiError> {
    let _one = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
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
    // The scratch directory (hard links and a full-size tar) goes on every
    // path, so a failed backup never leaves space used on the data volume.
    let _cleanup = RemoveOnDrop(&scratch);
    let started = std::time::Instant::now();
    let db = scratch.join("db");
    // The LSN is read under the engine's apply lock: exactly what the
    // checkpoint holds.
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
    let tar_path = scratch.join("backup.tar");
    let file = File::create(&tar_path).map_err(|e| io("creating", &tar_path, e))?;
    let mut tar = tar::Builder::new(file);
    tar.append_path_with_name(&manifest_path, MANIFEST)
        .and_then(|()| tar.append_dir_all("db", &db))
        .map_err(|e| io("archiving", &db, e))?;
    tar.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(|e| io("finishing", &tar_path, e))?;
    // The open handle keeps the archive readable after the directory goes.
    let file = File::open(&tar_path).map_err(|e| io("opening", &tar_path, e))?;
    tracing::info!(
        applied_lsn,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "backup archive ready"
    );
    Ok(file)
}
