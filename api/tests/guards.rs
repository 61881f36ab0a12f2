//! Defences of the HTTP surface, in-process through the router: JSON
//! content type, `Host` check, unambiguous space selection, bounded metric
//! labels, RFC 3339 offsets, a streamed backup.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use engram_api::{ApiConfig, AppState, HostPolicy};
use engram_graph::{Graph, GraphConfig, OpenOptions};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Server {
    app: Router,
    _state: Arc<AppState>,
    dir: tempfile::TempDir,
}

fn server_with(config: ApiConfig) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = prometheus::Registry::new();
    let options = OpenOptions {
        registry: Some(registry.clone()),
        ..OpenOptions::default()
    };
    let (graph, _) = Graph::open(dir.path(), GraphConfig::default(), options).expect("open");
    let state = AppState::new(Arc::new(graph), registry).expect("state");
    state.set_ready(true);
    Server {
        app: engram_api::router(Arc::clone(&state), &config),
        _state: state,
        dir,
    }
}

fn server() -> Server {
    server_with(ApiConfig::default())
}

async fn send(s: &Server, req: Request<Body>) -> (StatusCode, Value) {
    let resp = s.app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

fn json_post(uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
}

async fn remember(s: &Server, body: Value) -> (StatusCode, Value) {
    let req = json_post("/api/v1/memories/remember")
        .body(Body::from(body.to_string()))
        .expect("request");
    send(s, req).await
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

#[tokio::test]
async fn json_bodies_without_a_json_content_type_are_refused_with_415() {
    let s = server();
    // What a cross-origin page can send without a preflight.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        for (uri, body) in [
            ("/api/v1/memories/remember", r#"{"content": "planted"}"#),
            ("/api/v1/memories/recall", r#"{"cue": {"text": "planted"}}"#),
            ("/api/v1/spaces", r#"{"id": "planted"}"#),
            ("/api/v1/consolidate", r#"{}"#),
        ] {
            let mut req = Request::builder().method("POST").uri(uri);
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let (st, v) = send(&s, req.body(Body::from(body)).expect("request")).await;
            assert_eq!(
                (st, code(&v)),
                (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Some("unsupported_media_type")
                ),
                "{uri} with {ct:?}: {v}"
            );
        }
    }
    // Nothing was stored, and JSON still works (charset parameter too).
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/memories/remember")
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(r#"{"content": "real"}"#))
        .expect("request");
    assert_eq!(send(&s, req).await.0, StatusCode::CREATED);
    let req = Request::builder()
        .uri("/api/v1/spaces/default")
        .body(Body::empty())
        .expect("request");
    let (_, v) = send(&s, req).await;
    assert_eq!(v["memories"], json!(1), "{v}");
    // An empty consolidate body needs no content type.
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/consolidate")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&s, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn requests_for_unknown_host_names_are_refused_with_421() {
    // The default policy: a loopback server answers only loopback names.
    let s = server();
    for host in ["attacker.example:7432", "localhost.attacker.example"] {
        for uri in ["/health/alive", "/api/v1/memories/search?q=x"] {
            let req = Request::builder()
                .uri(uri)
                .header("host", host)
                .body(Body::empty())
                .expect("request");
            let (st, v) = send(&s, req).await;
            assert_eq!(
                (st, code(&v)),
                (StatusCode::MISDIRECTED_REQUEST, Some("misdirected_host")),
                "{host} {uri}: {v}"
            );
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains("server.allowed_hosts"), "{msg}");
        }
        // Nor a backup: DNS rebinding must not read every tenant.
        let req = Request::builder()
            .method("POST")
            .uri("/api/v1/system/backup")
            .header("host", host)
            .body(Body::empty())
            .expect("request");
        assert_eq!(send(&s, req).await.0, StatusCode::MISDIRECTED_REQUEST);
    }
    for host in ["localhost:7432", "127.0.0.1:7432", "[::1]:7432", "10.0.0.7"] {
        let req = Request::builder()
            .uri("/health/alive")
            .header("host", host)
            .body(Body::empty())
            .expect("request");
        assert_eq!(send(&s, req).await.0, StatusCode::OK, "{host}");
    }
    // Configured names (a Kubernetes service) are accepted, others not.
    let list = vec!["engram".to_owned(), ".engram.svc.cluster.local".to_owned()];
    let hosts = HostPolicy::parse(&list, [0, 0, 0, 0].into()).expect("policy");
    let s = server_with(ApiConfig {
        hosts,
        ..ApiConfig::default()
    });
    for (host, ok) in [
        ("engram:7432", true),
        ("engram-0.engram.svc.cluster.local:7432", true),
        ("localhost:7432", false),
    ] {
        let req = Request::builder()
            .uri("/health/alive")
            .header("host", host)
            .body(Body::empty())
            .expect("request");
        let st = send(&s, req).await.0;
        assert_eq!(st == StatusCode::OK, ok, "{host}: {st}");
    }
}

#[tokio::test]
async fn the_space_header_given_twice_is_a_conflict_even_when_equal() {
    let s = server();
    for (a, b) in [("a", "b"), ("default", "default")] {
        let req = json_post("/api/v1/memories/remember")
            .header("x-memory-space", a)
            .header("x-memory-space", b)
            .body(Body::from(r#"{"content": "x"}"#))
            .expect("request");
        let (st, v) = send(&s, req).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, Some("space_conflict")),
            "{a} {b}: {v}"
        );
    }
}

#[tokio::test]
async fn invented_http_methods_share_one_metric_series() {
    let s = server();
    for i in 0..50 {
        let req = Request::builder()
            .method(format!("INVENTED{i}").as_str())
            .uri("/api/v1/memories/search?q=x")
            .body(Body::empty())
            .expect("request");
        send(&s, req).await;
    }
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .expect("request");
    let (_, v) = send(&s, req).await;
    let text = v.as_str().expect("text");
    assert!(!text.contains("INVENTED"), "raw methods became labels");
    let other = text
        .lines()
        .find(|l| l.starts_with("engram_http_requests_total{") && l.contains("method=\"other\""))
        .unwrap_or_else(|| panic!("no method=\"other\" series:\n{text}"));
    assert!(other.ends_with(" 50"), "{other}");
}

#[tokio::test]
async fn per_space_series_are_capped_with_the_rest_summed() {
    let s = server_with(ApiConfig {
        max_space_series: 2,
        ..ApiConfig::default()
    });
    for (space, n) in [("big", 3), ("mid", 2), ("small", 1), ("tiny", 1)] {
        let req = json_post("/api/v1/spaces")
            .body(Body::from(json!({"id": space}).to_string()))
            .expect("request");
        assert_eq!(send(&s, req).await.0, StatusCode::CREATED);
        for i in 0..n {
            let req = json_post("/api/v1/memories/remember")
                .header("x-memory-space", space)
                .body(Body::from(json!({"content": format!("m {i}")}).to_string()))
                .expect("request");
            assert_eq!(send(&s, req).await.0, StatusCode::CREATED);
        }
    }
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .expect("request");
    let (_, v) = send(&s, req).await;
    let text = v.as_str().expect("text");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("engram_space_memories{"))
        .collect();
    assert_eq!(
        series,
        [
            "engram_space_memories{space=\"_other\"} 2",
            "engram_space_memories{space=\"big\"} 3",
            "engram_space_memories{space=\"mid\"} 2",
        ],
        "the two largest one by one; default (0), small and tiny summed: {text}"
    );
}

#[tokio::test]
async fn times_with_offsets_are_stored_as_utc() {
    let s = server();
    for (given, stored) in [
        ("2026-01-31T12:00:00.000+05:00", "2026-01-31T07:00:00.000Z"),
        ("2026-01-31T12:00:00+05:00", "2026-01-31T07:00:00.000Z"),
        ("2026-01-31T12:00:00-03:30", "2026-01-31T15:30:00.000Z"),
        ("2026-01-31T12:00:00.250Z", "2026-01-31T12:00:00.250Z"),
    ] {
        let (st, r) = remember(&s, json!({"content": "x", "occurred_at": given})).await;
        assert_eq!(st, StatusCode::CREATED, "{given}: {r}");
        let id = r["id"].as_str().expect("id");
        let req = Request::builder()
            .uri(format!("/api/v1/memories/{id}"))
            .body(Body::empty())
            .expect("request");
        let (_, m) = send(&s, req).await;
        assert_eq!(m["occurred_at"], json!(stored), "{given}");
    }
    for bad in ["2026-01-31T12:00:00", "31/01/2026", "1969-12-31T23:59:59Z"] {
        let (st, v) = remember(&s, json!({"content": "x", "occurred_at": bad})).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{bad}: {v}"
        );
    }
    // Recall's time window takes offsets too: 07:00Z is inside 11:59+05:00..12:01+05:00.
    let req = json_post("/api/v1/memories/recall")
        .body(Body::from(
            json!({"cue": {"text": "x", "from": "2026-01-31T11:59:00+05:00", "to": "2026-01-31T12:01:00+05:00"}})
                .to_string(),
        ))
        .expect("request");
    let (st, v) = send(&s, req).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["count"], json!(2), "{v}");
}

#[tokio::test]
async fn backup_streams_from_the_checkpoint_without_staging_a_copy() {
    let s = server();
    // Enough incompressible data that the archive is far larger than the
    // stream's buffer.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..150 {
        let words: Vec<String> = (0..2000)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                format!("{:x}", x >> 40)
            })
            .collect();
        let content = format!("{i} {}", words.join(" "));
        let (st, _) = remember(&s, json!({"content": content})).await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/system/backup")
        .body(Body::empty())
        .expect("request");
    let resp = s.app.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body
        .frame()
        .await
        .expect("a first frame")
        .expect("frame")
        .into_data()
        .expect("data");
    assert!(!first.is_empty());
    // The answer started while the archive is still being written from the
    // checkpoint: no full-size copy sits on the data volume.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let scratch = s.dir.path().join("backup-tmp");
    let entries: Vec<String> = std::fs::read_dir(&scratch)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the archive was staged before streaming)",
                scratch.display()
            )
        })
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.iter().any(|e| e == "db"), "{entries:?}");
    assert!(!entries.iter().any(|e| e.ends_with(".tar")), "{entries:?}");
    // The rest arrives and is a whole tar with the manifest first.
    let rest = body.collect().await.expect("rest").to_bytes();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let mut archive = tar::Archive::new(all.as_slice());
    let names: Vec<String> = archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("manifest.json"));
    assert!(names.iter().any(|n| n.ends_with(".sst")), "{names:?}");
    // And the scratch directory is gone afterwards.
    for _ in 0..100 {
        if !scratch.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!scratch.exists(), "scratch left behind");
}
