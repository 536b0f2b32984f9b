//! Re-publishing: the stat cache, part reuse, immutable release names (RELIABILITY cases 6, 10, 14).

use crate::args;
use crate::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The stat cache does not keep files whose ctime is too close to the scan (racy timestamps): wait until a tree
/// finished at `made` qualifies.
pub fn wait_until_cacheable(made: Instant) {
    let margin = Duration::from_nanos(qpack::statcache::RACY_MARGIN_NS as u64);
    if let Some(rest) = (margin * 2 + Duration::from_millis(50)).checked_sub(made.elapsed()) {
        std::thread::sleep(rest);
    }
}

/// (manifest id by mount) of a release, from `show --json`.
fn part_manifests(repo: &std::path::Path, name: &str) -> std::collections::BTreeMap<String, String> {
    let v = qpack(args!["show", name, "--repo", repo, "--json"]).ok().json();
    v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["mount"].as_str().unwrap().to_owned(), p["manifest"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn republish_reuses_what_did_not_change() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    wait_until_cacheable(Instant::now());

    let r1 = publish(&tree, &repo, "r1", &[]);
    let (files, hardlinks) = (num(&r1, "files"), num(&r1, "hardlinks"));
    assert_eq!(num(&r1, "files_read"), files - hardlinks, "{r1:#}");
    assert_eq!(num(&r1, "parts_new"), 4, "{r1:#}");
    assert!(num(&r1, "chunks_new") > 0);

    // Unchanged: nothing read, nothing new, every part reused.
    let r2 = publish(&tree, &repo, "r2", &[]);
    assert_eq!(r2["created"], true);
    assert_eq!(num(&r2, "stat_cache_hits"), files - hardlinks, "{r2:#}");
    assert_eq!(num(&r2, "files_read"), 0, "{r2:#}");
    assert_eq!(num(&r2, "chunks_new"), 0, "{r2:#}");
    assert_eq!(num(&r2, "parts_new"), 0, "{r2:#}");
    assert_eq!(num(&r2, "parts_reused"), 4, "{r2:#}");
    assert_eq!(part_manifests(&repo, "r1"), part_manifests(&repo, "r2"));

    // Same size, mtime put back: the ctime still gives the rewrite away.
    let czar = tree.join("Linux64/qserv/3.0/bin/qserv-czar");
    let md = fs::metadata(&czar).unwrap();
    write(&czar, &random_bytes(md.len() as usize, 1234), 0o755);
    set_mtime(&czar, md.mtime(), md.mtime_nsec());
    let r3 = publish(&tree, &repo, "r3", &[]);
    assert_eq!(num(&r3, "files_read"), 1, "{r3:#}");
    assert_eq!(num(&r3, "parts_new"), 1, "{r3:#}");
    let out = t.join("out3");
    checkout(&repo, "r3", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);

    // One file of one product changes: only that part is new.
    let header = tree.join("Linux64/foo/1.0/include/foo.h");
    let mut h = fs::read(&header).unwrap();
    h.extend_from_slice(b"\n#define FOO_VERSION 2\n");
    fs::write(&header, &h).unwrap();
    let r4 = publish(&tree, &repo, "r4", &[]);
    // Read: foo.h, and qserv-czar again unless the publish of r3 came over a second after its rewrite (files
    // changed just before a scan are not cached: their timestamps could still hide a change).
    assert!((1..=2).contains(&num(&r4, "files_read")), "{r4:#}");
    assert_eq!(num(&r4, "stat_cache_hits") + num(&r4, "files_read"), files - hardlinks, "{r4:#}");
    assert_eq!(num(&r4, "parts_new"), 1, "{r4:#}");
    assert_eq!(num(&r4, "parts_reused"), 3, "{r4:#}");
    assert!((1..=2).contains(&num(&r4, "chunks_new")), "{r4:#}");
    let (m3, m4) = (part_manifests(&repo, "r3"), part_manifests(&repo, "r4"));
    let changed: Vec<&String> = m3.keys().filter(|k| m3[*k] != m4[*k]).collect();
    assert_eq!(changed, vec!["Linux64/foo/1.0"]);

    // The same content under the same name again: a no-op that succeeds and writes nothing.
    let before = repo_listing(&repo);
    let again = publish(&tree, &repo, "r4", &[]);
    assert_eq!(again["created"], false, "{again:#}");
    assert_eq!(again["id"], r4["id"]);
    assert_listing_unchanged(&before, &repo);

    // Different content under an existing name: refused, nothing written.
    h.extend_from_slice(b"/* changed again */\n");
    fs::write(&header, &h).unwrap();
    qpack(args!["publish", &tree, "--repo", &repo, "--release", "r4"]).fails().says(&["r4", "already exists"]);
    assert_listing_unchanged(&before, &repo);
    let show = qpack(args!["show", "r4", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(show["id"], r4["id"]);

    // A corrupt stat cache costs time, not correctness.
    let caches: Vec<_> = fs::read_dir(repo.join("cache")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(!caches.is_empty(), "no stat cache written");
    for c in &caches {
        fs::write(c, b"QPKS\x01garbage").unwrap();
    }
    let r5 = publish(&tree, &repo, "r5", &[]);
    assert_eq!(num(&r5, "stat_cache_hits"), 0, "{r5:#}");
    assert_eq!(num(&r5, "files_read"), files - hardlinks, "{r5:#}");
    let out = t.join("out5");
    checkout(&repo, "r5", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);
    verify(&repo).ok();
}

#[test]
fn no_stat_cache_reads_everything() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    let r1 = publish(&tree, &repo, "r1", &[]);
    let r2 = publish(&tree, &repo, "r2", &["--no-stat-cache"]);
    assert_eq!(num(&r2, "stat_cache_hits"), 0);
    assert_eq!(num(&r2, "files_read"), num(&r1, "files") - num(&r1, "hardlinks"));
    assert_eq!(num(&r2, "chunks_new"), 0);
}
