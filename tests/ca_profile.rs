//! The CA's CSR checking and SVID profiles, checked from outside: CSRs are
//! made by the `openssl req` CLI, SVIDs are signed through a real engine
//! over the CPU backend, and every certificate is checked field by field
//! with the openssl crate and `openssl x509 -ext`, and path-validated with
//! `openssl verify` against a throwaway root and intermediate. JWT-SVIDs are
//! verified with the openssl crate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};
use sigmux::backend::cpu::{CpuBackend, CpuConfig, CpuEngine, EngineChoice};
use sigmux::ca::csr::{self, CsrError, CsrSignatureAlgorithm, SubjectKeyType};
use sigmux::ca::spiffe::{SpiffeId, TrustDomain};
use sigmux::ca::svid::{
    self, Issuer, SvidError, SvidPolicy, SvidRequest, SvidSubject, build_tbs, issue, issue_batch,
    mint_jwt,
};
use sigmux::scheme::HashAlg;
use sigmux::{Engine, EngineConfig, Key, KeyKind, Scheme};

// ---------------------------------------------------------------- helpers

fn cpu() -> Arc<CpuBackend> {
    static CPU: OnceLock<Arc<CpuBackend>> = OnceLock::new();
    CPU.get_or_init(|| {
        Arc::new(
            CpuBackend::new(&CpuConfig {
                threads: 2,
                engine: EngineChoice::Fixed(CpuEngine::AwsLc),
                max_batch: 256,
            })
            .unwrap(),
        )
    })
    .clone()
}

fn engine() -> Engine {
    Engine::new(EngineConfig::default(), vec![cpu()]).unwrap()
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A throwaway CA: a P-256 root made with the openssl crate and an
/// intermediate whose key is a sigmux key (signing only through the engine).
struct Ca {
    dir: tempfile::TempDir,
    root: X509,
    root_key: PKey<Private>,
    issuer: Issuer,
}

impl Ca {
    fn root_pem(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }
    fn intermediate_pem(&self) -> PathBuf {
        self.dir.path().join("intermediate.pem")
    }
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut bn = BigNum::new().unwrap();
    bn.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    bn.to_asn1_integer().unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut b = X509NameBuilder::new().unwrap();
    b.append_entry_by_text("O", "sigmux test").unwrap();
    b.append_entry_by_text("CN", cn).unwrap();
    b.build()
}

fn make_root() -> (X509, PKey<Private>) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name("root")).unwrap();
    b.set_issuer_name(&name("root")).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(unix_now() - 3600).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(unix_now() + 86_400 * 365).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(ski).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// Signs an intermediate for `key`'s public key with the root.
