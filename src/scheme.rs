//! Signature schemes (by their IANA TLS names), key kinds, digests and the
//! encodings around them.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A signature scheme, named as in the IANA TLS SignatureScheme registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scheme {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt length 32.
    RsaPssRsaeSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, salt length 48.
    RsaPssRsaeSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, salt length 64.
    RsaPssRsaeSha512,
    /// ECDSA on P-256 with SHA-256.
    EcdsaSecp256r1Sha256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaSecp384r1Sha384,
    /// Ed25519 (PureEdDSA: signs the message itself).
    Ed25519,
    /// The raw RSA private-key operation `c^d mod n` on a modulus-length
    /// input: RSA decryption (TLS 1.2 RSA key exchange) and signatures whose
    /// encoding is done by the caller (legacy digests). Not a TLS signature
    /// scheme, so not in [`Scheme::all`] and not accepted by name; the
    /// release check is `out^e mod n = input`.
    RsaRaw,
    /// ECDSA on P-256 over a digest the caller chose (any length up to 64
    /// bytes: SHA-1, SHA-224, SHA-384, SHA-512, MD5‖SHA-1), as TLS 1.0-1.2
    /// clients ask for. Not in [`Scheme::all`]; not accepted by name.
    EcdsaP256AnyDigest,
    /// The same on P-384.
    EcdsaP384AnyDigest,
}

/// The family of key a scheme needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// RSA, any size.
    Rsa,
    /// ECDSA on the named curve.
    Ecdsa(Curve),
    /// Ed25519.
    Ed25519,
}

/// A NIST prime curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    /// secp256r1.
    P256,
    /// secp384r1.
    P384,
}

impl Curve {
    /// Bytes in one field element (and in each half of `r‖s`).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// A digest algorithm used by a scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// Output length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The aws-lc-rs algorithm.
    pub fn aws(self) -> &'static digest::Algorithm {
        match self {
            HashAlg::Sha256 => &digest::SHA256,
            HashAlg::Sha384 => &digest::SHA384,
            HashAlg::Sha512 => &digest::SHA512,
        }
    }

    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.aws(), data).as_ref().to_vec()
    }

    /// The DER DigestInfo prefix that PKCS#1 v1.5 puts before the digest
    /// (RFC 8017, section 9.2, note 1).
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            HashAlg::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            HashAlg::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            HashAlg::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }

    /// DigestInfo ‖ digest, the input to a raw PKCS#1 v1.5 signature.
    pub fn digest_info(self, digest: &[u8]) -> Vec<u8> {
        let mut out = self.digest_info_prefix().to_vec();
        out.extend_from_slice(digest);
        out
    }
}

const ALL_SCHEMES: [Scheme; 9] = [
    Scheme::RsaPkcs1Sha256,
    Scheme::RsaPkcs1Sha384,
    Scheme::RsaPkcs1Sha512,
    Scheme::RsaPssRsaeSha256,
    Scheme::RsaPssRsaeSha384,
    Scheme::RsaPssRsaeSha512,
    Scheme::EcdsaSecp256r1Sha256,
    Scheme::EcdsaSecp384r1Sha384,
    Scheme::Ed25519,
];

