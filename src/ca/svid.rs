//! The X.509-SVID and JWT-SVID profiles (SPIFFE `standards/X509-SVID.md`
//! and `standards/JWT-SVID.md`).
//!
//! Certificates are built here as DER `TBSCertificate`s and signed through
//! the [`Engine`], so the CA key may live on any backend (CPU, GPU, HSM):
//! nothing here ever touches a private key.
//!
//! An X.509-SVID leaf made by [`build_tbs`] has:
//!
//! * version 3, a random positive serial of exactly 16 octets (126 random
//!   bits: the top bit is cleared so it is positive, the next one set so the
//!   encoding is always 16 octets and never zero);
//! * the issuer's subject as issuer, `notBefore` = now − backdate (never
//!   before the issuer's `notBefore`), `notAfter` = min(now + requested TTL,
//!   now + policy maximum, issuer's `notAfter`);
//! * the subject of [`SvidSubject`] (see there for the choice);
//! * the subject public key exactly as handed in, after the key policy of
//!   [`crate::ca::csr::check_public_key`];
//! * extensions, in this order: basicConstraints (critical, `cA` FALSE),
//!   keyUsage (critical: `digitalSignature`, plus `keyEncipherment` for RSA
//!   subject keys; never `keyCertSign`/`cRLSign`), extKeyUsage (`serverAuth`,
//!   `clientAuth`), subjectKeyIdentifier (SHA-1 of the subject key bits),
//!   authorityKeyIdentifier (the issuer's SKI as found in its certificate, or
//!   computed the same way when it has none), subjectAltName with exactly one
//!   URI (the SPIFFE ID, which must have a non-root path) and the validated
//!   DNS names (critical only when the subject is empty, per RFC 5280
//!   §4.2.1.6 and X509-SVID.md §3.1).

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use super::csr::{self, CsrError, DerError, DerReader, oid, tag};
use super::spiffe::{SpiffeId, TrustDomain};
use crate::engine::{Engine, SignRequest, Signature};
use crate::keys::{Key, Ski};
use crate::scheme::{Curve, Family, HashAlg, KeyKind, Scheme, SignInput};

/// Largest number of DNS SANs [`SvidPolicy::default`] allows.
pub const DEFAULT_MAX_DNS_NAMES: usize = 32;

/// Default for [`SvidPolicy::max_ttl`]: one hour, like SPIRE's default
/// X509-SVID TTL.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);

/// Default for [`SvidPolicy::backdate`].
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(60);

/// Largest [`SvidPolicy::backdate`] accepted.
pub const MAX_BACKDATE: Duration = Duration::from_secs(86_400);

/// Why an SVID could not be made. One variant per problem.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SvidError {
    /// The subject public key breaks the key policy.
    #[error("subject public key: {0}")]
    SubjectKey(#[from] CsrError),
    /// The SPIFFE ID has no path; a leaf SVID needs one (X509-SVID.md §3.1).
    #[error("SPIFFE ID '{0}' has no path; an SVID needs a workload path")]
    RootSpiffeId(String),
    /// The SPIFFE ID is not in the CA's trust domain.
    #[error("SPIFFE ID '{id}' is not in trust domain '{trust_domain}'")]
    WrongTrustDomain {
        /// The requested ID.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A DNS name is not a valid host name.
    #[error("invalid DNS name '{name}': {reason}")]
    InvalidDnsName {
        /// The name (truncated and escaped).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same DNS name appears twice.
    #[error("DNS name '{0}' is listed more than once")]
    DuplicateDnsName(String),
    /// Too many DNS names.
    #[error("too many DNS names: {count} (at most {max})")]
    TooManyDnsNames {
        /// How many were asked for.
        count: usize,
        /// The policy's limit.
        max: usize,
    },
    /// The requested TTL is under one second.
    #[error("requested TTL must be at least one second")]
    ZeroTtl,
    /// The system clock is before 1970.
    #[error("system clock is before the Unix epoch")]
    ClockBeforeEpoch,
    /// The policy itself is unusable.
    #[error("SVID policy: {0}")]
    Policy(String),
    /// The issuer certificate does not parse or is not usable.
    #[error("issuer certificate: {0}")]
    IssuerCert(String),
    /// The issuer certificate is not a CA certificate that may sign
    /// certificates.
    #[error("issuer certificate is not a CA (basicConstraints cA and keyCertSign required)")]
    IssuerNotCa,
    /// The issuer certificate's public key is not the issuer key's.
    #[error("issuer certificate does not hold the public key of key '{0}'")]
    IssuerKeyMismatch(String),
    /// The issuer certificate has expired.
    #[error("issuer certificate expired at {0}")]
    IssuerExpired(String),
    /// The issuer certificate is not valid yet.
    #[error("issuer certificate is not valid before {0}")]
    IssuerNotYetValid(String),
    /// The issuer's scheme does not fit its key.
    #[error("scheme {scheme} is not valid for the issuer's {kind} key")]
    SchemeMismatch {
        /// The configured scheme.
        scheme: Scheme,
        /// The issuer key's kind.
        kind: KeyKind,
    },
    /// Certificates cannot be signed with this scheme (the raw RSA
    /// operation).
    #[error("scheme {0} cannot sign certificates")]
    UnsupportedCertScheme(Scheme),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// The engine refused or failed the signature.
    #[error("signing: {0}")]
    Signing(Arc<crate::Error>),
    /// JWT-SVIDs cannot be signed with this scheme (JWT-SVID.md §2.1).
    #[error("scheme {0} has no JWT-SVID 'alg' (use ES256, ES384, RS256-512 or PS256-512 keys)")]
    UnsupportedJwtScheme(Scheme),
    /// A JWT-SVID needs at least one non-empty audience.
    #[error("JWT-SVID audience must hold at least one non-empty value")]
    EmptyAudience,
    /// Too many audiences, or one too long: a token is a bearer header
    /// that every hop must carry, and its record goes into the audit log.
    #[error(
        "JWT-SVID audience holds {count} values of up to {longest} bytes; at most \
         {MAX_JWT_AUDIENCES} values of at most {MAX_JWT_AUDIENCE_LEN} bytes are allowed"
    )]
    AudienceTooLarge {
        /// Values given.
        count: usize,
        /// Length of the longest, in bytes.
        longest: usize,
    },
}

