//! Every kernel program compiles with NVRTC for sm_90 and sm_80, through the
//! very code path the CUDA backend uses at start (no GPU needed), with every
//! carry chain of its PTX in one straight line (`ptx_check`), and the
//! compiled-kernel cache works. CI installs NVRTC from the
//! `nvidia-cuda-nvrtc` wheel (`scripts/deps.sh` exports SIGMUX_NVRTC_LIB)
//! and sets SIGMUX_REQUIRE_NVRTC=1, so there a missing NVRTC fails the
//! tests; elsewhere they say why they skipped.

use sigmux::backend::cuda::device::{PROGRAMS, kernel_names};
use sigmux::backend::cuda::nvrtc::{self, Image, KernelCache, Origin};

/// NVRTC, or `None` (after saying why) when it is missing and not required.
fn nvrtc_or_skip(test: &str) -> Option<nvrtc::Nvrtc> {
    match nvrtc::load(None) {
        Ok(n) => {
            eprintln!(
                "{test}: NVRTC {}.{} from {}",
                n.version.0, n.version.1, n.library
            );
            Some(n)
        }
        Err(e) if std::env::var("SIGMUX_REQUIRE_NVRTC").as_deref() == Ok("1") => {
            panic!("{test}: SIGMUX_REQUIRE_NVRTC=1 but NVRTC cannot be loaded: {e}")
        }
        Err(e) => {
            eprintln!("{test}: SKIPPED, no NVRTC ({e}); source scripts/deps.sh to install it");
            None
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn the_program_set_is_the_one_the_backend_loads() {
    let mut embedded = sigmux::kernels::programs();
    embedded.sort();
    let mut want: Vec<&str> = PROGRAMS.to_vec();
    want.sort();
    assert_eq!(embedded, want, "kernels/*.cu and device::PROGRAMS differ");
}

#[test]
fn every_program_compiles_for_sm90_and_sm80_with_its_kernels() {
    if nvrtc_or_skip("every_program_compiles").is_none() {
        return;
    }
    // All at once (one per core), as the backend compiles them at start.
    let programs = sigmux::kernels::programs();
    let jobs: Vec<(&str, &str)> = programs
        .iter()
        .flat_map(|p| ["sm_90", "sm_80"].map(|arch| (*p, arch)))
        .collect();
    let mut failures = Vec::new();
    for ((program, arch), result) in jobs.iter().zip(nvrtc::compile_programs(&jobs)) {
        match result {
            Ok((image, chains)) => {
                // The compile already refused any carry chain the compiler
                // split; this shows the check saw the chains of every
                // program with multi-limb arithmetic (all but the nonce
                // program's SHA-2 and HMAC).
                if *program != "nonce.cu" && (chains.chains == 0 || chains.ops <= chains.chains) {
                    failures.push(format!(
                        "{program} {arch}: no carry chains seen ({chains:?})"
                    ));
                }
                // CUBIN is ELF; its symbol table names the kernels.
                assert!(
                    image.starts_with(b"\x7fELF"),
                    "{program} {arch}: expected a CUBIN"
                );
                for k in kernel_names(program) {
                    assert!(
                        contains(&image, &k),
                        "{program} {arch}: kernel {k} missing from the output"
                    );
                }
                eprintln!(
                    "{program} {arch}: ok, {} bytes, {} carry chains of {} instructions checked",
                    image.len(),
                    chains.chains,
                    chains.ops
                );
            }
            // The error carries NVRTC's log.
            Err(e) => failures.push(format!("{program} {arch}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_newer_architecture_than_nvrtc_knows_gets_ptx() {
    let Some(_) = nvrtc_or_skip("newer_architecture") else {
        return;
    };
    assert_eq!(nvrtc::target_for((9, 0)).unwrap(), "sm_90");
    let far = nvrtc::target_for((99, 0)).unwrap();
    assert!(far.starts_with("compute_"), "{far}");
}

#[test]
fn the_kernel_cache_is_hit_and_a_corrupt_file_is_recompiled() {
    let Some(nv) = nvrtc_or_skip("kernel_cache") else {
        return;
    };
    let program = "nonce.cu";
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache {
        dir: dir.path().join("kernel-cache"),
        driver_version: 13000,
    };
    // Two backends starting together (one per GPU): one compiles, the
    // other waits for it and reads the cache.
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| nvrtc::compile_cached(&nv, program, "sm_90", Some(&cache)).unwrap());
        let two = s.spawn(|| nvrtc::compile_cached(&nv, program, "sm_90", Some(&cache)).unwrap());
        (one.join().unwrap(), two.join().unwrap())
    });
    let mut origins = [a.1, b.1];
    origins.sort_by_key(|o| *o == Origin::Cached);
    assert_eq!(origins, [Origin::Compiled, Origin::Cached]);
    assert_eq!(a.0, b.0);
    let first = a.0;
    assert!(matches!(first, Image::Cubin(_)));
    let path = cache.path(program, "sm_90", nv.version).unwrap();
    assert!(path.exists(), "{}", path.display());
    let (again, origin) = nvrtc::compile_cached(&nv, program, "sm_90", Some(&cache)).unwrap();
    assert_eq!(origin, Origin::Cached);
    assert_eq!(again, first);
    // Another driver version is another key.
    let other = KernelCache {
        driver_version: 13010,
        ..cache.clone()
    };
    assert_ne!(other.path(program, "sm_90", nv.version).unwrap(), path);
    // A damaged file is recompiled and replaced.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (fixed, origin) = nvrtc::compile_cached(&nv, program, "sm_90", Some(&cache)).unwrap();
    assert_eq!(origin, Origin::Compiled);
    assert_eq!(fixed, first);
    let (_, origin) = nvrtc::compile_cached(&nv, program, "sm_90", Some(&cache)).unwrap();
    assert_eq!(origin, Origin::Cached);
}

/// cudarc opens NVRTC as `libnvrtc.so` before any other name, so a second
/// copy of NVRTC under that name on the library path (a toolkit beside the
/// wheel, say) is the one that compiles, not the configured one. The
/// backend then names that copy and compiles with it instead of refusing
/// the GPU: a child process with such a copy first on LD_LIBRARY_PATH
/// loads NVRTC, reports the copy, and compiles a kernel program.
#[test]
fn a_second_nvrtc_on_the_library_path_is_used_and_named() {
    const CHILD: &str = "SIGMUX_NVRTC_TEST_SECOND_COPY";
    const NAME: &str = "a_second_nvrtc_on_the_library_path_is_used_and_named";
    if let Some(copy) = std::env::var_os(CHILD) {
        let n = nvrtc::load(None).expect("NVRTC loads with a second copy on the path");
        assert_eq!(
            std::path::Path::new(&n.library),
            std::path::Path::new(&copy)
        );
        let image = nvrtc::compile_program("nonce.cu", "sm_90").expect("the copy compiles");
        assert!(image.starts_with(b"\x7fELF"));
        return;
    }
    let Some(n) = nvrtc_or_skip("second_copy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("libnvrtc.so");
    std::fs::copy(std::fs::canonicalize(&n.library).unwrap(), &copy).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env(CHILD, &copy)
        .env("LD_LIBRARY_PATH", tmp.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}
