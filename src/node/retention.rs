//! Log retention in the node: the parser of byte sizes for `--segment-bytes` and
//! `--retention-bytes`, and the periodic task that applies `--retention-bytes` /
//! `--retention-age` even when no segment rolls (the log itself applies them on every roll).

use std::time::Duration;

use crate::{log::LogStore, shutdown::CancellationToken};

/// Parses a byte size: a plain number of bytes, or a number with a unit — binary (`KiB`, `MiB`,
/// `GiB`, `TiB`, also `Ki`/`Mi`/`Gi` as in Kubernetes) or decimal (`KB`, `MB`, `GB`, `TB`).
///
/// # Errors
/// Anything else, and zero.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let bytes = s
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("expected bytes like 1073741824, 10GiB or 500MB: {e}"))?
        .as_u64();
    if bytes == 0 {
        return Err("must be at least 1 byte".into());
    }
    Ok(bytes)
}

/// Applies retention every `every` until `shutdown`, logging what it deleted.
pub async fn run(store: LogStore, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let before = store.start_offset();
        match store.enforce_retention().await {
            Ok(start) if start > before => {
                tracing::info!(from = before, to = start, "retention: the log now starts later");
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "retention could not run");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain integers are bytes; binary and decimal units scale; zero and nonsense are refused.
    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_byte_size("10Gi"), Ok(10 << 30));
        assert_eq!(parse_byte_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_byte_size("1KiB"), Ok(1024));
        assert!(parse_byte_size("0").is_err());
        assert!(parse_byte_size("ten").is_err());
        assert!(parse_byte_size("10 parsecs").is_err());
    }
}
