//! Fault injection for the segment I/O path, so tests can prove the store survives a full disk or a
//! failing `fdatasync` without needing a real full filesystem.

use std::{io, sync::Arc};

use parking_lot::Mutex;

/// A cloneable handle that makes the store's next segment writes or syncs fail. Put one in
/// [`LogConfig::fault_injector`](super::LogConfig::fault_injector) and keep a clone in the test.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    /// What is armed; shared between the test and the store's writer thread.
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// While set, every segment write fails with this errno after writing half its buffer
    /// (the way a disk filling up mid-write leaves a partial frame behind).
    write_errno: Option<i32>,
    /// Number of upcoming `fdatasync` calls that fail, and with which errno.
    sync_failures: Option<(u32, i32)>,
}

impl FaultInjector {
    /// A handle with nothing armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every segment write fail with `errno` (e.g. `libc::ENOSPC`) until [`clear`](Self::clear).
    pub fn fail_writes(&self, errno: i32) {
        self.state.lock().write_errno = Some(errno);
    }

    /// Make the next `count` data syncs fail with `errno` (e.g. `libc::EIO`).
    pub fn fail_syncs(&self, count: u32, errno: i32) {
        self.state.lock().sync_failures = Some((count, errno));
    }

    /// Disarm everything ("space returned").
    pub fn clear(&self) {
        *self.state.lock() = FaultState::default();
    }

    /// The error the next write must fail with, if armed.
    pub(crate) fn write_error(&self) -> Option<io::Error> {
        self.state.lock().write_errno.map(io::Error::from_raw_os_error)
    }

    /// The error the next sync must fail with, if armed (consumes one armed failure).
    pub(crate) fn sync_error(&self) -> Option<io::Error> {
        let mut st = self.state.lock();
        match st.sync_failures {
            Some((n, errno)) if n > 0 => {
                st.sync_failures = if n > 1 { Some((n - 1, errno)) } else { None };
                Some(io::Error::from_raw_os_error(errno))
            }
            _ => None,
        }
    }
}
