//! NVRTC: finding the library, compiling the kernel programs for a device
//! architecture, and the on-disk cache of compiled kernels.
//!
//! cudarc loads NVRTC itself, by library *name* (`libnvrtc.so`,
//! `libnvrtc.so.13`, ...), and panics when it finds none. sigmux instead
//! picks the library by path (config `backends.cuda.nvrtc`, else
//! `SIGMUX_NVRTC_LIB`, else the usual names and `/usr/local/cuda/lib64`),
//! loads it first and keeps it loaded for the life of the process: glibc
//! then answers cudarc's later `dlopen("libnvrtc.so.13")` with the already
//! loaded object (it matches loaded libraries by their soname), so cudarc
//! calls exactly the library we chose. That is checked, not assumed: the
//! address of `nvrtcVersion` as cudarc resolves it must be ours.
//!
//! The pip wheel's `libnvrtc.so.13` in turn `dlopen`s
//! `libnvrtc-builtins.so.13.0` by name while compiling, which would fail
//! without `LD_LIBRARY_PATH`; loading the builtins from the same folder
//! first satisfies that the same way.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest;
use cudarc::nvrtc::sys as nv;
use parking_lot::Mutex;

use super::ptx_check::CarryChains;
use crate::error::{Error, Result};

/// Environment variable naming the NVRTC library (a path), used when the
/// config does not name one.
pub const NVRTC_ENV: &str = "SIGMUX_NVRTC_LIB";

/// Where the CUDA toolkit usually puts its libraries.
const TOOLKIT_LIB_DIR: &str = "/usr/local/cuda/lib64";

/// The loaded NVRTC library: its path (when known) and version. Loaded at
/// most once per process; never unloaded.
#[derive(Clone, Debug)]
pub struct Nvrtc {
    /// The library file, or the name the dynamic loader resolved.
    pub library: String,
    /// NVRTC's `(major, minor)` version.
    pub version: (i32, i32),
}

/// The result of the first load attempt, kept for the process: the handles
/// stay open (never `dlclose`d) so that cudarc's own lookups find them.
static LOADED: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();

/// One lock per (program, architecture): NVRTC is thread-safe and
/// different programs compile at once, but a second caller wanting the same
/// program waits for the first's compile and then reads it from the cache
/// instead of compiling it again.
static COMPILING: Mutex<BTreeMap<(String, String), CompileLock>> = Mutex::new(BTreeMap::new());

type CompileLock = Arc<Mutex<()>>;

fn compile_lock(name: &str, arch: &str) -> CompileLock {
    COMPILING
        .lock()
        .entry((name.to_string(), arch.to_string()))
        .or_default()
        .clone()
}

/// Compiles at once at most this many programs: each NVRTC compile holds
/// one core and up to a few hundred MiB for tens of seconds.
const MAX_PARALLEL_COMPILES: usize = 8;

/// `f` over `items`, several at once (one thread per core, at most
/// [`MAX_PARALLEL_COMPILES`]); results in the order of `items`.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_PARALLEL_COMPILES)
        .min(items.len());
    if workers <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    done.lock()[i] = Some(r);
                }
            });
        }
    });
    done.into_inner()
        .into_iter()
        .map(|r| r.expect("every item was taken by a worker"))
        .collect()
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns a thread-local C string or null.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null pointer from dlerror, NUL-terminated.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// `dlopen` with `RTLD_NOW | RTLD_GLOBAL`; the handle is deliberately never
/// closed.
fn dlopen(name: &str) -> std::result::Result<*mut c_void, String> {
    let c = CString::new(name).map_err(|_| format!("{name}: path contains a NUL byte"))?;
    // SAFETY: `c` is a valid C string; loading a library runs its
    // initialisers, which is what we ask for.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        Err(dlerror_text())
    } else {
        Ok(h)
    }
}

fn dlsym(handle: *mut c_void, name: &CStr) -> Option<usize> {
    // SAFETY: `handle` came from a successful dlopen and is never closed.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!p.is_null()).then_some(p as usize)
}

