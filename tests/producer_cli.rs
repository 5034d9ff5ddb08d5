//! `simpleloggers producer` as a process: flags and env fallbacks reach the library, the summary
//! line goes to stdout, and the exit status says whether everything was acknowledged.

mod producer_support;

use std::{process::Stdio, time::Duration};

use producer_support::{within, FakeNode};
use tokio::{io::AsyncWriteExt, process::Command};

const LIMIT: Duration = Duration::from_secs(30);

fn producer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simpleloggers"));
    cmd.arg("producer")
        .env_remove("SIMPLELOGGERS_TARGET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `--count` with `--rate` (and the target from its env fallback) sends exactly N messages,
/// prints the one-line summary and exits 0.
#[tokio::test]
async fn count_run_exits_zero_with_summary() {
    let node = FakeNode::start().await;
    let mut cmd = producer();
    cmd.env("SIMPLELOGGERS_TARGET", node.url()).args([
        "--rate",
        "1000",
        "--count",
        "5",
        "--producer-id",
        "cli-test",
    ]);
    let out = within(LIMIT, "producer exits", cmd.output()).await.expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("sent=5 acknowledged=5 retried=0 duplicates=0 failed=0 unacknowledged=0"),
        "{stdout}"
    );
    assert!(stdout.contains("producer_id=cli-test"), "{stdout}");
    let expected: Vec<String> = (0..5).map(|i| format!("Message: {i}")).collect();
    assert_eq!(node.messages(), expected);
}

/// A message rejected with 400 makes the process exit non-zero after sending the rest (from
/// `--stdin`).
#[tokio::test]
async fn rejected_message_exits_non_zero() {
    let node = FakeNode::start().await;
    node.poison("poison");
    let mut cmd = producer();
    cmd.args(["--target", &node.url(), "--stdin", "--batch-max", "1"])
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(b"ok 1\npoison\nok 2\n")
        .await
        .expect("write stdin");
    drop(stdin);
    let out = within(LIMIT, "producer exits", child.wait_with_output())
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.starts_with("sent=3 acknowledged=2 "), "{stdout}");
    assert!(stdout.contains("failed=1"), "{stdout}");
    assert_eq!(node.messages(), ["ok 1", "ok 2"]);
}

/// SIGTERM stops the source, pending batches are drained (through a burst of 503s), and the
/// process exits 0 with every sent message acknowledged and stored once.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_drains_then_exits_zero() {
    use producer_support::{wait_until, Fault};

    let node = FakeNode::start().await;
    let mut cmd = producer();
    cmd.args(["--target", &node.url(), "--rate", "200"]);
    let child = cmd.spawn().expect("spawn");
    let pid = child.id().expect("running").to_string();
    wait_until(LIMIT, "the producer is sending", || node.stored() >= 20).await;
    node.fail_next((0..3).map(|_| Fault::Status {
        status: 503,
        leader: None,
    }));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = within(LIMIT, "producer exits", child.wait_with_output())
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: u64 = stdout
        .strip_prefix("sent=")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {stdout}"));
    assert!(stdout.contains(&format!("acknowledged={sent} ")), "{stdout}");
    let expected: Vec<String> = (0..sent).map(|i| format!("Message: {i}")).collect();
    assert_eq!(node.messages(), expected);
}
