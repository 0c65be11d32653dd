//! The offline root key's file: PKCS#8 `EncryptedPrivateKeyInfo` (PEM
//! `ENCRYPTED PRIVATE KEY`), PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC
//! (RFC 8018), which `openssl pkey` reads as it is. OpenSSL's own writer
//! derives the key with 2048 PBKDF2 iterations: far too few for a file
//! that, once copied, can be attacked offline for as long as the root
//! lives. This one uses [`PBKDF2_ITERATIONS`], and the passphrase must be at
//! least [`MIN_PASSPHRASE_CHARS`] long.

use std::io::Write;
use std::path::Path;

use openssl::hash::MessageDigest;
use openssl::symm::Cipher;
use zeroize::Zeroizing;

use super::svid::{seq, tlv};
use crate::error::{Error, Result};
use crate::keys::Key;

/// PBKDF2-HMAC-SHA256 iterations (OWASP's 2023 figure for SHA-256): about
/// a quarter of a second per try on one core, paid only when the root is
/// used (`ca init`, `ca rotate prepare`, `ca revoke --intermediate`).
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// The shortest passphrase accepted for a new root file.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

const OID_PBES2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
const OID_PBKDF2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c];
const OID_HMAC_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// Refuses a passphrase too short to protect a root key.
pub fn check_passphrase(passphrase: &str) -> Result<()> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(Error::Invalid(format!(
            "the offline root passphrase must be at least {MIN_PASSPHRASE_CHARS} characters \
             (a few random words): the encrypted file can be attacked offline for as long as the root lives"
        )));
    }
    Ok(())
}

fn uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let start = b.iter().position(|&x| x != 0).unwrap_or(3);
    let mut digits = b[start..].to_vec();
    if digits[0] & 0x80 != 0 {
        digits.insert(0, 0);
    }
    tlv(0x02, &digits)
}

/// `pkcs8_der` (a PrivateKeyInfo) encrypted under `passphrase`, as PEM.
pub fn encrypt_pem(pkcs8_der: &[u8], passphrase: &str) -> Result<Zeroizing<Vec<u8>>> {
    check_passphrase(passphrase)?;
    let fail = |what: &str, e: openssl::error::ErrorStack| {
        Error::Invalid(format!("cannot encrypt the root key ({what}): {e}"))
    };
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt).map_err(|e| fail("random salt", e))?;
    openssl::rand::rand_bytes(&mut iv).map_err(|e| fail("random IV", e))?;
    let mut key = Zeroizing::new([0u8; 32]);
    openssl::pkcs5::pbkdf2_hmac(
        passphrase.as_bytes(),
        &salt,
        PBKDF2_ITERATIONS as usize,
        MessageDigest::sha256(),
        key.as_mut(),
    )
    .map_err(|e| fail("PBKDF2", e))?;
    let sealed = openssl::symm::encrypt(Cipher::aes_256_cbc(), key.as_ref(), Some(&iv), pkcs8_der)
        .map_err(|e| fail("AES-256-CBC", e))?;
    let null = tlv(0x05, &[]);
    let kdf = seq(&[
        &tlv(0x06, OID_PBKDF2),
        &seq(&[
            &tlv(0x04, &salt),
            &uint(PBKDF2_ITERATIONS),
            &seq(&[&tlv(0x06, OID_HMAC_SHA256), &null]),
        ]),
    ]);
    let cipher = seq(&[&tlv(0x06, OID_AES256_CBC), &tlv(0x04, &iv)]);
    let der = seq(&[
        &seq(&[&tlv(0x06, OID_PBES2), &seq(&[&kdf, &cipher])]),
        &tlv(0x04, &sealed),
    ]);
    Ok(Zeroizing::new(
        pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", der)).into_bytes(),
    ))
}

/// `key` encrypted under `passphrase` ([`encrypt_pem`]) and written to the
/// new file `path` (mode 0600), never over an existing one.
pub fn write_new(path: &Path, key: &Key, passphrase: &str) -> Result<()> {
    let der = Zeroizing::new(
        key.secret()?
            .to_openssl()?
            .private_key_to_pkcs8()
            .map_err(|e| Error::Invalid(format!("cannot encode the root key: {e}")))?,
    );
    let pem = encrypt_pem(&der, passphrase)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&pem)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_decrypts_it_with_the_passphrase_only() {
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let pkey = openssl::pkey::PKey::from_ec_key(ec).unwrap();
        let der = pkey.private_key_to_pkcs8().unwrap();
        let pass = "correct horse battery staple";
        let pem = encrypt_pem(&der, pass).unwrap();
        let back =
            openssl::pkey::PKey::private_key_from_pem_passphrase(&pem, pass.as_bytes()).unwrap();
        assert!(back.public_eq(&pkey));
        assert!(
            openssl::pkey::PKey::private_key_from_pem_passphrase(
                &pem,
                b"correct horse battery stapl"
            )
            .is_err()
        );
        assert!(encrypt_pem(&der, "short pass").is_err());
    }
}
