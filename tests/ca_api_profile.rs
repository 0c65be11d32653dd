//! The issuance API against the SPIFFE profiles, end to end: CSRs made by
//! `openssl req` (RSA-2048, P-256, Ed25519) are issued in one batch through
//! `sigmux serve`; every X.509-SVID verifies with `openssl verify` against
//! `GET /v1/bundle.pem`, parses with the `spiffe` crate and is checked field
//! by field with `x509-parser` against X509-SVID.md; a JWT-SVID verifies
//! against the JWKS bundle; bad items each get their own error while the good
//! items of the same batch are issued; the request limits answer JSON.

use std::path::Path;

use base64::Engine as _;
use x509_parser::prelude::*;

mod common;
use common::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `openssl req` with a fresh key (`-newkey SPEC`, extra `-pkeyopt`s):
/// writes `name.key` (PKCS#8 PEM) and `name.csr`, returns the CSR PEM.
fn csr(dir: &Path, name: &str, newkey: &[&str]) -> String {
    let key = format!("{name}.key");
    let out = format!("{name}.csr");
    let mut args = vec!["req", "-new", "-nodes", "-newkey"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&["-keyout", &key, "-subj", "/CN=ignored", "-out", &out]);
    openssl(dir, &args);
    std::fs::read_to_string(dir.join(&out)).unwrap()
}

fn pem_to_der(pem_text: &str) -> Vec<u8> {
    let body: String = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The PEM blocks of a chain, each as DER.
fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN") {
            cur = Some(String::new());
        } else if line.starts_with("-----END") {
            out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(cur.take().unwrap())
                    .unwrap(),
            );
        } else if let Some(c) = cur.as_mut() {
            c.push_str(line.trim());
        }
    }
    out
}

fn b64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64url ({e}): {s}"))
}

fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// Checks one X.509-SVID (leaf + intermediate chain) against X509-SVID.md.
fn check_svid_profile(chain: &[Vec<u8>], id: &str, dns: &[&str], rsa: bool, ttl: i64) {
    let (rest, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert!(rest.is_empty());
    let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
    assert_eq!(leaf.version(), X509Version::V3);
    assert_eq!(leaf.issuer(), issuer.subject());

    // Exactly one URI SAN, the SPIFFE ID; the DNS SANs asked for.
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("subjectAltName");
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [id]);
    let mut names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    let mut want = dns.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);

    // keyUsage: critical, digitalSignature (+ keyEncipherment for RSA),
    // never keyCertSign or cRLSign.
    let ku = leaf.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical, "keyUsage must be critical");
    assert!(ku.value.digital_signature());
    assert_eq!(ku.value.key_encipherment(), rsa);
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());
    assert!(!ku.value.key_agreement());

    // EKU: serverAuth and clientAuth.
    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any);

    // basicConstraints CA=false (the spec: MUST be set false).
    let bc = leaf.basic_constraints().unwrap().expect("basicConstraints");
    assert!(!bc.value.ca);
    assert!(bc.value.path_len_constraint.is_none());

    // SKI, and an AKI naming the intermediate's key.
    let leaf_ski = ski(&leaf).expect("subjectKeyIdentifier");
    assert!(!leaf_ski.is_empty());
    assert_eq!(
        aki(&leaf).expect("authorityKeyIdentifier"),
        ski(&issuer).unwrap()
    );
    assert_ne!(leaf_ski, ski(&issuer).unwrap());

    // A positive serial of at most 20 octets with real entropy.
    let serial = leaf.tbs_certificate.raw_serial();
    assert!(
        serial[0] & 0x80 == 0,
        "serial must be positive: {serial:02x?}"
    );
    assert!(serial.len() <= 20 && serial.len() >= 8, "{serial:02x?}");

    // Validity: notBefore a little back (clock skew), notAfter by the TTL
    // and within the intermediate's.
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    let t = now();
    assert!(nb <= t && nb >= t - 3600, "notBefore {nb} vs now {t}");
    assert!(
        na > t && na <= t + ttl + 5,
        "notAfter {na} vs now {t} + {ttl}"
    );
    assert!(na <= issuer.validity().not_after.timestamp());
    assert!(leaf.validity().is_valid());

    // The issuer is a CA with keyCertSign (X509-SVID.md, signing certs).
    let ibc = issuer.basic_constraints().unwrap().unwrap();
    assert!(ibc.value.ca);
    assert!(issuer.key_usage().unwrap().unwrap().value.key_cert_sign());
}

