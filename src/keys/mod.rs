//! The key store: keys by name, by [`KeyId`] and by [`Ski`], private halves
//! encrypted at rest under the key-encryption key.

mod kek;
mod material;
pub mod rotation;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use kek::{Kek, KekSource};
pub use material::{Material, SecretKey};

/// A key held only in memory, from an OpenSSL private key (an offline CA
/// root read back from its encrypted file).
pub(crate) fn key_from_openssl(
    name: &str,
    pkey: &openssl::pkey::PKey<openssl::pkey::Private>,
) -> Result<Key> {
    Key::from_material(name, material::from_openssl(pkey)?, Placement::Soft)
}

/// Parses private-key material for import without storing it, so that a
/// command can refuse bad input before it touches the data dir.
pub fn check_import(bytes: &[u8]) -> Result<KeyKind> {
    Ok(material::import(bytes)?.kind)
}

use crate::der;
use crate::error::{Error, Result};
use crate::scheme::{KeyKind, Scheme};

/// SHA-256 of a key's SubjectPublicKeyInfo DER: the key's stable identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

/// SHA-1 of the subjectPublicKey bits (RFC 5280 method 1), which keyless
/// clients use to name a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ski(pub [u8; 20]);

macro_rules! hex_id {
    ($t:ty, $n:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), hex::encode(self.0))
            }
        }
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                let mut out = [0u8; $n];
                hex::decode_to_slice(s, &mut out).map_err(|_| {
                    Error::Invalid(format!(
                        "{} must be {} hex characters",
                        stringify!($t),
                        2 * $n
                    ))
                })?;
                Ok(Self(out))
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
hex_id!(KeyId, 32);
hex_id!(Ski, 20);

impl KeyId {
    /// The id of a SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> KeyId {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, spki_der).as_ref());
        KeyId(out)
    }
}

impl Ski {
    /// The SKI of a SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Result<Ski> {
        let parts =
            der::spki_parts(spki_der).map_err(|e| Error::Import(format!("public key: {e}")))?;
        let mut out = [0u8; 20];
        out.copy_from_slice(
            digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, parts.public_key).as_ref(),
        );
        Ok(Ski(out))
    }
}

/// Where a key's private half lives, and so which backends may use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Held by sigmux (encrypted at rest); may run on CPU or GPU.
    Soft,
    /// Lives in a PKCS#11 token and never leaves it.
    Hsm,
}

/// What sigmux records about a key; never contains private material.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    /// The key's name in the store.
    pub name: String,
    /// Algorithm and size.
    pub kind: KeyKind,
    /// Where the private half lives.
    pub placement: Placement,
    /// SHA-256 of the SPKI.
    pub key_id: KeyId,
    /// SHA-1 of the subjectPublicKey bits.
    pub ski: Ski,
    /// The public key, SubjectPublicKeyInfo DER in base64.
    pub spki: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// For keys placed in an HSM: how to find the key in its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsm: Option<HsmRef>,
}

/// Where an HSM key lives: enough to find it again, nothing secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HsmRef {
    /// Label of the token that holds it; `None` when any configured token
    /// holding the same key may use it (replicated HSM partitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The private key object's `CKA_LABEL`.
    pub label: String,
    /// The private key object's `CKA_ID`, hex.
    pub id: String,
}

impl KeyInfo {
    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        B64.decode(&self.spki).unwrap_or_default()
    }

    /// The public key as a PEM `PUBLIC KEY` block.
    pub fn public_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("PUBLIC KEY", self.spki_der()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }
}

/// A key the engine can sign with. `Debug` shows only public facts.
pub struct Key {
    info: KeyInfo,
    spki_der: Vec<u8>,
    secret: Option<SecretKey>,
    verifiers: [OnceLock<aws_lc_rs::signature::ParsedPublicKey>; 9],
    rsa_public: OnceLock<Option<openssl::rsa::Rsa<openssl::pkey::Public>>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.info.name)
            .field("kind", &self.info.kind)
            .field("placement", &self.info.placement)
            .field("key_id", &self.info.key_id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Builds a key from validated material (not stored anywhere).
    pub fn from_material(name: &str, m: Material, placement: Placement) -> Result<Key> {
        let info = KeyInfo {
            name: name.to_string(),
            kind: m.kind,
            placement,
            key_id: KeyId::of_spki(&m.spki_der),
            ski: Ski::of_spki(&m.spki_der)?,
            spki: B64.encode(&m.spki_der),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            hsm: None,
        };
        Ok(Key::new(info, Some(m.secret)))
    }

    /// A reference to a key that lives in a PKCS#11 token: public facts
    /// only, [`Placement::Hsm`].
    pub fn from_hsm(name: &str, kind: KeyKind, spki_der: &[u8], hsm: HsmRef) -> Result<Key> {
        let info = KeyInfo {
            name: name.to_string(),
            kind,
            placement: Placement::Hsm,
            key_id: KeyId::of_spki(spki_der),
            ski: Ski::of_spki(spki_der)?,
            spki: B64.encode(spki_der),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            hsm: Some(hsm),
        };
        Ok(Key::new(info, None))
    }

    /// A fresh in-memory key of `kind`, for benchmarks and tests.
    pub fn ephemeral(name: &str, kind: KeyKind) -> Result<Arc<Key>> {
        Ok(Arc::new(Key::from_material(
            name,
            material::generate(kind)?,
            Placement::Soft,
        )?))
    }

    fn new(info: KeyInfo, secret: Option<SecretKey>) -> Key {
        Key {
            spki_der: info.spki_der(),
            info,
            secret,
            verifiers: Default::default(),
            rsa_public: OnceLock::new(),
        }
    }

    /// Public facts about the key.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.info.kind
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.info.key_id
    }

    /// Where the key lives.
    pub fn placement(&self) -> Placement {
        self.info.placement
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The private half, for soft backends. Fails when the store was opened
    /// without the key-encryption key or the key lives in an HSM.
    pub fn secret(&self) -> Result<&SecretKey> {
        self.secret
            .as_ref()
            .ok_or_else(|| match self.info.placement {
                Placement::Hsm => Error::Invalid(format!(
                    "key '{}' lives in an HSM; its private half is not available",
                    self.info.name
                )),
                Placement::Soft => Error::Kek(format!(
                    "not loaded, so key '{}' cannot be decrypted",
                    self.info.name
                )),
            })
    }

    /// The RSA public key as OpenSSL holds it (its Montgomery context is
    /// cached after first use), or `None` for other kinds.
    pub fn rsa_public(&self) -> Option<&openssl::rsa::Rsa<openssl::pkey::Public>> {
        self.rsa_public
            .get_or_init(|| {
                openssl::pkey::PKey::public_key_from_der(&self.spki_der)
                    .ok()
                    .and_then(|k| k.rsa().ok())
            })
            .as_ref()
    }

    /// A parsed public key for verifying `scheme` signatures, made once.
    pub fn verifier(&self, scheme: Scheme) -> Result<&aws_lc_rs::signature::ParsedPublicKey> {
        let slot = &self.verifiers[Scheme::all().iter().position(|s| *s == scheme).unwrap_or(0)];
        if let Some(v) = slot.get() {
            return Ok(v);
        }
        let parsed = aws_lc_rs::signature::UnparsedPublicKey::new(
            crate::engine::check::verification_algorithm(scheme),
            der::spki_parts(&self.spki_der)
                .map_err(|e| Error::Invalid(format!("public key: {e}")))?
                .public_key,
        )
        .parse()
        .map_err(|e| Error::Invalid(format!("public key does not parse for {scheme}: {e}")))?;
        Ok(slot.get_or_init(|| parsed))
    }
}

