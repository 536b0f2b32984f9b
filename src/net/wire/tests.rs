//! Golden vectors and decoder robustness for the wire protocol.
//!
//! Every `proto/vectors/wire-*.hex` file is one whole frame (length prefix included) pinned as an annotated
//! hexdump, checked both ways: our encoder produces the file's bytes, and the file's bytes read back through
//! `read_frame` and `decode` give the message. `QPACK_BLESS=1 cargo test golden` rewrites them: only together
//! with a new ALPN (`proto/PROTOCOL.md`, "Versioning").

use super::*;
use crate::chunk;
use crate::manifest::MAX_CHUNK_LEN;
use crate::testvec::{check, Vector};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A current-thread runtime: reading from a `&[u8]` never waits, so nothing else is needed.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
}

/// Reads one frame from `bytes` and checks that nothing follows it.
fn one_frame(bytes: &[u8], cap: usize) -> Vec<u8> {
    block_on(async {
        let mut r = bytes;
        let body = read_frame(&mut r, cap).await.expect("a frame").expect("not the end");
        assert!(read_frame(&mut r, cap).await.expect("clean end").is_none(), "bytes after the frame");
        body
    })
}

/// Checks the vector file `name` against `v` (the frame body's pieces) and `msg` both ways.
fn golden<T>(name: &str, title: &str, v: Vector, msg: &T, cap: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = check(name, title, &v.framed(), &encode(msg));
    let back: T = decode(&one_frame(&bytes, cap)).expect("the vector decodes");
    assert_eq!(&back, msg, "{name}: decodes to something else");
}

const NAME: &str = "2026.11.24-1";
const OLD: &str = "2026.11.17-1";
const RELEASE: ReleaseId = ReleaseId([0x33; 32]);

#[test]
fn golden_requests() {
    let msg = Request::GetRelease { name: NAME.into() };
    let v = Vector::new().pc("Request::GetRelease (variant 0)", &0u32).pc(&format!("name: {NAME:?}"), &NAME);
    golden("wire-get-release.hex", "Request GetRelease { name: \"2026.11.24-1\" }", v, &msg, MAX_REQUEST);

    let msg = Request::Subscribe { release: RELEASE };
    let v =
        Vector::new().pc("Request::Subscribe (variant 2)", &2u32).raw("release: id (32 bytes, no length)", &[0x33; 32]);
    golden("wire-subscribe.hex", "Request Subscribe { release: 33 x 32 }", v, &msg, MAX_REQUEST);

    let indices = vec![0u32, 1, 127, 128, 300, 70_000];
    let msg = Request::GetChunks { release: RELEASE, indices: indices.clone() };
    let mut v = Vector::new()
        .pc("Request::GetChunks (variant 3)", &3u32)
        .raw("release: id (32 bytes, no length)", &[0x33; 32])
        .pc("indices: 6 (varint count)", &6u32);
    for (k, i) in indices.iter().enumerate() {
        v = v.pc(&format!("indices[{k}]: {i} (varint)"), i);
    }
    golden(
        "wire-get-chunks.hex",
        "Request GetChunks { release: 33 x 32, indices: [0, 1, 127, 128, 300, 70000] } (varints of 1, 2 and 3 bytes)",
        v,
        &msg,
        MAX_REQUEST,
    );

    let cohort = vec!["ccqserv101".to_string(), "ccqserv102".to_string()];
    let msg = Request::Stage { name: NAME.into(), cohort: cohort.clone() };
    let v = Vector::new()
        .pc("Request::Stage (variant 4)", &4u32)
        .pc(&format!("name: {NAME:?}"), &NAME)
        .pc("cohort: 2 (varint count)", &2u32)
        .pc(&format!("cohort[0]: {:?}", cohort[0]), &cohort[0])
        .pc(&format!("cohort[1]: {:?}", cohort[1]), &cohort[1]);
    golden(
        "wire-stage.hex",
        "Request Stage { name: \"2026.11.24-1\", cohort: [\"ccqserv101\", \"ccqserv102\"] } (operator only)",
        v,
        &msg,
        MAX_REQUEST,
    );

    let msg = Request::Status;
    let v = Vector::new().pc("Request::Status (variant 7, no fields)", &7u32);
    golden("wire-status-request.hex", "Request Status", v, &msg, MAX_REQUEST);

    let msg = Request::GetManifestZstd { id: ManifestId([0x44; 32]) };
    let v = Vector::new()
        .pc("Request::GetManifestZstd (variant 8)", &8u32)
        .raw("id: manifest id (32 bytes, no length)", &[0x44; 32]);
    golden("wire-get-manifest-zstd.hex", "Request GetManifestZstd { id: 44 x 32 }", v, &msg, MAX_REQUEST);
}

