//! Helpers: run the built `qpack` binary, build sample EUPS trees, snapshot and compare trees, list repositories.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `qpack` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qpack")
}

/// A `qpack` command with a clean environment (no repo, key or log settings inherited).
pub fn cmd() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("QPACK_REPO").env_remove("QPACK_PUBLISHER_KEY").env_remove("RUST_LOG");
    c.stdin(Stdio::null());
    c
}

/// What a finished command did.
#[derive(Debug)]
pub struct Out {
    /// What was run (for messages).
    pub what: String,
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{} failed:\n{}", self.what, self.dump());
        self
    }

    /// Asserts failure with exactly this exit code.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(self.code, code, "{}: expected exit code {code}:\n{}", self.what, self.dump());
        self
    }

    /// Asserts a non-zero exit (and not a crash by signal or a panic).
    #[track_caller]
    pub fn fails(self) -> Self {
        assert!(self.code > 0, "{}: expected failure:\n{}", self.what, self.dump());
        assert!(!self.stderr.contains("panicked"), "{} panicked:\n{}", self.what, self.dump());
        self
    }

    /// stdout and stderr together (lower-case), for message checks.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr).to_lowercase()
    }

    /// Asserts that the combined output mentions every needle (case-insensitive).
    #[track_caller]
    pub fn says(self, needles: &[&str]) -> Self {
        let t = self.text();
        for n in needles {
            assert!(t.contains(&n.to_lowercase()), "{}: output does not mention {n:?}:\n{}", self.what, self.dump());
        }
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}", self.what, self.dump()))
    }

    pub fn dump(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs a prepared command to completion.
pub fn run_cmd(mut c: Command) -> Out {
    let what = format!("{:?}", c);
    let o = c.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Out {
        what,
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `qpack ARGS…`.
pub fn qpack<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = cmd();
    c.args(args);
    run_cmd(c)
}

/// `OsString` argument list from a mix of strings and paths.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(::std::ffi::OsString::from($a)),*]
    };
}

/// `qpack publish TREE --repo REPO --release NAME --json EXTRA…`, asserting success; returns the report.
#[track_caller]
pub fn publish(tree: &Path, repo: &Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let mut a: Vec<OsString> = args!["publish", tree, "--repo", repo, "--release", name, "--json"];
    a.extend(extra.iter().map(OsString::from));
    qpack(a).ok().json()
}

/// `qpack checkout NAME DEST --repo REPO`, asserting success.
#[track_caller]
pub fn checkout(repo: &Path, name: &str, dest: &Path) {
    qpack(args!["checkout", name, dest, "--repo", repo]).ok();
}

/// `qpack verify --repo REPO`.
pub fn verify(repo: &Path) -> Out {
    qpack(args!["verify", "--repo", repo])
}

/// A JSON number field as u64.
#[track_caller]
pub fn num(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no number {field:?} in {v:#}"))
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A temporary directory that is removed even when tests left read-only or mode-000 directories in it.
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    pub fn new() -> Self {
        Self(Some(tempfile::Builder::new().prefix("qpack-it-").tempdir().expect("temp dir")))
    }
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("live").path()
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path().join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            if !is_root() {
                make_removable(d.path());
            }
            let _ = d.close();
        }
    }
}

/// Removes a tree that may hold read-only directories.
pub fn remove_tree(p: &Path) {
    make_removable(p);
    fs::remove_dir_all(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
}

/// Gives the owner rwx on every directory below `p` (so that it can be removed).
pub fn make_removable(p: &Path) {
    let Ok(md) = fs::symlink_metadata(p) else { return };
    if md.is_dir() {
        if md.mode() & 0o700 != 0o700 {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
        }
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                make_removable(&e.path());
            }
        }
    }
}

/// SplitMix64: a small seeded generator, so that every run builds the same trees.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Incompressible bytes.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

/// Compressible, text-like bytes.
pub fn text_bytes(n: usize, seed: u64) -> Vec<u8> {
    let words = ["qserv", "czar", "worker", "chunk", "query", "table", "lsst", "eups", "setup", "partition"];
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        v.extend_from_slice(words[(r.next() % words.len() as u64) as usize].as_bytes());
        v.push(if r.next() % 8 == 0 { b'\n' } else { b' ' });
    }
    v.truncate(n);
    v
}

