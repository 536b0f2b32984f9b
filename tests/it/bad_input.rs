//! Trees and archives that cannot be published: a clear error, a non-zero exit, and the repository untouched
//! (RELIABILITY cases 1, 2, 5, 39 for archives).

use crate::args;
use crate::util::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A repository holding r1 (a small good tree), and that tree, to be spoiled.
fn fixture(t: &TestDir) -> (PathBuf, PathBuf) {
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    small_tree(&tree);
    publish(&tree, &repo, "r1", &[]);
    (tree, repo)
}

/// A minimal EUPS tree: one product.
fn small_tree(tree: &Path) {
    write(
        &tree.join("ups_db/foo/1.0.version"),
        b"FILE = version\nPRODUCT = foo\nVERSION = 1.0\nGroup:\n   PROD_DIR = Linux64/foo/1.0\nEnd:\n",
        0o644,
    );
    write(&tree.join("Linux64/foo/1.0/bin/foo"), &random_bytes(30_000, 1), 0o755);
    write(&tree.join("Linux64/foo/1.0/ups/foo.table"), b"\n", 0o644);
}

/// Publishing `source` as `bad` must fail, say every needle, and leave the repository exactly as it was.
#[track_caller]
fn refused(source: &Path, repo: &Path, extra: &[&str], needles: &[&str]) -> Out {
    let before = repo_listing(repo);
    let mut a: Vec<OsString> = args!["publish", source, "--repo", repo, "--release", "bad"];
    a.extend(extra.iter().map(OsString::from));
    let out = qpack(a).fails().says(needles);
    assert_listing_unchanged(&before, repo);
    out
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap();
}

#[test]
fn fifo_is_refused_unless_skipped() {
    let t = TestDir::new();
    let (tree, repo) = fixture(&t);
    mkfifo(&tree.join("Linux64/foo/1.0/bin/pipe"));
    refused(&tree, &repo, &[], &["bin/pipe", "fifo", "--skip-special"]);
    let r = publish(&tree, &repo, "skipped", &["--skip-special"]);
    assert!(r["skipped"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().contains("bin/pipe")), "{r:#}");
    let out = t.join("out");
    checkout(&repo, "skipped", &out);
    assert!(fs::symlink_metadata(out.join("Linux64/foo/1.0/bin/pipe")).is_err());
    assert!(out.join("Linux64/foo/1.0/bin/foo").is_file());
}

#[test]
fn socket_is_refused() {
    let t = TestDir::new();
    let (tree, repo) = fixture(&t);
    let _sock = std::os::unix::net::UnixListener::bind(tree.join("Linux64/foo/1.0/agent.sock")).unwrap();
    refused(&tree, &repo, &[], &["agent.sock", "socket"]);
}

#[test]
fn device_is_refused() {
    if !is_root() {
        eprintln!("not root: cannot make a device node; skipped");
        return;
    }
    let t = TestDir::new();
    let (tree, repo) = fixture(&t);
    let dev = tree.join("Linux64/foo/1.0/null");
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        &dev,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    );
    if made.is_err() {
        eprintln!("mknod refused ({made:?}): skipped");
        return;
    }
    refused(&tree, &repo, &[], &["null", "character device"]);
}

#[test]
fn setuid_file_is_refused_unless_allowed() {
    let t = TestDir::new();
    let (tree, repo) = fixture(&t);
    let f = tree.join("Linux64/foo/1.0/bin/foo");
    chmod(&f, 0o4755);
    refused(&tree, &repo, &[], &["bin/foo", "setuid", "--allow-setuid"]);
    publish(&tree, &repo, "suid", &["--allow-setuid"]);
    // Checking it out needs the same consent, and without it nothing is written.
    let dest = t.join("no");
    qpack(args!["checkout", "suid", &dest, "--repo", &repo]).fails().says(&["setuid"]);
    assert!(!dest.exists());
    let dest = t.join("yes");
    qpack(args!["checkout", "suid", &dest, "--repo", &repo, "--allow-setuid"]).ok();
    assert_eq!(fs::metadata(dest.join("Linux64/foo/1.0/bin/foo")).unwrap().mode() & 0o7777, 0o4755);
}

#[test]
fn backslash_in_a_name_is_refused() {
    let t = TestDir::new();
    let (tree, repo) = fixture(&t);
    write(&tree.join("Linux64/foo/1.0/lib/a\\b.so"), b"x", 0o644);
    refused(&tree, &repo, &[], &["backslash"]);
}

