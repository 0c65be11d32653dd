//! The CA chain of a SPIFFE trust domain: a self-signed root, intermediate
//! signing CAs under it, the JWT-SVID signing key, and the trust bundle
//! (PEM and the SPIFFE JWK Set of `standards/SPIFFE_Trust_Domain_and_Bundle.md`).
//!
//! Certificates are built as DER here (with the writer of [`super::svid`])
//! and signed through the [`Engine`], like every other signature.
//!
//! `ca init` makes:
//!
//! * a root CA: subject `O=SPIFFE, CN=sigmux root CA <serial8>`, self-signed,
//!   valid [`DEFAULT_ROOT_TTL`] (10 years) unless told otherwise,
//!   basicConstraints critical `cA` TRUE with `pathLenConstraint` 1 (only
//!   intermediates sign leaves), keyUsage critical keyCertSign + cRLSign,
//!   SKI, AKI (its own SKI), and a URI SAN `spiffe://<trust domain>`;
//! * an intermediate signing CA: subject `O=SPIFFE, CN=sigmux intermediate CA
//!   <serial8>`, valid [`DEFAULT_INTERMEDIATE_TTL`] (1 year) but never past
//!   the root, basicConstraints critical `cA` TRUE `pathLenConstraint` 0,
//!   keyUsage critical keyCertSign + cRLSign, SKI, AKI (the root's SKI) and
//!   the same URI SAN; its status is `active`;
//! * a JWT-SVID signing key (P-256 unless told otherwise) with a `kid`: the
//!   base64url of the first 16 bytes of its [`crate::keys::KeyId`].
//!
//! Keys are generated in the key store as `ca-root-<serial8>`,
//! `ca-int-<serial8>` and `ca-jwt-<8 hex>` (`<serial8>`: the first 8 hex
//! digits of the certificate's serial). With an offline root the root key is
//! written encrypted (PKCS#8, AES-256-CBC, passphrase from
//! [`ROOT_PASSPHRASE_ENV`]) to the file named and never enters the store.
//!
//! The state lives in `<data-dir>/ca/state.json`, written atomically after
//! everything else is made: a crash during `ca init` leaves at most unused
//! keys in the store and no CA, so `ca init` can simply be run again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use openssl::pkey::{Id, PKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::csr::tag;
use super::spiffe::TrustDomain;
use super::svid::{
    Serial, assemble, encode_time, ext_oid, extension, pem_block, seq, signature_algorithm, tlv,
    unix_secs,
};
use crate::engine::{Engine, SignRequest};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyHome, KeyStore, Ski, write_atomic};
use crate::scheme::{KeyKind, Scheme, SignInput};

/// Default lifetime of the root CA certificate: 10 years.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Default lifetime of an intermediate CA certificate: 1 year.
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 86_400);

/// How far CA certificates' `notBefore` is set before now, for clock skew.
pub const CA_BACKDATE: Duration = Duration::from_secs(60);

/// Default `spiffe_refresh_hint` of the bundle, in seconds (five minutes, the
/// interval SPIFFE_Trust_Domain_and_Bundle.md §6.2 suggests).
pub const DEFAULT_REFRESH_HINT_SECS: u64 = 300;

/// The environment variable holding the passphrase of an offline root key.
pub const ROOT_PASSPHRASE_ENV: &str = "SIGMUX_ROOT_PASSPHRASE";

/// The `format` member of `state.json`.
const STATE_FORMAT: &str = "sigmux-ca-v1";

/// File name of the CA state under `<data-dir>/ca/`.
const STATE_FILE: &str = "state.json";

/// Where an intermediate CA is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaStatus {
    /// Published in the bundle, not signing yet.
    Prepared,
    /// Signs new SVIDs (and is in the bundle).
    Active,
    /// No longer signs; stays in the bundle until the last SVID it signed
    /// has expired.
    Draining,
    /// No longer signs and is no longer in the bundle.
    Retired,
    /// Revoked in an emergency: out of the bundle at once.
    Revoked,
}

