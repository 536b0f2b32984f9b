//! `verify`: re-hash every object and check every manifest, and name for each bad object the releases it breaks.

use super::pack::{self, IndexEntry};
use super::{Repository, StoreError};
use crate::chunk;
use crate::id::{ChunkId, ManifestId};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::collections::HashSet;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

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
    /// Chunk records re-hashed.
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
    // Each ref on its own, so that one that does not decode is reported as damage instead of ending the check.
    let mut refs = Vec::new();
    let dir = repo.root().join("refs/releases");
    for ent in std::fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
        let ent = ent.map_err(StoreError::io(&dir))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a temp file of an interrupted write
        }
        match repo.read_ref(&name) {
            Ok(Some(id)) => refs.push((name, id)),
            Ok(None) => {}
            Err(e) => report.problems.push(Problem {
                kind: "ref",
                id: name.clone(),
                error: e.to_string(),
                breaks: vec![name],
            }),
        }
    }
    refs.sort();
    let names: Vec<String> = refs.iter().map(|(n, _)| n.clone()).collect();
    let mut releases = Vec::new();
    for (idx, (name, id)) in refs.iter().enumerate() {
        report.releases += 1;
        let release: crate::manifest::Release = match repo.read_release(id) {
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
        releases.push((idx, release));
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
    // Parts valid one by one can still escape together (a mount under a symlink of the base, base entries
    // inside a mount): check each release whose manifests are sound the way checkout will.
    let bad_manifests: HashSet<String> = report.problems.iter().map(|p| p.id.clone()).collect();
    for (idx, release) in &releases {
        if release.parts.iter().any(|p| bad_manifests.contains(&p.manifest.to_hex())) {
            continue;
        }
        if let Err(e) = crate::materialize::Plan::load(repo, release, true) {
            report.problems.push(Problem {
                kind: "release",
                id: refs[*idx].1.to_hex(),
                error: e.to_string(),
                breaks: vec![names[*idx].clone()],
            });
        }
    }
    let blame = |users: Option<&Vec<u32>>| -> Vec<String> {
        let mut v: Vec<String> = users.into_iter().flatten().map(|&i| names[i as usize].clone()).collect();
        v.sort();
        v
    };
    // Every record of every pack: its index entry within bounds, the record's id matching, the object decoding
    // to bytes with that hash.
    let dir = repo.packs_dir();
    let packs: Vec<String> = repo.chunk_index().packs.clone();
    let mut records: Vec<(String, IndexEntry)> = Vec::new();
    for name in &packs {
        match pack::read_index(&dir, name) {
            Ok(entries) => records.extend(entries.into_iter().map(|e| (name.clone(), e))),
            Err(e) => {
                let scan = std::fs::read(repo.pack_path(name)).map(|b| pack::scan_pack(&b));
                let breaks = Vec::new();
                report.problems.push(Problem { kind: "pack index", id: name.clone(), error: e, breaks });
                if let Ok(scan) = scan {
                    records.extend(scan.entries.into_iter().map(|e| (name.clone(), e)));
                }
            }
        }
    }
    let done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<(ChunkId, Option<String>)> = records
        .par_iter()
        .map(|(name, e)| {
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n % 1024 == 0 {
                progress(n);
            }
            let path = repo.pack_path(name);
            let check = || -> Result<(), String> {
                // Never through a symlink (a pack replaced by one is damage, whatever it points to).
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let mut head = [0u8; pack::RECORD_HEADER as usize];
                f.read_exact_at(&mut head, e.offset - pack::RECORD_HEADER).map_err(|e| e.to_string())?;
                if head[4..] != e.id.0 || u32::from_le_bytes(head[..4].try_into().expect("4")) != e.len {
                    return Err(format!(
                        "{} offset {}: record header does not match the index",
                        path.display(),
                        e.offset
                    ));
                }
                let loc = pack::Loc { pack: 0, offset: e.offset, len: e.len };
                let obj = pack::read_object(&f, &loc)
                    .map_err(|err| format!("{} offset {}: {err}", path.display(), e.offset))?;
                chunk::decode_object(&e.id, &obj, None)
                    .map(|_| ())
                    .map_err(|err| format!("{} offset {}: {err}", path.display(), e.offset))
            };
            (e.id, check().err())
        })
        .collect();
    let mut present: HashSet<ChunkId> = HashSet::with_capacity(results.len());
    for (id, err) in results {
        report.chunks += 1;
        if !chunk_users.contains_key(&id) {
            report.unreferenced_chunks += 1;
        }
        match err {
            None => {
                present.insert(id);
            }
            Some(error) => {
                let breaks = blame(chunk_users.get(&id));
                report.problems.push(Problem { kind: "chunk", id: id.to_hex(), error, breaks });
            }
        }
    }
    // A chunk with a bad copy and a good one is not missing; one with only bad copies was reported above.
    let reported: HashSet<String> =
        report.problems.iter().filter(|p| p.kind == "chunk").map(|p| p.id.clone()).collect();
    let mut missing: Vec<_> =
        chunk_users.iter().filter(|(id, _)| !present.contains(id) && !reported.contains(&id.to_hex())).collect();
    missing.sort_by_key(|(id, _)| **id);
    for (id, users) in missing {
        report.problems.push(Problem {
            kind: "chunk",
            id: id.to_hex(),
            error: "missing: in no pack of the repository".to_string(),
            breaks: blame(Some(users)),
        });
    }
    Ok(report)
}
