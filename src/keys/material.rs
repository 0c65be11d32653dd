//! Private-key material: generating keys, reading PKCS#8 / PKCS#1 / SEC1 in
//! PEM or DER, and normalising everything to PKCS#8 DER.

use std::fmt;

use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::Rsa;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::scheme::KeyKind;

/// A private key as PKCS#8 DER. Zeroized on drop; `Debug` shows nothing.
pub struct SecretKey(Zeroizing<Vec<u8>>);

impl SecretKey {
    /// Wraps PKCS#8 DER that has already been validated.
    pub(crate) fn from_pkcs8(der: Zeroizing<Vec<u8>>) -> Self {
        SecretKey(der)
    }

    /// The PKCS#8 DER bytes. Callers must not copy them anywhere that
    /// outlives the signing library's own key object.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0
    }

    /// Parses the key with OpenSSL.
    pub fn to_openssl(&self) -> Result<PKey<Private>> {
        PKey::private_key_from_pkcs8(&self.0)
            .map_err(|_| Error::Import("stored PKCS#8 key could not be parsed".into()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A validated private key with what sigmux records about it.
pub struct Material {
    /// The key kind.
    pub kind: KeyKind,
    /// The private key.
    pub secret: SecretKey,
    /// SubjectPublicKeyInfo DER of the public half.
    pub spki_der: Vec<u8>,
}

/// Generates a new key of `kind`.
pub fn generate(kind: KeyKind) -> Result<Material> {
    let fail = |e: openssl::error::ErrorStack| Error::Import(format!("key generation failed: {e}"));
    let pkey = match kind {
        KeyKind::Rsa2048 | KeyKind::Rsa3072 | KeyKind::Rsa4096 => {
            let bits = kind.rsa_bits().unwrap_or(2048);
            PKey::from_rsa(Rsa::generate(bits).map_err(fail)?).map_err(fail)?
        }
        KeyKind::P256 | KeyKind::P384 => {
            let nid = if kind == KeyKind::P256 {
                Nid::X9_62_PRIME256V1
            } else {
                Nid::SECP384R1
            };
            let group = EcGroup::from_curve_name(nid).map_err(fail)?;
            PKey::from_ec_key(EcKey::generate(&group).map_err(fail)?).map_err(fail)?
        }
        KeyKind::Ed25519 => PKey::generate_ed25519().map_err(fail)?,
    };
    from_openssl(&pkey)
}

/// DER of the PBES2 object identifier (1.2.840.113549.1.5.13), which marks
/// an encrypted PKCS#8 structure.
const PBES2_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
];

const ENCRYPTED: &str =
    "the key is encrypted; decrypt it first (e.g. openssl pkey -in KEY -out PLAIN)";

/// Reads a private key in any of the accepted encodings.
pub fn import(bytes: &[u8]) -> Result<Material> {
    let pkey = if let Some(text) = pem_text(bytes) {
        let blocks = WipedPem(
            pem::parse_many(text)
                .map_err(|e| Error::Import(format!("PEM could not be parsed: {e}")))?,
        );
        // Skip what is not a key (`openssl ecparam -genkey` writes the
        // curve parameters first).
        let block = blocks
            .0
            .iter()
            .find(|b| b.tag().ends_with("PRIVATE KEY"))
            .ok_or_else(|| {
                let tags: Vec<&str> = blocks.0.iter().map(|b| b.tag()).collect();
                Error::Import(format!(
                    "PEM holds {}, which is not a private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                    if tags.is_empty() { "no block".to_string() } else { tags.join(", ") }
                ))
            })?;
        if block
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"))
        {
            return Err(Error::Import(ENCRYPTED.into()));
        }
        let der = Zeroizing::new(block.contents().to_vec());
        match block.tag() {
            "PRIVATE KEY" => PKey::private_key_from_pkcs8(&der)
                .map_err(|_| Error::Import("PKCS#8 PRIVATE KEY block is malformed".into()))?,
            "RSA PRIVATE KEY" => Rsa::private_key_from_der(&der)
                .and_then(PKey::from_rsa)
                .map_err(|_| Error::Import("PKCS#1 RSA PRIVATE KEY block is malformed".into()))?,
            "EC PRIVATE KEY" => EcKey::private_key_from_der(&der)
                .and_then(PKey::from_ec_key)
                .map_err(|_| Error::Import("SEC1 EC PRIVATE KEY block is malformed".into()))?,
            "ENCRYPTED PRIVATE KEY" => return Err(Error::Import(ENCRYPTED.into())),
            other => {
                return Err(Error::Import(format!(
                    "PEM block '{other}' is not a supported private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                )));
            }
        }
    } else {
        PKey::private_key_from_pkcs8(bytes)
            .or_else(|_| Rsa::private_key_from_der(bytes).and_then(PKey::from_rsa))
            .or_else(|_| EcKey::private_key_from_der(bytes).and_then(PKey::from_ec_key))
            .map_err(|_| {
                if bytes.windows(PBES2_OID.len()).any(|w| w == PBES2_OID) {
                    Error::Import(ENCRYPTED.into())
                } else {
                    Error::Import("not a private key in PEM, or DER PKCS#8, PKCS#1 or SEC1".into())
                }
            })?
    };
    from_openssl(&pkey)
}

/// Parsed PEM blocks whose contents (a private key's DER) are wiped when
/// they are dropped.
struct WipedPem(Vec<pem::Pem>);

impl Drop for WipedPem {
    fn drop(&mut self) {
        for block in std::mem::take(&mut self.0) {
            drop(Zeroizing::new(block.into_contents()));
        }
    }
}

/// The PEM text in `bytes`, from its first block on, if there is one.
fn pem_text(bytes: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")?;
    Some(&bytes[start..])
}

/// Classifies and validates an OpenSSL key and normalises it to PKCS#8.
pub(crate) fn from_openssl(pkey: &PKey<Private>) -> Result<Material> {
    let kind = match pkey.id() {
        Id::RSA => {
            let rsa = pkey
                .rsa()
                .map_err(|_| Error::Import("RSA key is malformed".into()))?;
            if !rsa.check_key().unwrap_or(false) {
                return Err(Error::Import("RSA key fails its consistency check".into()));
            }
            if rsa.e().num_bits() < 2 || !rsa.e().is_bit_set(0) {
                return Err(Error::Import(
                    "RSA public exponent must be odd and > 1".into(),
                ));
            }
            let bits = rsa.n().num_bits() as u32;
            KeyKind::from_rsa_bits(bits).ok_or_else(|| {
                Error::Import(format!(
                    "RSA-{bits} keys are not supported (use 2048, 3072 or 4096 bits)"
                ))
            })?
        }
        Id::EC => {
            let ec = pkey
                .ec_key()
                .map_err(|_| Error::Import("EC key is malformed".into()))?;
            ec.check_key()
                .map_err(|_| Error::Import("EC key fails its consistency check".into()))?;
            match ec.group().curve_name() {
                Some(Nid::X9_62_PRIME256V1) => KeyKind::P256,
                Some(Nid::SECP384R1) => KeyKind::P384,
                Some(other) => {
                    return Err(Error::Import(format!(
                        "EC curve {} is not supported (use P-256 or P-384)",
                        other.short_name().unwrap_or("?")
                    )));
                }
                None => {
                    return Err(Error::Import(
                        "EC keys with explicit curve parameters are not supported".into(),
                    ));
                }
            }
        }
        Id::ED25519 => KeyKind::Ed25519,
        other => {
            let name = Nid::from_raw(other.as_raw())
                .long_name()
                .unwrap_or("unknown")
                .to_string();
            return Err(Error::Import(format!(
                "{name} keys are not supported (use RSA, P-256, P-384 or Ed25519)"
            )));
        }
    };
    let pkcs8 = Zeroizing::new(
        pkey.private_key_to_pkcs8()
            .map_err(|_| Error::Import("key could not be encoded as PKCS#8".into()))?,
    );
    let spki_der = pkey
        .public_key_to_der()
        .map_err(|_| Error::Import("public key could not be encoded".into()))?;
    Ok(Material {
        kind,
        secret: SecretKey::from_pkcs8(pkcs8),
        spki_der,
    })
}
