//! The incarnation of a data directory: a random UUID created once with the directory and never
//! changed, kept in `<dir>/incarnation`. A node that comes back with an empty volume has a new one
//! and is therefore a new ISR member (KIP-903); a restart on the same disk keeps it (followers
//! report only durable offsets, so a restart loses nothing it reported).

use std::{
    fs::{self, File},
    io::Write,
    path::Path,
};

use super::{error::LogError, index::sync_dir};

/// File name in the log directory.
pub const INCARNATION_FILE: &str = "incarnation";
/// Temporary name while the file is created.
const INCARNATION_TMP: &str = "incarnation.tmp";

/// Whether `s` is an incarnation this code wrote: 32 lowercase hex digits (a v4 UUID, simple form).
fn valid(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The directory's incarnation, created (temp file, fsync, rename, directory fsync) when the file
/// is missing. A file that does not hold a valid incarnation is replaced by a new one (warned
/// about): being taken for a new member is the safe side.
///
/// # Errors
/// I/O errors reading or creating the file.
pub fn load_or_create(dir: &Path) -> Result<String, LogError> {
    let path = dir.join(INCARNATION_FILE);
    match fs::read_to_string(&path) {
        Ok(s) if valid(s.trim()) => return Ok(s.trim().to_owned()),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "incarnation file damaged; this directory gets a new incarnation")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LogError::io("read incarnation", &path, e)),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tmp = dir.join(INCARNATION_TMP);
    let path = path.as_path();
    let io = |op| move |e| LogError::io(op, path, e);
    let mut f = File::create(&tmp).map_err(io("create incarnation"))?;
    f.write_all(format!("{id}\n").as_bytes())
        .map_err(io("write incarnation"))?;
    f.sync_all().map_err(io("sync incarnation"))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("rename incarnation"))?;
    sync_dir(dir)?;
    tracing::info!(dir = %dir.display(), incarnation = %id, "new data directory incarnation");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Created once, then read back unchanged; a damaged file is replaced by a fresh one.
    #[test]
    fn stable_then_replaced_when_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create(dir.path()).expect("create");
        assert!(valid(&a), "{a}");
        assert_eq!(load_or_create(dir.path()).expect("load"), a);
        fs::write(dir.path().join(INCARNATION_FILE), "garbage").expect("write");
        let b = load_or_create(dir.path()).expect("recreate");
        assert!(valid(&b) && b != a);
        assert_eq!(load_or_create(dir.path()).expect("load"), b);
    }
}
