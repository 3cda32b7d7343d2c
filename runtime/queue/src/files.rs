//! The durable file-system steps every part of the queue takes the same
//! way: syncing a directory after its entries change, creating directories
//! so that a power cut cannot lose them, replacing a file atomically, and
//! the data directory's lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::faults::Faults;
use crate::{Error, Result, SyncSite};

/// fsync a directory so that created, renamed or deleted entries are durable.
pub(crate) fn sync_dir(dir: &Path, faults: &Faults) -> Result<()> {
    faults.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Create the directory `dir` and any missing parents durably: after each
/// one is made, its parent is synced, so a power cut cannot lose it (and with
/// it everything later written below it).
pub(crate) fn create_dir_durable(dir: &Path, faults: &Faults) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_dir_durable(parent, faults)?;
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::io(dir, e)),
        _ => sync_dir(parent, faults),
    }
}

/// Write `bytes` to `path` atomically and durably (temp file, fsync at
/// `site`, rename, fsync dir).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], site: SyncSite, faults: &Faults) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|()| faults.sync_file(site, &tmp, &f, false)).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")), faults)
}

/// Lock the data directory `dir` for this process, recording its pid in
/// the lock file for the error another process gets.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let owner = fs::read_to_string(&path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
            return Err(Error::Locked { dir: dir.to_owned(), owner });
        }
        Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    file.set_len(0).map_err(|e| Error::io(&path, e))?;
    write!(file, "pid {}", std::process::id()).map_err(|e| Error::io(&path, e))?;
    Ok(file)
}
