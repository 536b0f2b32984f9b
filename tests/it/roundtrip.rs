//! publish → checkout / export gives back the source exactly (RELIABILITY cases 4, 7, 8).

use crate::args;
use crate::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

#[test]
fn directory_round_trip_is_exact() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    let src = snapshot(&tree);
    let r = publish(&tree, &repo, "r1", &[]);
    assert_eq!(r["created"], true);
    assert_eq!(num(&r, "hardlinks"), 1);
    let files = src.values().filter(|n| matches!(n.kind, Kind::File(..))).count() as u64;
    assert_eq!(num(&r, "files"), files);
    assert_eq!(num(&r, "symlinks"), src.values().filter(|n| matches!(n.kind, Kind::Symlink(_))).count() as u64);

    let out = t.join("out");
    checkout(&repo, "r1", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);
    // The source is untouched by the publish.
    assert!(diff_snapshots(&src, &snapshot(&tree), Cmp::EXACT).is_empty());

    // Spot checks that the comparison itself sees what matters.
    let foo = out.join("Linux64/foo/1.0/lib");
    let (a, b) = (fs::metadata(foo.join("libfoo.a")).unwrap(), fs::metadata(foo.join("libfoo_hard.a")).unwrap());
    assert_eq!(a.ino(), b.ino(), "hardlink pair must be one inode in the checkout");
    assert_eq!(fs::read_link(foo.join("libfoo.so")).unwrap().as_os_str(), "libfoo.so.1");
    assert_eq!(fs::metadata(foo.join("readonly.txt")).unwrap().mode() & 0o7777, 0o444);
    let ro = out.join("Linux64/bar/2.1/share/ro");
    assert_eq!(fs::symlink_metadata(&ro).unwrap().mode() & 0o7777, 0o555);
    let abs = fs::symlink_metadata(out.join("Linux64/bar/2.1/share/abs-link")).unwrap();
    assert_eq!((abs.mtime(), abs.mtime_nsec()), (1_400_000_000, 42));
    assert!(out.join("Linux64/bar/2.1/share").join(p(&long_name())).exists());

    // A checkout by id prefix gives the same tree.
    let id = r["id"].as_str().unwrap();
    let out2 = t.join("out2");
    checkout(&repo, &id[..16], &out2);
    assert_same_tree(&tree, &out2, Cmp::EXACT);
}

#[test]
fn checkout_refuses_a_non_empty_destination() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    write(&tree.join("a.txt"), b"a\n", 0o644);
    publish(&tree, &repo, "r1", &[]);
    let dest = t.join("dest");
    write(&dest.join("keep.txt"), b"mine\n", 0o644);
    qpack(args!["checkout", "r1", &dest, "--repo", &repo]).fails().says(&["not empty"]);
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 1);
    assert_eq!(fs::read(dest.join("keep.txt")).unwrap(), b"mine\n");
}

#[test]
fn tar_and_tar_zst_sources_round_trip() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    let tar = t.join("tree.tar");
    system_tar(&tree, &tar);
    let zst = t.join("tree.tar.zst");
    zstd_file(&tar, &zst);

    let r = publish(&tar, &repo, "from-tar", &[]);
    assert_eq!(num(&r, "hardlinks"), 1);
    let out = t.join("out-tar");
    checkout(&repo, "from-tar", &out);
    assert_same_tree(&tree, &out, Cmp::TAR);

    // The same archive compressed is the same release content: every part is reused.
    let r2 = publish(&zst, &repo, "from-zst", &[]);
    assert_eq!(num(&r2, "parts_new"), 0, "{r2:#}");
    assert_eq!(num(&r2, "chunks_new"), 0, "{r2:#}");
    let out2 = t.join("out-zst");
    checkout(&repo, "from-zst", &out2);
    assert_same_tree(&tree, &out2, Cmp::TAR);

    // The system zstd, if present, makes a frame the reader must take as well.
    if which("zstd") {
        let zst2 = t.join("cli.tar.zst");
        let mut c = Command::new("zstd");
        c.arg("-q").arg("-19").arg(&tar).arg("-o").arg(&zst2);
        assert_eq!(run_cmd(c).code, 0);
        let r3 = publish(&zst2, &repo, "from-zstd-cli", &[]);
        assert_eq!(num(&r3, "parts_new"), 0, "{r3:#}");
    } else {
        eprintln!("zstd not installed: skipping the zstd-CLI archive case");
    }
}

