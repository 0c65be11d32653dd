//! Buffer layouts of the ECDSA kernels (`kernels/ecdsa.cu`): what the CUDA
//! host side uploads and reads back.
//!
//! Every big number is `L` 32-bit little-endian limbs, `L` = 8 (P-256) or 12
//! (P-384). Batches are structure-of-arrays: limb `j` of item `i` at
//! `[j * count + i]` ([`to_soa`], [`from_soa`]). One key per batch.
//!
//! - key blob ([`pack_key`], [`key_words`] = 3 L + [`table_words`] words):
//!   `d`, then the public point `Qx`, `Qy` (affine), each a plain integer of
//!   L limbs, then the comb table of Q, laid out as G's below (public; the
//!   check kernel computes u1 G + u2 Q as one comb pass over both tables).
//!   The kernels convert `d` to Montgomery form themselves.
//! - comb table ([`comb_table`], [`table_words`]): the fixed-base comb for G
//!   with 4 teeth and 8 combs (spacing 8 for P-256, 12 for P-384): 128
//!   entries, entry `c * 16 + digit` (comb `c`, digit 0..15) at
//!   `[(c * 16 + digit) * 2L ..]`, x then y, affine, in Montgomery form mod p
//!   (times 2^(32 L)). Entry `c * 16 + digit` is the sum over the set bits `t`
//!   of `digit` of `2^((4c + t) * spacing) G`; digit 0 (O) is stored as zeros.
//!   2048 words (8 KiB) for P-256, 3072 words (12 KiB) for P-384.
//! - `z` ([`z_from_digest`]): bits2int(digest), L limbs, not reduced mod n.
//! - `k`: the nonces, in [1, n-1]. `r`, `s`: L limbs each; `ok`: one word.

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::EcGroup;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The curves the ECDSA kernels serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
}

impl Curve {
    /// 32-bit limbs per number: 8 or 12.
    pub fn limbs(self) -> usize {
        match self {
            Curve::P256 => 8,
            Curve::P384 => 12,
        }
    }

    /// Bit length of the group order n (qlen of RFC 6979).
    pub fn bits(self) -> usize {
        self.limbs() * 32
    }

    /// Bytes of one big-endian coordinate or scalar.
    pub fn field_len(self) -> usize {
        self.limbs() * 4
    }

    /// The openssl curve name.
    pub fn nid(self) -> Nid {
        match self {
            Curve::P256 => Nid::X9_62_PRIME256V1,
            Curve::P384 => Nid::SECP384R1,
        }
    }

    /// The kernel name prefix: `p256` or `p384`.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "p256",
            Curve::P384 => "p384",
        }
    }
}

/// Words in the key blob: 3 L (d, Qx, Qy).
pub fn key_words(curve: Curve) -> usize {
    3 * curve.limbs() + table_words(curve)
}

/// Words in the comb table: 128 entries of 2 L words.
pub fn table_words(curve: Curve) -> usize {
    128 * 2 * curve.limbs()
}

