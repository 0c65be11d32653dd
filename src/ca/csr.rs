//! PKCS#10 certificate signing requests (RFC 2986): parsing, proof-of-possession
//! check and subject key policy.
//!
//! A CSR is accepted as PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE
//! REQUEST`, exactly one block) or as DER, at most [`MAX_CSR_LEN`] bytes.
//! The DER structure is walked strictly (definite, minimal lengths; version
//! 0; no trailing data), the self-signature is verified with OpenSSL (an
//! implementation independent of the signing backends) and the subject key
//! is checked against the key policy:
//!
//! * RSA (`rsaEncryption`) with a modulus of 2048 to 8192 bits and an odd
//!   public exponent between 3 and 2^31 − 1;
//! * ECDSA on P-256 or P-384 (named curve, uncompressed point on the curve);
//! * Ed25519.
//!
//! Everything else (DSA, secp256k1, P-521, explicit curve parameters,
//! RSASSA-PSS-restricted keys, Ed448, X25519, ...) is refused. Accepted CSR
//! signature algorithms: `sha{256,384,512}WithRSAEncryption`, RSASSA-PSS with
//! SHA-256/384/512 (MGF1 with the same hash, trailer field 1),
//! `ecdsa-with-SHA{256,384,512}` and Ed25519. SHA-1 and MD5 are refused.
//!
//! Only the SubjectPublicKeyInfo is taken from the CSR, byte for byte; the
//! subject name, attributes and requested extensions are ignored, since the
//! CA decides every other field of the certificate.

#![warn(missing_docs)]

use std::borrow::Cow;
use std::fmt;

use aws_lc_rs::signature::{self as aws_sig, VerificationAlgorithm};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};

use crate::scheme::HashAlg;

/// Largest CSR accepted, in bytes, PEM or DER.
pub const MAX_CSR_LEN: usize = 64 * 1024;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: u32 = 8192;

/// Why a CSR (or a subject public key) was refused. Each variant names one
/// problem; messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// The input is empty.
    #[error("CSR is empty")]
    Empty,
    /// The input is larger than [`MAX_CSR_LEN`].
    #[error("CSR is too large: {len} bytes (at most {max})")]
    TooLarge {
        /// Size of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is neither a PEM block nor a DER SEQUENCE.
    #[error("CSR is neither PEM ('-----BEGIN CERTIFICATE REQUEST-----') nor DER")]
    NotPemOrDer,
    /// The input looks like PEM but does not decode.
    #[error("CSR PEM does not decode: {0}")]
    BadPem(String),
    /// The input holds more than one PEM block.
    #[error("CSR PEM holds {0} blocks; exactly one is expected")]
    MultiplePemBlocks(usize),
    /// The PEM block has the wrong label.
    #[error("PEM block is '{0}', expected 'CERTIFICATE REQUEST'")]
    WrongPemLabel(String),
    /// The DER does not have the structure of a PKCS#10 request.
    #[error("CSR is malformed: {0}")]
    Malformed(String),
    /// The CertificationRequestInfo version is not 0 (v1).
    #[error("CSR version must be 0 (v1)")]
    UnsupportedVersion,
    /// The CSR is signed with an algorithm that is not accepted.
    #[error("CSR signature algorithm {0} is not accepted")]
    UnsupportedSignatureAlgorithm(String),
    /// RSASSA-PSS parameters are missing, malformed or not accepted.
    #[error("CSR RSASSA-PSS parameters: {0}")]
    BadPssParameters(String),
    /// The signature algorithm does not fit the subject key type.
    #[error("CSR signature algorithm {alg} cannot be made with a {key} key")]
    SignatureKeyMismatch {
        /// The signature algorithm.
        alg: String,
        /// The subject key type.
        key: String,
    },
    /// The proof-of-possession signature does not verify.
    #[error("CSR signature does not verify with the CSR's public key")]
    BadSignature,
    /// The subject key algorithm is not accepted.
    #[error("unsupported subject key type: {0} (accepted: RSA 2048-8192, P-256, P-384, Ed25519)")]
    UnsupportedKeyType(String),
    /// The subject key is on a curve that is not accepted.
    #[error("unsupported elliptic curve {0} (accepted: P-256, P-384)")]
    UnsupportedCurve(String),
    /// The RSA modulus is too small.
    #[error("RSA key too small: {bits} bits (at least {min})", min = MIN_RSA_BITS)]
    RsaKeyTooSmall {
        /// Modulus size.
        bits: u32,
    },
    /// The RSA modulus is too large.
    #[error("RSA key too large: {bits} bits (at most {max})", max = MAX_RSA_BITS)]
    RsaKeyTooLarge {
        /// Modulus size.
        bits: u32,
    },
    /// The RSA public exponent is even, below 3 or above 2^31 − 1.
    #[error("RSA public exponent must be odd and between 3 and 2^31-1")]
    BadRsaExponent,
    /// The EC point is compressed (not accepted: many relying parties cannot
    /// parse it).
    #[error("compressed EC points are not accepted; use the uncompressed form")]
    CompressedPoint,
    /// The public key does not decode or is not valid.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
}

