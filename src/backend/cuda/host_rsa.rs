//! Host build of the RSA kernels (`kernels/host/rsa_host.cpp`), for tests:
//! the same per-item functions the CUDA kernels run (`kernels/rsa/crt.cuh`),
//! compiled as plain C++ and called item by item, and the cooperative
//! kernels' per-thread code (`kernels/rsa/coop.cuh`) run a warp at a time
//! with every lane emulated. Layouts: [`super::rsa_layout`].

use crate::error::{Error, Result};

use super::rsa_layout::{SIZES, key_words};

unsafe extern "C" {
    fn smx_rsa_sign_host(
        bits: u32,
        key: *const u32,
        input: *const u32,
        out: *mut u32,
        count: u32,
    ) -> i32;
    fn smx_rsa_sign_emu_host(
        bits: u32,
        key: *const u32,
        input: *const u32,
        out: *mut u32,
        count: u32,
    ) -> i32;
    fn smx_rsa_modexp_emu_host(
        limbs: u32,
        m: *const u32,
        m0: u32,
        rr: *const u32,
        base: *const u32,
        exp: *const u32,
        out: *mut u32,
    ) -> i32;
    fn smx_rsa_sign_wide_emu_host(
        bits: u32,
        key: *const u32,
        input: *const u32,
        out: *mut u32,
        count: u32,
    ) -> i32;
    fn smx_rsa_modexp_wide_emu_host(
        limbs: u32,
        m: *const u32,
        m0: u32,
        rr: *const u32,
        base: *const u32,
        exp: *const u32,
        out: *mut u32,
    ) -> i32;
    fn smx_rsa_sign_coop_host(
        bits: u32,
        lanes: u32,
        key: *const u32,
        input: *const u32,
        out: *mut u32,
        count: u32,
    ) -> i32;
    fn smx_rsa_modexp_coop_host(
        limbs: u32,
        lanes: u32,
        m: *const u32,
        m0: u32,
        rr: *const u32,
        base: *const u32,
        exp: *const u32,
        out: *mut u32,
    ) -> i32;
    fn smx_rsa_check_host(
        bits: u32,
        key: *const u32,
        sig: *const u32,
        expected: *const u32,
        ok: *mut u32,
        count: u32,
    ) -> i32;
    fn smx_rsa_modexp_host(
        limbs: u32,
        m: *const u32,
        m0: u32,
        rr: *const u32,
        base: *const u32,
        exp: *const u32,
        out: *mut u32,
    ) -> i32;
}

/// The key size a packed key blob is for, after checking its length.
fn key_bits(key: &[u32]) -> Result<usize> {
    let bits = *key
        .first()
        .ok_or_else(|| Error::Invalid("empty RSA key blob".into()))? as usize;
    if !SIZES.contains(&bits) || key.len() != key_words(bits) {
        return Err(Error::Invalid(format!(
            "RSA key blob of {} words is not a packed 2048/3072/4096-bit key",
            key.len()
        )));
    }
    Ok(bits)
}

fn batch_len(what: &str, words: &[u32], count: usize, limbs: usize) -> Result<u32> {
    if words.len() != count * limbs {
        return Err(Error::Invalid(format!(
            "{what}: {} words for {count} items of {limbs} limbs",
            words.len()
        )));
    }
    u32::try_from(count).map_err(|_| Error::Invalid(format!("{what}: too many items")))
}

/// Which host build of the kernels' arithmetic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCode {
    /// The one-thread kernels' code with the portable 64-bit fallbacks of
    /// `kernels/rsa/arith.cuh` (fast; same results).
    Portable,
    /// The one-thread kernels' code as the device runs it: every PTX
    /// carry-chain instruction emulated (`kernels/host/rsa_emu_host.cpp`).
    PtxEmulated,
    /// `rsa_wide.cu`'s code as the device runs it (the `wide` mapping's
    /// even/odd Montgomery rows), every PTX instruction emulated.
    PtxEmulatedWide,
    /// The cooperative kernels' code with this many threads per CRT half
    /// (8 or 16), a whole warp emulated.
    Coop(u32),
}

