//! Black-box HTTP tests against the real `engram` binary.

mod common;

use common::{Server, try_request};
use serde_json::{Value, json};

fn remember(s: &Server, space: Option<&str>, body: Value) -> String {
    let path = match space {
        Some(sp) => format!("/api/v1/memories/remember?space={sp}"),
        None => "/api/v1/memories/remember".to_owned(),
    };
    let r = s.post(&path, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().expect("id").to_owned()
}

#[test]
fn memory_lifecycle_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());

    let r = s.post(
        "/api/v1/memories/remember",
        &json!({"content": "The deploy of service atlas failed because the disk was full",
                "tags": ["ops"], "confidence": 0.9, "metadata": {"source": "chat"},
                "session": "s1", "occurred_at": "2026-11-01T10:00:00Z"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let first = v["id"].as_str().expect("id").to_owned();
    assert_eq!(v["space"], "default");
    assert!(v["sequence"].as_u64().expect("sequence") >= 1);
    assert!((v["confidence"].as_f64().expect("confidence") - 0.9).abs() < 1e-6);
    assert!(v["stored_at"].as_str().expect("stored_at").ends_with('Z'));

    let second = remember(
        &s,
        None,
        json!({"content": "Cleaning old logs freed forty gigabytes on the atlas host"}),
    );

    // Quick search: ranked lexical matches in the documented shape.
    let r = s.get("/api/v1/memories/search?q=atlas%20disk&limit=5");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["count"], 2, "{v}");
    assert_eq!(v["memories"][0]["id"], first.as_str());
    let m = &v["memories"][0];
    for key in [
        "id",
        "space",
        "content",
        "confidence",
        "tags",
        "metadata",
        "occurred_at",
        "stored_at",
    ] {
        assert!(m.get(key).is_some(), "memory lacks {key}: {m}");
    }
    assert_eq!(m["tags"], json!(["ops"]));
    assert_eq!(m["metadata"], json!({"source": "chat"}));
    assert_eq!(m["session"], "s1");
    assert_eq!(m["occurred_at"], "2026-11-01T10:00:00.000Z");
    assert!(m.get("embedding").is_none());

    // A third memory reachable only through an explicit link.
    let third = remember(
        &s,
        None,
        json!({"content": "Bought a larger volume from the vendor"}),
    );
    let r = s.post(
        &format!("/api/v1/memories/{second}/links"),
        &json!({"target": third, "weight": 0.8}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["target"], third.as_str());

    let r = s.post(
        "/api/v1/memories/recall",
        &json!({"cue": {"text": "forty gigabytes"}, "limit": 10, "spread": {"depth": 2}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let results = v["results"].as_array().expect("results");
    assert_eq!(v["count"], results.len());
    assert_eq!(results[0]["memory"]["id"], second.as_str());
    assert_eq!(results[0]["via"]["kind"], "lexical");
    let linked = results
        .iter()
        .find(|r| r["memory"]["id"] == third.as_str())
        .unwrap_or_else(|| panic!("linked memory not recalled: {v}"));
    assert_eq!(linked["via"]["kind"], "edge");
    assert_eq!(linked["via"]["path"], json!([second, third]));
    for key in ["score", "activation", "confidence"] {
        assert!(results[0][key].is_number(), "{key}");
    }

    // Filters: tags.
    let r = s.post(
        "/api/v1/memories/recall",
        &json!({"cue": {"text": "atlas", "tags": ["ops"]}, "spread": {"depth": 0}}),
    );
    let v = r.json();
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["results"][0]["memory"]["id"], first.as_str());

    // Get, with and without embedding.
    let r = s.get(&format!("/api/v1/memories/{first}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["content"].as_str().map(|c| c.contains("disk")),
        Some(true)
    );

    // Consolidate answers with its report.
    let r = s.post("/api/v1/consolidate", &json!({"threshold": 0.5}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["examined"].is_number());

    // Forget really forgets: get, search and recall no longer see it.
    let r = s.req("DELETE", &format!("/api/v1/memories/{first}"), &[], b"");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s.get(&format!("/api/v1/memories/{first}")).status, 404);
    let r = s.req("DELETE", &format!("/api/v1/memories/{first}"), &[], b"");
    assert_eq!(r.status, 404);
    let v = s.get("/api/v1/memories/search?q=disk").json();
    assert_eq!(v["count"], 0, "{v}");

    // Spaces.
    let r = s.post(
        "/api/v1/spaces",
        &json!({"id": "team-a", "embedding_dim": 3}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["embedding_dim"], 3);
    assert_eq!(
        s.post("/api/v1/spaces", &json!({"id": "team-a"})).status,
        409
    );
    let v = s.get("/api/v1/spaces").json();
    let names: Vec<&str> = v["spaces"]
        .as_array()
        .expect("spaces")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        names.contains(&"default") && names.contains(&"team-a"),
        "{v}"
    );
    let id = remember(
        &s,
        Some("team-a"),
        json!({"content": "vector memory", "embedding": [1.0, 0.0, 0.0]}),
    );
    let r = s.post(
        "/api/v1/memories/recall?space=team-a",
        &json!({"cue": {"embedding": [0.9, 0.1, 0.0]}}),
    );
    assert_eq!(r.json()["results"][0]["via"]["kind"], "vector");
    let r = s.get(&format!(
        "/api/v1/memories/{id}?space=team-a&include=embedding"
    ));
    assert_eq!(r.json()["embedding"], json!([1.0, 0.0, 0.0]));
    let v = s.get("/api/v1/spaces/team-a").json();
    assert_eq!(v["memories"], 1);
    assert_eq!(
        s.req("DELETE", "/api/v1/spaces/team-a", &[], b"").status,
        204
    );
    assert_eq!(s.get("/api/v1/spaces/team-a").status, 404);
    assert_eq!(
        s.get(&format!("/api/v1/memories/{id}?space=team-a")).status,
        404
    );
}

/// Method, path, headers, body, expected status.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>, u16);

#[test]
fn bad_input_is_a_json_4xx_and_never_stops_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let r = s.post("/api/v1/spaces", &json!({"id": "dim3", "embedding_dim": 3}));
    assert_eq!(r.status, 201);
    let big = vec![b'x'; 2 * 1024 * 1024];
    let ct = [("content-type", "application/json")];
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            b"{not json".to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            br#"{"content": 5}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            br#"{"content": "x", "bogus": 1}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            br#"{"content": ""}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            br#"{"content": "x", "confidence": 7}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            br#"{"content": "x", "occurred_at": "yesterday"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            big.clone(),
            413,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            b"{\"content\": \"\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember?space=dim3".into(),
            ct.to_vec(),
            br#"{"content": "x", "embedding": [1, 2]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember?space=no-such-space".into(),
            ct.to_vec(),
            br#"{"content": "x"}"#.to_vec(),
            404,
        ),
        (
            "POST",
            "/api/v1/memories/remember?space=bad%20name!".into(),
            ct.to_vec(),
            br#"{"content": "x"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember?space=a".into(),
            vec![
                ("content-type", "application/json"),
                ("x-memory-space", "b"),
            ],
            br#"{"content": "x"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            br#"{"content": "x", "links": [{"target": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}]}"#.to_vec(),
            404,
        ),
        (
            "POST",
            "/api/v1/memories/recall".into(),
            ct.to_vec(),
            br#"{"cue": {"text": 1}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/recall".into(),
            ct.to_vec(),
            br#"{"cue": {}, "limit": 100000000}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/memories/recall".into(),
            ct.to_vec(),
            br#"{"limit": 3}"#.to_vec(),
            400,
        ),
        ("GET", "/api/v1/memories/search".into(), vec![], vec![], 400),
        (
            "GET",
            "/api/v1/memories/search?q=x&limit=-1".into(),
            vec![],
            vec![],
            400,
        ),
        (
            "GET",
            "/api/v1/memories/search?q=x&unknown=1".into(),
            vec![],
            vec![],
            400,
        ),
        (
            "GET",
            "/api/v1/memories/not-a-ulid".into(),
            vec![],
            vec![],
            400,
        ),
        (
            "GET",
            "/api/v1/memories/01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            vec![],
            vec![],
            404,
        ),
        (
            "GET",
            "/api/v1/memories/01ARZ3NDEKTSV4RRFFQ69G5FAV?include=everything".into(),
            vec![],
            vec![],
            400,
        ),
        (
            "DELETE",
            "/api/v1/memories/01ARZ3NDEKTSV4RRFFQ69G5FAV?space=missing".into(),
            vec![],
            vec![],
            404,
        ),
        (
            "POST",
            "/api/v1/memories/01ARZ3NDEKTSV4RRFFQ69G5FAV/links".into(),
            ct.to_vec(),
            br#"{"target": "nope"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/spaces".into(),
            ct.to_vec(),
            br#"{"id": "../etc"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/spaces".into(),
            ct.to_vec(),
            br#"{"id": "x", "embedding_dim": "three"}"#.to_vec(),
            400,
        ),
        (
            "DELETE",
            "/api/v1/spaces/default".into(),
            vec![],
            vec![],
            400,
        ),
        (
            "DELETE",
            "/api/v1/spaces/missing".into(),
            vec![],
            vec![],
            404,
        ),
        (
            "POST",
            "/api/v1/consolidate".into(),
            ct.to_vec(),
            br#"{"threshold": 2}"#.to_vec(),
            400,
        ),
        ("GET", "/no/such/route".into(), vec![], vec![], 404),
        (
            "PUT",
            "/api/v1/memories/remember".into(),
            ct.to_vec(),
            br#"{"content": "x"}"#.to_vec(),
            405,
        ),
    ];
    for (method, path, headers, body, want) in cases {
        let r = s.req(method, &path, &headers, &body);
        assert_eq!(
            r.status,
            want,
            "{method} {path} {:?}: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            r.text()
        );
        let v = r.json();
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{method} {path}: error shape {v}"
        );
    }
    // Non-ASCII header value.
    let r = try_request(
        s.http,
        "POST",
        "/api/v1/memories/remember",
        &[
            ("content-type", "application/json"),
            ("x-memory-space", "é"),
        ],
        br#"{"content": "x"}"#,
    )
    .expect("request");
    assert_eq!(r.status, 400, "{}", r.text());
    // A garbage request line is refused without hurting the server.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(s.http).expect("connect");
        c.write_all(b"\x00\x01GARBAGE\r\n\r\n").expect("write");
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    assert_eq!(s.get("/health/alive").status, 200);
    let r = s.post(
        "/api/v1/memories/remember",
        &json!({"content": "still fine"}),
    );
    assert_eq!(r.status, 201);
}

#[test]
fn spaces_are_isolated_on_every_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    for sp in ["alpha", "beta"] {
        assert_eq!(s.post("/api/v1/spaces", &json!({"id": sp})).status, 201);
    }
    let secret = remember(
        &s,
        Some("alpha"),
        json!({"content": "alpha secret launch code"}),
    );
    // Query parameter and header both select beta: nothing of alpha is visible.
    for (path, headers) in [
        (format!("/api/v1/memories/{secret}?space=beta"), vec![]),
        (
            format!("/api/v1/memories/{secret}"),
            vec![("x-memory-space", "beta")],
        ),
        (format!("/api/v1/memories/{secret}"), vec![]),
    ] {
        let r = s.req("GET", &path, &headers, b"");
        assert_eq!(r.status, 404, "{path} {headers:?}: {}", r.text());
        let r = s.req("DELETE", &path, &headers, b"");
        assert_eq!(r.status, 404, "DELETE {path} {headers:?}");
    }
    let v = s
        .req(
            "GET",
            "/api/v1/memories/search?q=secret",
            &[("x-memory-space", "beta")],
            b"",
        )
        .json();
    assert_eq!(v["count"], 0);
    let r = s.post(
        "/api/v1/memories/recall?space=beta",
        &json!({"cue": {"text": "secret launch"}}),
    );
    assert_eq!(r.json()["count"], 0);
    // A link from beta cannot reach alpha's memory.
    let mine = remember(&s, Some("beta"), json!({"content": "beta note"}));
    let r = s.post(
        &format!("/api/v1/memories/{mine}/links?space=beta"),
        &json!({"target": secret}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // Remember with a link into another space fails too.
    let r = s.post(
        "/api/v1/memories/remember?space=beta",
        &json!({"content": "x", "links": [{"target": secret}]}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // Header and query must agree.
    let r = s.req(
        "GET",
        &format!("/api/v1/memories/{secret}?space=alpha"),
        &[("x-memory-space", "beta")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "space_conflict");
    // Alpha still has it.
    let r = s.get(&format!("/api/v1/memories/{secret}?space=alpha"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["space"], "alpha");
}

#[test]
fn health_openapi_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    assert_eq!(s.get("/health/alive").json()["status"], "alive");
    let v = s.get("/health").json();
    assert_eq!(v["status"], "healthy");
    assert!(v["version"].is_string());
    remember(&s, None, json!({"content": "counted"}));
    let r = s.get("/api/v1/system/health");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["ready"], true);
    assert!(v["checks"].as_array().is_some_and(|c| c.len() >= 3), "{v}");
    assert!(v["wal"]["last_lsn"].as_u64().is_some_and(|l| l > 0), "{v}");
    assert!(v["wal"]["fsyncs"].as_u64().is_some_and(|l| l > 0), "{v}");
    let default = v["spaces"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == "default"))
        .expect("default space");
    assert_eq!(default["memories"], 1);
    assert!(default["tiers"]["warm"].is_number());
    assert_eq!(s.get("/health/ready").status, 200);

    let r = s.get("/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for p in [
        "/api/v1/memories/remember",
        "/api/v1/memories/search",
        "/api/v1/memories/recall",
        "/api/v1/memories/{id}",
        "/api/v1/memories/{id}/links",
        "/api/v1/spaces",
        "/api/v1/spaces/{space}",
        "/api/v1/consolidate",
        "/api/v1/system/health",
        "/health",
    ] {
        assert!(doc["paths"].get(p).is_some(), "OpenAPI lacks {p}");
    }

    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let text = r.text();
    for name in [
        "engram_http_requests_total{",
        "engram_http_request_duration_seconds_bucket{",
        "engram_wal_fsync_seconds_bucket",
        "engram_wal_records_total",
        "engram_rocksdb_bytes{kind=\"block_cache_usage\"}",
        "engram_rocksdb_bytes{kind=\"pending_compaction\"}",
        "engram_rocksdb_bytes{kind=\"sst\"}",
        "engram_space_memories{space=\"default\"} 1",
        "engram_space_tier_memories{space=\"default\",tier=\"warm\"}",
        "engram_space_vectors{space=\"default\",state=\"tombstones\"} 0",
        "engram_space_vectors{space=\"default\",state=\"unlinked\"} 0",
        "engram_ready 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    // The route label is the template, never the raw path.
    s.get("/api/v1/memories/01ARZ3NDEKTSV4RRFFQ69G5FAV");
    let text = s.get("/metrics").text();
    assert!(text.contains("route=\"/api/v1/memories/{id}\""));
    assert!(!text.contains("01ARZ3NDEKTSV4RRFFQ69G5FAV"));

    // promtool (Debian package `prometheus`, installed by ./x test) must accept it.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required (apt-get install prometheus; ./x test installs it)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