/// The big-endian bytes `be` (at most 4 L of them) as L little-endian limbs.
pub fn limbs_from_be(be: &[u8], limbs: usize) -> Vec<u32> {
    assert!(be.len() <= 4 * limbs, "number wider than {limbs} limbs");
    let mut padded = vec![0u8; 4 * limbs];
    padded[4 * limbs - be.len()..].copy_from_slice(be);
    padded
        .chunks_exact(4)
        .rev()
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Little-endian limbs as fixed-width big-endian bytes (4 per limb).
pub fn limbs_to_be(limbs: &[u32]) -> Vec<u8> {
    limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect()
}

/// The key blob for the kernels: d, Qx, Qy as L limbs each and Q's comb
/// table (module docs; the table takes one batched inversion and ~200
/// point operations on the host, 2-6 ms, once per key upload). Fails when
/// the key is not an EC key on `curve`.
pub fn pack_key(curve: Curve, key: &PKey<Private>) -> Result<Zeroizing<Vec<u32>>> {
    let bad = |why: &str| Error::Invalid(format!("{} key for the GPU: {why}", curve.name()));
    let ec = key.ec_key().map_err(|_| bad("not an EC key"))?;
    if ec.group().curve_name() != Some(curve.nid()) {
        return Err(bad("key is on another curve"));
    }
    let l = curve.limbs();
    let group = EcGroup::from_curve_name(curve.nid()).map_err(|e| bad(&e.to_string()))?;
    let mut ctx = BigNumContext::new().map_err(|e| bad(&e.to_string()))?;
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .map_err(|e| bad(&e.to_string()))?;
    let d = Zeroizing::new(ec.private_key().to_vec());
    let (qx, qy) = (limbs_from_be(&x.to_vec(), l), limbs_from_be(&y.to_vec(), l));
    let table = super::host_ec::comb_table_for(curve, &qx, &qy);
    let mut blob = Zeroizing::new(Vec::with_capacity(key_words(curve)));
    blob.extend_from_slice(&Zeroizing::new(limbs_from_be(&d, l)));
    blob.extend(qx);
    blob.extend(qy);
    blob.extend(table);
    Ok(blob)
}

/// The comb table for G (layout in the module docs), built by the kernels'
/// host code (`smx_{C}_comb_table`). Deterministic; build it once at start:
/// it takes a few milliseconds (measured 2 ms for P-256, 6 ms for P-384 on
/// a 2-core machine: ~200 point operations and one batched inversion).
pub fn comb_table(curve: Curve) -> Vec<u32> {
    super::host_ec::comb_table(curve)
}

/// bits2int (RFC 6979, 2.3.2) of a digest of any length: the leftmost qlen
/// bits as an integer (qlen = the bit length of n), as L limbs. Not reduced
/// mod n (the kernels do that).
pub fn z_from_digest(curve: Curve, digest: &[u8]) -> Vec<u32> {
    let qlen = curve.bits();
    let l = curve.limbs();
    if digest.len() * 8 <= qlen {
        return limbs_from_be(digest, l);
    }
    // keep the leftmost qlen bits: whole bytes, then shift right by the rest
    let nbytes = qlen.div_ceil(8);
    let shift = nbytes * 8 - qlen;
    let mut v = limbs_from_be(&digest[..nbytes], l.max(nbytes.div_ceil(4)));
    if shift > 0 {
        for j in 0..v.len() {
            let hi = v.get(j + 1).copied().unwrap_or(0);
            v[j] = (v[j] >> shift) | (hi << (32 - shift));
        }
    }
    v.truncate(l);
    v
}

/// Structure-of-arrays: `items` (each `limbs` words) laid out limb-major,
/// limb `j` of item `i` at `[j * items.len() + i]`.
pub fn to_soa<T: AsRef<[u32]>>(items: &[T], limbs: usize) -> Vec<u32> {
    let count = items.len();
    let mut out = vec![0u32; limbs * count];
    for (i, it) in items.iter().enumerate() {
        let it = it.as_ref();
        assert_eq!(it.len(), limbs, "item {i} has {} limbs", it.len());
        for (j, w) in it.iter().enumerate() {
            out[j * count + i] = *w;
        }
    }
    out
}

/// The inverse of [`to_soa`]: `count` items of `limbs` words.
pub fn from_soa(soa: &[u32], limbs: usize, count: usize) -> Vec<Vec<u32>> {
    assert_eq!(soa.len(), limbs * count);
    (0..count)
        .map(|i| (0..limbs).map(|j| soa[j * count + i]).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits2int_takes_leftmost_bits() {
        let d: Vec<u8> = (1..=64).collect();
        // longer than qlen: first 32 / 48 bytes
        assert_eq!(z_from_digest(Curve::P256, &d), limbs_from_be(&d[..32], 8));
        assert_eq!(z_from_digest(Curve::P384, &d), limbs_from_be(&d[..48], 12));
        // shorter: the whole digest as an integer
        assert_eq!(
            z_from_digest(Curve::P384, &d[..32]),
            limbs_from_be(&d[..32], 12)
        );
        assert_eq!(
            z_from_digest(Curve::P256, &d[..20]),
            limbs_from_be(&d[..20], 8)
        );
    }

    #[test]
    fn soa_round_trips() {
        let items: Vec<Vec<u32>> = (0..5)
            .map(|i| (0..8).map(|j| i * 100 + j).collect())
            .collect();
        let soa = to_soa(&items, 8);
        assert_eq!(soa[3 * 5 + 2], 203);
        assert_eq!(from_soa(&soa, 8, 5), items);
    }

    #[test]
    fn be_limbs_round_trip() {
        let be: Vec<u8> = (0..48).collect();
        assert_eq!(limbs_to_be(&limbs_from_be(&be, 12)), be);
        assert_eq!(limbs_from_be(&[1, 2], 8)[0], 0x0102);
    }

    #[test]
    fn pack_key_rejects_other_curves() {
        let g = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
        let k = PKey::from_ec_key(openssl::ec::EcKey::generate(&g).unwrap()).unwrap();
        assert!(pack_key(Curve::P256, &k).is_err());
        assert_eq!(
            pack_key(Curve::P384, &k).unwrap().len(),
            key_words(Curve::P384)
        );
    }
}
