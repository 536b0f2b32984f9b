//! The node side (issue 3): `node init`, `install`, `switch`, `rollback`, `status`, `remove`, `gc --node`, as root
//! and as an ordinary user; atomic switches under readers; hardlink sharing between releases; refusals of bad
//! input; kill -9, concurrent switches and a full disk (RELIABILITY cases 11, 16, 26, 27, 31-35, 39, 40).

use crate::args;
use crate::forge::*;
use crate::util::*;
use qpack::manifest::{PartKind, PartRef};
use qpack::store::{Repository, Transaction};
use qpack::treegen::{generate, GenOptions};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Run<'a> = &'a dyn Fn(Vec<OsString>) -> Out;

/// A node root and its prefix.
struct Nd {
    root: PathBuf,
    prefix: PathBuf,
}

impl Nd {
    /// `qpack node init DIR/<name> --prefix DIR/<name>-stack --name <name> EXTRA…`.
    #[track_caller]
    fn init(run: Run, dir: &Path, name: &str, extra: &[&str]) -> Nd {
        let (root, prefix) = (dir.join(name), dir.join(format!("{name}-stack")));
        let mut a = args!["node", "init", &root, "--prefix", &prefix, "--name", name];
        a.extend(extra.iter().map(OsString::from));
        run(a).ok();
        Nd { root: fs::canonicalize(&root).unwrap(), prefix }
    }

    fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn release_dir(&self, id: &str) -> PathBuf {
        self.releases().join(id)
    }

    /// `install REL --from REPO --json`, asserting success.
    #[track_caller]
    fn install(&self, run: Run, rel: &str, from: &Path) -> Value {
        run(args!["install", rel, "--node", &self.root, "--from", from, "--json"]).ok().json()
    }

    fn switch(&self, run: Run, rel: &str) -> Out {
        run(args!["switch", rel, "--node", &self.root])
    }

    fn status(&self) -> Value {
        qpack(args!["status", "--node", &self.root, "--json"]).ok().json()
    }

    /// Where the prefix points.
    fn target(&self) -> PathBuf {
        fs::read_link(&self.prefix).unwrap_or_else(|e| panic!("readlink {}: {e}", self.prefix.display()))
    }

    /// The tree as seen through the prefix (the symlink resolved by the kernel, not by the test).
    fn seen(&self) -> PathBuf {
        self.prefix.join(".")
    }

    /// Names under `releases/`.
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(self.releases()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    }

    fn partials(&self) -> Vec<String> {
        self.listing().into_iter().filter(|n| n.starts_with(".partial-")).collect()
    }

