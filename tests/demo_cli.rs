//! `simpleloggers demo` end to end: a short run with a leader kill verifies its own result,
//! exits 0 and leaves no process behind.

#[path = "support/cluster.rs"]
mod cluster;

use std::{process::Stdio, time::Duration};

use cluster::{processes_mentioning, BIN};

/// A 10-second demo with a SIGKILL of the leader after 4 s ends with VERIFIED and exit 0, and
/// none of its node processes survives it.
#[tokio::test]
async fn short_demo_with_chaos_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(BIN)
            .args([
                "demo",
                "--duration",
                "10s",
                "--chaos-every",
                "4s",
                "--rate",
                "50",
                "--dir",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the demo ends")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("chaos: killed"), "{stdout}");
    assert!(stdout.contains("VERIFIED: all"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("t=")),
        "status lines are printed: {stdout}"
    );
    assert_eq!(
        processes_mentioning(dir.path()),
        Vec::<String>::new(),
        "no node outlives the demo"
    );
}