/// The root CA as recorded in the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRecord {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key's name in the store; `None` for an offline root.
    pub key_name: Option<String>,
    /// Where the encrypted offline root key was written (`None` when the
    /// key is in the store).
    pub offline_file: Option<PathBuf>,
    /// The key's kind.
    pub kind: KeyKind,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// An intermediate signing CA as recorded in the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateRecord {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key's name in the store.
    pub key_name: String,
    /// The key's kind.
    pub kind: KeyKind,
    /// The scheme SVIDs are signed with.
    pub scheme: Scheme,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Where it is in its life.
    pub status: CaStatus,
    /// When it stopped signing (Unix seconds), once draining.
    #[serde(default)]
    pub draining_since: Option<i64>,
    /// Where its key lives; successors are made in the same place.
    #[serde(default)]
    pub home: KeyHome,
    /// When it was revoked (Unix seconds), once revoked: its entry in the
    /// root's CRL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// One revoked SVID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSvid {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
}

/// A JWT-SVID signing key as recorded in the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyRecord {
    /// The key's name in the store.
    pub key_name: String,
    /// The JWS `kid`.
    pub kid: String,
    /// The scheme JWT-SVIDs are signed with.
    pub scheme: Scheme,
    /// Where it is in its life: prepared with each new intermediate (in the
    /// JWKS bundle, not signing), active, draining (in the bundle until the
    /// last JWT-SVID it signed has expired), retired.
    pub status: CaStatus,
    /// When it stopped signing (Unix seconds), once draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<i64>,
}

/// Everything the CA remembers, stored in `<data-dir>/ca/state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaState {
    /// Always `sigmux-ca-v1`.
    pub format: String,
    /// The trust domain name (without `spiffe://`).
    pub trust_domain: String,
    /// The root CA.
    pub root: RootRecord,
    /// Intermediate CAs, oldest first.
    pub intermediates: Vec<IntermediateRecord>,
    /// JWT-SVID signing keys, oldest first.
    pub jwt_keys: Vec<JwtKeyRecord>,
    /// The bundle's `spiffe_sequence`; bumped on every bundle change.
    pub bundle_sequence: u64,
    /// The bundle's `spiffe_refresh_hint`, seconds.
    pub refresh_hint_secs: u64,
    /// Revoked SVID serials.
    #[serde(default)]
    pub revoked: Vec<RevokedSvid>,
    /// The root's CRL (PEM), listing the revoked intermediates; signed
    /// again whenever the root key is used ([`super::crl::root_crl_pem`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_crl_pem: Option<String>,
}

/// What `ca init` is asked to make.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Kind of the root key.
    pub root_kind: KeyKind,
    /// Kind of the intermediate key.
    pub intermediate_kind: KeyKind,
    /// Kind of the JWT-SVID signing key (not Ed25519: JWT-SVID.md has no
    /// `alg` for it).
    pub jwt_kind: KeyKind,
    /// Lifetime of the root certificate.
    pub root_ttl: Duration,
    /// Lifetime of the intermediate certificate (capped at the root's).
    pub intermediate_ttl: Duration,
    /// Write the root key encrypted here instead of keeping it in the store.
    pub offline_root: Option<PathBuf>,
    /// Where the intermediate's key is made (and its successors').
    pub intermediate_home: KeyHome,
}

impl InitOptions {
    /// Options with the documented defaults: P-256 keys, a 10-year root, a
    /// 1-year intermediate, root key in the store.
    #[must_use]
    pub fn new(trust_domain: TrustDomain) -> InitOptions {
        InitOptions {
            trust_domain,
            root_kind: KeyKind::P256,
            intermediate_kind: KeyKind::P256,
            jwt_kind: KeyKind::P256,
            root_ttl: DEFAULT_ROOT_TTL,
            intermediate_ttl: DEFAULT_INTERMEDIATE_TTL,
            offline_root: None,
            intermediate_home: KeyHome::Soft,
        }
    }