/// The content of [`zstd_frame`].
const ZSTD_CONTENT: &[u8] = b"a part manifest file";

/// A zstd frame (RFC 8878) of [`ZSTD_CONTENT`] in one raw block, built by hand so that the vector does not
/// depend on a compressor's version: magic, descriptor (single segment, 1-byte content size, no checksum),
/// content size 20, block header (last, raw, 20 bytes: 1 + 20 << 3 = 0xa1, little-endian in 3 bytes), content.
fn zstd_frame() -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x20, 20, 0xa1, 0x00, 0x00];
    f.extend_from_slice(ZSTD_CONTENT);
    f
}

#[test]
fn golden_manifest_zstd() {
    let frame = zstd_frame();
    let msg = Response::ManifestZstd { frame: frame.clone() };
    let v = Vector::new()
        .pc("Response::ManifestZstd (variant 12)", &12u32)
        .pc("frame: 29 bytes (varint length)", &29u32)
        .raw("frame: zstd magic 28 b5 2f fd", &frame[..4])
        .raw("frame: descriptor 0x20 (single segment, 1-byte content size, no checksum, no dictionary)", &frame[4..5])
        .raw("frame: content size 20", &frame[5..6])
        .raw("frame: block header (last block, raw, 20 bytes; 24 bits little-endian)", &frame[6..9])
        .raw("frame: the block, the manifest file's bytes (here a stand-in)", &frame[9..]);
    golden(
        "wire-manifest-zstd.hex",
        "Response ManifestZstd { frame: one raw-block zstd frame of \"a part manifest file\" }",
        v,
        &msg,
        MAX_RESPONSE,
    );
    assert_eq!(unzstd_capped(&frame, 1000).unwrap(), ZSTD_CONTENT);
}

#[test]
fn manifest_zstd_is_bounded() {
    // What our server sends comes back whole, at the cap exactly.
    let file: Vec<u8> =
        (0..200_000u32).flat_map(|i| format!("include/boost/part{}.hpp\n", i % 977).into_bytes()).collect();
    let frame = zstd::bulk::compress(&file, MANIFEST_ZSTD_LEVEL).unwrap();
    assert!(frame.len() * 10 < file.len(), "paths compress");
    assert_eq!(unzstd_capped(&frame, file.len()).unwrap(), file);
    // One byte over the cap is refused, and the refusal does not first expand the whole frame: 64 MiB of
    // zeros (a 2-KiB frame) against a 1-MiB cap allocates about the cap, not the content.
    let err = unzstd_capped(&frame, file.len() - 1).unwrap_err();
    assert!(err.contains("more than"), "{err}");
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], MANIFEST_ZSTD_LEVEL).unwrap();
    assert!(bomb.len() < 64 << 10);
    let (r, peak) = alloc_probe::largest(|| unzstd_capped(&bomb, 1 << 20));
    assert!(r.unwrap_err().contains("more than 1048576 bytes"));
    assert!(peak <= 4 << 20, "peak allocation {peak} bytes for a 1-MiB cap");
    // A frame that asks for a 32-MiB window is refused before that window is allocated.
    let mut e = zstd::stream::Encoder::new(Vec::new(), MANIFEST_ZSTD_LEVEL).unwrap();
    e.window_log(25).unwrap();
    std::io::Write::write_all(&mut e, &file).unwrap();
    let wide = e.finish().unwrap();
    let (r, peak) = alloc_probe::largest(|| unzstd_capped(&wide, file.len()));
    assert!(r.is_err(), "a 32-MiB window was accepted");
    assert!(peak < 16 << 20, "peak allocation {peak} bytes");
    // Not zstd, or cut short: errors, not panics.
    assert!(unzstd_capped(b"QPKM not compressed", 1 << 20).is_err());
    assert!(unzstd_capped(&frame[..frame.len() / 2], 1 << 20).is_err());
}

