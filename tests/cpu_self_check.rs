//! The CPU backend's RSA signatures are checked by the libraries themselves
//! (the engine relies on it and does not check them a second time): a CRT
//! result that does not verify is never returned. Shown here by freezing a
//! fault into the key (a wrong `dP`, so every CRT half mod p is wrong) and
//! signing with the same calls the CPU backend makes.

use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::md::Md;
use openssl::pkey::PKey;
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::RsaPssSaltlen;

/// `key` with `dP` replaced.
fn with_dmp1(key: &Rsa<openssl::pkey::Private>, dmp1: BigNum) -> Rsa<openssl::pkey::Private> {
    Rsa::from_private_components(
        key.n().to_owned().unwrap(),
        key.e().to_owned().unwrap(),
        key.d().to_owned().unwrap(),
        key.p().unwrap().to_owned().unwrap(),
        key.q().unwrap().to_owned().unwrap(),
        dmp1,
        key.dmq1().unwrap().to_owned().unwrap(),
        key.iqmp().unwrap().to_owned().unwrap(),
    )
    .unwrap()
}

/// An RSA-2048 key and the same key with `dP` off by 2: the CRT
/// exponentiation mod p gives a wrong half for every input.
fn good_and_faulty() -> (Rsa<openssl::pkey::Private>, Rsa<openssl::pkey::Private>) {
    let good = Rsa::generate(2048).unwrap();
    let mut dmp1 = BigNum::new().unwrap();
    dmp1.checked_add(good.dmp1().unwrap(), &BigNum::from_u32(2).unwrap())
        .unwrap();
    let faulty = with_dmp1(&good, dmp1);
    (good, faulty)
}

fn faulty_key() -> Rsa<openssl::pkey::Private> {
    good_and_faulty().1
}

#[test]
fn openssl_raw_private_operation_is_checked_too() {
    // The keyless server's raw RSA operation (decrypt, legacy digests) is
    // OpenSSL's private decrypt without padding.
    let rsa = faulty_key();
    let mut input = vec![0u8; rsa.size() as usize];
    openssl::rand::rand_bytes(&mut input[1..]).unwrap();
    let mut out = vec![0u8; rsa.size() as usize];
    let n = rsa
        .private_decrypt(&input, &mut out, Padding::NONE)
        .unwrap();
    let mut back = vec![0u8; rsa.size() as usize];
    let m = rsa
        .public_encrypt(&out[..n], &mut back, Padding::NONE)
        .unwrap();
    assert_eq!(
        &back[..m],
        &input[..],
        "a faulty raw CRT result left OpenSSL"
    );
}

#[test]
fn openssl_never_returns_a_faulty_crt_result() {
    let rsa = faulty_key();
    assert!(
        !rsa.check_key().unwrap_or(false),
        "the key really is faulty"
    );
    let pkey = PKey::from_rsa(rsa.clone()).unwrap();
    let digest = openssl::sha::sha256(b"fault check");
    for pss in [false, true] {
        let mut ctx = PkeyCtx::new(&pkey).unwrap();
        ctx.sign_init().unwrap();
        if pss {
            ctx.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            ctx.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                .unwrap();
            ctx.set_rsa_mgf1_md(Md::sha256()).unwrap();
        } else {
            ctx.set_rsa_padding(Padding::PKCS1).unwrap();
        }
        ctx.set_signature_md(Md::sha256()).unwrap();
        let mut sig = Vec::new();
        ctx.sign_to_vec(&digest, &mut sig).unwrap();
        let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &pkey).unwrap();
        if pss {
            v.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).unwrap();
        }
        v.update(b"fault check").unwrap();
        assert!(
            v.verify(&sig).unwrap(),
            "pss={pss}: a faulty CRT result left OpenSSL"
        );
        // And the signature is not what the faulty CRT half gives: OpenSSL
        // saw the mismatch and computed it again without the CRT.
        let mut bn = openssl::bn::BigNumContext::new().unwrap();
        let s = BigNum::from_slice(&sig).unwrap();
        let mut em = BigNum::new().unwrap();
        em.mod_exp(&s, rsa.e(), rsa.n(), &mut bn).unwrap();
        let mut faulty_half = BigNum::new().unwrap();
        faulty_half
            .mod_exp(&em, rsa.dmp1().unwrap(), rsa.p().unwrap(), &mut bn)
            .unwrap();
        let mut s_mod_p = BigNum::new().unwrap();
        s_mod_p.nnmod(&s, rsa.p().unwrap(), &mut bn).unwrap();
        assert_ne!(
            s_mod_p, faulty_half,
            "the key's fault did not change the CRT half"
        );
    }
}

