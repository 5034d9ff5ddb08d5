//! Resident memory of node processes under load: VmRSS sampled every [`RSS_EVERY`].

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use super::proc_status_kib;

/// How often VmRSS is sampled.
pub const RSS_EVERY: Duration = Duration::from_millis(20);

/// Samples VmRSS of each of `pids` every [`RSS_EVERY`] until dropped; the highest value seen
/// (over all of them) is read with [`RssSampler::peak_kib`].
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                for &pid in &pids {
                    if let Some(kib) = proc_status_kib(pid, "VmRSS") {
                        p.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(RSS_EVERY).await;
            }
        });
        RssSampler { peak, stop }
    }

    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
