//! The repository: a directory of chunk objects, part manifests, releases and release refs (layout in
//! `proto/FORMAT.md`). The publisher has one; every node has one.
//!
//! Owns the on-disk layout, reading objects back with verification, the repository lock, and transactions that
//! make new objects visible only once they are durable. Never touches the network; never decides *what* to store.

mod gc;
pub mod pack;
#[cfg(test)]
mod tests;
mod txn;
mod verify;

pub use gc::{gc, GcReport};
pub use pack::ChunkIndex;
pub use txn::{Transaction, TxnStats};
pub use verify::{verify, VerifyReport};

use crate::chunk::{self, ChunkError, ChunkerParams};
use crate::format::{self, FormatError, MAGIC_REF, MAGIC_REPO};
use crate::fsx::{self, FileLock, LockMode};
use crate::id::{ChunkId, ManifestId, ReleaseId};
use crate::manifest::{
    check_release_name, ManifestError, PartManifest, Release, SignedRelease, MAX_MANIFEST_BYTES, MAX_RELEASE_BYTES,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Name of the file that marks a directory as a qpack repository.
pub const REPO_FILE: &str = "qpack-repo";

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The directory exists but is not a qpack repository.
    #[error("{0} is not a qpack repository (no {REPO_FILE} file)\nhelp: pass the directory given to `qpack publish --repo`, or an empty or new directory to create one")]
    NotARepo(PathBuf),
    /// The repository config does not decode.
    #[error("{path}: {source}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// A chunk object is corrupt.
    #[error("{path}: {source}")]
    Chunk {
        /// The object file.
        path: PathBuf,
        /// What is wrong.
        source: ChunkError,
    },
    /// A manifest or release object is corrupt.
    #[error("{path}: {source}")]
    Object {
        /// The object file.
        path: PathBuf,
        /// What is wrong.
        source: ManifestError,
    },
    /// An object the caller needs is not in the repository.
    #[error("{kind} {id} is missing from the repository ({path})")]
    Missing {
        /// Chunk, manifest or release.
        kind: &'static str,
        /// Its id.
        id: String,
        /// Where it should be.
        path: PathBuf,
    },
    /// No release by that name or id.
    #[error("no release {0:?} in this repository\nhelp: `qpack releases --repo …` lists them")]
    NoSuchRelease(String),
    /// A release name is already taken by a different release.
    #[error(
        "release {name:?} already exists with id {existing} (releases are immutable)\nhelp: publish under a new name"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The existing release id.
        existing: ReleaseId,
    },
    /// A bad name or argument.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}

/// Settings fixed at creation of a repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Chunker sizes used by every publish into this repository.
    pub chunker: ChunkerParams,
    /// Creation time (seconds since the epoch).
    pub created: i64,
}

/// The content of a release ref file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefFile {
    /// The release the name points to.
    pub release: ReleaseId,
}

