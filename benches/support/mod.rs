//! Shared harness of the process benchmarks (`benches/ingest.rs`, `benches/failover.rs`): starts
//! `simpleloggers` (the release binary under `cargo bench`) as child processes on loopback ports
//! chosen by the OS, signals them, reads their memory and CPU from `/proc`, and summarises samples.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The binary under test (built with the benchmark's profile, i.e. release, by `cargo bench`).
pub const BIN: &str = env!("CARGO_BIN_EXE_simpleloggers");

/// A child process that is killed when dropped (and by the kernel if the benchmark dies).
pub struct Proc {
    /// The process (`None` once reaped).
    child: Option<Child>,
    /// Its pid.
    pub pid: u32,
    /// The address it serves on, from its first stdout line.
    pub addr: SocketAddr,
}

impl Proc {
    /// Runs `program args`, stderr to `log`, and waits (at most 30 s) for the first stdout line,
    /// which must end with `http://ADDR`.
    ///
    /// # Errors
    /// It cannot be started, exits early, or prints something else.
    pub async fn start(
        program: &Path,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it makes the
        // kernel kill the child if the benchmark dies, so no process outlives it.
        unsafe {
            cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let pid = child.id().context("no pid")?;
        let stdout = child.stdout.take().context("stdout not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| anyhow!("{args:?}: no listening line within 30 s; see {}", log.display()))??
            .ok_or_else(|| anyhow!("{args:?} exited at start; see {}", log.display()))?;
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Proc {
            child: Some(child),
            pid,
            addr,
        })
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends `signal` (no-op once reaped).
    pub fn signal(&self, signal: Signal) {
        if self.child.is_some() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// Waits at most `within` for the process to exit; answers its exit code (`None`: killed by
    /// a signal).
    ///
    /// # Errors
    /// It is still running after `within`.
    pub async fn wait(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        let Some(child) = self.child.as_mut() else {
            bail!("already reaped");
        };
        let status = tokio::time::timeout(within, child.wait())
            .await
            .map_err(|_| anyhow!("pid {} still running after {within:?}", self.pid))??;
        self.child = None;
        Ok(status.code())
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, wait up to 15 s, then SIGKILL.
    pub async fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        if self.wait(Duration::from_secs(15)).await.is_err() {
            self.kill().await;
        }
    }
}

/// `dev-consul` on a free loopback port (default settings: session TTL minimum 10 s).
///
/// # Errors
/// As [`Proc::start`].
pub async fn dev_consul(dir: &Path) -> anyhow::Result<Proc> {
    let args = ["dev-consul", "--listen", "127.0.0.1:0"].map(String::from);
    Proc::start(Path::new(BIN), &args, &dir.join("dev-consul.log"), &[]).await
}

/// How to (re)start one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Consul URL.
    pub consul: String,
    /// Extra flags (durability, timings).
    pub extra: Vec<String>,
    /// Where its stderr goes (appended across restarts).
    pub log: PathBuf,
}

impl NodeSpec {
    /// Node `name` with its data and log under `dir`; default timings.
    pub fn new(dir: &Path, name: &str, consul: &str, extra: &[&str]) -> Self {
        NodeSpec {
            name: name.into(),
            data_dir: dir.join(name),
            consul: consul.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: dir.join(format!("{name}.log")),
        }
    }

    /// Starts it on `listen` (`127.0.0.1:0` the first time, its old address on a restart).
    ///
    /// # Errors
    /// As [`Proc::start`].
    pub async fn start(&self, listen: &str) -> anyhow::Result<Proc> {
        let mut args: Vec<String> = [
            "node",
            "--name",
            &self.name,
            "--listen",
            listen,
            "--consul-addr",
            &self.consul,
        ]
        .map(String::from)
        .to_vec();
        args.push("--data-dir".into());
        args.push(self.data_dir.display().to_string());
        args.extend(self.extra.iter().cloned());
        Proc::start(Path::new(BIN), &args, &self.log, &[]).await
    }
}

/// Polls `probe` every 10 ms until it answers `Some` or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET url` answered 200 (within 1 s).
pub async fn ok(http: &reqwest::Client, url: &str) -> bool {
    matches!(
        http.get(url).timeout(Duration::from_secs(1)).send().await,
        Ok(r) if r.status() == 200
    )
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) the process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// The `q` quantile (0..=1) of sorted `samples`.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One line describing the machine: cores, kernel, load, and the disk under `dir`.
pub fn machine(dir: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let load = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let disk = disk_of(dir).unwrap_or_else(|| "unknown".into());
    format!("{cores} cores, Linux {kernel}, load average {load}, data dir on {disk}")
}

/// The device and filesystem type that hold `dir` (longest matching mount point).
fn disk_of(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .filter(|(_, point, _)| dir.starts_with(point))
        .max_by_key(|(_, point, _)| point.len())
        .map(|(dev, _, fs)| format!("{dev} ({fs})"))
}
