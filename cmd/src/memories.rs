//! The memory commands of the command-line tool: `remember`, `recall`,
//! `get`, `search` and `link`, with their flags, the HTTP calls they make
//! and what they print.
//!
//! `--json` prints the server's JSON answer unchanged (pretty-printed).
//! Without it the output is for people; a `recall` or `search` that finds
//! nothing prints [`NO_MATCH`] on stderr and nothing on stdout (so a script
//! reading results line by line sees none), and exits 0.
//!
//! Times (`--occurred-at`, `--from`, `--to`) are RFC 3339 with an offset, or
//! a plain date: midnight UTC, except for `--to`, where a date means the
//! last millisecond of that day so that the day is included. They are
//! checked here and sent as RFC 3339 UTC with milliseconds, the precision
//! the server stores.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use hyper::Method;
use serde_json::{Map, Value, json};

use crate::SpaceTarget;
use crate::client::{Client, encode};

/// What a `recall` or `search` without results prints on stderr.
pub const NO_MATCH: &str = "no memories matched";

/// `engram remember` flags.
#[derive(Debug, Args)]
pub struct RememberArgs {
    /// The memory's text.
    text: String,
    /// Tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Confidence in [0, 1].
    #[arg(long)]
    confidence: Option<f32>,
    /// Conversation or session id; the memories of a session are linked in
    /// the order they are stored.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// A JSON object stored with the memory, e.g. '{"source": "chat"}'.
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    metadata: Option<Map<String, Value>>,
    /// When it happened: RFC 3339 with an offset (2026-01-31T12:00:00Z,
    /// 2026-01-31T17:00:00+05:00) or a date (2026-01-31: midnight UTC).
    /// Default: now.
    #[arg(long, value_name = "TIME", value_parser = time_start)]
    occurred_at: Option<String>,
    /// When a memory with identical content exists, store nothing and print
    /// its id.
    #[arg(long)]
    dedupe: bool,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) target: SpaceTarget,
}

/// `engram recall` flags.
#[derive(Debug, Args)]
pub struct RecallArgs {
    /// The cue.
    cue: String,
    /// Most results.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Only memories carrying this tag (repeatable: every tag given).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only memories that occurred at or after this time: RFC 3339 with an
    /// offset, or a date (its midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = time_start)]
    from: Option<String>,
    /// Only memories that occurred at or before this time: RFC 3339 with an
    /// offset, or a date (through its last millisecond, UTC).
    #[arg(long, value_name = "TIME", value_parser = time_end)]
    to: Option<String>,
    /// Return concepts made by consolidation too (default: episodes only).
    #[arg(long)]
    include_concepts: bool,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) target: SpaceTarget,
}

/// `engram get` flags.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Memory id.
    id: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) target: SpaceTarget,
}

/// `engram search` flags.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Text to match.
    text: String,
    /// Most results.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Return concepts made by consolidation too (default: episodes only).
    #[arg(long)]
    include_concepts: bool,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) target: SpaceTarget,
}

/// `engram link` flags.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Id of the memory the association starts from.
    from: String,
    /// Id of the memory it leads to (same space).
    to: String,
    /// Association strength in (0, 1] (default 0.9).
    #[arg(long)]
    weight: Option<f32>,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) target: SpaceTarget,
}