/// Where a new key is made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyHome {
    /// In the key store: encrypted at rest, signs on the CPU or a GPU.
    #[default]
    Soft,
    /// Inside a PKCS#11 token (sensitive, never extractable).
    Hsm {
        /// The token's label, when several are configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
}

impl fmt::Display for KeyHome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyHome::Soft => f.write_str("soft"),
            KeyHome::Hsm { token: None } => f.write_str("hsm"),
            KeyHome::Hsm { token: Some(t) } => write!(f, "hsm (token {t})"),
        }
    }
}

/// Makes a key of a kind, under a name, inside a PKCS#11 token (the token's
/// label when given) and registers it in the store. Installed by the
/// application, which knows the configured tokens.
pub type HsmMaker =
    dyn Fn(&KeyStore, &str, KeyKind, Option<&str>) -> Result<Arc<Key>> + Send + Sync;

/// Destroys an HSM key's objects inside its PKCS#11 token(s). Installed by
/// the application, which knows the configured tokens.
pub type HsmDestroyer = dyn Fn(&Key) -> Result<()> + Send + Sync;

/// The set of keys sigmux holds, backed by `<data-dir>/keys/`.
pub struct KeyStore {
    dir: Option<PathBuf>,
    kek: RwLock<Option<Arc<Kek>>>,
    /// Where the KEK came from: a file is read again when another process
    /// has rotated the KEK (see [`rotation`]).
    kek_source: Option<KekSource>,
    keys: RwLock<Index>,
    hsm_maker: RwLock<Option<Arc<HsmMaker>>>,
    hsm_destroyer: RwLock<Option<Arc<HsmDestroyer>>>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("keys", &self.keys.read().by_name.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Index {
    by_name: HashMap<String, Arc<Key>>,
    by_id: HashMap<KeyId, Arc<Key>>,
    by_ski: HashMap<Ski, Arc<Key>>,
    /// Names of the keys that have a file in the store's directory (the
    /// others, added by [`KeyStore::insert`], are never dropped by a
    /// rescan).
    files: HashSet<String>,
    /// Key files in the directory that could not be loaded, by the name
    /// their file gives them.
    unreadable: BTreeMap<String, BadFile>,
}

/// A key file in the store's directory that could not be loaded: the key
/// it holds is not available, every other key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The name the file gives the key: its file name without `.key`.
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// Why it could not be loaded; never any of the file's content.
    pub reason: String,
}

/// What the store remembers of a file it could not load.
#[derive(Clone, Debug)]
struct BadFile {
    public: Unreadable,
    /// The key name recorded inside the file, when it parses and differs
    /// from the file's name (a file renamed or copied by hand), so that
    /// asking for that key names this file.
    names: Option<String>,
}

impl BadFile {
    fn of(path: &Path, error: &Error) -> BadFile {
        let reason = match error {
            Error::KeyFile { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        BadFile {
            public: Unreadable {
                name: file_key_name(path),
                file: path.to_path_buf(),
                reason,
            },
            names: read_key_file(path)
                .ok()
                .map(|f| f.info.name)
                .filter(|n| *n != file_key_name(path) && validate_name(n).is_ok()),
        }
    }

    fn error(&self) -> Error {
        Error::key_file(&self.public.file, self.public.reason.clone())
    }
}

/// What [`KeyStore::delete_unreadable`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedFile {
    /// The file, its name and why it could not be loaded.
    pub file: Unreadable,
    /// SHA-256 of the removed file's bytes, hex, when it could be read:
    /// matches it with a backup without recording its content.
    pub sha256: Option<String>,
}

/// The key name a key file's name gives (the file name without `.key`).
fn file_key_name(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Index {
    fn insert(&mut self, key: Arc<Key>) {
        self.by_id.insert(key.id(), key.clone());
        self.by_ski.insert(key.info.ski, key.clone());
        self.by_name.insert(key.info.name.clone(), key);
    }

    fn insert_file(&mut self, key: Arc<Key>) {
        self.files.insert(key.info.name.clone());
        self.unreadable.remove(&key.info.name);
        self.insert(key);
    }

    fn set_unreadable(&mut self, bad: BadFile) {
        self.unreadable.insert(bad.public.name.clone(), bad);
    }

    /// Drops the key named `name` (and its id and SKI entries, when they
    /// are its own).
    fn remove(&mut self, name: &str) -> Option<Arc<Key>> {
        self.files.remove(name);
        let key = self.by_name.remove(name)?;
        if self
            .by_id
            .get(&key.id())
            .is_some_and(|k| Arc::ptr_eq(k, &key))
        {
            self.by_id.remove(&key.id());
        }
        if self
            .by_ski
            .get(&key.info.ski)
            .is_some_and(|k| Arc::ptr_eq(k, &key))
        {
            self.by_ski.remove(&key.info.ski);
        }
        Some(key)
    }
}

/// What [`KeyStore::rescan`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rescan {
    /// Keys whose files appeared since the store last looked, under a name
    /// it did not hold, now loaded.
    pub added: Vec<String>,
    /// Names whose file now holds another key than the one the store held
    /// (deleted and made again, or imported over): the new key is loaded
    /// and the old one dropped. Reported apart from `added` so an operator
    /// sees that a name in use now signs with a different key.
    pub replaced: Vec<String>,
    /// Keys whose files are gone, now dropped from the store.
    pub removed: Vec<String>,
    /// Files that could not be loaded, each with the reason; whatever the
    /// store held under those names stays.
    pub failed: Vec<String>,
}

/// The on-disk form of one key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    info: KeyInfo,
    /// nonce ‖ AES-256-GCM ciphertext ‖ tag of the PKCS#8 DER, base64.
    sealed: Option<String>,
    /// The public id of the KEK `sealed` is under (absent in files written
    /// before KEKs had ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kek_id: Option<String>,
}

const KEY_FILE_FORMAT: &str = "sigmux-key-v1";

/// Checks a key name against the rules (it also becomes a file name).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKeyName(name.to_string()))
    }
}

/// Name prefixes of the keys the CA makes for itself: its root
/// (`ca-root-<serial8>`), intermediates (`ca-int-<serial8>`) and JWT-SVID
/// signing keys (`ca-jwt-<8 hex>`). Those keys sign only through the CA
/// (certificates, CRLs, JWT-SVIDs): keyless clients and `sigmux sign` never
/// reach them, whatever a client rule says, and `keys generate` / `keys
/// import` refuse these names.
pub const CA_KEY_PREFIXES: [&str; 3] = ["ca-root-", "ca-int-", "ca-jwt-"];