/// `rsa{B}_sign` on the host: `count` items, structure-of-arrays, each < n.
pub fn sign(key: &[u32], input: &[u32], count: usize) -> Result<Vec<u32>> {
    sign_with(HostCode::Portable, key, input, count)
}

/// [`sign`] through the chosen host build.
pub fn sign_with(code: HostCode, key: &[u32], input: &[u32], count: usize) -> Result<Vec<u32>> {
    let bits = key_bits(key)?;
    let n = batch_len("input", input, count, bits / 32)?;
    let mut out = vec![0u32; input.len()];
    let (key, input, outp) = (key.as_ptr(), input.as_ptr(), out.as_mut_ptr());
    let bits = bits as u32;
    // SAFETY: the key has the length its size needs, input and out hold
    // count items of bits/32 limbs; coop lanes are checked.
    let rc = unsafe {
        match code {
            HostCode::Portable => smx_rsa_sign_host(bits, key, input, outp, n),
            HostCode::PtxEmulated => smx_rsa_sign_emu_host(bits, key, input, outp, n),
            HostCode::PtxEmulatedWide => smx_rsa_sign_wide_emu_host(bits, key, input, outp, n),
            HostCode::Coop(lanes) => {
                smx_rsa_sign_coop_host(bits, coop_lanes(lanes)?, key, input, outp, n)
            }
        }
    };
    assert_eq!(rc, 0);
    Ok(out)
}

/// Threads per CRT half the cooperative kernels come in
/// (`rsa{B}_sign_coop{T}`).
pub const COOP_LANES: [u32; 2] = [8, 16];

fn coop_lanes(lanes: u32) -> Result<u32> {
    if COOP_LANES.contains(&lanes) {
        Ok(lanes)
    } else {
        Err(Error::Invalid(format!(
            "{lanes} threads per CRT half: the cooperative kernels take 8 or 16"
        )))
    }
}

/// `rsa{B}_sign_coop{lanes}` on the host: the same contract as [`sign`],
/// computed by groups of 2 x `lanes` emulated threads.
pub fn sign_coop(key: &[u32], input: &[u32], count: usize, lanes: u32) -> Result<Vec<u32>> {
    sign_with(HostCode::Coop(lanes), key, input, count)
}

/// `rsa{B}_check` on the host: 1 where sig < n and sig^e mod n == expected.
pub fn check(key: &[u32], sig: &[u32], expected: &[u32], count: usize) -> Result<Vec<u32>> {
    let bits = key_bits(key)?;
    let n = batch_len("signatures", sig, count, bits / 32)?;
    batch_len("expected", expected, count, bits / 32)?;
    let mut ok = vec![0u32; count];
    // SAFETY: lengths checked above.
    let rc = unsafe {
        smx_rsa_check_host(
            bits as u32,
            key.as_ptr(),
            sig.as_ptr(),
            expected.as_ptr(),
            ok.as_mut_ptr(),
            n,
        )
    };
    assert_eq!(rc, 0);
    Ok(ok)
}

/// The constant-time exponentiation of the CRT halves on its own:
/// base^exp mod m, all little-endian limbs of the same count (32, 48 or
/// 64). m must be odd with its top bit set, m0 = -m^-1 mod 2^32, rr =
/// 2^(64 * limbs) mod m; base may be any value of that many limbs.
pub fn modexp(m: &[u32], m0: u32, rr: &[u32], base: &[u32], exp: &[u32]) -> Result<Vec<u32>> {
    modexp_with(HostCode::Portable, m, m0, rr, base, exp)
}

/// [`modexp`] by the cooperative kernels' code, `lanes` threads per number.
pub fn modexp_coop(
    lanes: u32,
    m: &[u32],
    m0: u32,
    rr: &[u32],
    base: &[u32],
    exp: &[u32],
) -> Result<Vec<u32>> {
    modexp_with(HostCode::Coop(lanes), m, m0, rr, base, exp)
}

