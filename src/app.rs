//! Wiring: from a [`Config`] to an opened key store, the enabled backends
//! and a running [`Engine`].

use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{self, CudaBackend, UnavailableCuda};
use crate::backend::pkcs11::{Pkcs11Backend, Token};
use crate::backend::{Availability, Backend};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::keys::{Kek, Key, KeyStore};
use crate::scheme::KeyKind;

/// How a command needs the key-encryption key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekUse {
    /// Public facts only (`keys list`, `keys public`).
    NotNeeded,
    /// Needed; an absent KEK file may be created while no keys exist yet.
    CreateIfNew,
    /// Needed; it must already exist.
    MustExist,
}

/// Opens the key store under the configured data dir, as `serve` and the
/// commands that sign or make keys do: [`open_key_store`], and with
/// [`KekUse::CreateIfNew`] (`serve`) and the issuance listener configured,
/// [`check_ca_signing_keys`] too, so that a CA that cannot sign stops the
/// start instead of failing every request.
pub fn open_keys(cfg: &Config, kek_use: KekUse) -> Result<KeyStore> {
    let store = open_key_store(cfg, kek_use)?;
    if kek_use == KekUse::CreateIfNew && matches!(cfg.issuance_settings(), Ok(Some(_))) {
        check_ca_signing_keys(cfg, &store)?;
    }
    Ok(store)
}

/// Says, one warning each, which key files could not be loaded and why (as
/// a SIGHUP reload does): the keys in them are not available, every other
/// key is.
pub fn warn_unreadable(store: &KeyStore) {
    for u in store.unreadable() {
        let remedy = if crate::keys::is_ca_key_name(&u.name) {
            "one of the CA's keys: restore the file from a backup of the data dir".to_string()
        } else {
            format!("`sigmux keys delete --name {}` removes the file", u.name)
        };
        tracing::warn!(
            key = %u.name,
            file = %u.file.display(),
            reason = %u.reason,
            "key file not loaded: the key in it is not available ({remedy})"
        );
    }
}

/// Fails when a key the CA signs with now (the active intermediate's, the
/// active JWT-SVID key) is in a key file that could not be loaded: the
/// issuance API could issue nothing.
///
/// # Errors
///
/// [`Error::Invalid`] naming the key, its file and the reason; the CA
/// state's own errors.
pub fn check_ca_signing_keys(cfg: &Config, store: &KeyStore) -> Result<()> {
    use crate::ca::authority::{CaState, CaStatus};
    let Some(state) = CaState::load(&cfg.data_dir)? else {
        return Ok(());
    };
    let unreadable = store.unreadable();
    let active = state
        .intermediates
        .iter()
        .filter(|i| i.status == CaStatus::Active)
        .map(|i| (format!("active intermediate {}", i.serial), &i.key_name))
        .chain(
            state
                .jwt_keys
                .iter()
                .filter(|j| j.status == CaStatus::Active)
                .map(|j| {
                    (
                        format!("active JWT-SVID signing key {}", j.kid),
                        &j.key_name,
                    )
                }),
        );
    for (role, name) in active {
        if let Some(u) = unreadable.iter().find(|u| u.name == *name) {
            return Err(Error::Invalid(format!(
                "the CA's {role} signs with key '{name}', whose file {} cannot be loaded ({}): the issuance listener could issue nothing; restore the file from a backup of the data dir",
                u.file.display(),
                u.reason
            )));
        }
    }
    Ok(())
}

/// Opens the key store under the configured data dir. When a KEK file is
/// created, says where on stderr (it must be backed up with the data dir).
/// A key file that cannot be loaded is warned of ([`warn_unreadable`]) and
/// does not stop the others.
pub fn open_key_store(cfg: &Config, kek_use: KekUse) -> Result<KeyStore> {
    let kek = match kek_use {
        KekUse::NotNeeded => None,
        KekUse::CreateIfNew | KekUse::MustExist => {
            let may_create = kek_use == KekUse::CreateIfNew && !KeyStore::has_keys(&cfg.data_dir);
            let (kek, created) = Kek::load(&cfg.kek_source(), may_create)?;
            if let Some(path) = created {
                eprintln!(
                    "sigmux: created key-encryption key at {} (back it up; keys in {} cannot be decrypted without it)",
                    path.display(),
                    cfg.data_dir.display()
                );
            }
            Some(kek)
        }
    };
    if kek_use != KekUse::NotNeeded {
        crate::keys::create_private_dir(&cfg.data_dir).map_err(|e| Error::io(&cfg.data_dir, e))?;
    }
    let store = KeyStore::open(&cfg.data_dir, kek)?.with_kek_source(cfg.kek_source());
    warn_unreadable(&store);
    // Keys asked to live in a token (a CA intermediate and its successors)
    // are made there through the configured tokens, and destroyed there at
    // the end of their life.
    if !cfg.backends.pkcs11.is_empty() {
        let cfg = cfg.clone();
        let maker_cfg = cfg.clone();
        store.set_hsm_maker(Arc::new(move |store, name, kind, token| {
            hsm_generate(&maker_cfg, store, name, kind, token)
        }));
        store.set_hsm_destroyer(Arc::new(move |key| hsm_destroy(&cfg, key)));
    }
    Ok(store)
}

