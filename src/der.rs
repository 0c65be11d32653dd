//! The little DER that sigmux reads and writes itself: ECDSA signature
//! values and the outer shape of a SubjectPublicKeyInfo. Everything else
//! (keys, certificates) goes through a full ASN.1 library.

use thiserror::Error;

/// A DER structure that does not have the shape sigmux expects.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed DER: {0}")]
pub struct DerError(pub &'static str);

/// One tag-length-value element and the bytes after it.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    rest: &'a [u8],
}

fn read_tlv(input: &[u8]) -> Result<Tlv<'_>, DerError> {
    let (&tag, after_tag) = input.split_first().ok_or(DerError("empty input"))?;
    let (&first, after_len) = after_tag.split_first().ok_or(DerError("missing length"))?;
    let (len, body) = if first < 0x80 {
        (first as usize, after_len)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 3 || after_len.len() < n {
            return Err(DerError("unsupported length encoding"));
        }
        let len = after_len[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        if len < 0x80 || (n > 1 && after_len[0] == 0) {
            return Err(DerError("non-minimal length"));
        }
        (len, &after_len[n..])
    };
    if body.len() < len {
        return Err(DerError("length runs past the end"));
    }
    Ok(Tlv {
        tag,
        value: &body[..len],
        rest: &body[len..],
    })
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// Encodes a big-endian unsigned integer as a DER INTEGER (minimal, positive).
fn push_uint(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let digits = if start == bytes.len() {
        &[0u8][..]
    } else {
        &bytes[start..]
    };
    let pad = digits[0] & 0x80 != 0;
    out.push(0x02);
    push_len(out, digits.len() + pad as usize);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
}

/// Turns a fixed-width `r‖s` ECDSA signature into the DER `ECDSA-Sig-Value`
/// that TLS and X.509 carry.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, DerError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(DerError(
            "r||s signature must have an even, non-zero length",
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    // One allocation of the exact size: GPU batches encode millions of
    // these a second.
    let body = uint_len(r) + uint_len(s);
    let mut out = Vec::with_capacity(1 + len_len(body) + body);
    out.push(0x30);
    push_len(&mut out, body);
    push_uint(&mut out, r);
    push_uint(&mut out, s);
    Ok(out)
}

/// The length of [`push_uint`]'s encoding of `bytes`.
fn uint_len(bytes: &[u8]) -> usize {
    let digits = match bytes.iter().position(|&b| b != 0) {
        Some(start) => &bytes[start..],
        None => &[0u8][..],
    };
    let content = digits.len() + usize::from(digits[0] & 0x80 != 0);
    1 + len_len(content) + content
}

/// The length of [`push_len`]'s encoding of `len`.
fn len_len(len: usize) -> usize {
    match len {
        0..0x80 => 1,
        0x80..0x100 => 2,
        _ => 3,
    }
}

/// Turns a DER `ECDSA-Sig-Value` into fixed-width `r‖s`, each half
/// `field_len` bytes, as PKCS#11 tokens and JOSE want it.
pub fn ecdsa_der_to_raw(der: &[u8], field_len: usize) -> Result<Vec<u8>, DerError> {
    let seq = read_tlv(der)?;
    if seq.tag != 0x30 || !seq.rest.is_empty() {
        return Err(DerError("ECDSA signature is not a single SEQUENCE"));
    }
    let mut out = vec![0u8; 2 * field_len];
    let mut rest = seq.value;
    for half in 0..2 {
        let int = read_tlv(rest)?;
        if int.tag != 0x02 || int.value.is_empty() {
            return Err(DerError("ECDSA signature component is not an INTEGER"));
        }
        if int.value[0] & 0x80 != 0 {
            return Err(DerError("ECDSA signature component is negative"));
        }
        let digits = match int.value {
            [0, tail @ ..] if !tail.is_empty() => {
                if tail[0] & 0x80 == 0 {
                    return Err(DerError("ECDSA signature component is not minimal"));
                }
                tail
            }
            v => v,
        };
        if digits.len() > field_len {
            return Err(DerError("ECDSA signature component is too large"));
        }
        let end = (half + 1) * field_len;
        out[end - digits.len()..end].copy_from_slice(digits);
        rest = int.rest;
    }
    if !rest.is_empty() {
        return Err(DerError("trailing data in ECDSA signature"));
    }
    Ok(out)
}

