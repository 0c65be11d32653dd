//! One GPU as a [`Backend`]: key upload and cache, batches over several
//! streams, host-side encodings, and the device check of every result.
//!
//! A batch call is blocking and may come from several engine workers at
//! once: each takes a free *lane* (a stream with its own pinned host and
//! device buffers, grown on demand), so one batch's copies overlap another's
//! kernels. Within a lane everything is issued on its stream and the stream
//! is synchronised before the call returns; that is what makes it safe to
//! run with cudarc's event tracking off (see [`super::device::Gpu::open`]).
//!
//! Nothing wrong leaves: every RSA result goes through `rsa{B}_check`
//! (`sig^e mod n == expected`) and every ECDSA and Ed25519 result through
//! `{C}_check` / `ed25519_check` (or a sample of them when
//! `check = "sample:N"`) before it is returned.
//! A mismatch fails the whole call with [`Error::WrongResult`], which the
//! engine treats like a wrong signature it caught itself: quarantine, and
//! the batch redone elsewhere.
//!
//! RSA signs with the kernel of the configured thread mapping
//! (`rsa_mapping`: `rsa{B}_sign` or `rsa{B}_sign_wide`, one thread per
//! signature, or `rsa{B}_sign_coop{T}`, `2T` threads per signature); the
//! check kernel is the same for every mapping, so a new mapping is checked
//! like the old. The one-thread kernels read the key from a constant-memory
//! slot of their program (kernels/rsa/crt.cuh says why): each lane copies
//! the key's cached device copy into its slot before the launch and zeroes
//! the slot right after it, on its stream.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::sys as cu;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};
use parking_lot::{Condvar, Mutex, RwLock};
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use super::device::{Gpu, KEY_SLOT_WORDS, KEY_SLOTS, driver_error, version_text};
use super::ec_layout::{self, Curve as EcCurve};
use super::ed_layout;
use super::key_cache::KeyCache;
use super::nvrtc::{KernelCache, Nvrtc};
use super::{CheckPolicy, CudaConfig, RsaMapping};
use super::{codec, rsa_layout};
use crate::backend::cpu::{CpuEngine, CpuKey};
use crate::backend::{Backend, Capabilities, CostSeed};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyId, Placement};
use crate::scheme::{Family, KeyKind, Scheme};

/// Threads per block. The grid always has a thread per item: most kernels
/// stride over the grid and would accept fewer, but `{C}_nonce` handles
/// exactly item `blockIdx.x * blockDim.x + threadIdx.x`, so a capped grid
/// would leave nonces unset. `rsa{B}_sign_coop{T}` gets `2T` threads per
/// item; its groups are aligned within warps, so this stays a multiple of
/// 32, as `{C}_sign` and `{C}_check` (ECDSA) need too: they stride a whole
/// warp at a time.
const THREADS: u32 = 128;
const _: () = assert!(THREADS.is_multiple_of(32), "kernels take whole warps");
/// Most `holds` answers remembered.
const HELD_LIMIT: usize = 4096;

/// A key's blob in device memory. Dropping it zeroes the device copy on
/// the admin stream, waits, and only then frees it.
struct DeviceKey {
    words: Option<CudaSlice<u32>>,
    gpu: Arc<Gpu>,
}

impl Drop for DeviceKey {
    fn drop(&mut self) {
        if let Some(mut w) = self.words.take()
            && let Err(e) = self.gpu.wipe(&mut w)
        {
            tracing::error!(device = self.gpu.ordinal, error = %driver_error(&e),
                "could not wipe a key's device copy");
        }
    }
}

impl DeviceKey {
    fn slice(&self) -> Result<&CudaSlice<u32>> {
        self.words
            .as_ref()
            .ok_or_else(|| Error::backend(format!("cuda:{}", self.gpu.ordinal), "key wiped"))
    }
}

/// A device buffer and (optionally) its pinned host mirror, grown to the
/// largest batch seen. Grown only while the lane's stream is idle.
struct Grow {
    dev: Option<CudaSlice<u32>>,
    host: Option<PinnedHostSlice<u32>>,
    cap: usize,
    pinned: bool,
}

impl Grow {
    fn new(pinned: bool) -> Grow {
        Grow {
            dev: None,
            host: None,
            cap: 0,
            pinned,
        }
    }

    fn ensure(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<(), DriverError> {
        if len <= self.cap && self.dev.is_some() {
            return Ok(());
        }
        let cap = len.max(1).next_power_of_two().max(1024);
        self.dev = None;
        self.host = None;
        self.cap = 0;
        // SAFETY: device memory is written (copy or kernel) before it is
        // read; every read covers only what this batch wrote.
        self.dev = Some(unsafe { stream.alloc::<u32>(cap) }?);
        if self.pinned {
            // Not write-combined: the host reads results back from it.
            // SAFETY: as above, the host writes before the device reads.
            self.host = Some(unsafe { stream.context().alloc_pinned_with_flags::<u32>(cap, 0) }?);
        }
        self.cap = cap;
        Ok(())
    }

    fn dev(&self) -> &CudaSlice<u32> {
        // `ensure` runs first on every path; a missing buffer would be a
        // bug, reported by the caller as a driver error would be.
        self.dev.as_ref().expect("buffer allocated by ensure")
    }

    fn dev_mut(&mut self) -> &mut CudaSlice<u32> {
        self.dev.as_mut().expect("buffer allocated by ensure")
    }

    fn host(&mut self) -> Result<&mut [u32], DriverError> {
        self.host
            .as_mut()
            .expect("pinned buffer allocated by ensure")
            .as_mut_slice()
    }

    fn upload(&mut self, stream: &Arc<CudaStream>, words: &[u32]) -> Result<(), DriverError> {
        self.staging(stream, words.len())?.copy_from_slice(words);
        self.send(stream, words.len())
    }

    /// The first `n` words of the pinned mirror (grown to hold them), for
    /// the host to write a batch into before [`Grow::send`].
    fn staging(&mut self, stream: &Arc<CudaStream>, n: usize) -> Result<&mut [u32], DriverError> {
        self.ensure(stream, n)?;
        Ok(&mut self.host()?[..n])
    }

    /// Queues a copy of the first `n` words of the pinned mirror to the
    /// device.
    fn send(&mut self, stream: &Arc<CudaStream>, n: usize) -> Result<(), DriverError> {
        let (host, dev) = (
            self.host
                .as_mut()
                .expect("pinned buffer allocated by ensure"),
            self.dev.as_mut().expect("buffer allocated by ensure"),
        );
        let src = &host.as_mut_slice()?[..n];
        stream.memcpy_htod(src, &mut dev.slice_mut(0..n))
    }

    /// Queues a copy of the first `n` words back to the pinned mirror.
    fn download(&mut self, stream: &Arc<CudaStream>, n: usize) -> Result<(), DriverError> {
        let (host, dev) = (
            self.host
                .as_mut()
                .expect("pinned buffer allocated by ensure"),
            self.dev.as_ref().expect("buffer allocated by ensure"),
        );
        let dst = &mut host.as_mut_slice()?[..n];
        stream.memcpy_dtoh(&dev.slice(0..n), dst)
    }
}

/// One stream with its buffers; used by one batch at a time.
struct Lane {
    stream: Arc<CudaStream>,
    /// The constant-memory key slot this lane's one-thread RSA launches
    /// use (lanes beyond [`KEY_SLOTS`] share slots, taking turns through
    /// [`CudaBackend::slot_locks`]).
    slot: usize,
    /// RSA: encoded messages / raw inputs; ECDSA: z.
    input: Grow,
    /// RSA: signatures; ECDSA: r.
    out_a: Grow,
    /// ECDSA: s.
    out_b: Grow,
    /// Ed25519: the messages' byte offsets.
    offs: Grow,
    /// Per-item flags: nonce, sign, check (ECDSA) or check (RSA).
    ok: Grow,
    /// ECDSA nonces: device only, zeroed after every batch.
    nonce: Grow,
    /// The nonce kernel's per-batch seed (32 bytes).
    seed: Grow,
    /// Sampled checks: z, r, s of the sample (Ed25519: messages, offsets,
    /// signatures).
    chk_z: Grow,
    chk_r: Grow,
    chk_s: Grow,
    chk_ok: Grow,
}

impl Lane {
    fn new(stream: Arc<CudaStream>, slot: usize) -> Lane {
        Lane {
            stream,
            slot,
            input: Grow::new(true),
            out_a: Grow::new(true),
            out_b: Grow::new(true),
            offs: Grow::new(true),
            ok: Grow::new(true),
            nonce: Grow::new(false),
            seed: Grow::new(true),
            chk_z: Grow::new(true),
            chk_r: Grow::new(true),
            chk_s: Grow::new(true),
            chk_ok: Grow::new(true),
        }
    }
}

/// The free lanes; a batch call waits for one.
struct Lanes {
    free: Mutex<Vec<Lane>>,
    ready: Condvar,
}

/// A lane on loan; handed back on drop.
struct LaneGuard<'a> {
    lanes: &'a Lanes,
    lane: Option<Lane>,
}