/// An open repository.
pub struct Repository {
    root: PathBuf,
    /// Its settings.
    pub config: RepoConfig,
    /// Every chunk, by id (the pack indexes), loaded on first use: commands that need no chunk (switch, status,
    /// releases) do not pay for reading every pack index.
    index: std::sync::OnceLock<RwLock<ChunkIndex>>,
    /// The pack directory's mtime when the index was last read (see [`Repository::refresh`]).
    index_stamp: Mutex<Option<std::time::SystemTime>>,
    /// Open pack files, by pack name (numbers change when the index is reloaded).
    open_packs: Mutex<HashMap<String, Arc<File>>>,
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

use std::os::unix::fs::OpenOptionsExt;

impl Repository {
    /// Opens an existing repository.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let cfg_path = root.join(REPO_FILE);
        let bytes = match fsx::read_capped(&cfg_path, 1 << 16) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(if root.is_dir() {
                    StoreError::NotARepo(root.to_owned())
                } else {
                    StoreError::Io { path: root.to_owned(), source: e }
                })
            }
            Err(e) => return Err(StoreError::Io { path: cfg_path, source: e }),
        };
        let config: RepoConfig = format::decode("repository config", MAGIC_REPO, &bytes, 1 << 16)
            .map_err(|source| StoreError::BadConfig { path: cfg_path.clone(), source })?;
        config.chunker.validate().map_err(StoreError::Invalid)?;
        let packs = root.join("objects/packs");
        if !packs.is_dir() {
            return Err(StoreError::Io { path: packs, source: io::Error::from(io::ErrorKind::NotFound) });
        }
        Ok(Self {
            root: root.to_owned(),
            config,
            index: std::sync::OnceLock::new(),
            index_stamp: Mutex::new(None),
            open_packs: Mutex::new(HashMap::new()),
        })
    }

    /// Opens the repository at `root`, creating it if `root` is missing or an empty directory. A non-empty
    /// directory that is not a repository is refused (it is somebody's data).
    pub fn open_or_init(root: &Path, chunker: ChunkerParams) -> Result<Self, StoreError> {
        if root.join(REPO_FILE).exists() {
            return Self::open(root);
        }
        // Entries other than the lock file: a repository being created by another process has some.
        let others = |root: &Path| -> io::Result<(usize, bool)> {
            let mut n = 0;
            let mut lock = false;
            for e in std::fs::read_dir(root)? {
                if e?.file_name() == "lock" {
                    lock = true;
                } else {
                    n += 1;
                }
            }
            Ok((n, lock))
        };
        match others(root) {
            Ok((n, lock)) if n > 0 && !lock => return Err(StoreError::NotARepo(root.to_owned())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(root).map_err(StoreError::io(root))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(StoreError::Invalid(format!("{} is not a directory", root.display())))
            }
            Err(e) => return Err(StoreError::Io { path: root.to_owned(), source: e }),
        }
        // Whoever creates the repository holds its lock until the config is written: concurrent first
        // publishes wait for it and then open the repository instead of taking it for somebody's data.
        let path = root.join("lock");
        let _lock = FileLock::lock(&path, LockMode::Exclusive).map_err(StoreError::io(&path))?;
        if root.join(REPO_FILE).exists() {
            return Self::open(root);
        }
        if others(root).map_err(StoreError::io(root))?.0 > 0 {
            return Err(StoreError::NotARepo(root.to_owned()));
        }
        Self::init(root, chunker)
    }

    fn init(root: &Path, chunker: ChunkerParams) -> Result<Self, StoreError> {
        chunker.validate().map_err(StoreError::Invalid)?;
        for d in ["objects/packs", "objects/manifests", "objects/releases", "refs/releases", "cache", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(StoreError::io(root.join(d)))?;
        }
        // Fan-out directories are made once here so that writers never race to create them.
        for b in 0..=255u8 {
            let d = root.join("objects/manifests").join(format!("{b:02x}"));
            std::fs::create_dir_all(&d).map_err(StoreError::io(&d))?;
        }
        let config = RepoConfig { chunker, created: now_secs() };
        // The config file is written last: a crash before it leaves a directory `open` refuses, not a half repo.
        fsx::syncfs(root).map_err(StoreError::io(root))?;
        fsx::write_atomic(root, REPO_FILE, &format::encode(MAGIC_REPO, &config)).map_err(StoreError::io(root))?;
        Ok(Self {
            root: root.to_owned(),
            config,
            index: std::sync::OnceLock::from(RwLock::new(ChunkIndex::default())),
            index_stamp: Mutex::new(None),
            open_packs: Mutex::new(HashMap::new()),
        })
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the repository lock: exclusive for writers (publish, gc), shared for readers that must not see
    /// objects disappear (checkout, export, verify). Says on stderr when it has to wait.
    pub fn lock(&self, mode: LockMode) -> Result<FileLock, StoreError> {
        let path = self.root.join("lock");
        if let Some(l) = FileLock::try_lock(&path, mode).map_err(StoreError::io(&path))? {
            return Ok(l);
        }
        tracing::warn!("waiting for the repository lock {} (another publish, gc or checkout)", path.display());
        FileLock::lock(&path, mode).map_err(StoreError::io(&path))
    }

    /// The directory of pack files.
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("objects/packs")
    }

    /// Path of a pack file.
    pub fn pack_path(&self, name: &str) -> PathBuf {
        self.packs_dir().join(format!("{name}.pack"))
    }

    /// The chunk index, loaded from the pack indexes on first use. If they cannot be read (an I/O error: a
    /// damaged index is rebuilt from its pack), the error is logged and the index is empty, so chunks read as
    /// missing, which every reader reports.
    fn index_lock(&self) -> &RwLock<ChunkIndex> {
        self.index.get_or_init(|| {
            *self.index_stamp.lock().unwrap_or_else(|e| e.into_inner()) = self.packs_stamp();
            RwLock::new(ChunkIndex::load(&self.packs_dir()).unwrap_or_else(|e| {
                tracing::error!("cannot read the pack indexes of {}: {e}", self.root.display());
                ChunkIndex::default()
            }))
        })
    }

    /// The chunk index (read lock).
    pub fn chunk_index(&self) -> std::sync::RwLockReadGuard<'_, ChunkIndex> {
        self.index_lock().read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn chunk_index_mut(&self) -> std::sync::RwLockWriteGuard<'_, ChunkIndex> {
        self.open_packs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.index_lock().write().unwrap_or_else(|e| e.into_inner())
    }

    fn packs_stamp(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.packs_dir()).and_then(|m| m.modified()).ok()
    }

    /// Re-reads the pack indexes if another process changed the pack directory since they were read (a
    /// long-running agent serves a repository that `publish` or `gc` change). Returns whether it did.
    /// Packs are only ever added (by commits) or removed (by gc): new ones are added to the index in place,
    /// under its write lock, so that a concurrent commit of this process is never lost; a vanished one makes
    /// a full reload. The mtime check is only a shortcut: with a coarse clock a change may share the stamp's
    /// tick, so a stamp younger than 2 s does not count as "unchanged".
    pub fn refresh(&self) -> Result<bool, StoreError> {
        let now = self.packs_stamp();
        let old = *self.index_stamp.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = now.and_then(|t| t.elapsed().ok()).is_some_and(|age| age < std::time::Duration::from_secs(2));
        if self.index.get().is_some() && now == old && !fresh {
            return Ok(false);
        }
        *self.index_stamp.lock().unwrap_or_else(|e| e.into_inner()) = now;
        let before = self.chunk_index().packs.len();
        let complete = {
            let lock = self.index_lock();
            let mut idx = lock.write().unwrap_or_else(|e| e.into_inner());
            idx.add_new(&self.packs_dir())?
        };
        if !complete {
            self.reload_index()?;
            return Ok(true);
        }
        Ok(self.chunk_index().packs.len() != before)
    }

    /// Re-reads the pack indexes from disk (after a gc rewrote packs).
    pub fn reload_index(&self) -> Result<(), StoreError> {
        // Stamp first: a change during the load makes the next refresh load again.
        *self.index_stamp.lock().unwrap_or_else(|e| e.into_inner()) = self.packs_stamp();
        let fresh = ChunkIndex::load(&self.packs_dir())?;
        *self.chunk_index_mut() = fresh;
        Ok(())
    }

    /// Where a chunk object is stored: (pack file, offset, length). For tools and tests.
    pub fn chunk_location(&self, id: &ChunkId) -> Option<(PathBuf, u64, u32)> {
        let idx = self.chunk_index();
        let loc = idx.get(id)?;
        Some((self.pack_path(&idx.packs[loc.pack as usize]), loc.offset, loc.len))
    }

    /// Path of a manifest object.
    pub fn manifest_path(&self, id: &ManifestId) -> PathBuf {
        let h = id.to_hex();
        self.root.join("objects/manifests").join(&h[..2]).join(h)
    }

    /// Path of a release object.
    pub fn release_path(&self, id: &ReleaseId) -> PathBuf {
        self.root.join("objects/releases").join(id.to_hex())
    }

    fn ref_dir(&self) -> PathBuf {
        self.root.join("refs/releases")
    }

    /// Whether the chunk is stored (not whether it is intact: `verify` checks that).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunk_index().get(id).is_some()
    }

    /// Whether the manifest object exists.
    pub fn has_manifest(&self, id: &ManifestId) -> bool {
        std::fs::symlink_metadata(self.manifest_path(id)).is_ok_and(|m| m.is_file())
    }

    /// Size in bytes of a stored chunk object, if present.
    pub fn chunk_stored_len(&self, id: &ChunkId) -> Option<u64> {
        self.chunk_index().get(id).map(|l| u64::from(l.len))
    }

    fn read_object(&self, kind: &'static str, id: String, path: PathBuf, cap: usize) -> Result<Vec<u8>, StoreError> {
        fsx::read_capped(&path, cap).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing { kind, id, path: path.clone() },
            _ => StoreError::Io { path: path.clone(), source: e },
        })
    }

    /// The chunk object's bytes exactly as stored (what a node serves to its peers), unverified.
    pub fn read_chunk_object(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let find = || {
            let idx = self.chunk_index();
            idx.get(id).map(|loc| (loc, idx.packs[loc.pack as usize].clone()))
        };
        // Not in the index: another process may have added it since the index was read.
        let found = match find() {
            Some(f) => Some(f),
            None if self.refresh().unwrap_or(false) => find(),
            None => None,
        };
        let Some((loc, name)) = found else {
            return Err(StoreError::Missing { kind: "chunk", id: id.to_hex(), path: self.packs_dir() });
        };
        let path = self.pack_path(&name);
        let file = {
            let mut open = self.open_packs.lock().unwrap_or_else(|e| e.into_inner());
            match open.get(&name) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(
                        std::fs::OpenOptions::new()
                            .read(true)
                            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                            .open(&path)
                            .map_err(StoreError::io(&path))?,
                    );
                    open.insert(name.clone(), f.clone());
                    f
                }
            }
        };
        pack::read_object(&file, &loc).map_err(|e| StoreError::Io { path: path.clone(), source: e })
    }

    /// The chunk's uncompressed bytes, verified against its id and `expected_len`.
    pub fn read_chunk(&self, id: &ChunkId, expected_len: Option<u32>) -> Result<Vec<u8>, StoreError> {
        let obj = self.read_chunk_object(id)?;
        chunk::decode_object(id, &obj, expected_len).map_err(|source| StoreError::Chunk {
            path: self.chunk_location(id).map(|(p, _, _)| p).unwrap_or_default(),
            source,
        })
    }

    /// A part manifest, verified against its id and validated.
    pub fn read_manifest(&self, id: &ManifestId) -> Result<PartManifest, StoreError> {
        let path = self.manifest_path(id);
        let bytes = self.read_object("manifest", id.to_hex(), path.clone(), MAX_MANIFEST_BYTES)?;
        let actual = ManifestId::of(&bytes);
        if actual != *id {
            return Err(StoreError::Object {
                path,
                source: ManifestError::Inconsistent {
                    path: String::new(),
                    reason: format!("content hashes to {actual}, not to its name (corrupt)"),
                },
            });
        }
        PartManifest::decode(&bytes).map_err(|source| StoreError::Object { path, source })
    }

    /// A release, verified against its id (and its signature, if signed).
    pub fn read_release(&self, id: &ReleaseId) -> Result<(SignedRelease, Release), StoreError> {
        let path = self.release_path(id);
        let bytes = self.read_object("release", id.to_hex(), path.clone(), MAX_RELEASE_BYTES)?;
        SignedRelease::decode(&bytes, Some(*id)).map_err(|source| StoreError::Object { path, source })
    }

    /// The raw bytes of a stored release file (what a node serves), unverified.
    pub fn read_release_object(&self, id: &ReleaseId) -> Result<Vec<u8>, StoreError> {
        self.read_object("release", id.to_hex(), self.release_path(id), MAX_RELEASE_BYTES)
    }

    /// Every release ref: (name, id), sorted by name. A ref file that does not decode is an error naming it.
    pub fn refs(&self) -> Result<Vec<(String, ReleaseId)>, StoreError> {
        let dir = self.ref_dir();
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let ent = ent.map_err(StoreError::io(&dir))?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else { continue };
            if name.starts_with('.') {
                continue; // a temp file of an interrupted write
            }
            out.push((name.clone(), self.read_ref(&name)?.ok_or(StoreError::NoSuchRelease(name))?));
        }
        out.sort();
        Ok(out)
    }

    /// The release a name points to, if any.
    pub fn read_ref(&self, name: &str) -> Result<Option<ReleaseId>, StoreError> {
        check_release_name(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let path = self.ref_dir().join(name);
        let bytes = match fsx::read_capped(&path, 4096) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let r: RefFile = format::decode("release ref", MAGIC_REF, &bytes, 4096)
            .map_err(|e| StoreError::Object { path, source: e.into() })?;
        Ok(Some(r.release))
    }

    /// Points `name` at `release`, durably (temp file, fsync, rename, fsync of the directory).
    pub fn write_ref(&self, name: &str, release: ReleaseId) -> Result<(), StoreError> {
        check_release_name(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let dir = self.ref_dir();
        fsx::write_atomic(&dir, name, &format::encode(MAGIC_REF, &RefFile { release })).map_err(StoreError::io(&dir))
    }

    /// Removes a ref (durably).
    pub fn remove_ref(&self, name: &str) -> Result<(), StoreError> {
        check_release_name(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let dir = self.ref_dir();
        std::fs::remove_file(dir.join(name)).map_err(StoreError::io(dir.join(name)))?;
        fsx::fsync_dir(&dir).map_err(StoreError::io(&dir))
    }

    /// Resolves a release name, a full id or an unambiguous id prefix (at least 8 hex digits).
    pub fn resolve(&self, what: &str) -> Result<(String, ReleaseId), StoreError> {
        if check_release_name(what).is_ok() {
            if let Some(id) = self.read_ref(what)? {
                return Ok((what.to_owned(), id));
            }
        }
        let refs = self.refs()?;
        if what.len() >= 8 && what.bytes().all(|b| b.is_ascii_hexdigit()) {
            let lower = what.to_ascii_lowercase();
            let hits: Vec<_> = refs.iter().filter(|(_, id)| id.to_hex().starts_with(&lower)).collect();
            if hits.len() == 1 {
                return Ok(hits[0].clone());
            }
            if hits.len() > 1 {
                return Err(StoreError::Invalid(format!(
                    "id prefix {what} matches {} releases; give more digits",
                    hits.len()
                )));
            }
        }
        Err(StoreError::NoSuchRelease(what.to_owned()))
    }

    /// Every release with its ref name, newest first (by creation time, then name).
    pub fn releases(&self) -> Result<Vec<(String, ReleaseId, SignedRelease, Release)>, StoreError> {
        let mut out = Vec::new();
        for (name, id) in self.refs()? {
            let (s, r) = self.read_release(&id)?;
            out.push((name, id, s, r));
        }
        out.sort_by(|a, b| b.3.created.cmp(&a.3.created).then_with(|| b.0.cmp(&a.0)));
        Ok(out)
    }

    /// The metadata objects present (`manifests` or `releases`), for gc.
    pub(crate) fn list_objects(&self, kind: &str) -> Result<Vec<(String, PathBuf)>, StoreError> {
        let base = self.root.join("objects").join(kind);
        let mut out = Vec::new();
        let mut visit = |dir: &Path| -> Result<(), StoreError> {
            for ent in std::fs::read_dir(dir).map_err(StoreError::io(dir))? {
                let ent = ent.map_err(StoreError::io(dir))?;
                let ft = ent.file_type().map_err(StoreError::io(ent.path()))?;
                if ft.is_dir() {
                    continue;
                }
                if let Some(name) = ent.file_name().to_str() {
                    out.push((name.to_owned(), ent.path()));
                }
            }
            Ok(())
        };
        if kind == "releases" {
            visit(&base)?;
        } else {
            for b in 0..=255u8 {
                let d = base.join(format!("{b:02x}"));
                if d.is_dir() {
                    visit(&d)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes what interrupted writers left: `tmp/` entries, temp files of atomic writes in `refs/releases/`
    /// and `cache/`, and packs whose index was never renamed into place. Only safe under the exclusive lock.
    pub(crate) fn clean_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        for ent in std::fs::read_dir(&tmp).map_err(StoreError::io(&tmp))? {
            let ent = ent.map_err(StoreError::io(&tmp))?;
            let p = ent.path();
            let res = if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            res.map_err(StoreError::io(&p))?;
        }
        for dir in [self.ref_dir(), self.root.join("cache"), self.root.clone()] {
            for ent in std::fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
                let ent = ent.map_err(StoreError::io(&dir))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".tmp.") {
                    std::fs::remove_file(ent.path()).map_err(StoreError::io(ent.path()))?;
                }
            }
        }
        let packs = self.packs_dir();
        for ent in std::fs::read_dir(&packs).map_err(StoreError::io(&packs))? {
            let ent = ent.map_err(StoreError::io(&packs))?;
            let p = ent.path();
            if p.extension().is_some_and(|e| e == "pack") && !p.with_extension("idx").exists() {
                tracing::info!("removing {} (its index was never written: an interrupted publish)", p.display());
                std::fs::remove_file(&p).map_err(StoreError::io(&p))?;
            }
        }
        Ok(())
    }

    /// The current gc epoch: bumped by every gc, so that caches of "this chunk exists" know to re-check.
    pub fn gc_epoch(&self) -> u64 {
        std::fs::read_to_string(self.root.join("gc-epoch")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    pub(crate) fn bump_gc_epoch(&self) -> Result<(), StoreError> {
        let next = self.gc_epoch() + 1;
        fsx::write_atomic(&self.root, "gc-epoch", format!("{next}\n").as_bytes()).map_err(StoreError::io(&self.root))
    }

    /// Keeps the chunks that a writer killed before its commit had appended to its packs in `tmp/`: each record
    /// is decoded and checked against its id, and the good ones committed (a record cut short by the kill, and
    /// anything that does not verify, is dropped). An agent killed mid-transfer thus loses only what was not yet
    /// written out, not the last commit period. Returns how many chunks were kept. Needs the exclusive lock.
    pub fn salvage(&self, lock: &FileLock) -> Result<u64, StoreError> {
        let tmp = self.root.join("tmp");
        let mut packs = Vec::new();
        for ent in std::fs::read_dir(&tmp).map_err(StoreError::io(&tmp))?.flatten() {
            if ent.file_type().is_ok_and(|t| t.is_dir()) {
                for f in std::fs::read_dir(ent.path()).map_err(StoreError::io(ent.path()))?.flatten() {
                    if f.path().extension().is_some_and(|e| e == "pack") {
                        packs.push(f.path());
                    }
                }
            }
        }
        if packs.is_empty() {
            return Ok(0);
        }
        // Out of tmp/ first: opening the transaction empties it.
        let keep = self.root.join("salvage");
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::create_dir(&keep).map_err(StoreError::io(&keep))?;
        let mut moved = Vec::new();
        for (i, p) in packs.iter().enumerate() {
            let to = keep.join(format!("{i}.pack"));
            std::fs::rename(p, &to).map_err(StoreError::io(p))?;
            moved.push(to);
        }
        let txn = self.begin(lock)?;
        let mut kept = 0u64;
        let mut failed = None;
        for p in &moved {
            pack::for_each_record(p, |id, obj| {
                if failed.is_none() && !txn.has_chunk(id) && crate::chunk::decode_object(id, obj, None).is_ok() {
                    match txn.append(id, obj) {
                        Ok(()) => kept += 1,
                        Err(e) => failed = Some(e),
                    }
                }
            })
            .map_err(StoreError::io(p))?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        txn.commit_objects()?;
        std::fs::remove_dir_all(&keep).map_err(StoreError::io(&keep))?;
        Ok(kept)
    }

    /// Opens a write transaction. The caller must hold the exclusive lock.
    pub fn begin(&self, _lock: &FileLock) -> Result<Transaction<'_>, StoreError> {
        self.clean_tmp()?;
        Transaction::new(self)
    }
}