fn make_intermediate(
    root: &X509,
    root_key: &PKey<Private>,
    key: &Key,
    not_after: i64,
    ca: bool,
) -> X509 {
    let public = PKey::public_key_from_der(key.spki_der()).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name("intermediate")).unwrap();
    b.set_issuer_name(root.subject_name()).unwrap();
    b.set_pubkey(&public).unwrap();
    b.set_not_before(&Asn1Time::from_unix(unix_now() - 3600).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    let mut bc = BasicConstraints::new();
    bc.critical();
    if ca {
        bc.ca().pathlen(0);
    }
    b.append_extension(bc.build().unwrap()).unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(Some(root), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(root), None))
        .unwrap();
    b.append_extension(aki).unwrap();
    let san = SubjectAlternativeName::new()
        .uri("spiffe://example.org")
        .build(&b.x509v3_context(Some(root), None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(root_key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn make_ca(kind: KeyKind, scheme: Scheme) -> Ca {
    make_ca_until(kind, scheme, unix_now() + 86_400)
}

fn make_ca_until(kind: KeyKind, scheme: Scheme, not_after: i64) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let (root, root_key) = make_root();
    let key = Key::ephemeral("ca", kind).unwrap();
    let inter = make_intermediate(&root, &root_key, &key, not_after, true);
    std::fs::write(dir.path().join("root.pem"), root.to_pem().unwrap()).unwrap();
    std::fs::write(dir.path().join("intermediate.pem"), inter.to_pem().unwrap()).unwrap();
    Ca {
        dir,
        root,
        root_key,
        issuer: Issuer {
            cert_der: inter.to_der().unwrap(),
            key,
            scheme,
            chain_der: Vec::new(),
        },
    }
}

/// Makes a CSR with `openssl req`; returns the PEM.
fn openssl_csr(dir: &Path, file: &str, newkey: &[&str], extra: &[&str]) -> Vec<u8> {
    let key = format!("{file}.key");
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=ignored/O=ignored"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&["-keyout", &key, "-out", file]);
    args.extend_from_slice(extra);
    openssl(dir, &args);
    std::fs::read(dir.join(file)).unwrap()
}

/// The CSR kinds the policy accepts, as `(file, -newkey args, extra args,
/// expected key type)`.
fn good_csr_specs() -> Vec<(
    &'static str,
    Vec<&'static str>,
    Vec<&'static str>,
    SubjectKeyType,
)> {
    vec![
        (
            "rsa.csr",
            vec!["-newkey", "rsa:2048"],
            vec![],
            SubjectKeyType::Rsa { bits: 2048 },
        ),
        (
            "rsa-pss.csr",
            vec!["-newkey", "rsa:2048"],
            vec!["-sigopt", "rsa_padding_mode:pss"],
            SubjectKeyType::Rsa { bits: 2048 },
        ),
        (
            "p256.csr",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            vec![],
            SubjectKeyType::P256,
        ),
        (
            "p384.csr",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            vec!["-sha384"],
            SubjectKeyType::P384,
        ),
        (
            "ed25519.csr",
            vec!["-newkey", "ed25519"],
            vec![],
            SubjectKeyType::Ed25519,
        ),
    ]
}

/// SPKI DER of a CSR's key as `openssl req -pubkey` prints it.
fn csr_pubkey_der(dir: &Path, file: &str) -> Vec<u8> {
    let pem = openssl(dir, &["req", "-in", file, "-noout", "-pubkey"]);
    PKey::public_key_from_pem(pem.as_bytes())
        .unwrap()
        .public_key_to_der()
        .unwrap()
}

fn sha1(data: &[u8]) -> Vec<u8> {
    openssl::hash::hash(MessageDigest::sha1(), data)
        .unwrap()
        .to_vec()
}

/// The subjectPublicKey bits of an SPKI (for the SKI), via the openssl
/// crate's own parse: re-encode and take the BIT STRING tail.
fn key_bits(spki: &[u8]) -> Vec<u8> {
    sigmux::der::spki_parts(spki).unwrap().public_key.to_vec()
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks one issued SVID field by field, and path-validates it.
#[allow(clippy::too_many_arguments)]
fn check_svid(
    ca: &Ca,
    issued: &svid::IssuedSvid,
    want_id: &str,
    want_dns: &[&str],
    want_spki: &[u8],
    rsa_subject: bool,
    window: (i64, i64),
    want_lifetime: i64,
    tag: &str,
) {
    let dir = ca.dir.path();
    let cert = X509::from_der(&issued.cert_der).unwrap();

    // Serial: positive, 16 octets, matches serial_hex.
    let serial = cert.serial_number().to_bn().unwrap();
    assert!(!serial.is_negative());
    assert_eq!(serial.to_vec().len(), 16, "{tag}: serial is 128-bit");
    assert_eq!(
        hex::encode(serial.to_vec()),
        issued.serial_hex,
        "{tag}: serial_hex"
    );

    // SANs: exactly one URI equal to the SPIFFE ID, then the DNS names.
    let sans = cert.subject_alt_names().expect("SAN present");
    let uris: Vec<&str> = sans.iter().filter_map(|g| g.uri()).collect();
    assert_eq!(uris, vec![want_id], "{tag}: one URI SAN");
    let dns: Vec<&str> = sans.iter().filter_map(|g| g.dnsname()).collect();
    assert_eq!(dns, want_dns, "{tag}: DNS SANs");
    assert_eq!(sans.len(), 1 + want_dns.len(), "{tag}: no other SANs");

    // Subject key is the CSR's.
    assert_eq!(
        cert.public_key().unwrap().public_key_to_der().unwrap(),
        want_spki,
        "{tag}: subject key"
    );

    // SKI = SHA-1 of the key bits; AKI = intermediate's SKI.
    let inter = X509::from_der(&ca.issuer.cert_der).unwrap();
    let ski = cert.subject_key_id().expect("SKI").as_slice().to_vec();
    assert_eq!(ski, sha1(&key_bits(want_spki)), "{tag}: SKI");
    let aki = cert.authority_key_id().expect("AKI").as_slice().to_vec();
    assert_eq!(
        aki,
        inter.subject_key_id().unwrap().as_slice(),
        "{tag}: AKI"
    );

    // Issuer name and signature algorithm.
    assert_eq!(
        cert.issuer_name().to_der().unwrap(),
        inter.subject_name().to_der().unwrap()
    );
    let want_nid = match ca.issuer.scheme {
        Scheme::EcdsaSecp256r1Sha256 => Nid::ECDSA_WITH_SHA256,
        Scheme::EcdsaSecp384r1Sha384 => Nid::ECDSA_WITH_SHA384,
        Scheme::RsaPkcs1Sha256 => Nid::SHA256WITHRSAENCRYPTION,
        Scheme::RsaPssRsaeSha256 => Nid::RSASSAPSS,
        Scheme::Ed25519 => Nid::from_raw(1087), // NID_ED25519
        other => panic!("untested scheme {other}"),
    };
    assert_eq!(cert.signature_algorithm().object().nid(), want_nid, "{tag}");
    assert!(
        cert.verify(&inter.public_key().unwrap()).unwrap(),
        "{tag}: signature verifies"
    );

    // Validity.
    let nb = cert.not_before();
    let na = cert.not_after();
    let lifetime = nb.diff(na).unwrap();
    assert_eq!(
        i64::from(lifetime.days) * 86_400 + i64::from(lifetime.secs),
        want_lifetime,
        "{tag}: lifetime"
    );
    let epoch = Asn1Time::from_unix(0).unwrap();
    let nb_unix = {
        let d = epoch.diff(nb).unwrap();
        i64::from(d.days) * 86_400 + i64::from(d.secs)
    };
    assert!(
        nb_unix >= window.0 - 60 && nb_unix <= window.1 - 60,
        "{tag}: notBefore = now - 60 s"
    );
    let na_unix = nb_unix + want_lifetime;
    assert_eq!(
        issued.expires_at,
        UNIX_EPOCH + Duration::from_secs(na_unix as u64)
    );

    // Extensions as the openssl CLI sees them.
    let path = dir.join(format!("{tag}.pem"));
    std::fs::write(&path, cert.to_pem().unwrap()).unwrap();
    let p = path.to_str().unwrap();
    let text = openssl(
        dir,
        &[
            "x509",
            "-in",
            p,
            "-noout",
            "-ext",
            "keyUsage,extendedKeyUsage,basicConstraints,subjectAltName,subjectKeyIdentifier,authorityKeyIdentifier",
        ],
    );
    let ku_want = if rsa_subject {
        "X509v3 Key Usage: critical\n    Digital Signature, Key Encipherment\n"
    } else {
        "X509v3 Key Usage: critical\n    Digital Signature\n"
    };
    assert!(text.contains(ku_want), "{tag}: key usage\n{text}");
    assert!(!text.contains("Certificate Sign") && !text.contains("CRL Sign"));
    assert!(
        text.contains(
            "X509v3 Extended Key Usage: \n    TLS Web Server Authentication, TLS Web Client Authentication\n"
        ),
        "{tag}: EKU\n{text}"
    );
    assert!(
        text.contains("X509v3 Basic Constraints: critical\n    CA:FALSE\n"),
        "{tag}: basic constraints\n{text}"
    );
    assert!(text.contains(&colon_hex(&ski)), "{tag}: SKI text");
    assert!(text.contains(&colon_hex(&aki)), "{tag}: AKI text");
    let mut san_line = format!("URI:{want_id}");
    for d in want_dns {
        san_line.push_str(&format!(", DNS:{d}"));
    }
    assert!(text.contains(&san_line), "{tag}: SAN text\n{text}");

    // Path validation, strict, for both TLS purposes.
    for purpose in ["sslclient", "sslserver"] {
        let out = openssl(
            dir,
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                ca.root_pem().to_str().unwrap(),
                "-untrusted",
                ca.intermediate_pem().to_str().unwrap(),
                p,
            ],
        );
        assert!(out.trim_end().ends_with(": OK"), "{tag}: verify: {out}");
    }

    // chain_pem: the SVID then the intermediate.
    let chain = X509::stack_from_pem(issued.chain_pem.as_bytes()).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].to_der().unwrap(), issued.cert_der);
    assert_eq!(chain[1].to_der().unwrap(), ca.issuer.cert_der);
}

