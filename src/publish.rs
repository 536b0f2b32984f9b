//! `publish`: tree → parts → chunks → store → part manifests → signed release → ref.
//!
//! Reads a directory (walked in parallel, files chunked in parallel with rayon, unchanged files taken from the
//! stat cache) or a `.tar`/`.tar.zst` stream (never extracted). Everything new goes through one store
//! transaction, so the release is visible only once all its objects are durable. Never prints: progress goes
//! through the [`Progress`] trait, the outcome in a [`PublishReport`].

use crate::chunk::ChunkerParams;
use crate::id::{ChunkId, ReleaseId};
use crate::keys::PublisherKey;
use crate::manifest::{
    check_rel_path, check_release_name, parent_of, show_path, ChunkRef, Entry, EntryKind, Mtime, PartKind,
    PartManifest, PartRef, Release, Signature, SignedRelease, FLAG_EMBEDS_PREFIX, MODE_MASK, MODE_SETID,
};
use crate::scan::{self, Excluder, FileStat, PartIndex, PartPlan, ScanOptions, SourceKind, TreeProblem, VersionFile};
use crate::statcache::{CachedFile, StatCache};
use crate::store::{now_secs, Repository, StoreError, Transaction};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Receives progress of long work. Implementations must be cheap: they are called from worker threads.
pub trait Progress: Sync {
    /// A new phase begins; `total` is its size in bytes (0 if unknown).
    fn phase(&self, name: &str, total: u64);
    /// `n` more bytes of the current phase are done.
    fn advance(&self, n: u64);
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// How to publish.
pub struct PublishOptions<'a> {
    /// Release name.
    pub name: String,
    /// Build prefix recorded in the release; default: the tree's absolute path (for an archive: none).
    pub prefix: Option<Vec<u8>>,
    /// zstd level for new chunks.
    pub level: i32,
    /// What to leave out or tolerate.
    pub scan: ScanOptions,
    /// Signing key.
    pub key: Option<&'a PublisherKey>,
    /// Parent release (name or id); default: the newest release of the repository.
    pub parent: Option<String>,
    /// Use and update the stat cache (directories only).
    pub stat_cache: bool,
    /// A directory of configuration files published as the release's config part (`*.j2` files are templates
    /// rendered at install), and where it is mounted in the tree.
    pub config: Option<(PathBuf, Vec<u8>)>,
}

impl PublishOptions<'_> {
    /// The defaults of `qpack publish` for release `name`: build prefix from the tree, zstd level 1, default
    /// exclusions, unsigned, parent = the newest release, stat cache on, no config layer.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            prefix: None,
            level: 1,
            scan: ScanOptions::default(),
            key: None,
            parent: None,
            stat_cache: true,
            config: None,
        }
    }
}

/// Files embedding the build prefix, for one part.
#[derive(Debug, Serialize)]
pub struct PrefixFiles {
    /// Part label (`base` or `product version`).
    pub part: String,
    /// Their paths from the tree root.
    pub files: Vec<String>,
}