/// Big-endian bytes to an AWS-LC `BIGNUM` (owned by the caller).
fn aws_bn(b: &openssl::bn::BigNumRef) -> *mut aws_lc_sys::BIGNUM {
    let v = b.to_vec();
    // SAFETY: `v` is a live buffer of `v.len()` bytes; a null `ret` asks
    // for a fresh BIGNUM.
    let bn = unsafe { aws_lc_sys::BN_bin2bn(v.as_ptr(), v.len(), std::ptr::null_mut()) };
    assert!(!bn.is_null());
    bn
}

/// Signs `digest` (SHA-256) with AWS-LC's own RSA code on a key built
/// from `key`'s components without any consistency check; `None` when
/// AWS-LC refuses to return a signature.
fn aws_lc_sign(key: &Rsa<openssl::pkey::Private>, digest: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: plain AWS-LC calls on objects made here; `RSA_set0_*` take
    // ownership of the BIGNUMs; the RSA is freed before returning.
    unsafe {
        let rsa = aws_lc_sys::RSA_new();
        assert!(!rsa.is_null());
        assert_eq!(
            aws_lc_sys::RSA_set0_key(rsa, aws_bn(key.n()), aws_bn(key.e()), aws_bn(key.d())),
            1
        );
        assert_eq!(
            aws_lc_sys::RSA_set0_factors(rsa, aws_bn(key.p().unwrap()), aws_bn(key.q().unwrap())),
            1
        );
        assert_eq!(
            aws_lc_sys::RSA_set0_crt_params(
                rsa,
                aws_bn(key.dmp1().unwrap()),
                aws_bn(key.dmq1().unwrap()),
                aws_bn(key.iqmp().unwrap())
            ),
            1
        );
        let mut sig = vec![0u8; aws_lc_sys::RSA_size(rsa) as usize];
        let mut len: std::os::raw::c_uint = 0;
        let ok = aws_lc_sys::RSA_sign(
            aws_lc_sys::NID_sha256,
            digest.as_ptr(),
            digest.len(),
            sig.as_mut_ptr(),
            &mut len,
            rsa,
        );
        aws_lc_sys::RSA_free(rsa);
        aws_lc_sys::ERR_clear_error();
        (ok == 1).then(|| {
            sig.truncate(len as usize);
            sig
        })
    }
}

#[test]
fn aws_lc_never_returns_a_faulty_crt_result() {
    let (good, faulty) = good_and_faulty();
    // aws-lc-rs (which the CPU backend loads keys with) refuses the key
    // outright, as does sigmux's own import check...
    let der = faulty.private_key_to_der().unwrap();
    assert!(aws_lc_rs::signature::RsaKeyPair::from_der(&der).is_err());
    // ...so build it past the checks, the way a fault during signing would
    // look to the signing code. The same path with the key's correct dP
    // signs, and OpenSSL verifies the result.
    let digest = openssl::sha::sha256(b"fault check");
    assert!(good.check_key().unwrap());
    let sig = aws_lc_sign(&good, &digest).expect("AWS-LC signs with the good key");
    let pkey = PKey::from_rsa(good).unwrap();
    let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &pkey).unwrap();
    v.update(b"fault check").unwrap();
    assert!(v.verify(&sig).unwrap());
    assert!(
        aws_lc_sign(&faulty, &digest).is_none(),
        "AWS-LC returned a signature from a faulty CRT computation"
    );
}

#[test]
fn the_cpu_backend_claims_its_own_check_for_rsa_only() {
    use sigmux::backend::Backend;
    use sigmux::backend::cpu::{CpuBackend, CpuConfig};
    let cpu = CpuBackend::new(&CpuConfig::default()).unwrap();
    for s in sigmux::Scheme::all() {
        let rsa = s.name().starts_with("rsa_");
        assert_eq!(cpu.checks_own_results(*s), rsa, "{s}");
    }
    assert!(cpu.checks_own_results(sigmux::Scheme::RsaRaw));
}
