//! Test-side look-ups in a log directory's files (for crash and corruption tests).

use std::path::{Path, PathBuf};

/// The segment files of a log directory, oldest first.
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    Ok(logs)
}

/// The newest segment file of a log directory.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn last_segment(dir: &Path) -> Result<PathBuf, std::io::Error> {
    segment_files(dir)?
        .pop()
        .ok_or_else(|| std::io::Error::other("no segment"))
}

/// Bytes of a segment file that hold frames: up to the first zero length prefix (the space the
/// writer reserves ahead of its writes reads as zeros) or the end of the file. Frames are a
/// 4-byte little-endian length of what follows the first 8 bytes.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn data_len(path: &Path) -> Result<u64, std::io::Error> {
    let bytes = std::fs::read(path)?;
    let mut p = 0;
    while p + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]) as usize;
        if len == 0 || p + 8 + len > bytes.len() {
            break;
        }
        p += 8 + len;
    }
    Ok(p as u64)
}
