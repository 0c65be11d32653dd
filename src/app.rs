//! Wiring: from a [`Config`] to an opened key store, the enabled backends
//! and a running [`Engine`].

use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::keys::{Kek, KeyStore};

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

/// Opens the key store under the configured data dir. When a KEK file is
/// created, says where on stderr (it must be backed up with the data dir).
pub fn open_keys(cfg: &Config, kek_use: KekUse) -> Result<KeyStore> {
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
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| Error::io(&cfg.data_dir, e))?;
    }
    KeyStore::open(&cfg.data_dir, kek)
}

/// The started backends; the CPU one is also kept by its own type, for the
/// bench's same-run comparison against the bare library.
pub struct Backends {
    /// Every started backend, in scheduling order.
    pub all: Vec<Arc<dyn Backend>>,
    /// The CPU backend, when started.
    pub cpu: Option<Arc<CpuBackend>>,
}

/// Starts the enabled backends. `only` restricts to one backend kind
/// (`cpu`, `cuda`, `pkcs11`) or `auto` for all.
pub fn start_backends(cfg: &Config, only: &str) -> Result<Backends> {
    let mut out: Vec<Arc<dyn Backend>> = Vec::new();
    let mut cpu = None;
    match only {
        "auto" | "cpu" => {}
        "cuda" | "pkcs11" => {
            return Err(Error::Invalid(format!(
                "backend '{only}' is not available in this build yet"
            )));
        }
        other => {
            return Err(Error::Invalid(format!(
                "unknown backend '{other}' (expected cpu, cuda, pkcs11 or auto)"
            )));
        }
    }
    if cfg.backends.cpu.enabled || only == "cpu" {
        let c = Arc::new(CpuBackend::new(&cfg.cpu_config())?);
        out.push(c.clone());
        cpu = Some(c);
    }
    if out.is_empty() {
        return Err(Error::Config(
            "no backend is enabled (backends.cpu.enabled = false and nothing else configured)"
                .into(),
        ));
    }
    Ok(Backends { all: out, cpu })
}

/// Starts an engine over the enabled backends.
pub fn start_engine(cfg: &Config, engine_cfg: EngineConfig, only: &str) -> Result<Arc<Engine>> {
    Ok(Arc::new(Engine::new(
        engine_cfg,
        start_backends(cfg, only)?.all,
    )?))
}
