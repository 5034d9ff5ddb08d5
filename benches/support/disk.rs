//! The disk figures the ingest targets are measured against, taken in the same run as the load:
//! one `write(100 B)` + `fdatasync` (its latency, which bounds one `--durability always`
//! connection, and its rate) and sequential write bandwidth (which bounds NDJSON batches).

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use super::quantile;

/// One small synchronous write, repeated.
pub struct SyncProbe {
    /// Syncs per second over the probe.
    pub rate: f64,
    /// Median `write` + `fdatasync` latency, microseconds.
    pub p50_us: f64,
}

/// `write(bytes)` + `fdatasync` in a loop for `budget` (at most 20 000 times).
///
/// # Errors
/// The probe file cannot be written.
pub fn fdatasync_probe(dir: &Path, budget: Duration, bytes: usize) -> anyhow::Result<SyncProbe> {
    let path = dir.join("fsync-probe.bin");
    let mut f = std::fs::File::create(&path)?;
    let buf = vec![7u8; bytes];
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 20_000 && start.elapsed() < budget {
        let t = Instant::now();
        f.write_all(&buf)?;
        f.sync_data()?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    let rate = samples.len() as f64 / start.elapsed().as_secs_f64();
    samples.sort_unstable();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(SyncProbe {
        rate,
        p50_us: quantile(&samples, 0.5).map_or(f64::NAN, |us| us as f64),
    })
}

/// Write `bytes` in 1 MiB `write`s and `fdatasync` once at the end: MiB/s including the sync.
///
/// # Errors
/// The probe file cannot be written.
pub fn sequential_mib_per_s(dir: &Path, bytes: usize) -> anyhow::Result<f64> {
    let path = dir.join("sequential-probe.bin");
    let mut f = std::fs::File::create(&path)?;
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    for _ in 0..bytes.div_ceil(chunk.len()) {
        f.write_all(&chunk)?;
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(bytes as f64 / 1048576.0 / secs)
}