/// The started backends; the CPU one is also kept by its own type, for the
/// bench's same-run comparison against the bare library.
pub struct Backends {
    /// Every started backend, in scheduling order.
    pub all: Vec<Arc<dyn Backend>>,
    /// The CPU backend, when started.
    pub cpu: Option<Arc<CpuBackend>>,
    /// The PKCS#11 backends, one per configured token.
    pub pkcs11: Vec<Arc<Pkcs11Backend>>,
    /// The CUDA backends that started, one per GPU.
    pub cuda: Vec<Arc<CudaBackend>>,
}

/// Starts the enabled backends. `only` restricts to one backend kind
/// (`cpu`, `cuda`, `pkcs11`) or `auto` for all.
pub fn start_backends(cfg: &Config, only: &str) -> Result<Backends> {
    let mut out: Vec<Arc<dyn Backend>> = Vec::new();
    let mut cpu = None;
    let mut pkcs11 = Vec::new();
    let mut gpus = Vec::new();
    match only {
        "auto" | "cpu" | "pkcs11" | "cuda" => {}
        other => {
            return Err(Error::Invalid(format!(
                "unknown backend '{other}' (expected cpu, cuda, pkcs11 or auto)"
            )));
        }
    }
    if (cfg.backends.cpu.enabled && only == "auto") || only == "cpu" {
        let c = Arc::new(CpuBackend::new(&cfg.cpu_config())?);
        out.push(c.clone());
        cpu = Some(c);
    }
    if only == "auto" || only == "pkcs11" {
        let tokens = cfg.pkcs11_configs()?;
        if tokens.is_empty() && only == "pkcs11" {
            return Err(Error::Config(
                "backend pkcs11 asked for, but no [backends.pkcs11] token is configured".into(),
            ));
        }
        for t in &tokens {
            let b = Arc::new(Pkcs11Backend::start(t)?);
            if out.iter().any(|o| o.name() == b.name()) {
                return Err(Error::Config(format!(
                    "two configured tokens are both named {}",
                    b.name()
                )));
            }
            out.push(b.clone());
            pkcs11.push(b);
        }
    }
    if (cfg.backends.cuda.enabled && only == "auto") || only == "cuda" {
        let ccfg = cfg.cuda_config()?;
        let mut reasons = Vec::new();
        match cuda::discover(&ccfg) {
            Ok(found) => {
                for f in found {
                    match f {
                        Ok(b) => {
                            let b = Arc::new(b);
                            out.push(b.clone());
                            gpus.push(b);
                        }
                        Err((name, reason)) => {
                            tracing::warn!(backend = %name, %reason, "GPU not used");
                            reasons.push(format!("{name}: {reason}"));
                            out.push(Arc::new(UnavailableCuda::new(name, reason)));
                        }
                    }
                }
            }
            Err(reason) => {
                reasons.push(reason.clone());
                out.push(Arc::new(UnavailableCuda::new("cuda", reason)));
            }
        }
        if only == "cuda" && gpus.is_empty() {
            return Err(Error::backend("cuda", reasons.join("; ")));
        }
    }
    if !out
        .iter()
        .any(|b| b.availability() == Availability::Available)
    {
        return Err(Error::Config(
            "no backend is enabled (backends.cpu.enabled = false, no [backends.pkcs11] token and no usable GPU)"
                .into(),
        ));
    }
    Ok(Backends {
        all: out,
        cpu,
        pkcs11,
        cuda: gpus,
    })
}

/// Starts an engine over the enabled backends.
pub fn start_engine(cfg: &Config, engine_cfg: EngineConfig, only: &str) -> Result<Arc<Engine>> {
    Ok(Arc::new(Engine::new(
        engine_cfg,
        start_backends(cfg, only)?.all,
    )?))
}