#[test]
fn golden_responses() {
    let msg = Response::Error { code: E_BUSY, message: "all upload slots busy".into() };
    let v = Vector::new()
        .pc("Response::Error (variant 0)", &0u32)
        .pc("code: 5 = E_BUSY (varint u16)", &E_BUSY)
        .pc("message: \"all upload slots busy\"", &"all upload slots busy");
    golden("wire-error.hex", "Response Error { code: E_BUSY, message }", v, &msg, MAX_RESPONSE);

    // Ten chunks, the server has 0, 2 and 9: bit i % 8 of byte i / 8.
    let mut bm = Bitmap::new(10);
    for i in [0, 2, 9] {
        bm.set(i);
    }
    assert_eq!(bm.bytes(), [0b0000_0101, 0b0000_0010]);
    let msg = Response::Have { bitmap: bm.bytes().to_vec(), more: true };
    let v = Vector::new()
        .pc("Response::Have (variant 3)", &3u32)
        .pc("bitmap: 2 bytes (varint length; ceil(10 chunks / 8))", &2u32)
        .raw("bitmap: chunks 0, 2 (byte 0 bits 0, 2) and 9 (byte 1 bit 1)", bm.bytes())
        .raw("more: true (HaveMore frames follow)", &[1]);
    golden("wire-have.hex", "Response Have: 10 chunks, has 0, 2 and 9, staging (more: true)", v, &msg, MAX_RESPONSE);

    let msg = Response::HaveMore { indices: vec![1, 3, 300] };
    let v = Vector::new()
        .pc("Response::HaveMore (variant 4)", &4u32)
        .pc("indices: 3", &3u32)
        .pc("indices[0]: 1", &1u32)
        .pc("indices[1]: 3", &3u32)
        .pc("indices[2]: 300 (varint: ac 02)", &300u32);
    golden("wire-have-more.hex", "Response HaveMore { indices: [1, 3, 300] }", v, &msg, MAX_RESPONSE);

    // The raw chunk object of chunk-raw.hex.
    let data = b"qpack golden chunk: stored raw";
    let object = chunk::encode_object(data, 3);
    let msg = Response::Chunk { index: 5, object: object.clone() };
    let v = Vector::new()
        .pc("Response::Chunk (variant 5)", &5u32)
        .pc("index: 5", &5u32)
        .pc("object: 40 bytes (varint length)", &40u32)
        .raw("object: magic \"QPKC\"", &object[..4])
        .raw("object: format version 1", &object[4..5])
        .raw("object: codec raw", &object[5..6])
        .raw("object: uncompressed length 30 (u32 little-endian)", &object[6..10])
        .raw("object: payload", &object[10..]);
    golden(
        "wire-chunk.hex",
        "Response Chunk { index: 5, object: the chunk object of chunk-raw.hex }",
        v,
        &msg,
        MAX_RESPONSE,
    );
    assert_eq!(chunk::decode_object(&crate::id::ChunkId::of(data), &object, Some(30)).unwrap(), data);

    let v = Vector::new().pc("Response::End (variant 7, no fields)", &7u32);
    golden("wire-end.hex", "Response End (the last frame of a GetChunks answer)", v, &Response::End, MAX_RESPONSE);

    let p = Progress {
        release: NAME.into(),
        phase: "fetching".into(),
        bytes_done: 1 << 20,
        bytes_total: 4 << 20,
        chunks_done: 16,
        chunks_total: 64,
        peers: 3,
        rate: 512 << 10,
        sources_only: 5,
    };
    let v = Vector::new()
        .pc("Response::Progress (variant 8)", &8u32)
        .pc(&format!("release: {NAME:?}"), &NAME)
        .pc("phase: \"fetching\"", &"fetching")
        .pc("bytes_done: 1048576 (varint u64)", &p.bytes_done)
        .pc("bytes_total: 4194304", &p.bytes_total)
        .pc("chunks_done: 16", &p.chunks_done)
        .pc("chunks_total: 64", &p.chunks_total)
        .pc("peers: 3 (varint u32)", &p.peers)
        .pc("rate: 524288 bytes/s", &p.rate)
        .pc("sources_only: 5", &p.sources_only);
    golden(
        "wire-progress.hex",
        "Response Progress (a Stage in its fetching phase)",
        v,
        &Response::Progress(p),
        MAX_RESPONSE,
    );

    let s = Staged {
        release: NAME.into(),
        id: RELEASE.to_hex(),
        already: false,
        chunks_fetched: 64,
        bytes_fetched: 4_000_000,
        seconds: 1.5,
    };
    let v = Vector::new()
        .pc("Response::Staged (variant 9)", &9u32)
        .pc(&format!("release: {NAME:?}"), &NAME)
        .pc("id: 64 hex characters (a String, not 32 bytes)", &s.id)
        .raw("already: false", &[0])
        .pc("chunks_fetched: 64", &64u64)
        .pc("bytes_fetched: 4000000", &4_000_000u64)
        .raw("seconds: 1.5 (f64, 8 bytes little-endian)", &1.5f64.to_le_bytes());
    golden("wire-staged.hex", "Response Staged (64 chunks fetched in 1.5 s)", v, &Response::Staged(s), MAX_RESPONSE);

    let s = Switched { from: Some(OLD.into()), to: NAME.into(), unchanged: false, post_switch_error: None };
    let v = Vector::new()
        .pc("Response::Switched (variant 10)", &10u32)
        .raw("from: Some", &[1])
        .pc(&format!("from: {OLD:?}"), &OLD)
        .pc(&format!("to: {NAME:?}"), &NAME)
        .raw("unchanged: false", &[0])
        .raw("post_switch_error: None", &[0]);
    golden(
        "wire-switched.hex",
        "Response Switched from 2026.11.17-1 to 2026.11.24-1",
        v,
        &Response::Switched(s),
        MAX_RESPONSE,
    );
}

