//! Data layout of the RSA kernels (`kernels/rsa.cu`): the key blob and the
//! structure-of-arrays batches. Pure Rust; no CUDA.
//!
//! Numbers are 32-bit little-endian limbs. For a `bits`-bit key, N =
//! bits/64 limbs per CRT half and L = 2N limbs for n; R = 2^(32N) for p and
//! q, 2^(32L) for n. The key blob, one per batch (same table as
//! `kernels/rsa/crt.cuh`):
//!
//! | word       | len | field                               |
//! |------------|-----|-------------------------------------|
//! | 0          | 1   | bits (2048, 3072, 4096)             |
//! | 1          | 1   | e (odd, < 2^32)                     |
//! | 2          | 1   | n0 = -n^-1 mod 2^32                 |
//! | 3          | 1   | 0 (reserved)                        |
//! | 4          | L   | n                                   |
//! | 4+L        | L   | R^2 mod n                           |
//! | S = 4+2L   | 1   | p0 = -p^-1 mod 2^32 (secret from S) |
//! | S+1        | 1   | q0 = -q^-1 mod 2^32                 |
//! | S+2        | 2   | 0 (reserved)                        |
//! | S+4        | N   | p                                   |
//! | S+4+N      | N   | q                                   |
//! | S+4+2N     | N   | R^2 mod p                           |
//! | S+4+3N     | N   | R^2 mod q                           |
//! | S+4+4N     | N   | dp = d mod (p-1)                    |
//! | S+4+5N     | N   | dq = d mod (q-1)                    |
//! | S+4+6N     | N   | qinv = q^-1 mod p                   |
//!
//! [`key_words`] = 8 + 11N words (360, 536, 712). Everything from word S on
//! is secret; the words before it are public.
//!
//! Batches: item i of `count`, limb j, is at `[j * count + i]`.

use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::pkey::{PKey, Private};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The key sizes the kernels take.
pub const SIZES: [usize; 3] = [2048, 3072, 4096];

/// Word offsets into the key blob of a `bits`-bit key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// Limbs per CRT half (bits/64).
    pub half: usize,
    /// n.
    pub n: usize,
    /// R^2 mod n.
    pub rr_n: usize,
    /// Start of the secret part (p0, q0, then the numbers below).
    pub secret: usize,
    /// p.
    pub p: usize,
    /// q.
    pub q: usize,
    /// R^2 mod p.
    pub rr_p: usize,
    /// R^2 mod q.
    pub rr_q: usize,
    /// dp.
    pub dp: usize,
    /// dq.
    pub dq: usize,
    /// qinv.
    pub qinv: usize,
    /// Total words.
    pub words: usize,
}

/// The blob layout for a `bits`-bit key (bits a multiple of 64).
pub fn offsets(bits: usize) -> Offsets {
    let half = bits / 64;
    let n = 4;
    let rr_n = n + 2 * half;
    let secret = rr_n + 2 * half;
    let p = secret + 4;
    Offsets {
        half,
        n,
        rr_n,
        secret,
        p,
        q: p + half,
        rr_p: p + 2 * half,
        rr_q: p + 3 * half,
        dp: p + 4 * half,
        dq: p + 5 * half,
        qinv: p + 6 * half,
        words: p + 7 * half,
    }
}

/// Length in u32 words of the key blob for a `bits`-bit key: 8 + 11 * bits/64.
pub fn key_words(bits: usize) -> usize {
    offsets(bits).words
}

/// -m^-1 mod 2^32 for an odd m whose lowest limb is `m_low`.
pub fn mont_m0(m_low: u32) -> u32 {
    // Newton's iteration doubles the correct low bits: 1 -> 32 in 5 steps.
    let mut inv: u32 = 1;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(m_low.wrapping_mul(inv)));
    }
    inv.wrapping_neg()
}

/// 2^(64 * limbs) mod m: R^2 for Montgomery arithmetic on `limbs` limbs.
pub fn mont_rr(m: &BigNumRef, limbs: usize) -> Result<BigNum> {
    let mut ctx = BigNumContext::new().map_err(ossl)?;
    let mut big = BigNum::new().map_err(ossl)?;
    let one = BigNum::from_u32(1).map_err(ossl)?;
    big.lshift(&one, (64 * limbs) as i32).map_err(ossl)?;
    let mut r = BigNum::new().map_err(ossl)?;
    r.nnmod(&big, m, &mut ctx).map_err(ossl)?;
    Ok(r)
}

