//! DNS names in X.509-SVIDs from the issuance API are allowed per caller
//! (`[[issuance.callers]]` `allowed_dns_suffixes`, none by default): a real
//! `sigmux serve`, CSRs from `openssl req`, curl with client certificates.

use std::path::Path;

mod common;
use common::*;

/// A CA for example.org and an issuance listener with two callers:
/// `trainer` (`spiffe://example.org/trainer`, IDs under `ns/training`, no
/// DNS suffix) and `prod` (`spiffe://example.org/prod-issuer`, IDs under
/// `ns/prod`, DNS names under `prod.svc`). Returns the server and the API's
/// base URL.
fn setup(dir: &Path) -> (ServerProcess, String) {
    ca(dir, "ca");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "trainer", "URI:spiffe://example.org/trainer");
    leaf(dir, "ca", "prod", "URI:spiffe://example.org/prod-issuer");
    std::fs::write(
        dir.join("sigmux.toml"),
        "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_ca = \"ca.pem\"\nmax_ttl_seconds = 600\n\
         [[issuance.callers]]\nid = \"spiffe://example.org/trainer\"\n\
         allowed_prefixes = [\"spiffe://example.org/ns/training\"]\n\
         [[issuance.callers]]\nid = \"spiffe://example.org/prod-issuer\"\n\
         allowed_prefixes = [\"spiffe://example.org/ns/prod\"]\n\
         allowed_dns_suffixes = [\"prod.svc\"]\n",
    )
    .unwrap();
    sigmux(dir, &["ca", "init", "--trust-domain", "example.org"]);
    let (server, addr) = start_server(dir);
    let base = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let (code, bundle) = curl(
        dir,
        Some("prod"),
        "GET",
        &format!("{base}/v1/bundle.pem"),
        None,
    );
    assert_eq!(code, 200, "{bundle}");
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    (server, base)
}

/// Posts a batch as `who`; returns its results.
fn batch(dir: &Path, base: &str, who: &str, items: serde_json::Value) -> Vec<serde_json::Value> {
    let body = serde_json::json!({ "items": items }).to_string();
    let (code, text) = curl(
        dir,
        Some(who),
        "POST",
        &format!("{base}/v1/x509svids:batch"),
        Some(&body),
    );
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    v["results"].as_array().unwrap().clone()
}

/// The SVID of an issued item (checked against the trust bundle) and its
/// subjectAltName as `openssl x509 -ext subjectAltName` prints it.
fn svid_san(dir: &Path, result: &serde_json::Value, name: &str) -> String {
    assert_eq!(result["status"], "ok", "{result}");
    let chain = result["svid_chain_pem"].as_str().unwrap();
    const END: &str = "-----END CERTIFICATE-----\n";
    let leaf_end = chain.find(END).unwrap() + END.len();
    std::fs::write(dir.join(format!("{name}.svid.pem")), &chain[..leaf_end]).unwrap();
    std::fs::write(dir.join(format!("{name}.chain.pem")), chain).unwrap();
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            &format!("{name}.chain.pem"),
            &format!("{name}.svid.pem"),
        ],
    );
    assert!(out.contains(": OK"), "{out}");
    openssl(
        dir,
        &[
            "x509",
            "-in",
            &format!("{name}.svid.pem"),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    )
}

/// The audit log's records, parsed, after checking its chain.
fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let path = dir.join("data/audit.log");
    sigmux::audit::verify(&path).unwrap();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records of `event` for `spiffe_id`.
fn records_of<'a>(
    records: &'a [serde_json::Value],
    event: &str,
    spiffe_id: &str,
) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["event"] == event && r["spiffe_id"] == spiffe_id)
        .collect()
}

#[test]
fn a_caller_without_dns_suffixes_gets_no_dns_name_and_the_rest_of_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, base) = setup(dir);
    let csr = workload_csr(dir, "w");
    let hijack = "spiffe://example.org/ns/training/hijack";
    let plain = "spiffe://example.org/ns/training/plain";
    let results = batch(
        dir,
        &base,
        "trainer",
        serde_json::json!([
            {"csr": csr, "spiffe_id": hijack, "dns_names": ["www.google.com"]},
            {"csr": csr, "spiffe_id": plain, "ttl_seconds": 300},
            {"csr": csr, "spiffe_id": hijack, "dns_names": ["localhost"]},
        ]),
    );
    assert_eq!(results.len(), 3, "{results:?}");
    for (r, name) in [(&results[0], "www.google.com"), (&results[2], "localhost")] {
        assert_eq!(r["status"], "error", "{r}");
        assert_eq!(r["code"], "forbidden", "{r}");
        let message = r["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("'{name}'"))
                && message.contains("issuance.callers[0].allowed_dns_suffixes"),
            "{message}"
        );
    }
    // The other item of the batch is issued, with its URI SAN alone.
    let san = svid_san(dir, &results[1], "plain");
    assert!(san.contains(&format!("URI:{plain}")), "{san}");
    assert!(!san.contains("DNS:"), "{san}");

    // Both refusals are recorded with the name refused; the issued SVID's
    // record has no dns_names (it has none).
    let records = audit_records(dir);
    let refused = records_of(&records, "svid_refused", hijack);
    let names: Vec<_> = refused.iter().map(|r| r["dns_name"].clone()).collect();
    assert_eq!(names, ["www.google.com", "localhost"], "{refused:?}");
    assert!(
        refused.iter().all(|r| r["code"] == "forbidden"),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .all(|r| r["caller"] == "spiffe://example.org/trainer"),
        "{refused:?}"
    );
    let issued = records_of(&records, "svid_issue", plain);
    assert_eq!(issued.len(), 1, "{records:?}");
    assert!(issued[0].get("dns_names").is_none(), "{}", issued[0]);
    assert!(records_of(&records, "svid_issue", hijack).is_empty());
}

