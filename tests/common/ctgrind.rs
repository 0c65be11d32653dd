//! Shared by the ctgrind tests: the kernels' host build compiled into a
//! small driver program (kernels/ctgrind/*.cpp) that marks secrets undefined
//! for valgrind's memcheck, so a branch or address that depends on them is
//! reported.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails (never skips) when valgrind or its client-request header is
/// missing: scripts/deps.sh installs them.
pub fn require_valgrind() {
    let ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok && Path::new("/usr/include/valgrind/memcheck.h").exists(),
        "valgrind (and its headers) not found: run scripts/deps.sh"
    );
}

/// Compiles `kernels/ctgrind/<source>` as the kernels' host build is
/// compiled (C++17, -O2, with debug lines for valgrind's reports) plus
/// `extra` flags, into `dir/<name>`.
pub fn build_driver(dir: &Path, source: &str, name: &str, extra: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join(name);
    let out = Command::new("c++")
        .args(["-std=c++17", "-O2", "-g"])
        .args(extra)
        .arg("-I")
        .arg(root.join("kernels"))
        .arg(root.join("kernels/ctgrind").join(source))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("c++ not found: run scripts/deps.sh");
    assert!(
        out.status.success(),
        "compiling kernels/ctgrind/{source} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}
