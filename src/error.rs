//! The errors sigmux reports. Each message is one line that names the
//! problem and never contains key material.

use std::path::PathBuf;

use thiserror::Error;

use crate::scheme::{KeyKind, Scheme};

/// Everything that can go wrong in sigmux, as the caller sees it.
#[derive(Debug, Error)]
pub enum Error {
    /// No key with that name, id or SKI is in the store.
    #[error("unknown key '{0}'")]
    UnknownKey(String),
    /// The scheme name is not one sigmux knows.
    #[error(
        "unknown scheme '{0}' (expected one of rsa_pkcs1_sha256, rsa_pkcs1_sha384, rsa_pkcs1_sha512, rsa_pss_rsae_sha256, rsa_pss_rsae_sha384, rsa_pss_rsae_sha512, ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384, ed25519)"
    )]
    UnknownScheme(String),
    /// The key kind name is not one sigmux knows.
    #[error(
        "unknown key kind '{0}' (expected one of rsa2048, rsa3072, rsa4096, p256, p384, ed25519)"
    )]
    UnknownKeyKind(String),
    /// The scheme needs a different kind of key.
    #[error("scheme {scheme} is not valid for a {kind} key")]
    SchemeNotValidForKey {
        /// The requested scheme.
        scheme: Scheme,
        /// The key's kind.
        kind: KeyKind,
    },
    /// A prehashed digest has the wrong length for the scheme.
    #[error("wrong digest length for {scheme}: expected {expected} bytes, got {got}")]
    WrongDigestLength {
        /// The requested scheme.
        scheme: Scheme,
        /// The scheme's digest length.
        expected: usize,
        /// The length handed in.
        got: usize,
    },
    /// A prehashed digest was handed in for a scheme that signs messages.
    #[error("{0} signs the message itself; a prehashed digest cannot be signed")]
    DigestNotAllowed(Scheme),
    /// A key name breaks the naming rules.
    #[error(
        "invalid key name '{0}': use 1-64 characters from A-Z a-z 0-9 . _ -, not starting with '.'"
    )]
    InvalidKeyName(String),
    /// A key with that name already exists.
    #[error("a key named '{0}' already exists")]
    KeyExists(String),
    /// A key file could not be read, parsed or decrypted.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What was wrong, without key material.
        reason: String,
    },
    /// Key material handed in for import could not be used.
    #[error("cannot import key: {0}")]
    Import(String),
    /// The key-encryption key is missing or unusable.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The engine's queues are full; the caller should back off.
    #[error("overloaded: the signing queue is full")]
    Overloaded,
    /// The request waited past its deadline.
    #[error("deadline exceeded before the request was signed")]
    DeadlineExceeded,
    /// No backend can sign for this key and scheme right now.
    #[error("no backend available for {kind} key with {scheme}: {reason}")]
    NoBackend {
        /// The key kind.
        kind: KeyKind,
        /// The scheme.
        scheme: Scheme,
        /// Why none qualified.
        reason: String,
    },
    /// A backend failed; the text names it and the cause.
    #[error("backend {backend}: {reason}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What failed.
        reason: String,
    },
    /// A backend's own check, an independent computation run before
    /// release (e.g. `s^e mod n` on the GPU), found wrong results. The
    /// engine treats it like a wrong signature it caught itself: the
    /// backend is quarantined and the batch redone elsewhere.
    #[error("backend {backend}: {count} result(s) failed its own check: {reason}")]
    WrongResult {
        /// The backend's name.
        backend: String,
        /// How many results were wrong.
        count: usize,
        /// What the check found.
        reason: String,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// An I/O failure on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bad input to a CLI command or API that is not covered above.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A key file problem.
    pub fn key_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::KeyFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A backend failure.
    pub fn backend(backend: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Backend {
            backend: backend.into(),
            reason: reason.into(),
        }
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
