//! Hostile manifests and releases (written straight into a repository, as a compromised publisher or a lying
//! peer would deliver them): checkout and export refuse before writing anything, and nothing outside the
//! destination is ever created (RELIABILITY cases 39, 40).

use crate::args;
use crate::forge::*;
use crate::util::*;
use qpack::id::ChunkId;
use qpack::manifest::{ChunkRef, Entry, EntryKind, PartKind};
use qpack::store::{Repository, Transaction};
use std::fs;
use std::path::{Path, PathBuf};

/// A fresh repository, a directory outside every destination, and the test dir.
fn setup() -> (TestDir, Repository, PathBuf) {
    let t = TestDir::new();
    let root = t.join("repo");
    qpack(args!["init", "--repo", &root]).ok();
    let outside = t.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(t.join("dest")).unwrap();
    (t, Repository::open(&root).unwrap(), outside)
}

/// checkout and export of `name` must fail, create neither the destination nor anything outside it.
#[track_caller]
fn refused(t: &TestDir, repo: &Repository, name: &str, outside: &Path, needles: &[&str]) {
    let before: Vec<_> = {
        let mut v: Vec<_> = fs::read_dir(t.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        v.sort();
        v
    };
    let dest = t.join("dest").join(name);
    qpack(args!["checkout", name, &dest, "--repo", repo.root()]).fails().says(needles);
    assert!(!dest.exists(), "checkout of {name} created its destination before refusing");
    let tarball = t.join(format!("{name}.tar"));
    qpack(args!["export", name, "--repo", repo.root(), "-o", &tarball]).fails().says(needles);
    assert!(!tarball.exists());
    let after: Vec<_> = {
        let mut v: Vec<_> = fs::read_dir(t.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        v.sort();
        v
    };
    assert_eq!(before, after, "{name}: something was created next to the destination");
    assert_eq!(fs::read_dir(outside).unwrap().count(), 0, "{name}: something was written outside");
    assert!(!t.path().parent().unwrap().join("x").exists());
}

type Case<'a> = (&'a str, Box<dyn Fn(&Transaction) -> Vec<Entry>>, &'a str);

#[test]
fn manifests_with_unsafe_paths_are_refused() {
    let (t, repo, outside) = setup();
    let out_abs = outside.to_str().unwrap().as_bytes().to_vec();
    let passwd = [out_abs.as_slice(), b"/passwd"].concat();
    let (oa, pw) = (out_abs.clone(), passwd.clone());
    let cases: Vec<Case> = vec![
        ("dotdot", Box::new(|x| vec![dir(b""), file(x, b"../x", b"evil")]), "'..' component"),
        ("deep-dotdot", Box::new(|x| vec![dir(b""), dir(b"a"), file(x, b"a/../../x", b"evil")]), "'..' component"),
        ("absolute", Box::new(move |x| vec![dir(b""), file(x, &passwd, b"evil")]), "absolute path"),
        ("nul", Box::new(|x| vec![dir(b""), file(x, b"a\0b", b"evil")]), "nul"),
        ("backslash", Box::new(|x| vec![dir(b""), file(x, b"..\\x", b"evil")]), "backslash"),
        ("dot", Box::new(|_| vec![dir(b""), dir(b".")]), "'.' component"),
        ("empty-name", Box::new(|x| vec![dir(b""), dir(b"a"), file(x, b"a//b", b"evil")]), "empty component"),
        ("no-root", Box::new(|x| vec![file(x, b"x", b"evil")]), "root directory"),
        (
            "duplicate",
            Box::new(|x| vec![dir(b""), file(x, b"x", b"one"), file(x, b"x", b"two")]),
            "not sorted or duplicated",
        ),
        ("unsorted", Box::new(|x| vec![dir(b""), file(x, b"b", b"b"), file(x, b"a", b"a")]), "not sorted"),
        // A symlink out of the tree, then a file through it.
        (
            "through-symlink",
            Box::new(move |x| vec![dir(b""), link(b"d", &out_abs), file(x, b"d/passwd", b"evil")]),
            "parent is not a directory",
        ),
        // A symlink, then a directory of the same name.
        ("symlink-then-dir", Box::new(move |_| vec![dir(b""), link(b"d", &oa), dir(b"d")]), "duplicated"),
        // Hardlinks to a path outside, up and out, or to a symlink pointing outside.
        ("hardlink-abs", Box::new(|_| vec![dir(b""), hard(b"h", b"/etc/shadow")]), "absolute path"),
        ("hardlink-up", Box::new(|_| vec![dir(b""), dir(b"a"), hard(b"a/h", b"../../etc/shadow")]), "'..' component"),
        (
            "hardlink-to-symlink",
            Box::new(move |_| vec![dir(b""), link(b"s", &pw), hard(b"z", b"s")]),
            "not a file entry",
        ),
        ("hardlink-forward", Box::new(|x| vec![dir(b""), hard(b"a", b"b"), file(x, b"b", b"b")]), "earlier entry"),
        (
            "file-parent",
            Box::new(|x| vec![dir(b""), file(x, b"f", b"f"), file(x, b"f/x", b"x")]),
            "parent is not a directory",
        ),
        ("orphan", Box::new(|x| vec![dir(b""), file(x, b"nodir/x", b"x")]), "parent directory has no entry"),
        ("mode-type-bits", Box::new(|_| vec![dir(b""), entry(b"m", 0o100644, EntryKind::Dir)]), "beyond 07777"),
    ];
    let n = cases.len();
    for (name, entries, needle) in cases {
        forge(&repo, name, |x| vec![part(x, b"", PartKind::Base, entries(x))]);
        refused(&t, &repo, name, &outside, &[needle]);
    }
    // verify reports each of these manifests as damaged.
    let v = qpack(args!["verify", "--repo", repo.root(), "--json"]).code(3).json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), n, "{v:#}");
    assert!(problems.iter().all(|p| p["kind"] == "manifest"), "{v:#}");
}

