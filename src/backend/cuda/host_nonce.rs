//! Host build of the hedged ECDSA nonce kernels (`kernels/nonce.cu` over
//! `kernels/nonce/rfc6979.cuh`, `kernels/hash/*`), compiled as plain C++ by
//! build.rs (`kernels/host/nonce_host.cpp`): the same per-item code the GPU
//! runs, callable here so tests check it against aws-lc-rs and an independent
//! RFC 6979 implementation on machines without a GPU.
//!
//! Nonces are RFC 6979 section 3.2 with the section 3.6 additional data
//! `k' = seed || be32(i)` (`seed` 32 fresh bytes per batch, `i` the item's
//! index), so they are unique even when key and digest repeat. Numbers are
//! little-endian 32-bit limbs; batches are structure-of-arrays (limb `j` of
//! item `i` at `[j * count + i]`).

unsafe extern "C" {
    fn smx_sha256_host(msg: *const u8, n: u32, out: *mut u8);
    fn smx_sha384_host(msg: *const u8, n: u32, out: *mut u8);
    fn smx_sha512_host(msg: *const u8, n: u32, out: *mut u8);
    fn smx_hmac_sha256_host(key: *const u8, kn: u32, msg: *const u8, n: u32, out: *mut u8);
    fn smx_hmac_sha384_host(key: *const u8, kn: u32, msg: *const u8, n: u32, out: *mut u8);
    fn smx_hmac_sha512_host(key: *const u8, kn: u32, msg: *const u8, n: u32, out: *mut u8);
    fn smx_p256_nonce_host(
        key: *const u32,
        z: *const u32,
        seed: *const u8,
        k: *mut u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_p384_nonce_host(
        key: *const u32,
        z: *const u32,
        seed: *const u8,
        k: *mut u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_p256_rfc6979_host(
        n: *const u32,
        d: *const u32,
        z: *const u32,
        adata: *const u8,
        alen: u32,
        candidates: u32,
        k: *mut u32,
    ) -> u32;
    fn smx_p384_rfc6979_host(
        n: *const u32,
        d: *const u32,
        z: *const u32,
        adata: *const u8,
        alen: u32,
        candidates: u32,
        k: *mut u32,
    ) -> u32;
    fn smx_p256_nonce_candidates() -> u32;
    fn smx_p384_nonce_candidates() -> u32;
}

/// Bytes of fresh randomness per batch (the first part of each item's k').
pub const SEED_BYTES: usize = 32;

/// P-256's group order, little-endian limbs.
pub const P256_ORDER: [u32; 8] = [
    0xfc632551, 0xf3b9cac2, 0xa7179e84, 0xbce6faad, 0xffffffff, 0xffffffff, 0x00000000, 0xffffffff,
];

/// P-384's group order, little-endian limbs.
pub const P384_ORDER: [u32; 12] = [
    0xccc52973, 0xecec196a, 0x48b0a77a, 0x581a0db2, 0xf4372ddf, 0xc7634d81, 0xffffffff, 0xffffffff,
    0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
];

/// The curves the nonce kernels serve: P-256 with HMAC-SHA-256 (program
/// symbol `p256_nonce`), P-384 with HMAC-SHA-384 (`p384_nonce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCurve {
    P256,
    P384,
}

impl NonceCurve {
    /// 32-bit limbs per number (8 or 12).
    pub fn limbs(self) -> usize {
        match self {
            NonceCurve::P256 => 8,
            NonceCurve::P384 => 12,
        }
    }

    /// The group order n, little-endian limbs.
    pub fn order(self) -> &'static [u32] {
        match self {
            NonceCurve::P256 => &P256_ORDER,
            NonceCurve::P384 => &P384_ORDER,
        }
    }

    /// The kernel's symbol in `nonce.cu`.
    pub fn kernel(self) -> &'static str {
        match self {
            NonceCurve::P256 => "p256_nonce",
            NonceCurve::P384 => "p384_nonce",
        }
    }

    /// How many RFC 6979 candidates the kernel evaluates per item (a fixed
    /// count, for constant time): an item reports `ok = 0` only when all are
    /// out of range, probability about 2^-64 (P-256, 2 candidates) or
    /// 2^-194 (P-384, 1 candidate).
    pub fn candidates(self) -> u32 {
        // SAFETY: pure functions without arguments.
        unsafe {
            match self {
                NonceCurve::P256 => smx_p256_nonce_candidates(),
                NonceCurve::P384 => smx_p384_nonce_candidates(),
            }
        }
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("length fits 32 bits")
}

