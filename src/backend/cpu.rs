//! The CPU backend: a rayon pool running aws-lc-rs or OpenSSL, whichever a
//! short calibration at start finds faster for each scheme.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::Digest;
use aws_lc_rs::signature::{self as aws_sig, KeyPair as _};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::{Backend, Capabilities, CostSeed};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyId, Placement};
use crate::scheme::{Family, HashAlg, KeyKind, Scheme};

/// A signing library the CPU backend can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuEngine {
    /// aws-lc-rs (AWS-LC).
    #[serde(rename = "aws-lc")]
    AwsLc,
    /// The `openssl` crate (the system's OpenSSL).
    #[serde(rename = "openssl")]
    OpenSsl,
}

impl CpuEngine {
    /// Both engines.
    pub const ALL: [CpuEngine; 2] = [CpuEngine::AwsLc, CpuEngine::OpenSsl];

    /// The config and CLI name.
    pub fn name(self) -> &'static str {
        match self {
            CpuEngine::AwsLc => "aws-lc",
            CpuEngine::OpenSsl => "openssl",
        }
    }
}

impl fmt::Display for CpuEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuEngine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "aws-lc" => Ok(CpuEngine::AwsLc),
            "openssl" => Ok(CpuEngine::OpenSsl),
            _ => Err(Error::Invalid(format!(
                "unknown CPU engine '{s}' (expected aws-lc or openssl)"
            ))),
        }
    }
}

/// How the CPU backend picks its engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// Calibrate per scheme at start and use the faster.
    Auto,
    /// Always use this engine.
    Fixed(CpuEngine),
}

/// CPU backend settings.
#[derive(Clone, Debug)]
pub struct CpuConfig {
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Engine selection.
    pub engine: EngineChoice,
    /// Largest batch per call.
    pub max_batch: usize,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            threads: 0,
            engine: EngineChoice::Auto,
            max_batch: 256,
        }
    }
}

/// A key parsed for both libraries, so either engine can sign at once.
pub struct CpuKey {
    aws: AwsKey,
    ossl: PKey<Private>,
}

enum AwsKey {
    Rsa(aws_sig::RsaKeyPair),
    Ecdsa(aws_sig::EcdsaKeyPair),
    Ed25519(aws_sig::Ed25519KeyPair),
}

