//! Store corruption: `verify` names every damaged object and the releases it breaks; checkout and export never
//! hand out wrong bytes (RELIABILITY cases 11-13, 15, 41).

use crate::args;
use crate::util::*;
use qpack::id::ChunkId;
use qpack::materialize::{make_dirs, Beneath, Plan, Verified};
use std::fs;
use std::path::{Path, PathBuf};

/// A repository with r1 (the sample tree) and r2 (the same with qserv's library rebuilt), and the two trees
/// (r1's as a checkout, made before any damage).
struct Fixture {
    t: TestDir,
    repo: PathBuf,
    tree1: PathBuf,
    tree2: PathBuf,
}

fn fixture() -> Fixture {
    let t = TestDir::new();
    let (repo, tree1, tree2) = (t.join("repo"), t.join("tree1"), t.join("tree2"));
    sample_tree(&tree2);
    publish(&tree2, &repo, "r1", &[]);
    checkout(&repo, "r1", &tree1);
    // Rewritten in place: the other parts (directory mtimes included) stay the same.
    write(&tree2.join("Linux64/qserv/3.0/lib/libqserv.so"), &random_bytes(500 << 10, 4242), 0o755);
    publish(&tree2, &repo, "r2", &[]);
    Fixture { t, repo, tree1, tree2 }
}

impl Fixture {
    /// The first chunk of a file of r1.
    fn chunk(&self, path: &str) -> ChunkId {
        chunks_of_file(&self.repo, "r1", path)[0].id
    }
    fn object(&self, id: &ChunkId) -> Vec<u8> {
        read_chunk_object(&self.repo, id)
    }
    fn set_object(&self, id: &ChunkId, bytes: &[u8]) {
        write_chunk_object(&self.repo, id, bytes)
    }
}

/// `verify --json` must exit 3 and report exactly one problem, of this kind and id, breaking these releases.
#[track_caller]
fn expect_one_problem(repo: &Path, kind: &str, id: &str, breaks: &[&str]) -> serde_json::Value {
    let out = qpack(args!["verify", "--repo", repo, "--json"]).code(3);
    let v = out.json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v:#}");
    assert_eq!(problems[0]["kind"], kind, "{v:#}");
    assert_eq!(problems[0]["id"], id, "{v:#}");
    assert_eq!(problems[0]["breaks"], serde_json::json!(breaks), "{v:#}");
    // The human form names the object and the releases too.
    let text = verify(repo).code(3);
    text.says(&[&format!("DAMAGED {kind} {id}"), &format!("breaks: {}", breaks.join(", "))]);
    problems[0].clone()
}

