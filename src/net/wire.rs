//! The messages of `qpack/1` and their framing (`proto/PROTOCOL.md`): a u32 little-endian length, then that
//! many bytes of postcard. Lengths are checked against a cap before anything is allocated; a frame that does
//! not decode is an error, never a panic.

use crate::id::{ManifestId, ReleaseId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request frame.
pub const MAX_REQUEST: usize = 64 << 10;
/// Largest response frame (a chunk object is at most 4 MiB plus its header).
pub const MAX_RESPONSE: usize = 8 << 20;
/// Most chunk indices in one `GetChunks`.
pub const MAX_BATCH: usize = 4096;

/// A request: the first and only frame a client sends on a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The stored release file of the release with this name. Any role.
    GetRelease {
        /// Release name.
        name: String,
    },
    /// A part manifest file. Any role.
    GetManifest {
        /// Its id.
        id: ManifestId,
    },
    /// Which chunks of the release the server has (`Have`), then what it gets (`HaveMore`). Any role.
    Subscribe {
        /// The release.
        release: ReleaseId,
    },
    /// Chunk objects, named by index into the release's chunk list. Any role.
    GetChunks {
        /// The release.
        release: ReleaseId,
        /// Indices (at most [`MAX_BATCH`]).
        indices: Vec<u32>,
    },
    /// Get and install the release (not activate it). Operator only.
    Stage {
        /// Release name.
        name: String,
        /// The names of every node ordered to stage it at the same time (sorted; may be empty): they share
        /// the work of getting the manifests from the seed (`PROTOCOL.md`, "Swarm").
        cohort: Vec<String>,
    },
    /// Activate an installed release. Operator only.
    Switch {
        /// Release name or id.
        release: String,
    },
    /// Activate the previously active release. Operator only.
    Rollback,
    /// The node's state. Any role.
    Status,
    /// A part manifest file as one zstd frame (answer `ManifestZstd`): manifests are half paths, which
    /// compress. Any role. Added within `qpack/1` (`PROTOCOL.md`, "Versioning"): an agent older than it answers
    /// `Error { E_MALFORMED }`, and the client then asks it `GetManifest`.
    GetManifestZstd {
        /// Its id (of the uncompressed file).
        id: ManifestId,
    },
}