    /// Ids of the installed releases, from `status`.
    fn installed(&self) -> Vec<String> {
        let mut v: Vec<String> = self.status()["installed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    /// The id of the installed release marked previous by `status`.
    fn previous(&self) -> Option<String> {
        self.status()["installed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["previous"] == true)
            .map(|r| r["id"].as_str().unwrap().to_string())
    }
}

/// The id of release `name` of a repository.
fn id_of(repo: &Path, name: &str) -> String {
    open_repo(repo).resolve(name).unwrap().1.to_hex()
}

/// Asserts that `seen` is an exact install of the tree `src` (bytes, symlinks, hardlinks, modes, mtimes).
#[track_caller]
fn assert_installed(src: &Path, seen: &Path) {
    assert_matches(&expected(src), seen, &src.display().to_string());
}

/// Asserts that the tree at `seen` is `want` (an [`expected`] snapshot of the source `what`).
#[track_caller]
fn assert_matches(want: &Snapshot, seen: &Path, what: &str) {
    let d = diff_snapshots(want, &snapshot(seen), Cmp::EXACT);
    assert!(
        d.is_empty(),
        "{} is not an exact install of {what} ({} differences):\n  {}",
        seen.display(),
        d.len(),
        d.iter().take(30).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

/// Generates release 1 of a stack at `tree` and calls `publish("r1")`, then updates the tree in place to release
/// 2 and calls `publish("r2")`. Returns what installs of r1 and r2 must look like.
fn generated_pair(tree: &Path, size: u64, mut publish: impl FnMut(&str)) -> (Snapshot, Snapshot) {
    let opts = GenOptions { release: 1, size, ..GenOptions::default() };
    generate(tree, &opts).unwrap();
    let want1 = expected(tree);
    publish("r1");
    generate(tree, &GenOptions { release: 2, ..opts }).unwrap();
    let want2 = expected(tree);
    publish("r2");
    (want1, want2)
}

/// `publish TREE --repo REPO --release NAME --prefix PREFIX`, through `run`.
#[track_caller]
fn publish_for(run: Run, tree: &Path, repo: &Path, name: &str, prefix: &Path, extra: &[&str]) -> Value {
    let mut a = args!["publish", tree, "--repo", repo, "--release", name, "--prefix", prefix, "--json"];
    a.extend(extra.iter().map(OsString::from));
    run(a).ok().json()
}

/// The content of file `i` of a marker tree of release `name` (it names the release all along).
fn marker_content(name: &str, i: usize) -> Vec<u8> {
    let size = [10, 3000, 20_000, 70_000, 150_000][i % 5];
    let unit = format!("{name}:{i};");
    let mut v = unit.repeat(size / unit.len() + 1).into_bytes();
    v.truncate(size);
    v
}

const MARKER_FILES: [&str; 5] = ["f0", "lib/f1", "lib/deep/f2", "share/f3", "share/f4"];

/// A small tree whose `MARKER` holds `name` and whose other files embed it.
fn marker_tree(dir: &Path, name: &str) {
    fs::create_dir_all(dir.join("ups_db")).unwrap();
    write(&dir.join("MARKER"), name.as_bytes(), 0o644);
    for (i, f) in MARKER_FILES.iter().enumerate() {
        write(&dir.join(f), &marker_content(name, i), 0o644);
    }
}

/// Publishes a marker tree per name into `repo` (built for `prefix`).
fn marker_releases(t: &TestDir, repo: &Path, prefix: &Path, names: &[&str]) {
    for n in names {
        let tree = t.join(format!("tree-{n}"));
        marker_tree(&tree, n);
        publish_for(&qpack, &tree, repo, n, prefix, &[]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Round trip

/// install r1 + switch, install r2 + switch, rollback: the tree seen through the prefix is each time exactly the
/// source; `status` reports the active and previous releases and the three switches.
fn round_trip(t: &TestDir, run: Run, as_nobody: bool) {
    let w = t.join("w");
    fs::create_dir(&w).unwrap();
    if as_nobody {
        chown_tree(&w, 65534);
    }
    let (tree, repo, nd_prefix) = (w.join("tree"), w.join("repo"), w.join("n1-stack"));
    let (want1, want2) = generated_pair(&tree, 8 << 20, |name| {
        if as_nobody {
            chown_tree(&tree, 65534);
        }
        publish_for(run, &tree, &repo, name, &nd_prefix, &[]);
    });
    // A read-only directory and read-only files, installed by an ordinary user when as_nobody.
    assert!(want1.values().any(|n| n.kind == Kind::Dir && n.mode == 0o555), "the tree has no 0555 directory");
    assert!(want1.values().any(|n| matches!(n.kind, Kind::File(..)) && n.mode == 0o444));
    let (id1, id2) = (id_of(&repo, "r1"), id_of(&repo, "r2"));

    let nd = Nd::init(run, &w, "n1", &[]);
    assert_eq!(nd.prefix, nd_prefix);
    let st = nd.status();
    assert_eq!(st["active"], Value::Null, "{st:#}");
    let r = nd.install(run, "r1", &repo);
    assert_eq!((r["release"].as_str(), r["id"].as_str()), (Some("r1"), Some(id1.as_str())), "{r:#}");
    assert_eq!((r["resumed"].as_bool(), r["already_installed"].as_bool()), (Some(false), Some(false)), "{r:#}");
    assert!(num(&r, "chunks_fetched") > 0 && num(&r, "files") > 1000, "{r:#}");
    assert!(!nd.prefix.exists(), "install must not activate");
    nd.switch(run, "r1").ok();
    assert_eq!(nd.target(), nd.release_dir(&id1));
    assert_matches(&want1, &nd.seen(), "r1");
    if as_nobody {
        let md = fs::metadata(nd.release_dir(&id1)).unwrap();
        assert_eq!(md.uid(), 65534, "the install did not run as the ordinary user");
    }
    // Installing again does nothing.
    let again = nd.install(run, "r1", &repo);
    assert_eq!(again["already_installed"], true, "{again:#}");

    let r = nd.install(run, "r2", &repo);
    assert!(num(&r, "files_linked") > 0, "{r:#}");
    // Installed side by side, not active yet.
    assert_matches(&want1, &nd.seen(), "r1");
    nd.switch(run, "r2").ok().says(&["r1 -> r2"]);
    assert_eq!(nd.target(), nd.release_dir(&id2));
    assert_matches(&want2, &nd.seen(), "r2");
    // r1's tree is intact next to it.
    assert_matches(&want1, &nd.release_dir(&id1), "r1");

    run(args!["rollback", "--node", &nd.root]).ok().says(&["rollback", "r2 -> r1"]);
    assert_eq!(nd.target(), nd.release_dir(&id1));
    assert_matches(&want1, &nd.seen(), "r1");
    assert_matches(&want2, &nd.release_dir(&id2), "r2");

    let st = nd.status();
    assert_eq!((st["active"].as_str(), st["active_id"].as_str()), (Some("r1"), Some(id1.as_str())), "{st:#}");
    assert_eq!(st["node"], "n1");
    let rows = st["installed"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{st:#}");
    for row in rows {
        let is1 = row["id"] == id1.as_str();
        assert_eq!((row["active"].as_bool(), row["previous"].as_bool()), (Some(is1), Some(!is1)), "{st:#}");
        assert!(num(row, "files") > 1000 && num(row, "bytes") > 4 << 20, "{st:#}");
    }
    assert_eq!(st["partial"], serde_json::json!([]), "{st:#}");
    let h = st["history"].as_array().unwrap();
    assert_eq!(h.len(), 3, "{st:#}");
    let want = [("switch", None, &id1, "r1"), ("switch", Some(&id1), &id2, "r2"), ("rollback", Some(&id2), &id1, "r1")];
    // The history names the real user (from the uid, not $USER, which setpriv leaves as it was).
    let me = String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let user = if as_nobody { "nobody".to_string() } else { me.trim().to_string() };
    for (e, (action, from, to, to_name)) in h.iter().zip(want) {
        assert_eq!(e["action"], action, "{e:#}");
        assert_eq!(e["from"].as_str(), from.map(|s| s.as_str()), "{e:#}");
        assert_eq!(e["to"].as_str(), Some(to.as_str()), "{e:#}");
        assert_eq!(e["to_name"], to_name, "{e:#}");
        assert_eq!(e["user"].as_str(), Some(user.as_str()), "{e:#}");
        assert!(e["time"].as_i64().unwrap() > 1_700_000_000, "{e:#}");
        assert_eq!(e["post_switch_status"], Value::Null, "no hook configured: {e:#}");
    }
    assert_eq!(h[1]["from_name"], "r1");
    // The human form says the same.
    qpack(args!["status", "--node", &nd.root]).ok().says(&["n1", "r1", "r2", "rollback"]);
}

#[test]
fn install_switch_rollback_round_trip() {
    let t = TestDir::new();
    round_trip(&t, &qpack, false);
}

#[test]
fn install_switch_rollback_round_trip_as_an_ordinary_user() {
    // As root permission checks are bypassed: run every command as nobody (setpriv) on directories nobody owns,
    // so that read-only directories and files are exercised for real.
    let t = TestDir::new();
    let Some(run) = unprivileged(&t) else { return };
    round_trip(&t, &*run, is_root());
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Hardlink sharing

/// Distinct inodes below `dir` with their allocated bytes (`du`): every directory and file counted once.
fn disk_use(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let md = fs::symlink_metadata(e.path()).unwrap();
            if seen.insert((md.dev(), md.ino())) {
                total += md.blocks() * 512;
            }
            if md.is_dir() {
                todo.push(e.path());
            }
        }
    }
    total
}

fn dev_ino(p: &Path) -> (u64, u64) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (md.dev(), md.ino())
}

#[test]
fn release_2_shares_unchanged_product_files_with_release_1() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    let (s1, s2) = generated_pair(&tree, 8 << 20, |name| {
        publish_for(&qpack, &tree, &repo, name, &nd.prefix, &[]);
    });
    let (id1, id2) = (id_of(&repo, "r1"), id_of(&repo, "r2"));
    nd.install(&qpack, "r1", &repo);
    let du1 = disk_use(&nd.releases());
    let r = nd.install(&qpack, "r2", &repo);
    let du2 = disk_use(&nd.releases());
    let (d1, d2) = (nd.release_dir(&id1), nd.release_dir(&id2));
    assert_matches(&s2, &d2, "r2");
    assert_matches(&s1, &d1, "r1");

    let (mut shared, mut changed, mut base) = (0u64, 0u64, 0u64);
    let mut shared_inodes = HashSet::new();
    for (p, n2) in &s2 {
        if !matches!(n2.kind, Kind::File(..)) {
            continue;
        }
        let path = crate::util::p(p);
        let ino2 = dev_ino(&d2.join(path));
        let same_file = s1.get(p).is_some_and(|n1| n1.kind == n2.kind && n1.mode == n2.mode && n1.mtime == n2.mtime);
        if in_product(p) {
            if same_file {
                // Unchanged: one inode for both releases.
                assert_eq!(dev_ino(&d1.join(path)), ino2, "{} is not shared", path.display());
                shared += 1;
                shared_inodes.insert(ino2);
            } else {
                changed += 1;
                if s1.contains_key(p) {
                    assert_ne!(dev_ino(&d1.join(path)), ino2, "changed {} is shared", path.display());
                }
            }
        } else {
            // Base files (ups_db/, site/, eups/, …) are mutable: always a copy of their own.
            base += 1;
            if s1.contains_key(p) {
                assert_ne!(dev_ino(&d1.join(path)), ino2, "base file {} is shared", path.display());
            }
        }
    }
    assert!(shared > 1000 && changed > 10 && base > 10, "shared {shared}, changed {changed}, base {base}");
    // Source hardlink pairs stay pairs, and files merely identical to another are not merged into one inode:
    // the shared files are as many distinct inodes as names.
    let pairs = s2.values().filter(|n| matches!(n.kind, Kind::File(..))).count() as u64
        - s2.values().filter(|n| matches!(n.kind, Kind::File(..))).map(|n| n.ino).collect::<HashSet<_>>().len() as u64;
    assert!(shared_inodes.len() as u64 >= shared - pairs, "{} inodes for {shared} shared files", shared_inodes.len());
    assert!(num(&r, "files_linked") >= shared - pairs, "{r:#}");

    // Disk use grows by the changed files (and the base and directories), far less than a second copy.
    let growth = du2 - du1;
    eprintln!("disk use: r1 {du1} bytes, + r2 {growth} bytes ({:.0}%)", growth as f64 * 100.0 / du1 as f64);
    assert!(growth * 2 < du1, "installing r2 grew disk use by {growth} bytes, r1 alone uses {du1}");
    let fresh: u64 = s2
        .iter()
        .filter(|(p, n)| {
            matches!(n.kind, Kind::File(..))
                && !(in_product(p)
                    && s1.get(*p).is_some_and(|n1| n1.kind == n.kind && n1.mode == n.mode && n1.mtime == n.mtime))
        })
        .map(|(_, n)| if let Kind::File(size, _) = n.kind { size.div_ceil(4096) * 4096 } else { 0 })
        .sum();
    let dirs = s2.values().filter(|n| n.kind == Kind::Dir).count() as u64;
    assert!(growth <= fresh + dirs * 4096 + (256 << 10), "growth {growth} > changed files {fresh} + {dirs} dirs");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Atomic switch under readers (RELIABILITY 32)

/// Reads `rel` relative to the directory `dir` (openat: no second resolution of the prefix).
fn read_at(dir: &fs::File, rel: &str) -> std::io::Result<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut data = Vec::new();
    fs::File::from(fd).read_to_end(&mut data)?;
    Ok(data)
}

#[derive(Default, Debug)]
struct ReadLog {
    iterations: u64,
    seen: BTreeMap<String, u64>,
    errors: Vec<String>,
}

/// Reads the marker tree through `prefix` until `stop`: see the comments for what each read checks.
fn reader(prefix: PathBuf, names: [&'static str; 2], stop: Arc<AtomicBool>, progress: Arc<AtomicU64>) -> ReadLog {
    let mut log = ReadLog::default();
    let content: HashMap<(&str, usize), Vec<u8>> =
        names.iter().flat_map(|&n| (0..MARKER_FILES.len()).map(move |i| ((n, i), marker_content(n, i)))).collect();
    let fail = |log: &mut ReadLog, what: String| {
        if log.errors.len() < 20 {
            log.errors.push(what);
        } else {
            log.errors[19] = format!("… and more, last: {what}");
        }
    };
    while !stop.load(Ordering::Relaxed) {
        log.iterations += 1;
        // The prefix is opened once per iteration and the marker and every other file are opened relative to
        // that directory fd (openat). The open resolves the symlink exactly once, so everything read in the
        // iteration comes from the one release tree the prefix named at that instant, whatever the switches do
        // meanwhile: that is what makes "the files match the marker" a valid check (two reads by full path
        // could legitimately straddle a switch). Canonicalizing the prefix once per iteration would pin the tree
        // too, but as a test-side resolution; the fd is what a process that cd'd into the prefix holds.
        match fs::File::open(&prefix) {
            Err(e) => fail(&mut log, format!("open {}: {e}", prefix.display())),
            Ok(dir) => match read_at(&dir, "MARKER") {
                Err(e) => fail(&mut log, format!("read MARKER: {e}")),
                Ok(m) => {
                    let m = String::from_utf8_lossy(&m).into_owned();
                    let Some(&m) = names.iter().find(|&&n| n == m) else {
                        fail(&mut log, format!("MARKER holds {m:?}"));
                        continue;
                    };
                    *log.seen.entry(m.to_string()).or_default() += 1;
                    for (i, f) in MARKER_FILES.iter().enumerate() {
                        match read_at(&dir, f) {
                            Ok(d) if d == content[&(m, i)] => {}
                            Ok(d) => fail(&mut log, format!("{f}: {} bytes not of {m} (the marker's)", d.len())),
                            Err(e) => fail(&mut log, format!("{f} (marker {m}): {e}")),
                        }
                    }
                }
            },
        }
        // Every open by full path resolves the prefix anew, while it is being replaced: it must never fail
        // (ENOENT in a window between two releases) and must give a whole file of one release or the other.
        for (i, f) in MARKER_FILES.iter().enumerate() {
            match fs::read(prefix.join(f)) {
                Ok(d) if names.iter().any(|&n| d == content[&(n, i)]) => {}
                Ok(d) => fail(&mut log, format!("{f} by path: {} bytes of neither release", d.len())),
                Err(e) => fail(&mut log, format!("{f} by path: {e}")),
            }
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    log
}

#[test]
fn readers_never_see_a_missing_or_mixed_tree_while_switching() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    marker_releases(&t, &repo, &nd.prefix, &["rA", "rB"]);
    nd.install(&qpack, "rA", &repo);
    nd.install(&qpack, "rB", &repo);
    nd.switch(&qpack, "rA").ok();

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (prefix, stop, progress) = (nd.prefix.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || reader(prefix, ["rA", "rB"], stop, progress))
        })
        .collect();
    // Mostly through the library (fast, so the flips are dense), one in ten through the CLI.
    let node = qpack::node::Node::open(&nd.root).unwrap();
    let opts = qpack::node::SwitchOptions::default();
    const SWITCHES: usize = 300;
    for i in 0..SWITCHES {
        let to = if i % 2 == 0 { "rB" } else { "rA" };
        if i % 10 == 9 {
            nd.switch(&qpack, to).ok();
        } else {
            let r = qpack::node::switch(&node, to, &opts).unwrap();
            assert!(r.entry.is_some(), "switch {i} to {to} did nothing");
        }
        if i % 25 == 0 {
            // Let the readers run between flips now and then, so that both releases are read (a liveness bound,
            // not a timing assertion).
            let at = progress.load(Ordering::Relaxed);
            let t0 = Instant::now();
            while progress.load(Ordering::Relaxed) < at + 2 && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ReadLog> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!("{SWITCHES} switches; readers: {logs:?}");
    for log in &logs {
        assert!(log.errors.is_empty(), "a reader saw a missing or mixed tree: {:#?}", log.errors);
        assert!(log.iterations > 0);
    }
    for n in ["rA", "rB"] {
        assert!(logs.iter().any(|l| l.seen.get(n).is_some_and(|&c| c > 0)), "{n} was never read: {logs:?}");
    }
    // Every switch is in the history, and the prefix names the last one.
    assert_eq!(nd.status()["history"].as_array().unwrap().len(), SWITCHES + 1);
    assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), b"rA");
    // No temporary symlink is left next to the prefix.
    let stray = stray_temp_links(t.path());
    assert!(stray.is_empty(), "{stray:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Refusals and bad input (RELIABILITY 34, 35, 39, 40)

#[test]
fn switch_refuses_a_release_not_installed_or_built_for_another_prefix() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    marker_releases(&t, &repo, &nd.prefix, &["r1", "r2"]);
    // Built elsewhere: same content as r1, another recorded prefix.
    publish_for(&qpack, &t.join("tree-r1"), &repo, "moved", Path::new("/opt/elsewhere/stack"), &[]);
    // A release with a setuid file: fetched into the node's repository by the refused install below, never
    // installed.
    let suid_tree = t.join("tree-suid");
    marker_tree(&suid_tree, "suid");
    chmod(&suid_tree.join("f0"), 0o4755);
    publish_for(&qpack, &suid_tree, &repo, "suid", &nd.prefix, &["--allow-setuid"]);

    // Nothing active yet: a switch to an unknown release creates no prefix.
    nd.switch(&qpack, "r1").fails();
    assert!(fs::symlink_metadata(&nd.prefix).is_err(), "a refused switch created the prefix");
    nd.install(&qpack, "r1", &repo);
    nd.switch(&qpack, "r1").ok();
    let before = nd.target();

    // Not in the node at all; in the publisher's repository only; fetched but refused at install.
    nd.switch(&qpack, "nosuch").fails().says(&["nosuch"]);
    nd.switch(&qpack, "r2").fails().says(&["r2"]);
    qpack(args!["install", "suid", "--node", &nd.root, "--from", &repo]).fails().says(&["setuid"]);
    assert_eq!(nd.listing(), [id_of(&repo, "r1")], "the refused install wrote under releases/");
    nd.switch(&qpack, "suid").fails().says(&["not installed", "qpack install"]);
    assert_eq!(nd.target(), before);
    assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), b"r1");
    // A release directory removed behind qpack's back (or never completed) is not switched to either.
    nd.install(&qpack, "r2", &repo);
    let id2 = id_of(&repo, "r2");
    fs::rename(nd.release_dir(&id2), nd.releases().join(format!(".partial-{id2}"))).unwrap();
    nd.switch(&qpack, "r2").fails().says(&["not installed"]);
    assert_eq!(nd.target(), before);

    // Built for another prefix: refused, saying why and what to do; accepted with --allow-relocate.
    nd.install(&qpack, "moved", &repo);
    nd.switch(&qpack, "moved").fails().says(&["/opt/elsewhere/stack", "--allow-relocate"]);
    assert_eq!(nd.target(), before);
    qpack(args!["switch", "moved", "--node", &nd.root, "--allow-relocate"]).ok();
    assert_eq!(nd.target(), nd.release_dir(&id_of(&repo, "moved")));
    // The refused attempts left no history.
    let h = nd.status()["history"].as_array().unwrap().clone();
    assert_eq!(h.len(), 2, "{h:#?}");
}

/// Every path below `dir` (for "nothing was written" checks), not descending into `skip`.
fn listing(dir: &Path, skip: &[&Path]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            out.push(path.clone());
            if e.file_type().unwrap().is_dir() && !skip.contains(&path.as_path()) {
                todo.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_releases_are_refused_before_anything_is_written() {
    let t = TestDir::new();
    let from = t.join("evil-repo");
    qpack(args!["init", "--repo", &from]).ok();
    let repo = Repository::open(&from).unwrap();
    let outside = t.join("outside");
    fs::create_dir(&outside).unwrap();
    let out_abs = outside.to_str().unwrap().as_bytes().to_vec();
    let passwd = [out_abs.as_slice(), b"/passwd"].concat();
    let product = || PartKind::Product { product: "p".into(), version: "1.0".into() };
    type Build = Box<dyn Fn(&Transaction) -> Vec<PartRef>>;
    let (oa, ob, pw) = (out_abs.clone(), out_abs.clone(), passwd.clone());
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "dotdot",
            Box::new(|x| vec![part(x, b"", PartKind::Base, vec![dir(b""), file(x, b"../x", b"evil")])]),
            "'..' component",
        ),
        (
            "deep-dotdot",
            Box::new(|x| vec![part(x, b"", PartKind::Base, vec![dir(b""), dir(b"a"), file(x, b"a/../../x", b"evil")])]),
            "'..' component",
        ),
        (
            "absolute",
            Box::new(move |x| vec![part(x, b"", PartKind::Base, vec![dir(b""), file(x, &pw, b"evil")])]),
            "absolute path",
        ),
        (
            "through-symlink",
            Box::new(move |x| {
                vec![part(x, b"", PartKind::Base, vec![dir(b""), link(b"d", &oa), file(x, b"d/passwd", b"evil")])]
            }),
            "parent is not a directory",
        ),
        (
            "symlink-then-dir",
            Box::new(move |x| vec![part(x, b"", PartKind::Base, vec![dir(b""), link(b"d", &ob), dir(b"d")])]),
            "duplicated",
        ),
        (
            "hardlink-abs",
            Box::new(|x| vec![part(x, b"", PartKind::Base, vec![dir(b""), hard(b"h", b"/etc/shadow")])]),
            "absolute path",
        ),
        (
            // Valid manifests, hostile together: the base makes the product's parent a symlink out of the tree.
            "mount-under-symlink",
            Box::new(move |x| {
                vec![
                    part(x, b"", PartKind::Base, vec![dir(b""), link(b"Linux64", &out_abs)]),
                    part(x, b"Linux64/p/1.0", product(), vec![dir(b""), file(x, b"x", b"evil")]),
                ]
            }),
            "not a directory",
        ),
        (
            "setuid",
            Box::new(|x| {
                let mut f = file(x, b"su", b"#!/bin/sh\n");
                f.mode = 0o4755;
                vec![part(x, b"", PartKind::Base, vec![dir(b""), f])]
            }),
            "setuid",
        ),
    ];
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    // A release is active: it must stay so, untouched.
    let good = t.join("tree-good");
    marker_tree(&good, "good");
    publish(&good, &from, "good", &[]);
    qpack(args!["install", "good", "--node", &nd.root, "--from", &from]).ok();
    qpack(args!["switch", "good", "--node", &nd.root, "--allow-relocate"]).ok();
    let target = nd.target();
    let repo_dir = nd.root.join("repo");
    let before = listing(t.path(), &[&from, &repo_dir]);
    for (name, build, needle) in cases {
        forge(&repo, name, build);
        let out = qpack(args!["install", name, "--node", &nd.root, "--from", &from]).fails().says(&[needle]);
        // Nothing under releases/ (no partial tree), nothing outside the node's repository, nothing outside.
        assert_eq!(nd.partials(), Vec::<String>::new(), "{name}: {}", out.dump());
        assert_eq!(listing(t.path(), &[&from, &repo_dir]), before, "{name}: something was written");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{name} wrote outside");
        assert!(!t.path().parent().unwrap().join("x").exists());
        assert_eq!(nd.target(), target);
        nd.switch(&qpack, name).fails();
    }
    assert_installed(&good, &nd.seen());
    // What was fetched of them is gone with the next gc.
    qpack(args!["gc", "--node", &nd.root, "--keep", "0"]).ok();
    qpack(args!["verify", "--repo", &repo_dir]).ok();
    assert_installed(&good, &nd.seen());
}

#[test]
fn a_hostile_partial_tree_is_never_followed_when_resuming() {
    // An interrupted install's directory where someone put symlinks out of the node root, at a directory's and
    // at a file's place: the resumed install replaces them, writing nothing outside.
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    marker_releases(&t, &repo, &nd.prefix, &["r1"]);
    let id = id_of(&repo, "r1");
    let outside = t.join("outside");
    fs::create_dir_all(outside.join("lib")).unwrap();
    let partial = nd.releases().join(format!(".partial-{id}"));
    fs::create_dir(&partial).unwrap();
    symlink(&outside, &partial.join("share"));
    symlink(outside.join("f0"), &partial.join("f0"));
    symlink(outside.join("MARKER"), &partial.join("MARKER"));
    let r = nd.install(&qpack, "r1", &repo);
    assert_eq!(r["resumed"], true, "{r:#}");
    assert_eq!(listing(&outside, &[]), vec![outside.join("lib")], "the install wrote outside the node root");
    assert_installed(&t.join("tree-r1"), &nd.release_dir(&id));
    // The partial directory itself replaced by a symlink out of the node root.
    nd.switch(&qpack, "r1").ok();
    let tree2 = t.join("tree-r2");
    marker_tree(&tree2, "r2");
    publish_for(&qpack, &tree2, &repo, "r2", &nd.prefix, &[]);
    let id2 = id_of(&repo, "r2");
    symlink(&outside, &nd.releases().join(format!(".partial-{id2}")));
    let r = nd.install(&qpack, "r2", &repo);
    assert_eq!(r["resumed"], false, "{r:#}");
    assert_eq!(listing(&outside, &[]), vec![outside.join("lib")], "the install wrote outside the node root");
    assert_installed(&tree2, &nd.release_dir(&id2));
}

#[test]
fn node_init_refuses_a_prefix_it_cannot_own() {
    let t = TestDir::new();
    // A real directory (someone's install) is never taken over.
    let real = t.join("stack");
    write(&real.join("keep.txt"), b"mine\n", 0o644);
    qpack(args!["node", "init", t.join("n1"), "--prefix", &real]).fails().says(&["not a symlink"]);
    assert!(!t.join("n1").join("node.toml").exists());
    assert_eq!(fs::read(real.join("keep.txt")).unwrap(), b"mine\n");
    // A regular file neither.
    write(&t.join("file"), b"x", 0o644);
    qpack(args!["node", "init", t.join("n2"), "--prefix", t.join("file")]).fails().says(&["not a symlink"]);
    // A missing parent directory.
    qpack(args!["node", "init", t.join("n3"), "--prefix", t.join("no/such/stack")]).fails().says(&["parent"]);
    // An existing symlink is fine (qpack replaces it on switch), and a node cannot be made twice.
    symlink(&real, &t.join("old-stack"));
    qpack(args!["node", "init", t.join("n4"), "--prefix", t.join("old-stack")]).ok();
    qpack(args!["node", "init", t.join("n4"), "--prefix", t.join("other")]).fails().says(&["already"]);
    // Commands on a directory that is not a node say so.
    qpack(args!["status", "--node", t.join("n1")]).fails().says(&["not a qpack node"]);
}

#[test]
fn remove_gc_and_rollback_keep_the_active_and_previous_releases() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    let names = ["r1", "r2", "r3", "r4"];
    marker_releases(&t, &repo, &nd.prefix, &names);
    let id: HashMap<&str, String> = names.iter().map(|n| (*n, id_of(&repo, n))).collect();
    qpack(args!["rollback", "--node", &nd.root]).fails().says(&["no previous release"]);
    for n in names {
        nd.install(&qpack, n, &repo);
    }
    nd.switch(&qpack, "r1").ok();
    // The first switch had nothing before it.
    qpack(args!["rollback", "--node", &nd.root]).fails().says(&["no previous release"]);
    nd.switch(&qpack, "r2").ok();
    nd.switch(&qpack, "r3").ok();
    // Switching to the active release does nothing (and records nothing).
    nd.switch(&qpack, "r3").ok().says(&["already active"]);
    assert_eq!(nd.status()["history"].as_array().unwrap().len(), 3);
    assert_eq!(nd.previous().as_deref(), Some(id["r2"].as_str()));

    qpack(args!["remove", "r3", "--node", &nd.root]).fails().says(&["active"]);
    qpack(args!["remove", "r2", "--node", &nd.root]).fails().says(&["previous"]);
    assert!(nd.release_dir(&id["r3"]).is_dir() && nd.release_dir(&id["r2"]).is_dir());
    qpack(args!["remove", "r1", "--node", &nd.root]).ok();
    assert!(!nd.release_dir(&id["r1"]).exists());
    qpack(args!["remove", "r1", "--node", &nd.root]).fails().says(&["not installed"]);
    nd.install(&qpack, "r1", &repo);
    // A removal killed midway left a tree out of sight (with a read-only directory): gc takes it away, and a
    // later removal of the same release is not blocked by it.
    let stale = nd.releases().join(format!(".remove-{}", id["r4"]));
    write(&stale.join("ro/f"), b"x", 0o444);
    chmod(&stale.join("ro"), 0o555);

    // gc --keep 0: everything but the active and the previous release goes, with the objects only they used.
    let g = qpack(args!["gc", "--node", &nd.root, "--keep", "0", "--json"]).ok().json();
    let mut removed: Vec<&str> = g["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    removed.sort();
    assert_eq!(removed, ["r1", "r4"], "{g:#}");
    let mut want = vec![id["r2"].clone(), id["r3"].clone()];
    want.sort();
    assert_eq!(nd.installed(), want);
    assert_eq!(nd.listing(), want, "gc left something under releases/");
    qpack(args!["verify", "--repo", nd.root.join("repo")]).ok();
    // r1 can come back (its objects are fetched again).
    let r = nd.install(&qpack, "r1", &repo);
    assert!(num(&r, "chunks_fetched") > 0, "{r:#}");
    assert_installed(&t.join("tree-r1"), &nd.release_dir(&id["r1"]));

    // Rollback: back to r2, r3 becomes the previous release and is protected in turn.
    qpack(args!["rollback", "--node", &nd.root]).ok();
    assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), b"r2");
    assert_eq!(nd.previous().as_deref(), Some(id["r3"].as_str()));
    qpack(args!["remove", "r3", "--node", &nd.root]).fails().says(&["previous"]);
    let g = qpack(args!["gc", "--node", &nd.root, "--keep", "0", "--json"]).ok().json();
    assert_eq!(g["removed"], serde_json::json!(["r1"]), "{g:#}");

    // A switch killed after its flip but before its history line: the prefix names r3, the history still says
    // r2 is active. r2 is then the previous release, kept, and what rollback returns to.
    let tmp = t.join(".n-stack.flip");
    symlink(nd.release_dir(&id["r3"]), &tmp);
    fs::rename(&tmp, &nd.prefix).unwrap();
    assert_eq!(nd.previous().as_deref(), Some(id["r2"].as_str()));
    qpack(args!["remove", "r2", "--node", &nd.root]).fails().says(&["previous"]);
    let g = qpack(args!["gc", "--node", &nd.root, "--keep", "0", "--json"]).ok().json();
    assert_eq!(g["removed"], serde_json::json!([]), "{g:#}");
    qpack(args!["rollback", "--node", &nd.root]).ok();
    assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), b"r2");

    // The previous release deleted behind qpack's back: rollback refuses, saying so, and changes nothing.
    remove_tree(&nd.release_dir(&id["r3"]));
    qpack(args!["rollback", "--node", &nd.root]).fails().says(&["no longer installed"]);
    assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), b"r2");
}

