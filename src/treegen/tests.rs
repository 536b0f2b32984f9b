use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A scratch directory removed (read-only parts included) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("qpack-treegen-{}-{tag}-{n}", std::process::id()));
        remove_tree(&p).unwrap();
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

fn opts(size: u64, release: u32) -> GenOptions {
    GenOptions { release, size, ..GenOptions::default() }
}

const MIB: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind2 {
    Dir,
    File { hash: u64, len: u64 },
    Link(String),
}

#[derive(Clone, Debug)]
struct Ent {
    kind: Kind2,
    mode: u32,
    ino: u64,
    nlink: u64,
    mtime: i64,
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn walk_into(root: &Path, rel: &str, out: &mut BTreeMap<String, Ent>) {
    let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let md = fs::symlink_metadata(e.path()).unwrap();
        let kind = if md.is_dir() {
            Kind2::Dir
        } else if md.file_type().is_symlink() {
            Kind2::Link(fs::read_link(e.path()).unwrap().to_string_lossy().into_owned())
        } else {
            let data = fs::read(e.path()).unwrap();
            Kind2::File { hash: fnv(&data), len: data.len() as u64 }
        };
        let is_dir = kind == Kind2::Dir;
        out.insert(
            r.clone(),
            Ent { kind, mode: md.mode() & 0o7777, ino: md.ino(), nlink: md.nlink(), mtime: md.mtime() },
        );
        if is_dir {
            walk_into(root, &r, out);
        }
    }
}

fn walk(root: &Path) -> BTreeMap<String, Ent> {
    let mut m = BTreeMap::new();
    walk_into(root, "", &mut m);
    m
}

/// Hash of every path, kind, mode, content / link target and (files and directories) mtime.
fn tree_hash(root: &Path) -> u64 {
    let mut acc = Vec::new();
    for (p, e) in walk(root) {
        acc.extend_from_slice(p.as_bytes());
        acc.extend_from_slice(format!("|{:?}|{:o}", e.kind, e.mode).as_bytes());
        if !matches!(e.kind, Kind2::Link(_)) {
            acc.extend_from_slice(format!("|{}", e.mtime).as_bytes());
        }
        acc.push(b'\n');
    }
    fnv(&acc)
}

fn files_of(m: &BTreeMap<String, Ent>) -> impl Iterator<Item = (&String, &Ent)> {
    m.iter().filter(|(_, e)| matches!(e.kind, Kind2::File { .. }))
}

/// Parses `KEY = value` lines of an EUPS version/chain file.
fn eups_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn parse_size_units() {
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("200M"), Some(200 << 20));
    assert_eq!(parse_size("64k"), Some(64 << 10));
    assert_eq!(parse_size("64K"), Some(64 << 10));
    assert_eq!(parse_size("1500"), Some(1500));
    assert_eq!(parse_size("2T"), Some(2 << 40));
    assert_eq!(parse_size("1.5G"), Some(3 << 29));
    assert_eq!(parse_size("16MiB"), Some(16 << 20));
    assert_eq!(parse_size(" 8m "), Some(8 << 20));
    assert_eq!(parse_size("0"), Some(0));
    for bad in ["", "G", "abc", "1X", "-1M", "1.5", "1..5G", "99999999999999999999G"] {
        assert_eq!(parse_size(bad), None, "{bad:?}");
    }
}

#[test]
fn dates_and_versions() {
    assert_eq!(declared_stamp(1), "2026-01-01T12:00:00.000000");
    assert_eq!(declared_stamp(32), "2026-02-01T12:00:00.000000");
    assert_eq!(declared_stamp(60), "2026-03-01T12:00:00.000000");
    assert_eq!(declared_stamp(366), "2027-01-01T12:00:00.000000");
    assert_eq!(release_time(2) - release_time(1), 86_400);
    assert_eq!(qserv_version(7), "2026.11.7");
    let r1 = product_versions(1);
    assert!(r1.len() >= 30, "{} products", r1.len());
    assert!(r1.contains(&("boost".to_string(), "1.83.0.lsst1".to_string())));
    assert!(r1.contains(&("qserv".to_string(), "2026.11.1".to_string())));
    // Each even release bumps exactly one dependency, a different one each time; odd releases bump none.
    let mut bumped = Vec::new();
    for r in 2..=12u32 {
        let (a, b) = (product_versions(r - 1), product_versions(r));
        let diff: Vec<&String> =
            a.iter().zip(&b).filter(|(x, y)| x.1 != y.1 && x.0 != "qserv").map(|(x, _)| &x.0).collect();
        if r % 2 == 0 {
            assert_eq!(diff.len(), 1, "release {r}: {diff:?}");
            assert_ne!(diff[0], "python");
            bumped.push(diff[0].clone());
        } else {
            assert!(diff.is_empty(), "release {r}: {diff:?}");
        }
    }
    let distinct: HashSet<&String> = bumped.iter().collect();
    assert_eq!(distinct.len(), bumped.len(), "{bumped:?}");
}

