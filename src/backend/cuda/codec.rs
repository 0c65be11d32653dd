//! What goes into the kernels and what comes out, on the host: the encoded
//! RSA messages, ECDSA's z values in structure-of-arrays form, the nonce
//! seed's words, and DER signatures from the r and s limbs. Kept apart from
//! the launches so the same code runs in CI against the kernels' host build
//! (the tests below sign through the whole pipeline and OpenSSL verifies).

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::ec_layout::{self, Curve};
use super::soa;
use crate::engine::check;
use crate::keys::Key;
use crate::scheme::{Scheme, rsa_encoding};

/// The RSA kernels' input for one batch: per item, EMSA-PKCS1-v1_5 or
/// EMSA-PSS (a fresh random salt of the hash's length) of the digest, or
/// the raw input (which must be below n), as an integer of the modulus
/// length.
struct RsaEncoder<'a> {
    key: &'a Key,
    scheme: Scheme,
    /// Modulus bytes and bits.
    k: usize,
    bits: usize,
    /// PSS salts, `hash.len()` bytes per item.
    salts: Zeroizing<Vec<u8>>,
}

impl<'a> RsaEncoder<'a> {
    fn new(key: &'a Key, scheme: Scheme, n: usize) -> Result<RsaEncoder<'a>, String> {
        let rsa = key.rsa_public().ok_or("not an RSA key")?;
        let (k, bits) = (rsa.size() as usize, rsa.n().num_bits() as usize);
        let salt_len = match scheme.hash() {
            Some(h) if scheme.is_pss() => h.len(),
            _ => 0,
        };
        let mut salts = Zeroizing::new(vec![0u8; salt_len * n]);
        if salt_len > 0 {
            // In parallel too: 2 MB of DRBG output for 65,536 items.
            salts
                .par_chunks_mut(soa::TASK_ITEMS * salt_len)
                .try_for_each(aws_lc_rs::rand::fill)
                .map_err(|_| "no random salt".to_string())?;
        }
        Ok(RsaEncoder {
            key,
            scheme,
            k,
            bits,
            salts,
        })
    }

    /// Item `i` (`input`) into `out`, which holds the modulus length.
    fn encode(&self, i: usize, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        let scheme = self.scheme;
        if scheme == Scheme::RsaRaw {
            // The engine admits only such inputs; checked again because a
            // wrong one would make the device check fail and quarantine
            // the GPU.
            check::admit_input(self.key, scheme, input).map_err(|e| e.to_string())?;
            let pad = self.k - input.len();
            out[..pad].fill(0);
            out[pad..].copy_from_slice(input);
            return Ok(());
        }
        let h = scheme.hash().ok_or("no digest")?;
        if input.len() != h.len() {
            return Err(format!("item {i}: digest length"));
        }
        let too_small = || "the modulus is too small for the encoding".to_string();
        if scheme.is_pss() {
            let salt = &self.salts[i * h.len()..(i + 1) * h.len()];
            rsa_encoding::pss_encode_into(h, input, salt, self.bits, out)
                .then_some(())
                .ok_or_else(too_small)
        } else {
            let em = rsa_encoding::pkcs1_v15(h, input, self.k).ok_or_else(too_small)?;
            out.copy_from_slice(&em);
            Ok(())
        }
    }
}

/// What the RSA kernels sign for each input, as big-endian integers of the
/// modulus length: EMSA-PKCS1-v1_5 or EMSA-PSS (a fresh random salt of the
/// hash's length) of the digest, or the raw input (which must be below n).
/// One vector per item; the backend writes the batch straight into its
/// upload buffer with [`rsa_encode`] instead.
///
/// # Errors
///
/// A reason naming the input that cannot be encoded.
pub fn rsa_messages(key: &Key, scheme: Scheme, inputs: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
    let enc = RsaEncoder::new(key, scheme, inputs.len())?;
    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let mut em = vec![0u8; enc.k];
            enc.encode(i, input, &mut em).map(|()| em)
        })
        .collect()
}