// ---------------------------------------------------------------------------------------------------------------
// 5. kill -9 (RELIABILITY 16, 26, 31)

#[test]
fn killed_install_is_all_or_nothing_and_the_next_one_resumes() {
    let seed: u64 = std::env::var("QPACK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0003);
    let mut rng = Rng::new(seed);
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    // An older release (created in an earlier second than r1 and r2), for gc to remove at the end.
    marker_releases(&t, &repo, &nd.prefix, &["old"]);
    let old_created = qpack::store::now_secs();
    while qpack::store::now_secs() == old_created {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (want1, want2) = generated_pair(&tree, 16 << 20, |name| {
        publish_for(&qpack, &tree, &repo, name, &nd.prefix, &[]);
    });
    let (id1, id2) = (id_of(&repo, "r1"), id_of(&repo, "r2"));
    let mut outcomes = Vec::new();
    // Rounds 0-2: r1 on a node with nothing installed (round 0 also kills the fetch); rounds 3-4: r2 next to
    // the active r1 (mostly hardlinks, which must leave r1 untouched).
    for round in 0..5 {
        let (name, id, want) = if round < 3 { ("r1", &id1, &want1) } else { ("r2", &id2, &want2) };
        let partial = nd.releases().join(format!(".partial-{id}"));
        let mut c = cmd();
        c.args(args!["install", name, "--node", &nd.root, "--from", &repo]).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        // Even rounds kill at a random time after the start, odd ones at a random time after the partial tree
        // appeared (mid-materialization).
        let delay = if round % 2 == 0 {
            rng.range(20, 700)
        } else {
            let t0 = Instant::now();
            while !partial.exists() && child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(1));
            }
            rng.range(0, 250)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();

        // All or nothing: a release directory only for a complete tree.
        let installed = nd.release_dir(id).exists();
        let had_partial = partial.exists();
        let what = format!("round {round} (seed {seed}, kill after {delay} ms)");
        if installed {
            assert!(!had_partial, "{what}: both the release and its partial tree exist");
            assert_matches(want, &nd.release_dir(id), name);
        } else {
            nd.switch(&qpack, name).fails();
        }
        if round >= 3 {
            assert_eq!(nd.target(), nd.release_dir(&id1), "{what}");
            assert_matches(&want1, &nd.seen(), "r1");
        }
        // The next install completes, keeping what the killed one wrote.
        let r = nd.install(&qpack, name, &repo);
        assert_eq!(r["already_installed"], installed, "{what}: {r:#}");
        assert_eq!(r["resumed"], had_partial, "{what}: {r:#}");
        assert!(!partial.exists(), "{what}");
        assert_matches(want, &nd.release_dir(id), name);
        outcomes.push(format!(
            "{delay}ms:{}",
            if installed {
                "installed"
            } else if had_partial {
                "partial"
            } else if finished {
                "done?"
            } else {
                "nothing"
            }
        ));
        match round {
            2 => {
                nd.switch(&qpack, "r1").ok();
            }
            4 => {}
            _ => {
                qpack(args!["remove", name, "--node", &nd.root]).ok();
            }
        }
    }
    eprintln!("install kill loop (seed {seed}): {}", outcomes.join(" "));
    qpack(args!["verify", "--repo", nd.root.join("repo")]).ok();

    // gc while an install runs (RELIABILITY 16): serialized by the node lock, it never takes what the install
    // needs; the install completes and is kept (one of the two newest), the active release too, the old one goes.
    nd.install(&qpack, "old", &repo);
    qpack(args!["remove", "r2", "--node", &nd.root]).ok();
    let mut c = cmd();
    c.args(args!["install", "r2", "--node", &nd.root, "--from", &repo]).stdout(Stdio::null()).stderr(Stdio::piped());
    let install = c.spawn().unwrap();
    let partial = nd.releases().join(format!(".partial-{id2}"));
    let t0 = Instant::now();
    while !partial.exists() && !nd.release_dir(&id2).exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let g = qpack(args!["gc", "--node", &nd.root, "--keep", "2", "--json"]).ok().json();
    let o = install.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(g["removed"], serde_json::json!(["old"]), "{g:#}");
    assert!(!nd.release_dir(&id_of(&repo, "old")).exists());
    assert_matches(&want2, &nd.release_dir(&id2), "r2");
    assert_matches(&want1, &nd.seen(), "r1");
    qpack(args!["verify", "--repo", nd.root.join("repo")]).ok();
}

#[test]
fn killed_switch_leaves_the_prefix_on_one_release() {
    let seed: u64 = std::env::var("QPACK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0004);
    let mut rng = Rng::new(seed);
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    marker_releases(&t, &repo, &nd.prefix, &["rA", "rB"]);
    nd.install(&qpack, "rA", &repo);
    nd.install(&qpack, "rB", &repo);
    nd.switch(&qpack, "rA").ok();
    nd.switch(&qpack, "rB").ok();
    let dirs: HashMap<PathBuf, &str> =
        [(nd.release_dir(&id_of(&repo, "rA")), "rA"), (nd.release_dir(&id_of(&repo, "rB")), "rB")].into();
    let ids: HashSet<String> = ["rA", "rB"].iter().map(|n| id_of(&repo, n)).collect();
    let mut kinds = BTreeMap::new();
    for i in 0..30 {
        let to = if i % 2 == 0 { "rA" } else { "rB" };
        let mut c = cmd();
        c.args(args!["switch", to, "--node", &nd.root]).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let delay = rng.range(0, 25);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let st = child.wait().unwrap();
        *kinds.entry(if st.success() { "completed" } else { "killed" }).or_insert(0) += 1;
        // The prefix names one of the two releases, never nothing, and reads through it work.
        let target = nd.target();
        let name =
            dirs.get(&target).unwrap_or_else(|| panic!("round {i} (seed {seed}): prefix -> {}", target.display()));
        assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), name.as_bytes(), "round {i}");
        // The release it replaced (or was about to replace) is the previous one: kept, and rollback's target.
        let st = nd.status();
        let active = st["active_id"].as_str().unwrap().to_string();
        let prev = nd.previous().unwrap_or_else(|| panic!("round {i}: no previous release: {st:#}"));
        assert!(ids.contains(&prev) && prev != active, "round {i}: active {active}, previous {prev}");
    }
    eprintln!("switch kill loop (seed {seed}): {kinds:?}");
    // A torn last history line (what a crash mid-append leaves) is skipped and does not swallow the next one.
    let hist = nd.root.join("history.jsonl");
    let n_before = nd.status()["history"].as_array().unwrap().len();
    fs::OpenOptions::new().append(true).open(&hist).unwrap().write_all(b"{\"time\":17000").unwrap();
    // And the temporary symlink of a switch killed between its symlink and its rename.
    symlink(nd.release_dir(&id_of(&repo, "rA")), &t.join(".n-stack.qpack-999999"));
    let now = if nd.target() == nd.release_dir(&id_of(&repo, "rA")) { "rB" } else { "rA" };
    nd.switch(&qpack, now).ok();
    let h = nd.status()["history"].as_array().unwrap().clone();
    assert_eq!(h.len(), n_before + 1, "{h:#?}");
    assert_eq!(h.last().unwrap()["to_name"], now);
    // A completed switch cleans the temporary symlinks of killed ones.
    let stray = stray_temp_links(t.path());
    assert!(stray.is_empty(), "{stray:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Concurrent switches (RELIABILITY 33)

#[test]
fn concurrent_switches_are_serialized_and_both_recorded() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    marker_releases(&t, &repo, &nd.prefix, &["rA", "rB", "rC"]);
    for n in ["rA", "rB", "rC"] {
        nd.install(&qpack, n, &repo);
    }
    let id: HashMap<String, &str> = ["rA", "rB", "rC"].iter().map(|n| (id_of(&repo, n), *n)).collect();
    let mut ends = BTreeMap::new();
    for round in 0..5 {
        nd.switch(&qpack, "rC").ok();
        let before = nd.status()["history"].as_array().unwrap().len();
        let spawn = |to: &str| {
            let mut c = cmd();
            c.args(args!["switch", to, "--node", &nd.root]).stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        };
        let (a, b) = (spawn("rA"), spawn("rB"));
        for (to, child) in [("rA", a), ("rB", b)] {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "round {round}: switch {to} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let h = nd.status()["history"].as_array().unwrap().clone();
        assert_eq!(h.len(), before + 2, "round {round}: {h:#?}");
        let (first, second) = (&h[before], &h[before + 1]);
        let name = |v: &Value| id[v.as_str().unwrap()];
        let mut tos = [name(&first["to"]), name(&second["to"])];
        tos.sort();
        assert_eq!(tos, ["rA", "rB"], "round {round}");
        // One after the other: the second switched from where the first left.
        assert_eq!(name(&first["from"]), "rC", "round {round}");
        assert_eq!(first["to"], second["from"], "round {round}");
        // The last one wins.
        let last = name(&second["to"]);
        assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), last.as_bytes(), "round {round}");
        *ends.entry(last).or_insert(0) += 1;
    }
    eprintln!("concurrent switches: last one {ends:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Full disk (RELIABILITY 27)

/// Unmounts a tmpfs when the test ends, whatever happens.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` on `dir` (root only); None (with a message) if impossible.
fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return None;
    }
    fs::create_dir_all(dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: could not mount a tmpfs on {}", dir.display());
        return None;
    }
    Some(Mounted(dir.to_owned()))
}