/// A response frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The request failed.
    Error {
        /// One of the `E_*` codes.
        code: u16,
        /// For humans.
        message: String,
    },
    /// Answer to `GetRelease`.
    Release {
        /// Its id (the hash of the body inside `bytes`).
        id: ReleaseId,
        /// The stored release file (`QPKR`).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Answer to `GetManifest`: the manifest file (`QPKM`).
    Manifest {
        /// Its bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// First answer to `Subscribe`: one bit per chunk of the list, bit `i % 8` of byte `i / 8`.
    Have {
        /// The bitmap.
        #[serde(with = "serde_bytes")]
        bitmap: Vec<u8>,
        /// True if the server will send `HaveMore` as it gets chunks (it is staging the release).
        more: bool,
    },
    /// Chunks the server got since.
    HaveMore {
        /// Their indices.
        indices: Vec<u32>,
    },
    /// One chunk object of a `GetChunks`.
    Chunk {
        /// Its index.
        index: u32,
        /// The stored object (`proto/FORMAT.md`, chunk object).
        #[serde(with = "serde_bytes")]
        object: Vec<u8>,
    },
    /// The server lacks this chunk.
    NotHere {
        /// Its index.
        index: u32,
    },
    /// The end of a `GetChunks` answer.
    End,
    /// Progress of a `Stage`.
    Progress(Progress),
    /// A `Stage` finished.
    Staged(Staged),
    /// A `Switch` or `Rollback` finished.
    Switched(Switched),
    /// Answer to `Status`.
    Status(Box<NodeStatus>),
    /// Answer to `GetManifestZstd`: the manifest file (`QPKM`) compressed as one zstd frame.
    ManifestZstd {
        /// The frame.
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
}

/// The zstd level of `ManifestZstd` (zstd's default: a manifest is compressed once per request, and 3 gets
/// about what higher levels would: 656 KB of manifests of the generated stack become 385 KB at 1, 378 KB at 3,
/// 361 KB at 19).
pub const MANIFEST_ZSTD_LEVEL: i32 = 3;
/// The largest zstd window a `ManifestZstd` frame may ask for (8 MiB; level 3 uses at most 2 MiB).
const MANIFEST_ZSTD_WINDOW_LOG: u32 = 23;

/// The content of a `ManifestZstd` frame, if it decompresses to at most `cap` bytes within a bounded window:
/// a peer's bytes, so a frame that would expand past the cap is refused while it expands, not after.
pub fn unzstd_capped(frame: &[u8], cap: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut d = zstd::stream::read::Decoder::with_buffer(frame).map_err(|e| format!("zstd: {e}"))?;
    d.window_log_max(MANIFEST_ZSTD_WINDOW_LOG).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::new();
    d.take(cap as u64 + 1).read_to_end(&mut out).map_err(|e| format!("not a valid zstd frame ({e})"))?;
    if out.len() > cap {
        return Err(format!("it decompresses to more than {cap} bytes"));
    }
    Ok(out)
}

/// Error codes.
pub const E_MALFORMED: u16 = 1;
/// The frame is larger than its cap.
pub const E_TOO_LARGE: u16 = 2;
/// The peer's role may not send this request.
pub const E_FORBIDDEN: u16 = 3;
/// The server does not have what was asked.
pub const E_NOT_FOUND: u16 = 4;
/// The server is busy: ask later or elsewhere.
pub const E_BUSY: u16 = 5;
/// The server failed.
pub const E_INTERNAL: u16 = 6;

/// How far a staging has got.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Release name.
    pub release: String,
    /// `finding`, `manifests`, `fetching`, `installing`, `staged`, `failed`.
    pub phase: String,
    /// Uncompressed bytes of the chunks fetched so far in this staging.
    pub bytes_done: u64,
    /// Uncompressed bytes of the chunks to fetch.
    pub bytes_total: u64,
    /// Chunks fetched.
    pub chunks_done: u64,
    /// Chunks the node lacked.
    pub chunks_total: u64,
    /// Peers currently sending.
    pub peers: u32,
    /// Bytes per second received (compressed, as sent) over the last 3 seconds.
    pub rate: u64,
    /// Chunks this node still needs that no other node staging the release has: only sources (the seed) have
    /// them. Once it is 0 on every node, every chunk has left the seed.
    pub sources_only: u64,
}

/// The outcome of a `Stage`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    /// Release name.
    pub release: String,
    /// Release id (hex).
    pub id: String,
    /// True if it was installed before the order.
    pub already: bool,
    /// Chunks fetched from peers.
    pub chunks_fetched: u64,
    /// Bytes of those (compressed, as sent).
    pub bytes_fetched: u64,
    /// Seconds.
    pub seconds: f64,
}

/// The outcome of a switch or rollback.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Switched {
    /// Previously active release, if any.
    pub from: Option<String>,
    /// Now active release.
    pub to: String,
    /// True if nothing changed (it was active already).
    pub unchanged: bool,
    /// The post_switch command's failure, if it failed (the switch itself happened).
    pub post_switch_error: Option<String>,
}

/// Counters of one peer, as seen by this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStats {
    /// Peer name.
    pub name: String,
    /// Chunk bytes received from it.
    pub bytes_in: u64,
    /// Chunk bytes sent to it.
    pub bytes_out: u64,
    /// Chunks received from it.
    pub chunks_in: u64,
    /// Chunks sent to it.
    pub chunks_out: u64,
    /// Failed requests (timeouts, errors, lost connections).
    pub errors: u64,
    /// Chunks it sent that did not verify.
    pub bad_chunks: u64,
    /// True while it is avoided (it sent a bad chunk).
    pub banned: bool,
}

/// A node's state, for `qpack status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Active release name, if any.
    pub active: Option<String>,
    /// Installed releases (names).
    pub installed: Vec<String>,
    /// The staging in progress or last finished, if any.
    pub transfer: Option<Progress>,
    /// Last staging error, if the last one failed.
    pub last_error: Option<String>,
    /// Desired state (from the agent's `desired` file): release, activate, and whether it is reached.
    pub desired: Option<Desired>,
    /// Per-peer counters.
    pub peers: Vec<PeerStats>,
    /// Total chunk bytes served to peers.
    pub bytes_served: u64,
    /// Connections refused (wrong CA, wrong ALPN) and requests refused for the role.
    pub refused: u64,
}

