//! Golden vectors: every encoding of proto/FORMAT.md pinned as an annotated hexdump in proto/vectors/, checked
//! both ways (our encoder produces the file's bytes; the file's bytes decode to the expected value) with the
//! BLAKE3 each must have. `QPACK_BLESS=1 cargo test golden` rewrites them: only with a format version bump.

use super::*;
use crate::chunk::{self, ChunkerParams};
use crate::id::{ChunkId, ManifestId, ReleaseId};
use crate::keys::PublisherKey;
use crate::manifest::*;
use crate::store::{RefFile, RepoConfig};
use crate::testvec::{check, parse, Vector};

fn manifest_value() -> PartManifest {
    let chunk = ChunkRef { id: ChunkId::of(b"hello"), len: 5 };
    PartManifest {
        entries: vec![
            Entry { path: vec![], mode: 0o755, mtime: Mtime { secs: 1_700_000_000, nanos: 5 }, kind: EntryKind::Dir },
            Entry {
                path: b"a".to_vec(),
                mode: 0o644,
                mtime: Mtime { secs: 1_700_000_001, nanos: 0 },
                kind: EntryKind::File { size: 5, flags: FLAG_EMBEDS_PREFIX, chunks: vec![chunk] },
            },
            Entry {
                path: b"b".to_vec(),
                mode: 0o644,
                mtime: Mtime { secs: 1_700_000_001, nanos: 0 },
                kind: EntryKind::Hardlink { target: b"a".to_vec() },
            },
            Entry {
                path: b"c".to_vec(),
                mode: 0o777,
                mtime: Mtime { secs: -1, nanos: 0 },
                kind: EntryKind::Symlink { target: b"a".to_vec() },
            },
        ],
    }
}

#[test]
fn golden_manifest() {
    let m = manifest_value();
    let hello = ChunkId::of(b"hello");
    let v = Vector::new()
        .header(MAGIC_MANIFEST, "part manifest")
        .pc("entries: 4 (varint)", &4u32)
        .pc("[0] path: \"\" (the root)", &Vec::<u8>::new())
        .pc("[0] mode: 0o755 (varint)", &0o755u32)
        .pc("[0] mtime.secs: 1700000000 (zigzag varint)", &1_700_000_000i64)
        .pc("[0] mtime.nanos: 5", &5u32)
        .pc("[0] kind: Dir (variant 0)", &0u32)
        .pc("[1] path: \"a\"", &b"a".to_vec())
        .pc("[1] mode: 0o644", &0o644u32)
        .pc("[1] mtime.secs: 1700000001", &1_700_000_001i64)
        .pc("[1] mtime.nanos: 0", &0u32)
        .pc("[1] kind: File (variant 1)", &1u32)
        .pc("[1] size: 5", &5u64)
        .raw("[1] flags: FLAG_EMBEDS_PREFIX (raw u8)", &[1])
        .pc("[1] chunks: 1", &1u32)
        .raw("[1] chunk id: blake3(\"hello\")", &hello.0)
        .pc("[1] chunk len: 5", &5u32)
        .pc("[2] path: \"b\"", &b"b".to_vec())
        .pc("[2] mode: 0o644", &0o644u32)
        .pc("[2] mtime.secs: 1700000001", &1_700_000_001i64)
        .pc("[2] mtime.nanos: 0", &0u32)
        .pc("[2] kind: Hardlink (variant 3)", &3u32)
        .pc("[2] target: \"a\"", &b"a".to_vec())
        .pc("[3] path: \"c\"", &b"c".to_vec())
        .pc("[3] mode: 0o777", &0o777u32)
        .pc("[3] mtime.secs: -1 (zigzag: 1)", &-1i64)
        .pc("[3] mtime.nanos: 0", &0u32)
        .pc("[3] kind: Symlink (variant 2)", &2u32)
        .pc("[3] target: \"a\"", &b"a".to_vec());
    let bytes = check(
        "manifest.hex",
        "Part manifest: root dir, file \"a\" (one chunk), hardlink \"b\" -> a, symlink \"c\" -> a",
        &v,
        &m.encode(),
    );
    assert_eq!(PartManifest::decode(&bytes).unwrap(), m);
}

