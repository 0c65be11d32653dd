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
    /// Reads the identity from the client's end-entity certificate.
    pub fn from_cert(der: &[u8]) -> ClientIdentity {
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        let spiffe_id = openssl::x509::X509::from_der(der)
            .ok()
            .and_then(|c| c.subject_alt_names())
            .and_then(|sans| {
                sans.iter()
                    .filter_map(|n| n.uri().map(str::to_string))
                    .find(|u| u.starts_with("spiffe://"))
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

    /// Whether `who` may use the key named `key`. A client that no rule
    /// names may use nothing.
    pub fn allows(&self, who: &ClientIdentity, key: &str) -> bool {
        self.rules
            .iter()
            .filter(|r| match &r.client {
                ClientMatch::SpiffeId(id) => who.spiffe_id.as_deref() == Some(id.as_str()),
                ClientMatch::Fingerprint(f) => *f == who.fingerprint,
            })
            .any(|r| r.keys.iter().any(|k| k == "*" || k == key))
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
        assert_eq!(bob.label(), format!("sha256:{}", "02".repeat(32)));
    }
}
