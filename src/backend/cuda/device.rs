//! The CUDA driver side: is there a driver, which devices, and one opened
//! device with its context, compiled kernels and the constant tables.
//!
//! cudarc is built with dynamic loading and panics when `libcuda` is
//! missing, so every entry point here first checks that the library can be
//! loaded ([`driver_status`]) and turns each failure into a reason string
//! for `unavailable: <reason>`.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys as cu;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError};
use cudarc::nvrtc::Ptx;

use super::nvrtc::{self, KernelCache, Nvrtc, Origin};
use crate::error::{Error, Result};

/// A driver error as one line: the CUDA error name and its text.
pub fn driver_error(e: &DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// The driver's version and device count, or why there is no usable
/// driver. Never panics (the library is probed before cudarc touches it).
pub fn driver_status() -> std::result::Result<(i32, usize), String> {
    // SAFETY: only tries to dlopen the candidate names.
    if !unsafe { cu::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so not found)".into());
    }
    // SAFETY: the library is present, so cudarc's lazy load succeeds.
    unsafe { cu::cuInit(0) }
        .result()
        .map_err(|e| format!("the CUDA driver did not initialise ({})", driver_error(&e)))?;
    let mut version = 0;
    // SAFETY: valid out-pointer, driver initialised.
    unsafe { cu::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion failed ({})", driver_error(&e)))?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| format!("cannot count CUDA devices ({})", driver_error(&e)))?;
    Ok((version, count.max(0) as usize))
}

/// Whether `e` leaves the context unusable (CUDA's "sticky" errors: a
/// kernel fault, an uncorrectable ECC or NVLink error): every later call
/// in this process fails the same way, so the GPU is back only after
/// sigmux restarts (and, for hardware errors, the GPU is reset).
pub fn is_sticky(e: &DriverError) -> bool {
    use cu::CUresult::*;
    matches!(
        e.0,
        CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_NVLINK_UNCORRECTABLE
            | CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_LAUNCH_FAILED
    )
}

/// Formats a driver version number (`13000` -> `13.0`).
pub fn version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The constant-memory array of RSA key slots (kernels/rsa/crt.cuh) in
/// each program with one-thread RSA sign kernels.
pub const KEY_SLOTS_SYMBOL: &str = "smx_rsa_key_slots";
/// Key slots per program (`kKeySlots` in kernels/rsa/crt.cuh).
pub const KEY_SLOTS: usize = 16;
/// 32-bit words per slot (`kKeySlotWords`): the largest key blob,
/// RSA-4096's 712 words, rounded up to 256 bytes.
pub const KEY_SLOT_WORDS: usize = 768;

/// The kernel programs every device loads.
pub const PROGRAMS: [&str; 5] = [
    "rsa.cu",
    "rsa_wide.cu",
    "ecdsa.cu",
    "nonce.cu",
    "ed25519.cu",
];

/// Whether `program`'s sign kernels read the key from constant-memory
/// slots (the one-thread RSA mappings; kernels/rsa/crt.cuh).
pub fn has_key_slots(program: &str) -> bool {
    matches!(program, "rsa.cu" | "rsa_wide.cu")
}

/// The kernels each program must export.
pub fn kernel_names(program: &str) -> Vec<String> {
    match program {
        // The sign kernels of every mapping (super::RsaMapping) but `wide`,
        // which has its own program, and the check.
        "rsa.cu" => [2048, 3072, 4096]
            .iter()
            .flat_map(|&b| {
                super::RsaMapping::all()
                    .into_iter()
                    .filter(|m| *m != super::RsaMapping::Wide)
                    .map(move |m| m.kernel(b))
                    .chain([format!("rsa{b}_check")])
            })
            .collect(),
        "rsa_wide.cu" => [2048, 3072, 4096]
            .iter()
            .map(|&b| super::RsaMapping::Wide.kernel(b))
            .collect(),
        "ecdsa.cu" => ["p256", "p384"]
            .iter()
            .flat_map(|c| [format!("{c}_sign"), format!("{c}_check")])
            .collect(),
        "nonce.cu" => vec!["p256_nonce".into(), "p384_nonce".into()],
        "ed25519.cu" => vec!["ed25519_sign".into(), "ed25519_check".into()],
        _ => Vec::new(),
    }
}

/// One opened device: context, a stream for uploads and wipes, the
/// loaded kernels and facts for `sigmux backends`.
pub struct Gpu {
    /// The device ordinal.
    pub ordinal: usize,
    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability.
    pub cc: (i32, i32),
    /// What NVRTC targeted (`sm_90`, or `compute_XY` for PTX).
    pub arch: String,
    /// Streaming multiprocessors (sizes the launch grid).
    pub sms: u32,
    /// Device memory in bytes.
    pub total_mem: usize,
    /// The context (primary, event tracking off: sigmux orders its streams
    /// itself; see [`Gpu::open`]).
    pub ctx: Arc<CudaContext>,
    /// Key uploads, wipes and table uploads run here, each synchronised
    /// before anything else uses the memory.
    pub admin: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    /// Device address of [`KEY_SLOTS_SYMBOL`] per program that has it (the
    /// programs stay loaded: their functions hold them).
    key_slots: HashMap<&'static str, cu::CUdeviceptr>,
    /// How each program was obtained (cache hit or compiled).
    pub programs: Vec<(String, &'static str)>,
}

impl Gpu {
    /// Opens device `ordinal`: context, kernels compiled (or read from
    /// `cache`) for its architecture and loaded.
    pub fn open(ordinal: usize, nvrtc: &Nvrtc, cache: Option<&KernelCache>) -> Result<Gpu> {
        let who = format!("cuda:{ordinal}");
        let fail = |what: &str, e: DriverError| {
            Error::backend(who.clone(), format!("{what}: {}", driver_error(&e)))
        };
        let ctx = CudaContext::new(ordinal).map_err(|e| fail("cannot create a context", e))?;
        // Every batch runs on one stream that it synchronises before it
        // returns, keys are uploaded and wiped on the admin stream and
        // synchronised there, and a key is freed only after every batch
        // using it returned: ordering is explicit, so cudarc's per-buffer
        // event tracking (an event record per argument per launch) is not
        // needed. It must be off before the first allocation.
        // SAFETY: see above; nothing was allocated in this context yet by
        // sigmux.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx
            .name()
            .map_err(|e| fail("cannot read the device name", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| fail("cannot read the compute capability", e))?;
        let sms = ctx
            .attribute(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| fail("cannot read the SM count", e))?
            .max(1) as u32;
        let total_mem = ctx
            .total_mem()
            .map_err(|e| fail("cannot read the memory size", e))?;
        let admin = ctx
            .new_stream()
            .map_err(|e| fail("cannot create a stream", e))?;
        let arch = nvrtc::target_for(cc)?;
        let mut functions = HashMap::new();
        let mut key_slots = HashMap::new();
        let mut programs = Vec::new();
        let compiled = nvrtc::compile_cached_all(nvrtc, &PROGRAMS, &arch, cache);
        for (program, result) in PROGRAMS.into_iter().zip(compiled) {
            let (image, origin) = result.map_err(|e| Error::backend(who.clone(), e.to_string()))?;
            let module = ctx
                .load_module(Ptx::from_binary(image.bytes().to_vec()))
                .map_err(|e| fail(&format!("cannot load {program}"), e))?;
            for k in kernel_names(program) {
                let f = module
                    .load_function(&k)
                    .map_err(|e| fail(&format!("{program} has no kernel {k}"), e))?;
                functions.insert(k, f);
            }
            if has_key_slots(program) {
                let view = module
                    .get_global(KEY_SLOTS_SYMBOL, &admin)
                    .map_err(|e| fail(&format!("{program} has no {KEY_SLOTS_SYMBOL}"), e))?;
                if view.len() < KEY_SLOTS * KEY_SLOT_WORDS * 4 {
                    return Err(Error::backend(
                        who.clone(),
                        format!(
                            "{program}: {KEY_SLOTS_SYMBOL} holds {} bytes, not {}",
                            view.len(),
                            KEY_SLOTS * KEY_SLOT_WORDS * 4
                        ),
                    ));
                }
                let (base, _sync) = view.device_ptr(&admin);
                key_slots.insert(program, base);
            }
            programs.push((
                program.to_string(),
                match origin {
                    Origin::Cached => "cached",
                    Origin::Compiled => "compiled",
                },
            ));
        }
        Ok(Gpu {
            ordinal,
            name,
            cc,
            arch,
            sms,
            total_mem,
            ctx,
            admin,
            functions,
            key_slots,
            programs,
        })
    }

    /// The device address of key slot `slot` (below [`KEY_SLOTS`]) of
    /// `program`, which the host fills before a one-thread RSA sign launch
    /// and zeroes after it.
    pub fn key_slot(&self, program: &str, slot: usize) -> Result<cu::CUdeviceptr> {
        match self.key_slots.get(program) {
            Some(&base) if slot < KEY_SLOTS => Ok(base + (slot * KEY_SLOT_WORDS * 4) as u64),
            _ => Err(Error::backend(
                format!("cuda:{}", self.ordinal),
                format!("{program} has no key slot {slot}"),
            )),
        }
    }

    /// Per loaded kernel, what the driver says it needs: registers per
    /// thread, local memory per thread (spills and thread-local arrays;
    /// zero means everything stays in registers) and how many blocks of
    /// `block` threads fit on one SM. For `sigmux backends --json` and the
    /// GPU bench reports: the mapping a kernel gets is chosen by measurement,
    /// and these say why it measures as it does.
    pub fn kernel_resources(&self, block: u32) -> serde_json::Map<String, serde_json::Value> {
        let mut names: Vec<&String> = self.functions.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let f = &self.functions[name];
                let v = serde_json::json!({
                    "registers": f.num_regs().ok(),
                    "local_bytes": f.local_size_bytes().ok(),
                    "blocks_per_sm": f.occupancy_max_active_blocks_per_multiprocessor(block, 0, None).ok(),
                });
                (name.clone(), v)
            })
            .collect()
    }

    /// A loaded kernel by name.
    pub fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| {
            Error::backend(
                format!("cuda:{}", self.ordinal),
                format!("kernel {name} is not loaded"),
            )
        })
    }

    /// Copies `words` to a new device buffer on the admin stream and waits
    /// for the copy, so any stream may use the buffer at once.
    pub fn upload(&self, words: &[u32]) -> std::result::Result<CudaSlice<u32>, DriverError> {
        let d = self.admin.clone_htod(words)?;
        self.admin.synchronize()?;
        Ok(d)
    }

    /// Zeroes `buf` on the admin stream and waits, so a key's device copy
    /// is gone before its memory is freed or reused.
    pub fn wipe(&self, buf: &mut CudaSlice<u32>) -> std::result::Result<(), DriverError> {
        self.admin.memset_zeros(buf)?;
        self.admin.synchronize()
    }
}
