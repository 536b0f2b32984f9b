//! Materializing a release: writing its tree (exact bytes, modes, mtimes, symlinks, hardlinks) into a directory.
//!
//! Every path is created relative to the destination's directory fd, parents opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (component-wise `O_NOFOLLOW` where openat2 is missing), new
//! files with `O_CREAT | O_EXCL | O_NOFOLLOW`: nothing from a manifest can make qpack write outside the
//! destination or through a symlink. Directories are created owner-writable and get their final mode and mtime
//! last, deepest first, so read-only directories work for an unprivileged user. Chunks are verified as read.

use crate::id::{ChunkId, ReleaseId};
use crate::manifest::{join, parent_of, show_path, Entry, EntryKind, PartKind, PartManifest, Release, MODE_SETID};
use crate::publish::Progress;
use crate::store::{Repository, StoreError};
use rayon::prelude::*;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a materialization failed.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// Reading the release from the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path being written (relative to the destination).
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The destination is not an empty directory.
    #[error("{0} is not empty\nhelp: check out into a new or empty directory")]
    NotEmpty(PathBuf),
    /// The release cannot be materialized safely.
    #[error("refused before writing anything: {0}")]
    Refused(String),
}

/// Options of a materialization.
#[derive(Debug, Clone, Default)]
pub struct MaterializeOptions {
    /// Restore setuid/setgid bits (otherwise a release carrying them is refused).
    pub allow_setuid: bool,
    /// `syncfs` the destination at the end.
    pub durable: bool,
}

/// What was written.
#[derive(Debug, Default, serde::Serialize)]
pub struct MaterializeReport {
    /// Regular files written.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Hardlinks.
    pub hardlinks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files hardlinked from an installed release instead of written.
    pub linked: u64,
}

/// The tree of a release, flattened: every entry with its path from the release root, sorted.
pub struct Plan {
    /// (path from the root, entry); the root itself has the empty path.
    pub entries: Vec<(Vec<u8>, Entry)>,
    /// Mount points of the product parts (immutable: installs make their files read-only and share them).
    pub products: Vec<Vec<u8>>,
    /// Files whose content is given here rather than by chunks (rendered configuration templates).
    pub inline: HashMap<Vec<u8>, Vec<u8>>,
}

impl Plan {
    /// Reads the manifests of `release` and merges its parts into one sorted tree, refusing overlaps (an entry
    /// of one part at or under another part's mount), mounts under a non-directory, and (unless allowed)
    /// setuid/setgid bits. Ancestors of a mount missing from the base part become 0755 directories.
    pub fn load(repo: &Repository, release: &Release, allow_setuid: bool) -> Result<Self, MaterializeError> {
        let refuse = |s: String| MaterializeError::Refused(s);
        let mut tree: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut manifests: Vec<(&[u8], PartManifest)> = Vec::new();
        for part in &release.parts {
            manifests.push((&part.mount, repo.read_manifest(&part.manifest)?));
        }
        // Base first, then the others: a mount must not land on or under a non-directory of the base.
        manifests.sort_by_key(|(m, _)| !m.is_empty());
        let mounts: Vec<&[u8]> =
            release.parts.iter().filter(|p| p.kind != PartKind::Base).map(|p| p.mount.as_slice()).collect();
        for (mount, m) in manifests {
            for e in m.entries {
                let full = join(mount, &e.path);
                if mount.is_empty() {
                    if let Some(mnt) = mounts
                        .iter()
                        .find(|mnt| full == **mnt || (full.starts_with(mnt) && full.get(mnt.len()) == Some(&b'/')))
                    {
                        return Err(refuse(format!(
                            "base part has {} at or under the mount of part {}",
                            show_path(&full),
                            show_path(mnt)
                        )));
                    }
                }
                if e.mode & MODE_SETID != 0 && !allow_setuid && !matches!(e.kind, EntryKind::Symlink { .. }) {
                    return Err(refuse(format!("{} has setuid/setgid bits (mode {:o})", show_path(&full), e.mode)));
                }
                let kind = match e.kind {
                    EntryKind::Hardlink { target } => EntryKind::Hardlink { target: join(mount, &target) },
                    k => k,
                };
                tree.insert(full, Entry { path: Vec::new(), kind, ..e });
            }
        }
        // Ancestors of each mount: directories (made if the base lacks them), never a file or a symlink.
        for mnt in &mounts {
            let mut p = parent_of(mnt);
            loop {
                match tree.get(p) {
                    Some(e) if e.kind != EntryKind::Dir => {
                        return Err(refuse(format!(
                            "part {} is mounted under {}, which is not a directory",
                            show_path(mnt),
                            show_path(p)
                        )))
                    }
                    Some(_) => {}
                    None => {
                        tree.insert(
                            p.to_vec(),
                            Entry { path: Vec::new(), mode: 0o755, mtime: Default::default(), kind: EntryKind::Dir },
                        );
                    }
                }
                if p.is_empty() {
                    break;
                }
                p = parent_of(p);
            }
        }
        let products = release
            .parts
            .iter()
            .filter(|p| matches!(p.kind, PartKind::Product { .. }))
            .map(|p| p.mount.clone())
            .collect();
        Ok(Self { entries: tree.into_iter().collect(), products, inline: HashMap::new() })
    }