/// Verifies an ES256/ES384 JWT-SVID with the bundle's JWK matched by kid;
/// returns the claims.
fn verify_jwt(token: &str, jwks: &serde_json::Value) -> serde_json::Value {
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::ecdsa::EcdsaSig;
    use openssl::hash::{MessageDigest, hash};
    use openssl::nid::Nid;

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header = json(&String::from_utf8(b64url(parts[0])).unwrap());
    let claims = json(&String::from_utf8(b64url(parts[1])).unwrap());
    let kid = header["kid"].as_str().expect("kid in the JWT header");
    assert_eq!(header["typ"], "JWT");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "jwt-svid" && k["kid"] == kid)
        .unwrap_or_else(|| panic!("no jwt-svid key with kid {kid} in {jwks}"));
    assert_eq!(jwk["kty"], "EC", "{jwk}");
    let (nid, md, field, alg) = match jwk["crv"].as_str().unwrap() {
        "P-256" => (Nid::X9_62_PRIME256V1, MessageDigest::sha256(), 32, "ES256"),
        "P-384" => (Nid::SECP384R1, MessageDigest::sha384(), 48, "ES384"),
        c => panic!("curve {c}"),
    };
    assert_eq!(header["alg"], alg);
    let group = EcGroup::from_curve_name(nid).unwrap();
    let x = BigNum::from_slice(&b64url(jwk["x"].as_str().unwrap())).unwrap();
    let y = BigNum::from_slice(&b64url(jwk["y"].as_str().unwrap())).unwrap();
    let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y).unwrap();
    let sig = b64url(parts[2]);
    assert_eq!(sig.len(), 2 * field, "JWS ECDSA signatures are raw r||s");
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&sig[..field]).unwrap(),
        BigNum::from_slice(&sig[field..]).unwrap(),
    )
    .unwrap();
    let digest = hash(md, format!("{}.{}", parts[0], parts[1]).as_bytes()).unwrap();
    assert!(sig.verify(&digest, &key).unwrap(), "JWT signature");
    // A changed payload does not verify.
    let digest = hash(md, format!("{}.{}x", parts[0], parts[1]).as_bytes()).unwrap();
    assert!(!sig.verify(&digest, &key).unwrap());
    claims
}

fn post_batch(dir: &Path, url: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = curl(dir, Some("caller"), "POST", url, Some(body));
    (code, json(&text))
}

