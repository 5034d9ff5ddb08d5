//! `simpleloggers tail --follow` decodes the node's Server-Sent Events with a real SSE decoder: a
//! multi-byte character split across two TCP reads is printed intact, and an event it cannot
//! understand is reported on stderr, not skipped. Runs the binary against an in-process
//! dev-consul whose election key names a scripted stand-in for the leader.

use std::{process::Stdio, time::Duration};

use devconsul::Config;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    net::TcpListener,
    process::{ChildStderr, ChildStdout, Command},
};

const BIN: &str = env!("CARGO_BIN_EXE_simpleloggers");
const KEY: &str = "test/tail-sse/leader";
/// Bound on every wait; reaching it fails the test.
const WAIT: Duration = Duration::from_secs(20);

/// Makes the stand-in at `address` the leader: a session holds the election key, whose value is
/// the leader record.
async fn elect(consul: &str, address: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let session: serde_json::Value = http
        .put(format!("{consul}/v1/session/create"))
        .body(r#"{"TTL":"60s"}"#)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = session["ID"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no session ID in {session}"))?;
    let record = json!({"name": "fake", "address": address, "since": "2026-01-01T00:00:00Z"});
    let acquired: bool = http
        .put(format!("{consul}/v1/kv/{KEY}?acquire={id}"))
        .body(record.to_string())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    anyhow::ensure!(acquired, "the lock was not acquired");
    Ok(())
}

/// Starts `tail --follow` against the election key in `consul`; stdout and stderr go to `output`.
fn follow(consul: &str, output: fn() -> Stdio) -> std::io::Result<tokio::process::Child> {
    Command::new(BIN)
        .args(["tail", "--follow", "--consul-addr", consul, "--election-key", KEY])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(output())
        .stderr(output())
        .kill_on_drop(true)
        .spawn()
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut Lines<R>, what: &str) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .expect("read from tail")
        .unwrap_or_else(|| panic!("tail closed its {what}"))
}

/// Reads stderr until a line contains `needle`; returns every line read.
async fn stderr_until(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = next_line(lines, "stderr line").await;
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

/// The split character is printed intact (the old hand-written parser decoded each chunk on its
/// own and printed two U+FFFD); an event whose data is not an entry is reported with its id, and
/// the events after it are still printed.
#[tokio::test]
async fn split_characters_survive_and_bad_events_are_reported() -> anyhow::Result<()> {
    let consul = devconsul::spawn(Config::ephemeral()).await?;
    let node = TcpListener::bind("127.0.0.1:0").await?;
    elect(&consul.url(), &node.local_addr()?.to_string()).await?;

    let mut tail = follow(&consul.url(), Stdio::piped)?;
    let mut stdout: Lines<BufReader<ChildStdout>> =
        BufReader::new(tail.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(tail.stderr.take().expect("piped")).lines();

    let (mut conn, _) = tokio::time::timeout(WAIT, node.accept()).await??;
    conn.set_nodelay(true)?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        anyhow::ensure!(
            conn.read(&mut byte).await? == 1,
            "tail hung up during its request"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)?;
    assert!(head.starts_with("GET /api/v1/log/stream?from=0 "), "{head}");
    conn.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n\
          retry: 1000\n: stream of fake from offset 0\n\n",
    )
    .await?;

    // Event 0 whole, then event 1 up to the first byte of the two-byte "é".
    let event1 = "id: 1\ndata: {\"offset\":1,\"term\":4,\"message\":\"café au lait\"}\n\n".as_bytes();
    let split = event1.iter().position(|&b| b == 0xC3).expect("é is two bytes") + 1;
    let mut first = b"id: 0\ndata: {\"offset\":0,\"term\":4,\"message\":\"plain\"}\n\n".to_vec();
    first.extend_from_slice(&event1[..split]);
    conn.write_all(&first).await?;
    // Once event 0 is printed, tail has read the first half of "é": the rest comes in a
    // separate read.
    assert_eq!(next_line(&mut stdout, "line for offset 0").await, "0\t4\tplain");
    conn.write_all(&event1[split..]).await?;
    assert_eq!(
        next_line(&mut stdout, "line for offset 1").await,
        "1\t4\tcafé au lait"
    );

    // An event that is not an entry, then a good one.
    conn.write_all(
        "id: 2\ndata: {\"offset\":2,\"term\":\n\nid: 3\ndata: {\"offset\":3,\"term\":4,\"message\":\"après\"}\n\n"
            .as_bytes(),
    )
    .await?;
    assert_eq!(next_line(&mut stdout, "line for offset 3").await, "3\t4\taprès");
    let reports = stderr_until(&mut stderr, "cannot parse event (id 2)").await;
    let report = reports.last().expect("one line at least");
    assert!(
        report.contains(r#"{\"offset\":2,\"term\":"#),
        "the report quotes the data: {report}"
    );
    assert!(reports[0].contains("following fake"), "{reports:?}");
    Ok(())
}

/// A leader that closes every stream at once (with no entry) is not hammered: `tail --follow`
/// backs off between reconnects (100 ms, doubling), where it used to reconnect in a busy loop.
#[tokio::test]
async fn streams_that_end_at_once_are_retried_with_back_off() -> anyhow::Result<()> {
    let consul = devconsul::spawn(Config::ephemeral()).await?;
    let node = TcpListener::bind("127.0.0.1:0").await?;
    elect(&consul.url(), &node.local_addr()?.to_string()).await?;
    let _tail = follow(&consul.url(), Stdio::null)?;
    let mut accepted = Vec::new();
    while accepted.len() < 5 {
        let (mut conn, _) = tokio::time::timeout(WAIT, node.accept()).await??;
        accepted.push(tokio::time::Instant::now());
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if conn.read(&mut byte).await? == 0 {
                break;
            }
            head.push(byte[0]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            .await?;
        conn.shutdown().await?;
    }
    // Four waits between five connections: at least 100 + 200 + 400 + 800 ms.
    let spread = accepted[4] - accepted[0];
    assert!(
        spread >= Duration::from_millis(1500),
        "five connections within {spread:?}: no back-off between reconnects"
    );
    Ok(())
}