/// Whether `name` is one the CA gives its own keys ([`CA_KEY_PREFIXES`]).
pub fn is_ca_key_name(name: &str) -> bool {
    CA_KEY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// [`validate_name`] for a key an operator makes or imports: also refuses
/// the names reserved for the CA's own keys.
pub fn validate_operator_key_name(name: &str) -> Result<()> {
    validate_name(name)?;
    if is_ca_key_name(name) {
        return Err(Error::Invalid(format!(
            "key name '{name}' is reserved: names starting with {} are the CA's own keys",
            CA_KEY_PREFIXES.join(", ")
        )));
    }
    Ok(())
}

impl KeyStore {
    /// A store that lives only in memory (benchmarks, tests).
    pub fn in_memory() -> KeyStore {
        KeyStore {
            dir: None,
            kek: RwLock::new(None),
            kek_source: None,
            keys: RwLock::new(Index::default()),
            hsm_maker: RwLock::new(None),
            hsm_destroyer: RwLock::new(None),
        }
    }

    /// Opens the store under `data_dir/keys`. Without `kek`, public facts
    /// are available but private halves are not decrypted.
    ///
    /// A key file that cannot be loaded (corrupt, truncated, altered, not
    /// a sigmux key file) does not stop the others: it is listed by
    /// [`KeyStore::unreadable`] and the key it holds is not available.
    ///
    /// # Errors
    ///
    /// `kek` is not the KEK the directory's keys are under (the directory's
    /// record says so or, without a record, no key decrypts under it and one
    /// does not), a KEK rotation did not finish, or the directory cannot be
    /// listed.
    pub fn open(data_dir: &Path, kek: Option<Kek>) -> Result<KeyStore> {
        let dir = data_dir.join("keys");
        // A rotation under way finishes first, so that only one that really
        // stopped is reported as unfinished.
        let _lock = kek
            .is_some()
            .then(|| rotation::DirLock::shared(&dir))
            .transpose()?;
        // Whether `kek` is known to be the directory's KEK: then a key file
        // that does not decrypt under it is a bad file, not a wrong KEK.
        let mut kek_confirmed = false;
        if let Some(kek) = &kek {
            let state = rotation::KekState::load(&dir)?;
            state.check(&dir, kek)?;
            kek_confirmed = state.kek_id.as_deref() == Some(kek.id());
        }
        let mut index = Index::default();
        let mut kek_doubt = None;
        for path in key_files(&dir)? {
            match load_file_or_doubt(&path, kek.as_ref()) {
                Ok(key) => {
                    kek_confirmed |= key.secret.is_some();
                    index.insert_file(Arc::new(key));
                }
                Err(LoadError {
                    error,
                    kek_doubt: doubt,
                }) => {
                    index.set_unreadable(BadFile::of(&path, &error));
                    if doubt && kek_doubt.is_none() {
                        kek_doubt = Some(error);
                    }
                }
            }
        }
        if let Some(e) = kek_doubt.filter(|_| !kek_confirmed) {
            return Err(e);
        }
        Ok(KeyStore {
            dir: Some(dir),
            kek: RwLock::new(kek.map(Arc::new)),
            kek_source: None,
            keys: RwLock::new(index),
            hsm_maker: RwLock::new(None),
            hsm_destroyer: RwLock::new(None),
        })
    }

    /// Names where the store's KEK came from, so that a KEK file rotated by
    /// another process (`sigmux keys rotate-kek` next to a running `serve`)
    /// is read again instead of sealing new keys under the retired KEK.
    #[must_use]
    pub fn with_kek_source(mut self, source: KekSource) -> KeyStore {
        self.kek_source = Some(source);
        self
    }

    /// The KEK to use now: the one held, or, when the keys directory says
    /// its keys have moved to another KEK and the held one came from a file,
    /// that file read again.
    fn current_kek(&self, dir: &Path) -> Result<Option<Arc<Kek>>> {
        let held = self.kek.read().clone();
        let Some(held) = held else {
            return Ok(None);
        };
        let state = rotation::KekState::load(dir)?;
        let Some(want) = state.kek_id.filter(|w| w != held.id()) else {
            return Ok(Some(held));
        };
        if let Some(source @ KekSource::File(_)) = &self.kek_source {
            let (fresh, _) = Kek::load(source, false)?;
            if fresh.id() == want {
                let fresh = Arc::new(fresh);
                *self.kek.write() = Some(fresh.clone());
                return Ok(Some(fresh));
            }
        }
        Err(Error::Kek(format!(
            "the keys in {} are now under id {want} (rotated by `sigmux keys rotate-kek`), but this process holds id {}; restart it with the new key",
            dir.display(),
            held.id()
        )))
    }

    /// Brings the store in line with its directory: loads the keys whose
    /// files appeared since (`sigmux keys generate` or `import` next to a
    /// running `serve`), reloads a file that now holds another key under
    /// the same name, and drops the keys whose files are gone (`sigmux keys
    /// delete`). A file that cannot be loaded is reported in
    /// [`Rescan::failed`] and changes nothing, so a bad file never takes a
    /// working key away. Requests already holding a dropped key finish
    /// with it.
    ///
    /// # Errors
    ///
    /// When the directory cannot be listed.
    pub fn rescan(&self) -> Result<Rescan> {
        let mut out = Rescan::default();
        let Some(dir) = &self.dir else {
            return Ok(out);
        };
        let mut present = HashSet::new();
        for path in key_files(dir)? {
            let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
                continue;
            };
            present.insert(name.to_owned());
            let known = self.keys.read().by_name.get(name).map(|k| k.id());
            match (known, key_file_id(&path)) {
                (Some(id), Ok(now)) if id == now => {
                    self.keys.write().unreadable.remove(name);
                    continue;
                }
                (_, Err(e)) => {
                    self.keys.write().set_unreadable(BadFile::of(&path, &e));
                    out.failed.push(e.to_string());
                    continue;
                }
                _ => {}
            }
            let loaded = self
                .current_kek(dir)
                .and_then(|kek| load_file(&path, kek.as_deref()));
            match loaded {
                Ok(key) => {
                    let mut index = self.keys.write();
                    index.remove(name);
                    index.insert_file(Arc::new(key));
                    if known.is_some() {
                        out.replaced.push(name.to_owned());
                    } else {
                        out.added.push(name.to_owned());
                    }
                }
                Err(e) => {
                    self.keys.write().set_unreadable(BadFile::of(&path, &e));
                    out.failed.push(e.to_string());
                }
            }
        }
        let mut index = self.keys.write();
        index.unreadable.retain(|n, _| present.contains(n));
        let mut gone: Vec<String> = index
            .files
            .iter()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        gone.sort();
        for name in gone {
            index.remove(&name);
            out.removed.push(name);
        }
        Ok(out)
    }

    /// Deletes the key named `name`: its file, then its entry. For a key
    /// in a PKCS#11 token only sigmux's reference goes; the token keeps
    /// the key.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`] when there is no such stored key, or the file
    /// system's error.
    pub fn delete(&self, name: &str) -> Result<Arc<Key>> {
        let key = self.get(name)?;
        let dir = self
            .dir
            .as_ref()
            .filter(|_| self.keys.read().files.contains(name))
            .ok_or_else(|| Error::UnknownKey(name.to_string()))?;
        let path = dir.join(format!("{name}.key"));
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        crate::audit::sync_dir(dir)?;
        self.keys.write().remove(name);
        Ok(key)
    }

    /// Destroys the key named `name` for good, at the end of its life (the
    /// key of a retired CA intermediate): a key in a PKCS#11 token is
    /// destroyed inside the token first, then its file goes. The private
    /// half held in memory is zeroized when the last request using it
    /// finishes. Returns `None` when the key's file was already gone
    /// (destroyed by another process; only this store's entry is dropped).
    ///
    /// # Errors
    ///
    /// When the token cannot destroy it (or none is configured), or the
    /// file system's error; the key then stays.
    pub fn destroy(&self, name: &str) -> Result<Option<Arc<Key>>> {
        let Some(dir) = self.dir.as_ref().filter(|_| validate_name(name).is_ok()) else {
            return Err(Error::UnknownKey(name.to_string()));
        };
        if !dir.join(format!("{name}.key")).exists() {
            self.keys.write().remove(name);
            return Ok(None);
        }
        let key = self.get(name)?;
        if key.placement() == Placement::Hsm {
            let destroyer = self.hsm_destroyer.read().clone().ok_or_else(|| {
                Error::Config(format!(
                    "key {name} is in a PKCS#11 token, but no token is configured ([backends.pkcs11]) to destroy it in"
                ))
            })?;
            destroyer(&key)?;
        }
        self.delete(name).map(Some)
    }

    /// Lets [`KeyStore::destroy`] destroy keys inside PKCS#11 tokens.
    pub fn set_hsm_destroyer(&self, destroyer: Arc<HsmDestroyer>) {
        *self.hsm_destroyer.write() = Some(destroyer);
    }

    /// Whether `data_dir` holds any stored key (decides whether a missing
    /// key-encryption key may be created or is an error).
    pub fn has_keys(data_dir: &Path) -> bool {
        std::fs::read_dir(data_dir.join("keys"))
            .map(|mut it| {
                it.any(|e| {
                    e.ok()
                        .is_some_and(|e| e.path().extension().is_some_and(|x| x == "key"))
                })
            })
            .unwrap_or(false)
    }

    /// Generates a key of `kind` and stores it as `name`.
    pub fn generate(&self, name: &str, kind: KeyKind) -> Result<Arc<Key>> {
        validate_name(name)?;
        self.ensure_absent(name)?;
        let key = Key::from_material(name, material::generate(kind)?, Placement::Soft)?;
        self.store(key)
    }

    /// Lets [`KeyStore::generate_in`] make keys in PKCS#11 tokens.
    pub fn set_hsm_maker(&self, maker: Arc<HsmMaker>) {
        *self.hsm_maker.write() = Some(maker);
    }

    /// Generates a key of `kind` as `name` where `home` says: in the store,
    /// or inside a PKCS#11 token (then only its public half and a reference
    /// are stored).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `hsm` when no token is configured; otherwise
    /// what [`KeyStore::generate`] or the token reports.
    pub fn generate_in(&self, name: &str, kind: KeyKind, home: &KeyHome) -> Result<Arc<Key>> {
        match home {
            KeyHome::Soft => self.generate(name, kind),
            KeyHome::Hsm { token } => {
                let maker = self.hsm_maker.read().clone().ok_or_else(|| {
                    Error::Config(format!(
                        "key {name} is to be made in a PKCS#11 token, but no token is configured ([backends.pkcs11])"
                    ))
                })?;
                maker(self, name, kind, token.as_deref())
            }
        }
    }

    /// Imports a private key (PKCS#8, PKCS#1 or SEC1; PEM or DER) as `name`.
    pub fn import(&self, name: &str, bytes: &[u8]) -> Result<Arc<Key>> {
        validate_name(name)?;
        self.ensure_absent(name)?;
        let key = Key::from_material(name, material::import(bytes)?, Placement::Soft)?;
        if self.keys.read().by_id.contains_key(&key.id()) {
            return Err(Error::Import(format!(
                "this key is already stored under another name ({})",
                key.id()
            )));
        }
        self.store(key)
    }

    /// Records a key that lives in an HSM (made by
    /// [`Key::from_hsm`]) under its name: a key file with public facts and
    /// the token reference, no private material, so no KEK is needed.
    pub fn register_hsm(&self, key: Key) -> Result<Arc<Key>> {
        validate_name(key.name())?;
        self.ensure_absent(key.name())?;
        if key.placement() != Placement::Hsm || key.info.hsm.is_none() || key.secret.is_some() {
            return Err(Error::Invalid(format!(
                "key '{}' is not an HSM key reference",
                key.name()
            )));
        }
        if let Some(other) = self.keys.read().by_id.get(&key.id()) {
            return Err(Error::Import(format!(
                "this key is already stored as '{}' ({})",
                other.name(),
                key.id()
            )));
        }
        self.store(key)
    }

    /// Adds a key that is not persisted (HSM references, tests).
    pub fn insert(&self, key: Arc<Key>) {
        self.keys.write().insert(key);
    }

    fn ensure_absent(&self, name: &str) -> Result<()> {
        if self.keys.read().by_name.contains_key(name) {
            return Err(Error::KeyExists(name.to_string()));
        }
        Ok(())
    }

    fn store(&self, key: Key) -> Result<Arc<Key>> {
        if let Some(dir) = &self.dir {
            // Held until the file is written: a rotation waits for it, and
            // it waits for a rotation, so the key is never sealed under a
            // KEK on its way out.
            let _lock = key
                .secret
                .is_some()
                .then(|| rotation::DirLock::shared(dir))
                .transpose()?;
            let (sealed, kek_id) = match &key.secret {
                Some(s) => {
                    let state = rotation::KekState::load(dir)?;
                    if let Some(to) = &state.rotating_to {
                        return Err(rotation::interrupted(dir, to));
                    }
                    let kek = self.current_kek(dir)?.ok_or_else(|| {
                        Error::Kek("not loaded, so the new key cannot be encrypted".into())
                    })?;
                    rotation::record_if_absent(dir, &state, &kek)?;
                    (
                        Some(B64.encode(kek.seal(&key.info.name, s.pkcs8_der())?)),
                        Some(kek.id().to_owned()),
                    )
                }
                None => (None, None),
            };
            let file = KeyFile {
                format: KEY_FILE_FORMAT.into(),
                info: key.info.clone(),
                sealed,
                kek_id,
            };
            let text = serde_json::to_vec_pretty(&file)
                .map_err(|e| Error::Invalid(format!("cannot encode key file: {e}")))?;
            write_new(dir, &format!("{}.key", key.info.name), &text).map_err(|e| match e {
                WriteNew::Exists(path) => Error::KeyFile {
                    path,
                    reason: format!(
                        "a key named '{}' is already on disk, though this store did not \
                         load it (`sigmux keys list` says why); move the file away or \
                         delete the key before making a new one under that name",
                        key.info.name
                    ),
                },
                WriteNew::Other(e) => e,
            })?;
            let key = Arc::new(key);
            self.keys.write().insert_file(key.clone());
            return Ok(key);
        }
        let key = Arc::new(key);
        self.keys.write().insert(key.clone());
        Ok(key)
    }

    /// The key named `name`.
    ///
    /// A key another process added to the data dir since this store was
    /// opened (a `sigmux ca rotate` next to a running `serve`) is loaded
    /// from its file on first use.
    pub fn get(&self, name: &str) -> Result<Arc<Key>> {
        if let Some(k) = self.keys.read().by_name.get(name) {
            return Ok(k.clone());
        }
        let (dir, path) = match &self.dir {
            Some(dir) if validate_name(name).is_ok() => (dir, dir.join(format!("{name}.key"))),
            _ => return Err(Error::UnknownKey(name.to_string())),
        };
        if !path.exists() {
            // A file under another name that records this key (renamed or
            // copied by hand) is what the caller needs to hear about.
            let index = self.keys.read();
            return Err(index
                .unreadable
                .values()
                .find(|b| b.names.as_deref() == Some(name))
                .map_or_else(|| Error::UnknownKey(name.to_string()), BadFile::error));
        }
        let key = Arc::new(load_file(&path, self.current_kek(dir)?.as_deref())?);
        let mut index = self.keys.write();
        if let Some(k) = index.by_name.get(name) {
            return Ok(k.clone());
        }
        index.insert_file(key.clone());
        Ok(key)
    }

    /// The key with this id.
    pub fn by_id(&self, id: &KeyId) -> Option<Arc<Key>> {
        self.keys.read().by_id.get(id).cloned()
    }

    /// The key with this SKI.
    pub fn by_ski(&self, ski: &Ski) -> Option<Arc<Key>> {
        self.keys.read().by_ski.get(ski).cloned()
    }

    /// Public facts about every key, sorted by name.
    pub fn list(&self) -> Vec<KeyInfo> {
        let mut v: Vec<KeyInfo> = self
            .keys
            .read()
            .by_name
            .values()
            .map(|k| k.info.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The key files that could not be loaded when the store was opened or
    /// last rescanned, each with the reason, sorted by name.
    pub fn unreadable(&self) -> Vec<Unreadable> {
        self.keys
            .read()
            .unreadable
            .values()
            .map(|b| b.public.clone())
            .collect()
    }

    /// Deletes the file of key `name` that cannot be loaded (so
    /// [`KeyStore::delete`], which needs the key, cannot remove it). The
    /// file is tried again first: one that loads now is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`] when there is no such file; [`Error::Invalid`]
    /// for a name reserved for the CA's own keys ([`CA_KEY_PREFIXES`]: such
    /// a file is restored from a backup, never deleted this way) or a file
    /// that loads now; the file system's error.
    pub fn delete_unreadable(&self, name: &str) -> Result<DeletedFile> {
        let dir = match &self.dir {
            Some(dir) if validate_name(name).is_ok() => dir,
            _ => return Err(Error::UnknownKey(name.to_string())),
        };
        let path = dir.join(format!("{name}.key"));
        if !path.exists() {
            return Err(Error::UnknownKey(name.to_string()));
        }
        if is_ca_key_name(name) {
            return Err(Error::Invalid(format!(
                "key file {} is named like one of the CA's own keys ({}): it is not deleted this way; restore it from a backup of the data dir",
                path.display(),
                CA_KEY_PREFIXES.join(", ")
            )));
        }
        let kek = self.kek.read().clone();
        let error = match load_file(&path, kek.as_deref()) {
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "key file {} can be read now; delete the key as usual",
                    path.display()
                )));
            }
            Err(e) => e,
        };
        let sha256 = std::fs::read(&path).ok().map(|bytes| {
            let bytes = zeroize::Zeroizing::new(bytes);
            hex::encode(digest::digest(&digest::SHA256, &bytes).as_ref())
        });
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        crate::audit::sync_dir(dir)?;
        let mut index = self.keys.write();
        index.unreadable.remove(name);
        if index.files.contains(name) {
            index.remove(name);
        }
        Ok(DeletedFile {
            file: BadFile::of(&path, &error).public,
            sha256,
        })
    }
}