/// Writes `x` as `dst.len()` little-endian limbs (x must fit).
pub fn put_limbs(dst: &mut [u32], x: &BigNumRef) -> Result<()> {
    let be = Zeroizing::new(x.to_vec_padded((dst.len() * 4) as i32).map_err(ossl)?);
    for (j, w) in dst.iter_mut().enumerate() {
        let k = be.len() - 4 * (j + 1);
        *w = u32::from_be_bytes([be[k], be[k + 1], be[k + 2], be[k + 3]]);
    }
    Ok(())
}

fn ossl(e: openssl::error::ErrorStack) -> Error {
    Error::Invalid(format!("RSA key layout: OpenSSL error: {e}"))
}

/// Packs an RSA private key into the kernels' key blob (layout above).
///
/// Errors (`Error::Invalid`, never naming key material) for a key that is
/// not RSA, a modulus of other than 2048, 3072 or 4096 bits, a key without
/// CRT parameters, primes that are not both exactly half the modulus size,
/// or e >= 2^32 (or even).
pub fn pack_key(key: &PKey<Private>) -> Result<Zeroizing<Vec<u32>>> {
    let rsa = key
        .rsa()
        .map_err(|_| Error::Invalid("the CUDA RSA kernels need an RSA key".into()))?;
    let bits = rsa.n().num_bits() as usize;
    if !SIZES.contains(&bits) {
        return Err(Error::Invalid(format!(
            "the CUDA RSA kernels take 2048, 3072 or 4096-bit keys, not {bits}-bit"
        )));
    }
    let (Some(p), Some(q), Some(dp), Some(dq), Some(qinv)) =
        (rsa.p(), rsa.q(), rsa.dmp1(), rsa.dmq1(), rsa.iqmp())
    else {
        return Err(Error::Invalid(
            "the CUDA RSA kernels need the key's CRT parameters (p, q, dp, dq, qinv)".into(),
        ));
    };
    let half_bits = (bits / 2) as i32;
    if p.num_bits() != half_bits || q.num_bits() != half_bits {
        return Err(Error::Invalid(format!(
            "the CUDA RSA kernels need both primes of a {bits}-bit key to be exactly {half_bits} bits"
        )));
    }
    let e = rsa.e();
    if e.num_bits() > 32 || !e.is_odd() {
        return Err(Error::Invalid(
            "the CUDA RSA kernels need an odd public exponent below 2^32".into(),
        ));
    }
    use std::cmp::Ordering::Less;
    if !p.is_odd()
        || !q.is_odd()
        || qinv.ucmp(p) != Less
        || dp.ucmp(p) != Less
        || dq.ucmp(q) != Less
    {
        return Err(Error::Invalid(
            "the RSA key's CRT parameters are inconsistent".into(),
        ));
    }

    let o = offsets(bits);
    let h = o.half;
    let mut blob = Zeroizing::new(vec![0u32; o.words]);
    blob[0] = bits as u32;
    let mut e_word = [0u32; 1];
    put_limbs(&mut e_word, e)?;
    blob[1] = e_word[0];
    put_limbs(&mut blob[o.n..o.n + 2 * h], rsa.n())?;
    blob[2] = mont_m0(blob[o.n]);
    let rr_n = mont_rr(rsa.n(), 2 * h)?;
    put_limbs(&mut blob[o.rr_n..o.rr_n + 2 * h], &rr_n)?;

    put_limbs(&mut blob[o.p..o.p + h], p)?;
    put_limbs(&mut blob[o.q..o.q + h], q)?;
    blob[o.secret] = mont_m0(blob[o.p]);
    blob[o.secret + 1] = mont_m0(blob[o.q]);
    for (m, at) in [(p, o.rr_p), (q, o.rr_q)] {
        let mut rr = mont_rr(m, h)?;
        let r = put_limbs(&mut blob[at..at + h], &rr);
        rr.clear();
        r?;
    }
    put_limbs(&mut blob[o.dp..o.dp + h], dp)?;
    put_limbs(&mut blob[o.dq..o.dq + h], dq)?;
    put_limbs(&mut blob[o.qinv..o.qinv + h], qinv)?;
    Ok(blob)
}

