//! Fills a kernel cache for a GPU this machine does not have.
//!
//! Every kernel program is compiled by NVRTC for an architecture (default
//! `sm_90`) and written under the cache key that a device with a given
//! driver version (default 13000, CUDA 13.0) looks up, so sigmux's first
//! start there reads the kernels instead of compiling them (minutes of a
//! short device lease). `scripts/gpu-pack.sh` runs it; a device whose
//! driver or NVRTC version differs misses the cache and compiles as usual.
//!
//! ```text
//! source scripts/deps.sh
//! cargo run --release --example precompile_kernels -- carry/gpu/kernel-cache [sm_90] [13000]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use sigmux::backend::cuda::device::PROGRAMS;
use sigmux::backend::cuda::nvrtc::{self, KernelCache, Origin};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: precompile_kernels DIR [ARCH] [DRIVER_VERSION]");
        std::process::exit(2);
    };
    let arch = args.next().unwrap_or_else(|| "sm_90".into());
    let driver_version = match args.next().map(|v| v.parse::<i32>()) {
        None => 13000,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("precompile_kernels: the driver version is not a number: {e}");
            std::process::exit(2);
        }
    };
    let nvrtc = nvrtc::load(None).unwrap_or_else(|e| {
        eprintln!("precompile_kernels: {e}");
        std::process::exit(1);
    });
    let cache = KernelCache {
        dir,
        driver_version,
    };
    let t = Instant::now();
    let compiled = nvrtc::compile_cached_all(&nvrtc, &PROGRAMS, &arch, Some(&cache));
    for (program, result) in PROGRAMS.iter().zip(compiled) {
        match result {
            Ok((_, origin)) => {
                let what = match origin {
                    Origin::Cached => "already cached",
                    Origin::Compiled => "compiled",
                };
                eprintln!("{program} {arch} driver {driver_version}: {what}");
            }
            Err(e) => {
                eprintln!("precompile_kernels: {program}: {e}");
                std::process::exit(1);
            }
        }
    }
    eprintln!(
        "{} programs in {:.1} s",
        PROGRAMS.len(),
        t.elapsed().as_secs_f64()
    );
}