/// Writes a file (creating parents) with `mode`.
pub fn write(path: &Path, data: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap();
    drop(f);
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

/// Sets the mtime (and atime) of `path` without following a symlink.
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
    let t = Timespec { tv_sec: secs, tv_nsec: nanos as _ };
    rustix::fs::utimensat(CWD, path, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

pub fn p(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// A product of a sample tree.
pub struct Product {
    pub name: &'static str,
    pub version: &'static str,
}

impl Product {
    /// `Linux64/<p>/<v>`.
    pub fn mount(&self) -> String {
        format!("Linux64/{}/{}", self.name, self.version)
    }
}

pub const PRODUCTS: [Product; 3] = [
    Product { name: "bar", version: "2.1" },
    Product { name: "foo", version: "1.0" },
    Product { name: "qserv", version: "3.0" },
];

fn version_file(p: &Product) -> String {
    format!(
        "FILE = version\nPRODUCT = {n}\nVERSION = {v}\nFLAVOR = Linux64\nQUALIFIERS = \"\"\n\nGroup:\n   FLAVOR = Linux64\n   \
         PROD_DIR = Linux64/{n}/{v}\n   UPS_DIR = ups\n   TABLE_FILE = {n}.table\nEnd:\n",
        n = p.name,
        v = p.version
    )
}

/// The 255-byte file name of the sample tree.
pub fn long_name() -> Vec<u8> {
    let mut n = b"long-".to_vec();
    n.resize(255, b'n');
    n
}

/// Builds an EUPS-like install tree at `root` (about 2.6 MiB), with every edge case a round trip must keep:
/// `ups_db` version files naming three products under `Linux64/<p>/<v>`, files from empty to over 1 MiB,
/// compressible and incompressible, modes 0755/0644/0444, a 0555 directory, empty directories, relative,
/// absolute, dangling, looping and `..` symlinks, a hardlink pair, names with spaces, a newline, non-UTF-8
/// bytes and 255 bytes, and fixed nanosecond mtimes on files, a symlink and directories.
pub fn sample_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    chmod(root, 0o755);
    write(&root.join("README"), b"sample EUPS install tree\n", 0o644);
    write(&root.join("site/startup.py"), &text_bytes(3000, 1), 0o644);
    for pr in &PRODUCTS {
        write(&root.join(format!("ups_db/{}/{}.version", pr.name, pr.version)), version_file(pr).as_bytes(), 0o644);
    }
    write(&root.join("ups_db/global.tags"), b"", 0o644);

    // foo: binaries, a >1 MiB multi-chunk library, a hardlink pair, empty and read-only files.
    let foo_dir = root.join("Linux64/foo/1.0");
    write(&foo_dir.join("bin/foo"), &random_bytes(40 << 10, 2), 0o755);
    write(&foo_dir.join("lib/libfoo.so.1"), &random_bytes(1_200_000, 3), 0o755);
    symlink("libfoo.so.1", &foo_dir.join("lib/libfoo.so"));
    write(&foo_dir.join("lib/libfoo.a"), &random_bytes(150 << 10, 4), 0o644);
    fs::hard_link(foo_dir.join("lib/libfoo.a"), foo_dir.join("lib/libfoo_hard.a")).unwrap();
    write(&foo_dir.join("lib/empty.txt"), b"", 0o644);
    write(&foo_dir.join("lib/readonly.txt"), b"do not write\n", 0o444);
    write(&foo_dir.join("include/foo.h"), &text_bytes(5000, 5), 0o644);
    write(&foo_dir.join("ups/foo.table"), b"setupRequired(bar)\n", 0o644);
    set_mtime(&foo_dir.join("bin/foo"), 1_500_000_000, 123_456_789);
    set_mtime(&foo_dir.join("lib/readonly.txt"), 1_600_000_000, 999_999_999);

    // bar: odd names and odd links, a read-only directory, empty directories.
    let bar = root.join("Linux64/bar/2.1");
    write(&bar.join("lib/libbar.so.2"), &text_bytes(300 << 10, 6), 0o755);
    symlink("libbar.so.2", &bar.join("lib/libbar.so"));
    write(&bar.join("ups/bar.table"), b"envPrepend(PATH, ${PRODUCT_DIR}/bin)\n", 0o644);
    let share = bar.join("share");
    write(&share.join("name with spaces.txt"), b"spaces\n", 0o644);
    write(&share.join(p(b"caf\xe9-latin1.txt")), b"non-utf8 name\n", 0o644);
    write(&share.join("new\nline"), b"newline in name\n", 0o600);
    write(&share.join(p(&long_name())), b"255-byte name\n", 0o644);
    fs::create_dir_all(share.join("empty")).unwrap();
    fs::create_dir_all(bar.join("bin")).unwrap();
    symlink("/usr/lib/os-release", &share.join("abs-link"));
    symlink("does/not/exist", &share.join("dangling"));
    symlink("loop", &share.join("loop"));
    symlink("..", &share.join("up"));
    set_mtime(&share.join("abs-link"), 1_400_000_000, 42);
    write(&share.join("ro/data.txt"), &text_bytes(2000, 7), 0o444);
    set_mtime(&share.join("ro"), 1_300_000_000, 5);
    chmod(&share.join("ro"), 0o555);

    // qserv: the product a release-2 would rebuild.
    let qs = root.join("Linux64/qserv/3.0");
    write(&qs.join("bin/qserv-czar"), &random_bytes(64 << 10, 8), 0o755);
    write(&qs.join("lib/libqserv.so"), &random_bytes(500 << 10, 9), 0o755);
    write(&qs.join("etc/qserv.cnf"), &text_bytes(4000, 10), 0o644);
    write(&qs.join("ups/qserv.table"), b"setupRequired(foo)\n", 0o644);

    // Directory mtimes last (creating entries changes them), deepest first.
    set_mtime(&share.join("empty"), 1_200_000_000, 777);
    set_mtime(&foo_dir.join("lib"), 1_100_000_000, 1);
}

/// What a path of a tree is, as seen by lstat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// Size and BLAKE3 of the content.
    File(u64, [u8; 32]),
    Symlink(Vec<u8>),
    Other(u32),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub ino: u64,
}

/// Every path of a tree (relative, as bytes; the root is `""`) with its lstat.
pub type Snapshot = BTreeMap<Vec<u8>, Node>;

pub fn snapshot(root: &Path) -> Snapshot {
    // Iterative: deep trees must not overflow the test thread's stack.
    let mut out = BTreeMap::new();
    let mut todo: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_owned(), Vec::new())];
    while let Some((full, rel)) = todo.pop() {
        let md = fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            let data = fs::read(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()));
            Kind::File(data.len() as u64, *blake3::hash(&data).as_bytes())
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&full).unwrap().into_os_string().into_vec())
        } else {
            Kind::Other(md.mode() & 0o170000)
        };
        if kind == Kind::Dir {
            for e in fs::read_dir(&full).unwrap_or_else(|e| panic!("read_dir {}: {e}", full.display())) {
                let e = e.unwrap();
                let name = e.file_name().into_vec();
                let r = if rel.is_empty() { name } else { [rel.as_slice(), b"/", &name].concat() };
                todo.push((e.path(), r));
            }
        }
        out.insert(rel, Node { kind, mode: md.mode() & 0o7777, mtime: (md.mtime(), md.mtime_nsec()), ino: md.ino() });
    }
    out
}