/// A marker tree plus `mib` MiB of incompressible bytes.
fn big_tree(dir: &Path, name: &str, mib: usize) {
    marker_tree(dir, name);
    write(&dir.join("share/big.bin"), &random_bytes(mib << 20, 7), 0o644);
}

#[test]
fn a_full_disk_fails_the_install_cleanly_and_keeps_the_active_release() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    // Installed trees on a small filesystem of their own, the node's repository on the big one.
    let Some(_mounted) = mount_tmpfs(&nd.releases(), "8m") else { return };
    marker_releases(&t, &repo, &nd.prefix, &["small", "small2"]);
    big_tree(&t.join("tree-big"), "big", 12);
    publish_for(&qpack, &t.join("tree-big"), &repo, "big", &nd.prefix, &[]);
    nd.install(&qpack, "small", &repo);
    nd.switch(&qpack, "small").ok();
    let used = disk_use(&nd.releases());

    let out = qpack(args!["install", "big", "--node", &nd.root, "--from", &repo]).fails().says(&["disk full"]);
    assert!(out.text().contains("free space") || out.text().contains("no space left"), "{}", out.dump());
    assert!(!out.text().contains("panicked"));
    assert!(!nd.release_dir(&id_of(&repo, "big")).exists());
    assert_eq!(nd.partials(), Vec::<String>::new(), "the partial tree was not cleaned up");
    assert_eq!(disk_use(&nd.releases()), used, "the space of the failed install was not given back");
    assert_eq!(nd.status()["active"], "small");
    assert_installed(&t.join("tree-small"), &nd.seen());
    // The space is there for what fits.
    nd.install(&qpack, "small2", &repo);
    nd.switch(&qpack, "small2").ok();
    assert_installed(&t.join("tree-small2"), &nd.seen());
}

