//! A simulated power cut (tests only, feature `fault-injection`).
//!
//! `kill -9` keeps the page cache, so a crash test that only kills the
//! process cannot tell an fsync from none. This model keeps, for every file,
//! the length its last *completed* fsync covered, and for every directory,
//! the entries its last completed fsync covered. After the power is cut it
//! rebuilds the data directory from those records alone: data never synced
//! is gone, and creations, renames and deletions in a directory that was not
//! synced afterwards are undone. Files are kept alive by hard links in a
//! shadow directory, so a file renamed over or deleted since its directory
//! was last synced can still be brought back.
//!
//! It is the strict reading of POSIX: a real disk may keep more, never less.
//! Changes are taken as all or nothing per directory between two of its
//! fsyncs, and a file's synced prefix as never rewritten in place (the queue
//! only appends, overwrites the zeros it filled ahead of its appends,
//! truncates back, and replaces whole files by rename) — except files named
//! `*.redb` (the stage-state database, which rewrites pages in place): of
//! those, every completed fsync keeps a whole copy, and the restore brings
//! back that copy. A log segment synced for group commit says where its data
//! ends; past that its synced length is zeros, and the restore writes zeros
//! there, whatever was written over them since.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// A directory: inode and birth time, so that a reused inode is a new directory.
type DirKey = (u64, Option<SystemTime>);

#[derive(Debug, Clone, Copy)]
enum Entry {
    File(u64),
    Dir(DirKey),
}

#[derive(Debug)]
pub(crate) struct PowerModel {
    shadow: PathBuf,
    state: Mutex<State>,
}

/// What a file's completed fsyncs made durable.
#[derive(Debug, Clone, Copy, Default)]
struct Synced {
    /// Which fsync (in the order they began) the length is from: of two
    /// that overlap, the one begun later saw the file as it is now.
    begun: u64,
    /// The file's length when that fsync began.
    len: u64,
    /// Where its data ends: zeros from here to `len`. Data any completed
    /// fsync covered stays durable.
    data_end: u64,
}

#[derive(Debug, Default)]
struct State {
    cut: bool,
    /// File inode → what its completed fsyncs made durable.
    synced: HashMap<u64, Synced>,
    /// fsyncs of files begun so far (their order).
    syncs_begun: u64,
    /// Directory → its entries at its last completed fsync.
    dirs: HashMap<DirKey, Vec<(OsString, Entry)>>,
    /// Inodes hard-linked into the shadow directory (so never reused).
    pinned: HashSet<u64>,
    /// Inodes of files rewritten in place, whose durable content is a
    /// copy in the shadow directory (`INODE.image`).
    images: HashSet<u64>,
}

/// Whether the file at `path` is rewritten in place (see the module docs).
fn in_place(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "redb")
}

fn dir_key(meta: &fs::Metadata) -> DirKey {
    (meta.ino(), meta.created().ok())
}

fn power_is_off() -> io::Error {
    io::Error::other("simulated power cut")
}

impl PowerModel {
    /// A model in which everything under `root` now is durable.
    pub(crate) fn new(root: &Path, shadow: PathBuf) -> io::Result<Self> {
        let model = PowerModel { shadow, state: Mutex::default() };
        model.settle(&mut model.state.lock().unwrap(), root)?;
        Ok(model)
    }

    /// Record the tree under `dir` as durable as it is.
    fn settle(&self, st: &mut State, dir: &Path) -> io::Result<()> {
        let entries = self.list(st, dir)?;
        for (name, entry, len) in &entries {
            match *entry {
                Entry::Dir(_) => self.settle(st, &dir.join(name))?,
                Entry::File(ino) => {
                    st.synced.insert(ino, Synced { begun: 0, len: *len, data_end: *len });
                    if in_place(Path::new(name)) {
                        self.copy_image(st, &dir.join(name), ino)?;
                    }
                }
            }
        }
        st.dirs.insert(dir_key(&fs::metadata(dir)?), entries.into_iter().map(|(name, entry, _)| (name, entry)).collect());
        Ok(())
    }

