//! Object names: 32-byte BLAKE3 hashes, one newtype per kind of object.
//!
//! A `ChunkId` names the *uncompressed* bytes of a chunk; a `ManifestId` and a `ReleaseId` name the exact bytes
//! of the encoded object (see `proto/FORMAT.md`). The newtypes keep a manifest id from being used as a chunk id.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The BLAKE3 hash of `bytes`.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }
            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
            /// The first 12 hex characters, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

hash_id!(
    /// Names a chunk: BLAKE3 of its uncompressed bytes.
    ChunkId
);
hash_id!(
    /// Names a part manifest: BLAKE3 of its encoded file.
    ManifestId
);
hash_id!(
    /// Names a release: BLAKE3 of its encoded body (the signature is not part of the id).
    ReleaseId
);