/// `engram remember`: prints the memory's id (with `--dedupe`, the existing
/// one's when identical content is stored already).
pub async fn remember(c: &Client, a: RememberArgs) -> Result<ExitCode> {
    let mut body = json!({"content": a.text, "tags": a.tags});
    if let Some(conf) = a.confidence {
        body["confidence"] = json!(conf);
    }
    if let Some(session) = a.session {
        body["session"] = json!(session);
    }
    if let Some(metadata) = a.metadata {
        body["metadata"] = Value::Object(metadata);
    }
    if let Some(at) = a.occurred_at {
        body["occurred_at"] = json!(at);
    }
    if a.dedupe {
        body["dedupe"] = json!(true);
    }
    let path = format!("/api/v1/memories/remember{}", query(&[], &a.target));
    let v = c.call(Method::POST, &path, Some(&body)).await?;
    if a.json {
        print_json(&v)?;
    } else {
        let id = v["id"].as_str().unwrap_or_default();
        println!("{id}");
        if v["deduplicated"].as_bool() == Some(true) {
            eprintln!("identical content is stored already as {id}; nothing new stored");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `engram recall`: one `score<TAB>via<TAB>id<TAB>content` line per result.
pub async fn recall(c: &Client, a: RecallArgs) -> Result<ExitCode> {
    let mut cue = json!({"text": a.cue});
    if !a.tags.is_empty() {
        cue["tags"] = json!(a.tags);
    }
    if let Some(from) = a.from {
        cue["from"] = json!(from);
    }
    if let Some(to) = a.to {
        cue["to"] = json!(to);
    }
    if a.include_concepts {
        cue["include_concepts"] = json!(true);
    }
    let body = json!({"cue": cue, "limit": a.limit});
    let path = format!("/api/v1/memories/recall{}", query(&[], &a.target));
    let v = c.call(Method::POST, &path, Some(&body)).await?;
    if a.json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let results = v["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if results.is_empty() {
        eprintln!("{NO_MATCH}");
    }
    for r in results {
        println!(
            "{:.3}\t{}\t{}\t{}",
            r["score"].as_f64().unwrap_or(0.0),
            r["via"]["kind"].as_str().unwrap_or(""),
            r["memory"]["id"].as_str().unwrap_or(""),
            r["memory"]["content"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `engram get`: one `field  value` line per field of the memory.
pub async fn get(c: &Client, a: GetArgs) -> Result<ExitCode> {
    let path = format!(
        "/api/v1/memories/{}{}",
        encode(&a.id),
        query(&[], &a.target)
    );
    let v = c.call(Method::GET, &path, None).await?;
    if a.json {
        print_json(&v)?;
    } else {
        print_memory(&v);
    }
    Ok(ExitCode::SUCCESS)
}

/// `engram search`: one `id<TAB>occurred_at<TAB>content` line per match,
/// best first.
pub async fn search(c: &Client, a: SearchArgs) -> Result<ExitCode> {
    let mut pairs = vec![("q", a.text), ("limit", a.limit.to_string())];
    if a.include_concepts {
        pairs.push(("include_concepts", "true".to_owned()));
    }
    let path = format!("/api/v1/memories/search{}", query(&pairs, &a.target));
    let v = c.call(Method::GET, &path, None).await?;
    if a.json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let memories = v["memories"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if memories.is_empty() {
        eprintln!("{NO_MATCH}");
    }
    for m in memories {
        println!(
            "{}\t{}\t{}",
            m["id"].as_str().unwrap_or(""),
            m["occurred_at"].as_str().unwrap_or(""),
            m["content"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `engram link`: stores an association and says so on stderr.
pub async fn link(c: &Client, a: LinkArgs) -> Result<ExitCode> {
    let mut body = json!({"target": a.to});
    if let Some(w) = a.weight {
        body["weight"] = json!(w);
    }
    let path = format!(
        "/api/v1/memories/{}/links{}",
        encode(&a.from),
        query(&[], &a.target)
    );
    let v = c.call(Method::POST, &path, Some(&body)).await?;
    if a.json {
        print_json(&v)?;
    } else {
        eprintln!(
            "linked {} -> {} (weight {})",
            v["source"].as_str().unwrap_or(""),
            v["target"].as_str().unwrap_or(""),
            v["weight"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a server answer as pretty JSON on stdout.
fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints a memory (`MemoryOut`) as aligned `field  value` lines; the
/// session and the last access only when present.
fn print_memory(m: &Value) {
    let text = |field: &str| m[field].as_str().unwrap_or("").to_owned();
    let tags: Vec<&str> = m["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut rows: Vec<(&str, String)> = vec![
        ("id", text("id")),
        ("space", text("space")),
        ("content", text("content")),
        ("confidence", m["confidence"].to_string()),
        ("tags", tags.join(", ")),
    ];
    if let Some(session) = m["session"].as_str() {
        rows.push(("session", session.to_owned()));
    }
    rows.push(("metadata", m["metadata"].to_string()));
    rows.push(("occurred_at", text("occurred_at")));
    rows.push(("stored_at", text("stored_at")));
    rows.push(("access_count", m["access_count"].to_string()));
    if let Some(at) = m["last_accessed_at"].as_str() {
        rows.push(("last_accessed_at", at.to_owned()));
    }
    rows.push(("concept", m["concept"].to_string()));
    for (field, value) in rows {
        println!("{field:<17}{value}");
    }
}

/// The query string of a request: `pairs` with their values
/// percent-encoded, then `space=` when a space was given; empty when there
/// is nothing to send.
fn query(pairs: &[(&str, String)], target: &SpaceTarget) -> String {
    let mut parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if let Some(space) = &target.space {
        parts.push(format!("space={}", encode(space)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Parses `--metadata`: a JSON object.
pub fn json_object(s: &str) -> Result<Map<String, Value>, String> {
    const EXPECTED: &str = r#"expected a JSON object, e.g. '{"source": "chat"}'"#;
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            Err(format!("{EXPECTED}, not {kind}"))
        }
        Err(e) => Err(format!("{EXPECTED} ({e})")),
    }
}

/// The time forms `--occurred-at`, `--from` and `--to` accept, for their
/// error messages.
const TIME_FORMS: &str = "expected an RFC 3339 time with an offset (2026-01-31T12:00:00Z, 2026-01-31T17:00:00+05:00) or a date (2026-01-31)";

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Parses `--occurred-at` and `--from`: an RFC 3339 time with an offset
/// (`T`, `t` or a space between date and time; `Z`, `z` or `±hh:mm`), or a
/// plain date meaning its midnight UTC. Returns RFC 3339 UTC with
/// milliseconds (digits past the millisecond are dropped, as the server
/// does).
pub fn time_start(s: &str) -> Result<String, String> {
    parse_time(s, false).map(format_ms)
}

/// Parses `--to`: like [`time_start`], but a plain date means the last
/// millisecond of that day (UTC), so `--to 2026-01-31` includes that day.
pub fn time_end(s: &str) -> Result<String, String> {
    parse_time(s, true).map(format_ms)
}

/// RFC 3339 UTC with milliseconds of `ms` since the epoch (not negative).
fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the epoch of `s` (see [`time_start`]);
/// `end_of_day` moves a plain date to its last millisecond.
fn parse_time(s: &str, end_of_day: bool) -> Result<i64, String> {
    let b = s.trim().as_bytes();
    let date = b.get(..10).ok_or_else(|| TIME_FORMS.to_owned())?;
    let day_ms = parse_date(date)? * DAY_MS;
    let Some((&sep, rest)) = b[10..].split_first() else {
        return in_range(day_ms + if end_of_day { DAY_MS - 1 } else { 0 });
    };
    if !matches!(sep, b'T' | b't' | b' ') {
        return Err(TIME_FORMS.to_owned());
    }
    let (clock, offset_s) = split_offset(rest)?;
    in_range(day_ms + parse_clock(clock)? - offset_s * 1000)
}

/// The days since 1970-01-01 of `YYYY-MM-DD`.
fn parse_date(b: &[u8]) -> Result<i64, String> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(TIME_FORMS.to_owned());
    }
    let (y, m, d) = (number(&b[..4])?, number(&b[5..7])?, number(&b[8..])?);
    if !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) {
        return Err(format!("{TIME_FORMS}: no such date"));
    }
    Ok(days_from_civil(y, m, d))
}

/// Splits `HH:MM:SS[.fraction]` from the offset after it (`Z`, `z` or
/// `±hh:mm`); the offset in seconds east of UTC.
fn split_offset(b: &[u8]) -> Result<(&[u8], i64), String> {
    if let Some((b'Z' | b'z', clock)) = b.split_last() {
        return Ok((clock, 0));
    }
    let n = b.len();
    if n >= 6 && (b[n - 6] == b'+' || b[n - 6] == b'-') && b[n - 3] == b':' {
        let (hh, mm) = (number(&b[n - 5..n - 3])?, number(&b[n - 2..])?);
        if hh > 23 || mm > 59 {
            return Err(format!("{TIME_FORMS}: the offset is out of range"));
        }
        let east = hh * 3600 + mm * 60;
        return Ok((&b[..n - 6], if b[n - 6] == b'-' { -east } else { east }));
    }
    Err(format!(
        "{TIME_FORMS}: the time has no offset (Z for UTC, or +hh:mm / -hh:mm)"
    ))
}

/// Milliseconds into the day of `HH:MM:SS[.fraction]`; a leap second
/// counts as :59 (as the server does).
fn parse_clock(b: &[u8]) -> Result<i64, String> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return Err(TIME_FORMS.to_owned());
    }
    let (h, m, sec) = (number(&b[..2])?, number(&b[3..5])?, number(&b[6..8])?);
    if h > 23 || m > 59 || sec > 60 {
        return Err(format!("{TIME_FORMS}: the time of day is out of range"));
    }
    let mut ms = 0;
    match &b[8..] {
        [] => {}
        [b'.', fraction @ ..]
            if !fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit) =>
        {
            let mut scale = 100;
            for d in fraction.iter().take(3) {
                ms += i64::from(d - b'0') * scale;
                scale /= 10;
            }
        }
        _ => return Err(TIME_FORMS.to_owned()),
    }
    Ok(((h * 60 + m) * 60 + sec.min(59)) * 1000 + ms)
}

/// The value of a non-empty run of ASCII digits.
fn number(b: &[u8]) -> Result<i64, String> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Err(TIME_FORMS.to_owned());
    }
    Ok(b.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
}

/// `ms` when it lies within 1970-01-01T00:00:00Z..=9999-12-31T23:59:59.999Z
/// (what the server accepts).
fn in_range(ms: i64) -> Result<i64, String> {
    if ms < 0 {
        Err("times before 1970-01-01T00:00:00Z are not supported".to_owned())
    } else if ms >= days_from_civil(10_000, 1, 1) * DAY_MS {
        Err("times after 9999-12-31T23:59:59.999Z are not supported".to_owned())
    } else {
        Ok(ms)
    }
}

/// Days in month `m` (1–12) of year `y` (proleptic Gregorian).
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (m + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;

    fn ok(s: &str) -> String {
        time_start(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(
            days_from_civil(10_000, 1, 1) * DAY_MS / 1000,
            253_402_300_800
        );
    }

    #[test]
    fn times_with_an_offset_become_utc_milliseconds() {
        assert_eq!(ok("2026-01-31T12:00:00Z"), "2026-01-31T12:00:00.000Z");
        assert_eq!(
            ok(" 2026-01-31T17:00:00+05:00 "),
            "2026-01-31T12:00:00.000Z"
        );
        assert_eq!(
            ok("2026-01-31t07:30:00.1239-04:30"),
            "2026-01-31T12:00:00.123Z"
        );
        assert_eq!(ok("2026-01-01T01:00:00+02:00"), "2025-12-31T23:00:00.000Z");
        assert_eq!(ok("2024-02-29 10:00:00.5z"), "2024-02-29T10:00:00.500Z");
        assert_eq!(ok("2016-12-31T23:59:60Z"), "2016-12-31T23:59:59.000Z");
        assert_eq!(ok("1969-12-31T23:00:00-02:00"), "1970-01-01T01:00:00.000Z");
        assert_eq!(ok("1970-01-01T00:00:00Z"), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_plain_date_is_its_midnight_or_for_to_its_last_millisecond() {
        assert_eq!(ok("2026-01-31"), "2026-01-31T00:00:00.000Z");
        assert_eq!(
            time_end("2026-01-31"),
            Ok("2026-01-31T23:59:59.999Z".to_owned())
        );
        assert_eq!(
            time_end("2026-01-31T10:00:00Z"),
            Ok("2026-01-31T10:00:00.000Z".to_owned())
        );
        assert_eq!(ok("2024-02-29"), "2024-02-29T00:00:00.000Z");
    }

    #[test]
    fn bad_times_say_what_is_expected() {
        for bad in [
            "",
            "yesterday",
            "20260131",
            "2026-1-31",
            "2026-01-31T12:00:00",
            "2026-01-31T12:00Z",
            "2026-01-31T12:00:00.Z",
            "2026-01-31T12:00:00ZZ",
            "2026-01-31T12:00:00 Z",
            "2026-01-31X12:00:00Z",
            "2026-01-31T24:00:00Z",
            "2026-01-31T12:60:00Z",
            "2026-01-31T12:00:00+24:00",
            "2026-01-31T12:00:00+05:60",
            "2026-02-29",
            "2023-02-29T00:00:00Z",
            "2026-04-31",
            "2026-13-01",
            "2026-00-10",
            "2026-01-00",
            "２０２６-01-31",
            "2026-01-31T１２:00:00Z",
        ] {
            let e = time_start(bad).expect_err(bad);
            assert!(e.contains("RFC 3339"), "{bad:?}: {e}");
        }
        let e = time_start("1969-12-31").expect_err("1969");
        assert!(e.contains("before 1970"), "{e}");
        let e = time_start("9999-12-31T23:00:00-01:00").expect_err("10000");
        assert!(e.contains("after 9999"), "{e}");
        assert_eq!(
            time_end("9999-12-31"),
            Ok("9999-12-31T23:59:59.999Z".to_owned())
        );
    }

    #[test]
    fn metadata_must_be_a_json_object() {
        let m = json_object(r#"{"source": "chat", "turn": 3}"#).expect("an object");
        assert_eq!(m["source"], "chat");
        assert_eq!(m["turn"], 3);
        for bad in ["not json", "[1, 2]", "\"text\"", "3", "null", ""] {
            let e = json_object(bad).expect_err(bad);
            assert!(e.contains("JSON object"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn query_strings_encode_values_and_name_the_space() {
        let none = SpaceTarget {
            space: None,
            target: Target { url: None },
        };
        assert_eq!(query(&[], &none), "");
        let pairs = [("q", "a b&c".to_owned()), ("limit", "3".to_owned())];
        assert_eq!(query(&pairs, &none), "?q=a%20b%26c&limit=3");
        let team = SpaceTarget {
            space: Some("team-a".to_owned()),
            target: Target { url: None },
        };
        assert_eq!(query(&[], &team), "?space=team-a");
        assert_eq!(query(&pairs, &team), "?q=a%20b%26c&limit=3&space=team-a");
    }
}
