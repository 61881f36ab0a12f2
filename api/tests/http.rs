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

/// The error's message, or "" when the body is not the error shape.
fn message(e: &Value) -> &str {
    e["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_missing_space_error_says_how_to_create_it() {
    let s = server();
    let body = Body::from(r#"{"content": "x"}"#);
    let (st, e) = call(
        &s,
        "POST",
        "/api/v1/memories/remember",
        Some(body),
        Some("missing"),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
    assert!(
        message(&e).contains(r#"POST /api/v1/spaces with the body {"id": "missing"}"#),
        "{e}"
    );
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_naming_the_allowed_ones() {
    let s = server();
    for (method, uri, allowed) in [
        ("POST", "/api/v1/memories/search", vec!["GET", "HEAD"]),
        ("DELETE", "/api/v1/spaces", vec!["GET", "HEAD", "POST"]),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let resp = s.app.clone().oneshot(req).await.expect("response");
        assert_eq!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        let mut allow: Vec<String> = resp
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .expect("Allow header")
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        allow.sort();
        let mut want: Vec<String> = allowed.iter().map(|m| (*m).to_owned()).collect();
        want.sort();
        assert_eq!(allow, want, "{method} {uri}");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let e: Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert_eq!(e["error"]["code"], json!("method_not_allowed"), "{e}");
        for m in allowed {
            assert!(message(&e).contains(m), "{method} {uri}: {e}");
        }
    }
}

#[tokio::test]
async fn json_errors_never_name_rust_types() {
    let s = server();
    for (body, expected) in [
        (json!({"cue": "dogs"}), "expected a JSON object"),
        (
            json!({"cue": {"text": "dogs"}, "limit": -1}),
            "expected a non-negative integer",
        ),
        (
            json!({"cue": {"tags": {"a": 1}}}),
            "invalid type: object, expected an array",
        ),
    ] {
        let (st, e) = post(&s, "/api/v1/memories/recall", body).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_json")),
            "{e}"
        );
        assert!(message(&e).contains(expected), "{e}");
        for rust in ["struct", "CueBody", "usize", "sequence", "map,"] {
            assert!(!message(&e).contains(rust), "{rust}: {e}");
        }
    }
}

#[tokio::test]
async fn a_recall_from_after_to_is_a_400_naming_both() {
    let s = server();
    let (st, e) = post(
        &s,
        "/api/v1/memories/recall",
        json!({"cue": {"from": "2026-11-05T00:00:00Z", "to": "2026-11-03T00:00:00Z"}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["code"], json!("invalid_request"), "{e}");
    assert!(
        message(&e).contains("cue.from") && message(&e).contains("cue.to"),
        "{e}"
    );
}

#[tokio::test]
async fn a_plain_date_is_midnight_utc_and_a_to_date_includes_its_day() {
    let s = server();
    let mut ids = Vec::new();
    for at in [
        "2026-11-03",
        "2026-11-03T18:00:00Z",
        "2026-11-02T23:59:59Z",
        "2026-11-04T00:00:00Z",
    ] {
        let (st, a) = post(
            &s,
            "/api/v1/memories/remember",
            json!({"content": format!("at {at}"), "tags": ["d"], "occurred_at": at}),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{at}: {a}");
        ids.push(a["id"].as_str().expect("id").to_owned());
    }
    let (_, got) = call(
        &s,
        "GET",
        &format!("/api/v1/memories/{}", ids[0]),
        None,
        None,
    )
    .await;
    assert_eq!(got["occurred_at"], json!("2026-11-03T00:00:00.000Z"));
    let (st, r) = post(
        &s,
        "/api/v1/memories/recall",
        json!({"cue": {"tags": ["d"], "from": "2026-11-03", "to": "2026-11-03"}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let mut found: Vec<&str> = r["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|x| x["memory"]["id"].as_str())
        .collect();
    found.sort();
    let mut want = vec![ids[0].as_str(), ids[1].as_str()];
    want.sort();
    assert_eq!(found, want, "{r}");
    // A date with a time but no offset stays ambiguous: refused.
    let (st, e) = post(
        &s,
        "/api/v1/memories/recall",
        json!({"cue": {"tags": ["d"], "from": "2026-11-03T10:00"}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
}

#[tokio::test]
async fn a_filter_only_recall_is_marked_filter_and_newest_first() {
    let s = server();
    // Stored in another order than they occurred, a millisecond apart (the
    // same score): the answer follows `occurred_at`, not the store order.
    let mut ids = Vec::new();
    for at in [
        "2026-01-01T00:00:00.002Z",
        "2026-01-01T00:00:00.001Z",
        "2026-01-01T00:00:00.003Z",
    ] {
        let (st, a) = post(
            &s,
            "/api/v1/memories/remember",
            json!({"content": format!("note {at}"), "tags": ["t"], "occurred_at": at}),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{a}");
        ids.push(a["id"].clone());
    }
    let (st, r) = post(
        &s,
        "/api/v1/memories/recall",
        json!({"cue": {"tags": ["t"]}, "spread": {"depth": 0}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let results = r["results"].as_array().expect("results");
    let got: Vec<&Value> = results.iter().map(|x| &x["memory"]["id"]).collect();
    assert_eq!(got, vec![&ids[2], &ids[0], &ids[1]], "{r}");
    assert!(
        results
            .iter()
            .all(|x| x["via"] == json!({"kind": "filter"})),
        "{r}"
    );
}

/// Whether an OpenAPI property schema admits `null`.
fn admits_null(p: &Value) -> bool {
    let ty = &p["type"];
    ty.as_str() == Some("null")
        || ty
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x.as_str() == Some("null")))
        || ["oneOf", "anyOf"]
            .iter()
            .any(|k| p[*k].as_array().is_some_and(|v| v.iter().any(admits_null)))
}

#[tokio::test]
async fn null_optional_fields_mean_absent() {
    let s = server();
    let (st, a) = post(
        &s,
        "/api/v1/memories/remember",
        json!({"content": "nulls everywhere", "confidence": null, "embedding": null,
               "tags": null, "metadata": null, "occurred_at": null, "session": null,
               "links": null, "dedupe": null}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    let (st, r) = post(
        &s,
        "/api/v1/memories/recall",
        json!({"cue": {"text": "nulls", "embedding": null, "tags": null, "from": null,
                       "to": null, "min_confidence": null},
               "limit": null, "spread": null}),
    )
    .await;
    assert_eq!((st, r["count"].clone()), (StatusCode::OK, json!(1)), "{r}");
    let (st, sp) = post(
        &s,
        "/api/v1/spaces",
        json!({"id": "nulls", "embedding_dim": null, "hot_capacity": null}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{sp}");
    let (st, c) = post(&s, "/api/v1/consolidate", json!({"threshold": null})).await;
    assert_eq!(st, StatusCode::OK, "{c}");

    // And the OpenAPI document says so: every optional field of a request
    // body is nullable, for generated clients.
    let doc: Value =
        serde_json::from_str(&engram_api::openapi().to_json().expect("json")).expect("parse");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let bodies: Vec<&String> = schemas
        .keys()
        .filter(|k| k.ends_with("Body") && *k != "ErrorBody")
        .collect();
    assert!(
        ["RememberBody", "RecallBody", "CueBody"]
            .iter()
            .all(|b| bodies.iter().any(|k| k == b)),
        "{bodies:?}"
    );
    for name in bodies {
        let schema = &schemas[name];
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let props = schema["properties"].as_object().expect("properties");
        for (field, p) in props {
            if !required.contains(&field.as_str()) {
                assert!(
                    admits_null(p),
                    "{name}.{field} is optional but not nullable: {p}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_dedupe_answer_names_the_memory_it_matched() {
    let s = server();
    let body = json!({"content": "Haha.", "session": "july", "occurred_at": "2026-07-01T10:00:00Z",
                      "metadata": {"turn": 3}});
    let (st, first) = post(&s, "/api/v1/memories/remember", body.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    assert_eq!(first["occurred_at"], json!("2026-07-01T10:00:00.000Z"));
    let mut retry = body.clone();
    retry["dedupe"] = json!(true);
    let (st, again) = post(&s, "/api/v1/memories/remember", retry.clone()).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["deduplicated"], json!(true));
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["occurred_at"], first["occurred_at"]);
    assert_eq!(again["stored_at"], first["stored_at"]);
    // November's "Haha." in another session is a new memory.
    retry["session"] = json!("november");
    retry["occurred_at"] = json!("2026-11-20T10:00:00Z");
    let (st, other) = post(&s, "/api/v1/memories/remember", retry).await;
    assert_eq!(st, StatusCode::CREATED, "{other}");
    assert_ne!(other["id"], first["id"]);
    assert_eq!(other["occurred_at"], json!("2026-11-20T10:00:00.000Z"));
}

#[tokio::test]
async fn concepts_are_returned_only_when_the_cue_asks_for_them() {
    let s = server();
    for t in [
        "Maya booked a flight to Porto for the conference",
        "Maya booked the flight to Porto for that conference",
    ] {
        let (st, _) = post(&s, "/api/v1/memories/remember", json!({"content": t})).await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let (st, c) = post(&s, "/api/v1/consolidate", json!({"threshold": 0.5})).await;
    assert_eq!(
        (st, c["concepts"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{c}"
    );
    let recall = "/api/v1/memories/recall";
    let concepts = |v: &Value, list: &str| -> Vec<Value> {
        v[list]
            .as_array()
            .expect("list")
            .iter()
            .map(|r| {
                if list == "results" {
                    r["memory"].clone()
                } else {
                    r.clone()
                }
            })
            .filter(|m| m["concept"] == json!(true))
            .collect()
    };
    for absent in [
        json!({"text": "porto flight"}),
        json!({"text": "porto flight", "include_concepts": null}),
    ] {
        let (st, v) = post(&s, recall, json!({"cue": absent})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["count"], json!(2), "the two episodes: {v}");
        assert!(concepts(&v, "results").is_empty(), "{v}");
    }
    let (st, v) = post(
        &s,
        recall,
        json!({"cue": {"text": "porto flight", "include_concepts": true}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let found = concepts(&v, "results");
    assert_eq!(found.len(), 1, "{v}");
    assert_eq!(
        found[0]["metadata"],
        json!({"kind": "concept", "members": 2})
    );
    assert!(
        found[0]["content"]
            .as_str()
            .is_some_and(|c| c.contains("porto"))
    );

    let (st, v) = call(&s, "GET", "/api/v1/memories/search?q=porto", None, None).await;
    assert_eq!((st, v["count"].clone()), (StatusCode::OK, json!(2)), "{v}");
    assert!(concepts(&v, "memories").is_empty(), "{v}");
    let (st, v) = call(
        &s,
        "GET",
        "/api/v1/memories/search?q=porto&include_concepts=true",
        None,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(concepts(&v, "memories").len(), 1, "{v}");
    let (st, v) = call(
        &s,
        "GET",
        "/api/v1/memories/search?q=porto&include_concepts=maybe",
        None,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}
