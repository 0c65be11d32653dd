//! Rotation and revocation of the intermediate signing CA. A new
//! intermediate is *prepared* (published in the bundle, not signing), then
//! *activated* (signs; the old one drains: it stays in the bundle until the
//! last SVID it signed has expired), then the drained one is *retired*. The
//! emergency path revokes the active intermediate and activates a fresh one
//! at once. The key of a retired or revoked intermediate is destroyed: it
//! signs nothing any more.

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
use crate::keys::{Key, KeyHome, KeyStore, Ski};
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

/// Makes and signs a new intermediate with `status`, valid from `now`.
#[allow(clippy::too_many_arguments)]
fn new_intermediate(
    state: &CaState,
    store: &KeyStore,
    engine: &Engine,
    root: &Arc<Key>,
    kind: KeyKind,
    home: &KeyHome,
    ttl: Duration,
    status: CaStatus,
    now: i64,
) -> Result<IntermediateRecord> {
    let td = TrustDomain::parse(&state.trust_domain)
        .map_err(|e| Error::Invalid(format!("CA state trust domain: {e}")))?;
    let serial = Serial::random().map_err(|e| Error::Invalid(e.to_string()))?;
    let tag = &serial.to_hex()[..8];
    let key = store.generate_in(&format!("ca-int-{tag}"), kind, home)?;
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
        home: home.clone(),
    })
}

/// The kind and home of the active intermediate's key (a successor is made
/// alike unless told otherwise).
fn active_key(state: &CaState) -> (KeyKind, KeyHome) {
    state
        .intermediates
        .iter()
        .rev()
        .find(|i| i.status == CaStatus::Active)
        .map_or((KeyKind::P256, KeyHome::Soft), |i| (i.kind, i.home.clone()))
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
    let _lock = CaState::lock(data_dir)?;
    prepare_at(data_dir, store, engine, passphrase, kind, ttl, now()?)
}

/// [`prepare`] at the time `now` (Unix seconds).
fn prepare_at(
    data_dir: &Path,
    store: &KeyStore,
    engine: &Engine,
    passphrase: Option<&str>,
    kind: Option<KeyKind>,
    ttl: Duration,
    now: i64,
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
    let (active_kind, home) = active_key(&state);
    let kind = kind.unwrap_or(active_kind);
    let rec = new_intermediate(
        &state,
        store,
        engine,
        &root,
        kind,
        &home,
        ttl,
        CaStatus::Prepared,
        now,
    )?;
    state.intermediates.push(rec.clone());
    state.bundle_sequence += 1;
    state.save(data_dir)?;
    Ok(rec)
}

/// `ca rotate activate`: the prepared intermediate signs from now on; the
/// previous one drains. Returns (previous serial, new serial).
pub fn activate(data_dir: &Path) -> Result<(Option<String>, String)> {
    let _lock = CaState::lock(data_dir)?;
    activate_at(data_dir, now()?)
}

/// [`activate`] at the time `now` (Unix seconds).
fn activate_at(data_dir: &Path, now: i64) -> Result<(Option<String>, String)> {
    let mut state = CaState::require(data_dir)?;
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
    let _lock = CaState::lock(data_dir)?;
    retire_at(data_dir, max_svid_ttl, force, now()?)
}

/// [`retire`] at the time `now` (Unix seconds).
fn retire_at(
    data_dir: &Path,
    max_svid_ttl: Duration,
    force: bool,
    now: i64,
) -> Result<Vec<String>> {
    let mut state = CaState::require(data_dir)?;
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

/// Fraction of the active intermediate's life after which [`tick`] prepares
/// its successor (SPIRE's default: half).
pub const PREPARE_AT: (i64, i64) = (1, 2);

/// Fraction of the active intermediate's life after which [`tick`] activates
/// the prepared one (SPIRE's default: five sixths).
pub const ACTIVATE_AT: (i64, i64) = (5, 6);

/// What one [`tick`] of the rotation schedule did (or could not do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TickAction {
    /// A new intermediate was prepared (in the bundle, not signing).
    Prepared {
        /// Its serial.
        serial: String,
        /// Its key's name in the store.
        key: String,
    },
    /// The prepared intermediate now signs; the previous one drains.
    Activated {
        /// The one that drains now.
        previous: Option<String>,
        /// The one that signs now.
        active: String,
    },
    /// Drained intermediates left the bundle.
    Retired {
        /// Their serials.
        serials: Vec<String>,
    },
    /// The key of a retired or revoked intermediate was destroyed.
    KeyDestroyed(DestroyedKey),
    /// A step was due but cannot be done here (a warning, not recorded).
    Skipped {
        /// Why.
        why: String,
    },
}

