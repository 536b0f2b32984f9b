//! Part manifests and releases: what a release contains, encoded with postcard behind the envelope of
//! `format.rs`, and the checks that make a decoded manifest safe to materialize.
//!
//! Owns the data model and its invariants (sorted, unique, confined paths; parents are directories; hardlinks
//! point back into the same part). Never does I/O: the store reads bytes, this module judges them.

use crate::format::{self, FormatError, MAGIC_MANIFEST, MAGIC_RELEASE, MAGIC_RELEASE_BODY};
use crate::id::{ChunkId, ManifestId, ReleaseId};
use serde::{Deserialize, Serialize};

/// Largest uncompressed chunk any qpack accepts, whatever the chunker settings.
pub const MAX_CHUNK_LEN: u32 = 4 << 20;
/// Largest encoded part manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 512 << 20;
/// Largest encoded release accepted.
pub const MAX_RELEASE_BYTES: usize = 16 << 20;
/// Largest path (bytes) accepted in a manifest, as Linux's PATH_MAX.
pub const MAX_PATH_LEN: usize = 4096;
/// Permission bits a manifest may carry (no file-type bits).
pub const MODE_MASK: u32 = 0o7777;
/// setuid and setgid.
pub const MODE_SETID: u32 = 0o6000;

/// A modification time: seconds since the Unix epoch and nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Mtime {
    /// Seconds since 1970-01-01 UTC (may be negative).
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

/// One chunk of a file: its id and uncompressed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the uncompressed bytes.
    pub id: ChunkId,
    /// Uncompressed length.
    pub len: u32,
}

/// Flag of a file entry: its bytes contain the release's build prefix.
pub const FLAG_EMBEDS_PREFIX: u8 = 1;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file, the concatenation of its chunks.
    File {
        /// Length in bytes (the sum of the chunk lengths).
        size: u64,
        /// `FLAG_*` bits.
        flags: u8,
        /// The chunks, in order.
        chunks: Vec<ChunkRef>,
    },
    /// A symbolic link and its target bytes, never followed by qpack.
    Symlink {
        /// The link's target, as stored by the kernel.
        target: Vec<u8>,
    },
    /// Another name of an earlier `File` entry of the same part (same inode).
    Hardlink {
        /// Path of that file entry, relative to the part.
        target: Vec<u8>,
    },
}

/// One path of a part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the part's mount point, `/`-separated; empty for the mount point itself.
    pub path: Vec<u8>,
    /// Permission bits (`MODE_MASK`); ignored for symlinks.
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// What it is.
    pub kind: EntryKind,
}

/// The sorted entries of one part. Its id is the BLAKE3 of its encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PartManifest {
    /// Sorted by `path` bytes, unique; the first is the root (`""`, a directory).
    pub entries: Vec<Entry>,
}

/// Which part of a tree a part is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum PartKind {
    /// Everything outside the product directories: `ups_db/`, `site/`, top-level files.
    Base,
    /// One EUPS product version directory.
    Product {
        /// EUPS product name.
        product: String,
        /// EUPS version.
        version: String,
    },
    /// Configuration files added with `publish --config` (mutable: copied, never hardlinked).
    Config,
}

/// A part of a release: where it is mounted and which manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    /// Mount point relative to the tree root (empty for the base part).
    pub mount: Vec<u8>,
    /// Base, product or config.
    pub kind: PartKind,
    /// The part manifest.
    pub manifest: ManifestId,
    /// Number of entries that are regular files or hardlinks.
    pub n_files: u64,
    /// Sum of the sizes of its regular files (hardlinks counted once).
    pub n_bytes: u64,
}

/// A named list of parts: what a node installs and switches to. Its id is the BLAKE3 of its encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Human name, e.g. `2026.11.24-1`.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// The release this one was published after, if any.
    pub parent: Option<ReleaseId>,
    /// The path the tree was built at (the files that embed it bind the tree to it).
    pub prefix: Vec<u8>,
    /// The parts, base first, then products sorted by mount, then config.
    pub parts: Vec<PartRef>,
}

/// An ed25519 signature of a release body by a publisher key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The publisher's public key.
    pub key: [u8; 32],
    /// The signature (64 bytes) of `SIGNING_CONTEXT || body`.
    pub sig: Vec<u8>,
}

/// Domain separation prepended to a release body before signing.
pub const SIGNING_CONTEXT: &[u8] = b"qpack release v1\0";

/// A release as stored: the encoded body (whose hash is the id) and an optional signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRelease {
    /// `format::encode(MAGIC_RELEASE_BODY, &Release)`.
    pub body: Vec<u8>,
    /// Publisher signature, if the release was signed.
    pub signature: Option<Signature>,
}

