//! Who may use which key: a client is known by the SPIFFE ID in its
//! certificate's URI SAN or by its certificate's SHA-256 fingerprint, and
//! the config lists the keys each may use.

use aws_lc_rs::digest;

/// The identity a client proved in the TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The `spiffe://` URI SAN of the client certificate, if any.
    pub spiffe_id: Option<String>,
    /// SHA-256 of the client certificate DER.
    pub fingerprint: [u8; 32],
}

impl ClientIdentity {
    /// Reads the identity from the client's end-entity certificate. An
    /// X.509-SVID has exactly one URI SAN: a certificate with several
    /// names no SPIFFE ID (which of them would it be?), only its
    /// fingerprint.
    pub fn from_cert(der: &[u8]) -> ClientIdentity {
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        let spiffe_id = openssl::x509::X509::from_der(der)
            .ok()
            .and_then(|c| c.subject_alt_names())
            .and_then(|sans| {
                let mut uris = sans.iter().filter_map(|n| n.uri().map(str::to_string));
                match (uris.next(), uris.next()) {
                    (Some(u), None) if u.starts_with("spiffe://") => Some(u),
                    _ => None,
                }
            });
        ClientIdentity {
            spiffe_id,
            fingerprint,
        }
    }

    /// A short form for logs: the SPIFFE ID, else the fingerprint.
    pub fn label(&self) -> String {
        self.spiffe_id
            .clone()
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(self.fingerprint)))
    }
}

/// How one rule names its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMatch {
    /// The exact SPIFFE ID.
    SpiffeId(String),
    /// The certificate fingerprint.
    Fingerprint([u8; 32]),
}

/// One rule: a client and the keys it may use.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Who.
    pub client: ClientMatch,
    /// Key names, or `*` for every key.
    pub keys: Vec<String>,
}

/// The authorization table.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// A policy from rules.
    pub fn new(rules: Vec<Rule>) -> Policy {
        Policy { rules }
    }

    /// How many rules it has.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether it has no rule (every client may use nothing).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `who` may use the key named `key`. A client that no rule
    /// names may use nothing.
    pub fn allows(&self, who: &ClientIdentity, key: &str) -> bool {
        self.rules_for(who)
            .any(|r| r.keys.iter().any(|k| k == "*" || k == key))
    }

    /// Whether some rule names `who` (by SPIFFE ID or fingerprint),
    /// whatever keys it lists: the listener serves only such clients. A
    /// named client whose keys do not exist (yet) is still served, since
    /// keys come and go at SIGHUP while the rule stays.
    pub fn names(&self, who: &ClientIdentity) -> bool {
        self.rules_for(who).next().is_some()
    }

    /// The rules that name `who`.
    fn rules_for<'a>(&'a self, who: &'a ClientIdentity) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| match &r.client {
            ClientMatch::SpiffeId(id) => who.spiffe_id.as_deref() == Some(id.as_str()),
            ClientMatch::Fingerprint(f) => *f == who.fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_id_or_fingerprint_and_nothing_else() {
        let alice = ClientIdentity {
            spiffe_id: Some("spiffe://td/alice".into()),
            fingerprint: [1; 32],
        };
        let bob = ClientIdentity {
            spiffe_id: None,
            fingerprint: [2; 32],
        };
        let p = Policy::new(vec![
            Rule {
                client: ClientMatch::SpiffeId("spiffe://td/alice".into()),
                keys: vec!["a".into()],
            },
            Rule {
                client: ClientMatch::Fingerprint([2; 32]),
                keys: vec!["*".into()],
            },
        ]);
        assert!(p.allows(&alice, "a"));
        assert!(!p.allows(&alice, "b"));
        assert!(p.allows(&bob, "anything"));
        let carol = ClientIdentity {
            spiffe_id: Some("spiffe://td/alice/x".into()),
            fingerprint: [3; 32],
        };
        assert!(!p.allows(&carol, "a"));
        assert!(p.names(&alice) && p.names(&bob) && !p.names(&carol));
        assert!(!Policy::default().names(&alice));
        assert_eq!(bob.label(), format!("sha256:{}", "02".repeat(32)));
    }

    /// A self-signed certificate with these URI SANs.
    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        use openssl::x509::{X509Builder, X509NameBuilder, extension::SubjectAlternativeName};
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "client").unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        if !uris.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for u in uris {
                san.uri(u);
            }
            b.append_extension(san.build(&b.x509v3_context(None, None)).unwrap())
                .unwrap();
        }
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        b.build().to_der().unwrap()
    }

    #[test]
    fn only_a_certificate_with_one_uri_san_has_a_spiffe_id() {
        let one = cert_with_uris(&["spiffe://td/issuer"]);
        assert_eq!(
            ClientIdentity::from_cert(&one).spiffe_id.as_deref(),
            Some("spiffe://td/issuer")
        );
        for uris in [
            &["spiffe://td/issuer", "spiffe://td/nobody"][..],
            &["https://td/x", "spiffe://td/issuer"][..],
            &["https://td/issuer"][..],
            &[][..],
        ] {
            let der = cert_with_uris(uris);
            let who = ClientIdentity::from_cert(&der);
            assert_eq!(who.spiffe_id, None, "{uris:?}");
            let mut fp = [0u8; 32];
            fp.copy_from_slice(digest::digest(&digest::SHA256, &der).as_ref());
            assert_eq!(who.fingerprint, fp, "fingerprint rules still apply");
        }
    }
}