/// Most audience values in one JWT-SVID.
pub const MAX_JWT_AUDIENCES: usize = 32;

/// Longest audience value in a JWT-SVID, in bytes.
pub const MAX_JWT_AUDIENCE_LEN: usize = 1024;

impl SvidError {
    /// A stable, machine-readable code for API responses.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            SvidError::SubjectKey(e) => e.code(),
            SvidError::RootSpiffeId(_) | SvidError::WrongTrustDomain { .. } => "spiffe_id",
            SvidError::InvalidDnsName { .. }
            | SvidError::DuplicateDnsName(_)
            | SvidError::TooManyDnsNames { .. } => "dns_name",
            SvidError::ZeroTtl => "ttl",
            SvidError::UnsupportedJwtScheme(_)
            | SvidError::EmptyAudience
            | SvidError::AudienceTooLarge { .. } => "jwt",
            SvidError::Signing(e) if matches!(**e, crate::Error::Overloaded) => "overloaded",
            SvidError::Signing(_) => "signing",
            SvidError::ClockBeforeEpoch
            | SvidError::Policy(_)
            | SvidError::IssuerCert(_)
            | SvidError::IssuerNotCa
            | SvidError::IssuerKeyMismatch(_)
            | SvidError::IssuerExpired(_)
            | SvidError::IssuerNotYetValid(_)
            | SvidError::SchemeMismatch { .. }
            | SvidError::UnsupportedCertScheme(_)
            | SvidError::Random => "ca_internal",
        }
    }
}

impl From<crate::Error> for SvidError {
    fn from(e: crate::Error) -> Self {
        SvidError::Signing(Arc::new(e))
    }
}

/// The subject distinguished name of issued X.509-SVIDs.
///
/// X509-SVID.md §3.1 leaves the subject optional and puts the identity only
/// in the URI SAN. The default is a fixed `O=SPIFFE`: like SPIRE (whose
/// default workload subject is the fixed `C=US, O=SPIRE`), it carries no
/// per-workload data, so nothing can be mistaken for the identity, it never
/// exceeds the X.520 upper bounds whatever the SPIFFE ID, and it keeps the
/// subject non-empty for the many TLS stacks and tools that still dislike
/// empty subjects; the SAN is then non-critical, as RFC 5280 §4.2.1.6 asks.
/// [`SvidSubject::Empty`] gives the other spec-compliant form: an empty
/// subject with a critical SAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidSubject {
    /// An empty subject; the SAN extension is then marked critical.
    Empty,
    /// `O=<name>` (1 to 64 characters, UTF8String); SAN non-critical.
    Organization(String),
}

impl Default for SvidSubject {
    fn default() -> Self {
        SvidSubject::Organization("SPIFFE".to_string())
    }
}

/// What the CA allows when it issues X.509-SVIDs.
#[derive(Debug, Clone)]
pub struct SvidPolicy {
    /// Upper bound on an SVID's lifetime (requests asking for more get this).
    pub max_ttl: Duration,
    /// How far `notBefore` is set before now, for clock skew.
    pub backdate: Duration,
    /// The subject name of every SVID.
    pub subject: SvidSubject,
    /// When set, the SPIFFE ID must be in this trust domain.
    pub trust_domain: Option<TrustDomain>,
    /// Whether a DNS name may start with a `*.` wildcard label (off by
    /// default: an SVID names one workload, and a wildcard would let it
    /// answer for every sibling host).
    pub allow_wildcard_dns: bool,
    /// Most DNS SANs per SVID.
    pub max_dns_names: usize,
}

impl Default for SvidPolicy {
    fn default() -> Self {
        SvidPolicy {
            max_ttl: DEFAULT_MAX_TTL,
            backdate: DEFAULT_BACKDATE,
            subject: SvidSubject::default(),
            trust_domain: None,
            allow_wildcard_dns: false,
            max_dns_names: DEFAULT_MAX_DNS_NAMES,
        }
    }
}

/// One X.509-SVID to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidRequest {
    /// The subject's SubjectPublicKeyInfo (DER), e.g.
    /// [`csr::VerifiedCsr::spki_der`]; it is checked against the key policy
    /// again and copied into the certificate unchanged.
    pub public_key_spki: Vec<u8>,
    /// The SPIFFE ID, the certificate's only URI SAN.
    pub spiffe_id: SpiffeId,
    /// DNS SANs (validated: see [`validate_dns_name`]).
    pub dns_names: Vec<String>,
    /// Requested lifetime (capped by the policy and the issuer).
    pub ttl: Duration,
}