#[test]
fn golden_status() {
    let peer = PeerStats {
        name: "node-02".into(),
        bytes_in: 4_000_000,
        bytes_out: 1000,
        chunks_in: 64,
        chunks_out: 1,
        errors: 0,
        bad_chunks: 0,
        banned: false,
    };
    let s = NodeStatus {
        name: "node-01".into(),
        active: Some(NAME.into()),
        installed: vec![OLD.into(), NAME.into()],
        transfer: None,
        last_error: None,
        desired: Some(Desired { release: NAME.into(), activate: true, state: "converged".into() }),
        peers: vec![peer],
        bytes_served: 1000,
        refused: 2,
    };
    let v = Vector::new()
        .pc("Response::Status (variant 11)", &11u32)
        .pc("name: \"node-01\"", &"node-01")
        .raw("active: Some", &[1])
        .pc(&format!("active: {NAME:?}"), &NAME)
        .pc("installed: 2", &2u32)
        .pc(&format!("installed[0]: {OLD:?}"), &OLD)
        .pc(&format!("installed[1]: {NAME:?}"), &NAME)
        .raw("transfer: None", &[0])
        .raw("last_error: None", &[0])
        .raw("desired: Some", &[1])
        .pc(&format!("desired.release: {NAME:?}"), &NAME)
        .raw("desired.activate: true", &[1])
        .pc("desired.state: \"converged\"", &"converged")
        .pc("peers: 1", &1u32)
        .pc("peers[0].name: \"node-02\"", &"node-02")
        .pc("peers[0].bytes_in: 4000000", &4_000_000u64)
        .pc("peers[0].bytes_out: 1000", &1000u64)
        .pc("peers[0].chunks_in: 64", &64u64)
        .pc("peers[0].chunks_out: 1", &1u64)
        .pc("peers[0].errors: 0", &0u64)
        .pc("peers[0].bad_chunks: 0", &0u64)
        .raw("peers[0].banned: false", &[0])
        .pc("bytes_served: 1000", &1000u64)
        .pc("refused: 2", &2u64);
    golden(
        "wire-status.hex",
        "Response Status: node-01, active 2026.11.24-1, converged, one peer",
        v,
        &Response::Status(Box::new(s)),
        MAX_RESPONSE,
    );
}