/// A checkout of `release` must fail naming `what`, and every file it left must be a prefix of the source's.
#[track_caller]
fn checkout_fails_without_wrong_bytes(f: &Fixture, release: &str, src: &Path, what: &str) {
    let dest = f.t.join(format!("co-{release}-{}", rand_suffix()));
    qpack(args!["checkout", release, &dest, "--repo", &f.repo]).fails().says(&[what]);
    if dest.exists() {
        for (p, n) in snapshot(&dest) {
            if let Kind::File(..) = n.kind {
                let got = fs::read(dest.join(crate::util::p(&p))).unwrap();
                let want = fs::read(src.join(crate::util::p(&p))).unwrap();
                assert!(want.starts_with(&got), "checkout wrote wrong bytes into {}", String::from_utf8_lossy(&p));
            }
        }
    }
    let tarball = f.t.join(format!("ex-{release}.tar"));
    qpack(args!["export", release, "--repo", &f.repo, "-o", &tarball]).fails().says(&[what]);
    assert!(!tarball.exists(), "a failed export left a tarball");
    let leftovers: Vec<_> = fs::read_dir(f.t.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "a failed export left {leftovers:?}");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn clean_repository_verifies() {
    let f = fixture();
    let v = qpack(args!["verify", "--repo", &f.repo, "--json"]).ok().json();
    assert_eq!(num(&v, "releases"), 2);
    assert_eq!(num(&v, "manifests"), 5, "4 parts each, 3 shared: {v:#}");
    assert_eq!(num(&v, "chunks"), stored_chunks(&f.repo));
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    verify(&f.repo).ok().says(&["every object is intact"]);
}

#[test]
fn flipped_byte_in_a_chunk_is_found_and_never_checked_out() {
    let f = fixture();
    // A chunk both releases use (an incompressible library: stored raw).
    let shared = f.chunk("Linux64/foo/1.0/lib/libfoo.so.1");
    let mut obj = f.object(&shared);
    let n = obj.len();
    obj[n - 100] ^= 0x01;
    f.set_object(&shared, &obj);
    expect_one_problem(&f.repo, "chunk", &shared.to_hex(), &["r1", "r2"]);
    checkout_fails_without_wrong_bytes(&f, "r1", &f.tree1, &shared.to_hex());
    checkout_fails_without_wrong_bytes(&f, "r2", &f.tree2, &shared.to_hex());
}

#[test]
fn damage_is_blamed_on_the_releases_that_use_it() {
    let f = fixture();
    let old = f.chunk("Linux64/qserv/3.0/lib/libqserv.so");
    assert!(!chunk_set(&f.repo, "r2").contains(&old));
    let mut obj = f.object(&old);
    let n = obj.len();
    obj[n / 2] ^= 0x40;
    f.set_object(&old, &obj);
    expect_one_problem(&f.repo, "chunk", &old.to_hex(), &["r1"]);
    checkout_fails_without_wrong_bytes(&f, "r1", &f.tree1, &old.to_hex());
    // r2 does not use it and is intact.
    let out = f.t.join("r2");
    checkout(&f.repo, "r2", &out);
    assert_same_tree(&f.tree2, &out, Cmp::EXACT);
}

#[test]
fn compressed_chunk_damage_is_found() {
    let f = fixture();
    let id = f.chunk("Linux64/bar/2.1/lib/libbar.so.2");
    let mut obj = f.object(&id);
    assert_eq!(obj[5], 1, "a text chunk is stored zstd-compressed");
    let n = obj.len();
    obj[n - 3] ^= 0xff;
    f.set_object(&id, &obj);
    expect_one_problem(&f.repo, "chunk", &id.to_hex(), &["r1", "r2"]);
    checkout_fails_without_wrong_bytes(&f, "r2", &f.tree2, &id.to_hex());
}

#[test]
fn zeroed_or_cut_short_chunk_is_found() {
    let f = fixture();
    let id = f.chunk("Linux64/foo/1.0/bin/foo");
    let obj = f.object(&id);
    // Zeroed in place.
    f.set_object(&id, &vec![0u8; obj.len()]);
    expect_one_problem(&f.repo, "chunk", &id.to_hex(), &["r1", "r2"]);
    checkout_fails_without_wrong_bytes(&f, "r1", &f.tree1, &id.to_hex());
    // The header intact, the payload cut short: what a truncated object looks like to its reader.
    let mut short = obj.clone();
    let declared = u32::from_le_bytes(obj[6..10].try_into().unwrap());
    short[6..10].copy_from_slice(&(declared + 1).to_le_bytes());
    f.set_object(&id, &short);
    expect_one_problem(&f.repo, "chunk", &id.to_hex(), &["r1", "r2"]);
    checkout_fails_without_wrong_bytes(&f, "r1", &f.tree1, &id.to_hex());
}

#[test]
fn store_file_truncated_is_found() {
    let f = fixture();
    // Cut the file holding r2's new chunks in the middle of its last object.
    let only_r2: Vec<ChunkId> = chunk_set(&f.repo, "r2").difference(&chunk_set(&f.repo, "r1")).copied().collect();
    let locs: Vec<(ChunkId, (PathBuf, u64, u32))> = only_r2.iter().map(|id| (*id, chunk_object(&f.repo, id))).collect();
    let (last, (path, off, len)) = locs.iter().max_by_key(|(_, (_, off, _))| *off).unwrap().clone();
    assert!(locs.iter().all(|(_, (p, ..))| *p == path), "r2's new chunks are in one file");
    let file_len = fs::metadata(&path).unwrap().len();
    assert_eq!(file_len, off + u64::from(len), "the last object ends the file");
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(off + u64::from(len) / 2).unwrap();
    let out = qpack(args!["verify", "--repo", &f.repo, "--json"]).code(3);
    let v = out.json();
    let problems = v["problems"].as_array().unwrap();
    let p = problems.iter().find(|p| p["id"] == last.to_hex().as_str()).unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(p["breaks"], serde_json::json!(["r2"]), "{v:#}");
    assert!(problems.iter().all(|p| p["breaks"] != serde_json::json!(["r1"])), "r1 does not use that file: {v:#}");
    checkout_fails_without_wrong_bytes(&f, "r2", &f.tree2, &last.to_hex());
    let out = f.t.join("r1");
    checkout(&f.repo, "r1", &out);
    assert_same_tree(&f.tree1, &out, Cmp::EXACT);
}

#[test]
fn missing_chunks_are_found() {
    let f = fixture();
    // Lose the file holding r2's new chunks: they are missing, r2 is broken, r1 is not.
    let only_r2: Vec<ChunkId> = chunk_set(&f.repo, "r2").difference(&chunk_set(&f.repo, "r1")).copied().collect();
    let (path, ..) = chunk_object(&f.repo, &only_r2[0]);
    let check = |extra_allowed: bool| {
        let v = qpack(args!["verify", "--repo", &f.repo, "--json"]).code(3).json();
        let problems = v["problems"].as_array().unwrap();
        for id in &only_r2 {
            let p = problems.iter().find(|p| p["id"] == id.to_hex().as_str()).unwrap_or_else(|| panic!("{id}: {v:#}"));
            assert!(p["error"].as_str().unwrap().contains("missing"), "{p:#}");
            assert_eq!(p["breaks"], serde_json::json!(["r2"]));
        }
        let chunk_problems = problems.iter().filter(|p| p["kind"] == "chunk").count();
        assert_eq!(chunk_problems, only_r2.len(), "{v:#}");
        assert!(extra_allowed || problems.len() == only_r2.len(), "{v:#}");
        checkout_fails_without_wrong_bytes(&f, "r2", &f.tree2, "missing");
        let out = f.t.join(format!("r1-{}", rand_suffix()));
        checkout(&f.repo, "r1", &out);
        assert_same_tree(&f.tree1, &out, Cmp::EXACT);
    };
    // The data file alone (whatever indexes it is left behind, and may be reported too).
    fs::remove_file(&path).unwrap();
    check(true);
    // And anything else of it.
    let stem = path.with_extension("");
    for e in fs::read_dir(path.parent().unwrap()).unwrap().flatten() {
        if e.path().with_extension("") == stem {
            fs::remove_file(e.path()).unwrap();
        }
    }
    check(false);
}

#[test]
fn store_file_replaced_by_a_symlink_is_not_followed() {
    let f = fixture();
    let id = f.chunk("Linux64/foo/1.0/lib/libfoo.so.1");
    let (path, ..) = chunk_object(&f.repo, &id);
    // The symlink points at an intact copy: following it would hide the damage.
    let outside = f.t.join("outside-copy");
    fs::rename(&path, &outside).unwrap();
    symlink(&outside, &path);
    let v = qpack(args!["verify", "--repo", &f.repo, "--json"]).code(3).json();
    let p = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.to_hex().as_str())
        .unwrap_or_else(|| panic!("chunk {id} not reported: {v:#}"))
        .clone();
    assert_eq!(p["breaks"], serde_json::json!(["r1", "r2"]), "{v:#}");
    checkout_fails_without_wrong_bytes(&f, "r1", &f.tree1, "symbolic link");
}