    /// Checks what can be checked before anything is made: JWT key kind,
    /// lifetimes, and that the offline root file does not exist yet.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the problem.
    pub fn check(&self) -> Result<()> {
        if super::svid::jwt_alg(Scheme::default_for(self.jwt_kind)).is_none() {
            return Err(Error::Invalid(format!(
                "JWT key kind {} cannot sign JWT-SVIDs (use p256, p384 or an RSA kind)",
                self.jwt_kind
            )));
        }
        if self.root_ttl.as_secs() < 86_400 || self.intermediate_ttl.as_secs() < 3600 {
            return Err(Error::Invalid(
                "the root must live at least one day (--root-days 1) and the intermediate at least one hour (--intermediate-days 1)".into(),
            ));
        }
        if self.root_ttl.as_secs() > 100 * 365 * 86_400 {
            return Err(Error::Invalid(
                "the root lifetime must be at most 100 years".into(),
            ));
        }
        if let Some(p) = &self.offline_root
            && (p.exists() || p.symlink_metadata().is_ok())
        {
            return Err(Error::Invalid(format!(
                "--offline-root {}: the file already exists; refusing to overwrite it",
                p.display()
            )));
        }
        Ok(())
    }
}

/// The directory of the CA state under a data dir.
#[must_use]
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ca")
}

/// The CA state file of the CA in `data_dir`.
pub fn state_file(data_dir: &Path) -> PathBuf {
    state_dir(data_dir).join(STATE_FILE)
}

/// An exclusive lock on the CA state, held while it is read, changed and
/// written: `sigmux ca rotate` or `ca revoke` beside a running `serve`
/// (whose scheduled rotation writes the same file) then cannot lose the
/// other's change. Released on drop (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl CaState {
    /// Takes the state lock of the CA in `data_dir`, waiting for another
    /// holder (another process, or another thread of this one).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the lock file cannot be opened or locked.
    pub fn lock(data_dir: &Path) -> Result<StateLock> {
        use std::os::fd::AsRawFd as _;
        let dir = state_dir(data_dir);
        if !dir.exists() {
            // The usual "no CA here" error, without making the folder.
            CaState::require(data_dir)?;
        }
        let path = dir.join("state.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(StateLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(&path, e));
            }
        }
    }

    /// Whether a CA has been initialised in `data_dir`.
    #[must_use]
    pub fn exists(data_dir: &Path) -> bool {
        state_file(data_dir).exists()
    }

    /// Loads the state, or `None` when no CA has been initialised.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::Invalid`] when the file cannot be read or
    /// parsed.
    pub fn load(data_dir: &Path) -> Result<Option<CaState>> {
        let path = state_file(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let state: CaState = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: corrupt CA state: {e}", path.display())))?;
        if state.format != STATE_FORMAT {
            return Err(Error::Invalid(format!(
                "{}: unknown CA state format '{}'",
                path.display(),
                state.format
            )));
        }
        Ok(Some(state))
    }

    /// Loads the state, failing with a clear error when there is none.
    ///
    /// # Errors
    ///
    /// As [`CaState::load`], and [`Error::Invalid`] when no CA exists.
    pub fn require(data_dir: &Path) -> Result<CaState> {
        CaState::load(data_dir)?.ok_or_else(|| {
            Error::Invalid(format!(
                "no CA in {} (run `sigmux ca init --trust-domain TD` first)",
                data_dir.display()
            ))
        })
    }

    /// Writes the state atomically (a crash leaves the old or the new file).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when it cannot be written.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot encode CA state: {e}")))?;
        write_atomic(&state_dir(data_dir), STATE_FILE, &text)
    }

    /// The certificates of the bundle, DER: the root, then every
    /// intermediate that is not retired (oldest first).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when a stored certificate is not valid PEM.
    pub fn bundle_certs(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = vec![pem_to_der(&self.root.cert_pem)?];
        for i in &self.intermediates {
            if !matches!(i.status, CaStatus::Retired | CaStatus::Revoked) {
                out.push(pem_to_der(&i.cert_pem)?);
            }
        }
        Ok(out)
    }
}

pub(crate) fn pem_to_der(text: &str) -> Result<Vec<u8>> {
    let p = pem::parse(text)
        .map_err(|e| Error::Invalid(format!("CA state holds an unreadable certificate: {e}")))?;
    if p.tag() != "CERTIFICATE" {
        return Err(Error::Invalid(format!(
            "CA state holds a '{}' PEM block where a certificate belongs",
            p.tag()
        )));
    }
    Ok(p.contents().to_vec())
}