#[test]
fn a_caller_gets_dns_names_under_its_suffixes_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, base) = setup(dir);
    let csr = workload_csr(dir, "w");
    let id = |n: &str| format!("spiffe://example.org/ns/prod/{n}");
    let results = batch(
        dir,
        &base,
        "prod",
        serde_json::json!([
            {"csr": csr, "spiffe_id": id("web"), "dns_names": ["a.prod.svc", "prod.svc"]},
            {"csr": csr, "spiffe_id": id("evil"), "dns_names": ["evilprod.svc"]},
            {"csr": csr, "spiffe_id": id("google"), "dns_names": ["www.google.com"]},
            {"csr": csr, "spiffe_id": id("mixed"), "dns_names": ["b.prod.svc", "prod.svc.evil.com"]},
            {"csr": csr, "spiffe_id": id("upper"), "dns_names": ["API.Prod.SVC"]},
            {"csr": csr, "spiffe_id": id("wild"), "dns_names": ["*.prod.svc"]},
        ]),
    );
    assert_eq!(results.len(), 6, "{results:?}");

    let san = svid_san(dir, &results[0], "web");
    assert!(san.contains(&format!("URI:{}", id("web"))), "{san}");
    assert!(
        san.contains("DNS:a.prod.svc") && san.contains("DNS:prod.svc"),
        "{san}"
    );
    for (i, name) in [
        (1, "evilprod.svc"),
        (2, "www.google.com"),
        (3, "prod.svc.evil.com"),
    ] {
        let r = &results[i];
        assert_eq!(
            (&r["status"], &r["code"]),
            (&"error".into(), &"forbidden".into()),
            "{r}"
        );
        let message = r["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("'{name}'"))
                && message.contains("issuance.callers[1].allowed_dns_suffixes"),
            "{message}"
        );
    }
    // Names are compared and issued lowercase.
    let san = svid_san(dir, &results[4], "upper");
    assert!(san.contains("DNS:api.prod.svc"), "{san}");
    // Wildcards stay refused as DNS names (the CA issues none).
    assert_eq!(results[5]["code"], "dns_name", "{}", results[5]);

    // The audit log shows which names each SVID carries, and which were
    // refused.
    let records = audit_records(dir);
    let issued = records_of(&records, "svid_issue", &id("web"));
    assert_eq!(issued.len(), 1, "{records:?}");
    assert_eq!(
        issued[0]["dns_names"],
        serde_json::json!(["a.prod.svc", "prod.svc"]),
        "{}",
        issued[0]
    );
    assert_eq!(issued[0]["serial"], results[0]["serial"], "{}", issued[0]);
    let upper = records_of(&records, "svid_issue", &id("upper"));
    assert_eq!(upper[0]["dns_names"], serde_json::json!(["api.prod.svc"]));
    for (n, name) in [
        ("evil", "evilprod.svc"),
        ("google", "www.google.com"),
        ("mixed", "prod.svc.evil.com"),
    ] {
        let refused = records_of(&records, "svid_refused", &id(n));
        assert_eq!(refused.len(), 1, "{records:?}");
        assert_eq!(refused[0]["dns_name"], name, "{}", refused[0]);
        assert_eq!(refused[0]["code"], "forbidden", "{}", refused[0]);
    }
    assert!(records_of(&records, "svid_issue", &id("mixed")).is_empty());

    // The same names from a caller whose rule has no suffix are refused:
    // the suffixes are the prod caller's own.
    let results = batch(
        dir,
        &base,
        "trainer",
        serde_json::json!([
            {"csr": csr, "spiffe_id": "spiffe://example.org/ns/training/a", "dns_names": ["a.prod.svc"]},
        ]),
    );
    assert_eq!(results[0]["code"], "forbidden", "{}", results[0]);
}