impl CsrError {
    /// A stable, machine-readable code for API responses.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            CsrError::Empty
            | CsrError::NotPemOrDer
            | CsrError::BadPem(_)
            | CsrError::MultiplePemBlocks(_)
            | CsrError::WrongPemLabel(_)
            | CsrError::Malformed(_)
            | CsrError::UnsupportedVersion => "csr_malformed",
            CsrError::TooLarge { .. } => "csr_too_large",
            CsrError::UnsupportedSignatureAlgorithm(_)
            | CsrError::BadPssParameters(_)
            | CsrError::SignatureKeyMismatch { .. } => "csr_signature_algorithm",
            CsrError::BadSignature => "csr_bad_signature",
            CsrError::UnsupportedKeyType(_)
            | CsrError::UnsupportedCurve(_)
            | CsrError::RsaKeyTooSmall { .. }
            | CsrError::RsaKeyTooLarge { .. }
            | CsrError::BadRsaExponent
            | CsrError::CompressedPoint => "csr_key_policy",
            CsrError::InvalidPublicKey(_) => "csr_invalid_key",
        }
    }
}

/// The type of an accepted subject key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKeyType {
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus size in bits.
        bits: u32,
    },
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl SubjectKeyType {
    /// Whether this is an RSA key (X.509-SVIDs for RSA keys also get
    /// `keyEncipherment`).
    #[must_use]
    pub fn is_rsa(self) -> bool {
        matches!(self, SubjectKeyType::Rsa { .. })
    }
}

impl fmt::Display for SubjectKeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectKeyType::Rsa { bits } => write!(f, "RSA-{bits}"),
            SubjectKeyType::P256 => f.write_str("P-256"),
            SubjectKeyType::P384 => f.write_str("P-384"),
            SubjectKeyType::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// The algorithm a CSR was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrSignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with this hash.
    RsaPkcs1(HashAlg),
    /// RSASSA-PSS with this hash (also for MGF1) and salt length.
    RsaPss {
        /// Message and MGF1 hash.
        hash: HashAlg,
        /// Salt length in bytes.
        salt_len: u32,
    },
    /// ECDSA with this hash.
    Ecdsa(HashAlg),
    /// Ed25519 (PureEdDSA).
    Ed25519,
}

impl fmt::Display for CsrSignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = |h: &HashAlg| h.len() * 8;
        match self {
            CsrSignatureAlgorithm::RsaPkcs1(h) => write!(f, "sha{}WithRSAEncryption", bits(h)),
            CsrSignatureAlgorithm::RsaPss { hash, salt_len } => {
                write!(f, "RSASSA-PSS(SHA-{}, salt {salt_len})", bits(hash))
            }
            CsrSignatureAlgorithm::Ecdsa(h) => write!(f, "ecdsa-with-SHA{}", bits(h)),
            CsrSignatureAlgorithm::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// A CSR whose signature verified and whose key passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    /// The SubjectPublicKeyInfo exactly as it appears in the CSR (DER).
    pub spki_der: Vec<u8>,
    /// The subject key's type.
    pub key_type: SubjectKeyType,
    /// The algorithm the CSR was signed with.
    pub signature_algorithm: CsrSignatureAlgorithm,
}

/// Parses a CSR in PEM or DER, verifies its proof-of-possession signature
/// and applies the key policy.
///
/// # Errors
///
/// A [`CsrError`] naming the first problem found.
pub fn parse_and_verify(input: &[u8]) -> Result<VerifiedCsr, CsrError> {
    let der = decode_input(input)?;
    verify_der(&der)
}

/// Turns PEM or DER input into DER, enforcing the size limit.
fn decode_input(input: &[u8]) -> Result<Cow<'_, [u8]>, CsrError> {
    if input.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge {
            len: input.len(),
            max: MAX_CSR_LEN,
        });
    }
    let trimmed = input.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(CsrError::Empty);
    }
    if trimmed.starts_with(b"-----BEGIN") {
        let blocks = pem::parse_many(trimmed).map_err(|e| CsrError::BadPem(e.to_string()))?;
        let mut blocks = blocks.into_iter();
        let (Some(block), None) = (blocks.next(), blocks.next()) else {
            let n = pem::parse_many(trimmed).map(|v| v.len()).unwrap_or(0);
            return Err(if n == 0 {
                CsrError::BadPem("no complete PEM block".into())
            } else {
                CsrError::MultiplePemBlocks(n)
            });
        };
        if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::WrongPemLabel(excerpt(block.tag())));
        }
        // Only whitespace may follow the block: text the parser skipped
        // would be silently ignored otherwise.
        let end_line = trimmed
            .windows(9)
            .rposition(|w| w == b"-----END ")
            .and_then(|at| {
                trimmed[at + 9..]
                    .windows(5)
                    .position(|w| w == b"-----")
                    .map(|p| at + 9 + p + 5)
            });
        if let Some(after) = end_line
            && !trimmed[after..].trim_ascii().is_empty()
        {
            return Err(CsrError::BadPem(
                "text after the -----END CERTIFICATE REQUEST----- line".into(),
            ));
        }
        return Ok(Cow::Owned(block.into_contents()));
    }
    if input.first() == Some(&0x30) {
        return Ok(Cow::Borrowed(input));
    }
    Err(CsrError::NotPemOrDer)
}

fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().nth(64).is_some() {
        out.push_str("...");
    }
    out.escape_debug().to_string()
}

fn malformed(what: &str, e: DerError) -> CsrError {
    CsrError::Malformed(format!("{what}: {e}"))
}

/// Verifies a DER-encoded CSR.
fn verify_der(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge {
            len: der.len(),
            max: MAX_CSR_LEN,
        });
    }
    let mut top = DerReader::new(der);
    let outer = top
        .expect(tag::SEQUENCE)
        .map_err(|e| malformed("CertificationRequest", e))?;
    if !top.is_empty() {
        return Err(CsrError::Malformed(
            "trailing data after CertificationRequest".into(),
        ));
    }
    let mut req = DerReader::new(outer.value);
    let info = req
        .expect(tag::SEQUENCE)
        .map_err(|e| malformed("certificationRequestInfo", e))?;
    let sig_alg = req
        .expect(tag::SEQUENCE)
        .map_err(|e| malformed("signatureAlgorithm", e))?;
    let sig_bits = req
        .expect(tag::BIT_STRING)
        .map_err(|e| malformed("signature", e))?;
    if !req.is_empty() {
        return Err(CsrError::Malformed(
            "trailing data inside CertificationRequest".into(),
        ));
    }
    let signature = match sig_bits.value.split_first() {
        Some((0, s)) => s,
        _ => {
            return Err(CsrError::Malformed(
                "signature BIT STRING has unused bits or is empty".into(),
            ));
        }
    };

    let mut cri = DerReader::new(info.value);
    let version = cri
        .expect(tag::INTEGER)
        .map_err(|e| malformed("version", e))?;
    if version.value != [0] {
        return Err(CsrError::UnsupportedVersion);
    }
    cri.expect(tag::SEQUENCE)
        .map_err(|e| malformed("subject", e))?;
    let spki = cri
        .expect(tag::SEQUENCE)
        .map_err(|e| malformed("subjectPKInfo", e))?;
    if cri.peek_tag() == Some(tag::CONTEXT_0_CONSTRUCTED) {
        cri.read().map_err(|e| malformed("attributes", e))?;
    }
    if !cri.is_empty() {
        return Err(CsrError::Malformed(
            "trailing data inside certificationRequestInfo".into(),
        ));
    }

    let (key_type, pkey) = parse_public_key(spki.raw)?;
    let alg = parse_signature_algorithm(sig_alg.value)?;
    let fits = match alg {
        CsrSignatureAlgorithm::RsaPkcs1(_) | CsrSignatureAlgorithm::RsaPss { .. } => {
            key_type.is_rsa()
        }
        CsrSignatureAlgorithm::Ecdsa(_) => {
            matches!(key_type, SubjectKeyType::P256 | SubjectKeyType::P384)
        }
        CsrSignatureAlgorithm::Ed25519 => key_type == SubjectKeyType::Ed25519,
    };
    if !fits {
        return Err(CsrError::SignatureKeyMismatch {
            alg: alg.to_string(),
            key: key_type.to_string(),
        });
    }
    if !verify_signature(&pkey, key_type, alg, info.raw, signature) {
        return Err(CsrError::BadSignature);
    }
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        key_type,
        signature_algorithm: alg,
    })
}

fn openssl_md(h: HashAlg) -> MessageDigest {
    match h {
        HashAlg::Sha256 => MessageDigest::sha256(),
        HashAlg::Sha384 => MessageDigest::sha384(),
        HashAlg::Sha512 => MessageDigest::sha512(),
    }
}