/// The signing CA: its certificate, key and signature scheme.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The issuing (intermediate) CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its key; the private half may live on any backend.
    pub key: Arc<Key>,
    /// The scheme certificates are signed with; must fit the key.
    pub scheme: Scheme,
    /// Certificates above `cert_der` to send along (DER, issuer order,
    /// normally without the root): they follow the intermediate in
    /// [`IssuedSvid::chain_pem`].
    pub chain_der: Vec<Vec<u8>>,
}

/// A random positive 128-bit certificate serial number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Serial(pub [u8; 16]);

impl Serial {
    /// A fresh random serial: top bit clear (positive), next bit set (so the
    /// DER INTEGER is always 16 octets and never zero), 126 random bits.
    ///
    /// # Errors
    ///
    /// [`SvidError::Random`] if the system generator fails.
    pub fn random() -> Result<Serial, SvidError> {
        Ok(Serial::random_many(1)?.remove(0))
    }

    /// `n` random serials from one call to the generator (its per-call cost
    /// is larger than the 16 bytes of one serial).
    ///
    /// # Errors
    ///
    /// [`SvidError::Random`] when the system generator fails.
    pub fn random_many(n: usize) -> Result<Vec<Serial>, SvidError> {
        let mut bytes = vec![0u8; 16 * n];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SvidError::Random)?;
        Ok(bytes
            .chunks_exact(16)
            .map(|c| {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                // Positive, and exactly 16 octets in DER (no leading zero).
                b[0] = (b[0] & 0x7f) | 0x40;
                Serial(b)
            })
            .collect())
    }

    /// Lower-case hex, 32 digits, as `openssl x509 -serial` prints it
    /// (modulo case).
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// An issued X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSvid {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate, then the issuer, then [`Issuer::chain_der`], PEM.
    pub chain_pem: String,
    /// The serial number, lower-case hex.
    pub serial_hex: String,
    /// `notAfter`.
    pub expires_at: SystemTime,
    /// The backend that made the signature (for the audit log).
    pub backend: &'static str,
}

/// What [`build_tbs`] returns: the DER `TBSCertificate`, its serial and its
/// `notAfter`.
pub type BuiltTbs = (Vec<u8>, Serial, SystemTime);

/// Facts taken from the issuer certificate.
struct IssuerFacts<'a> {
    subject: &'a [u8],
    not_before: i64,
    not_after: i64,
    ski: Vec<u8>,
}

fn issuer_err(what: &str, e: DerError) -> SvidError {
    SvidError::IssuerCert(format!("{what}: {e}"))
}

/// Walks the issuer certificate: subject, validity, SPKI (must be the
/// key's), CA-ness, SKI.
fn issuer_facts(issuer: &Issuer) -> Result<IssuerFacts<'_>, SvidError> {
    let mut top = DerReader::new(&issuer.cert_der);
    let cert = top
        .expect(tag::SEQUENCE)
        .map_err(|e| issuer_err("Certificate", e))?;
    if !top.is_empty() {
        return Err(SvidError::IssuerCert("trailing data".into()));
    }
    let tbs = DerReader::new(cert.value)
        .expect(tag::SEQUENCE)
        .map_err(|e| issuer_err("tbsCertificate", e))?;
    let mut r = DerReader::new(tbs.value);
    r.optional_explicit(tag::CONTEXT_0_CONSTRUCTED)
        .map_err(|e| issuer_err("version", e))?;
    r.expect(tag::INTEGER)
        .map_err(|e| issuer_err("serialNumber", e))?;
    r.expect(tag::SEQUENCE)
        .map_err(|e| issuer_err("signature", e))?;
    r.expect(tag::SEQUENCE)
        .map_err(|e| issuer_err("issuer", e))?;
    let validity = r
        .expect(tag::SEQUENCE)
        .map_err(|e| issuer_err("validity", e))?;
    let subject = r
        .expect(tag::SEQUENCE)
        .map_err(|e| issuer_err("subject", e))?;
    let spki = r
        .expect(tag::SEQUENCE)
        .map_err(|e| issuer_err("subjectPublicKeyInfo", e))?;
    let mut extensions = None;
    while !r.is_empty() {
        let t = r.read().map_err(|e| issuer_err("tbsCertificate", e))?;
        if t.tag == tag::CONTEXT_3_CONSTRUCTED {
            extensions = Some(t.value);
        }
    }

    let mut v = DerReader::new(validity.value);
    let not_before = read_time(&mut v).map_err(|e| issuer_err("notBefore", e))?;
    let not_after = read_time(&mut v).map_err(|e| issuer_err("notAfter", e))?;

    if spki.raw != issuer.key.spki_der() {
        return Err(SvidError::IssuerKeyMismatch(issuer.key.name().to_string()));
    }

    let mut is_ca = false;
    let mut cert_sign = true;
    let mut ski = None;
    if let Some(exts) = extensions {
        let list = DerReader::new(exts)
            .expect_only(tag::SEQUENCE)
            .map_err(|e| issuer_err("extensions", e))?;
        let mut items = DerReader::new(list.value);
        while !items.is_empty() {
            let ext = items
                .expect(tag::SEQUENCE)
                .map_err(|e| issuer_err("extension", e))?;
            let mut e = DerReader::new(ext.value);
            let id = e
                .expect(tag::OID)
                .map_err(|e| issuer_err("extension id", e))?;
            if e.peek_tag() == Some(tag::BOOLEAN) {
                e.read().map_err(|e| issuer_err("extension", e))?;
            }
            let value = e
                .expect(tag::OCTET_STRING)
                .map_err(|e| issuer_err("extension value", e))?
                .value;
            match id.value {
                ext_oid::BASIC_CONSTRAINTS => {
                    let bc = DerReader::new(value)
                        .expect_only(tag::SEQUENCE)
                        .map_err(|e| issuer_err("basicConstraints", e))?;
                    is_ca = DerReader::new(bc.value)
                        .read()
                        .is_ok_and(|t| t.tag == tag::BOOLEAN && t.value == [0xff]);
                }
                ext_oid::KEY_USAGE => {
                    let ku = DerReader::new(value)
                        .expect_only(tag::BIT_STRING)
                        .map_err(|e| issuer_err("keyUsage", e))?;
                    cert_sign = ku.value.get(1).is_some_and(|b| b & 0x04 != 0);
                }
                ext_oid::SUBJECT_KEY_ID => {
                    let id = DerReader::new(value)
                        .expect_only(tag::OCTET_STRING)
                        .map_err(|e| issuer_err("subjectKeyIdentifier", e))?;
                    ski = Some(id.value.to_vec());
                }
                _ => {}
            }
        }
    }
    if !is_ca || !cert_sign {
        return Err(SvidError::IssuerNotCa);
    }
    let ski = match ski {
        Some(s) => s,
        None => Ski::of_spki(issuer.key.spki_der())
            .map_err(|e| SvidError::IssuerCert(e.to_string()))?
            .0
            .to_vec(),
    };
    Ok(IssuerFacts {
        subject: subject.raw,
        not_before,
        not_after,
        ski,
    })
}