/// What a publish did.
#[derive(Debug, Serialize)]
pub struct PublishReport {
    /// Release name.
    pub release: String,
    /// Release id (hex).
    pub id: String,
    /// False if the same release was already published under this name (nothing was written).
    pub created: bool,
    /// Whether the release is signed.
    pub signed: bool,
    /// Regular files (hardlinks included).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Extra names of hardlinked files.
    pub hardlinks: u64,
    /// Bytes of regular files (each inode once).
    pub bytes: u64,
    /// Parts whose manifest is new.
    pub parts_new: u64,
    /// Parts whose manifest the repository already had.
    pub parts_reused: u64,
    /// Chunks written.
    pub chunks_new: u64,
    /// Chunk references satisfied by chunks already stored.
    pub chunks_reused: u64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes written to the store for the new chunks (compressed).
    pub bytes_stored: u64,
    /// `bytes / bytes_new`: how much of the release deduplication spared (null when nothing was new).
    pub dedup_ratio: Option<f64>,
    /// `bytes_new / bytes_stored` (null when nothing was new).
    pub compression_ratio: Option<f64>,
    /// Files whose chunks came from the stat cache.
    pub stat_cache_hits: u64,
    /// Files read and chunked.
    pub files_read: u64,
    /// Files that embed the build prefix, by part.
    pub prefix_files: Vec<PrefixFiles>,
    /// Special files skipped (`--skip-special`).
    pub skipped: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Why a publish failed. The repository is unchanged whenever one is returned.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The source is neither a directory nor a tar archive.
    #[error("{0}: not a directory nor a .tar/.tar.zst archive\nhelp: TREE is the root of an EUPS install tree (the directory holding ups_db/), or a tarball of one")]
    BadSource(PathBuf),
    /// The tree has paths that cannot be published.
    #[error("the tree has {} path(s) that cannot be published; nothing was written:\n{}", .0.len(), list_problems(.0))]
    Problems(Vec<TreeProblem>),
    /// A file changed twice while it was being read.
    #[error("{0}: changed while being read (twice)\nhelp: publish once the build writing to the tree has finished")]
    Changed(String),
    /// Reading the source failed.
    #[error("{path}: {source}")]
    Io {
        /// The path in the tree (or the archive).
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
}

fn list_problems(p: &[TreeProblem]) -> String {
    let mut s: String = p.iter().take(50).map(|p| format!("  {}: {}\n", p.path, p.reason)).collect();
    if p.len() > 50 {
        s.push_str(&format!("  … and {} more\n", p.len() - 50));
    }
    s.trim_end().to_string()
}

/// What the source says about one path, once its file contents are chunked.
#[derive(Debug, Clone)]
enum Item {
    Dir,
    File {
        size: u64,
        flags: u8,
        chunks: Vec<ChunkRef>,
    },
    Symlink(Vec<u8>),
    /// Another name of the file at this path (from the tree root).
    Link(Vec<u8>),
}

#[derive(Debug, Clone)]
struct TreeItem {
    mode: u32,
    mtime: Mtime,
    item: Item,
}

/// A file read and chunked: its chunks, flags, the stat it was read under, and its mode.
type FileRead = (Vec<ChunkRef>, u8, FileStat, u32);

/// Chunks file contents into the transaction.
struct Chunker<'a> {
    txn: &'a Transaction<'a>,
    params: ChunkerParams,
    level: i32,
    prefix: Option<memchr::memmem::Finder<'a>>,
    progress: &'a dyn Progress,
    window: usize,
}

impl Chunker<'_> {
    /// Reads `r` to its end, storing new chunks; returns the chunk list, flags and the byte count read.
    fn chunk_reader(&self, mut r: impl Read, size_hint: u64) -> io::Result<(Vec<ChunkRef>, u8, u64)> {
        let mut buf: Vec<u8> = Vec::with_capacity((size_hint as usize).saturating_add(1).min(self.window));
        let mut chunks = Vec::new();
        let mut embeds = false;
        let mut total = 0u64;
        let plen = self.prefix.as_ref().map_or(0, |f| f.needle().len());
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let start = buf.len();
            let mut filled = start;
            // Up to the window, but while the size hint holds no further than one byte past the expected end (to
            // see EOF): zero-filling a whole window for each small file costs more than reading it.
            let want = if total <= size_hint {
                self.window.min(start.saturating_add((size_hint - total) as usize).saturating_add(1))
            } else {
                self.window
            };
            buf.resize(want, 0);
            let mut eof = false;
            while filled < want {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            total += (filled - start) as u64;
            if let Some(f) = &self.prefix {
                if !embeds && plen > 0 {
                    let fresh = &buf[start..];
                    let edge: Vec<u8> = tail.iter().chain(fresh.iter().take(plen - 1)).copied().collect();
                    embeds = f.find(&buf).is_some() || f.find(&edge).is_some();
                }
            }
            let cuts: Vec<(usize, usize)> = self.params.cut(&buf).collect();
            // Unless at the end, the last cut may only be where the window ends: carry it to the next read.
            let keep = if eof { cuts.len() } else { cuts.len().saturating_sub(1) };
            let store = |&(off, len): &(usize, usize)| -> io::Result<ChunkRef> {
                let data = &buf[off..off + len];
                let id = ChunkId::of(data);
                self.txn.put_chunk(id, data, self.level).map_err(io::Error::other)?;
                Ok(ChunkRef { id, len: len as u32 })
            };
            if keep > 1 {
                chunks.extend(cuts[..keep].par_iter().map(store).collect::<io::Result<Vec<_>>>()?);
            } else {
                for c in &cuts[..keep] {
                    chunks.push(store(c)?);
                }
            }
            let consumed = if keep == cuts.len() { buf.len() } else { cuts[keep].0 };
            self.progress.advance(consumed as u64);
            if eof {
                break;
            }
            if plen > 1 {
                tail = buf[buf.len().saturating_sub(plen - 1)..].to_vec();
            }
            buf.drain(..consumed);
        }
        Ok((chunks, if embeds { FLAG_EMBEDS_PREFIX } else { 0 }, total))
    }

    /// Chunks a file of a directory tree, detecting a change while it is read (then retrying once).
    /// Turns an I/O error of reading `rel` into a tree problem, unless it carries a store error (the repository
    /// failed, not the tree).
    fn classify(rel: &[u8], e: io::Error) -> PublishError {
        if e.get_ref().is_some_and(|i| i.is::<StoreError>()) {
            if let Ok(store) = e.into_inner().expect("checked above").downcast::<StoreError>() {
                return PublishError::Store(*store);
            }
            unreachable!("checked to be a StoreError");
        }
        PublishError::Io { path: show_path(rel), source: e }
    }

    fn chunk_file(&self, full: &Path, rel: &[u8], mut expected: FileStat) -> Result<FileRead, PublishError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let io_err = |source| PublishError::Io { path: show_path(rel), source };
        for _attempt in 0..2 {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(full);
            let f = match f {
                Ok(f) => f,
                // Replaced by a symlink since the walk: a change.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                    return Err(PublishError::Changed(show_path(rel)))
                }
                Err(e) => return Err(io_err(e)),
            };
            let md = f.metadata().map_err(io_err)?;
            let before = FileStat::of(&md);
            if before.same_file(&expected) && md.is_file() {
                let (chunks, flags, n) = self.chunk_reader(&f, before.size).map_err(|e| Self::classify(rel, e))?;
                let after_md = f.metadata().map_err(io_err)?;
                if n == before.size && FileStat::of(&after_md).same_file(&before) {
                    return Ok((chunks, flags, before, after_md.mode() & MODE_MASK));
                }
            }
            tracing::warn!("{}: changed while being read; reading it again", show_path(rel));
            let md = std::fs::symlink_metadata(full).map_err(io_err)?;
            if !md.is_file() {
                return Err(PublishError::Changed(show_path(rel)));
            }
            expected = FileStat::of(&md);
        }
        Err(PublishError::Changed(show_path(rel)))
    }
}

