//! Forging repository content through the store's own transaction, as a compromised publisher could: entries,
//! parts and releases that no honest publish would write. Used by the attack and node tests.

use qpack::fsx::LockMode;
use qpack::id::ChunkId;
use qpack::manifest::{ChunkRef, Entry, EntryKind, Mtime, PartKind, PartManifest, PartRef, Release, SignedRelease};
use qpack::store::{Repository, Transaction};

pub fn entry(path: &[u8], mode: u32, kind: EntryKind) -> Entry {
    Entry { path: path.to_vec(), mode, mtime: Mtime { secs: 1_600_000_000, nanos: 0 }, kind }
}

pub fn dir(path: &[u8]) -> Entry {
    entry(path, 0o755, EntryKind::Dir)
}

pub fn link(path: &[u8], target: &[u8]) -> Entry {
    entry(path, 0o777, EntryKind::Symlink { target: target.to_vec() })
}

pub fn hard(path: &[u8], target: &[u8]) -> Entry {
    entry(path, 0o644, EntryKind::Hardlink { target: target.to_vec() })
}

/// Stores `data` as a chunk and returns a file entry made of it.
pub fn file(txn: &Transaction, path: &[u8], data: &[u8]) -> Entry {
    let id = ChunkId::of(data);
    txn.put_chunk(id, data, 3).unwrap();
    let chunks = vec![ChunkRef { id, len: data.len() as u32 }];
    entry(path, 0o644, EntryKind::File { size: data.len() as u64, flags: 0, chunks })
}

/// Stores a manifest as it is (no validation) and returns a part reference to it.
pub fn part(txn: &Transaction, mount: &[u8], kind: PartKind, entries: Vec<Entry>) -> PartRef {
    let (manifest, _) = txn.put_manifest(&PartManifest { entries }).unwrap();
    PartRef { mount: mount.to_vec(), kind, manifest, n_files: 1, n_bytes: 0 }
}

pub fn product(name: &str) -> PartKind {
    PartKind::Product { product: name.into(), version: "1.0".into() }
}

/// Stores a release (unsigned) of the parts `build` makes, through the store's own transaction, and points ref
/// `name` at it: what a compromised publisher could write.
pub fn forge(repo: &Repository, name: &str, build: impl FnOnce(&Transaction) -> Vec<PartRef>) {
    let lock = repo.lock(LockMode::Exclusive).unwrap();
    let txn = repo.begin(&lock).unwrap();
    let parts = build(&txn);
    let r = Release { name: name.into(), created: 1_700_000_000, parent: None, prefix: Vec::new(), parts };
    let id = txn.put_release(&SignedRelease { body: r.encode(), signature: None }).unwrap();
    txn.commit(name, id).unwrap();
}