    /// Whether `path` lies in a product part (immutable) rather than the base or config part (mutable).
    pub fn in_product(&self, path: &[u8]) -> bool {
        self.products.iter().any(|m| path == m.as_slice() || (path.starts_with(m) && path.get(m.len()) == Some(&b'/')))
    }

    /// The mode a file gets when installed: files of products lose their write bits when `readonly` is set.
    pub fn installed_mode(&self, path: &[u8], mode: u32, readonly: bool) -> u32 {
        if readonly && self.in_product(path) {
            mode & !0o222
        } else {
            mode
        }
    }
}

/// Identity of a file's installed inode: content (chunk list), installed mode and mtime. Two files with the same
/// key can share one inode.
pub type FileKey = ([u8; 32], u32, crate::manifest::Mtime);

/// The key of a file entry with its installed mode.
pub fn file_key(e: &Entry, mode: u32) -> Option<FileKey> {
    let EntryKind::File { size, chunks, .. } = &e.kind else { return None };
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    for c in chunks {
        h.update(&c.id.0);
        h.update(&c.len.to_le_bytes());
    }
    Some((*h.finalize().as_bytes(), mode, e.mtime))
}

/// Files of installed trees that a new install may hardlink instead of writing.
///
/// Each inode of an installed tree is linked into the new tree at most once: two distinct files of a release that
/// happen to be identical (say two empty `__init__.py` of one product, same mode and mtime) stay two inodes, as in
/// the source, and never become one hardlink group.
#[derive(Default)]
pub struct LinkSources {
    trees: Vec<Beneath>,
    by_key: HashMap<FileKey, Vec<(usize, Vec<u8>)>>,
    /// (st_dev, st_ino) of the inodes already used by the tree being written.
    claimed: std::sync::Mutex<std::collections::HashSet<(u64, u64)>>,
}

impl LinkSources {
    /// Adds the immutable files of an installed tree (`plan` installed read-only under `dir`).
    pub fn add_tree(&mut self, dir: &Path, plan: &Plan) -> io::Result<()> {
        let idx = self.trees.len();
        self.trees.push(Beneath::open(dir)?);
        for (path, e) in &plan.entries {
            if plan.in_product(path) && !plan.inline.contains_key(path) {
                if let Some(key) = file_key(e, plan.installed_mode(path, e.mode, true)) {
                    self.by_key.entry(key).or_default().push((idx, path.clone()));
                }
            }
        }
        Ok(())
    }