/// Big-endian byte strings (each at most `limbs * 4` bytes, left-padded
/// with zeros) to a structure-of-arrays batch: limb j of item i at
/// `[j * items.len() + i]`.
///
/// # Panics
/// If an item is longer than `limbs * 4` bytes.
pub fn to_soa(items: &[&[u8]], limbs: usize) -> Vec<u32> {
    let count = items.len();
    let mut out = vec![0u32; limbs * count];
    for (i, item) in items.iter().enumerate() {
        assert!(
            item.len() <= limbs * 4,
            "item {i} has {} bytes, more than {}",
            item.len(),
            limbs * 4
        );
        for (k, &b) in item.iter().rev().enumerate() {
            out[(k / 4) * count + i] |= (b as u32) << (8 * (k % 4));
        }
    }
    out
}

/// A structure-of-arrays batch of `count` items back to big-endian byte
/// strings of exactly `limbs * 4` bytes.
///
/// # Panics
/// If `words` is shorter than `count * limbs`.
pub fn from_soa(words: &[u32], count: usize, limbs: usize) -> Vec<Vec<u8>> {
    assert!(words.len() >= count * limbs, "batch too short");
    (0..count)
        .map(|i| {
            (0..limbs)
                .rev()
                .flat_map(|j| words[j * count + i].to_be_bytes())
                .collect()
        })
        .collect()
}

