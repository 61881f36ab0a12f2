//! Liveness under load, against the real binary: with recalls spreading
//! over a densely linked space and writers in the same space, the async
//! runtime stays free, so `/health/alive` answers at once (the StatefulSet's
//! liveness probe gives it 3 s).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, try_request};
use serde_json::{Value, json};

const WORDS: [&str; 10] = [
    "alpha", "river", "stone", "cloud", "engine", "garden", "signal", "market", "winter", "copper",
];

/// A small deterministic generator (no dependency for a test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }

    fn text(&mut self) -> String {
        (0..8)
            .map(|_| WORDS[self.next(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = try_request(
        s.http,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

#[test]
fn alive_answers_at_once_while_recalls_spread_over_a_dense_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Arc::new(Server::start(dir.path()));
    assert_eq!(
        post(&server, "/api/v1/spaces", &json!({"id": "dense"})).0,
        201
    );
    // 12 000 memories, each linked to 80 earlier ones: ~950 000 edges.
    let (n, k) = (12_000usize, 80usize);
    let mut rng = Lcg(7);
    let mut ids: Vec<String> = Vec::with_capacity(n);
    for _ in 0..k {
        let (st, v) = post(
            &server,
            "/api/v1/memories/remember?space=dense",
            &json!({"content": rng.text()}),
        );
        assert_eq!(st, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    while ids.len() < n {
        let batch: Vec<Value> = (0..64.min(n - ids.len()))
            .map(|_| {
                let links: Vec<Value> = (0..k)
                    .map(|_| json!({"target": ids[rng.next(ids.len())], "weight": 0.9}))
                    .collect();
                json!({"content": rng.text(), "links": links})
            })
            .collect();
        let made: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .chunks(8)
                .map(|chunk| {
                    let server = &server;
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|body| {
                                let (st, v) =
                                    post(server, "/api/v1/memories/remember?space=dense", body);
                                assert_eq!(st, 201, "{v}");
                                v["id"].as_str().expect("id").to_owned()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("writer"))
                .collect()
        });
        ids.extend(made);
    }

    // 12 recall clients spreading as far as the API allows, 4 writers.
    let stop = Arc::new(AtomicBool::new(false));
    let recalls = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for i in 0..16 {
        let (server, stop, recalls, writes, errors) = (
            Arc::clone(&server),
            Arc::clone(&stop),
            Arc::clone(&recalls),
            Arc::clone(&writes),
            Arc::clone(&errors),
        );
        load.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (path, body, counter) = if i < 12 {
                    (
                        "/api/v1/memories/recall?space=dense",
                        json!({"cue": {"text": "alpha river stone"}, "limit": 10,
                               "spread": {"depth": 4, "fan_out": 64, "threshold": 0.0}}),
                        &recalls,
                    )
                } else {
                    n += 1;
                    (
                        "/api/v1/memories/remember?space=dense",
                        json!({"content": format!("alpha note {i} {n}"), "session": format!("s{i}")}),
                        &writes,
                    )
                };
                let (st, v) = post(&server, path, &body);
                if st >= 300 {
                    errors.lock().expect("errors").push(format!("{st} {v}"));
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut alive = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let t = Instant::now();
        let r = try_request(server.http, "GET", "/health/alive", &[], b"").expect("alive");
        assert_eq!(r.status, 200);
        alive.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    let errors = errors.lock().expect("errors");
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    alive.sort();
    let p50 = alive[alive.len() / 2];
    let max = alive[alive.len() - 1];
    println!(
        "liveness: /health/alive p50 {p50:?} max {max:?} over {} probes, under {} recalls (depth 4, fan_out 64) and {} writes on {n} memories with ~{} edges",
        alive.len(),
        recalls.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        (n - k) * k
    );
    assert!(
        writes.load(Ordering::Relaxed) > 0 && recalls.load(Ordering::Relaxed) > 0,
        "the load ran"
    );
    // Generous bounds (a probe's own cost is ~1 ms): before the fix, writers
    // blocked the runtime's threads behind recalls' locks (p50 121 ms here,
    // 5.9 s on a 260k space).
    assert!(p50 < Duration::from_millis(50), "p50 {p50:?}");
    assert!(max < Duration::from_millis(1500), "max {max:?}");
}
