//! The CUDA backend: our own constant-time kernels (`kernels/`), compiled at
//! start by NVRTC and run through cudarc, loaded dynamically so sigmux builds
//! and runs on machines without CUDA (the backend then reports
//! `unavailable: <reason>`).
//!
//! - [`discover`]: one [`CudaBackend`] per visible (and configured) GPU,
//!   named `cuda:0`, `cuda:1`, ...; no driver, no device or no NVRTC is a
//!   reason, never a panic.
//! - [`nvrtc`]: finding NVRTC, compiling every program for the device's
//!   architecture, the on-disk cache of compiled kernels.
//! - [`device`]: the driver probe and one opened device.
//! - `key_cache`: key blobs uploaded once, kept under a byte budget (LRU),
//!   wiped on eviction and at shutdown.
//! - `backend`: batches in SoA layout on pinned buffers over several
//!   streams, PKCS#1 v1.5 / PSS encoding on the host, ECDSA nonces on the
//!   device, and the device-side check of every result before release.

mod backend;
pub mod codec;
pub mod device;
pub mod ec_layout;
pub mod ed_layout;
pub mod host_ec;
pub mod host_ed25519;
pub mod host_nonce;
pub mod host_rsa;
mod key_cache;
pub mod nvrtc;
pub mod ptx_check;
pub mod rsa_layout;
pub mod soa;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

pub use backend::CudaBackend;
pub use key_cache::KeyCache;

use super::{Availability, Backend, Capabilities, CostSeed};
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::scheme::{KeyKind, Scheme};

/// How many ECDSA signatures the device checks before release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckPolicy {
    /// Every signature (the default): the engine then skips its own check.
    All,
    /// Every N-th signature of a batch, from a random offset: more
    /// throughput, and a faulty device is still caught within a few
    /// batches, but a wrong signature between two samples can leave.
    Sample(u32),
}

impl FromStr for CheckPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(CheckPolicy::All);
        }
        let bad = || format!("'{s}' is not \"all\" or \"sample:N\" (N from 1 to 1000000)");
        let n: u32 = s
            .strip_prefix("sample:")
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        match n {
            1 => Ok(CheckPolicy::All),
            2..=1_000_000 => Ok(CheckPolicy::Sample(n)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for CheckPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckPolicy::All => f.write_str("all"),
            CheckPolicy::Sample(n) => write!(f, "sample:{n}"),
        }
    }
}

/// How the RSA sign kernels map work onto threads
/// (`backends.cuda.rsa_mapping`, the bench's `--cuda-rsa-mapping`). Which is
/// faster depends on the device and the key size, so it is chosen by
/// measurement (`scripts/gpu-bench.sh rsa-mapping`), not fixed here. The
/// check kernels (`rsa{B}_check`) are the same for every mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RsaMapping {
    /// One thread per signature (`rsa{B}_sign`): no cooperation, but each
    /// thread holds a whole CRT half's state.
    Thread,
    /// One thread per signature with the "wide" Montgomery rows
    /// (`rsa{B}_sign_wide`, kernels/rsa_wide.cu): limb products split by
    /// parity so ptxas fuses each into one 64-bit multiply-add; fewer
    /// instructions per row, more registers. The default: the fastest
    /// mapping on an H200 for every key size (benches/results/
    /// 2026-12-04-NVIDIA-H200-rsa2048.md: 1.20 M/s against 1.05 M/s for
    /// `Thread` at RSA-2048).
    #[default]
    Wide,
    /// `T` threads per CRT half, `2T` per signature, cooperating through
    /// warp shuffles (`rsa{B}_sign_coop{T}`): less state per thread, more
    /// threads in flight. `T` is one of [`RsaMapping::COOP_WIDTHS`].
    Coop(u32),
}

impl RsaMapping {
    /// The `T` values `coop:T` accepts: the widths kernels/rsa.cu has
    /// kernels for (`2T` divides the warp and the block).
    pub const COOP_WIDTHS: [u32; 2] = [8, 16];

    /// Every mapping, in the order they are listed to users.
    pub fn all() -> Vec<RsaMapping> {
        [RsaMapping::Thread, RsaMapping::Wide]
            .into_iter()
            .chain(Self::COOP_WIDTHS.iter().map(|&t| RsaMapping::Coop(t)))
            .collect()
    }