/// The key files (`*.key`) in `dir`, sorted; none when it does not exist.
fn key_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The KeyId a key file records, read without decrypting anything.
fn key_file_id(path: &Path) -> Result<KeyId> {
    Ok(read_key_file(path)?.info.key_id)
}

/// A key file parsed, its format checked; nothing decrypted or verified.
/// The errors never quote the file's content (it may be anything, a
/// private key pasted by hand included).
fn read_key_file(path: &Path) -> Result<KeyFile> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| Error::key_file(path, e.to_string()))?,
    );
    let file: KeyFile =
        serde_json::from_slice(&bytes).map_err(|e| Error::key_file(path, json_reason(&e)))?;
    if file.format != KEY_FILE_FORMAT {
        return Err(Error::key_file(
            path,
            format!(
                "unknown format {} (expected {KEY_FILE_FORMAT})",
                quoted_if_plain(&file.format)
            ),
        ));
    }
    Ok(file)
}

/// Why a key file's JSON did not parse, without serde's quotes of the
/// offending value: only the kind of error, where it is, and the name of a
/// missing field (one of sigmux's own).
fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "could not be read".to_string(),
        Category::Syntax => "not valid JSON".to_string(),
        Category::Eof => "truncated".to_string(),
        Category::Data => {
            let msg = e.to_string();
            match msg
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                Some(field) if field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
                    format!("not a sigmux key file (no field '{field}')")
                }
                _ => "not a sigmux key file (a field is missing, unknown or of the wrong type)"
                    .to_string(),
            }
        }
    };
    format!(
        "corrupt key file: {what} at line {} column {}",
        e.line(),
        e.column()
    )
}

