//! Fault injection for the segment I/O path, so tests can prove the store survives a full disk, a
//! failing or slow `fdatasync` (and the page loss that comes with a failing one) and a log
//! changing under a reader, without needing a real full, failing or slow filesystem.

use std::{io, sync::Arc, time::Duration};

use parking_lot::{Condvar, Mutex};

/// A cloneable handle that makes the store's next segment writes or syncs fail, or holds its reads.
/// Put one in [`LogConfig::fault_injector`](super::LogConfig::fault_injector) and keep a clone in
/// the test.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    /// What is armed, shared between the test and the store's threads.
    shared: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    /// The armed faults.
    state: Mutex<FaultState>,
    /// Signalled when held reads may go on.
    resumed: Condvar,
}

#[derive(Debug, Default)]
struct FaultState {
    /// While set, every segment write fails with this errno after writing half its buffer
    /// (the way a disk filling up mid-write leaves a partial frame behind).
    write_errno: Option<i32>,
    /// Number of upcoming `fdatasync` calls that fail, and with which errno.
    sync_failures: Option<(u32, i32)>,
    /// When an injected sync fails, the bytes written since the last good sync are zeroed, as
    /// they read back after a kernel dropped the dirty pages whose writeback failed.
    lose_unsynced: bool,
    /// While set, every data sync first sleeps this long (a slow disk: writes still succeed).
    sync_delay: Option<Duration>,
    /// While set, segment reads wait after taking their snapshot, before touching the file.
    reads_paused: bool,
    /// Reads waiting right now.
    readers_waiting: usize,
}

impl FaultInjector {
    /// A handle with nothing armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every segment write fail with `errno` (e.g. `libc::ENOSPC`) until [`clear`](Self::clear).
    pub fn fail_writes(&self, errno: i32) {
        self.shared.state.lock().write_errno = Some(errno);
    }

    /// Make the next `count` data syncs fail with `errno` (e.g. `libc::EIO`): the writer's group
    /// syncs, background and flush syncs, and the sync a recovery makes of the cut tail.
    pub fn fail_syncs(&self, count: u32, errno: i32) {
        self.shared.state.lock().sync_failures = Some((count, errno));
    }

    /// Make every data sync fail with `errno` until [`clear`](Self::clear) (a disk that stays bad:
    /// recovery cannot complete meanwhile).
    pub fn fail_syncs_until_clear(&self, errno: i32) {
        self.fail_syncs(u32::MAX, errno);
    }

    /// Make every data sync take `delay` longer until [`clear`](Self::clear): a slow disk whose
    /// `fdatasync` still succeeds (the writer's group syncs, background and flush syncs).
    pub fn slow_syncs(&self, delay: Duration) {
        self.shared.state.lock().sync_delay = Some(delay).filter(|d| !d.is_zero());
    }

    /// From now on, when an injected sync fails, zero the bytes the store wrote since its last good
    /// sync: what a reader of the file sees after the kernel dropped the pages whose writeback
    /// failed (PostgreSQL's "fsyncgate"). A store that trusted those bytes would serve zeros.
    pub fn lose_unsynced_on_sync_failure(&self) {
        self.shared.state.lock().lose_unsynced = true;
    }

    /// Hold every segment read after it has taken what it needs under the store's lock and before
    /// it reads the file, until [`resume_reads`](Self::resume_reads): tests change the log under a
    /// reader's feet this way.
    pub fn pause_reads(&self) {
        self.shared.state.lock().reads_paused = true;
    }

    /// Let held reads go on.
    pub fn resume_reads(&self) {
        self.shared.state.lock().reads_paused = false;
        self.shared.resumed.notify_all();
    }

    /// Number of reads held by [`pause_reads`](Self::pause_reads) right now.
    pub fn paused_readers(&self) -> usize {
        self.shared.state.lock().readers_waiting
    }

    /// Disarm everything ("space returned") and let held reads go on.
    pub fn clear(&self) {
        let mut st = self.shared.state.lock();
        let waiting = st.readers_waiting;
        *st = FaultState {
            readers_waiting: waiting,
            ..FaultState::default()
        };
        self.shared.resumed.notify_all();
    }

    /// The error the next write must fail with, if armed.
    pub(crate) fn write_error(&self) -> Option<io::Error> {
        self.shared
            .state
            .lock()
            .write_errno
            .map(io::Error::from_raw_os_error)
    }

    /// The error the next sync must fail with, if armed (consumes one armed failure), and whether
    /// the unsynced bytes are to be lost with it.
    pub(crate) fn sync_failure(&self) -> Option<(io::Error, bool)> {
        let mut st = self.shared.state.lock();
        match st.sync_failures {
            Some((n, errno)) if n > 0 => {
                st.sync_failures = if n > 1 { Some((n - 1, errno)) } else { None };
                Some((io::Error::from_raw_os_error(errno), st.lose_unsynced))
            }
            _ => None,
        }
    }

    /// Called before a data sync: sleeps the armed [`slow_syncs`](Self::slow_syncs) delay, if any
    /// (on the calling thread, which is the one that would wait for the disk).
    pub(crate) fn before_sync(&self) {
        let delay = self.shared.state.lock().sync_delay;
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
    }

    /// Called by a read between its snapshot and its file reads: waits while reads are paused.
    pub(crate) fn before_read(&self) {
        let mut st = self.shared.state.lock();
        if !st.reads_paused {
            return;
        }
        st.readers_waiting += 1;
        while st.reads_paused {
            self.shared.resumed.wait(&mut st);
        }
        st.readers_waiting -= 1;
    }
}
