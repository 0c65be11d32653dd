//! A rustls signing key whose private half lives in sigmux.
//!
//! [`KeylessSigningKey`] implements rustls's `SigningKey`: it picks a
//! signature scheme that fits the key, and its `Signer` hashes the
//! handshake message, sends the digest (or, for Ed25519, the message) to
//! the keyless server through a [`KeylessClient`] and hands the signature
//! back to rustls. A rustls server then needs only its certificate chain
//! and the sigmux address; see [`certified_key`] and
//! `examples/keyless_https.rs`.

use std::fmt;
use std::sync::Arc;

use ::rustls::pki_types::pem::PemObject;
use ::rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use ::rustls::sign::{CertifiedKey, Signer, SigningKey};
use ::rustls::{SignatureAlgorithm, SignatureScheme};

use super::client::{ClientError, KeylessClient, op_for_scheme};
use crate::keys::Ski;
use crate::scheme::{Curve, Family, KeyKind, Scheme};

/// Schemes an RSA key offers, best first: PSS (required by TLS 1.3), then
/// PKCS#1 v1.5 for TLS 1.2 peers that want it.
const RSA_SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// The rustls schemes a key of `kind` can sign with, in order of preference.
pub fn schemes_for(kind: KeyKind) -> &'static [SignatureScheme] {
    match kind.family() {
        Family::Rsa => &RSA_SCHEMES,
        Family::Ecdsa(Curve::P256) => &[SignatureScheme::ECDSA_NISTP256_SHA256],
        Family::Ecdsa(Curve::P384) => &[SignatureScheme::ECDSA_NISTP384_SHA384],
        Family::Ed25519 => &[SignatureScheme::ED25519],
    }
}

/// The sigmux scheme for a rustls scheme, if sigmux signs with it.
pub fn scheme_from_rustls(s: SignatureScheme) -> Option<Scheme> {
    Some(match s {
        SignatureScheme::RSA_PKCS1_SHA256 => Scheme::RsaPkcs1Sha256,
        SignatureScheme::RSA_PKCS1_SHA384 => Scheme::RsaPkcs1Sha384,
        SignatureScheme::RSA_PKCS1_SHA512 => Scheme::RsaPkcs1Sha512,
        SignatureScheme::RSA_PSS_SHA256 => Scheme::RsaPssRsaeSha256,
        SignatureScheme::RSA_PSS_SHA384 => Scheme::RsaPssRsaeSha384,
        SignatureScheme::RSA_PSS_SHA512 => Scheme::RsaPssRsaeSha512,
        SignatureScheme::ECDSA_NISTP256_SHA256 => Scheme::EcdsaSecp256r1Sha256,
        SignatureScheme::ECDSA_NISTP384_SHA384 => Scheme::EcdsaSecp384r1Sha384,
        SignatureScheme::ED25519 => Scheme::Ed25519,
        _ => return None,
    })
}

/// A rustls `SigningKey` backed by a key held by a keyless server.
pub struct KeylessSigningKey {
    client: Arc<KeylessClient>,
    ski: [u8; 20],
    kind: KeyKind,
    spki: Option<Vec<u8>>,
}

impl fmt::Debug for KeylessSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeylessSigningKey")
            .field("ski", &hex::encode(self.ski))
            .field("kind", &self.kind)
            .finish()
    }
}

impl KeylessSigningKey {
    /// The key with Subject Key Identifier `ski`, of kind `kind`, reached
    /// through `client`.
    pub fn new(client: Arc<KeylessClient>, ski: [u8; 20], kind: KeyKind) -> KeylessSigningKey {
        KeylessSigningKey {
            client,
            ski,
            kind,
            spki: None,
        }
    }

    /// Records the key's SubjectPublicKeyInfo so rustls can check that a
    /// certificate matches it (`SigningKey::public_key`).
    pub fn with_public_key(mut self, spki_der: Vec<u8>) -> KeylessSigningKey {
        self.spki = Some(spki_der);
        self
    }
}

