//! Repository behaviours not covered by the integration tests.

use super::*;

fn chunk(i: u32) -> (ChunkId, Vec<u8>) {
    let raw: Vec<u8> = (0..4000u32).map(|k| (k.wrapping_mul(31) ^ i) as u8).collect();
    (ChunkId::of(&raw), chunk::encode_object(&raw, 1))
}

/// A writer killed before its commit (its transaction neither committed nor cleaned up) left a pack in tmp/
/// holding good records, a record whose object does not match its id, and a record cut short: salvage keeps the
/// good ones only, commits them, and leaves tmp/ empty.
#[test]
fn salvage_keeps_the_verified_records_of_a_killed_writer() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open_or_init(dir.path(), ChunkerParams::default()).unwrap();
    let lock = repo.lock(LockMode::Exclusive).unwrap();
    let good: Vec<_> = (0..5).map(chunk).collect();
    let (bad_id, _) = chunk(100);
    let (_, other_obj) = chunk(101);
    let txn = repo.begin(&lock).unwrap();
    for (id, obj) in &good {
        txn.append(id, obj).unwrap();
    }
    txn.append(&bad_id, &other_obj).unwrap();
    txn.flush().unwrap();
    // The kill: nothing committed, nothing cleaned.
    std::mem::forget(txn);
    // And a last record cut short.
    let pack = std::fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .expect("the killed writer's pack");
    let (cut_id, cut_obj) = chunk(7);
    let mut f = std::fs::OpenOptions::new().append(true).open(&pack).unwrap();
    std::io::Write::write_all(&mut f, &(cut_obj.len() as u32).to_le_bytes()).unwrap();
    std::io::Write::write_all(&mut f, &cut_id.0).unwrap();
    std::io::Write::write_all(&mut f, &cut_obj[..cut_obj.len() / 2]).unwrap();
    drop(f);

    assert_eq!(repo.salvage(&lock).unwrap(), good.len() as u64);
    for (id, _) in &good {
        assert!(repo.has_chunk(id), "a good record was not kept");
        repo.read_chunk(id, None).unwrap();
    }
    assert!(!repo.has_chunk(&bad_id), "a record that does not match its id was kept");
    assert!(!repo.has_chunk(&cut_id), "a record cut short was kept");
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert!(!dir.path().join("salvage").exists());
    // Nothing left: a second salvage keeps nothing.
    assert_eq!(repo.salvage(&lock).unwrap(), 0);
}