/// The variant indices, the error codes and the caps are part of `qpack/1`: changing one needs a new ALPN.
#[test]
fn variant_indices_codes_and_caps() {
    let r = ReleaseId([0; 32]);
    let requests = [
        Request::GetRelease { name: String::new() },
        Request::GetManifest { id: ManifestId([0; 32]) },
        Request::Subscribe { release: r },
        Request::GetChunks { release: r, indices: vec![] },
        Request::Stage { name: String::new(), cohort: vec![] },
        Request::Switch { release: String::new() },
        Request::Rollback,
        Request::Status,
        Request::GetManifestZstd { id: ManifestId([0; 32]) },
    ];
    for (i, req) in requests.iter().enumerate() {
        assert_eq!(encode(req)[4] as usize, i, "{req:?}");
    }
    let responses = [
        Response::Error { code: 0, message: String::new() },
        Response::Release { id: r, bytes: vec![] },
        Response::Manifest { bytes: vec![] },
        Response::Have { bitmap: vec![], more: false },
        Response::HaveMore { indices: vec![] },
        Response::Chunk { index: 0, object: vec![] },
        Response::NotHere { index: 0 },
        Response::End,
        Response::Progress(Progress::default()),
        Response::Staged(Staged::default()),
        Response::Switched(Switched::default()),
        Response::Status(Box::default()),
        Response::ManifestZstd { frame: vec![] },
    ];
    for (i, resp) in responses.iter().enumerate() {
        assert_eq!(encode(resp)[4] as usize, i, "{resp:?}");
    }
    assert_eq!([E_MALFORMED, E_TOO_LARGE, E_FORBIDDEN, E_NOT_FOUND, E_BUSY, E_INTERNAL], [1, 2, 3, 4, 5, 6]);
    assert_eq!((MAX_REQUEST, MAX_RESPONSE, MAX_BATCH), (64 << 10, 8 << 20, 4096));

    // The largest legal messages fit their caps: a full batch of the widest indices, the largest chunk object.
    let req = Request::GetChunks { release: r, indices: vec![u32::MAX; MAX_BATCH] };
    assert!(encode(&req).len() - 4 <= MAX_REQUEST);
    let resp = Response::Chunk { index: u32::MAX, object: vec![0; chunk::HEADER_LEN + MAX_CHUNK_LEN as usize] };
    assert!(encode(&resp).len() - 4 <= MAX_RESPONSE);
    let resp = Response::HaveMore { indices: vec![u32::MAX; MAX_BATCH] };
    assert!(encode(&resp).len() - 4 <= MAX_RESPONSE);
}

#[test]
fn bitmap_roundtrip() {
    let mut b = Bitmap::new(10);
    assert!(b.set(9));
    assert!(!b.set(9));
    assert!(b.get(9) && !b.get(8) && !b.get(10));
    assert_eq!(Bitmap::from_bytes(b.bytes().to_vec(), 10), Some(b));
}

#[test]
fn bitmap_wrong_length() {
    assert_eq!(Bitmap::from_bytes(vec![], 0), Some(Bitmap::new(0)));
    assert!(Bitmap::from_bytes(vec![0], 0).is_none());
    assert!(Bitmap::from_bytes(vec![], 1).is_none());
    assert!(Bitmap::from_bytes(vec![0], 8).is_some());
    assert!(Bitmap::from_bytes(vec![0], 9).is_none());
    assert!(Bitmap::from_bytes(vec![0, 0], 8).is_none());
}

// --- Framing on an in-memory stream.

/// Largest single allocation on this thread while armed (`Some`), for the test that a too-large frame is
/// refused before its body is allocated. Wraps the system allocator for the lib's test binary; costs a
/// thread-local read per allocation.
mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|c| {
            if let Some(m) = c.get() {
                c.set(Some(m.max(size)));
            }
        });
    }

    struct Probe;

    // SAFETY: every call is forwarded unchanged to the system allocator; `note` does not allocate.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    /// Runs `f` and returns its result and the largest allocation it made on this thread.
    pub(super) fn largest<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|c| c.set(Some(0)));
        let out = f();
        let m = LARGEST.with(|c| c.replace(None)).unwrap_or(0);
        (out, m)
    }
}

