//! Getting a release into a node's repository: the release (id and signature checked), its part manifests
//! (hashes checked), then the missing set — the chunks the node lacks — each verified on arrival.
//!
//! Where the bytes come from is a [`ChunkSource`]: another repository on this machine here; peers over QUIC in
//! the agent. Nothing received is stored before it is verified.

use crate::chunk;
use crate::id::{ChunkId, ManifestId, ReleaseId};
use crate::manifest::{PartManifest, Release, SignedRelease};
use crate::store::{Repository, StoreError};
use rayon::prelude::*;
use std::collections::HashSet;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The local repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source sent bytes that do not match what was asked for.
    #[error("{what} from {source_name} does not verify: {reason}")]
    Bad {
        /// What was fetched.
        what: String,
        /// The source.
        source_name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The release is not signed by a trusted key.
    #[error("release {0} is not signed by a trusted publisher key")]
    Untrusted(String),
}

/// Somewhere releases, manifests and chunk objects can be read from (unverified: the caller verifies).
pub trait ChunkSource {
    /// A name for messages.
    fn name(&self) -> String;
    /// The stored release file.
    fn release(&self, id: &ReleaseId) -> Result<Vec<u8>, StoreError>;
    /// A part manifest file.
    fn manifest(&self, id: &ManifestId) -> Result<Vec<u8>, StoreError>;
    /// Chunk objects, in the order asked.
    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// Another repository on this machine.
pub struct LocalSource<'a>(pub &'a Repository);

impl ChunkSource for LocalSource<'_> {
    fn name(&self) -> String {
        self.0.root().display().to_string()
    }
    fn release(&self, id: &ReleaseId) -> Result<Vec<u8>, StoreError> {
        self.0.read_release_object(id)
    }
    fn manifest(&self, id: &ManifestId) -> Result<Vec<u8>, StoreError> {
        crate::fsx::read_capped(&self.0.manifest_path(id), crate::manifest::MAX_MANIFEST_BYTES)
            .map_err(StoreError::io(self.0.manifest_path(id)))
    }
    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>, StoreError> {
        ids.iter().map(|id| self.0.read_chunk_object(id)).collect()
    }
}

/// What a fetch brought.
#[derive(Debug, Default, serde::Serialize)]
pub struct FetchReport {
    /// Chunks the node lacked and fetched.
    pub chunks_fetched: u64,
    /// Bytes of those chunk objects (what crossed the wire, compressed).
    pub bytes_fetched: u64,
    /// Chunks the node already had.
    pub chunks_present: u64,
}

/// Which publisher keys a node accepts.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// Any release, signed or not (a node with no publisher key configured).
    #[default]
    Any,
    /// Only releases signed by one of these keys.
    Keys(Vec<[u8; 32]>),
}

/// Brings release `id` (named `name`) and everything it needs from `source` into `repo`, verifying all of it,
/// and points the ref `name` at it. Objects already present are not fetched again. The caller holds the
/// repository's exclusive lock.
pub fn fetch_release(
    repo: &Repository,
    lock: &crate::fsx::FileLock,
    source: &dyn ChunkSource,
    name: &str,
    id: &ReleaseId,
    trust: &Trust,
) -> Result<(Release, FetchReport), FetchError> {
    let bad = |what: String, reason: String| FetchError::Bad { what, source_name: source.name(), reason };
    let bytes = source.release(id)?;
    let (signed, release) =
        SignedRelease::decode(&bytes, Some(*id)).map_err(|e| bad(format!("release {name}"), e.to_string()))?;
    if let Trust::Keys(keys) = trust {
        if !signed.signature.as_ref().is_some_and(|s| keys.contains(&s.key)) {
            return Err(FetchError::Untrusted(name.to_string()));
        }
    }
    let txn = repo.begin(lock)?;
    let mut report = FetchReport::default();
    let mut missing: Vec<ChunkId> = Vec::new();
    let mut seen: HashSet<ChunkId> = HashSet::new();
    for part in &release.parts {
        let m = if repo.has_manifest(&part.manifest) {
            repo.read_manifest(&part.manifest)?
        } else {
            let mb = source.manifest(&part.manifest)?;
            let what = format!("manifest {}", part.manifest);
            if ManifestId::of(&mb) != part.manifest {
                return Err(bad(what, "content does not hash to its id".into()));
            }
            let m = PartManifest::decode(&mb).map_err(|e| bad(what, e.to_string()))?;
            txn.put_manifest(&m)?;
            m
        };
        for c in m.chunks() {
            if seen.insert(c.id) {
                if repo.has_chunk(&c.id) {
                    report.chunks_present += 1;
                } else {
                    missing.push(c.id);
                }
            }
        }
    }
    // The missing set, in batches: each object verified (decoded, hashed) before it is stored.
    for batch in missing.chunks(256) {
        let objects = source.chunks(batch)?;
        if objects.len() != batch.len() {
            return Err(bad("chunk batch".into(), format!("{} objects for {} ids", objects.len(), batch.len())));
        }
        // Verification (decompress + hash) is most of the cost: done in parallel, before anything is stored.
        let checked: Vec<Result<(), String>> = batch
            .par_iter()
            .zip(objects.par_iter())
            .map(|(id, obj)| chunk::decode_object(id, obj, None).map(|_| ()).map_err(|e| e.to_string()))
            .collect();
        for ((id, obj), ok) in batch.iter().zip(&objects).zip(checked) {
            ok.map_err(|reason| bad(format!("chunk {id}"), reason))?;
            txn.append(id, obj)?;
            report.chunks_fetched += 1;
            report.bytes_fetched += obj.len() as u64;
        }
    }
    txn.put_release(&signed)?;
    txn.commit(name, *id)?;
    Ok((release, report))
}
