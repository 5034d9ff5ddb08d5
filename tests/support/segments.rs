//! Test-side look-ups in a log directory's files (for crash and corruption tests).

use std::path::{Path, PathBuf};

/// The newest segment file of a log directory.
pub fn last_segment(dir: &Path) -> Result<PathBuf, std::io::Error> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop().ok_or_else(|| std::io::Error::other("no segment"))
}
