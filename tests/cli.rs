//! The memory commands of the command-line tool against the real `engram`
//! binary: `remember` with `--session`, `--metadata`, `--occurred-at` and
//! `--dedupe`; `recall` with `--tag`, `--from` and `--to`; `get`, `search`
//! and `link`; `--space`; `--json` output; `--include-concepts`; the
//! `no memories matched` message
//! of an empty result; and the usage errors of bad flag values.

mod common;

use std::collections::BTreeSet;

use common::{Server, run_cli};
use serde_json::{Value, json};

/// Runs `engram ARGS --url URL`, asserts exit 0, returns (stdout, stderr).
fn ok(url: &str, args: &[&str]) -> (String, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--url", url]);
    let (code, out, err) = run_cli(&all, &[]);
    assert_eq!(code, 0, "engram {args:?}: {out}{err}");
    (out, err)
}

/// Runs `engram ARGS --json --url URL` and parses its stdout.
fn ok_json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (out, _) = ok(url, &all);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("engram {args:?} --json printed no JSON ({e}): {out}"))
}

/// `engram remember ARGS`: the id it printed.
fn remember(url: &str, args: &[&str]) -> String {
    let mut all = vec!["remember"];
    all.extend_from_slice(args);
    let (out, _) = ok(url, &all);
    let id = out.trim().to_owned();
    assert_eq!(id.len(), 26, "engram {all:?} printed no id: {out}");
    id
}

/// The ids of `engram recall CUE EXTRA --json`.
fn recall(url: &str, cue: &str, extra: &[&str]) -> BTreeSet<String> {
    let mut all = vec!["recall", cue];
    all.extend_from_slice(extra);
    let v = ok_json(url, &all);
    let ids: BTreeSet<String> = v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("engram {all:?}: no results: {v}"))
        .iter()
        .map(|r| r["memory"]["id"].as_str().expect("memory id").to_owned())
        .collect();
    assert_eq!(v["count"], ids.len(), "{v}");
    ids
}

/// A set of ids.
fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| String::from(*s)).collect()
}

/// `engram ARGS` must be a usage error (exit 2) whose message holds `want`.
fn usage_error(args: &[&str], want: &str) {
    // Nothing listens there: the value is refused before any request.
    let mut all = args.to_vec();
    all.extend_from_slice(&["--url", "http://127.0.0.1:9"]);
    let (code, out, err) = run_cli(&all, &[]);
    assert_eq!(code, 2, "engram {args:?}: {out}{err}");
    assert!(
        err.contains(want),
        "engram {args:?} should say {want:?}: {err}"
    );
}