/// Verifies `signature` over `data` with aws-lc-rs; RSA-PSS (whose salt
/// length varies between CSR makers) and the rare ECDSA pairings aws-lc-rs
/// has no verifier for go through OpenSSL. Any failure counts as a bad
/// signature.
fn verify_signature(
    key: &PublicKeyRef<'_>,
    key_type: SubjectKeyType,
    alg: CsrSignatureAlgorithm,
    data: &[u8],
    signature: &[u8],
) -> bool {
    let aws: Option<&'static dyn VerificationAlgorithm> = match (alg, key_type) {
        (CsrSignatureAlgorithm::RsaPkcs1(HashAlg::Sha256), _) => {
            Some(&aws_sig::RSA_PKCS1_2048_8192_SHA256)
        }
        (CsrSignatureAlgorithm::RsaPkcs1(HashAlg::Sha384), _) => {
            Some(&aws_sig::RSA_PKCS1_2048_8192_SHA384)
        }
        (CsrSignatureAlgorithm::RsaPkcs1(HashAlg::Sha512), _) => {
            Some(&aws_sig::RSA_PKCS1_2048_8192_SHA512)
        }
        (CsrSignatureAlgorithm::Ecdsa(h), SubjectKeyType::P256) => Some(match h {
            HashAlg::Sha256 => &aws_sig::ECDSA_P256_SHA256_ASN1,
            HashAlg::Sha384 => &aws_sig::ECDSA_P256_SHA384_ASN1,
            HashAlg::Sha512 => &aws_sig::ECDSA_P256_SHA512_ASN1,
        }),
        (CsrSignatureAlgorithm::Ecdsa(h), SubjectKeyType::P384) => Some(match h {
            HashAlg::Sha256 => &aws_sig::ECDSA_P384_SHA256_ASN1,
            HashAlg::Sha384 => &aws_sig::ECDSA_P384_SHA384_ASN1,
            HashAlg::Sha512 => &aws_sig::ECDSA_P384_SHA512_ASN1,
        }),
        (CsrSignatureAlgorithm::Ed25519, _) => Some(&aws_sig::ED25519),
        _ => None,
    };
    if let Some(a) = aws {
        return aws_sig::UnparsedPublicKey::new(a, key.bits)
            .verify(data, signature)
            .is_ok();
    }
    let run = || -> Result<bool, openssl::error::ErrorStack> {
        let pkey: PKey<Public> = PKey::public_key_from_der(key.spki)?;
        match alg {
            CsrSignatureAlgorithm::RsaPkcs1(h) | CsrSignatureAlgorithm::Ecdsa(h) => {
                let mut v = Verifier::new(openssl_md(h), &pkey)?;
                if alg == CsrSignatureAlgorithm::RsaPkcs1(h) {
                    v.set_rsa_padding(Padding::PKCS1)?;
                }
                v.update(data)?;
                v.verify(signature)
            }
            CsrSignatureAlgorithm::RsaPss { hash, salt_len } => {
                let mut v = Verifier::new(openssl_md(hash), &pkey)?;
                v.set_rsa_padding(Padding::PKCS1_PSS)?;
                v.set_rsa_mgf1_md(openssl_md(hash))?;
                let salt = i32::try_from(salt_len).unwrap_or(i32::MAX);
                v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(salt))?;
                v.update(data)?;
                v.verify(signature)
            }
            CsrSignatureAlgorithm::Ed25519 => {
                let mut v = Verifier::new_without_digest(&pkey)?;
                v.verify_oneshot(signature, data)
            }
        }
    };
    matches!(run(), Ok(true))
}

/// Reads an AlgorithmIdentifier's contents: the OID and the optional
/// parameters (`None` when absent).
fn split_algorithm(alg_content: &[u8]) -> Result<(&[u8], Option<Tlv<'_>>), DerError> {
    let mut r = DerReader::new(alg_content);
    let oid = r.expect(tag::OID)?;
    let params = if r.is_empty() { None } else { Some(r.read()?) };
    if !r.is_empty() {
        return Err(DerError("trailing data in AlgorithmIdentifier"));
    }
    Ok((oid.value, params))
}

fn params_null_or_absent(params: &Option<Tlv<'_>>) -> bool {
    match params {
        None => true,
        Some(t) => t.tag == tag::NULL && t.value.is_empty(),
    }
}

fn hash_from_oid(oid: &[u8]) -> Option<HashAlg> {
    match oid {
        oid::SHA256 => Some(HashAlg::Sha256),
        oid::SHA384 => Some(HashAlg::Sha384),
        oid::SHA512 => Some(HashAlg::Sha512),
        _ => None,
    }
}