#[test]
fn generation_is_deterministic_and_idempotent() {
    let (a, b) = (TempDir::new("det-a"), TempDir::new("det-b"));
    let o = opts(4 * MIB, 3);
    let sa = generate(a.path(), &o).unwrap();
    let sb = generate(b.path(), &o).unwrap();
    assert_eq!(sa, sb);
    let ha = tree_hash(a.path());
    assert_eq!(ha, tree_hash(b.path()));
    // Same release again: nothing to do.
    let again = generate(a.path(), &o).unwrap();
    assert_eq!((again.files_written, again.files_removed), (0, 0));
    assert_eq!(tree_hash(a.path()), ha);
    // Other options give other trees.
    let c = TempDir::new("det-c");
    generate(c.path(), &GenOptions { prefix: "/opt/lsst".into(), ..o.clone() }).unwrap();
    assert_ne!(tree_hash(c.path()), ha);
}

#[test]
fn stats_match_disk() {
    let d = TempDir::new("stats");
    let st = generate(d.path(), &opts(4 * MIB, 1)).unwrap();
    let m = walk(d.path());
    let mut inodes = HashSet::new();
    let (mut names, mut bytes, mut dirs, mut links) = (0u64, 0u64, 0u64, 0u64);
    for e in m.values() {
        match e.kind {
            Kind2::Dir => dirs += 1,
            Kind2::Link(_) => links += 1,
            Kind2::File { len, .. } => {
                names += 1;
                if inodes.insert(e.ino) {
                    bytes += len;
                }
            }
        }
    }
    assert_eq!(st.files, inodes.len() as u64);
    assert_eq!(st.hardlinks, names - inodes.len() as u64);
    assert_eq!(st.bytes, bytes);
    assert_eq!(st.dirs, dirs);
    assert_eq!(st.symlinks, links);
    assert_eq!(st.files_written, st.files);
    assert_eq!(st.files_removed, 0);
    assert!(st.files >= 300, "only {} files", st.files);
}

#[test]
fn size_is_roughly_honoured() {
    for size in [4 * MIB, 16 * MIB] {
        let d = TempDir::new("size");
        let st = generate(d.path(), &opts(size, 1)).unwrap();
        let ratio = st.bytes as f64 / size as f64;
        assert!((0.7..=1.3).contains(&ratio), "size {size}: {} bytes ({ratio:.2})", st.bytes);
    }
}