/// Reads the offline root passphrase from [`ROOT_PASSPHRASE_ENV`].
///
/// # Errors
///
/// [`Error::Invalid`] when it is unset, empty or not UTF-8.
pub fn root_passphrase_from_env() -> Result<Zeroizing<String>> {
    match std::env::var(ROOT_PASSPHRASE_ENV) {
        Ok(p) if !p.is_empty() => Ok(Zeroizing::new(p)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Err(Error::Invalid(format!(
            "the offline root's passphrase is read from the environment variable {ROOT_PASSPHRASE_ENV}, which is not set"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::Invalid(format!(
            "{ROOT_PASSPHRASE_ENV} is not valid UTF-8"
        ))),
    }
}

/// A new JWT-SVID signing key in the store, `ca-jwt-<8 random hex>`.
pub(crate) fn new_jwt_key(store: &KeyStore, kind: KeyKind) -> Result<Arc<Key>> {
    let mut tag_bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut tag_bytes)
        .map_err(|_| Error::Invalid("random generator failed".into()))?;
    store.generate(&format!("ca-jwt-{}", hex::encode(tag_bytes)), kind)
}

/// The JWS `kid` of a JWT signing key: base64url (no padding) of the first
/// 16 bytes of its key id (SHA-256 of the SPKI).
#[must_use]
pub fn jwt_kid(key: &Key) -> String {
    B64URL.encode(&key.id().0[..16])
}

/// What one CA certificate should say.
pub(crate) struct CaCertSpec<'a> {
    pub(crate) serial: Serial,
    /// Subject (and, for the root, issuer) Name, DER.
    pub(crate) subject: Vec<u8>,
    /// Issuer Name, DER.
    pub(crate) issuer: Vec<u8>,
    /// The issuer's SKI, for the AKI.
    pub(crate) issuer_ski: Vec<u8>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) path_len: u8,
    /// The certified key's SPKI, DER.
    pub(crate) spki: &'a [u8],
    pub(crate) trust_domain: &'a TrustDomain,
}

/// `O=SPIFFE, CN=<cn>` as a DER Name.
pub(crate) fn ca_name(cn: &str) -> Vec<u8> {
    let o = seq(&[&tlv(tag::OID, ext_oid::ORGANIZATION), &tlv(0x0c, b"SPIFFE")]);
    let cn = seq(&[
        &tlv(tag::OID, &[0x55, 0x04, 0x03]),
        &tlv(0x0c, cn.as_bytes()),
    ]);
    seq(&[&tlv(0x31, &o), &tlv(0x31, &cn)])
}

/// The DER TBSCertificate of a CA certificate.
fn ca_tbs(spec: &CaCertSpec<'_>, scheme: Scheme) -> Result<Vec<u8>> {
    let sig_alg = signature_algorithm(scheme)
        .ok_or_else(|| Error::Invalid(format!("scheme {scheme} cannot sign certificates")))?;
    let ski = Ski::of_spki(spec.spki)?;
    // basicConstraints: cA TRUE, pathLenConstraint.
    let bc = seq(&[
        &[tag::BOOLEAN, 0x01, 0xff],
        &tlv(tag::INTEGER, &[spec.path_len]),
    ]);
    // keyCertSign (bit 5) + cRLSign (bit 6): 1 unused bit.
    let ku: &[u8] = &[tag::BIT_STRING, 0x02, 0x01, 0x06];
    let san = seq(&[&tlv(0x86, spec.trust_domain.id_string().as_bytes())]);
    let exts = [
        extension(ext_oid::BASIC_CONSTRAINTS, true, &bc),
        extension(ext_oid::KEY_USAGE, true, ku),
        extension(
            ext_oid::SUBJECT_KEY_ID,
            false,
            &tlv(tag::OCTET_STRING, &ski.0),
        ),
        extension(
            ext_oid::AUTHORITY_KEY_ID,
            false,
            &seq(&[&tlv(0x80, &spec.issuer_ski)]),
        ),
        extension(ext_oid::SUBJECT_ALT_NAME, false, &san),
    ];
    let exts: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();
    Ok(seq(&[
        &[0xa0, 0x03, 0x02, 0x01, 0x02],
        &tlv(tag::INTEGER, &spec.serial.0),
        &sig_alg,
        &spec.issuer,
        &seq(&[&encode_time(spec.not_before), &encode_time(spec.not_after)]),
        &spec.subject,
        spec.spki,
        &tlv(tag::CONTEXT_3_CONSTRUCTED, &seq(&exts)),
    ]))
}