/// Validates a DNS name for a DNS SAN: ASCII letters, digits and `-` in
/// labels of 1 to 63 characters that neither start nor end with `-`, at
/// most 253 characters in all, no trailing dot, and a last label that is not
/// all digits (so an IP address cannot pass as a host name). A leading `*.`
/// label is allowed only when `allow_wildcard` is set, and then at least two
/// more labels must follow. Punycode (`xn--`) labels are plain LDH labels.
///
/// # Errors
///
/// [`SvidError::InvalidDnsName`] naming the rule broken.
pub fn validate_dns_name(name: &str, allow_wildcard: bool) -> Result<(), SvidError> {
    let err = |reason: &'static str| SvidError::InvalidDnsName {
        name: name
            .chars()
            .take(64)
            .collect::<String>()
            .escape_debug()
            .to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(err("empty"));
    }
    if name.len() > 253 {
        return Err(err("longer than 253 characters"));
    }
    if name.ends_with('.') {
        return Err(err("trailing dot"));
    }
    let rest = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => {
            if rest.split('.').count() < 2 {
                return Err(err("a wildcard needs at least two labels after '*.'"));
            }
            rest
        }
        Some(_) => return Err(err("wildcards are not allowed")),
        None => name,
    };
    let labels: Vec<&str> = rest.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(err("empty label"));
        }
        if label.len() > 63 {
            return Err(err("label longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(err("'*' is only allowed as the whole first label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err("labels may hold only ASCII letters, digits and '-'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a label may not start or end with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err(
            "the last label is all digits (an IP address is not a DNS name)",
        ));
    }
    Ok(())
}

pub(crate) fn unix_secs(t: SystemTime) -> Result<i64, SvidError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| SvidError::ClockBeforeEpoch)?;
    i64::try_from(d.as_secs()).map_err(|_| SvidError::Policy("clock out of range".into()))
}

fn system_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

fn dur_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// Builds the DER `TBSCertificate` of an X.509-SVID for `req`, signed by
/// `issuer`, as of `now`. Returns it with its serial and `notAfter`.
///
/// # Errors
///
/// An [`SvidError`] naming what is wrong with the request, the policy or the
/// issuer.
pub fn build_tbs(
    req: &SvidRequest,
    issuer: &Issuer,
    now: SystemTime,
    policy: &SvidPolicy,
) -> Result<BuiltTbs, SvidError> {
    build_tbs_with(req, issuer, now, policy, Serial::random()?)
}