impl SigningKey for KeylessSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let chosen = schemes_for(self.kind)
            .iter()
            .copied()
            .find(|s| offered.contains(s))?;
        let scheme = scheme_from_rustls(chosen)?;
        Some(Box::new(KeylessSigner {
            client: self.client.clone(),
            ski: self.ski,
            rustls_scheme: chosen,
            scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.spki.as_deref().map(SubjectPublicKeyInfoDer::from)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.kind.family() {
            Family::Rsa => SignatureAlgorithm::RSA,
            Family::Ecdsa(_) => SignatureAlgorithm::ECDSA,
            Family::Ed25519 => SignatureAlgorithm::ED25519,
        }
    }
}

/// Signs with one scheme chosen by [`KeylessSigningKey`].
struct KeylessSigner {
    client: Arc<KeylessClient>,
    ski: [u8; 20],
    rustls_scheme: SignatureScheme,
    scheme: Scheme,
}

impl fmt::Debug for KeylessSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeylessSigner")
            .field("ski", &hex::encode(self.ski))
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl Signer for KeylessSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ::rustls::Error> {
        let payload = match self.scheme.hash() {
            Some(h) => h.digest(message),
            None => message.to_vec(),
        };
        let op = op_for_scheme(self.scheme);
        self.client
            .sign_blocking(self.ski, op, payload)
            .map_err(|e| {
                ::rustls::Error::General(format!("keyless {} signature failed: {e}", self.scheme))
            })
    }

    fn scheme(&self) -> SignatureScheme {
        self.rustls_scheme
    }
}

/// A rustls `CertifiedKey` for a certificate chain (PEM, leaf first) whose
/// key lives on the keyless server. Checks that the leaf certificate's
/// public key has SKI `ski` and fits `kind`, so a mismatch is reported here
/// rather than as failed handshakes. Use it with
/// `ServerConfig::builder().with_no_client_auth().with_cert_resolver(...)`
/// (for example through `rustls::sign::SingleCertAndKey`).
pub fn certified_key(
    chain_pem: &[u8],
    client: Arc<KeylessClient>,
    ski: [u8; 20],
    kind: KeyKind,
) -> Result<Arc<CertifiedKey>, ClientError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::Config(format!("certificate chain: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| ClientError::Config("certificate chain holds no certificate".into()))?;
    let spki = openssl::x509::X509::from_der(leaf)
        .and_then(|c| c.public_key())
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| ClientError::Config(format!("leaf certificate: {e}")))?;
    let leaf_ski =
        Ski::of_spki(&spki).map_err(|e| ClientError::Config(format!("leaf certificate: {e}")))?;
    if leaf_ski.0 != ski {
        return Err(ClientError::Config(format!(
            "leaf certificate's key has SKI {leaf_ski}, not the configured {}",
            hex::encode(ski)
        )));
    }
    let leaf_kind = leaf_kind(&spki)?;
    if leaf_kind.family() != kind.family() {
        return Err(ClientError::Config(format!(
            "leaf certificate holds a {leaf_kind} key, not the configured {kind}"
        )));
    }
    let key = KeylessSigningKey::new(client, ski, kind).with_public_key(spki);
    Ok(Arc::new(CertifiedKey::new(chain, Arc::new(key))))
}

