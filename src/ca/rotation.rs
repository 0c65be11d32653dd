//! Rotation and revocation of the intermediate signing CA. A new
//! intermediate is *prepared* (published in the bundle, not signing), then
//! *activated* (signs; the old one drains: it stays in the bundle until the
//! last SVID it signed has expired), then the drained one is *retired*. The
//! emergency path revokes the active intermediate and activates a fresh one
//! at once. The JWT-SVID signing key rotates with the intermediate: a
//! successor is prepared (published in the JWKS bundle) with each new
//! intermediate, signs from its activation, and the old one drains until
//! the last JWT-SVID it signed has expired. The key of a retired or revoked
//! intermediate or JWT key is destroyed: it signs nothing any more.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::authority::{
    CA_BACKDATE, CaCertSpec, CaState, CaStatus, IntermediateRecord, JwtKeyRecord, RevokedSvid,
    ca_name, jwt_kid, new_jwt_key, pem_to_der, secs, sign_ca_cert,
};
use super::spiffe::TrustDomain;
use super::svid::{Serial, pem_block, rfc3339, unix_secs};
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
    Ok(Arc::new(open_offline_root(state, path, pass)?))
}

/// The offline root key from `path`, decrypted with `pass` and checked
/// against the root certificate.
fn open_offline_root(state: &CaState, path: &Path, pass: &str) -> Result<Key> {
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
    Ok(key)
}

/// `ca reseal-root`: the offline root key file, opened with `old`, is
/// encrypted again under `new` with the current settings of
/// [`super::offline_root`] (a new passphrase, or a file written before
/// them), and replaces the old file atomically. Returns the file.
pub fn reseal_offline_root(data_dir: &Path, old: &str, new: &str) -> Result<std::path::PathBuf> {
    let _lock = CaState::lock(data_dir)?;
    let state = CaState::require(data_dir)?;
    let path = state.root.offline_file.clone().ok_or_else(|| {
        Error::Invalid(
            "the root key is in the key store, not in an offline file: nothing to reseal".into(),
        )
    })?;
    let key = open_offline_root(&state, &path, old)?;
    let tmp = path.with_extension(format!("reseal{}", std::process::id()));
    super::offline_root::write_new(&tmp, &key, new)?;
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&path, e));
    }
    // The rename itself must survive a crash, or the old file comes back.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(path)
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
        revoked_at: None,
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

/// What [`prepare`] made.
#[derive(Clone, Debug)]
pub struct Successors {
    /// The new intermediate.
    pub intermediate: IntermediateRecord,
    /// The new JWT-SVID signing key (`None` when one was prepared already,
    /// or the state has no active JWT key to succeed).
    pub jwt: Option<JwtKeyRecord>,
}

/// `ca rotate prepare`: a new intermediate and a new JWT-SVID signing key,
/// published in the bundle but not yet signing.
pub fn prepare(
    data_dir: &Path,
    store: &KeyStore,
    engine: &Engine,
    passphrase: Option<&str>,
    kind: Option<KeyKind>,
    ttl: Duration,
) -> Result<Successors> {
    let _lock = CaState::lock(data_dir)?;
    prepare_at(data_dir, store, engine, passphrase, kind, ttl, now()?)
}

