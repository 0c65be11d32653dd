//! Certificate revocation lists: one per intermediate, signed by that
//! intermediate's key through the engine like any other signature. A CRL
//! lists every revoked SVID serial the CA has recorded (serials are random
//! 128-bit numbers, so listing one under an intermediate that did not issue
//! it cannot revoke anything else).
//!
//! [`CrlCache`] keeps each signed CRL until it nears its nextUpdate or the
//! CA state it was made from changes, so serving a CRL costs no signature.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::authority::{CaState, CaStatus, pem_to_der, secs};
use super::svid::{assemble, encode_time, seq, signature_algorithm, tlv};
use crate::engine::{Engine, SignRequest};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyStore, Ski};
use crate::scheme::{Scheme, SignInput};

/// How long a CRL is good for; clients fetch a fresh one after this.
pub const CRL_VALIDITY: Duration = Duration::from_secs(3600);

/// A cached CRL is replaced this long before its nextUpdate, so a client
/// never gets one about to expire.
pub const CRL_REFRESH_BEFORE: Duration = Duration::from_secs(15 * 60);

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
    let issuer = subject_der(&rec.cert_pem, "intermediate")?;
    let mut entries = Vec::new();
    // A state written before serials were stored in one form may hold two
    // spellings of one serial: list it once.
    let mut seen = std::collections::HashSet::new();
    for r in &state.revoked {
        let serial = super::rotation::canonical_serial(&r.serial).map_err(|_| {
            Error::Invalid(format!("CA state: revoked serial {} is not hex", r.serial))
        })?;
        if !seen.insert(serial.clone()) {
            continue;
        }
        let bytes = hex::decode(&serial).map_err(|_| {
            Error::Invalid(format!("CA state: revoked serial {} is not hex", r.serial))
        })?;
        entries.push((bytes, r.revoked_at));
    }
    let (scheme, tbs) = tbs_cert_list(
        &key,
        issuer,
        &entries,
        now,
        now.saturating_add(secs(CRL_VALIDITY)),
    )?;
    let sig = engine
        .sign(SignRequest::new(
            key,
            scheme,
            SignInput::Message(tbs.clone()),
        ))
        .await?;
    assemble(&tbs, scheme, &sig.bytes).map_err(|e| Error::Invalid(e.to_string()))
}

/// The subject (DER) of the CA certificate `cert_pem`: a CRL's issuer.
/// `what` names the certificate in errors.
fn subject_der(cert_pem: &str, what: &str) -> Result<Vec<u8>> {
    openssl::x509::X509::from_der(&pem_to_der(cert_pem)?)
        .map_err(|e| Error::Invalid(format!("{what} certificate: {e}")))?
        .subject_name()
        .to_der()
        .map_err(|e| Error::Invalid(format!("{what} subject: {e}")))
}

/// The TBSCertList of a CRL by `key` (whose certificate's subject is
/// `issuer`, DER) listing `entries` (serial, revocation time), valid from
/// `this_update` to `next_update`; with the scheme to sign it with.
fn tbs_cert_list(
    key: &Key,
    issuer: Vec<u8>,
    entries: &[(Vec<u8>, i64)],
    this_update: i64,
    next_update: i64,
) -> Result<(Scheme, Vec<u8>)> {
    let scheme = Scheme::default_for(key.kind());
    let alg = signature_algorithm(scheme)
        .ok_or_else(|| Error::Invalid(format!("{scheme} cannot sign a CRL")))?;
    let revoked: Vec<Vec<u8>> = entries
        .iter()
        .map(|(serial, at)| seq(&[&uint(serial), &encode_time(*at)]))
        .collect();
    let aki = seq(&[&tlv(0x80, &Ski::of_spki(key.spki_der())?.0)]);
    // Seconds since the epoch only ever grow: a monotonic CRL number.
    let number = uint(&this_update.max(0).to_be_bytes());
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
        encode_time(this_update),
        encode_time(next_update),
    ];
    if !revoked.is_empty() {
        parts.push(seq(&revoked.iter().map(Vec::as_slice).collect::<Vec<_>>()));
    }
    parts.push(extensions);
    Ok((
        scheme,
        seq(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>()),
    ))
}