/// Maps the CSR's signatureAlgorithm to what is accepted.
fn parse_signature_algorithm(alg_content: &[u8]) -> Result<CsrSignatureAlgorithm, CsrError> {
    let (o, params) =
        split_algorithm(alg_content).map_err(|e| malformed("signatureAlgorithm", e))?;
    let no_params = |a: CsrSignatureAlgorithm| {
        if params.is_none() {
            Ok(a)
        } else {
            Err(CsrError::Malformed(format!("{a} must not have parameters")))
        }
    };
    let null_params = |a: CsrSignatureAlgorithm| {
        if params_null_or_absent(&params) {
            Ok(a)
        } else {
            Err(CsrError::Malformed(format!("{a} parameters must be NULL")))
        }
    };
    match o {
        oid::SHA256_WITH_RSA => null_params(CsrSignatureAlgorithm::RsaPkcs1(HashAlg::Sha256)),
        oid::SHA384_WITH_RSA => null_params(CsrSignatureAlgorithm::RsaPkcs1(HashAlg::Sha384)),
        oid::SHA512_WITH_RSA => null_params(CsrSignatureAlgorithm::RsaPkcs1(HashAlg::Sha512)),
        oid::ECDSA_SHA256 => no_params(CsrSignatureAlgorithm::Ecdsa(HashAlg::Sha256)),
        oid::ECDSA_SHA384 => no_params(CsrSignatureAlgorithm::Ecdsa(HashAlg::Sha384)),
        oid::ECDSA_SHA512 => no_params(CsrSignatureAlgorithm::Ecdsa(HashAlg::Sha512)),
        oid::ED25519 => no_params(CsrSignatureAlgorithm::Ed25519),
        oid::RSASSA_PSS => parse_pss_params(params),
        other => Err(CsrError::UnsupportedSignatureAlgorithm(oid_name(other))),
    }
}

/// Parses RSASSA-PSS-params (RFC 4055): only SHA-256/384/512, MGF1 with the
/// same hash, trailer field 1. Absent fields take their (SHA-1) defaults and
/// so are refused, except salt length (default 20) and trailer (default 1).
fn parse_pss_params(params: Option<Tlv<'_>>) -> Result<CsrSignatureAlgorithm, CsrError> {
    let bad = |m: &str| CsrError::BadPssParameters(m.to_string());
    let params = params.ok_or_else(|| bad("missing (the defaults use SHA-1)"))?;
    if params.tag != tag::SEQUENCE {
        return Err(bad("not a SEQUENCE"));
    }
    let mut r = DerReader::new(params.value);
    let der = |e: DerError| CsrError::BadPssParameters(e.to_string());

    let hash_field = r
        .optional_explicit(tag::CONTEXT_0_CONSTRUCTED)
        .map_err(der)?
        .ok_or_else(|| bad("hashAlgorithm absent (SHA-1 default is not accepted)"))?;
    let hash_alg = DerReader::new(hash_field)
        .expect_only(tag::SEQUENCE)
        .map_err(der)?;
    let (hash_oid, hash_params) = split_algorithm(hash_alg.value).map_err(der)?;
    let hash = hash_from_oid(hash_oid).ok_or_else(|| {
        CsrError::BadPssParameters(format!("hash {} is not accepted", oid_name(hash_oid)))
    })?;
    if !params_null_or_absent(&hash_params) {
        return Err(bad("hash parameters must be NULL or absent"));
    }

    let mgf_field = r
        .optional_explicit(tag::CONTEXT_1_CONSTRUCTED)
        .map_err(der)?
        .ok_or_else(|| bad("maskGenAlgorithm absent (MGF1-SHA-1 default is not accepted)"))?;
    let mgf = DerReader::new(mgf_field)
        .expect_only(tag::SEQUENCE)
        .map_err(der)?;
    let (mgf_oid, mgf_params) = split_algorithm(mgf.value).map_err(der)?;
    if mgf_oid != oid::MGF1 {
        return Err(CsrError::BadPssParameters(format!(
            "mask generation function {} is not MGF1",
            oid_name(mgf_oid)
        )));
    }
    let mgf_hash = mgf_params
        .filter(|t| t.tag == tag::SEQUENCE)
        .ok_or_else(|| bad("MGF1 hash missing"))?;
    let (mgf_hash_oid, mgf_hash_params) = split_algorithm(mgf_hash.value).map_err(der)?;
    if hash_from_oid(mgf_hash_oid) != Some(hash) || !params_null_or_absent(&mgf_hash_params) {
        return Err(bad("MGF1 hash must equal the message hash"));
    }

    let salt_len = match r
        .optional_explicit(tag::CONTEXT_2_CONSTRUCTED)
        .map_err(der)?
    {
        Some(f) => small_uint(f).ok_or_else(|| bad("saltLength is not a small INTEGER"))?,
        None => 20,
    };
    if salt_len > 1024 {
        return Err(bad("saltLength is too large"));
    }
    if let Some(f) = r
        .optional_explicit(tag::CONTEXT_3_CONSTRUCTED)
        .map_err(der)?
        && small_uint(f) != Some(1)
    {
        return Err(bad("trailerField must be 1"));
    }
    if !r.is_empty() {
        return Err(bad("unexpected fields"));
    }
    Ok(CsrSignatureAlgorithm::RsaPss { hash, salt_len })
}

/// Decodes `field` as exactly one non-negative INTEGER below 2^32.
fn small_uint(field: &[u8]) -> Option<u32> {
    let int = DerReader::new(field).expect_only(tag::INTEGER).ok()?;
    let v = int.value;
    if v.is_empty() || v[0] & 0x80 != 0 || (v.len() > 1 && v[0] == 0 && v[1] & 0x80 == 0) {
        return None;
    }
    let digits = if v[0] == 0 { &v[1..] } else { v };
    if digits.len() > 4 {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b)),
    )
}

