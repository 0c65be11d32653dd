//! Constant-time check of the nonce kernels' per-item code (ctgrind): the
//! driver `kernels/ctgrind/nonce.cpp` marks the private key undefined for
//! valgrind's memcheck, which then reports any branch or address computed
//! from it. The nonces it prints must equal the host library's, and its
//! negative-control mode (a deliberate branch on d) must make valgrind fail,
//! proving the check can fail at all.

use std::path::Path;
use std::process::{Command, Output};

use sigmux::backend::cuda::host_nonce::{NonceCurve, limbs_from_be, limbs_to_be, nonces};

mod common;
use common::ctgrind::{build_driver, require_valgrind};

fn valgrind(exe: &Path, args: &[String]) -> Output {
    Command::new("valgrind")
        .args(["--error-exitcode=99", "--track-origins=yes"])
        .arg(exe)
        .args(args)
        .output()
        .expect("run valgrind")
}

struct Case {
    curve: NonceCurve,
    d: String,
    seed: String,
    z: Vec<String>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            curve: NonceCurve::P256,
            // RFC 6979 A.2.5's key.
            d: "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721".into(),
            seed: "0f".repeat(32),
            z: vec![
                // SHA-256("sample"), 2^256 - 1 (reduced mod n), n + 5, 0.
                "af2bdbe1aa9b6ec1e2ade1d694f41fc71a831d0268e9891562113d8a62add1bf".into(),
                "f".repeat(64),
                "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632556".into(),
                "0".repeat(64),
            ],
        },
        Case {
            curve: NonceCurve::P384,
            // RFC 6979 A.2.6's key.
            d: "6B9D3DAD2E1B8C1C05B19875B6659F4DE23C3B667BF297BA9AA47740787137D8\
                96D5724E4C70A825F872C9EA60D2EDF5"
                .into(),
            seed: "a5".repeat(32),
            z: vec![
                // SHA-384("sample"), 2^384 - 1.
                "9a9083505bc92276aec4be312696ef7bf3bf603f4bbd381196a029f340585312\
                 313bca4a9b5b890efee42c77b1ee25fe"
                    .into(),
                "f".repeat(96),
            ],
        },
    ]
}

fn args(mode: &str, c: &Case) -> Vec<String> {
    let curve = match c.curve {
        NonceCurve::P256 => "p256",
        NonceCurve::P384 => "p384",
    };
    let mut a = vec![mode.into(), curve.into(), c.d.clone(), c.seed.clone()];
    a.extend(c.z.iter().cloned());
    a
}

/// What the host library computes for the case, as the driver prints it.
fn expected(c: &Case) -> Vec<String> {
    let l = c.curve.limbs();
    let count = c.z.len();
    let mut z = vec![0u32; l * count];
    for (i, zi) in c.z.iter().enumerate() {
        for (j, w) in limbs_from_be(&hex::decode(zi).unwrap())
            .into_iter()
            .enumerate()
        {
            z[j * count + i] = w;
        }
    }
    let seed: [u8; 32] = hex::decode(&c.seed).unwrap().try_into().unwrap();
    let out = nonces(
        c.curve,
        &limbs_from_be(&hex::decode(&c.d).unwrap()),
        &z,
        &seed,
    );
    (0..count)
        .map(|i| {
            let k: Vec<u32> = (0..l).map(|j| out.k[j * count + i]).collect();
            format!("{} {}", out.ok[i], hex::encode(limbs_to_be(&k)))
        })
        .collect()
}

#[test]
fn nonce_code_is_constant_time_under_valgrind() {
    require_valgrind();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path(), "nonce.cpp", "ctgrind_nonce", &[]);
    for c in cases() {
        let out = valgrind(&exe, &args("ct", &c));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{:?}: valgrind found secret-dependent behaviour (rc {:?}):\n{stderr}",
            c.curve,
            out.status.code()
        );
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(lines, expected(&c), "{:?}", c.curve);
        assert!(lines.iter().all(|l| l.starts_with("1 ")));
    }
}

#[test]
fn ctgrind_negative_control_fails() {
    require_valgrind();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path(), "nonce.cpp", "ctgrind_nonce", &[]);
    let c = &cases()[0];
    let out = valgrind(&exe, &args("leak", c));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(99),
        "valgrind missed a branch on the key:\n{stderr}"
    );
    assert!(stderr.contains("uninitialised"), "{stderr}");
}