/// [`build_tbs`] with a serial already drawn (a batch draws all of its
/// serials from the generator at once).
fn build_tbs_with(
    req: &SvidRequest,
    issuer: &Issuer,
    now: SystemTime,
    policy: &SvidPolicy,
    serial: Serial,
) -> Result<BuiltTbs, SvidError> {
    // The request.
    if req.spiffe_id.path().is_empty() {
        return Err(SvidError::RootSpiffeId(req.spiffe_id.to_string()));
    }
    if let Some(td) = &policy.trust_domain
        && !req.spiffe_id.is_member_of(td)
    {
        return Err(SvidError::WrongTrustDomain {
            id: req.spiffe_id.to_string(),
            trust_domain: td.to_string(),
        });
    }
    if req.dns_names.len() > policy.max_dns_names {
        return Err(SvidError::TooManyDnsNames {
            count: req.dns_names.len(),
            max: policy.max_dns_names,
        });
    }
    for (i, name) in req.dns_names.iter().enumerate() {
        validate_dns_name(name, policy.allow_wildcard_dns)?;
        if req.dns_names[..i]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return Err(SvidError::DuplicateDnsName(name.clone()));
        }
    }
    if req.ttl.as_secs() == 0 {
        return Err(SvidError::ZeroTtl);
    }
    let key_type = csr::check_public_key(&req.public_key_spki)?;
    let subject = encode_subject(&policy.subject)?;

    // The issuer.
    if !issuer.scheme.fits(issuer.key.kind()) {
        return Err(SvidError::SchemeMismatch {
            scheme: issuer.scheme,
            kind: issuer.key.kind(),
        });
    }
    let sig_alg = signature_algorithm(issuer.scheme)
        .ok_or(SvidError::UnsupportedCertScheme(issuer.scheme))?;
    let facts = issuer_facts(issuer)?;

    // Validity.
    let now_s = unix_secs(now)?;
    if facts.not_after <= now_s {
        return Err(SvidError::IssuerExpired(rfc3339(facts.not_after)));
    }
    if facts.not_before > now_s {
        return Err(SvidError::IssuerNotYetValid(rfc3339(facts.not_before)));
    }
    let not_before = (now_s - dur_secs(policy.backdate)).max(facts.not_before);
    if policy.backdate > MAX_BACKDATE {
        return Err(SvidError::Policy("backdate must be at most one day".into()));
    }
    let ttl = dur_secs(req.ttl).min(dur_secs(policy.max_ttl));
    if ttl <= 0 {
        return Err(SvidError::Policy(
            "max_ttl must be at least one second".into(),
        ));
    }
    let not_after = now_s.saturating_add(ttl).min(facts.not_after);

    // Extensions.
    let ski = Ski::of_spki(&req.public_key_spki)
        .map_err(|_| SvidError::SubjectKey(CsrError::InvalidPublicKey("no key bits".into())))?;
    let mut exts = Vec::with_capacity(6);
    exts.push(extension(ext_oid::BASIC_CONSTRAINTS, true, &seq(&[])));
    let key_usage: &[u8] = if key_type.is_rsa() {
        // digitalSignature (bit 0) + keyEncipherment (bit 2): 5 unused bits.
        &[tag::BIT_STRING, 0x02, 0x05, 0xa0]
    } else {
        // digitalSignature only: 7 unused bits.
        &[tag::BIT_STRING, 0x02, 0x07, 0x80]
    };
    exts.push(extension(ext_oid::KEY_USAGE, true, key_usage));
    exts.push(extension(
        ext_oid::EXT_KEY_USAGE,
        false,
        &seq(&[
            &tlv(tag::OID, ext_oid::SERVER_AUTH),
            &tlv(tag::OID, ext_oid::CLIENT_AUTH),
        ]),
    ));
    exts.push(extension(
        ext_oid::SUBJECT_KEY_ID,
        false,
        &tlv(tag::OCTET_STRING, &ski.0),
    ));
    exts.push(extension(
        ext_oid::AUTHORITY_KEY_ID,
        false,
        &seq(&[&tlv(0x80, &facts.ski)]),
    ));
    let mut names = vec![tlv(0x86, req.spiffe_id.as_str().as_bytes())];
    names.extend(req.dns_names.iter().map(|n| tlv(0x82, n.as_bytes())));
    let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    exts.push(extension(
        ext_oid::SUBJECT_ALT_NAME,
        policy.subject == SvidSubject::Empty,
        &seq(&names),
    ));
    let exts: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();

    let tbs = seq(&[
        &[0xa0, 0x03, 0x02, 0x01, 0x02],
        &tlv(tag::INTEGER, &serial.0),
        &sig_alg,
        facts.subject,
        &seq(&[&encode_time(not_before), &encode_time(not_after)]),
        &subject,
        &req.public_key_spki,
        &tlv(tag::CONTEXT_3_CONSTRUCTED, &seq(&exts)),
    ]);
    Ok((tbs, serial, system_time(not_after)))
}

/// Wraps a signed `TBSCertificate` into a `Certificate` (DER). `signature`
/// is what the engine returned for `scheme`: big-endian for RSA, an
/// `Ecdsa-Sig-Value` for ECDSA, 64 bytes for Ed25519 — each exactly what
/// X.509 carries in the signature BIT STRING.
///
/// # Errors
///
/// [`SvidError::UnsupportedCertScheme`] for [`Scheme::RsaRaw`].
pub fn assemble(tbs_der: &[u8], scheme: Scheme, signature: &[u8]) -> Result<Vec<u8>, SvidError> {
    let alg = signature_algorithm(scheme).ok_or(SvidError::UnsupportedCertScheme(scheme))?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(signature);
    Ok(seq(&[tbs_der, &alg, &tlv(tag::BIT_STRING, &bits)]))
}

