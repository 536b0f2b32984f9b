//! The publish stat cache: for each file of a tree published before, its stat identity and chunk list, so that
//! re-publishing an unchanged file costs a stat, not a read.
//!
//! One cache per source tree (keyed by its absolute path) under `REPO/cache/`. A cache is only used with the
//! chunker settings and build prefix it was made with; after a gc (the repository's gc epoch changed) its chunk
//! lists are re-checked against the store. Files modified within a second of the scan that cached them are not
//! cached (their mtime may not yet tell a later write apart). Losing or corrupting the cache costs time, never
//! correctness: it is an optimisation, and a cache that does not decode is ignored.
//!
//! Racy timestamps: a file rewritten right after we read it could keep the same stat identity if the change
//! fell in the same clock tick as what we cached. Its ctime (which nobody can set back) would then be within a
//! tick of the scan. So files whose ctime is at most `RACY_MARGIN_NS` before the scan start, or after it, are
//! not cached: the next publish reads them again. Linux filesystems stamp with the coarse clock (a jiffy,
//! <= 10 ms); the margin is ten times that.

use crate::chunk::ChunkerParams;
use crate::format::{self, MAGIC_STAT_CACHE};
use crate::fsx;
use crate::manifest::ChunkRef;
use crate::scan::FileStat;
use crate::store::Repository;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What is remembered of one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedFile {
    /// Its stat identity when it was chunked.
    pub stat: FileStat,
    /// `FLAG_*` bits of its manifest entry.
    pub flags: u8,
    /// Its chunks.
    pub chunks: Vec<ChunkRef>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    tree: Vec<u8>,
    prefix: Vec<u8>,
    chunker: ChunkerParams,
    gc_epoch: u64,
    files: Vec<(Vec<u8>, CachedFile)>,
}

/// A loaded stat cache.
pub struct StatCache {
    path: PathBuf,
    tree: Vec<u8>,
    prefix: Vec<u8>,
    chunker: ChunkerParams,
    /// Whether chunks named by the cache must be checked against the store (a gc ran since it was written).
    pub must_recheck: bool,
    files: HashMap<Vec<u8>, CachedFile>,
}

const CAP: usize = 1 << 30;
/// Files whose ctime is this close to the scan start (or later) are not cached.
pub const RACY_MARGIN_NS: i128 = 100_000_000;

impl StatCache {
    /// Loads the cache of `tree` (an absolute path), or an empty one if there is none or it does not fit.
    pub fn load(repo: &Repository, tree: &Path, prefix: &[u8]) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let tree_bytes = tree.as_os_str().as_bytes().to_vec();
        let key = blake3::hash(&tree_bytes).to_hex();
        let path = repo.root().join("cache").join(format!("stat-{}", &key[..32]));
        let chunker = repo.config.chunker;
        let mut cache = Self {
            path,
            tree: tree_bytes,
            prefix: prefix.to_vec(),
            chunker,
            must_recheck: false,
            files: HashMap::new(),
        };
        let Ok(bytes) = fsx::read_capped(&cache.path, CAP) else { return cache };
        match format::decode::<CacheFile>("stat cache", MAGIC_STAT_CACHE, &bytes, CAP) {
            Ok(f) if f.tree == cache.tree && f.prefix == prefix && f.chunker == chunker => {
                cache.must_recheck = f.gc_epoch != repo.gc_epoch();
                cache.files = f.files.into_iter().collect();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("ignoring stat cache {}: {e}", cache.path.display()),
        }
        cache
    }

    /// The cached chunks of `path` if its stat identity is unchanged.
    pub fn get(&self, path: &[u8], stat: &FileStat) -> Option<&CachedFile> {
        self.files.get(path).filter(|c| c.stat.same_file(stat))
    }

    /// Number of files in the cache.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Replaces the cache with `files` and writes it. `scan_start` is when the walk began: files whose ctime is
    /// not safely before it are left out (racy timestamps, see the module doc).
    pub fn save(
        mut self,
        repo: &Repository,
        files: Vec<(Vec<u8>, CachedFile)>,
        scan_start: std::time::SystemTime,
    ) -> std::io::Result<()> {
        let start_ns = scan_start.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        let racy = |t: &crate::manifest::Mtime| {
            i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos) >= start_ns - RACY_MARGIN_NS
        };
        let files: Vec<_> = files.into_iter().filter(|(_, c)| !racy(&c.stat.ctime)).collect();
        let f = CacheFile {
            tree: std::mem::take(&mut self.tree),
            prefix: std::mem::take(&mut self.prefix),
            chunker: self.chunker,
            gc_epoch: repo.gc_epoch(),
            files,
        };
        let dir = self.path.parent().expect("cache file has a parent").to_owned();
        let name = self.path.file_name().expect("cache file name").to_string_lossy().into_owned();
        // Disposable: atomic (never half written) but not synced; a crash costs a re-read, not correctness.
        fsx::write_replace(&dir, &name, &format::encode(MAGIC_STAT_CACHE, &f))
    }
}