/// Why a manifest or release is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes do not decode.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A path is not a clean relative path.
    #[error("unsafe or malformed path {path:?}: {reason}")]
    BadPath {
        /// The path, lossily printed.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Entries out of order, duplicated, or otherwise inconsistent.
    #[error("inconsistent manifest at {path:?}: {reason}")]
    Inconsistent {
        /// The entry's path, lossily printed.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The release itself is inconsistent.
    #[error("inconsistent release: {0}")]
    BadRelease(String),
}

/// Prints a path of bytes for humans (lossy, with control characters escaped).
pub fn show_path(p: &[u8]) -> String {
    String::from_utf8_lossy(p).escape_debug().to_string()
}

/// Checks that `path` is a clean relative path: no leading or trailing `/`, no empty, `.` or `..` component,
/// no NUL, no backslash. The empty path (the root) is accepted only if `allow_root`.
pub fn check_rel_path(path: &[u8], allow_root: bool) -> Result<(), ManifestError> {
    let bad = |reason| Err(ManifestError::BadPath { path: show_path(path), reason });
    if path.is_empty() {
        return if allow_root { Ok(()) } else { bad("empty path") };
    }
    if path.len() > MAX_PATH_LEN {
        return bad("longer than PATH_MAX");
    }
    if path[0] == b'/' {
        return bad("absolute path");
    }
    if path.contains(&0) {
        return bad("contains a NUL byte");
    }
    if path.contains(&b'\\') {
        return bad("contains a backslash");
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return bad("empty component (// or trailing /)"),
            b"." => return bad("'.' component"),
            b".." => return bad("'..' component"),
            c if c.len() > 255 => return bad("component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// The parent of a non-empty relative path (`""` for a top-level name).
pub fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Joins a mount point and a part-relative path.
pub fn join(mount: &[u8], path: &[u8]) -> Vec<u8> {
    match (mount.is_empty(), path.is_empty()) {
        (true, _) => path.to_vec(),
        (false, true) => mount.to_vec(),
        (false, false) => [mount, b"/", path].concat(),
    }
}

impl PartManifest {
    /// Encodes the manifest; its id is the hash of these bytes.
    pub fn encode(&self) -> Vec<u8> {
        format::encode(MAGIC_MANIFEST, self)
    }

    /// Decodes and validates a manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Self = format::decode("part manifest", MAGIC_MANIFEST, bytes, MAX_MANIFEST_BYTES)?;
        m.validate()?;
        Ok(m)
    }

    /// Encodes and names the manifest.
    pub fn encode_with_id(&self) -> (ManifestId, Vec<u8>) {
        let bytes = self.encode();
        (ManifestId::of(&bytes), bytes)
    }

    /// Checks every invariant a materializer relies on: sorted unique clean paths, the root first and a
    /// directory, every parent a directory entry of this manifest (so no path goes through a symlink or a file),
    /// hardlinks to earlier file entries, sizes equal to the sum of chunk lengths, mode bits only.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let incons = |p: &[u8], reason: String| ManifestError::Inconsistent { path: show_path(p), reason };
        let Some(first) = self.entries.first() else {
            return Err(incons(b"", "no root entry".into()));
        };
        if !first.path.is_empty() || first.kind != EntryKind::Dir {
            return Err(incons(&first.path, "the first entry must be the root directory \"\"".into()));
        }
        for (i, e) in self.entries.iter().enumerate() {
            check_rel_path(&e.path, i == 0)?;
            if e.mode & !MODE_MASK != 0 {
                return Err(incons(&e.path, format!("mode {:o} has bits beyond 07777", e.mode)));
            }
            if e.mtime.nanos >= 1_000_000_000 {
                return Err(incons(&e.path, "mtime nanoseconds out of range".into()));
            }
            if i > 0 {
                if self.entries[i - 1].path >= e.path {
                    return Err(incons(&e.path, "entries not sorted or duplicated".into()));
                }
                let parent = parent_of(&e.path);
                match self.find(parent) {
                    Some(p) if p.kind == EntryKind::Dir => {}
                    Some(_) => return Err(incons(&e.path, "parent is not a directory".into())),
                    None => return Err(incons(&e.path, "parent directory has no entry".into())),
                }
            }
            match &e.kind {
                EntryKind::Dir => {}
                EntryKind::File { size, chunks, .. } => {
                    let mut sum = 0u64;
                    for c in chunks {
                        if c.len == 0 || c.len > MAX_CHUNK_LEN {
                            return Err(incons(&e.path, format!("chunk length {} out of range", c.len)));
                        }
                        sum += u64::from(c.len);
                    }
                    if sum != *size {
                        return Err(incons(&e.path, format!("size {size} but chunks add up to {sum}")));
                    }
                }
                EntryKind::Symlink { target } => {
                    if target.is_empty() || target.contains(&0) || target.len() > MAX_PATH_LEN {
                        return Err(incons(&e.path, "symlink target empty, too long or with NUL".into()));
                    }
                }
                EntryKind::Hardlink { target } => {
                    check_rel_path(target, false)?;
                    if target >= &e.path {
                        return Err(incons(&e.path, "hardlink target must be an earlier entry".into()));
                    }
                    match self.find(target) {
                        Some(t) if matches!(t.kind, EntryKind::File { .. }) => {}
                        _ => return Err(incons(&e.path, "hardlink target is not a file entry".into())),
                    }
                }
            }
        }
        Ok(())
    }

    /// The entry at `path`, by binary search (entries are sorted).
    pub fn find(&self, path: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.as_slice().cmp(path)).ok().map(|i| &self.entries[i])
    }

    /// Every chunk the manifest references (with repeats).
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.entries.iter().flat_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.as_slice(),
            _ => &[],
        })
    }

    /// (files including hardlinks, bytes of regular files).
    pub fn totals(&self) -> (u64, u64) {
        let mut files = 0;
        let mut bytes = 0;
        for e in &self.entries {
            match &e.kind {
                EntryKind::File { size, .. } => {
                    files += 1;
                    bytes += size;
                }
                EntryKind::Hardlink { .. } => files += 1,
                _ => {}
            }
        }
        (files, bytes)
    }
}