/// Checks a SubjectPublicKeyInfo (DER) against the key policy and returns
/// its type. The same policy as for CSRs; use it for keys that arrive
/// without a CSR.
///
/// # Errors
///
/// A [`CsrError`] naming why the key is refused.
pub fn check_public_key(spki_der: &[u8]) -> Result<SubjectKeyType, CsrError> {
    parse_public_key(spki_der).map(|(t, _)| t)
}

/// A policy-checked public key, still in its DER form: verification goes
/// through aws-lc-rs on the key bits. (OpenSSL 3.0's key decoder takes a
/// global lock per call and was the bottleneck of bulk issuance.)
struct PublicKeyRef<'a> {
    spki: &'a [u8],
    bits: &'a [u8],
}

/// The length in bits of a DER INTEGER's magnitude; `None` if negative.
fn uint_bits(v: &[u8]) -> Option<u32> {
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    let start = v.iter().position(|&b| b != 0)?;
    let lead = v[start];
    Some((v.len() - start - 1) as u32 * 8 + (8 - lead.leading_zeros()))
}

/// Checks the key policy and parses the key for verification.
fn parse_public_key(spki_der: &[u8]) -> Result<(SubjectKeyType, PublicKeyRef<'_>), CsrError> {
    let invalid = |m: String| CsrError::InvalidPublicKey(m);
    let mut top = DerReader::new(spki_der);
    let spki = top
        .expect(tag::SEQUENCE)
        .map_err(|e| invalid(format!("SubjectPublicKeyInfo: {e}")))?;
    if !top.is_empty() {
        return Err(invalid("trailing data after SubjectPublicKeyInfo".into()));
    }
    let mut r = DerReader::new(spki.value);
    let alg = r
        .expect(tag::SEQUENCE)
        .map_err(|e| invalid(format!("algorithm: {e}")))?;
    let bits = r
        .expect(tag::BIT_STRING)
        .map_err(|e| invalid(format!("subjectPublicKey: {e}")))?;
    if !r.is_empty() {
        return Err(invalid("trailing data inside SubjectPublicKeyInfo".into()));
    }
    let key_bits = match bits.value.split_first() {
        Some((0, k)) => k,
        _ => return Err(invalid("subjectPublicKey has unused bits".into())),
    };
    let (alg_oid, params) =
        split_algorithm(alg.value).map_err(|e| invalid(format!("algorithm: {e}")))?;
    let key = PublicKeyRef {
        spki: spki_der,
        bits: key_bits,
    };
    match alg_oid {
        oid::RSA_ENCRYPTION => {
            if !params_null_or_absent(&params) {
                return Err(invalid("rsaEncryption parameters must be NULL".into()));
            }
            let mut seq_r = DerReader::new(key_bits);
            let rsa_key = seq_r
                .expect(tag::SEQUENCE)
                .map_err(|e| invalid(format!("RSAPublicKey: {e}")))?;
            let mut ints = DerReader::new(rsa_key.value);
            let n = ints
                .expect(tag::INTEGER)
                .map_err(|e| invalid(format!("RSA modulus: {e}")))?;
            let e_int = ints
                .expect(tag::INTEGER)
                .map_err(|e| invalid(format!("RSA exponent: {e}")))?;
            if !ints.is_empty() || !seq_r.is_empty() {
                return Err(invalid("trailing data in RSAPublicKey".into()));
            }
            let n_bits =
                uint_bits(n.value).ok_or_else(|| invalid("RSA modulus is not positive".into()))?;
            if n.value.last().is_some_and(|b| b & 1 == 0) {
                return Err(invalid("RSA modulus is even".into()));
            }
            if n_bits < MIN_RSA_BITS {
                return Err(CsrError::RsaKeyTooSmall { bits: n_bits });
            }
            if n_bits > MAX_RSA_BITS {
                return Err(CsrError::RsaKeyTooLarge { bits: n_bits });
            }
            let e_digits: Vec<u8> = e_int
                .value
                .iter()
                .copied()
                .skip_while(|&b| b == 0)
                .collect();
            if e_int.value.first().is_some_and(|b| b & 0x80 != 0) || e_digits.len() > 4 {
                return Err(CsrError::BadRsaExponent);
            }
            let e = e_digits
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            if e < 3 || e % 2 == 0 || e > 0x7fff_ffff {
                return Err(CsrError::BadRsaExponent);
            }
            Ok((SubjectKeyType::Rsa { bits: n_bits }, key))
        }
        oid::EC_PUBLIC_KEY => {
            let curve = match params {
                Some(t) if t.tag == tag::OID => t.value,
                Some(t) if t.tag == tag::SEQUENCE => {
                    return Err(CsrError::UnsupportedCurve(
                        "with explicit parameters".into(),
                    ));
                }
                _ => return Err(invalid("EC key without a named curve".into())),
            };
            let (kind, point_len) = match curve {
                oid::P256 => (SubjectKeyType::P256, 65),
                oid::P384 => (SubjectKeyType::P384, 97),
                oid::SECP256K1 => return Err(CsrError::UnsupportedCurve("secp256k1".into())),
                oid::P521 => return Err(CsrError::UnsupportedCurve("P-521".into())),
                other => return Err(CsrError::UnsupportedCurve(oid_name(other))),
            };
            match key_bits.first() {
                Some(2 | 3) => return Err(CsrError::CompressedPoint),
                Some(4) if key_bits.len() == point_len => {}
                _ => return Err(invalid("EC point has the wrong form or length".into())),
            }
            // aws-lc refuses a point that is not on the curve; P-256 and
            // P-384 have cofactor 1, so that is the whole check.
            let check: &'static dyn VerificationAlgorithm = if kind == SubjectKeyType::P256 {
                &aws_sig::ECDSA_P256_SHA256_ASN1
            } else {
                &aws_sig::ECDSA_P384_SHA384_ASN1
            };
            aws_sig::UnparsedPublicKey::new(check, key_bits)
                .parse()
                .map_err(|_| invalid("the EC point is not on the curve".into()))?;
            Ok((kind, key))
        }
        oid::ED25519 => {
            if params.is_some() {
                return Err(invalid("Ed25519 key must not have parameters".into()));
            }
            if key_bits.len() != 32 {
                return Err(invalid("Ed25519 key must be 32 bytes".into()));
            }
            aws_sig::UnparsedPublicKey::new(&aws_sig::ED25519, key_bits)
                .parse()
                .map_err(|_| invalid("the key does not decode".into()))?;
            Ok((SubjectKeyType::Ed25519, key))
        }
        other => Err(CsrError::UnsupportedKeyType(oid_name(other))),
    }
}