#[test]
fn decompression_bomb_is_refused() {
    let f = fixture();
    let id = f.chunk("Linux64/bar/2.1/lib/libbar.so.2");
    let obj = f.object(&id);
    // Same header (declared length), but a frame that inflates to 64 MiB of zeros, padded to the object's
    // length with a zstd skippable frame.
    let frame = zstd::encode_all(std::io::Read::take(std::io::repeat(0), 64 << 20), 1).unwrap();
    let mut bomb = obj[..10].to_vec();
    bomb.extend_from_slice(&frame);
    let pad = obj.len().checked_sub(bomb.len() + 8).expect("the bomb fits in the object");
    bomb.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
    bomb.extend_from_slice(&(pad as u32).to_le_bytes());
    bomb.resize(obj.len(), 0);
    f.set_object(&id, &bomb);
    expect_one_problem(&f.repo, "chunk", &id.to_hex(), &["r1", "r2"]);
    checkout_fails_without_wrong_bytes(&f, "r1", &f.tree1, &id.to_hex());
}

#[test]
fn corrupt_manifest_is_found() {
    let f = fixture();
    let show = qpack(args!["show", "r1", "--repo", &f.repo, "--json"]).ok().json();
    let foo = show["parts"].as_array().unwrap().iter().find(|p| p["product"] == "foo").unwrap().clone();
    let mid = foo["manifest"].as_str().unwrap().to_owned();
    let path = f.repo.join("objects/manifests").join(&mid[..2]).join(&mid);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    expect_one_problem(&f.repo, "manifest", &mid, &["r1", "r2"]);
    let dest = f.t.join("co");
    qpack(args!["checkout", "r1", &dest, "--repo", &f.repo]).fails().says(&[&mid]);
    assert!(!dest.exists(), "checkout wrote before finding the manifest corrupt");
    // gc refuses to sweep on behalf of a damaged release.
    let before = repo_listing(&f.repo);
    qpack(args!["gc", "--repo", &f.repo, "--keep", "2"]).fails().says(&["damaged"]);
    assert_listing_unchanged(&before, &f.repo);
    // A missing manifest too.
    fs::remove_file(&path).unwrap();
    let p = expect_one_problem(&f.repo, "manifest", &mid, &["r1", "r2"]);
    assert!(p["error"].as_str().unwrap().contains("missing"), "{p:#}");
}