    /// Marks the inode of `st` as used by the tree being written; false if it already was.
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are not u64 everywhere
    fn claim(&self, st: &rustix::fs::Stat) -> bool {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner()).insert((st.st_dev as u64, st.st_ino as u64))
    }

    /// Hardlinks `name` in `pfd` (the file at `path` of `plan`, with key `key`) to an identical installed file
    /// whose inode the new tree does not use yet. The file at the same path is preferred; a file at another path
    /// is taken only if the new tree has no identical file at that path (which will want it). False if none.
    #[allow(clippy::too_many_arguments)]
    fn link(
        &self,
        plan: &Plan,
        readonly: bool,
        path: &[u8],
        key: &FileKey,
        pfd: &OwnedFd,
        name: &[u8],
        cache: &mut DirCache,
    ) -> bool {
        let Some(cands) = self.by_key.get(key) else { return false };
        let wanted_there = |p: &[u8]| {
            plan.entries.binary_search_by(|(q, _)| q.as_slice().cmp(p)).is_ok_and(|i| {
                let e = &plan.entries[i].1;
                plan.in_product(p) && file_key(e, plan.installed_mode(p, e.mode, readonly)).as_ref() == Some(key)
            })
        };
        let same = cands.iter().filter(|(_, p)| p == path);
        let others = cands.iter().filter(|(_, p)| p != path && !wanted_there(p));
        for (i, src) in same.chain(others) {
            let (sparent, sname) = split(src);
            let Ok(sfd) = cache.open(*i, &self.trees[*i], sparent) else { continue };
            let Ok(st) = rustix::fs::statat(sfd, os(sname), AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile || !self.claim(&st)
            {
                continue;
            }
            // A failed link (too many links, another filesystem) falls back to the next source or to writing.
            if rustix::fs::linkat(sfd, os(sname), pfd, os(name), AtFlags::empty()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// The directories one worker opened last: files are handed out in path order, so consecutive files mostly
/// share their parent (and their link source's parent), and reopening it with openat2 per file cost ~16% of an
/// install that hardlinks most files.
#[derive(Default)]
struct DirCache {
    last: Option<(usize, Vec<u8>, OwnedFd)>,
}

impl DirCache {
    /// The directory `parent` beneath `beneath` (tree number `tree`, for caches shared by several trees).
    fn open(&mut self, tree: usize, beneath: &Beneath, parent: &[u8]) -> io::Result<&OwnedFd> {
        if self.last.as_ref().is_none_or(|(t, p, _)| *t != tree || p.as_slice() != parent) {
            self.last = Some((tree, parent.to_vec(), beneath.open_dir(parent)?));
        }
        Ok(&self.last.as_ref().expect("set above").2)
    }
}

/// How [`write_plan`] writes.
#[derive(Default)]
pub struct WriteOptions<'a> {
    /// The destination may hold an interrupted earlier attempt: keep its complete files (right type, size, mode,
    /// mtime: the mtime is set last), redo the rest.
    pub resume: bool,
    /// Product files lose their write bits (so a shared inode is not edited by accident).
    pub readonly_products: bool,
    /// Identical files of installed releases to hardlink instead of writing (product files only).
    pub link: Option<&'a LinkSources>,
}

/// Chunk contents verified as they arrived (decompressed and hashed to their id), held a short while for the
/// files being filled ([`Filler`]): a node that installs while it fetches would otherwise decompress and hash every chunk twice,
/// once to check it on arrival and once to write it (in the 50-node lab, ~8% and ~6% of the machine's CPU).
/// Only the chunks asked for ([`Self::want`]) are kept, at most `cap` bytes of them, the oldest dropped first: a
/// chunk no longer held is read back from the repository ([`Self::take_or_read`]).
pub struct Verified {
    cap: usize,
    inner: Mutex<VerifiedInner>,
    /// Called with the id of each chunk kept, once it can be taken.
    notify: Option<Notify>,
}

/// What [`Verified`] calls with each chunk it keeps.
type Notify = Box<dyn Fn(&ChunkId) + Send + Sync>;

#[derive(Default)]
struct VerifiedInner {
    wanted: HashSet<ChunkId>,
    held: HashMap<ChunkId, Vec<u8>>,
    /// Held ids, oldest first (and ids taken since, skipped when met).
    order: VecDeque<ChunkId>,
    bytes: usize,
    taken: u64,
}

impl Verified {
    /// Holds at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self { cap, inner: Mutex::default(), notify: None }
    }

    /// Holds at most `cap` bytes and calls `notify` with the id of each chunk it keeps, once it can be taken.
    pub fn notifying(cap: usize, notify: impl Fn(&ChunkId) + Send + Sync + 'static) -> Self {
        Self { cap, inner: Mutex::default(), notify: Some(Box::new(notify)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VerifiedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// These chunks are to be kept when they are offered.
    pub fn want(&self, ids: impl IntoIterator<Item = ChunkId>) {
        self.lock().wanted.extend(ids);
    }

    /// Keeps the verified contents of chunk `id` if it is wanted, dropping the oldest to make room. The caller
    /// has checked `raw` against `id`.
    pub fn offer(&self, id: &ChunkId, raw: Vec<u8>) {
        {
            let mut g = self.lock();
            if raw.len() > self.cap || !g.wanted.remove(id) {
                return;
            }
            while g.bytes + raw.len() > self.cap {
                let Some(old) = g.order.pop_front() else { break };
                if let Some(d) = g.held.remove(&old) {
                    g.bytes -= d.len();
                }
            }
            g.bytes += raw.len();
            g.order.push_back(*id);
            g.held.insert(*id, raw);
        }
        if let Some(n) = &self.notify {
            n(id);
        }
    }

    /// The contents of chunk `id`, if held (once: it is no longer held after).
    pub fn take(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let mut g = self.lock();
        let d = g.held.remove(id)?;
        g.bytes -= d.len();
        g.taken += 1;
        if g.held.is_empty() {
            g.order.clear();
        }
        Some(d)
    }

    /// The contents of chunk `id` of `len` bytes, if held with that length (once).
    pub fn take_sized(&self, id: &ChunkId, len: u32) -> Option<Vec<u8>> {
        self.take(id).filter(|d| d.len() == len as usize)
    }

    /// The contents of chunk `id` of `len` bytes: held ([`Self::take_sized`]), else read from `repo` (and
    /// verified as read).
    pub fn take_or_read(&self, repo: &Repository, id: &ChunkId, len: u32) -> Result<Vec<u8>, StoreError> {
        match self.take_sized(id, len) {
            Some(d) => Ok(d),
            None => repo.read_chunk(id, Some(len)),
        }
    }

    /// How many chunks were taken.
    pub fn taken(&self) -> u64 {
        self.lock().taken
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Splits a relative path into (parent, name).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn os(p: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(p)
}

/// A directory that paths are resolved beneath, never through a symlink.
pub struct Beneath {
    root: OwnedFd,
}

impl Beneath {
    /// Opens `dir` (which must not itself be a symlink).
    pub fn open(dir: &Path) -> io::Result<Self> {
        let root = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        Ok(Self { root })
    }

    /// The root directory fd.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory at `rel` beneath the root, refusing any symlink on the way.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
        if rel.is_empty() {
            return Ok(rustix::io::fcntl_dupfd_cloexec(&self.root, 0)?);
        }
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.root, os(rel), flags, Mode::empty(), resolve) {
            Ok(fd) => Ok(fd),
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                // No openat2 (old kernel or seccomp): walk one component at a time with O_NOFOLLOW.
                let mut fd = rustix::io::fcntl_dupfd_cloexec(&self.root, 0)?;
                for comp in rel.split(|&b| b == b'/') {
                    if comp.is_empty() || comp == b"." || comp == b".." {
                        return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe path component"));
                    }
                    fd = rustix::fs::openat(&fd, os(comp), flags, Mode::empty())?;
                }
                Ok(fd)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn ts(m: &crate::manifest::Mtime) -> Timestamps {
    let t = Timespec { tv_sec: m.secs, tv_nsec: m.nanos as _ };
    Timestamps { last_access: t, last_modification: t }
}

/// Writes the whole tree of `release` into `dest`, which must be missing or an empty directory.
pub fn checkout(
    repo: &Repository,
    release_id: &ReleaseId,
    dest: &Path,
    opts: &MaterializeOptions,
    progress: &dyn Progress,
) -> Result<MaterializeReport, MaterializeError> {
    let (_, release) = repo.read_release(release_id)?;
    let plan = Plan::load(repo, &release, opts.allow_setuid)?;
    match std::fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(MaterializeError::NotEmpty(dest.to_owned()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(dest)
            .map_err(|source| MaterializeError::Io { path: dest.display().to_string(), source })?,
        Err(source) => return Err(MaterializeError::Io { path: dest.display().to_string(), source }),
    }
    let beneath =
        Beneath::open(dest).map_err(|source| MaterializeError::Io { path: dest.display().to_string(), source })?;
    let total: u64 =
        plan.entries.iter().map(|(_, e)| if let EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum();
    progress.phase("writing", total);
    let report = write_plan(repo, &plan, &beneath, &WriteOptions::default(), progress)?;
    if opts.durable {
        rustix::fs::syncfs(beneath.root())
            .map_err(|e| MaterializeError::Io { path: dest.display().to_string(), source: e.into() })?;
    }
    Ok(report)
}

/// Writes a plan beneath a directory (empty, or holding an interrupted attempt with `opts.resume`): directories,
/// then files (in parallel), symlinks and hardlinks, then directory modes and mtimes, deepest first.
pub fn write_plan(
    repo: &Repository,
    plan: &Plan,
    beneath: &Beneath,
    opts: &WriteOptions,
    progress: &dyn Progress,
) -> Result<MaterializeReport, MaterializeError> {
    let io_err = |p: &[u8]| {
        let path = if p.is_empty() { ".".to_string() } else { show_path(p) };
        move |source: io::Error| MaterializeError::Io { path, source }
    };
    // 1. Directories, owner-writable until step 4.
    let mut report = MaterializeReport { dirs: make_dirs(plan, beneath, opts.resume)?, ..Default::default() };
    // 2. Regular files, in parallel.
    let files: Vec<usize> =
        (0..plan.entries.len()).filter(|&i| matches!(plan.entries[i].1.kind, EntryKind::File { .. })).collect();
    let placed = place_files(repo, plan, beneath, &files, opts, progress)?;
    report.files = placed.files;
    report.bytes = placed.bytes;
    report.linked = placed.linked;
    // 3. Symlinks and hardlinks (an earlier attempt's are replaced: they are cheap).
    for (path, e) in &plan.entries {
        let (parent, name) = split(path);
        match &e.kind {
            EntryKind::Symlink { target } => {
                let pfd = beneath.open_dir(parent).map_err(io_err(path))?;
                if opts.resume {
                    remove_if_present(&pfd, name).map_err(io_err(path))?;
                }
                rustix::fs::symlinkat(os(target), &pfd, os(name)).map_err(|e| io_err(path)(e.into()))?;
                rustix::fs::utimensat(&pfd, os(name), &ts(&e.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(path)(e.into()))?;
                report.symlinks += 1;
            }
            EntryKind::Hardlink { target } => {
                let (tparent, tname) = split(target);
                let tfd = beneath.open_dir(tparent).map_err(io_err(path))?;
                let pfd = beneath.open_dir(parent).map_err(io_err(path))?;
                if opts.resume {
                    remove_if_present(&pfd, name).map_err(io_err(path))?;
                }
                // linkat without AT_SYMLINK_FOLLOW links the name itself, never what a symlink points to.
                rustix::fs::linkat(&tfd, os(tname), &pfd, os(name), AtFlags::empty())
                    .map_err(|e| io_err(path)(e.into()))?;
                report.files += 1;
                report.hardlinks += 1;
            }
            _ => {}
        }
    }
    // 4. Directory modes and mtimes, children before parents (making an entry changes its parent's mtime).
    for (path, e) in plan.entries.iter().rev() {
        if e.kind == EntryKind::Dir {
            let fd = beneath.open_dir(path).map_err(io_err(path))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode)).map_err(|e| io_err(path)(e.into()))?;
            rustix::fs::futimens(&fd, &ts(&e.mtime)).map_err(|e| io_err(path)(e.into()))?;
        }
    }
    Ok(report)
}

/// Makes the directories of a plan beneath a directory, parents first (the plan is sorted), owner-writable
/// until [`write_plan`] gives them their final mode. With `resume`, a directory already there is kept (made
/// writable again) and anything else at its path replaced. Returns how many directories the plan has.
pub fn make_dirs(plan: &Plan, beneath: &Beneath, resume: bool) -> Result<u64, MaterializeError> {
    let io_err = |p: &[u8]| {
        let path = if p.is_empty() { ".".to_string() } else { show_path(p) };
        move |source: io::Error| MaterializeError::Io { path, source }
    };
    let mut dirs = 0;
    for (path, e) in &plan.entries {
        if e.kind == EntryKind::Dir {
            dirs += 1;
            if path.is_empty() {
                if resume {
                    rustix::fs::fchmod(beneath.root(), Mode::from_raw_mode(0o700 | e.mode))
                        .map_err(|e| io_err(path)(e.into()))?;
                }
                continue;
            }
            let (parent, name) = split(path);
            let pfd = beneath.open_dir(parent).map_err(io_err(path))?;
            match rustix::fs::mkdirat(&pfd, os(name), Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) if resume => {
                    // Left by the earlier attempt: a directory is made writable again in case that attempt had
                    // already set its final mode; anything else there (a symlink is never followed) is replaced.
                    let st = rustix::fs::statat(&pfd, os(name), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| io_err(path)(e.into()))?;
                    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
                        rustix::fs::unlinkat(&pfd, os(name), AtFlags::empty()).map_err(|e| io_err(path)(e.into()))?;
                        rustix::fs::mkdirat(&pfd, os(name), Mode::from_raw_mode(0o700))
                            .map_err(|e| io_err(path)(e.into()))?;
                    }
                    let fd = beneath.open_dir(path).map_err(io_err(path))?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700 | e.mode)).map_err(|e| io_err(path)(e.into()))?;
                }
                Err(e) => return Err(io_err(path)(e.into())),
            }
        }
    }
    Ok(dirs)
}

/// Puts regular files of a plan in place (`which`: indices into `plan.entries`), in parallel, as [`write_plan`]
/// does: kept from an earlier attempt (with `opts.resume`), hardlinked from an installed release, or written.
/// Their directories must exist ([`make_dirs`]). An install writes files this way while the rest of the release
/// is still being fetched; its final [`write_plan`], resuming, keeps them.
pub fn place_files(
    repo: &Repository,
    plan: &Plan,
    beneath: &Beneath,
    which: &[usize],
    opts: &WriteOptions,
    progress: &dyn Progress,
) -> Result<MaterializeReport, MaterializeError> {
    let written = which
        .par_iter()
        .map_init(
            || (DirCache::default(), DirCache::default()),
            |(dest, src), &i| {
                let (path, e) = &plan.entries[i];
                place_file(repo, plan, beneath, path, e, opts, dest, src, progress)
            },
        )
        .collect::<Result<Vec<(u64, bool)>, MaterializeError>>()?;
    Ok(MaterializeReport {
        files: which.len() as u64,
        bytes: written.iter().map(|w| w.0).sum(),
        linked: written.iter().filter(|w| w.1).count() as u64,
        ..Default::default()
    })
}

/// Whether `st` is a complete file of an earlier attempt: a regular file of the entry's size, mode and mtime (the
/// mtime is set last).
#[allow(clippy::unnecessary_cast)] // st_size and st_mtime are not i64 everywhere
fn is_complete(st: &rustix::fs::Stat, size: u64, mode: u32, e: &Entry) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        && st.st_size as u64 == size
        && (st.st_mode & 0o7777) == mode
        && st.st_mtime as i64 == e.mtime.secs
        && st.st_mtime_nsec as u32 == e.mtime.nanos
}

/// Unlinks `name` in `dir` if it exists (a file or symlink of an interrupted attempt).
fn remove_if_present(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, os(name), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Puts one regular file in place: kept from an earlier attempt, hardlinked from an installed release, or
/// written. Returns (bytes written, whether it was linked).
#[allow(clippy::too_many_arguments)]
fn place_file(
    repo: &Repository,
    plan: &Plan,
    beneath: &Beneath,
    path: &[u8],
    e: &Entry,
    opts: &WriteOptions,
    dest_dirs: &mut DirCache,
    src_dirs: &mut DirCache,
    progress: &dyn Progress,
) -> Result<(u64, bool), MaterializeError> {
    let EntryKind::File { size, .. } = &e.kind else { return Ok((0, false)) };
    let io_err = |source: io::Error| MaterializeError::Io { path: show_path(path), source };
    let mode = plan.installed_mode(path, e.mode, opts.readonly_products);
    let (parent, name) = split(path);
    let pfd = dest_dirs.open(0, beneath, parent).map_err(io_err)?;
    if opts.resume {
        match rustix::fs::statat(pfd, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let complete = is_complete(&st, *size, mode, e);
                // A kept file linked by the earlier attempt shares its inode with an installed release: no other
                // file of this tree may be linked to that inode (else it is redone).
                let own_inode = |l: &LinkSources| st.st_nlink <= 1 || l.claim(&st);
                if complete && opts.link.is_none_or(own_inode) {
                    progress.advance(*size);
                    return Ok((0, false));
                }
                remove_if_present(pfd, name).map_err(io_err)?;
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_err(e.into())),
        }
    }
    if let (Some(link), false) = (opts.link, plan.inline.contains_key(path)) {
        if plan.in_product(path) {
            if let Some(key) = file_key(e, mode) {
                if link.link(plan, opts.readonly_products, path, &key, pfd, name, src_dirs) {
                    progress.advance(*size);
                    return Ok((0, true));
                }
            }
        }
    }
    write_file(repo, plan, pfd, path, e, mode, progress).map(|n| (n, false))
}

#[allow(clippy::too_many_arguments)]
fn write_file(
    repo: &Repository,
    plan: &Plan,
    pfd: &OwnedFd,
    path: &[u8],
    e: &Entry,
    mode: u32,
    progress: &dyn Progress,
) -> Result<u64, MaterializeError> {
    use std::io::Write;
    let EntryKind::File { chunks, .. } = &e.kind else { return Ok(0) };
    let io_err = |source: io::Error| MaterializeError::Io { path: show_path(path), source };
    let (_, name) = split(path);
    let fd = rustix::fs::openat(
        pfd,
        os(name),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_err(e.into()))?;
    let mut f = std::fs::File::from(fd);
    let mut n = 0u64;
    if let Some(content) = plan.inline.get(path) {
        f.write_all(content).map_err(io_err)?;
        n = content.len() as u64;
    } else {
        for c in chunks {
            let data = repo.read_chunk(&c.id, Some(c.len))?;
            f.write_all(&data).map_err(io_err)?;
            n += data.len() as u64;
            progress.advance(data.len() as u64);
        }
    }
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(|e| io_err(e.into()))?;
    rustix::fs::futimens(&f, &ts(&e.mtime)).map_err(|e| io_err(e.into()))?;
    Ok(n)
}

/// Writes regular files of a plan chunk by chunk, in whatever order their chunks come: each chunk goes to every
/// place the files being filled have it as soon as it is [`put`](Self::put), and a file gets its final mode and
/// mtime (what marks it complete for [`WriteOptions::resume`]) once its last place is written.
///
/// Installing while fetching fills this way the files whose chunks are still to come. Chunks come in the swarm's
/// order, not file by file, so a file of several chunks is mostly complete only near the end of the fetch:
/// writing each file once all its chunks were there piled that work up in the fetch's last seconds.
pub struct Filler<'a> {
    plan: &'a Plan,
    beneath: &'a Beneath,
    readonly: bool,
    /// Per chunk still to write: its length, and (file as an index into the plan's entries, offset) per place.
    places: HashMap<ChunkId, (u32, Vec<(u32, u64)>)>,
    /// Per file not yet complete: places still to write.
    left: HashMap<u32, u32>,
    /// Files created (by their first chunk).
    begun: HashSet<u32>,
    dirs: DirCache,
    /// Files completed.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

impl<'a> Filler<'a> {
    /// Takes the regular files `which` (indices into `plan.entries`) to fill beneath `beneath`, whose directories
    /// exist ([`make_dirs`]). With `resume`, a file an earlier attempt completed is kept (and not filled), and
    /// anything else at a file's path is removed; without it the paths must be free.
    pub fn new(
        plan: &'a Plan,
        beneath: &'a Beneath,
        which: &[usize],
        readonly: bool,
        resume: bool,
    ) -> Result<Self, MaterializeError> {
        let mut f = Filler {
            plan,
            beneath,
            readonly,
            places: HashMap::new(),
            left: HashMap::new(),
            begun: HashSet::new(),
            dirs: DirCache::default(),
            files: 0,
            bytes: 0,
        };
        for &k in which {
            let (path, e) = &plan.entries[k];
            let EntryKind::File { size, chunks, .. } = &e.kind else { continue };
            if resume {
                let io_err = |source: io::Error| MaterializeError::Io { path: show_path(path), source };
                let (parent, name) = split(path);
                let pfd = f.dirs.open(0, beneath, parent).map_err(io_err)?;
                match rustix::fs::statat(pfd, os(name), AtFlags::SYMLINK_NOFOLLOW) {
                    // Linked files (more than one name) are left to the install, which knows which it may keep.
                    Ok(st)
                        if st.st_nlink <= 1
                            && is_complete(&st, *size, plan.installed_mode(path, e.mode, readonly), e) =>
                    {
                        continue
                    }
                    Ok(_) => remove_if_present(pfd, name).map_err(io_err)?,
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(io_err(e.into())),
                }
            }
            let mut off = 0u64;
            for c in chunks {
                f.places.entry(c.id).or_insert_with(|| (c.len, Vec::new())).1.push((k as u32, off));
                off += u64::from(c.len);
            }
            // An empty file has no chunk to wait for.
            if chunks.is_empty() {
                f.write_at(k as u32, &[], 0)?;
                f.complete(k as u32)?;
            } else {
                f.left.insert(k as u32, chunks.len() as u32);
            }
        }
        Ok(f)
    }

    /// The chunks still to write, with their lengths.
    pub fn wanted(&self) -> impl Iterator<Item = (&ChunkId, u32)> {
        self.places.iter().map(|(id, (len, _))| (id, *len))
    }

    /// The length of chunk `id` if it is still to write.
    pub fn wants(&self, id: &ChunkId) -> Option<u32> {
        self.places.get(id).map(|(len, _)| *len)
    }

    /// Files not yet complete.
    pub fn incomplete(&self) -> usize {
        self.left.len()
    }

    /// Writes chunk `id` (its uncompressed bytes, verified by the caller) at each of its places, and completes the
    /// files it was the last of. A chunk not (or no longer) wanted is ignored.
    pub fn put(&mut self, id: &ChunkId, data: &[u8]) -> Result<(), MaterializeError> {
        let Some((len, places)) = self.places.remove(id) else { return Ok(()) };
        if data.len() != len as usize {
            let why = format!("chunk {} of {} bytes where the manifest says {len}", id.to_hex(), data.len());
            let k = places[0].0;
            self.places.insert(*id, (len, places));
            return Err(self.io_err(k)(io::Error::new(io::ErrorKind::InvalidData, why)));
        }
        for (k, off) in places {
            self.write_at(k, data, off)?;
            let n = self.left.get_mut(&k).expect("a file with places left is counted");
            *n -= 1;
            if *n == 0 {
                self.left.remove(&k);
                self.complete(k)?;
            }
        }
        Ok(())
    }

    fn io_err(&self, k: u32) -> impl Fn(io::Error) -> MaterializeError + '_ {
        move |source| MaterializeError::Io { path: show_path(&self.plan.entries[k as usize].0), source }
    }

    /// Opens file `k`, creating it (never through a symlink, never over an existing name) the first time.
    fn open(&mut self, k: u32) -> Result<std::fs::File, MaterializeError> {
        let (parent, name) = split(&self.plan.entries[k as usize].0);
        let first = self.begun.insert(k);
        let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let flags = if first { flags | OFlags::CREATE | OFlags::EXCL } else { flags };
        let pfd = match self.dirs.open(0, self.beneath, parent) {
            Ok(fd) => fd,
            Err(e) => return Err(self.io_err(k)(e)),
        };
        match rustix::fs::openat(pfd, os(name), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => Ok(std::fs::File::from(fd)),
            Err(e) => Err(self.io_err(k)(e.into())),
        }
    }

    fn write_at(&mut self, k: u32, data: &[u8], off: u64) -> Result<(), MaterializeError> {
        use std::os::unix::fs::FileExt;
        let f = self.open(k)?;
        f.write_all_at(data, off).map_err(self.io_err(k))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Gives file `k` its final mode, then its mtime: it is complete.
    fn complete(&mut self, k: u32) -> Result<(), MaterializeError> {
        let f = self.open(k)?;
        let (path, e) = &self.plan.entries[k as usize];
        let mode = self.plan.installed_mode(path, e.mode, self.readonly);
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(|e| self.io_err(k)(e.into()))?;
        rustix::fs::futimens(&f, &ts(&e.mtime)).map_err(|e| self.io_err(k)(e.into()))?;
        self.files += 1;
        Ok(())
    }
}
