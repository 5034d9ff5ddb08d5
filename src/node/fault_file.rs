//! Test hook behind the hidden `--fault-file` flag: while the file names an errno (`ENOSPC`, `EIO`
//! or a number), every segment write of the node's log fails with it, as on a full or failing
//! disk; `sync:<errno>` makes every `fdatasync` fail instead (writes succeed); `slow-sync:<ms>`
//! makes every `fdatasync` take that much longer (a slow disk); remove the file (or empty it) and
//! the disk works again. Black-box tests use it to make a running node's disk fail
//! without root or a real full filesystem.

use std::{path::PathBuf, time::Duration};

use crate::{log::FaultInjector, shutdown::CancellationToken};

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(50);

/// What a fault file arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every segment write fails with this errno.
    Writes(i32),
    /// Every `fdatasync` fails with this errno.
    Syncs(i32),
    /// Every `fdatasync` takes this much longer (and succeeds).
    SlowSyncs(Duration),
}

/// The fault a fault file's content names: an errno (`ENOSPC`, `EIO`, `EROFS` or a decimal
/// number) for writes, `sync:<errno>` for syncs, `slow-sync:<ms>` (a positive number of
/// milliseconds) for slow syncs; `None` for an empty file or anything else.
pub fn parse_fault(content: &str) -> Option<Fault> {
    let content = content.trim();
    if let Some(errno) = content.strip_prefix("sync:") {
        return parse_errno(errno).map(Fault::Syncs);
    }
    if let Some(ms) = content.strip_prefix("slow-sync:") {
        let ms: u64 = ms.trim().parse().ok().filter(|ms| *ms > 0)?;
        return Some(Fault::SlowSyncs(Duration::from_millis(ms)));
    }
    parse_errno(content).map(Fault::Writes)
}

/// The errno `content` names: `ENOSPC`, `EIO`, `EROFS` or a decimal number.
fn parse_errno(content: &str) -> Option<i32> {
    match content.trim() {
        "ENOSPC" => Some(libc::ENOSPC),
        "EIO" => Some(libc::EIO),
        "EROFS" => Some(libc::EROFS),
        other => other.parse().ok().filter(|n| *n > 0),
    }
}

/// Arms and clears `faults` from `path` until `shutdown`.
pub async fn run(path: PathBuf, faults: FaultInjector, shutdown: CancellationToken) {
    tracing::warn!(file = %path.display(), "test fault injection is on (--fault-file)");
    let mut armed = None;
    loop {
        let fault = tokio::fs::read_to_string(&path)
            .await
            .ok()
            .and_then(|content| parse_fault(&content));
        if fault != armed {
            faults.clear();
            match fault {
                Some(Fault::Writes(errno)) => {
                    tracing::warn!(errno, "fault file: every log write now fails");
                    faults.fail_writes(errno);
                }
                Some(Fault::Syncs(errno)) => {
                    tracing::warn!(errno, "fault file: every log sync now fails");
                    faults.fail_syncs_until_clear(errno);
                }
                Some(Fault::SlowSyncs(delay)) => {
                    tracing::warn!(
                        delay_ms = delay.as_millis() as u64,
                        "fault file: every log sync is now slower"
                    );
                    faults.slow_syncs(delay);
                }
                None => tracing::warn!("fault file: the log's disk works again"),
            }
            armed = fault;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names and numbers arm a write fault, `sync:` a sync fault, `slow-sync:` a delay; empty or
    /// unknown content clears it.
    #[test]
    fn errno_names() {
        assert_eq!(parse_fault("ENOSPC\n"), Some(Fault::Writes(libc::ENOSPC)));
        assert_eq!(parse_fault("EIO"), Some(Fault::Writes(libc::EIO)));
        assert_eq!(parse_fault("5"), Some(Fault::Writes(5)));
        assert_eq!(parse_fault("sync:EIO\n"), Some(Fault::Syncs(libc::EIO)));
        assert_eq!(parse_fault(""), None);
        assert_eq!(parse_fault("0"), None);
        assert_eq!(parse_fault("full"), None);
        assert_eq!(parse_fault("sync:"), None);
        assert_eq!(
            parse_fault("slow-sync:250\n"),
            Some(Fault::SlowSyncs(Duration::from_millis(250)))
        );
        assert_eq!(parse_fault("slow-sync:0"), None);
        assert_eq!(parse_fault("slow-sync:fast"), None);
    }
}