#[test]
fn tree_has_every_kind_of_entry() {
    let d = TempDir::new("kinds");
    let o = opts(8 * MIB, 1);
    generate(d.path(), &o).unwrap();
    let m = walk(d.path());
    let count = |f: &dyn Fn(&Ent) -> bool| m.values().filter(|e| f(e)).count();

    // Shared library symlink chains resolve to regular files.
    let so_links: Vec<&String> =
        m.iter().filter(|(p, e)| p.ends_with(".so") && matches!(e.kind, Kind2::Link(_))).map(|(p, _)| p).collect();
    assert!(so_links.len() >= 10, "{so_links:?}");
    for l in &so_links {
        let md = fs::metadata(d.join(l)).unwrap();
        assert!(md.is_file(), "{l} dangles");
        let first = fs::read_link(d.join(l)).unwrap();
        assert!(first.to_string_lossy().contains(".so."), "{l} -> {first:?}");
    }
    let py = product_versions(1).into_iter().find(|(p, _)| p == "python").unwrap().1;
    let bin = format!("Linux64/python/{py}/bin");
    assert_eq!(m[&format!("{bin}/python")].kind, Kind2::Link("python3".into()));

    // Hard links.
    let (a, b) = (&m[&format!("{bin}/python3")], &m[&format!("{bin}/python3.11")]);
    assert_eq!(a.ino, b.ino);
    assert_eq!(a.nlink, 2);
    assert_eq!(count(&|e| matches!(e.kind, Kind2::File { .. }) && e.nlink == 2), 6);
    assert!(fs::read(d.join(&format!("{bin}/python3.11"))).unwrap().starts_with(b"\x7fELF\x02\x01\x01"));

    // Modes.
    let file_mode = |mode: u32| count(&|e| matches!(e.kind, Kind2::File { .. }) && e.mode == mode);
    assert!(file_mode(0o755) >= 50, "{} executables", file_mode(0o755));
    assert!(file_mode(0o644) >= 200);
    assert!(file_mode(0o444) >= 10, "{} read-only files", file_mode(0o444));
    assert!(count(&|e| e.kind == Kind2::Dir && e.mode == 0o555) >= 2);
    assert_eq!(m["Linux64/qserv/2026.11.1/share/qserv/schema"].mode, 0o555);

    // Empty files and directories.
    assert!(count(&|e| matches!(e.kind, Kind2::File { len: 0, .. })) >= 3);
    let empty_dirs: Vec<&String> = m
        .iter()
        .filter(|(p, e)| {
            e.kind == Kind2::Dir && !m.keys().any(|k| k.len() > p.len() && k.starts_with(&format!("{p}/")))
        })
        .map(|(p, _)| p)
        .collect();
    assert!(!empty_dirs.is_empty());

    // Python bytecode next to sources.
    let pycs: Vec<&String> = m.keys().filter(|p| p.ends_with(".cpython-311.pyc")).collect();
    assert!(pycs.len() >= 50);
    for p in pycs.iter().take(20) {
        assert!(p.contains("/__pycache__/"));
        let data = fs::read(d.join(p)).unwrap();
        assert_eq!(&data[..4], b"\xa7\x0d\x0d\x0a", "{p}");
        let src = p.replace("/__pycache__", "").replace(".cpython-311.pyc", ".py");
        assert!(m.contains_key(&src), "{p} without {src}");
    }

    // The build prefix is embedded in some files (shebangs, .pc, RPATHs), but not in most.
    let files: Vec<&String> = files_of(&m).map(|(p, _)| p).collect();
    let with_prefix = files
        .iter()
        .filter(|p| {
            let data = fs::read(d.join(p)).unwrap();
            data.windows(o.prefix.len()).any(|w| w == o.prefix.as_bytes())
        })
        .count();
    assert!(with_prefix >= 20, "{with_prefix} files embed the prefix");
    assert!(with_prefix * 5 < files.len(), "{with_prefix} of {} files embed the prefix", files.len());
    let script = fs::read_to_string(d.join(&format!("{bin}/pip3"))).unwrap();
    assert!(script.starts_with(&format!("#!{}/Linux64/python/{py}/bin/python3\n", o.prefix)));

    // Top-level EUPS things.
    for p in ["loadLSST.bash", "site/startup.py", "ups_db/global.tags", "ups_db/Linux64.pickleDB1_3_0"] {
        assert!(matches!(m[p].kind, Kind2::File { .. }), "{p}");
    }
    assert_eq!(m["eups/current"].kind, Kind2::Link(EUPS_VERSION.into()));
    assert!(m.keys().filter(|p| p.starts_with("Linux64/boost/") && p.ends_with(".hpp")).count() >= 20);
    assert!(!m.contains_key("EupsBuildDir"));
    assert!(!m.contains_key("ups_db/.lockDir"));

    // Product layout: ~30-40 products, each with a table file.
    let products: Vec<&String> =
        m.keys().filter(|p| p.matches('/').count() == 1 && p.starts_with("Linux64/")).collect();
    assert!((30..=40).contains(&products.len()), "{} products", products.len());
    for p in products {
        let name = p.trim_start_matches("Linux64/");
        assert!(m.keys().any(|k| k.starts_with(&format!("{p}/")) && k.ends_with(&format!("/ups/{name}.table"))), "{p}");
    }
}