#[test]
fn memory_commands_drive_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let url = format!("http://{}", s.http);
    let url = url.as_str();

    // remember --session --metadata --occurred-at (a date: midnight UTC);
    // get shows all of it.
    let v = ok_json(
        url,
        &[
            "remember",
            "the kettle boiled twice",
            "--tag",
            "kitchen",
            "--session",
            "chat-42",
            "--metadata",
            r#"{"source": "chat", "turn": 3}"#,
            "--occurred-at",
            "2025-03-04",
        ],
    );
    assert_eq!(v["deduplicated"], false, "{v}");
    let kettle = v["id"].as_str().expect("id").to_owned();
    let m = ok_json(url, &["get", &kettle]);
    assert_eq!(m["id"], kettle.as_str());
    assert_eq!(m["content"], "the kettle boiled twice");
    assert_eq!(m["tags"], json!(["kitchen"]));
    assert_eq!(m["session"], "chat-42");
    assert_eq!(m["metadata"], json!({"source": "chat", "turn": 3}));
    assert_eq!(m["occurred_at"], "2025-03-04T00:00:00.000Z");
    let (out, _) = ok(url, &["get", &kettle]);
    for want in [
        kettle.as_str(),
        "the kettle boiled twice",
        "kitchen",
        "chat-42",
        r#""source":"chat""#,
        "2025-03-04T00:00:00.000Z",
    ] {
        assert!(
            out.contains(want),
            "get without --json lacks {want:?}:\n{out}"
        );
    }
    // The next memory of the session is linked to it in order.
    let tea = remember(url, &["the tea steeped too long", "--session", "chat-42"]);
    let v = ok_json(url, &["recall", "kettle"]);
    let hit = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["memory"]["id"] == tea.as_str())
        .unwrap_or_else(|| panic!("the session's next memory is not recalled: {v}"));
    assert_eq!(hit["via"]["kind"], "edge", "{v}");

    // remember --dedupe: identical content gives the same id again.
    let first = remember(url, &["the porch light is broken", "--dedupe"]);
    let (again, err) = ok(url, &["remember", "the porch light is broken", "--dedupe"]);
    assert_eq!(again.trim(), first);
    assert!(err.contains("stored already"), "{err}");
    let v = ok_json(url, &["remember", "the porch light is broken", "--dedupe"]);
    assert_eq!(v["id"], first.as_str());
    assert_eq!(v["deduplicated"], true);
    let other = remember(url, &["the porch light is broken"]);
    assert_ne!(other, first, "without --dedupe the content is stored again");

    // recall --tag (repeatable: every tag) --from --to.
    let apples = remember(
        url,
        &[
            "orchard apples are ripe",
            "--tag",
            "fruit",
            "--occurred-at",
            "2020-01-15T18:00:00Z",
        ],
    );
    let pears = remember(
        url,
        &[
            "orchard pears are ripe",
            "--tag",
            "fruit",
            "--tag",
            "pear",
            "--occurred-at",
            "2024-06-01T10:00:00+02:00",
        ],
    );
    let plums = remember(
        url,
        &["orchard plums are ripe", "--occurred-at", "2024-06-01"],
    );
    assert_eq!(recall(url, "orchard", &[]), ids(&[&apples, &pears, &plums]));
    assert_eq!(
        recall(url, "orchard", &["--tag", "fruit"]),
        ids(&[&apples, &pears])
    );
    assert_eq!(
        recall(url, "orchard", &["--tag", "fruit", "--tag", "pear"]),
        ids(&[&pears])
    );
    assert_eq!(
        recall(url, "orchard", &["--from", "2024-01-01"]),
        ids(&[&pears, &plums])
    );
    // A date as --to includes that whole day (apples: 18:00 UTC).
    assert_eq!(
        recall(url, "orchard", &["--to", "2020-01-15"]),
        ids(&[&apples])
    );
    // 10:00+02:00 is 08:00 UTC; plums occurred at midnight UTC.
    assert_eq!(
        recall(
            url,
            "orchard",
            &[
                "--from",
                "2024-06-01T08:00:00Z",
                "--to",
                "2024-06-01T08:00:00Z"
            ]
        ),
        ids(&[&pears])
    );
    assert_eq!(
        recall(url, "orchard", &["--to", "2020-01-14T23:59:59.999Z"]),
        ids(&[])
    );
    let (out, _) = ok(url, &["recall", "orchard", "--tag", "pear"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains(&pears) && out.contains("orchard pears are ripe"),
        "{out}"
    );

    // An empty recall says so on stderr and prints nothing on stdout; with
    // --json it prints the server's empty answer.
    for args in [
        &["recall", "orchard", "--to", "2020-01-14"][..],
        &["recall", "xylophone"][..],
    ] {
        let (out, err) = ok(url, args);
        assert!(out.is_empty(), "engram {args:?}: {out}");
        assert!(
            err.contains("no memories matched"),
            "engram {args:?}: {err}"
        );
    }
    let v = ok_json(url, &["recall", "xylophone"]);
    assert_eq!(v, json!({"results": [], "count": 0}));

    // search: lexical matches, --limit, readable lines best first.
    let v = ok_json(url, &["search", "orchard"]);
    assert_eq!(v["count"], 3, "{v}");
    let found: BTreeSet<String> = v["memories"]
        .as_array()
        .expect("memories")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(found, ids(&[&apples, &pears, &plums]));
    let (out, _) = ok(url, &["search", "orchard plums"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with(&format!("{plums}\t")), "{out}");
    assert!(lines[0].contains("orchard plums are ripe"), "{out}");
    let (out, _) = ok(url, &["search", "orchard", "--limit", "1"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (out, err) = ok(url, &["search", "xylophone"]);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("no memories matched"), "{err}");

    // link: the target becomes reachable from the source.
    let walrus = remember(url, &["the walrus sleeps on the ice"]);
    let penguin = remember(url, &["a penguin colony nests by the shore"]);
    assert!(!recall(url, "walrus", &[]).contains(&penguin));
    let v = ok_json(url, &["link", &walrus, &penguin, "--weight", "0.5"]);
    assert_eq!(
        v,
        json!({"source": &walrus, "target": &penguin, "weight": 0.5})
    );
    let v = ok_json(url, &["recall", "walrus"]);
    let hit = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["memory"]["id"] == penguin.as_str())
        .unwrap_or_else(|| panic!("the linked memory is not recalled: {v}"));
    assert_eq!(hit["via"]["kind"], "edge", "{v}");
    assert_eq!(hit["via"]["path"], json!([&walrus, &penguin]), "{v}");
    let (out, err) = ok(url, &["link", &penguin, &walrus]);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("linked {penguin} -> {walrus} (weight 0.9)")),
        "{err}"
    );
    // A server error (an unknown memory) exits 1 with the server's code.
    let (code, _, err) = run_cli(
        &["link", &walrus, "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--url", url],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not_found"), "{err}");

    // --space reaches another space with every command.
    ok(url, &["space", "create", "garden"]);
    let kiwi = remember(url, &["orchard kiwis grow here", "--space", "garden"]);
    let gnome = remember(url, &["a gnome guards the pond", "--space", "garden"]);
    assert_eq!(
        recall(url, "orchard", &["--space", "garden"]),
        ids(&[&kiwi])
    );
    let v = ok_json(url, &["search", "orchard", "--space", "garden"]);
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["memories"][0]["id"], kiwi.as_str());
    let v = ok_json(url, &["get", &kiwi, "--space", "garden"]);
    assert_eq!(v["space"], "garden");
    let v = ok_json(url, &["link", &kiwi, &gnome, "--space", "garden"]);
    assert_eq!(v["weight"], 0.9);
    let (code, _, err) = run_cli(&["get", &kiwi, "--url", url], &[]);
    assert_eq!(
        code, 1,
        "a memory of garden is not in the default space: {err}"
    );
    assert!(err.contains("memory_not_found"), "{err}");

    // Concepts from consolidation: only with --include-concepts.
    let porto = [
        remember(url, &["Maya booked a flight to Porto", "--space", "garden"]),
        remember(
            url,
            &["Maya booked the flight to Porto", "--space", "garden"],
        ),
    ];
    ok(
        url,
        &["consolidate", "--threshold", "0.5", "--space", "garden"],
    );
    assert_eq!(
        recall(url, "porto flight", &["--space", "garden"]),
        ids(&[&porto[0], &porto[1]])
    );
    let with = recall(
        url,
        "porto flight",
        &["--space", "garden", "--include-concepts"],
    );
    assert_eq!(with.len(), 3, "the concept too: {with:?}");
    let v = ok_json(url, &["search", "porto", "--space", "garden"]);
    assert_eq!(v["count"], 2, "{v}");
    let v = ok_json(
        url,
        &["search", "porto", "--space", "garden", "--include-concepts"],
    );
    assert_eq!(v["count"], 3, "{v}");
}

#[test]
fn bad_flag_values_are_usage_errors_that_say_what_is_expected() {
    usage_error(&["remember", "x", "--metadata", "not json"], "JSON object");
    usage_error(&["remember", "x", "--metadata", "[1, 2]"], "JSON object");
    usage_error(&["remember", "x", "--occurred-at", "yesterday"], "RFC 3339");
    usage_error(
        &["remember", "x", "--occurred-at", "2026-01-31T12:00:00"],
        "no offset",
    );
    usage_error(&["remember", "x", "--occurred-at", "1969-12-31"], "1970");
    usage_error(&["recall", "x", "--from", "last week"], "RFC 3339");
    usage_error(&["recall", "x", "--to", "2026-02-30"], "no such date");
    usage_error(&["link", "a", "b", "--weight", "heavy"], "heavy");
    usage_error(&["search", "x", "--limit", "ten"], "--limit");
}