#[test]
fn too_large_is_refused_before_allocating() {
    // The probe sees a large allocation when there is one.
    let (_, seen) = alloc_probe::largest(|| std::hint::black_box(vec![1u8; 4 << 20]).len());
    assert!(seen >= 4 << 20, "the allocation probe does not work ({seen})");

    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    // A prefix announcing 4 GiB - 1, and no body at all: the cap decides from the prefix alone.
    let prefix = u32::MAX.to_le_bytes();
    let (r, largest) = alloc_probe::largest(|| {
        rt.block_on(async {
            let mut r: &[u8] = &prefix;
            read_frame(&mut r, MAX_RESPONSE).await
        })
    });
    match r {
        Err(FrameError::TooLarge { len, cap }) => assert_eq!((len, cap), (u64::from(u32::MAX), MAX_RESPONSE)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(largest < 1 << 20, "read_frame allocated {largest} bytes for a refused frame");
    assert_eq!(FrameError::TooLarge { len: 0, cap: 0 }.code(), E_TOO_LARGE);

    // One byte over the cap is refused, exactly the cap is read.
    let mut at_cap = ((MAX_REQUEST) as u32).to_le_bytes().to_vec();
    at_cap.resize(4 + MAX_REQUEST, 0);
    assert_eq!(one_frame(&at_cap, MAX_REQUEST).len(), MAX_REQUEST);
    let over = ((MAX_REQUEST + 1) as u32).to_le_bytes();
    let r = block_on(async { read_frame(&mut &over[..], MAX_REQUEST).await });
    assert!(matches!(r, Err(FrameError::TooLarge { len, .. }) if len == MAX_REQUEST as u64 + 1), "{r:?}");
}

#[tokio::test]
async fn too_large_does_not_wait_for_the_body() {
    // On a live stream whose writer stays open, the refusal comes from the prefix alone.
    let (mut w, mut r) = tokio::io::duplex(64);
    w.write_all(&((MAX_REQUEST + 1) as u32).to_le_bytes()).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), read_frame(&mut r, MAX_REQUEST)).await;
    assert!(matches!(got, Ok(Err(FrameError::TooLarge { .. }))), "{got:?}");
    drop(w);
}

#[tokio::test]
async fn truncated_frames() {
    // Nothing at all: a clean end (no more requests), which read_msg turns into an error.
    assert!(read_frame(&mut &[][..], MAX_REQUEST).await.unwrap().is_none());
    let e = read_msg::<Request, _>(&mut &[][..], MAX_REQUEST).await.unwrap_err();
    assert!(matches!(&e, FrameError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof), "{e:?}");
    // A prefix cut short: malformed.
    for n in 1..4 {
        let e = read_frame(&mut &[5u8, 0, 0, 0][..n], MAX_REQUEST).await.unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{n} bytes: {e:?}");
        assert_eq!(e.code(), E_MALFORMED);
    }
    // A body cut short: the stream ended early.
    let frame = encode(&Request::Stage { name: NAME.into(), cohort: vec![] });
    for cut in 4..frame.len() {
        let e = read_frame(&mut &frame[..cut], MAX_REQUEST).await.unwrap_err();
        assert!(matches!(&e, FrameError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof), "{cut}: {e:?}");
    }
    // A prefix that arrives a byte at a time is still one prefix.
    let (mut w, mut r) = tokio::io::duplex(1);
    let f2 = frame.clone();
    let writer = tokio::spawn(async move {
        for b in f2 {
            w.write_all(&[b]).await.unwrap();
        }
    });
    assert_eq!(
        read_msg::<Request, _>(&mut r, MAX_REQUEST).await.unwrap(),
        Request::Stage { name: NAME.into(), cohort: vec![] }
    );
    writer.await.unwrap();
}

#[tokio::test]
async fn frames_in_sequence_and_trailing_bytes() {
    // Responses follow each other on a stream; each read takes exactly one frame.
    let mut stream = encode(&Response::NotHere { index: 7 });
    stream.extend(encode(&Response::End));
    let mut r = &stream[..];
    assert_eq!(read_msg::<Response, _>(&mut r, MAX_RESPONSE).await.unwrap(), Response::NotHere { index: 7 });
    assert_eq!(read_msg::<Response, _>(&mut r, MAX_RESPONSE).await.unwrap(), Response::End);
    assert!(read_frame(&mut r, MAX_RESPONSE).await.unwrap().is_none());

    // A frame whose body holds more than one message: malformed.
    let mut body = postcard::to_stdvec(&Request::Status).unwrap();
    body.push(0);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend(&body);
    let e = read_msg::<Request, _>(&mut &frame[..], MAX_REQUEST).await.unwrap_err();
    assert!(matches!(&e, FrameError::Malformed(m) if m.contains("trailing")), "{e:?}");
    assert_eq!(e.code(), E_MALFORMED);
}