    /// The sign kernel for `bits`-bit keys: `rsa2048_sign`,
    /// `rsa2048_sign_wide` or `rsa2048_sign_coop8`.
    pub fn kernel(self, bits: usize) -> String {
        match self {
            RsaMapping::Thread => format!("rsa{bits}_sign"),
            RsaMapping::Wide => format!("rsa{bits}_sign_wide"),
            RsaMapping::Coop(t) => format!("rsa{bits}_sign_coop{t}"),
        }
    }

    /// The program that holds the sign kernels.
    pub fn program(self) -> &'static str {
        match self {
            RsaMapping::Wide => "rsa_wide.cu",
            RsaMapping::Thread | RsaMapping::Coop(_) => "rsa.cu",
        }
    }

    /// Whether the sign kernel reads the key from a constant-memory slot
    /// (its first argument is the slot number) rather than through a
    /// pointer to the key's device copy: the one-thread mappings, whose
    /// threads all read the same key words (kernels/rsa/crt.cuh says why).
    pub fn key_in_constant(self) -> bool {
        matches!(self, RsaMapping::Thread | RsaMapping::Wide)
    }

    /// Threads that compute one signature: 1, or `2T` for `coop:T`. The
    /// launch sizes its grid by this (the coop kernels' grid-stride loop
    /// would also cover a smaller grid, a whole warp per trip).
    pub fn threads_per_item(self) -> usize {
        match self {
            RsaMapping::Thread | RsaMapping::Wide => 1,
            RsaMapping::Coop(t) => 2 * t as usize,
        }
    }
}

impl FromStr for RsaMapping {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        RsaMapping::all()
            .into_iter()
            .find(|m| m.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = RsaMapping::all()
                    .iter()
                    .map(|m| format!("\"{m}\""))
                    .collect();
                format!("'{s}' is not one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for RsaMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RsaMapping::Thread => f.write_str("thread"),
            RsaMapping::Wide => f.write_str("wide"),
            RsaMapping::Coop(t) => write!(f, "coop:{t}"),
        }
    }
}

/// Settings of the CUDA backends (`[backends.cuda]`).
#[derive(Clone, Debug)]
pub struct CudaConfig {
    /// Use the GPUs when present.
    pub enabled: bool,
    /// Device ordinals to use; `None` = every visible device.
    pub devices: Option<Vec<usize>>,
    /// Streams per device: batches in flight at once.
    pub streams: usize,
    /// Largest batch per call.
    pub max_batch: usize,
    /// Device memory for cached key blobs, per device, in bytes.
    pub key_cache_bytes: usize,
    /// The NVRTC library, when not found by `SIGMUX_NVRTC_LIB` or the usual
    /// names.
    pub nvrtc: Option<PathBuf>,
    /// Where compiled kernels are cached; `None` = no cache.
    pub cache_dir: Option<PathBuf>,
    /// How many ECDSA signatures the device checks.
    pub check: CheckPolicy,
    /// How the RSA sign kernels map signatures onto threads.
    pub rsa_mapping: RsaMapping,
}

impl Default for CudaConfig {
    fn default() -> Self {
        CudaConfig {
            enabled: true,
            devices: None,
            // 8: the engine's fastest P-256 and Ed25519 rates on an H200
            // (benches/results/2026-12-04-NVIDIA-H200-p256.md); 16 was slower.
            streams: 8,
            max_batch: 65_536,
            key_cache_bytes: 256 << 20,
            nvrtc: None,
            cache_dir: None,
            check: CheckPolicy::All,
            rsa_mapping: RsaMapping::Wide,
        }
    }
}

/// What discovery found: one entry per device it tried, a started backend
/// or the reason that device cannot be used.
pub type Found = Vec<std::result::Result<CudaBackend, (String, String)>>;

/// Finds the GPUs and starts one backend per configured device. `Err` is
/// the reason none can be used at all (no driver, no device, no NVRTC);
/// a device that fails alone is reported in its own entry.
pub fn discover(cfg: &CudaConfig) -> std::result::Result<Found, String> {
    let (driver_version, count) = device::driver_status()?;
    if count == 0 {
        return Err(format!(
            "no CUDA device (driver {} sees none)",
            device::version_text(driver_version)
        ));
    }
    let ordinals: Vec<usize> = match &cfg.devices {
        None => (0..count).collect(),
        Some(list) => {
            if let Some(bad) = list.iter().find(|d| **d >= count) {
                return Err(format!(
                    "backends.cuda.devices names device {bad}, but only {count} device(s) are visible"
                ));
            }
            list.clone()
        }
    };
    let nv = nvrtc::load(cfg.nvrtc.as_deref()).map_err(|e| match e {
        Error::Backend { reason, .. } => reason,
        other => other.to_string(),
    })?;
    Ok(ordinals
        .into_iter()
        .map(|o| {
            CudaBackend::start(o, cfg, &nv, driver_version).map_err(|e| {
                let reason = match e {
                    Error::Backend { reason, .. } => reason,
                    other => other.to_string(),
                };
                (format!("cuda:{o}"), reason)
            })
        })
        .collect())
}

