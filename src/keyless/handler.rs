//! What the keyless server does with one request, apart from the network:
//! decode, find the key and check the client may use it, map the opcode to
//! a scheme, hand the signature to the engine, encode the answer. Split in
//! a synchronous [`Handler::plan`] and [`Handler::finish`] around the
//! engine call, so the per-request cost can be measured on its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::auth::{ClientIdentity, Policy};
use super::metrics::{KeylessMetrics, LogThrottle};
use super::protocol::{self, ErrorCode, HashAlg as OpHash, Op, OpKind, Request, Response};
use crate::engine::{Engine, SignRequest, Signature};
use crate::error::Error;
use crate::keys::{Key, KeyId, KeyStore, Ski, is_ca_key_name};
use crate::scheme::{KeyKind, Scheme, SignInput, rsa_encoding};

/// The next step for a decoded request.
#[derive(Debug)]
pub enum Step {
    /// Answered without a signature (ping, errors).
    Done(Response),
    /// Needs this signature (or raw RSA output) from the engine.
    Sign(u32, SignRequest),
    /// Needs the raw RSA private operation, whose output is then stripped
    /// of PKCS#1 v1.5 encryption padding in constant time.
    Decrypt(u32, SignRequest),
}

/// Request handling shared by all connections of a listener.
pub struct Handler {
    engine: Arc<Engine>,
    keys: Arc<KeyStore>,
    /// Replaced whole at SIGHUP ([`Handler::set_policy`]); each request
    /// reads the one current when it is answered.
    policy: parking_lot::RwLock<Arc<Policy>>,
    /// The listener's metrics.
    pub metrics: Arc<KeylessMetrics>,
    /// Refusals are logged at `info` at most once per interval (each one at
    /// `debug`), since a client can send as many as it likes.
    refusal_log: LogThrottle,
    /// Likewise for signing failures (an overloaded engine fails every
    /// request past its queue).
    failure_log: LogThrottle,
}

impl Handler {
    /// A handler over the engine and key store, with its policy.
    pub fn new(engine: Arc<Engine>, keys: Arc<KeyStore>, policy: Policy) -> Handler {
        Handler {
            engine,
            keys,
            policy: parking_lot::RwLock::new(Arc::new(policy)),
            metrics: Arc::new(KeylessMetrics::default()),
            refusal_log: LogThrottle::default(),
            failure_log: LogThrottle::default(),
        }
    }