    /// The entries of `dir` (files with their lengths), each file pinned.
    /// An entry removed while listing is left out.
    fn list(&self, st: &mut State, dir: &Path) -> io::Result<Vec<(OsString, Entry, u64)>> {
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = match fs::symlink_metadata(entry.path()) {
                Err(e) if gone(&e) => continue,
                meta => meta?,
            };
            if meta.is_dir() {
                entries.push((entry.file_name(), Entry::Dir(dir_key(&meta)), 0));
            } else if meta.is_file() {
                match self.pin(st, &entry.path(), meta.ino()) {
                    Err(e) if gone(&e) => continue,
                    pinned => pinned?,
                }
                entries.push((entry.file_name(), Entry::File(meta.ino()), meta.len()));
            }
        }
        Ok(entries)
    }

    pub(crate) fn cut(&self) {
        self.state.lock().unwrap().cut = true;
    }

    /// Keep the file at `path` (inode `ino`) alive until the restore.
    fn pin(&self, st: &mut State, path: &Path, ino: u64) -> io::Result<()> {
        if st.pinned.contains(&ino) {
            return Ok(());
        }
        fs::hard_link(path, self.shadow.join(ino.to_string()))?;
        st.pinned.insert(ino);
        Ok(())
    }

    /// Copy the file at `path` (inode `ino`) as its durable image.
    fn copy_image(&self, st: &mut State, path: &Path, ino: u64) -> io::Result<()> {
        let next = self.shadow.join(format!("{ino}.next"));
        fs::copy(path, &next)?;
        fs::rename(next, self.shadow.join(format!("{ino}.image")))?;
        st.images.insert(ino);
        Ok(())
    }

    /// Run `sync` on `file`; if it completes before the power is cut, what
    /// the file held when it started is durable: its data up to `data_end`
    /// (all of it if none) and zeros after that.
    pub(crate) fn sync_file(
        &self,
        path: &Path,
        file: &File,
        data_end: Option<u64>,
        sync: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let ino = file.metadata()?.ino();
        let next = self.shadow.join(format!("{ino}.next"));
        self.completed(
            |st| {
                self.pin(st, path, ino)?;
                if in_place(path) {
                    fs::copy(path, &next)?;
                }
                // The length under the model's lock, so that the order in
                // which fsyncs begin is the order in which they saw the file.
                let len = file.metadata()?.len();
                st.syncs_begun += 1;
                Ok(Synced { begun: st.syncs_begun, len, data_end: data_end.map_or(len, |end| end.min(len)) })
            },
            sync,
            |st, this| {
                let known = st.synced.entry(ino).or_default();
                let data_end = known.data_end.max(this.data_end);
                if this.begun > known.begun {
                    *known = this;
                }
                known.data_end = data_end.min(known.len);
                if in_place(path) && fs::rename(&next, self.shadow.join(format!("{ino}.image"))).is_ok() {
                    st.images.insert(ino);
                }
            },
        )
    }

    /// Run `sync` on the directory `dir`; if it completes before the power
    /// is cut, the entries it held when it started are durable.
    pub(crate) fn sync_dir(&self, dir: &Path, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let key = dir_key(&fs::metadata(dir)?);
        self.completed(
            |st| self.list(st, dir),
            sync,
            |st, entries| {
                st.dirs.insert(key, entries.into_iter().map(|(name, entry, _)| (name, entry)).collect());
            },
        )
    }

    /// With the power on: note what is about to be synced (`before`), run
    /// `sync` outside the lock, and, if the power is still on when it
    /// completes, record it as durable (`after`); a cut before or during it fails the sync.
    fn completed<T>(
        &self,
        before: impl FnOnce(&mut State) -> io::Result<T>,
        sync: impl FnOnce() -> io::Result<()>,
        after: impl FnOnce(&mut State, T),
    ) -> io::Result<()> {
        let noted = {
            let mut st = self.state.lock().unwrap();
            if st.cut {
                return Err(power_is_off());
            }
            before(&mut st)?
        };
        sync()?;
        let mut st = self.state.lock().unwrap();
        if st.cut {
            return Err(power_is_off());
        }
        after(&mut st, noted);
        Ok(())
    }

    pub(crate) fn restore(&self, root: &Path, into: &Path) -> io::Result<()> {
        let st = self.state.lock().unwrap();
        assert!(st.cut, "restore_after_power_cut before cut_power");
        self.rebuild(&st, dir_key(&fs::metadata(root)?), into)
    }

    fn rebuild(&self, st: &State, dir: DirKey, into: &Path) -> io::Result<()> {
        fs::create_dir(into)?;
        for (name, entry) in st.dirs.get(&dir).into_iter().flatten() {
            match *entry {
                Entry::File(ino) if st.images.contains(&ino) => {
                    fs::copy(self.shadow.join(format!("{ino}.image")), into.join(name))?;
                }
                Entry::File(ino) => {
                    let Synced { len, data_end, .. } = st.synced.get(&ino).copied().unwrap_or_default();
                    let source = File::open(self.shadow.join(ino.to_string()))?;
                    let mut restored = File::create(into.join(name))?;
                    let copied = io::copy(&mut io::Read::take(source, data_end), &mut restored)?;
                    // A file since cut shorter stays as short as the copy.
                    if copied == data_end {
                        restored.set_len(len)?;
                    }
                }
                Entry::Dir(key) => self.rebuild(st, key, &into.join(name))?,
            }
        }
        Ok(())
    }
}
