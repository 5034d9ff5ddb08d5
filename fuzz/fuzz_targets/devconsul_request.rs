//! The dev Consul's request handling (`devconsul`'s router, in-process): any method, route,
//! path tail, query string and body gets one of Consul's statuses with a plain-text error body, a
//! 500 only with one of Consul's 500 messages, `Invalid wait time` only for a `wait` Go refuses,
//! and never a panic. Bodies asking for HTTP/TCP checks are skipped: they would probe the network.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use axum::{body::Body, Router};
use devconsul::{duration::parse_go_duration, CancellationToken, Config};
use http::Request;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

const ROUTES: &[&str] = &[
    "/v1/kv/",
    "/v1/txn",
    "/v1/session/create",
    "/v1/session/destroy/",
    "/v1/session/renew/",
    "/v1/session/info/",
    "/v1/session/node/",
    "/v1/session/list",
    "/v1/agent/service/register",
    "/v1/agent/service/deregister/",
    "/v1/agent/check/pass/",
    "/v1/agent/check/warn/",
    "/v1/agent/check/fail/",
    "/v1/agent/check/update/",
    "/v1/agent/check/deregister/",
    "/v1/agent/services",
    "/v1/agent/checks",
    "/v1/agent/self",
    "/v1/health/service/",
    "/v1/catalog/service/",
    "/v1/catalog/services",
    "/v1/catalog/nodes",
    "/v1/status/leader",
    "/v1/status/peers",
];
const METHODS: &[&str] = &["GET", "PUT", "DELETE", "POST", "OPTIONS"];
const CONSUL_500S: &[&str] = &[
    "strconv.ParseUint: parsing ",
    "missing session",
    "invalid session \"",
    "Invalid Behavior setting '",
    "Session TTL '",
    "Invalid Session TTL '",
    "CheckID \"",
    "No path to datacenter",
    "Missing check '",
    "Check '",
    "Missing node registration",
];

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    method: u8,
    route: u8,
    tail: &'a str,
    query: &'a str,
    body: &'a [u8],
}

fn server() -> &'static (tokio::runtime::Runtime, Router) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let router =
            devconsul::router_in_process(Config::ephemeral(), CancellationToken::new()).expect("router");
        (rt, router)
    })
}

fn probes_network(v: &Value) -> bool {
    match v {
        Value::Object(map) => map.iter().any(|(k, v)| {
            let folded: String = k
                .chars()
                .filter(|c| *c != '_')
                .flat_map(char::to_lowercase)
                .collect();
            folded == "http" || folded == "tcp" || probes_network(v)
        }),
        Value::Array(items) => items.iter().any(probes_network),
        _ => false,
    }
}

fuzz_target!(|input: Input| {
    if serde_json::from_slice::<Value>(input.body).is_ok_and(|v| probes_network(&v)) {
        return;
    }
    let method = METHODS[usize::from(input.method) % METHODS.len()];
    let path = format!(
        "{}{}",
        ROUTES[usize::from(input.route) % ROUTES.len()],
        input.tail
    );
    let uri = if input.query.is_empty() {
        path
    } else {
        format!("{path}?{}", input.query)
    };
    let Ok(request) = Request::builder()
        .method(method)
        .uri(&uri)
        .body(Body::from(input.body.to_vec()))
    else {
        return;
    };
    let (rt, router) = server();
    let (status, headers, body) = rt.block_on(async {
        let resp = router.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        (
            parts.status.as_u16(),
            parts.headers,
            axum::body::to_bytes(body, 8 << 20).await.expect("body"),
        )
    });
    let text = String::from_utf8_lossy(&body);
    assert!(headers.contains_key("X-Consul-Default-ACL-Policy"));
    assert!(
        matches!(status, 200 | 400 | 404 | 405 | 409 | 413 | 500),
        "{status}: {text}"
    );
    if status >= 400 && status != 409 && !body.is_empty() {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("text/plain"), "{status} {ct:?}: {text}");
    }
    if status == 500 {
        assert!(CONSUL_500S.iter().any(|p| text.starts_with(p)), "500: {text}");
    }
    if text == "Invalid wait time" {
        let wait = url::form_urlencoded::parse(uri.split_once('?').map_or("", |(_, q)| q).as_bytes())
            .find(|(k, _)| k == "wait")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        assert!(parse_go_duration(&wait).is_err(), "valid wait {wait:?} refused");
    }
});
