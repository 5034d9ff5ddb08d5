//! Tests of the `simpleloggers dev-consul` subcommand itself: `--help` documents every flag, and
//! the binary serves on the address from its environment fallback and exits cleanly on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_simpleloggers");

/// `dev-consul --help` lists every public flag with its environment fallback.
#[test]
fn help_documents_every_flag() -> anyhow::Result<()> {
    let out = Command::new(BIN).args(["dev-consul", "--help"]).output()?;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout)?;
    for flag in [
        "--listen",
        "--session-ttl-min",
        "--acl-token",
        "--node-name",
        "--datacenter",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    for env in [
        "SIMPLELOGGERS_DEV_CONSUL_LISTEN",
        "SIMPLELOGGERS_DEV_CONSUL_SESSION_TTL_MIN",
        "SIMPLELOGGERS_DEV_CONSUL_ACL_TOKEN",
    ] {
        assert!(help.contains(env), "{env} missing from:\n{help}");
    }
    assert!(!help.contains("--check-reap-interval"), "test knobs stay hidden");
    Ok(())
}

/// The binary serves on `SIMPLELOGGERS_DEV_CONSUL_LISTEN` and stops with exit code 0 on SIGTERM.
#[tokio::test]
async fn serves_from_env_and_stops_on_sigterm() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(BIN)
        .arg("dev-consul")
        .env("SIMPLELOGGERS_DEV_CONSUL_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIMPLELOGGERS_DEV_CONSUL_NODE_NAME", "from-env")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}/v1/agent/self");
    let until = Instant::now() + Duration::from_secs(30);
    let node = loop {
        if let Ok(resp) = reqwest::get(&url).await {
            let v: serde_json::Value = resp.json().await?;
            break v["Config"]["NodeName"].as_str().unwrap_or_default().to_string();
        }
        if Instant::now() > until {
            let _ = child.kill();
            anyhow::bail!("dev-consul did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(node, "from-env");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            assert!(status.success(), "exit status {status}");
            return Ok(());
        }
        if Instant::now() > until {
            let _ = child.kill();
            anyhow::bail!("dev-consul did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
