//! `show`, `diff`, `releases`, `gc`, `init` and the repository lock (RELIABILITY cases 9, 16).

use crate::args;
use crate::incremental::wait_until_cacheable;
use crate::util::*;
use std::fs;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

#[test]
fn each_product_directory_is_a_part_and_base_holds_ups_db() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    publish(&tree, &repo, "r1", &[]);
    let show = qpack(args!["show", "r1", "--repo", &repo, "--json"]).ok().json();
    let parts = show["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 1 + PRODUCTS.len(), "{show:#}");
    assert_eq!(parts[0]["kind"], "base");
    assert_eq!(parts[0]["mount"], ".");
    for pr in &PRODUCTS {
        let part = parts
            .iter()
            .find(|p| p["mount"] == pr.mount().as_str())
            .unwrap_or_else(|| panic!("no part for {}: {show:#}", pr.mount()));
        assert_eq!(part["kind"], "product");
        assert_eq!(part["product"], pr.name);
        assert_eq!(part["version"], pr.version);
    }

    let ms = manifests_of(&repo, "r1");
    let base = &ms.iter().find(|(m, _)| m.is_empty()).unwrap().1;
    let has = |m: &qpack::manifest::PartManifest, p: &str| m.find(p.as_bytes()).is_some();
    assert!(has(base, "ups_db/foo/1.0.version"));
    assert!(has(base, "README"));
    assert!(has(base, "site/startup.py"));
    assert!(has(base, "Linux64/foo"), "the mount's parent directories belong to the base");
    assert!(!base.entries.iter().any(|e| e.path.starts_with(b"Linux64/foo/1.0")), "base holds product files");
    let foo = &ms.iter().find(|(m, _)| m == b"Linux64/foo/1.0").unwrap().1;
    assert!(has(foo, "lib/libfoo.so.1"));
    assert!(!has(foo, "ups_db"));
    // The totals of `show` agree with the manifests.
    for p in parts {
        let mount = if p["mount"] == "." { String::new() } else { p["mount"].as_str().unwrap().to_owned() };
        let m = &ms.iter().find(|(mm, _)| *mm == mount.as_bytes()).unwrap().1;
        assert_eq!((num(p, "files"), num(p, "bytes")), m.totals(), "part {mount}");
    }

    let rels = qpack(args!["releases", "--repo", &repo, "--json"]).ok().json();
    let rels = rels.as_array().unwrap();
    assert_eq!(rels.len(), 1);
    assert_eq!(rels[0]["name"], "r1");
    assert_eq!(rels[0]["parts"], 4);
    assert_eq!(rels[0]["signed"], false);
}

#[test]
fn diff_names_the_changed_part_and_what_to_fetch() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    publish(&tree, &repo, "r1", &[]);
    // Rebuild a small part of one product.
    let lib = tree.join("Linux64/qserv/3.0/lib/libqserv.so");
    let mut data = fs::read(&lib).unwrap();
    data[..20_000].copy_from_slice(&random_bytes(20_000, 77));
    fs::write(&lib, &data).unwrap();
    publish(&tree, &repo, "r2", &[]);

    let d = qpack(args!["diff", "r1", "r2", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(d["added"].as_array().unwrap().len(), 0, "{d:#}");
    assert_eq!(d["removed"].as_array().unwrap().len(), 0, "{d:#}");
    let changed = d["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{d:#}");
    assert_eq!(changed[0][1]["mount"], "Linux64/qserv/3.0");
    assert_eq!(num(&d, "unchanged"), 3);
    let fetch = num(&d, "bytes_to_fetch");
    let rels = qpack(args!["releases", "--repo", &repo, "--json"]).ok().json();
    let total = num(&rels[0], "bytes");
    assert!(fetch > 0, "{d:#}");
    assert!(fetch * 8 < total, "fetch {fetch} of a {total}-byte release: {d:#}");
    assert!(num(&d, "chunks_to_fetch") >= 1);

    // The human form says the same.
    qpack(args!["diff", "r1", "r2", "--repo", &repo]).ok().says(&["3 parts unchanged", "~ Linux64/qserv/3.0"]);
    // Nothing to fetch the other way round for unchanged parts, and nothing from a release to itself.
    let same = qpack(args!["diff", "r2", "r2", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(num(&same, "bytes_to_fetch"), 0);
    assert_eq!(num(&same, "unchanged"), 4);
}

#[test]
fn gc_keeps_the_newest_and_removes_what_only_old_releases_used() {
    let t = TestDir::new();
    let (tree, repo, other) = (t.join("tree"), t.join("repo"), t.join("other"));
    // A second tree, published once, whose stat cache will outlive its chunks.
    sample_tree(&other);
    let x = other.join("Linux64/foo/1.0/lib/only-in-other.bin");
    write(&x, &random_bytes(300_000, 555), 0o644);
    let made = Instant::now();

    sample_tree(&tree);
    let unique = tree.join("Linux64/qserv/3.0/lib/build.bin");
    let mut names = Vec::new();
    for i in 1..=3u64 {
        // Large enough that the old copies are a good part of what is stored (so gc reclaims them).
        write(&unique, &random_bytes(1 << 20, 1000 + i), 0o644);
        let name = format!("r{i}");
        publish(&tree, &repo, &name, &[]);
        names.push(name);
    }
    let sets: Vec<_> = names.iter().map(|n| chunk_set(&repo, n)).collect();
    let gone: Vec<_> = sets[0].union(&sets[1]).filter(|c| !sets[2].contains(c)).copied().collect();
    assert!(!gone.is_empty());

    // A dry run removes nothing.
    let before = repo_listing(&repo);
    let dry = qpack(args!["gc", "--repo", &repo, "--keep", "1", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["removed"].as_array().unwrap().len(), 2, "{dry:#}");
    assert!(num(&dry, "chunks_removed") >= gone.len() as u64);
    assert_listing_unchanged(&before, &repo);

    let g = qpack(args!["gc", "--repo", &repo, "--keep", "1", "--json"]).ok().json();
    assert_eq!(g["kept"], serde_json::json!(["r3"]), "{g:#}");
    let mut removed: Vec<String> =
        g["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    removed.sort();
    assert_eq!(removed, ["r1", "r2"]);
    assert_eq!(num(&g, "chunks_removed"), gone.len() as u64, "{g:#}");
    for c in &gone {
        assert!(!has_chunk(&repo, c), "chunk {c} only r1/r2 used survived gc");
    }
    for c in &sets[2] {
        assert!(has_chunk(&repo, c), "chunk {c} of the kept release was removed");
    }
    let rels = qpack(args!["releases", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(rels.as_array().unwrap().len(), 1);
    assert_eq!(rels[0]["name"], "r3");
    qpack(args!["checkout", "r1", t.join("gone"), "--repo", &repo]).fails().says(&["no release"]);
    let v = qpack(args!["verify", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(num(&v, "unreferenced_chunks"), 0, "{v:#}");
    let out = t.join("out");
    checkout(&repo, "r3", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);

    // The other tree's stat cache names chunks that a gc removes; the next publish must not trust it.
    wait_until_cacheable(made);
    publish(&other, &repo, "o1", &[]);
    let x_chunks = chunks_of_file(&repo, "o1", "Linux64/foo/1.0/lib/only-in-other.bin");
    qpack(args!["gc", "--repo", &repo, "--keep-release", "r3"]).ok();
    assert!(x_chunks.iter().all(|c| !has_chunk(&repo, &c.id)));
    let o2 = publish(&other, &repo, "o2", &[]);
    assert!(num(&o2, "files_read") >= 1, "the file whose chunks gc removed must be read again: {o2:#}");
    assert!(num(&o2, "chunks_new") >= x_chunks.len() as u64, "{o2:#}");
    verify(&repo).ok();
    let out = t.join("out-other");
    checkout(&repo, "o2", &out);
    assert_same_tree(&other, &out, Cmp::EXACT);
    // And once re-checked, the cache is trusted again.
    let o3 = publish(&other, &repo, "o3", &[]);
    assert_eq!(num(&o3, "chunks_new"), 0, "{o3:#}");
}

#[test]
fn gc_needs_to_be_told_what_to_keep() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    publish(&tree, &repo, "r1", &[]);
    let before = repo_listing(&repo);
    qpack(args!["gc", "--repo", &repo]).fails().says(&["--keep"]);
    qpack(args!["gc", "--repo", &repo, "--keep-release", "nope"]).fails().says(&["nope"]);
    assert_listing_unchanged(&before, &repo);
}

#[test]
fn gc_waits_for_a_reader_holding_the_lock() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    write(&tree.join("a"), &random_bytes(50_000, 1), 0o644);
    publish(&tree, &repo, "r1", &[]);
    write(&tree.join("a"), &random_bytes(50_000, 2), 0o644);
    publish(&tree, &repo, "r2", &[]);

    // What a checkout holds while it reads chunks.
    let lock = fs::OpenOptions::new().read(true).write(true).open(repo.join("lock")).unwrap();
    rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockShared).unwrap();
    let mut c = cmd();
    c.args(args!["gc", "--repo", &repo, "--keep", "1"]).stdout(std::process::Stdio::null());
    c.stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    // gc says it waits, then blocks: read its stderr until it says so (however slow the machine).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let said = rx.recv_timeout(Duration::from_secs(60)).expect("gc neither waited for the lock nor said so");
    assert!(said.contains("waiting for the repository lock"), "{said}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(child.try_wait().unwrap().is_none(), "gc finished while a reader held the lock");
    assert!(repo.join("refs/releases/r1").exists(), "gc removed a release while a reader held the lock");
    drop(lock);
    assert!(child.wait().unwrap().success());
    assert!(!repo.join("refs/releases/r1").exists());
}

#[test]
fn init_refuses_an_existing_repository_and_others_refuse_a_non_repository() {
    let t = TestDir::new();
    let repo = t.join("repo");
    qpack(args!["init", "--repo", &repo]).ok();
    assert!(repo.join("qpack-repo").is_file());
    let before = repo_listing(&repo);
    qpack(args!["init", "--repo", &repo]).fails().says(&["already"]);
    assert_listing_unchanged(&before, &repo);
    qpack(args!["releases", "--repo", &repo]).ok().says(&["no releases"]);
    let v = qpack(args!["verify", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(num(&v, "releases"), 0);

    let plain = t.join("plain");
    write(&plain.join("data.txt"), b"somebody's data\n", 0o644);
    for sub in [&["releases"][..], &["verify"], &["gc", "--keep", "1"]] {
        let mut a = args!["--repo", &plain];
        a.splice(0..0, sub.iter().map(std::ffi::OsString::from));
        qpack(a).fails().says(&["not a qpack repository"]);
    }
    qpack(args!["checkout", "x", t.join("d"), "--repo", &plain]).fails().says(&["not a qpack repository"]);
    assert_eq!(fs::read_dir(&plain).unwrap().count(), 1, "a read-only command wrote into a non-repository");
    qpack(args!["show", "nope", "--repo", &repo]).fails().says(&["no release"]);
}

#[test]
fn concurrent_publishes_into_a_new_repository_all_succeed() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let mut trees = Vec::new();
    for i in 0..3u64 {
        let tree = t.join(format!("tree{i}"));
        fs::create_dir_all(tree.join("ups_db")).unwrap();
        write(&tree.join("data.bin"), &random_bytes(200_000, i), 0o644);
        trees.push(tree);
    }
    // All started at once: one creates the repository, the others must wait for it, not call it foreign.
    let children: Vec<_> = trees
        .iter()
        .enumerate()
        .map(|(i, tree)| {
            let mut c = cmd();
            c.args(args!["publish", tree, "--repo", &repo, "--release", format!("r{i}")]);
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "publish r{i} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    verify(&repo).ok();
    for (i, tree) in trees.iter().enumerate() {
        let out = t.join(format!("out{i}"));
        checkout(&repo, &format!("r{i}"), &out);
        assert_same_tree(tree, &out, Cmp::EXACT);
    }
}