/// The root's CRL (PEM), signed with `root` at `now`: every revoked
/// intermediate. It is signed when the root key is at hand (`ca init`,
/// `ca rotate prepare`, `ca revoke --intermediate`), which for an offline
/// root is rarely, so it is good until the root itself expires.
pub fn root_crl_pem(engine: &Engine, root: &Arc<Key>, state: &CaState, now: i64) -> Result<String> {
    let issuer = subject_der(&state.root.cert_pem, "root")?;
    let mut entries = Vec::new();
    for i in &state.intermediates {
        if i.status != CaStatus::Revoked {
            continue;
        }
        let serial = hex::decode(&i.serial).map_err(|_| {
            Error::Invalid(format!(
                "CA state: intermediate serial {} is not hex",
                i.serial
            ))
        })?;
        entries.push((serial, i.revoked_at.unwrap_or(now)));
    }
    let (scheme, tbs) = tbs_cert_list(
        root,
        issuer,
        &entries,
        now,
        state.root.not_after.max(now + 1),
    )?;
    let sig = engine.sign_blocking(SignRequest::new(
        root.clone(),
        scheme,
        SignInput::Message(tbs.clone()),
    ))?;
    let der = assemble(&tbs, scheme, &sig.bytes).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(pem::encode(&pem::Pem::new("X509 CRL", der)))
}

/// One signed CRL and what it was made from.
struct CachedCrl {
    /// The CA state it lists.
    made_from: Arc<CaState>,
    /// Its thisUpdate, Unix seconds.
    this_update: i64,
    der: Vec<u8>,
}

impl CachedCrl {
    /// Whether it may still be served at `now` for `state`: not near its
    /// nextUpdate (nor from the future: a clock set back), and made from a
    /// state with the same intermediate record and revoked list.
    fn serves(&self, state: &Arc<CaState>, serial: &str, now: i64) -> bool {
        let until = self
            .this_update
            .saturating_add(secs(CRL_VALIDITY))
            .saturating_sub(secs(CRL_REFRESH_BEFORE));
        if now < self.this_update || now >= until {
            return false;
        }
        if Arc::ptr_eq(&self.made_from, state) {
            return true;
        }
        let record = |st: &CaState| {
            st.intermediates
                .iter()
                .find(|i| i.serial == serial)
                .cloned()
        };
        self.made_from.revoked == state.revoked && record(&self.made_from) == record(state)
    }
}

/// Signed CRLs by intermediate serial. A CRL is signed again only when the
/// cached one nears its nextUpdate ([`CRL_REFRESH_BEFORE`]) or when the CA
/// state changes what it would say: a revocation, or a rotation changing the
/// intermediate's record (status, certificate). Concurrent misses for one
/// intermediate wait for one signature rather than each making their own;
/// misses for different intermediates do not wait for each other.
#[derive(Default)]
pub struct CrlCache {
    /// One slot per intermediate of the CA state (never per asked-for
    /// serial, so unknown serials cannot grow it).
    slots: parking_lot::Mutex<HashMap<String, Arc<CrlSlot>>>,
    signed: AtomicU64,
}

/// The cached CRL of one intermediate; its lock is held while signing.
type CrlSlot = tokio::sync::Mutex<Option<CachedCrl>>;

