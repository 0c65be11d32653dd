//! Verification before release: nothing wrong leaves sigmux. Every RSA
//! signature is checked against the public key (a CRT fault would leak the
//! key); other schemes are checked when the backend asks for it.

use aws_lc_rs::digest::Digest;
use aws_lc_rs::signature::{self as sig, VerificationAlgorithm};

use crate::error::{Error, Result};
use crate::keys::Key;
use crate::scheme::{Family, HashAlg, Scheme, rsa_encoding};

/// The aws-lc-rs algorithm that verifies `scheme`.
pub fn verification_algorithm(scheme: Scheme) -> &'static dyn VerificationAlgorithm {
    match scheme {
        Scheme::RsaPkcs1Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Scheme::RsaPkcs1Sha384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Scheme::RsaPkcs1Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Scheme::RsaPssRsaeSha256 => &sig::RSA_PSS_2048_8192_SHA256,
        Scheme::RsaPssRsaeSha384 => &sig::RSA_PSS_2048_8192_SHA384,
        Scheme::RsaPssRsaeSha512 => &sig::RSA_PSS_2048_8192_SHA512,
        Scheme::EcdsaSecp256r1Sha256 => &sig::ECDSA_P256_SHA256_ASN1,
        Scheme::EcdsaSecp384r1Sha384 => &sig::ECDSA_P384_SHA384_ASN1,
        Scheme::Ed25519 => &sig::ED25519,
        // Checked by `verify_rsa_raw`; this arm is never used to verify.
        Scheme::RsaRaw => &sig::RSA_PKCS1_2048_8192_SHA256,
        // Checked by `verify_ecdsa_any`; never used to verify.
        Scheme::EcdsaP256AnyDigest => &sig::ECDSA_P256_SHA256_ASN1,
        Scheme::EcdsaP384AnyDigest => &sig::ECDSA_P384_SHA384_ASN1,
    }
}

/// Refuses, at admission, an input that no backend could sign correctly,
/// so that it fails alone: a raw RSA input must be exactly the modulus
/// length and below the modulus (a keyless client's ciphertext may not be);
/// an ECDSA digest of a caller-chosen hash must be 1 to 64 bytes.
/// Admitted, it would fail the whole batch it joined and take each backend
/// that tried it out of rotation.
///
/// # Errors
///
/// [`Error::Invalid`] naming the problem.
pub fn admit_input(key: &Key, scheme: Scheme, input: &[u8]) -> Result<()> {
    if matches!(
        scheme,
        Scheme::EcdsaP256AnyDigest | Scheme::EcdsaP384AnyDigest
    ) {
        // Any hash's digest, up to SHA-512's: what every backend accepts.
        return if (1..=64).contains(&input.len()) {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{scheme}: a digest must be 1 to 64 bytes, got {}",
                input.len()
            )))
        };
    }
    if scheme != Scheme::RsaRaw {
        return Ok(());
    }
    let rsa = key
        .rsa_public()
        .ok_or_else(|| Error::Invalid(format!("key {} is not an RSA key", key.name())))?;
    let k = rsa.size() as usize;
    if input.len() != k {
        return Err(Error::Invalid(format!(
            "raw RSA input must be {k} bytes (the modulus length), got {}",
            input.len()
        )));
    }
    let n = rsa
        .n()
        .to_vec_padded(k as i32)
        .map_err(|e| Error::Invalid(format!("key {}: modulus: {e}", key.name())))?;
    // Equal lengths, big-endian: byte order is numeric order.
    if input >= n.as_slice() {
        return Err(Error::Invalid(
            "raw RSA input is not below the modulus".into(),
        ));
    }
    Ok(())
}

/// Whether the engine must verify signatures of `scheme` from a backend
/// that `needs_check` reports on.
pub fn must_verify(scheme: Scheme, backend_asks: bool) -> bool {
    scheme.family() == Family::Rsa || backend_asks
}

/// Verifies one signature over a prepared input (digest, or message for
/// Ed25519).
pub fn verify(key: &Key, scheme: Scheme, input: &[u8], signature: &[u8]) -> bool {
    if scheme == Scheme::RsaRaw {
        return verify_rsa_raw(key, input, signature);
    }
    if matches!(
        scheme,
        Scheme::EcdsaP256AnyDigest | Scheme::EcdsaP384AnyDigest
    ) {
        return verify_ecdsa_any(key, input, signature);
    }
    if let (Family::Rsa, Some(h)) = (scheme.family(), scheme.hash()) {
        return verify_rsa(key, scheme.is_pss(), h, input, signature);
    }
    let Ok(v) = key.verifier(scheme) else {
        return false;
    };
    match scheme.hash() {
        Some(h) => match Digest::import_less_safe(input, h.aws()) {
            Ok(d) => v.verify_digest_sig(&d, signature).is_ok(),
            Err(_) => false,
        },
        None => v.verify_sig(input, signature).is_ok(),
    }
}

/// The RSA check as the rules state it: compute `s^e mod n` and compare it
/// with the encoded message (PKCS#1 v1.5), or run EMSA-PSS-VERIFY on it.
fn verify_rsa(key: &Key, pss: bool, hash: HashAlg, digest: &[u8], signature: &[u8]) -> bool {
    let Some(rsa) = key.rsa_public() else {
        return false;
    };
    let k = rsa.size() as usize;
    if signature.len() != k || digest.len() != hash.len() {
        return false;
    }
    let mut em = vec![0u8; k];
    // NO_PADDING: the raw s^e mod n; it also rejects s >= n.
    match rsa.public_decrypt(signature, &mut em, openssl::rsa::Padding::NONE) {
        Ok(n) if n == k => {}
        _ => return false,
    }
    let bits = rsa.n().num_bits() as usize;
    if pss {
        rsa_encoding::pss_verify(hash, digest, &em, bits)
    } else {
        rsa_encoding::pkcs1_v15(hash, digest, k).is_some_and(|want| want == em)
    }
}

/// The raw operation's check: `out^e mod n` must give the input back.
fn verify_rsa_raw(key: &Key, input: &[u8], out: &[u8]) -> bool {
    let Some(rsa) = key.rsa_public() else {
        return false;
    };
    let k = rsa.size() as usize;
    if input.len() != k || out.len() != k {
        return false;
    }
    let mut back = vec![0u8; k];
    matches!(rsa.public_decrypt(out, &mut back, openssl::rsa::Padding::NONE), Ok(n) if n == k)
        && back == input
}

/// ECDSA over a caller-chosen digest, verified with OpenSSL.
fn verify_ecdsa_any(key: &Key, digest: &[u8], signature: &[u8]) -> bool {
    let Ok(pk) = openssl::pkey::PKey::public_key_from_der(key.spki_der()) else {
        return false;
    };
    let (Ok(ec), Ok(sig)) = (pk.ec_key(), openssl::ecdsa::EcdsaSig::from_der(signature)) else {
        return false;
    };
    sig.verify(digest, &ec).unwrap_or(false)
}