// ------------------------------------------------------------------ CSRs

#[test]
fn openssl_csrs_of_every_accepted_kind_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (file, newkey, extra, kind) in good_csr_specs() {
        let pem = openssl_csr(dir.path(), file, &newkey, &extra);
        let v = csr::parse_and_verify(&pem).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(v.key_type, kind, "{file}");
        assert_eq!(v.spki_der, csr_pubkey_der(dir.path(), file), "{file}");
        let want_alg = match file {
            "rsa.csr" => CsrSignatureAlgorithm::RsaPkcs1(HashAlg::Sha256),
            "p256.csr" => CsrSignatureAlgorithm::Ecdsa(HashAlg::Sha256),
            "p384.csr" => CsrSignatureAlgorithm::Ecdsa(HashAlg::Sha384),
            "ed25519.csr" => CsrSignatureAlgorithm::Ed25519,
            _ => v.signature_algorithm,
        };
        assert_eq!(v.signature_algorithm, want_alg, "{file}");
        if file == "rsa-pss.csr" {
            assert!(matches!(
                v.signature_algorithm,
                CsrSignatureAlgorithm::RsaPss {
                    hash: HashAlg::Sha256,
                    ..
                }
            ));
        }
        // DER works the same.
        let der = pem::parse(&pem).unwrap().into_contents();
        assert_eq!(csr::parse_and_verify(&der).unwrap(), v, "{file} as DER");
        assert_eq!(csr::check_public_key(&v.spki_der).unwrap(), kind);
    }
    // PSS with an explicit salt length, and RSA-4096 with SHA-512.
    let pem = openssl_csr(
        dir.path(),
        "pss32.csr",
        &["-newkey", "rsa:2048"],
        &[
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
        ],
    );
    assert_eq!(
        csr::parse_and_verify(&pem).unwrap().signature_algorithm,
        CsrSignatureAlgorithm::RsaPss {
            hash: HashAlg::Sha256,
            salt_len: 32
        }
    );
    let pem = openssl_csr(
        dir.path(),
        "rsa4096.csr",
        &["-newkey", "rsa:4096"],
        &["-sha512"],
    );
    assert_eq!(
        csr::parse_and_verify(&pem).unwrap().key_type,
        SubjectKeyType::Rsa { bits: 4096 }
    );
}