/// [`prepare`] at the time `now` (Unix seconds).
pub(super) fn prepare_at(
    data_dir: &Path,
    store: &KeyStore,
    engine: &Engine,
    passphrase: Option<&str>,
    kind: Option<KeyKind>,
    ttl: Duration,
    now: i64,
) -> Result<Successors> {
    let mut state = CaState::require(data_dir)?;
    if let Some(p) = state
        .intermediates
        .iter_mut()
        .find(|i| i.status == CaStatus::Prepared)
    {
        if p.not_after > now {
            return Err(Error::Invalid(format!(
                "intermediate {} is already prepared; activate it first",
                p.serial
            )));
        }
        // It expired unused: it can never sign, so it leaves the bundle
        // (and its key is destroyed with the other retired ones).
        p.status = CaStatus::Retired;
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
    let jwt = prepare_jwt_key(&mut state, store)?;
    state.bundle_sequence += 1;
    // The root key is at hand (for an offline root, rarely): its CRL is
    // signed afresh.
    state.root_crl_pem = Some(super::crl::root_crl_pem(engine, &root, &state, now)?);
    state.save(data_dir)?;
    Ok(Successors {
        intermediate: rec,
        jwt,
    })
}

/// A successor for the active JWT-SVID signing key (same kind and scheme),
/// recorded as prepared; `None` when one is prepared already or no key is
/// active.
fn prepare_jwt_key(state: &mut CaState, store: &KeyStore) -> Result<Option<JwtKeyRecord>> {
    if state
        .jwt_keys
        .iter()
        .any(|j| j.status == CaStatus::Prepared)
    {
        return Ok(None);
    }
    let Some(active) = state
        .jwt_keys
        .iter()
        .rev()
        .find(|j| j.status == CaStatus::Active)
    else {
        return Ok(None);
    };
    let rec = successor_jwt_key(store, active, CaStatus::Prepared)?;
    state.jwt_keys.push(rec.clone());
    Ok(Some(rec))
}

/// A new JWT-SVID signing key of the same kind and scheme as `of`,
/// recorded with `status`.
fn successor_jwt_key(
    store: &KeyStore,
    of: &JwtKeyRecord,
    status: CaStatus,
) -> Result<JwtKeyRecord> {
    let kind = store.get(&of.key_name)?.kind();
    let key = new_jwt_key(store, kind)?;
    Ok(JwtKeyRecord {
        key_name: key.name().to_string(),
        kid: jwt_kid(&key),
        scheme: of.scheme,
        status,
        draining_since: None,
    })
}

/// What [`activate`] switched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The intermediate that drains now.
    pub previous: Option<String>,
    /// The intermediate that signs now.
    pub active: String,
    /// The `kid` of the JWT-SVID signing key that signs now, when a
    /// prepared one was switched in with the intermediate.
    pub jwt_kid: Option<String>,
}

/// `ca rotate activate`: the prepared intermediate (and JWT-SVID signing
/// key) signs from now on; the previous one drains.
pub fn activate(data_dir: &Path) -> Result<Activation> {
    let _lock = CaState::lock(data_dir)?;
    activate_at(data_dir, now()?)
}

/// [`activate`] at the time `now` (Unix seconds).
pub(super) fn activate_at(data_dir: &Path, now: i64) -> Result<Activation> {
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
    let prepared = &state.intermediates[next];
    if prepared.not_after <= now {
        return Err(Error::Invalid(format!(
            "the prepared intermediate {} expired at {}: it would sign nothing; run `sigmux ca rotate prepare` for a new one",
            prepared.serial,
            rfc3339(prepared.not_after)
        )));
    }
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
    let mut jwt_kid = None;
    if let Some(n) = state
        .jwt_keys
        .iter()
        .position(|j| j.status == CaStatus::Prepared)
    {
        for j in state.jwt_keys.iter_mut() {
            if j.status == CaStatus::Active {
                j.status = CaStatus::Draining;
                j.draining_since = Some(now);
            }
        }
        state.jwt_keys[n].status = CaStatus::Active;
        jwt_kid = Some(state.jwt_keys[n].kid.clone());
    }
    // The bundle's contents are unchanged (both are in it), so no new
    // sequence number.
    state.save(data_dir)?;
    Ok(Activation {
        previous,
        active: serial,
        jwt_kid,
    })
}

/// What [`retire`] took out of the bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retirement {
    /// Serials of the retired intermediates.
    pub serials: Vec<String>,
    /// `kid`s of the retired JWT-SVID signing keys.
    pub jwt_kids: Vec<String>,
}

/// `ca rotate retire`: draining intermediates and JWT-SVID signing keys
/// whose SVIDs have all expired (drained for at least `max_svid_ttl`) leave
/// the bundle; `force` retires them anyway.
pub fn retire(data_dir: &Path, max_svid_ttl: Duration, force: bool) -> Result<Retirement> {
    let _lock = CaState::lock(data_dir)?;
    retire_at(data_dir, max_svid_ttl, force, now()?)
}