/// A readable name for an OID: a known name, or the dotted form.
fn oid_name(content: &[u8]) -> String {
    let known = match content {
        oid::RSASSA_PSS => Some("RSASSA-PSS (PSS-restricted RSA key)"),
        oid::SHA1_WITH_RSA => Some("sha1WithRSAEncryption (SHA-1)"),
        oid::MD5_WITH_RSA => Some("md5WithRSAEncryption (MD5)"),
        oid::ECDSA_SHA1 => Some("ecdsa-with-SHA1 (SHA-1)"),
        oid::SHA1 => Some("SHA-1"),
        oid::DSA => Some("DSA"),
        oid::ED448 => Some("Ed448"),
        oid::X25519 => Some("X25519"),
        _ => None,
    };
    if let Some(k) = known {
        return k.to_string();
    }
    dotted_oid(content).unwrap_or_else(|| "(malformed OID)".to_string())
}

/// Formats OID content octets as dotted decimal; `None` when malformed.
pub(crate) fn dotted_oid(content: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    let mut in_arc = false;
    for &b in content {
        if !in_arc && b == 0x80 {
            return None; // non-minimal
        }
        if acc > (u64::MAX >> 7) {
            return None;
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        in_arc = b & 0x80 != 0;
        if !in_arc {
            arcs.push(acc);
            acc = 0;
        }
    }
    if in_arc || arcs.is_empty() {
        return None;
    }
    let first = arcs[0];
    let (a, b) = if first < 40 {
        (0, first)
    } else if first < 80 {
        (1, first - 40)
    } else {
        (2, first - 80)
    };
    let mut out = format!("{a}.{b}");
    for arc in &arcs[1..] {
        out.push('.');
        out.push_str(&arc.to_string());
    }
    Some(out)
}

/// OID content octets used by the CA.
pub(crate) mod oid {
    pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    pub const MD5_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
    pub const SHA1_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
    pub const MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
    pub const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    pub const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    pub const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    pub const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    pub const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    pub const SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
    pub const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    pub const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    pub const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    pub const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    pub const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    pub const ED448: &[u8] = &[0x2b, 0x65, 0x71];
    pub const X25519: &[u8] = &[0x2b, 0x65, 0x6e];
    pub const DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
    pub const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    pub const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    pub const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
}

/// DER tags used by the CA.
pub(crate) mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    pub const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
    pub const CONTEXT_1_CONSTRUCTED: u8 = 0xa1;
    pub const CONTEXT_2_CONSTRUCTED: u8 = 0xa2;
    pub const CONTEXT_3_CONSTRUCTED: u8 = 0xa3;
}

/// A DER structure that is not what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DerError(pub &'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// One DER element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    /// The identifier octet.
    pub tag: u8,
    /// The contents.
    pub value: &'a [u8],
    /// The whole encoding: identifier, length and contents.
    pub raw: &'a [u8],
}

/// A strict reader over a sequence of DER elements: single-octet tags,
/// definite minimal lengths of at most four octets. Never panics.
pub(crate) struct DerReader<'a> {
    rest: &'a [u8],
}