/// Stands in for a CUDA backend that cannot run here, so `sigmux
/// backends` lists it as `unavailable: <reason>`. Never given work.
pub struct UnavailableCuda {
    name: String,
    reason: String,
    caps: Capabilities,
}

impl UnavailableCuda {
    /// A placeholder named `name` (`cuda`, or `cuda:N` for one device).
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> UnavailableCuda {
        UnavailableCuda {
            name: name.into(),
            reason: reason.into(),
            caps: Capabilities {
                schemes: Vec::new(),
                placements: Vec::new(),
                max_batch: 1,
                parallelism: 1,
            },
        }
    }

    /// Why it cannot run.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Backend for UnavailableCuda {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn availability(&self) -> Availability {
        Availability::Unavailable(self.reason.clone())
    }

    fn holds(&self, _key: &Key) -> bool {
        false
    }

    fn sign_batch(
        &self,
        _key: &Arc<Key>,
        _scheme: Scheme,
        _inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        Err(Error::backend(self.name.clone(), self.reason.clone()))
    }

    fn cost_seed(&self, _kind: KeyKind, _scheme: Scheme) -> Option<CostSeed> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_policies_parse() {
        assert_eq!("all".parse::<CheckPolicy>(), Ok(CheckPolicy::All));
        assert_eq!(
            "sample:64".parse::<CheckPolicy>(),
            Ok(CheckPolicy::Sample(64))
        );
        assert_eq!("sample:1".parse::<CheckPolicy>(), Ok(CheckPolicy::All));
        for bad in [
            "",
            "some",
            "sample:",
            "sample:0",
            "sample:x",
            "sample:2000000",
        ] {
            assert!(bad.parse::<CheckPolicy>().is_err(), "{bad}");
        }
        assert_eq!(CheckPolicy::Sample(8).to_string(), "sample:8");
    }

    #[test]
    fn rsa_mappings_parse_name_their_kernels_and_round_trip() {
        assert_eq!("thread".parse::<RsaMapping>(), Ok(RsaMapping::Thread));
        assert_eq!("wide".parse::<RsaMapping>(), Ok(RsaMapping::Wide));
        assert_eq!("coop:8".parse::<RsaMapping>(), Ok(RsaMapping::Coop(8)));
        assert_eq!("coop:16".parse::<RsaMapping>(), Ok(RsaMapping::Coop(16)));
        assert_eq!(RsaMapping::default(), RsaMapping::Wide);
        for m in RsaMapping::all() {
            assert_eq!(m.to_string().parse::<RsaMapping>(), Ok(m));
        }
        for bad in [
            "", "Thread", "coop", "coop:", "coop:4", "coop:32", "coop:8 ",
        ] {
            let e = bad.parse::<RsaMapping>().unwrap_err();
            assert!(
                e.contains("\"thread\", \"wide\", \"coop:8\", \"coop:16\""),
                "{bad}: {e}"
            );
        }
        assert_eq!(RsaMapping::Thread.kernel(2048), "rsa2048_sign");
        assert_eq!(RsaMapping::Coop(8).kernel(2048), "rsa2048_sign_coop8");
        assert_eq!(RsaMapping::Coop(16).kernel(4096), "rsa4096_sign_coop16");
        assert_eq!(RsaMapping::Wide.kernel(3072), "rsa3072_sign_wide");
        assert_eq!(RsaMapping::Thread.threads_per_item(), 1);
        assert_eq!(RsaMapping::Wide.threads_per_item(), 1);
        assert_eq!(RsaMapping::Coop(8).threads_per_item(), 16);
        assert_eq!(RsaMapping::Coop(16).threads_per_item(), 32);
    }

    #[test]
    fn without_a_driver_discovery_gives_a_reason() {
        // On a GPU machine this finds devices instead; both are fine, a
        // panic is not.
        match discover(&CudaConfig::default()) {
            Ok(found) => assert!(!found.is_empty()),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