/// SHA-256 of `msg` (host build of `kernels/hash/sha256.cuh`).
pub fn sha256(msg: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: `msg` is readable for its length, `out` writable for 32 bytes.
    unsafe { smx_sha256_host(msg.as_ptr(), len32(msg.len()), out.as_mut_ptr()) };
    out
}

/// SHA-384 of `msg` (host build of `kernels/hash/sha512.cuh`).
pub fn sha384(msg: &[u8]) -> [u8; 48] {
    let mut out = [0u8; 48];
    // SAFETY: as in `sha256`, 48 bytes out.
    unsafe { smx_sha384_host(msg.as_ptr(), len32(msg.len()), out.as_mut_ptr()) };
    out
}

/// SHA-512 of `msg` (host build of `kernels/hash/sha512.cuh`).
pub fn sha512(msg: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    // SAFETY: as in `sha256`, 64 bytes out.
    unsafe { smx_sha512_host(msg.as_ptr(), len32(msg.len()), out.as_mut_ptr()) };
    out
}

/// HMAC-SHA-256 of `msg` under `key` (any length; host build of
/// `kernels/hash/hmac.cuh`).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: both inputs readable for their lengths, 32 bytes out.
    unsafe {
        smx_hmac_sha256_host(
            key.as_ptr(),
            len32(key.len()),
            msg.as_ptr(),
            len32(msg.len()),
            out.as_mut_ptr(),
        )
    };
    out
}

/// HMAC-SHA-384 of `msg` under `key`.
pub fn hmac_sha384(key: &[u8], msg: &[u8]) -> [u8; 48] {
    let mut out = [0u8; 48];
    // SAFETY: as in `hmac_sha256`, 48 bytes out.
    unsafe {
        smx_hmac_sha384_host(
            key.as_ptr(),
            len32(key.len()),
            msg.as_ptr(),
            len32(msg.len()),
            out.as_mut_ptr(),
        )
    };
    out
}

/// HMAC-SHA-512 of `msg` under `key`.
pub fn hmac_sha512(key: &[u8], msg: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    // SAFETY: as in `hmac_sha256`, 64 bytes out.
    unsafe {
        smx_hmac_sha512_host(
            key.as_ptr(),
            len32(key.len()),
            msg.as_ptr(),
            len32(msg.len()),
            out.as_mut_ptr(),
        )
    };
    out
}

/// What the nonce kernel writes for a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nonces {
    /// The nonces, structure-of-arrays (limb `j` of item `i` at
    /// `[j * count + i]`), each in [1, n-1]; zero where `ok` is 0.
    pub k: Vec<u32>,
    /// 1 per item, or 0 when no candidate was valid: redo it on the CPU.
    pub ok: Vec<u32>,
}

/// The nonce kernel's ABI run on the host, item by item with the kernel's
/// own per-item code: `key` is the key blob (its first L words are d),
/// `z` holds bits2int(digest) per item (SoA, truncated to qlen bits, not
/// reduced), `seed` the batch's fresh randomness.
pub fn nonces(curve: NonceCurve, key: &[u32], z: &[u32], seed: &[u8; SEED_BYTES]) -> Nonces {
    let l = curve.limbs();
    assert!(key.len() >= l, "key blob shorter than the scalar");
    assert_eq!(z.len() % l, 0, "z is not a whole number of items");
    let count = len32(z.len() / l);
    let mut k = vec![0u32; z.len()];
    let mut ok = vec![0u32; count as usize];
    let f = match curve {
        NonceCurve::P256 => smx_p256_nonce_host,
        NonceCurve::P384 => smx_p384_nonce_host,
    };
    // SAFETY: key holds at least L words; z and k hold L * count words, ok
    // count words, seed 32 bytes, as the ABI requires.
    unsafe {
        f(
            key.as_ptr(),
            z.as_ptr(),
            seed.as_ptr(),
            k.as_mut_ptr(),
            ok.as_mut_ptr(),
            count,
        )
    };
    Nonces { k, ok }
}

