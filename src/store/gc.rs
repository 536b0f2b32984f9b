//! Garbage collection: drop the releases not kept, then every object no kept release reaches. A pack with no
//! live chunk is deleted; one with more than a quarter of its bytes dead is repacked (live chunks copied into a
//! new pack, made durable, then the old one deleted).
//!
//! Runs under the exclusive repository lock, so no publish can add a reference to an object being swept. The
//! order makes it crash-safe: the gc epoch is bumped (stat caches stop trusting "this chunk exists"), refs are
//! removed durably, and only then are objects deleted; a crash leaves orphans that the next gc removes.

use super::pack::{self, PackWriter};
use super::{Repository, StoreError};
use crate::fsx;
use crate::id::{ChunkId, ManifestId, ReleaseId};
use serde::Serialize;
use std::collections::HashSet;

/// What a gc removed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Release names kept.
    pub kept: Vec<String>,
    /// Release names removed.
    pub removed: Vec<String>,
    /// Chunk objects deleted.
    pub chunks_removed: u64,
    /// Manifest and release objects deleted.
    pub metadata_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// Keeps the `keep_newest` newest releases plus those named in `keep_names`, removes the rest and every object
/// they alone used. With `dry_run`, reports without deleting. The caller holds the exclusive lock.
pub fn gc(repo: &Repository, keep_newest: usize, keep_names: &[String], dry_run: bool) -> Result<GcReport, StoreError> {
    let releases = repo.releases()?;
    for n in keep_names {
        if !releases.iter().any(|(name, ..)| name == n) {
            return Err(StoreError::NoSuchRelease(n.clone()));
        }
    }
    let mut report = GcReport::default();
    let mut live_releases: HashSet<ReleaseId> = HashSet::new();
    let mut live_manifests: HashSet<ManifestId> = HashSet::new();
    let mut live_chunks: HashSet<ChunkId> = HashSet::new();
    for (i, (name, id, _, release)) in releases.iter().enumerate() {
        if i >= keep_newest && !keep_names.contains(name) {
            report.removed.push(name.clone());
            continue;
        }
        report.kept.push(name.clone());
        live_releases.insert(*id);
        for part in &release.parts {
            // A kept release whose manifest cannot be read would have its chunks swept: refuse instead.
            let m = repo.read_manifest(&part.manifest).map_err(|e| {
                StoreError::Invalid(format!(
                    "kept release {name} is damaged, gc refuses to sweep: {e}\nhelp: run `qpack verify`"
                ))
            })?;
            live_manifests.insert(part.manifest);
            live_chunks.extend(m.chunks().map(|c| c.id));
        }
    }
    if dry_run {
        count_sweep(repo, &live_chunks, &live_manifests, &live_releases, &mut report, false)?;
        return Ok(report);
    }
    repo.bump_gc_epoch()?;
    for name in &report.removed {
        repo.remove_ref(name)?;
    }
    count_sweep(repo, &live_chunks, &live_manifests, &live_releases, &mut report, true)?;
    repo.clean_tmp()?;
    Ok(report)
}

fn count_sweep(
    repo: &Repository,
    chunks: &HashSet<ChunkId>,
    manifests: &HashSet<ManifestId>,
    releases: &HashSet<ReleaseId>,
    report: &mut GcReport,
    delete: bool,
) -> Result<(), StoreError> {
    let mut sweep = |kind: &str, live: &dyn Fn(&str) -> bool| -> Result<u64, StoreError> {
        let mut n = 0;
        for (name, path) in repo.list_objects(kind)? {
            if live(&name) {
                continue;
            }
            let len = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            if delete {
                std::fs::remove_file(&path).map_err(StoreError::io(&path))?;
            }
            report.bytes_freed += len;
            n += 1;
        }
        Ok(n)
    };
    report.metadata_removed =
        sweep("manifests", &|n| ManifestId::from_hex(n).is_some_and(|id| manifests.contains(&id)))?
            + sweep("releases", &|n| ReleaseId::from_hex(n).is_some_and(|id| releases.contains(&id)))?;
    report.chunks_removed = sweep_packs(repo, chunks, report, delete)?;
    Ok(())
}

/// Deletes or repacks the packs holding dead chunks; returns the number of chunk objects dropped.
fn sweep_packs(
    repo: &Repository,
    live: &HashSet<ChunkId>,
    report: &mut GcReport,
    delete: bool,
) -> Result<u64, StoreError> {
    let dir = repo.packs_dir();
    let packs: Vec<String> = repo.chunk_index().packs.clone();
    let mut removed = 0u64;
    let mut changed = false;
    for (n, name) in packs.iter().enumerate() {
        let entries = match pack::read_index(&dir, name) {
            Ok(e) => e,
            Err(_) => {
                let path = repo.pack_path(name);
                pack::scan_pack(&std::fs::read(&path).map_err(StoreError::io(&path))?).entries
            }
        };
        // A chunk is live here only if it is live and this is the copy the index serves (duplicates are dead).
        let serves = |e: &pack::IndexEntry| repo.chunk_index().get(&e.id).is_some_and(|l| l.pack as usize == n);
        let (keep, dead): (Vec<&pack::IndexEntry>, Vec<&pack::IndexEntry>) =
            entries.iter().partition(|e| live.contains(&e.id) && serves(e));
        if dead.is_empty() {
            continue;
        }
        let dead_bytes: u64 = dead.iter().map(|e| u64::from(e.len) + pack::RECORD_HEADER).sum();
        let pack_len = std::fs::symlink_metadata(repo.pack_path(name)).map(|m| m.len()).unwrap_or(0);
        if !keep.is_empty() && dead_bytes * 4 < pack_len {
            continue; // mostly live: not worth rewriting yet
        }
        removed += dead.len() as u64;
        report.bytes_freed += dead_bytes;
        if !delete {
            continue;
        }
        if !keep.is_empty() {
            let tmp = repo.root().join("tmp");
            let mut w = PackWriter::create(&tmp).map_err(StoreError::io(&tmp))?;
            for e in &keep {
                let obj = repo.read_chunk_object(&e.id)?;
                w.append(&e.id, &obj).map_err(StoreError::io(&tmp))?;
            }
            let sealed = w.finish().map_err(StoreError::io(&tmp))?;
            fsx::syncfs(repo.root()).map_err(StoreError::io(repo.root()))?;
            let dst = dir.join(format!("{}.pack", sealed.name));
            std::fs::rename(&sealed.pack, &dst).map_err(StoreError::io(&dst))?;
            let dst = dir.join(format!("{}.idx", sealed.name));
            std::fs::rename(&sealed.idx, &dst).map_err(StoreError::io(&dst))?;
            fsx::syncfs(repo.root()).map_err(StoreError::io(repo.root()))?;
        }
        // The index goes first: a pack without an index is ignored, an index without its pack is an error.
        for ext in ["idx", "pack"] {
            let p = dir.join(format!("{name}.{ext}"));
            std::fs::remove_file(&p).map_err(StoreError::io(&p))?;
        }
        changed = true;
    }
    if changed {
        fsx::fsync_dir(&dir).map_err(StoreError::io(&dir))?;
        repo.reload_index()?;
    }
    Ok(removed)
}