    /// Replaces the client rules: requests answered from now on, on new
    /// connections and open ones alike, are judged by `policy`.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write() = Arc::new(policy);
    }

    /// Whether the current rules name `who` at all (see [`Policy::names`]).
    pub fn names(&self, who: &ClientIdentity) -> bool {
        self.policy.read().names(who)
    }

    /// Decodes one request body and produces the encoded response frame.
    pub async fn answer(
        &self,
        header: &protocol::Header,
        body: &[u8],
        who: &ClientIdentity,
    ) -> Vec<u8> {
        let started = Instant::now();
        let (op_name, response) = match Request::decode(header, body) {
            Err(e) => ("malformed", Response::error(header.id, e.error_code())),
            Ok(req) => {
                let name = op_label(req.op);
                let response = match self.plan(req, who) {
                    Step::Done(r) => r,
                    Step::Sign(id, sign) => {
                        let result = self.engine.sign(sign).await;
                        self.finish(id, result, who)
                    }
                    Step::Decrypt(id, sign) => {
                        let result = self.engine.sign(sign).await;
                        self.finish_decrypt(id, result, who)
                    }
                };
                (name, response)
            }
        };
        let result = match &response.body {
            protocol::ResponseBody::Error(code) => error_label(*code),
            _ => "ok",
        };
        self.metrics.observe(op_name, result, started.elapsed());
        encode(header.id, &response)
    }

    /// Everything before the signature: opcode, key lookup and
    /// authorization, digest length.
    pub fn plan(&self, req: Request, who: &ClientIdentity) -> Step {
        let id = req.id;
        let done = |code| Step::Done(Response::error(id, code));
        let scheme_for: fn(KeyKind, OpKind) -> Option<Scheme> = |kind, op| match (op, kind) {
            (OpKind::SignRsaPkcs1(OpHash::Sha256), _) => Some(Scheme::RsaPkcs1Sha256),
            (OpKind::SignRsaPkcs1(OpHash::Sha384), _) => Some(Scheme::RsaPkcs1Sha384),
            (OpKind::SignRsaPkcs1(OpHash::Sha512), _) => Some(Scheme::RsaPkcs1Sha512),
            (OpKind::SignRsaPss(OpHash::Sha256), _) => Some(Scheme::RsaPssRsaeSha256),
            (OpKind::SignRsaPss(OpHash::Sha384), _) => Some(Scheme::RsaPssRsaeSha384),
            (OpKind::SignRsaPss(OpHash::Sha512), _) => Some(Scheme::RsaPssRsaeSha512),
            (OpKind::SignEcdsa(OpHash::Sha256), KeyKind::P256) => {
                Some(Scheme::EcdsaSecp256r1Sha256)
            }
            (OpKind::SignEcdsa(OpHash::Sha384), KeyKind::P384) => {
                Some(Scheme::EcdsaSecp384r1Sha384)
            }
            // Other digests (TLS 1.0-1.2 clients): ECDSA over the digest as
            // given, on the key's curve.
            (OpKind::SignEcdsa(_), KeyKind::P256) => Some(Scheme::EcdsaP256AnyDigest),
            (OpKind::SignEcdsa(_), KeyKind::P384) => Some(Scheme::EcdsaP384AnyDigest),
            (OpKind::SignEd25519, _) => Some(Scheme::Ed25519),
            _ => None,
        };
        let kind = req.op.kind();
        match kind {
            OpKind::Ping => return Step::Done(Response::pong(id, req.payload)),
            // RSA with the digests of TLS 1.0-1.2 that the signature schemes
            // do not cover: encoded here, signed by the raw operation.
            OpKind::SignRsaPkcs1(OpHash::Md5Sha1 | OpHash::Sha1 | OpHash::Sha224)
            | OpKind::RsaDecrypt
            | OpKind::RsaDecryptRaw => return self.plan_raw(req, kind, who),
            // ECDSA and PSS only with the digests sigmux signs with.
            OpKind::SignRsaPss(h)
                if !matches!(h, OpHash::Sha256 | OpHash::Sha384 | OpHash::Sha512) =>
            {
                return done(ErrorCode::BadOpcode);
            }
            OpKind::SignRsaPkcs1(_)
            | OpKind::SignRsaPss(_)
            | OpKind::SignEcdsa(_)
            | OpKind::SignEd25519 => {}
            _ if req.op.is_response() => return done(ErrorCode::UnexpectedOpcode),
            _ => return done(ErrorCode::BadOpcode),
        }
        let Some(key) = self.find_key(&req, who) else {
            return done(ErrorCode::KeyNotFound);
        };
        let Some(scheme) = scheme_for(key.kind(), kind).filter(|s| s.fits(key.kind())) else {
            return done(ErrorCode::Crypto);
        };
        let input = match scheme.hash() {
            None if matches!(kind, OpKind::SignEcdsa(h) if h.digest_len() != req.payload.len()) => {
                return done(ErrorCode::Format);
            }
            None => SignInput::Message(req.payload),
            Some(h) if h.len() == req.payload.len() => SignInput::Digest(req.payload),
            Some(_) => return done(ErrorCode::Format),
        };
        Step::Sign(id, SignRequest::new(key, scheme, input))
    }

    /// Plans an operation on the raw RSA private operation: decryption, or
    /// a PKCS#1 v1.5 signature with a legacy digest encoded here.
    fn plan_raw(&self, req: Request, kind: OpKind, who: &ClientIdentity) -> Step {
        let id = req.id;
        let done = |code| Step::Done(Response::error(id, code));
        let Some(key) = self.find_key(&req, who) else {
            return done(ErrorCode::KeyNotFound);
        };
        let Some(k) = key.kind().rsa_bits().map(|b| b as usize / 8) else {
            return done(ErrorCode::Crypto);
        };
        let input = match kind {
            OpKind::RsaDecrypt | OpKind::RsaDecryptRaw => {
                if req.payload.len() != k {
                    return done(ErrorCode::Format);
                }
                // A ciphertext >= n is not one (public facts only: no oracle).
                if crate::engine::check::admit_input(&key, Scheme::RsaRaw, &req.payload).is_err() {
                    return done(ErrorCode::Crypto);
                }
                req.payload
            }
            OpKind::SignRsaPkcs1(h) => {
                if req.payload.len() != h.digest_len() {
                    return done(ErrorCode::Format);
                }
                let t = match legacy_digest_info(h) {
                    Some(prefix) => [prefix, &req.payload].concat(),
                    None => req.payload,
                };
                match rsa_encoding::pkcs1_v15_raw(&t, k) {
                    Some(em) => em,
                    None => return done(ErrorCode::Crypto),
                }
            }
            _ => return done(ErrorCode::BadOpcode),
        };
        let sign = SignRequest::new(key, Scheme::RsaRaw, SignInput::Message(input));
        if kind == OpKind::RsaDecrypt {
            Step::Decrypt(id, sign)
        } else {
            Step::Sign(id, sign)
        }
    }

    /// The answer for a finished PKCS#1 v1.5 decryption: the plaintext, or
    /// one error for every padding failure.
    pub fn finish_decrypt(
        &self,
        id: u32,
        result: crate::Result<Signature>,
        who: &ClientIdentity,
    ) -> Response {
        match result {
            // The padded plaintext (a premaster secret, say) is wiped once
            // the answer holds its payload.
            Ok(raw) => {
                match rsa_encoding::pkcs1_v15_unpad_encryption(&zeroize::Zeroizing::new(raw.bytes))
                {
                    Some(m) => Response::payload(id, m),
                    None => Response::error(id, ErrorCode::Crypto),
                }
            }
            Err(e) => self.finish(id, Err(e), who),
        }
    }

    /// The answer for a finished signature.
    pub fn finish(
        &self,
        id: u32,
        result: crate::Result<Signature>,
        who: &ClientIdentity,
    ) -> Response {
        match result {
            Ok(sig) => Response::payload(id, sig.bytes),
            Err(Error::WrongDigestLength { .. } | Error::DigestNotAllowed(_)) => {
                Response::error(id, ErrorCode::Format)
            }
            Err(Error::SchemeNotValidForKey { .. }) => Response::error(id, ErrorCode::Crypto),
            Err(e) => {
                match self.failure_log.allow() {
                    Some(held_back) => tracing::warn!(
                        client = %who.label(), error = %e, held_back,
                        "keyless signing failed (more within 10 s at debug; overload in sigmux_engine_overloaded_total)"
                    ),
                    None => {
                        tracing::debug!(client = %who.label(), error = %e, "keyless signing failed")
                    }
                }
                Response::error(id, ErrorCode::Internal)
            }
        }
    }

    /// The key the request names, if it exists and the client may use it.
    /// Both cases answer "key not found", so a client cannot probe which
    /// keys exist. The CA's own keys are never used, whatever the client
    /// rules say: a signature (or raw RSA operation) with one would let the
    /// client forge certificates. The legacy certificate digest item is
    /// matched against the key's KeyId (SHA-256 of its
    /// SubjectPublicKeyInfo).
    fn find_key(&self, req: &Request, who: &ClientIdentity) -> Option<Arc<Key>> {
        let key = match (req.ski, req.digest) {
            (Some(ski), _) => self.keys.by_ski(&Ski(ski)),
            (None, Some(d)) => self.keys.by_id(&KeyId(d)),
            (None, None) => None,
        };
        match key {
            Some(k) if !is_ca_key_name(k.name()) && self.policy.read().allows(who, k.name()) => {
                Some(k)
            }
            _ => {
                self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                // The key as the client named it: by SKI, else by the
                // certificate digest item.
                let ski = match (req.ski, req.digest) {
                    (Some(ski), _) => hex::encode(ski),
                    (None, Some(d)) => format!("digest:{}", hex::encode(d)),
                    (None, None) => "none".into(),
                };
                match self.refusal_log.allow() {
                    Some(held_back) => tracing::info!(
                        client = %who.label(), %ski, held_back,
                        "keyless request for a key the client may not use (or that does not exist); \
                         further refusals are logged at debug for 10 s and counted in sigmux_keyless_refused_total"
                    ),
                    None => {
                        tracing::debug!(client = %who.label(), %ski, "keyless request for a key the client may not use (or that does not exist)")
                    }
                }
                None
            }
        }
    }
}