/// One RFC 6979 nonce with arbitrary (possibly empty) additional data:
/// d and z as L limbs, `candidates` candidates evaluated, and the group
/// order `order` (None: the curve's own; tests pass another order of the
/// same bit length to reach the retry path). None when no candidate was in
/// [1, n-1].
pub fn rfc6979(
    curve: NonceCurve,
    order: Option<&[u32]>,
    d: &[u32],
    z: &[u32],
    adata: &[u8],
    candidates: u32,
) -> Option<Vec<u32>> {
    let l = curve.limbs();
    assert_eq!(d.len(), l);
    assert_eq!(z.len(), l);
    if let Some(n) = order {
        assert_eq!(n.len(), l);
    }
    let n = order.map_or(std::ptr::null(), |n| n.as_ptr());
    let mut k = vec![0u32; l];
    let f = match curve {
        NonceCurve::P256 => smx_p256_rfc6979_host,
        NonceCurve::P384 => smx_p384_rfc6979_host,
    };
    // SAFETY: n (or null), d, z and k hold L words; adata its length.
    let ok = unsafe {
        f(
            n,
            d.as_ptr(),
            z.as_ptr(),
            adata.as_ptr(),
            len32(adata.len()),
            candidates,
            k.as_mut_ptr(),
        )
    };
    (ok == 1).then_some(k)
}

/// Big-endian bytes to little-endian limbs (`b.len()` a multiple of 4).
pub fn limbs_from_be(b: &[u8]) -> Vec<u32> {
    b.rchunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4-byte chunk")))
        .collect()
}

