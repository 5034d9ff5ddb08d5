//! Log store configuration: where the log lives, how big segments grow, when appends are durable
//! and how much history is retained.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use super::fault::FaultInjector;

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after the `fdatasync` that covers the record (group commit). The default.
    #[default]
    Always,
    /// Acknowledge after the write; `fdatasync` at most this often in the background. A crash may
    /// lose up to one interval of acknowledged records.
    Interval(Duration),
    /// Never sync on the append path (tests and benchmarks); the OS flushes when it likes.
    Never,
}

/// The accepted spellings, quoted in parse errors.
const DURABILITY_FORMS: &str = "\"always\", \"interval:<ms>\" (e.g. interval:100) or \"never\"";

/// Why a durability string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid durability {given:?}: expected {DURABILITY_FORMS}")]
pub struct ParseDurabilityError {
    /// The string that was given.
    pub given: String,
}

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurabilityError { given: s.to_owned() };
        match s.trim() {
            "always" => Ok(Durability::Always),
            "never" => Ok(Durability::Never),
            other => {
                let ms = other.strip_prefix("interval:").ok_or_else(err)?;
                let ms: u64 = ms.trim().parse().map_err(|_| err())?;
                if ms == 0 {
                    return Err(err());
                }
                Ok(Durability::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Interval(d) => write!(f, "interval:{}", d.as_millis()),
            Durability::Never => f.write_str("never"),
        }
    }
}

/// Everything [`LogStore::open`](super::LogStore::open) needs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory holding the segment files (created if missing). One store per directory.
    pub dir: PathBuf,
    /// Roll to a new segment once the active one reaches this size (default 64 MiB). A single
    /// batch is never split across segments, so a segment may exceed it by one batch.
    pub segment_bytes: u64,
    /// When appends are acknowledged (default [`Durability::Always`]).
    pub durability: Durability,
    /// Largest accepted payload of one record (default 1 MiB).
    pub max_record_bytes: usize,
    /// Add a sparse index entry every this many bytes of segment (default 4 KiB): a read scans at
    /// most about this much before reaching its first record.
    pub index_interval_bytes: u32,
    /// Delete the oldest whole segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete whole segments whose newest record is older than this.
    pub retention_age: Option<Duration>,
    /// Forget a producer's idempotence state once it has stored nothing for this long (default
    /// 7 days, [`DEFAULT_PRODUCER_ID_EXPIRY`](super::producer::DEFAULT_PRODUCER_ID_EXPIRY)).
    pub producer_id_expiry: Duration,
    /// Test hook: inject write/sync failures into the segment I/O path. `None` in production.
    pub fault_injector: Option<FaultInjector>,
    /// Whether replication moves the high watermark ([`LogStore::set_high_watermark`]); `false`
    /// (the default): it follows the durable end, as for a lone node.
    ///
    /// [`LogStore::set_high_watermark`]: super::LogStore::set_high_watermark
    pub replicated: bool,
}

impl LogConfig {
    /// Whether a written group's records are servable to followers before their sync (a
    /// replicated log under `always`; `Writer::expose_written`, docs/replication.md "The leader
    /// serves what it has written").
    pub fn serves_written(&self) -> bool {
        self.replicated && self.durability == Durability::Always
    }

    /// A configuration with the defaults: 64 MiB segments, `always`, 1 MiB records, 4 KiB index
    /// interval, no retention limits, producers forgotten after 7 idle days.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            durability: Durability::Always,
            max_record_bytes: 1024 * 1024,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_age: None,
            producer_id_expiry: super::producer::DEFAULT_PRODUCER_ID_EXPIRY,
            fault_injector: None,
            replicated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted form parses and prints back the same way; bad forms name the accepted ones.
    #[test]
    fn durability_round_trips_and_explains_errors() {
        for s in ["always", "never", "interval:250"] {
            let d: Durability = s.parse().expect("valid form");
            assert_eq!(d.to_string(), s);
        }
        assert_eq!(
            "interval:5".parse(),
            Ok(Durability::Interval(Duration::from_millis(5)))
        );
        for bad in ["", "sometimes", "interval:", "interval:x", "interval:0"] {
            let e = bad.parse::<Durability>().expect_err("invalid form").to_string();
            assert!(
                e.contains("always") && e.contains("interval:<ms>") && e.contains("never"),
                "{e}"
            );
        }
    }
}