/// The file of the loaded library that holds the code at `addr`.
fn library_of(addr: usize) -> Option<String> {
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid
    // out-pointer, and dli_fname, when set, is a NUL-terminated string the
    // loader keeps while the library stays loaded (never unloaded here).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr as *const c_void, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        Some(
            CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// The library files to try, in order: the configured path, else the
/// environment variable, else the usual names (for the dynamic loader's own
/// search) and the toolkit folder.
fn candidates(configured: Option<&Path>) -> (Vec<String>, bool) {
    if let Some(p) = configured {
        return (vec![p.display().to_string()], true);
    }
    if let Some(p) = std::env::var_os(NVRTC_ENV).filter(|v| !v.is_empty()) {
        return (vec![PathBuf::from(p).display().to_string()], true);
    }
    let mut out: Vec<String> = ["libnvrtc.so.13", "libnvrtc.so"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for n in ["libnvrtc.so.13", "libnvrtc.so"] {
        out.push(format!("{TOOLKIT_LIB_DIR}/{n}"));
    }
    (out, false)
}

/// Loads NVRTC's builtins from the folder of `lib` (when `lib` is a path),
/// so NVRTC's own `dlopen` of them by name succeeds.
fn preload_builtins(lib: &str) {
    let Some(dir) = Path::new(lib)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                // The `.alt.` variants are a second build of the same soname.
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
        .collect();
    names.sort();
    for p in names {
        if let Err(e) = dlopen(&p.display().to_string()) {
            tracing::debug!(library = %p.display(), error = %e, "cannot preload NVRTC builtins");
        }
    }
}

fn load_uncached(configured: Option<&Path>) -> std::result::Result<Nvrtc, String> {
    let (tries, explicit) = candidates(configured);
    let mut errors = Vec::new();
    let mut found = None;
    for lib in &tries {
        if lib.contains('/') && !Path::new(lib).exists() {
            if explicit {
                return Err(format!("NVRTC library {lib} does not exist"));
            }
            continue;
        }
        preload_builtins(lib);
        match dlopen(lib) {
            Ok(h) => {
                found = Some((lib.clone(), h));
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    let Some((library, handle)) = found else {
        return Err(if explicit {
            format!("cannot load NVRTC: {}", errors.join("; "))
        } else {
            format!(
                "no NVRTC library found (tried {}; set backends.cuda.nvrtc or {NVRTC_ENV})",
                tries.join(", ")
            )
        });
    };
    let ours = dlsym(handle, c"nvrtcVersion")
        .ok_or_else(|| format!("{library} has no nvrtcVersion: not an NVRTC library"))?;
    // cudarc resolves NVRTC by name; with ours loaded, glibc hands it ours.
    // SAFETY: only tries to dlopen candidate names.
    if !unsafe { nv::is_culib_present() } {
        return Err(format!(
            "loaded {library}, but cudarc cannot find it by name (its soname must be libnvrtc.so.<major>)"
        ));
    }
    // SAFETY: is_culib_present just succeeded, so culib() will not panic.
    let theirs = unsafe {
        nv::culib()
            .get::<unsafe extern "C" fn()>(b"nvrtcVersion\0")
            .map(|s| *s as usize)
    }
    .map_err(|e| format!("cudarc's NVRTC has no nvrtcVersion: {e}"))?;
    // cudarc asks for `libnvrtc.so` first; where the library path has
    // another file of that name (a toolkit beside the wheel, say), it loads
    // that second copy. Both are NVRTC, so that copy, the one that will
    // compile, is named and used (its version is read below), rather than
    // leaving the GPU unused over which copy of the compiler runs.
    let library = if theirs == ours {
        library
    } else {
        let used = library_of(theirs).unwrap_or_else(|| "an unnamed copy".into());
        tracing::warn!(
            requested = %library,
            used = %used,
            "cudarc loaded another NVRTC than the one configured (another libnvrtc.so is on \
             the library path); compiling with it"
        );
        used
    };
    let (mut major, mut minor) = (0 as c_int, 0 as c_int);
    // SAFETY: valid out-pointers.
    unsafe { nv::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion failed: {e}"))?;
    Ok(Nvrtc {
        library,
        version: (major, minor),
    })
}

/// Loads NVRTC once per process from `configured` (else the environment,
/// else the usual places). The first call decides; later calls get the
/// same answer. Never panics: a missing library is an error with the
/// reason.
pub fn load(configured: Option<&Path>) -> Result<Nvrtc> {
    LOADED
        .get_or_init(|| load_uncached(configured))
        .clone()
        .map_err(|reason| Error::backend("cuda", reason))
}

/// What NVRTC produced for one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// Device code for exactly the requested architecture.
    Cubin(Vec<u8>),
    /// PTX, NUL-terminated, that the driver compiles (used when NVRTC does
    /// not know the device's architecture).
    Ptx(Vec<u8>),
}

impl Image {
    /// The bytes, whatever the kind.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Image::Cubin(b) | Image::Ptx(b) => b,
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Image::Cubin(_) => b'C',
            Image::Ptx(_) => b'P',
        }
    }
}

/// The architectures this NVRTC can produce device code for, as numbers
/// (`90` for `sm_90`).
pub fn supported_archs() -> Result<Vec<u32>> {
    let err = |e: nv::nvrtcResult| Error::backend("cuda", format!("NVRTC: {e:?}"));
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer; NVRTC is loaded by the caller.
    unsafe { nv::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| err(e.0))?;
    let mut v = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `v` holds `n` ints as the call requires.
    unsafe { nv::nvrtcGetSupportedArchs(v.as_mut_ptr()) }
        .result()
        .map_err(|e| err(e.0))?;
    Ok(v.into_iter().map(|a| a as u32).collect())
}

/// The NVRTC options for `arch` (e.g. `sm_90` or `compute_90`).
fn options(arch: &str) -> Vec<CString> {
    [
        format!("--gpu-architecture={arch}"),
        "-default-device".into(),
        "--std=c++17".into(),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect()
}

/// A program destroyed on drop.
struct Program(nv::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        unsafe {
            let _ = nv::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

impl Program {
    fn log(&self) -> String {
        let mut n = 0usize;
        // SAFETY: valid program and out-pointer.
        if unsafe { nv::nvrtcGetProgramLogSize(self.0, &mut n) }
            .result()
            .is_err()
        {
            return String::new();
        }
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: buffer of the size NVRTC asked for.
        if unsafe { nv::nvrtcGetProgramLog(self.0, buf.as_mut_ptr() as *mut c_char) }
            .result()
            .is_err()
        {
            return String::new();
        }
        String::from_utf8_lossy(&buf)
            .trim_end_matches('\0')
            .trim()
            .to_string()
    }

    fn output(
        &self,
        size: unsafe fn(nv::nvrtcProgram, *mut usize) -> nv::nvrtcResult,
        get: unsafe fn(nv::nvrtcProgram, *mut c_char) -> nv::nvrtcResult,
    ) -> Option<Vec<u8>> {
        let mut n = 0usize;
        // SAFETY: valid program and out-pointer.
        unsafe { size(self.0, &mut n) }.result().ok()?;
        if n == 0 {
            return None;
        }
        let mut buf = vec![0u8; n];
        // SAFETY: buffer of the size NVRTC reported.
        unsafe { get(self.0, buf.as_mut_ptr() as *mut c_char) }
            .result()
            .ok()?;
        Some(buf)
    }
}

/// Compiles the embedded program `name` (e.g. `rsa.cu`) for `arch`
/// (`sm_XY` gives CUBIN, `compute_XY` gives PTX). A failed compile is an
/// error carrying NVRTC's log, and so is a carry chain that the compiler
/// split ([`super::ptx_check`]).
fn compile_with_loaded(name: &str, arch: &str) -> Result<(Image, CarryChains)> {
    let fail = |reason: String| Error::backend("cuda", reason);
    let source = crate::kernels::source(name)?;
    let src = CString::new(source).map_err(|_| fail(format!("{name}: NUL byte in source")))?;
    let cname = CString::new(name).map_err(|_| fail(format!("{name}: NUL byte in name")))?;
    let mut raw: nv::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings that outlive the program; no headers.
    unsafe {
        nv::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            cname.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    }
    .result()
    .map_err(|e| fail(format!("{name}: nvrtcCreateProgram: {:?}", e.0)))?;
    let prog = Program(raw);
    let opts = options(arch);
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `ptrs` points at `opts`, alive for the call.
    let rc = unsafe { nv::nvrtcCompileProgram(prog.0, ptrs.len() as c_int, ptrs.as_ptr()) };
    if rc != nv::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail(format!(
            "NVRTC could not compile {name} for {arch} ({rc:?}):\n{}",
            prog.log()
        )));
    }
    // The PTX comes with every compile, CUBIN or not: the carry chains are
    // checked on it before anything is loaded.
    let ptx = prog
        .output(nv::nvrtcGetPTXSize, nv::nvrtcGetPTX)
        .filter(|p| p.len() > 1)
        .ok_or_else(|| fail(format!("NVRTC produced no PTX for {name} ({arch})")))?;
    let text = String::from_utf8_lossy(ptx.strip_suffix(&[0]).unwrap_or(&ptx));
    let chains =
        super::ptx_check::check(&text).map_err(|e| fail(format!("{name} for {arch}: {e}")))?;
    if arch.starts_with("sm_")
        && let Some(c) = prog.output(nv::nvrtcGetCUBINSize, nv::nvrtcGetCUBIN)
    {
        return Ok((Image::Cubin(c), chains));
    }
    Ok((Image::Ptx(ptx), chains))
}

/// Compiles the embedded program `name` for `arch` (`sm_90`, `sm_80`, ...)
/// and returns the CUBIN (or PTX where NVRTC gives no CUBIN). Needs no GPU:
/// it loads NVRTC the way the backend does (environment, usual names) and
/// runs the very compile the backend runs at start, without the cache.
pub fn compile_program(name: &str, arch: &str) -> Result<Vec<u8>> {
    compile_program_checked(name, arch).map(|(image, _)| image)
}

/// [`compile_program`], and what the carry-chain check of its PTX saw.
pub fn compile_program_checked(name: &str, arch: &str) -> Result<(Vec<u8>, CarryChains)> {
    load(None)?;
    let (image, chains) = compile_with_loaded(name, arch)?;
    Ok((
        match image {
            Image::Cubin(b) | Image::Ptx(b) => b,
        },
        chains,
    ))
}

/// [`compile_program_checked`] for every `(program, arch)` in `jobs`,
/// several at once; results in the order of `jobs`.
pub fn compile_programs(jobs: &[(&str, &str)]) -> Vec<Result<(Vec<u8>, CarryChains)>> {
    in_parallel(jobs, |(name, arch)| compile_program_checked(name, arch))
}

/// Magic at the start of a cache file (then a SHA-256 of the rest, a kind
/// tag and the image).
const CACHE_MAGIC: &[u8; 8] = b"SMXKRN01";

/// Where compiled kernels are cached and what they depend on.
#[derive(Clone, Debug)]
pub struct KernelCache {
    /// The folder (created on first write).
    pub dir: PathBuf,
    /// The driver version (`cuDriverGetVersion`), part of the key: a new
    /// driver may load old CUBINs, but PTX JIT results and bugs differ.
    pub driver_version: i32,
}

impl KernelCache {
    /// The cache file for `name` on `arch`: keyed by the source hash, the
    /// architecture, NVRTC's version and the driver's.
    pub fn path(&self, name: &str, arch: &str, nvrtc: (i32, i32)) -> Result<PathBuf> {
        let hash = crate::kernels::source_hash(name)?;
        let stem = name.trim_end_matches(".cu").replace('/', "_");
        Ok(self.dir.join(format!(
            "{stem}-{arch}-{}-nvrtc{}.{}-driver{}.bin",
            &hash[..16],
            nvrtc.0,
            nvrtc.1,
            self.driver_version
        )))
    }

    fn read(path: &Path) -> Option<Image> {
        let data = std::fs::read(path).ok()?;
        let rest = data.strip_prefix(CACHE_MAGIC.as_slice())?;
        if rest.len() < 33 {
            return None;
        }
        let (sum, body) = rest.split_at(32);
        if digest::digest(&digest::SHA256, body).as_ref() != sum {
            return None;
        }
        let (tag, image) = body.split_first()?;
        match tag {
            b'C' => Some(Image::Cubin(image.to_vec())),
            b'P' => Some(Image::Ptx(image.to_vec())),
            _ => None,
        }
    }

    fn write(path: &Path, image: &Image) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut body = vec![image.tag()];
        body.extend_from_slice(image.bytes());
        let mut data = CACHE_MAGIC.to_vec();
        data.extend_from_slice(digest::digest(&digest::SHA256, &body).as_ref());
        data.extend_from_slice(&body);
        // Write then rename, so a crash never leaves a half file under the
        // real name (and a reader never sees one).
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, path)
    }
}

/// How a program was obtained, for `sigmux backends`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the disk cache.
    Cached,
    /// Compiled now (and written to the cache when possible).
    Compiled,
}

/// The architecture NVRTC should target for a device of compute capability
/// `cc` (e.g. `(9, 0)`): `sm_XY` when NVRTC knows it (CUBIN), else PTX for
/// the newest virtual architecture NVRTC knows below it, which the driver
/// compiles for the device.
pub fn target_for(cc: (i32, i32)) -> Result<String> {
    let want = (cc.0 * 10 + cc.1).max(0) as u32;
    let archs = supported_archs()?;
    if archs.contains(&want) {
        return Ok(format!("sm_{want}"));
    }
    archs
        .iter()
        .copied()
        .filter(|a| *a <= want)
        .max()
        .map(|a| format!("compute_{a}"))
        .ok_or_else(|| {
            Error::backend(
                "cuda",
                format!(
                    "NVRTC cannot target compute capability {}.{} (it supports {:?})",
                    cc.0, cc.1, archs
                ),
            )
        })
}

/// [`compile_cached`] for every program in `names`, several at once: a
/// start with a cold cache compiles them all, each for up to a minute.
/// Results in the order of `names`.
pub fn compile_cached_all(
    nvrtc: &Nvrtc,
    names: &[&str],
    arch: &str,
    cache: Option<&KernelCache>,
) -> Vec<Result<(Image, Origin)>> {
    in_parallel(names, |name| compile_cached(nvrtc, name, arch, cache))
}

/// Compiles `name` for `arch`, through the disk cache when one is given: a
/// hit skips NVRTC; a corrupt or unreadable file is recompiled and
/// replaced; a cache that cannot be written is only a warning.
pub fn compile_cached(
    nvrtc: &Nvrtc,
    name: &str,
    arch: &str,
    cache: Option<&KernelCache>,
) -> Result<(Image, Origin)> {
    let path = match cache {
        Some(c) => Some(c.path(name, arch, nvrtc.version)?),
        None => None,
    };
    let lock = compile_lock(name, arch);
    let _one = lock.lock();
    if let Some(p) = &path {
        if let Some(img) = KernelCache::read(p) {
            return Ok((img, Origin::Cached));
        }
        if p.exists() {
            tracing::warn!(file = %p.display(), "kernel cache file is corrupt; recompiling");
        }
    }
    let (img, _) = compile_with_loaded(name, arch)?;
    if let Some(p) = &path
        && let Err(e) = KernelCache::write(p, &img)
    {
        tracing::warn!(file = %p.display(), error = %e, "cannot write the kernel cache");
    }
    Ok((img, Origin::Compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_files_round_trip_and_reject_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let img = Image::Cubin(b"\x7fELF fake".to_vec());
        KernelCache::write(&p, &img).unwrap();
        assert_eq!(KernelCache::read(&p), Some(img));
        let mut data = std::fs::read(&p).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&p, &data).unwrap();
        assert_eq!(KernelCache::read(&p), None);
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(KernelCache::read(&p), None);
    }

    #[test]
    fn options_name_the_architecture() {
        let o: Vec<String> = options("sm_90")
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            o,
            ["--gpu-architecture=sm_90", "-default-device", "--std=c++17"]
        );
    }

    #[test]
    fn explicit_paths_come_first() {
        let (c, explicit) = candidates(Some(Path::new("/x/libnvrtc.so.13")));
        assert!(explicit);
        assert_eq!(c, ["/x/libnvrtc.so.13"]);
    }
}