#[test]
fn damaged_or_missing_release_object_is_found() {
    let f = fixture();
    let show = qpack(args!["show", "r1", "--repo", &f.repo, "--json"]).ok().json();
    let id = show["id"].as_str().unwrap().to_owned();
    let path = f.repo.join("objects/releases").join(&id);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    expect_one_problem(&f.repo, "release", &id, &["r1"]);
    qpack(args!["show", "r1", "--repo", &f.repo]).fails();
    qpack(args!["checkout", "r1", f.t.join("co"), "--repo", &f.repo]).fails();
    assert!(!f.t.join("co").exists());
    fs::remove_file(&path).unwrap();
    let p = expect_one_problem(&f.repo, "release", &id, &["r1"]);
    assert!(p["error"].as_str().unwrap().contains("missing"), "{p:#}");
    // r2 is unaffected.
    let out = f.t.join("r2");
    checkout(&f.repo, "r2", &out);
    assert_same_tree(&f.tree2, &out, Cmp::EXACT);
}

#[test]
fn damaged_ref_is_reported_and_the_rest_still_checked() {
    let f = fixture();
    let r1 = f.repo.join("refs/releases/r1");
    fs::write(&r1, b"garbage").unwrap();
    let v = qpack(args!["verify", "--repo", &f.repo, "--json"]).code(3).json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v:#}");
    assert_eq!((&problems[0]["kind"], &problems[0]["id"]), (&"ref".into(), &"r1".into()), "{v:#}");
    assert_eq!(num(&v, "releases"), 1, "r2 must still be checked: {v:#}");
    verify(&f.repo).code(3).says(&["DAMAGED ref r1"]);
    // gc will not guess which objects a release it cannot read needs.
    let before = repo_listing(&f.repo);
    qpack(args!["gc", "--repo", &f.repo, "--keep", "1"]).fails().says(&["refs/releases/r1"]);
    assert_listing_unchanged(&before, &f.repo);
    // A ref replaced by a symlink (to a valid ref) is not followed either.
    let r2 = f.repo.join("refs/releases/r2");
    let copy = f.t.join("r2-ref-copy");
    fs::copy(&r2, &copy).unwrap();
    fs::remove_file(&r1).unwrap();
    symlink(&copy, &r1);
    let v = qpack(args!["verify", "--repo", &f.repo, "--json"]).code(3).json();
    assert_eq!(v["problems"][0]["id"], "r1", "{v:#}");
    // r2 is intact.
    let out = f.t.join("r2");
    checkout(&f.repo, "r2", &out);
    assert_same_tree(&f.tree2, &out, Cmp::EXACT);
}