/// [`rsa_messages`] of a batch written into `dst` in the kernels'
/// structure-of-arrays layout (`limbs` = the modulus' 32-bit words, `dst`
/// holding `limbs * inputs.len()` words), in parallel for large batches
/// ([`soa::fill`]).
///
/// # Errors
///
/// A reason naming an input that cannot be encoded.
pub fn rsa_encode(
    key: &Key,
    scheme: Scheme,
    inputs: &[Vec<u8>],
    dst: &mut [u32],
) -> Result<(), String> {
    let enc = RsaEncoder::new(key, scheme, inputs.len())?;
    let limbs = enc.k.div_ceil(4);
    buffer_fits(dst, limbs, inputs.len())?;
    soa::fill(dst, inputs.len(), limbs, |i, words| {
        let mut em = Zeroizing::new([0u8; soa::MAX_LIMBS * 4]);
        let em = &mut em[..enc.k];
        enc.encode(i, &inputs[i], em)?;
        soa::from_be_bytes(em, words);
        Ok(())
    })
}

/// Whether `dst` holds exactly `n` items of `limbs` words.
fn buffer_fits(dst: &[u32], limbs: usize, n: usize) -> Result<(), String> {
    if dst.len() == limbs * n {
        Ok(())
    } else {
        Err(format!("a buffer of {} words for {n} items", dst.len()))
    }
}

/// The signatures of a batch of `n` RSA results in structure-of-arrays
/// layout, as big-endian byte strings of `limbs * 4` bytes; in parallel
/// for large batches.
pub fn rsa_signatures(out: &[u32], n: usize, limbs: usize) -> Vec<Vec<u8>> {
    soa::each(n, |i| {
        let mut w = [0u32; soa::MAX_LIMBS];
        soa::gather(out, n, i, &mut w[..limbs]);
        soa::to_be_bytes(&w[..limbs])
    })
}

/// z = bits2int(digest) of every input, structure-of-arrays (limb j of item
/// i at `[j * n + i]`), as the nonce, sign and check kernels read it,
/// written into `dst` (`curve.limbs() * inputs.len()` words).
///
/// # Errors
///
/// A reason when a digest has the wrong length for `scheme` (1 to 64 bytes
/// for the any-digest schemes).
pub fn ec_z_into(
    curve: Curve,
    scheme: Scheme,
    inputs: &[Vec<u8>],
    dst: &mut [u32],
) -> Result<(), String> {
    let limbs = curve.limbs();
    buffer_fits(dst, limbs, inputs.len())?;
    soa::fill(dst, inputs.len(), limbs, |i, words| {
        let d = &inputs[i];
        let ok_len = match scheme.hash() {
            Some(h) => d.len() == h.len(),
            None => (1..=64).contains(&d.len()),
        };
        if !ok_len {
            return Err(format!("item {i}: digest of {} bytes", d.len()));
        }
        words.copy_from_slice(&ec_layout::z_from_digest(curve, d)[..limbs]);
        Ok(())
    })
}

/// [`ec_z_into`] into a new vector.
///
/// # Errors
///
/// As [`ec_z_into`].
pub fn ec_z(curve: Curve, scheme: Scheme, inputs: &[Vec<u8>]) -> Result<Vec<u32>, String> {
    let mut z = vec![0u32; curve.limbs() * inputs.len()];
    ec_z_into(curve, scheme, inputs, &mut z)?;
    Ok(z)
}

/// The nonce kernels' 32-byte seed as the words uploaded for it: the kernel
/// reads the buffer as bytes, so memory order is kept.
#[must_use]
pub fn seed_words(bytes: &[u8; 32]) -> Zeroizing<[u32; 8]> {
    let mut seed = Zeroizing::new([0u32; 8]);
    for (w, c) in seed.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    seed
}

