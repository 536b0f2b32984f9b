use super::*;

const VERSION_FILE: &str = "FILE = version\nPRODUCT = boost\nVERSION = 1.83.0.lsst1\n#***************************************\n\nGroup:\n   FLAVOR = Linux64\n   QUALIFIERS = \"\"\n   DECLARER = qserv\n   DECLARED = 2026-11-01T12:00:00.000000\n   PROD_DIR = Linux64/boost/1.83.0.lsst1\n   UPS_DIR = ups\n   TABLE_FILE = boost.table\nEnd:\n";

#[test]
fn parses_eups_version_files() {
    let v = parse_version_file(VERSION_FILE).unwrap();
    assert_eq!(v.product, "boost");
    assert_eq!(v.version, "1.83.0.lsst1");
    assert_eq!(v.prod_dir, "Linux64/boost/1.83.0.lsst1");
    assert!(parse_version_file("FILE = version\nPRODUCT = x\n").is_none());
}

fn dirs(paths: &[&str]) -> Vec<SourceEntry> {
    let mut v: Vec<SourceEntry> = paths
        .iter()
        .map(|p| SourceEntry {
            path: p.as_bytes().to_vec(),
            mode: 0o755,
            mtime: Mtime::default(),
            kind: SourceKind::Dir,
        })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

fn vf(product: &str, version: &str, dir: &str) -> VersionFile {
    VersionFile { product: product.into(), version: version.into(), prod_dir: dir.into() }
}

#[test]
fn finds_parts_from_ups_db_then_layout() {
    let entries = dirs(&[
        "",
        "Linux64",
        "Linux64/boost",
        "Linux64/boost/1.83",
        "Linux64/qserv",
        "Linux64/qserv/2026.11.1",
        "Linux64/qserv/2026.11.1/lib",
        "opt",
        "opt/custom",
        "opt/custom/v1",
        "opt/custom/v1/ups",
        "opt/noups",
        "opt/noups/v1",
        "ups_db",
        "ups_db/boost",
        "ups_db/boost/x",
    ]);
    let vfs = vec![
        vf("boost", "1.83", "Linux64/boost/1.83"),
        vf("abs", "1", "/qserv/stack/Linux64/qserv/2026.11.1"),
        vf("gone", "1", "Linux64/gone/1"),
        vf("evil", "1", "../../etc"),
    ];
    let parts = find_parts(&entries, &vfs, b"/qserv/stack");
    let mounts: Vec<String> = parts.iter().map(|p| String::from_utf8_lossy(&p.mount).into_owned()).collect();
    assert_eq!(mounts, vec!["", "Linux64/boost/1.83", "Linux64/qserv/2026.11.1", "opt/custom/v1"]);
    // ups_db names the product of an absolute PROD_DIR; the layout fallback names it from the path.
    assert_eq!(parts[2].kind, PartKind::Product { product: "abs".into(), version: "1".into() });
    assert_eq!(parts[3].kind, PartKind::Product { product: "custom".into(), version: "v1".into() });

    let index = PartIndex::new(&parts);
    for (path, want) in [
        ("", 0),
        ("Linux64", 0),
        ("Linux64/boost", 0),
        ("Linux64/boost/1.83", 1),
        ("Linux64/boost/1.83/lib/libx.so", 1),
        ("Linux64/boost/1.83.extra", 0),
        ("Linux64/boost/1.8", 0),
        ("Linux64/qserv/2026.11.1/lib", 2),
        ("opt/custom/v1/ups/custom.table", 3),
        ("ups_db/boost/1.83.version", 0),
    ] {
        assert_eq!(index.part_of(path.as_bytes()), want, "{path}");
    }
    assert_eq!(rel_to_part(b"Linux64/boost/1.83", b"Linux64/boost/1.83/lib/x"), b"lib/x");
    assert_eq!(rel_to_part(b"Linux64/boost/1.83", b"Linux64/boost/1.83"), b"");
}

#[test]
fn nested_product_directories_stay_in_the_outer_part() {
    let entries = dirs(&["", "Linux64", "Linux64/a", "Linux64/a/1", "Linux64/a/1/Linux64", "Linux64/a/1/sub"]);
    let parts = find_parts(&entries, &[vf("a", "1", "Linux64/a/1"), vf("b", "1", "Linux64/a/1/sub")], b"");
    assert_eq!(parts.len(), 2);
}

#[test]
fn exclusions() {
    let ex = Excluder::new(&["*.o".to_string(), "share/doc".to_string()]).unwrap();
    for (p, want) in [
        ("ups_db/.lockDir", true),
        ("ups_db/boost/.lockDir", false),
        ("EupsBuildDir", true),
        ("Linux64/x/EupsBuildDir", true),
        ("a/b/c.o", true),
        ("a/b/c.oo", false),
        ("share/doc", true),
        ("x/share/doc", false),
        ("", false),
    ] {
        assert_eq!(ex.excluded(p.as_bytes()), want, "{p}");
    }
    assert!(Excluder::new(&["a[".to_string()]).is_err());
}
