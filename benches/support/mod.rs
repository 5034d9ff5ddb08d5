//! Shared measuring helpers of the process benchmarks (`benches/ingest.rs`,
//! `benches/replication.rs`, `benches/failover.rs`): the binary under test, memory and CPU of a
//! process from `/proc`, quantiles, and a line about the machine; the load generator (`load`),
//! the HTTP ceiling (`ceiling`), disk probes (`disk`) and VmRSS sampling (`rss`). The processes
//! themselves are started by `simpleloggers::local_cluster`.

#![allow(dead_code)]

pub mod ceiling;
pub mod disk;
pub mod load;
pub mod rss;

use std::{path::Path, time::Duration};

use anyhow::Context;

/// The binary under test (built with the benchmark's profile, i.e. release, by `cargo bench`).
pub const BIN: &str = env!("CARGO_BIN_EXE_simpleloggers");

/// A fresh directory for benchmark `name` under Cargo's target tmpdir (on the build's disk,
/// removed on drop); prints where it is and what machine this is.
///
/// # Errors
/// It cannot be created.
pub fn bench_dir(name: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("bench-{name}-"))
        .tempdir_in(base)
        .context("bench directory")?;
    println!("{name} benchmark in {}", dir.path().display());
    println!("machine: {}", machine(dir.path()));
    Ok(dir)
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
