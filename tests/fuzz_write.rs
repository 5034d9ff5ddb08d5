//! Property tests (the CI side of `fuzz/ndjson`, see `docs/fuzzing.md`) for the write API's NDJSON
//! batch parser: a batch built from any messages parses back to exactly those messages (CRLF and
//! blank lines tolerated), and any body is either accepted with exactly one payload per non-blank
//! line or refused (400/413 with a JSON body) naming the first line that is not a non-empty JSON
//! string within `--max-message-bytes`, never panicking.

use bytes::Bytes;
use proptest::prelude::*;
use simpleloggers::node::{parse_ndjson, ApiError};

/// The largest message the tests allow.
const MAX: usize = 64;

/// How each line of a generated batch ends, and what blank lines surround it.
fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("\n"),
        Just("\r\n"),
        Just("\n\n"),
        Just("\n \t\n"),
        Just("\r\n\r\n")
    ]
}

/// Whether a line counts as blank for the parser (as the docs say: whitespace only).
fn blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The status and `error` text a refusal is answered with.
fn answer(err: ApiError) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let response = axum::response::IntoResponse::into_response(err);
    let status = response.status().as_u16();
    let body = rt
        .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
        .expect("body");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
    let error = json["error"].as_str().expect("an error field").to_string();
    (status, error)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any non-empty messages, JSON-encoded one per line, parse back to exactly themselves.
    #[test]
    fn batches_round_trip(
        messages in prop::collection::vec(("\\PC{1,16}", line_end()), 1..12),
        leading in prop::bool::ANY,
    ) {
        let mut body = String::new();
        if leading {
            body.push_str("\n  \r\n");
        }
        for (m, end) in &messages {
            body.push_str(&serde_json::to_string(m).expect("encodable"));
            body.push_str(end);
        }
        let parsed = parse_ndjson(body.as_bytes(), MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<Bytes> = messages.iter().map(|(m, _)| Bytes::from(m.clone())).collect();
        prop_assert_eq!(parsed, want);
    }

    /// Any bytes: accepted with one payload per non-blank line, each that line's JSON string; or
    /// refused naming the first line that is not one, every line before it being fine.
    #[test]
    fn any_body_is_accepted_exactly_or_refused_by_line(
        lines in prop::collection::vec(prop_oneof![
            3 => "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).expect("encodable").into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..20),
            1 => prop::sample::select(vec![
                "", " ", "\"\"", "null", "1", "{}", "[\"a\"]", "\"a\" \"b\"", "\"\\ud800\"", "\"\\u0000\"",
                "\u{feff}\"a\"", " \"spaced\" ", "\"a", "'a'", "\"\u{7f}\"",
            ]).prop_map(|s| s.as_bytes().to_vec()),
        ], 0..10),
        crlf in prop::bool::ANY,
    ) {
        let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let body = lines.join(sep);
        let split: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
        // The oracle: each line on its own, as the format defines it.
        let mut want = Vec::new();
        let mut first_bad = None;
        for (i, raw) in split.iter().enumerate() {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if blank(line) {
                continue;
            }
            match serde_json::from_slice::<String>(line) {
                Ok(m) if !m.is_empty() && m.len() <= MAX => want.push(Bytes::from(m)),
                Ok(m) => { first_bad = Some((i + 1, m.len() > MAX)); break; }
                Err(_) => { first_bad = Some((i + 1, false)); break; }
            }
        }
        match (parse_ndjson(&body, MAX), first_bad) {
            (Ok(got), None) => {
                prop_assert!(!want.is_empty());
                prop_assert_eq!(got, want);
            }
            (Err(err), None) => {
                prop_assert!(want.is_empty(), "refused a good batch: {err}");
                let (status, error) = answer(err);
                prop_assert_eq!(status, 400);
                prop_assert!(error.contains("empty batch"), "{error}");
            }
            (Err(err), Some((line, too_large))) => {
                let (status, error) = answer(err);
                prop_assert_eq!(status, if too_large { 413 } else { 400 });
                let prefix = format!("line {line}:");
                prop_assert!(error.starts_with(&prefix), "{} does not start with {}", error, prefix);
            }
            (Ok(got), Some(bad)) => prop_assert!(false, "accepted {got:?} despite line {bad:?}"),
        }
    }
}