/// Fails unless at least one PKCS#11 token is configured (checked before
/// anything touches the data dir).
pub fn require_hsm(cfg: &Config) -> Result<()> {
    if cfg.pkcs11_configs()?.is_empty() {
        return Err(Error::Config(
            "no PKCS#11 token is configured ([backends.pkcs11]), so --backend hsm cannot be used"
                .into(),
        ));
    }
    Ok(())
}

/// Opens the configured token named `token`, or the only one configured.
fn hsm_token(cfg: &Config, token: Option<&str>) -> Result<Token> {
    let tokens = cfg.pkcs11_configs()?;
    let pick = match (token, tokens.as_slice()) {
        (_, []) => {
            return Err(Error::Config(
                "no PKCS#11 token is configured ([backends.pkcs11]), so --backend hsm cannot be used"
                    .into(),
            ));
        }
        (None, [one]) => one,
        (None, _) => {
            return Err(Error::Invalid(
                "several PKCS#11 tokens are configured; say which with --token LABEL".into(),
            ));
        }
        (Some(t), all) => all
            .iter()
            .find(|c| c.token.to_string() == t)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "token '{t}' is not configured (configured: {})",
                    all.iter()
                        .map(|c| c.token.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
    };
    Token::open(pick)
}

/// `keys generate --backend hsm`: makes the key pair inside the token and
/// records it (public facts and where to find it) in the key store.
pub fn hsm_generate(
    cfg: &Config,
    store: &KeyStore,
    name: &str,
    kind: KeyKind,
    token: Option<&str>,
) -> Result<Arc<Key>> {
    crate::keys::validate_name(name)?;
    if store.get(name).is_ok() {
        return Err(Error::KeyExists(name.to_string()));
    }
    let t = hsm_token(cfg, token)?;
    let made = t.generate(name, kind)?;
    let (label, id) = (made.hsm.label.clone(), made.hsm.id.clone());
    let recorded = Key::from_hsm(name, made.kind, &made.spki_der, made.hsm)
        .and_then(|key| store.register_hsm(key));
    recorded.map_err(|e| {
        // Unrecorded, the pair would be an orphan in the token that also
        // blocks the name: it goes again.
        let undone = hex::decode(&id)
            .map_err(|e| Error::Invalid(e.to_string()))
            .and_then(|raw| t.destroy_key(&label, &raw));
        let what = format!("key pair made in token '{}'", t.label());
        let note = match undone {
            Ok(_) => format!("the {what} was destroyed again"),
            Err(d) => format!(
                "the {what} (label '{label}', id {id}) could not be destroyed ({d}): remove it with pkcs11-tool"
            ),
        };
        Error::Invalid(format!("cannot record key '{name}': {e}; {note}"))
    })
}

/// Destroys an HSM key's objects in the token it is bound to or, for a key
/// not bound to one, in every configured token (a token that no longer
/// holds it is fine).
pub fn hsm_destroy(cfg: &Config, key: &Key) -> Result<()> {
    let h =
        key.info().hsm.as_ref().ok_or_else(|| {
            Error::Invalid(format!("key '{}' is not in a PKCS#11 token", key.name()))
        })?;
    let id = hex::decode(&h.id).map_err(|_| {
        Error::Invalid(format!(
            "key '{}' records a CKA_ID that is not hex: {}",
            key.name(),
            h.id
        ))
    })?;
    let tokens = match &h.token {
        Some(t) => vec![hsm_token(cfg, Some(t))?],
        None => cfg
            .pkcs11_configs()?
            .iter()
            .map(Token::open)
            .collect::<Result<Vec<_>>>()?,
    };
    for t in tokens {
        let gone = t.destroy_key(&h.label, &id)?;
        tracing::info!(
            key = key.name(),
            token = t.label(),
            objects = gone,
            "key destroyed in token"
        );
    }
    Ok(())
}

/// `keys import --backend hsm`: records a key that another tool made in a
/// token, found by label and/or id. With `token` it is bound to that token;
/// without it (and several tokens configured) it may run on every
/// configured token that holds the same key, and at least one must.
pub fn hsm_import(
    cfg: &Config,
    store: &KeyStore,
    name: Option<&str>,
    label: Option<&str>,
    id: Option<&[u8]>,
    token: Option<&str>,
) -> Result<Arc<Key>> {
    let name = name.or(label).ok_or_else(|| {
        Error::Invalid("give --name (or --label, which then names the key too)".into())
    })?;
    crate::keys::validate_name(name)?;
    if store.get(name).is_ok() {
        return Err(Error::KeyExists(name.to_string()));
    }
    let tokens = cfg.pkcs11_configs()?;
    let found = if token.is_some() || tokens.len() <= 1 {
        hsm_token(cfg, token)?.find(label, id)?
    } else {
        let mut hits = Vec::new();
        let mut misses = Vec::new();
        for t in &tokens {
            match Token::open(t).and_then(|t| t.find(label, id)) {
                Ok(k) => hits.push(k),
                Err(e) => misses.push(e.to_string()),
            }
        }
        let Some(first) = hits.first().cloned() else {
            return Err(Error::Invalid(format!(
                "no configured token holds that key: {}",
                misses.join("; ")
            )));
        };
        if hits.iter().any(|k| k.spki_der != first.spki_der) {
            return Err(Error::Invalid(
                "the tokens hold different keys under that label/id; pick one with --token".into(),
            ));
        }
        let mut any = first;
        any.hsm.token = None;
        any
    };
    store.register_hsm(Key::from_hsm(name, found.kind, &found.spki_der, found.hsm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{CaStatus, InitOptions, init};
    use crate::ca::spiffe::TrustDomain;

    /// `serve`'s way of opening the store: a bad key file is left out, the
    /// others are there; only when the CA's active signing key is in a bad
    /// file, and the issuance listener is configured, does it fail.
    #[test]
    fn the_store_serve_opens_tolerates_a_bad_file_but_not_the_cas_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::defaults();
        cfg.data_dir = dir.path().join("data");
        let store = open_keys(&cfg, KekUse::CreateIfNew).unwrap();
        let good = store.generate("good", KeyKind::P256).unwrap();
        store.generate("bad", KeyKind::Rsa2048).unwrap();
        let engine = crate::testutil::cpu_engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let st = init(&cfg.data_dir, &store, &engine, &InitOptions::new(td), None).unwrap();
        drop(store);
        let keys = cfg.data_dir.join("keys");
        std::fs::write(keys.join("bad.key"), b"junk").unwrap();

        let mut with_issuance = cfg.clone();
        with_issuance.issuance.cert = Some("cert.pem".into());
        with_issuance.issuance.key = Some("key.pem".into());
        with_issuance.issuance.client_ca = Some("ca.pem".into());
        assert!(matches!(with_issuance.issuance_settings(), Ok(Some(_))));
        for c in [&cfg, &with_issuance] {
            let store = open_keys(c, KekUse::CreateIfNew).unwrap();
            assert_eq!(store.get("good").unwrap().id(), good.id());
            assert!(store.get("good").unwrap().secret().is_ok());
            assert_eq!(store.unreadable()[0].name, "bad");
            assert!(store.get("bad").is_err());
        }

        // The active intermediate's key file damaged: serve with the
        // issuance listener stops, naming it; without it, it starts.
        let int = st
            .intermediates
            .iter()
            .find(|i| i.status == CaStatus::Active)
            .unwrap();
        let int_file = keys.join(format!("{}.key", int.key_name));
        let int_bytes = std::fs::read(&int_file).unwrap();
        std::fs::write(&int_file, &int_bytes[..int_bytes.len() / 2]).unwrap();
        let e = open_keys(&with_issuance, KekUse::CreateIfNew)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("active intermediate")
                && e.contains(&int.key_name)
                && e.contains(&int_file.display().to_string()),
            "{e}"
        );
        assert!(open_keys(&cfg, KekUse::CreateIfNew).is_ok());
        // Commands that only make keys or sign with others are not stopped.
        assert!(open_key_store(&with_issuance, KekUse::CreateIfNew).is_ok());
        assert!(open_keys(&with_issuance, KekUse::MustExist).is_ok());
        std::fs::write(&int_file, &int_bytes).unwrap();

        // Likewise the active JWT-SVID signing key.
        let jwt = st
            .jwt_keys
            .iter()
            .find(|j| j.status == CaStatus::Active)
            .unwrap();
        std::fs::write(keys.join(format!("{}.key", jwt.key_name)), b"{}").unwrap();
        let e = open_keys(&with_issuance, KekUse::CreateIfNew)
            .unwrap_err()
            .to_string();
        assert!(e.contains("JWT-SVID") && e.contains(&jwt.key_name), "{e}");
    }
}