#[test]
fn malformed_bodies() {
    let bad: &[&[u8]] = &[
        &[],                                   // no variant
        &[8],                                  // Request has 8 variants
        &[0x80],                               // a varint cut short
        &[0, 5, b'a'],                         // a string cut short
        &[0, 1, 0xff],                         // not UTF-8
        &[2, 0x33],                            // an id cut short
        &[3, 0xff, 0xff],                      // an id cut short
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // a varint too long for u32
    ];
    for b in bad {
        assert!(matches!(decode::<Request>(b), Err(FrameError::Malformed(_))), "{b:?}");
    }
    // bool and Option tags other than 0 and 1 are refused.
    assert!(decode::<Response>(&[3, 0, 2]).is_err());
    assert!(decode::<Response>(&[3, 0, 1]).is_ok());
    assert!(decode::<Response>(&[10, 2]).is_err());
    // A huge announced length does not allocate it: it fails at the end of the body.
    assert!(decode::<Response>(&[2, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
}

// --- Properties.

fn id32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<String>().prop_map(|name| Request::GetRelease { name }),
        id32().prop_map(|b| Request::GetManifest { id: ManifestId(b) }),
        id32().prop_map(|b| Request::Subscribe { release: ReleaseId(b) }),
        (id32(), vec(any::<u32>(), 0..300))
            .prop_map(|(b, indices)| Request::GetChunks { release: ReleaseId(b), indices }),
        (any::<String>(), vec(any::<String>(), 0..4)).prop_map(|(name, cohort)| Request::Stage { name, cohort }),
        any::<String>().prop_map(|release| Request::Switch { release }),
        Just(Request::Rollback),
        Just(Request::Status),
        id32().prop_map(|b| Request::GetManifestZstd { id: ManifestId(b) }),
    ]
}

fn progress() -> impl Strategy<Value = Progress> {
    (any::<String>(), any::<String>(), any::<[u64; 4]>(), any::<u32>(), any::<[u64; 2]>()).prop_map(
        |(release, phase, [bytes_done, bytes_total, chunks_done, chunks_total], peers, [rate, sources_only])| {
            Progress { release, phase, bytes_done, bytes_total, chunks_done, chunks_total, peers, rate, sources_only }
        },
    )
}

fn peer_stats() -> impl Strategy<Value = PeerStats> {
    (any::<String>(), any::<[u64; 6]>(), any::<bool>()).prop_map(
        |(name, [bytes_in, bytes_out, chunks_in, chunks_out, errors, bad_chunks], banned)| PeerStats {
            name,
            bytes_in,
            bytes_out,
            chunks_in,
            chunks_out,
            errors,
            bad_chunks,
            banned,
        },
    )
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    let desired = (any::<String>(), any::<bool>(), any::<String>()).prop_map(|(release, activate, state)| Desired {
        release,
        activate,
        state,
    });
    (
        any::<String>(),
        proptest::option::of(any::<String>()),
        vec(any::<String>(), 0..4),
        proptest::option::of(progress()),
        proptest::option::of(any::<String>()),
        proptest::option::of(desired),
        vec(peer_stats(), 0..4),
        any::<[u64; 2]>(),
    )
        .prop_map(|(name, active, installed, transfer, last_error, desired, peers, [bytes_served, refused])| {
            NodeStatus { name, active, installed, transfer, last_error, desired, peers, bytes_served, refused }
        })
}

fn response() -> impl Strategy<Value = Response> {
    let bytes = || vec(any::<u8>(), 0..300);
    let staged = (any::<String>(), any::<String>(), any::<bool>(), any::<[u64; 2]>(), any::<f64>())
        .prop_filter("NaN is not equal to itself", |t| !t.4.is_nan())
        .prop_map(|(release, id, already, [chunks_fetched, bytes_fetched], seconds)| Staged {
            release,
            id,
            already,
            chunks_fetched,
            bytes_fetched,
            seconds,
        });
    let switched =
        (proptest::option::of(any::<String>()), any::<String>(), any::<bool>(), proptest::option::of(any::<String>()))
            .prop_map(|(from, to, unchanged, post_switch_error)| Switched { from, to, unchanged, post_switch_error });
    prop_oneof![
        (any::<u16>(), any::<String>()).prop_map(|(code, message)| Response::Error { code, message }),
        (id32(), bytes()).prop_map(|(b, bytes)| Response::Release { id: ReleaseId(b), bytes }),
        bytes().prop_map(|bytes| Response::Manifest { bytes }),
        (bytes(), any::<bool>()).prop_map(|(bitmap, more)| Response::Have { bitmap, more }),
        vec(any::<u32>(), 0..300).prop_map(|indices| Response::HaveMore { indices }),
        (any::<u32>(), bytes()).prop_map(|(index, object)| Response::Chunk { index, object }),
        any::<u32>().prop_map(|index| Response::NotHere { index }),
        Just(Response::End),
        progress().prop_map(Response::Progress),
        staged.prop_map(Response::Staged),
        switched.prop_map(Response::Switched),
        node_status().prop_map(|s| Response::Status(Box::new(s))),
        bytes().prop_map(|frame| Response::ManifestZstd { frame }),
    ]
}

/// Encodes, reads back as a frame, decodes; every strict prefix of the body and the body plus a byte fail.
fn roundtrip<T>(msg: &T, cap: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let frame = encode(msg);
    let body = one_frame(&frame, cap);
    assert_eq!(body.len() + 4, frame.len());
    assert_eq!(&decode::<T>(&body).unwrap(), msg);
    for cut in 0..body.len() {
        assert!(decode::<T>(&body[..cut]).is_err(), "a prefix of {cut} bytes decoded");
    }
    let mut longer = body.clone();
    longer.push(0);
    assert!(matches!(decode::<T>(&longer), Err(FrameError::Malformed(_))));
}

proptest! {
    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..600)) {
        let _ = decode::<Request>(&bytes);
        let _ = decode::<Response>(&bytes);
    }

    /// Arbitrary fields behind a valid variant index, so that every variant's field decoders are exercised.
    #[test]
    fn decode_arbitrary_fields_never_panics(variant in 0u8..14, bytes in vec(any::<u8>(), 0..600)) {
        let mut body = vec![variant];
        body.extend(&bytes);
        let _ = decode::<Request>(&body);
        let _ = decode::<Response>(&body);
    }

    #[test]
    fn request_roundtrip(req in request()) {
        roundtrip(&req, MAX_REQUEST);
    }

    #[test]
    fn response_roundtrip(resp in response()) {
        roundtrip(&resp, MAX_RESPONSE);
    }

    /// Whatever the stream holds, reading it frame by frame never panics nor returns a body over the cap.
    #[test]
    fn read_frame_arbitrary_stream(stream in vec(any::<u8>(), 0..400), cap in 0usize..64) {
        block_on(async {
            let mut r = &stream[..];
            for _ in 0..stream.len() + 1 {
                match read_frame(&mut r, cap).await {
                    Ok(Some(body)) => assert!(body.len() <= cap),
                    Ok(None) | Err(_) => break,
                }
            }
        });
    }

    #[test]
    fn bitmap_from_bytes_length(n in 0u32..5000, len in 0usize..700) {
        // All ones: accepted only at the right length and with no padding bit (n a multiple of 8).
        let b = Bitmap::from_bytes(vec![0xff; len], n);
        prop_assert_eq!(b.is_some(), len == (n as usize).div_ceil(8) && n % 8 == 0);
        let mut masked = vec![0xffu8; len];
        if let Some(last) = masked.last_mut() {
            if n % 8 != 0 {
                *last &= (1u8 << (n % 8)) - 1;
            }
        }
        prop_assert_eq!(Bitmap::from_bytes(masked, n).is_some(), len == (n as usize).div_ceil(8));
        if let Some(b) = b {
            prop_assert_eq!(b.len(), n);
            prop_assert!(!b.get(n));
        }
    }

    #[test]
    fn bitmap_model(n in 0u32..300, ops in vec(0u32..320, 0..100)) {
        let mut b = Bitmap::new(n);
        let mut model = vec![false; n as usize];
        for i in ops {
            let was_clear = i < n && !model[i as usize];
            prop_assert_eq!(b.set(i), was_clear);
            if i < n {
                model[i as usize] = true;
            }
        }
        for i in 0..n + 8 {
            prop_assert_eq!(b.get(i), i < n && model[i as usize]);
        }
        prop_assert_eq!(b.count() as usize, model.iter().filter(|x| **x).count());
        prop_assert_eq!(Bitmap::from_bytes(b.bytes().to_vec(), n), Some(b));
    }
}

#[test]
fn encode_chunk_is_the_encoding_of_a_chunk_response() {
    for (index, object) in [(0u32, vec![]), (7, vec![1u8, 2, 3]), (300_000, vec![0xAB; 70_000])] {
        let want = encode(&Response::Chunk { index, object: object.clone() });
        assert_eq!(encode_chunk(index, &object), want, "index {index}, {} bytes", object.len());
        let body = &want[4..];
        assert_eq!(decode::<Response>(body).unwrap(), Response::Chunk { index, object });
    }
}