/// The DER AlgorithmIdentifier for certificates signed with `scheme`:
/// `sha{256,384,512}WithRSAEncryption` (NULL parameters), RSASSA-PSS with
/// full parameters (hash, MGF1 with the same hash, salt = hash length),
/// `ecdsa-with-SHA256/384` (no parameters) or Ed25519 (no parameters);
/// `None` for the raw operations ([`Scheme::RsaRaw`] and the any-digest
/// ECDSA schemes), which cannot sign certificates.
#[must_use]
pub fn signature_algorithm(scheme: Scheme) -> Option<Vec<u8>> {
    const NULL: &[u8] = &[tag::NULL, 0x00];
    let hash_oid = |h: HashAlg| match h {
        HashAlg::Sha256 => oid::SHA256,
        HashAlg::Sha384 => oid::SHA384,
        HashAlg::Sha512 => oid::SHA512,
    };
    Some(match scheme {
        Scheme::RsaPkcs1Sha256 => seq(&[&tlv(tag::OID, oid::SHA256_WITH_RSA), NULL]),
        Scheme::RsaPkcs1Sha384 => seq(&[&tlv(tag::OID, oid::SHA384_WITH_RSA), NULL]),
        Scheme::RsaPkcs1Sha512 => seq(&[&tlv(tag::OID, oid::SHA512_WITH_RSA), NULL]),
        Scheme::RsaPssRsaeSha256 | Scheme::RsaPssRsaeSha384 | Scheme::RsaPssRsaeSha512 => {
            let h = scheme.hash().unwrap_or(HashAlg::Sha256);
            let hash_alg = seq(&[&tlv(tag::OID, hash_oid(h)), NULL]);
            let mgf = seq(&[&tlv(tag::OID, oid::MGF1), &hash_alg]);
            let salt = [u8::try_from(h.len()).unwrap_or(32)];
            let params = seq(&[
                &tlv(tag::CONTEXT_0_CONSTRUCTED, &hash_alg),
                &tlv(tag::CONTEXT_1_CONSTRUCTED, &mgf),
                &tlv(tag::CONTEXT_2_CONSTRUCTED, &tlv(tag::INTEGER, &salt)),
            ]);
            seq(&[&tlv(tag::OID, oid::RSASSA_PSS), &params])
        }
        Scheme::EcdsaSecp256r1Sha256 => seq(&[&tlv(tag::OID, oid::ECDSA_SHA256)]),
        Scheme::EcdsaSecp384r1Sha384 => seq(&[&tlv(tag::OID, oid::ECDSA_SHA384)]),
        Scheme::Ed25519 => seq(&[&tlv(tag::OID, oid::ED25519)]),
        Scheme::RsaRaw | Scheme::EcdsaP256AnyDigest | Scheme::EcdsaP384AnyDigest => {
            return None;
        }
    })
}

pub(crate) fn pem_block(der: &[u8]) -> String {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----\n";
    const END: &str = "-----END CERTIFICATE-----\n";
    // 48 bytes make one 64-character line (RFC 7468), encoded straight into
    // the output: this runs once per issued SVID.
    let mut out =
        String::with_capacity(BEGIN.len() + END.len() + der.len() * 4 / 3 + der.len() / 48 + 4);
    out.push_str(BEGIN);
    for line in der.chunks(48) {
        base64::engine::general_purpose::STANDARD.encode_string(line, &mut out);
        out.push('\n');
    }
    out.push_str(END);
    out
}

/// The PEM of the issuer's certificate and its chain, which follows every
/// SVID it signs (made once per batch, not per SVID).
fn issuer_chain_pem(issuer: &Issuer) -> String {
    let mut pem = pem_block(&issuer.cert_der);
    for c in &issuer.chain_der {
        pem.push_str(&pem_block(c));
    }
    pem
}

fn finish(
    tbs: &[u8],
    serial: Serial,
    not_after: SystemTime,
    issuer: &Issuer,
    issuer_pem: &str,
    sig: Signature,
) -> Result<IssuedSvid, SvidError> {
    let cert_der = assemble(tbs, issuer.scheme, &sig.bytes)?;
    let mut chain_pem = pem_block(&cert_der);
    chain_pem.push_str(issuer_pem);
    Ok(IssuedSvid {
        cert_der,
        chain_pem,
        serial_hex: serial.to_hex(),
        expires_at: not_after,
        backend: sig.backend,
    })
}

/// Issues one X.509-SVID: builds the TBSCertificate, has the engine sign it
/// with the issuer key, and assembles the certificate and chain.
///
/// # Errors
///
/// What [`build_tbs`] reports, or [`SvidError::Signing`] when the engine
/// refuses or fails.
pub async fn issue(
    engine: &Engine,
    req: &SvidRequest,
    issuer: &Issuer,
    policy: &SvidPolicy,
) -> Result<IssuedSvid, SvidError> {
    let (tbs, serial, not_after) = build_tbs(req, issuer, SystemTime::now(), policy)?;
    let sig = engine
        .sign(SignRequest::new(
            issuer.key.clone(),
            issuer.scheme,
            SignInput::Message(tbs.clone()),
        ))
        .await?;
    finish(
        &tbs,
        serial,
        not_after,
        issuer,
        &issuer_chain_pem(issuer),
        sig,
    )
}

/// Issues many X.509-SVIDs at once (one HTTP batch): every certificate that
/// can be built goes to the engine in one group ([`Engine::submit_group`]),
/// so they batch together. Results come back in request order; a bad item
/// fails alone, while an engine refusal (e.g. overload) fails every item that
/// was submitted.
pub async fn issue_batch(
    engine: &Engine,
    reqs: &[SvidRequest],
    issuer: &Issuer,
    policy: &SvidPolicy,
) -> Vec<Result<IssuedSvid, SvidError>> {
    let now = SystemTime::now();
    let built: Vec<Result<BuiltTbs, SvidError>> = match Serial::random_many(reqs.len()) {
        Ok(serials) => reqs
            .iter()
            .zip(serials)
            .map(|(r, serial)| build_tbs_with(r, issuer, now, policy, serial))
            .collect(),
        Err(e) => reqs.iter().map(|_| Err(e.clone())).collect(),
    };
    let inputs: Vec<SignInput> = built
        .iter()
        .filter_map(|b| b.as_ref().ok())
        .map(|(tbs, _, _)| SignInput::Message(tbs.clone()))
        .collect();
    let mut signatures: Vec<Result<Signature, SvidError>> = if inputs.is_empty() {
        Vec::new()
    } else {
        let n = inputs.len();
        match engine.submit_group(issuer.key.clone(), issuer.scheme, inputs, None) {
            Ok(ticket) => ticket
                .await
                .into_iter()
                .map(|r| r.map_err(SvidError::from))
                .collect(),
            Err(e) => {
                let e = Arc::new(e);
                (0..n).map(|_| Err(SvidError::Signing(e.clone()))).collect()
            }
        }
    };
    signatures.reverse();
    let issuer_pem = issuer_chain_pem(issuer);
    built
        .into_iter()
        .map(|b| {
            let (tbs, serial, not_after) = b?;
            let sig = signatures.pop().unwrap_or_else(|| {
                Err(SvidError::Signing(Arc::new(crate::Error::Invalid(
                    "engine answered fewer signatures than requested".into(),
                ))))
            })?;
            finish(&tbs, serial, not_after, issuer, &issuer_pem, sig)
        })
        .collect()
}

