//! A consumer group's committed offsets: one small JSON file per group and
//! topic (`groups/GROUP/TOPIC@ID.json`), replaced atomically and durably.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::faults::{Faults, SyncSite};
use crate::{Error, Result, create_dir_durable, write_atomic};

#[derive(Serialize, Deserialize)]
struct GroupFile {
    /// Committed offset per partition.
    committed: Vec<u64>,
}

/// Where `group` keeps its committed offsets of `topic` (its key).
pub(crate) fn group_file(dir: &Path, group: &str, topic: &str) -> PathBuf {
    dir.join("groups").join(group).join(format!("{topic}.json"))
}

/// The committed offset per partition in a group file; `None` if there is none yet.
pub(crate) fn read_committed(path: &Path) -> Result<Option<Vec<u64>>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let f: GroupFile = serde_json::from_slice(&bytes).map_err(|source| Error::Metadata { path: path.to_owned(), source })?;
            Ok(Some(f.committed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Replace the group file at `path` with `committed`, durably (its
/// directory first, if new).
pub(crate) fn write_committed(path: &Path, committed: &[u64], faults: &Faults) -> Result<()> {
    create_dir_durable(path.parent().expect("a group file has a directory"), faults)?;
    let bytes = serde_json::to_vec(&GroupFile { committed: committed.to_vec() }).expect("group file serialises");
    write_atomic(path, &bytes, SyncSite::Offsets, faults)
}
