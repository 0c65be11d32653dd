//! ctgrind: the ECDSA sign path of the kernels' host build, run under
//! valgrind's memcheck with the private key d and the nonce k marked
//! undefined, so any branch or memory address that depends on them is an
//! error (kernels/ctgrind/ec.cpp). The signatures it prints are checked
//! against openssl, and a negative control proves the method catches a
//! secret-dependent branch.

use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::Private;

mod common;
use common::ctgrind::{
    assert_constant_time, assert_leak_caught, build_driver, require_valgrind, run_driver,
};

fn hex(b: &BigNumRef, len: usize) -> String {
    hex::encode(b.to_vec_padded(len as i32).unwrap())
}

struct Case {
    nid: Nid,
    len: usize,
    key: EcKey<Private>,
    digest: Vec<u8>,
    k: BigNum,
}

/// Random keys, digests and nonces k in [1, n-1] for both curves, and the
/// driver's input lines.
fn cases(per_curve: usize) -> (Vec<Case>, String) {
    let mut ctx = BigNumContext::new().unwrap();
    let mut out = Vec::new();
    let mut input = String::new();
    for (nid, name, len) in [
        (Nid::X9_62_PRIME256V1, "p256", 32),
        (Nid::SECP384R1, "p384", 48),
    ] {
        let group = EcGroup::from_curve_name(nid).unwrap();
        let mut n = BigNum::new().unwrap();
        group.order(&mut n, &mut ctx).unwrap();
        for _ in 0..per_curve {
            let key = EcKey::generate(&group).unwrap();
            let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
            key.public_key()
                .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                .unwrap();
            let mut digest = vec![0u8; len];
            openssl::rand::rand_bytes(&mut digest).unwrap();
            let mut k = BigNum::new().unwrap();
            let mut n1 = BigNum::new().unwrap();
            n1.checked_sub(&n, &BigNum::from_u32(1).unwrap()).unwrap();
            n1.rand_range(&mut k).unwrap();
            k.add_word(1).unwrap();
            input.push_str(&format!(
                "{name} {} {} {} {} {}\n",
                hex(key.private_key(), len),
                hex(&x, len),
                hex(&y, len),
                hex::encode(&digest),
                hex(&k, len)
            ));
            out.push(Case {
                nid,
                len,
                key,
                digest,
                k,
            });
        }
    }
    (out, input)
}

#[test]
fn ecdsa_sign_is_constant_time_under_valgrind() {
    require_valgrind();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path(), "ec.cpp", "ec_ctgrind", &[]);
    let (cases, input) = cases(4);
    let out = run_driver(&exe, true, "sign", &input);
    assert_constant_time(&out);
    check_outputs(&cases, &out.stdout);
}

/// Each output line is a valid signature of its case, with r = x(kG) mod n.
fn check_outputs(cases: &[Case], stdout: &[u8]) {
    let stdout = String::from_utf8(stdout.to_vec()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), cases.len());
    let mut ctx = BigNumContext::new().unwrap();
    for (c, line) in cases.iter().zip(lines) {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "{line}");
        assert_eq!(f[2], "1", "{line}");
        let r = BigNum::from_slice(&hex::decode(f[0]).unwrap()).unwrap();
        let s = BigNum::from_slice(&hex::decode(f[1]).unwrap()).unwrap();
        // r = x(kG) mod n, from openssl
        let group = EcGroup::from_curve_name(c.nid).unwrap();
        let mut kg = EcPoint::new(&group).unwrap();
        kg.mul_generator2(&group, &c.k, &mut ctx).unwrap();
        let (mut x, mut y, mut n, mut rx) = (
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
        );
        kg.affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        group.order(&mut n, &mut ctx).unwrap();
        rx.nnmod(&x, &n, &mut ctx).unwrap();
        assert_eq!(hex(&rx, c.len), f[0], "r != x(kG) mod n");
        let sig = EcdsaSig::from_private_components(r, s).unwrap();
        assert!(
            sig.verify(&c.digest, &c.key).unwrap(),
            "openssl rejects {line}"
        );
    }
}

#[test]
fn ctgrind_catches_a_secret_dependent_branch() {
    require_valgrind();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_driver(dir.path(), "ec.cpp", "ec_ctgrind", &[]);
    // memcheck flags the planted branch on a bit of d whatever its value
    let (_, input) = cases(2);
    let out = run_driver(&exe, true, "leak", &input);
    assert_leak_caught(&out);
}
