//! Host build of the Ed25519 kernels (`kernels/host/ed25519_host.cpp`), for
//! tests: the same per-item code the GPU runs (`kernels/ed25519.cu`), behind
//! safe wrappers. Scalars are 8 little-endian u32 limbs; byte strings
//! (encodings, signatures, the key's prefix) travel packed little-endian,
//! byte j in word j/4 at bits 8(j%4), as the kernels' ABI has them.

use super::ed_layout;

/// Words of a comb table, B's or a key's -A (8 combs x 16 entries x 24
/// words).
pub const TABLE_WORDS: usize = 3072;
pub use super::ed_layout::{KEY_WORDS, SIG_WORDS};

unsafe extern "C" {
    fn smx_ed25519_sign_host(
        t: *const u32,
        key: *const u32,
        msg: *const u8,
        off: *const u32,
        sig: *mut u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_ed25519_check_host(
        t: *const u32,
        key: *const u32,
        msg: *const u8,
        off: *const u32,
        sig: *const u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_ed25519_table_words() -> u32;
    fn smx_ed25519_comb_table(out: *mut u32);
    fn smx_ed25519_mod_op(which: u32, op: u32, a: *const u32, b: *const u32, out: *mut u32);
    fn smx_ed25519_reduce512(h: *const u32, out: *mut u32);
    fn smx_ed25519_decode(p: *const u32, out: *mut u32) -> u32;
    fn smx_ed25519_point_op(op: u32, p: *const u32, q: *const u32, out: *mut u32) -> u32;
    fn smx_ed25519_mul_base(t: *const u32, k: *const u32, out: *mut u32);
    fn smx_ed25519_mul_base2(
        tb: *const u32,
        s: *const u32,
        tq: *const u32,
        k: *const u32,
        out: *mut u32,
    );
    fn smx_ed25519_neg_table(a: *const u32, out: *mut u32) -> u32;
}

/// Bytes packed little-endian into words (the length a multiple of 4).
pub fn pack_bytes(b: &[u8]) -> Vec<u32> {
    assert_eq!(b.len() % 4, 0);
    ed_layout::bytes_to_words(b)
}

/// The inverse of [`pack_bytes`].
pub fn unpack_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The key blob for a 32-byte seed and its encoded public key A
/// ([`ed_layout::key_words`]).
pub fn pack_key(seed: &[u8; 32], public: &[u8; 32]) -> Vec<u32> {
    ed_layout::key_words(seed, public)
        .expect("the public key decodes")
        .to_vec()
}

fn check_len(what: &str, got: usize, want: usize) {
    assert_eq!(got, want, "{what}: {got} words, expected {want}");
}

/// The comb table for B.
pub fn comb_table() -> Vec<u32> {
    // SAFETY: no arguments.
    let words = unsafe { smx_ed25519_table_words() } as usize;
    check_len("comb table", words, TABLE_WORDS);
    let mut t = vec![0u32; words];
    // SAFETY: `t` has the table's length.
    unsafe { smx_ed25519_comb_table(t.as_mut_ptr()) };
    t
}

/// `ed25519_sign` on the host: one signature (R || S) per message.
pub fn sign(table: &[u32], key: &[u32], msgs: &[&[u8]]) -> Vec<[u8; 64]> {
    check_len("table", table.len(), TABLE_WORDS);
    check_len("key", key.len(), KEY_WORDS);
    let (bytes, off) = ed_layout::pack_messages(msgs).expect("batch under 4 GiB");
    let count = msgs.len();
    let mut sig = vec![0u32; SIG_WORDS * count];
    let mut ok = vec![0u32; count];
    // SAFETY: sized buffers; the C code reads msg (the packed words, as
    // bytes) only inside the offsets.
    unsafe {
        smx_ed25519_sign_host(
            table.as_ptr(),
            key.as_ptr(),
            bytes.as_ptr().cast::<u8>(),
            off.as_ptr(),
            sig.as_mut_ptr(),
            ok.as_mut_ptr(),
            count as u32,
        )
    };
    assert!(ok.iter().all(|&o| o == 1), "sign left ok = 0");
    ed_layout::signatures(&sig, count)
        .into_iter()
        .map(|s| s.try_into().unwrap())
        .collect()
}

/// `ed25519_check` on the host: 1 per valid signature.
pub fn check(table: &[u32], key: &[u32], msgs: &[&[u8]], sigs: &[[u8; 64]]) -> Vec<u32> {
    check_len("table", table.len(), TABLE_WORDS);
    check_len("key", key.len(), KEY_WORDS);
    assert_eq!(msgs.len(), sigs.len());
    let (bytes, off) = ed_layout::pack_messages(msgs).expect("batch under 4 GiB");
    let count = msgs.len();
    let sig = ed_layout::signatures_to_soa(sigs);
    let mut ok = vec![0u32; count];
    // SAFETY: as above.
    unsafe {
        smx_ed25519_check_host(
            table.as_ptr(),
            key.as_ptr(),
            bytes.as_ptr().cast::<u8>(),
            off.as_ptr(),
            sig.as_ptr(),
            ok.as_mut_ptr(),
            count as u32,
        )
    };
    ok
}

/// Which modulus [`mod_op`] works in.
#[derive(Clone, Copy, Debug)]
pub enum Modulus {
    /// The field prime p = 2^255 - 19.
    P = 0,
    /// The group order L.
    L = 1,
}

/// An operation of [`mod_op`].
#[derive(Clone, Copy, Debug)]
pub enum ModOp {
    /// a * b
    Mul = 0,
    /// a + b
    Add = 1,
    /// a - b
    Sub = 2,
    /// a^-1 (Fermat; 0 for a = 0)
    Inv = 3,
}

/// One modular operation through the kernels' Montgomery types; a, b any
/// 256-bit values (reduced on the way in), plain limbs in and out.
pub fn mod_op(m: Modulus, op: ModOp, a: &[u32; 8], b: &[u32; 8]) -> [u32; 8] {
    let mut out = [0; 8];
    // SAFETY: 8-limb buffers.
    unsafe {
        smx_ed25519_mod_op(
            m as u32,
            op as u32,
            a.as_ptr(),
            b.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    out
}

/// A 512-bit value (16 limbs) mod L, as signing reduces its digests.
pub fn reduce512(h: &[u32; 16]) -> [u32; 8] {
    let mut out = [0; 8];
    // SAFETY: 16 limbs in, 8 out.
    unsafe { smx_ed25519_reduce512(h.as_ptr(), out.as_mut_ptr()) };
    out
}

fn enc_call(f: impl FnOnce(*mut u32) -> u32) -> Option<[u8; 32]> {
    let mut out = [0u32; 8];
    (f(out.as_mut_ptr()) == 1).then(|| unpack_bytes(&out).try_into().unwrap())
}

/// The canonical re-encoding of a point, `None` when `enc` does not decode.
pub fn decode(enc: &[u8; 32]) -> Option<[u8; 32]> {
    let p = pack_bytes(enc);
    // SAFETY: 8 words in and out.
    enc_call(|out| unsafe { smx_ed25519_decode(p.as_ptr(), out) })
}

/// A point operation of [`point_op`].
#[derive(Clone, Copy, Debug)]
pub enum PointOp {
    /// p + q, the complete unified addition.
    Add = 0,
    /// p + q with q in the comb table's precomputed form (mixed addition).
    MixedAdd = 1,
    /// 2p, the doubling (q ignored).
    Double = 2,
}

/// One point operation on encodings; `None` when an input does not decode.
pub fn point_op(op: PointOp, p: &[u8; 32], q: &[u8; 32]) -> Option<[u8; 32]> {
    let (p, q) = (pack_bytes(p), pack_bytes(q));
    // SAFETY: 8 words each.
    enc_call(|out| unsafe { smx_ed25519_point_op(op as u32, p.as_ptr(), q.as_ptr(), out) })
}

/// enc(k B) by the constant-time comb the sign kernel uses.
pub fn mul_base(table: &[u32], k: &[u32; 8]) -> [u8; 32] {
    check_len("table", table.len(), TABLE_WORDS);
    let mut out = [0u32; 8];
    // SAFETY: sized buffers.
    unsafe { smx_ed25519_mul_base(table.as_ptr(), k.as_ptr(), out.as_mut_ptr()) };
    unpack_bytes(&out).try_into().unwrap()
}

/// The comb table of -A for an encoded public key A (the tail of the key
/// blob, which the check kernel walks with B's); `None` when A does not
/// decode.
pub fn neg_table(a: &[u8; 32]) -> Option<Vec<u32>> {
    let a = pack_bytes(a);
    let mut t = vec![0u32; TABLE_WORDS];
    // SAFETY: 8 words in, a table's worth out.
    (unsafe { smx_ed25519_neg_table(a.as_ptr(), t.as_mut_ptr()) } == 1).then_some(t)
}

/// enc(s B + k Q) as the check kernel computes it, from B's table and Q's.
pub fn mul_base2(tb: &[u32], s: &[u32; 8], tq: &[u32], k: &[u32; 8]) -> [u8; 32] {
    check_len("B table", tb.len(), TABLE_WORDS);
    check_len("Q table", tq.len(), TABLE_WORDS);
    let mut out = [0u32; 8];
    // SAFETY: sized buffers.
    unsafe {
        smx_ed25519_mul_base2(
            tb.as_ptr(),
            s.as_ptr(),
            tq.as_ptr(),
            k.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    unpack_bytes(&out).try_into().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::XorShift;
    use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
    use openssl::bn::{BigNum, BigNumContext};

    const P_HEX: &str = "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed";
    const L_HEX: &str = "1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed";
    /// The encoding of the identity (x = 0, y = 1).
    const IDENTITY: [u8; 32] = {
        let mut e = [0u8; 32];
        e[0] = 1;
        e
    };

    fn bn(limbs: &[u32]) -> BigNum {
        let mut be: Vec<u8> = unpack_bytes(limbs);
        be.reverse();
        BigNum::from_slice(&be).unwrap()
    }

    fn limbs8(x: &BigNum) -> [u32; 8] {
        let mut le = x.to_vec_padded(32).unwrap();
        le.reverse();
        pack_bytes(&le).try_into().unwrap()
    }

    fn hex_bn(h: &str) -> BigNum {
        BigNum::from_hex_str(h).unwrap()
    }

    fn rand_words<const N: usize>(rng: &mut XorShift) -> [u32; N] {
        std::array::from_fn(|_| rng.next() as u32)
    }

    struct Key {
        pair: Ed25519KeyPair,
        words: Vec<u32>,
    }

    fn key(seed: &[u8; 32]) -> Key {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        Key {
            words: pack_key(seed, &public),
            pair,
        }
    }

    fn public(k: &Key) -> [u8; 32] {
        k.pair.public_key().as_ref().try_into().unwrap()
    }

    fn aws_verifies(k: &Key, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::ED25519, public(k))
            .verify(msg, sig)
            .is_ok()
    }

    /// RFC 8032 section 7.1: seed, public key, message, signature.
    const RFC8032: &[(&str, &str, &str, &str)] = &[
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
        (
            "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
            "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
            concat!(
                "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1",
                "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d",
                "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a",
                "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e",
                "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10",
                "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1",
                "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d",
                "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270",
                "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b",
                "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba",
                "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b",
                "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7",
                "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d",
                "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df",
                "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7",
                "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4",
                "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09",
                "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f",
                "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161",
                "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d",
                "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca",
                "c60c905c15fc910840b94c00a0b9d0",
            ),
            "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
        ),
        (
            "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
            "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
        ),
    ];

    #[test]
    fn rfc8032_test_vectors_are_byte_exact() {
        let table = comb_table();
        for (seed, public_hex, msg, sig) in RFC8032 {
            let seed: [u8; 32] = hex::decode(seed).unwrap().try_into().unwrap();
            let msg = hex::decode(msg).unwrap();
            let k = key(&seed);
            assert_eq!(hex::encode(public(&k)), *public_hex);
            // A = a B through the sign kernel's comb
            let a: [u32; 8] = k.words[..8].try_into().unwrap();
            assert_eq!(hex::encode(mul_base(&table, &a)), *public_hex);
            let got = sign(&table, &k.words, &[&msg]);
            assert_eq!(hex::encode(got[0]), *sig, "{public_hex}");
            assert_eq!(check(&table, &k.words, &[&msg], &got), vec![1]);
        }
        assert_eq!(RFC8032[3].2.len(), 2 * 1023);
    }

    /// 1,000 random seeds (one batch of 1 to 3 messages each, lengths
    /// 0..300): every signature byte-exact equal to aws-lc-rs's, verified by
    /// aws-lc-rs, accepted by the check kernel.
    #[test]
    fn random_seeds_and_messages_match_aws_lc() {
        let table = comb_table();
        let mut rng = XorShift(0x9e3779b97f4a7c15);
        let mut signed = 0;
        for _ in 0..1000 {
            let seed: [u8; 32] = std::array::from_fn(|_| rng.next() as u8);
            let k = key(&seed);
            let msgs: Vec<Vec<u8>> = (0..1 + rng.below(3))
                .map(|_| (0..rng.below(301)).map(|_| rng.next() as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let sigs = sign(&table, &k.words, &refs);
            for (m, s) in msgs.iter().zip(&sigs) {
                assert_eq!(
                    s.as_slice(),
                    k.pair.sign(m).as_ref(),
                    "seed {} msg {}",
                    hex::encode(seed),
                    hex::encode(m)
                );
                assert!(aws_verifies(&k, m, s));
            }
            assert!(
                check(&table, &k.words, &refs, &sigs)
                    .iter()
                    .all(|&o| o == 1)
            );
            signed += sigs.len();
        }
        assert!(signed >= 1000);
    }

    /// A batch of 70 messages: three warps of the kernel's shared
    /// inversion, the last one partly past the batch. Byte-exact against
    /// aws-lc-rs item by item.
    #[test]
    fn a_batch_across_warps_matches_aws_lc() {
        let table = comb_table();
        let mut rng = XorShift(0x2545f4914f6cdd1d);
        let k = key(&[9u8; 32]);
        let msgs: Vec<Vec<u8>> = (0..70)
            .map(|_| (0..rng.below(200)).map(|_| rng.next() as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let sigs = sign(&table, &k.words, &refs);
        assert_eq!(sigs.len(), 70);
        for (i, (m, s)) in msgs.iter().zip(&sigs).enumerate() {
            assert_eq!(s.as_slice(), k.pair.sign(m).as_ref(), "item {i}");
        }
    }

    /// One key, a batch whose offsets repeat (empty messages) between
    /// others: the structure-of-arrays output lines up item by item.
    #[test]
    fn a_batch_with_empty_messages_lines_up() {
        let table = comb_table();
        let k = key(&[7u8; 32]);
        let long: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let msgs: Vec<&[u8]> = vec![b"", b"x", b"", &long, b"", b"abc", b""];
        let sigs = sign(&table, &k.words, &msgs);
        for (m, s) in msgs.iter().zip(&sigs) {
            assert_eq!(s.as_slice(), k.pair.sign(m).as_ref(), "len {}", m.len());
        }
        assert_eq!(check(&table, &k.words, &msgs, &sigs), vec![1; msgs.len()]);
        // a signature moved to its neighbour's message fails there
        let mut swapped = sigs.clone();
        swapped.swap(1, 3);
        let got = check(&table, &k.words, &msgs, &swapped);
        assert_eq!(got, vec![1, 0, 1, 0, 1, 1, 1]);
    }

    /// S + L as a 32-byte little-endian value (S < L < 2^253: no overflow).
    fn add_l(s: &[u8]) -> [u8; 32] {
        let mut le = s.to_vec();
        le.reverse();
        let sum = &BigNum::from_slice(&le).unwrap() + &hex_bn(L_HEX);
        let mut out = sum.to_vec_padded(32).unwrap();
        out.reverse();
        out.try_into().unwrap()
    }

    #[test]
    fn check_rejects_tampered_signatures_and_bad_encodings() {
        let table = comb_table();
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for round in 0..16 {
            let seed: [u8; 32] = std::array::from_fn(|_| rng.next() as u8);
            let k = key(&seed);
            let msg: Vec<u8> = (0..1 + rng.below(200)).map(|_| rng.next() as u8).collect();
            let good = sign(&table, &k.words, &[&msg])[0];
            let mut cases: Vec<(String, Vec<u8>, [u8; 64])> = Vec::new();
            let bit = rng.below(256);
            let mut bad_r = good;
            bad_r[bit / 8] ^= 1 << (bit % 8);
            cases.push((format!("R bit {bit}"), msg.clone(), bad_r));
            let bit = rng.below(253);
            let mut bad_s = good;
            bad_s[32 + bit / 8] ^= 1 << (bit % 8);
            cases.push((format!("S bit {bit}"), msg.clone(), bad_s));
            let mut bad_m = msg.clone();
            let bit = rng.below(8 * msg.len());
            bad_m[bit / 8] ^= 1 << (bit % 8);
            cases.push((format!("message bit {bit}"), bad_m, good));
            let mut s_plus_l = good;
            s_plus_l[32..].copy_from_slice(&add_l(&good[32..]));
            cases.push(("S + L".into(), msg.clone(), s_plus_l));
            // R as the identity with its x sign bit set (x = 0): never canonical
            let mut r_neg_zero = good;
            r_neg_zero[..32].copy_from_slice(&IDENTITY);
            r_neg_zero[31] |= 0x80;
            cases.push(("R = -0 encoding".into(), msg.clone(), r_neg_zero));
            for (what, m, s) in &cases {
                assert_eq!(
                    check(&table, &k.words, &[m], &[*s]),
                    vec![0],
                    "round {round}: {what} accepted"
                );
                assert!(!aws_verifies(&k, m, s), "aws-lc accepts {what}");
            }
            // the good one next to them in one batch
            let mut msgs: Vec<&[u8]> = cases.iter().map(|c| c.1.as_slice()).collect();
            let mut sigs: Vec<[u8; 64]> = cases.iter().map(|c| c.2).collect();
            msgs.push(&msg);
            sigs.push(good);
            let mut want = vec![0; cases.len()];
            want.push(1);
            assert_eq!(check(&table, &k.words, &msgs, &sigs), want);
            // A non-canonical (y + p, only possible for y < 19) public key
            // cannot be packed: -A's table is built from its decoding
            assert!(neg_table(&non_canonical_identity()).is_none());
            assert!(ed_layout::key_words(&[7u8; 32], &non_canonical_identity()).is_err());
            // a blob whose table is another key's rejects the good signature
            let other = key(&[round as u8 ^ 0x5a; 32]);
            let mut bad_key = k.words.clone();
            bad_key[24..].copy_from_slice(&other.words[24..]);
            assert_eq!(check(&table, &bad_key, &[&msg], &[good]), vec![0]);
        }
    }

    /// y = p + 1 (the identity's y, not reduced), sign bit clear.
    fn non_canonical_identity() -> [u8; 32] {
        let mut le = (&hex_bn(P_HEX) + &BigNum::from_u32(1).unwrap())
            .to_vec_padded(32)
            .unwrap();
        le.reverse();
        le.try_into().unwrap()
    }

    #[test]
    fn decoding_rejects_non_canonical_and_off_curve_encodings() {
        let table = comb_table();
        assert_eq!(decode(&IDENTITY), Some(IDENTITY));
        assert_eq!(decode(&non_canonical_identity()), None, "y = p + 1");
        let p_enc: [u8; 32] = unpack_bytes(&limbs8(&hex_bn(P_HEX))).try_into().unwrap();
        assert_eq!(decode(&p_enc), None, "y = p");
        let mut neg_zero = IDENTITY;
        neg_zero[31] |= 0x80;
        assert_eq!(decode(&neg_zero), None, "x = 0 with the sign bit");
        // y = 2: (y^2 - 1) / (d y^2 + 1) is not a square mod p
        let mut y2 = [0u8; 32];
        y2[0] = 2;
        assert_eq!(decode(&y2), None, "off the curve");
        // every encoding the comb produces round-trips, both signs
        let mut rng = XorShift(77);
        for _ in 0..32 {
            let e = mul_base(&table, &rand_words::<8>(&mut rng));
            assert_eq!(decode(&e), Some(e));
            let mut n = e;
            n[31] ^= 0x80;
            assert_eq!(decode(&n), Some(n));
        }
    }

    #[test]
    fn field_and_scalar_ops_match_openssl_at_the_edges() {
        let mut ctx = BigNumContext::new().unwrap();
        let mut rng = XorShift(0xfeed);
        for (m, hexm) in [(Modulus::P, P_HEX), (Modulus::L, L_HEX)] {
            let n = hex_bn(hexm);
            let one = BigNum::from_u32(1).unwrap();
            let two256 = &(&one << 256) - &one;
            let mut vals: Vec<BigNum> = vec![
                BigNum::new().unwrap(),
                one.to_owned().unwrap(),
                &n - &one,
                n.to_owned().unwrap(),
                &(&one << 255) - &one,
                two256,
                hex_bn(P_HEX),
                &hex_bn(L_HEX) - &one,
            ];
            for _ in 0..24 {
                vals.push(bn(&rand_words::<8>(&mut rng)));
            }
            for a in &vals {
                for b in &vals {
                    let (la, lb) = (limbs8(a), limbs8(b));
                    let (mut ar, mut br) = (BigNum::new().unwrap(), BigNum::new().unwrap());
                    ar.nnmod(a, &n, &mut ctx).unwrap();
                    br.nnmod(b, &n, &mut ctx).unwrap();
                    let mut want = BigNum::new().unwrap();
                    want.mod_mul(&ar, &br, &n, &mut ctx).unwrap();
                    assert_eq!(
                        bn(&mod_op(m, ModOp::Mul, &la, &lb)),
                        want,
                        "{m:?} {a} * {b}"
                    );
                    want.mod_add(&ar, &br, &n, &mut ctx).unwrap();
                    assert_eq!(
                        bn(&mod_op(m, ModOp::Add, &la, &lb)),
                        want,
                        "{m:?} {a} + {b}"
                    );
                    want.mod_sub(&ar, &br, &n, &mut ctx).unwrap();
                    assert_eq!(
                        bn(&mod_op(m, ModOp::Sub, &la, &lb)),
                        want,
                        "{m:?} {a} - {b}"
                    );
                }
                let inv = mod_op(m, ModOp::Inv, &limbs8(a), &[0; 8]);
                let mut ar = BigNum::new().unwrap();
                ar.nnmod(a, &n, &mut ctx).unwrap();
                if ar.num_bits() == 0 {
                    assert_eq!(inv, [0; 8], "0^-1 = 0");
                } else {
                    let mut want = BigNum::new().unwrap();
                    want.mod_inverse(&ar, &n, &mut ctx).unwrap();
                    assert_eq!(bn(&inv), want, "{m:?} {a}^-1");
                }
            }
        }
    }

    #[test]
    fn reduce512_matches_openssl() {
        let mut ctx = BigNumContext::new().unwrap();
        let l = hex_bn(L_HEX);
        let one = BigNum::from_u32(1).unwrap();
        let mut rng = XorShift(0x5eed);
        let mut inputs: Vec<[u32; 16]> = vec![
            [0; 16],
            [u32::MAX; 16], // 2^512 - 1
            std::array::from_fn(|j| if j < 8 { limbs8(&(&l - &one))[j] } else { 0 }),
            std::array::from_fn(|j| if j < 8 { limbs8(&l)[j] } else { 0 }),
            std::array::from_fn(|j| if j < 8 { u32::MAX >> (j / 7) } else { 0 }), // 2^255 - 1
            std::array::from_fn(|j| if j < 8 { 0 } else { u32::MAX }),
        ];
        // L^2 and (L - 1)^2, the largest products below L^2
        for x in [&l - &one, l.to_owned().unwrap()] {
            let mut sq = BigNum::new().unwrap();
            sq.sqr(&x, &mut ctx).unwrap();
            let mut le = sq.to_vec_padded(64).unwrap();
            le.reverse();
            inputs.push(pack_bytes(&le).try_into().unwrap());
        }
        for _ in 0..200 {
            inputs.push(rand_words::<16>(&mut rng));
        }
        for h in &inputs {
            let mut want = BigNum::new().unwrap();
            want.nnmod(&bn(h), &l, &mut ctx).unwrap();
            assert_eq!(bn(&reduce512(h)), want, "{}", bn(h));
        }
    }

    #[test]
    fn point_edge_cases_through_the_complete_formulas() {
        let table = comb_table();
        let mut rng = XorShift(0xabcdef);
        let l = limbs8(&hex_bn(L_HEX));
        assert_eq!(mul_base(&table, &[0; 8]), IDENTITY, "0 B");
        assert_eq!(mul_base(&table, &l), IDENTITY, "L B");
        assert_eq!(
            point_op(PointOp::Double, &IDENTITY, &IDENTITY),
            Some(IDENTITY)
        );
        assert_eq!(point_op(PointOp::Add, &IDENTITY, &IDENTITY), Some(IDENTITY));
        for _ in 0..16 {
            let k = rand_words::<8>(&mut rng);
            let p = mul_base(&table, &k);
            let mut neg = p;
            neg[31] ^= 0x80;
            for op in [PointOp::Add, PointOp::MixedAdd] {
                assert_eq!(point_op(op, &IDENTITY, &p), Some(p), "O + P {op:?}");
                assert_eq!(point_op(op, &p, &IDENTITY), Some(p), "P + O {op:?}");
                assert_eq!(point_op(op, &p, &neg), Some(IDENTITY), "P - P {op:?}");
            }
            let twice = point_op(PointOp::Double, &p, &p).unwrap();
            assert_eq!(point_op(PointOp::Add, &p, &p), Some(twice), "P + P");
            assert_eq!(
                point_op(PointOp::MixedAdd, &p, &p),
                Some(twice),
                "P + P mixed"
            );
            // 2 (k B) through the comb with 2k mod L, and through the
            // check's two-table comb as k B + k (-(-B)) with -B's table
            let k2 = mod_op(Modulus::L, ModOp::Add, &k, &k);
            assert_eq!(mul_base(&table, &k2), twice, "comb 2k");
            let b = mul_base(&table, &[1, 0, 0, 0, 0, 0, 0, 0]);
            let mut nb = b;
            nb[31] ^= 0x80; // -B
            let tb = neg_table(&nb).expect("-B decodes");
            assert_eq!(mul_base2(&table, &k, &tb, &k), twice, "k B + k B");
            assert_eq!(
                mul_base2(&table, &k2, &tb, &k),
                point_op(PointOp::Add, &twice, &p).unwrap(),
                "2k B + k B"
            );
            // P + Q both ways
            let q = mul_base(&table, &rand_words::<8>(&mut rng));
            let pq = point_op(PointOp::Add, &p, &q).unwrap();
            assert_eq!(point_op(PointOp::Add, &q, &p), Some(pq));
            assert_eq!(point_op(PointOp::MixedAdd, &p, &q), Some(pq));
        }
        // the order-4 point (sqrt(-1), 0) and the order-2 point (0, -1):
        // doubling and adding small-order points stays on the formulas
        // y = 0: x^2 = -1
        let t4 = decode(&[0u8; 32]).expect("(x, 0) is on the curve");
        let t2 = point_op(PointOp::Double, &t4, &t4).unwrap();
        let mut minus_one = [0u8; 32];
        minus_one.copy_from_slice(&unpack_bytes(&limbs8(
            &(&hex_bn(P_HEX) - &BigNum::from_u32(1).unwrap()),
        )));
        assert_eq!(t2, minus_one, "2 (x, 0) = (0, -1)");
        assert_eq!(point_op(PointOp::Add, &t2, &t2), Some(IDENTITY));
        assert_eq!(point_op(PointOp::Double, &t2, &t2), Some(IDENTITY));
    }
}
