//! Certificate revocation lists: one per intermediate, signed by that
//! intermediate's key through the engine like any other signature. A CRL
//! lists every revoked SVID serial the CA has recorded (serials are random
//! 128-bit numbers, so listing one under an intermediate that did not issue
//! it cannot revoke anything else).

use std::time::Duration;

use super::authority::{CaState, CaStatus, pem_to_der, secs};
use super::svid::{assemble, encode_time, seq, signature_algorithm, tlv};
use crate::engine::{Engine, SignRequest};
use crate::error::{Error, Result};
use crate::keys::{KeyStore, Ski};
use crate::scheme::{Scheme, SignInput};

/// How long a CRL is good for; clients fetch a fresh one after this.
pub const CRL_VALIDITY: Duration = Duration::from_secs(3600);

const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];

/// A non-negative DER INTEGER from big-endian bytes.
fn uint(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let mut v = bytes[start..].to_vec();
    if v.is_empty() || v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    tlv(0x02, &v)
}

fn extension(id: &[u8], value: &[u8]) -> Vec<u8> {
    seq(&[&tlv(0x06, id), &tlv(0x04, value)])
}

/// The CRL (DER) of the intermediate with serial `serial` (hex), issued at
/// `now` (Unix seconds). Intermediates that are retired or revoked no
/// longer sign CRLs.
pub async fn crl_der(
    engine: &Engine,
    store: &KeyStore,
    state: &CaState,
    serial: &str,
    now: i64,
) -> Result<Vec<u8>> {
    let serial = serial.to_ascii_lowercase();
    let rec = state
        .intermediates
        .iter()
        .find(|i| i.serial == serial)
        .ok_or_else(|| Error::Invalid(format!("no intermediate with serial {serial}")))?;
    if matches!(rec.status, CaStatus::Retired | CaStatus::Revoked) {
        return Err(Error::Invalid(
            format!(
                "intermediate {serial} is {:?} and no longer signs CRLs",
                rec.status
            )
            .to_lowercase(),
        ));
    }
    let key = store.get(&rec.key_name)?;
    let cert = openssl::x509::X509::from_der(&pem_to_der(&rec.cert_pem)?)
        .map_err(|e| Error::Invalid(format!("intermediate certificate: {e}")))?;
    let issuer = cert
        .subject_name()
        .to_der()
        .map_err(|e| Error::Invalid(format!("intermediate subject: {e}")))?;
    let scheme = Scheme::default_for(key.kind());
    let alg = signature_algorithm(scheme)
        .ok_or_else(|| Error::Invalid(format!("{scheme} cannot sign a CRL")))?;
    let mut revoked = Vec::new();
    for r in &state.revoked {
        let bytes = hex::decode(&r.serial).map_err(|_| {
            Error::Invalid(format!("CA state: revoked serial {} is not hex", r.serial))
        })?;
        revoked.push(seq(&[&uint(&bytes), &encode_time(r.revoked_at)]));
    }
    let aki = seq(&[&tlv(0x80, &Ski::of_spki(key.spki_der())?.0)]);
    // Seconds since the epoch only ever grow: a monotonic CRL number.
    let number = uint(&now.max(0).to_be_bytes());
    let extensions = tlv(
        0xa0,
        &seq(&[
            &extension(OID_AKI, &aki),
            &extension(OID_CRL_NUMBER, &number),
        ]),
    );
    let mut parts: Vec<Vec<u8>> = vec![
        uint(&[1]),
        alg,
        issuer,
        encode_time(now),
        encode_time(now.saturating_add(secs(CRL_VALIDITY))),
    ];
    if !revoked.is_empty() {
        parts.push(seq(&revoked.iter().map(Vec::as_slice).collect::<Vec<_>>()));
    }
    parts.push(extensions);
    let tbs = seq(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let sig = engine
        .sign(SignRequest::new(
            key,
            scheme,
            SignInput::Message(tbs.clone()),
        ))
        .await?;
    assemble(&tbs, scheme, &sig.bytes).map_err(|e| Error::Invalid(e.to_string()))
}