/// The desired state read from a `desired` file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// Release name.
    pub release: String,
    /// Whether it should be active.
    pub activate: bool,
    /// `converged`, `working` or `failed: …`.
    pub state: String,
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds the cap.
    #[error("frame of {len} bytes exceeds the {cap}-byte cap")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The cap.
        cap: usize,
    },
    /// The bytes do not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl FrameError {
    /// The wire error code for this failure.
    pub fn code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => E_TOO_LARGE,
            _ => E_MALFORMED,
        }
    }
}

/// Encodes a message as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("postcard encodes every message");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encodes `Response::Chunk { index, object }` as one frame without copying the object into a message first
/// (the bytes are those of [`encode`]; a test checks it).
pub fn encode_chunk(index: u32, object: &[u8]) -> Vec<u8> {
    #[derive(Serialize)]
    enum Borrowed<'a> {
        #[serde(rename = "Chunk")]
        Chunk {
            index: u32,
            #[serde(with = "serde_bytes")]
            object: &'a [u8],
        },
    }
    // `Chunk` is variant 5 of `Response`: a one-variant enum encodes as variant 0, so the tag is written here.
    let body = postcard::to_stdvec(&Borrowed::Chunk { index, object }).expect("postcard encodes every message");
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.push(CHUNK_TAG);
    out.extend_from_slice(&body[1..]);
    out
}

/// The postcard variant index of `Response::Chunk`.
const CHUNK_TAG: u8 = 5;

/// Decodes a frame body; trailing bytes are malformed.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// Reads one frame of at most `cap` bytes. `Ok(None)` at a clean end of stream before any byte.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, cap: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Malformed("truncated length prefix".into())) };
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > cap {
        return Err(FrameError::TooLarge { len: len as u64, cap });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Reads and decodes one message; a clean end of stream is an error here.
pub async fn read_msg<T, R>(r: &mut R, cap: usize) -> Result<T, FrameError>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncRead + Unpin,
{
    match read_frame(r, cap).await? {
        Some(body) => decode(&body),
        None => Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

/// Writes one message as a frame.
pub async fn write_msg<T: Serialize, W: AsyncWrite + Unpin>(w: &mut W, msg: &T) -> std::io::Result<()> {
    w.write_all(&encode(msg)).await
}

/// A chunk bitmap of `n` bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u8>,
    n: u32,
}

impl Bitmap {
    /// All clear.
    pub fn new(n: u32) -> Self {
        Self { bits: vec![0; (n as usize).div_ceil(8)], n }
    }
    /// From wire bytes; `None` if the length does not match `n` or a padding bit (past `n`) is set.
    pub fn from_bytes(bits: Vec<u8>, n: u32) -> Option<Self> {
        if bits.len() != (n as usize).div_ceil(8) {
            return None;
        }
        if n % 8 != 0 && bits.last().is_some_and(|b| b >> (n % 8) != 0) {
            return None;
        }
        Some(Self { bits, n })
    }
    /// Wire bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }
    /// Number of bits.
    pub fn len(&self) -> u32 {
        self.n
    }
    /// True if it has no bits.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Bit `i` (false when out of range).
    pub fn get(&self, i: u32) -> bool {
        i < self.n && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }
    /// Sets bit `i`; returns whether it was clear. Out of range: no-op, false.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.n {
            return false;
        }
        let (b, m) = ((i / 8) as usize, 1u8 << (i % 8));
        let was = self.bits[b] & m == 0;
        self.bits[b] |= m;
        was
    }
    /// Clears bit `i`; returns whether it was set. Out of range: no-op, false.
    pub fn clear(&mut self, i: u32) -> bool {
        if i >= self.n {
            return false;
        }
        let (b, m) = ((i / 8) as usize, 1u8 << (i % 8));
        let was = self.bits[b] & m != 0;
        self.bits[b] &= !m;
        was
    }
    /// How many bits are set.
    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }
}

#[cfg(test)]
mod tests;