impl Lanes {
    fn take(&self) -> LaneGuard<'_> {
        let mut free = self.free.lock();
        loop {
            if let Some(l) = free.pop() {
                return LaneGuard {
                    lanes: self,
                    lane: Some(l),
                };
            }
            self.ready.wait(&mut free);
        }
    }
}

impl LaneGuard<'_> {
    fn lane(&mut self) -> &mut Lane {
        self.lane.as_mut().expect("lane present until drop")
    }
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.lane.take() {
            // A batch that failed part-way (a launch or copy refused) can
            // leave copies and kernels queued on the stream. They read the
            // lane's buffers, which the next batch may grow (freeing the old
            // pinned memory), and the batch's device key, which is dropped
            // (and may be wiped and freed on eviction) right after this
            // guard. So the lane goes back only once its stream is idle; a
            // batch that finished has already waited for it, and this is a
            // no-op then. An error here is the context's own sticky error,
            // which the next call on it reports.
            let _ = l.stream.synchronize();
            self.lanes.free.lock().push(l);
            self.lanes.ready.notify_one();
        }
    }
}

/// The precomputed comb tables of the base point, one per curve, uploaded
/// once at start (public data).
struct Tables {
    p256: CudaSlice<u32>,
    p384: CudaSlice<u32>,
    ed25519: CudaSlice<u32>,
}

/// Counters for `sigmux backends`.
#[derive(Default)]
struct Counters {
    key_uploads: AtomicU64,
    redone_on_cpu: AtomicU64,
    device_check_faults: AtomicU64,
    checked: AtomicU64,
}

/// The CUDA backend for one GPU.
pub struct CudaBackend {
    name: String,
    caps: Capabilities,
    gpu: Arc<Gpu>,
    lanes: Lanes,
    /// One per constant-memory key slot: held from the key's copy into the
    /// slot until the batch is synchronised, so lanes that share a slot
    /// (more streams than slots) never overwrite each other's key.
    slot_locks: Vec<Mutex<()>>,
    keys: Mutex<KeyCache<DeviceKey>>,
    held: RwLock<HashMap<KeyId, bool>>,
    tables: Tables,
    check: CheckPolicy,
    /// Which RSA sign kernels run (their kernels are known to be loaded).
    rsa_mapping: RsaMapping,
    streams: usize,
    nvrtc: Nvrtc,
    driver_version: i32,
    counters: Counters,
    /// Test hook: batches left to corrupt on the device before the check.
    inject_faults: AtomicU64,
    /// Cost seeds measured at start, per key kind ([`CudaBackend::calibrate`]).
    calibration: HashMap<KeyKind, CostSeed>,
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBackend")
            .field("name", &self.name)
            .field("device", &self.gpu.name)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Wipe every cached key now (each `DeviceKey` zeroes its copy);
        // batches cannot be running: they borrow the backend.
        self.keys.lock().clear();
        let _ = self.gpu.admin.synchronize();
    }
}

fn rsa_bits(kind: KeyKind) -> Option<usize> {
    kind.rsa_bits().map(|b| b as usize)
}

fn ec_curve(kind: KeyKind) -> Option<EcCurve> {
    match kind {
        KeyKind::P256 => Some(EcCurve::P256),
        KeyKind::P384 => Some(EcCurve::P384),
        _ => None,
    }
}

fn curve_prefix(c: EcCurve) -> &'static str {
    match c {
        EcCurve::P256 => "p256",
        EcCurve::P384 => "p384",
    }
}

/// The schemes this backend signs: every RSA scheme (raw included), ECDSA
/// on P-256 and P-384 (any-digest variants included) and Ed25519.
fn schemes() -> Vec<Scheme> {
    Scheme::all()
        .iter()
        .copied()
        .chain([
            Scheme::RsaRaw,
            Scheme::EcdsaP256AnyDigest,
            Scheme::EcdsaP384AnyDigest,
        ])
        .collect()
}

impl CudaBackend {
    /// Opens device `ordinal`: kernels compiled (or from the cache), comb
    /// tables uploaded, `cfg.streams` lanes created.
    pub fn start(
        ordinal: usize,
        cfg: &CudaConfig,
        nvrtc: &Nvrtc,
        driver_version: i32,
    ) -> Result<CudaBackend> {
        let name = format!("cuda:{ordinal}");
        let fail = |what: &str, e: DriverError| {
            Error::backend(name.clone(), format!("{what}: {}", driver_error(&e)))
        };
        let cache = cfg.cache_dir.as_ref().map(|dir| KernelCache {
            dir: dir.clone(),
            driver_version,
        });
        let gpu = Arc::new(Gpu::open(ordinal, nvrtc, cache.as_ref())?);
        let tables = Tables {
            p256: gpu
                .upload(&ec_layout::comb_table(EcCurve::P256))
                .map_err(|e| fail("cannot upload the P-256 table", e))?,
            p384: gpu
                .upload(&ec_layout::comb_table(EcCurve::P384))
                .map_err(|e| fail("cannot upload the P-384 table", e))?,
            ed25519: gpu
                .upload(&super::host_ed25519::comb_table())
                .map_err(|e| fail("cannot upload the Ed25519 table", e))?,
        };
        let streams = cfg.streams.max(1);
        let mut free = Vec::with_capacity(streams);
        for i in 0..streams {
            free.push(Lane::new(
                gpu.ctx
                    .new_stream()
                    .map_err(|e| fail("cannot create a stream", e))?,
                i % KEY_SLOTS,
            ));
        }
        let mut backend = CudaBackend {
            caps: Capabilities {
                schemes: schemes(),
                placements: vec![Placement::Soft],
                max_batch: cfg.max_batch.max(1),
                parallelism: streams,
            },
            name,
            gpu,
            lanes: Lanes {
                free: Mutex::new(free),
                ready: Condvar::new(),
            },
            slot_locks: (0..KEY_SLOTS).map(|_| Mutex::new(())).collect(),
            keys: Mutex::new(KeyCache::new(cfg.key_cache_bytes)),
            held: RwLock::new(HashMap::new()),
            tables,
            check: cfg.check,
            rsa_mapping: cfg.rsa_mapping,
            streams,
            nvrtc: nvrtc.clone(),
            driver_version,
            counters: Counters::default(),
            inject_faults: AtomicU64::new(0),
            calibration: HashMap::new(),
        };
        backend.calibration = backend.calibrate();
        Ok(backend)
    }