/// How strictly two trees must agree.
#[derive(Clone, Copy, Debug)]
pub struct Cmp {
    /// Compare mtimes to the second only (tar archives keep no nanoseconds).
    pub secs_only: bool,
    /// Compare the root directory's mode and mtime.
    pub root: bool,
    /// Compare mtimes at all.
    pub mtimes: bool,
}

impl Cmp {
    pub const EXACT: Cmp = Cmp { secs_only: false, root: true, mtimes: true };
    pub const TAR: Cmp = Cmp { secs_only: true, root: true, mtimes: true };
}

/// Groups of paths sharing an inode (hardlinks), within the tree.
fn link_groups(s: &Snapshot) -> BTreeSet<Vec<Vec<u8>>> {
    let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, n) in s {
        if matches!(n.kind, Kind::File(..)) {
            by_ino.entry(n.ino).or_default().push(p.clone());
        }
    }
    by_ino.into_values().filter(|g| g.len() > 1).collect()
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(p).escape_debug().to_string()
    }
}

/// Lists the differences between two snapshots (empty if equal under `cmp`).
pub fn diff_snapshots(a: &Snapshot, b: &Snapshot, cmp: Cmp) -> Vec<String> {
    let mut d = Vec::new();
    for (p, na) in a {
        let Some(nb) = b.get(p) else {
            d.push(format!("only in source: {}", show(p)));
            continue;
        };
        if p.is_empty() && !cmp.root {
            continue;
        }
        if na.kind != nb.kind {
            d.push(format!("{}: {:?} != {:?}", show(p), na.kind, nb.kind));
            continue;
        }
        let is_link = matches!(na.kind, Kind::Symlink(_));
        if !is_link && na.mode != nb.mode {
            d.push(format!("{}: mode {:o} != {:o}", show(p), na.mode, nb.mode));
        }
        if cmp.mtimes {
            let (ma, mb) = if cmp.secs_only { ((na.mtime.0, 0), (nb.mtime.0, 0)) } else { (na.mtime, nb.mtime) };
            if ma != mb {
                d.push(format!("{}: mtime {:?} != {:?}", show(p), na.mtime, nb.mtime));
            }
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            d.push(format!("only in copy: {}", show(p)));
        }
    }
    let (ga, gb) = (link_groups(a), link_groups(b));
    if ga != gb {
        let f = |g: &BTreeSet<Vec<Vec<u8>>>| {
            g.iter().map(|v| v.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = ")).collect::<Vec<_>>()
        };
        d.push(format!("hardlinks differ: {:?} != {:?}", f(&ga), f(&gb)));
    }
    d
}

/// Asserts that two trees are equal under `cmp`.
#[track_caller]
pub fn assert_same_tree(src: &Path, copy: &Path, cmp: Cmp) {
    let d = diff_snapshots(&snapshot(src), &snapshot(copy), cmp);
    assert!(
        d.is_empty(),
        "{} and {} differ ({} differences):\n  {}",
        src.display(),
        copy.display(),
        d.len(),
        d.iter().take(30).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

/// Every path below a repository with its size (0 for directories), except the `lock` file: what a failed
/// command must leave exactly as it was.
pub fn repo_listing(repo: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            if rel == Path::new("lock") {
                continue;
            }
            let md = fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                out.insert(rel, 0);
                walk(root, &path, out);
            } else {
                out.insert(rel, md.len());
            }
        }
    }
    walk(repo, repo, &mut out);
    out
}

