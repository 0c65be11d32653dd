//! Buffer layouts of the Ed25519 kernels (`kernels/ed25519.cu`): what the
//! CUDA host side uploads and reads back.
//!
//! Bytes travel packed in 32-bit words, little-endian: byte `j` of a string
//! in word `j / 4` at bits `8 * (j % 4)`, so a 32-byte little-endian scalar
//! is also its own 8-limb integer. One key per batch.
//!
//! - key blob ([`pack_key`], [`KEY_WORDS`] = 24 + 3072 words): `a`, the
//!   clamped secret scalar (first half of SHA-512 of the seed, RFC 8032
//!   5.1.5); `prefix` (second half); `A`, the encoded public key; then the
//!   comb table of -A (public; built by the kernels' host code when the key
//!   is packed), which the check kernel walks together with B's.
//! - messages ([`pack_messages`]): every message's bytes one after the
//!   other, and `count + 1` byte offsets (message `i` is
//!   `msg[off[i] .. off[i + 1]]`).
//! - signatures ([`signatures`]): structure of arrays, 16 words per item
//!   (word `w` of item `i` at `[w * count + i]`), the 64 bytes `R || S`.
//! - comb table: built by the kernels' own host build
//!   ([`super::host_ed25519`]), public data uploaded once per device.

use openssl::pkey::{Id, PKey, Private};
use zeroize::Zeroizing;

/// Words of a packed key.
pub const KEY_WORDS: usize = 24 + super::host_ed25519::TABLE_WORDS;

/// Words of one signature.
pub const SIG_WORDS: usize = 16;

/// Packs `bytes` into little-endian words (the last one zero-padded).
pub fn bytes_to_words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// The kernels' key blob for an Ed25519 key: `a`, `prefix`, `A`.
///
/// # Errors
///
/// When the key is not an Ed25519 key or its material cannot be read.
pub fn pack_key(pkey: &PKey<Private>) -> Result<Zeroizing<Vec<u32>>, String> {
    if pkey.id() != Id::ED25519 {
        return Err("not an Ed25519 key".into());
    }
    let seed = Zeroizing::new(
        pkey.raw_private_key()
            .map_err(|e| format!("cannot read the seed: {e}"))?,
    );
    if seed.len() != 32 {
        return Err(format!("seed is {} bytes, not 32", seed.len()));
    }
    let public = pkey
        .raw_public_key()
        .map_err(|e| format!("cannot read the public key: {e}"))?;
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| "public key is not 32 bytes".to_string())?;
    let mut s = Zeroizing::new([0u8; 32]);
    s.copy_from_slice(&seed);
    key_words(&s, &public)
}

/// The key blob for a 32-byte seed and its encoded public key `A`
/// (RFC 8032 5.1.5: `a` = the first half of SHA-512(seed) with the low
/// three bits and the top bit cleared and bit 254 set; `prefix` = the
/// second half).
///
/// # Errors
///
/// When `public` does not decode to a point (then it is not the key's).
pub fn key_words(seed: &[u8; 32], public: &[u8; 32]) -> Result<Zeroizing<Vec<u32>>, String> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, seed);
    let mut h = Zeroizing::new([0u8; 64]);
    h.copy_from_slice(digest.as_ref());
    h[0] &= 248;
    h[31] &= 127;
    h[31] |= 64;
    let table = super::host_ed25519::neg_table(public)
        .ok_or_else(|| "the public key does not decode to a curve point".to_string())?;
    let mut out = Zeroizing::new(Vec::with_capacity(KEY_WORDS));
    out.extend(bytes_to_words(&h[..]));
    out.extend(bytes_to_words(public));
    out.extend(table);
    Ok(out)
}

/// The messages of a batch as the kernels read them: packed bytes and the
/// `count + 1` byte offsets.
///
/// # Errors
///
/// When the batch's bytes do not fit the kernels' 32-bit offsets.
pub fn pack_messages<T: AsRef<[u8]>>(inputs: &[T]) -> Result<(Vec<u32>, Vec<u32>), String> {
    let total: usize = inputs.iter().map(|m| m.as_ref().len()).sum();
    if total > u32::MAX as usize - 4 {
        return Err(format!("{total} bytes of messages in one batch"));
    }
    let mut bytes = Vec::with_capacity(total);
    let mut off = Vec::with_capacity(inputs.len() + 1);
    for m in inputs {
        off.push(bytes.len() as u32);
        bytes.extend_from_slice(m.as_ref());
    }
    off.push(bytes.len() as u32);
    let mut words = bytes_to_words(&bytes);
    if words.is_empty() {
        // A batch of empty messages still passes a valid buffer.
        words.push(0);
    }
    Ok((words, off))
}