/// [`retire`] at the time `now` (Unix seconds).
fn retire_at(data_dir: &Path, max_svid_ttl: Duration, force: bool, now: i64) -> Result<Retirement> {
    let mut state = CaState::require(data_dir)?;
    let mut retired = Retirement::default();
    let mut waiting = Vec::new();
    let drained = |since: Option<i64>| {
        let done_at = drained_at(since, now, max_svid_ttl);
        (force || now >= done_at, done_at)
    };
    for i in state.intermediates.iter_mut() {
        if i.status != CaStatus::Draining {
            continue;
        }
        match drained(i.draining_since) {
            (true, _) => {
                i.status = CaStatus::Retired;
                retired.serials.push(i.serial.clone());
            }
            (false, at) => {
                waiting.push(format!("intermediate {} (until {})", i.serial, rfc3339(at)))
            }
        }
    }
    for j in state.jwt_keys.iter_mut() {
        if j.status != CaStatus::Draining {
            continue;
        }
        match drained(j.draining_since) {
            (true, _) => {
                j.status = CaStatus::Retired;
                retired.jwt_kids.push(j.kid.clone());
            }
            (false, at) => waiting.push(format!("JWT key {} (until {})", j.kid, rfc3339(at))),
        }
    }
    if retired == Retirement::default() {
        return Err(Error::Invalid(if waiting.is_empty() {
            "nothing is draining (no intermediate, no JWT key)".into()
        } else {
            format!(
                "SVIDs signed by {} may still be valid; retire after that time or use --force",
                waiting.join(", ")
            )
        }));
    }
    state.bundle_sequence += 1;
    prune_revoked(&mut state, now);
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
        /// The `kid` of the JWT-SVID signing key prepared with it.
        jwt_kid: Option<String>,
    },
    /// The prepared intermediate (and JWT key) now signs; the previous one
    /// drains.
    Activated(Activation),
    /// Drained intermediates and JWT keys left the bundle.
    Retired(Retirement),
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
            TickAction::Prepared {
                serial,
                key,
                jwt_kid,
            } => Some((
                "ca_rotate_prepare".into(),
                json!({ "serial": serial, "key": key, "jwt_kid": jwt_kid, "scheduled": true }),
            )),
            TickAction::Activated(a) => Some((
                "ca_rotate_activate".into(),
                json!({
                    "active": a.active,
                    "draining": a.previous,
                    "jwt_kid": a.jwt_kid,
                    "scheduled": true,
                }),
            )),
            TickAction::Retired(r) => Some((
                "ca_rotate_retire".into(),
                json!({ "retired": r.serials, "retired_jwt": r.jwt_kids, "scheduled": true }),
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
            TickAction::Activated(a) => write!(f, "{a}"),
            TickAction::Retired(r) => write!(f, "{r}"),
            TickAction::KeyDestroyed(k) => write!(f, "{k}"),
            TickAction::Skipped { why } => write!(f, "rotation skipped: {why}"),
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "intermediate {} is active", self.active)?;
        if let Some(p) = &self.previous {
            write!(f, "; {p} drains")?;
        }
        if let Some(k) = &self.jwt_kid {
            write!(f, "; JWT key {k} signs")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Retirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self
            .serials
            .iter()
            .map(|s| format!("intermediate {s}"))
            .chain(self.jwt_kids.iter().map(|k| format!("JWT key {k}")))
            .collect();
        write!(f, "retired {}", all.join(", "))
    }
}

/// The key of a retired or revoked intermediate or JWT-SVID signing key,
/// destroyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestroyedKey {
    /// The key's name in the store.
    pub name: String,
    /// Its KeyId (hex).
    pub key_id: String,
    /// What it was: `intermediate <serial>` or `JWT key <kid>`.
    pub role: String,
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
                "role": self.role,
                "reason": self.reason,
            }),
        )
    }
}

impl std::fmt::Display for DestroyedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "destroyed key {} of {} {}",
            self.name, self.reason, self.role
        )
    }
}

/// Destroys the keys of retired and revoked intermediates and JWT-SVID
/// signing keys that are still stored (`ca rotate retire`, `ca revoke
/// --intermediate`; `serve` does it on its rotation schedule). Such a key
/// signs nothing any more, no SVID and no CRL, so keeping it would only
/// keep a way to mint credentials under a CA certificate (or `kid`) that
/// relying parties may still accept. Returns the keys destroyed and, for
/// each that could not be, why: it stays, and the next call tries again.
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
    let dead = |status: CaStatus| match status {
        CaStatus::Retired => Some("retired"),
        CaStatus::Revoked => Some("revoked"),
        _ => None,
    };
    let candidates = state
        .intermediates
        .iter()
        .filter_map(|i| {
            dead(i.status).map(|r| (&i.key_name, format!("intermediate {}", i.serial), r))
        })
        .chain(state.jwt_keys.iter().filter_map(|j| {
            dead(j.status).map(|r| (&j.key_name, format!("JWT key {}", j.kid), r))
        }));
    let mut destroyed = Vec::new();
    let mut failed = Vec::new();
    for (name, role, reason) in candidates {
        match store.destroy(name) {
            Ok(Some(key)) => destroyed.push(DestroyedKey {
                name: name.clone(),
                key_id: key.id().to_string(),
                role,
                reason,
            }),
            Ok(None) => {}
            Err(e) => failed.push(format!("cannot destroy key {name} of {reason} {role}: {e}")),
        }
    }
    (destroyed, failed)
}