/// Asserts the repository listing is unchanged, naming what changed.
#[track_caller]
pub fn assert_listing_unchanged(before: &BTreeMap<PathBuf, u64>, repo: &Path) {
    let after = repo_listing(repo);
    if *before != after {
        let mut d = Vec::new();
        for (p, s) in before {
            match after.get(p) {
                None => d.push(format!("removed {}", p.display())),
                Some(t) if t != s => d.push(format!("{} size {s} -> {t}", p.display())),
                _ => {}
            }
        }
        for p in after.keys().filter(|p| !before.contains_key(*p)) {
            d.push(format!("added {}", p.display()));
        }
        panic!("repository {} changed:\n  {}", repo.display(), d.join("\n  "));
    }
}

/// Where a chunk object is stored (file, offset of the object in it, length), whatever the store's layout.
#[track_caller]
pub fn chunk_object(repo: &Path, id: &qpack::id::ChunkId) -> (PathBuf, u64, u32) {
    open_repo(repo).chunk_location(id).unwrap_or_else(|| panic!("chunk {id} is not stored"))
}

/// Whether the repository stores the chunk.
pub fn has_chunk(repo: &Path, id: &qpack::id::ChunkId) -> bool {
    open_repo(repo).has_chunk(id)
}

/// Number of chunks the repository stores.
pub fn stored_chunks(repo: &Path) -> u64 {
    open_repo(repo).chunk_index().len() as u64
}

/// A stored chunk object's bytes, as stored.
pub fn read_chunk_object(repo: &Path, id: &qpack::id::ChunkId) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let (path, off, len) = chunk_object(repo, id);
    let mut buf = vec![0u8; len as usize];
    fs::File::open(&path).unwrap().read_exact_at(&mut buf, off).unwrap();
    buf
}

/// Overwrites a stored chunk object in place with bytes of the same length.
pub fn write_chunk_object(repo: &Path, id: &qpack::id::ChunkId, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let (path, off, len) = chunk_object(repo, id);
    assert_eq!(bytes.len(), len as usize, "a chunk object is rewritten in place, at its length");
    fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(bytes, off).unwrap();
}

/// Opens the repository with the library.
pub fn open_repo(repo: &Path) -> qpack::store::Repository {
    qpack::store::Repository::open(repo).expect("open repository")
}

