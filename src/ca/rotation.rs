//! Rotation and revocation of the intermediate signing CA. A new
//! intermediate is *prepared* (published in the bundle, not signing), then
//! *activated* (signs; the old one drains: it stays in the bundle until the
//! last SVID it signed has expired), then the drained one is *retired*. The
//! emergency path revokes the active intermediate and activates a fresh one
//! at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::authority::{
    CA_BACKDATE, CaCertSpec, CaState, CaStatus, IntermediateRecord, RevokedSvid, ca_name,
    pem_to_der, secs, sign_ca_cert,
};
use super::spiffe::TrustDomain;
use super::svid::{Serial, pem_block, unix_secs};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::{Key, KeyStore, Ski};
use crate::scheme::{KeyKind, Scheme};

fn now() -> Result<i64> {
    unix_secs(SystemTime::now()).map_err(|e| Error::Invalid(e.to_string()))
}

/// The root's private key: from the store, or from the offline file with
/// its passphrase.
fn root_key(state: &CaState, store: &KeyStore, passphrase: Option<&str>) -> Result<Arc<Key>> {
    if let Some(name) = &state.root.key_name {
        return store.get(name);
    }
    let path = state.root.offline_file.as_ref().ok_or_else(|| {
        Error::Invalid("the CA state names neither a root key nor an offline root file".into())
    })?;
    let pass = passphrase.ok_or_else(|| {
        Error::Invalid(format!(
            "the root key is offline ({}): set SIGMUX_ROOT_PASSPHRASE",
            path.display()
        ))
    })?;
    let pem = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
    let pkey = openssl::pkey::PKey::private_key_from_pem_passphrase(&pem, pass.as_bytes())
        .map_err(|_| {
            Error::Invalid(format!(
                "cannot decrypt the offline root {}: wrong passphrase or not an encrypted key",
                path.display()
            ))
        })?;
    let key = crate::keys::key_from_openssl("ca-root-offline", &pkey)?;
    if key.spki_der() != root_spki(state)?.as_slice() {
        return Err(Error::Invalid(format!(
            "{} does not hold the root CA's key",
            path.display()
        )));
    }
    Ok(Arc::new(key))
}

fn root_spki(state: &CaState) -> Result<Vec<u8>> {
    let der = pem_to_der(&state.root.cert_pem)?;
    let cert = openssl::x509::X509::from_der(&der)
        .map_err(|e| Error::Invalid(format!("root certificate: {e}")))?;
    cert.public_key()
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| Error::Invalid(format!("root certificate key: {e}")))
}

/// Makes and signs a new intermediate with `status`.
fn new_intermediate(
    state: &CaState,
    store: &KeyStore,
    engine: &Engine,
    root: &Arc<Key>,
    kind: KeyKind,
    ttl: Duration,
    status: CaStatus,
) -> Result<IntermediateRecord> {
    let td = TrustDomain::parse(&state.trust_domain)
        .map_err(|e| Error::Invalid(format!("CA state trust domain: {e}")))?;
    let now = now()?;
    let serial = Serial::random().map_err(|e| Error::Invalid(e.to_string()))?;
    let tag = &serial.to_hex()[..8];
    let key = store.generate(&format!("ca-int-{tag}"), kind)?;
    let not_before = now - secs(CA_BACKDATE);
    let not_after = now.saturating_add(secs(ttl)).min(state.root.not_after);
    let der = sign_ca_cert(
        engine,
        &CaCertSpec {
            serial,
            subject: ca_name(&format!("sigmux intermediate CA {tag}")),
            issuer: ca_name(&format!("sigmux root CA {}", &state.root.serial[..8])),
            issuer_ski: Ski::of_spki(root.spki_der())?.0.to_vec(),
            not_before,
            not_after,
            path_len: 0,
            spki: key.spki_der(),
            trust_domain: &td,
        },
        root,
    )?;
    Ok(IntermediateRecord {
        serial: serial.to_hex(),
        cert_pem: pem_block(&der),
        key_name: key.name().to_string(),
        kind,
        scheme: Scheme::default_for(kind),
        not_before,
        not_after,
        status,
        draining_since: None,
    })
}

fn active_kind(state: &CaState) -> KeyKind {
    state
        .intermediates
        .iter()
        .rev()
        .find(|i| i.status == CaStatus::Active)
        .map_or(KeyKind::P256, |i| i.kind)
}