/// The JWS `alg` for a scheme, per JWT-SVID.md §2.1, or `None` when the
/// scheme has none there (Ed25519).
#[must_use]
pub fn jwt_alg(scheme: Scheme) -> Option<&'static str> {
    match scheme {
        Scheme::RsaPkcs1Sha256 => Some("RS256"),
        Scheme::RsaPkcs1Sha384 => Some("RS384"),
        Scheme::RsaPkcs1Sha512 => Some("RS512"),
        Scheme::RsaPssRsaeSha256 => Some("PS256"),
        Scheme::RsaPssRsaeSha384 => Some("PS384"),
        Scheme::RsaPssRsaeSha512 => Some("PS512"),
        Scheme::EcdsaSecp256r1Sha256 => Some("ES256"),
        Scheme::EcdsaSecp384r1Sha384 => Some("ES384"),
        Scheme::Ed25519
        | Scheme::RsaRaw
        | Scheme::EcdsaP256AnyDigest
        | Scheme::EcdsaP384AnyDigest => None,
    }
}

/// Mints a JWT-SVID (JWS compact serialization) for `sub`, signed through
/// the engine with `key` and `scheme`.
///
/// Header: `alg` (from [`jwt_alg`]), `kid` (when given), `typ: "JWT"`.
/// Claims: `sub` (the SPIFFE ID), `aud` (a string for one audience, else an
/// array), `exp` = `iat` + `ttl`, `iat` = now (seconds). ECDSA signatures are
/// turned into the fixed-width `r‖s` JOSE wants; RSA PSS uses salt = hash
/// length, as RFC 7518 §3.5 requires.
///
/// # Errors
///
/// [`SvidError::UnsupportedJwtScheme`], [`SvidError::SchemeMismatch`],
/// [`SvidError::EmptyAudience`], [`SvidError::AudienceTooLarge`],
/// [`SvidError::ZeroTtl`] or
/// [`SvidError::Signing`].
pub async fn mint_jwt(
    engine: &Engine,
    key: Arc<Key>,
    kid: Option<&str>,
    scheme: Scheme,
    sub: &SpiffeId,
    aud: &[String],
    ttl: Duration,
) -> Result<String, SvidError> {
    let alg = jwt_alg(scheme).ok_or(SvidError::UnsupportedJwtScheme(scheme))?;
    if !scheme.fits(key.kind()) {
        return Err(SvidError::SchemeMismatch {
            scheme,
            kind: key.kind(),
        });
    }
    if aud.is_empty() || aud.iter().any(String::is_empty) {
        return Err(SvidError::EmptyAudience);
    }
    let longest = aud.iter().map(String::len).max().unwrap_or(0);
    if aud.len() > MAX_JWT_AUDIENCES || longest > MAX_JWT_AUDIENCE_LEN {
        return Err(SvidError::AudienceTooLarge {
            count: aud.len(),
            longest,
        });
    }
    if ttl.as_secs() == 0 {
        return Err(SvidError::ZeroTtl);
    }
    let iat = unix_secs(SystemTime::now())?;
    let exp = iat.saturating_add(dur_secs(ttl));

    let mut header = serde_json::Map::new();
    header.insert("alg".into(), alg.into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    header.insert("typ".into(), "JWT".into());
    let aud_value = match aud {
        [one] => serde_json::Value::from(one.as_str()),
        many => serde_json::Value::from(many.to_vec()),
    };
    let claims = serde_json::json!({
        "sub": sub.as_str(),
        "aud": aud_value,
        "exp": exp,
        "iat": iat,
    });
    let header = serde_json::Value::Object(header).to_string();
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.as_bytes()),
        B64URL.encode(claims.to_string().as_bytes())
    );
    let sig = engine
        .sign(SignRequest::new(
            key,
            scheme,
            SignInput::Message(signing_input.as_bytes().to_vec()),
        ))
        .await?;
    let sig_bytes = match scheme.family() {
        Family::Ecdsa(curve) => {
            let field = match curve {
                Curve::P256 => 32,
                Curve::P384 => 48,
            };
            crate::der::ecdsa_der_to_raw(&sig.bytes, field).map_err(|e| {
                SvidError::Signing(Arc::new(crate::Error::Invalid(format!(
                    "engine returned a malformed ECDSA signature: {e}"
                ))))
            })?
        }
        _ => sig.bytes,
    };
    Ok(format!("{signing_input}.{}", B64URL.encode(sig_bytes)))
}