#[test]
fn export_then_tar_extract_round_trips() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    publish(&tree, &repo, "r1", &[]);
    for name in ["r1.tar", "r1.tar.zst"] {
        let out = t.join(name);
        qpack(args!["export", "r1", "--repo", &repo, "-o", &out]).ok();
        let plain = if name.ends_with(".zst") {
            let data = fs::read(&out).unwrap();
            assert_eq!(&data[..4], &[0x28, 0xb5, 0x2f, 0xfd], "{name} is not zstd");
            let plain = t.join("decompressed.tar");
            fs::write(&plain, zstd::decode_all(data.as_slice()).unwrap()).unwrap();
            plain
        } else {
            out.clone()
        };
        let dest = t.join(format!("x-{name}"));
        fs::create_dir(&dest).unwrap();
        let mut c = Command::new("tar");
        c.arg("--same-permissions").arg("-xf").arg(&plain).arg("-C").arg(&dest);
        let o = run_cmd(c);
        assert_eq!(o.code, 0, "tar -x of the export failed:\n{}", o.dump());
        // Tar keeps whole seconds, and an export has no entry for the root itself.
        assert_same_tree(&tree, &dest, Cmp { secs_only: true, root: false, mtimes: true });
        // No temp file is left next to the output.
        let leftovers: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .map(|e| e.file_name())
            .collect();
        assert!(leftovers.is_empty(), "export left {leftovers:?}");
    }
    // An exported tarball published again is the same release content.
    let r = publish(&t.join("r1.tar"), &repo, "again", &[]);
    assert_eq!(num(&r, "chunks_new"), 0, "{r:#}");
}

#[test]
fn hardlink_across_parts_becomes_a_copy() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    let a = tree.join("Linux64/foo/1.0/lib/shared.dat");
    let b = tree.join("Linux64/qserv/3.0/lib/shared.dat");
    write(&a, &random_bytes(70_000, 99), 0o644);
    fs::hard_link(&a, &b).unwrap();
    let r = publish(&tree, &repo, "r1", &[]);
    assert_eq!(num(&r, "hardlinks"), 2, "{r:#}");
    let out = t.join("out");
    checkout(&repo, "r1", &out);
    let (oa, ob) = (out.join("Linux64/foo/1.0/lib/shared.dat"), out.join("Linux64/qserv/3.0/lib/shared.dat"));
    assert_eq!(fs::read(&oa).unwrap(), fs::read(&a).unwrap());
    assert_eq!(fs::read(&ob).unwrap(), fs::read(&a).unwrap());
    // Parts are installed independently: a link between two of them is two files with the same content.
    assert_ne!(fs::metadata(&oa).unwrap().ino(), fs::metadata(&ob).unwrap().ino());
    let (sa, sb) = (fs::metadata(&a).unwrap(), fs::metadata(&ob).unwrap());
    assert_eq!((sa.mode() & 0o7777, sa.mtime(), sa.mtime_nsec()), (sb.mode() & 0o7777, sb.mtime(), sb.mtime_nsec()));
}

#[test]
fn excluded_paths_are_left_out() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    write(&tree.join("ups_db/.lockDir/lock"), b"held\n", 0o644);
    write(&tree.join("Linux64/foo/1.0/EupsBuildDir/obj.o"), b"obj\n", 0o644);
    write(&tree.join("Linux64/bar/2.1/lib/junk.pyc"), b"pyc\n", 0o644);
    publish(&tree, &repo, "r1", &["--exclude", "*.pyc"]);
    let out = t.join("out");
    checkout(&repo, "r1", &out);
    assert!(!out.join("ups_db/.lockDir").exists());
    assert!(!out.join("Linux64/foo/1.0/EupsBuildDir").exists());
    assert!(!out.join("Linux64/bar/2.1/lib/junk.pyc").exists());
    assert!(out.join("Linux64/bar/2.1/lib/libbar.so.2").exists());
}