impl TickAction {
    /// The audit record of this action (`None` for a skipped step).
    #[must_use]
    pub fn audit_record(&self) -> Option<(String, serde_json::Value)> {
        use serde_json::json;
        match self {
            TickAction::Prepared { serial, key } => Some((
                "ca_rotate_prepare".into(),
                json!({ "serial": serial, "key": key, "scheduled": true }),
            )),
            TickAction::Activated { previous, active } => Some((
                "ca_rotate_activate".into(),
                json!({ "active": active, "draining": previous, "scheduled": true }),
            )),
            TickAction::Retired { serials } => Some((
                "ca_rotate_retire".into(),
                json!({ "retired": serials, "scheduled": true }),
            )),
            TickAction::KeyDestroyed(k) => Some(k.audit_record()),
            TickAction::Skipped { .. } => None,
        }
    }
}

impl std::fmt::Display for TickAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TickAction::Prepared { serial, .. } => write!(
                f,
                "prepared intermediate {serial} (in the bundle, not signing)"
            ),
            TickAction::Activated {
                previous: Some(p),
                active,
            } => write!(f, "intermediate {active} is active; {p} drains"),
            TickAction::Activated {
                previous: None,
                active,
            } => write!(f, "intermediate {active} is active"),
            TickAction::Retired { serials } => write!(f, "retired {}", serials.join(", ")),
            TickAction::KeyDestroyed(k) => write!(f, "{k}"),
            TickAction::Skipped { why } => write!(f, "rotation skipped: {why}"),
        }
    }
}

/// The key of a retired or revoked intermediate, destroyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestroyedKey {
    /// The key's name in the store.
    pub name: String,
    /// Its KeyId (hex).
    pub key_id: String,
    /// The serial of the intermediate it belonged to.
    pub intermediate: String,
    /// `retired` or `revoked`.
    pub reason: &'static str,
}

impl DestroyedKey {
    /// The audit record of the destruction (`key.destroy`).
    #[must_use]
    pub fn audit_record(&self) -> (String, serde_json::Value) {
        (
            "key.destroy".into(),
            serde_json::json!({
                "name": self.name,
                "key_id": self.key_id,
                "intermediate": self.intermediate,
                "reason": self.reason,
            }),
        )
    }
}

impl std::fmt::Display for DestroyedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "destroyed key {} of {} intermediate {}",
            self.name, self.reason, self.intermediate
        )
    }
}

/// Destroys the keys of retired and revoked intermediates that are still
/// stored (`ca rotate retire`, `ca revoke --intermediate`; `serve` does it
/// on its rotation schedule). Such a key signs nothing any more, no SVID and
/// no CRL, so keeping it would only keep a way to mint certificates under a
/// CA certificate that may still be valid. Returns the keys destroyed and,
/// for each that could not be, why: it stays, and the next call tries
/// again.
///
/// # Errors
///
/// When the CA state cannot be locked or read.
pub fn destroy_dead_keys(
    data_dir: &Path,
    store: &KeyStore,
) -> Result<(Vec<DestroyedKey>, Vec<String>)> {
    let _lock = CaState::lock(data_dir)?;
    let state = CaState::require(data_dir)?;
    Ok(destroy_keys_of(&state, store))
}

fn destroy_keys_of(state: &CaState, store: &KeyStore) -> (Vec<DestroyedKey>, Vec<String>) {
    let mut destroyed = Vec::new();
    let mut failed = Vec::new();
    for i in &state.intermediates {
        let reason = match i.status {
            CaStatus::Retired => "retired",
            CaStatus::Revoked => "revoked",
            _ => continue,
        };
        match store.destroy(&i.key_name) {
            Ok(Some(key)) => destroyed.push(DestroyedKey {
                name: i.key_name.clone(),
                key_id: key.id().to_string(),
                intermediate: i.serial.clone(),
                reason,
            }),
            Ok(None) => {}
            Err(e) => failed.push(format!(
                "cannot destroy key {} of {reason} intermediate {}: {e}",
                i.key_name, i.serial
            )),
        }
    }
    (destroyed, failed)
}

/// `now` is at least `frac` of the way from `not_before` to `not_after`.
fn past(rec: &IntermediateRecord, frac: (i64, i64), now: i64) -> bool {
    let life = i128::from(rec.not_after) - i128::from(rec.not_before);
    let at = i128::from(rec.not_before) + life * i128::from(frac.0) / i128::from(frac.1);
    i128::from(now) >= at
}