fn check_ups_db(root: &Path, release: u32) {
    let m = walk(root);
    let mut declared = HashSet::new();
    for p in m.keys().filter(|p| p.starts_with("ups_db/") && p.ends_with(".version")) {
        let f = eups_fields(&fs::read_to_string(root.join(p)).unwrap());
        assert_eq!(f["FILE"], "version");
        let prod = &f["PRODUCT"];
        assert_eq!(p, &format!("ups_db/{prod}/{}.version", f["VERSION"]));
        let dir = &f["PROD_DIR"];
        assert_eq!(dir, &format!("Linux64/{prod}/{}", f["VERSION"]));
        assert!(root.join(dir).is_dir(), "PROD_DIR {dir} missing");
        assert!(root.join(dir).join(&f["UPS_DIR"]).join(&f["TABLE_FILE"]).is_file(), "{dir}: no table");
        assert!(declared.insert(prod.clone()), "{prod} declared twice");
        let chain = eups_fields(&fs::read_to_string(root.join(format!("ups_db/{prod}/current.chain"))).unwrap());
        assert_eq!(chain["CHAIN"], "current");
        assert_eq!(chain["VERSION"], f["VERSION"]);
        assert_eq!(chain["DECLARED"], f["DECLARED"]);
    }
    // Every installed product version is declared, and nothing else is installed.
    let installed: Vec<&String> =
        m.keys().filter(|p| p.starts_with("Linux64/") && p.matches('/').count() == 2).collect();
    assert_eq!(installed.len(), declared.len(), "{installed:?}");
    let want: HashSet<String> = product_versions(release).into_iter().map(|(p, _)| p).collect();
    assert_eq!(declared, want);
    assert!(root.join(format!("Linux64/qserv/{}", qserv_version(release))).is_dir());
}

#[test]
fn in_place_update_rewrites_only_what_changed() {
    let (a, b) = (TempDir::new("upd-a"), TempDir::new("upd-b"));
    generate(a.path(), &opts(8 * MIB, 1)).unwrap();
    check_ups_db(a.path(), 1);
    let before = walk(a.path());
    let st = generate(a.path(), &opts(8 * MIB, 2)).unwrap();
    let after = walk(a.path());
    check_ups_db(a.path(), 2);

    // Same result as a fresh release 2, mtimes included.
    generate(b.path(), &opts(8 * MIB, 2)).unwrap();
    assert_eq!(tree_hash(a.path()), tree_hash(b.path()));

    // qserv moved to a new version directory.
    assert!(before.contains_key("Linux64/qserv/2026.11.1"));
    assert!(!after.contains_key("Linux64/qserv/2026.11.1"));
    assert!(!after.contains_key("ups_db/qserv/2026.11.1.version"));
    assert!(after.contains_key("ups_db/qserv/2026.11.2.version"));
    let chain = fs::read_to_string(a.join("ups_db/qserv/current.chain")).unwrap();
    assert!(chain.contains("VERSION = 2026.11.2\n"));
    assert!(chain.contains("DECLARED = 2026-01-02T12:00:00.000000\n"));

    // One dependency moved to a new version directory too.
    let (v1, v2) = (product_versions(1), product_versions(2));
    let bumped: Vec<_> = v1.iter().zip(&v2).filter(|(x, y)| x.1 != y.1 && x.0 != "qserv").collect();
    assert_eq!(bumped.len(), 1);
    let ((dep, old), (_, new)) = bumped[0];
    assert!(!after.contains_key(&format!("Linux64/{dep}/{old}")));
    assert!(after.contains_key(&format!("Linux64/{dep}/{new}")));

    // Files present at the same path with the same content were not touched.
    let mut kept = 0;
    for (p, e) in files_of(&after) {
        if let Some(o) = before.get(p) {
            if o.kind == e.kind {
                assert_eq!((o.ino, o.mtime), (e.ino, e.mtime), "{p} was rewritten");
                kept += 1;
            }
        }
    }
    let nfiles = files_of(&after).count();
    assert!(kept * 10 >= nfiles * 7, "only {kept} of {nfiles} files kept");
    assert!(st.files_written > 0 && (st.files_written as usize) < nfiles / 2, "{st:?}");
    assert!(st.files_removed > 0);
    // The pickle cache is rewritten in place; unchanged product directories keep their mtime.
    assert_ne!(before["ups_db/Linux64.pickleDB1_3_0"].kind, after["ups_db/Linux64.pickleDB1_3_0"].kind);
    let boost = product_versions(2).into_iter().find(|(p, _)| p == "boost").unwrap().1;
    if boost == product_versions(1).into_iter().find(|(p, _)| p == "boost").unwrap().1 {
        let d = format!("Linux64/boost/{boost}");
        assert_eq!(before[&d].mtime, after[&d].mtime);
    }

    // Most bytes of the new release were already in the old one (content-wise).
    let old_hashes: HashSet<u64> = files_of(&before)
        .filter_map(|(_, e)| match e.kind {
            Kind2::File { hash, .. } => Some(hash),
            _ => None,
        })
        .collect();
    let (mut total, mut new_bytes) = (0u64, 0u64);
    for (_, e) in files_of(&after) {
        if let Kind2::File { hash, len } = e.kind {
            total += len;
            if !old_hashes.contains(&hash) {
                new_bytes += len;
            }
        }
    }
    assert!(new_bytes > 0 && new_bytes * 3 < total, "{new_bytes} of {total} bytes changed");
}

