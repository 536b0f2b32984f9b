//! Small filesystem primitives with the durability rules qpack relies on: atomic replace (temp file, fsync,
//! rename, fsync of the directory), directory sync, `syncfs`, and advisory locks.
//!
//! Owns nothing but these helpers; callers decide what must be durable and when.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Opens a directory for syncing or as an anchor for *at() calls.
pub fn open_dir(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(path)
}

/// fsyncs a directory so that names created or renamed in it are durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    open_dir(path)?.sync_all()
}

/// Flushes every dirty page of the filesystem holding `path` (one call instead of an fsync per object).
pub fn syncfs(path: &Path) -> io::Result<()> {
    let dir = open_dir(path)?;
    rustix::fs::syncfs(dir.as_fd()).map_err(io::Error::from)
}

/// Replaces `dir/name` with `data` atomically and durably: a reader sees the old or the new content, and after
/// a crash the file is the old or the new one, never a mix or empty.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Replaces `dir/name` with `data` atomically but not durably (no fsync): for caches, which a crash may lose
/// but must never leave half written.
pub fn write_replace(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Reads a whole file, refusing one larger than `cap` bytes before reading it, and never following a symlink
/// at the last component.
pub fn read_capped(path: &Path, cap: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path)?;
    let len = f.metadata()?.len();
    if len > cap as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{len} bytes, over the {cap}-byte limit")));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("grew past the {cap}-byte limit")));
    }
    Ok(buf)
}

/// An advisory lock on a file (flock), released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
}

/// Shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders (readers).
    Shared,
    /// One holder (writers).
    Exclusive,
}

impl FileLock {
    /// Takes the lock without waiting; `Ok(None)` if someone else holds it.
    pub fn try_lock(path: &Path, mode: LockMode) -> io::Result<Option<Self>> {
        Self::lock_impl(path, mode, true)
    }

    /// Takes the lock, waiting as long as needed.
    pub fn lock(path: &Path, mode: LockMode) -> io::Result<Self> {
        Ok(Self::lock_impl(path, mode, false)?.expect("blocking flock returns the lock"))
    }

    fn lock_impl(path: &Path, mode: LockMode, nonblocking: bool) -> io::Result<Option<Self>> {
        use rustix::fs::FlockOperation as Op;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let op = match (mode, nonblocking) {
            (LockMode::Shared, false) => Op::LockShared,
            (LockMode::Shared, true) => Op::NonBlockingLockShared,
            (LockMode::Exclusive, false) => Op::LockExclusive,
            (LockMode::Exclusive, true) => Op::NonBlockingLockExclusive,
        };
        match rustix::fs::flock(file.as_fd(), op) {
            Ok(()) => Ok(Some(Self { _file: file, path: path.to_owned() })),
            Err(rustix::io::Errno::WOULDBLOCK) if nonblocking => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