/// One step of the rotation schedule at time `now` (Unix seconds), as
/// `serve` runs it every few seconds:
///
/// * draining intermediates that stopped signing at least `max_svid_ttl`
///   ago (their last SVID has expired) are retired;
/// * the prepared intermediate is activated once the active one has passed
///   [`ACTIVATE_AT`] (5/6) of its life;
/// * a new intermediate (same key kind, same lifetime as the active one,
///   capped at the root's) is prepared once the active one has passed
///   [`PREPARE_AT`] (1/2) of its life and none is prepared. This needs the
///   root key: with an offline root and no `passphrase` the step is
///   returned as [`TickAction::Skipped`].
///
/// Preparing and activating never happen in the same step, so the new
/// intermediate is in the bundle for a while before it signs. Returns what
/// was done; nothing when nothing was due.
///
/// # Errors
///
/// CA state, key store, engine and I/O errors.
pub fn tick(
    data_dir: &Path,
    store: &KeyStore,
    engine: &Engine,
    passphrase: Option<&str>,
    max_svid_ttl: Duration,
    now: i64,
) -> Result<Vec<TickAction>> {
    let _lock = CaState::lock(data_dir)?;
    let mut done = Vec::new();
    let state = CaState::require(data_dir)?;
    let drained = state.intermediates.iter().any(|i| {
        i.status == CaStatus::Draining
            && now
                >= i.draining_since
                    .unwrap_or(now)
                    .saturating_add(secs(max_svid_ttl))
    });
    let state = if drained {
        let serials = retire_at(data_dir, max_svid_ttl, false, now)?;
        done.push(TickAction::Retired { serials });
        CaState::require(data_dir)?
    } else {
        state
    };
    // Every check, not only right after a retirement: a key the CLI could
    // not destroy (a token that was unreachable) goes as soon as it can.
    let (destroyed, failed) = destroy_keys_of(&state, store);
    done.extend(destroyed.into_iter().map(TickAction::KeyDestroyed));
    done.extend(failed.into_iter().map(|why| TickAction::Skipped { why }));
    let active = state
        .intermediates
        .iter()
        .rev()
        .find(|i| i.status == CaStatus::Active)
        .cloned();
    let prepared = state
        .intermediates
        .iter()
        .any(|i| i.status == CaStatus::Prepared);
    if prepared {
        if active.as_ref().is_none_or(|a| past(a, ACTIVATE_AT, now)) {
            let (previous, active) = activate_at(data_dir, now)?;
            done.push(TickAction::Activated { previous, active });
        }
        return Ok(done);
    }
    let Some(active) = active else {
        return Ok(done);
    };
    if !past(&active, PREPARE_AT, now) {
        return Ok(done);
    }
    if state.root.key_name.is_none() && passphrase.is_none() {
        done.push(TickAction::Skipped {
            why: format!(
                "intermediate {} is past half its life but the root key is offline; run `sigmux ca rotate prepare` with {} set",
                active.serial,
                super::authority::ROOT_PASSPHRASE_ENV
            ),
        });
        return Ok(done);
    }
    let life = active.not_after - active.not_before - secs(CA_BACKDATE);
    if now.saturating_add(life).min(state.root.not_after) <= active.not_after {
        done.push(TickAction::Skipped {
            why: format!(
                "the root CA expires at {}: a new intermediate would not outlive {}; renew the root",
                state.root.not_after, active.serial
            ),
        });
        return Ok(done);
    }
    let ttl = Duration::from_secs(u64::try_from(life.max(3600)).unwrap_or(3600));
    let rec = prepare_at(data_dir, store, engine, passphrase, None, ttl, now)?;
    done.push(TickAction::Prepared {
        serial: rec.serial,
        key: rec.key_name,
    });
    Ok(done)
}