impl CrlCache {
    /// The CRL (DER) of intermediate `serial` for `state` at `now`: the
    /// cached one while it [serves](CachedCrl::serves), else a new one from
    /// [`crl_der`].
    ///
    /// # Errors
    ///
    /// As [`crl_der`]; an intermediate that no longer signs CRLs also drops
    /// its cached one.
    pub async fn get(
        &self,
        engine: &Engine,
        store: &KeyStore,
        state: &Arc<CaState>,
        serial: &str,
        now: i64,
    ) -> Result<Vec<u8>> {
        let serial = serial.to_ascii_lowercase();
        if !state.intermediates.iter().any(|i| i.serial == serial) {
            // Not one of ours: crl_der names the problem; nothing is kept.
            return crl_der(engine, store, state, &serial, now).await;
        }
        let slot = self.slots.lock().entry(serial.clone()).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_mut()
            && c.serves(state, &serial, now)
        {
            // The next lookup with this state is one pointer compare.
            c.made_from = state.clone();
            return Ok(c.der.clone());
        }
        match crl_der(engine, store, state, &serial, now).await {
            Ok(der) => {
                self.signed.fetch_add(1, Ordering::Relaxed);
                *cached = Some(CachedCrl {
                    made_from: state.clone(),
                    this_update: now,
                    der: der.clone(),
                });
                Ok(der)
            }
            Err(e) => {
                // Retired or revoked: it signs no more CRLs.
                *cached = None;
                drop(cached);
                self.slots.lock().remove(&serial);
                Err(e)
            }
        }
    }

    /// CRLs signed through this cache so far.
    #[must_use]
    pub fn signed(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{InitOptions, RevokedSvid, init};
    use crate::ca::spiffe::TrustDomain;

    #[test]
    fn cache_signs_once_per_state_and_refreshes_before_next_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::key_store(dir.path());
        let engine = crate::testutil::cpu_engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let st = init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        let serial = st.intermediates[0].serial.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cache = CrlCache::default();
        let get = |st: &Arc<CaState>, serial: &str, now: i64| {
            rt.block_on(cache.get(&engine, &store, st, serial, now))
        };
        let t0 = 1_800_000_000;
        let st1 = Arc::new(st);
        let a = get(&st1, &serial, t0).unwrap();
        // Later, the same state (or an equal copy, as after re-reading an
        // unchanged file), upper-case serial: the same DER, no signature.
        assert_eq!(get(&st1, &serial, t0 + 60).unwrap(), a);
        let copy = Arc::new((*st1).clone());
        assert_eq!(get(&copy, &serial.to_uppercase(), t0 + 120).unwrap(), a);
        assert_eq!(cache.signed(), 1);
        // A revocation: a new CRL, listing it once, though a state from
        // before serials were stored in one form spells it twice.
        let mut revoked = (*st1).clone();
        for serial in ["0badc0de", "000BADC0DE"] {
            revoked.revoked.push(RevokedSvid {
                serial: serial.into(),
                revoked_at: t0 + 130,
            });
        }
        let st2 = Arc::new(revoked);
        let b = get(&st2, &serial, t0 + 140).unwrap();
        assert_ne!(a, b);
        assert_eq!(cache.signed(), 2);
        let crl = openssl::x509::X509Crl::from_der(&b).unwrap();
        let listed: Vec<Vec<u8>> = crl
            .get_revoked()
            .unwrap()
            .iter()
            .map(|r| r.serial_number().to_bn().unwrap().to_vec())
            .collect();
        assert_eq!(listed, vec![vec![0x0b, 0xad, 0xc0, 0xde]]);
        // Near its nextUpdate, or with the clock set back: signed again.
        let refresh = t0 + 140 + secs(CRL_VALIDITY) - secs(CRL_REFRESH_BEFORE);
        assert_eq!(get(&st2, &serial, refresh - 1).unwrap(), b);
        assert_eq!(cache.signed(), 2);
        assert_ne!(get(&st2, &serial, refresh).unwrap(), b);
        assert_eq!(cache.signed(), 3);
        get(&st2, &serial, t0).unwrap();
        assert_eq!(cache.signed(), 4);
        // The intermediate retired: refused, and nothing stale is served.
        let mut retired = (*st2).clone();
        retired.intermediates[0].status = CaStatus::Retired;
        assert!(get(&Arc::new(retired), &serial, t0 + 1).is_err());
        assert!(get(&st2, "00ff", t0).is_err());
        assert_eq!(cache.signed(), 4);
    }
}