#[test]
fn file_entry_whose_size_lies_is_refused() {
    let (t, repo, outside) = setup();
    forge(&repo, "liar", |x| {
        let mut f = file(x, b"f", b"0123456789");
        if let EntryKind::File { size, .. } = &mut f.kind {
            *size = 1 << 40;
        }
        vec![part(x, b"", PartKind::Base, vec![dir(b""), f])]
    });
    refused(&t, &repo, "liar", &outside, &["size"]);
}

#[test]
fn valid_manifests_that_escape_when_combined_are_refused() {
    let (t, repo, outside) = setup();
    let out_abs = outside.to_str().unwrap().as_bytes().to_vec();
    let prod = |x: &Transaction| part(x, b"Linux64/p/1.0", product("p"), vec![dir(b""), file(x, b"x", b"evil")]);
    let base = |x: &Transaction, entries: Vec<Entry>| part(x, b"", PartKind::Base, entries);

    // The base makes a mount's parent a symlink out of the tree.
    forge(&repo, "mount-under-symlink", |x| vec![base(x, vec![dir(b""), link(b"Linux64", &out_abs)]), prod(x)]);
    refused(&t, &repo, "mount-under-symlink", &outside, &["not a directory"]);

    // The base has a symlink exactly at a product's mount.
    forge(&repo, "symlink-at-mount", |x| {
        let b = vec![dir(b""), dir(b"Linux64"), dir(b"Linux64/p"), link(b"Linux64/p/1.0", &out_abs)];
        vec![base(x, b), prod(x)]
    });
    refused(&t, &repo, "symlink-at-mount", &outside, &["at or under the mount"]);

    // The base has a file inside a product's mount.
    forge(&repo, "base-inside-mount", |x| {
        let f = file(x, b"Linux64/p/1.0/x", b"base");
        let b = vec![dir(b""), dir(b"Linux64"), dir(b"Linux64/p"), dir(b"Linux64/p/1.0"), f];
        vec![base(x, b), prod(x)]
    });
    refused(&t, &repo, "base-inside-mount", &outside, &["at or under the mount"]);

    // A product mounted outside the tree, or at an absolute path.
    forge(&repo, "mount-up", |x| {
        vec![base(x, vec![dir(b"")]), part(x, b"../escape", product("p"), vec![dir(b""), file(x, b"x", b"evil")])]
    });
    refused(&t, &repo, "mount-up", &outside, &["'..' component"]);
    forge(&repo, "mount-abs", |x| {
        vec![base(x, vec![dir(b"")]), part(x, &out_abs, product("p"), vec![dir(b""), file(x, b"x", b"evil")])]
    });
    refused(&t, &repo, "mount-abs", &outside, &["absolute path"]);

    // Two products, one inside the other; two base parts.
    forge(&repo, "nested", |x| {
        vec![
            base(x, vec![dir(b"")]),
            part(x, b"a", product("a"), vec![dir(b""), file(x, b"x", b"a")]),
            part(x, b"a/b", product("b"), vec![dir(b""), file(x, b"x", b"b")]),
        ]
    });
    refused(&t, &repo, "nested", &outside, &["overlaps"]);
    forge(&repo, "two-bases", |x| vec![base(x, vec![dir(b"")]), base(x, vec![dir(b"")])]);
    refused(&t, &repo, "two-bases", &outside, &["base parts"]);

    // A chunk stored under one id whose content is another's.
    let good = ChunkId::of(b"the real content");
    forge(&repo, "swapped-chunk", |x| {
        x.put_chunk(good, b"other content!!!", 3).unwrap();
        let e =
            entry(b"f", 0o644, EntryKind::File { size: 16, flags: 0, chunks: vec![ChunkRef { id: good, len: 16 }] });
        vec![base(x, vec![dir(b""), e])]
    });
    let dest = t.join("dest-swapped");
    qpack(args!["checkout", "swapped-chunk", &dest, "--repo", repo.root()]).fails().says(&[&good.to_hex()]);
    if dest.exists() {
        let f = dest.join("f");
        assert!(!f.exists() || fs::read(&f).unwrap().is_empty(), "wrong bytes were written");
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // verify judges releases the way checkout does: every one of them is reported, by name.
    let v = qpack(args!["verify", "--repo", repo.root(), "--json"]).code(3).json();
    let broken: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["breaks"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()))
        .collect();
    for name in [
        "mount-under-symlink",
        "symlink-at-mount",
        "base-inside-mount",
        "mount-up",
        "mount-abs",
        "nested",
        "two-bases",
        "swapped-chunk",
    ] {
        assert!(broken.iter().any(|b| b == name), "verify did not report {name}: {v}");
    }
}

#[test]
fn a_legitimate_hand_made_release_checks_out() {
    // The same construction as the attacks, but valid: so their refusals are about what they contain.
    let (t, repo, outside) = setup();
    let out_abs = outside.to_str().unwrap().as_bytes().to_vec();
    forge(&repo, "fine", |x| {
        let b = vec![dir(b""), dir(b"Linux64"), dir(b"Linux64/p"), link(b"abs", &out_abs)];
        let p = vec![dir(b""), file(x, b"f", b"content"), hard(b"g", b"f"), link(b"up", b"../../..")];
        vec![part(x, b"", PartKind::Base, b), part(x, b"Linux64/p/1.0", product("p"), p)]
    });
    let dest = t.join("dest").join("fine");
    checkout(repo.root(), "fine", &dest);
    assert_eq!(fs::read(dest.join("Linux64/p/1.0/g")).unwrap(), b"content");
    assert_eq!(fs::read_link(dest.join("abs")).unwrap(), outside);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    verify(repo.root()).ok();
}
