//! The key-encryption key (KEK) and the AES-256-GCM envelope that keeps
//! private keys encrypted at rest.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Where the KEK comes from, as named in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KekSource {
    /// A file holding 64 hex characters. Created on first start when the
    /// data dir holds no keys yet.
    File(PathBuf),
    /// An environment variable holding 64 hex characters.
    Env(String),
}

impl fmt::Display for KekSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KekSource::File(p) => write!(f, "file {}", p.display()),
            KekSource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// A 256-bit key-encryption key. Zeroized on drop; `Debug` shows only its
/// public [`Kek::id`].
pub struct Kek {
    key: LessSafeKey,
    /// Kept for one purpose: writing the key to a new KEK file when it is
    /// rotated in.
    raw: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

/// The label the public KEK id is derived under.
const ID_CONTEXT: &[u8] = b"sigmux-kek-id-v1";

/// The version tag bound into every envelope, so a future format change
/// cannot be confused with this one.
const ENVELOPE_CONTEXT: &[u8] = b"sigmux-key-v1\0";

impl Kek {
    /// Builds a KEK from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kek> {
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Kek("must be exactly 32 bytes".into()))?;
        let raw = Zeroizing::new(raw);
        let unbound = UnboundKey::new(&AES_256_GCM, &raw[..])
            .map_err(|_| Error::Kek("must be exactly 32 bytes".into()))?;
        // A MAC under the key, not a hash of it: the id can be written
        // next to the keys and in the audit log without helping anyone
        // guess the key.
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &raw[..]), ID_CONTEXT);
        Ok(Kek {
            key: LessSafeKey::new(unbound),
            id: hex::encode(&tag.as_ref()[..8]),
            raw,
        })
    }

    /// A fresh random KEK.
    pub fn generate() -> Result<Kek> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| Error::Kek("system random number generator failed".into()))?;
        Kek::from_bytes(&bytes[..])
    }

    /// The KEK's public id: 16 hex characters that name it in key files,
    /// errors and the audit log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes the KEK to `path` as 64 hex characters (mode 0600), replacing
    /// whatever is there so that a crash leaves the old file or the new
    /// one, never a mix.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Kek(format!("{} is not a file name", path.display())))?;
        let text = Zeroizing::new(hex::encode(&self.raw[..]) + "\n");
        super::write_atomic(dir, name, text.as_bytes())
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    fn from_hex(text: &str, source: &KekSource) -> Result<Kek> {
        let bytes =
            Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
                Error::Kek(format!("{source} must hold 64 hex characters (32 bytes)"))
            })?);
        if bytes.len() != 32 {
            return Err(Error::Kek(format!(
                "{source} must hold 64 hex characters (32 bytes), found {} bytes",
                bytes.len()
            )));
        }
        Kek::from_bytes(&bytes)
    }

    /// Loads the KEK from `source`. With `create_if_missing`, a missing file
    /// is created with a fresh random key (mode 0600) and its path returned
    /// in the second element so the caller can say where it is.
    pub fn load(source: &KekSource, create_if_missing: bool) -> Result<(Kek, Option<PathBuf>)> {
        match source {
            KekSource::Env(var) => {
                let text =
                    Zeroizing::new(std::env::var(var).map_err(|_| {
                        Error::Kek(format!("environment variable {var} is not set"))
                    })?);
                Ok((Kek::from_hex(&text, source)?, None))
            }
            KekSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let text = Zeroizing::new(text);
                    Ok((Kek::from_hex(&text, source)?, None))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create_if_missing => {
                    let kek = create_file(path)?;
                    Ok((kek, Some(path.clone())))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Kek(format!(
                    "file {} is missing (keys stored in the data dir cannot be decrypted without it)",
                    path.display()
                ))),
                Err(e) => Err(Error::Kek(format!("cannot read {}: {e}", path.display()))),
            },
        }
    }

    /// Encrypts `plain`, binding `label` (the key name) as associated data.
    /// Output: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, label: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Kek("system random number generator failed".into()))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(label)),
                &mut buf,
            )
            .map_err(|_| Error::Kek("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        buf.iter_mut().for_each(|b| *b = 0);
        Ok(out)
    }

    /// Decrypts an envelope made by [`Kek::seal`] for the same `label`.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err("encrypted key is truncated".into());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad(label)), &mut buf)
            .map_err(|_| {
                "cannot decrypt: wrong key-encryption key, or the file was altered".to_string()
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

fn aad(label: &str) -> Vec<u8> {
    let mut a = ENVELOPE_CONTEXT.to_vec();
    a.extend_from_slice(label.as_bytes());
    a
}

fn create_file(path: &Path) -> Result<Kek> {
    let kek = Kek::generate()?;
    if let Some(dir) = path.parent() {
        super::create_private_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let text = Zeroizing::new(hex::encode(&kek.raw[..]) + "\n");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))?;
    Ok(kek)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_label_binding() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let sealed = kek.seal("ca", b"secret").unwrap();
        assert_eq!(&kek.open("ca", &sealed).unwrap()[..], b"secret");
        assert!(kek.open("other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(kek.open("ca", &bad).is_err());
        assert!(kek.open("ca", &sealed[..10]).is_err());
        let wrong = Kek::from_bytes(&[8u8; 32]).unwrap();
        assert!(wrong.open("ca", &sealed).is_err());
    }

    #[test]
    fn the_id_names_a_kek_without_revealing_it() {
        let a = Kek::from_bytes(&[7u8; 32]).unwrap();
        assert_eq!(a.id(), Kek::from_bytes(&[7u8; 32]).unwrap().id());
        assert_ne!(a.id(), Kek::from_bytes(&[8u8; 32]).unwrap().id());
        assert_eq!(a.id().len(), 16);
        assert_eq!(format!("{a:?}"), format!("Kek({})", a.id()));
        assert!(!hex::encode([7u8; 32]).contains(a.id()));
        // Written and read back, a KEK keeps its id.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        a.write_file(&path).unwrap();
        let (back, _) = Kek::load(&KekSource::File(path), false).unwrap();
        assert_eq!(back.id(), a.id());
        assert!(Kek::from_bytes(&[1u8; 31]).is_err());
    }

    #[test]
    fn file_is_created_once_and_errors_name_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let src = KekSource::File(path.clone());
        let err = Kek::load(&src, false).unwrap_err().to_string();
        assert!(err.contains("is missing"), "{err}");
        let (_, created) = Kek::load(&src, true).unwrap();
        assert_eq!(created, Some(path.clone()));
        let (_, created) = Kek::load(&src, true).unwrap();
        assert_eq!(created, None);
        std::fs::write(&path, "zz").unwrap();
        let err = Kek::load(&src, false).unwrap_err().to_string();
        assert!(err.contains("64 hex characters"), "{err}");
        let err = Kek::load(&KekSource::Env("SIGMUX_TEST_UNSET_KEK".into()), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SIGMUX_TEST_UNSET_KEK is not set"), "{err}");
    }
}
