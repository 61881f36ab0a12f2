//! Writes in a cluster: the write concern a request asks for (header
//! `X-Write-Concern`, query `write_concern`, else `[replication]
//! default_write_concern`), the wait until it holds, and space creation
//! and deletion through the metadata group. Standalone, every write is
//! acknowledged once durable here, as before.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use engram_cluster::metadata::SpaceSettings;
use engram_cluster::spaces::{self, SpaceChangeError};
use engram_graph::{DEFAULT_SPACE, Graph, SpaceStats};
use engram_replication::protocol::Concern;

use crate::{ApiError, AppState};

/// Parses a write concern's name.
pub fn parse_concern(s: &str) -> Option<Concern> {
    match s {
        "primary" => Some(Concern::Primary),
        "quorum" => Some(Concern::Quorum),
        "all" => Some(Concern::All),
        _ => None,
    }
}

/// The request's write concern: header `X-Write-Concern` or query
/// `write_concern` (they must agree when both are given), else the
/// configured default.
pub(crate) fn concern_of(
    s: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Concern, ApiError> {
    let bad = |v: &str| {
        ApiError::bad_request(
            "invalid_write_concern",
            format!("write concern {v:?} is not one of primary, quorum, all"),
        )
    };
    let mut values = headers.get_all("x-write-concern").iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| bad("(not text)"))?;
            Some(parse_concern(v).ok_or_else(|| bad(v))?)
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_write_concern",
                "the header X-Write-Concern was given more than once",
            ));
        }
    };
    let query = match query {
        Some(v) => Some(parse_concern(v).ok_or_else(|| bad(v))?),
        None => None,
    };
    match (header, query) {
        (Some(h), Some(q)) if h != q => Err(ApiError::bad_request(
            "invalid_write_concern",
            "X-Write-Concern and the write_concern query parameter disagree",
        )),
        (Some(c), _) | (None, Some(c)) => Ok(c),
        (None, None) => Ok(s.default_concern()),
    }
}

/// Refuses at once, before anything is written, a write whose concern
/// cannot hold (the space's replica set is smaller than a quorum of the
/// replication factor: 503 `insufficient_replicas`).
pub(crate) fn precheck(
    s: &AppState,
    graph: &Graph,
    space: &str,
    concern: Concern,
) -> Result<(), ApiError> {
    let Some(replicator) = s.replicator() else {
        return Ok(());
    };
    let Ok(local) = graph.space_id(space) else {
        return Ok(());
    };
    Ok(replicator.check(local, concern)?)
}

/// Waits until the write at `seq` of `space` (or, without one, everything
/// written to it so far) holds under `concern`. Standalone: at once.
pub(crate) async fn hold(
    s: &AppState,
    graph: &Graph,
    space: &str,
    seq: Option<u64>,
    concern: Concern,
) -> Result<(), ApiError> {
    let Some(replicator) = s.replicator() else {
        return Ok(());
    };
    let Ok(local) = graph.space_id(space) else {
        // Deleted meanwhile: its deletion is the newer write.
        return Ok(());
    };
    let seq = seq.unwrap_or_else(|| graph.engine().next_seq(local).saturating_sub(1));
    Ok(replicator.wait(local, seq, concern).await?)
}

fn change_error(e: SpaceChangeError) -> ApiError {
    match e {
        SpaceChangeError::Exists(name) => ApiError {
            status: axum::http::StatusCode::CONFLICT,
            code: "space_exists",
            message: format!("space {name:?} already exists"),
            detail: None,
        },
        SpaceChangeError::NotFound(name) => {
            ApiError::from(engram_graph::GraphError::SpaceNotFound(name))
        }
        SpaceChangeError::NoNodes => ApiError::unavailable("no_nodes", e.to_string()),
        SpaceChangeError::Refused(_) => ApiError::unavailable("metadata_refused", e.to_string()),
        SpaceChangeError::Metadata(_) => ApiError::unavailable(
            "metadata_unavailable",
            format!(
                "{e}; the cluster's metadata group must have a leader to create or delete spaces: retry shortly"
            ),
        ),
    }
}

/// Creates a space through the metadata group and waits until its primary
/// holds it (and, when this node is the primary, its creation satisfies
/// `concern`). `None` standalone.
pub(crate) async fn create_space(
    s: &AppState,
    graph: &Graph,
    name: &str,
    settings: SpaceSettings,
    concern: Concern,
) -> Result<Option<SpaceStats>, ApiError> {
    let (Some(metadata), Some(cluster), Some(replicator)) =
        (s.metadata(), s.cluster(), s.replicator())
    else {
        return Ok(None);
    };
    if !engram_graph::valid_space_name(name) {
        return Err(engram_graph::GraphError::InvalidSpaceName(name.to_owned()).into());
    }
    let meta = spaces::create_space(metadata, cluster, name, settings)
        .await
        .map_err(change_error)?;
    // Created where its concern says: on the primary (this node leads it
    // and its creation record holds under the concern), or, asked through
    // another node, on as many copies as the concern needs.
    let rf = metadata
        .state()
        .cluster
        .map_or(1, |c| usize::from(c.replication_factor.max(1)));
    let needed = match concern {
        Concern::Primary => 1,
        Concern::Quorum => rf / 2 + 1,
        Concern::All => meta.replicas.len(),
    };
    let deadline = Instant::now() + s.write_timeout();
    loop {
        let ready = if meta.primary == replicator.node() {
            graph.space_id(name).is_ok() && replicator.leads(meta.uid)
        } else {
            let mut holding = 0;
            for node in &meta.replicas {
                if let Ok(Some(d)) = replicator.peer_digest(node, meta.uid).await
                    && d.applied_seq >= 1
                {
                    holding += 1;
                }
            }
            holding >= needed
        };
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ApiError::unavailable(
                "write_concern_timeout",
                format!(
                    "space {name:?} was created in the metadata group but is not yet on the copies its write concern needs within {} ms; it will be: retry reading it shortly",
                    s.write_timeout().as_millis()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if meta.primary == replicator.node() {
        hold(s, graph, name, Some(1), concern).await?;
    }
    Ok(Some(SpaceStats {
        name: name.to_owned(),
        embedding_dim: settings.embedding_dim,
        hot_capacity: settings
            .hot_capacity
            .map_or(graph.config().hot_capacity, |c| c as usize),
        ..SpaceStats::default()
    }))
}

/// Deletes a space through the metadata group and waits until the
/// deletion reached a quorum of its copies (the space is retired). `false`
/// standalone.
pub(crate) async fn delete_space(s: &AppState, name: &str) -> Result<bool, ApiError> {
    let Some(metadata) = s.metadata() else {
        return Ok(false);
    };
    if s.replicator().is_none() {
        return Ok(false);
    }
    if name == DEFAULT_SPACE {
        return Err(engram_graph::GraphError::DefaultSpace.into());
    }
    let meta = spaces::delete_space(metadata, name)
        .await
        .map_err(change_error)?;
    let deadline = Instant::now() + s.write_timeout();
    while !metadata.state().retired.contains_key(&meta.uid) {
        if Instant::now() >= deadline {
            return Err(ApiError::unavailable(
                "write_concern_timeout",
                format!(
                    "the deletion of space {name:?} is committed but has not reached a quorum of its copies within {} ms; it goes on",
                    s.write_timeout().as_millis()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}