/// The DigestInfo prefix for the legacy digests (none for MD5‖SHA-1, which
/// TLS 1.0/1.1 sign bare).
fn legacy_digest_info(h: OpHash) -> Option<&'static [u8]> {
    match h {
        OpHash::Sha1 => Some(&[
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ]),
        OpHash::Sha224 => Some(&[
            0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x04, 0x05, 0x00, 0x04, 0x1c,
        ]),
        _ => None,
    }
}

/// Encodes a response; one too large to encode becomes an internal error.
pub fn encode(id: u32, response: &Response) -> Vec<u8> {
    response.encode().unwrap_or_else(|_| {
        Response::error(id, ErrorCode::Internal)
            .encode()
            .unwrap_or_default()
    })
}

fn op_label(op: Op) -> &'static str {
    match op.kind() {
        OpKind::SignRsaPkcs1(_) => "rsa_sign",
        OpKind::SignRsaPss(_) => "rsa_pss_sign",
        OpKind::SignEcdsa(_) => "ecdsa_sign",
        OpKind::SignEd25519 => "ed25519_sign",
        OpKind::RsaDecrypt => "rsa_decrypt",
        OpKind::RsaDecryptRaw => "rsa_decrypt_raw",
        OpKind::Ping => "ping",
        OpKind::Other => "other",
    }
}

/// The `result` label of `sigmux_keyless_requests_total` for an error
/// answer; the server uses it too for the answers it gives before a request
/// reaches the handler.
pub(super) fn error_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NoError => "ok",
        ErrorCode::Crypto => "crypto_error",
        ErrorCode::KeyNotFound => "key_not_found",
        ErrorCode::Read => "read_error",
        ErrorCode::VersionMismatch => "version_mismatch",
        ErrorCode::BadOpcode => "bad_opcode",
        ErrorCode::UnexpectedOpcode => "unexpected_opcode",
        ErrorCode::Format => "format_error",
        ErrorCode::Internal => "internal_error",
        ErrorCode::CertNotFound => "cert_not_found",
        ErrorCode::Expired => "expired",
        ErrorCode::RemoteConfiguration => "remote_configuration",
        ErrorCode::Unknown(_) => "unknown",
    }
}