#[test]
fn qserv_rebuild_changes_binaries_and_pyc_but_few_sources() {
    let (a, b) = (TempDir::new("rb-a"), TempDir::new("rb-b"));
    generate(a.path(), &opts(8 * MIB, 4)).unwrap();
    generate(b.path(), &opts(8 * MIB, 5)).unwrap();
    let (ra, rb) = ("Linux64/qserv/2026.11.4", "Linux64/qserv/2026.11.5");
    let (ma, mb) = (walk(&a.join(ra)), walk(&b.join(rb)));
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>(), "qserv's file list changed");
    let (mut bins, mut bins_changed, mut pyc, mut pyc_changed, mut src, mut src_changed) = (0, 0, 0, 0, 0, 0);
    for (p, e) in files_of(&ma) {
        let changed = e.kind != mb[p].kind;
        if p.starts_with("lib/lib") || p.ends_with("-linux-gnu.so") {
            bins += 1;
            bins_changed += changed as usize;
        } else if p.ends_with(".pyc") && p != "lib/python/lsst/__pycache__/__init__.cpython-311.pyc" {
            // (The namespace package's bytecode is the same in every LSST product and release.)
            pyc += 1;
            pyc_changed += changed as usize;
        } else if p.ends_with(".py") || p.ends_with(".h") || p.ends_with(".sql") || p.ends_with(".html") {
            // Sources and data: mostly untouched by a rebuild.
            src += 1;
            src_changed += changed as usize;
        }
    }
    assert!(bins >= 5 && bins_changed * 10 >= bins * 7, "{bins_changed}/{bins} binaries changed");
    assert_eq!(pyc_changed, pyc, "every .pyc changes");
    assert!(src >= 30 && src_changed * 5 < src, "{src_changed}/{src} sources changed");
}

#[test]
fn rebuilt_binaries_keep_some_sections() {
    let ctx = Arc::new(junk_ctx());
    let old = Hist { builds: Arc::from(vec![4, 3, 2]), pct_file: 95, pct_block: 55 };
    let new = Hist { builds: Arc::from(vec![5, 4, 3, 2]), ..old.clone() };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut shared, mut total, mut changed_files) = (0usize, 0usize, 0);
    for id in 0..8u64 {
        let g = Gen {
            kind: Kind::Elf { rpath: true },
            size: (640 << 10) + id as usize * 77_777,
            id,
            hist: old.clone(),
            ctx: ctx.clone(),
        };
        render(&g, &mut a);
        render(&Gen { hist: new.clone(), ..g }, &mut b);
        assert_eq!(a.len(), b.len());
        changed_files += (a != b) as usize;
        for (x, y) in a.chunks(4096).zip(b.chunks(4096)) {
            shared += (x == y) as usize;
            total += 1;
        }
    }
    assert!(changed_files >= 7);
    let frac = shared as f64 / total as f64;
    assert!((0.25..0.65).contains(&frac), "{frac:.2} of binary pages shared");
}