    /// Seeds the scheduler's cost model with this device's own figures:
    /// per key kind, a one-item batch (the fixed cost) and a large batch
    /// (the cost per operation) with a throwaway key, whose device copy is
    /// dropped afterwards. RSA-3072/4096 are scaled from RSA-2048 (keys of
    /// those sizes take seconds to generate). A kind that fails keeps the
    /// static guess; calibration never stops the backend from starting.
    /// RSA is timed through `sign_batch`, so with the configured
    /// `rsa_mapping`'s kernel and grid, as real batches will run.
    fn calibrate(&self) -> HashMap<KeyKind, CostSeed> {
        let mut out = HashMap::new();
        for (kind, scheme, many) in [
            (KeyKind::Rsa2048, Scheme::RsaPkcs1Sha256, 4096),
            (KeyKind::P256, Scheme::EcdsaSecp256r1Sha256, 16384),
            (KeyKind::P384, Scheme::EcdsaSecp384r1Sha384, 16384),
            (KeyKind::Ed25519, Scheme::Ed25519, 16384),
        ] {
            match self.measure(kind, scheme, many) {
                Ok(seed) => {
                    tracing::info!(backend = %self.name, %kind, per_batch_us = seed.per_batch_us,
                        per_op_us = seed.per_op_us, "calibrated");
                    out.insert(kind, seed);
                }
                Err(e @ Error::WrongResult { .. }) => {
                    // The device check caught a wrong result before any real
                    // work: the engine will quarantine this GPU at its first
                    // batch too; say so now.
                    tracing::error!(backend = %self.name, %kind, error = %e,
                        "calibration: the device check rejected results");
                }
                Err(e) => {
                    tracing::warn!(backend = %self.name, %kind, error = %e,
                        "calibration failed; using the static cost guess");
                }
            }
        }
        out
    }