#[test]
fn chunk_boundaries_do_not_depend_on_how_the_file_is_read() {
    // Files larger than the read window (4 MiB), a growing-then-exact size, and small ones: the chunks a publish
    // records are exactly FastCDC's cuts of the whole content, from a directory and from an archive alike.
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    let mut data = random_bytes(6 << 20, 31);
    data.extend_from_slice(&text_bytes(4 << 20, 32));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("big.bin", data),
        ("one-chunk.bin", random_bytes(10_000, 33)),
        ("exactly-min.bin", random_bytes(16 << 10, 34)),
        ("empty", Vec::new()),
    ];
    for (name, d) in &files {
        write(&tree.join(name), d, 0o644);
    }
    publish(&tree, &repo, "dir", &[]);
    let tar = t.join("tree.tar");
    system_tar(&tree, &tar);
    publish(&tar, &repo, "tar", &[]);
    let params = qpack::chunk::ChunkerParams::default();
    for (name, d) in &files {
        let want: Vec<(qpack::id::ChunkId, u32)> =
            params.cut(d).map(|(off, len)| (qpack::id::ChunkId::of(&d[off..off + len]), len as u32)).collect();
        for rel in ["dir", "tar"] {
            let got: Vec<_> = chunks_of_file(&repo, rel, name).iter().map(|c| (c.id, c.len)).collect();
            assert_eq!(got, want, "{name} from {rel}");
        }
    }
}

#[test]
fn unprivileged_round_trip_handles_read_only_files_and_directories() {
    // As root, permission checks are bypassed: run publish and checkout as an ordinary user (nobody, via
    // setpriv, when the tests run as root) so that 0555 directories and 0444 files are exercised for real.
    let t = TestDir::new();
    let Some(run) = unprivileged(&t) else { return };
    let (tree, repo, out) = (t.join("tree"), t.join("repo"), t.join("out"));
    sample_tree(&tree);
    if is_root() {
        chown_tree(&tree, 65534);
        fs::create_dir(&repo).unwrap();
        std::os::unix::fs::chown(&repo, Some(65534), Some(65534)).unwrap();
        fs::create_dir(&out).unwrap();
        std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    }
    run(args!["publish", &tree, "--repo", &repo, "--release", "r1"]).ok();
    run(args!["checkout", "r1", &out, "--repo", &repo]).ok();
    assert_same_tree(&tree, &out, Cmp::EXACT);
    run(args!["verify", "--repo", &repo]).ok();
}

#[test]
fn archive_hardlinks_in_any_order_become_one_inode() {
    // Links whose target sorts after them, and a link to a link: all one file in the checkout.
    let t = TestDir::new();
    let (tarball, repo) = (t.join("links.tar"), t.join("repo"));
    let mut b = tar::Builder::new(fs::File::create(&tarball).unwrap());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o640 });
        h.set_mtime(1_500_000_000);
        match link {
            Some(l) => b.append_link(&mut h, path, l).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    add("ups_db/", tar::EntryType::Directory, b"", None);
    add("z", tar::EntryType::Regular, b"shared content\n", None);
    add("a", tar::EntryType::Link, b"", Some("z"));
    add("m", tar::EntryType::Link, b"", Some("z"));
    add("d/", tar::EntryType::Directory, b"", None);
    add("d/b", tar::EntryType::Link, b"", Some("m"));
    b.into_inner().unwrap();
    let r = publish(&tarball, &repo, "r1", &[]);
    assert_eq!(num(&r, "files"), 4, "{r:#}");
    assert_eq!(num(&r, "hardlinks"), 3, "{r:#}");
    let out = t.join("out");
    checkout(&repo, "r1", &out);
    let ino = fs::metadata(out.join("z")).unwrap().ino();
    for p in ["a", "m", "z", "d/b"] {
        let md = fs::metadata(out.join(p)).unwrap();
        assert_eq!(md.ino(), ino, "{p} is not the same inode");
        assert_eq!((md.mode() & 0o7777, md.mtime()), (0o640, 1_500_000_000), "{p}");
        assert_eq!(fs::read(out.join(p)).unwrap(), b"shared content\n");
    }
    assert_eq!(fs::metadata(out.join("z")).unwrap().nlink(), 4);
}