impl Scheme {
    /// Every scheme sigmux signs with.
    pub fn all() -> &'static [Scheme] {
        &ALL_SCHEMES
    }

    /// The IANA name in lower case, as used on the CLI and in config.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::RsaPkcs1Sha256 => "rsa_pkcs1_sha256",
            Scheme::RsaPkcs1Sha384 => "rsa_pkcs1_sha384",
            Scheme::RsaPkcs1Sha512 => "rsa_pkcs1_sha512",
            Scheme::RsaPssRsaeSha256 => "rsa_pss_rsae_sha256",
            Scheme::RsaPssRsaeSha384 => "rsa_pss_rsae_sha384",
            Scheme::RsaPssRsaeSha512 => "rsa_pss_rsae_sha512",
            Scheme::EcdsaSecp256r1Sha256 => "ecdsa_secp256r1_sha256",
            Scheme::EcdsaSecp384r1Sha384 => "ecdsa_secp384r1_sha384",
            Scheme::Ed25519 => "ed25519",
            Scheme::RsaRaw => "rsa_raw",
            Scheme::EcdsaP256AnyDigest => "ecdsa_secp256r1_any_digest",
            Scheme::EcdsaP384AnyDigest => "ecdsa_secp384r1_any_digest",
        }
    }

    /// The key family the scheme needs.
    pub fn family(self) -> Family {
        match self {
            Scheme::RsaPkcs1Sha256
            | Scheme::RsaPkcs1Sha384
            | Scheme::RsaPkcs1Sha512
            | Scheme::RsaPssRsaeSha256
            | Scheme::RsaPssRsaeSha384
            | Scheme::RsaPssRsaeSha512
            | Scheme::RsaRaw => Family::Rsa,
            Scheme::EcdsaSecp256r1Sha256 | Scheme::EcdsaP256AnyDigest => Family::Ecdsa(Curve::P256),
            Scheme::EcdsaSecp384r1Sha384 | Scheme::EcdsaP384AnyDigest => Family::Ecdsa(Curve::P384),
            Scheme::Ed25519 => Family::Ed25519,
        }
    }

    /// The digest the scheme signs, or `None` for Ed25519, which signs the
    /// message itself.
    pub fn hash(self) -> Option<HashAlg> {
        match self {
            Scheme::RsaPkcs1Sha256 | Scheme::RsaPssRsaeSha256 | Scheme::EcdsaSecp256r1Sha256 => {
                Some(HashAlg::Sha256)
            }
            Scheme::RsaPkcs1Sha384 | Scheme::RsaPssRsaeSha384 | Scheme::EcdsaSecp384r1Sha384 => {
                Some(HashAlg::Sha384)
            }
            Scheme::RsaPkcs1Sha512 | Scheme::RsaPssRsaeSha512 => Some(HashAlg::Sha512),
            Scheme::Ed25519
            | Scheme::RsaRaw
            | Scheme::EcdsaP256AnyDigest
            | Scheme::EcdsaP384AnyDigest => None,
        }
    }

    /// Whether this is an RSASSA-PSS scheme (salt length = hash length).
    pub fn is_pss(self) -> bool {
        matches!(
            self,
            Scheme::RsaPssRsaeSha256 | Scheme::RsaPssRsaeSha384 | Scheme::RsaPssRsaeSha512
        )
    }

    /// Whether keys of `kind` can sign with this scheme.
    pub fn fits(self, kind: KeyKind) -> bool {
        self.family() == kind.family()
    }

    /// Fails with [`Error::SchemeNotValidForKey`] unless `kind` fits.
    pub fn check_fits(self, kind: KeyKind) -> Result<(), Error> {
        if self.fits(kind) {
            Ok(())
        } else {
            Err(Error::SchemeNotValidForKey { scheme: self, kind })
        }
    }

    /// The scheme a key of `kind` signs with when the caller does not say.
    pub fn default_for(kind: KeyKind) -> Scheme {
        match kind.family() {
            Family::Rsa => Scheme::RsaPkcs1Sha256,
            Family::Ecdsa(Curve::P256) => Scheme::EcdsaSecp256r1Sha256,
            Family::Ecdsa(Curve::P384) => Scheme::EcdsaSecp384r1Sha384,
            Family::Ed25519 => Scheme::Ed25519,
        }
    }

    /// Turns what the caller handed in into what backends sign: a digest of
    /// the right length for RSA and ECDSA, the message for Ed25519.
    pub fn prepare(self, input: SignInput) -> Result<Vec<u8>, Error> {
        match (self.hash(), input) {
            (Some(h), SignInput::Message(m)) => Ok(h.digest(&m)),
            (Some(h), SignInput::Digest(d)) => {
                if d.len() == h.len() {
                    Ok(d)
                } else {
                    Err(Error::WrongDigestLength {
                        scheme: self,
                        expected: h.len(),
                        got: d.len(),
                    })
                }
            }
            (None, SignInput::Message(m)) => Ok(m),
            (None, SignInput::Digest(_)) => Err(Error::DigestNotAllowed(self)),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ALL_SCHEMES
            .iter()
            .copied()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| Error::UnknownScheme(s.to_string()))
    }
}

impl TryFrom<String> for Scheme {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Scheme> for String {
    fn from(s: Scheme) -> String {
        s.name().to_string()
    }
}

/// What a caller asks to have signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignInput {
    /// The message; sigmux hashes it with the scheme's digest (Ed25519 signs
    /// it as is).
    Message(Vec<u8>),
    /// A digest the caller already computed; its length must match the
    /// scheme's digest. Not valid for Ed25519.
    Digest(Vec<u8>),
}

/// The kind (algorithm and size) of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeyKind {
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

const ALL_KINDS: [KeyKind; 6] = [
    KeyKind::Rsa2048,
    KeyKind::Rsa3072,
    KeyKind::Rsa4096,
    KeyKind::P256,
    KeyKind::P384,
    KeyKind::Ed25519,
];

