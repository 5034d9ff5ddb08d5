//! `make bench-read`: do readers stall the writer? Builds a large log (`BENCH_READ_BYTES`, default
//! 1 GiB of 4 KiB records), then measures the latency of single 100-byte appends under `always`
//! (1 and 16 concurrent appenders) without a reader, and with a concurrent reader replaying the
//! whole log from offset 0 the way `GET /api/v1/log?from=0&limit=10000` pages through it (8 MiB
//! per read): once from the page cache ("warm": only the lock and the CPU are shared), once from
//! the disk ("cold": before every pass the reader drops the log's cached pages with
//! `posix_fadvise(DONTNEED)`, as a replay of a log larger than memory does, so the disk is shared
//! too). Prints p50 / p99 / p99.9 / max per phase. `BENCH_READ_SECONDS` (default 5) bounds each
//! phase; `BENCH_LOG_DIR` picks the disk (default: a temporary directory under `target/`).

use std::{
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use simpleloggers::log::{Durability, LogConfig, LogStore};

/// Payload size of the records of the large log.
const BULK_RECORD: usize = 4096;
/// Records per append while building the large log.
const BULK_BATCH: usize = 256;
/// What one read asks for: the HTTP read path's most records and bytes per request.
const READ_RECORDS: usize = 10_000;
/// See [`READ_RECORDS`].
const READ_BYTES: usize = 8 << 20;

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Append `bytes` of 4 KiB records (durability `never`, one flush at the end).
async fn build(dir: &Path, bytes: u64) -> anyhow::Result<u64> {
    let mut cfg = LogConfig::new(dir);
    cfg.durability = Durability::Never;
    let log = LogStore::open(cfg).await?;
    let record = Bytes::from(
        (0..BULK_RECORD)
            .map(|i| (i * 17 % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let batches = bytes.div_ceil((BULK_RECORD * BULK_BATCH) as u64);
    for _ in 0..batches {
        log.append(1, None, vec![record.clone(); BULK_BATCH]).await?;
    }
    log.flush().await?;
    let end = log.end_offset();
    log.close().await?;
    Ok(end)
}

/// Drop the clean cached pages of every segment file, so the next reads go to the disk.
fn drop_cache(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            let f = std::fs::File::open(&path)?;
            // SAFETY: advisory call on a valid, owned descriptor; no memory is passed.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
    Ok(())
}

/// Latency percentiles of one phase.
struct Figures {
    appends: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

fn figures(mut lat: Vec<Duration>) -> Figures {
    lat.sort_unstable();
    let q = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    Figures {
        appends: lat.len(),
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: lat[lat.len() - 1],
    }
}

/// `appenders` tasks appending single 100-byte records for `phase`; every append's latency.
async fn appends(log: &LogStore, appenders: usize, phase: Duration) -> anyhow::Result<Vec<Duration>> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(vec![b'x'; 100]);
                let mut lat = Vec::new();
                while start.elapsed() < phase {
                    let t = Instant::now();
                    log.append(1, None, vec![payload.clone()]).await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Replays the log from 0 to `end` again and again (dropping the page cache before each pass when
/// `cold`) until `stop`; returns (passes, bytes read, longest single read).
async fn replay(
    log: LogStore,
    end: u64,
    cold: bool,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(u64, u64, Duration)> {
    let (mut passes, mut bytes, mut longest) = (0u64, 0u64, Duration::ZERO);
    let dir = log.dir().to_owned();
    'outer: while !stop.load(Ordering::Relaxed) {
        if cold {
            drop_cache(&dir)?;
        }
        let mut from = 0;
        while from < end {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            let t = Instant::now();
            let records = log.read(from, READ_RECORDS, READ_BYTES).await?;
            longest = longest.max(t.elapsed());
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            bytes += records.iter().map(|r| r.payload.len() as u64).sum::<u64>();
        }
        passes += 1;
    }
    Ok((passes, bytes, longest))
}

/// One unmeasured pass over the log, so that it is in the page cache.
async fn warm(log: &LogStore, end: u64) -> anyhow::Result<()> {
    let mut from = 0;
    while from < end {
        match log.read(from, READ_RECORDS, READ_BYTES).await?.last() {
            Some(last) => from = last.offset + 1,
            None => break,
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let size = env_u64("BENCH_READ_BYTES", 1 << 30)?;
    let phase = Duration::from_secs(env_u64("BENCH_READ_SECONDS", 5)?);
    let base = std::env::var_os("BENCH_LOG_DIR").map_or_else(|| Path::new("target").to_owned(), Into::into);
    std::fs::create_dir_all(&base)?;
    let root = tempfile::tempdir_in(&base).context("bench directory")?;
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "read-vs-append benchmark in {} ({} CPUs), log of {} MiB, {} s per phase",
        root.path().display(),
        std::thread::available_parallelism()?,
        size >> 20,
        phase.as_secs()
    );
    let t = Instant::now();
    let end = rt.block_on(build(root.path(), size))?;
    println!(
        "built: {end} records of {BULK_RECORD} B in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };

    let mut cfg = LogConfig::new(root.path());
    cfg.durability = Durability::Always;
    rt.block_on(async {
        let log = LogStore::open(cfg).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let show = |appenders: usize, name: &str, f: &Figures| {
            println!(
                "always, {appenders:>2} appender(s), {name}: {:>7} appends, p50 {:.2} ms, p99 {:.2} ms, \
                 p99.9 {:.2} ms, max {:.2} ms",
                f.appends,
                ms(f.p50),
                ms(f.p99),
                ms(f.p999),
                ms(f.max)
            );
        };
        for appenders in [1usize, 16] {
            let alone = figures(appends(&log, appenders, phase).await?);
            show(appenders, "no reader    ", &alone);
            let mut summary = format!("  summary, {appenders:>2} appender(s): p99 {:.2} ms alone", ms(alone.p99));
            for cold in [false, true] {
                let name = if cold { "cold reader  " } else { "warm reader  " };
                if !cold {
                    warm(&log, end).await?;
                }
                let stop = Arc::new(AtomicBool::new(false));
                let reader = tokio::spawn(replay(log.clone(), end, cold, stop.clone()));
                let busy = figures(appends(&log, appenders, phase).await?);
                stop.store(true, Ordering::Relaxed);
                let (passes, bytes, longest) = reader.await??;
                show(appenders, name, &busy);
                println!(
                    "  reader: {:.0} MiB replayed ({passes} full passes) = {:.0} MiB/s, longest single read {:.1} ms",
                    bytes as f64 / (1 << 20) as f64,
                    bytes as f64 / (1 << 20) as f64 / phase.as_secs_f64(),
                    ms(longest)
                );
                summary += &format!(", {:.2} ms with a {}", ms(busy.p99), name.trim());
            }
            println!("{summary}");
        }
        log.close().await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