/// Subject name encoding.
fn encode_subject(s: &SvidSubject) -> Result<Vec<u8>, SvidError> {
    match s {
        SvidSubject::Empty => Ok(seq(&[])),
        SvidSubject::Organization(o) => {
            let n = o.chars().count();
            if n == 0 || n > 64 || o.chars().any(char::is_control) {
                return Err(SvidError::Policy(
                    "subject organization must be 1-64 characters without control characters"
                        .into(),
                ));
            }
            let atv = seq(&[
                &tlv(tag::OID, ext_oid::ORGANIZATION),
                &tlv(0x0c, o.as_bytes()),
            ]);
            Ok(seq(&[&tlv(0x31, &atv)]))
        }
    }
}

/// Reads a UTCTime or GeneralizedTime (`...Z`, whole seconds) as Unix
/// seconds.
fn read_time(r: &mut DerReader<'_>) -> Result<i64, DerError> {
    let t = r.read()?;
    let s = t.value;
    let digits = |b: &[u8]| -> Result<i64, DerError> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return Err(DerError("time has non-digits"));
        }
        Ok(b.iter()
            .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0')))
    };
    let (year, rest) = match t.tag {
        tag::UTC_TIME if s.len() == 13 => {
            let yy = digits(&s[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        tag::GENERALIZED_TIME if s.len() == 15 => (digits(&s[..4])?, &s[4..]),
        tag::UTC_TIME | tag::GENERALIZED_TIME => return Err(DerError("unsupported time form")),
        _ => return Err(DerError("not a time")),
    };
    if rest[10] != b'Z' {
        return Err(DerError("time is not in UTC ('Z')"));
    }
    let (mo, d, h, mi, se) = (
        digits(&rest[0..2])?,
        digits(&rest[2..4])?,
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(DerError("time field out of range"));
    }
    Ok(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn split_time(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    (y, mo, d, s / 3600, s / 60 % 60, s % 60)
}

/// Unix seconds as RFC 3339 UTC (`2026-12-04T05:00:00Z`).
#[must_use]
pub fn rfc3339(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = split_time(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5).
pub(crate) fn encode_time(secs: i64) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = split_time(secs);
    if (1950..2050).contains(&y) {
        let text = format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100);
        tlv(tag::UTC_TIME, text.as_bytes())
    } else {
        let y = y.clamp(0, 9999);
        let text = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z");
        tlv(tag::GENERALIZED_TIME, text.as_bytes())
    }
}

/// One DER element.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded elements.
pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag::SEQUENCE, &parts.concat())
}

/// An Extension; `critical` is encoded only when true (DER default).
pub(crate) fn extension(id: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let id = tlv(tag::OID, id);
    let value = tlv(tag::OCTET_STRING, value);
    if critical {
        seq(&[&id, &[tag::BOOLEAN, 0x01, 0xff], &value])
    } else {
        seq(&[&id, &value])
    }
}

/// OIDs of the certificate extensions and attributes written here.
pub(crate) mod ext_oid {
    pub const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
    pub const SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
    pub const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    pub const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    pub const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    pub const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
    pub const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    pub const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    pub const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trip() {
        for secs in [
            0i64,
            951_782_400,
            2_524_607_999,
            2_524_608_000,
            4_102_444_800,
        ] {
            let enc = encode_time(secs);
            assert_eq!(read_time(&mut DerReader::new(&enc)).unwrap(), secs);
        }
        assert_eq!(&encode_time(0)[2..], b"700101000000Z");
        assert_eq!(encode_time(2_524_608_000)[0], tag::GENERALIZED_TIME);
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn dns_names() {
        for ok in ["web", "a.b.example", "xn--bcher-kva.example", "a-1.b2"] {
            validate_dns_name(ok, false).unwrap();
        }
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a.b.",
            "*.example.org",
            "10.0.0.1",
            "a b",
            "é.example",
        ] {
            assert!(validate_dns_name(bad, false).is_err(), "{bad}");
        }
        validate_dns_name("*.example.org", true).unwrap();
        assert!(validate_dns_name("*.org", true).is_err());
        assert!(validate_dns_name("a.*.org", true).is_err());
        assert!(validate_dns_name(&"a".repeat(64), false).is_err());
    }

    #[test]
    fn serial_is_positive_and_sixteen_octets() {
        for _ in 0..100 {
            let s = Serial::random().unwrap();
            assert!(s.0[0] & 0x80 == 0 && s.0[0] & 0x40 != 0);
            assert_eq!(s.to_hex().len(), 32);
        }
    }

    #[test]
    fn pem_block_matches_the_pem_crate() {
        for n in [0usize, 1, 47, 48, 49, 95, 96, 97, 600, 1234] {
            let der: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let want = pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            assert_eq!(pem_block(&der), want, "{n} bytes");
        }
        let many = Serial::random_many(64).unwrap();
        let distinct: std::collections::HashSet<_> = many.iter().map(Serial::to_hex).collect();
        assert_eq!(distinct.len(), 64);
        assert!(
            many.iter()
                .all(|s| s.0[0] & 0x80 == 0 && s.0[0] & 0x40 != 0)
        );
    }

    #[test]
    fn tlv_lengths() {
        assert_eq!(tlv(4, &[0; 5])[..2], [4, 5]);
        assert_eq!(tlv(4, &[0; 200])[..3], [4, 0x81, 200]);
        assert_eq!(tlv(4, &[0; 300])[..4], [4, 0x82, 1, 44]);
    }
}