/// `now` is at least `frac` of the way from `not_before` to `not_after`.
fn past(rec: &IntermediateRecord, frac: (i64, i64), now: i64) -> bool {
    now >= life_point(rec, frac)
}

/// The time (Unix seconds) `frac` of the way from `rec`'s `not_before` to
/// its `not_after`: where the schedule prepares or activates.
pub(crate) fn life_point(rec: &IntermediateRecord, frac: (i64, i64)) -> i64 {
    let life = i128::from(rec.not_after) - i128::from(rec.not_before);
    let at = i128::from(rec.not_before) + life * i128::from(frac.0) / i128::from(frac.1);
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// When something that stopped signing at `since` has drained: every
/// credential it signed, at most `max_ttl` long, has expired.
pub(crate) fn drained_at(since: Option<i64>, now: i64, max_ttl: Duration) -> i64 {
    since.unwrap_or(now).saturating_add(secs(max_ttl))
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
    let over = |status: CaStatus, since: Option<i64>| {
        status == CaStatus::Draining && now >= drained_at(since, now, max_svid_ttl)
    };
    let drained = state
        .intermediates
        .iter()
        .any(|i| over(i.status, i.draining_since))
        || state
            .jwt_keys
            .iter()
            .any(|j| over(j.status, j.draining_since));
    let state = if drained {
        done.push(TickAction::Retired(retire_at(
            data_dir,
            max_svid_ttl,
            false,
            now,
        )?));
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
            done.push(TickAction::Activated(activate_at(data_dir, now)?));
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
    let made = prepare_at(data_dir, store, engine, passphrase, None, ttl, now)?;
    done.push(TickAction::Prepared {
        serial: made.intermediate.serial,
        key: made.intermediate.key_name,
        jwt_kid: made.jwt.map(|j| j.kid),
    });
    Ok(done)
}

/// An SVID serial as an operator may write it (hex in any case, with or
/// without `0x`, with the colons `openssl x509 -text` prints, with leading
/// zeros) in one form: lower-case hex of the positive integer, without
/// leading zero bytes. Two spellings of one serial are one revocation.
pub fn canonical_serial(text: &str) -> Result<String> {
    let bad = |why: &str| Error::Invalid(format!("--serial '{}': {why}", text.trim()));
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(
            "not a hex serial number (like 4f0e...; colons as openssl prints them are fine)",
        ));
    }
    let significant = digits.trim_start_matches('0').to_ascii_lowercase();
    if significant.is_empty() {
        return Err(bad("a certificate serial is a positive number, not 0"));
    }
    if significant.len() > 40 {
        return Err(bad(
            "longer than 20 bytes, the most a certificate serial has",
        ));
    }
    Ok(if significant.len() % 2 == 1 {
        format!("0{significant}")
    } else {
        significant
    })
}

/// Whether a canonical serial has the shape of the ones this CA gives its
/// certificates ([`Serial::random`]: 16 bytes, the first 0x40 to 0x7f).
#[must_use]
pub fn could_be_ours(serial: &str) -> bool {
    serial.len() == 32 && matches!(serial.as_bytes()[0], b'4'..=b'7')
}

/// Drops the revoked serials no CRL needs any more: an SVID never outlives
/// the intermediate that signed it, so once every intermediate that existed
/// when a serial was revoked has expired, that SVID has too. Returns how
/// many were dropped. Without this the CRLs would grow for ever.
pub fn prune_revoked(state: &mut CaState, now: i64) -> usize {
    let before = state.revoked.len();
    let intermediates = &state.intermediates;
    state.revoked.retain(|r| {
        let mut signers = intermediates
            .iter()
            .filter(|i| i.not_before <= r.revoked_at)
            .peekable();
        // No signer known (cannot happen after `ca init`): kept.
        signers.peek().is_none() || signers.any(|i| i.not_after >= now)
    });
    before - state.revoked.len()
}