/// Fills file `path` of release `release` into a fresh directory `dest` as installing while fetching does once
/// its chunks are committed: each chunk from `held` if it is there, else read back from the repository.
fn place_one(
    repo: &Path,
    release: &str,
    path: &str,
    dest: &Path,
    held: &Verified,
) -> Result<(), qpack::materialize::MaterializeError> {
    let repo = open_repo(repo);
    let id = repo.read_ref(release).unwrap().unwrap();
    let (_, rel) = repo.read_release(&id).unwrap();
    let plan = Plan::load(&repo, &rel, false).unwrap();
    let k = plan.entries.iter().position(|(p, _)| p == path.as_bytes()).expect("in the plan");
    let qpack::manifest::EntryKind::File { chunks, .. } = &plan.entries[k].1.kind else { panic!("a file") };
    fs::create_dir(dest).unwrap();
    let beneath = Beneath::open(dest).unwrap();
    make_dirs(&plan, &beneath, false).unwrap();
    let mut filler = qpack::materialize::Filler::new(&plan, &beneath, &[k], false, false)?;
    for c in chunks {
        if let Some(n) = filler.wants(&c.id) {
            filler.put(&c.id, &held.take_or_read(&repo, &c.id, n)?)?;
        }
    }
    assert_eq!(filler.incomplete(), 0);
    Ok(())
}

#[test]
fn files_written_while_fetching_take_the_verified_contents_held_in_memory() {
    // Installing while fetching writes a file from the chunk contents the fetch has just verified, without
    // reading them back from the repository: shown here by damaging every stored copy first.
    let f = fixture();
    let path = "Linux64/foo/1.0/lib/libfoo.so.1";
    let refs = chunks_of_file(&f.repo, "r1", path);
    assert!(refs.len() > 1, "a file of several chunks");
    let held = Verified::new(16 << 20);
    held.want(refs.iter().map(|c| c.id));
    let repo = open_repo(&f.repo);
    for c in &refs {
        held.offer(&c.id, repo.read_chunk(&c.id, Some(c.len)).unwrap());
    }
    for c in &refs {
        let mut obj = f.object(&c.id);
        let n = obj.len();
        obj[n - 1] ^= 0x01;
        f.set_object(&c.id, &obj);
    }
    let a = f.t.join("a");
    place_one(&f.repo, "r1", path, &a, &held).unwrap();
    assert_eq!(fs::read(a.join(path)).unwrap(), fs::read(f.tree1.join(path)).unwrap());
    assert_eq!(held.taken(), refs.len() as u64);
    assert_eq!(held.bytes(), 0, "each held chunk is taken once");
    // Nothing held any more: the damaged stored copy is read, and refused.
    let e = place_one(&f.repo, "r1", path, &f.t.join("b"), &held).unwrap_err();
    assert!(e.to_string().contains(&refs[0].id.to_hex()), "{e}");
}

#[test]
fn verified_contents_held_are_only_those_wanted_and_bounded() {
    let id = |n: u8| ChunkId::of(&[n]);
    let held = Verified::new(100);
    held.want([id(1), id(2), id(3)]);
    held.offer(&id(9), vec![9; 10]);
    assert_eq!(held.bytes(), 0, "not wanted: not kept");
    held.offer(&id(1), vec![1; 40]);
    held.offer(&id(2), vec![2; 40]);
    // Offered twice (an end-game copy): kept once.
    held.offer(&id(2), vec![2; 40]);
    assert_eq!(held.bytes(), 80);
    // No room: the oldest goes.
    held.offer(&id(3), vec![3; 40]);
    assert_eq!(held.bytes(), 80);
    assert_eq!(held.take(&id(1)), None);
    assert_eq!(held.take(&id(2)), Some(vec![2; 40]));
    assert_eq!(held.take(&id(3)), Some(vec![3; 40]));
    assert_eq!((held.bytes(), held.taken()), (0, 2));
    // Larger than the whole budget: not kept.
    held.want([id(4)]);
    held.offer(&id(4), vec![4; 101]);
    assert_eq!(held.take(&id(4)), None);
}

/// The product files of release `release` and their plan, with `dest` made and holding the plan's directories.
fn fill_setup(repo: &qpack::store::Repository, release: &str, dest: &Path) -> (Plan, Beneath, Vec<usize>) {
    let id = repo.read_ref(release).unwrap().unwrap();
    let (_, rel) = repo.read_release(&id).unwrap();
    let plan = Plan::load(repo, &rel, false).unwrap();
    let files: Vec<usize> = (0..plan.entries.len())
        .filter(|&k| {
            let (p, e) = &plan.entries[k];
            plan.in_product(p) && matches!(e.kind, qpack::manifest::EntryKind::File { .. })
        })
        .collect();
    fs::create_dir_all(dest).unwrap();
    let beneath = Beneath::open(dest).unwrap();
    make_dirs(&plan, &beneath, true).unwrap();
    (plan, beneath, files)
}

