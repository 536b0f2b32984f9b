//! kill -9 of a publish at random points: the repository stays consistent, earlier releases intact, the killed
//! release absent or complete, and the next publish cleans up and succeeds (RELIABILITY cases 9, 26).

use crate::args;
use crate::util::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Rewrites the qserv product with about 4 MiB of new content (3 MiB compressible, 1 MiB not).
fn rebuild(tree: &Path, seed: u64) {
    let lib = tree.join("Linux64/qserv/3.0/lib");
    write(&lib.join("libbig.txt"), &text_bytes(3 << 20, seed), 0o644);
    write(&lib.join("libbig.so"), &random_bytes(1 << 20, seed), 0o755);
}

fn tmp_entries(repo: &Path) -> Vec<String> {
    fs::read_dir(repo.join("tmp")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn killed_publish_leaves_a_consistent_repository() {
    let seed: u64 = std::env::var("QPACK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_2026);
    let mut rng = Rng::new(seed);
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    rebuild(&tree, 0);
    publish(&tree, &repo, "r0", &[]);
    // Checkouts made right after each complete publish: what every later checkout of it must equal.
    let mut golden: Vec<(String, PathBuf)> = Vec::new();
    let g0 = t.join("golden-r0");
    checkout(&repo, "r0", &g0);
    assert_same_tree(&tree, &g0, Cmp::EXACT);
    golden.push(("r0".into(), g0));

    let mut outcomes = Vec::new();
    for i in 1..=8u64 {
        rebuild(&tree, i);
        let name = format!("r{i}");
        let delay = rng.range(5, 400);
        // A high zstd level makes the publish last long enough for the kill to land in any phase.
        let mut c = cmd();
        c.args(args!["publish", &tree, "--repo", &repo, "--release", &name, "--level", "9"]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();

        let v = verify(&repo);
        assert_eq!(v.code, 0, "iteration {i} (seed {seed}, kill after {delay} ms): verify failed:\n{}", v.dump());

        // Earlier releases: the first and the latest still check out exactly.
        for (gname, gdir) in [golden.first().unwrap(), golden.last().unwrap()] {
            let out = t.join(format!("co-{i}-{gname}"));
            checkout(&repo, gname, &out);
            assert_same_tree(gdir, &out, Cmp::EXACT);
            remove_tree(&out);
        }

        // The killed release is absent or complete.
        let existed = repo.join("refs/releases").join(&name).exists();
        if existed {
            let out = t.join(format!("co-{i}-killed"));
            checkout(&repo, &name, &out);
            assert_same_tree(&tree, &out, Cmp::EXACT);
            remove_tree(&out);
        } else {
            let rels = qpack(args!["releases", "--repo", &repo, "--json"]).ok().json();
            assert!(!rels.as_array().unwrap().iter().any(|r| r["name"] == name.as_str()));
        }
        outcomes.push(format!(
            "{delay}ms:{}",
            if existed {
                "committed"
            } else if finished {
                "done"
            } else {
                "killed"
            }
        ));

        // Publishing again completes, and cleans up what the killed one left.
        let r = publish(&tree, &repo, &name, &[]);
        assert_eq!(r["created"], !existed, "{r:#}");
        assert_eq!(tmp_entries(&repo), Vec::<String>::new(), "tmp/ not cleaned after iteration {i}");
        let g = t.join(format!("golden-{name}"));
        checkout(&repo, &name, &g);
        assert_same_tree(&tree, &g, Cmp::EXACT);
        golden.push((name, g));
    }
    eprintln!("crash loop (seed {seed}): {}", outcomes.join(" "));
    verify(&repo).ok();
    // Every release is still there and intact.
    for (gname, gdir) in &golden {
        let out = t.join(format!("final-{gname}"));
        checkout(&repo, gname, &out);
        assert_same_tree(gdir, &out, Cmp::EXACT);
    }
}

#[test]
fn stale_transaction_directories_are_removed_by_the_next_publish() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    write(&tree.join("a.txt"), b"a\n", 0o644);
    publish(&tree, &repo, "r1", &[]);
    // What a killed publish leaves: a transaction directory with staged objects, some half written.
    let stale = repo.join("tmp/txn-999999-123456789");
    write(&stale.join(format!("c-{}", "ab".repeat(32))), b"QPKC\x01half", 0o644);
    write(&stale.join(format!("m-{}", "cd".repeat(32))), b"QPKM", 0o644);
    write(&repo.join("tmp/stray-file"), b"x", 0o644);
    // Temp files of atomic writes killed before their rename, and a pack whose index never got renamed.
    let stale_ref = repo.join("refs/releases/.r9.tmp.4242");
    let stale_cache = repo.join("cache/.stat-0123.tmp.4242");
    let orphan_pack = repo.join("objects/packs/00000000000000000000000000000000.pack");
    write(&stale_ref, b"QPKF", 0o644);
    write(&stale_cache, b"QPKS", 0o644);
    write(&orphan_pack, b"QPKP\x01", 0o644);
    // Not objects: verify ignores them, and nothing is visible.
    verify(&repo).ok();
    qpack(args!["releases", "--repo", &repo, "--json"]).ok().says(&["r1"]);
    write(&tree.join("b.txt"), b"b\n", 0o644);
    publish(&tree, &repo, "r2", &[]);
    assert_eq!(tmp_entries(&repo), Vec::<String>::new());
    for p in [&stale_ref, &stale_cache, &orphan_pack] {
        assert!(!p.exists(), "{} survived the next publish", p.display());
    }
    verify(&repo).ok();
}
