//! The replication tests' cuttable forward proxy (`tests/support/proxy.rs`) on its own, with
//! reqwest sending through it as a follower does (`Proxy::all`): requests and answers pass
//! unchanged, an answer streams through while its origin is still writing it, a cut closes
//! open connections and refuses new ones until restored, and a partition holds requests to one
//! destination only, until healed.

#[path = "support/proxy.rs"]
mod proxy;

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::HeaderMap,
    routing::{get, post},
    Router,
};
use proxy::Proxy;
use tokio::{net::TcpListener, sync::Semaphore};

/// The origin: `/echo` answers what it received, `/stream` writes `first` at once and `second`
/// only once the test releases it (a long poll that answers late).
struct Origin {
    url: String,
    release: Arc<Semaphore>,
}

async fn origin() -> Origin {
    let release = Arc::new(Semaphore::new(0));
    let app = Router::new()
        .route(
            "/echo",
            get(|RawQuery(q): RawQuery, headers: HeaderMap| async move {
                let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
                let custom = headers
                    .get("x-repl-test")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                let via_proxy = headers.contains_key("proxy-connection");
                (
                    [("x-origin", "yes")],
                    format!(
                        "query={} host={host} custom={custom} proxy-connection={via_proxy}",
                        q.unwrap_or_default()
                    ),
                )
            }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/stream",
            get(|State(release): State<Arc<Semaphore>>| async move {
                let chunks = futures::stream::unfold(0u8, move |step| {
                    let release = release.clone();
                    async move {
                        match step {
                            0 => Some((Ok::<_, std::io::Error>(Bytes::from("first\n")), 1)),
                            1 => {
                                release.acquire().await.ok()?.forget();
                                Some((Ok(Bytes::from("second\n")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Body::from_stream(chunks)
            }),
        )
        .with_state(release.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Origin { url, release }
}

/// A client that sends everything through `proxy`, one fresh connection per request.
fn client(proxy: &Proxy) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.url()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Reads the next chunk of `resp`, failing the test if none comes within 5 s.
async fn next_chunk(resp: &mut reqwest::Response) -> Result<Option<Bytes>, reqwest::Error> {
    tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("a chunk or an error within 5 s")
}

/// A GET with a query and a custom header, and a POST with a body, reach the origin through the
/// proxy as sent (the Host being the origin's, no proxy-only header), and its answer comes back
/// with its status, headers and body; the proxy counts what it forwarded.
#[tokio::test]
async fn forwards_requests_and_answers() {
    let origin = origin().await;
    let proxy = Proxy::start().await;
    let http = client(&proxy);
    let resp = http
        .get(format!("{}/echo?from=5&wait_ms=10", origin.url))
        .header("x-repl-test", "42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-origin"], "yes");
    let host = origin.url.trim_start_matches("http://");
    assert_eq!(
        resp.text().await.unwrap(),
        format!("query=from=5&wait_ms=10 host={host} custom=42 proxy-connection=false")
    );
    let body = vec![7u8; 100_000];
    let resp = http
        .post(format!("{}/echo", origin.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), body);
    assert_eq!(proxy.forwarded(), 2);
    let resp = http.get(format!("{}/nothing", origin.url)).send().await.unwrap();
    assert_eq!(resp.status(), 404, "the origin's own status passes through");
}

/// The first part of a long answer reaches the client while the origin still holds the rest.
#[tokio::test]
async fn answers_stream_through() {
    let origin = origin().await;
    let proxy = Proxy::start().await;
    let mut resp = client(&proxy)
        .get(format!("{}/stream", origin.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(next_chunk(&mut resp).await.unwrap().unwrap(), "first\n");
    origin.release.add_permits(1);
    assert_eq!(next_chunk(&mut resp).await.unwrap().unwrap(), "second\n");
    assert_eq!(next_chunk(&mut resp).await.unwrap(), None);
}

/// A cut fails the long poll in flight and every new request (without ever reaching the
/// origin); after `restore` requests pass again.
#[tokio::test]
async fn cut_closes_open_and_new_connections_until_restored() {
    let origin = origin().await;
    let proxy = Proxy::start().await;
    let http = client(&proxy);
    let mut held = http.get(format!("{}/stream", origin.url)).send().await.unwrap();
    assert_eq!(next_chunk(&mut held).await.unwrap().unwrap(), "first\n");

    proxy.cut();
    assert!(proxy.is_cut());
    assert!(next_chunk(&mut held).await.is_err(), "the open answer is cut off");
    let forwarded = proxy.forwarded();
    let refused = proxy.refused();
    for _ in 0..3 {
        let attempt = http.get(format!("{}/echo", origin.url)).send().await;
        assert!(
            attempt.is_err(),
            "a request through a cut proxy fails: {attempt:?}"
        );
    }
    assert_eq!(proxy.forwarded(), forwarded, "nothing reached the origin");
    assert!(proxy.refused() > refused, "new connections were refused");

    proxy.restore();
    assert!(!proxy.is_cut());
    let resp = http
        .get(format!("{}/echo?again", origin.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("query=again "));
}

/// A partition from one origin closes the open answer, holds new requests to that origin
/// unanswered (nothing reaches it) while requests to another origin pass, and once healed the
/// held request reaches its origin and is answered.
#[tokio::test]
async fn partition_holds_one_destination_until_healed() {
    let cut_off = origin().await;
    let other = origin().await;
    let proxy = Proxy::start().await;
    let http = client(&proxy);
    let mut open = http.get(format!("{}/stream", cut_off.url)).send().await.unwrap();
    assert_eq!(next_chunk(&mut open).await.unwrap().unwrap(), "first\n");

    proxy.partition([cut_off.url.trim_start_matches("http://")]);
    assert!(next_chunk(&mut open).await.is_err(), "the open answer is cut off");
    let forwarded = proxy.forwarded();
    let held = tokio::spawn({
        let http = http.clone();
        let url = format!("{}/echo?held", cut_off.url);
        async move { http.get(url).send().await.map(|r| r.status()) }
    });
    let held_seen = eventually(|| proxy.held() == 1).await;
    assert!(held_seen, "the request to the partitioned origin is held");
    let resp = http
        .get(format!("{}/echo?other", other.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "another destination passes");
    assert_eq!(
        proxy.forwarded(),
        forwarded + 1,
        "only the other request went through"
    );
    assert!(
        !held.is_finished(),
        "the held request has no answer while partitioned"
    );

    proxy.heal();
    let status = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held request is answered after the heal")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A request in origin form (sent to the proxy as if it were a server) is a 400; an origin that
/// does not listen is a 502. Neither is counted as forwarded.
#[tokio::test]
async fn bad_targets_are_answered_by_the_proxy() {
    let proxy = Proxy::start().await;
    let direct = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = direct.get(format!("{}/echo", proxy.url())).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let resp = client(&proxy)
        .get(format!("http://{gone}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(proxy.forwarded(), 0);
}
