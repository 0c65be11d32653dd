//! Host build of the ECDSA kernels (`kernels/host/ec_host.cpp`), for tests:
//! the same per-item code the GPU runs, behind safe wrappers. Numbers are
//! plain little-endian limbs (see [`super::ec_layout`]).

use super::ec_layout::{Curve, key_words, table_words};

unsafe extern "C" {
    fn smx_p256_sign_host(
        t: *const u32,
        key: *const u32,
        z: *const u32,
        k: *const u32,
        r: *mut u32,
        s: *mut u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_p384_sign_host(
        t: *const u32,
        key: *const u32,
        z: *const u32,
        k: *const u32,
        r: *mut u32,
        s: *mut u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_p256_check_host(
        t: *const u32,
        key: *const u32,
        z: *const u32,
        r: *const u32,
        s: *const u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_p384_check_host(
        t: *const u32,
        key: *const u32,
        z: *const u32,
        r: *const u32,
        s: *const u32,
        ok: *mut u32,
        count: u32,
    );
    fn smx_p256_table_words() -> u32;
    fn smx_p384_table_words() -> u32;
    fn smx_p256_comb_table(out: *mut u32);
    fn smx_p384_comb_table(out: *mut u32);
    fn smx_p256_mod_op(which: u32, op: u32, a: *const u32, b: *const u32, out: *mut u32);
    fn smx_p384_mod_op(which: u32, op: u32, a: *const u32, b: *const u32, out: *mut u32);
    fn smx_p256_point_op(op: u32, p: *const u32, q: *const u32, out: *mut u32);
    fn smx_p384_point_op(op: u32, p: *const u32, q: *const u32, out: *mut u32);
    fn smx_p256_mul_base(t: *const u32, k: *const u32, out: *mut u32);
    fn smx_p384_mul_base(t: *const u32, k: *const u32, out: *mut u32);
    fn smx_p256_comb_table_for(qx: *const u32, qy: *const u32, out: *mut u32);
    fn smx_p384_comb_table_for(qx: *const u32, qy: *const u32, out: *mut u32);
    fn smx_p256_mul_base2(
        tg: *const u32,
        k1: *const u32,
        tq: *const u32,
        k2: *const u32,
        out: *mut u32,
    );
    fn smx_p384_mul_base2(
        tg: *const u32,
        k1: *const u32,
        tq: *const u32,
        k2: *const u32,
        out: *mut u32,
    );
}

/// Output of one signing batch (structure-of-arrays, like the kernel's).
pub struct Signed {
    /// r, L limbs per item, SoA.
    pub r: Vec<u32>,
    /// s, L limbs per item, SoA.
    pub s: Vec<u32>,
    /// 1 per good item, 0 where r or s came out zero.
    pub ok: Vec<u32>,
}

fn check_len(what: &str, got: usize, want: usize) {
    assert_eq!(got, want, "{what}: {got} words, expected {want}");
}

/// `{C}_sign` on the host: `z`, `k` are SoA batches of `count` items.
pub fn sign(curve: Curve, table: &[u32], key: &[u32], z: &[u32], k: &[u32]) -> Signed {
    let l = curve.limbs();
    let count = z.len() / l;
    check_len("table", table.len(), table_words(curve));
    check_len("key", key.len(), key_words(curve));
    check_len("z", z.len(), count * l);
    check_len("k", k.len(), count * l);
    let mut out = Signed {
        r: vec![0; count * l],
        s: vec![0; count * l],
        ok: vec![0; count],
    };
    let f = match curve {
        Curve::P256 => smx_p256_sign_host,
        Curve::P384 => smx_p384_sign_host,
    };
    // SAFETY: every buffer has the length the C code reads or writes.
    unsafe {
        f(
            table.as_ptr(),
            key.as_ptr(),
            z.as_ptr(),
            k.as_ptr(),
            out.r.as_mut_ptr(),
            out.s.as_mut_ptr(),
            out.ok.as_mut_ptr(),
            count as u32,
        )
    };
    out
}

/// `{C}_check` on the host: 1 per valid signature.
pub fn check(
    curve: Curve,
    table: &[u32],
    key: &[u32],
    z: &[u32],
    r: &[u32],
    s: &[u32],
) -> Vec<u32> {
    let l = curve.limbs();
    let count = z.len() / l;
    check_len("table", table.len(), table_words(curve));
    check_len("key", key.len(), key_words(curve));
    check_len("z", z.len(), count * l);
    check_len("r", r.len(), count * l);
    check_len("s", s.len(), count * l);
    let mut ok = vec![0; count];
    let f = match curve {
        Curve::P256 => smx_p256_check_host,
        Curve::P384 => smx_p384_check_host,
    };
    // SAFETY: as above.
    unsafe {
        f(
            table.as_ptr(),
            key.as_ptr(),
            z.as_ptr(),
            r.as_ptr(),
            s.as_ptr(),
            ok.as_mut_ptr(),
            count as u32,
        )
    };
    ok
}

/// The comb table for G (see [`super::ec_layout::comb_table`]).
pub fn comb_table(curve: Curve) -> Vec<u32> {
    let (words, f): (u32, unsafe extern "C" fn(*mut u32)) = match curve {
        // SAFETY: no arguments.
        Curve::P256 => (unsafe { smx_p256_table_words() }, smx_p256_comb_table),
        Curve::P384 => (unsafe { smx_p384_table_words() }, smx_p384_comb_table),
    };
    check_len("comb table", words as usize, table_words(curve));
    let mut t = vec![0u32; words as usize];
    // SAFETY: `t` has the table's length.
    unsafe { f(t.as_mut_ptr()) };
    t
}

/// The comb table of the point (`qx`, `qy`) (plain L-limb integers; a
/// public key), laid out as G's: the check kernel's table for Q.
pub fn comb_table_for(curve: Curve, qx: &[u32], qy: &[u32]) -> Vec<u32> {
    let l = curve.limbs();
    check_len("qx", qx.len(), l);
    check_len("qy", qy.len(), l);
    let f = match curve {
        Curve::P256 => smx_p256_comb_table_for,
        Curve::P384 => smx_p384_comb_table_for,
    };
    let mut t = vec![0u32; table_words(curve)];
    // SAFETY: L-limb inputs; `t` has the table's length (the same as G's,
    // checked against the kernels' own count in `comb_table`).
    unsafe { f(qx.as_ptr(), qy.as_ptr(), t.as_mut_ptr()) };
    t
}

/// Which modulus [`mod_op`] works in.
#[derive(Clone, Copy, Debug)]
pub enum Modulus {
    /// The field prime p.
    P,
    /// The group order n.
    N,
}

/// An operation of [`mod_op`].
#[derive(Clone, Copy, Debug)]
pub enum ModOp {
    /// a * b
    Mul = 0,
    /// a + b
    Add = 1,
    /// a - b
    Sub = 2,
    /// a^-1 (Fermat; 0 for a = 0)
    Inv = 3,
}

/// One modular operation through the kernels' Montgomery types; a, b below
/// the modulus, plain integers in and out.
pub fn mod_op(curve: Curve, m: Modulus, op: ModOp, a: &[u32], b: &[u32]) -> Vec<u32> {
    let l = curve.limbs();
    check_len("a", a.len(), l);
    check_len("b", b.len(), l);
    let mut out = vec![0; l];
    let f = match curve {
        Curve::P256 => smx_p256_mod_op,
        Curve::P384 => smx_p384_mod_op,
    };
    // SAFETY: L-limb buffers.
    unsafe {
        f(
            m as u32,
            op as u32,
            a.as_ptr(),
            b.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    out
}

/// A point operation of [`point_op`].
#[derive(Clone, Copy, Debug)]
pub enum PointOp {
    /// p + q, complete projective addition.
    Add = 0,
    /// p + q with q affine (its Z is ignored), mixed addition.
    MixedAdd = 1,
    /// 2p, complete doubling.
    Double = 2,
}

/// An affine result: `None` for the point at infinity.
pub type Affine = Option<(Vec<u32>, Vec<u32>)>;

fn affine(out: &[u32], l: usize) -> Affine {
    (out[2 * l] == 0).then(|| (out[..l].to_vec(), out[l..2 * l].to_vec()))
}

/// One point operation on projective (X, Y, Z) inputs (3 L words each,
/// plain integers mod p); the result in affine coordinates.
pub fn point_op(curve: Curve, op: PointOp, p: &[u32], q: &[u32]) -> Affine {
    let l = curve.limbs();
    check_len("p", p.len(), 3 * l);
    check_len("q", q.len(), 3 * l);
    let mut out = vec![0; 2 * l + 1];
    let f = match curve {
        Curve::P256 => smx_p256_point_op,
        Curve::P384 => smx_p384_point_op,
    };
    // SAFETY: 3L-word inputs, 2L+1-word output.
    unsafe { f(op as u32, p.as_ptr(), q.as_ptr(), out.as_mut_ptr()) };
    affine(&out, l)
}

/// k*G by the constant-time comb the sign kernel uses.
pub fn mul_base(curve: Curve, table: &[u32], k: &[u32]) -> Affine {
    let l = curve.limbs();
    check_len("table", table.len(), table_words(curve));
    check_len("k", k.len(), l);
    let mut out = vec![0; 2 * l + 1];
    let f = match curve {
        Curve::P256 => smx_p256_mul_base,
        Curve::P384 => smx_p384_mul_base,
    };
    // SAFETY: sized buffers.
    unsafe { f(table.as_ptr(), k.as_ptr(), out.as_mut_ptr()) };
    affine(&out, l)
}

/// k1*G + k2*Q as the check kernel computes it, from the comb tables of G
/// (`tg`) and Q (`tq`, [`comb_table_for`]).
pub fn mul_base2(curve: Curve, tg: &[u32], k1: &[u32], tq: &[u32], k2: &[u32]) -> Affine {
    let l = curve.limbs();
    check_len("G table", tg.len(), table_words(curve));
    check_len("Q table", tq.len(), table_words(curve));
    check_len("k1", k1.len(), l);
    check_len("k2", k2.len(), l);
    let mut out = vec![0; 2 * l + 1];
    let f = match curve {
        Curve::P256 => smx_p256_mul_base2,
        Curve::P384 => smx_p384_mul_base2,
    };
    // SAFETY: sized buffers.
    unsafe {
        f(
            tg.as_ptr(),
            k1.as_ptr(),
            tq.as_ptr(),
            k2.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    affine(&out, l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::ec_layout::{
        from_soa, limbs_from_be, limbs_to_be, pack_key, to_soa, z_from_digest,
    };
    use aws_lc_rs::{digest, signature};
    use openssl::bn::{BigNum, BigNumContext, BigNumRef};
    use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
    use openssl::pkey::PKey;

    const CURVES: [Curve; 2] = [Curve::P256, Curve::P384];

    struct Ctx {
        curve: Curve,
        group: EcGroup,
        p: BigNum,
        n: BigNum,
        bn: BigNumContext,
    }

    fn ctx(curve: Curve) -> Ctx {
        let group = EcGroup::from_curve_name(curve.nid()).unwrap();
        let mut bn = BigNumContext::new().unwrap();
        let (mut p, mut a, mut b, mut n) = (
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
        );
        group
            .components_gfp(&mut p, &mut a, &mut b, &mut bn)
            .unwrap();
        group.order(&mut n, &mut bn).unwrap();
        Ctx {
            curve,
            group,
            p,
            n,
            bn,
        }
    }

    fn limbs(c: Curve, x: &BigNumRef) -> Vec<u32> {
        limbs_from_be(&x.to_vec(), c.limbs())
    }

    fn bn(x: &[u32]) -> BigNum {
        BigNum::from_slice(&limbs_to_be(x)).unwrap()
    }

    /// Uniform in [1, n-1].
    fn rand_scalar(n: &BigNumRef) -> BigNum {
        let mut one = BigNum::from_u32(1).unwrap();
        let mut k = BigNum::new().unwrap();
        let mut m = BigNum::new().unwrap();
        m.checked_sub(n, &one).unwrap();
        m.rand_range(&mut k).unwrap();
        let k2 = &k + &one;
        one.clear();
        k2
    }

    fn sub_u32(a: &BigNumRef, w: u32) -> BigNum {
        let mut r = BigNum::new().unwrap();
        r.checked_sub(a, &BigNum::from_u32(w).unwrap()).unwrap();
        r
    }

    /// Affine coordinates of an openssl point; `None` for O.
    fn ossl_affine(c: &mut Ctx, pt: &EcPoint) -> Affine {
        if pt.is_infinity(&c.group) {
            return None;
        }
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        pt.affine_coordinates(&c.group, &mut x, &mut y, &mut c.bn)
            .unwrap();
        Some((limbs(c.curve, &x), limbs(c.curve, &y)))
    }

    fn mul_g(c: &mut Ctx, k: &BigNumRef) -> EcPoint {
        let mut pt = EcPoint::new(&c.group).unwrap();
        pt.mul_generator2(&c.group, k, &mut c.bn).unwrap();
        pt
    }

    /// Projective (x λ, y λ, λ) for a random λ, or (0, λ, 0) for O.
    fn projective(c: &mut Ctx, a: &Affine) -> Vec<u32> {
        let lambda = rand_scalar(&c.p); // any nonzero value mod p works
        let mut out = Vec::new();
        let mut t = BigNum::new().unwrap();
        match a {
            Some((x, y)) => {
                for v in [x, y] {
                    t.mod_mul(&bn(v), &lambda, &c.p, &mut c.bn).unwrap();
                    out.extend(limbs(c.curve, &t));
                }
                out.extend(limbs(c.curve, &lambda));
            }
            None => {
                out.extend(vec![0; c.curve.limbs()]);
                out.extend(limbs(c.curve, &lambda));
                out.extend(vec![0; c.curve.limbs()]);
            }
        }
        out
    }

    /// Signs random digests under each of `keys` random keys (70 under the
    /// first, which spans three warps of the kernel's shared inversion;
    /// `detailed` under each of the next 19, two under the others); checks each
    /// against aws-lc-rs, the openssl reference for r and s, and the host
    /// check kernel (which must also reject tampered values).
    fn sign_and_verify(curve: Curve, keys: usize, detailed: usize) {
        let mut c = ctx(curve);
        let l = curve.limbs();
        let table = comb_table(curve);
        let (alg, hash): (&signature::EcdsaVerificationAlgorithm, _) = match curve {
            Curve::P256 => (&signature::ECDSA_P256_SHA256_ASN1, &digest::SHA256),
            Curve::P384 => (&signature::ECDSA_P384_SHA384_ASN1, &digest::SHA384),
        };
        for ki in 0..keys {
            let per_key = match ki {
                0 => 70,
                1..20 => detailed,
                _ => 2,
            };
            let ec = EcKey::generate(&c.group).unwrap();
            let pkey = PKey::from_ec_key(ec.clone()).unwrap();
            let blob = pack_key(curve, &pkey).unwrap();
            let public = ec
                .public_key()
                .to_bytes(&c.group, PointConversionForm::UNCOMPRESSED, &mut c.bn)
                .unwrap();
            let mut msgs = Vec::new();
            let (mut zs, mut ks) = (Vec::new(), Vec::new());
            for _ in 0..per_key {
                let mut m = [0u8; 40];
                openssl::rand::rand_bytes(&mut m).unwrap();
                zs.push(z_from_digest(curve, digest::digest(hash, &m).as_ref()));
                ks.push(limbs(curve, &rand_scalar(&c.n)));
                msgs.push(m);
            }
            let (z, k) = (to_soa(&zs, l), to_soa(&ks, l));
            let out = sign(curve, &table, &blob, &z, &k);
            assert!(out.ok.iter().all(|&o| o == 1));
            let (rs, ss) = (from_soa(&out.r, l, per_key), from_soa(&out.s, l, per_key));
            let d = ec.private_key();
            for i in 0..per_key {
                let raw = [limbs_to_be(&rs[i]), limbs_to_be(&ss[i])].concat();
                let der = crate::der::ecdsa_raw_to_der(&raw).unwrap();
                signature::UnparsedPublicKey::new(alg, &public)
                    .verify(&msgs[i], &der)
                    .expect("aws-lc-rs rejects a host-kernel signature");
                // reference: r = x(kG) mod n, s = k^-1 (z + r d) mod n
                let kg = mul_g(&mut c, &bn(&ks[i]));
                let (x, _) = ossl_affine(&mut c, &kg).unwrap();
                let mut r = BigNum::new().unwrap();
                r.nnmod(&bn(&x), &c.n, &mut c.bn).unwrap();
                assert_eq!(rs[i], limbs(curve, &r), "r != x(kG) mod n");
                let (mut t, mut u, mut kinv, mut s) = (
                    BigNum::new().unwrap(),
                    BigNum::new().unwrap(),
                    BigNum::new().unwrap(),
                    BigNum::new().unwrap(),
                );
                t.mod_mul(&r, d, &c.n, &mut c.bn).unwrap();
                u.mod_add(&t, &bn(&zs[i]), &c.n, &mut c.bn).unwrap();
                kinv.mod_inverse(&bn(&ks[i]), &c.n, &mut c.bn).unwrap();
                s.mod_mul(&kinv, &u, &c.n, &mut c.bn).unwrap();
                assert_eq!(ss[i], limbs(curve, &s), "s != k^-1 (z + r d) mod n");
            }
            // the check kernel accepts them all and rejects tampered ones
            assert!(
                check(curve, &table, &blob, &z, &out.r, &out.s)
                    .iter()
                    .all(|&o| o == 1)
            );
            let mut bad_r = out.r.clone();
            let mut bad_s = out.s.clone();
            let n = limbs(curve, &c.n);
            let above = vec![u32::MAX; l];
            for i in 0..per_key {
                let at = |j: usize| j * per_key + i;
                match i % 5 {
                    0 => bad_r[at(i % l)] ^= 1 << (i % 32),
                    1 => bad_s[at(i % l)] ^= 1 << (i % 32),
                    2 => (0..l).for_each(|j| bad_r[at(j)] = 0),
                    3 => (0..l).for_each(|j| bad_s[at(j)] = 0),
                    _ => {
                        (0..l).for_each(|j| bad_r[at(j)] = if i % 2 == 0 { n[j] } else { above[j] })
                    }
                }
            }
            assert!(
                check(curve, &table, &blob, &z, &bad_r, &bad_s)
                    .iter()
                    .all(|&o| o == 0)
            );
            // Good and bad items in the same warps (the warp shares its
            // inversions of s; a bad item must neither fail its neighbours
            // nor pass itself): exactly the bad ones are rejected.
            let (mut mix_r, mut mix_s) = (out.r.clone(), out.s.clone());
            let bad: Vec<bool> = (0..per_key).map(|i| i % 3 == 1).collect();
            for i in (0..per_key).filter(|&i| bad[i]) {
                for j in 0..l {
                    mix_r[j * per_key + i] = bad_r[j * per_key + i];
                    mix_s[j * per_key + i] = bad_s[j * per_key + i];
                }
            }
            let got = check(curve, &table, &blob, &z, &mix_r, &mix_s);
            let want: Vec<u32> = bad.iter().map(|&b| u32::from(!b)).collect();
            assert_eq!(got, want, "{curve:?}: mixed batch");
            // r + n (when it still fits) and s + n are rejected too
            let mut rn = BigNum::new().unwrap();
            rn.checked_add(&bn(&rs[0]), &c.n).unwrap();
            if rn.num_bits() as usize <= 32 * l {
                let one_r = limbs(curve, &rn);
                let ok = check(curve, &table, &blob, &zs[0], &one_r, &ss[0]);
                assert_eq!(ok, [0]);
            }
        }
    }

    #[test]
    fn p256_host_signatures_verify() {
        sign_and_verify(Curve::P256, 1000, 20);
    }

    #[test]
    fn p384_host_signatures_verify() {
        sign_and_verify(Curve::P384, 1000, 20);
    }

    #[test]
    fn long_digests_are_truncated_like_openssl() {
        for curve in CURVES {
            let c = ctx(curve);
            let l = curve.limbs();
            let table = comb_table(curve);
            let ec = EcKey::generate(&c.group).unwrap();
            let blob = pack_key(curve, &PKey::from_ec_key(ec.clone()).unwrap()).unwrap();
            for len in [20usize, 28, 32, 48, 64, 66] {
                let mut dg = vec![0u8; len];
                openssl::rand::rand_bytes(&mut dg).unwrap();
                let z = z_from_digest(curve, &dg);
                let k = limbs(curve, &rand_scalar(&c.n));
                let out = sign(curve, &table, &blob, &z, &k);
                assert_eq!(out.ok, [1]);
                let sig = openssl::ecdsa::EcdsaSig::from_private_components(bn(&out.r), bn(&out.s))
                    .unwrap();
                assert!(
                    sig.verify(&dg, &ec).unwrap(),
                    "{curve:?} digest of {len} bytes"
                );
                assert_eq!(check(curve, &table, &blob, &z, &out.r, &out.s), [1]);
            }
            let _ = l;
        }
    }

    #[test]
    fn field_and_scalar_edge_values() {
        for curve in CURVES {
            let mut c = ctx(curve);
            for (which, m) in [
                (Modulus::P, c.p.to_owned().unwrap()),
                (Modulus::N, c.n.to_owned().unwrap()),
            ] {
                let mut vals = vec![
                    BigNum::from_u32(0).unwrap(),
                    BigNum::from_u32(1).unwrap(),
                    BigNum::from_u32(2).unwrap(),
                    sub_u32(&m, 1),
                    sub_u32(&m, 2),
                ];
                let mut half = BigNum::new().unwrap();
                half.rshift1(&m).unwrap();
                vals.push(half);
                for _ in 0..4 {
                    vals.push(rand_scalar(&m));
                }
                for a in &vals {
                    let la = limbs(curve, a);
                    let mut want = BigNum::new().unwrap();
                    if a.num_bits() == 0 {
                        want = BigNum::from_u32(0).unwrap();
                    } else {
                        want.mod_inverse(a, &m, &mut c.bn).unwrap();
                    }
                    assert_eq!(
                        mod_op(curve, which, ModOp::Inv, &la, &la),
                        limbs(curve, &want),
                        "{curve:?} {which:?} inv"
                    );
                    for b in &vals {
                        let lb = limbs(curve, b);
                        let mut w = BigNum::new().unwrap();
                        w.mod_mul(a, b, &m, &mut c.bn).unwrap();
                        assert_eq!(
                            mod_op(curve, which, ModOp::Mul, &la, &lb),
                            limbs(curve, &w),
                            "{curve:?} {which:?} mul"
                        );
                        w.mod_add(a, b, &m, &mut c.bn).unwrap();
                        assert_eq!(
                            mod_op(curve, which, ModOp::Add, &la, &lb),
                            limbs(curve, &w),
                            "{curve:?} {which:?} add"
                        );
                        w.mod_sub(a, b, &m, &mut c.bn).unwrap();
                        assert_eq!(
                            mod_op(curve, which, ModOp::Sub, &la, &lb),
                            limbs(curve, &w),
                            "{curve:?} {which:?} sub"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn complete_formulas_handle_every_case() {
        for curve in CURVES {
            let mut c = ctx(curve);
            for _ in 0..8 {
                let ka = rand_scalar(&c.n);
                let a = mul_g(&mut c, &ka);
                let kb = rand_scalar(&c.n);
                let b = mul_g(&mut c, &kb);
                let mut neg = a.to_owned(&c.group).unwrap();
                neg.invert2(&c.group, &mut c.bn).unwrap();
                let mut sum = EcPoint::new(&c.group).unwrap();
                sum.add(&c.group, &a, &b, &mut c.bn).unwrap();
                let mut twice = EcPoint::new(&c.group).unwrap();
                twice.add(&c.group, &a, &a, &mut c.bn).unwrap();
                let (pa, pb, pn) = (
                    ossl_affine(&mut c, &a),
                    ossl_affine(&mut c, &b),
                    ossl_affine(&mut c, &neg),
                );
                let (psum, ptwice) = (ossl_affine(&mut c, &sum), ossl_affine(&mut c, &twice));
                let o: Affine = None;
                let cases = [
                    (PointOp::Add, &pa, &pb, &psum, "P + Q"),
                    (PointOp::Add, &pa, &pa, &ptwice, "P + P"),
                    (PointOp::Add, &pa, &pn, &o, "P + (-P)"),
                    (PointOp::Add, &o, &pa, &pa, "O + P"),
                    (PointOp::Add, &pa, &o, &pa, "P + O"),
                    (PointOp::Add, &o, &o, &o, "O + O"),
                    (PointOp::Double, &pa, &o, &ptwice, "2P"),
                    (PointOp::Double, &o, &o, &o, "2O"),
                    (PointOp::MixedAdd, &pa, &pb, &psum, "P + Q mixed"),
                    (PointOp::MixedAdd, &pa, &pa, &ptwice, "P + P mixed"),
                    (PointOp::MixedAdd, &pa, &pn, &o, "P + (-P) mixed"),
                    (PointOp::MixedAdd, &o, &pa, &pa, "O + P mixed"),
                ];
                for (op, p, q, want, what) in cases {
                    let pp = projective(&mut c, p);
                    // the mixed addition reads q as affine (x, y)
                    let qq = match (op, q) {
                        (PointOp::MixedAdd, Some((x, y))) => {
                            [x.clone(), y.clone(), vec![0; curve.limbs()]].concat()
                        }
                        _ => projective(&mut c, q),
                    };
                    assert_eq!(&point_op(curve, op, &pp, &qq), want, "{curve:?}: {what}");
                }
            }
        }
    }

    #[test]
    fn scalar_mult_edge_scalars() {
        for curve in CURVES {
            let mut c = ctx(curve);
            let table = comb_table(curve);
            assert_eq!(table, comb_table(curve), "table is deterministic");
            let kq0 = rand_scalar(&c.n);
            let q = mul_g(&mut c, &kq0);
            let qa = ossl_affine(&mut c, &q).unwrap();
            let tq = comb_table_for(curve, &qa.0, &qa.1);
            let mut ks = vec![
                BigNum::from_u32(0).unwrap(),
                BigNum::from_u32(1).unwrap(),
                BigNum::from_u32(2).unwrap(),
                BigNum::from_u32(3).unwrap(),
                sub_u32(&c.n, 1),
                sub_u32(&c.n, 2),
                c.n.to_owned().unwrap(),
            ];
            let mut top = BigNum::new().unwrap();
            top.set_bit(curve.bits() as i32 - 1).unwrap();
            ks.push(top);
            for _ in 0..16 {
                ks.push(rand_scalar(&c.n));
            }
            for (i, k) in ks.iter().enumerate() {
                let lk = limbs(curve, k);
                let kg = mul_g(&mut c, k);
                let want = ossl_affine(&mut c, &kg);
                assert_eq!(mul_base(curve, &table, &lk), want, "{curve:?} k*G, k = {k}");
                // k G + k' Q, k' running through the same edge values backwards
                let k2 = &ks[ks.len() - 1 - i];
                let mut sum = EcPoint::new(&c.group).unwrap();
                sum.mul_full(&c.group, k, &q, k2, &mut c.bn).unwrap();
                let want = ossl_affine(&mut c, &sum);
                let got = mul_base2(curve, &table, &lk, &tq, &limbs(curve, k2));
                assert_eq!(got, want, "{curve:?} k*G + k2*Q, k = {k}, k2 = {k2}");
            }
        }
    }

    /// The check's second comparison, X = (r + n) Z, for a point whose x
    /// lies in [n, p) (probability ~2^-128 for a real signature): with
    /// "public key" Q = P, z = 0 and s = r, u1 = 0 and u2 = 1, so the check
    /// computes P itself and must accept r = x - n; r + 1 is rejected.
    #[test]
    fn check_accepts_a_point_with_x_above_n() {
        for curve in CURVES {
            let mut c = ctx(curve);
            let l = curve.limbs();
            let table = comb_table(curve);
            // the first x = n + t, t >= 1 (r = t must not be 0), on the curve
            let (mut x, mut y) = (c.n.to_owned().unwrap(), BigNum::new().unwrap());
            x.add_word(1).unwrap();
            let b = {
                let (mut p, mut a, mut b) = (
                    BigNum::new().unwrap(),
                    BigNum::new().unwrap(),
                    BigNum::new().unwrap(),
                );
                c.group
                    .components_gfp(&mut p, &mut a, &mut b, &mut c.bn)
                    .unwrap();
                b
            };
            loop {
                // y^2 = x^3 - 3x + b
                let (mut x3, mut rhs) = (BigNum::new().unwrap(), BigNum::new().unwrap());
                x3.mod_exp(&x, &BigNum::from_u32(3).unwrap(), &c.p, &mut c.bn)
                    .unwrap();
                let mut t = BigNum::new().unwrap();
                t.checked_mul(&x, &BigNum::from_u32(3).unwrap(), &mut c.bn)
                    .unwrap();
                rhs.mod_sub(&x3, &t, &c.p, &mut c.bn).unwrap();
                let mut rhs2 = BigNum::new().unwrap();
                rhs2.mod_add(&rhs, &b, &c.p, &mut c.bn).unwrap();
                if y.mod_sqrt(&rhs2, &c.p, &mut c.bn).is_ok() {
                    let mut yy = BigNum::new().unwrap();
                    yy.mod_sqr(&y, &c.p, &mut c.bn).unwrap();
                    if yy == rhs2 {
                        break;
                    }
                }
                x.add_word(1).unwrap();
            }
            let mut pt = EcPoint::new(&c.group).unwrap();
            pt.set_affine_coordinates_gfp(&c.group, &x, &y, &mut c.bn)
                .unwrap();
            assert!(pt.is_on_curve(&c.group, &mut c.bn).unwrap());
            let (qx, qy) = (limbs(curve, &x), limbs(curve, &y));
            let mut blob = vec![0u32; l];
            blob.extend(&qx);
            blob.extend(&qy);
            blob.extend(comb_table_for(curve, &qx, &qy));
            let mut r = BigNum::new().unwrap();
            r.checked_sub(&x, &c.n).unwrap();
            let r = limbs(curve, &r);
            let zero = vec![0u32; l];
            let mut one = zero.clone();
            one[0] = 1;
            let tq = comb_table_for(curve, &qx, &qy);
            assert_eq!(
                mul_base2(curve, &table, &zero, &tq, &one),
                Some((qx.clone(), qy.clone())),
                "{curve:?} 1*Q"
            );
            assert_eq!(check(curve, &table, &blob, &zero, &r, &r), [1], "{curve:?}");
            let mut r1 = r.clone();
            r1[0] ^= 1;
            assert_eq!(
                check(curve, &table, &blob, &zero, &r1, &r1),
                [0],
                "{curve:?}"
            );
        }
    }

    #[test]
    fn comb_table_build_time() {
        for curve in CURVES {
            let t = std::time::Instant::now();
            let table = comb_table(curve);
            eprintln!(
                "{curve:?} comb table: {} words in {:?}",
                table.len(),
                t.elapsed()
            );
            assert_eq!(table.len(), table_words(curve));
        }
    }
}
