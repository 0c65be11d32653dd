//! ctgrind: the Ed25519 sign path of the kernels' host build, run under
//! valgrind's memcheck with the secret key words (the scalar a and the
//! prefix) marked undefined, so any branch or memory address that depends
//! on them, on the nonce r or on r B is an error (kernels/ctgrind/ed25519.cpp).
//! The signatures it prints are checked byte for byte against aws-lc-rs, and
//! a negative control proves the method catches a secret-dependent branch.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sigmux::backend::cuda::host_ed25519::pack_key;

mod common;
use common::ctgrind::{
    assert_constant_time, assert_leak_caught, build_driver, require_valgrind, run_driver,
};

struct Case {
    pair: Ed25519KeyPair,
    msg: Vec<u8>,
}

/// Deterministic seeds and messages whose lengths straddle the SHA-512
/// block boundaries of both hashes (prefix || M and R || A || M), and the
/// driver's input lines.
fn cases(n: usize) -> (Vec<Case>, String) {
    let lens = [0usize, 1, 63, 64, 79, 80, 95, 96, 111, 112, 200, 300];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    let mut input = String::new();
    for i in 0..n {
        let seed: [u8; 32] = std::array::from_fn(|_| next() as u8);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        let msg: Vec<u8> = (0..lens[i % lens.len()]).map(|_| next() as u8).collect();
        // the driver takes the blob's first 24 words (a, prefix, A): signing
        // reads nothing else
        let key: String = pack_key(&seed, &public)[..24]
            .iter()
            .map(|w| format!("{w:08x}"))
            .collect();
        let m = if msg.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&msg)
        };
        input.push_str(&format!("{key} {m}\n"));
        out.push(Case { pair, msg });
    }
    (out, input)
}

/// Each output line is aws-lc-rs's signature of its case, and verifies.
fn check_outputs(cases: &[Case], stdout: &[u8]) {
    let stdout = String::from_utf8(stdout.to_vec()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), cases.len());
    for (c, line) in cases.iter().zip(lines) {
        assert_eq!(
            line,
            hex::encode(c.pair.sign(&c.msg)),
            "msg {}",
            c.msg.len()
        );
        UnparsedPublicKey::new(&signature::ED25519, c.pair.public_key().as_ref())
            .verify(&c.msg, &hex::decode(line).unwrap())
            .expect("aws-lc-rs rejects it");
    }
}

#[test]
fn ed25519_sign_is_constant_time_under_valgrind() {
    require_valgrind();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path(), "ed25519.cpp", "ed25519_ctgrind", &[]);
    let (cases, input) = cases(12);
    let out = run_driver(&exe, true, "sign", &input);
    assert_constant_time(&out);
    check_outputs(&cases, &out.stdout);
}

#[test]
fn ctgrind_catches_a_secret_dependent_branch() {
    require_valgrind();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path(), "ed25519.cpp", "ed25519_ctgrind", &[]);
    // memcheck flags the planted branch on a bit of a whatever its value
    let (_, input) = cases(2);
    let out = run_driver(&exe, true, "leak", &input);
    assert_leak_caught(&out);
}
