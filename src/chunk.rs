//! Chunks: content-defined cutting (FastCDC 2020), BLAKE3 naming, and the chunk object encoding
//! (zstd-compressed, or raw where compression does not pay).
//!
//! A chunk object is a fixed 10-byte header — magic `QPKC`, format version, codec (0 raw, 1 zstd), uncompressed
//! length (u32 little-endian) — then the payload. Objects travel between nodes exactly as stored, and are
//! verified by decompressing (never past the declared length) and hashing. Pure computation: no files here.

use crate::format::{FORMAT_VERSION, MAGIC_CHUNK};
use crate::id::ChunkId;
use crate::manifest::MAX_CHUNK_LEN;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// Chunk object header length.
pub const HEADER_LEN: usize = 10;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// FastCDC sizes, fixed per repository (changing them would defeat deduplication against earlier releases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk (except the last of a file).
    pub min: u32,
    /// Target average.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 16 KiB / 64 KiB / 256 KiB: see ARCHITECTURE.md, "Chunk sizes and zstd level", for the measurement.
    fn default() -> Self {
        Self { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }
    }
}

impl ChunkerParams {
    /// Checks the sizes are ordered and within what FastCDC and the format accept.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min >= 64 && self.min <= self.avg && self.avg <= self.max && self.max <= MAX_CHUNK_LEN;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes {}/{}/{} must satisfy 64 <= min <= avg <= max <= {MAX_CHUNK_LEN}",
                self.min, self.avg, self.max
            ))
        }
    }

    /// Cuts `data` into content-defined chunks, returned as (offset, length).
    pub fn cut<'a>(&self, data: &'a [u8]) -> impl Iterator<Item = (usize, usize)> + 'a {
        fastcdc::v2020::FastCDC::new(data, self.min, self.avg, self.max).map(|c| (c.offset, c.length))
    }
}

/// Why a chunk object was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Header too short, wrong magic, version or codec.
    #[error("chunk {id}: malformed object header: {reason}")]
    Header {
        /// The chunk.
        id: ChunkId,
        /// What is wrong.
        reason: String,
    },
    /// The payload does not decompress to the declared length.
    #[error("chunk {id}: payload does not decode: {reason}")]
    Payload {
        /// The chunk.
        id: ChunkId,
        /// What is wrong.
        reason: String,
    },
    /// The bytes do not hash to the chunk's name.
    #[error("chunk {id}: content hashes to {actual}, not to its name (corrupt)")]
    Mismatch {
        /// The chunk.
        id: ChunkId,
        /// What the bytes hash to.
        actual: ChunkId,
    },
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encodes raw chunk bytes as a chunk object, compressed at `level` unless that saves less than 1/32.
pub fn encode_object(raw: &[u8], level: i32) -> Vec<u8> {
    assert!(raw.len() <= MAX_CHUNK_LEN as usize, "chunk larger than MAX_CHUNK_LEN");
    let mut out = Vec::with_capacity(HEADER_LEN + raw.len());
    out.extend_from_slice(&MAGIC_CHUNK);
    out.push(FORMAT_VERSION);
    out.push(CODEC_ZSTD);
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    let compressed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().map(|(l, _)| *l) != Some(level) {
            *cell = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        let (_, c) = cell.as_mut()?;
        // Compress into the output directly; a bound-sized buffer never fails for lack of room.
        let bound = zstd::zstd_safe::compress_bound(raw.len());
        out.reserve(bound);
        let start = out.len();
        out.resize(start + bound, 0);
        let n = c.compress_to_buffer(raw, &mut out[start..]).ok()?;
        out.truncate(start + n);
        Some(n)
    });
    match compressed {
        Some(n) if n + n / 31 < raw.len() => out,
        _ => {
            out.truncate(HEADER_LEN);
            out[5] = CODEC_RAW;
            out.extend_from_slice(raw);
            out
        }
    }
}

/// Parses a chunk object header: (codec is zstd, uncompressed length).
pub fn parse_header(id: &ChunkId, obj: &[u8]) -> Result<(bool, u32), ChunkError> {
    let bad = |reason: String| ChunkError::Header { id: *id, reason };
    if obj.len() < HEADER_LEN {
        return Err(bad(format!("{} bytes, shorter than the header", obj.len())));
    }
    if obj[..4] != MAGIC_CHUNK {
        return Err(bad("wrong magic".into()));
    }
    if obj[4] != FORMAT_VERSION {
        return Err(bad(format!("format version {} (this qpack reads {FORMAT_VERSION})", obj[4])));
    }
    let len = u32::from_le_bytes(obj[6..10].try_into().expect("4 bytes"));
    if len > MAX_CHUNK_LEN {
        return Err(bad(format!("declared length {len} over the {MAX_CHUNK_LEN}-byte limit")));
    }
    match obj[5] {
        CODEC_RAW => Ok((false, len)),
        CODEC_ZSTD => Ok((true, len)),
        c => Err(bad(format!("unknown codec {c}"))),
    }
}

/// Decodes a chunk object and checks that its bytes hash to `id` (and have `expected_len`, if given).
/// Memory use is bounded by the declared length, itself capped at `MAX_CHUNK_LEN`.
pub fn decode_object(id: &ChunkId, obj: &[u8], expected_len: Option<u32>) -> Result<Vec<u8>, ChunkError> {
    let (zstd, len) = parse_header(id, obj)?;
    if let Some(want) = expected_len {
        if want != len {
            return Err(ChunkError::Header { id: *id, reason: format!("declared length {len}, expected {want}") });
        }
    }
    let payload = &obj[HEADER_LEN..];
    let raw = if zstd {
        DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| ChunkError::Payload { id: *id, reason: e.to_string() })?,
                );
            }
            let d = cell.as_mut().expect("set above");
            // Single-shot decompression writes straight into a buffer of the declared length: a frame that
            // would produce more fails instead of growing, whatever window size it claims.
            let mut out = Vec::with_capacity(len as usize);
            d.decompress_to_buffer(payload, &mut out)
                .map_err(|e| ChunkError::Payload { id: *id, reason: e.to_string() })?;
            Ok::<_, ChunkError>(out)
        })?
    } else {
        payload.to_vec()
    };
    if raw.len() != len as usize {
        return Err(ChunkError::Payload { id: *id, reason: format!("{} bytes, declared {len}", raw.len()) });
    }
    let actual = ChunkId::of(&raw);
    if actual != *id {
        return Err(ChunkError::Mismatch { id: *id, actual });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests;
