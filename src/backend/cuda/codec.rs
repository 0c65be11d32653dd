//! What goes into the kernels and what comes out, on the host: the encoded
//! RSA messages, ECDSA's z values in structure-of-arrays form, the nonce
//! seed's words, and DER signatures from the r and s limbs. Kept apart from
//! the launches so the same code runs in CI against the kernels' host build
//! (the tests below sign through the whole pipeline and OpenSSL verifies).

use zeroize::Zeroizing;

use super::ec_layout::{self, Curve};
use super::rsa_layout;
use crate::engine::check;
use crate::keys::Key;
use crate::scheme::{Scheme, rsa_encoding};

/// What the RSA kernels sign for each input, as big-endian integers of the
/// modulus length: EMSA-PKCS1-v1_5 or EMSA-PSS (a fresh random salt of the
/// hash's length) of the digest, or the raw input (which must be below n).
///
/// # Errors
///
/// A reason naming the input that cannot be encoded.
pub fn rsa_messages(key: &Key, scheme: Scheme, inputs: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
    let rsa = key.rsa_public().ok_or("not an RSA key")?;
    let k = rsa.size() as usize;
    let bits = rsa.n().num_bits() as usize;
    if scheme == Scheme::RsaRaw {
        // The engine admits only such inputs; checked again because a wrong
        // one would make the device check fail and quarantine the GPU.
        return inputs
            .iter()
            .map(|i| {
                check::admit_input(key, scheme, i)
                    .map(|()| i.clone())
                    .map_err(|e| e.to_string())
            })
            .collect();
    }
    let h = scheme.hash().ok_or("no digest")?;
    let pss = scheme.is_pss();
    let mut salts = Zeroizing::new(vec![0u8; if pss { h.len() * inputs.len() } else { 0 }]);
    if pss {
        aws_lc_rs::rand::fill(&mut salts).map_err(|_| "no random salt".to_string())?;
    }
    inputs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.len() != h.len() {
                return Err("digest length".to_string());
            }
            if pss {
                rsa_encoding::pss_encode(h, d, &salts[i * h.len()..(i + 1) * h.len()], bits)
            } else {
                rsa_encoding::pkcs1_v15(h, d, k)
            }
            .ok_or_else(|| "the modulus is too small for the encoding".to_string())
        })
        .collect()
}

/// z = bits2int(digest) of every input, structure-of-arrays (limb j of item
/// i at `[j * n + i]`), as the nonce, sign and check kernels read it.
///
/// # Errors
///
/// A reason when a digest has the wrong length for `scheme` (1 to 64 bytes
/// for the any-digest schemes).
pub fn ec_z(curve: Curve, scheme: Scheme, inputs: &[Vec<u8>]) -> Result<Vec<u32>, String> {
    let limbs = curve.limbs();
    let n = inputs.len();
    let mut z = vec![0u32; limbs * n];
    for (i, d) in inputs.iter().enumerate() {
        let ok_len = match scheme.hash() {
            Some(h) => d.len() == h.len(),
            None => (1..=64).contains(&d.len()),
        };
        if !ok_len {
            return Err(format!("digest of {} bytes", d.len()));
        }
        for (j, w) in ec_layout::z_from_digest(curve, d)
            .iter()
            .enumerate()
            .take(limbs)
        {
            z[j * n + i] = *w;
        }
    }
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
    let rs = rsa_layout::from_soa(r, n, limbs);
    let ss = rsa_layout::from_soa(s, n, limbs);
    rs.into_iter()
        .zip(ss)
        .map(|(rb, sb)| {
            let mut raw = rb;
            raw.extend_from_slice(&sb);
            crate::der::ecdsa_raw_to_der(&raw).map_err(|e| e.to_string())
        })
        .collect()
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
    use crate::backend::cuda::{host_ec, host_rsa};
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
            let ems = rsa_messages(&key, scheme, &inputs).unwrap();
            let refs: Vec<&[u8]> = ems.iter().map(Vec::as_slice).collect();
            let soa = rsa_layout::to_soa(&refs, limbs);
            let out = host_rsa::sign(&packed, &soa, inputs.len()).unwrap();
            let ok = host_rsa::check(&packed, &out, &soa, inputs.len()).unwrap();
            assert!(ok.iter().all(|&o| o == 1), "{scheme}: check kernel");
            let md = match scheme.hash().unwrap().len() {
                32 => Md::sha256(),
                48 => Md::sha384(),
                _ => Md::sha512(),
            };
            for (d, sig) in inputs
                .iter()
                .zip(rsa_layout::from_soa(&out, inputs.len(), limbs))
            {
                let mut ctx = PkeyCtx::new(&pk).unwrap();
                ctx.verify_init().unwrap();
                if scheme.is_pss() {
                    ctx.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
                    ctx.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                        .unwrap();
                } else {
                    ctx.set_rsa_padding(Padding::PKCS1).unwrap();
                }
                ctx.set_signature_md(md).unwrap();
                assert!(ctx.verify(d, &sig).unwrap(), "{scheme}");
            }
        }
        // Raw: s^e mod n gives the input back.
        let mut m = key.rsa_public().unwrap().n().to_vec();
        m[255] -= 1;
        let soa = rsa_layout::to_soa(&[&m[..]], limbs);
        let out = host_rsa::sign(&packed, &soa, 1).unwrap();
        let sig = rsa_layout::from_soa(&out, 1, limbs).remove(0);
        let mut back = vec![0u8; 256];
        key.rsa_public()
            .unwrap()
            .public_decrypt(&sig, &mut back, Padding::NONE)
            .unwrap();
        assert_eq!(back, m);
        let n = key.rsa_public().unwrap().n().to_vec();
        assert!(rsa_messages(&key, Scheme::RsaRaw, &[n]).is_err());
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