/// The parts of a SubjectPublicKeyInfo sigmux needs: the algorithm
/// identifier (as DER) and the contents of the subjectPublicKey BIT STRING.
pub struct SpkiParts<'a> {
    /// The complete AlgorithmIdentifier SEQUENCE.
    pub algorithm: &'a [u8],
    /// The subjectPublicKey bits without the unused-bits octet.
    pub public_key: &'a [u8],
}

/// Splits a SubjectPublicKeyInfo into its algorithm and key bits.
pub fn spki_parts(spki: &[u8]) -> Result<SpkiParts<'_>, DerError> {
    let outer = read_tlv(spki)?;
    if outer.tag != 0x30 || !outer.rest.is_empty() {
        return Err(DerError("SubjectPublicKeyInfo is not a single SEQUENCE"));
    }
    let alg = read_tlv(outer.value)?;
    if alg.tag != 0x30 {
        return Err(DerError("AlgorithmIdentifier is not a SEQUENCE"));
    }
    let alg_len = outer.value.len() - alg.rest.len();
    let bits = read_tlv(alg.rest)?;
    if bits.tag != 0x03 || !bits.rest.is_empty() {
        return Err(DerError("subjectPublicKey is not a BIT STRING"));
    }
    match bits.value.split_first() {
        Some((0, key)) => Ok(SpkiParts {
            algorithm: &outer.value[..alg_len],
            public_key: key,
        }),
        _ => Err(DerError("subjectPublicKey has unused bits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_der_round_trip_with_high_bits_and_leading_zeros() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a pad byte
        raw[63] = 1; // s is tiny: leading zeros are dropped
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
        assert_eq!(ecdsa_der_to_raw(&der, 32).unwrap(), raw);
    }

    #[test]
    fn p384_uses_long_form_length_when_needed() {
        let raw = vec![0xffu8; 96];
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..2], &[0x30, 0x66]);
        assert_eq!(ecdsa_der_to_raw(&der, 48).unwrap(), raw);
    }

    /// The same bytes as OpenSSL's encoder, for values with and without
    /// a sign pad and with leading zero bytes, up to P-521's 66 bytes (the
    /// outer length then takes the long form), in exactly the space used.
    #[test]
    fn der_matches_openssl_byte_for_byte() {
        use openssl::bn::BigNum;
        use openssl::ecdsa::EcdsaSig;
        for half in [32usize, 48, 66] {
            for case in 0..64u32 {
                let mut raw = vec![0u8; 2 * half];
                openssl::rand::rand_bytes(&mut raw).unwrap();
                if case & 1 == 1 {
                    raw[0] |= 0x80;
                }
                if case & 2 == 2 {
                    raw[half] &= 0x7f;
                }
                let zeros = (case as usize >> 2) % half;
                raw[half..half + zeros].fill(0);
                if case == 63 {
                    raw[..half - 1].fill(0);
                }
                let (r, s) = raw.split_at(half);
                let want = EcdsaSig::from_private_components(
                    BigNum::from_slice(r).unwrap(),
                    BigNum::from_slice(s).unwrap(),
                )
                .unwrap()
                .to_der()
                .unwrap();
                let got = ecdsa_raw_to_der(&raw).unwrap();
                assert_eq!(got, want, "{half}-byte halves, case {case}");
                assert_eq!(got.len(), got.capacity(), "one exact allocation");
            }
        }
    }

    #[test]
    fn rejects_malformed_signatures() {
        assert!(ecdsa_der_to_raw(&[], 32).is_err());
        assert!(ecdsa_der_to_raw(&[0x30, 0x03, 0x02, 0x01], 32).is_err());
        assert!(ecdsa_der_to_raw(&[0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01], 32).is_err());
        assert!(
            ecdsa_der_to_raw(&[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01], 32).is_err()
        );
        let too_big = ecdsa_raw_to_der(&[0x7f; 66]).unwrap();
        assert!(ecdsa_der_to_raw(&too_big, 32).is_err());
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }
}