/// Little-endian limbs to big-endian bytes.
pub fn limbs_to_be(x: &[u32]) -> Vec<u8> {
    x.iter().rev().flat_map(|w| w.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::{digest, hmac};

    /// Deterministic test randomness (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn seed(&mut self) -> [u8; SEED_BYTES] {
            self.bytes(SEED_BYTES).try_into().unwrap()
        }
    }

    fn hmac_alg(curve: NonceCurve) -> hmac::Algorithm {
        match curve {
            NonceCurve::P256 => hmac::HMAC_SHA256,
            NonceCurve::P384 => hmac::HMAC_SHA384,
        }
    }

    fn lengths() -> Vec<usize> {
        let mut v: Vec<usize> = (0..=300).collect();
        v.extend([511, 512, 513, 1000]);
        v
    }

    #[test]
    fn sha2_matches_aws_lc() {
        let mut rng = Rng(0x5eed_0001);
        for n in lengths() {
            let m = rng.bytes(n);
            assert_eq!(
                sha256(&m)[..],
                *digest::digest(&digest::SHA256, &m).as_ref(),
                "sha256 len {n}"
            );
            assert_eq!(
                sha384(&m)[..],
                *digest::digest(&digest::SHA384, &m).as_ref(),
                "sha384 len {n}"
            );
            assert_eq!(
                sha512(&m)[..],
                *digest::digest(&digest::SHA512, &m).as_ref(),
                "sha512 len {n}"
            );
        }
    }

    #[test]
    fn hmac_matches_aws_lc() {
        let mut rng = Rng(0x5eed_0002);
        let key_lens = [0, 1, 31, 32, 33, 48, 63, 64, 65, 100, 127, 128, 129, 200];
        let msg_lens = [
            0, 1, 31, 32, 33, 55, 56, 63, 64, 65, 111, 112, 127, 128, 129, 183, 191, 192, 255, 300,
        ];
        for kn in key_lens {
            for mn in msg_lens {
                let key = rng.bytes(kn);
                let msg = rng.bytes(mn);
                let want = |alg| hmac::sign(&hmac::Key::new(alg, &key), &msg);
                assert_eq!(
                    hmac_sha256(&key, &msg)[..],
                    *want(hmac::HMAC_SHA256).as_ref(),
                    "hmac-sha256 key {kn} msg {mn}"
                );
                assert_eq!(
                    hmac_sha384(&key, &msg)[..],
                    *want(hmac::HMAC_SHA384).as_ref(),
                    "hmac-sha384 key {kn} msg {mn}"
                );
                assert_eq!(
                    hmac_sha512(&key, &msg)[..],
                    *want(hmac::HMAC_SHA512).as_ref(),
                    "hmac-sha512 key {kn} msg {mn}"
                );
            }
        }
    }

    /// Independent RFC 6979 (section 3.2 with section 3.6's k'), on
    /// aws-lc-rs HMAC and big-endian byte strings, for hlen == qlen. Returns
    /// k and how many candidates it took, or None past `max` candidates.
    fn reference_k(
        alg: hmac::Algorithm,
        n: &[u8],
        d: &[u8],
        z: &[u8],
        adata: &[u8],
        max: usize,
    ) -> Option<(Vec<u8>, usize)> {
        let mac = |k: &[u8], parts: &[&[u8]]| -> Vec<u8> {
            let mut ctx = hmac::Context::with_key(&hmac::Key::new(alg, k));
            for p in parts {
                ctx.update(p);
            }
            ctx.sign().as_ref().to_vec()
        };
        // bits2octets(h1): z < 2^qlen < 2n, so one subtraction reduces it.
        let h = if z >= n {
            let mut out = vec![0u8; n.len()];
            let mut borrow = 0i32;
            for i in (0..n.len()).rev() {
                let t = z[i] as i32 - n[i] as i32 - borrow;
                out[i] = t.rem_euclid(256) as u8;
                borrow = (t < 0) as i32;
            }
            out
        } else {
            z.to_vec()
        };
        let mut v = vec![1u8; n.len()];
        let mut k = vec![0u8; n.len()];
        k = mac(&k, &[&v, &[0], d, &h, adata]);
        v = mac(&k, &[&v]);
        k = mac(&k, &[&v, &[1], d, &h, adata]);
        v = mac(&k, &[&v]);
        for tries in 1..=max {
            v = mac(&k, &[&v]);
            if v.iter().any(|&b| b != 0) && v.as_slice() < n {
                return Some((v, tries));
            }
            k = mac(&k, &[&v, &[0]]);
            v = mac(&k, &[&v]);
        }
        None
    }

    /// A uniformly random scalar in [1, n-1] (rejection sampling).
    fn random_scalar(rng: &mut Rng, n: &[u8]) -> Vec<u8> {
        loop {
            let d = rng.bytes(n.len());
            if d.iter().any(|&b| b != 0) && d.as_slice() < n {
                return d;
            }
        }
    }

    fn adata(seed: &[u8; SEED_BYTES], i: u32) -> Vec<u8> {
        let mut a = seed.to_vec();
        a.extend(i.to_be_bytes());
        a
    }

    fn hex_limbs(h: &str) -> Vec<u32> {
        limbs_from_be(&hex::decode(h).unwrap())
    }

    /// RFC 6979 appendix A.2.5 (P-256, SHA-256) and A.2.6 (P-384, SHA-384):
    /// the published k for messages "sample" and "test" (no additional data).
    #[test]
    fn rfc6979_appendix_a2_vectors() {
        let p256_x = "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721";
        let p384_x = "6B9D3DAD2E1B8C1C05B19875B6659F4DE23C3B667BF297BA9AA47740787137D8\
                      96D5724E4C70A825F872C9EA60D2EDF5";
        let cases = [
            // A.2.5, With SHA-256, message = "sample" / "test".
            (
                NonceCurve::P256,
                p256_x,
                "sample",
                "A6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60",
            ),
            (
                NonceCurve::P256,
                p256_x,
                "test",
                "D16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0",
            ),
            // A.2.6, With SHA-384, message = "sample" / "test".
            (
                NonceCurve::P384,
                p384_x,
                "sample",
                "94ED910D1A099DAD3254E9242AE85ABDE4BA15168EAF0CA87A555FD56D10FBCA\
                 2907E3E83BA95368623B8C4686915CF9",
            ),
            (
                NonceCurve::P384,
                p384_x,
                "test",
                "015EE46A5BF88773ED9123A5AB0807962D193719503C527B031B4C2D225092AD\
                 A71F4A459BC0DA98ADB95837DB8312EA",
            ),
        ];
        for (curve, x, msg, want) in cases {
            let h = match curve {
                NonceCurve::P256 => sha256(msg.as_bytes()).to_vec(),
                NonceCurve::P384 => sha384(msg.as_bytes()).to_vec(),
            };
            let k = rfc6979(
                curve,
                None,
                &hex_limbs(x),
                &limbs_from_be(&h),
                &[],
                curve.candidates(),
            )
            .expect("valid k");
            assert_eq!(k, hex_limbs(want), "{curve:?} {msg}");
            // The reference agrees too, so it can vouch for the hedged cases.
            let order = limbs_to_be(curve.order());
            let (rk, _) = reference_k(
                hmac_alg(curve),
                &order,
                &hex::decode(x).unwrap(),
                &h,
                &[],
                8,
            )
            .unwrap();
            assert_eq!(limbs_from_be(&rk), k);
        }
    }

    /// The kernel ABI (SoA batch, k' = seed || be32(i)) against the
    /// reference, on random keys, digests and seeds.
    #[test]
    fn hedged_nonces_match_reference() {
        let mut rng = Rng(0x5eed_0003);
        for curve in [NonceCurve::P256, NonceCurve::P384] {
            let l = curve.limbs();
            let order = limbs_to_be(curve.order());
            for _batch in 0..4 {
                let count = 9usize;
                let d = random_scalar(&mut rng, &order);
                // The key blob carries more than d: only its first L words count.
                let mut key = limbs_from_be(&d);
                key.extend([0xdead_beef, 0x0123_4567]);
                let zs: Vec<Vec<u8>> = (0..count).map(|_| rng.bytes(order.len())).collect();
                let mut z = vec![0u32; l * count];
                for (i, zi) in zs.iter().enumerate() {
                    for (j, w) in limbs_from_be(zi).into_iter().enumerate() {
                        z[j * count + i] = w;
                    }
                }
                let seed = rng.seed();
                let out = nonces(curve, &key, &z, &seed);
                assert_eq!(out.ok, vec![1; count]);
                let mut seen = std::collections::HashSet::new();
                for (i, zi) in zs.iter().enumerate() {
                    let k: Vec<u32> = (0..l).map(|j| out.k[j * count + i]).collect();
                    let kb = limbs_to_be(&k);
                    assert!(kb.iter().any(|&b| b != 0) && kb < order, "k out of range");
                    let (want, _) =
                        reference_k(hmac_alg(curve), &order, &d, zi, &adata(&seed, i as u32), 8)
                            .unwrap();
                    assert_eq!(kb, want, "{curve:?} item {i}");
                    assert!(seen.insert(kb), "repeated k");
                }
            }
        }
    }

    /// Repeating d and z: every item index and every seed still gives a
    /// different k.
    #[test]
    fn nonces_differ_by_index_and_seed() {
        let mut rng = Rng(0x5eed_0004);
        for curve in [NonceCurve::P256, NonceCurve::P384] {
            let l = curve.limbs();
            let order = limbs_to_be(curve.order());
            let key = limbs_from_be(&random_scalar(&mut rng, &order));
            let zi = limbs_from_be(&rng.bytes(order.len()));
            let count = 16usize;
            let mut z = vec![0u32; l * count];
            for i in 0..count {
                for j in 0..l {
                    z[j * count + i] = zi[j];
                }
            }
            let mut seen = std::collections::HashSet::new();
            for _ in 0..3 {
                let out = nonces(curve, &key, &z, &rng.seed());
                assert!(out.ok.iter().all(|&o| o == 1));
                for i in 0..count {
                    let k: Vec<u32> = (0..l).map(|j| out.k[j * count + i]).collect();
                    assert!(seen.insert(k), "{curve:?}: repeated k");
                }
            }
            // The same seed reproduces the batch (it is RFC 6979 underneath).
            let seed = rng.seed();
            assert_eq!(
                nonces(curve, &key, &z, &seed),
                nonces(curve, &key, &z, &seed)
            );
        }
    }

    /// bits2octets reduces z mod n: z = n + 5 and z = 2^256 - 1 (P-256) give
    /// the nonce of z mod n, which the reference confirms.
    #[test]
    fn digest_at_or_above_order_is_reduced() {
        let mut rng = Rng(0x5eed_0005);
        let curve = NonceCurve::P256;
        let order = limbs_to_be(curve.order());
        let n = curve.order();
        let d = random_scalar(&mut rng, &order);
        let seed = rng.seed();
        let mut n_plus_5 = n.to_vec();
        n_plus_5[0] += 5;
        let all_ones = vec![u32::MAX; 8];
        // The same numbers mod n, computed here: 5 and 2^256 - 1 - n.
        let mut five = vec![0u32; 8];
        five[0] = 5;
        let mut ones_mod_n = vec![0u32; 8];
        let mut borrow = 0u64;
        for j in 0..8 {
            let t = (u32::MAX as u64).wrapping_sub(n[j] as u64 + borrow);
            ones_mod_n[j] = t as u32;
            borrow = t >> 63;
        }
        for (z, reduced) in [(n_plus_5, five), (all_ones, ones_mod_n)] {
            let z_soa = z.clone();
            let out = nonces(curve, &limbs_from_be(&d), &z_soa, &seed);
            assert_eq!(out.ok, vec![1]);
            let again = nonces(curve, &limbs_from_be(&d), &reduced, &seed);
            assert_eq!(out, again, "z and z mod n give different nonces");
            let (want, _) = reference_k(
                hmac::HMAC_SHA256,
                &order,
                &d,
                &limbs_to_be(&z),
                &adata(&seed, 0),
                8,
            )
            .unwrap();
            assert_eq!(limbs_to_be(&out.k), want);
        }
    }

    /// The candidate loop: with an order of the same bit length but far
    /// below 2^qlen, candidates are often out of range, so the retry steps
    /// (K = HMAC_K(V || 0x00), V = HMAC_K(V)) and the masked selection of
    /// the first valid one run, and ok = 0 when all fail.
    #[test]
    fn retries_pick_first_valid_candidate() {
        let mut rng = Rng(0x5eed_0006);
        for curve in [NonceCurve::P256, NonceCurve::P384] {
            let l = curve.limbs();
            // n' = 0xC000...: 1/4 of the candidates are >= n'.
            let mut small = vec![0u8; 4 * l];
            small[0] = 0xc0;
            let tail = rng.bytes(4 * l - 1);
            small[1..].copy_from_slice(&tail);
            small[1] &= 0x3f;
            let n = limbs_from_be(&small);
            let (mut retried, mut failed) = (0, 0);
            for _ in 0..40 {
                let d = random_scalar(&mut rng, &small);
                let z = rng.bytes(4 * l);
                let alen = rng.next() as usize % 50;
                let ad = rng.bytes(alen);
                for candidates in 1..=3u32 {
                    let got = rfc6979(
                        curve,
                        Some(&n),
                        &limbs_from_be(&d),
                        &limbs_from_be(&z),
                        &ad,
                        candidates,
                    );
                    let want =
                        reference_k(hmac_alg(curve), &small, &d, &z, &ad, candidates as usize);
                    assert_eq!(
                        got.map(|k| limbs_to_be(&k)),
                        want.as_ref().map(|w| w.0.clone())
                    );
                    match want {
                        Some((_, tries)) if tries > 1 => retried += 1,
                        None => failed += 1,
                        _ => {}
                    }
                }
            }
            assert!(retried > 0 && failed > 0, "{curve:?}: {retried} {failed}");
        }
    }
}