impl KeyKind {
    /// Every kind sigmux knows.
    pub fn all() -> &'static [KeyKind] {
        &ALL_KINDS
    }

    /// The CLI and config name.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa2048 => "rsa2048",
            KeyKind::Rsa3072 => "rsa3072",
            KeyKind::Rsa4096 => "rsa4096",
            KeyKind::P256 => "p256",
            KeyKind::P384 => "p384",
            KeyKind::Ed25519 => "ed25519",
        }
    }

    /// The key family.
    pub fn family(self) -> Family {
        match self {
            KeyKind::Rsa2048 | KeyKind::Rsa3072 | KeyKind::Rsa4096 => Family::Rsa,
            KeyKind::P256 => Family::Ecdsa(Curve::P256),
            KeyKind::P384 => Family::Ecdsa(Curve::P384),
            KeyKind::Ed25519 => Family::Ed25519,
        }
    }

    /// Modulus bits for RSA kinds.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            KeyKind::Rsa2048 => Some(2048),
            KeyKind::Rsa3072 => Some(3072),
            KeyKind::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// The RSA kind for a modulus size, if sigmux supports it.
    pub fn from_rsa_bits(bits: u32) -> Option<KeyKind> {
        match bits {
            2048 => Some(KeyKind::Rsa2048),
            3072 => Some(KeyKind::Rsa3072),
            4096 => Some(KeyKind::Rsa4096),
            _ => None,
        }
    }

    /// Schemes a key of this kind can sign with.
    pub fn schemes(self) -> impl Iterator<Item = Scheme> {
        Scheme::all().iter().copied().filter(move |s| s.fits(self))
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ALL_KINDS
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::UnknownKeyKind(s.to_string()))
    }
}

impl TryFrom<String> for KeyKind {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<KeyKind> for String {
    fn from(k: KeyKind) -> String {
        k.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &s in Scheme::all() {
            assert_eq!(s.name().parse::<Scheme>().unwrap(), s);
        }
        for &k in KeyKind::all() {
            assert_eq!(k.name().parse::<KeyKind>().unwrap(), k);
        }
        assert!(matches!(
            "rsa_pkcs1_sha1".parse::<Scheme>(),
            Err(Error::UnknownScheme(_))
        ));
    }

    #[test]
    fn prepare_checks_digest_length_and_hashes_messages() {
        let s = Scheme::RsaPssRsaeSha384;
        assert_eq!(
            s.prepare(SignInput::Message(b"abc".to_vec()))
                .unwrap()
                .len(),
            48
        );
        let err = s.prepare(SignInput::Digest(vec![0; 32])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong digest length for rsa_pss_rsae_sha384: expected 48 bytes, got 32"
        );
        assert!(
            Scheme::Ed25519
                .prepare(SignInput::Digest(vec![0; 64]))
                .is_err()
        );
        assert_eq!(
            Scheme::Ed25519
                .prepare(SignInput::Message(b"m".to_vec()))
                .unwrap(),
            b"m"
        );
    }

    #[test]
    fn digest_info_prefixes_are_well_formed() {
        for h in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            let info = h.digest_info(&vec![0; h.len()]);
            assert_eq!(info[1] as usize, info.len() - 2);
            assert_eq!(info[info.len() - h.len() - 1] as usize, h.len());
        }
    }

    #[test]
    fn schemes_fit_kinds() {
        assert!(Scheme::RsaPssRsaeSha512.fits(KeyKind::Rsa4096));
        assert!(!Scheme::EcdsaSecp256r1Sha256.fits(KeyKind::P384));
        assert_eq!(KeyKind::P256.schemes().count(), 1);
        assert_eq!(KeyKind::Rsa2048.schemes().count(), 6);
    }
}

/// RSA signature encodings (RFC 8017), done on the host so that backends
/// which only compute `m^d mod n` (GPU kernels) and the release check can
/// share them.
pub mod rsa_encoding {
    use super::HashAlg;

    /// XORs `out.len()` bytes of MGF1(`hash`, `seed`) into `out`, with no
    /// allocation (GPU batches encode millions of PSS messages a second).
    /// `seed` is a digest (at most 64 bytes), as in PSS.
    ///
    /// # Panics
    ///
    /// If `seed` is longer than 64 bytes.
    pub fn mgf1_xor(hash: HashAlg, seed: &[u8], out: &mut [u8]) {
        let mut block = [0u8; 64 + 4];
        let s = seed.len();
        block[..s].copy_from_slice(seed);
        for (counter, chunk) in (0u32..).zip(out.chunks_mut(hash.len())) {
            block[s..s + 4].copy_from_slice(&counter.to_be_bytes());
            let mask = aws_lc_rs::digest::digest(hash.aws(), &block[..s + 4]);
            for (o, m) in chunk.iter_mut().zip(mask.as_ref()) {
                *o ^= m;
            }
        }
    }

