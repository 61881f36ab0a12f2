//! API errors: every failure is a JSON body `{"error": {"code", "message"}}`
//! with a 4xx status for bad input and a 5xx status only for server faults.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engram_graph::GraphError;
use engram_replication::node::ReplicationError;
use serde_json::json;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code clients can match on.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// More fields of the error object (a write whose outcome is unknown
    /// carries its `sequence` and `"outcome": "unknown"`).
    pub detail: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// A 404 with `code`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// A 500 for a fault of the server itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            message: message.into(),
            detail: None,
        }
    }

    /// A 503 with `code`: retrying (soon, or elsewhere) can help.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<GraphError> for ApiError {
    fn from(e: GraphError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            GraphError::InvalidSpaceName(_) => (StatusCode::BAD_REQUEST, "invalid_space_name"),
            GraphError::SpaceExists(_) => (StatusCode::CONFLICT, "space_exists"),
            GraphError::SpaceNotFound(_) => (StatusCode::NOT_FOUND, "space_not_found"),
            GraphError::DefaultSpace => (StatusCode::BAD_REQUEST, "default_space"),
            GraphError::MemoryNotFound(_) => (StatusCode::NOT_FOUND, "memory_not_found"),
            GraphError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            GraphError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            GraphError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            GraphError::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_data"),
            GraphError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            GraphError::TooManyEdges { .. } => (StatusCode::CONFLICT, "too_many_edges"),
            GraphError::TooManySpaces { .. } => (StatusCode::CONFLICT, "too_many_spaces"),
            GraphError::SpaceUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "space_unavailable")
            }
            GraphError::NotPrimary { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_primary"),
        };
        // A damaged space was logged once when its load failed; every
        // request refused since then would only repeat that line.
        if status.is_server_error() && !matches!(e, GraphError::SpaceUnavailable { .. }) {
            tracing::error!(error = %message, "request failed");
        }
        Self {
            status,
            code,
            message,
            detail: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        if let Some(detail) = self.detail {
            error.extend(detail);
        }
        let body = json!({ "error": error });
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE
            && matches!(
                self.code,
                "not_primary" | "no_primary" | "insufficient_replicas" | "metadata_unavailable"
            );
        let mut response = (self.status, Json(body)).into_response();
        if retry {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<ReplicationError> for ApiError {
    fn from(e: ReplicationError) -> Self {
        let message = e.to_string();
        let unknown = |seq: u64| {
            let mut m = serde_json::Map::new();
            m.insert("sequence".into(), json!(seq));
            m.insert("outcome".into(), json!("unknown"));
            Some(m)
        };
        match e {
            ReplicationError::Graph(g) => g.into(),
            ReplicationError::Timeout { seq, .. } => Self {
                detail: unknown(seq),
                ..Self::unavailable("write_concern_timeout", message)
            },
            ReplicationError::RoleLost { seq, .. } => Self {
                detail: unknown(seq),
                ..Self::unavailable("write_outcome_unknown", message)
            },
            ReplicationError::Insufficient { .. } => {
                Self::unavailable("insufficient_replicas", message)
            }
            ReplicationError::Storage(_) => {
                tracing::error!(error = %message, "replication failed");
                Self::unavailable("replication_unavailable", message)
            }
        }
    }
}