impl CpuKey {
    /// Parses a soft key for both engines.
    pub fn load(key: &Key) -> Result<CpuKey> {
        let der = key.secret()?.pkcs8_der();
        let bad = |lib: &str| Error::Invalid(format!("key '{}' rejected by {lib}", key.name()));
        let aws = match key.kind().family() {
            Family::Rsa => {
                AwsKey::Rsa(aws_sig::RsaKeyPair::from_pkcs8(der).map_err(|_| bad("aws-lc"))?)
            }
            Family::Ecdsa(_) => {
                let alg = match key.kind() {
                    KeyKind::P256 => &aws_sig::ECDSA_P256_SHA256_ASN1_SIGNING,
                    _ => &aws_sig::ECDSA_P384_SHA384_ASN1_SIGNING,
                };
                AwsKey::Ecdsa(
                    aws_sig::EcdsaKeyPair::from_pkcs8(alg, der).map_err(|_| bad("aws-lc"))?,
                )
            }
            Family::Ed25519 => AwsKey::Ed25519(
                aws_sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|_| bad("aws-lc"))?,
            ),
        };
        let ossl = key.secret()?.to_openssl()?;
        Ok(CpuKey { aws, ossl })
    }

    /// Signs one prepared input with `engine`.
    pub fn sign(&self, engine: CpuEngine, scheme: Scheme, input: &[u8]) -> Result<Vec<u8>> {
        if scheme == Scheme::RsaRaw {
            // aws-lc-rs has no raw private operation; OpenSSL does it.
            return self
                .rsa_raw(input)
                .map_err(|reason| Error::backend("cpu/openssl", format!("{scheme}: {reason}")));
        }
        if matches!(
            scheme,
            Scheme::EcdsaP256AnyDigest | Scheme::EcdsaP384AnyDigest
        ) {
            // aws-lc-rs signs only digests of the curve's own hash.
            return self
                .ecdsa_any_digest(input)
                .map_err(|reason| Error::backend("cpu/openssl", format!("{scheme}: {reason}")));
        }
        match engine {
            CpuEngine::AwsLc => self.sign_aws(scheme, input),
            CpuEngine::OpenSsl => self
                .sign_openssl(scheme, input)
                .map_err(|reason| Error::backend("cpu/openssl", format!("{scheme}: {reason}"))),
        }
    }

    fn sign_aws(&self, scheme: Scheme, input: &[u8]) -> Result<Vec<u8>> {
        let fail = |reason: &str| Error::backend("cpu/aws-lc", format!("{scheme}: {reason}"));
        let digest = |h: HashAlg| {
            Digest::import_less_safe(input, h.aws()).map_err(|_| fail("digest length"))
        };
        match (&self.aws, scheme.hash()) {
            (AwsKey::Rsa(k), Some(h)) => {
                let enc: &'static dyn aws_sig::RsaEncoding = match scheme {
                    Scheme::RsaPkcs1Sha256 => &aws_sig::RSA_PKCS1_SHA256,
                    Scheme::RsaPkcs1Sha384 => &aws_sig::RSA_PKCS1_SHA384,
                    Scheme::RsaPkcs1Sha512 => &aws_sig::RSA_PKCS1_SHA512,
                    Scheme::RsaPssRsaeSha256 => &aws_sig::RSA_PSS_SHA256,
                    Scheme::RsaPssRsaeSha384 => &aws_sig::RSA_PSS_SHA384,
                    Scheme::RsaPssRsaeSha512 => &aws_sig::RSA_PSS_SHA512,
                    _ => return Err(fail("not an RSA scheme")),
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                // The key was checked when loaded and the digest's length
                // just now, so a refusal here is AWS-LC's check of its CRT
                // result against the public key: a wrong result, never
                // returned, and the backend goes out of rotation for it.
                k.sign_digest(enc, &digest(h)?, &mut sig)
                    .map_err(|_| Error::WrongResult {
                        backend: "cpu/aws-lc".into(),
                        count: 1,
                        reason: format!(
                            "{scheme}: AWS-LC withheld a signature whose check against \
                             the public key failed"
                        ),
                    })?;
                Ok(sig)
            }
            (AwsKey::Ecdsa(k), Some(h)) => Ok(k
                .sign_digest(&digest(h)?)
                .map_err(|_| fail("aws-lc signing failed"))?
                .as_ref()
                .to_vec()),
            (AwsKey::Ed25519(k), None) => Ok(k.sign(input).as_ref().to_vec()),
            _ => Err(fail("scheme does not fit the key")),
        }
    }

    fn sign_openssl(&self, scheme: Scheme, input: &[u8]) -> Result<Vec<u8>, String> {
        let e = |err: openssl::error::ErrorStack| format!("openssl: {err}");
        match scheme.hash() {
            None => {
                let mut signer =
                    openssl::sign::Signer::new_without_digest(&self.ossl).map_err(e)?;
                signer.sign_oneshot_to_vec(input).map_err(e)
            }
            Some(h) => {
                let mut ctx = PkeyCtx::new(&self.ossl).map_err(e)?;
                ctx.sign_init().map_err(e)?;
                let md = match h {
                    HashAlg::Sha256 => MessageDigest::sha256(),
                    HashAlg::Sha384 => MessageDigest::sha384(),
                    HashAlg::Sha512 => MessageDigest::sha512(),
                };
                if scheme.family() == Family::Rsa {
                    if scheme.is_pss() {
                        ctx.set_rsa_padding(Padding::PKCS1_PSS).map_err(e)?;
                        ctx.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                            .map_err(e)?;
                        ctx.set_rsa_mgf1_md(openssl::md::Md::from_nid(md.type_()).ok_or("md")?)
                            .map_err(e)?;
                    } else {
                        ctx.set_rsa_padding(Padding::PKCS1).map_err(e)?;
                    }
                }
                ctx.set_signature_md(openssl::md::Md::from_nid(md.type_()).ok_or("md")?)
                    .map_err(e)?;
                let mut sig = Vec::new();
                ctx.sign_to_vec(input, &mut sig).map_err(e)?;
                Ok(sig)
            }
        }
    }

    /// `input^d mod n` for a modulus-length input below the modulus.
    fn rsa_raw(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let rsa = self.ossl.rsa().map_err(|_| "not an RSA key".to_string())?;
        let k = rsa.size() as usize;
        if input.len() != k {
            return Err(format!("input must be {k} bytes, got {}", input.len()));
        }
        let mut out = vec![0u8; k];
        let n = rsa
            .private_decrypt(input, &mut out, openssl::rsa::Padding::NONE)
            .map_err(|_| "input is not below the modulus".to_string())?;
        out.truncate(n);
        Ok(out)
    }

    /// ECDSA over a digest of any length up to 64 bytes (truncated to the
    /// group order's size as ECDSA prescribes), DER-encoded.
    fn ecdsa_any_digest(&self, digest: &[u8]) -> Result<Vec<u8>, String> {
        if digest.is_empty() || digest.len() > 64 {
            return Err(format!(
                "digest must be 1 to 64 bytes, got {}",
                digest.len()
            ));
        }
        let e = |err: openssl::error::ErrorStack| format!("openssl: {err}");
        let mut ctx = PkeyCtx::new(&self.ossl).map_err(e)?;
        ctx.sign_init().map_err(e)?;
        let mut sig = Vec::new();
        ctx.sign_to_vec(digest, &mut sig).map_err(e)?;
        Ok(sig)
    }

    /// The public key as aws-lc sees it (used by tests to cross-check).
    pub fn aws_public_key(&self) -> Vec<u8> {
        match &self.aws {
            AwsKey::Rsa(k) => k.public_key().as_ref().to_vec(),
            AwsKey::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            AwsKey::Ed25519(k) => k.public_key().as_ref().to_vec(),
        }
    }
}