    /// EMSA-PKCS1-v1_5 over an already built `T` (DigestInfo ‖ digest, or
    /// the bare 36-byte MD5‖SHA-1 of TLS 1.0/1.1): `00 01 FF.. 00 T`.
    pub fn pkcs1_v15_raw(t: &[u8], k: usize) -> Option<Vec<u8>> {
        if k < t.len() + 11 {
            return None;
        }
        let mut em = vec![0xffu8; k];
        em[0] = 0;
        em[1] = 1;
        em[k - t.len() - 1] = 0;
        em[k - t.len()..].copy_from_slice(t);
        Some(em)
    }

    /// Removes PKCS#1 v1.5 encryption padding (`00 02 PS 00 M`, PS at least
    /// 8 non-zero bytes) without branching or indexing on the secret bytes
    /// until the single valid/invalid decision, so every padding failure
    /// looks the same (Bleichenbacher).
    pub fn pkcs1_v15_unpad_encryption(em: &[u8]) -> Option<Vec<u8>> {
        use subtle::{ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater};
        let k = em.len();
        if k < 11 {
            return None;
        }
        let mut good = em[0].ct_eq(&0) & em[1].ct_eq(&2);
        let mut looking = subtle::Choice::from(1);
        let mut sep = 0u64;
        for (i, &b) in em.iter().enumerate().skip(2) {
            let zero = b.ct_eq(&0);
            sep.conditional_assign(&(i as u64), looking & zero);
            looking &= !zero;
        }
        good &= !looking;
        good &= sep.ct_gt(&9);
        if bool::from(good) {
            Some(em[sep as usize + 1..].to_vec())
        } else {
            None
        }
    }

    /// EMSA-PKCS1-v1_5: `00 01 FF.. 00 DigestInfo digest`, `k` bytes.
    /// `None` when the modulus is too small for the digest.
    pub fn pkcs1_v15(hash: HashAlg, digest: &[u8], k: usize) -> Option<Vec<u8>> {
        pkcs1_v15_raw(&hash.digest_info(digest), k)
    }

    /// H = Hash(0^8 ‖ mHash ‖ salt) into `out` (the hash's length).
    fn pss_hash_into(hash: HashAlg, digest: &[u8], salt: &[u8], out: &mut [u8]) {
        let mut ctx = aws_lc_rs::digest::Context::new(hash.aws());
        ctx.update(&[0u8; 8]);
        ctx.update(digest);
        ctx.update(salt);
        out.copy_from_slice(ctx.finish().as_ref());
    }

    /// EMSA-PSS-ENCODE with salt length = hash length, for a modulus of
    /// `mod_bits` bits; the result is left-padded to the modulus length.
    pub fn pss_encode(
        hash: HashAlg,
        digest: &[u8],
        salt: &[u8],
        mod_bits: usize,
    ) -> Option<Vec<u8>> {
        let mut out = vec![0u8; mod_bits.div_ceil(8)];
        pss_encode_into(hash, digest, salt, mod_bits, &mut out).then_some(out)
    }

    /// [`pss_encode`] into `out`, which holds the modulus length
    /// (`mod_bits` rounded up to bytes), with no allocation. `false` when
    /// the lengths do not fit.
    pub fn pss_encode_into(
        hash: HashAlg,
        digest: &[u8],
        salt: &[u8],
        mod_bits: usize,
        out: &mut [u8],
    ) -> bool {
        let h_len = hash.len();
        let em_bits = mod_bits - 1;
        let em_len = em_bits.div_ceil(8);
        let k = mod_bits.div_ceil(8);
        if digest.len() != h_len
            || salt.len() != h_len
            || em_len < h_len + salt.len() + 2
            || out.len() != k
        {
            return false;
        }
        // out = leading zero (when emLen < k) ‖ maskedDB ‖ H ‖ 0xbc
        let (lead, em) = out.split_at_mut(k - em_len);
        lead.fill(0);
        let (db, rest) = em.split_at_mut(em_len - h_len - 1);
        let (h, bc) = rest.split_at_mut(h_len);
        pss_hash_into(hash, digest, salt, h);
        bc[0] = 0xbc;
        let db_len = db.len();
        db.fill(0);
        db[db_len - salt.len() - 1] = 1;
        db[db_len - salt.len()..].copy_from_slice(salt);
        mgf1_xor(hash, h, db);
        db[0] &= 0xff >> (8 * em_len - em_bits);
        true
    }