#[test]
fn bad_csrs_get_their_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = openssl_csr(
        d,
        "p256.csr",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[],
    );
    let der = pem::parse(&good).unwrap().into_contents();

    // Tampered signature (last byte of the signature) and tampered content
    // (a byte of the subject).
    let mut bad_sig = der.clone();
    let n = bad_sig.len();
    bad_sig[n - 1] ^= 0x01;
    assert_eq!(csr::parse_and_verify(&bad_sig), Err(CsrError::BadSignature));
    let mut bad_body = der.clone();
    let pos = der
        .windows(7)
        .position(|w| w == b"ignored")
        .expect("subject text in CSR");
    bad_body[pos] = b'J';
    assert_eq!(
        csr::parse_and_verify(&bad_body),
        Err(CsrError::BadSignature)
    );
    let rsa = pem::parse(openssl_csr(d, "rsa.csr", &["-newkey", "rsa:2048"], &[]))
        .unwrap()
        .into_contents();
    let mut bad_rsa = rsa.clone();
    let n = bad_rsa.len();
    bad_rsa[n - 10] ^= 0x80;
    assert_eq!(csr::parse_and_verify(&bad_rsa), Err(CsrError::BadSignature));

    // Weak and unsupported keys.
    let rsa1024 = openssl_csr(d, "rsa1024.csr", &["-newkey", "rsa:1024"], &[]);
    let e = csr::parse_and_verify(&rsa1024).unwrap_err();
    assert_eq!(e, CsrError::RsaKeyTooSmall { bits: 1024 });
    assert_eq!(
        e.to_string(),
        "RSA key too small: 1024 bits (at least 2048)"
    );
    assert_eq!(e.code(), "csr_key_policy");
    let k1 = openssl_csr(
        d,
        "k1.csr",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
        &[],
    );
    let e = csr::parse_and_verify(&k1).unwrap_err();
    assert_eq!(e, CsrError::UnsupportedCurve("secp256k1".into()));
    assert!(e.to_string().contains("secp256k1"), "{e}");
    let p521 = openssl_csr(
        d,
        "p521.csr",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
        &[],
    );
    assert_eq!(
        csr::parse_and_verify(&p521),
        Err(CsrError::UnsupportedCurve("P-521".into()))
    );
    let ed448 = openssl_csr(d, "ed448.csr", &["-newkey", "ed448"], &[]);
    assert!(matches!(
        csr::parse_and_verify(&ed448),
        Err(CsrError::UnsupportedKeyType(k)) if k == "Ed448"
    ));

    // SHA-1 signature.
    let sha1 = openssl_csr(d, "sha1.csr", &["-newkey", "rsa:2048"], &["-sha1"]);
    let e = csr::parse_and_verify(&sha1).unwrap_err();
    assert!(
        matches!(&e, CsrError::UnsupportedSignatureAlgorithm(a) if a.contains("SHA-1")),
        "{e}"
    );

    // Garbage in many shapes.
    assert_eq!(
        csr::parse_and_verify(b"not a csr"),
        Err(CsrError::NotPemOrDer)
    );
    assert!(matches!(
        csr::parse_and_verify(
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n"
        ),
        Err(CsrError::BadPem(_))
    ));
    let cert_pem = make_root().0.to_pem().unwrap();
    assert_eq!(
        csr::parse_and_verify(&cert_pem),
        Err(CsrError::WrongPemLabel("CERTIFICATE".into()))
    );
    let mut two = good.clone();
    two.extend_from_slice(&good);
    assert_eq!(
        csr::parse_and_verify(&two),
        Err(CsrError::MultiplePemBlocks(2))
    );
    assert!(matches!(
        csr::parse_and_verify(&der[..der.len() - 5]),
        Err(CsrError::Malformed(_))
    ));
    let mut trailing = der.clone();
    trailing.push(0);
    assert!(matches!(
        csr::parse_and_verify(&trailing),
        Err(CsrError::Malformed(_))
    ));
    assert!(matches!(
        csr::parse_and_verify(&vec![b' '; 70_000]),
        Err(CsrError::TooLarge { .. })
    ));
    // Every truncation and many single-byte corruptions: errors, no panics.
    for cut in 0..der.len() {
        assert!(csr::parse_and_verify(&der[..cut]).is_err());
    }
    for i in 0..der.len() {
        let mut x = der.clone();
        x[i] ^= 0x5a;
        let _ = csr::parse_and_verify(&x);
    }
}

// ------------------------------------------------------------- X.509-SVIDs

