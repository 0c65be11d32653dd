//! Constant-time check of the RSA kernels' sign path (ctgrind method):
//! `kernels/ctgrind/rsa.cpp` runs the same per-item code the CUDA kernels
//! run, under valgrind memcheck, with the secret half of the key blob
//! marked undefined. memcheck reports any branch or memory address that
//! depends on it. A negative control (the same driver, branching on or
//! indexing by a secret) must make valgrind fail, proving the method sees
//! such leaks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openssl::bn::BigNum;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use sigmux::backend::cuda::rsa_layout::pack_key;

fn valgrind_present() {
    let ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "valgrind is not installed: run scripts/deps.sh (it installs valgrind for the ctgrind tests)"
    );
}

fn build_driver(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join("rsa-ctgrind");
    let out = Command::new("c++")
        .args(["-std=c++17", "-O2", "-g", "-I"])
        .arg(root.join("kernels"))
        .arg(root.join("kernels/ctgrind/rsa.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run c++ (install build-essential: scripts/deps.sh)");
    assert!(
        out.status.success(),
        "c++ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn valgrind(exe: &Path, input: &Path, mode: &str, first_error_exits: bool) -> Output {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=memcheck", "--error-exitcode=99", "-q"]);
    if first_error_exits {
        cmd.arg("--exit-on-first-error=yes");
    }
    cmd.arg(exe).arg(input).arg(mode).output().unwrap()
}

#[test]
fn rsa_sign_is_constant_time_under_memcheck() {
    valgrind_present();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path());

    let keys: Vec<Rsa<_>> = [2048, 3072, 4096]
        .iter()
        .map(|&b| Rsa::generate(b).unwrap())
        .collect();
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut msgs = Vec::new();
    for rsa in &keys {
        let blob = pack_key(&PKey::from_rsa(rsa.clone()).unwrap()).unwrap();
        let k = rsa.size() as usize;
        let mut m = BigNum::new().unwrap();
        rsa.n().rand_range(&mut m).unwrap();
        let m = m.to_vec_padded(k as i32).unwrap();
        let mut rec: Vec<u8> = blob.iter().flat_map(|w| w.to_le_bytes()).collect();
        // The message as little-endian limbs.
        rec.extend(
            m.chunks(4)
                .rev()
                .flat_map(|c| u32::from_be_bytes(c.try_into().unwrap()).to_le_bytes()),
        );
        records.push(rec);
        msgs.push(m);
    }
    let all = dir.path().join("all.bin");
    std::fs::write(&all, records.concat()).unwrap();
    let first = dir.path().join("first.bin");
    std::fs::write(&first, &records[0]).unwrap();

    let out = valgrind(&exe, &all, "ct", false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "valgrind found secret-dependent branches or addresses (exit {:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), keys.len(), "{stdout}");
    for ((rsa, m), line) in keys.iter().zip(&msgs).zip(lines) {
        let mut want = vec![0u8; m.len()];
        rsa.private_encrypt(m, &mut want, Padding::NONE).unwrap();
        assert_eq!(
            line,
            format!("ok {}", hex::encode(&want)),
            "{}-bit signature from the driver is wrong",
            rsa.size() * 8
        );
    }

    // Negative controls: the same driver with a deliberate leak must fail.
    for (mode, what) in [
        (
            "leak-branch",
            "Conditional jump or move depends on uninitialised value",
        ),
        ("leak-index", "Use of uninitialised value"),
    ] {
        let out = valgrind(&exe, &first, mode, true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(99),
            "{mode}: valgrind did not flag the deliberate leak:\n{stderr}"
        );
        assert!(stderr.contains(what), "{mode}: {stderr}");
    }
}
