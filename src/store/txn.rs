//! Write transactions: new chunks are appended to packs and new manifests and releases written as files, all
//! under `tmp/<txn>/`; they become visible only at commit, after one `syncfs` made them durable. So an object at
//! its final name is always whole, even after a power cut, and a killed publish leaves only a temp directory
//! that the next writer removes.

use super::pack::{PackWriter, SealedPack, PACK_TARGET};
use super::{Repository, StoreError};
use crate::chunk;
use crate::fsx;
use crate::id::{ChunkId, ManifestId, ReleaseId};
use crate::manifest::{PartManifest, SignedRelease};
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Counters of what a transaction wrote.
#[derive(Debug, Default)]
pub struct TxnStats {
    /// Chunks written.
    pub chunks_new: AtomicU64,
    /// Chunks the repository (or this transaction) already had.
    pub chunks_reused: AtomicU64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new_raw: AtomicU64,
    /// Stored (compressed) bytes of the new chunks.
    pub bytes_new_stored: AtomicU64,
}

/// A set of objects being written; nothing is visible until [`Transaction::commit`].
pub struct Transaction<'r> {
    repo: &'r Repository,
    dir: PathBuf,
    claimed: Mutex<HashSet<ChunkId>>,
    staged: Mutex<Vec<(PathBuf, PathBuf)>>,
    writer: Mutex<Option<PackWriter>>,
    sealed: Mutex<Vec<SealedPack>>,
    /// What was written.
    pub stats: TxnStats,
    committed: bool,
}

impl<'r> Transaction<'r> {
    pub(super) fn new(repo: &'r Repository) -> Result<Self, StoreError> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = repo.root.join("tmp").join(format!("txn-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(StoreError::io(&dir))?;
        Ok(Self {
            repo,
            dir,
            claimed: Mutex::new(HashSet::new()),
            staged: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
            sealed: Mutex::new(Vec::new()),
            stats: TxnStats::default(),
            committed: false,
        })
    }

    fn stage(&self, name: String, bytes: &[u8], final_path: PathBuf) -> Result<(), StoreError> {
        let tmp = self.dir.join(name);
        let mut f = std::fs::File::create(&tmp).map_err(StoreError::io(&tmp))?;
        f.write_all(bytes).map_err(StoreError::io(&tmp))?;
        self.staged.lock().expect("staged list").push((tmp, final_path));
        Ok(())
    }

    /// Whether the chunk is in the repository or already written by this transaction.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.claimed.lock().expect("claimed set").contains(id) || self.repo.has_chunk(id)
    }

    /// Stores a chunk unless present; returns the stored size if it was written now.
    pub fn put_chunk(&self, id: ChunkId, raw: &[u8], level: i32) -> Result<Option<u64>, StoreError> {
        if self.repo.has_chunk(&id) || !self.claimed.lock().expect("claimed set").insert(id) {
            self.stats.chunks_reused.fetch_add(1, Relaxed);
            return Ok(None);
        }
        let obj = chunk::encode_object(raw, level);
        self.append(&id, &obj)?;
        self.stats.chunks_new.fetch_add(1, Relaxed);
        self.stats.bytes_new_raw.fetch_add(raw.len() as u64, Relaxed);
        self.stats.bytes_new_stored.fetch_add(obj.len() as u64, Relaxed);
        Ok(Some(obj.len() as u64))
    }

    /// Appends a chunk object to the current pack, sealing it when full.
    pub fn append(&self, id: &ChunkId, obj: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writer.lock().expect("pack writer");
        if w.is_none() {
            *w = Some(PackWriter::create(&self.dir).map_err(StoreError::io(&self.dir))?);
        }
        let writer = w.as_mut().expect("set above");
        writer.append(id, obj).map_err(StoreError::io(&self.dir))?;
        if writer.len() >= PACK_TARGET {
            let full = w.take().expect("present");
            self.sealed.lock().expect("sealed").push(full.finish().map_err(StoreError::io(&self.dir))?);
        }
        Ok(())
    }

    /// Hands what was appended to the kernel (not a sync): if this process is killed before the commit, a
    /// later [`Repository::salvage`] finds it in the pack.
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(w) = self.writer.lock().expect("pack writer").as_mut() {
            w.flush().map_err(StoreError::io(&self.dir))?;
        }
        Ok(())
    }

    /// Notes a chunk that was found present without writing it (stat-cache hits), for the counters.
    pub fn count_reused(&self, n: u64) {
        self.stats.chunks_reused.fetch_add(n, Relaxed);
    }

    /// Stores a part manifest unless present; returns its id and whether it is new.
    pub fn put_manifest(&self, m: &PartManifest) -> Result<(ManifestId, bool), StoreError> {
        let (id, bytes) = m.encode_with_id();
        if self.repo.has_manifest(&id) {
            return Ok((id, false));
        }
        self.stage(format!("m-{}", id.to_hex()), &bytes, self.repo.manifest_path(&id))?;
        Ok((id, true))
    }

    /// Stores a release object.
    pub fn put_release(&self, r: &SignedRelease) -> Result<ReleaseId, StoreError> {
        let id = r.id();
        self.stage(format!("r-{}", id.to_hex()), &r.encode(), self.repo.release_path(&id))?;
        Ok(id)
    }

    /// Makes every staged object durable, then visible, then points `ref_name` at `release` — in that order,
    /// so that a crash at any point leaves either the old state or a state where the ref names a complete release.
    pub fn commit(self, ref_name: &str, release: ReleaseId) -> Result<(), StoreError> {
        self.finish(Some((ref_name, release)))
    }

    /// Makes every staged object durable and visible without naming a release: for work in progress that must
    /// survive a crash (a node's fetch commits what it verified every few seconds, and resumes from it).
    pub fn commit_objects(self) -> Result<(), StoreError> {
        self.finish(None)
    }

    fn finish(mut self, named: Option<(&str, ReleaseId)>) -> Result<(), StoreError> {
        let root = self.repo.root.clone();
        if let Some(w) = self.writer.lock().expect("pack writer").take() {
            if !w.is_empty() {
                self.sealed.lock().expect("sealed").push(w.finish().map_err(StoreError::io(&self.dir))?);
            }
        }
        fsx::syncfs(&root).map_err(StoreError::io(&root))?;
        let sealed = std::mem::take(&mut *self.sealed.lock().expect("sealed"));
        let packs = self.repo.packs_dir();
        // Packs first, then their indexes: an index in objects/packs always describes a pack that is there.
        for p in &sealed {
            let dst = packs.join(format!("{}.pack", p.name));
            std::fs::rename(&p.pack, &dst).map_err(StoreError::io(&dst))?;
        }
        for p in &sealed {
            let dst = packs.join(format!("{}.idx", p.name));
            std::fs::rename(&p.idx, &dst).map_err(StoreError::io(&dst))?;
        }
        let staged = std::mem::take(&mut *self.staged.lock().expect("staged list"));
        for (tmp, dst) in &staged {
            std::fs::rename(tmp, dst).map_err(StoreError::io(dst))?;
        }
        fsx::syncfs(&root).map_err(StoreError::io(&root))?;
        {
            let mut idx = self.repo.chunk_index_mut();
            for p in sealed {
                // A refresh by another thread may have added it already.
                if !idx.has_pack(&p.name) {
                    idx.insert_pack(p.name, &p.entries);
                }
            }
        }
        if let Some((ref_name, release)) = named {
            self.repo.write_ref(ref_name, release)?;
        }
        self.committed = true;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