/// `ca revoke --serial HEX`: records a revoked SVID. Returns the serial in
/// canonical form and whether it was not revoked before.
pub fn revoke_serial(data_dir: &Path, serial: &str) -> Result<(String, bool)> {
    let serial = canonical_serial(serial)?;
    let _lock = CaState::lock(data_dir)?;
    let mut state = CaState::require(data_dir)?;
    prune_revoked(&mut state, now()?);
    if state
        .revoked
        .iter()
        .any(|r| canonical_serial(&r.serial).is_ok_and(|s| s == serial))
    {
        return Ok((serial, false));
    }
    state.revoked.push(RevokedSvid {
        serial: serial.clone(),
        revoked_at: now()?,
    });
    state.save(data_dir)?;
    Ok((serial, true))
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
    let now = now()?;
    state.intermediates[old].status = CaStatus::Revoked;
    state.intermediates[old].revoked_at = Some(now);
    let revoked = state.intermediates[old].serial.clone();
    let serial = rec.serial.clone();
    state.intermediates.push(rec);
    state.bundle_sequence += 1;
    // The root's CRL lists it: a chain through it fails for relying
    // parties that check CRLs, even though SVIDs carry it themselves.
    state.root_crl_pem = Some(super::crl::root_crl_pem(engine, &root, &state, now)?);
    state.save(data_dir)?;
    Ok((revoked, serial))
}