/// Publishes `source` into `repo` as release `opts.name`.
pub fn publish(
    repo: &Repository,
    source: &Path,
    opts: &PublishOptions,
    progress: &dyn Progress,
) -> Result<PublishReport, PublishError> {
    publish_impl(repo, source, opts, progress).map_err(|e| match e {
        PublishError::Store(StoreError::Io { path, source })
            if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) =>
        {
            PublishError::Invalid(format!(
                "the repository's filesystem is full ({}: {source}); nothing was published and the repository is as it was\nhelp: free space there (e.g. `qpack gc --repo … --keep N`) and publish again",
                path.display()
            ))
        }
        e => e,
    })
}

fn publish_impl(
    repo: &Repository,
    source: &Path,
    opts: &PublishOptions,
    progress: &dyn Progress,
) -> Result<PublishReport, PublishError> {
    let t0 = Instant::now();
    check_release_name(&opts.name).map_err(|e| PublishError::Invalid(e.to_string()))?;
    let excluder = Excluder::new(&opts.scan.excludes).map_err(PublishError::Invalid)?;
    let md =
        std::fs::metadata(source).map_err(|e| PublishError::Io { path: source.display().to_string(), source: e })?;
    let is_dir = md.is_dir();
    if !is_dir && !md.is_file() {
        return Err(PublishError::BadSource(source.to_owned()));
    }
    let abs = std::fs::canonicalize(source)
        .map_err(|e| PublishError::Io { path: source.display().to_string(), source: e })?;
    let prefix: Vec<u8> = match &opts.prefix {
        Some(p) => p.clone(),
        None if is_dir => abs.as_os_str().as_bytes().to_vec(),
        None => Vec::new(),
    };
    let lock = repo.lock(crate::fsx::LockMode::Exclusive)?;
    let txn = repo.begin(&lock)?;
    let chunker = Chunker {
        txn: &txn,
        params: repo.config.chunker,
        level: opts.level,
        prefix: (prefix.len() > 1).then(|| memchr::memmem::Finder::new(&prefix)),
        progress,
        window: (4usize << 20).max(4 * repo.config.chunker.max as usize),
    };
    let scan_start = std::time::SystemTime::now();
    let skipped;
    let mut cache_hits = 0u64;
    let mut files_read = 0u64;
    let mut new_cache: Vec<(Vec<u8>, CachedFile)> = Vec::new();
    let (mut items, version_files, cache) = if is_dir {
        progress.phase("scanning", 0);
        let walk = scan::walk_dir(&abs, &opts.scan, &excluder);
        tracing::info!("walked {} entries in {:.2} s", walk.entries.len(), t0.elapsed().as_secs_f64());
        if !walk.problems.is_empty() {
            return Err(PublishError::Problems(walk.problems));
        }
        skipped = walk.skipped;
        let cache = opts.stat_cache.then(|| StatCache::load(repo, &abs, &prefix));
        let mut version_files = Vec::new();
        for e in &walk.entries {
            if is_version_file(&e.path) {
                if let Ok(text) = crate::fsx::read_capped(&abs.join(std::ffi::OsStr::from_bytes(&e.path)), 1 << 16) {
                    version_files.extend(scan::parse_version_file(&String::from_utf8_lossy(&text)));
                }
            }
        }
        let items =
            chunk_dir(&abs, walk.entries, &chunker, cache.as_ref(), &mut cache_hits, &mut files_read, &mut new_cache)?;
        (items, version_files, cache)
    } else {
        let (items, vfs, sk) = read_tar(source, &chunker, &opts.scan, &excluder, &mut files_read)?;
        skipped = sk;
        (items, vfs, None)
    };

    tracing::info!("read and chunked {files_read} files at {:.2} s", t0.elapsed().as_secs_f64());
    // Split into parts and build their manifests.
    let paths: Vec<scan::SourceEntry> = items
        .iter()
        .filter(|(_, it)| matches!(it.item, Item::Dir))
        .map(|(p, it)| scan::SourceEntry { path: p.clone(), mode: it.mode, mtime: it.mtime, kind: SourceKind::Dir })
        .collect();
    let mut plans = scan::find_parts(&paths, &version_files, &prefix);
    if let Some((dir, mount)) = &opts.config {
        add_config(dir, mount, &mut items, &mut plans, &chunker, &opts.scan, &excluder, &mut files_read)?;
    }
    let index = PartIndex::new(&plans);
    let mut per_part: Vec<Vec<Entry>> = vec![Vec::new(); plans.len()];
    let mut report = PublishReport::empty(&opts.name);
    report.skipped = skipped;
    report.stat_cache_hits = cache_hits;
    report.files_read = files_read;
    let mut prefix_files: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (path, it) in &items {
        let part = index.part_of(path);
        let rel = scan::rel_to_part(&plans[part].mount, path).to_vec();
        let kind = match &it.item {
            Item::Dir => {
                report.dirs += 1;
                EntryKind::Dir
            }
            Item::Symlink(t) => {
                report.symlinks += 1;
                EntryKind::Symlink { target: t.clone() }
            }
            Item::File { size, flags, chunks } => {
                report.files += 1;
                report.bytes += size;
                if flags & FLAG_EMBEDS_PREFIX != 0 {
                    prefix_files.entry(part).or_default().push(show_path(path));
                }
                EntryKind::File { size: *size, flags: *flags, chunks: chunks.clone() }
            }
            Item::Link(target) => {
                report.files += 1;
                report.hardlinks += 1;
                if index.part_of(target) == part {
                    EntryKind::Hardlink { target: scan::rel_to_part(&plans[part].mount, target).to_vec() }
                } else {
                    // Parts are installed independently: a link across two of them becomes a copy (same chunks).
                    match items.get(target).map(|t| &t.item) {
                        Some(Item::File { size, flags, chunks }) => {
                            EntryKind::File { size: *size, flags: *flags, chunks: chunks.clone() }
                        }
                        _ => unreachable!("link targets are checked to be files"),
                    }
                }
            }
        };
        per_part[part].push(Entry { path: rel, mode: it.mode, mtime: it.mtime, kind });
    }
    let mut parts = Vec::with_capacity(plans.len());
    for (plan, mut entries) in plans.iter().zip(per_part) {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let m = PartManifest { entries };
        m.validate().map_err(|e| PublishError::Invalid(format!("part {}: {e}", part_label(plan))))?;
        let (n_files, n_bytes) = m.totals();
        let (manifest, new) = txn.put_manifest(&m)?;
        if new {
            report.parts_new += 1;
        } else {
            report.parts_reused += 1;
        }
        parts.push(PartRef { mount: plan.mount.clone(), kind: plan.kind.clone(), manifest, n_files, n_bytes });
    }
    report.prefix_files = prefix_files
        .into_iter()
        .map(|(i, mut files)| {
            files.sort();
            PrefixFiles { part: part_label(&plans[i]), files }
        })
        .collect();

    // The release.
    let parent = match &opts.parent {
        Some(p) => Some(repo.resolve(p)?.1),
        None => repo.releases()?.first().map(|r| r.1),
    };
    let release = Release { name: opts.name.clone(), created: now_secs(), parent, prefix: prefix.clone(), parts };
    release.validate().map_err(|e| PublishError::Invalid(e.to_string()))?;
    let finish = |report: &mut PublishReport, txn: &Transaction| {
        report.chunks_new = txn.stats.chunks_new.load(Relaxed);
        report.chunks_reused = txn.stats.chunks_reused.load(Relaxed);
        report.bytes_new = txn.stats.bytes_new_raw.load(Relaxed);
        report.bytes_stored = txn.stats.bytes_new_stored.load(Relaxed);
        let new = report.bytes_new as f64;
        report.dedup_ratio = (report.bytes_new > 0).then(|| report.bytes as f64 / new);
        report.compression_ratio = (report.bytes_stored > 0).then(|| new / report.bytes_stored as f64);
        report.seconds = t0.elapsed().as_secs_f64();
    };
    if let Some(existing) = repo.read_ref(&opts.name)? {
        let (_, old) = repo.read_release(&existing)?;
        if old.parts == release.parts && old.prefix == release.prefix {
            // Publishing the same content again under the same name is a no-op, so that scripts can retry.
            finish(&mut report, &txn);
            drop(txn);
            report.id = existing.to_hex();
            report.created = false;
            return Ok(report);
        }
        return Err(StoreError::NameTaken { name: opts.name.clone(), existing }.into());
    }
    let body = release.encode();
    let signature = opts.key.map(|k| Signature { key: k.public(), sig: k.sign(&body) });
    report.signed = signature.is_some();
    let signed = SignedRelease { body, signature };
    let id: ReleaseId = txn.put_release(&signed)?;
    tracing::info!("manifests and release built at {:.2} s", t0.elapsed().as_secs_f64());
    progress.phase("committing", 0);
    finish(&mut report, &txn);
    txn.commit(&opts.name, id)?;
    tracing::info!("committed at {:.2} s", t0.elapsed().as_secs_f64());
    report.id = id.to_hex();
    if let Some(cache) = cache {
        if let Err(e) = cache.save(repo, new_cache, scan_start) {
            tracing::warn!("could not write the stat cache: {e}");
        }
    }
    drop(lock);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

impl PublishReport {
    fn empty(name: &str) -> Self {
        Self {
            release: name.to_owned(),
            id: String::new(),
            created: true,
            signed: false,
            files: 0,
            dirs: 0,
            symlinks: 0,
            hardlinks: 0,
            bytes: 0,
            parts_new: 0,
            parts_reused: 0,
            chunks_new: 0,
            chunks_reused: 0,
            bytes_new: 0,
            bytes_stored: 0,
            dedup_ratio: None,
            compression_ratio: None,
            stat_cache_hits: 0,
            files_read: 0,
            prefix_files: Vec::new(),
            skipped: Vec::new(),
            seconds: 0.0,
        }
    }
}

/// Chunks the configuration directory and adds it to `items` under `mount`, as one more part.
#[allow(clippy::too_many_arguments)]
fn add_config(
    dir: &Path,
    mount: &[u8],
    items: &mut BTreeMap<Vec<u8>, TreeItem>,
    plans: &mut Vec<PartPlan>,
    chunker: &Chunker,
    scan_opts: &ScanOptions,
    excluder: &Excluder,
    files_read: &mut u64,
) -> Result<(), PublishError> {
    check_rel_path(mount, false).map_err(|e| PublishError::Invalid(format!("--config-mount: {e}")))?;
    if let Some(p) =
        items.keys().find(|p| p.as_slice() == mount || (p.starts_with(mount) && p.get(mount.len()) == Some(&b'/')))
    {
        return Err(PublishError::Invalid(format!(
            "the tree already has {} where the config layer would be mounted\nhelp: pick another --config-mount",
            show_path(p)
        )));
    }
    let nested = |a: &[u8], b: &[u8]| a == b || (a.starts_with(b) && a.get(b.len()) == Some(&b'/'));
    if let Some(p) = plans.iter().find(|p| !p.mount.is_empty() && (nested(&p.mount, mount) || nested(mount, &p.mount)))
    {
        return Err(PublishError::Invalid(format!(
            "--config-mount {} overlaps product directory {}",
            show_path(mount),
            show_path(&p.mount)
        )));
    }
    let abs =
        std::fs::canonicalize(dir).map_err(|e| PublishError::Io { path: dir.display().to_string(), source: e })?;
    if !abs.is_dir() {
        return Err(PublishError::Invalid(format!("--config {}: not a directory", dir.display())));
    }
    let walk = scan::walk_dir(&abs, scan_opts, excluder);
    if !walk.problems.is_empty() {
        return Err(PublishError::Problems(walk.problems));
    }
    let (mut hits, mut read, mut cache) = (0, 0, Vec::new());
    let config_items = chunk_dir(&abs, walk.entries, chunker, None, &mut hits, &mut read, &mut cache)?;
    *files_read += read;
    for (path, mut it) in config_items {
        if let Item::Link(t) = &it.item {
            it.item = Item::Link(crate::manifest::join(mount, t));
        }
        items.insert(crate::manifest::join(mount, &path), it);
    }
    plans.push(PartPlan { mount: mount.to_vec(), kind: PartKind::Config });
    Ok(())
}

/// `base`, or `product version`.
pub fn part_label(p: &PartPlan) -> String {
    match &p.kind {
        PartKind::Base => "base".into(),
        PartKind::Product { product, version } => format!("{product} {version}"),
        PartKind::Config => "config".into(),
    }
}

fn is_version_file(path: &[u8]) -> bool {
    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    comps.len() == 3 && comps[0] == b"ups_db" && comps[2].ends_with(b".version")
}

/// Chunks every regular file of a walked directory tree (in parallel), taking unchanged files from the cache.
fn chunk_dir(
    root: &Path,
    entries: Vec<scan::SourceEntry>,
    chunker: &Chunker,
    cache: Option<&StatCache>,
    cache_hits: &mut u64,
    files_read: &mut u64,
    new_cache: &mut Vec<(Vec<u8>, CachedFile)>,
) -> Result<BTreeMap<Vec<u8>, TreeItem>, PublishError> {
    // Hardlinks: the first name of an inode (in path order) is the file, the others link to it.
    let mut first_name: HashMap<(u64, u64), usize> = HashMap::new();
    let mut link_to: Vec<Option<usize>> = vec![None; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        if let SourceKind::File(st) = &e.kind {
            if st.nlink > 1 {
                match first_name.get(&(st.dev, st.ino)) {
                    Some(&j) => link_to[i] = Some(j),
                    None => {
                        first_name.insert((st.dev, st.ino), i);
                    }
                }
            }
        }
    }
    let jobs: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(entries[i].kind, SourceKind::File(_)) && link_to[i].is_none())
        .collect();
    let recheck = cache.is_some_and(|c| c.must_recheck);
    let mut todo_bytes = 0u64;
    let mut outcome: Vec<Option<FileRead>> = vec![None; entries.len()];
    for &i in &jobs {
        let SourceKind::File(st) = &entries[i].kind else { continue };
        if let Some(hit) = cache.and_then(|c| c.get(&entries[i].path, st)) {
            if !recheck || hit.chunks.iter().all(|c| chunker.txn.has_chunk(&c.id)) {
                chunker.txn.count_reused(hit.chunks.len() as u64);
                outcome[i] = Some((hit.chunks.clone(), hit.flags, *st, entries[i].mode));
                *cache_hits += 1;
                continue;
            }
        }
        todo_bytes += st.size;
    }
    chunker.progress.phase("chunking", todo_bytes);
    let todo: Vec<usize> = jobs.iter().copied().filter(|&i| outcome[i].is_none()).collect();
    *files_read = todo.len() as u64;
    let results: Vec<(usize, Result<FileRead, PublishError>)> = todo
        .par_iter()
        .map(|&i| {
            let e = &entries[i];
            let SourceKind::File(st) = &e.kind else { unreachable!("jobs are files") };
            let full = root.join(std::ffi::OsStr::from_bytes(&e.path));
            (i, chunker.chunk_file(&full, &e.path, *st))
        })
        .collect();
    let mut problems = Vec::new();
    for (i, r) in results {
        match r {
            Ok(v) => outcome[i] = Some(v),
            Err(PublishError::Io { path, source }) => problems.push(TreeProblem { path, reason: source.to_string() }),
            Err(e) => return Err(e),
        }
    }
    if !problems.is_empty() {
        return Err(PublishError::Problems(problems));
    }
    let link_paths: Vec<Option<Vec<u8>>> = link_to.iter().map(|l| l.map(|j| entries[j].path.clone())).collect();
    let mut items = BTreeMap::new();
    for (i, e) in entries.into_iter().enumerate() {
        let (mode, mtime, item) = match e.kind {
            SourceKind::Dir => (e.mode, e.mtime, Item::Dir),
            SourceKind::Symlink(t) => (e.mode, e.mtime, Item::Symlink(t)),
            SourceKind::File(_) => match &link_paths[i] {
                Some(target) => (e.mode, e.mtime, Item::Link(target.clone())),
                None => {
                    // The stat taken when the file was read wins over the walk's (a retried read sees the new one).
                    let (chunks, flags, st, mode) = outcome[i].take().expect("every file job has an outcome");
                    if mode & MODE_SETID != 0 && e.mode & MODE_SETID == 0 {
                        return Err(PublishError::Problems(vec![TreeProblem {
                            path: show_path(&e.path),
                            reason: "became setuid/setgid while being read".into(),
                        }]));
                    }
                    new_cache.push((e.path.clone(), CachedFile { stat: st, flags, chunks: chunks.clone() }));
                    (mode, st.mtime, Item::File { size: st.size, flags, chunks })
                }
            },
        };
        items.insert(e.path, TreeItem { mode, mtime, item });
    }
    Ok(items)
}