/// Builds a CA certificate and has the engine sign it with `signer`.
pub(crate) fn sign_ca_cert(
    engine: &Engine,
    spec: &CaCertSpec<'_>,
    signer: &Arc<Key>,
) -> Result<Vec<u8>> {
    let scheme = Scheme::default_for(signer.kind());
    let tbs = ca_tbs(spec, scheme)?;
    let sig = engine.sign_blocking(SignRequest::new(
        signer.clone(),
        scheme,
        SignInput::Message(tbs.clone()),
    ))?;
    assemble(&tbs, scheme, &sig.bytes).map_err(|e| Error::Invalid(e.to_string()))
}

pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// Makes the CA chain and the JWT key in `data_dir` (see the module
/// documentation) and stores the state. Signing goes through `engine`
/// synchronously, so this must not be called from inside an async runtime.
///
/// `root_passphrase` is needed, and only used, with
/// [`InitOptions::offline_root`].
///
/// # Errors
///
/// [`Error::Invalid`] when a CA already exists, the options are bad or the
/// passphrase is missing; key store, engine and I/O errors otherwise.
pub fn init(
    data_dir: &Path,
    store: &KeyStore,
    engine: &Engine,
    opts: &InitOptions,
    root_passphrase: Option<&str>,
) -> Result<CaState> {
    refuse_existing(data_dir)?;
    opts.check()?;
    if opts.offline_root.is_some() {
        match root_passphrase {
            Some(p) if !p.is_empty() => super::offline_root::check_passphrase(p)?,
            _ => {
                return Err(Error::Invalid(format!(
                    "--offline-root needs the passphrase in the environment variable {ROOT_PASSPHRASE_ENV}"
                )));
            }
        }
    }
    let now = unix_secs(SystemTime::now()).map_err(|e| Error::Invalid(e.to_string()))?;
    let not_before = now - secs(CA_BACKDATE);
    let td = &opts.trust_domain;

    // Root.
    let root_serial = Serial::random().map_err(|e| Error::Invalid(e.to_string()))?;
    let root_tag = &root_serial.to_hex()[..8];
    let root_name = format!("ca-root-{root_tag}");
    let root_key = match &opts.offline_root {
        Some(_) => Key::ephemeral(&root_name, opts.root_kind)?,
        None => store.generate(&root_name, opts.root_kind)?,
    };
    let root_subject = ca_name(&format!("sigmux root CA {root_tag}"));
    let root_ski = Ski::of_spki(root_key.spki_der())?.0.to_vec();
    let root_not_after = now.saturating_add(secs(opts.root_ttl));
    let root_der = sign_ca_cert(
        engine,
        &CaCertSpec {
            serial: root_serial,
            subject: root_subject.clone(),
            issuer: root_subject.clone(),
            issuer_ski: root_ski.clone(),
            not_before,
            not_after: root_not_after,
            path_len: 1,
            spki: root_key.spki_der(),
            trust_domain: td,
        },
        &root_key,
    )?;

    // Intermediate.
    let int_serial = Serial::random().map_err(|e| Error::Invalid(e.to_string()))?;
    let int_tag = &int_serial.to_hex()[..8];
    let int_key = store.generate_in(
        &format!("ca-int-{int_tag}"),
        opts.intermediate_kind,
        &opts.intermediate_home,
    )?;
    let int_not_after = now
        .saturating_add(secs(opts.intermediate_ttl))
        .min(root_not_after);
    let int_der = sign_ca_cert(
        engine,
        &CaCertSpec {
            serial: int_serial,
            subject: ca_name(&format!("sigmux intermediate CA {int_tag}")),
            issuer: root_subject,
            issuer_ski: root_ski,
            not_before,
            not_after: int_not_after,
            path_len: 0,
            spki: int_key.spki_der(),
            trust_domain: td,
        },
        &root_key,
    )?;

    let jwt_key = new_jwt_key(store, opts.jwt_kind)?;

    let mut state = CaState {
        format: STATE_FORMAT.into(),
        trust_domain: td.name().to_string(),
        root: RootRecord {
            serial: root_serial.to_hex(),
            cert_pem: pem_block(&root_der),
            key_name: opts.offline_root.is_none().then(|| root_name.clone()),
            offline_file: opts.offline_root.clone(),
            kind: opts.root_kind,
            not_before,
            not_after: root_not_after,
        },
        intermediates: vec![IntermediateRecord {
            serial: int_serial.to_hex(),
            cert_pem: pem_block(&int_der),
            key_name: int_key.name().to_string(),
            kind: opts.intermediate_kind,
            scheme: Scheme::default_for(opts.intermediate_kind),
            not_before,
            not_after: int_not_after,
            status: CaStatus::Active,
            draining_since: None,
            home: opts.intermediate_home.clone(),
            revoked_at: None,
        }],
        jwt_keys: vec![JwtKeyRecord {
            key_name: jwt_key.name().to_string(),
            kid: jwt_kid(&jwt_key),
            scheme: Scheme::default_for(opts.jwt_kind),
            status: CaStatus::Active,
            draining_since: None,
        }],
        bundle_sequence: 1,
        refresh_hint_secs: DEFAULT_REFRESH_HINT_SECS,
        revoked: Vec::new(),
        root_crl_pem: None,
    };
    // An empty one, so relying parties that check every CA's CRL can start.
    state.root_crl_pem = Some(super::crl::root_crl_pem(engine, &root_key, &state, now)?);

    if let (Some(path), Some(pass)) = (&opts.offline_root, root_passphrase) {
        super::offline_root::write_new(path, &root_key, pass)?;
    }
    // Last: a crash before this line leaves no CA behind.
    refuse_existing(data_dir)?;
    state.save(data_dir)?;
    Ok(state)
}