#[test]
fn files_embedding_the_build_prefix_are_reported() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    sample_tree(&tree);
    let prefix = b"/opt/build/stack";
    let foo = tree.join("Linux64/foo/1.0");
    write(&foo.join("bin/script"), b"#!/opt/build/stack/bin/python3\nprint()\n", 0o755);
    // Across the 4 MiB read window of the publisher.
    let mut big = random_bytes((4 << 20) + 4096, 71);
    let at = (4 << 20) - 7;
    big[at..at + prefix.len()].copy_from_slice(prefix);
    write(&foo.join("lib/straddle.bin"), &big, 0o644);
    // Almost the prefix: not reported.
    write(&tree.join("site/near-miss.txt"), b"/opt/build/stac and /opt/build/stacK\n", 0o644);
    let r = publish(&tree, &repo, "r1", &["--prefix", "/opt/build/stack"]);
    assert_eq!(
        r["prefix_files"],
        serde_json::json!([{"part": "foo 1.0", "files": ["Linux64/foo/1.0/bin/script", "Linux64/foo/1.0/lib/straddle.bin"]}]),
        "{r:#}"
    );
    let show = qpack(args!["show", "r1", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(show["prefix"], "/opt/build/stack");
    // From an archive too.
    let tar = t.join("t.tar");
    system_tar(&tree, &tar);
    let r = publish(&tar, &repo, "r2", &["--prefix", "/opt/build/stack"]);
    assert_eq!(r["prefix_files"][0]["files"].as_array().unwrap().len(), 2, "{r:#}");
}

#[test]
fn deep_tree_round_trips() {
    // 1500 levels (a 3000-byte path): deeper than a recursive walk survives on a 2 MiB worker stack.
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    let mut d = tree.clone();
    for i in 0..1500 {
        d.push(if i % 2 == 0 { "d" } else { "e" });
        fs::create_dir(&d).unwrap();
    }
    write(&d.join("leaf"), b"at the bottom\n", 0o644);
    symlink("../../../..", &d.join("up"));
    publish(&tree, &repo, "deep", &[]);
    let out = t.join("out");
    checkout(&repo, "deep", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);
    verify(&repo).ok();
    qpack(args!["export", "deep", "--repo", &repo, "-o", t.join("deep.tar")]).ok();
}

#[test]
fn large_sparse_file_is_streamed_with_bounded_memory() {
    // RELIABILITY case 3, scaled down to 128 MiB for a debug build: publish and checkout read and write it a
    // window at a time, so their peak RSS stays far below the file's size.
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    let f = fs::File::create(tree.join("sparse.img")).unwrap();
    f.set_len(128 << 20).unwrap();
    drop(f);
    let mut c = cmd();
    c.args(args!["publish", &tree, "--repo", &repo, "--release", "r1", "--json"]);
    let (out, peak_kib) = run_sampling_rss(c);
    let r = out.ok().json();
    assert_eq!(num(&r, "bytes"), 128 << 20);
    assert_eq!(num(&r, "chunks_new"), 1, "a file of zeros is one chunk repeated: {r:#}");
    assert!(peak_kib < 64 << 10, "publish peaked at {peak_kib} KiB for a 128 MiB file");
    let dest = t.join("out");
    let mut c = cmd();
    c.args(args!["checkout", "r1", &dest, "--repo", &repo]);
    let (out, peak_kib) = run_sampling_rss(c);
    out.ok();
    assert!(peak_kib < 64 << 10, "checkout peaked at {peak_kib} KiB for a 128 MiB file");
    let md = fs::metadata(dest.join("sparse.img")).unwrap();
    assert_eq!(md.len(), 128 << 20);
}
