//! Recall quality on a synthetic dataset generated here: conversations in
//! which a fact is split across linked memories ("Kalo adopted a dog" … "Its
//! name is Rex"). The second half shares no word with the question, so BM25
//! alone cannot find it; spreading activation along temporal and explicit
//! edges should. Prints recall@k with and without spreading.

use std::collections::HashSet;

use engram_graph::{Cue, Graph, GraphConfig, LinkSpec, OpenOptions, RememberRequest, Spread};

const PEOPLE: usize = 60;
const K: usize = 5;

fn name(i: usize) -> String {
    const A: [&str; 8] = ["ka", "lo", "mi", "ra", "te", "vo", "shi", "de"];
    const B: [&str; 8] = ["ren", "dor", "lia", "mus", "vak", "nel", "pio", "zan"];
    let s = format!("{}{}", A[i % 8], B[(i / 8) % 8]);
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn remember(g: &Graph, content: String, session: Option<String>, links: Vec<LinkSpec>) -> String {
    let req = RememberRequest {
        content,
        session,
        links,
        ..RememberRequest::default()
    };
    g.remember("default", req).expect("remember").id
}

struct Query {
    text: String,
    relevant: HashSet<String>,
}

fn dataset(g: &Graph) -> Vec<Query> {
    const ANIMALS: [&str; 5] = ["dog", "cat", "parrot", "rabbit", "turtle"];
    const PETS: [&str; 6] = ["Rex", "Mochi", "Pixel", "Biscuit", "Nova", "Pepper"];
    const CITIES: [&str; 5] = ["Lisbon", "Oslo", "Kyoto", "Denver", "Porto"];
    let mut queries = Vec::new();
    for i in 0..PEOPLE {
        let p = name(i);
        let session = Some(format!("chat-{i}"));
        let adopted = remember(
            g,
            format!("{p} adopted a {} last spring", ANIMALS[i % 5]),
            session.clone(),
            vec![],
        );
        let pet = remember(
            g,
            format!("Its name is {} and it sleeps all day", PETS[i % 6]),
            session.clone(),
            vec![],
        );
        remember(
            g,
            format!("{p} said the weather was lovely today"),
            session.clone(),
            vec![],
        );
        let moved = remember(
            g,
            format!("{p} moved to {} for a new job", CITIES[i % 5]),
            None,
            vec![],
        );
        let flat = remember(
            g,
            "The apartment there has a balcony facing the river".to_string(),
            None,
            vec![LinkSpec {
                target: moved.clone(),
                weight: Some(0.9),
            }],
        );
        queries.push(Query {
            text: format!("What did {p} adopt?"),
            relevant: [adopted, pet].into(),
        });
        queries.push(Query {
            text: format!("Where has {p} moved?"),
            relevant: [moved, flat].into(),
        });
    }
    queries
}

fn recall_at_k(g: &Graph, queries: &[Query], spread: &Spread) -> f64 {
    let mut sum = 0.0;
    for q in queries {
        let cue = Cue {
            text: Some(q.text.clone()),
            ..Cue::default()
        };
        let got: HashSet<String> = g
            .recall("default", &cue, K, spread)
            .expect("recall")
            .into_iter()
            .map(|r| r.memory.id)
            .collect();
        sum += q.relevant.intersection(&got).count() as f64 / q.relevant.len() as f64;
    }
    sum / queries.len() as f64
}

#[test]
fn spreading_activation_surfaces_linked_memories_bm25_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (g, _) =
        Graph::open(dir.path(), GraphConfig::default(), OpenOptions::default()).expect("open");
    let queries = dataset(&g);
    let lexical_only = recall_at_k(
        &g,
        &queries,
        &Spread {
            depth: 0,
            ..Spread::default()
        },
    );
    let spreading = recall_at_k(&g, &queries, &Spread::default());
    println!(
        "recall quality ({} queries, {} memories): recall@{K} lexical only = {lexical_only:.3}, with spreading activation = {spreading:.3}",
        queries.len(),
        PEOPLE * 5
    );
    eprintln!("recall@{K}: lexical only {lexical_only:.3}, with spreading {spreading:.3}");
    assert!(
        lexical_only <= 0.55,
        "the linked halves should be lexically unreachable: {lexical_only}"
    );
    assert!(
        spreading >= lexical_only + 0.3,
        "spreading must surface linked memories: {spreading} vs {lexical_only}"
    );
}
