//! The replication endpoint's query strings and refusal bodies (`replication::protocol`): any
//! query string is refused naming a parameter or parsed into a query whose own query string
//! parses to the same; any status and body is no refusal, or a refusal of that status that reads
//! back from its own body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpleloggers::replication::protocol::{EndOffsetQuery, FetchQuery, FetchRefusal};

fuzz_target!(|input: (u16, &str)| {
    let (status, text) = input;
    match FetchQuery::parse(Some(text)) {
        Ok(q) => assert_eq!(FetchQuery::parse(Some(&q.to_query())), Ok(q)),
        Err(e) => assert!(e.0.contains("query parameter"), "{}", e.0),
    }
    match EndOffsetQuery::parse(Some(text)) {
        Ok(q) => assert_eq!(EndOffsetQuery::parse(Some(&q.to_query())), Ok(q)),
        Err(e) => assert!(e.0.contains("query parameter"), "{}", e.0),
    }
    if let Some(r) = FetchRefusal::parse(status, text.as_bytes()) {
        assert_eq!(r.status(), status);
        let body = serde_json::to_vec(&r.body()).expect("encodable");
        let back = FetchRefusal::parse(status, &body).expect("reads back");
        if !matches!(r, FetchRefusal::NotLeader { .. }) {
            assert_eq!(back, r);
        }
    }
});