    fn measure(&self, kind: KeyKind, scheme: Scheme, many: usize) -> Result<CostSeed> {
        let key = Key::ephemeral("cuda-calibration", kind)?;
        let input = scheme.prepare(crate::scheme::SignInput::Message(b"calibrate".to_vec()))?;
        let one = [input.clone()];
        let batch = vec![input; many.min(self.caps.max_batch)];
        let result = (|| {
            // The first call uploads the key and warms the launch path.
            self.sign_batch(&key, scheme, &one)?;
            let mut t_one = f64::INFINITY;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                self.sign_batch(&key, scheme, &one)?;
                t_one = t_one.min(t.elapsed().as_secs_f64() * 1e6);
            }
            let t = std::time::Instant::now();
            self.sign_batch(&key, scheme, &batch)?;
            Ok(fit_cost(
                t_one,
                t.elapsed().as_secs_f64() * 1e6,
                batch.len(),
            ))
        })();
        self.keys.lock().remove(&key.id());
        self.held.write().remove(&key.id());
        result
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }

    /// The ECDSA check policy in force.
    pub fn check_policy(&self) -> CheckPolicy {
        self.check
    }

    /// Changes the ECDSA check policy (the bench's `--cuda-check`).
    pub fn set_check_policy(&mut self, check: CheckPolicy) {
        self.check = check;
    }

    /// The RSA thread mapping in force.
    pub fn rsa_mapping(&self) -> RsaMapping {
        self.rsa_mapping
    }

    /// Changes the RSA thread mapping (tests; the bench's
    /// `--cuda-rsa-mapping` goes through the config, so that calibration
    /// runs with it too). The calibrated cost seeds are not redone.
    pub fn set_rsa_mapping(&mut self, mapping: RsaMapping) {
        self.rsa_mapping = mapping;
    }

    /// Keys cached on the device, their bytes, and evictions so far.
    pub fn key_cache_stats(&self) -> (usize, usize, u64) {
        let c = self.keys.lock();
        (c.len(), c.used(), c.evictions())
    }

    /// Operations redone on the CPU because a kernel flagged them (a nonce
    /// or signature of negligible probability it does not handle).
    pub fn redone_on_cpu(&self) -> u64 {
        self.counters.redone_on_cpu.load(Ordering::Relaxed)
    }

    /// Batches whose device check found a wrong result.
    pub fn device_check_faults(&self) -> u64 {
        self.counters.device_check_faults.load(Ordering::Relaxed)
    }

    /// Test hook, not reachable from any configuration: the next `batches`
    /// batches get one result corrupted in device memory between the sign
    /// and the check kernel, so tests can watch the device check, the
    /// quarantine and the redo elsewhere.
    #[doc(hidden)]
    pub fn inject_faults_for_test(&self, batches: u64) {
        self.inject_faults.store(batches, Ordering::SeqCst);
    }

    fn take_fault(&self) -> bool {
        self.inject_faults
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn drv(&self, what: &str) -> impl Fn(DriverError) -> Error + '_ {
        let what = what.to_string();
        move |e| {
            let lost = if super::device::is_sticky(&e) {
                "; the GPU's context is lost: restart sigmux to use this GPU again (check the GPU's health first: nvidia-smi, the kernel log's Xid lines)"
            } else {
                ""
            };
            Error::backend(
                self.name.clone(),
                format!("{what}: {}{lost}", driver_error(&e)),
            )
        }
    }

    /// A grid with a thread per item, for the kernels with one thread per
    /// item.
    fn launch_config(&self, n: usize) -> LaunchConfig {
        self.launch_config_threads(n)
    }

    /// A grid of at least `threads` threads (at least one block): for
    /// kernels that spend several threads on one item and do not stride
    /// over the grid (`rsa{B}_sign_coop{T}`), so the grid must cover them
    /// all. A count beyond `u32` saturates, which the driver refuses as a
    /// too-large grid: an error, never a grid that silently misses items.
    fn launch_config_threads(&self, threads: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks_for(threads), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The key's blob as the kernels take it; fails for keys the layouts
    /// do not accept.
    fn pack(&self, key: &Key) -> Result<Zeroizing<Vec<u32>>> {
        let pkey = key.secret()?.to_openssl()?;
        let bad =
            |e: String| Error::backend(self.name.clone(), format!("key '{}': {e}", key.name()));
        match (rsa_bits(key.kind()), ec_curve(key.kind())) {
            (Some(_), _) => rsa_layout::pack_key(&pkey).map_err(|e| bad(e.to_string())),
            (_, Some(c)) => ec_layout::pack_key(c, &pkey).map_err(|e| bad(e.to_string())),
            _ if key.kind() == KeyKind::Ed25519 => ed_layout::pack_key(&pkey).map_err(bad),
            _ => Err(bad(format!("{} keys do not run on the GPU", key.kind()))),
        }
    }

    /// The key's device copy: from the cache, or packed, uploaded and
    /// cached now (evicting the least recently used keys as needed).
    fn device_key(&self, key: &Key) -> Result<Arc<DeviceKey>> {
        let mut cache = self.keys.lock();
        if let Some(k) = cache.get(&key.id()) {
            return Ok(k);
        }
        let blob = self.pack(key)?;
        let bytes = blob.len() * 4;
        if !cache.make_room(bytes) {
            return Err(Error::backend(
                self.name.clone(),
                format!(
                    "key '{}' needs {bytes} bytes of device memory; backends.cuda.key_cache_bytes is {}",
                    key.name(),
                    cache.budget()
                ),
            ));
        }
        let words = self.gpu.upload(&blob).map_err(self.drv("key upload"))?;
        drop(blob);
        self.counters.key_uploads.fetch_add(1, Ordering::Relaxed);
        let dk = Arc::new(DeviceKey {
            words: Some(words),
            gpu: self.gpu.clone(),
        });
        cache.insert(key.id(), dk.clone(), bytes);
        Ok(dk)
    }

    /// Signs `inputs` on the CPU (items a kernel flagged).
    fn cpu_sign(&self, key: &Key, scheme: Scheme, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        let ck = CpuKey::load(key)?;
        self.counters
            .redone_on_cpu
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        inputs
            .iter()
            .map(|i| ck.sign(CpuEngine::AwsLc, scheme, i))
            .collect()
    }

    fn wrong(&self, bad: usize, scheme: Scheme) -> Error {
        self.counters
            .device_check_faults
            .fetch_add(1, Ordering::Relaxed);
        Error::WrongResult {
            backend: self.name.clone(),
            count: bad,
            reason: format!("the device check rejected {bad} {scheme} result(s)"),
        }
    }

    // ---------------------------------------------------------------- RSA

    fn rsa_batch(
        &self,
        lane: &mut Lane,
        dk: &DeviceKey,
        key: &Key,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        let bits = rsa_bits(key.kind()).ok_or_else(|| Error::SchemeNotValidForKey {
            scheme,
            kind: key.kind(),
        })?;
        let limbs = bits / 32;
        let n = inputs.len();
        let words = limbs * n;
        // One read: the kernel and its grid must agree.
        let mapping = self.rsa_mapping;
        let sign = self.gpu.function(&mapping.kernel(bits))?;
        let check = self.gpu.function(&format!("rsa{bits}_check"))?;
        let stream = lane.stream.clone();
        // Encoded straight into the pinned upload buffer, in parallel for
        // large batches.
        let staging = lane
            .input
            .staging(&stream, words)
            .map_err(self.drv("host buffer"))?;
        codec::rsa_encode(key, scheme, inputs, staging)
            .map_err(|reason| Error::backend(self.name.clone(), format!("{scheme}: {reason}")))?;
        lane.input
            .send(&stream, words)
            .map_err(self.drv("copy to device"))?;
        lane.out_a
            .ensure(&stream, words)
            .map_err(self.drv("device memory"))?;
        lane.ok
            .ensure(&stream, n)
            .map_err(self.drv("device memory"))?;
        let count = n as u32;
        let sign_cfg = self.launch_config_threads(n * mapping.threads_per_item());
        let key_words = dk.slice()?;
        if mapping.key_in_constant() {
            let _slot = self.slot_locks[lane.slot].lock();
            let slot = self.gpu.key_slot(mapping.program(), lane.slot)?;
            let out = self
                .rsa_sign_from_slot(lane, sign, sign_cfg, key_words, slot, count)
                .and_then(|()| {
                    self.rsa_check_and_collect(lane, check, key_words, scheme, n, words, limbs)
                });
            // On an error the copy, the kernel or the wipe may still be
            // queued: they finish before another lane may refill the slot.
            if out.is_err() {
                let _ = stream.synchronize();
            }
            out
        } else {
            // SAFETY: argument order and types follow kernels/rsa.cu's
            // rsa{B}_sign_coop{T} (key, in, out, count); every buffer holds
            // at least `limbs * count` words. The spare threads past the
            // last item store nothing.
            unsafe {
                stream
                    .launch_builder(sign)
                    .arg(key_words)
                    .arg(lane.input.dev())
                    .arg(lane.out_a.dev())
                    .arg(&count)
                    .launch(sign_cfg)
            }
            .map_err(self.drv("rsa sign launch"))?;
            self.rsa_check_and_collect(lane, check, key_words, scheme, n, words, limbs)
        }
    }

    /// The one-thread sign kernels' launch: the key blob copied into the
    /// lane's constant-memory slot (device to device, on the lane's
    /// stream), the kernel, and the slot zeroed behind it on the same
    /// stream, so the secret words stay in constant memory only while the
    /// kernel runs. The slot is zeroed even when the launch fails.
    fn rsa_sign_from_slot(
        &self,
        lane: &mut Lane,
        sign: &CudaFunction,
        cfg: LaunchConfig,
        key_words: &CudaSlice<u32>,
        slot: cu::CUdeviceptr,
        count: u32,
    ) -> Result<()> {
        let stream = lane.stream.clone();
        let bytes = key_words.len() * 4;
        if key_words.len() > KEY_SLOT_WORDS {
            return Err(Error::backend(
                self.name.clone(),
                format!(
                    "a key blob of {} words does not fit a key slot",
                    key_words.len()
                ),
            ));
        }
        let slot_arg = lane.slot as u32;
        let (src, _sync) = key_words.device_ptr(&stream);
        // SAFETY: `slot` is a slot of the loaded program's constant array
        // (Gpu::key_slot), at least KEY_SLOT_WORDS words, and `src` holds
        // `bytes`; both copies are ordered on the lane's stream with the
        // kernel that reads the slot.
        unsafe { cudarc::driver::result::memcpy_dtod_async(slot, src, bytes, stream.cu_stream()) }
            .map_err(self.drv("key to constant memory"))?;
        // SAFETY: kernels/rsa.cu's and rsa_wide.cu's one-thread ABI (slot,
        // in, out, count); the buffers hold at least `limbs * count` words.
        let launched = unsafe {
            stream
                .launch_builder(sign)
                .arg(&slot_arg)
                .arg(lane.input.dev())
                .arg(lane.out_a.dev())
                .arg(&count)
                .launch(cfg)
        };
        // SAFETY: as the copy above.
        let wiped =
            unsafe { cudarc::driver::result::memset_d8_async(slot, 0, bytes, stream.cu_stream()) };
        launched.map_err(self.drv("rsa sign launch"))?;
        wiped.map_err(self.drv("key slot wipe"))?;
        Ok(())
    }

    /// After the sign kernel: the fault hook, the check kernel over every
    /// result, the copies back and the verdict.
    #[allow(clippy::too_many_arguments)]
    fn rsa_check_and_collect(
        &self,
        lane: &mut Lane,
        check: &CudaFunction,
        key_words: &CudaSlice<u32>,
        scheme: Scheme,
        n: usize,
        words: usize,
        limbs: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let stream = lane.stream.clone();
        let count = n as u32;
        let cfg = self.launch_config(n);
        if self.take_fault() {
            stream
                .memset_zeros(&mut lane.out_a.dev_mut().slice_mut(0..1))
                .map_err(self.drv("fault injection"))?;
        }
        // SAFETY: kernels/rsa.cu's rsa{B}_check ABI (key, sig, expected, ok,
        // count); out_a and input hold `limbs * count` words, ok `count`.
        unsafe {
            stream
                .launch_builder(check)
                .arg(key_words)
                .arg(lane.out_a.dev())
                .arg(lane.input.dev())
                .arg(lane.ok.dev())
                .arg(&count)
                .launch(cfg)
        }
        .map_err(self.drv("rsa check launch"))?;
        lane.out_a
            .download(&stream, words)
            .map_err(self.drv("copy from device"))?;
        lane.ok
            .download(&stream, n)
            .map_err(self.drv("copy from device"))?;
        stream.synchronize().map_err(self.drv("rsa batch"))?;
        self.counters.checked.fetch_add(n as u64, Ordering::Relaxed);
        let bad = lane.ok.host().map_err(self.drv("host buffer"))?[..n]
            .iter()
            .filter(|&&o| o != 1)
            .count();
        let out = lane.out_a.host().map_err(self.drv("host buffer"))?;
        let sigs = codec::rsa_signatures(&out[..words], n, limbs);
        if scheme == Scheme::RsaRaw {
            // Raw results are decrypted secrets (TLS premaster): leave no
            // copy in the lane's buffers.
            out[..words].zeroize();
            stream
                .memset_zeros(&mut lane.out_a.dev_mut().slice_mut(0..words))
                .map_err(self.drv("wipe"))?;
        }
        if bad > 0 {
            return Err(self.wrong(bad, scheme));
        }
        Ok(sigs)
    }

    // -------------------------------------------------------------- ECDSA

    fn ec_batch(
        &self,
        lane: &mut Lane,
        dk: &DeviceKey,
        key: &Key,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        let curve = ec_curve(key.kind()).ok_or_else(|| Error::SchemeNotValidForKey {
            scheme,
            kind: key.kind(),
        })?;
        let fail =
            |reason: String| Error::backend(self.name.clone(), format!("{scheme}: {reason}"));
        let limbs = curve.limbs();
        let n = inputs.len();
        let words = limbs * n;
        let p = curve_prefix(curve);
        let nonce_k = self.gpu.function(&format!("{p}_nonce"))?;
        let sign_k = self.gpu.function(&format!("{p}_sign"))?;
        let check_k = self.gpu.function(&format!("{p}_check"))?;
        let table = match curve {
            EcCurve::P256 => &self.tables.p256,
            EcCurve::P384 => &self.tables.p384,
        };
        let stream = lane.stream.clone();
        let mem = self.drv("device memory");
        let staging = lane
            .input
            .staging(&stream, words)
            .map_err(self.drv("host buffer"))?;
        codec::ec_z_into(curve, scheme, inputs, staging).map_err(fail)?;
        lane.input
            .send(&stream, words)
            .map_err(self.drv("copy to device"))?;
        let seed = {
            let mut bytes = Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(&mut bytes[..]).map_err(|_| fail("no random seed".into()))?;
            codec::seed_words(&bytes)
        };
        lane.seed
            .upload(&stream, &seed[..])
            .map_err(self.drv("copy to device"))?;
        lane.out_a.ensure(&stream, words).map_err(&mem)?;
        lane.out_b.ensure(&stream, words).map_err(&mem)?;
        lane.nonce.ensure(&stream, words).map_err(&mem)?;
        lane.ok.ensure(&stream, 3 * n).map_err(&mem)?;
        let all = self.check == CheckPolicy::All;
        let count = n as u32;
        let cfg = self.launch_config(n);
        let key_words = dk.slice()?;
        let corrupt = all && self.take_fault();
        let launched = (|| -> Result<()> {
            {
                let ok = lane.ok.dev();
                let (ok_nonce, ok_sign) = (ok.slice(0..n), ok.slice(n..2 * n));
                // SAFETY: argument order and types follow kernels/nonce.cu and
                // kernels/ecdsa.cu; every buffer holds `limbs * count` words
                // (flags: `count`), the seed 32 bytes.
                unsafe {
                    stream
                        .launch_builder(nonce_k)
                        .arg(key_words)
                        .arg(lane.input.dev())
                        .arg(lane.seed.dev())
                        .arg(lane.nonce.dev())
                        .arg(&ok_nonce)
                        .arg(&count)
                        .launch(cfg)
                }
                .map_err(self.drv("nonce launch"))?;
                // SAFETY: as above.
                unsafe {
                    stream
                        .launch_builder(sign_k)
                        .arg(table)
                        .arg(key_words)
                        .arg(lane.input.dev())
                        .arg(lane.nonce.dev())
                        .arg(lane.out_a.dev())
                        .arg(lane.out_b.dev())
                        .arg(&ok_sign)
                        .arg(&count)
                        .launch(cfg)
                }
                .map_err(self.drv("ecdsa sign launch"))?;
            }
            if corrupt {
                // Test hook: item 0's s changes between sign and check.
                stream
                    .memset_zeros(&mut lane.out_b.dev_mut().slice_mut(0..1))
                    .map_err(self.drv("fault injection"))?;
            }
            if all {
                let ok_check = lane.ok.dev().slice(2 * n..3 * n);
                // SAFETY: {C}_check's ABI: table, key, z, r, s, ok, count.
                unsafe {
                    stream
                        .launch_builder(check_k)
                        .arg(table)
                        .arg(key_words)
                        .arg(lane.input.dev())
                        .arg(lane.out_a.dev())
                        .arg(lane.out_b.dev())
                        .arg(&ok_check)
                        .arg(&count)
                        .launch(cfg)
                }
                .map_err(self.drv("ecdsa check launch"))?;
            }
            Ok(())
        })();
        // A nonce reveals the key: none stays on the device, also when a
        // launch after the nonce kernel's was refused.
        let wiped = stream
            .memset_zeros(&mut lane.nonce.dev_mut().slice_mut(0..words))
            .map_err(self.drv("nonce wipe"));
        launched?;
        wiped?;
        lane.out_a
            .download(&stream, words)
            .map_err(self.drv("copy from device"))?;
        lane.out_b
            .download(&stream, words)
            .map_err(self.drv("copy from device"))?;
        let flags = if all { 3 * n } else { 2 * n };
        lane.ok
            .download(&stream, flags)
            .map_err(self.drv("copy from device"))?;
        stream.synchronize().map_err(self.drv("ecdsa batch"))?;
        // The copy of the seed has landed; no copy of it stays behind.
        lane.seed.host().map_err(self.drv("host buffer"))?[..8].zeroize();

        let ok = lane.ok.host().map_err(self.drv("host buffer"))?[..flags].to_vec();
        let redo: Vec<usize> = (0..n).filter(|&i| ok[i] != 1 || ok[n + i] != 1).collect();
        let r = lane.out_a.host().map_err(self.drv("host buffer"))?[..words].to_vec();
        let s = lane.out_b.host().map_err(self.drv("host buffer"))?[..words].to_vec();
        if all {
            self.counters
                .checked
                .fetch_add((n - redo.len()) as u64, Ordering::Relaxed);
            let bad = (0..n)
                .filter(|&i| ok[i] == 1 && ok[n + i] == 1 && ok[2 * n + i] != 1)
                .count();
            if bad > 0 {
                return Err(self.wrong(bad, scheme));
            }
        } else if let CheckPolicy::Sample(every) = self.check {
            let z = lane.input.host().map_err(self.drv("host buffer"))?[..words].to_vec();
            self.sample_check(
                lane, table, key_words, check_k, limbs, every, &z, &r, &s, &ok, n, scheme,
            )?;
        }
        let mut out = codec::ec_der(&r, &s, n, limbs).map_err(fail)?;
        if !redo.is_empty() {
            let again: Vec<&[u8]> = redo.iter().map(|&i| inputs[i].as_slice()).collect();
            for (i, sig) in redo.iter().zip(self.cpu_sign(key, scheme, &again)?) {
                out[*i] = sig;
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------ Ed25519

    /// Ed25519 (RFC 8032): the kernels hash, sign and check on the device;
    /// the host packs messages and reads back `R || S`.
    fn ed_batch(
        &self,
        lane: &mut Lane,
        dk: &DeviceKey,
        key: &Key,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        let scheme = Scheme::Ed25519;
        let fail =
            |reason: String| Error::backend(self.name.clone(), format!("{scheme}: {reason}"));
        let n = inputs.len();
        let words = ed_layout::SIG_WORDS * n;
        let (msg, off) = ed_layout::pack_messages(inputs).map_err(fail)?;
        let sign_k = self.gpu.function("ed25519_sign")?;
        let check_k = self.gpu.function("ed25519_check")?;
        let table = &self.tables.ed25519;
        let stream = lane.stream.clone();
        let mem = self.drv("device memory");
        lane.input
            .upload(&stream, &msg)
            .map_err(self.drv("copy to device"))?;
        lane.offs
            .upload(&stream, &off)
            .map_err(self.drv("copy to device"))?;
        lane.out_a.ensure(&stream, words).map_err(&mem)?;
        lane.ok.ensure(&stream, 2 * n).map_err(&mem)?;
        let all = self.check == CheckPolicy::All;
        let count = n as u32;
        let cfg = self.launch_config(n);
        let key_words = dk.slice()?;
        let corrupt = all && self.take_fault();
        {
            let ok_sign = lane.ok.dev().slice(0..n);
            // SAFETY: argument order and types follow kernels/ed25519.cu
            // (table, key, msg, off, sig, ok, count); the messages and
            // `count + 1` offsets were uploaded above, `sig` holds 16 words
            // and `ok` one word per item.
            unsafe {
                stream
                    .launch_builder(sign_k)
                    .arg(table)
                    .arg(key_words)
                    .arg(lane.input.dev())
                    .arg(lane.offs.dev())
                    .arg(lane.out_a.dev())
                    .arg(&ok_sign)
                    .arg(&count)
                    .launch(cfg)
            }
            .map_err(self.drv("ed25519 sign launch"))?;
        }
        if corrupt {
            // Test hook: item 0's signature changes between sign and check.
            stream
                .memset_zeros(&mut lane.out_a.dev_mut().slice_mut(0..1))
                .map_err(self.drv("fault injection"))?;
        }
        if all {
            let ok_check = lane.ok.dev().slice(n..2 * n);
            // SAFETY: ed25519_check's ABI, the same buffers as above.
            unsafe {
                stream
                    .launch_builder(check_k)
                    .arg(table)
                    .arg(key_words)
                    .arg(lane.input.dev())
                    .arg(lane.offs.dev())
                    .arg(lane.out_a.dev())
                    .arg(&ok_check)
                    .arg(&count)
                    .launch(cfg)
            }
            .map_err(self.drv("ed25519 check launch"))?;
        }
        lane.out_a
            .download(&stream, words)
            .map_err(self.drv("copy from device"))?;
        let flags = if all { 2 * n } else { n };
        lane.ok
            .download(&stream, flags)
            .map_err(self.drv("copy from device"))?;
        stream.synchronize().map_err(self.drv("ed25519 batch"))?;
        let ok = lane.ok.host().map_err(self.drv("host buffer"))?[..flags].to_vec();
        let soa = lane.out_a.host().map_err(self.drv("host buffer"))?[..words].to_vec();
        let mut out = ed_layout::signatures(&soa, n);
        let redo: Vec<usize> = (0..n).filter(|&i| ok[i] != 1).collect();
        if all {
            self.counters
                .checked
                .fetch_add((n - redo.len()) as u64, Ordering::Relaxed);
            let bad = (0..n).filter(|&i| ok[i] == 1 && ok[n + i] != 1).count();
            if bad > 0 {
                return Err(self.wrong(bad, scheme));
            }
        } else if let CheckPolicy::Sample(every) = self.check {
            self.ed_sample_check(lane, key_words, check_k, every, inputs, &out, &ok)?;
        }
        if !redo.is_empty() {
            let again: Vec<&[u8]> = redo.iter().map(|&i| inputs[i].as_slice()).collect();
            for (i, sig) in redo.iter().zip(self.cpu_sign(key, scheme, &again)?) {
                out[*i] = sig;
            }
        }
        Ok(out)
    }

    /// Ed25519 with `check = "sample:N"`: every N-th signature from a
    /// random offset, with its message, is checked on the device as a
    /// batch of its own.
    #[allow(clippy::too_many_arguments)]
    fn ed_sample_check(
        &self,
        lane: &mut Lane,
        key_words: &CudaSlice<u32>,
        check_k: &cudarc::driver::CudaFunction,
        every: u32,
        inputs: &[Vec<u8>],
        sigs: &[Vec<u8>],
        ok: &[u32],
    ) -> Result<()> {
        let scheme = Scheme::Ed25519;
        let picked = self.sample(every, inputs.len(), |i| ok[i] == 1)?;
        if picked.is_empty() {
            return Ok(());
        }
        let msgs: Vec<&[u8]> = picked.iter().map(|&i| inputs[i].as_slice()).collect();
        let (msg, off) = ed_layout::pack_messages(&msgs)
            .map_err(|e| Error::backend(self.name.clone(), format!("{scheme}: {e}")))?;
        let picked_sigs: Vec<&[u8]> = picked.iter().map(|&i| sigs[i].as_slice()).collect();
        let mut sig = ed_layout::signatures_to_soa(&picked_sigs);
        if self.take_fault() {
            // Test hook: the sampled copy of one signature is corrupted.
            sig[0] ^= 1;
        }
        // ed25519_check takes (table, key, msg, off, sig, ok, count): the
        // same shape as the ECDSA check's (table, key, z, r, s, ok, count).
        let table = &self.tables.ed25519;
        self.run_check(
            lane,
            table,
            key_words,
            check_k,
            &msg,
            &off,
            &sig,
            picked.len(),
            scheme,
        )
    }

    /// The items `check = "sample:N"` checks: every `every`-th of `n` from a
    /// random offset, among those `signed` says the kernel signed.
    fn sample(&self, every: u32, n: usize, signed: impl Fn(usize) -> bool) -> Result<Vec<usize>> {
        let step = (every as usize).min(n).max(1);
        let mut b = [0u8; 4];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| {
            Error::backend(self.name.clone(), "no random sample offset".to_string())
        })?;
        let offset = u32::from_le_bytes(b) as usize % step;
        Ok((offset..n).step_by(step).filter(|&i| signed(i)).collect())
    }

    /// `check = "sample:N"`: every N-th signature from a random offset is
    /// gathered into its own small batch and checked on the device.
    #[allow(clippy::too_many_arguments)]
    fn sample_check(
        &self,
        lane: &mut Lane,
        table: &CudaSlice<u32>,
        key_words: &CudaSlice<u32>,
        check_k: &cudarc::driver::CudaFunction,
        limbs: usize,
        every: u32,
        z: &[u32],
        r: &[u32],
        s: &[u32],
        ok: &[u32],
        n: usize,
        scheme: Scheme,
    ) -> Result<()> {
        let picked = self.sample(every, n, |i| ok[i] == 1 && ok[n + i] == 1)?;
        if picked.is_empty() {
            return Ok(());
        }
        let m = picked.len();
        let (zs, rs, mut ss) = gather(&picked, z, r, s, limbs, n);
        if self.take_fault() {
            // Test hook: the sampled copy of one signature is corrupted.
            ss[0] ^= 1;
        }
        self.run_check(lane, table, key_words, check_k, &zs, &rs, &ss, m, scheme)
    }

    /// Runs a check kernel over a batch of `m` items of its own: the ECDSA
    /// checks' (z, r, s) or Ed25519's (messages, offsets, signatures), which
    /// take their buffers in the same places.
    #[allow(clippy::too_many_arguments)]
    fn run_check(
        &self,
        lane: &mut Lane,
        table: &CudaSlice<u32>,
        key_words: &CudaSlice<u32>,
        check_k: &cudarc::driver::CudaFunction,
        z: &[u32],
        r: &[u32],
        s: &[u32],
        m: usize,
        scheme: Scheme,
    ) -> Result<()> {
        let stream = lane.stream.clone();
        lane.chk_z
            .upload(&stream, z)
            .map_err(self.drv("copy to device"))?;
        lane.chk_r
            .upload(&stream, r)
            .map_err(self.drv("copy to device"))?;
        lane.chk_s
            .upload(&stream, s)
            .map_err(self.drv("copy to device"))?;
        lane.chk_ok
            .ensure(&stream, m)
            .map_err(self.drv("device memory"))?;
        let count = m as u32;
        // SAFETY: {C}_check's / ed25519_check's ABI; the three buffers hold
        // the check's `m` items, the flags `m` words.
        unsafe {
            stream
                .launch_builder(check_k)
                .arg(table)
                .arg(key_words)
                .arg(lane.chk_z.dev())
                .arg(lane.chk_r.dev())
                .arg(lane.chk_s.dev())
                .arg(lane.chk_ok.dev())
                .arg(&count)
                .launch(self.launch_config(m))
        }
        .map_err(self.drv("check launch"))?;
        lane.chk_ok
            .download(&stream, m)
            .map_err(self.drv("copy from device"))?;
        stream.synchronize().map_err(self.drv("check"))?;
        self.counters.checked.fetch_add(m as u64, Ordering::Relaxed);
        let bad = lane.chk_ok.host().map_err(self.drv("host buffer"))?[..m]
            .iter()
            .filter(|&&o| o != 1)
            .count();
        if bad > 0 {
            return Err(self.wrong(bad, scheme));
        }
        Ok(())
    }

    /// A bare loop of this backend's own batch call, for `sigmux bench
    /// --compare-raw`: `workers` threads (one per stream) each signing
    /// `batch` copies of `input` with `key` until `duration` has passed; no
    /// engine, no batcher; RSA with the backend's `rsa_mapping`, as the
    /// engine's batches. Returns operations and time taken.
    pub fn raw_sign_loop(
        &self,
        key: &Arc<Key>,
        scheme: Scheme,
        input: &[u8],
        batch: usize,
        duration: std::time::Duration,
    ) -> Result<(u64, std::time::Duration)> {
        let batch = batch.clamp(1, self.caps.max_batch);
        let inputs = vec![input.to_vec(); batch];
        let stop = std::sync::atomic::AtomicBool::new(false);
        let start = std::time::Instant::now();
        let total = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..self.streams)
                .map(|_| {
                    sc.spawn(|| -> Result<u64> {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            n += self.sign_batch(key, scheme, &inputs)?.len() as u64;
                        }
                        Ok(n)
                    })
                })
                .collect();
            std::thread::sleep(duration);
            stop.store(true, Ordering::Relaxed);
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(Error::backend(self.name.clone(), "raw loop panicked"))
                    })
                })
                .sum::<Result<u64>>()
        })?;
        Ok((total, start.elapsed()))
    }
}