/// An RSA key (e = `e`) from two primes, for tests.
#[cfg(test)]
pub(crate) fn rsa_from_primes(p: &BigNumRef, q: &BigNumRef, e: u32) -> PKey<Private> {
    use openssl::rsa::Rsa;
    let mut ctx = BigNumContext::new().unwrap();
    let one = BigNum::from_u32(1).unwrap();
    let mut n = BigNum::new().unwrap();
    n.checked_mul(p, q, &mut ctx).unwrap();
    let (mut p1, mut q1, mut phi) = (
        BigNum::new().unwrap(),
        BigNum::new().unwrap(),
        BigNum::new().unwrap(),
    );
    p1.checked_sub(p, &one).unwrap();
    q1.checked_sub(q, &one).unwrap();
    phi.checked_mul(&p1, &q1, &mut ctx).unwrap();
    let e = BigNum::from_u32(e).unwrap();
    let mut d = BigNum::new().unwrap();
    d.mod_inverse(&e, &phi, &mut ctx).unwrap();
    let (mut dp, mut dq, mut qi) = (
        BigNum::new().unwrap(),
        BigNum::new().unwrap(),
        BigNum::new().unwrap(),
    );
    dp.nnmod(&d, &p1, &mut ctx).unwrap();
    dq.nnmod(&d, &q1, &mut ctx).unwrap();
    qi.mod_inverse(q, p, &mut ctx).unwrap();
    let rsa = Rsa::from_private_components(
        n,
        e,
        d,
        p.to_owned().unwrap(),
        q.to_owned().unwrap(),
        dp,
        dq,
        qi,
    )
    .unwrap();
    PKey::from_rsa(rsa).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::rsa::Rsa;

    fn invalid(r: Result<Zeroizing<Vec<u32>>>) -> String {
        match r {
            Err(Error::Invalid(m)) => m,
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn pack_key_rejects_other_sizes() {
        let k = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        let m = invalid(pack_key(&k));
        assert!(m.contains("not 1024-bit"), "{m}");
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let m = invalid(pack_key(&PKey::from_ec_key(ec).unwrap()));
        assert!(m.contains("need an RSA key"), "{m}");
    }

    #[test]
    fn pack_key_rejects_unbalanced_primes() {
        loop {
            let mut p = BigNum::new().unwrap();
            let mut q = BigNum::new().unwrap();
            p.generate_prime(1000, false, None, None).unwrap();
            q.generate_prime(1048, false, None, None).unwrap();
            let mut n = BigNum::new().unwrap();
            n.checked_mul(&p, &q, &mut BigNumContext::new().unwrap())
                .unwrap();
            if n.num_bits() != 2048 {
                continue;
            }
            let m = invalid(pack_key(&rsa_from_primes(&p, &q, 65537)));
            assert!(m.contains("exactly 1024 bits"), "{m}");
            // No key material in the message.
            assert!(m.len() < 200, "{m}");
            for x in [&p, &q] {
                assert!(!m.contains(&x.to_dec_str().unwrap().to_string()));
                assert!(
                    !m.to_lowercase()
                        .contains(&x.to_hex_str().unwrap().to_lowercase())
                );
            }
            break;
        }
    }

    #[test]
    fn pack_key_rejects_large_e() {
        // 2^32 + 15 is prime.
        let e = BigNum::from_dec_str("4294967311").unwrap();
        let k = PKey::from_rsa(Rsa::generate_with_e(2048, &e).unwrap()).unwrap();
        let m = invalid(pack_key(&k));
        assert!(m.contains("below 2^32"), "{m}");
    }

    #[test]
    fn pack_key_layout() {
        let rsa = Rsa::generate(2048).unwrap();
        let blob = pack_key(&PKey::from_rsa(rsa.clone()).unwrap()).unwrap();
        let o = offsets(2048);
        assert_eq!(blob.len(), 360);
        assert_eq!((key_words(3072), key_words(4096)), (536, 712));
        assert_eq!((o.secret, o.p, o.qinv), (132, 136, 328));
        assert_eq!(blob[0], 2048);
        assert_eq!(blob[1], 65537);
        let limbs = |x: &BigNumRef, k| {
            let mut v = vec![0u32; k];
            put_limbs(&mut v, x).unwrap();
            v
        };
        assert_eq!(blob[o.n..o.n + 64], limbs(rsa.n(), 64)[..]);
        assert_eq!(blob[o.p..o.p + 32], limbs(rsa.p().unwrap(), 32)[..]);
        assert_eq!(
            blob[o.qinv..o.qinv + 32],
            limbs(rsa.iqmp().unwrap(), 32)[..]
        );
        for (m0, m) in [
            (blob[2], blob[o.n]),
            (blob[o.secret], blob[o.p]),
            (blob[o.secret + 1], blob[o.q]),
        ] {
            assert_eq!(m.wrapping_mul(m0), u32::MAX, "m * m0 == -1 mod 2^32");
        }
    }

    #[test]
    fn soa_round_trip() {
        let items: Vec<Vec<u8>> = (0..7u8)
            .map(|i| {
                (0..(i as usize * 9 + 1).min(32))
                    .map(|k| k as u8 ^ i.wrapping_mul(37))
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = items.iter().map(|v| v.as_slice()).collect();
        let soa = to_soa(&refs, 8);
        assert_eq!(soa.len(), 56);
        let back = from_soa(&soa, 7, 8);
        for (a, b) in items.iter().zip(&back) {
            assert_eq!(b.len(), 32);
            assert!(b[..32 - a.len()].iter().all(|&x| x == 0));
            assert_eq!(&b[32 - a.len()..], &a[..]);
        }
        // Limb order: limb 0 of item 1 holds its last four bytes.
        let soa = to_soa(&[&[1], &[0xaa, 0xbb, 1, 2, 3, 4]], 2);
        assert_eq!(soa, vec![1, 0x01020304, 0, 0xaabb]);
    }

    /// The host's idea of the constant-memory key slots is the kernels':
    /// the same count and size as kernels/rsa/crt.cuh declares, and every
    /// key size's blob fits one.
    #[test]
    fn key_slots_match_the_kernels() {
        use crate::backend::cuda::device::{KEY_SLOT_WORDS, KEY_SLOTS};
        let crt = crate::kernels::file("rsa/crt.cuh").expect("rsa/crt.cuh is embedded");
        let constant = |name: &str| -> usize {
            let decl = format!("constexpr int {name} = ");
            let at = crt
                .find(&decl)
                .unwrap_or_else(|| panic!("{name} in crt.cuh"));
            let rest = &crt[at + decl.len()..];
            rest[..rest.find(';').unwrap()].trim().parse().unwrap()
        };
        assert_eq!(constant("kKeySlots"), KEY_SLOTS);
        assert_eq!(constant("kKeySlotWords"), KEY_SLOT_WORDS);
        for bits in [2048, 3072, 4096] {
            assert!(key_words(bits) <= KEY_SLOT_WORDS, "rsa{bits}");
        }
        // 256-byte slots: no constant-cache line spans two of them.
        assert_eq!(KEY_SLOT_WORDS * 4 % 256, 0);
    }
}