/// Calibration result for one scheme.
#[derive(Clone, Debug, Serialize)]
pub struct SchemeCalibration {
    /// The engine chosen.
    pub engine: CpuEngine,
    /// Measured single-thread cost per operation, by engine, microseconds.
    pub us_per_op: HashMap<CpuEngine, f64>,
}

/// The CPU backend.
pub struct CpuBackend {
    name: String,
    caps: Capabilities,
    pool: rayon::ThreadPool,
    threads: usize,
    chosen: HashMap<Scheme, SchemeCalibration>,
    keys: RwLock<HashMap<KeyId, Arc<CpuKey>>>,
}

/// Most parsed keys kept; past this the cache starts afresh (keys are
/// re-parsed on next use, which costs microseconds).
const KEY_CACHE_LIMIT: usize = 4096;

impl CpuBackend {
    /// Starts the pool and calibrates (unless an engine is fixed).
    pub fn new(cfg: &CpuConfig) -> Result<CpuBackend> {
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sigmux-cpu-{i}"))
            .build()
            .map_err(|e| Error::backend("cpu", format!("cannot start thread pool: {e}")))?;
        let chosen = calibrate(cfg.engine)?;
        Ok(CpuBackend {
            name: "cpu".into(),
            caps: Capabilities {
                schemes: Scheme::all()
                    .iter()
                    .copied()
                    .chain([
                        Scheme::RsaRaw,
                        Scheme::EcdsaP256AnyDigest,
                        Scheme::EcdsaP384AnyDigest,
                    ])
                    .collect(),
                placements: vec![Placement::Soft],
                max_batch: cfg.max_batch.max(1),
                parallelism: threads,
            },
            pool,
            threads,
            chosen,
            keys: RwLock::new(HashMap::new()),
        })
    }

