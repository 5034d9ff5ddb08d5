//! The HTTP ceiling of the ingest benchmarks: a do-nothing axum server answering every
//! `POST /api/v1/log` with a constant acknowledgement after reading the body, on a default
//! multi-threaded runtime in its own process (the benchmark binary re-executed with
//! [`CEILING_ENV`]), so it competes for the cores exactly as a node does.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use simpleloggers::local_cluster::{LocalProcess, ProcessSpec};

/// Set in the environment of the child process that serves the ceiling.
pub const CEILING_ENV: &str = "SIMPLELOGGERS_BENCH_CEILING";

/// Serves the ceiling forever when this process was started as one (call first in `main`);
/// returns `Ok(false)` otherwise.
///
/// # Errors
/// The ceiling cannot bind or serve.
pub fn serve_if_asked() -> anyhow::Result<bool> {
    if std::env::var_os(CEILING_ENV).is_none() {
        return Ok(false);
    }
    async fn ack(_body: Bytes) -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({"offset": 0, "term": 1}))
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        let app = axum::Router::new().route("/api/v1/log", axum::routing::post(ack));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("ceiling listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(true)
}

/// Starts the ceiling as a child process (this benchmark binary again), its output in `dir`.
///
/// # Errors
/// It cannot be started or never listens.
pub async fn spawn(dir: &Path) -> anyhow::Result<LocalProcess> {
    let spec =
        ProcessSpec::new("ceiling", std::env::current_exe()?, dir.join("ceiling.log")).env(CEILING_ENV, "1");
    let ceiling = LocalProcess::spawn(spec).await?;
    println!(
        "ceiling (do-nothing axum, own process) pid {} on {}",
        ceiling.pid().context("the ceiling is not running")?,
        ceiling.url()
    );
    Ok(ceiling)
}