/// Release names: 1 to 128 characters from `[A-Za-z0-9._+-]`, not starting with `.` or `-`.
pub fn check_release_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadRelease(format!(
            "release name {name:?} must be 1-128 characters of A-Z a-z 0-9 . _ + - and not start with '.' or '-'"
        )))
    }
}

impl Release {
    /// Encodes the release body; the release id is the hash of these bytes.
    pub fn encode(&self) -> Vec<u8> {
        format::encode(MAGIC_RELEASE_BODY, self)
    }

    /// Decodes and validates a release body.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let r: Self = format::decode("release body", MAGIC_RELEASE_BODY, bytes, MAX_RELEASE_BYTES)?;
        r.validate()?;
        Ok(r)
    }

    /// Checks the name, that there is exactly one base part mounted at the root, that mounts are clean and that
    /// no part is mounted inside another non-base part (they would overwrite each other).
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_release_name(&self.name)?;
        let bad = |s: String| Err(ManifestError::BadRelease(s));
        let n_base = self.parts.iter().filter(|p| p.kind == PartKind::Base).count();
        if n_base != 1 {
            return bad(format!("{n_base} base parts, expected exactly one"));
        }
        let mut mounts: Vec<&[u8]> = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            if p.kind == PartKind::Base {
                if !p.mount.is_empty() {
                    return bad("the base part must be mounted at the root".into());
                }
                continue;
            }
            check_rel_path(&p.mount, false)?;
            mounts.push(&p.mount);
        }
        mounts.sort();
        for w in mounts.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a == b || (b.starts_with(a) && b[a.len()] == b'/') {
                return bad(format!("part {} overlaps part {}", show_path(a), show_path(b)));
            }
        }
        Ok(())
    }

    /// The id of this release.
    pub fn id(&self) -> ReleaseId {
        ReleaseId::of(&self.encode())
    }

    /// Total (files, bytes) over all parts.
    pub fn totals(&self) -> (u64, u64) {
        self.parts.iter().fold((0, 0), |(f, b), p| (f + p.n_files, b + p.n_bytes))
    }
}

impl SignedRelease {
    /// Encodes the stored release file.
    pub fn encode(&self) -> Vec<u8> {
        format::encode(MAGIC_RELEASE, self)
    }

    /// Decodes a stored release file, checks that its body hashes to `expected` (if given), decodes and
    /// validates the body, and checks the signature if there is one (it does not decide whether the key is
    /// trusted: that is the caller's policy).
    pub fn decode(bytes: &[u8], expected: Option<ReleaseId>) -> Result<(Self, Release), ManifestError> {
        let s: Self = format::decode("signed release", MAGIC_RELEASE, bytes, MAX_RELEASE_BYTES)?;
        let id = ReleaseId::of(&s.body);
        if let Some(want) = expected {
            if id != want {
                return Err(ManifestError::BadRelease(format!("body hashes to {id}, expected {want}")));
            }
        }
        let release = Release::decode(&s.body)?;
        if let Some(sig) = &s.signature {
            crate::keys::verify(&sig.key, &s.body, &sig.sig)
                .map_err(|e| ManifestError::BadRelease(format!("bad signature: {e}")))?;
        }
        Ok((s, release))
    }

    /// The release id (hash of the body).
    pub fn id(&self) -> ReleaseId {
        ReleaseId::of(&self.body)
    }
}

#[cfg(test)]
mod tests;
