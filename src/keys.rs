//! Publisher keys: ed25519 signing of release bodies.
//!
//! A key file holds one line, `qpack-publisher-secret <64 hex>`; its public half is printed as
//! `qpack-publisher <64 hex>`. Owns key generation, signing and verification; never decides which keys are
//! trusted (the cluster file does, in the agent).

use crate::manifest::SIGNING_CONTEXT;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use std::io::Write;
use std::path::Path;

const SECRET_TAG: &str = "qpack-publisher-secret";
const PUBLIC_TAG: &str = "qpack-publisher";

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a qpack key.
    #[error("{0}")]
    Malformed(String),
    /// A signature does not verify.
    #[error("signature does not verify with key {0}")]
    BadSignature(String),
}

/// A publisher's signing key.
pub struct PublisherKey(SigningKey);

impl PublisherKey {
    /// Makes a new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Malformed(format!("no randomness: {e}")))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Writes the secret key to a new file, readable by its owner only. Refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        writeln!(f, "{SECRET_TAG} {}", hex::encode(self.0.to_bytes())).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        let hexkey = text
            .trim()
            .strip_prefix(SECRET_TAG)
            .map(str::trim)
            .ok_or_else(|| KeyError::Malformed(format!("{}: not a qpack publisher secret key", path.display())))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hexkey, &mut seed)
            .map_err(|_| KeyError::Malformed(format!("{}: key is not 64 hex digits", path.display())))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The public key bytes.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The public key as printed and written in cluster files: `qpack-publisher <hex>`.
    pub fn public_line(&self) -> String {
        format!("{PUBLIC_TAG} {}", hex::encode(self.public()))
    }

    /// Signs a release body.
    pub fn sign(&self, body: &[u8]) -> Vec<u8> {
        let msg = [SIGNING_CONTEXT, body].concat();
        self.0.sign(&msg).to_bytes().to_vec()
    }
}

/// Parses a public key written as `qpack-publisher <hex>` or bare hex.
pub fn parse_public(s: &str) -> Result<[u8; 32], KeyError> {
    let h = s.trim();
    let h = h.strip_prefix(PUBLIC_TAG).map(str::trim).unwrap_or(h);
    let mut key = [0u8; 32];
    hex::decode_to_slice(h, &mut key).map_err(|_| KeyError::Malformed(format!("{s:?} is not a publisher key")))?;
    Ok(key)
}

/// Verifies `sig` over a release body with `key`.
pub fn verify(key: &[u8; 32], body: &[u8], sig: &[u8]) -> Result<(), KeyError> {
    let bad = || KeyError::BadSignature(hex::encode(key));
    let vk = VerifyingKey::from_bytes(key).map_err(|_| bad())?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| bad())?;
    let msg = [SIGNING_CONTEXT, body].concat();
    vk.verify(&msg, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| bad())
}