/// Normalizes a path from an archive: strips `./` and trailing `/`; `None` for the root itself.
fn tar_path(raw: &[u8]) -> Option<Vec<u8>> {
    let mut p = raw;
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if p == b"." {
            return None;
        } else {
            break;
        }
    }
    while let Some(r) = p.strip_suffix(b"/") {
        p = r;
    }
    if p.is_empty() {
        None
    } else {
        Some(p.to_vec())
    }
}

/// Reads a `.tar` or `.tar.zst` archive as a stream, chunking file contents as they come.
#[allow(clippy::type_complexity)]
fn read_tar(
    source: &Path,
    chunker: &Chunker,
    opts: &ScanOptions,
    excluder: &Excluder,
    files_read: &mut u64,
) -> Result<(BTreeMap<Vec<u8>, TreeItem>, Vec<VersionFile>, Vec<String>), PublishError> {
    let src = source.display().to_string();
    let io_err = |source| PublishError::Io { path: src.clone(), source };
    let mut f = std::fs::File::open(source).map_err(io_err)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io_err)?;
    let f = {
        use std::io::Seek;
        let mut f = f;
        f.seek(io::SeekFrom::Start(0)).map_err(io_err)?;
        f
    };
    chunker.progress.phase("reading archive", 0);
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(f).map_err(io_err)?),
        [0x1f, 0x8b, ..] => {
            return Err(PublishError::Invalid(format!(
                "{src}: gzip-compressed archives are not read directly\nhelp: `gunzip` it, or recompress it with `zstd`"
            )))
        }
        _ => Box::new(f),
    };
    let mut archive = tar::Archive::new(reader);
    let mut items: BTreeMap<Vec<u8>, TreeItem> = BTreeMap::new();
    let mut version_files = Vec::new();
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    let mut root: Option<TreeItem> = None;
    // A header that does not parse means this is not a tar archive (or a damaged one): say so, briefly.
    let not_tar = |e: io::Error| {
        let e = e.to_string();
        let first = e.lines().next().unwrap_or_default().chars().take(120).collect::<String>();
        PublishError::Invalid(format!(
            "{src}: not a readable tar archive ({first})\nhelp: TREE is the root of an EUPS install tree (the directory holding ups_db/), or a .tar/.tar.zst of one"
        ))
    };
    let mut n_entries = 0u64;
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(not_tar)?;
        n_entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        let header = entry.header();
        let mode = header.mode().map_err(io_err)? & MODE_MASK;
        let mtime = Mtime { secs: header.mtime().map_err(io_err)? as i64, nanos: 0 };
        let etype = header.entry_type();
        let Some(path) = tar_path(&raw_path) else {
            if etype.is_dir() {
                root = Some(TreeItem { mode, mtime, item: Item::Dir });
            }
            continue;
        };
        let problem = |problems: &mut Vec<TreeProblem>, reason: String| {
            problems.push(TreeProblem { path: show_path(&path), reason })
        };
        if let Err(e) = check_rel_path(&path, false) {
            problem(&mut problems, format!("{e} (archives must hold relative paths inside the tree)"));
            continue;
        }
        if ancestors_and_self(&path).any(|p| excluder.excluded(p)) {
            continue;
        }
        if mode & MODE_SETID != 0 && !opts.allow_setuid && !etype.is_symlink() {
            problem(&mut problems, format!("mode {mode:o} has setuid/setgid bits; remove them or pass --allow-setuid"));
            continue;
        }
        let item = if etype.is_dir() {
            Item::Dir
        } else if etype.is_file() || etype == tar::EntryType::Continuous || etype.is_gnu_sparse() {
            let size = entry.size();
            *files_read += 1;
            let (chunks, flags, n) = if is_version_file(&path) && size < 1 << 16 {
                let mut text = Vec::new();
                (&mut entry).take(1 << 16).read_to_end(&mut text).map_err(io_err)?;
                version_files.extend(scan::parse_version_file(&String::from_utf8_lossy(&text)));
                chunker.chunk_reader(text.as_slice(), size).map_err(|e| Chunker::classify(&path, e))?
            } else {
                chunker.chunk_reader(&mut entry, size).map_err(|e| Chunker::classify(&path, e))?
            };
            if n != size {
                return Err(PublishError::Invalid(format!("{src}: {}: archive entry is truncated", show_path(&path))));
            }
            Item::File { size, flags, chunks }
        } else if etype.is_symlink() {
            match entry.link_name_bytes() {
                Some(t) if !t.is_empty() => Item::Symlink(t.into_owned()),
                _ => {
                    problem(&mut problems, "symlink without a target".into());
                    continue;
                }
            }
        } else if etype.is_hard_link() {
            match entry.link_name_bytes().and_then(|t| tar_path(&t)) {
                Some(t) => Item::Link(t),
                None => {
                    problem(&mut problems, "hardlink without a target".into());
                    continue;
                }
            }
        } else if etype.is_character_special() || etype.is_block_special() || etype.is_fifo() {
            if opts.skip_special {
                skipped.push(show_path(&path));
            } else {
                problem(&mut problems, "special file (device or FIFO): remove it or pass --skip-special".into());
            }
            continue;
        } else if etype.is_pax_global_extensions()
            || etype.is_pax_local_extensions()
            || etype.is_gnu_longname()
            || etype.is_gnu_longlink()
        {
            continue;
        } else {
            problem(&mut problems, format!("unsupported archive entry type {:?}", etype));
            continue;
        };
        items.insert(path, TreeItem { mode, mtime, item });
    }
    if n_entries == 0 {
        // An empty file (a failed download) must not become an empty release.
        return Err(PublishError::Invalid(format!("{src}: empty archive (no entries)")));
    }
    // Hardlinks must name a file of the archive; resolve chains to the file itself.
    let links: Vec<(Vec<u8>, Vec<u8>)> = items
        .iter()
        .filter_map(|(p, it)| match &it.item {
            Item::Link(t) => Some((p.clone(), t.clone())),
            _ => None,
        })
        .collect();
    for (p, mut t) in links {
        for _ in 0..64 {
            match items.get(&t).map(|i| &i.item) {
                Some(Item::Link(next)) => t = next.clone(),
                _ => break,
            }
        }
        match items.get(&t) {
            Some(TreeItem { item: Item::File { .. }, mode, mtime }) => {
                let (mode, mtime) = (*mode, *mtime);
                let it = items.get_mut(&p).expect("link present");
                it.item = Item::Link(t);
                // A hardlink is the same inode: same mode and mtime as its target.
                it.mode = mode;
                it.mtime = mtime;
            }
            _ => problems.push(TreeProblem {
                path: show_path(&p),
                reason: format!("hardlink to {} which is not a file of the archive", show_path(&t)),
            }),
        }
    }
    // Links sort after their targets only if the target's path is smaller; otherwise swap roles.
    let swaps: Vec<(Vec<u8>, Vec<u8>)> = items
        .iter()
        .filter_map(|(p, it)| match &it.item {
            Item::Link(t) if t > p => Some((p.clone(), t.clone())),
            _ => None,
        })
        .collect();
    for (p, t) in swaps {
        if !matches!(items.get(&p).map(|i| &i.item), Some(Item::Link(x)) if *x == t) {
            continue; // already regrouped with an earlier member
        }
        // Make the smallest name the file and every other name a link to it.
        let file = items.get(&t).cloned().expect("target checked");
        let group: Vec<Vec<u8>> = items
            .iter()
            .filter(|(q, it)| **q == t || matches!(&it.item, Item::Link(x) if *x == t))
            .map(|(q, _)| q.clone())
            .collect();
        let first = group.iter().min().cloned().unwrap_or(p);
        for q in &group {
            let it = items.get_mut(q).expect("group member");
            it.item = if *q == first { file.item.clone() } else { Item::Link(first.clone()) };
        }
    }
    if !problems.is_empty() {
        return Err(PublishError::Problems(problems));
    }
    // Directories an archive leaves implicit.
    let mut missing = Vec::new();
    for p in items.keys() {
        let mut q = parent_of(p);
        while !q.is_empty() && !items.contains_key(q) {
            missing.push(q.to_vec());
            q = parent_of(q);
        }
    }
    for p in missing {
        items.entry(p).or_insert(TreeItem { mode: 0o755, mtime: Mtime::default(), item: Item::Dir });
    }
    for p in items.keys() {
        let parent = parent_of(p);
        if !parent.is_empty() && !matches!(items.get(parent).map(|i| &i.item), Some(Item::Dir)) {
            return Err(PublishError::Problems(vec![TreeProblem {
                path: show_path(parent),
                reason: "is not a directory but the archive has paths below it".into(),
            }]));
        }
    }
    items.insert(Vec::new(), root.unwrap_or(TreeItem { mode: 0o755, mtime: Mtime::default(), item: Item::Dir }));
    Ok((items, version_files, skipped))
}

fn ancestors_and_self(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|(_, &b)| b == b'/').map(move |(i, _)| &path[..i]).chain(std::iter::once(path))
}
