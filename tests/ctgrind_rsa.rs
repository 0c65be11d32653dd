//! Constant-time check of the RSA kernels' sign path (ctgrind method):
//! `kernels/ctgrind/rsa.cpp` runs the same per-item code the CUDA kernels
//! run, under valgrind memcheck, with the secret half of the key blob
//! marked undefined. memcheck reports any branch or memory address that
//! depends on it. A negative control (the same driver, branching on or
//! indexing by a secret) must make valgrind fail, proving the method sees
//! such leaks.
//!
//! The same driver, built with `-DSMX_RSA_PTX_EMU`, runs the device's PTX
//! carry-chain code with each instruction emulated on the host, so the
//! chains (not only the portable fallbacks) are checked without a GPU.
//! Modes `coop8` and `coop16` run the cooperative kernels' per-thread code
//! (kernels/rsa/coop.cuh) for a whole emulated warp, with its own per-lane
//! carry-chain emulation.

use std::path::Path;
use std::process::{Command, Output};

use openssl::bn::BigNum;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use sigmux::backend::cuda::rsa_layout::pack_key;

mod common;
use common::ctgrind::{build_driver, require_valgrind};

fn valgrind(exe: &Path, input: &Path, mode: &str, first_error_exits: bool) -> Output {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=memcheck", "--error-exitcode=99", "-q"]);
    if first_error_exits {
        cmd.arg("--exit-on-first-error=yes");
    }
    cmd.arg(exe).arg(input).arg(mode).output().unwrap()
}

/// Keys, messages (big-endian) and the driver's input records.
type Records = (Vec<Rsa<Private>>, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// One key of each size and `per_key` random messages for each.
fn records(per_key: usize) -> Records {
    static KEYS: std::sync::OnceLock<Vec<Rsa<Private>>> = std::sync::OnceLock::new();
    let keys = KEYS
        .get_or_init(|| {
            [2048, 3072, 4096]
                .iter()
                .map(|&b| Rsa::generate(b).unwrap())
                .collect()
        })
        .clone();
    let mut records = Vec::new();
    let mut msgs = Vec::new();
    for rsa in &keys {
        let blob = pack_key(&PKey::from_rsa(rsa.clone()).unwrap()).unwrap();
        for _ in 0..per_key {
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
    }
    (keys, msgs, records)
}

/// Checks the driver's output lines against OpenSSL's raw private op.
fn check_output(stdout: &str, keys: &[Rsa<Private>], msgs: &[Vec<u8>]) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), msgs.len(), "{stdout}");
    let per_key = msgs.len() / keys.len();
    for (i, (m, line)) in msgs.iter().zip(lines).enumerate() {
        let rsa = &keys[i / per_key];
        let mut want = vec![0u8; m.len()];
        rsa.private_encrypt(m, &mut want, Padding::NONE).unwrap();
        assert_eq!(
            line,
            format!("ok {}", hex::encode(&want)),
            "{}-bit signature from the driver is wrong",
            rsa.size() * 8
        );
    }
}

#[test]
fn rsa_sign_is_constant_time_under_memcheck() {
    require_valgrind();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path(), "rsa.cpp", "rsa-ctgrind", &[]);

    let (keys, msgs, records) = records(1);
    let all = dir.path().join("all.bin");
    std::fs::write(&all, records.concat()).unwrap();
    let first = dir.path().join("first.bin");
    std::fs::write(&first, &records[0]).unwrap();

    // The one-thread code and the cooperative code (every lane of an
    // emulated warp, shuffles and ballots included).
    for mode in ["ct", "coop8", "coop16"] {
        let out = valgrind(&exe, &all, mode, false);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: valgrind found secret-dependent branches or addresses (exit {:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        check_output(&stdout, &keys, &msgs);
    }

    // The device's carry chains, emulated instruction by instruction: the
    // one-thread kernels of rsa.cu and the even/odd rows of rsa_wide.cu.
    for (name, flags) in [
        ("rsa-ctgrind-chains", &["-DSMX_RSA_PTX_EMU"][..]),
        (
            "rsa-ctgrind-wide",
            &["-DSMX_RSA_PTX_EMU", "-DSMX_RSA_WIDE"][..],
        ),
    ] {
        let chains = build_driver(dir.path(), "rsa.cpp", name, flags);
        let out = valgrind(&chains, &all, "ct", false);
        assert!(
            out.status.success(),
            "{name}: valgrind found secret-dependent branches or addresses (exit {:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        check_output(&String::from_utf8_lossy(&out.stdout), &keys, &msgs);
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

#[test]
fn ptx_chains_emulated_on_host() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, msgs, records) = records(8);
    let input = dir.path().join("in.bin");
    std::fs::write(&input, records.concat()).unwrap();
    for (name, flags) in [
        ("rsa-ptx-emu", &["-DSMX_RSA_PTX_EMU"][..]),
        (
            "rsa-ptx-emu-wide",
            &["-DSMX_RSA_PTX_EMU", "-DSMX_RSA_WIDE"][..],
        ),
    ] {
        let exe = build_driver(dir.path(), "rsa.cpp", name, flags);
        let out = Command::new(&exe).arg(&input).arg("ct").output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        check_output(&String::from_utf8_lossy(&out.stdout), &keys, &msgs);
    }
}