/// The kind of the public key in a SubjectPublicKeyInfo.
fn leaf_kind(spki: &[u8]) -> Result<KeyKind, ClientError> {
    use openssl::pkey::{Id, PKey};
    let bad = |e: String| ClientError::Config(format!("leaf certificate key: {e}"));
    let key = PKey::public_key_from_der(spki).map_err(|e| bad(e.to_string()))?;
    match key.id() {
        Id::RSA => KeyKind::from_rsa_bits(key.bits())
            .ok_or_else(|| bad(format!("unsupported RSA size {}", key.bits()))),
        Id::EC => {
            let ec = key.ec_key().map_err(|e| bad(e.to_string()))?;
            match ec.group().curve_name() {
                Some(openssl::nid::Nid::X9_62_PRIME256V1) => Ok(KeyKind::P256),
                Some(openssl::nid::Nid::SECP384R1) => Ok(KeyKind::P384),
                other => Err(bad(format!("unsupported curve {other:?}"))),
            }
        }
        Id::ED25519 => Ok(KeyKind::Ed25519),
        other => Err(bad(format!("unsupported key type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    //! The keyless peer here is a TEST DOUBLE of the server: it answers the
    //! wire protocol over in-memory streams and signs with an in-process
    //! key through sigmux's CPU signing code, so these tests check the
    //! adapter (scheme choice, hashing, opcodes, signature formats) through
    //! complete rustls handshakes without a running `sigmux serve`.

    use std::time::Duration;

    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private, Public};
    use openssl::x509::{X509, X509Builder, X509NameBuilder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::backend::cpu::{CpuEngine, CpuKey};
    use crate::keyless::client::{Dialer, Settings, Stream};
    use crate::keyless::protocol::{
        ErrorCode, HEADER_LEN, HashAlg, OpKind, Request, Response, split_frame,
    };
    use crate::keys::Key;

    /// The sigmux scheme an opcode asks for (the test double's dispatch).
    fn scheme_of(op: crate::keyless::protocol::Op) -> Option<Scheme> {
        Some(match op.kind() {
            OpKind::SignRsaPkcs1(HashAlg::Sha256) => Scheme::RsaPkcs1Sha256,
            OpKind::SignRsaPkcs1(HashAlg::Sha384) => Scheme::RsaPkcs1Sha384,
            OpKind::SignRsaPkcs1(HashAlg::Sha512) => Scheme::RsaPkcs1Sha512,
            OpKind::SignRsaPss(HashAlg::Sha256) => Scheme::RsaPssRsaeSha256,
            OpKind::SignRsaPss(HashAlg::Sha384) => Scheme::RsaPssRsaeSha384,
            OpKind::SignRsaPss(HashAlg::Sha512) => Scheme::RsaPssRsaeSha512,
            OpKind::SignEcdsa(HashAlg::Sha256) => Scheme::EcdsaSecp256r1Sha256,
            OpKind::SignEcdsa(HashAlg::Sha384) => Scheme::EcdsaSecp384r1Sha384,
            OpKind::SignEd25519 => Scheme::Ed25519,
            _ => return None,
        })
    }

    /// Test double of the keyless server holding one key.
    async fn peer(mut s: tokio::io::DuplexStream, ski: [u8; 20], key: Arc<CpuKey>, kind: KeyKind) {
        let mut buf = Vec::new();
        loop {
            while let Ok(Some((h, len))) = split_frame(&buf) {
                let req = Request::decode(&h, &buf[HEADER_LEN..len]).unwrap();
                buf.drain(..len);
                let resp = match (req.op, scheme_of(req.op)) {
                    (crate::keyless::protocol::Op::Ping, _) => Response::pong(req.id, req.payload),
                    _ if req.ski != Some(ski) => Response::error(req.id, ErrorCode::KeyNotFound),
                    (_, Some(scheme)) if scheme.fits(kind) => {
                        match key.sign(CpuEngine::OpenSsl, scheme, &req.payload) {
                            Ok(sig) => Response::payload(req.id, sig),
                            Err(_) => Response::error(req.id, ErrorCode::Crypto),
                        }
                    }
                    _ => Response::error(req.id, ErrorCode::BadOpcode),
                };
                if s.write_all(&resp.encode().unwrap()).await.is_err() {
                    return;
                }
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    struct Fixture {
        kind: KeyKind,
        client: Arc<KeylessClient>,
        ski: [u8; 20],
        spki: Vec<u8>,
        cert_pem: Vec<u8>,
        cert: X509,
    }

    fn self_signed(spki: &[u8], secret: &PKey<Private>, kind: KeyKind) -> X509 {
        let public: PKey<Public> = PKey::public_key_from_der(spki).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "localhost").unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&public).unwrap();
        let serial = openssl::bn::BigNum::from_u32(7)
            .unwrap()
            .to_asn1_integer()
            .unwrap();
        b.set_serial_number(&serial).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let ctx = b.x509v3_context(None, None);
        let san = openssl::x509::extension::SubjectAlternativeName::new()
            .dns("localhost")
            .build(&ctx)
            .unwrap();
        b.append_extension(san).unwrap();
        let md = if kind == KeyKind::Ed25519 {
            MessageDigest::null()
        } else {
            MessageDigest::sha256()
        };
        b.sign(secret, md).unwrap();
        b.build()
    }

    async fn fixture(kind: KeyKind) -> Fixture {
        let key = Key::ephemeral("t", kind).unwrap();
        let cpu = Arc::new(CpuKey::load(&key).unwrap());
        let ski = Ski::of_spki(key.spki_der()).unwrap().0;
        let cert = self_signed(
            key.spki_der(),
            &key.secret().unwrap().to_openssl().unwrap(),
            kind,
        );
        let dialer: Dialer = Arc::new(move || {
            let cpu = cpu.clone();
            Box::pin(async move {
                let (c, s) = tokio::io::duplex(64 * 1024);
                tokio::spawn(peer(s, ski, cpu, kind));
                Ok(Box::new(c) as Box<dyn Stream>)
            })
        });
        let settings = Settings {
            addr: "test".into(),
            connections: 2,
            timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
        };
        let client = Arc::new(KeylessClient::with_dialer(dialer, settings).await.unwrap());
        Fixture {
            kind,
            client,
            ski,
            spki: key.spki_der().to_vec(),
            cert_pem: cert.to_pem().unwrap(),
            cert,
        }
    }

    fn verify(f: &Fixture, scheme: SignatureScheme, message: &[u8], sig: &[u8]) -> bool {
        let pk = f.cert.public_key().unwrap();
        let s = scheme_from_rustls(scheme).unwrap();
        let mut v = match s.hash() {
            None => openssl::sign::Verifier::new_without_digest(&pk).unwrap(),
            Some(h) => {
                let md = match h {
                    crate::scheme::HashAlg::Sha256 => MessageDigest::sha256(),
                    crate::scheme::HashAlg::Sha384 => MessageDigest::sha384(),
                    crate::scheme::HashAlg::Sha512 => MessageDigest::sha512(),
                };
                let mut v = openssl::sign::Verifier::new(md, &pk).unwrap();
                if s.is_pss() {
                    v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
                    v.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
                        .unwrap();
                }
                v
            }
        };
        v.verify_oneshot(sig, message).unwrap_or(false)
    }

    #[test]
    fn scheme_choice_follows_the_key_kind() {
        use SignatureScheme as S;
        let all = [
            S::ED25519,
            S::ECDSA_NISTP384_SHA384,
            S::ECDSA_NISTP256_SHA256,
            S::RSA_PKCS1_SHA256,
            S::RSA_PKCS1_SHA512,
            S::RSA_PSS_SHA512,
            S::RSA_PSS_SHA384,
        ];
        assert_eq!(
            schemes_for(KeyKind::Rsa2048).first(),
            Some(&S::RSA_PSS_SHA256)
        );
        for (kind, offered, want) in [
            (KeyKind::Rsa2048, &all[..], Some(S::RSA_PSS_SHA384)),
            (
                KeyKind::Rsa4096,
                &[S::RSA_PKCS1_SHA512, S::RSA_PKCS1_SHA256][..],
                Some(S::RSA_PKCS1_SHA256),
            ),
            (KeyKind::Rsa3072, &[S::ECDSA_NISTP256_SHA256][..], None),
            (KeyKind::P256, &all[..], Some(S::ECDSA_NISTP256_SHA256)),
            (KeyKind::P256, &[S::ECDSA_NISTP384_SHA384][..], None),
            (KeyKind::P384, &all[..], Some(S::ECDSA_NISTP384_SHA384)),
            (KeyKind::Ed25519, &all[..], Some(S::ED25519)),
            (KeyKind::Ed25519, &[][..], None),
        ] {
            let chosen = schemes_for(kind)
                .iter()
                .copied()
                .find(|s| offered.contains(s));
            assert_eq!(chosen, want, "{kind}");
        }
        for kind in KeyKind::all() {
            for s in schemes_for(*kind) {
                assert!(scheme_from_rustls(*s).unwrap().fits(*kind), "{kind} {s:?}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signer_produces_signatures_that_verify_for_every_scheme() {
        for kind in [
            KeyKind::Rsa2048,
            KeyKind::P256,
            KeyKind::P384,
            KeyKind::Ed25519,
        ] {
            let f = fixture(kind).await;
            let key = KeylessSigningKey::new(f.client.clone(), f.ski, f.kind);
            let expected = match kind.family() {
                Family::Rsa => SignatureAlgorithm::RSA,
                Family::Ecdsa(_) => SignatureAlgorithm::ECDSA,
                Family::Ed25519 => SignatureAlgorithm::ED25519,
            };
            assert_eq!(key.algorithm(), expected);
            assert!(key.public_key().is_none());
            for scheme in schemes_for(kind) {
                let signer = key.choose_scheme(&[*scheme]).unwrap();
                assert_eq!(signer.scheme(), *scheme);
                let message = b"the handshake transcript, more or less";
                let sig = signer.sign(message).unwrap();
                assert!(verify(&f, *scheme, message, &sig), "{kind} {scheme:?}");
                assert!(!verify(&f, *scheme, b"another message", &sig));
            }
            // A key the server does not hold fails with its error code.
            let other = KeylessSigningKey::new(f.client.clone(), [9; 20], f.kind);
            let err = other
                .choose_scheme(schemes_for(kind))
                .unwrap()
                .sign(b"m")
                .unwrap_err();
            assert!(err.to_string().contains("key not found"), "{err}");
        }
    }

    #[tokio::test]
    async fn certified_key_checks_the_certificate_matches() {
        let f = fixture(KeyKind::P256).await;
        let ck = certified_key(&f.cert_pem, f.client.clone(), f.ski, f.kind).unwrap();
        assert_eq!(ck.cert.len(), 1);
        assert_eq!(ck.key.public_key().unwrap().as_ref(), &f.spki[..]);
        ck.keys_match().unwrap();

        let err = certified_key(&f.cert_pem, f.client.clone(), [1; 20], f.kind).unwrap_err();
        assert!(err.to_string().contains("not the configured"), "{err}");
        let err =
            certified_key(&f.cert_pem, f.client.clone(), f.ski, KeyKind::Rsa2048).unwrap_err();
        assert!(err.to_string().contains("holds a p256 key"), "{err}");
        let err = certified_key(b"no pem here", f.client.clone(), f.ski, f.kind).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    /// A full rustls handshake whose server key lives behind the client.
    async fn handshake(f: &Fixture, version: &'static ::rustls::SupportedProtocolVersion) {
        let provider = Arc::new(::rustls::crypto::aws_lc_rs::default_provider());
        let ck = certified_key(&f.cert_pem, f.client.clone(), f.ski, f.kind).unwrap();
        let server = ::rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(::rustls::sign::SingleCertAndKey::from(ck)));
        let mut roots = ::rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(f.cert.to_der().unwrap()))
            .unwrap();
        let client = ::rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let srv = tokio::spawn(async move {
            let mut tls = acceptor.accept(b).await.unwrap();
            let mut got = [0u8; 4];
            tls.read_exact(&mut got).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.shutdown().await.unwrap();
            got
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, a).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pong");
        assert_eq!(&srv.await.unwrap(), b"ping");
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.protocol_version(), Some(version.version));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rustls_handshakes_complete_with_the_key_behind_keyless() {
        for kind in [
            KeyKind::P256,
            KeyKind::Rsa2048,
            KeyKind::P384,
            KeyKind::Ed25519,
        ] {
            let f = fixture(kind).await;
            for version in [&::rustls::version::TLS13, &::rustls::version::TLS12] {
                handshake(&f, version).await;
            }
        }
    }

    #[test]
    fn handshake_on_a_current_thread_runtime_does_not_deadlock() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let f = fixture(KeyKind::P256).await;
            handshake(&f, &::rustls::version::TLS13).await;
            handshake(&f, &::rustls::version::TLS12).await;
        });
    }
}