fn release_value() -> Release {
    Release {
        name: "2026.11.24-1".into(),
        created: 1_764_000_000,
        parent: Some(ReleaseId([0xaa; 32])),
        prefix: b"/qserv/stack".to_vec(),
        parts: vec![
            PartRef { mount: vec![], kind: PartKind::Base, manifest: ManifestId([0x11; 32]), n_files: 3, n_bytes: 100 },
            PartRef {
                mount: b"Linux64/qserv/2026.11.1".to_vec(),
                kind: PartKind::Product { product: "qserv".into(), version: "2026.11.1".into() },
                manifest: ManifestId([0x22; 32]),
                n_files: 2,
                n_bytes: 300,
            },
        ],
    }
}

#[test]
fn golden_release() {
    let r = release_value();
    let v = Vector::new()
        .header(MAGIC_RELEASE_BODY, "release body")
        .pc("name: \"2026.11.24-1\"", &"2026.11.24-1")
        .pc("created: 1764000000 (zigzag varint)", &1_764_000_000i64)
        .raw("parent: Some", &[1])
        .raw("parent id", &[0xaa; 32])
        .pc("prefix: \"/qserv/stack\"", &b"/qserv/stack".to_vec())
        .pc("parts: 2", &2u32)
        .pc("[0] mount: \"\"", &Vec::<u8>::new())
        .pc("[0] kind: Base (variant 0)", &0u32)
        .raw("[0] manifest id", &[0x11; 32])
        .pc("[0] n_files: 3", &3u64)
        .pc("[0] n_bytes: 100", &100u64)
        .pc("[1] mount: \"Linux64/qserv/2026.11.1\"", &b"Linux64/qserv/2026.11.1".to_vec())
        .pc("[1] kind: Product (variant 1)", &1u32)
        .pc("[1] product: \"qserv\"", &"qserv")
        .pc("[1] version: \"2026.11.1\"", &"2026.11.1")
        .raw("[1] manifest id", &[0x22; 32])
        .pc("[1] n_files: 2", &2u64)
        .pc("[1] n_bytes: 300 (varint: ac 02)", &300u64);
    let bytes =
        check("release-body.hex", "Release body (its BLAKE3 is the release id): base part + qserv", &v, &r.encode());
    assert_eq!(Release::decode(&bytes).unwrap(), r);
}

#[test]
fn golden_signed_release() {
    let body = release_value().encode();
    let key_path = std::env::temp_dir().join(format!("qpack-golden-key-{}", std::process::id()));
    std::fs::write(&key_path, format!("qpack-publisher-secret {}\n", "07".repeat(32))).unwrap();
    let key = PublisherKey::read(&key_path).unwrap();
    std::fs::remove_file(&key_path).unwrap();
    let sig = key.sign(&body); // ed25519 is deterministic
    let signed =
        SignedRelease { body: body.clone(), signature: Some(Signature { key: key.public(), sig: sig.clone() }) };
    let v = Vector::new()
        .header(MAGIC_RELEASE, "stored release")
        .pc(
            &format!("body: {} bytes (length varint), the QPKB file of release-body.hex", body.len()),
            &(body.len() as u32),
        )
        .raw("body bytes", &body)
        .raw("signature: Some", &[1])
        .raw("key: ed25519 public key of the secret seed 07 × 32", &key.public())
        .pc("sig: 64 bytes (length varint)", &64u32)
        .raw("sig: ed25519 over \"qpack release v1\\0\" || body", &sig);
    let bytes = check(
        "signed-release.hex",
        "Stored release: body + signature by the test key (seed 07 x 32)",
        &v,
        &signed.encode(),
    );
    let (back, _) = SignedRelease::decode(&bytes, Some(ReleaseId::of(&body))).unwrap();
    assert_eq!(back, signed);
}

#[test]
fn golden_ref_and_config() {
    let r = RefFile { release: ReleaseId([0x33; 32]) };
    let v = Vector::new().header(MAGIC_REF, "release ref").raw("release id", &[0x33; 32]);
    let bytes = check("ref.hex", "Release ref (refs/releases/<name>)", &v, &encode(MAGIC_REF, &r));
    assert_eq!(decode::<RefFile>("ref", MAGIC_REF, &bytes, 4096).unwrap(), r);

    let c = RepoConfig { chunker: ChunkerParams::default(), created: 1_764_000_000 };
    let v = Vector::new()
        .header(MAGIC_REPO, "repository config")
        .pc("chunker.min: 16384 (varint)", &16384u32)
        .pc("chunker.avg: 65536", &65536u32)
        .pc("chunker.max: 262144", &262144u32)
        .pc("created: 1764000000 (zigzag varint)", &1_764_000_000i64);
    let bytes = check("repo-config.hex", "Repository config (qpack-repo)", &v, &encode(MAGIC_REPO, &c));
    assert_eq!(decode::<RepoConfig>("config", MAGIC_REPO, &bytes, 4096).unwrap(), c);
}