/// [`modexp`] through the chosen host build.
pub fn modexp_with(
    code: HostCode,
    m: &[u32],
    m0: u32,
    rr: &[u32],
    base: &[u32],
    exp: &[u32],
) -> Result<Vec<u32>> {
    let limbs = m.len();
    if ![32, 48, 64].contains(&limbs)
        || [rr.len(), base.len(), exp.len()] != [limbs; 3]
        || m[0] & 1 == 0
        || m[limbs - 1] >> 31 == 0
    {
        return Err(Error::Invalid(
            "modexp: needs 32, 48 or 64 limbs everywhere and an odd modulus with its top bit set"
                .into(),
        ));
    }
    let mut out = vec![0u32; limbs];
    let one_thread = match code {
        HostCode::Portable => smx_rsa_modexp_host,
        HostCode::PtxEmulated => smx_rsa_modexp_emu_host,
        HostCode::PtxEmulatedWide => smx_rsa_modexp_wide_emu_host,
        HostCode::Coop(lanes) => {
            let lanes = coop_lanes(lanes)?;
            // SAFETY: every buffer holds `limbs` words; lanes is checked.
            let rc = unsafe {
                smx_rsa_modexp_coop_host(
                    limbs as u32,
                    lanes,
                    m.as_ptr(),
                    m0,
                    rr.as_ptr(),
                    base.as_ptr(),
                    exp.as_ptr(),
                    out.as_mut_ptr(),
                )
            };
            assert_eq!(rc, 0);
            return Ok(out);
        }
    };
    // SAFETY: every buffer holds `limbs` words.
    let rc = unsafe {
        one_thread(
            limbs as u32,
            m.as_ptr(),
            m0,
            rr.as_ptr(),
            base.as_ptr(),
            exp.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use openssl::bn::{BigNum, BigNumContext, BigNumRef};
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::{Padding, Rsa};

    use super::super::rsa_layout::{
        from_soa, mont_m0, mont_rr, pack_key, put_limbs, rsa_from_primes, to_soa,
    };
    use super::*;
    use crate::scheme::HashAlg;
    use crate::scheme::rsa_encoding::pkcs1_v15;

    /// For each size: distinct random primes, keys (distinct pairs of
    /// them: 46 primes give 1,035) and messages per key for the first
    /// [`DETAILED_KEYS`] keys (the others sign one). Generating primes is
    /// the slow part, so keys share primes: every prime is the modulus of a
    /// CRT half in many keys, sometimes as p and sometimes as q.
    fn plan(bits: usize) -> (usize, usize, usize) {
        match bits {
            2048 => (46, 1000, 40),
            3072 => (46, 1000, 12),
            _ => (46, 1000, 8),
        }
    }

    /// Keys that also sign many random messages and see the check kernel
    /// reject bad signatures.
    const DETAILED_KEYS: usize = 20;

    fn keys(bits: usize) -> &'static [Rsa<Private>] {
        static K: [OnceLock<Vec<Rsa<Private>>>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let i = SIZES.iter().position(|&b| b == bits).unwrap();
        K[i].get_or_init(|| {
            let (primes, keys, _) = plan(bits);
            let prime = || loop {
                let mut p = BigNum::new().unwrap();
                // Top two bits set: every product has exactly `bits` bits.
                p.generate_prime(bits as i32 / 2, false, None, None)
                    .unwrap();
                if p.mod_word(65537).unwrap() != 1 {
                    break p;
                }
            };
            // Prime generation dominates: spread it over the cores.
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let primes: Vec<BigNum> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        s.spawn(move || {
                            (t..primes)
                                .step_by(threads)
                                .map(|_| prime())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect()
            });
            let pairs = (0..primes.len()).flat_map(|i| (0..i).map(move |j| (i, j)));
            pairs
                .take(keys)
                .enumerate()
                .map(|(k, (i, j))| {
                    // Alternate which of the two is p (so both p > q and p < q occur).
                    let (p, q) = if k % 2 == 0 { (i, j) } else { (j, i) };
                    rsa_from_primes(&primes[p], &primes[q], 65537)
                        .rsa()
                        .unwrap()
                })
                .collect()
        })
    }

    fn pkey(rsa: &Rsa<Private>) -> PKey<Private> {
        PKey::from_rsa(rsa.clone()).unwrap()
    }

    fn bytes(x: &BigNumRef, len: usize) -> Vec<u8> {
        x.to_vec_padded(len as i32).unwrap()
    }

    fn random_below(n: &BigNumRef) -> BigNum {
        let mut r = BigNum::new().unwrap();
        n.rand_range(&mut r).unwrap();
        r
    }

    /// Signs with the host build, compares with OpenSSL's raw private op,
    /// checks with the host build, and verifies PKCS#1 v1.5 encoded digests
    /// with aws-lc-rs.
    fn sign_matches_openssl(bits: usize) {
        let k = bits / 8;
        let limbs = bits / 32;
        let (_, _, per_key) = plan(bits);
        for (ki, rsa) in keys(bits).iter().enumerate() {
            let blob = pack_key(&pkey(rsa)).unwrap();
            // Message 0 is an EMSA-PKCS1-v1_5 encoded SHA-256 digest.
            let digest = HashAlg::Sha256.digest(format!("message {ki}").as_bytes());
            let mut msgs = vec![pkcs1_v15(HashAlg::Sha256, &digest, k).unwrap()];
            let detailed = ki < DETAILED_KEYS;
            let more = if detailed { per_key - 1 } else { 0 };
            msgs.extend((0..more).map(|_| bytes(&random_below(rsa.n()), k)));
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let input = to_soa(&refs, limbs);
            let sig = sign(&blob, &input, msgs.len()).unwrap();
            let sigs = from_soa(&sig, msgs.len(), limbs);
            for (m, s) in msgs.iter().zip(&sigs) {
                if detailed {
                    let mut want = vec![0u8; k];
                    assert_eq!(rsa.private_encrypt(m, &mut want, Padding::NONE).unwrap(), k);
                    assert_eq!(
                        s, &want,
                        "{bits}-bit key {ki}: signature differs from OpenSSL"
                    );
                } else {
                    // s^e mod n = m by OpenSSL's public operation (RSA is a
                    // permutation: only the right s gives m back).
                    let mut back = vec![0u8; k];
                    assert_eq!(rsa.public_decrypt(s, &mut back, Padding::NONE).unwrap(), k);
                    assert_eq!(&back, m, "{bits}-bit key {ki}: s^e mod n is not m");
                }
            }
            let spki = rsa.public_key_to_der_pkcs1().unwrap();
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                &spki,
            )
            .verify(format!("message {ki}").as_bytes(), &sigs[0])
            .expect("aws-lc-rs verifies the PKCS#1 v1.5 signature");

            // The check accepts every signature...
            let ok = check(&blob, &sig, &input, msgs.len()).unwrap();
            assert!(
                ok.iter().all(|&x| x == 1),
                "{bits}-bit key {ki}: check rejected a good signature"
            );
            if !detailed {
                continue;
            }
            // ... and rejects a flipped bit, sig = n, and sig + n (same
            // residue, but not < n) where it fits.
            let mut bad: Vec<Vec<u8>> = Vec::new();
            let mut flipped = sigs[1].clone();
            flipped[k / 3] ^= 0x10;
            bad.push(flipped);
            bad.push(rsa.n().to_vec());
            let mut plus_n = BigNum::new().unwrap();
            let s2 = BigNum::from_slice(&sigs[2]).unwrap();
            plus_n.checked_add(&s2, rsa.n()).unwrap();
            let plus_n_fits = plus_n.num_bits() as usize <= bits;
            if plus_n_fits {
                bad.push(bytes(&plus_n, k));
            }
            let bad_refs: Vec<&[u8]> = bad.iter().map(|m| m.as_slice()).collect();
            let exp_refs: Vec<&[u8]> = [&msgs[1], &msgs[0], &msgs[2]][..bad.len()]
                .iter()
                .map(|m| m.as_slice())
                .collect();
            let ok = check(
                &blob,
                &to_soa(&bad_refs, limbs),
                &to_soa(&exp_refs, limbs),
                bad.len(),
            )
            .unwrap();
            assert!(
                ok.iter().all(|&x| x == 0),
                "{bits}-bit key {ki}: check accepted {ok:?}"
            );
        }
    }

    /// Every host build of the sign path: the one-thread code (portable
    /// and with the device's chains emulated) and the cooperative code.
    const MAPPINGS: [HostCode; 5] = [
        HostCode::Portable,
        HostCode::PtxEmulated,
        HostCode::PtxEmulatedWide,
        HostCode::Coop(8),
        HostCode::Coop(16),
    ];

    fn sign_by(code: HostCode, blob: &[u32], input: &[u32], count: usize) -> Vec<u32> {
        sign_with(code, blob, input, count).unwrap()
    }

    /// Signs, with the host builds `codes(key index)` gives, a PKCS#1 v1.5
    /// encoded digest and `key index % 5` random messages (so batches of 1
    /// to 5 items: for the cooperative code, warps with partial groups and
    /// threads past the last item) for the first `count` keys of a size;
    /// every signature must be OpenSSL's raw private operation's, and
    /// aws-lc-rs verifies the PKCS#1 one.
    fn host_code_matches_openssl(
        bits: usize,
        count: usize,
        codes: impl Fn(usize) -> Vec<HostCode>,
    ) {
        let k = bits / 8;
        let limbs = bits / 32;
        for (ki, rsa) in keys(bits).iter().take(count).enumerate() {
            let blob = pack_key(&pkey(rsa)).unwrap();
            let digest = HashAlg::Sha256.digest(format!("host code {ki}").as_bytes());
            let mut msgs = vec![pkcs1_v15(HashAlg::Sha256, &digest, k).unwrap()];
            msgs.extend((0..ki % 5).map(|_| bytes(&random_below(rsa.n()), k)));
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let input = to_soa(&refs, limbs);
            for code in codes(ki) {
                let sigs = from_soa(&sign_by(code, &blob, &input, msgs.len()), msgs.len(), limbs);
                for (i, (m, s)) in msgs.iter().zip(&sigs).enumerate() {
                    let mut want = vec![0u8; k];
                    rsa.private_encrypt(m, &mut want, Padding::NONE).unwrap();
                    assert_eq!(
                        s, &want,
                        "{bits}-bit key {ki}, item {i}, {code:?}: differs from OpenSSL"
                    );
                }
                aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                    rsa.public_key_to_der_pkcs1().unwrap(),
                )
                .verify(format!("host code {ki}").as_bytes(), &sigs[0])
                .unwrap_or_else(|_| panic!("aws-lc-rs rejects {code:?}'s signature"));
            }
        }
    }

    /// The one-thread kernels' device chains (emulated), rows and wide,
    /// for keys of every size (the emulation costs ~3x the portable code).
    #[test]
    fn ptx_chains_match_openssl_all_sizes() {
        for (bits, count) in [(2048, 64), (3072, 32), (4096, 24)] {
            host_code_matches_openssl(bits, count, |_| {
                vec![HostCode::PtxEmulated, HostCode::PtxEmulatedWide]
            });
        }
    }

    /// The cooperative kernels, 8 and 16 lanes on alternate keys: fewer
    /// keys than the one-thread tests', as the emulated warp costs ~2x the
    /// one-thread host code per signature.
    fn coop_matches_openssl(bits: usize) {
        let count = match bits {
            2048 => 96,
            3072 => 48,
            _ => 32,
        };
        host_code_matches_openssl(bits, count, |ki| vec![HostCode::Coop(COOP_LANES[ki % 2])]);
    }

    #[test]
    fn coop_matches_openssl_2048() {
        coop_matches_openssl(2048);
    }

    #[test]
    fn coop_matches_openssl_3072() {
        coop_matches_openssl(3072);
    }

    #[test]
    fn coop_matches_openssl_4096() {
        coop_matches_openssl(4096);
    }

    #[test]
    fn sign_matches_openssl_2048() {
        sign_matches_openssl(2048);
    }

    #[test]
    fn sign_matches_openssl_3072() {
        sign_matches_openssl(3072);
    }

    #[test]
    fn sign_matches_openssl_4096() {
        sign_matches_openssl(4096);
    }

    fn mod_exp(b: &BigNumRef, e: &BigNumRef, m: &BigNumRef) -> BigNum {
        let mut ctx = BigNumContext::new().unwrap();
        let mut r = BigNum::new().unwrap();
        r.mod_exp(b, e, m, &mut ctx).unwrap();
        r
    }

    #[test]
    fn sign_edge_messages() {
        for bits in SIZES {
            let k = bits / 8;
            let limbs = bits / 32;
            let rsa = &keys(bits)[0];
            let n = rsa.n();
            let one = BigNum::from_u32(1).unwrap();
            let mut n1 = BigNum::new().unwrap();
            n1.checked_sub(n, &one).unwrap();
            // All limbs ones but the top one, which is below n's top limb.
            let mut ones = vec![0xffu8; k];
            ones[..4].copy_from_slice(
                &(n.to_vec()[0..4]
                    .iter()
                    .fold(0u32, |a, &b| a << 8 | b as u32)
                    - 1)
                .to_be_bytes(),
            );
            let mut half = BigNum::new().unwrap();
            half.lshift(&one, (bits / 2) as i32).unwrap();
            let mut n_p = BigNum::new().unwrap();
            n_p.checked_sub(n, rsa.p().unwrap()).unwrap();
            let msgs: Vec<Vec<u8>> = vec![
                vec![0u8; k],
                bytes(&one, k),
                bytes(&n1, k),
                ones,
                bytes(rsa.p().unwrap(), k),
                bytes(rsa.q().unwrap(), k),
                bytes(&half, k),
                bytes(&n_p, k),
            ];
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let input = to_soa(&refs, limbs);
            let blob = pack_key(&pkey(rsa)).unwrap();
            for code in MAPPINGS {
                let sig = sign_by(code, &blob, &input, msgs.len());
                for (i, (m, s)) in msgs
                    .iter()
                    .zip(from_soa(&sig, msgs.len(), limbs))
                    .enumerate()
                {
                    let want = mod_exp(&BigNum::from_slice(m).unwrap(), rsa.d(), n);
                    assert_eq!(s, bytes(&want, k), "{bits}-bit edge message {i}, {code:?}");
                }
                assert!(
                    check(&blob, &sig, &input, msgs.len())
                        .unwrap()
                        .iter()
                        .all(|&x| x == 1)
                );
            }
        }
    }

    /// Small and large public exponents (the check's square-and-multiply).
    #[test]
    fn other_public_exponents() {
        for e in [3u32, 17, 4_294_967_291] {
            // A pool key whose primes allow e (p-1 and q-1 prime to e).
            let (p, q) = keys(2048)
                .iter()
                .map(|k| (k.p().unwrap(), k.q().unwrap()))
                .find(|(p, q)| p.mod_word(e).unwrap() != 1 && q.mod_word(e).unwrap() != 1)
                .expect("a key that allows e");
            let key = rsa_from_primes(p, q, e);
            let rsa = key.rsa().unwrap();
            let blob = pack_key(&key).unwrap();
            assert_eq!(blob[1], e);
            let msgs: Vec<Vec<u8>> = (0..4).map(|_| bytes(&random_below(rsa.n()), 256)).collect();
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let input = to_soa(&refs, 64);
            let sig = sign(&blob, &input, 4).unwrap();
            for (m, s) in msgs.iter().zip(from_soa(&sig, 4, 64)) {
                let mut want = vec![0u8; 256];
                rsa.private_encrypt(m, &mut want, Padding::NONE).unwrap();
                assert_eq!(s, want, "e = {e}");
            }
            assert_eq!(
                check(&blob, &sig, &input, 4).unwrap(),
                vec![1; 4],
                "e = {e}"
            );
            let mut bad = sig.clone();
            bad[7 * 4] ^= 1; // limb 7 of item 0
            assert_eq!(
                check(&blob, &bad, &input, 4).unwrap(),
                vec![0, 1, 1, 1],
                "e = {e}"
            );
        }
    }

    fn limbs_of(x: &BigNumRef, limbs: usize) -> Vec<u32> {
        let mut v = vec![0u32; limbs];
        put_limbs(&mut v, x).unwrap();
        v
    }

    fn from_limbs(v: &[u32]) -> BigNum {
        let be: Vec<u8> = v.iter().rev().flat_map(|w| w.to_be_bytes()).collect();
        BigNum::from_slice(&be).unwrap()
    }

    #[test]
    fn modexp_edge_values() {
        for limbs in [32usize, 48, 64] {
            let top = 1u32 << 31;
            let mut moduli: Vec<Vec<u32>> = vec![
                vec![u32::MAX; limbs],
                {
                    let mut m = vec![0u32; limbs];
                    m[0] = 1;
                    m[limbs - 1] = top;
                    m
                },
                {
                    let mut m = vec![u32::MAX; limbs];
                    m[0] = 0xffff_fffd;
                    m
                },
            ];
            // Random odd moduli with the top bit set, one with a run of
            // all-ones limbs and one with a run of zero limbs.
            for fill in [None, Some(u32::MAX), Some(0)] {
                let mut r = BigNum::new().unwrap();
                r.rand((32 * limbs) as i32, openssl::bn::MsbOption::ONE, true)
                    .unwrap();
                let mut m = limbs_of(&r, limbs);
                if let Some(f) = fill {
                    m[3..limbs - 3].iter_mut().for_each(|w| *w = f);
                }
                moduli.push(m);
            }
            let mut exps: Vec<Vec<u32>> = vec![
                vec![0; limbs],
                {
                    let mut e = vec![0; limbs];
                    e[0] = 1;
                    e
                },
                vec![u32::MAX; limbs],
                {
                    let mut e = vec![0; limbs];
                    e[limbs - 1] = top;
                    e
                },
                // Long runs: ones over the top half, zeros below; then
                // alternating 37-bit runs.
                (0..limbs)
                    .map(|j| if j >= limbs / 2 { u32::MAX } else { 0 })
                    .collect(),
                {
                    let mut e = vec![0u32; limbs];
                    for b in 0..32 * limbs {
                        if (b / 37) % 2 == 0 {
                            e[b / 32] |= 1 << (b % 32);
                        }
                    }
                    e
                },
            ];
            let mut r = BigNum::new().unwrap();
            r.rand(
                (32 * limbs) as i32,
                openssl::bn::MsbOption::MAYBE_ZERO,
                false,
            )
            .unwrap();
            exps.push(limbs_of(&r, limbs));
            for (mi, m) in moduli.iter().enumerate() {
                let mb = from_limbs(m);
                let rr = limbs_of(&mont_rr(&mb, limbs).unwrap(), limbs);
                let m0 = mont_m0(m[0]);
                let mut m1 = mb.to_owned().unwrap();
                m1.sub_word(1).unwrap();
                let bases: Vec<Vec<u32>> = vec![
                    vec![0; limbs],
                    limbs_of(&BigNum::from_u32(1).unwrap(), limbs),
                    limbs_of(&m1, limbs),
                    vec![u32::MAX; limbs],
                    m.clone(),
                    limbs_of(&random_below(&mb), limbs),
                ];
                for (ei, e) in exps.iter().enumerate() {
                    for (bi, b) in bases.iter().enumerate() {
                        let want = mod_exp(&from_limbs(b), &from_limbs(e), &mb);
                        // The portable code on every case; the emulated
                        // device code paths (slower) take turns, so each
                        // meets every modulus and a third of the
                        // exponent/base pairs: the emulated chains of
                        // `thread` and `wide`, and the cooperative code
                        // with 8 and 16 lanes on alternate moduli.
                        let other = [
                            HostCode::PtxEmulated,
                            HostCode::PtxEmulatedWide,
                            HostCode::Coop(COOP_LANES[mi % 2]),
                        ][(ei * bases.len() + bi + mi) % 3];
                        for code in [HostCode::Portable, other] {
                            let got = modexp_with(code, m, m0, &rr, b, e).unwrap();
                            assert_eq!(
                                from_limbs(&got),
                                want,
                                "{limbs} limbs, {code:?}: modexp differs from OpenSSL"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_bad_buffers() {
        assert!(sign(&[2048, 1, 2], &[], 0).is_err());
        let blob = vec![0u32; key_words(2048)];
        let mut blob = blob;
        blob[0] = 2048;
        assert!(sign(&blob, &[0; 63], 1).is_err());
        assert!(modexp(&[2; 32], 1, &[0; 32], &[0; 32], &[0; 32]).is_err());
        let mut m = vec![u32::MAX; 32];
        m[0] = 0xffff_fffd;
        assert!(modexp_coop(4, &m, 1, &[0; 32], &[0; 32], &[0; 32]).is_err());
        assert!(sign_coop(&blob, &[0; 64], 1, 32).is_err());
    }
}