fn refuse_existing(data_dir: &Path) -> Result<()> {
    if CaState::exists(data_dir) {
        return Err(Error::Invalid(format!(
            "a CA already exists in {} ({}); refusing to make another",
            data_dir.display(),
            state_file(data_dir).display()
        )));
    }
    Ok(())
}

/// The bundle as PEM: the root, then every intermediate not retired.
///
/// # Errors
///
/// [`Error::Invalid`] when the state holds an unreadable certificate.
pub fn bundle_pem(state: &CaState) -> Result<String> {
    Ok(state.bundle_certs()?.iter().map(|d| pem_block(d)).collect())
}

/// The SPIFFE bundle (a JWK Set, SPIFFE_Trust_Domain_and_Bundle.md §4):
/// one `x509-svid` JWK per certificate of [`CaState::bundle_certs`], each
/// with that one certificate in `x5c` and its public key parameters, one
/// `jwt-svid` JWK with its `kid` per JWT key not retired, and
/// `spiffe_sequence` and `spiffe_refresh_hint`.
///
/// # Errors
///
/// [`Error::Invalid`] for an unreadable certificate or unsupported key;
/// [`Error::UnknownKey`] when a JWT key is missing from the store.
pub fn bundle_jwks(state: &CaState, store: &KeyStore) -> Result<serde_json::Value> {
    let mut keys = Vec::new();
    for der in state.bundle_certs()? {
        let cert = openssl::x509::X509::from_der(&der)
            .map_err(|e| Error::Invalid(format!("CA state holds a bad certificate: {e}")))?;
        let spki = cert
            .public_key()
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| Error::Invalid(format!("CA certificate public key: {e}")))?;
        let mut jwk = jwk_params(&spki)?;
        jwk.insert("use".into(), "x509-svid".into());
        jwk.insert("x5c".into(), serde_json::json!([B64.encode(&der)]));
        keys.push(serde_json::Value::Object(jwk));
    }
    for j in &state.jwt_keys {
        if matches!(j.status, CaStatus::Retired | CaStatus::Revoked) {
            continue;
        }
        let key = store.get(&j.key_name)?;
        let mut jwk = jwk_params(key.spki_der())?;
        jwk.insert("use".into(), "jwt-svid".into());
        jwk.insert("kid".into(), j.kid.clone().into());
        keys.push(serde_json::Value::Object(jwk));
    }
    Ok(serde_json::json!({
        "keys": keys,
        "spiffe_sequence": state.bundle_sequence,
        "spiffe_refresh_hint": state.refresh_hint_secs,
    }))
}