/// The `n` signatures (64 bytes each) of a structure-of-arrays result; in
/// parallel for large batches ([`super::soa::each`]).
pub fn signatures(soa: &[u32], n: usize) -> Vec<Vec<u8>> {
    super::soa::each(n, |i| {
        let mut w = [0u32; SIG_WORDS];
        super::soa::gather(soa, n, i, &mut w);
        let mut sig = Vec::with_capacity(4 * SIG_WORDS);
        for v in w {
            sig.extend_from_slice(&v.to_le_bytes());
        }
        sig
    })
}

/// Signatures back into the kernels' structure-of-arrays layout (for
/// sampled checks, which gather some items into a batch of their own).
pub fn signatures_to_soa<T: AsRef<[u8]>>(sigs: &[T]) -> Vec<u32> {
    let n = sigs.len();
    let mut out = vec![0u32; SIG_WORDS * n];
    for (i, s) in sigs.iter().enumerate() {
        for (w, word) in bytes_to_words(s.as_ref())
            .into_iter()
            .enumerate()
            .take(SIG_WORDS)
        {
            out[w * n + i] = word;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_blob_of_the_rfc_8032_test_1_key() {
        // RFC 8032 7.1 TEST 1.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let pkey = PKey::private_key_from_raw_bytes(&seed, Id::ED25519).unwrap();
        let blob = pack_key(&pkey).unwrap();
        assert_eq!(blob.len(), KEY_WORDS);
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &seed);
        let h = h.as_ref();
        let mut a = h[..32].to_vec();
        a[0] &= 248;
        a[31] = (a[31] & 127) | 64;
        assert_eq!(blob[..8], bytes_to_words(&a)[..]);
        assert_eq!(blob[8..16], bytes_to_words(&h[32..])[..]);
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        assert_eq!(blob[16..24], bytes_to_words(&public)[..]);
        // a is little-endian: its top byte has bit 6 set and bit 7 clear.
        assert_eq!(blob[7] >> 30, 0b01);
        assert_eq!(blob[0] & 7, 0);
    }

    #[test]
    fn other_keys_are_refused() {
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let err = pack_key(&PKey::from_ec_key(ec).unwrap()).unwrap_err();
        assert!(err.contains("not an Ed25519 key"), "{err}");
    }

    #[test]
    fn messages_pack_with_offsets() {
        let msgs: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![4, 5, 6, 7, 8], vec![]];
        let (words, off) = pack_messages(&msgs).unwrap();
        assert_eq!(off, [0, 0, 3, 8, 8]);
        assert_eq!(words, [0x0403_0201, 0x0807_0605]);
        let (words, off) = pack_messages(&[Vec::<u8>::new()]).unwrap();
        assert_eq!((words, off), (vec![0], vec![0, 0]));
    }

    #[test]
    fn signatures_round_trip_through_soa() {
        let sigs: Vec<Vec<u8>> = (0..3u8)
            .map(|i| (0..64u8).map(|b| b.wrapping_mul(7) ^ i).collect())
            .collect();
        let soa = signatures_to_soa(&sigs);
        assert_eq!(soa.len(), 3 * SIG_WORDS);
        // word 1 of item 2 at [1 * 3 + 2]
        assert_eq!(soa[5], u32::from_le_bytes([28 ^ 2, 35 ^ 2, 42 ^ 2, 49 ^ 2]));
        assert_eq!(signatures(&soa, 3), sigs);
        // Enough for parallel tasks.
        let n = 3 * super::super::soa::TASK_ITEMS + 1;
        let sigs: Vec<Vec<u8>> = (0..n)
            .map(|i| (0..64).map(|b| (i * 13 + b * 7) as u8).collect())
            .collect();
        assert_eq!(signatures(&signatures_to_soa(&sigs), n), sigs);
    }
}