/// `'s'` when `s` is a short plain token, else `(not shown)`: a value read
/// from a damaged file is shown only when it cannot be key material.
fn quoted_if_plain(s: &str) -> String {
    if !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        format!("'{s}'")
    } else {
        "(not shown)".to_string()
    }
}

/// Why [`load_file_or_doubt`] failed.
struct LoadError {
    error: Error,
    /// The file did not decrypt, or names another KEK, in a way a wrong
    /// configured KEK would explain as well as a bad file.
    kek_doubt: bool,
}

impl From<Error> for LoadError {
    fn from(error: Error) -> Self {
        LoadError {
            error,
            kek_doubt: false,
        }
    }
}

fn load_file(path: &Path, kek: Option<&Kek>) -> Result<Key> {
    load_file_or_doubt(path, kek).map_err(|e| e.error)
}

fn load_file_or_doubt(path: &Path, kek: Option<&Kek>) -> Result<Key, LoadError> {
    let file = read_key_file(path)?;
    let info = file.info;
    let expected = format!("{}.key", info.name);
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        let names = match validate_name(&info.name) {
            Ok(()) => format!("names key '{}' but the file is not {expected}", info.name),
            Err(_) => "names a key by an invalid name".to_string(),
        };
        return Err(Error::key_file(path, names).into());
    }
    let spki = B64
        .decode(&info.spki)
        .map_err(|_| Error::key_file(path, "public key is not valid base64"))?;
    if KeyId::of_spki(&spki) != info.key_id {
        return Err(Error::key_file(path, "key_id does not match the public key").into());
    }
    let secret = match (kek, &file.sealed, info.placement) {
        (Some(kek), Some(_), Placement::Soft)
            if file.kek_id.as_deref().is_some_and(|id| id != kek.id()) =>
        {
            let named = file.kek_id.as_deref().unwrap_or_default();
            let named = if named.len() == 16 && named.bytes().all(|b| b.is_ascii_hexdigit()) {
                named.to_string()
            } else {
                "(an invalid id)".to_string()
            };
            return Err(LoadError {
                error: Error::key_file(
                    path,
                    format!(
                        "is encrypted under key-encryption key {named}, not the configured one ({})",
                        kek.id()
                    ),
                ),
                kek_doubt: true,
            });
        }
        (Some(kek), Some(sealed), Placement::Soft) => {
            let sealed = B64
                .decode(sealed)
                .map_err(|_| Error::key_file(path, "encrypted key is not valid base64"))?;
            // A file that records this KEK's id and does not decrypt was
            // altered; one without an id may be under another KEK.
            let der = kek.open(&info.name, &sealed).map_err(|e| LoadError {
                error: Error::key_file(path, e),
                kek_doubt: file.kek_id.is_none(),
            })?;
            let m = material::from_openssl(
                &openssl::pkey::PKey::private_key_from_pkcs8(&der)
                    .map_err(|_| Error::key_file(path, "decrypted key is not PKCS#8"))?,
            )
            .map_err(|e| Error::key_file(path, e.to_string()))?;
            if m.spki_der != spki || m.kind != info.kind {
                return Err(Error::key_file(
                    path,
                    "private key does not match the recorded public key",
                )
                .into());
            }
            Some(m.secret)
        }
        (_, None, Placement::Soft) => {
            return Err(Error::key_file(path, "soft key has no encrypted private key").into());
        }
        (_, Some(_), Placement::Hsm) => {
            return Err(Error::key_file(path, "an HSM key must not hold private material").into());
        }
        (_, None, Placement::Hsm) if info.hsm.is_none() => {
            return Err(
                Error::key_file(path, "HSM key has no hsm section (token, label, id)").into(),
            );
        }
        _ => None,
    };
    Ok(Key::new(info, secret))
}