#[test]
fn bumped_dependency_shares_most_content() {
    // Release 2 bumps one dependency; compare its two version directories.
    let (a, b) = (TempDir::new("bump-a"), TempDir::new("bump-b"));
    generate(a.path(), &opts(16 * MIB, 1)).unwrap();
    generate(b.path(), &opts(16 * MIB, 2)).unwrap();
    let (v1, v2) = (product_versions(1), product_versions(2));
    let ((dep, old), (_, new)) = v1.iter().zip(&v2).find(|(x, y)| x.1 != y.1 && x.0 != "qserv").unwrap();
    let ma = walk(&a.join(&format!("Linux64/{dep}/{old}")));
    let mb = walk(&b.join(&format!("Linux64/{dep}/{new}")));
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>());
    let n = files_of(&ma).count();
    let same = files_of(&ma).filter(|(p, e)| e.kind == mb[*p].kind).count();
    assert!(same * 10 >= n * 6, "{dep}: only {same} of {n} files identical");
}

#[test]
fn jumps_and_downgrades_match_fresh_trees() {
    let (a, b) = (TempDir::new("jump-a"), TempDir::new("jump-b"));
    generate(a.path(), &opts(4 * MIB, 1)).unwrap();
    for r in [4u32, 3] {
        generate(a.path(), &opts(4 * MIB, r)).unwrap();
        check_ups_db(a.path(), r);
        remove_tree(b.path()).unwrap();
        generate(b.path(), &opts(4 * MIB, r)).unwrap();
        assert_eq!(tree_hash(a.path()), tree_hash(b.path()), "release {r}");
    }
    // A different size is a different tree, but syncing to it works too.
    generate(a.path(), &opts(5 * MIB, 6)).unwrap();
    check_ups_db(a.path(), 6);
    remove_tree(b.path()).unwrap();
    generate(b.path(), &opts(5 * MIB, 6)).unwrap();
    assert_eq!(tree_hash(a.path()), tree_hash(b.path()));
}

#[test]
fn repairs_tampered_trees_and_removes_junk() {
    let (a, b) = (TempDir::new("fix-a"), TempDir::new("fix-b"));
    let o = opts(4 * MIB, 2);
    generate(a.path(), &o).unwrap();
    generate(b.path(), &o).unwrap();
    let want = tree_hash(b.path());

    add_build_junk(a.path()).unwrap();
    assert!(a.join("EupsBuildDir").is_dir() && a.join("ups_db/.lockDir").is_dir());
    // Damage: changed content, changed mode, a replaced symlink, a broken hard link, a deleted directory.
    let m = walk(a.path());
    let table = m.keys().find(|p| p.ends_with("/ups/boost.table")).unwrap().clone();
    fs::write(a.join(&table), "garbage\n").unwrap();
    let exe = files_of(&m).find(|(_, e)| e.mode == 0o755).unwrap().0.clone();
    fs::set_permissions(a.join(&exe), fs::Permissions::from_mode(0o700)).unwrap();
    let link = m.iter().find(|(_, e)| matches!(e.kind, Kind2::Link(_))).unwrap().0.clone();
    fs::remove_file(a.join(&link)).unwrap();
    std::os::unix::fs::symlink("elsewhere", a.join(&link)).unwrap();
    let hard = m.keys().find(|p| p.ends_with("/bin/python3")).unwrap().clone();
    fs::remove_file(a.join(&hard)).unwrap();
    fs::write(a.join(&hard), "not a link").unwrap();
    let schema = m.keys().find(|p| p.ends_with("share/qserv/schema")).unwrap().clone();
    remove_tree(&a.join(&schema)).unwrap();

    let st = generate(a.path(), &o).unwrap();
    assert!(!a.join("EupsBuildDir").exists());
    assert!(!a.join("ups_db/.lockDir").exists());
    assert!(st.files_removed >= 4, "{st:?}");
    assert!(st.files_written >= 2, "{st:?}");
    assert_eq!(tree_hash(a.path()), want);
    assert_eq!(fs::symlink_metadata(a.join(&hard)).unwrap().nlink(), 2);
}