#[test]
fn a_full_disk_during_the_fetch_fails_cleanly_and_keeps_the_active_release() {
    let t = TestDir::new();
    let repo = t.join("repo");
    // The whole node root (its repository included) on a small filesystem.
    let Some(_mounted) = mount_tmpfs(&t.join("fs"), "8m") else { return };
    let nd = Nd::init(&qpack, &t.join("fs"), "n", &[]);
    marker_releases(&t, &repo, &nd.prefix, &["small"]);
    big_tree(&t.join("tree-big"), "big", 12);
    publish_for(&qpack, &t.join("tree-big"), &repo, "big", &nd.prefix, &[]);
    nd.install(&qpack, "small", &repo);
    nd.switch(&qpack, "small").ok();

    let out = qpack(args!["install", "big", "--node", &nd.root, "--from", &repo]).fails();
    out.says(&["disk full", "node's repository", "free space"]);
    assert!(!nd.release_dir(&id_of(&repo, "big")).exists());
    assert_eq!(nd.partials(), Vec::<String>::new());
    assert_eq!(nd.status()["active"], "small");
    assert_installed(&t.join("tree-small"), &nd.seen());
    // The node's repository is consistent, without the half-fetched release.
    qpack(args!["verify", "--repo", nd.root.join("repo")]).ok();
    qpack(args!["switch", "big", "--node", &nd.root]).fails();
}