#[test]
fn issuance_api_spiffe_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "ca");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "caller", "URI:spiffe://example.org/issuer");
    std::fs::write(
        dir.join("sigmux.toml"),
        "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_ca = \"ca.pem\"\nmax_items = 16\nmax_ttl_seconds = 600\n\
         [[issuance.callers]]\nid = \"spiffe://example.org/issuer\"\n\
         allowed_prefixes = [\"spiffe://example.org/ns/prod\"]\n\
         allowed_dns_suffixes = [\"prod.svc\", \"api.example.org\"]\n",
    )
    .unwrap();
    sigmux(dir, &["ca", "init", "--trust-domain", "example.org"]);
    let (_server, addr) = start_server(dir);
    let base = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let batch_url = format!("{base}/v1/x509svids:batch");

    // One batch: RSA-2048, P-256 and Ed25519 CSRs from `openssl req`.
    let kinds: [(&str, &[&str], bool); 3] = [
        ("rsa", &["rsa:2048"], true),
        (
            "p256",
            &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            false,
        ),
        ("ed25519", &["ed25519"], false),
    ];
    let mut items = Vec::new();
    for (name, newkey, _) in &kinds {
        items.push(serde_json::json!({
            "csr": csr(dir, name, newkey),
            "spiffe_id": format!("spiffe://example.org/ns/prod/sa/{name}"),
            "dns_names": [format!("{name}.prod.svc"), "api.example.org"],
            "ttl_seconds": 300,
        }));
    }
    let (code, v) = post_batch(
        dir,
        &batch_url,
        &serde_json::json!({ "items": items }).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{v}");

    let (code, bundle) = curl(
        dir,
        Some("caller"),
        "GET",
        &format!("{base}/v1/bundle.pem"),
        None,
    );
    assert_eq!(code, 200, "{bundle}");
    std::fs::write(dir.join("bundle.pem"), &bundle).unwrap();
    let bundle_der: Vec<u8> = pem_blocks(&bundle).concat();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let x509_bundle = spiffe::X509Bundle::parse_from_der(td.clone(), &bundle_der).unwrap();
    assert!(!x509_bundle.authorities().is_empty());

    let mut serials = Vec::new();
    for ((name, _, rsa), r) in kinds.iter().zip(results) {
        assert_eq!(r["status"], "ok", "{name}: {r}");
        let chain_pem = r["svid_chain_pem"].as_str().unwrap();
        let chain = pem_blocks(chain_pem);
        assert_eq!(chain.len(), 2, "{name}: leaf + intermediate");
        let id = format!("spiffe://example.org/ns/prod/sa/{name}");

        // openssl verify against the bundle, for TLS client and server use.
        std::fs::write(dir.join(format!("{name}.chain.pem")), chain_pem).unwrap();
        std::fs::write(
            dir.join(format!("{name}.svid.pem")),
            der_to_pem("CERTIFICATE", &chain[0]),
        )
        .unwrap();
        for purpose in ["sslclient", "sslserver"] {
            let out = openssl(
                dir,
                &[
                    "verify",
                    "-CAfile",
                    "bundle.pem",
                    "-untrusted",
                    &format!("{name}.chain.pem"),
                    "-purpose",
                    purpose,
                    &format!("{name}.svid.pem"),
                ],
            );
            assert!(out.contains(": OK"), "{name} {purpose}: {out}");
        }

        // The spiffe crate parses it as an X.509-SVID (with its key).
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                &format!("{name}.key"),
                "-outform",
                "DER",
                "-out",
                &format!("{name}.key.der"),
            ],
        );
        let key_der = std::fs::read(dir.join(format!("{name}.key.der"))).unwrap();
        let svid = spiffe::X509Svid::parse_from_der(&chain.concat(), &key_der)
            .unwrap_or_else(|e| panic!("{name}: spiffe crate refused the SVID: {e}"));
        assert_eq!(svid.spiffe_id().to_string(), id);
        assert_eq!(svid.spiffe_id().trust_domain(), &td);
        assert_eq!(svid.cert_chain().len(), 2);
        assert_eq!(svid.leaf().as_bytes(), &chain[0][..]);
        // The intermediate is one of the bundle's authorities.
        assert!(
            x509_bundle
                .authorities()
                .iter()
                .any(|a| a.as_bytes() == &chain[1][..]),
            "{name}: intermediate not in the bundle"
        );

        // Field by field against X509-SVID.md.
        check_svid_profile(
            &chain,
            &id,
            &[&format!("{name}.prod.svc"), "api.example.org"],
            *rsa,
            300,
        );
        let serial = r["serial"].as_str().unwrap().to_lowercase();
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let raw = hex_of(leaf.tbs_certificate.raw_serial());
        assert_eq!(raw.trim_start_matches('0'), serial.trim_start_matches('0'));
        assert_eq!(
            r["expires_at"].as_i64().unwrap(),
            leaf.validity().not_after.timestamp()
        );
        serials.push(serial);
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 3, "serials are unique");

    // A JWT-SVID verifies against the JWKS bundle's key with its kid.
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &format!("{base}/v1/jwtsvids"),
        Some(
            r#"{"spiffe_id":"spiffe://example.org/ns/prod/sa/web","audience":["db","cache"],"ttl_seconds":60}"#,
        ),
    );
    assert_eq!(code, 200, "{text}");
    let token = json(&text)["token"].as_str().unwrap().to_string();
    let (code, jwks) = curl(
        dir,
        Some("caller"),
        "GET",
        &format!("{base}/v1/bundle"),
        None,
    );
    assert_eq!(code, 200, "{jwks}");
    let jwks = json(&jwks);
    let claims = verify_jwt(&token, &jwks);
    assert_eq!(claims["sub"], "spiffe://example.org/ns/prod/sa/web");
    let aud: Vec<&str> = claims["aud"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(aud, ["db", "cache"]);
    let (exp, iat) = (
        claims["exp"].as_i64().unwrap(),
        claims["iat"].as_i64().unwrap(),
    );
    let t = now();
    assert!(iat <= t + 1 && exp > t && exp <= t + 61, "{claims}");
    // The x509-svid entries of the JWKS carry exactly one certificate each.
    for k in jwks["keys"].as_array().unwrap() {
        if k["use"] == "x509-svid" {
            assert_eq!(k["x5c"].as_array().unwrap().len(), 1, "{k}");
        }
    }

    // One batch of bad items with good ones among them: each bad one gets
    // its own error, the good ones are issued.
    let good = |n: &str| csr(dir, n, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    let mut broken = pem_to_der(&csr(dir, "broken", &["rsa:2048"]));
    *broken.last_mut().unwrap() ^= 0x01;
    let broken = der_to_pem("CERTIFICATE REQUEST", &broken);
    let weak = csr(dir, "weak", &["rsa:1024"]);
    let long_id = format!("spiffe://example.org/ns/prod/{}", "a".repeat(2100));
    let prod = |p: &str| format!("spiffe://example.org/ns/prod/{p}");
    // (csr, spiffe id, expected code; None: issued)
    let cases: Vec<(String, String, Option<&str>)> = vec![
        (good("g1"), prod("good/1"), None),
        (broken, prod("broken"), Some("csr_bad_signature")),
        (weak, prod("weak"), Some("csr_key_policy")),
        (
            "this is not a CSR".into(),
            prod("garbage"),
            Some("csr_malformed"),
        ),
        (
            good("b1"),
            "spiffe://Example.org/ns/prod/a".into(),
            Some("spiffe_id_*"),
        ),
        (
            good("b2"),
            "https://example.org/ns/prod/a".into(),
            Some("spiffe_id_*"),
        ),
        (good("b3"), prod("a?x=1"), Some("spiffe_id_*")),
        (good("b4"), prod("a#frag"), Some("spiffe_id_*")),
        (good("b5"), prod("../a"), Some("spiffe_id_*")),
        (
            good("b6"),
            "spiffe://example.org/ns//prod/a".into(),
            Some("spiffe_id_*"),
        ),
        (good("b7"), prod("a/"), Some("spiffe_id_*")),
        (good("b8"), prod("%61"), Some("spiffe_id_*")),
        (
            good("b9"),
            "spiffe://other.org/ns/prod/a".into(),
            Some("spiffe_id_*"),
        ),
        (good("b10"), long_id, Some("spiffe_id_*")),
        (
            good("b11"),
            "spiffe://example.org/ns/dev/a".into(),
            Some("forbidden"),
        ),
        (good("g2"), prod("good/2"), None),
    ];
    let items: Vec<serde_json::Value> = cases
        .iter()
        .map(|(c, id, _)| serde_json::json!({"csr": c, "spiffe_id": id, "ttl_seconds": 120}))
        .collect();
    let (code, v) = post_batch(
        dir,
        &batch_url,
        &serde_json::json!({ "items": items }).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), cases.len(), "{v}");
    let mut messages = Vec::new();
    let mut id_codes: Vec<String> = Vec::new();
    for ((_, id, want), r) in cases.iter().zip(results) {
        let short: String = id.chars().take(60).collect();
        match want {
            None => {
                assert_eq!(r["status"], "ok", "{short}: {r}");
                let chain = pem_blocks(r["svid_chain_pem"].as_str().unwrap());
                check_svid_profile(&chain, id, &[], false, 120);
            }
            Some(code) => {
                assert_eq!(r["status"], "error", "{short}: {r}");
                if *code == "spiffe_id_*" {
                    let got = r["code"].as_str().unwrap();
                    assert!(got.starts_with("spiffe_id_"), "{short}: {r}");
                    // Each broken SPIFFE ID rule has a code of its own.
                    assert!(!id_codes.contains(&got.to_string()), "{short}: {got} twice");
                    id_codes.push(got.to_string());
                } else {
                    assert_eq!(r["code"], *code, "{short}: {r}");
                }
                let m = r["message"].as_str().unwrap().to_string();
                assert!(!m.is_empty(), "{short}");
                messages.push(m);
            }
        }
    }
    // Each broken rule is named by its own message.
    let mut distinct = messages.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), messages.len(), "{messages:#?}");

    // Too many items: 413 too_many_items.
    let item = serde_json::json!({"csr": "x", "spiffe_id": prod("a")});
    let seventeen = serde_json::json!({ "items": vec![item; 17] }).to_string();
    let (code, v) = post_batch(dir, &batch_url, &seventeen);
    assert_eq!(code, 413, "{v}");
    assert_eq!(v["error"]["code"], "too_many_items", "{v}");

    // An oversized body (limit: 16 items x 16 KiB + 64 KiB = 320 KiB; up to
    // twice that is read in full before the refusal): 413 with a
    // JSON error code, on both POST endpoints.
    let big =
        serde_json::json!({"items": [{"csr": "A".repeat(400 * 1024), "spiffe_id": prod("a")}]})
            .to_string();
    let (code, v) = post_batch(dir, &batch_url, &big);
    assert_eq!(code, 413, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large", "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    let big = serde_json::json!({"spiffe_id": prod("a"), "audience": ["a".repeat(400 * 1024)]})
        .to_string();
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &format!("{base}/v1/jwtsvids"),
        Some(&big),
    );
    assert_eq!(code, 413, "{text}");
    assert_eq!(json(&text)["error"]["code"], "body_too_large", "{text}");

    // Each refused request is in the audit log, with its caller and code,
    // and the chain holds.
    let log = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    let refused: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "request_refused")
        .collect();
    let codes: Vec<(&str, &str)> = refused
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            ("/v1/x509svids:batch", "too_many_items"),
            ("/v1/x509svids:batch", "body_too_large"),
            ("/v1/jwtsvids", "body_too_large"),
        ],
        "{log}"
    );
    assert!(
        refused
            .iter()
            .all(|r| r["caller"] == "spiffe://example.org/issuer" && r["status"] == 413)
    );
    sigmux::audit::verify(&dir.join("data/audit.log")).unwrap();

    // The server still answers after the refusals.
    let (code, _) = curl(
        dir,
        Some("caller"),
        "GET",
        &format!("{base}/v1/bundle.pem"),
        None,
    );
    assert_eq!(code, 200);
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
