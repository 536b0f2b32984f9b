use super::*;

fn dir(path: &str) -> Entry {
    Entry { path: path.as_bytes().to_vec(), mode: 0o755, mtime: Mtime { secs: 1, nanos: 2 }, kind: EntryKind::Dir }
}

fn file(path: &str, size: u32) -> Entry {
    let chunks = if size == 0 { vec![] } else { vec![ChunkRef { id: ChunkId::of(path.as_bytes()), len: size }] };
    Entry {
        path: path.as_bytes().to_vec(),
        mode: 0o644,
        mtime: Mtime::default(),
        kind: EntryKind::File { size: u64::from(size), flags: 0, chunks },
    }
}

fn link(path: &str, target: &str, hard: bool) -> Entry {
    let t = target.as_bytes().to_vec();
    let kind = if hard { EntryKind::Hardlink { target: t } } else { EntryKind::Symlink { target: t } };
    Entry { path: path.as_bytes().to_vec(), mode: 0o777, mtime: Mtime::default(), kind }
}

#[test]
fn rel_paths() {
    let check = |p: &[u8], ok: bool| assert_eq!(check_rel_path(p, false).is_ok(), ok, "{:?}", show_path(p));
    check(b"a", true);
    check(b"a/b.c/d", true);
    check(b"with space/and\nnewline", true);
    check(b"\xff\xfe non-utf8", true);
    check(b"", false);
    check(b"/abs", false);
    check(b"a/../b", false);
    check(b"..", false);
    check(b"./a", false);
    check(b"a//b", false);
    check(b"a/", false);
    check(b"a\0b", false);
    check(b"a\\b", false);
    check(&[b'x'; 256], false);
    check(&[b'x'; 255], true);
    assert!(check_rel_path(b"", true).is_ok());
}

fn check_manifest(entries: Vec<Entry>, ok: bool) {
    let m = PartManifest { entries };
    let res = m.validate();
    assert_eq!(res.is_ok(), ok, "{res:?}");
    if ok {
        // A valid manifest round-trips through its encoding, byte for byte.
        let bytes = m.encode();
        let back = PartManifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.encode(), bytes);
    } else {
        assert!(PartManifest::decode(&m.encode()).is_err());
    }
}

#[test]
fn manifest_invariants() {
    check_manifest(vec![dir(""), dir("a"), file("a/f", 3), link("a/g", "a/f", true), link("s", "/etc", false)], true);
    check_manifest(vec![dir(""), file("empty", 0)], true);
    // No root, root not a dir, unsorted, duplicate.
    check_manifest(vec![dir("a")], false);
    check_manifest(vec![file("", 1)], false);
    check_manifest(vec![dir(""), dir("b"), dir("a")], false);
    check_manifest(vec![dir(""), dir("a"), dir("a")], false);
    // Parent missing, or not a directory: a symlink `d -> /etc` then `d/passwd` must be refused.
    check_manifest(vec![dir(""), file("a/f", 1)], false);
    check_manifest(vec![dir(""), link("d", "/etc", false), file("d/passwd", 1)], false);
    check_manifest(vec![dir(""), file("d", 1), file("d/x", 1)], false);
    // Hardlinks: only to an earlier file of the same part.
    check_manifest(vec![dir(""), link("a", "b", true), file("b", 1)], false);
    check_manifest(vec![dir(""), dir("d"), link("x", "d", true)], false);
    check_manifest(vec![dir(""), file("f", 1), link("x", "../f", true)], false);
    // Unsafe names.
    check_manifest(vec![dir(""), file("../x", 1)], false);
    check_manifest(vec![dir(""), file("/x", 1)], false);
    // Sizes and modes.
    let mut bad_size = file("f", 4);
    if let EntryKind::File { size, .. } = &mut bad_size.kind {
        *size = 5;
    }
    check_manifest(vec![dir(""), bad_size], false);
    let mut bad_mode = file("f", 4);
    bad_mode.mode = 0o100644;
    check_manifest(vec![dir(""), bad_mode], false);
    let mut big_chunk = file("f", 1);
    if let EntryKind::File { size, chunks, .. } = &mut big_chunk.kind {
        chunks[0].len = MAX_CHUNK_LEN + 1;
        *size = u64::from(MAX_CHUNK_LEN) + 1;
    }
    check_manifest(vec![dir(""), big_chunk], false);
}

#[test]
fn decode_refuses_garbage() {
    let m = PartManifest { entries: vec![dir(""), file("f", 1)] };
    let bytes = m.encode();
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(PartManifest::decode(&trailing).is_err());
    for n in 0..bytes.len() {
        assert!(PartManifest::decode(&bytes[..n]).is_err(), "truncated at {n}");
    }
    let mut v2 = bytes.clone();
    v2[4] = 2;
    let e = PartManifest::decode(&v2).unwrap_err().to_string();
    assert!(e.contains("version 2"), "{e}");
    let mut magic = bytes;
    magic[0] = b'X';
    assert!(PartManifest::decode(&magic).is_err());
}

fn release(parts: Vec<(&str, PartKind)>) -> Release {
    Release {
        name: "r1".into(),
        created: 0,
        parent: None,
        prefix: b"/qserv/stack".to_vec(),
        parts: parts
            .into_iter()
            .map(|(m, kind)| PartRef {
                mount: m.as_bytes().to_vec(),
                kind,
                manifest: ManifestId([0; 32]),
                n_files: 0,
                n_bytes: 0,
            })
            .collect(),
    }
}

fn product(p: &str) -> PartKind {
    PartKind::Product { product: p.into(), version: "1".into() }
}

#[test]
fn release_invariants() {
    assert!(release(vec![("", PartKind::Base), ("L/a/1", product("a")), ("L/a/10", product("a"))]).validate().is_ok());
    assert!(release(vec![("L/a/1", product("a"))]).validate().is_err());
    assert!(release(vec![("", PartKind::Base), ("", PartKind::Base)]).validate().is_err());
    assert!(release(vec![("", PartKind::Base), ("L/a", product("a")), ("L/a/1", product("b"))]).validate().is_err());
    assert!(release(vec![("", PartKind::Base), ("L/a", product("a")), ("L/a", product("b"))]).validate().is_err());
    assert!(release(vec![("", PartKind::Base), ("../x", product("a"))]).validate().is_err());
    for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(129)] {
        assert!(check_release_name(bad).is_err(), "{bad:?}");
    }
    for good in ["2026.11.24-1", "r1", "v1.2+build_3"] {
        assert!(check_release_name(good).is_ok(), "{good:?}");
    }
}

#[test]
fn signed_release_checks_id_and_signature() {
    let r = release(vec![("", PartKind::Base)]);
    let body = r.encode();
    let key = crate::keys::PublisherKey::generate().unwrap();
    let signed =
        SignedRelease { body: body.clone(), signature: Some(Signature { key: key.public(), sig: key.sign(&body) }) };
    let bytes = signed.encode();
    let (_, back) = SignedRelease::decode(&bytes, Some(ReleaseId::of(&body))).unwrap();
    assert_eq!(back, r);
    // Wrong expected id.
    assert!(SignedRelease::decode(&bytes, Some(ReleaseId([1; 32]))).is_err());
    // A signature over another body.
    let mut other = r.clone();
    other.name = "r2".into();
    let forged =
        SignedRelease { body: other.encode(), signature: Some(Signature { key: key.public(), sig: key.sign(&body) }) };
    assert!(SignedRelease::decode(&forged.encode(), None).is_err());
}