/// `kty` and the public key members (RFC 7518 §6) of a SubjectPublicKeyInfo.
fn jwk_params(spki: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("public key for JWK: {e}"));
    let pk = PKey::public_key_from_der(spki).map_err(|e| bad(&e))?;
    let mut m = serde_json::Map::new();
    match pk.id() {
        Id::RSA => {
            let rsa = pk.rsa().map_err(|e| bad(&e))?;
            m.insert("kty".into(), "RSA".into());
            m.insert("n".into(), B64URL.encode(rsa.n().to_vec()).into());
            m.insert("e".into(), B64URL.encode(rsa.e().to_vec()).into());
        }
        Id::EC => {
            let ec = pk.ec_key().map_err(|e| bad(&e))?;
            let (crv, len) = match ec.group().curve_name() {
                Some(openssl::nid::Nid::X9_62_PRIME256V1) => ("P-256", 32),
                Some(openssl::nid::Nid::SECP384R1) => ("P-384", 48),
                _ => return Err(bad(&"unsupported elliptic curve")),
            };
            let bits = crate::der::spki_parts(spki)
                .map_err(|e| bad(&e))?
                .public_key;
            if bits.len() != 1 + 2 * len || bits[0] != 0x04 {
                return Err(bad(&"EC point is not uncompressed"));
            }
            m.insert("kty".into(), "EC".into());
            m.insert("crv".into(), crv.into());
            m.insert("x".into(), B64URL.encode(&bits[1..=len]).into());
            m.insert("y".into(), B64URL.encode(&bits[1 + len..]).into());
        }
        Id::ED25519 => {
            let raw = pk.raw_public_key().map_err(|e| bad(&e))?;
            m.insert("kty".into(), "OKP".into());
            m.insert("crv".into(), "Ed25519".into());
            m.insert("x".into(), B64URL.encode(raw).into());
        }
        _ => return Err(bad(&"unsupported key type")),
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        crate::testutil::cpu_engine()
    }

    #[test]
    fn state_lock_excludes_another_holder() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(CaState::lock(tmp.path()).is_err(), "no CA, no lock");
        assert!(!tmp.path().join("ca").exists());
        std::fs::create_dir_all(tmp.path().join("ca")).unwrap();
        let held = CaState::lock(tmp.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = tmp.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let _second = CaState::lock(&dir).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a second holder got the lock while the first held it"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the lock passes on once released");
        waiter.join().unwrap();
    }

    #[test]
    fn init_makes_a_chain_the_svid_profile_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::key_store(dir.path());
        let engine = engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let state = init(
            dir.path(),
            &store,
            &engine,
            &InitOptions::new(td.clone()),
            None,
        )
        .unwrap();
        assert_eq!(CaState::load(dir.path()).unwrap().unwrap(), state);
        let again = init(dir.path(), &store, &engine, &InitOptions::new(td), None);
        assert!(again.unwrap_err().to_string().contains("already exists"));

        // The intermediate issues SVIDs through the finished profile.
        let int = &state.intermediates[0];
        let issuer = super::super::svid::Issuer {
            cert_der: pem_to_der(&int.cert_pem).unwrap(),
            key: store.get(&int.key_name).unwrap(),
            scheme: int.scheme,
            chain_der: vec![],
        };
        let leaf = Key::ephemeral("leaf", KeyKind::P256).unwrap();
        let req = super::super::svid::SvidRequest {
            public_key_spki: leaf.spki_der().to_vec(),
            spiffe_id: "spiffe://example.org/w".parse().unwrap(),
            dns_names: vec![],
            ttl: Duration::from_secs(60),
        };
        let now = SystemTime::now();
        super::super::svid::build_tbs(&req, &issuer, now, &Default::default()).unwrap();

        let jwks = bundle_jwks(&state, &store).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
        assert_eq!(jwks["keys"][2]["kid"], state.jwt_keys[0].kid);
        assert_eq!(bundle_pem(&state).unwrap().matches("BEGIN CERT").count(), 2);
    }
}