impl<'a> DerReader<'a> {
    /// A reader over `input`.
    pub fn new(input: &'a [u8]) -> DerReader<'a> {
        DerReader { rest: input }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The tag of the next element, if any.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads the next element.
    pub fn read(&mut self) -> Result<Tlv<'a>, DerError> {
        let input = self.rest;
        let (&tag, after_tag) = input.split_first().ok_or(DerError("unexpected end"))?;
        if tag & 0x1f == 0x1f {
            return Err(DerError("multi-octet tags are not supported"));
        }
        let (&first, after_len) = after_tag.split_first().ok_or(DerError("missing length"))?;
        let (len, body) = if first < 0x80 {
            (usize::from(first), after_len)
        } else if first == 0x80 {
            return Err(DerError("indefinite length is not DER"));
        } else {
            let n = usize::from(first & 0x7f);
            if n > 4 || after_len.len() < n {
                return Err(DerError("bad length encoding"));
            }
            let (len_bytes, body) = after_len.split_at(n);
            if len_bytes[0] == 0 {
                return Err(DerError("non-minimal length"));
            }
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            if len < 0x80 {
                return Err(DerError("non-minimal length"));
            }
            (len, body)
        };
        if body.len() < len {
            return Err(DerError("length runs past the end"));
        }
        let header = input.len() - body.len();
        let (value, rest) = body.split_at(len);
        self.rest = rest;
        Ok(Tlv {
            tag,
            value,
            raw: &input[..header + len],
        })
    }

    /// Reads the next element and checks its tag.
    pub fn expect(&mut self, tag: u8) -> Result<Tlv<'a>, DerError> {
        let t = self.read()?;
        if t.tag == tag {
            Ok(t)
        } else {
            Err(DerError("unexpected tag"))
        }
    }

    /// Reads the only element, which must have `tag`.
    pub fn expect_only(mut self, tag: u8) -> Result<Tlv<'a>, DerError> {
        let t = self.expect(tag)?;
        if self.is_empty() {
            Ok(t)
        } else {
            Err(DerError("trailing data"))
        }
    }

    /// Reads an explicitly tagged optional field: the contents of the next
    /// element if its tag is `tag`, else `None` (nothing consumed).
    pub fn optional_explicit(&mut self, tag: u8) -> Result<Option<&'a [u8]>, DerError> {
        if self.peek_tag() == Some(tag) {
            Ok(Some(self.read()?.value))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_strict() {
        assert!(DerReader::new(&[0x30, 0x80, 0, 0]).read().is_err());
        assert!(
            DerReader::new(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5])
                .read()
                .is_err()
        );
        assert!(DerReader::new(&[0x30, 0x82, 0x00, 0x80]).read().is_err());
        assert!(DerReader::new(&[0x30, 0x03, 1]).read().is_err());
        assert!(DerReader::new(&[0x1f, 0x01, 0]).read().is_err());
        let t = DerReader::new(&[0x04, 0x01, 0xaa]).read().unwrap();
        assert_eq!((t.tag, t.value, t.raw.len()), (0x04, &[0xaa][..], 3));
    }

    #[test]
    fn only_whitespace_may_follow_a_pem_csr() {
        let pem = b"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n";
        // The block itself is no CSR: what matters is which error comes.
        assert!(!matches!(decode_input(pem), Err(CsrError::BadPem(_))));
        let mut ok = pem.to_vec();
        ok.extend_from_slice(b" \r\n\t\n");
        assert!(decode_input(&ok).is_ok());
        let mut junk = pem.to_vec();
        junk.extend_from_slice(b"trailing junk\n");
        assert_eq!(
            decode_input(&junk),
            Err(CsrError::BadPem(
                "text after the -----END CERTIFICATE REQUEST----- line".into()
            ))
        );
    }

    #[test]
    fn dotted_oids() {
        assert_eq!(dotted_oid(oid::P256).unwrap(), "1.2.840.10045.3.1.7");
        assert_eq!(dotted_oid(oid::SHA256).unwrap(), "2.16.840.1.101.3.4.2.1");
        assert_eq!(dotted_oid(&[0x86]), None);
        assert_eq!(dotted_oid(&[0x80, 0x01]), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for len in 0..300usize {
            let data: Vec<u8> = (0..len)
                .map(|i| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    if i == 0 { 0x30 } else { (seed >> 24) as u8 }
                })
                .collect();
            assert!(parse_and_verify(&data).is_err());
        }
        assert_eq!(parse_and_verify(b""), Err(CsrError::Empty));
        assert_eq!(parse_and_verify(b"hello"), Err(CsrError::NotPemOrDer));
        assert!(matches!(
            parse_and_verify(&vec![0x30; MAX_CSR_LEN + 1]),
            Err(CsrError::TooLarge { .. })
        ));
    }
}