#[test]
fn missing_or_non_tree_source_is_refused() {
    let t = TestDir::new();
    let (_, repo) = fixture(&t);
    refused(&t.join("no-such-tree"), &repo, &[], &["no-such-tree", "no such file"]);
    let text = t.join("notes.txt");
    fs::write(&text, "this is not a tarball\n".repeat(100)).unwrap();
    refused(&text, &repo, &[], &["notes.txt", "not a readable tar archive"]);
    let tiny = t.join("tiny");
    fs::write(&tiny, "hi\n").unwrap();
    refused(&tiny, &repo, &[], &["tiny", "not a readable tar archive"]);
    // An empty file (a failed download) or a bare end-of-archive marker must not become an empty release.
    let empty = t.join("empty.tar");
    fs::write(&empty, b"").unwrap();
    refused(&empty, &repo, &[], &["empty.tar", "empty archive"]);
    let zeros = t.join("zeros.tar");
    fs::write(&zeros, [0u8; 1024]).unwrap();
    refused(&zeros, &repo, &[], &["zeros.tar", "empty archive"]);
    let empty_zst = t.join("empty.tar.zst");
    fs::write(&empty_zst, zstd::encode_all(&b""[..], 3).unwrap()).unwrap();
    refused(&empty_zst, &repo, &[], &["empty.tar.zst", "empty archive"]);
    let gz = t.join("tree.tar.gz");
    fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    refused(&gz, &repo, &[], &["gzip"]);
    let truncated = t.join("truncated.tar");
    system_tar(&t.join("tree"), &truncated);
    let len = fs::metadata(&truncated).unwrap().len();
    fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(len / 2).unwrap();
    refused(&truncated, &repo, &[], &["truncated.tar"]);
    // A FIFO as the source itself.
    let fifo = t.join("source-fifo");
    mkfifo(&fifo);
    refused(&fifo, &repo, &[], &["source-fifo"]);
}

#[test]
fn bad_release_name_is_refused() {
    let t = TestDir::new();
    let (tree, repo) = fixture(&t);
    for name in ["../evil", "-x", ".hidden", "a/b", "", "sp ace"] {
        let before = repo_listing(&repo);
        qpack(args!["publish", &tree, "--repo", &repo, "--release", name]).fails();
        assert_listing_unchanged(&before, &repo);
    }
    assert!(!t.join("evil").exists());
}

#[test]
fn non_repository_directory_is_not_used_as_a_repository() {
    let t = TestDir::new();
    let tree = t.join("tree");
    small_tree(&tree);
    let data = t.join("data");
    write(&data.join("thesis.tex"), b"\\documentclass{article}\n", 0o644);
    let before = repo_listing(&data);
    let lock_before = data.join("lock").exists();
    qpack(args!["publish", &tree, "--repo", &data, "--release", "r1"]).fails().says(&["not a qpack repository"]);
    assert_listing_unchanged(&before, &data);
    assert_eq!(data.join("lock").exists(), lock_before);
    // A regular file as the repository.
    let file = t.join("file");
    fs::write(&file, b"x").unwrap();
    qpack(args!["publish", &tree, "--repo", &file, "--release", "r1"]).fails().says(&["not a directory"]);
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

/// Appends a tar entry with a raw name (and link name), bypassing the `tar` crate's path checks.
fn raw_entry(b: &mut tar::Builder<fs::File>, name: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A tarball of a good small tree plus one raw extra entry.
fn evil_tar(path: &Path, name: &[u8], kind: tar::EntryType, link: &[u8], mode: u32) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let dir = tar::EntryType::Directory;
    for d in [&b"./"[..], b"./ups_db/", b"./Linux64/", b"./Linux64/foo/", b"./Linux64/foo/1.0/"] {
        raw_entry(&mut b, d, dir, b"", b"", 0o755);
    }
    raw_entry(&mut b, b"./Linux64/foo/1.0/README", tar::EntryType::Regular, b"hello\n", b"", 0o644);
    let data: &[u8] = if kind == tar::EntryType::Regular { b"evil\n" } else { b"" };
    raw_entry(&mut b, name, kind, data, link, mode);
    b.into_inner().unwrap();
}

#[test]
fn archive_with_unsafe_paths_is_refused() {
    let t = TestDir::new();
    let (_, repo) = fixture(&t);
    let reg = tar::EntryType::Regular;
    // (name, type, link target, mode, what the error says)
    type Case<'a> = (&'a [u8], tar::EntryType, &'a [u8], u32, &'a str);
    let cases: &[Case] = &[
        (b"../x", reg, b"", 0o644, "'..' component"),
        (b"./Linux64/../../x", reg, b"", 0o644, "'..' component"),
        (b"/etc/evil", reg, b"", 0o644, "absolute path"),
        (b"./a\\b", reg, b"", 0o644, "backslash"),
        (b"./Linux64/foo/1.0/shadow", tar::EntryType::Link, b"/etc/shadow", 0o644, "not a file of the archive"),
        (b"./Linux64/foo/1.0/up", tar::EntryType::Link, b"../../../etc/passwd", 0o644, "not a file of the archive"),
        (b"./Linux64/foo/1.0/pipe", tar::EntryType::Fifo, b"", 0o644, "special file"),
        (b"./Linux64/foo/1.0/nolink", tar::EntryType::Symlink, b"", 0o777, "symlink without a target"),
        (b"./Linux64/foo/1.0/suid", reg, b"", 0o4755, "setuid"),
        (b"./Linux64/foo/1.0/sgid-dir/", tar::EntryType::Directory, b"", 0o2755, "setuid/setgid"),
    ];
    for (i, (name, kind, link, mode, needle)) in cases.iter().enumerate() {
        let tarball = t.join(format!("evil-{i}.tar"));
        evil_tar(&tarball, name, *kind, link, *mode);
        refused(&tarball, &repo, &[], &[needle]);
    }
    assert!(!t.join("x").exists() && !t.path().parent().unwrap().join("x").exists());
    // The same archive without the bad entry is fine (so the refusals above are about that entry).
    let good = t.join("good.tar");
    evil_tar(&good, b"./Linux64/foo/1.0/ok", reg, b"", 0o644);
    publish(&good, &repo, "good", &[]);
    // A tar symlink to an absolute path is only data.
    let abs = t.join("abs.tar");
    evil_tar(&abs, b"./Linux64/foo/1.0/passwd", tar::EntryType::Symlink, b"/etc/passwd", 0o777);
    publish(&abs, &repo, "abs", &[]);
    let out = t.join("out");
    checkout(&repo, "abs", &out);
    assert_eq!(fs::read_link(out.join("Linux64/foo/1.0/passwd")).unwrap(), Path::new("/etc/passwd"));
}