/// Whether `dest` has the file at `path` complete: the bytes, mode and mtime of the same file in `src`.
fn same_file(src: &Path, dest: &Path, path: &[u8]) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (src.join(crate::util::p(path)), dest.join(crate::util::p(path)));
    let (Ok(ma), Ok(mb)) = (fs::symlink_metadata(&a), fs::symlink_metadata(&b)) else { return false };
    ma.mode() == mb.mode()
        && (ma.mtime(), ma.mtime_nsec()) == (mb.mtime(), mb.mtime_nsec())
        && fs::read(&a).unwrap() == fs::read(&b).unwrap()
}

#[test]
fn files_filled_chunk_by_chunk_in_any_order_come_out_whole_and_only_complete_ones_are_kept() {
    // Installing while fetching writes each chunk into its files as it comes, in the swarm's order; a file gets
    // its mode and mtime (what marks it complete) only with its last chunk, and a resumed attempt keeps exactly
    // the complete ones.
    let f = fixture();
    let repo = open_repo(&f.repo);
    let dest = f.t.join("fill");
    let (plan, beneath, files) = fill_setup(&repo, "r1", &dest);
    let big = "Linux64/foo/1.0/lib/libfoo.so.1";
    let big_chunks = chunks_of_file(&f.repo, "r1", big);
    assert!(big_chunks.len() > 1, "a file of several chunks");
    let mut filler = qpack::materialize::Filler::new(&plan, &beneath, &files, false, false).unwrap();
    // The swarm's order is nobody's file order: the big file's chunks last to first, then the others, with its
    // first chunk the very last.
    let pos = |c: &ChunkId| big_chunks.iter().position(|b| b.id == *c);
    let mut wanted: Vec<(ChunkId, u32)> = filler.wanted().map(|(c, n)| (*c, n)).collect();
    wanted.sort_by_key(|(c, _)| match pos(c) {
        Some(0) => (2, 0, c.to_hex()),
        Some(i) => (0, usize::MAX - i, c.to_hex()),
        None => (1, 0, c.to_hex()),
    });
    assert_eq!(wanted.last().unwrap().0, big_chunks[0].id);
    // A chunk whose length is not the manifest's is refused, and nothing is lost.
    let (c0, n0) = wanted[0];
    let e = filler.put(&c0, &vec![0; n0 as usize + 1]).unwrap_err();
    assert!(e.to_string().contains("bytes where the manifest says"), "{e}");
    assert_eq!(filler.wants(&c0), Some(n0));
    let half = wanted.len() / 2;
    for (c, n) in &wanted[..half] {
        filler.put(c, &repo.read_chunk(c, Some(*n)).unwrap()).unwrap();
    }
    let done_before: Vec<&[u8]> =
        files.iter().map(|&k| plan.entries[k].0.as_slice()).filter(|p| same_file(&f.tree1, &dest, p)).collect();
    assert!(!done_before.is_empty() && filler.incomplete() > 0, "half the chunks complete some files, not all");
    assert!(dest.join(big).exists() && !same_file(&f.tree1, &dest, big.as_bytes()), "begun, not complete");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::symlink_metadata(dest.join(big)).unwrap().permissions().mode() & 0o7777, 0o600);
    // Killed here; the next attempt resumes: complete files are kept, the rest is redone.
    drop(filler);
    let mut filler = qpack::materialize::Filler::new(&plan, &beneath, &files, false, true).unwrap();
    assert!(!dest.join(big).exists(), "an incomplete file is removed");
    for p in &done_before {
        assert!(same_file(&f.tree1, &dest, p), "{} kept", String::from_utf8_lossy(p));
    }
    let rest: Vec<(ChunkId, u32)> = filler.wanted().map(|(c, n)| (*c, n)).collect();
    assert!(rest.len() < wanted.len(), "what the kept files alone had is not wanted again");
    for (c, n) in rest.iter().rev() {
        filler.put(c, &repo.read_chunk(c, Some(*n)).unwrap()).unwrap();
    }
    assert_eq!((filler.incomplete(), filler.wanted().count()), (0, 0));
    for &k in &files {
        let p = &plan.entries[k].0;
        assert!(same_file(&f.tree1, &dest, p), "{} filled exactly", String::from_utf8_lossy(p));
    }
}
