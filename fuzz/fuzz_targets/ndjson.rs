//! The write API's NDJSON batch parser (`node::parse_ndjson`): any body is either accepted with
//! exactly one payload per non-blank line, each that line's JSON string, or refused (400, or 413
//! for a message over the limit) naming the first line that is not a non-empty JSON string.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use simpleloggers::node::{parse_ndjson, ApiError};

const MAX: usize = 64;

fuzz_target!(|body: &[u8]| {
    let mut want = Vec::new();
    let mut first_bad = None;
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<String>(line) {
            Ok(m) if !m.is_empty() && m.len() <= MAX => want.push(Bytes::from(m)),
            Ok(m) => {
                first_bad = Some((i + 1, m.len() > MAX));
                break;
            }
            Err(_) => {
                first_bad = Some((i + 1, false));
                break;
            }
        }
    }
    match (parse_ndjson(&Bytes::copy_from_slice(body), MAX), first_bad) {
        (Ok(got), None) => assert_eq!(got, want),
        (Err(ApiError::BadRequest(m)), None) => assert!(want.is_empty() && m.contains("empty batch"), "{m}"),
        (Err(ApiError::BadRequest(m)), Some((line, false)))
        | (Err(ApiError::TooLarge(m)), Some((line, true))) => {
            assert!(m.starts_with(&format!("line {line}:")), "{m}")
        }
        (other, bad) => panic!("{other:?} for first bad line {bad:?}"),
    }
});