/// Every issuer kind signs SVIDs for every accepted CSR kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_for_every_csr_and_issuer_kind_verify_field_by_field() {
    let csr_dir = tempfile::tempdir().unwrap();
    let csrs: Vec<(String, Vec<u8>, SubjectKeyType)> = good_csr_specs()
        .into_iter()
        .map(|(file, newkey, extra, kind)| {
            let pem = openssl_csr(csr_dir.path(), file, &newkey, &extra);
            (file.to_string(), pem, kind)
        })
        .collect();
    let engine = engine();
    let policy = SvidPolicy {
        trust_domain: Some(TrustDomain::parse("example.org").unwrap()),
        ..SvidPolicy::default()
    };
    for (kind, scheme) in [
        (KeyKind::P256, Scheme::EcdsaSecp256r1Sha256),
        (KeyKind::P384, Scheme::EcdsaSecp384r1Sha384),
        (KeyKind::Rsa2048, Scheme::RsaPkcs1Sha256),
        (KeyKind::Rsa2048, Scheme::RsaPssRsaeSha256),
        (KeyKind::Ed25519, Scheme::Ed25519),
    ] {
        let ca = make_ca(kind, scheme);
        for (file, pem, key_type) in &csrs {
            let v = csr::parse_and_verify(pem).unwrap();
            let spiffe_id = format!("spiffe://example.org/ns/prod/sa/{}", file.replace('.', "-"));
            let req = SvidRequest {
                public_key_spki: v.spki_der.clone(),
                spiffe_id: id(&spiffe_id),
                dns_names: vec!["web.prod.svc".into(), "web.example.org".into()],
                ttl: Duration::from_secs(600),
            };
            let before = unix_now();
            let issued = issue(&engine, &req, &ca.issuer, &policy).await.unwrap();
            let after = unix_now();
            check_svid(
                &ca,
                &issued,
                &spiffe_id,
                &["web.prod.svc", "web.example.org"],
                &v.spki_der,
                key_type.is_rsa(),
                (before, after),
                600 + 60,
                &format!("{scheme}-{file}"),
            );
            assert_eq!(issued.backend, "cpu");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_is_capped_by_policy_and_issuer() {
    let engine = engine();
    let csr_dir = tempfile::tempdir().unwrap();
    let pem = openssl_csr(
        csr_dir.path(),
        "p256.csr",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[],
    );
    let spki = csr::parse_and_verify(&pem).unwrap().spki_der;
    let req = |ttl: u64| SvidRequest {
        public_key_spki: spki.clone(),
        spiffe_id: id("spiffe://example.org/w"),
        dns_names: vec![],
        ttl: Duration::from_secs(ttl),
    };

    // Policy maximum (one hour by default) caps a day-long request.
    let ca = make_ca(KeyKind::P256, Scheme::EcdsaSecp256r1Sha256);
    let before = unix_now();
    let issued = issue(&engine, &req(86_400), &ca.issuer, &SvidPolicy::default())
        .await
        .unwrap();
    check_svid(
        &ca,
        &issued,
        "spiffe://example.org/w",
        &[],
        &spki,
        false,
        (before, unix_now()),
        3600 + 60,
        "capped-by-policy",
    );

    // The issuer's notAfter caps it too; custom backdate.
    let inter_end = unix_now() + 1800;
    let ca = make_ca_until(KeyKind::P256, Scheme::EcdsaSecp256r1Sha256, inter_end);
    let policy = SvidPolicy {
        max_ttl: Duration::from_secs(7200),
        backdate: Duration::from_secs(30),
        ..SvidPolicy::default()
    };
    let issued = issue(&engine, &req(7200), &ca.issuer, &policy)
        .await
        .unwrap();
    assert_eq!(
        issued.expires_at,
        UNIX_EPOCH + Duration::from_secs(inter_end as u64)
    );
    let cert = X509::from_der(&issued.cert_der).unwrap();
    assert_eq!(
        cert.not_after()
            .compare(&Asn1Time::from_unix(inter_end).unwrap())
            .unwrap(),
        std::cmp::Ordering::Equal
    );

    // An expired issuer and a zero TTL are refused.
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3600);
    assert!(matches!(
        build_tbs(&req(60), &ca.issuer, later, &policy),
        Err(SvidError::IssuerExpired(_))
    ));
    assert!(matches!(
        build_tbs(&req(0), &ca.issuer, now, &policy),
        Err(SvidError::ZeroTtl)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_subject_makes_the_san_critical() {
    let engine = engine();
    let ca = make_ca(KeyKind::P256, Scheme::EcdsaSecp256r1Sha256);
    let key = Key::ephemeral("leaf", KeyKind::P256).unwrap();
    let policy = SvidPolicy {
        subject: SvidSubject::Empty,
        ..SvidPolicy::default()
    };
    let req = SvidRequest {
        public_key_spki: key.spki_der().to_vec(),
        spiffe_id: id("spiffe://example.org/empty"),
        dns_names: vec![],
        ttl: Duration::from_secs(60),
    };
    let issued = issue(&engine, &req, &ca.issuer, &policy).await.unwrap();
    let cert = X509::from_der(&issued.cert_der).unwrap();
    assert_eq!(cert.subject_name().entries().count(), 0);
    let path = ca.dir.path().join("empty.pem");
    std::fs::write(&path, &issued.chain_pem).unwrap();
    let text = openssl(
        ca.dir.path(),
        &[
            "x509",
            "-in",
            "empty.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );
    let out = openssl(
        ca.dir.path(),
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            ca.root_pem().to_str().unwrap(),
            "-untrusted",
            ca.intermediate_pem().to_str().unwrap(),
            "empty.pem",
        ],
    );
    assert!(out.contains(": OK"), "{out}");

    // Default subject: O=SPIFFE, SAN not critical.
    let issued = issue(&engine, &req, &ca.issuer, &SvidPolicy::default())
        .await
        .unwrap();
    let cert = X509::from_der(&issued.cert_der).unwrap();
    let o: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| e.data().to_string().unwrap())
        .collect();
    assert_eq!(o, vec!["SPIFFE"]);
    std::fs::write(&path, &issued.chain_pem).unwrap();
    let text = openssl(
        ca.dir.path(),
        &[
            "x509",
            "-in",
            "empty.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        text.contains("X509v3 Subject Alternative Name: \n"),
        "{text}"
    );
}

#[test]
fn bad_requests_and_issuers_are_refused_with_their_own_errors() {
    let ca = make_ca(KeyKind::P256, Scheme::EcdsaSecp256r1Sha256);
    let leaf = Key::ephemeral("leaf", KeyKind::P256).unwrap();
    let now = SystemTime::now();
    let policy = SvidPolicy {
        trust_domain: Some(TrustDomain::parse("example.org").unwrap()),
        ..SvidPolicy::default()
    };
    let base = SvidRequest {
        public_key_spki: leaf.spki_der().to_vec(),
        spiffe_id: id("spiffe://example.org/w"),
        dns_names: vec![],
        ttl: Duration::from_secs(60),
    };
    let try_req = |f: &dyn Fn(&mut SvidRequest)| {
        let mut r = base.clone();
        f(&mut r);
        build_tbs(&r, &ca.issuer, now, &policy).map(|_| ())
    };
    assert!(try_req(&|_| {}).is_ok());
    assert!(matches!(
        try_req(&|r| r.spiffe_id = id("spiffe://example.org")),
        Err(SvidError::RootSpiffeId(_))
    ));
    assert!(matches!(
        try_req(&|r| r.spiffe_id = id("spiffe://other.org/w")),
        Err(SvidError::WrongTrustDomain { .. })
    ));
    for bad in ["*.example.org", "a..b", "-x.org", "1.2.3.4", "a_b.org", ""] {
        let e = try_req(&|r| r.dns_names = vec![bad.to_string()]).unwrap_err();
        assert!(matches!(e, SvidError::InvalidDnsName { .. }), "{bad}: {e}");
        assert_eq!(e.code(), "dns_name");
    }
    assert!(matches!(
        try_req(&|r| r.dns_names = vec!["a.org".into(), "A.org".into()]),
        Err(SvidError::DuplicateDnsName(_))
    ));
    assert!(matches!(
        try_req(&|r| r.dns_names = (0..40).map(|i| format!("h{i}.org")).collect()),
        Err(SvidError::TooManyDnsNames { count: 40, max: 32 })
    ));
    let wild = SvidPolicy {
        allow_wildcard_dns: true,
        ..policy.clone()
    };
    let mut r = base.clone();
    r.dns_names = vec!["*.svc.example.org".into()];
    assert!(build_tbs(&r, &ca.issuer, now, &wild).is_ok());

    // Subject keys that break the policy.
    let rsa1024 = openssl::rsa::Rsa::generate(1024).unwrap();
    let weak = PKey::from_rsa(rsa1024)
        .unwrap()
        .public_key_to_der()
        .unwrap();
    assert!(matches!(
        try_req(&|r| r.public_key_spki = weak.clone()),
        Err(SvidError::SubjectKey(CsrError::RsaKeyTooSmall {
            bits: 1024
        }))
    ));
    assert!(matches!(
        try_req(&|r| r.public_key_spki = vec![0x30, 0x00]),
        Err(SvidError::SubjectKey(CsrError::InvalidPublicKey(_)))
    ));

    let mut off_curve = leaf.spki_der().to_vec();
    let n = off_curve.len();
    off_curve[n - 1] ^= 0x01;
    assert!(matches!(
        try_req(&|r| r.public_key_spki = off_curve.clone()),
        Err(SvidError::SubjectKey(CsrError::InvalidPublicKey(_)))
    ));
    let mut compressed = leaf.spki_der().to_vec();
    let at = compressed.len() - 65;
    compressed[at] = 0x02;
    assert!(matches!(
        try_req(&|r| r.public_key_spki = compressed.clone()),
        Err(SvidError::SubjectKey(CsrError::CompressedPoint))
    ));
    let huge_backdate = SvidPolicy {
        backdate: Duration::from_secs(86_401),
        ..policy.clone()
    };
    assert!(matches!(
        build_tbs(&base, &ca.issuer, now, &huge_backdate),
        Err(SvidError::Policy(_))
    ));

    // Issuers that cannot sign.
    let other = Key::ephemeral("other", KeyKind::P256).unwrap();
    let mut wrong_key = ca.issuer.clone();
    wrong_key.key = other;
    assert!(matches!(
        build_tbs(&base, &wrong_key, now, &policy),
        Err(SvidError::IssuerKeyMismatch(_))
    ));
    let mut wrong_scheme = ca.issuer.clone();
    wrong_scheme.scheme = Scheme::RsaPkcs1Sha256;
    assert!(matches!(
        build_tbs(&base, &wrong_scheme, now, &policy),
        Err(SvidError::SchemeMismatch { .. })
    ));
    let not_ca = make_intermediate(
        &ca.root,
        &ca.root_key,
        &ca.issuer.key,
        unix_now() + 3600,
        false,
    );
    let mut leaf_issuer = ca.issuer.clone();
    leaf_issuer.cert_der = not_ca.to_der().unwrap();
    assert!(matches!(
        build_tbs(&base, &leaf_issuer, now, &policy),
        Err(SvidError::IssuerNotCa)
    ));
    let mut garbage = ca.issuer.clone();
    garbage.cert_der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
    assert!(matches!(
        build_tbs(&base, &garbage, now, &policy),
        Err(SvidError::IssuerCert(_))
    ));

    // Serials differ.
    let (_, s1, _) = build_tbs(&base, &ca.issuer, now, &policy).unwrap();
    let (_, s2, _) = build_tbs(&base, &ca.issuer, now, &policy).unwrap();
    assert_ne!(s1, s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_goes_to_the_engine_as_one_group_and_bad_items_fail_alone() {
    let engine = engine();
    let ca = make_ca(KeyKind::P256, Scheme::EcdsaSecp256r1Sha256);
    let mut reqs = Vec::new();
    let mut spkis = Vec::new();
    for i in 0..40 {
        let k = Key::ephemeral("leaf", KeyKind::P256).unwrap();
        spkis.push(k.spki_der().to_vec());
        reqs.push(SvidRequest {
            public_key_spki: k.spki_der().to_vec(),
            spiffe_id: id(&format!("spiffe://example.org/w/{i}")),
            dns_names: vec![format!("w{i}.example.org")],
            ttl: Duration::from_secs(300),
        });
    }
    reqs[7].spiffe_id = id("spiffe://example.org");
    reqs[23].dns_names = vec!["bad_name".into()];
    let before = unix_now();
    let results = issue_batch(&engine, &reqs, &ca.issuer, &SvidPolicy::default()).await;
    let after = unix_now();
    assert_eq!(results.len(), 40);
    for (i, r) in results.iter().enumerate() {
        match i {
            7 => assert!(matches!(r, Err(SvidError::RootSpiffeId(_)))),
            23 => assert!(matches!(r, Err(SvidError::InvalidDnsName { .. }))),
            _ => {
                let issued = r.as_ref().unwrap();
                let want_id = format!("spiffe://example.org/w/{i}");
                let dns = format!("w{i}.example.org");
                if i % 10 == 0 {
                    check_svid(
                        &ca,
                        issued,
                        &want_id,
                        &[dns.as_str()],
                        &spkis[i],
                        false,
                        (before, after),
                        360,
                        &format!("batch-{i}"),
                    );
                } else {
                    let cert = X509::from_der(&issued.cert_der).unwrap();
                    let uri = cert.subject_alt_names().unwrap()[0]
                        .uri()
                        .unwrap()
                        .to_string();
                    assert_eq!(uri, want_id);
                    assert!(
                        cert.verify(&PKey::public_key_from_der(ca.issuer.key.spki_der()).unwrap())
                            .unwrap()
                    );
                }
            }
        }
    }
    let (_, ops, batches) = engine.backend_totals()[0].clone();
    assert_eq!(ops, 38);
    assert!(batches <= 3, "38 signatures in {batches} batches");
}

// ----------------------------------------------------------------- JWT-SVID

fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "compact serialization");
    let header: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    let sig = B64URL.decode(parts[2]).unwrap();
    (header, claims, sig, format!("{}.{}", parts[0], parts[1]))
}

fn verify_jwt(key: &Key, alg: &str, input: &[u8], sig: &[u8]) -> bool {
    let pkey = PKey::public_key_from_der(key.spki_der()).unwrap();
    match alg {
        "ES256" | "ES384" => {
            let (md, n) = if alg == "ES256" {
                (MessageDigest::sha256(), 32)
            } else {
                (MessageDigest::sha384(), 48)
            };
            assert_eq!(sig.len(), 2 * n, "JOSE r||s is fixed width");
            let r = BigNum::from_slice(&sig[..n]).unwrap();
            let s = BigNum::from_slice(&sig[n..]).unwrap();
            let esig = EcdsaSig::from_private_components(r, s).unwrap();
            let digest = openssl::hash::hash(md, input).unwrap();
            esig.verify(&digest, &pkey.ec_key().unwrap()).unwrap()
        }
        "RS256" => {
            let mut v = Verifier::new(MessageDigest::sha256(), &pkey).unwrap();
            v.set_rsa_padding(Padding::PKCS1).unwrap();
            v.verify_oneshot(sig, input).unwrap()
        }
        "PS256" => {
            let mut v = Verifier::new(MessageDigest::sha256(), &pkey).unwrap();
            v.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            v.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
            v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).unwrap();
            v.verify_oneshot(sig, input).unwrap()
        }
        other => panic!("unexpected alg {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_verify_and_carry_the_right_claims() {
    let engine = engine();
    let sub = id("spiffe://example.org/ns/prod/sa/web");
    for (kind, scheme, alg) in [
        (KeyKind::P256, Scheme::EcdsaSecp256r1Sha256, "ES256"),
        (KeyKind::P384, Scheme::EcdsaSecp384r1Sha384, "ES384"),
        (KeyKind::Rsa2048, Scheme::RsaPkcs1Sha256, "RS256"),
        (KeyKind::Rsa2048, Scheme::RsaPssRsaeSha256, "PS256"),
    ] {
        let key = Key::ephemeral("jwt", kind).unwrap();
        for aud in [
            vec!["spiffe://example.org/reports".to_string()],
            vec!["a".to_string(), "b".to_string()],
        ] {
            let before = unix_now();
            let token = mint_jwt(
                &engine,
                key.clone(),
                Some("kid-1"),
                scheme,
                &sub,
                &aud,
                Duration::from_secs(300),
            )
            .await
            .unwrap();
            let after = unix_now();
            let (header, claims, sig, input) = jwt_parts(&token);
            assert_eq!(
                header,
                serde_json::json!({"alg": alg, "kid": "kid-1", "typ": "JWT"})
            );
            assert!(verify_jwt(&key, alg, input.as_bytes(), &sig), "{alg}");
            let mut bad = sig.clone();
            bad[5] ^= 1;
            assert!(!verify_jwt(&key, alg, input.as_bytes(), &bad), "{alg}");
            assert_eq!(claims["sub"], sub.as_str());
            if aud.len() == 1 {
                assert_eq!(claims["aud"], aud[0].as_str());
            } else {
                assert_eq!(claims["aud"], serde_json::json!(aud));
            }
            let iat = claims["iat"].as_i64().unwrap();
            assert!(iat >= before && iat <= after);
            assert_eq!(claims["exp"].as_i64().unwrap(), iat + 300);
            assert_eq!(claims.as_object().unwrap().len(), 4);
        }
    }

    // No kid: the header has only alg and typ.
    let key = Key::ephemeral("jwt", KeyKind::P256).unwrap();
    let token = mint_jwt(
        &engine,
        key.clone(),
        None,
        Scheme::EcdsaSecp256r1Sha256,
        &sub,
        &["x".into()],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        jwt_parts(&token).0,
        serde_json::json!({"alg": "ES256", "typ": "JWT"})
    );

    // Refusals.
    let ed = Key::ephemeral("ed", KeyKind::Ed25519).unwrap();
    let one = vec!["x".to_string()];
    let e = mint_jwt(
        &engine,
        ed,
        None,
        Scheme::Ed25519,
        &sub,
        &one,
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        e,
        SvidError::UnsupportedJwtScheme(Scheme::Ed25519)
    ));
    let e = mint_jwt(
        &engine,
        key.clone(),
        None,
        Scheme::EcdsaSecp256r1Sha256,
        &sub,
        &[],
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SvidError::EmptyAudience));
    // Bounded: 32 values of up to 1 KiB each.
    let many: Vec<String> = (0..33).map(|i| format!("aud-{i}")).collect();
    let long = vec!["a".repeat(1025)];
    for aud in [&many, &long] {
        let e = mint_jwt(
            &engine,
            key.clone(),
            None,
            Scheme::EcdsaSecp256r1Sha256,
            &sub,
            aud,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, SvidError::AudienceTooLarge { .. }), "{e}");
        assert_eq!(e.code(), "jwt");
    }
    let most: Vec<String> = (0..32)
        .map(|i| format!("{i}{}", "a".repeat(1020)))
        .collect();
    let token = mint_jwt(
        &engine,
        key.clone(),
        None,
        Scheme::EcdsaSecp256r1Sha256,
        &sub,
        &most,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(token.split('.').count(), 3);
    let e = mint_jwt(
        &engine,
        key.clone(),
        None,
        Scheme::RsaPkcs1Sha256,
        &sub,
        &one,
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SvidError::SchemeMismatch { .. }));
    let e = mint_jwt(
        &engine,
        key,
        None,
        Scheme::EcdsaSecp256r1Sha256,
        &sub,
        &one,
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SvidError::ZeroTtl));
}