#[test]
fn unreadable_file_or_directory_is_refused() {
    let t = TestDir::new();
    let Some(run) = unprivileged(&t) else { return };
    let (tree, repo) = fixture(&t);
    if is_root() {
        chown_tree(&repo, 65534);
    }
    // The unprivileged user can publish the good tree (so what fails below is the unreadable path).
    run(args!["publish", &tree, "--repo", &repo, "--release", "r2"]).ok();

    let secret = tree.join("Linux64/foo/1.0/bin/secret");
    write(&secret, b"secret", 0o000);
    let before = repo_listing(&repo);
    run(args!["publish", &tree, "--repo", &repo, "--release", "bad"])
        .fails()
        .says(&["bin/secret", "permission denied"]);
    assert_listing_unchanged(&before, &repo);
    fs::remove_file(&secret).unwrap();

    let locked = tree.join("Linux64/foo/1.0/private");
    write(&locked.join("key"), b"k", 0o644);
    chmod(&locked, 0o000);
    run(args!["publish", &tree, "--repo", &repo, "--release", "bad"]).fails().says(&["private", "permission denied"]);
    assert_listing_unchanged(&before, &repo);
    chmod(&locked, 0o755);
}

#[test]
fn a_typo_in_the_tree_creates_no_repository_and_says_it_once() {
    let t = TestDir::new();
    let repo = t.join("new-repo");
    let out = qpack(args!["publish", t.join("no-such-tree"), "--repo", &repo, "--release", "r1"]).fails();
    assert!(!repo.exists(), "a failed publish created {}", repo.display());
    let text = out.text();
    assert!(text.contains("no-such-tree"), "{text}");
    // The cause is printed once, not once per layer of context.
    assert_eq!(text.to_lowercase().matches("no such file or directory").count(), 1, "{text}");
}

#[test]
fn a_file_that_keeps_changing_while_read_is_an_error_and_the_repo_is_untouched() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let t = TestDir::new();
    let (tree, repo) = fixture(&t);
    let before = repo_listing(&repo);
    // A file that another process keeps rewriting in place (its size stays 16 MiB; bounded to 20 s).
    let growing = tree.join("Linux64/foo/1.0/var.log");
    write(&growing, &text_bytes(16 << 20, 7), 0o644);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), growing.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let t0 = std::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && t0.elapsed().as_secs() < 20 {
                let block = [b'a' + (n % 26) as u8; 4096];
                f.write_all_at(&block, (n * 4096) % (16 << 20)).unwrap();
                n += 1;
            }
        })
    };
    let out = qpack(args!["publish", &tree, "--repo", &repo, "--release", "r2"]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    out.fails().says(&["var.log", "changed while being read"]);
    assert_listing_unchanged(&before, &repo);
    verify(&repo).ok();
}

/// Unmounts a tmpfs when the test ends, whatever happens.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_publish_cleanly_and_leaves_the_repo_as_it_was() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let t = TestDir::new();
    let repo = t.join("repo");
    fs::create_dir_all(&repo).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&repo)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: could not mount a tmpfs");
        return;
    }
    let _guard = Mounted(repo.clone());
    // A first small release fits.
    let tree = t.join("tree");
    small_tree(&tree);
    publish(&tree, &repo, "r1", &[]);
    let before = repo_listing(&repo);
    // The next one does not: 8 MiB of bytes that do not compress.
    write(&tree.join("Linux64/foo/1.0/lib/big.so"), &random_bytes(8 << 20, 3), 0o755);
    let out = qpack(args!["publish", &tree, "--repo", &repo, "--release", "r2"]).fails();
    let text = out.text().to_lowercase();
    // The repository's disk is named as the cause, not the tree.
    assert!(text.contains("filesystem is full") && text.contains("no space left"), "{text}");
    assert!(!text.contains("cannot be published"), "{text}");
    assert_listing_unchanged(&before, &repo);
    verify(&repo).ok();
    // The space of the failed attempt was given back: r1 still checks out.
    checkout(&repo, "r1", &t.join("co"));
}
