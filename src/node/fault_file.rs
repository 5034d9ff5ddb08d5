//! Test hook behind the hidden `--fault-file` flag: while the file names an errno (`ENOSPC`, `EIO`
//! or a number), every segment write of the node's log fails with it, as on a full or failing
//! disk; remove the file (or empty it) and writes work again. Black-box tests use it to make a
//! running node's disk fail without root or a real full filesystem.

use std::{path::PathBuf, time::Duration};

use crate::{log::FaultInjector, shutdown::CancellationToken};

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(50);

/// The errno a fault file's content names: `ENOSPC`, `EIO`, `EROFS` or a decimal number; `None`
/// for an empty file or anything else.
pub fn parse_errno(content: &str) -> Option<i32> {
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
        let errno = tokio::fs::read_to_string(&path)
            .await
            .ok()
            .and_then(|content| parse_errno(&content));
        if errno != armed {
            match errno {
                Some(errno) => {
                    tracing::warn!(errno, "fault file: every log write now fails");
                    faults.fail_writes(errno);
                }
                None => {
                    tracing::warn!("fault file: log writes work again");
                    faults.clear();
                }
            }
            armed = errno;
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

    /// Names and numbers arm a fault; empty or unknown content clears it.
    #[test]
    fn errno_names() {
        assert_eq!(parse_errno("ENOSPC\n"), Some(libc::ENOSPC));
        assert_eq!(parse_errno("EIO"), Some(libc::EIO));
        assert_eq!(parse_errno("5"), Some(5));
        assert_eq!(parse_errno(""), None);
        assert_eq!(parse_errno("0"), None);
        assert_eq!(parse_errno("full"), None);
    }
}