/// Writes `dir/name` so that a crash leaves either the old or the new file.
/// Creates `dir` (and its missing parents) for its owner only (0700):
/// key files, the KEK and the CA state live under it, and a folder others
/// may write to would let them swap those files by rename.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Why [`write_new`] wrote nothing.
enum WriteNew {
    /// The file is already there (written by another process, or one this
    /// store could not read): it is left as it is.
    Exists(PathBuf),
    Other(Error),
}

/// Writes `dir/name` as [`write_atomic`] does, but never over a file that
/// is already there: a key file this store failed to read (damaged, or a
/// sealed key that no longer decrypts) may still be someone's only copy of
/// a key. The new file is linked into place, which fails when the name is
/// taken, so two processes making the same name cannot both win.
fn write_new(dir: &Path, name: &str, data: &[u8]) -> std::result::Result<(), WriteNew> {
    create_private_dir(dir).map_err(|e| WriteNew::Other(Error::io(dir, e)))?;
    let dst = dir.join(name);
    if dst.exists() {
        return Err(WriteNew::Exists(dst));
    }
    let tmp = dir.join(format!(".{name}.{}.new", std::process::id()));
    write_synced(&tmp, data).map_err(WriteNew::Other)?;
    match std::fs::hard_link(&tmp, &dst) {
        Ok(()) => {
            let _ = std::fs::remove_file(&tmp);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            return Err(WriteNew::Exists(dst));
        }
        // A filesystem without hard links: the check above is all there is.
        Err(_) => std::fs::rename(&tmp, &dst).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            WriteNew::Other(Error::io(&dst, e))
        })?,
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `data` to a new private (0600) file at `path` and syncs it.
fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

