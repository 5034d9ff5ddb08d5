//! The HTTP load generator of the ingest benchmarks (`benches/ingest.rs`,
//! `benches/replication.rs`): keep-alive connections POSTing one body back to back for a measured
//! window, with latency quantiles and the CPU the servers and this process used; and the disk's
//! single-writer `fdatasync` rate, which bounds one connection under `--durability always`.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    client::conn::http1::SendRequest,
    header::{CONTENT_TYPE, HOST},
    Request,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{cpu_time, quantile};

/// Discarded start of every phase (connections open, caches warm).
pub const WARMUP: Duration = Duration::from_millis(500);

/// One load phase's figures.
pub struct Load {
    /// Requests completed inside the measured window.
    pub requests: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of each of those requests, sorted (microseconds).
    pub latencies_us: Vec<u32>,
    /// Failed requests (non-200 or connection error), over the whole phase.
    pub errors: u64,
    /// CPU the server processes used in the window, together.
    pub server_cpu: Duration,
    /// The same, per server process (in the order given to [`load`]).
    pub server_cpu_each: Vec<Duration>,
    /// CPU this (client) process used in the window.
    pub client_cpu: Duration,
}

impl Load {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }

    pub fn p(&self, q: f64) -> f64 {
        quantile(&self.latencies_us, q).map_or(f64::NAN, |us| f64::from(us) / 1000.0)
    }

    /// Server CPU microseconds per request.
    pub fn server_us_per_request(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }

    pub fn client_us_per_request(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// One keep-alive HTTP/1.1 connection (each load task owns exactly one).
async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `POST /api/v1/log` on `conn`; fails unless the answer is 200 (the body is read in full so
/// the connection can carry the next request).
async fn post(
    conn: &mut SendRequest<Full<Bytes>>,
    host: &str,
    content_type: &'static str,
    body: Bytes,
) -> anyhow::Result<()> {
    conn.ready().await?;
    let request = Request::post("/api/v1/log")
        .header(HOST, host)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body))?;
    let response = conn.send_request(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    if status != 200 {
        bail!("{status}: {}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// `conns` tasks, each on its own connection to `addr`, POST `body` back to back for `WARMUP +
/// window`; requests completing inside the window are counted, and the CPU of `server_pids`
/// (summed) and of this process over the window is measured.
pub async fn load(
    addr: SocketAddr,
    server_pids: &[u32],
    conns: usize,
    window: Duration,
    content_type: &'static str,
    body: Bytes,
) -> anyhow::Result<Load> {
    let host = addr.to_string();
    let errors = Arc::new(AtomicU64::new(0));
    let mut conns_ready = Vec::new();
    for _ in 0..conns {
        conns_ready.push(connect(addr).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + WARMUP;
    let end = measure_from + window;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns_ready {
        let (host, body, errors) = (host.clone(), body.clone(), errors.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                match post(&mut conn, &host, content_type, body.clone()).await {
                    Ok(()) => {
                        let done = Instant::now();
                        if done >= measure_from && done <= end {
                            let us = (done - sent).as_micros();
                            latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                    }
                    Err(err) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("request failed: {err:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if let Ok(fresh) = connect(addr).await {
                            conn = fresh;
                        }
                    }
                }
            }
            latencies
        });
    }
    // CPU of both processes over exactly the measured window.
    let me = std::process::id();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = (each_cpu(server_pids), cpu_time(me));
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = (each_cpu(server_pids), cpu_time(me));
    let mut latencies_us = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies_us.extend(joined.context("load task")?);
    }
    latencies_us.sort_unstable();
    let diff = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    let server_cpu_each: Vec<Duration> = cpu0.0.iter().zip(&cpu1.0).map(|(a, b)| diff(*a, *b)).collect();
    Ok(Load {
        requests: latencies_us.len() as u64,
        window,
        latencies_us,
        errors: errors.load(Ordering::Relaxed),
        server_cpu: server_cpu_each.iter().sum(),
        server_cpu_each,
        client_cpu: diff(cpu0.1, cpu1.1),
    })
}

/// `write(bytes)` + `fdatasync` in a loop for `budget` (at most 20 000 times): the disk's
/// single-writer sync rate right now, which bounds one connection under `always`.
pub fn fdatasync_rate(dir: &Path, budget: Duration, bytes: usize) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-probe.bin");
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    let mut n = 0u32;
    while n < 20_000 && start.elapsed() < budget {
        f.write_all(&vec![7u8; bytes])?;
        f.sync_data()?;
        n += 1;
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// CPU time of each of `pids` (`None` for one that is gone).
fn each_cpu(pids: &[u32]) -> Vec<Option<Duration>> {
    pids.iter().map(|&pid| cpu_time(pid)).collect()
}
