//! Shared by the ctgrind tests: the kernels' host build compiled into a
//! small driver program (kernels/ctgrind/*.cpp) that marks secrets undefined
//! for valgrind's memcheck, so a branch or address that depends on them is
//! reported.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

/// Runs a driver with `mode` and `input` on stdin, under valgrind's
/// memcheck (errors exit 99) or, with `valgrind` false, on its own.
pub fn run_driver(exe: &Path, valgrind: bool, mode: &str, input: &str) -> Output {
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        c.args(["--error-exitcode=99", "-q"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let mut child = cmd
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("valgrind not found: run scripts/deps.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts that memcheck reported nothing secret-dependent.
pub fn assert_constant_time(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "valgrind reports secret-dependent behaviour (exit {:?}):\n{stderr}",
        out.status.code()
    );
    assert!(!stderr.contains("uninitialised"), "{stderr}");
}

/// Asserts that memcheck caught the planted secret-dependent branch.
pub fn assert_leak_caught(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(99), "valgrind missed it:\n{stderr}");
    assert!(stderr.contains("depends on uninitialised"), "{stderr}");
}