/// `ca rotate prepare`: a new intermediate, published in the bundle but
/// not yet signing.
pub fn prepare(
    data_dir: &Path,
    store: &KeyStore,
    engine: &Engine,
    passphrase: Option<&str>,
    kind: Option<KeyKind>,
    ttl: Duration,
) -> Result<IntermediateRecord> {
    let mut state = CaState::require(data_dir)?;
    if let Some(p) = state
        .intermediates
        .iter()
        .find(|i| i.status == CaStatus::Prepared)
    {
        return Err(Error::Invalid(format!(
            "intermediate {} is already prepared; activate it first",
            p.serial
        )));
    }
    let root = root_key(&state, store, passphrase)?;
    let kind = kind.unwrap_or_else(|| active_kind(&state));
    let rec = new_intermediate(&state, store, engine, &root, kind, ttl, CaStatus::Prepared)?;
    state.intermediates.push(rec.clone());
    state.bundle_sequence += 1;
    state.save(data_dir)?;
    Ok(rec)
}

/// `ca rotate activate`: the prepared intermediate signs from now on; the
/// previous one drains. Returns (previous serial, new serial).
pub fn activate(data_dir: &Path) -> Result<(Option<String>, String)> {
    let mut state = CaState::require(data_dir)?;
    let now = now()?;
    let Some(next) = state
        .intermediates
        .iter()
        .position(|i| i.status == CaStatus::Prepared)
    else {
        return Err(Error::Invalid(
            "no prepared intermediate: run `sigmux ca rotate prepare` first".into(),
        ));
    };
    let mut previous = None;
    for i in state.intermediates.iter_mut() {
        if i.status == CaStatus::Active {
            i.status = CaStatus::Draining;
            i.draining_since = Some(now);
            previous = Some(i.serial.clone());
        }
    }
    state.intermediates[next].status = CaStatus::Active;
    let serial = state.intermediates[next].serial.clone();
    // The bundle's contents are unchanged (both are in it), so no new
    // sequence number.
    state.save(data_dir)?;
    Ok((previous, serial))
}

/// `ca rotate retire`: draining intermediates whose SVIDs have all expired
/// (drained for at least `max_svid_ttl`) leave the bundle; `force` retires
/// them anyway. Returns the retired serials.
pub fn retire(data_dir: &Path, max_svid_ttl: Duration, force: bool) -> Result<Vec<String>> {
    let mut state = CaState::require(data_dir)?;
    let now = now()?;
    let mut retired = Vec::new();
    let mut waiting = Vec::new();
    for i in state.intermediates.iter_mut() {
        if i.status != CaStatus::Draining {
            continue;
        }
        let done_at = i
            .draining_since
            .unwrap_or(now)
            .saturating_add(secs(max_svid_ttl));
        if force || now >= done_at {
            i.status = CaStatus::Retired;
            retired.push(i.serial.clone());
        } else {
            waiting.push(format!("{} (until {done_at})", i.serial));
        }
    }
    if retired.is_empty() {
        return Err(Error::Invalid(if waiting.is_empty() {
            "no intermediate is draining".into()
        } else {
            format!(
                "SVIDs signed by {} may still be valid; retire after that time or use --force",
                waiting.join(", ")
            )
        }));
    }
    state.bundle_sequence += 1;
    state.save(data_dir)?;
    Ok(retired)
}

/// `ca revoke --serial HEX`: records a revoked SVID.
pub fn revoke_serial(data_dir: &Path, serial: &str) -> Result<bool> {
    let serial = serial.trim().trim_start_matches("0x").to_ascii_lowercase();
    if serial.is_empty() || serial.len() > 40 || hex::decode(&serial).is_err() {
        return Err(Error::Invalid(format!(
            "--serial '{serial}' is not a hex serial number (up to 20 bytes)"
        )));
    }
    let mut state = CaState::require(data_dir)?;
    if state.revoked.iter().any(|r| r.serial == serial) {
        return Ok(false);
    }
    state.revoked.push(RevokedSvid {
        serial,
        revoked_at: now()?,
    });
    state.save(data_dir)?;
    Ok(true)
}

/// `ca revoke --intermediate`: the emergency path. A new intermediate is
/// made and activated at once; the active one is revoked and leaves the
/// bundle. Returns (revoked serial, new serial).
pub fn revoke_intermediate(
    data_dir: &Path,
    store: &KeyStore,
    engine: &Engine,
    passphrase: Option<&str>,
    ttl: Duration,
) -> Result<(String, String)> {
    let mut state = CaState::require(data_dir)?;
    let Some(old) = state
        .intermediates
        .iter()
        .position(|i| i.status == CaStatus::Active)
    else {
        return Err(Error::Invalid("no active intermediate to revoke".into()));
    };
    let root = root_key(&state, store, passphrase)?;
    let kind = state.intermediates[old].kind;
    let rec = new_intermediate(&state, store, engine, &root, kind, ttl, CaStatus::Active)?;
    state.intermediates[old].status = CaStatus::Revoked;
    let revoked = state.intermediates[old].serial.clone();
    let serial = rec.serial.clone();
    state.intermediates.push(rec);
    state.bundle_sequence += 1;
    state.save(data_dir)?;
    Ok((revoked, serial))
}
