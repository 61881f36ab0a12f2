//! The HTTP API end to end on a real graph, through the router in-process:
//! shapes, status codes, JSON errors for bad input, space isolation.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use engram_api::{ApiConfig, AppState};
use engram_graph::{Graph, GraphConfig, OpenOptions};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Server {
    app: Router,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = prometheus::Registry::new();
    let options = OpenOptions {
        registry: Some(registry.clone()),
        ..OpenOptions::default()
    };
    let (graph, _) = Graph::open(dir.path(), GraphConfig::default(), options).expect("open");
    let state = AppState::new(Arc::new(graph), registry).expect("state");
    state.set_ready(true);
    let config = ApiConfig {
        body_limit_bytes: 64 * 1024,
        ..ApiConfig::default()
    };
    Server {
        app: engram_api::router(Arc::clone(&state), &config),
        state,
        _dir: dir,
    }
}

async fn call(
    s: &Server,
    method: &str,
    uri: &str,
    body: Option<Body>,
    header: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(h) = header {
        req = req.header("X-Memory-Space", h);
    }
    let req = req
        .header("content-type", "application/json")
        .body(body.unwrap_or_else(Body::empty))
        .expect("request");
    let resp = s.app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

async fn post(s: &Server, uri: &str, v: Value) -> (StatusCode, Value) {
    call(s, "POST", uri, Some(Body::from(v.to_string())), None).await
}

#[tokio::test]
async fn memory_routes_follow_the_api_shapes() {
    let s = server();
    let (st, a) = post(
        &s,
        "/api/v1/memories/remember",
        json!({"content": "Ana adopted a dog", "tags": ["pets"], "confidence": 0.9,
               "occurred_at": "2026-01-31T12:00:00Z", "session": "chat-1", "metadata": {"source": "chat"}}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    for k in ["id", "space", "sequence", "confidence", "stored_at"] {
        assert!(a.get(k).is_some(), "remember answer lacks {k}: {a}");
    }
    let id = a["id"].as_str().expect("id").to_owned();
    let (_, b) = post(
        &s,
        "/api/v1/memories/remember",
        json!({"content": "the dog's name is Rex", "session": "chat-1"}),
    )
    .await;
    let id_b = b["id"].as_str().expect("id").to_owned();

    let (st, found) = call(
        &s,
        "GET",
        "/api/v1/memories/search?q=adopted&limit=5",
        None,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(found["count"], json!(1));
    let m = &found["memories"][0];
    assert_eq!(
        (m["id"].as_str(), m["space"].as_str()),
        (Some(id.as_str()), Some("default"))
    );
    assert_eq!(m["occurred_at"], json!("2026-01-31T12:00:00.000Z"));
    assert_eq!(m["metadata"], json!({"source": "chat"}));
    assert_eq!(m["tags"], json!(["pets"]));

    let (st, r) = post(
        &s,
        "/api/v1/memories/recall",
        json!({"cue": {"text": "adopted"}, "limit": 5, "spread": {"depth": 2}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["via"], json!({"kind": "lexical"}));
    let linked = r["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|x| x["memory"]["id"] == json!(id_b))
        .expect("reached by the temporal edge");
    assert_eq!(linked["via"]["kind"], json!("edge"));
    assert_eq!(linked["via"]["path"], json!([id, id_b]));

    let (st, l) = post(
        &s,
        &format!("/api/v1/memories/{id_b}/links"),
        json!({"target": id, "weight": 0.5}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{l}");
    let (st, got) = call(&s, "GET", &format!("/api/v1/memories/{id}"), None, None).await;
    assert_eq!(
        (st, got["content"].as_str()),
        (StatusCode::OK, Some("Ana adopted a dog"))
    );
    let (st, _) = call(&s, "DELETE", &format!("/api/v1/memories/{id}"), None, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, e) = call(&s, "GET", &format!("/api/v1/memories/{id}"), None, None).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("memory_not_found"))
    );
    let (st, _) = call(&s, "DELETE", &format!("/api/v1/memories/{id}"), None, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, c) = post(&s, "/api/v1/consolidate", json!({"threshold": 0.5})).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert!(c.get("concepts").is_some());
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_and_the_server_keeps_serving() {
    let s = server();
    let remember = "/api/v1/memories/remember";
    let cases: Vec<(Body, Option<&str>, &str, StatusCode)> = vec![
        (
            Body::from("{not json"),
            None,
            "invalid_json",
            StatusCode::BAD_REQUEST,
        ),
        (
            Body::from(r#"{"content": 5}"#),
            None,
            "invalid_json",
            StatusCode::BAD_REQUEST,
        ),
        (
            Body::from(r#"{"content": "x", "colour": "red"}"#),
            None,
            "invalid_json",
            StatusCode::BAD_REQUEST,
        ),
        (
            Body::from(vec![0xff, 0xfe, 0x00]),
            None,
            "invalid_json",
            StatusCode::BAD_REQUEST,
        ),
        (
            Body::from(json!({"content": "x".repeat(70_000)}).to_string()),
            None,
            "body_too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Body::from(r#"{"content": "x"}"#),
            Some("Bad Name!"),
            "invalid_space_name",
            StatusCode::BAD_REQUEST,
        ),
        (
            Body::from(r#"{"content": "x"}"#),
            Some("missing"),
            "space_not_found",
            StatusCode::NOT_FOUND,
        ),
        (
            Body::from(r#"{"content": "x", "embedding": [1.0]}"#),
            None,
            "invalid_request",
            StatusCode::BAD_REQUEST,
        ),
        (
            Body::from(r#"{"content": "x", "confidence": 2}"#),
            None,
            "invalid_request",
            StatusCode::BAD_REQUEST,
        ),
        (
            Body::from(r#"{"content": "x", "occurred_at": "yesterday"}"#),
            None,
            "invalid_request",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, header, code, status) in cases {
        let (st, e) = call(&s, "POST", remember, Some(body), header).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{e}"
        );
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (st, e) = call(
        &s,
        "POST",
        "/api/v1/memories/remember?space=a",
        Some(Body::from(r#"{"content": "x"}"#)),
        Some("b"),
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("space_conflict"))
    );
    let (st, e) = call(&s, "GET", "/api/v1/memories/not-a-ulid", None, None).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_id"))
    );
    let (st, e) = call(&s, "GET", "/api/v1/memories/search", None, None).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    // Path segments that are not UTF-8 once decoded: JSON too.
    for (method, uri) in [
        ("GET", "/api/v1/memories/%FF"),
        ("DELETE", "/api/v1/memories/%FF"),
        ("POST", "/api/v1/memories/%FF/links"),
        ("GET", "/api/v1/spaces/%FF"),
        ("DELETE", "/api/v1/spaces/%FF"),
    ] {
        let (st, e) = call(&s, method, uri, None, None).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_path")),
            "{method} {uri}: {e}"
        );
    }
    let (st, e) = call(&s, "GET", "/nowhere", None, None).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("route_not_found"))
    );
    let (st, e) = post(&s, "/api/v1/memories/recall", json!({"cue": {}})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    let (st, _) = post(&s, remember, json!({"content": "still serving"})).await;
    assert_eq!(st, StatusCode::CREATED);
}

#[tokio::test]
async fn spaces_are_isolated_by_every_route() {
    let s = server();
    let (st, sp) = post(
        &s,
        "/api/v1/spaces",
        json!({"id": "alice", "embedding_dim": 3}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{sp}");
    assert_eq!(sp["embedding_dim"], json!(3));
    let (st, _) = post(&s, "/api/v1/spaces", json!({"id": "alice"})).await;
    assert_eq!(st, StatusCode::CONFLICT);
    post(&s, "/api/v1/spaces", json!({"id": "bob"})).await;
    let (_, a) = call(
        &s,
        "POST",
        "/api/v1/memories/remember",
        Some(Body::from(
            r#"{"content": "alice secret plan", "embedding": [1, 0, 0]}"#,
        )),
        Some("alice"),
    )
    .await;
    let id = a["id"].as_str().expect("id").to_owned();
    for (uri, header) in [
        (format!("/api/v1/memories/{id}?space=bob"), None),
        (format!("/api/v1/memories/{id}"), Some("bob")),
        (format!("/api/v1/memories/{id}"), None),
    ] {
        let (st, _) = call(&s, "GET", &uri, None, header).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{uri} {header:?}");
        let (st, _) = call(&s, "DELETE", &uri, None, header).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{uri} {header:?}");
    }
    let (_, found) = call(
        &s,
        "GET",
        "/api/v1/memories/search?q=secret&space=bob",
        None,
        None,
    )
    .await;
    assert_eq!(found["count"], json!(0));
    let (_, found) = call(
        &s,
        "GET",
        "/api/v1/memories/search?q=secret",
        None,
        Some("alice"),
    )
    .await;
    assert_eq!(found["count"], json!(1));
    let (st, _) = call(
        &s,
        "GET",
        &format!("/api/v1/memories/{id}"),
        None,
        Some("alice"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (_, list) = call(&s, "GET", "/api/v1/spaces", None, None).await;
    let names: Vec<&str> = list["spaces"]
        .as_array()
        .expect("spaces")
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert_eq!(names, vec!["alice", "bob", "default"]);
    let (st, _) = call(&s, "DELETE", "/api/v1/spaces/alice", None, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = call(&s, "GET", "/api/v1/spaces/alice", None, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, e) = call(&s, "DELETE", "/api/v1/spaces/default", None, None).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("default_space"))
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = server();
    let (st, v) = call(&s, "GET", "/health/alive", None, None).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("alive")));
    let (st, v) = call(&s, "GET", "/api/v1/system/health", None, None).await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("healthy"))
    );
    assert!(
        v["checks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["status"] == json!("pass")))
    );
    s.state.set_ready(false);
    for uri in ["/health/ready", "/api/v1/system/health"] {
        let (st, v) = call(&s, "GET", uri, None, None).await;
        assert_eq!(
            (st, v["status"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unhealthy"))
        );
    }
    let (st, v) = call(&s, "GET", "/health", None, None).await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("degraded"))
    );
    assert_eq!(v["version"], json!(engram_api::VERSION));
    let (st, _) = call(&s, "GET", "/health/alive", None, None).await;
    assert_eq!(st, StatusCode::OK, "liveness never depends on readiness");
    s.state.set_ready(true);
    let (_, v) = call(&s, "GET", "/metrics", None, None).await;
    let text = v.as_str().expect("text");
    assert!(
        text.contains(
            "engram_http_requests_total{method=\"GET\",route=\"/health/alive\",status=\"200\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("engram_space_memories{space=\"default\"} 0"));
    assert!(text.contains("engram_wal_"), "WAL metrics are exported");
}