#[test]
fn golden_chunks() {
    // Raw: fully pinned.
    let data = b"qpack golden chunk: stored raw";
    let v = Vector::new()
        .raw("magic \"QPKC\" (chunk object)", &MAGIC_CHUNK)
        .raw("format version 1", &[1])
        .raw("codec: raw", &[0])
        .raw("uncompressed length: 30 (u32 little-endian)", &30u32.to_le_bytes())
        .raw("payload", data);
    let bytes = check(
        "chunk-raw.hex",
        &format!("Chunk object, raw; id = blake3(payload) = {}", ChunkId::of(data)),
        &v,
        &chunk::encode_object(data, 3),
    );
    assert_eq!(chunk::decode_object(&ChunkId::of(data), &bytes, Some(30)).unwrap(), data);

    // zstd: the decoder is pinned (a zstd upgrade may encode differently, so the encoder is checked by round trip).
    let text: Vec<u8> = b"qserv xrootd mariadb ".iter().copied().cycle().take(4096).collect();
    let id = ChunkId::of(&text);
    let path = format!("{}/proto/vectors/chunk-zstd.hex", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("QPACK_BLESS").is_some() {
        let obj = chunk::encode_object(&text, 3);
        let v = Vector::new()
            .raw("magic \"QPKC\" (chunk object)", &obj[..4])
            .raw("format version 1", &obj[4..5])
            .raw("codec: zstd", &obj[5..6])
            .raw("uncompressed length: 4096 (u32 little-endian)", &obj[6..10])
            .raw("payload: one zstd frame", &obj[10..]);
        std::fs::write(
            &path,
            v.render(&format!(
                "Chunk object, zstd; decodes to \"qserv xrootd mariadb \" repeated to 4096 bytes; id {id}"
            )),
        )
        .unwrap();
    }
    let (bytes, hash) = parse(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hash);
    assert_eq!(chunk::decode_object(&id, &bytes, Some(4096)).unwrap(), text);
    assert_eq!(chunk::decode_object(&id, &chunk::encode_object(&text, 3), Some(4096)).unwrap(), text);
}

#[test]
fn golden_pack() {
    use crate::store::pack::{scan_pack, PackWriter, MAGIC_PACK, MAGIC_PACK_INDEX};
    let data = b"qpack golden chunk: stored raw";
    let id = ChunkId::of(data);
    let obj = chunk::encode_object(data, 3);
    let dir = std::env::temp_dir().join(format!("qpack-golden-pack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = PackWriter::create(&dir).unwrap();
    w.append(&id, &obj).unwrap();
    let sealed = w.finish().unwrap();
    let pack = std::fs::read(&sealed.pack).unwrap();
    let idx = std::fs::read(&sealed.idx).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let v = Vector::new()
        .raw("magic \"QPKP\" (pack)", &MAGIC_PACK)
        .raw("format version 1", &[1])
        .raw("record: object length 40 (u32 little-endian)", &40u32.to_le_bytes())
        .raw("record: chunk id", &id.0)
        .raw("record: the chunk object of chunk-raw.hex", &obj);
    let bytes = check("pack.hex", "Pack with one record (the raw chunk of chunk-raw.hex)", &v, &pack);
    let scan = scan_pack(&bytes);
    assert!(scan.error.is_none());
    assert_eq!(scan.entries.len(), 1);
    assert_eq!((scan.entries[0].id, scan.entries[0].offset, scan.entries[0].len), (id, 41, 40));

    let v = Vector::new()
        .header(MAGIC_PACK_INDEX, "pack index")
        .pc("pack_len: 81 (varint)", &81u64)
        .pc("entries: 1", &1u32)
        .raw("[0] id", &id.0)
        .pc("[0] offset: 41 (5-byte pack header + 36-byte record header)", &41u64)
        .pc("[0] len: 40", &40u32);
    check("pack-index.hex", "Index of pack.hex", &v, &idx);
}