    /// EMSA-PSS-VERIFY with salt length = hash length. `em` is the
    /// big-endian value `s^e mod n`, modulus length.
    pub fn pss_verify(hash: HashAlg, digest: &[u8], em: &[u8], mod_bits: usize) -> bool {
        let h_len = hash.len();
        let em_bits = mod_bits - 1;
        let em_len = em_bits.div_ceil(8);
        let k = mod_bits.div_ceil(8);
        if em.len() != k || digest.len() != h_len || em_len < 2 * h_len + 2 {
            return false;
        }
        // When emLen < k the leading octet must be zero.
        let (lead, em) = em.split_at(k - em_len);
        if lead.iter().any(|&b| b != 0) || em[em_len - 1] != 0xbc {
            return false;
        }
        let unused = 8 * em_len - em_bits;
        let top_mask = !(0xffu8 >> unused);
        let (masked_db, rest) = em.split_at(em_len - h_len - 1);
        let h = &rest[..h_len];
        if unused > 0 && masked_db[0] & top_mask != 0 {
            return false;
        }
        let mut db = masked_db.to_vec();
        mgf1_xor(hash, h, &mut db);
        db[0] &= 0xff >> unused;
        let ps_len = em_len - 2 * h_len - 2;
        if db[..ps_len].iter().any(|&b| b != 0) || db[ps_len] != 1 {
            return false;
        }
        let salt = &db[ps_len + 1..];
        let mut want = [0u8; 64];
        pss_hash_into(hash, digest, salt, &mut want[..h_len]);
        want[..h_len] == *h
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pss_encode_then_verify_and_reject_tampering() {
            for (hash, bits) in [
                (HashAlg::Sha256, 2048),
                (HashAlg::Sha384, 3072),
                (HashAlg::Sha512, 4096),
                (HashAlg::Sha256, 2049),
            ] {
                let d = hash.digest(b"m");
                let salt = vec![0x5a; hash.len()];
                let em = pss_encode(hash, &d, &salt, bits).unwrap();
                assert_eq!(em.len(), bits.div_ceil(8));
                assert!(pss_verify(hash, &d, &em, bits));
                let mut bad = em.clone();
                bad[40] ^= 1;
                assert!(!pss_verify(hash, &d, &bad, bits));
                assert!(!pss_verify(hash, &hash.digest(b"n"), &em, bits));
            }
        }

        #[test]
        fn encryption_unpadding_accepts_only_well_formed_blocks() {
            let mut em = vec![0u8; 64];
            em[1] = 2;
            em[2..20].iter_mut().for_each(|b| *b = 0x33);
            em[20] = 0;
            em[21..].iter_mut().for_each(|b| *b = 0x44);
            assert_eq!(pkcs1_v15_unpad_encryption(&em).unwrap(), vec![0x44; 43]);
            let mut bad = em.clone();
            bad[1] = 1;
            assert!(pkcs1_v15_unpad_encryption(&bad).is_none());
            let mut bad = em.clone();
            bad[0] = 1;
            assert!(pkcs1_v15_unpad_encryption(&bad).is_none());
            // PS shorter than 8 bytes.
            let mut short = em.clone();
            short[5] = 0;
            assert!(pkcs1_v15_unpad_encryption(&short).is_none());
            // No separator at all.
            let mut none = em.clone();
            none[20] = 0x55;
            assert!(pkcs1_v15_unpad_encryption(&none).is_none());
            // An empty message is valid.
            let mut empty = vec![0x66u8; 64];
            empty[0] = 0;
            empty[1] = 2;
            empty[63] = 0;
            assert_eq!(
                pkcs1_v15_unpad_encryption(&empty).unwrap(),
                Vec::<u8>::new()
            );
        }

        #[test]
        fn pkcs1_layout() {
            let d = HashAlg::Sha256.digest(b"m");
            let em = pkcs1_v15(HashAlg::Sha256, &d, 256).unwrap();
            assert_eq!(&em[..2], &[0, 1]);
            assert_eq!(em[256 - 52], 0);
            assert!(em[2..256 - 52].iter().all(|&b| b == 0xff));
            assert!(pkcs1_v15(HashAlg::Sha256, &d, 61).is_none());
        }
    }
}