pub(crate) fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    create_private_dir(dir).map_err(|e| Error::io(dir, e))?;
    // One temporary name per process: two processes writing the same file
    // (the KEK record, say) must not rename each other's half-written copy.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let dst = dir.join(name);
    write_synced(&tmp, data)?;
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescan_follows_the_directory_and_a_bad_file_takes_nothing_away() {
        let dir = tempfile::tempdir().unwrap();
        let kek = || Kek::from_bytes(&[3u8; 32]).unwrap();
        let serving = KeyStore::open(dir.path(), Some(kek())).unwrap();
        serving.insert(Key::ephemeral("in-memory", KeyKind::P256).unwrap());
        // Another process (the CLI) adds two keys.
        let cli = KeyStore::open(dir.path(), Some(kek())).unwrap();
        let a = cli.generate("a", KeyKind::P256).unwrap();
        cli.generate("b", KeyKind::Ed25519).unwrap();
        let r = serving.rescan().unwrap();
        assert_eq!((r.added, r.removed), (vec!["a".into(), "b".into()], vec![]));
        assert_eq!(serving.by_ski(&a.info().ski).unwrap().id(), a.id());
        assert_eq!(serving.rescan().unwrap(), Rescan::default());
        // "a" deleted and made again: another key under the same name.
        cli.delete("a").unwrap();
        let a2 = cli.generate("a", KeyKind::P256).unwrap();
        let r = serving.rescan().unwrap();
        assert_eq!((r.added, r.replaced), (vec![], vec!["a".to_string()]));
        assert!(serving.by_ski(&a.info().ski).is_none());
        assert_eq!(serving.get("a").unwrap().id(), a2.id());
        // A corrupt "b" is reported and "b" stays; a deleted one goes; the
        // in-memory key is never touched.
        std::fs::write(dir.path().join("keys/b.key"), b"{").unwrap();
        cli.delete("a").unwrap();
        let r = serving.rescan().unwrap();
        assert_eq!(r.removed, vec!["a".to_string()]);
        assert_eq!(r.failed.len(), 1);
        assert!(r.failed[0].contains("b.key"), "{:?}", r.failed);
        assert!(serving.get("b").is_ok() && serving.get("in-memory").is_ok());
        assert!(serving.get("a").is_err() && serving.by_id(&a2.id()).is_none());
        assert!(matches!(cli.delete("a"), Err(Error::UnknownKey(_))));
    }

    #[test]
    fn a_new_key_never_replaces_a_key_file_the_store_could_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let kek = || Kek::from_bytes(&[3u8; 32]).unwrap();
        // "a" whose sealed key no longer decrypts, "b" damaged: neither
        // loads, and either may be all that is left of a key.
        KeyStore::open(dir.path(), Some(kek()))
            .unwrap()
            .generate("a", KeyKind::P256)
            .unwrap();
        let a_file = dir.path().join("keys/a.key");
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&a_file).unwrap()).unwrap();
        let sealed = file["sealed"].as_str().unwrap().to_owned();
        let flipped = if sealed.starts_with('A') { "B" } else { "A" };
        file["sealed"] = format!("{flipped}{}", &sealed[1..]).into();
        std::fs::write(&a_file, serde_json::to_vec(&file).unwrap()).unwrap();
        let a_before = std::fs::read(&a_file).unwrap();
        std::fs::write(dir.path().join("keys/b.key"), b"{").unwrap();
        let store = KeyStore::open(dir.path(), Some(kek())).unwrap();
        for (name, file, before) in [
            ("a", &a_file, a_before),
            ("b", &dir.path().join("keys/b.key"), b"{".to_vec()),
        ] {
            assert!(store.get(name).is_err(), "{name} should not have loaded");
            let e = store
                .generate(name, KeyKind::Ed25519)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{name}.key")) && e.contains("already on disk"),
                "{e}"
            );
            assert_eq!(
                &std::fs::read(file).unwrap(),
                &before,
                "{name}.key was changed"
            );
        }
        // No staging file is left behind, and other names still work.
        store.generate("c", KeyKind::P256).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".new") || n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn debug_never_shows_private_material() {
        let key = Key::ephemeral("k", KeyKind::P256).unwrap();
        let dbg = format!("{key:?} {:?}", key.secret().unwrap());
        assert!(!dbg.contains(&hex::encode(key.secret().unwrap().pkcs8_der())));
        assert!(dbg.contains("SecretKey(..)"));
    }

    #[test]
    fn hsm_references_round_trip_without_a_kek() {
        let dir = tempfile::tempdir().unwrap();
        let soft = Key::ephemeral("x", KeyKind::P256).unwrap();
        let r = HsmRef {
            token: Some("t".into()),
            label: "h".into(),
            id: "0102".into(),
        };
        let store = KeyStore::open(dir.path(), None).unwrap();
        let k = store
            .register_hsm(Key::from_hsm("h", KeyKind::P256, soft.spki_der(), r.clone()).unwrap())
            .unwrap();
        assert_eq!(k.placement(), Placement::Hsm);
        assert!(k.secret().is_err());
        let again = KeyStore::open(dir.path(), None).unwrap();
        assert_eq!(again.get("h").unwrap().info().hsm, Some(r));
        // The same public key cannot be registered twice.
        let dup = Key::from_hsm(
            "h2",
            KeyKind::P256,
            soft.spki_der(),
            k.info().hsm.clone().unwrap(),
        );
        assert!(again.register_hsm(dup.unwrap()).is_err());
        // An HSM key file without its hsm section is refused.
        let path = dir.path().join("keys/h.key");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["info"].as_object_mut().unwrap().remove("hsm");
        std::fs::write(&path, v.to_string()).unwrap();
        let again = KeyStore::open(dir.path(), None).unwrap();
        let e = again.get("h").unwrap_err().to_string();
        assert!(e.contains("no hsm section"), "{e}");
        assert!(again.unreadable()[0].reason.contains("no hsm section"));
    }

    /// A data dir with keys "good" and "bad" under `kek`, "bad" then
    /// overwritten with `junk`.
    fn with_a_bad_file(kek: Kek, junk: &[u8]) -> (tempfile::TempDir, Arc<Key>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), Some(kek)).unwrap();
        let good = store.generate("good", KeyKind::P256).unwrap();
        store.generate("bad", KeyKind::Ed25519).unwrap();
        let bad = dir.path().join("keys/bad.key");
        std::fs::write(&bad, junk).unwrap();
        (dir, good, bad)
    }

    #[test]
    fn a_bad_key_file_is_listed_as_unreadable_and_takes_no_other_key_away() {
        let kek = || Kek::from_bytes(&[5u8; 32]).unwrap();
        let secret_text = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n";
        let junks: Vec<(&str, Vec<u8>)> = vec![
            ("junk", b"junk\n".to_vec()),
            ("empty", Vec::new()),
            (
                "truncated",
                b"{\"format\": \"sigmux-key-v1\", \"info\": {".to_vec(),
            ),
            ("a JSON string", format!("{secret_text:?}").into_bytes()),
            (
                "a wrong type",
                format!("{{\"format\": 7, \"info\": {secret_text:?}}}").into_bytes(),
            ),
            (
                "an unknown field",
                format!("{{{:?}: 1}}", "TOPSECRETMATERIAL").into_bytes(),
            ),
            ("a PEM", secret_text.as_bytes().to_vec()),
        ];
        for (what, junk) in junks {
            let (dir, good, bad) = with_a_bad_file(kek(), &junk);
            for k in [None, Some(kek())] {
                let with_kek = k.is_some();
                let store = KeyStore::open(dir.path(), k).unwrap();
                let names: Vec<String> = store.list().into_iter().map(|i| i.name).collect();
                assert_eq!(names, ["good"], "{what}");
                let u = store.unreadable();
                assert_eq!(u.len(), 1, "{what}");
                assert_eq!((u[0].name.as_str(), &u[0].file), ("bad", &bad), "{what}");
                assert!(!u[0].reason.is_empty(), "{what}");
                let got = store.get("good").unwrap();
                assert_eq!(got.id(), good.id());
                assert_eq!(got.secret().is_ok(), with_kek, "{what}");
                let e = store.get("bad").unwrap_err().to_string();
                assert!(e.contains(&bad.display().to_string()), "{what}: {e}");
                for shown in [&e, &u[0].reason, &format!("{u:?}")] {
                    assert!(!shown.contains("TOPSECRET"), "{what}: {shown}");
                    assert!(!shown.contains("BEGIN"), "{what}: {shown}");
                }
            }
        }
    }

    #[test]
    fn an_altered_ciphertext_is_a_bad_file_when_the_kek_is_known_to_be_right() {
        let kek = || Kek::from_bytes(&[6u8; 32]).unwrap();
        let (dir, good, bad) = with_a_bad_file(kek(), b"");
        let store = KeyStore::open(dir.path(), Some(kek())).unwrap();
        drop(store);
        // "bad" made again, then its ciphertext altered.
        std::fs::remove_file(&bad).unwrap();
        KeyStore::open(dir.path(), Some(kek()))
            .unwrap()
            .generate("bad", KeyKind::P256)
            .unwrap();
        let alter = |drop_kek_id: bool| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&bad).unwrap()).unwrap();
            let mut sealed = B64.decode(v["sealed"].as_str().unwrap()).unwrap();
            // Another byte each time: the same one twice would undo it.
            let at = sealed.len() / 2 + usize::from(drop_kek_id);
            sealed[at] ^= 0x5a;
            v["sealed"] = B64.encode(&sealed).into();
            if drop_kek_id {
                v.as_object_mut().unwrap().remove("kek_id");
            }
            std::fs::write(&bad, v.to_string()).unwrap();
        };
        alter(false);
        let store = KeyStore::open(dir.path(), Some(kek())).unwrap();
        assert!(store.get("good").unwrap().secret().is_ok());
        assert!(store.unreadable()[0].reason.contains("cannot decrypt"));
        // Without the directory's record the KEK is still known to be right
        // when the file names it, or another key decrypts under it.
        std::fs::remove_file(dir.path().join("keys/kek-state.json")).unwrap();
        let store = KeyStore::open(dir.path(), Some(kek())).unwrap();
        assert_eq!(store.list()[0].key_id, good.id());
        alter(true);
        let store = KeyStore::open(dir.path(), Some(kek())).unwrap();
        assert_eq!(store.unreadable().len(), 1);
        // A wrong KEK, with nothing saying which is right, is still an error.
        let wrong = Kek::from_bytes(&[9u8; 32]).unwrap();
        let e = KeyStore::open(dir.path(), Some(wrong)).unwrap_err();
        assert!(e.to_string().contains("key-encryption key"), "{e}");
    }

    #[test]
    fn an_unreadable_file_is_deleted_but_never_a_ca_key_or_a_readable_one() {
        let kek = Kek::from_bytes(&[4u8; 32]).unwrap();
        let (dir, good, bad) = with_a_bad_file(kek, b"junk");
        std::fs::write(dir.path().join("keys/ca-int-0123abcd.key"), b"junk").unwrap();
        let store = KeyStore::open(dir.path(), None).unwrap();
        assert_eq!(store.unreadable().len(), 2);
        let e = store
            .delete_unreadable("ca-int-0123abcd")
            .unwrap_err()
            .to_string();
        assert!(e.contains("CA's own keys"), "{e}");
        assert!(dir.path().join("keys/ca-int-0123abcd.key").exists());
        let e = store.delete_unreadable("good").unwrap_err().to_string();
        assert!(e.contains("can be read now"), "{e}");
        assert!(matches!(
            store.delete_unreadable("nope"),
            Err(Error::UnknownKey(_))
        ));
        assert!(matches!(
            store.delete_unreadable("../x"),
            Err(Error::UnknownKey(_))
        ));
        let gone = store.delete_unreadable("bad").unwrap();
        assert_eq!((gone.file.name.as_str(), &gone.file.file), ("bad", &bad));
        assert_eq!(
            gone.sha256.as_deref(),
            Some(hex::encode(digest::digest(&digest::SHA256, b"junk").as_ref()).as_str())
        );
        assert!(!bad.exists());
        assert_eq!(store.unreadable().len(), 1);
        assert_eq!(store.get("good").unwrap().id(), good.id());
        assert!(matches!(store.get("bad"), Err(Error::UnknownKey(_))));
    }

    #[test]
    fn a_renamed_key_file_is_named_when_its_key_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), None).unwrap();
        let soft = Key::ephemeral("x", KeyKind::P256).unwrap();
        let r = HsmRef {
            token: None,
            label: "k".into(),
            id: "01".into(),
        };
        store
            .register_hsm(Key::from_hsm("k", KeyKind::P256, soft.spki_der(), r).unwrap())
            .unwrap();
        let keys = dir.path().join("keys");
        std::fs::rename(keys.join("k.key"), keys.join("other.key")).unwrap();
        let store = KeyStore::open(dir.path(), None).unwrap();
        let e = store.get("k").unwrap_err().to_string();
        assert!(
            e.contains("other.key") && e.contains("names key 'k'"),
            "{e}"
        );
        assert!(matches!(store.get("z"), Err(Error::UnknownKey(_))));
    }

    #[test]
    fn rescan_keeps_the_unreadable_list_current() {
        let kek = || Kek::from_bytes(&[8u8; 32]).unwrap();
        let (dir, _, bad) = with_a_bad_file(kek(), b"junk");
        let store = KeyStore::open(dir.path(), Some(kek())).unwrap();
        assert_eq!(store.unreadable().len(), 1);
        // Fixed (a key made again under the name): loaded, no longer listed.
        std::fs::remove_file(&bad).unwrap();
        let cli = KeyStore::open(dir.path(), Some(kek())).unwrap();
        cli.generate("bad", KeyKind::P256).unwrap();
        let r = store.rescan().unwrap();
        assert_eq!(r.added, ["bad"]);
        assert!(store.unreadable().is_empty());
        // Broken again: the key held stays, the file is listed.
        std::fs::write(&bad, b"{").unwrap();
        let r = store.rescan().unwrap();
        assert_eq!(r.failed.len(), 1);
        assert!(store.get("bad").is_ok());
        assert_eq!(store.unreadable()[0].name, "bad");
        // Gone: neither.
        std::fs::remove_file(&bad).unwrap();
        let r = store.rescan().unwrap();
        assert_eq!(r.removed, ["bad"]);
        assert!(store.unreadable().is_empty());
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        validate_name("ca-2026_01.v2").unwrap();
    }

    #[test]
    fn store_round_trip_encrypted_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let kek = || Kek::from_bytes(&[1u8; 32]).unwrap();
        let store = KeyStore::open(dir.path(), Some(kek())).unwrap();
        let k = store.generate("edge", KeyKind::Ed25519).unwrap();
        let raw = std::fs::read(dir.path().join("keys/edge.key")).unwrap();
        let pkcs8 = k.secret().unwrap().pkcs8_der();
        assert!(!raw.windows(16).any(|w| w == &pkcs8[pkcs8.len() - 16..]));
        assert!(matches!(
            store.generate("edge", KeyKind::P256),
            Err(Error::KeyExists(_))
        ));
        let again = KeyStore::open(dir.path(), Some(kek())).unwrap();
        let k2 = again.get("edge").unwrap();
        assert_eq!(k2.secret().unwrap().pkcs8_der(), pkcs8);
        assert!(again.by_id(&k.id()).is_some());
        assert!(again.by_ski(&k.info().ski).is_some());
        // A wrong KEK is named by the directory's record, else by the key
        // file's KEK id, else (a file from before KEK ids) by the failed
        // decryption.
        let wrong = || Kek::from_bytes(&[2u8; 32]).unwrap();
        let e = KeyStore::open(dir.path(), Some(wrong())).unwrap_err();
        assert!(e.to_string().contains("is not the one the keys"), "{e}");
        std::fs::remove_file(dir.path().join("keys/kek-state.json")).unwrap();
        let e = KeyStore::open(dir.path(), Some(wrong())).unwrap_err();
        let want = format!(
            "under key-encryption key {}, not the configured one",
            kek().id()
        );
        assert!(e.to_string().contains(&want), "{e}");
        let path = dir.path().join("keys/edge.key");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("kek_id");
        std::fs::write(&path, v.to_string()).unwrap();
        let e = KeyStore::open(dir.path(), Some(wrong())).unwrap_err();
        assert!(e.to_string().contains("cannot decrypt"), "{e}");
        assert!(KeyStore::open(dir.path(), Some(kek())).is_ok());
        let public_only = KeyStore::open(dir.path(), None).unwrap();
        assert!(public_only.get("edge").unwrap().secret().is_err());
    }
}
