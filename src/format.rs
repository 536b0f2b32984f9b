//! The envelope every qpack file starts with: a 4-byte magic and a 1-byte format version, then a postcard body.
//!
//! Owns encoding and decoding of every postcard-encoded file, with a size cap checked before anything is
//! decoded, so that bytes read back from disk or a peer cannot make us allocate without bound. Never does I/O.
//! `proto/FORMAT.md` is the specification.

use serde::{de::DeserializeOwned, Serialize};

/// Magic of a chunk object (fixed header, not postcard: see `chunk.rs`).
pub const MAGIC_CHUNK: [u8; 4] = *b"QPKC";
/// Magic of a part manifest.
pub const MAGIC_MANIFEST: [u8; 4] = *b"QPKM";
/// Magic of a stored release file (body + optional signature).
pub const MAGIC_RELEASE: [u8; 4] = *b"QPKR";
/// Magic of a release body (the bytes the release id and the signature cover).
pub const MAGIC_RELEASE_BODY: [u8; 4] = *b"QPKB";
/// Magic of a release ref (`refs/releases/<name>`).
pub const MAGIC_REF: [u8; 4] = *b"QPKF";
/// Magic of the repository config file (`qpack-repo`).
pub const MAGIC_REPO: [u8; 4] = *b"QPKG";
/// Magic of a publish stat cache.
pub const MAGIC_STAT_CACHE: [u8; 4] = *b"QPKS";

/// The only format version this build reads and writes, for every kind of file.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the 5-byte header.
    #[error("truncated: {len} bytes, shorter than the 5-byte header")]
    Truncated {
        /// Length of what was read.
        len: usize,
    },
    /// The magic is not the one this kind of file has.
    #[error("not a {kind} file (magic {found:?}, expected {expected:?})")]
    BadMagic {
        /// What we tried to read.
        kind: &'static str,
        /// The magic found.
        found: String,
        /// The magic expected.
        expected: String,
    },
    /// A format version this build does not know.
    #[error("{kind} format version {found} is not supported (this qpack reads version {supported}); upgrade qpack")]
    BadVersion {
        /// What we tried to read.
        kind: &'static str,
        /// The version found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// Larger than the cap for this kind of file.
    #[error("{kind} is {len} bytes, over the {cap}-byte limit")]
    TooLarge {
        /// What we tried to read.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// The postcard body does not decode, or has bytes left over.
    #[error("{kind} body does not decode: {reason}")]
    Body {
        /// What we tried to read.
        kind: &'static str,
        /// What postcard said.
        reason: String,
    },
}

/// Encodes `value` behind `magic` and the format version.
pub fn encode<T: Serialize>(magic: [u8; 4], value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&magic);
    out.push(FORMAT_VERSION);
    // Serializing plain data structures into a Vec cannot fail.
    postcard::to_io(value, &mut out).expect("postcard encoding into a Vec");
    out
}

/// Checks the header of `bytes` and returns the body after it.
pub fn check_header<'a>(
    kind: &'static str,
    magic: [u8; 4],
    bytes: &'a [u8],
    cap: usize,
) -> Result<&'a [u8], FormatError> {
    if bytes.len() > cap {
        return Err(FormatError::TooLarge { kind, len: bytes.len(), cap });
    }
    if bytes.len() < 5 {
        return Err(FormatError::Truncated { len: bytes.len() });
    }
    if bytes[..4] != magic {
        return Err(FormatError::BadMagic {
            kind,
            found: String::from_utf8_lossy(&bytes[..4]).into_owned(),
            expected: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(FormatError::BadVersion { kind, found: bytes[4], supported: FORMAT_VERSION });
    }
    Ok(&bytes[5..])
}

/// Decodes a file written by [`encode`]; trailing bytes are an error (the encoding is canonical).
pub fn decode<T: DeserializeOwned>(
    kind: &'static str,
    magic: [u8; 4],
    bytes: &[u8],
    cap: usize,
) -> Result<T, FormatError> {
    let body = check_header(kind, magic, bytes, cap)?;
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| FormatError::Body { kind, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(FormatError::Body { kind, reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