/// Blocks of [`THREADS`] that hold `threads` threads: at least one (a
/// launch of none is an error), saturating at `u32::MAX` (see
/// `launch_config_threads`).
fn blocks_for(threads: usize) -> u32 {
    u32::try_from(threads.div_ceil(THREADS as usize))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Cost seed from two timings (microseconds): a one-item batch and a batch
/// of `many`. The fixed cost is what the one-item batch spent beyond one
/// operation; both are kept positive (timer noise on a fast device).
fn fit_cost(t_one_us: f64, t_many_us: f64, many: usize) -> CostSeed {
    let per_op = if many > 1 {
        ((t_many_us - t_one_us) / (many - 1) as f64).max(0.001)
    } else {
        t_many_us.max(0.001)
    };
    CostSeed {
        per_batch_us: (t_one_us - per_op).max(1.0),
        per_op_us: per_op,
    }
}

/// Most message bytes in one Ed25519 launch: the messages themselves go to
/// the device, so a batch of long ones is split by size as well as count.
const ED_BATCH_BYTES: usize = 64 << 20;

/// `inputs` in launches of at most `max_batch` items (and, for Ed25519, at
/// most [`ED_BATCH_BYTES`] of messages, a longer message going alone).
fn chunks(inputs: &[Vec<u8>], scheme: Scheme, max_batch: usize) -> Vec<&[Vec<u8>]> {
    let max_batch = max_batch.max(1);
    if scheme != Scheme::Ed25519 {
        return inputs.chunks(max_batch).collect();
    }
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in inputs.iter().enumerate() {
        if i > start && (i - start == max_batch || bytes + m.len() > ED_BATCH_BYTES) {
            out.push(&inputs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += m.len();
    }
    if start < inputs.len() {
        out.push(&inputs[start..]);
    }
    out
}

/// Gathers the items `picked` of SoA arrays with stride `n` into SoA
/// arrays of their own (stride `picked.len()`).
fn gather(
    picked: &[usize],
    z: &[u32],
    r: &[u32],
    s: &[u32],
    limbs: usize,
    n: usize,
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let m = picked.len();
    let mut out = (
        vec![0u32; limbs * m],
        vec![0u32; limbs * m],
        vec![0u32; limbs * m],
    );
    for (t, &i) in picked.iter().enumerate() {
        for j in 0..limbs {
            out.0[j * m + t] = z[j * n + i];
            out.1[j * m + t] = r[j * n + i];
            out.2[j * m + t] = s[j * n + i];
        }
    }
    out
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Soft RSA-2048/3072/4096, P-256, P-384 and Ed25519 keys that the
    /// kernel layouts accept; the answer is remembered per key.
    fn holds(&self, key: &Key) -> bool {
        if key.placement() != Placement::Soft
            || (rsa_bits(key.kind()).is_none()
                && ec_curve(key.kind()).is_none()
                && key.kind() != KeyKind::Ed25519)
        {
            return false;
        }
        if let Some(b) = self.held.read().get(&key.id()) {
            return *b;
        }
        let ok = self.pack(key).is_ok();
        let mut held = self.held.write();
        if held.len() >= HELD_LIMIT {
            held.clear();
        }
        held.insert(key.id(), ok);
        ok
    }

    fn sign_batch(
        &self,
        key: &Arc<Key>,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        scheme.check_fits(key.kind())?;
        if !self.caps.schemes.contains(&scheme) {
            return Err(Error::backend(
                self.name.clone(),
                format!("{scheme} does not run on the GPU"),
            ));
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let dk = self.device_key(key)?;
        // Declared after `dk`, so dropped before it: the lane's stream is
        // idle (see `LaneGuard`'s drop) before the key can be released.
        let mut guard = self.lanes.take();
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in chunks(inputs, scheme, self.caps.max_batch) {
            let lane = guard.lane();
            out.extend(match scheme.family() {
                Family::Rsa => self.rsa_batch(lane, &dk, key, scheme, chunk)?,
                Family::Ecdsa(_) => self.ec_batch(lane, &dk, key, scheme, chunk)?,
                Family::Ed25519 => self.ed_batch(lane, &dk, key, chunk)?,
            });
        }
        Ok(out)
    }

    /// RSA: every result is checked by `rsa{B}_check`. ECDSA and Ed25519:
    /// only with `check = "all"`.
    fn checks_own_results(&self, scheme: Scheme) -> bool {
        match scheme.family() {
            Family::Rsa => true,
            Family::Ecdsa(_) | Family::Ed25519 => self.check == CheckPolicy::All,
        }
    }

    fn cost_seed(&self, kind: KeyKind, scheme: Scheme) -> Option<CostSeed> {
        if !self.caps.schemes.contains(&scheme) || !scheme.fits(kind) {
            return None;
        }
        // Measured at start; larger RSA keys scale with the cube of the
        // modulus size (as the CPU backend's seeds do).
        let (base, scale) = match kind {
            KeyKind::Rsa3072 => (KeyKind::Rsa2048, 3.2),
            KeyKind::Rsa4096 => (KeyKind::Rsa2048, 7.0),
            k => (k, 1.0),
        };
        if let Some(c) = self.calibration.get(&base) {
            return Some(CostSeed {
                per_batch_us: c.per_batch_us,
                per_op_us: c.per_op_us * scale,
            });
        }
        // Conservative guesses per operation with the GPU busy; the live
        // cost model replaces them after the first batches.
        let per_op = match kind {
            KeyKind::Rsa2048 => 10.0,
            KeyKind::Rsa3072 => 30.0,
            KeyKind::Rsa4096 => 70.0,
            KeyKind::P256 => 2.0,
            KeyKind::P384 => 6.0,
            KeyKind::Ed25519 => 2.0,
        };
        Some(CostSeed {
            per_batch_us: 300.0,
            per_op_us: per_op,
        })
    }

    fn describe(&self) -> serde_json::Value {
        let (keys, bytes, evictions) = self.key_cache_stats();
        let budget = self.keys.lock().budget();
        json!({
            "device": self.gpu.name,
            "ordinal": self.gpu.ordinal,
            "compute_capability": format!("{}.{}", self.gpu.cc.0, self.gpu.cc.1),
            "arch": self.gpu.arch,
            "sms": self.gpu.sms,
            "memory_bytes": self.gpu.total_mem,
            "driver": version_text(self.driver_version),
            "nvrtc": format!("{}.{}", self.nvrtc.version.0, self.nvrtc.version.1),
            "nvrtc_library": self.nvrtc.library,
            "programs": self.gpu.programs.iter().map(|(p, o)| json!({"program": p, "origin": o})).collect::<Vec<_>>(),
            "streams": self.streams,
            "check": self.check.to_string(),
            "rsa_mapping": self.rsa_mapping.to_string(),
            "key_cache": {"keys": keys, "bytes": bytes, "budget": budget, "evictions": evictions,
                "uploads": self.counters.key_uploads.load(Ordering::Relaxed)},
            "checked": self.counters.checked.load(Ordering::Relaxed),
            "calibration": self.calibration.iter().map(|(k, c)| (k.to_string(), json!({
                "per_batch_us": (c.per_batch_us * 10.0).round() / 10.0,
                "per_op_us": (c.per_op_us * 1000.0).round() / 1000.0,
            }))).collect::<serde_json::Map<_, _>>(),
            "device_check_faults": self.device_check_faults(),
            "redone_on_cpu": self.redone_on_cpu(),
            "block_threads": THREADS,
            "kernels": self.gpu.kernel_resources(THREADS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_takes_columns_of_a_soa_array() {
        // 3 items, 2 limbs: limb j of item i at j * 3 + i.
        let z = [10, 11, 12, 20, 21, 22];
        let (zs, rs, _) = gather(&[0, 2], &z, &z, &z, 2, 3);
        assert_eq!(zs, [10, 12, 20, 22]);
        assert_eq!(rs, zs);
    }

    #[test]
    fn coop_grids_hold_every_thread_of_every_item() {
        // The coop kernels do not stride: ceil(count * 2T / THREADS) blocks.
        let grid = |n: usize, m: RsaMapping| blocks_for(n * m.threads_per_item());
        assert_eq!(grid(0, RsaMapping::Thread), 1);
        assert_eq!(grid(1, RsaMapping::Coop(16)), 1);
        assert_eq!(grid(4, RsaMapping::Coop(16)), 1);
        assert_eq!(grid(5, RsaMapping::Coop(16)), 2);
        assert_eq!(grid(8, RsaMapping::Coop(8)), 1);
        assert_eq!(grid(9, RsaMapping::Coop(8)), 2);
        assert_eq!(grid(16384, RsaMapping::Coop(16)), 4096);
        assert_eq!(grid(16384, RsaMapping::Thread), 128);
        for m in RsaMapping::all() {
            assert_eq!(THREADS as usize % m.threads_per_item(), 0, "{m}");
            for n in [1, 37, 300, 65_536] {
                let threads = grid(n, m) as usize * THREADS as usize;
                assert!(threads >= n * m.threads_per_item(), "{m} {n}");
                assert!(threads - n * m.threads_per_item() < THREADS as usize);
            }
        }
        assert_eq!(blocks_for(usize::MAX), u32::MAX);
    }

    #[test]
    fn cost_fit_from_two_batches() {
        // 300 us fixed + 2 us per op: 302 for one, 300 + 2 * 4096 for 4096.
        let c = fit_cost(302.0, 300.0 + 2.0 * 4096.0, 4096);
        assert!((c.per_op_us - 2.0).abs() < 1e-9, "{c:?}");
        assert!((c.per_batch_us - 300.0).abs() < 1e-9, "{c:?}");
        // Noise that makes the big batch look cheaper still gives positive costs.
        let c = fit_cost(500.0, 400.0, 100);
        assert!(c.per_op_us > 0.0 && c.per_batch_us >= 1.0, "{c:?}");
    }

    #[test]
    fn ed25519_launches_are_bounded_by_bytes_as_well_as_count() {
        let lens = |c: &[&[Vec<u8>]]| c.iter().map(|x| x.len()).collect::<Vec<_>>();
        let small = vec![vec![0u8; 10]; 10];
        assert_eq!(lens(&chunks(&small, Scheme::Ed25519, 4)), [4, 4, 2]);
        assert_eq!(lens(&chunks(&small, Scheme::RsaPkcs1Sha256, 4)), [4, 4, 2]);
        let big = ED_BATCH_BYTES / 2 + 1;
        let mixed = vec![
            vec![0u8; big],
            vec![0u8; big],
            vec![0u8; 1],
            vec![0u8; 2 * big],
        ];
        // two halves do not fit together; the oversized one goes alone
        assert_eq!(lens(&chunks(&mixed, Scheme::Ed25519, 100)), [1, 2, 1]);
        assert!(chunks(&[], Scheme::Ed25519, 4).is_empty());
    }

    #[test]
    fn the_gpu_signs_every_scheme() {
        let s = schemes();
        assert!(s.contains(&Scheme::RsaRaw) && s.contains(&Scheme::EcdsaP384AnyDigest));
        assert!(s.contains(&Scheme::RsaPssRsaeSha512));
        assert!(s.contains(&Scheme::Ed25519));
        for scheme in Scheme::all() {
            assert!(s.contains(scheme), "{scheme}");
        }
    }
}
