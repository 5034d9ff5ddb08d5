//! `hw.checkpoint`: the persisted high watermark. A replicated log exposes a new HW to readers only
//! after it is on disk here, so that a restarted node never serves (nor lets truncation remove)
//! less than it once exposed. The file holds two fixed slots, rewritten in place alternately with
//! one `fdatasync` each: a write torn by a crash damages only the slot being written, whose value
//! was not yet exposed, and the other slot still holds the last exposed one.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{error::LogError, index::sync_dir};

/// File name of the checkpoint in the log directory.
pub const HW_FILE: &str = "hw.checkpoint";
/// Temporary name while the file is first created (deleted on open if a crash left it).
const HW_TMP: &str = "hw.checkpoint.tmp";
/// Distance between the two slots: separate disk blocks, so a torn write of one leaves the other.
const SLOT_STRIDE: u64 = 4096;
/// Bytes of one slot: magic, CRC32C of the next 16 bytes, sequence, high watermark.
pub const SLOT_LEN: usize = 24;
/// Marks a slot as written by this code.
const MAGIC: [u8; 4] = *b"SLHW";

/// The checkpoint file of one log directory and the sequence of its newest slot.
#[derive(Debug)]
pub struct HwCheckpoint {
    /// `<dir>/hw.checkpoint`.
    path: PathBuf,
    /// Open handle once the file exists.
    file: Option<Arc<File>>,
    /// Sequence of the newest valid slot (0: none); the next write uses `seq + 1`, in slot
    /// `(seq + 1) % 2`.
    seq: u64,
}

/// Encode one slot.
pub fn encode(seq: u64, hw: u64) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&hw.to_le_bytes());
    let crc = crc32c::crc32c(&b[8..24]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decode one slot: `(seq, hw)`, or `None` when it is empty or damaged.
pub fn decode(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() < SLOT_LEN || b[0..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if crc != crc32c::crc32c(&b[8..24]) {
        return None;
    }
    let u = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    Some((u(8), u(16)))
}

/// Where slot `seq % 2` lives.
fn slot_position(seq: u64) -> u64 {
    (seq % 2) * SLOT_STRIDE
}

impl HwCheckpoint {
    /// Load `<dir>/hw.checkpoint`: the high watermark of its newest valid slot, `None` when the
    /// file is missing or both slots are damaged (then warned about).
    ///
    /// # Errors
    /// I/O errors other than a missing file.
    pub fn load(dir: &Path) -> Result<(HwCheckpoint, Option<u64>), LogError> {
        let _ = fs::remove_file(dir.join(HW_TMP)); // a creation interrupted before its rename
        let path = dir.join(HW_FILE);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((
                    HwCheckpoint {
                        path,
                        file: None,
                        seq: 0,
                    },
                    None,
                ));
            }
            Err(e) => return Err(LogError::io("open high watermark checkpoint", &path, e)),
        };
        let bytes = fs::read(&path).map_err(|e| LogError::io("read high watermark checkpoint", &path, e))?;
        let slot = |seq: u64| {
            let at = slot_position(seq) as usize;
            bytes.get(at..).and_then(decode)
        };
        let newest = [slot(0), slot(1)]
            .into_iter()
            .flatten()
            .max_by_key(|&(seq, _)| seq);
        if newest.is_none() {
            tracing::warn!(path = %path.display(), "high watermark checkpoint damaged; starting from 0");
        }
        let (seq, hw) = newest.map_or((0, None), |(s, h)| (s, Some(h)));
        Ok((
            HwCheckpoint {
                path,
                file: Some(Arc::new(file)),
                seq,
            },
            hw,
        ))
    }

    /// What [`store`](Self::store) needs, to run off the async workers: the file (if it exists),
    /// its path and the sequence to write.
    pub fn next_write(&self) -> (Option<Arc<File>>, PathBuf, u64) {
        (self.file.clone(), self.path.clone(), self.seq + 1)
    }

    /// Note a successful [`store`] of sequence `seq` through `file`.
    pub fn stored(&mut self, file: Arc<File>, seq: u64) {
        self.file = Some(file);
        self.seq = seq;
    }
}

/// Persist `hw` as sequence `seq`: in place into its slot with one `fdatasync` when the file
/// exists; otherwise the file is created (temp file, fsync, rename, directory fsync) with its
/// size fixed, so later writes change no metadata. Returns the handle. Blocking.
///
/// # Errors
/// I/O errors; the value on disk is then the previous one (or a damaged slot that loads as the
/// previous one).
pub fn store(file: Option<Arc<File>>, path: &Path, seq: u64, hw: u64) -> Result<Arc<File>, LogError> {
    let slot = encode(seq, hw);
    if let Some(file) = file {
        file.write_all_at(&slot, slot_position(seq))
            .map_err(|e| LogError::io("write high watermark checkpoint", path, e))?;
        file.sync_data()
            .map_err(|e| LogError::io("sync high watermark checkpoint", path, e))?;
        return Ok(file);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(HW_TMP);
    let io = |op| move |e| LogError::io(op, path, e);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create high watermark checkpoint"))?;
    f.set_len(SLOT_STRIDE * 2)
        .map_err(io("size high watermark checkpoint"))?;
    f.write_all_at(&slot, slot_position(seq))
        .map_err(io("write high watermark checkpoint"))?;
    f.sync_all().map_err(io("sync high watermark checkpoint"))?;
    fs::rename(&tmp, path).map_err(io("rename high watermark checkpoint"))?;
    sync_dir(dir)?;
    Ok(Arc::new(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(ck: &mut HwCheckpoint, hw: u64) {
        let (file, path, seq) = ck.next_write();
        let f = store(file, &path, seq, hw).expect("store");
        ck.stored(f, seq);
    }

    /// Values round-trip through alternating slots; the newest valid slot wins.
    #[test]
    fn alternating_slots_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ck, hw) = HwCheckpoint::load(dir.path()).expect("load");
        assert_eq!(hw, None);
        for v in [3u64, 9, 20] {
            write(&mut ck, v);
            let (_, back) = HwCheckpoint::load(dir.path()).expect("load");
            assert_eq!(back, Some(v));
        }
        assert_eq!(
            fs::metadata(dir.path().join(HW_FILE)).expect("stat").len(),
            2 * SLOT_STRIDE
        );
    }

    /// A torn (damaged) newest slot falls back to the previous value, which was the last one
    /// exposed; both damaged loads as missing; a leftover temp file is removed.
    #[test]
    fn torn_slot_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ck, _) = HwCheckpoint::load(dir.path()).expect("load");
        write(&mut ck, 5);
        write(&mut ck, 8); // seq 2, slot 0
        let path = dir.path().join(HW_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[20] ^= 0xff; // inside slot 0's hw
        fs::write(&path, &bytes).expect("write");
        assert_eq!(HwCheckpoint::load(dir.path()).expect("load").1, Some(5));
        bytes[SLOT_STRIDE as usize + 3] ^= 0xff; // slot 1's magic
        fs::write(&path, &bytes).expect("write");
        fs::write(dir.path().join(HW_TMP), b"partial").expect("write tmp");
        let (ck, hw) = HwCheckpoint::load(dir.path()).expect("load");
        assert_eq!(hw, None);
        assert!(!dir.path().join(HW_TMP).exists());
        // Writing again after total damage still yields a loadable newest value.
        let mut ck = ck;
        write(&mut ck, 11);
        assert_eq!(HwCheckpoint::load(dir.path()).expect("load").1, Some(11));
    }
}