/// `ca revoke --jwt-key`: the emergency path for the JWT-SVID signing key.
/// A new key (same kind and scheme) signs from now on; the active one is
/// revoked and leaves the JWKS bundle at once, so the tokens it signed stop
/// verifying. Returns (revoked kid, new kid).
///
/// # Errors
///
/// When no JWT key is active; key store and I/O errors.
pub fn revoke_jwt_key(data_dir: &Path, store: &KeyStore) -> Result<(String, String)> {
    let _lock = CaState::lock(data_dir)?;
    let mut state = CaState::require(data_dir)?;
    let Some(old) = state
        .jwt_keys
        .iter()
        .rposition(|j| j.status == CaStatus::Active)
    else {
        return Err(Error::Invalid("no active JWT key to revoke".into()));
    };
    let next = successor_jwt_key(store, &state.jwt_keys[old], CaStatus::Active)?;
    let new_kid = next.kid.clone();
    state.jwt_keys[old].status = CaStatus::Revoked;
    let revoked = state.jwt_keys[old].kid.clone();
    state.jwt_keys.push(next);
    state.bundle_sequence += 1;
    state.save(data_dir)?;
    Ok((revoked, new_kid))
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
        let first_jwt = state.jwt_keys[0].clone();
        let done = t(at(1, 2));
        let [
            TickAction::Prepared {
                serial,
                key,
                jwt_kid: Some(next_kid),
            },
        ] = done.as_slice()
        else {
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
        assert_eq!(fields["jwt_kid"], next_kid.as_str());
        // The JWT key's successor is made alike and published, not signing.
        let jwt_statuses = |st: &CaState| st.jwt_keys.iter().map(|j| j.status).collect::<Vec<_>>();
        assert_eq!(jwt_statuses(&st), [CaStatus::Active, CaStatus::Prepared]);
        let next_jwt = st.jwt_keys[1].clone();
        assert_eq!(&next_jwt.kid, next_kid);
        assert_eq!(next_jwt.scheme, first_jwt.scheme);
        assert_eq!(
            store.get(&next_jwt.key_name).unwrap().kind(),
            store.get(&first_jwt.key_name).unwrap().kind()
        );
        let kids = |st: &CaState| -> Vec<String> {
            let jwks = crate::ca::authority::bundle_jwks(st, &store).unwrap();
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|k| k["use"] == "jwt-svid")
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(kids(&st), [first_jwt.kid.clone(), next_kid.clone()]);

        // Between 1/2 and 5/6: nothing more.
        assert!(t(at(1, 2) + 1).is_empty());
        assert!(t(at(5, 6) - 1).is_empty());
        assert_eq!(statuses(dir.path()), [CaStatus::Active, CaStatus::Prepared]);

        // 5/6: the prepared one signs, the old one drains.
        let switch = at(5, 6);
        let done = t(switch);
        assert_eq!(
            done,
            [TickAction::Activated(Activation {
                previous: Some(first.serial.clone()),
                active: next.serial.clone(),
                jwt_kid: Some(next_kid.clone()),
            })]
        );
        assert_eq!(done[0].audit_record().unwrap().0, "ca_rotate_activate");
        let st = CaState::require(dir.path()).unwrap();
        assert_eq!(st.intermediates[0].status, CaStatus::Draining);
        assert_eq!(st.intermediates[0].draining_since, Some(switch));
        assert_eq!(st.intermediates[1].status, CaStatus::Active);
        assert_eq!(jwt_statuses(&st), [CaStatus::Draining, CaStatus::Active]);
        assert_eq!(st.jwt_keys[0].draining_since, Some(switch));
        assert_eq!(
            kids(&st).len(),
            2,
            "the old JWT key stays while its tokens live"
        );

        // Draining until the longest SVID it signed has expired.
        assert!(t(switch + 1).is_empty());
        assert!(t(switch + secs(HOUR) - 1).is_empty());
        assert_eq!(statuses(dir.path()), [CaStatus::Draining, CaStatus::Active]);
        let first_key = store.get(&first.key_name).unwrap();
        let first_jwt_key = store.get(&first_jwt.key_name).unwrap();
        let done = t(switch + secs(HOUR));
        assert_eq!(
            done,
            [
                TickAction::Retired(Retirement {
                    serials: vec![first.serial.clone()],
                    jwt_kids: vec![first_jwt.kid.clone()],
                }),
                TickAction::KeyDestroyed(DestroyedKey {
                    name: first.key_name.clone(),
                    key_id: first_key.id().to_string(),
                    role: format!("intermediate {}", first.serial),
                    reason: "retired",
                }),
                TickAction::KeyDestroyed(DestroyedKey {
                    name: first_jwt.key_name.clone(),
                    key_id: first_jwt_key.id().to_string(),
                    role: format!("JWT key {}", first_jwt.kid),
                    reason: "retired",
                }),
            ]
        );
        let (event, fields) = done[0].audit_record().unwrap();
        assert_eq!(event, "ca_rotate_retire");
        assert_eq!(fields["retired_jwt"][0], first_jwt.kid.as_str());
        let (event, fields) = done[1].audit_record().unwrap();
        assert_eq!(event, "key.destroy");
        assert_eq!(fields["role"], format!("intermediate {}", first.serial));
        assert_eq!(statuses(dir.path()), [CaStatus::Retired, CaStatus::Active]);
        let st = CaState::require(dir.path()).unwrap();
        assert_eq!(jwt_statuses(&st), [CaStatus::Retired, CaStatus::Active]);
        assert_eq!(kids(&st), std::slice::from_ref(next_kid));
        assert!(store.get(&first_jwt.key_name).is_err());
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
    fn revoked_serials_leave_once_every_intermediate_that_could_have_signed_them_expired() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine) = (store(dir.path()), engine());
        let td = TrustDomain::parse("example.org").unwrap();
        let state = init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        let first = state.intermediates[0].clone();
        let mut state = state;
        let revoked_at = first.not_before + 100;
        state.revoked.push(RevokedSvid {
            serial: "4aa".into(),
            revoked_at,
        });
        // A successor made after the revocation signed nothing revoked.
        let mut later = first.clone();
        later.not_before = revoked_at + 10;
        later.not_after = first.not_after + 1_000_000;
        state.intermediates.push(later);
        assert_eq!(prune_revoked(&mut state, first.not_after), 0);
        assert_eq!(state.revoked.len(), 1, "its signer is still valid");
        assert_eq!(prune_revoked(&mut state, first.not_after + 1), 1);
        assert!(state.revoked.is_empty());
        // Revoked after the successor appeared: either may have signed it.
        state.revoked.push(RevokedSvid {
            serial: "4bb".into(),
            revoked_at: revoked_at + 20,
        });
        assert_eq!(prune_revoked(&mut state, first.not_after + 1), 0);
    }

    #[test]
    fn tick_skips_preparing_with_an_offline_root_and_no_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let engine = engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let mut opts = InitOptions::new(td);
        opts.offline_root = Some(dir.path().join("root.pem"));
        let state = init(
            dir.path(),
            &store,
            &engine,
            &opts,
            Some("pass-1234-offline-root"),
        )
        .unwrap();
        let first = &state.intermediates[0];
        let half = first.not_before + (first.not_after - first.not_before) / 2;
        let done = tick(dir.path(), &store, &engine, None, HOUR, half).unwrap();
        let [TickAction::Skipped { why }] = done.as_slice() else {
            panic!("{done:?}");
        };
        assert!(why.contains("offline"), "{why}");
        assert!(done[0].audit_record().is_none());
        assert_eq!(statuses(dir.path()), [CaStatus::Active]);
        let done = tick(
            dir.path(),
            &store,
            &engine,
            Some("pass-1234-offline-root"),
            HOUR,
            half,
        )
        .unwrap();
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
                role: format!("intermediate {old}"),
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