/// DER `ECDSA-Sig-Value`s from the sign kernel's r and s outputs
/// (structure-of-arrays, `limbs` limbs each, `n` items).
///
/// # Errors
///
/// A reason when a value cannot be encoded (r or s zero).
pub fn ec_der(r: &[u32], s: &[u32], n: usize, limbs: usize) -> Result<Vec<Vec<u8>>, String> {
    if limbs > 16 || r.len() < n * limbs || s.len() < n * limbs {
        return Err(format!("{n} signatures of {limbs} limbs"));
    }
    soa::map(n, |i| {
        let mut raw = [0u8; 128];
        for (half, src) in [r, s].into_iter().enumerate() {
            let at = half * limbs * 4;
            // Most significant limb first.
            for j in 0..limbs {
                let v = src[(limbs - 1 - j) * n + i];
                raw[at + 4 * j..at + 4 * j + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        crate::der::ecdsa_raw_to_der(&raw[..8 * limbs]).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    //! The whole host-side pipeline of a GPU batch, with the kernels' host
    //! build standing in for the device (no GPU here): encode, pack the key,
    //! run the kernels' per-item code, decode, and verify with OpenSSL.

    use std::sync::Arc;

    use openssl::md::Md;
    use openssl::pkey::PKey;
    use openssl::pkey_ctx::PkeyCtx;
    use openssl::rsa::Padding;
    use openssl::sign::RsaPssSaltlen;

    use super::*;
    use crate::backend::cuda::host_nonce::{self, NonceCurve};
    use crate::backend::cuda::{host_ec, host_rsa, rsa_layout};
    use crate::scheme::KeyKind;

    fn digests(scheme: Scheme, n: usize) -> Vec<Vec<u8>> {
        let len = scheme.hash().map_or(36, |h| h.len());
        (0..n)
            .map(|i| (0..len).map(|j| (i * 31 + j * 7 + 1) as u8).collect())
            .collect()
    }

    #[test]
    fn rsa_batches_through_the_host_kernels_verify_with_openssl() {
        let key: Arc<Key> = Key::ephemeral("gpu-rsa", KeyKind::Rsa2048).unwrap();
        let packed = rsa_layout::pack_key(&key.secret().unwrap().to_openssl().unwrap()).unwrap();
        let pk = PKey::public_key_from_der(key.spki_der()).unwrap();
        let limbs = 2048 / 32;
        for scheme in [
            Scheme::RsaPkcs1Sha256,
            Scheme::RsaPkcs1Sha384,
            Scheme::RsaPkcs1Sha512,
            Scheme::RsaPssRsaeSha256,
            Scheme::RsaPssRsaeSha384,
            Scheme::RsaPssRsaeSha512,
        ] {
            let inputs = digests(scheme, 5);
            let mut soa = vec![0u32; limbs * inputs.len()];
            rsa_encode(&key, scheme, &inputs, &mut soa).unwrap();
            let out = host_rsa::sign(&packed, &soa, inputs.len()).unwrap();
            let ok = host_rsa::check(&packed, &out, &soa, inputs.len()).unwrap();
            assert!(ok.iter().all(|&o| o == 1), "{scheme}: check kernel");
            for (d, sig) in inputs.iter().zip(rsa_signatures(&out, inputs.len(), limbs)) {
                verify_rsa(&pk, scheme, d, &sig);
            }
        }
        // Raw: s^e mod n gives the input back.
        let mut m = key.rsa_public().unwrap().n().to_vec();
        m[255] -= 1;
        let mut soa = vec![0u32; limbs];
        rsa_encode(&key, Scheme::RsaRaw, std::slice::from_ref(&m), &mut soa).unwrap();
        assert_eq!(soa, rsa_layout::to_soa(&[&m[..]], limbs));
        let out = host_rsa::sign(&packed, &soa, 1).unwrap();
        let sig = rsa_signatures(&out, 1, limbs).remove(0);
        let mut back = vec![0u8; 256];
        key.rsa_public()
            .unwrap()
            .public_decrypt(&sig, &mut back, Padding::NONE)
            .unwrap();
        assert_eq!(back, m);
        let n = key.rsa_public().unwrap().n().to_vec();
        assert!(rsa_messages(&key, Scheme::RsaRaw, std::slice::from_ref(&n)).is_err());
        assert!(rsa_encode(&key, Scheme::RsaRaw, &[n], &mut soa).is_err());
    }

    /// OpenSSL verifies `sig` over digest `d` under `scheme`.
    fn verify_rsa(pk: &PKey<openssl::pkey::Public>, scheme: Scheme, d: &[u8], sig: &[u8]) {
        let md = match scheme.hash().unwrap().len() {
            32 => Md::sha256(),
            48 => Md::sha384(),
            _ => Md::sha512(),
        };
        let mut ctx = PkeyCtx::new(pk).unwrap();
        ctx.verify_init().unwrap();
        if scheme.is_pss() {
            ctx.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            ctx.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                .unwrap();
        } else {
            ctx.set_rsa_padding(Padding::PKCS1).unwrap();
        }
        ctx.set_signature_md(md).unwrap();
        assert!(ctx.verify(d, sig).unwrap(), "{scheme}");
    }

    /// A batch large enough to run in parallel tasks, at a modulus whose
    /// byte length is not a multiple of the limb size apart (RSA-3072 is
    /// 96 limbs): the PKCS#1 v1.5 layout equals the plain per-item one,
    /// and every PSS encoding, raised to d by OpenSSL (no padding), is a
    /// signature OpenSSL verifies; the salts differ item to item.
    #[test]
    fn large_rsa_batches_encode_in_parallel_tasks() {
        let key: Arc<Key> = Key::ephemeral("gpu-rsa-3072", KeyKind::Rsa3072).unwrap();
        let rsa = key.secret().unwrap().to_openssl().unwrap().rsa().unwrap();
        let pk = PKey::public_key_from_der(key.spki_der()).unwrap();
        let (limbs, n) = (96, 2 * soa::TASK_ITEMS + 3);
        let inputs = digests(Scheme::RsaPkcs1Sha256, n);
        let mut got = vec![0u32; limbs * n];
        rsa_encode(&key, Scheme::RsaPkcs1Sha256, &inputs, &mut got).unwrap();
        let ems = rsa_messages(&key, Scheme::RsaPkcs1Sha256, &inputs).unwrap();
        let refs: Vec<&[u8]> = ems.iter().map(Vec::as_slice).collect();
        assert_eq!(got, rsa_layout::to_soa(&refs, limbs));
        assert_eq!(rsa_signatures(&got, n, limbs), ems);

        rsa_encode(&key, Scheme::RsaPssRsaeSha256, &inputs, &mut got).unwrap();
        let ems = rsa_signatures(&got, n, limbs);
        let mut seen = std::collections::HashSet::new();
        for (i, (d, em)) in inputs.iter().zip(&ems).enumerate() {
            let mut sig = vec![0u8; 384];
            rsa.private_encrypt(em, &mut sig, Padding::NONE).unwrap();
            verify_rsa(&pk, Scheme::RsaPssRsaeSha256, d, &sig);
            assert!(seen.insert(em.clone()), "item {i} repeats an encoding");
        }
        let mut short = inputs.clone();
        short[700].pop();
        let err = rsa_encode(&key, Scheme::RsaPssRsaeSha256, &short, &mut got).unwrap_err();
        assert_eq!(err, "item 700: digest length");
        assert!(rsa_encode(&key, Scheme::RsaPssRsaeSha256, &inputs, &mut got[1..]).is_err());
    }

    #[test]
    fn ecdsa_batches_through_the_host_kernels_verify_with_openssl() {
        for (kind, curve, ncurve, schemes) in [
            (
                KeyKind::P256,
                Curve::P256,
                NonceCurve::P256,
                [Scheme::EcdsaSecp256r1Sha256, Scheme::EcdsaP256AnyDigest],
            ),
            (
                KeyKind::P384,
                Curve::P384,
                NonceCurve::P384,
                [Scheme::EcdsaSecp384r1Sha384, Scheme::EcdsaP384AnyDigest],
            ),
        ] {
            let key: Arc<Key> = Key::ephemeral("gpu-ec", kind).unwrap();
            let packed =
                ec_layout::pack_key(curve, &key.secret().unwrap().to_openssl().unwrap()).unwrap();
            let table = ec_layout::comb_table(curve);
            let ec = PKey::public_key_from_der(key.spki_der())
                .unwrap()
                .ec_key()
                .unwrap();
            for scheme in schemes {
                let inputs = digests(scheme, 6);
                let z = ec_z(curve, scheme, &inputs).unwrap();
                let mut seed_bytes = [0u8; 32];
                aws_lc_rs::rand::fill(&mut seed_bytes).unwrap();
                // The words uploaded are the bytes the kernel reads.
                let words = seed_words(&seed_bytes);
                let as_bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
                assert_eq!(as_bytes, seed_bytes);
                let nonces = host_nonce::nonces(ncurve, &packed, &z, &seed_bytes);
                assert!(nonces.ok.iter().all(|&o| o == 1));
                let signed = host_ec::sign(curve, &table, &packed, &z, &nonces.k);
                assert!(signed.ok.iter().all(|&o| o == 1));
                let ok = host_ec::check(curve, &table, &packed, &z, &signed.r, &signed.s);
                assert!(ok.iter().all(|&o| o == 1), "{scheme}: check kernel");
                let ders = ec_der(&signed.r, &signed.s, inputs.len(), curve.limbs()).unwrap();
                for (d, der) in inputs.iter().zip(&ders) {
                    let sig = openssl::ecdsa::EcdsaSig::from_der(der).unwrap();
                    assert!(sig.verify(d, &ec).unwrap(), "{scheme}");
                }
            }
            assert!(ec_z(curve, schemes[0], &[vec![0; 5]]).is_err());
            assert!(ec_z(curve, schemes[1], &[vec![]]).is_err());
        }
    }

    /// ECDSA's per-item host work in parallel tasks: z equals the plain
    /// per-item layout and every DER signature equals OpenSSL's encoding
    /// of the same r and s (values with the top bit set and with leading
    /// zero limbs included).
    #[test]
    fn large_ecdsa_batches_encode_and_decode_in_parallel_tasks() {
        use openssl::bn::BigNum;
        let n = 2 * soa::TASK_ITEMS + 5;
        for (curve, scheme) in [
            (Curve::P256, Scheme::EcdsaSecp256r1Sha256),
            (Curve::P384, Scheme::EcdsaP384AnyDigest),
        ] {
            let l = curve.limbs();
            let mut inputs = digests(Scheme::EcdsaSecp384r1Sha384, n);
            if scheme.hash().is_some() {
                inputs = digests(scheme, n);
            }
            let z = ec_z(curve, scheme, &inputs).unwrap();
            let items: Vec<Vec<u32>> = inputs
                .iter()
                .map(|d| ec_layout::z_from_digest(curve, d))
                .collect();
            assert_eq!(z, ec_layout::to_soa(&items, l), "{scheme}");
            let mut bytes = vec![0u8; 4 * l * n];
            openssl::rand::rand_bytes(&mut bytes).unwrap();
            let mut r: Vec<u32> = bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut s = z.clone();
            for i in (0..n).step_by(7) {
                r[(l - 1) * n + i] = 0;
                s[(l - 1) * n + i] |= 0x8000_0000;
            }
            let ders = ec_der(&r, &s, n, l).unwrap();
            let (rs, ss) = (ec_layout::from_soa(&r, l, n), ec_layout::from_soa(&s, l, n));
            for i in 0..n {
                let big = |w: &[u32]| BigNum::from_slice(&ec_layout::limbs_to_be(w)).unwrap();
                let want =
                    openssl::ecdsa::EcdsaSig::from_private_components(big(&rs[i]), big(&ss[i]))
                        .unwrap()
                        .to_der()
                        .unwrap();
                assert_eq!(ders[i], want, "{scheme} item {i}");
            }
        }
    }

    #[test]
    fn ed25519_batches_through_the_host_kernels_verify_with_openssl() {
        use crate::backend::cpu::{CpuEngine, CpuKey};
        use crate::backend::cuda::{ed_layout, host_ed25519};
        let key: Arc<Key> = Key::ephemeral("gpu-ed", KeyKind::Ed25519).unwrap();
        // The blob the backend uploads, from the key store's own material.
        let packed = ed_layout::pack_key(&key.secret().unwrap().to_openssl().unwrap()).unwrap();
        let table = host_ed25519::comb_table();
        let pk = PKey::public_key_from_der(key.spki_der()).unwrap();
        let cpu = CpuKey::load(&key).unwrap();
        let msgs: Vec<Vec<u8>> = [0usize, 1, 64, 111, 112, 128, 300]
            .iter()
            .map(|&n| (0..n).map(|j| (j * 31 + n) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let sigs = host_ed25519::sign(&table, &packed, &refs);
        let ok = host_ed25519::check(&table, &packed, &refs, &sigs);
        assert!(ok.iter().all(|&o| o == 1), "check kernel");
        for (m, s) in msgs.iter().zip(&sigs) {
            let mut v = openssl::sign::Verifier::new_without_digest(&pk).unwrap();
            assert!(
                v.verify_oneshot(s, m).unwrap(),
                "OpenSSL rejects a GPU signature"
            );
            // Ed25519 is deterministic: the CPU backend signs the same bytes.
            let c = cpu.sign(CpuEngine::AwsLc, Scheme::Ed25519, m).unwrap();
            assert_eq!(&c[..], &s[..]);
        }
    }
}