#[test]
fn refuses_foreign_directories() {
    let d = TempDir::new("foreign");
    fs::write(d.join("precious.txt"), "keep me").unwrap();
    let err = generate(d.path(), &opts(MIB, 1)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(fs::read_to_string(d.join("precious.txt")).unwrap(), "keep me");
    let f = d.join("precious.txt");
    assert!(generate(&f, &opts(MIB, 1)).is_err());
    assert_eq!(generate(&d.join("x"), &opts(MIB, 0)).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    let bad_flavor = GenOptions { flavor: "a/b".into(), ..opts(MIB, 1) };
    assert!(generate(&d.join("y"), &bad_flavor).is_err());
}

#[test]
fn prefix_and_flavor_are_honoured() {
    let d = TempDir::new("flavor");
    let o = GenOptions { release: 2, size: 2 * MIB, prefix: "/opt/stack-xyz".into(), flavor: "Linux64v2".into() };
    generate(d.path(), &o).unwrap();
    assert!(d.join("Linux64v2/qserv/2026.11.2/ups/qserv.table").is_file());
    assert!(d.join("ups_db/Linux64v2.pickleDB1_3_0").is_file());
    assert!(!d.join("Linux64").exists());
    let v = fs::read_to_string(d.join("ups_db/boost/1.83.0.lsst1.version")).unwrap();
    assert!(v.contains("   FLAVOR = Linux64v2\n") && v.contains("   PROD_DIR = Linux64v2/boost/1.83.0.lsst1\n"), "{v}");
    let pc = fs::read_to_string(d.join("Linux64v2/qserv/2026.11.2/lib/pkgconfig/qserv.pc")).unwrap();
    assert!(pc.starts_with("prefix=/opt/stack-xyz/Linux64v2/qserv/2026.11.2\n"), "{pc}");
    assert!(fs::read_to_string(d.join("loadLSST.bash")).unwrap().contains("LSST_HOME=\"/opt/stack-xyz\""));
}

#[test]
fn generators_fill_exact_sizes() {
    let ctx = Arc::new(junk_ctx());
    let hist = Hist { builds: Arc::from(vec![5, 3, 2]), pct_file: 100, pct_block: 50 };
    let dialects = [
        Dialect::Py,
        Dialect::PyScript,
        Dialect::Cpp,
        Dialect::C,
        Dialect::Md,
        Dialect::Html,
        Dialect::Man,
        Dialect::Txt,
        Dialect::Sql,
        Dialect::Sh,
        Dialect::Json,
        Dialect::Csv,
        Dialect::Xml,
        Dialect::Swig,
    ];
    let mut kinds: Vec<Kind> = dialects.iter().map(|&d| Kind::Text(d)).collect();
    kinds.extend([Kind::Elf { rpath: true }, Kind::Elf { rpath: false }, Kind::Archive, Kind::Data]);
    let mut buf = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        for size in [0usize, 1, 17, 300, 4095, 4096, 4097, 70_000, 300_000] {
            let g = Gen { kind, size, id: i as u64 * 1000 + size as u64, hist: hist.clone(), ctx: ctx.clone() };
            render(&g, &mut buf);
            assert_eq!(buf.len(), size, "kind #{i} size {size}");
        }
    }
    for src_len in [0u32, 10, 4096, 10_000] {
        let g = Gen {
            kind: Kind::Pyc { stamp: 5, src_len },
            size: pyc_len(src_len as usize),
            id: 9,
            hist: hist.clone(),
            ctx: ctx.clone(),
        };
        render(&g, &mut buf);
        assert_eq!(buf.len(), g.size);
    }
    // Text is text.
    let g = Gen { kind: Kind::Text(Dialect::Py), size: 50_000, id: 1, hist: hist.clone(), ctx: ctx.clone() };
    render(&g, &mut buf);
    assert!(buf.iter().all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)));
}

#[test]
fn hist_models_rebuilds() {
    let builds: Arc<[u32]> = Arc::from((2..=10u32).rev().collect::<Vec<_>>());
    let h = Hist { builds, pct_file: 100, pct_block: 50 };
    for id in 0..50u64 {
        assert_eq!(h.file_rev(id), 10);
        // A changed file always has at least one changed block, and not all blocks change.
        let revs: Vec<u32> = (0..40).map(|b| h.block_rev(id, b, 40)).collect();
        assert!(revs.contains(&10));
        assert!(revs.iter().any(|&r| r < 10));
    }
    let none = Hist { builds: Arc::from([]), pct_file: 100, pct_block: 100 };
    assert_eq!(none.file_rev(1), 1);
    assert_eq!(none.block_rev(1, 0, 1), 1);
}