    /// The engine used for `scheme`.
    pub fn engine_for(&self, scheme: Scheme) -> CpuEngine {
        self.chosen
            .get(&scheme)
            .map_or(CpuEngine::AwsLc, |c| c.engine)
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The parsed form of `key`, cached.
    pub fn cpu_key(&self, key: &Key) -> Result<Arc<CpuKey>> {
        if let Some(k) = self.keys.read().get(&key.id()) {
            return Ok(k.clone());
        }
        let parsed = Arc::new(CpuKey::load(key)?);
        let mut map = self.keys.write();
        if map.len() >= KEY_CACHE_LIMIT {
            map.clear();
        }
        map.insert(key.id(), parsed.clone());
        Ok(parsed)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn sign_batch(
        &self,
        key: &Arc<Key>,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        scheme.check_fits(key.kind())?;
        let ck = self.cpu_key(key)?;
        let engine = self.engine_for(scheme);
        // The engine calls this on one of our pool's threads and runs as
        // many batches at once as the pool has threads, so a batch is
        // signed in order on the calling thread.
        inputs.iter().map(|i| ck.sign(engine, scheme, i)).collect()
    }

    fn executor(&self) -> Option<&rayon::ThreadPool> {
        Some(&self.pool)
    }

    /// RSA: both libraries verify each private-key result against the
    /// public key before they release it (`s^e mod n` compared with the
    /// padded input). AWS-LC's `rsa_default_private_transform` then fails
    /// the call, which `sign` reports as [`Error::WrongResult`]; OpenSSL's
    /// `rsa_ossl_mod_exp` computes the result again without the CRT.
    /// tests/cpu_self_check.rs shows both on a key with a fault in `dP`.
    /// The engine's own check would do the same work a second time.
    fn checks_own_results(&self, scheme: Scheme) -> bool {
        scheme.family() == Family::Rsa
    }

    fn cost_seed(&self, kind: KeyKind, scheme: Scheme) -> Option<CostSeed> {
        let cal = self.chosen.get(&scheme)?;
        let single = *cal.us_per_op.get(&cal.engine)?;
        // Calibration runs on rsa2048; private-key cost grows roughly with
        // the cube of the modulus size.
        let scale = match kind {
            KeyKind::Rsa3072 => 3.2,
            KeyKind::Rsa4096 => 7.0,
            _ => 1.0,
        };
        Some(CostSeed {
            per_batch_us: 10.0,
            per_op_us: single * scale / self.threads as f64,
        })
    }

    fn describe(&self) -> serde_json::Value {
        let mut engines = serde_json::Map::new();
        for s in Scheme::all() {
            if let Some(c) = self.chosen.get(s) {
                let mut us = serde_json::Map::new();
                for (e, v) in &c.us_per_op {
                    us.insert(
                        e.name().into(),
                        serde_json::json!((v * 10.0).round() / 10.0),
                    );
                }
                engines.insert(
                    s.name().into(),
                    serde_json::json!({ "engine": c.engine.name(), "us_per_op": us }),
                );
            }
        }
        serde_json::json!({ "threads": self.threads, "engines": engines })
    }
}

/// Times each engine per scheme on throwaway keys, alternating engines so
/// that noise hits both alike, and picks the faster.
fn calibrate(choice: EngineChoice) -> Result<HashMap<Scheme, SchemeCalibration>> {
    let mut out = HashMap::new();
    let kinds = [
        KeyKind::Rsa2048,
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
    ];
    for kind in kinds {
        let key = Key::ephemeral("calibration", kind)?;
        let ck = CpuKey::load(&key)?;
        for scheme in kind.schemes() {
            let input = scheme.prepare(crate::scheme::SignInput::Message(b"calibrate".to_vec()))?;
            let engines: Vec<CpuEngine> = match choice {
                EngineChoice::Auto => CpuEngine::ALL.to_vec(),
                EngineChoice::Fixed(e) => vec![e],
            };
            let budget = Duration::from_millis(if kind == KeyKind::Rsa2048 { 12 } else { 6 });
            let mut us = HashMap::new();
            for e in &engines {
                ck.sign(*e, scheme, &input)?; // warm caches and lazy tables
            }
            let mut spent: HashMap<CpuEngine, (Duration, u32)> = HashMap::new();
            for _round in 0..2 {
                for e in &engines {
                    let start = Instant::now();
                    let mut n = 0u32;
                    while start.elapsed() < budget / 2 || n < 2 {
                        ck.sign(*e, scheme, &input)?;
                        n += 1;
                    }
                    let s = spent.entry(*e).or_default();
                    s.0 += start.elapsed();
                    s.1 += n;
                }
            }
            for (e, (d, n)) in spent {
                us.insert(e, d.as_secs_f64() * 1e6 / n as f64);
            }
            let engine = *engines
                .iter()
                .min_by(|a, b| us[a].total_cmp(&us[b]))
                .unwrap_or(&CpuEngine::AwsLc);
            out.insert(
                scheme,
                SchemeCalibration {
                    engine,
                    us_per_op: us,
                },
            );
        }
    }
    Ok(out)
}