/// `ca revoke --serial HEX`: records a revoked SVID.
pub fn revoke_serial(data_dir: &Path, serial: &str) -> Result<bool> {
    let _lock = CaState::lock(data_dir)?;
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
    let _lock = CaState::lock(data_dir)?;
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
    let home = state.intermediates[old].home.clone();
    let rec = new_intermediate(
        &state,
        store,
        engine,
        &root,
        kind,
        &home,
        ttl,
        CaStatus::Active,
        now()?,
    )?;
    state.intermediates[old].status = CaStatus::Revoked;
    let revoked = state.intermediates[old].serial.clone();
    let serial = rec.serial.clone();
    state.intermediates.push(rec);
    state.bundle_sequence += 1;
    state.save(data_dir)?;
    Ok((revoked, serial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{InitOptions, init};

    fn engine() -> Engine {
        crate::testutil::cpu_engine()
    }

    fn store(dir: &Path) -> KeyStore {
        crate::testutil::key_store(dir)
    }

    fn statuses(dir: &Path) -> Vec<CaStatus> {
        CaState::require(dir)
            .unwrap()
            .intermediates
            .iter()
            .map(|i| i.status)
            .collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn tick_prepares_at_half_activates_at_five_sixths_retires_after_drain() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let engine = engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let state = init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        let first = state.intermediates[0].clone();
        let life = first.not_after - first.not_before;
        let at = |num: i64, den: i64| first.not_before + life * num / den;
        let t = |now: i64| tick(dir.path(), &store, &engine, None, HOUR, now).unwrap();

        // Young: nothing.
        assert!(t(first.not_before).is_empty());
        assert!(t(at(1, 2) - 1).is_empty());
        assert_eq!(statuses(dir.path()), [CaStatus::Active]);

        // Half its life: a successor is prepared, published, not signing.
        let done = t(at(1, 2));
        let [TickAction::Prepared { serial, key }] = done.as_slice() else {
            panic!("{done:?}");
        };
        let st = CaState::require(dir.path()).unwrap();
        assert_eq!(statuses(dir.path()), [CaStatus::Active, CaStatus::Prepared]);
        let next = st.intermediates[1].clone();
        assert_eq!(&next.serial, serial);
        assert_eq!(&next.key_name, key);
        assert_eq!(next.kind, first.kind);
        assert_eq!(next.not_before, at(1, 2) - secs(CA_BACKDATE));
        assert_eq!(next.not_after - next.not_before, life);
        assert_eq!(st.bundle_sequence, state.bundle_sequence + 1);
        assert!(store.get(key).is_ok());
        let (event, fields) = done[0].audit_record().unwrap();
        assert_eq!(event, "ca_rotate_prepare");
        assert_eq!(fields["serial"], serial.as_str());

        // Between 1/2 and 5/6: nothing more.
        assert!(t(at(1, 2) + 1).is_empty());
        assert!(t(at(5, 6) - 1).is_empty());
        assert_eq!(statuses(dir.path()), [CaStatus::Active, CaStatus::Prepared]);

        // 5/6: the prepared one signs, the old one drains.
        let switch = at(5, 6);
        let done = t(switch);
        assert_eq!(
            done,
            [TickAction::Activated {
                previous: Some(first.serial.clone()),
                active: next.serial.clone(),
            }]
        );
        assert_eq!(done[0].audit_record().unwrap().0, "ca_rotate_activate");
        let st = CaState::require(dir.path()).unwrap();
        assert_eq!(st.intermediates[0].status, CaStatus::Draining);
        assert_eq!(st.intermediates[0].draining_since, Some(switch));
        assert_eq!(st.intermediates[1].status, CaStatus::Active);

        // Draining until the longest SVID it signed has expired.
        assert!(t(switch + 1).is_empty());
        assert!(t(switch + secs(HOUR) - 1).is_empty());
        assert_eq!(statuses(dir.path()), [CaStatus::Draining, CaStatus::Active]);
        let first_key = store.get(&first.key_name).unwrap();
        let done = t(switch + secs(HOUR));
        assert_eq!(
            done,
            [
                TickAction::Retired {
                    serials: vec![first.serial.clone()],
                },
                TickAction::KeyDestroyed(DestroyedKey {
                    name: first.key_name.clone(),
                    key_id: first_key.id().to_string(),
                    intermediate: first.serial.clone(),
                    reason: "retired",
                }),
            ]
        );
        assert_eq!(done[0].audit_record().unwrap().0, "ca_rotate_retire");
        let (event, fields) = done[1].audit_record().unwrap();
        assert_eq!(event, "key.destroy");
        assert_eq!(fields["intermediate"], first.serial.as_str());
        assert_eq!(statuses(dir.path()), [CaStatus::Retired, CaStatus::Active]);
        // The retired intermediate's key is gone, from memory and disk; the
        // root's and the active intermediate's stay.
        assert!(matches!(
            store.get(&first.key_name),
            Err(Error::UnknownKey(_))
        ));
        let keys_dir = dir.path().join("keys");
        assert!(!keys_dir.join(format!("{}.key", first.key_name)).exists());
        assert!(store.get(&next.key_name).is_ok());
        assert!(store.get(state.root.key_name.as_deref().unwrap()).is_ok());
        assert!(t(switch + secs(HOUR) + 1).is_empty());

        // The next cycle follows the new intermediate's own life.
        let life2 = next.not_after - next.not_before;
        let half2 = next.not_before + life2 / 2;
        assert!(t(half2 - 1).is_empty());
        assert!(matches!(t(half2).as_slice(), [TickAction::Prepared { .. }]));
        assert_eq!(
            statuses(dir.path()),
            [CaStatus::Retired, CaStatus::Active, CaStatus::Prepared]
        );
    }

    #[test]
    fn tick_skips_preparing_with_an_offline_root_and_no_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let engine = engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let mut opts = InitOptions::new(td);
        opts.offline_root = Some(dir.path().join("root.pem"));
        let state = init(dir.path(), &store, &engine, &opts, Some("pass-1234")).unwrap();
        let first = &state.intermediates[0];
        let half = first.not_before + (first.not_after - first.not_before) / 2;
        let done = tick(dir.path(), &store, &engine, None, HOUR, half).unwrap();
        let [TickAction::Skipped { why }] = done.as_slice() else {
            panic!("{done:?}");
        };
        assert!(why.contains("offline"), "{why}");
        assert!(done[0].audit_record().is_none());
        assert_eq!(statuses(dir.path()), [CaStatus::Active]);
        let done = tick(dir.path(), &store, &engine, Some("pass-1234"), HOUR, half).unwrap();
        assert!(matches!(done.as_slice(), [TickAction::Prepared { .. }]));
    }

    #[test]
    fn dead_keys_are_destroyed_once_and_a_failure_leaves_the_key_for_the_next_try() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let engine = engine();
        let td = TrustDomain::parse("example.org").unwrap();
        init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        // Another process that loaded every key before the destruction.
        let other = crate::testutil::key_store(dir.path());
        let (old, _new) =
            revoke_intermediate(dir.path(), &store, &engine, None, HOUR * 24).unwrap();
        let st = CaState::require(dir.path()).unwrap();
        let old_rec = st.intermediates.iter().find(|i| i.serial == old).unwrap();
        let old_id = store.get(&old_rec.key_name).unwrap().id().to_string();
        assert!(other.get(&old_rec.key_name).is_ok());

        let (destroyed, failed) = destroy_dead_keys(dir.path(), &store).unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            destroyed,
            [DestroyedKey {
                name: old_rec.key_name.clone(),
                key_id: old_id,
                intermediate: old.clone(),
                reason: "revoked",
            }]
        );
        assert!(matches!(
            store.get(&old_rec.key_name),
            Err(Error::UnknownKey(_))
        ));
        assert_eq!(
            destroy_dead_keys(dir.path(), &store).unwrap(),
            (vec![], vec![])
        );
        // The other process only drops its copy: nothing to destroy twice,
        // nothing recorded twice.
        assert_eq!(
            destroy_dead_keys(dir.path(), &other).unwrap(),
            (vec![], vec![])
        );
        assert!(matches!(
            other.get(&old_rec.key_name),
            Err(Error::UnknownKey(_))
        ));

        // A key in a token that cannot be reached stays, with the reason.
        let public = Key::ephemeral("x", KeyKind::P256).unwrap();
        let hsm = crate::keys::HsmRef {
            token: Some("t".into()),
            label: "hsm-int".into(),
            id: "01".into(),
        };
        store
            .register_hsm(Key::from_hsm("hsm-int", KeyKind::P256, public.spki_der(), hsm).unwrap())
            .unwrap();
        let mut st = CaState::require(dir.path()).unwrap();
        let mut dead = st.intermediates[0].clone();
        dead.serial = "00aa".into();
        dead.key_name = "hsm-int".into();
        dead.status = CaStatus::Retired;
        st.intermediates.push(dead);
        st.save(dir.path()).unwrap();
        let (destroyed, failed) = destroy_dead_keys(dir.path(), &store).unwrap();
        assert!(destroyed.is_empty());
        assert!(
            failed.len() == 1
                && failed[0].contains("hsm-int")
                && failed[0].contains("no token is configured"),
            "{failed:?}"
        );
        store.set_hsm_destroyer(Arc::new(|_| {
            Err(Error::Invalid("token unreachable".into()))
        }));
        let (_, failed) = destroy_dead_keys(dir.path(), &store).unwrap();
        assert!(failed[0].contains("token unreachable"), "{failed:?}");
        assert!(store.get("hsm-int").is_ok());
        assert!(dir.path().join("keys/hsm-int.key").exists());
        // Once the token destroys it, the reference goes too.
        store.set_hsm_destroyer(Arc::new(|_| Ok(())));
        let (destroyed, failed) = destroy_dead_keys(dir.path(), &store).unwrap();
        assert!(failed.is_empty() && destroyed.len() == 1, "{failed:?}");
        assert!(!dir.path().join("keys/hsm-int.key").exists());
    }
}
