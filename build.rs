fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SIGMUX_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    host_kernels();
    embed_kernels();
}

/// Compiles the kernels' host build: every `kernels/host/*.cpp` wraps the
/// same headers NVRTC compiles for the device, behind a C ABI the tests call
/// (`src/backend/cuda/host_*.rs`).
fn host_kernels() {
    println!("cargo:rerun-if-changed=kernels");
    let mut files: Vec<_> = std::fs::read_dir("kernels/host")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        return;
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        // -O3: the cooperative RSA code's emulated warp (kernels/rsa/lanes.cuh)
        // is loops over 32 lanes; vectorized, its tests take half the time.
        .opt_level(3)
        .include("kernels")
        .warnings(true)
        .extra_warnings(true)
        .files(&files)
        .compile("sigmux_kernels_host");
}

/// Embeds every kernel source (everything under `kernels/` but the host
/// wrappers) so the binary compiles them with NVRTC wherever it runs.
fn embed_kernels() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(d) = std::fs::read_dir(dir) else {
            return;
        };
        for e in d.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "host") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "cu" || x == "cuh") {
                out.push(p);
            }
        }
    }
    let root = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("kernels");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut code = String::from("&[\n");
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        code.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    code.push_str("]\n");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("kernel_sources.rs");
    std::fs::write(out, code).unwrap();
}