// ---------------------------------------------------------------------------------------------------------------
// 9. post_switch hook

#[test]
fn post_switch_hook_runs_on_switch_and_rollback_and_its_failure_is_reported() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let log = t.join("hook.log");
    let hook = format!(
        "echo \"$QPACK_RELEASE $(cat \"$QPACK_PREFIX/MARKER\") ${{QPACK_PREVIOUS:--}} ${{#QPACK_RELEASE_ID}}\" >> '{}'; test \"$QPACK_RELEASE\" != r3",
        log.display()
    );
    let nd = Nd::init(&qpack, t.path(), "n", &["--post-switch", &hook]);
    marker_releases(&t, &repo, &nd.prefix, &["r1", "r2", "r3"]);
    for n in ["r1", "r2", "r3"] {
        nd.install(&qpack, n, &repo);
    }
    let lines = || fs::read_to_string(&log).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();
    nd.switch(&qpack, "r1").code(0).says(&["post_switch exited with status 0"]);
    nd.switch(&qpack, "r2").code(0);
    qpack(args!["rollback", "--node", &nd.root]).code(0);
    // The hook sees the new release already through the prefix, and what was active before.
    assert_eq!(lines(), ["r1 r1 - 64", "r2 r2 r1 64", "r1 r1 r2 64"]);

    // A failing hook: exit code 4, the status recorded, and the switch happened all the same.
    let o = qpack(args!["switch", "r3", "--node", &nd.root, "--json"]).code(4);
    let j = o.json();
    assert_eq!(j["entry"]["post_switch_status"], 1, "{j:#}");
    assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), b"r3");
    let st = nd.status();
    let last = st["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["to_name"].as_str(), last["post_switch_status"].as_i64()), (Some("r3"), Some(1)), "{st:#}");
    assert_eq!(st["active"], "r3");
    qpack(args!["status", "--node", &nd.root]).ok().says(&["post_switch: 1"]);
    // --no-hooks: the hook does not run.
    qpack(args!["switch", "r2", "--node", &nd.root, "--no-hooks"]).code(0);
    assert_eq!(lines().len(), 4);
    let last = nd.status()["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["post_switch_status"], Value::Null);
    // A rollback whose hook fails is reported the same way.
    qpack(args!["rollback", "--node", &nd.root]).code(4);
    assert_eq!(lines().last().unwrap(), "r3 r3 r2 64");
}

// ---------------------------------------------------------------------------------------------------------------
// Damage to the node's repository (RELIABILITY 11, 12)

#[test]
fn a_damaged_chunk_in_the_node_repository_fails_the_install_and_leaves_the_active_release() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    let common = random_bytes(200_000, 11);
    for n in ["r1", "r2"] {
        let tree = t.join(format!("tree-{n}"));
        marker_tree(&tree, n);
        write(&tree.join("share/common.dat"), &common, 0o644);
        publish_for(&qpack, &tree, &repo, n, &nd.prefix, &[]);
    }
    nd.install(&qpack, "r1", &repo);
    nd.switch(&qpack, "r1").ok();
    // r2 needs the chunk again (a base file is written, never linked): flip a byte of it in the node's store.
    let node_repo = nd.root.join("repo");
    let chunk = chunks_of_file(&repo, "r1", "share/common.dat")[0].id;
    let mut obj = read_chunk_object(&node_repo, &chunk);
    let last = obj.len() - 1;
    obj[last] ^= 0x40;
    write_chunk_object(&node_repo, &chunk, &obj);
    qpack(args!["install", "r2", "--node", &nd.root, "--from", &repo]).fails().says(&[&chunk.to_hex()]);
    assert!(!nd.release_dir(&id_of(&repo, "r2")).exists());
    nd.switch(&qpack, "r2").fails().says(&["not installed"]);
    // The installed tree does not depend on the store: it is untouched, and so is the prefix.
    assert_installed(&t.join("tree-r1"), &nd.seen());
    // The damage is reported, naming r2 among the releases it breaks.
    qpack(args!["verify", "--repo", &node_repo]).code(3).says(&[&chunk.to_hex(), "r2"]);
    // Deleting the node's whole repository leaves the active tree working too.
    remove_tree(&node_repo);
    assert_installed(&t.join("tree-r1"), &nd.seen());
}

// ---------------------------------------------------------------------------------------------------------------
// 8. Configuration templates

/// Sets `[vars]` of a node's config.
fn set_vars(nd: &Nd, vars: &[(&str, &str)]) {
    let path = nd.root.join("node.toml");
    let mut conf: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
    let table: toml::Table = vars.iter().map(|(k, v)| (k.to_string(), toml::Value::from(*v))).collect();
    conf.insert("vars".into(), toml::Value::Table(table));
    fs::write(&path, toml::to_string(&conf).unwrap()).unwrap();
}

#[test]
fn config_templates_are_rendered_per_node() {
    let t = TestDir::new();
    let repo = t.join("repo");
    let tree = t.join("tree-r1");
    marker_tree(&tree, "r1");
    let cfg = t.join("cfg");
    let template = "name={{ node.name }} groups={{ node.groups | join(',') }} port={{ vars.port }} \
                    release={{ release.name }} id={{ release.id }} prefix={{ prefix }}\n";
    write(&cfg.join("qserv.cnf.j2"), template.as_bytes(), 0o640);
    write(&cfg.join("static.txt"), b"the same on every node\n", 0o644);
    write(&cfg.join("sub/worker.ini.j2"), b"[worker]\nid = {{ node.name }}-{{ vars.port }}\n", 0o644);
    let cfg_arg = cfg.to_str().unwrap();
    publish_for(&qpack, &tree, &repo, "r1", Path::new("/qserv/stack"), &["--config", cfg_arg]);
    let id = id_of(&repo, "r1");

    let n1 = Nd::init(&qpack, t.path(), "czar1", &["--group", "czar"]);
    let n2 = Nd::init(&qpack, t.path(), "worker7", &["--group", "worker", "--group", "db"]);
    set_vars(&n1, &[("port", "4040")]);
    set_vars(&n2, &[("port", "5050"), ("unused", "x")]);
    for (nd, groups, port) in [(&n1, "czar", "4040"), (&n2, "worker,db", "5050")] {
        let r = nd.install(&qpack, "r1", &repo);
        assert_eq!(num(&r, "templates"), 2, "{r:#}");
        qpack(args!["switch", "r1", "--node", &nd.root, "--allow-relocate"]).ok();
        let name = nd.root.file_name().unwrap().to_str().unwrap();
        let conf = nd.prefix.join("config");
        let want =
            format!("name={name} groups={groups} port={port} release=r1 id={id} prefix={}\n", nd.prefix.display());
        assert_eq!(fs::read_to_string(conf.join("qserv.cnf")).unwrap(), want);
        assert_eq!(fs::read_to_string(conf.join("sub/worker.ini")).unwrap(), format!("[worker]\nid = {name}-{port}\n"));
        // The template itself is not installed; plain files are, as they are.
        assert!(!conf.join("qserv.cnf.j2").exists() && !conf.join("sub/worker.ini.j2").exists());
        assert_eq!(fs::read(conf.join("static.txt")).unwrap(), b"the same on every node\n");
        // Config files are mutable: their exact mode (write bits kept), the template's mode and mtime.
        let (src, out) =
            (fs::metadata(cfg.join("qserv.cnf.j2")).unwrap(), fs::metadata(conf.join("qserv.cnf")).unwrap());
        assert_eq!(out.mode() & 0o7777, 0o640);
        assert_eq!((out.mtime(), out.mtime_nsec()), (src.mtime(), src.mtime_nsec()));
        // The rest of the tree is the release's.
        assert_eq!(fs::read(nd.prefix.join("MARKER")).unwrap(), b"r1");
    }

    // A template naming a variable the node does not define: the install fails naming the template, before
    // anything is written.
    write(&cfg.join("bad.cnf.j2"), b"threads={{ vars.threads }}\n", 0o644);
    publish_for(&qpack, &tree, &repo, "r2", Path::new("/qserv/stack"), &["--config", cfg_arg]);
    let out = qpack(args!["install", "r2", "--node", &n1.root, "--from", &repo]).fails().says(&["config/bad.cnf.j2"]);
    assert!(out.text().contains("undefined") || out.text().contains("threads"), "{}", out.dump());
    assert!(!n1.release_dir(&id_of(&repo, "r2")).exists());
    assert_eq!(n1.partials(), Vec::<String>::new());
    assert_eq!(fs::read(n1.prefix.join("MARKER")).unwrap(), b"r1");
    // Defined on the node, it installs.
    set_vars(&n1, &[("port", "4040"), ("threads", "16")]);
    n1.install(&qpack, "r2", &repo);
    qpack(args!["switch", "r2", "--node", &n1.root, "--allow-relocate"]).ok();
    assert_eq!(fs::read_to_string(n1.prefix.join("config/bad.cnf")).unwrap(), "threads=16\n");
}

/// A tree with one product `p 1.0` holding files `a`, `b` and `c` of identical content, mode and mtime, and a
/// base `MARKER` naming the release.
fn twin_tree(dir: &Path, name: &str) {
    let version = "FILE = version\nPRODUCT = p\nVERSION = 1.0\nFLAVOR = Linux64\nQUALIFIERS = \"\"\n\nGroup:\n   \
                   FLAVOR = Linux64\n   PROD_DIR = Linux64/p/1.0\n   UPS_DIR = ups\n   TABLE_FILE = p.table\nEnd:\n";
    write(&dir.join("ups_db/p/1.0.version"), version.as_bytes(), 0o644);
    write(&dir.join("MARKER"), name.as_bytes(), 0o644);
    let prod = dir.join("Linux64/p/1.0");
    write(&prod.join("ups/p.table"), b"\n", 0o644);
    for f in ["a", "b", "c"] {
        write(&prod.join(f), &random_bytes(30_000, 5), 0o644);
        set_mtime(&prod.join(f), 1_600_000_000, 0);
    }
}

#[test]
fn identical_files_stay_distinct_inodes_even_when_resuming() {
    // Files that are merely identical (content, mode, mtime) are distinct inodes in the source: an install that
    // hardlinks them from another release must keep them distinct (no file of a release becomes a hardlink of
    // another), including when it resumes an install that had linked one of them already.
    let t = TestDir::new();
    let repo = t.join("repo");
    let nd = Nd::init(&qpack, t.path(), "n", &[]);
    for n in ["r1", "r2", "r3"] {
        twin_tree(&t.join(format!("tree-{n}")), n);
        publish_for(&qpack, &t.join(format!("tree-{n}")), &repo, n, &nd.prefix, &[]);
    }
    let ids: Vec<String> = ["r1", "r2", "r3"].iter().map(|n| id_of(&repo, n)).collect();
    nd.install(&qpack, "r1", &repo);
    let r = nd.install(&qpack, "r2", &repo);
    assert_eq!(num(&r, "files_linked"), 3, "{r:#}");
    let inode = |id: &str, f: &str| dev_ino(&nd.release_dir(id).join("Linux64/p/1.0").join(f));
    for f in ["a", "b", "c"] {
        assert_eq!(inode(&ids[0], f), inode(&ids[1], f), "{f} is not shared with r1");
    }
    assert_installed(&t.join("tree-r2"), &nd.release_dir(&ids[1]));

    // An interrupted install of r3 that had linked b to r1's a (identical): resuming keeps that link, and a is
    // then not linked to the same inode.
    let partial = nd.releases().join(format!(".partial-{}", ids[2]));
    fs::create_dir_all(partial.join("Linux64/p/1.0")).unwrap();
    fs::hard_link(nd.release_dir(&ids[0]).join("Linux64/p/1.0/a"), partial.join("Linux64/p/1.0/b")).unwrap();
    let r = nd.install(&qpack, "r3", &repo);
    assert_eq!(r["resumed"], true, "{r:#}");
    assert_installed(&t.join("tree-r3"), &nd.release_dir(&ids[2]));
    let mine: HashSet<_> = ["a", "b", "c"].iter().map(|f| inode(&ids[2], f)).collect();
    assert_eq!(mine.len(), 3, "two files of r3 share an inode");
}

/// Temporary symlinks (`.<prefix>.qpack-<pid>`) left next to a prefix in `dir`.
fn stray_temp_links(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".qpack-"))
        .collect()
}
