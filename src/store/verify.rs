//! `verify`: re-hash every object and check every manifest, and name for each bad object the releases it breaks.

use super::{Repository, StoreError};
use crate::chunk;
use crate::fsx;
use crate::id::{ChunkId, ManifestId};
use crate::manifest::MAX_CHUNK_LEN;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;

/// One corrupt or missing object.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// `chunk`, `manifest`, `release` or `ref`.
    pub kind: &'static str,
    /// Its id (or ref name).
    pub id: String,
    /// What is wrong.
    pub error: String,
    /// The releases (ref names) it breaks.
    pub breaks: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Releases checked.
    pub releases: u64,
    /// Manifests checked.
    pub manifests: u64,
    /// Chunk objects re-hashed.
    pub chunks: u64,
    /// Chunk objects no release references (gc removes them).
    pub unreferenced_chunks: u64,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

/// Checks the whole repository. `progress` is called with the number of chunks checked so far.
pub fn verify(repo: &Repository, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    // Which releases use each chunk and manifest, so that a bad object can be blamed on them.
    let mut chunk_users: HashMap<ChunkId, Vec<u32>> = HashMap::new();
    let mut manifest_users: HashMap<ManifestId, Vec<u32>> = HashMap::new();
    let refs = repo.refs()?;
    let names: Vec<String> = refs.iter().map(|(n, _)| n.clone()).collect();
    for (idx, (name, id)) in refs.iter().enumerate() {
        report.releases += 1;
        let release = match repo.read_release(id) {
            Ok((_, r)) => r,
            Err(e) => {
                report.problems.push(Problem {
                    kind: "release",
                    id: id.to_hex(),
                    error: e.to_string(),
                    breaks: vec![name.clone()],
                });
                continue;
            }
        };
        for part in &release.parts {
            manifest_users.entry(part.manifest).or_default().push(idx as u32);
        }
    }
    for (mid, users) in &manifest_users {
        report.manifests += 1;
        match repo.read_manifest(mid) {
            Ok(m) => {
                for c in m.chunks() {
                    let u = chunk_users.entry(c.id).or_default();
                    for r in users {
                        if !u.contains(r) {
                            u.push(*r);
                        }
                    }
                }
            }
            Err(e) => report.problems.push(Problem {
                kind: "manifest",
                id: mid.to_hex(),
                error: e.to_string(),
                breaks: users.iter().map(|&i| names[i as usize].clone()).collect(),
            }),
        }
    }
    let blame = |users: Option<&Vec<u32>>| -> Vec<String> {
        let mut v: Vec<String> = users.into_iter().flatten().map(|&i| names[i as usize].clone()).collect();
        v.sort();
        v
    };
    let objects = repo.list_objects("chunks")?;
    let done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<(Option<ChunkId>, String, Option<String>)> = objects
        .par_iter()
        .map(|(name, path)| {
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n % 1024 == 0 {
                progress(n);
            }
            let Some(id) = ChunkId::from_hex(name) else {
                return (None, name.clone(), Some("not a chunk object name".to_string()));
            };
            let err = match fsx::read_capped(path, MAX_CHUNK_LEN as usize + 4096) {
                Ok(obj) => chunk::decode_object(&id, &obj, None).err().map(|e| e.to_string()),
                Err(e) => Some(format!("{}: {e}", path.display())),
            };
            (Some(id), name.clone(), err)
        })
        .collect();
    let mut present: std::collections::HashSet<ChunkId> = std::collections::HashSet::with_capacity(results.len());
    for (id, name, err) in results {
        report.chunks += 1;
        if let Some(id) = id {
            present.insert(id);
            if !chunk_users.contains_key(&id) {
                report.unreferenced_chunks += 1;
            }
        }
        if let Some(error) = err {
            let breaks = blame(id.as_ref().and_then(|i| chunk_users.get(i)));
            report.problems.push(Problem { kind: "chunk", id: name, error, breaks });
        }
    }
    let mut missing: Vec<_> = chunk_users.iter().filter(|(id, _)| !present.contains(id)).collect();
    missing.sort_by_key(|(id, _)| **id);
    for (id, users) in missing {
        report.problems.push(Problem {
            kind: "chunk",
            id: id.to_hex(),
            error: format!("missing ({})", repo.chunk_path(id).display()),
            breaks: blame(Some(users)),
        });
    }
    Ok(report)
}