/// The part manifests of a release, with their mounts.
pub fn manifests_of(repo: &Path, release: &str) -> Vec<(Vec<u8>, qpack::manifest::PartManifest)> {
    let r = open_repo(repo);
    let (_, id) = r.resolve(release).unwrap();
    let (_, rel) = r.read_release(&id).unwrap();
    rel.parts.iter().map(|p| (p.mount.clone(), r.read_manifest(&p.manifest).unwrap())).collect()
}

/// The chunks of the file at `path` (from the tree root) in `release`.
pub fn chunks_of_file(repo: &Path, release: &str, path: &str) -> Vec<qpack::manifest::ChunkRef> {
    for (mount, m) in manifests_of(repo, release) {
        for e in &m.entries {
            if qpack::manifest::join(&mount, &e.path) == path.as_bytes() {
                if let qpack::manifest::EntryKind::File { chunks, .. } = &e.kind {
                    return chunks.clone();
                }
                panic!("{path} is not a file in {release}");
            }
        }
    }
    panic!("{path} not found in {release}")
}

/// Every chunk id a release references.
pub fn chunk_set(repo: &Path, release: &str) -> BTreeSet<qpack::id::ChunkId> {
    manifests_of(repo, release).iter().flat_map(|(_, m)| m.chunks().map(|c| c.id).collect::<Vec<_>>()).collect()
}

/// Creates an uncompressed tarball of `tree` with the system `tar` (`tar -C tree -cf out .`).
pub fn system_tar(tree: &Path, out: &Path) {
    let mut c = Command::new("tar");
    c.arg("-C").arg(tree).arg("-cf").arg(out).arg(".");
    let o = run_cmd(c);
    assert_eq!(o.code, 0, "tar failed:\n{}", o.dump());
}

/// zstd-compresses a file.
pub fn zstd_file(src: &Path, out: &Path) {
    let data = fs::read(src).unwrap();
    fs::write(out, zstd::encode_all(data.as_slice(), 3).unwrap()).unwrap();
}

/// Runs qpack as an unprivileged user (when root), or as ourselves (when not): permission checks must apply.
pub fn unprivileged(t: &TestDir) -> Option<Box<dyn Fn(Vec<OsString>) -> Out>> {
    if !is_root() {
        return Some(Box::new(qpack));
    }
    if !which("setpriv") {
        eprintln!("root without setpriv: cannot run qpack as an ordinary user; skipped");
        return None;
    }
    // nobody must reach the test directory and run the binary.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run = |a: Vec<OsString>| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()]).args(a);
        c.env_remove("QPACK_REPO").env_remove("QPACK_PUBLISHER_KEY").env_remove("RUST_LOG");
        run_cmd(c)
    };
    // Can nobody reach the binary and the test directory?
    let dir = t.join("probe");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let probe = run(args!["init", "--repo", &dir]);
    fs::remove_dir_all(&dir).unwrap();
    if probe.code != 0 {
        eprintln!("cannot run qpack as nobody ({}): skipped", probe.dump());
        return None;
    }
    Some(Box::new(run))
}

pub fn chown_tree(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), uid);
        }
    }
}

/// Whether `prog` is on the PATH.
pub fn which(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
}

/// Runs a command to completion while sampling its peak resident set size (VmHWM, KiB) from /proc; returns the
/// output and the largest value seen (a lower bound of the true peak: sampling may miss a spike at exit).
pub fn run_sampling_rss(mut c: Command) -> (Out, u64) {
    let what = format!("{:?}", c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let code = loop {
        if let Ok(text) = fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st.code().unwrap_or(-1);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let out = Out { what, code, stdout: out_thread.join().unwrap(), stderr: err_thread.join().unwrap() };
    (out, peak)
}

/// A file of a product (`Linux64/<product>/<version>/…` in a generated tree): installed read-only.
pub fn in_product(path: &[u8]) -> bool {
    path.starts_with(b"Linux64/") && path.iter().filter(|&&b| b == b'/').count() >= 3
}

/// What an install of the tree `src` must look like: the source, with product files' write bits cleared.
pub fn expected(src: &Path) -> Snapshot {
    let mut s = snapshot(src);
    for (p, n) in s.iter_mut() {
        if matches!(n.kind, Kind::File(..)) && in_product(p) {
            n.mode &= !0o222;
        }
    }
    s
}
