//! Wire codec for Cloudflare's keyless protocol (the `gokeyless` protocol).
//!
//! A frame is an 8-byte header followed by a body made of TLV items:
//!
//! ```text
//! header: | major (1) | minor (1) | body length (2, BE) | request id (4, BE) |
//! item:   | tag (1)   | value length (2, BE)            | value ...          |
//! ```
//!
//! Values follow `protocol/protocol.go` and `protocol/protocol.md` of
//! cloudflare/gokeyless. The encoder pads every frame exactly like
//! gokeyless's `Operation.MarshalBinary` (a padding item that brings the frame
//! to 1024 bytes), so frames produced here are byte-identical to those of the
//! reference implementation for the same items in the same order.
//!
//! The module is deliberately I/O free: [`split_frame`] tells an async reader
//! how many buffered bytes make up the next frame, and the `decode` functions
//! work on borrowed slices. Decoding never panics, whatever the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 8;

/// Length of a TLV item header (tag + 2-byte length).
pub const ITEM_HEADER_LEN: usize = 3;

/// Major protocol version spoken by this codec; frames with any other major
/// version are rejected because their layout is not guaranteed.
pub const VERSION_MAJOR: u8 = 1;

/// Minor protocol version written by the encoder. gokeyless reserves it for
/// policy information and never checks it, so the decoder accepts any value.
pub const VERSION_MINOR: u8 = 0;

/// gokeyless pads frames up to this total size (header included) so that
/// request sizes do not leak which operation is being performed.
pub const PADDED_LEN: usize = 1024;

/// Largest body the 16-bit header length field can describe.
pub const MAX_BODY_LEN: usize = u16::MAX as usize;

/// Length of a Subject Key Identifier (SHA-1 of the public key bits).
pub const SKI_LEN: usize = 20;

/// Length of the legacy certificate digest (SHA-256 of the RSA modulus).
pub const DIGEST_LEN: usize = 32;

/// Item tags, as defined by gokeyless `protocol.go` / `protocol.md`.
pub mod tag {
    /// SHA-256 digest of the RSA modulus (legacy key selector).
    pub const CERTIFICATE_DIGEST: u8 = 0x01;
    /// Server name (SNI) of the proxied TLS handshake.
    pub const SERVER_NAME: u8 = 0x02;
    /// IPv4/IPv6 address of the TLS client.
    pub const CLIENT_IP: u8 = 0x03;
    /// Subject Key Identifier of the requested key.
    pub const SUBJECT_KEY_IDENTIFIER: u8 = 0x04;
    /// IPv4/IPv6 address of the proxied TLS server.
    pub const SERVER_IP: u8 = 0x05;
    /// Certificate ID of the requested key.
    pub const CERT_ID: u8 = 0x06;
    /// Operation (request) or status (response) opcode.
    pub const OPCODE: u8 = 0x11;
    /// Data to operate on, or the result.
    pub const PAYLOAD: u8 = 0x12;
    /// Name of the function to run for the custom opcode (0x24).
    pub const CUSTOM_FUNC_NAME: u8 = 0x13;
    /// Supplemental payload whose meaning is agreed out of band.
    pub const EXTRA: u8 = 0x14;
    /// Binary encoded Jaeger span context, for tracing.
    pub const JAEGER_SPAN: u8 = 0x15;
    /// Compliance region of the request.
    pub const COMPLIANCE_REGION: u8 = 0x17;
    /// Meaningless filler added to reach the padded frame size.
    pub const PADDING: u8 = 0x20;
}

/// Everything that can go wrong while framing, decoding or encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Fewer than [`HEADER_LEN`] bytes were given to [`Header::decode`].
    #[error("truncated header: {len} bytes, need 8")]
    TruncatedHeader {
        /// Bytes available.
        len: usize,
    },
    /// The major version is not 1. The id is kept so a server can still
    /// answer with [`ErrorCode::VersionMismatch`].
    #[error(
        "bad protocol version {major}.{minor} (request id {id:#010x}); only major version 1 is supported"
    )]
    BadVersion {
        /// Major version found.
        major: u8,
        /// Minor version found.
        minor: u8,
        /// Request id from the same header.
        id: u32,
    },
    /// The body handed to a decoder is not as long as its header says.
    #[error("body is {actual} bytes but the header declares {declared}")]
    BodyLengthMismatch {
        /// Length from the header.
        declared: usize,
        /// Length of the slice given.
        actual: usize,
    },
    /// One or two stray bytes at the end of the body: not enough for an item
    /// header.
    #[error("truncated item at body offset {offset}: {remaining} bytes left, item header needs 3")]
    TruncatedItem {
        /// Offset of the partial item in the body.
        offset: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// An item claims more value bytes than the body has left.
    #[error(
        "item {tag:#04x} at body offset {offset} has length {len}, which overruns the body ({available} bytes left)"
    )]
    ItemOverrun {
        /// Tag of the offending item.
        tag: u8,
        /// Offset of the item in the body.
        offset: usize,
        /// Declared value length.
        len: usize,
        /// Value bytes actually left in the body.
        available: usize,
    },
    /// A known item appears twice; gokeyless rejects this too, and accepting
    /// it would make "which one wins" an interoperability hazard.
    #[error("duplicate item {tag:#04x}")]
    DuplicateItem {
        /// Repeated tag.
        tag: u8,
    },
    /// The opcode item is not exactly one byte.
    #[error("opcode item has length {len}, expected 1")]
    BadOpcodeLength {
        /// Length found.
        len: usize,
    },
    /// No opcode item in the body.
    #[error("message has no opcode item")]
    MissingOpcode,
    /// An IP address item is neither 4 nor 16 bytes.
    #[error("IP address item {tag:#04x} has length {len}, expected 4 or 16")]
    BadIpLength {
        /// Tag of the item (client or server IP).
        tag: u8,
        /// Length found.
        len: usize,
    },
    /// The SKI item is not 20 bytes.
    #[error("SKI item has length {len}, expected 20")]
    BadSkiLength {
        /// Length found.
        len: usize,
    },
    /// The certificate digest item is not 32 bytes.
    #[error("certificate digest item has length {len}, expected 32")]
    BadDigestLength {
        /// Length found.
        len: usize,
    },
    /// A textual item (SNI, cert id, function name) is not valid UTF-8.
    #[error("item {tag:#04x} is not valid UTF-8")]
    InvalidUtf8 {
        /// Tag of the item.
        tag: u8,
    },
    /// An error response whose payload is not the single error-code byte.
    #[error("error response payload has length {len}, expected 1")]
    BadErrorPayload {
        /// Length found.
        len: usize,
    },
    /// A response carries an opcode that is not response, pong or error.
    #[error("unexpected opcode {op:#04x} in a response")]
    UnexpectedResponseOpcode {
        /// Opcode found.
        op: u8,
    },
    /// Encoding: an item value does not fit the 16-bit item length.
    #[error("item {tag:#04x} value of {len} bytes exceeds the 65535-byte item limit")]
    ItemTooLong {
        /// Tag of the item.
        tag: u8,
        /// Value length.
        len: usize,
    },
    /// Encoding: the body does not fit the 16-bit header length.
    #[error("frame body of {len} bytes exceeds the 65535-byte limit")]
    FrameTooLarge {
        /// Body length.
        len: usize,
    },
}

impl ProtocolError {
    /// The error code a server should answer with when a request fails to
    /// decode with this error.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadVersion { .. } => ErrorCode::VersionMismatch,
            _ => ErrorCode::Format,
        }
    }
}

/// The fixed 8-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Major version (1 for every frame this codec accepts).
    pub major: u8,
    /// Minor version (0 when written by this codec).
    pub minor: u8,
    /// Length of the body that follows the header.
    pub body_len: u16,
    /// Request id; a response echoes the id of its request.
    pub id: u32,
}

impl Header {
    /// A version 1.0 header.
    pub fn new(id: u32, body_len: u16) -> Header {
        Header {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            body_len,
            id,
        }
    }

    /// Serialises the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.major;
        out[1] = self.minor;
        out[2..4].copy_from_slice(&self.body_len.to_be_bytes());
        out[4..8].copy_from_slice(&self.id.to_be_bytes());
        out
    }

    /// Parses the first [`HEADER_LEN`] bytes of `buf`. The version is not
    /// checked here so that callers can still read the id of a frame they
    /// are about to reject.
    pub fn decode(buf: &[u8]) -> Result<Header, ProtocolError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(ProtocolError::TruncatedHeader { len: buf.len() });
        };
        Ok(Header {
            major: h[0],
            minor: h[1],
            body_len: u16::from_be_bytes([h[2], h[3]]),
            id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        })
    }

    /// Fails with [`ProtocolError::BadVersion`] unless the major version is 1.
    pub fn check_version(&self) -> Result<(), ProtocolError> {
        if self.major == VERSION_MAJOR {
            Ok(())
        } else {
            Err(ProtocolError::BadVersion {
                major: self.major,
                minor: self.minor,
                id: self.id,
            })
        }
    }

    /// Total frame length (header plus body).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.body_len)
    }
}

/// Finds the next complete frame at the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, and
/// `Ok(Some((header, frame_len)))` once `buf[..frame_len]` holds a whole
/// frame whose body is `buf[HEADER_LEN..frame_len]`. A wrong major version is
/// reported as soon as the header is in, because the rest of the stream
/// cannot be trusted to use this framing; the error carries the id.
pub fn split_frame(buf: &[u8]) -> Result<Option<(Header, usize)>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = Header::decode(buf)?;
    header.check_version()?;
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        return Ok(None);
    }
    Ok(Some((header, frame_len)))
}

/// Digest algorithm of the pre-hashed input of a signing opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// MD5 and SHA-1 concatenated (TLS 1.0/1.1).
    Md5Sha1,
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// Length of the digest the payload of a signing request must have.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Md5Sha1 => 36,
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }
}

/// What an opcode asks the key server to do, so that the server can map it
/// to a key type and signature scheme without matching on every opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// RSASSA-PKCS1-v1_5 signature over a digest.
    SignRsaPkcs1(HashAlg),
    /// RSASSA-PSS signature (salt length = hash length) over a digest.
    SignRsaPss(HashAlg),
    /// ECDSA signature over a digest.
    SignEcdsa(HashAlg),
    /// Ed25519 signature over the whole message (not pre-hashed).
    SignEd25519,
    /// RSA PKCS#1 v1.5 decryption.
    RsaDecrypt,
    /// Raw (unpadded) RSA decryption.
    RsaDecryptRaw,
    /// Liveness check; answered with a pong echoing the payload.
    Ping,
    /// Anything else (seal, RPC, custom, response opcodes, unknown).
    Other,
}

/// Opcodes, as defined by gokeyless `protocol.go`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// RSA PKCS#1 v1.5 decrypt (0x01).
    RsaDecrypt,
    /// RSA PKCS#1 v1.5 sign, MD5-SHA1 digest (0x02).
    RsaSignMd5Sha1,
    /// RSA PKCS#1 v1.5 sign, SHA-1 digest (0x03).
    RsaSignSha1,
    /// RSA PKCS#1 v1.5 sign, SHA-224 digest (0x04).
    RsaSignSha224,
    /// RSA PKCS#1 v1.5 sign, SHA-256 digest (0x05).
    RsaSignSha256,
    /// RSA PKCS#1 v1.5 sign, SHA-384 digest (0x06).
    RsaSignSha384,
    /// RSA PKCS#1 v1.5 sign, SHA-512 digest (0x07).
    RsaSignSha512,
    /// Raw RSA decrypt, no padding removal (0x08).
    RsaDecryptRaw,
    /// ECDSA sign, MD5-SHA1 digest (0x12).
    EcdsaSignMd5Sha1,
    /// ECDSA sign, SHA-1 digest (0x13).
    EcdsaSignSha1,
    /// ECDSA sign, SHA-224 digest (0x14).
    EcdsaSignSha224,
    /// ECDSA sign, SHA-256 digest (0x15).
    EcdsaSignSha256,
    /// ECDSA sign, SHA-384 digest (0x16).
    EcdsaSignSha384,
    /// ECDSA sign, SHA-512 digest (0x17).
    EcdsaSignSha512,
    /// Ed25519 sign of an arbitrary-length message (0x18).
    Ed25519Sign,
    /// Seal (encrypt) a blob such as a session ticket (0x21).
    Seal,
    /// Unseal a blob produced by [`Op::Seal`] (0x22).
    Unseal,
    /// Run an exported function on the server (0x23).
    Rpc,
    /// Run a configured custom function named by the custom-func-name item (0x24).
    Custom,
    /// RSASSA-PSS sign, SHA-256 digest (0x35).
    RsaPssSignSha256,
    /// RSASSA-PSS sign, SHA-384 digest (0x36).
    RsaPssSignSha384,
    /// RSASSA-PSS sign, SHA-512 digest (0x37).
    RsaPssSignSha512,
    /// Successful response (0xF0).
    Response,
    /// Ping request (0xF1).
    Ping,
    /// Pong response echoing a ping's payload (0xF2).
    Pong,
    /// Error response; the payload is one [`ErrorCode`] byte (0xFF).
    Error,
    /// Any other byte. Kept rather than rejected so the server can answer
    /// with [`ErrorCode::BadOpcode`] for the right request id.
    Unknown(u8),
}

impl Op {
    /// The opcode's wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Op::RsaDecrypt => 0x01,
            Op::RsaSignMd5Sha1 => 0x02,
            Op::RsaSignSha1 => 0x03,
            Op::RsaSignSha224 => 0x04,
            Op::RsaSignSha256 => 0x05,
            Op::RsaSignSha384 => 0x06,
            Op::RsaSignSha512 => 0x07,
            Op::RsaDecryptRaw => 0x08,
            Op::EcdsaSignMd5Sha1 => 0x12,
            Op::EcdsaSignSha1 => 0x13,
            Op::EcdsaSignSha224 => 0x14,
            Op::EcdsaSignSha256 => 0x15,
            Op::EcdsaSignSha384 => 0x16,
            Op::EcdsaSignSha512 => 0x17,
            Op::Ed25519Sign => 0x18,
            Op::Seal => 0x21,
            Op::Unseal => 0x22,
            Op::Rpc => 0x23,
            Op::Custom => 0x24,
            Op::RsaPssSignSha256 => 0x35,
            Op::RsaPssSignSha384 => 0x36,
            Op::RsaPssSignSha512 => 0x37,
            Op::Response => 0xF0,
            Op::Ping => 0xF1,
            Op::Pong => 0xF2,
            Op::Error => 0xFF,
            Op::Unknown(b) => b,
        }
    }

    /// What the opcode asks for.
    pub fn kind(self) -> OpKind {
        use HashAlg::*;
        match self {
            Op::RsaDecrypt => OpKind::RsaDecrypt,
            Op::RsaDecryptRaw => OpKind::RsaDecryptRaw,
            Op::RsaSignMd5Sha1 => OpKind::SignRsaPkcs1(Md5Sha1),
            Op::RsaSignSha1 => OpKind::SignRsaPkcs1(Sha1),
            Op::RsaSignSha224 => OpKind::SignRsaPkcs1(Sha224),
            Op::RsaSignSha256 => OpKind::SignRsaPkcs1(Sha256),
            Op::RsaSignSha384 => OpKind::SignRsaPkcs1(Sha384),
            Op::RsaSignSha512 => OpKind::SignRsaPkcs1(Sha512),
            Op::EcdsaSignMd5Sha1 => OpKind::SignEcdsa(Md5Sha1),
            Op::EcdsaSignSha1 => OpKind::SignEcdsa(Sha1),
            Op::EcdsaSignSha224 => OpKind::SignEcdsa(Sha224),
            Op::EcdsaSignSha256 => OpKind::SignEcdsa(Sha256),
            Op::EcdsaSignSha384 => OpKind::SignEcdsa(Sha384),
            Op::EcdsaSignSha512 => OpKind::SignEcdsa(Sha512),
            Op::RsaPssSignSha256 => OpKind::SignRsaPss(Sha256),
            Op::RsaPssSignSha384 => OpKind::SignRsaPss(Sha384),
            Op::RsaPssSignSha512 => OpKind::SignRsaPss(Sha512),
            Op::Ed25519Sign => OpKind::SignEd25519,
            Op::Ping => OpKind::Ping,
            Op::Seal
            | Op::Unseal
            | Op::Rpc
            | Op::Custom
            | Op::Response
            | Op::Pong
            | Op::Error
            | Op::Unknown(_) => OpKind::Other,
        }
    }

    /// True for opcodes only valid in responses; gokeyless answers such a
    /// request with [`ErrorCode::UnexpectedOpcode`] rather than
    /// [`ErrorCode::BadOpcode`].
    pub fn is_response(self) -> bool {
        matches!(self, Op::Response | Op::Pong | Op::Error)
    }
}

impl From<u8> for Op {
    fn from(b: u8) -> Op {
        match b {
            0x01 => Op::RsaDecrypt,
            0x02 => Op::RsaSignMd5Sha1,
            0x03 => Op::RsaSignSha1,
            0x04 => Op::RsaSignSha224,
            0x05 => Op::RsaSignSha256,
            0x06 => Op::RsaSignSha384,
            0x07 => Op::RsaSignSha512,
            0x08 => Op::RsaDecryptRaw,
            0x12 => Op::EcdsaSignMd5Sha1,
            0x13 => Op::EcdsaSignSha1,
            0x14 => Op::EcdsaSignSha224,
            0x15 => Op::EcdsaSignSha256,
            0x16 => Op::EcdsaSignSha384,
            0x17 => Op::EcdsaSignSha512,
            0x18 => Op::Ed25519Sign,
            0x21 => Op::Seal,
            0x22 => Op::Unseal,
            0x23 => Op::Rpc,
            0x24 => Op::Custom,
            0x35 => Op::RsaPssSignSha256,
            0x36 => Op::RsaPssSignSha384,
            0x37 => Op::RsaPssSignSha512,
            0xF0 => Op::Response,
            0xF1 => Op::Ping,
            0xF2 => Op::Pong,
            0xFF => Op::Error,
            other => Op::Unknown(other),
        }
    }
}

impl From<Op> for u8 {
    fn from(op: Op) -> u8 {
        op.to_u8()
    }
}

/// One-byte error codes carried in the payload of an [`Op::Error`] response,
/// as defined by gokeyless `protocol.go` (`Error`, numbered with iota).
/// Display strings match gokeyless's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ErrorCode {
    /// No error (0x00); never sent in an error response by gokeyless.
    #[error("no error")]
    NoError,
    /// Cryptographic operation failed (0x01).
    #[error("cryptography error")]
    Crypto,
    /// No key matches the request's SKI/SNI/server IP (0x02).
    #[error("key not found due to no matching SKI/SNI/ServerIP")]
    KeyNotFound,
    /// I/O read failure (0x03).
    #[error("read failure")]
    Read,
    /// Unsupported protocol version (0x04).
    #[error("version mismatch")]
    VersionMismatch,
    /// Unknown opcode in a request (0x05).
    #[error("bad opcode")]
    BadOpcode,
    /// Response opcode used in a request (0x06).
    #[error("unexpected opcode")]
    UnexpectedOpcode,
    /// Malformed message (0x07).
    #[error("malformed message")]
    Format,
    /// Internal error (0x08).
    #[error("internal error")]
    Internal,
    /// Certificate not found (0x09).
    #[error("certificate not found")]
    CertNotFound,
    /// Sealed blob can no longer be unsealed (0x0A).
    #[error("sealing key expired")]
    Expired,
    /// Remote key server misconfigured (0x0B).
    #[error("remote configuration error")]
    RemoteConfiguration,
    /// Any other byte; kept so a client can report what the server sent.
    #[error("unknown error code {0:#04x}")]
    Unknown(u8),
}

impl ErrorCode {
    /// The code's wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            ErrorCode::NoError => 0x00,
            ErrorCode::Crypto => 0x01,
            ErrorCode::KeyNotFound => 0x02,
            ErrorCode::Read => 0x03,
            ErrorCode::VersionMismatch => 0x04,
            ErrorCode::BadOpcode => 0x05,
            ErrorCode::UnexpectedOpcode => 0x06,
            ErrorCode::Format => 0x07,
            ErrorCode::Internal => 0x08,
            ErrorCode::CertNotFound => 0x09,
            ErrorCode::Expired => 0x0A,
            ErrorCode::RemoteConfiguration => 0x0B,
            ErrorCode::Unknown(b) => b,
        }
    }
}

impl From<u8> for ErrorCode {
    fn from(b: u8) -> ErrorCode {
        match b {
            0x00 => ErrorCode::NoError,
            0x01 => ErrorCode::Crypto,
            0x02 => ErrorCode::KeyNotFound,
            0x03 => ErrorCode::Read,
            0x04 => ErrorCode::VersionMismatch,
            0x05 => ErrorCode::BadOpcode,
            0x06 => ErrorCode::UnexpectedOpcode,
            0x07 => ErrorCode::Format,
            0x08 => ErrorCode::Internal,
            0x09 => ErrorCode::CertNotFound,
            0x0A => ErrorCode::Expired,
            0x0B => ErrorCode::RemoteConfiguration,
            other => ErrorCode::Unknown(other),
        }
    }
}

impl From<ErrorCode> for u8 {
    fn from(code: ErrorCode) -> u8 {
        code.to_u8()
    }
}

/// A decoded request (or one to be encoded).
///
/// Optional items are `None` when absent. Items whose tag this codec does
/// not know are skipped when decoding and so never appear here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request id, echoed by the response.
    pub id: u32,
    /// Requested operation.
    pub op: Op,
    /// Data to sign/decrypt/echo. Empty when the item is absent; an empty
    /// payload is not written, as in gokeyless.
    pub payload: Vec<u8>,
    /// Subject Key Identifier of the key to use.
    pub ski: Option<[u8; SKI_LEN]>,
    /// Legacy SHA-256 digest of the RSA modulus.
    pub digest: Option<[u8; DIGEST_LEN]>,
    /// SNI of the client's handshake.
    pub sni: Option<String>,
    /// Address of the TLS client.
    pub client_ip: Option<IpAddr>,
    /// Address the TLS client connected to.
    pub server_ip: Option<IpAddr>,
    /// Certificate id of the key to use.
    pub cert_id: Option<String>,
    /// Function name for [`Op::Custom`].
    pub custom_func_name: Option<String>,
    /// Supplemental payload, meaning agreed out of band.
    pub extra: Option<Vec<u8>>,
    /// Binary encoded Jaeger span context.
    pub jaeger_span: Option<Vec<u8>>,
    /// Compliance region, kept as raw bytes because its encoding is not
    /// specified by the protocol documentation.
    pub compliance_region: Option<Vec<u8>>,
}

impl Request {
    /// A request with only an opcode and a payload.
    pub fn new(id: u32, op: Op, payload: Vec<u8>) -> Request {
        Request {
            id,
            op,
            payload,
            ski: None,
            digest: None,
            sni: None,
            client_ip: None,
            server_ip: None,
            cert_id: None,
            custom_func_name: None,
            extra: None,
            jaeger_span: None,
            compliance_region: None,
        }
    }

    /// Encodes the whole frame, header included, padded like gokeyless.
    ///
    /// Items are written in gokeyless's order (opcode, payload, SKI, digest,
    /// client IP, server IP, SNI), followed by the newer items and padding.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let mut buf = start_frame();
        put_item(&mut buf, tag::OPCODE, &[self.op.to_u8()])?;
        if !self.payload.is_empty() {
            put_item(&mut buf, tag::PAYLOAD, &self.payload)?;
        }
        if let Some(ski) = &self.ski {
            put_item(&mut buf, tag::SUBJECT_KEY_IDENTIFIER, ski)?;
        }
        if let Some(digest) = &self.digest {
            put_item(&mut buf, tag::CERTIFICATE_DIGEST, digest)?;
        }
        if let Some(ip) = &self.client_ip {
            put_ip(&mut buf, tag::CLIENT_IP, ip)?;
        }
        if let Some(ip) = &self.server_ip {
            put_ip(&mut buf, tag::SERVER_IP, ip)?;
        }
        if let Some(sni) = &self.sni {
            put_item(&mut buf, tag::SERVER_NAME, sni.as_bytes())?;
        }
        if let Some(cert_id) = &self.cert_id {
            put_item(&mut buf, tag::CERT_ID, cert_id.as_bytes())?;
        }
        if let Some(name) = &self.custom_func_name {
            put_item(&mut buf, tag::CUSTOM_FUNC_NAME, name.as_bytes())?;
        }
        if let Some(extra) = &self.extra {
            put_item(&mut buf, tag::EXTRA, extra)?;
        }
        if let Some(span) = &self.jaeger_span {
            put_item(&mut buf, tag::JAEGER_SPAN, span)?;
        }
        if let Some(region) = &self.compliance_region {
            put_item(&mut buf, tag::COMPLIANCE_REGION, region)?;
        }
        finish_frame(buf, self.id)
    }

    /// Decodes a request body. `body` must be exactly the `header.body_len`
    /// bytes that follow the header (see [`split_frame`]).
    pub fn decode(header: &Header, body: &[u8]) -> Result<Request, ProtocolError> {
        check_body(header, body)?;
        let mut req = Request::new(header.id, Op::Unknown(0), Vec::new());
        let mut have_op = false;
        let mut seen = Seen::default();
        for item in Items::new(body) {
            let (t, value) = item?;
            match t {
                tag::OPCODE => {
                    seen.mark(t)?;
                    req.op = Op::from(opcode_byte(value)?);
                    have_op = true;
                }
                tag::PAYLOAD => {
                    seen.mark(t)?;
                    req.payload = value.to_vec();
                }
                tag::SUBJECT_KEY_IDENTIFIER => {
                    seen.mark(t)?;
                    let ski = <[u8; SKI_LEN]>::try_from(value)
                        .map_err(|_| ProtocolError::BadSkiLength { len: value.len() })?;
                    req.ski = Some(ski);
                }
                tag::CERTIFICATE_DIGEST => {
                    seen.mark(t)?;
                    let digest = <[u8; DIGEST_LEN]>::try_from(value)
                        .map_err(|_| ProtocolError::BadDigestLength { len: value.len() })?;
                    req.digest = Some(digest);
                }
                tag::CLIENT_IP => {
                    seen.mark(t)?;
                    req.client_ip = Some(parse_ip(t, value)?);
                }
                tag::SERVER_IP => {
                    seen.mark(t)?;
                    req.server_ip = Some(parse_ip(t, value)?);
                }
                tag::SERVER_NAME => {
                    seen.mark(t)?;
                    req.sni = Some(parse_str(t, value)?);
                }
                tag::CERT_ID => {
                    seen.mark(t)?;
                    req.cert_id = Some(parse_str(t, value)?);
                }
                tag::CUSTOM_FUNC_NAME => {
                    seen.mark(t)?;
                    req.custom_func_name = Some(parse_str(t, value)?);
                }
                tag::EXTRA => {
                    seen.mark(t)?;
                    req.extra = Some(value.to_vec());
                }
                tag::JAEGER_SPAN => {
                    seen.mark(t)?;
                    req.jaeger_span = Some(value.to_vec());
                }
                tag::COMPLIANCE_REGION => {
                    seen.mark(t)?;
                    req.compliance_region = Some(value.to_vec());
                }
                tag::PADDING => seen.mark(t)?,
                // Newer peers may send items this codec does not know;
                // skipping them keeps old servers working with new clients.
                _ => {}
            }
        }
        if !have_op {
            return Err(ProtocolError::MissingOpcode);
        }
        Ok(req)
    }
}

/// The outcome carried by a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// Success ([`Op::Response`]) with its result.
    Payload(Vec<u8>),
    /// Answer to a ping ([`Op::Pong`]), echoing its payload.
    Pong(Vec<u8>),
    /// Failure ([`Op::Error`]).
    Error(ErrorCode),
}

/// A decoded response (or one to be encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Id of the request this answers.
    pub id: u32,
    /// Result or error.
    pub body: ResponseBody,
}

impl Response {
    /// A successful response.
    pub fn payload(id: u32, payload: Vec<u8>) -> Response {
        Response {
            id,
            body: ResponseBody::Payload(payload),
        }
    }

    /// A pong echoing a ping's payload.
    pub fn pong(id: u32, payload: Vec<u8>) -> Response {
        Response {
            id,
            body: ResponseBody::Pong(payload),
        }
    }

    /// An error response.
    pub fn error(id: u32, code: ErrorCode) -> Response {
        Response {
            id,
            body: ResponseBody::Error(code),
        }
    }

    /// The opcode this response is sent with.
    pub fn op(&self) -> Op {
        match self.body {
            ResponseBody::Payload(_) => Op::Response,
            ResponseBody::Pong(_) => Op::Pong,
            ResponseBody::Error(_) => Op::Error,
        }
    }

    /// Encodes the whole frame, header included. gokeyless pads responses
    /// with the same routine as requests, so this does too.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let mut buf = start_frame();
        put_item(&mut buf, tag::OPCODE, &[self.op().to_u8()])?;
        match &self.body {
            ResponseBody::Payload(p) | ResponseBody::Pong(p) => {
                // gokeyless omits an empty payload; the decoder treats a
                // missing payload as empty, so both forms round-trip.
                if !p.is_empty() {
                    put_item(&mut buf, tag::PAYLOAD, p)?;
                }
            }
            ResponseBody::Error(code) => put_item(&mut buf, tag::PAYLOAD, &[code.to_u8()])?,
        }
        finish_frame(buf, self.id)
    }

    /// Decodes a response body. `body` must be exactly the `header.body_len`
    /// bytes that follow the header (see [`split_frame`]).
    pub fn decode(header: &Header, body: &[u8]) -> Result<Response, ProtocolError> {
        check_body(header, body)?;
        let mut op = None;
        let mut payload: &[u8] = &[];
        let mut seen = Seen::default();
        for item in Items::new(body) {
            let (t, value) = item?;
            match t {
                tag::OPCODE => {
                    seen.mark(t)?;
                    op = Some(Op::from(opcode_byte(value)?));
                }
                tag::PAYLOAD => {
                    seen.mark(t)?;
                    payload = value;
                }
                tag::PADDING => seen.mark(t)?,
                // Responses only define opcode and payload; anything else is
                // extension data this codec has no use for.
                _ => {}
            }
        }
        let body = match op {
            None => return Err(ProtocolError::MissingOpcode),
            Some(Op::Response) => ResponseBody::Payload(payload.to_vec()),
            Some(Op::Pong) => ResponseBody::Pong(payload.to_vec()),
            Some(Op::Error) => match payload {
                [code] => ResponseBody::Error(ErrorCode::from(*code)),
                _ => {
                    return Err(ProtocolError::BadErrorPayload { len: payload.len() });
                }
            },
            Some(other) => {
                return Err(ProtocolError::UnexpectedResponseOpcode { op: other.to_u8() });
            }
        };
        Ok(Response {
            id: header.id,
            body,
        })
    }
}

/// Rejects a body that does not belong to `header`, so the item parser can
/// trust the slice bounds it is given.
fn check_body(header: &Header, body: &[u8]) -> Result<(), ProtocolError> {
    header.check_version()?;
    let declared = usize::from(header.body_len);
    if body.len() != declared {
        return Err(ProtocolError::BodyLengthMismatch {
            declared,
            actual: body.len(),
        });
    }
    Ok(())
}

fn opcode_byte(value: &[u8]) -> Result<u8, ProtocolError> {
    match value {
        [b] => Ok(*b),
        _ => Err(ProtocolError::BadOpcodeLength { len: value.len() }),
    }
}

fn parse_ip(t: u8, value: &[u8]) -> Result<IpAddr, ProtocolError> {
    if let Ok(v4) = <[u8; 4]>::try_from(value) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(value) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(ProtocolError::BadIpLength {
            tag: t,
            len: value.len(),
        })
    }
}

fn parse_str(t: u8, value: &[u8]) -> Result<String, ProtocolError> {
    String::from_utf8(value.to_vec()).map_err(|_| ProtocolError::InvalidUtf8 { tag: t })
}

/// Tracks which known tags were already seen in one body.
struct Seen([bool; 256]);

impl Default for Seen {
    fn default() -> Seen {
        Seen([false; 256])
    }
}

impl Seen {
    fn mark(&mut self, t: u8) -> Result<(), ProtocolError> {
        let slot = &mut self.0[usize::from(t)];
        if *slot {
            return Err(ProtocolError::DuplicateItem { tag: t });
        }
        *slot = true;
        Ok(())
    }
}

/// Iterator over the TLV items of a body. Stops after the first error so a
/// malformed length cannot make it read garbage as further items.
struct Items<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Items<'a> {
    fn new(body: &'a [u8]) -> Items<'a> {
        Items { body, pos: 0 }
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<(u8, &'a [u8]), ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.pos;
        let rest = self.body.get(offset..)?;
        if rest.is_empty() {
            return None;
        }
        let Some(&[t, hi, lo]) = rest.first_chunk::<ITEM_HEADER_LEN>() else {
            self.pos = self.body.len();
            return Some(Err(ProtocolError::TruncatedItem {
                offset,
                remaining: rest.len(),
            }));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let available = rest.len() - ITEM_HEADER_LEN;
        let Some(value) = rest.get(ITEM_HEADER_LEN..ITEM_HEADER_LEN + len) else {
            self.pos = self.body.len();
            return Some(Err(ProtocolError::ItemOverrun {
                tag: t,
                offset,
                len,
                available,
            }));
        };
        self.pos = offset + ITEM_HEADER_LEN + len;
        Some(Ok((t, value)))
    }
}

/// A buffer with room reserved for the header, which is only known once the
/// body is complete.
fn start_frame() -> Vec<u8> {
    let mut buf = Vec::with_capacity(PADDED_LEN);
    buf.resize(HEADER_LEN, 0);
    buf
}

fn put_item(buf: &mut Vec<u8>, t: u8, value: &[u8]) -> Result<(), ProtocolError> {
    let len = u16::try_from(value.len()).map_err(|_| ProtocolError::ItemTooLong {
        tag: t,
        len: value.len(),
    })?;
    buf.push(t);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(value);
    Ok(())
}

fn put_ip(buf: &mut Vec<u8>, t: u8, ip: &IpAddr) -> Result<(), ProtocolError> {
    match ip {
        IpAddr::V4(v4) => put_item(buf, t, &v4.octets()),
        // gokeyless writes `ip.To4()` when it is non-nil, which turns an
        // IPv4-mapped IPv6 address into 4 bytes; do the same so equal inputs
        // give equal frames.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => put_item(buf, t, &v4.octets()),
            None => put_item(buf, t, &v6.octets()),
        },
    }
}

/// Appends padding and writes the header.
///
/// Padding mirrors gokeyless exactly: when the frame is shorter than
/// [`PADDED_LEN`], a padding item is added whose value brings the frame to
/// [`PADDED_LEN`] bytes; when fewer than 3 bytes were missing, the item is
/// empty and the frame ends up 1 or 2 bytes longer than [`PADDED_LEN`].
fn finish_frame(mut buf: Vec<u8>, id: u32) -> Result<Vec<u8>, ProtocolError> {
    if buf.len() < PADDED_LEN {
        let fill = PADDED_LEN.saturating_sub(buf.len() + ITEM_HEADER_LEN);
        // `fill` < PADDED_LEN, so it always fits the 16-bit length.
        let fill16 = u16::try_from(fill).unwrap_or(0);
        buf.push(tag::PADDING);
        buf.extend_from_slice(&fill16.to_be_bytes());
        buf.resize(buf.len() + fill, 0);
    }
    let body_len = buf.len() - HEADER_LEN;
    let body_len16 =
        u16::try_from(body_len).map_err(|_| ProtocolError::FrameTooLarge { len: body_len })?;
    buf[..HEADER_LEN].copy_from_slice(&Header::new(id, body_len16).encode());
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits and decodes a request frame the way a server would.
    fn decode_request(frame: &[u8]) -> Result<Request, ProtocolError> {
        let (h, len) = split_frame(frame)?.expect("complete frame");
        assert_eq!(len, frame.len());
        Request::decode(&h, &frame[HEADER_LEN..len])
    }

    fn decode_response(frame: &[u8]) -> Result<Response, ProtocolError> {
        let (h, len) = split_frame(frame)?.expect("complete frame");
        assert_eq!(len, frame.len());
        Response::decode(&h, &frame[HEADER_LEN..len])
    }

    /// Builds a frame from raw items, without padding, for malformed-input
    /// tests.
    fn raw_frame(id: u32, body: &[u8]) -> Vec<u8> {
        let mut f = Header::new(id, body.len() as u16).encode().to_vec();
        f.extend_from_slice(body);
        f
    }

    /// Appends the padding gokeyless would add for a given unpadded frame.
    fn expected_padding(unpadded_frame_len: usize) -> Vec<u8> {
        let fill = PADDED_LEN - unpadded_frame_len - ITEM_HEADER_LEN;
        let mut p = vec![tag::PADDING, (fill >> 8) as u8, fill as u8];
        p.resize(ITEM_HEADER_LEN + fill, 0);
        p
    }

    fn full_request() -> Request {
        Request {
            id: 0xDEAD_BEEF,
            op: Op::EcdsaSignSha256,
            payload: (0u8..32).collect(),
            ski: Some([0xAB; SKI_LEN]),
            digest: Some([0xCD; DIGEST_LEN]),
            sni: Some("example.com".into()),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            server_ip: Some("2001:db8::1".parse().unwrap()),
            cert_id: Some("cert-42".into()),
            custom_func_name: Some("fn".into()),
            extra: Some(vec![1, 2, 3]),
            jaeger_span: Some(b"615f730ad5fe896f:615f730ad5fe896f:1".to_vec()),
            compliance_region: Some(b"eu".to_vec()),
        }
    }

    const ALL_OPS: [u8; 26] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
        0x21, 0x22, 0x23, 0x24, 0x35, 0x36, 0x37, 0xF0, 0xF1, 0xF2, 0xFF,
    ];

    #[test]
    fn header_round_trip_and_layout() {
        let h = Header::new(0x0102_0304, 0x0506);
        assert_eq!(h.encode(), [1, 0, 0x05, 0x06, 1, 2, 3, 4]);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.frame_len(), 8 + 0x0506);
        assert_eq!(
            Header::decode(&[1, 0, 0]),
            Err(ProtocolError::TruncatedHeader { len: 3 })
        );
    }

    #[test]
    fn opcode_values_match_gokeyless() {
        let expect = [
            (Op::RsaDecrypt, 0x01),
            (Op::RsaSignMd5Sha1, 0x02),
            (Op::RsaSignSha1, 0x03),
            (Op::RsaSignSha224, 0x04),
            (Op::RsaSignSha256, 0x05),
            (Op::RsaSignSha384, 0x06),
            (Op::RsaSignSha512, 0x07),
            (Op::RsaDecryptRaw, 0x08),
            (Op::EcdsaSignMd5Sha1, 0x12),
            (Op::EcdsaSignSha1, 0x13),
            (Op::EcdsaSignSha224, 0x14),
            (Op::EcdsaSignSha256, 0x15),
            (Op::EcdsaSignSha384, 0x16),
            (Op::EcdsaSignSha512, 0x17),
            (Op::Ed25519Sign, 0x18),
            (Op::Seal, 0x21),
            (Op::Unseal, 0x22),
            (Op::Rpc, 0x23),
            (Op::Custom, 0x24),
            (Op::RsaPssSignSha256, 0x35),
            (Op::RsaPssSignSha384, 0x36),
            (Op::RsaPssSignSha512, 0x37),
            (Op::Response, 0xF0),
            (Op::Ping, 0xF1),
            (Op::Pong, 0xF2),
            (Op::Error, 0xFF),
        ];
        for (op, b) in expect {
            assert_eq!(op.to_u8(), b, "{op:?}");
            assert_eq!(Op::from(b), op);
            assert_eq!(u8::from(op), b);
        }
        // Every byte round-trips, and only the listed ones are named.
        for b in 0..=255u8 {
            let op = Op::from(b);
            assert_eq!(op.to_u8(), b);
            assert_eq!(
                matches!(op, Op::Unknown(_)),
                !ALL_OPS.contains(&b),
                "{b:#x}"
            );
        }
    }

    #[test]
    fn error_code_values_match_gokeyless() {
        let expect = [
            (ErrorCode::NoError, 0x00),
            (ErrorCode::Crypto, 0x01),
            (ErrorCode::KeyNotFound, 0x02),
            (ErrorCode::Read, 0x03),
            (ErrorCode::VersionMismatch, 0x04),
            (ErrorCode::BadOpcode, 0x05),
            (ErrorCode::UnexpectedOpcode, 0x06),
            (ErrorCode::Format, 0x07),
            (ErrorCode::Internal, 0x08),
            (ErrorCode::CertNotFound, 0x09),
            (ErrorCode::Expired, 0x0A),
            (ErrorCode::RemoteConfiguration, 0x0B),
        ];
        for (code, b) in expect {
            assert_eq!(code.to_u8(), b);
            assert_eq!(ErrorCode::from(b), code);
        }
        for b in 0..=255u8 {
            assert_eq!(ErrorCode::from(b).to_u8(), b);
        }
        assert_eq!(ErrorCode::from(0x42), ErrorCode::Unknown(0x42));
        assert_eq!(
            ErrorCode::KeyNotFound.to_string(),
            "key not found due to no matching SKI/SNI/ServerIP"
        );
    }

    #[test]
    fn op_kinds() {
        use HashAlg::*;
        assert_eq!(Op::RsaSignSha256.kind(), OpKind::SignRsaPkcs1(Sha256));
        assert_eq!(Op::RsaSignMd5Sha1.kind(), OpKind::SignRsaPkcs1(Md5Sha1));
        assert_eq!(Op::RsaPssSignSha384.kind(), OpKind::SignRsaPss(Sha384));
        assert_eq!(Op::EcdsaSignSha512.kind(), OpKind::SignEcdsa(Sha512));
        assert_eq!(Op::EcdsaSignSha224.kind(), OpKind::SignEcdsa(Sha224));
        assert_eq!(Op::EcdsaSignSha1.kind(), OpKind::SignEcdsa(Sha1));
        assert_eq!(Op::Ed25519Sign.kind(), OpKind::SignEd25519);
        assert_eq!(Op::RsaDecrypt.kind(), OpKind::RsaDecrypt);
        assert_eq!(Op::RsaDecryptRaw.kind(), OpKind::RsaDecryptRaw);
        assert_eq!(Op::Ping.kind(), OpKind::Ping);
        assert_eq!(Op::Seal.kind(), OpKind::Other);
        assert_eq!(Op::Unknown(0x99).kind(), OpKind::Other);
        let lens = [
            (Md5Sha1, 36),
            (Sha1, 20),
            (Sha224, 28),
            (Sha256, 32),
            (Sha384, 48),
            (Sha512, 64),
        ];
        for (h, l) in lens {
            assert_eq!(h.digest_len(), l);
        }
        assert!(Op::Pong.is_response() && Op::Response.is_response() && Op::Error.is_response());
        assert!(!Op::Ping.is_response());
    }

    #[test]
    fn ping_request_is_byte_exact() {
        let frame = Request::new(0x0102_0304, Op::Ping, b"hi".to_vec())
            .encode()
            .unwrap();
        let mut expected = vec![
            0x01, 0x00, 0x03, 0xF8, // v1.0, body 1016
            0x01, 0x02, 0x03, 0x04, // id
            0x11, 0x00, 0x01, 0xF1, // opcode ping
            0x12, 0x00, 0x02, b'h', b'i', // payload
            0x20, 0x03, 0xEC, // padding, 1004 bytes
        ];
        expected.resize(PADDED_LEN, 0);
        assert_eq!(frame, expected);
        let req = decode_request(&frame).unwrap();
        assert_eq!(req, Request::new(0x0102_0304, Op::Ping, b"hi".to_vec()));
    }

    #[test]
    fn sign_request_with_ski_is_byte_exact() {
        let digest: Vec<u8> = (0u8..32).collect();
        let mut req = Request::new(7, Op::RsaPssSignSha256, digest.clone());
        req.ski = Some([0x5A; SKI_LEN]);
        let frame = req.encode().unwrap();

        let mut expected = vec![1, 0, 0x03, 0xF8, 0, 0, 0, 7];
        expected.extend_from_slice(&[0x11, 0x00, 0x01, 0x35]);
        expected.extend_from_slice(&[0x12, 0x00, 0x20]);
        expected.extend_from_slice(&digest);
        expected.extend_from_slice(&[0x04, 0x00, 0x14]);
        expected.extend_from_slice(&[0x5A; 20]);
        // 8 + 4 + 35 + 23 = 70 bytes before padding; 1024 - 73 = 951 = 0x3B7.
        assert_eq!(expected.len(), 70);
        expected.extend_from_slice(&[0x20, 0x03, 0xB7]);
        expected.resize(PADDED_LEN, 0);
        assert_eq!(frame, expected);
        assert_eq!(decode_request(&frame).unwrap(), req);
    }

    #[test]
    fn error_response_is_byte_exact() {
        let frame = Response::error(0x0A0B_0C0D, ErrorCode::KeyNotFound)
            .encode()
            .unwrap();
        let mut expected = vec![
            0x01, 0x00, 0x03, 0xF8, 0x0A, 0x0B, 0x0C, 0x0D, // header
            0x11, 0x00, 0x01, 0xFF, // opcode error
            0x12, 0x00, 0x01, 0x02, // key not found
            0x20, 0x03, 0xED, // padding, 1005 bytes
        ];
        expected.resize(PADDED_LEN, 0);
        assert_eq!(frame, expected);
        assert_eq!(
            decode_response(&frame).unwrap(),
            Response::error(0x0A0B_0C0D, ErrorCode::KeyNotFound)
        );
    }

    #[test]
    fn success_response_is_byte_exact() {
        let frame = Response::payload(1, vec![0xAA; 3]).encode().unwrap();
        let mut expected = vec![1, 0, 0x03, 0xF8, 0, 0, 0, 1, 0x11, 0, 1, 0xF0, 0x12, 0, 3];
        expected.extend_from_slice(&[0xAA; 3]);
        expected.extend_from_slice(&expected_padding(expected.len()));
        assert_eq!(frame, expected);
    }

    #[test]
    fn full_request_round_trips_and_orders_items_like_gokeyless() {
        let req = full_request();
        let frame = req.encode().unwrap();
        assert_eq!(frame.len(), PADDED_LEN);
        assert_eq!(decode_request(&frame).unwrap(), req);

        let tags: Vec<u8> = Items::new(&frame[HEADER_LEN..])
            .map(|i| i.unwrap().0)
            .collect();
        assert_eq!(
            tags,
            [
                0x11, 0x12, 0x04, 0x01, 0x03, 0x05, 0x02, 0x06, 0x13, 0x14, 0x15, 0x17, 0x20
            ]
        );
    }

    #[test]
    fn each_request_item_round_trips_alone() {
        let base = Request::new(9, Op::RsaSignSha384, vec![1; 48]);
        let full = full_request();
        let variants: Vec<Request> = vec![
            base.clone(),
            Request {
                ski: full.ski,
                ..base.clone()
            },
            Request {
                digest: full.digest,
                ..base.clone()
            },
            Request {
                sni: full.sni.clone(),
                ..base.clone()
            },
            Request {
                sni: Some(String::new()),
                ..base.clone()
            },
            Request {
                client_ip: Some("10.1.2.3".parse().unwrap()),
                ..base.clone()
            },
            Request {
                client_ip: Some("fe80::1:2".parse().unwrap()),
                ..base.clone()
            },
            Request {
                server_ip: Some("203.0.113.9".parse().unwrap()),
                ..base.clone()
            },
            Request {
                server_ip: Some("::".parse().unwrap()),
                ..base.clone()
            },
            Request {
                cert_id: full.cert_id.clone(),
                ..base.clone()
            },
            Request {
                custom_func_name: full.custom_func_name.clone(),
                ..base.clone()
            },
            Request {
                extra: full.extra.clone(),
                ..base.clone()
            },
            Request {
                jaeger_span: full.jaeger_span.clone(),
                ..base.clone()
            },
            Request {
                compliance_region: full.compliance_region.clone(),
                ..base.clone()
            },
            Request::new(1, Op::Ping, Vec::new()),
            Request::new(u32::MAX, Op::Unknown(0x99), vec![7]),
        ];
        for req in variants {
            let frame = req.encode().unwrap();
            assert_eq!(decode_request(&frame).unwrap(), req, "{req:?}");
        }
        for b in ALL_OPS {
            let req = Request::new(b.into(), Op::from(b), vec![b]);
            assert_eq!(decode_request(&req.encode().unwrap()).unwrap(), req);
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_sent_as_four_bytes() {
        let mut req = Request::new(1, Op::Ping, Vec::new());
        req.client_ip = Some("::ffff:192.0.2.7".parse().unwrap());
        let frame = req.encode().unwrap();
        assert_eq!(&frame[12..19], &[0x03, 0x00, 0x04, 192, 0, 2, 7]);
        let back = decode_request(&frame).unwrap();
        assert_eq!(back.client_ip, Some("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn every_response_kind_round_trips() {
        let cases = vec![
            Response::payload(1, vec![1, 2, 3]),
            Response::payload(2, Vec::new()),
            Response::payload(3, vec![0x55; 2000]),
            Response::pong(4, b"hi".to_vec()),
            Response::pong(5, Vec::new()),
        ];
        let codes = (0..=0x0Bu8).chain([0x0C, 0x80, 0xFE]).map(ErrorCode::from);
        let cases = cases
            .into_iter()
            .chain(codes.map(|c| Response::error(6, c)));
        for resp in cases {
            let frame = resp.encode().unwrap();
            assert!(frame.len() >= PADDED_LEN);
            assert_eq!(decode_response(&frame).unwrap(), resp);
        }
    }

    #[test]
    fn padding_boundaries_match_gokeyless() {
        // Unpadded frame length = 8 + 4 (opcode) + 3 + n (payload).
        for n in 990..1020 {
            let frame = Request::new(1, Op::Rpc, vec![0xEE; n]).encode().unwrap();
            let unpadded = 15 + n;
            let expected_len = if unpadded >= PADDED_LEN {
                unpadded
            } else {
                // Padding never shrinks below its own 3-byte header.
                (unpadded + ITEM_HEADER_LEN).max(PADDED_LEN)
            };
            assert_eq!(frame.len(), expected_len, "payload {n}");
            let h = Header::decode(&frame).unwrap();
            assert_eq!(h.frame_len(), frame.len());
        }
        // 1 or 2 bytes short of 1024: empty padding item, frame 1025/1026.
        let f = Request::new(1, Op::Rpc, vec![0; 1008]).encode().unwrap();
        assert_eq!(f.len(), 1026);
        assert_eq!(&f[1023..], &[0x20, 0, 0]);
        let f = Request::new(1, Op::Rpc, vec![0; 1007]).encode().unwrap();
        assert_eq!(f.len(), 1025);
        // Exactly 3 short: empty padding item, frame exactly 1024.
        let f = Request::new(1, Op::Rpc, vec![0; 1006]).encode().unwrap();
        assert_eq!(f.len(), 1024);
        assert_eq!(&f[1021..], &[0x20, 0, 0]);
        // Already 1024: no padding item at all.
        let f = Request::new(1, Op::Rpc, vec![0; 1009]).encode().unwrap();
        assert_eq!(f.len(), 1024);
        assert_eq!(&f[12..15], &[0x12, 0x03, 0xF1]);
    }

    #[test]
    fn decode_skips_unknown_items() {
        let body = [
            0x7E, 0x00, 0x02, 0xAA, 0xBB, // unknown
            0x11, 0x00, 0x01, 0x05, // opcode
            0x16, 0x00, 0x00, // unassigned here, empty
            0x12, 0x00, 0x01, 0x42, // payload
            0x7E, 0x00, 0x01, 0xCC, // the same unknown tag again is fine
        ];
        let req = decode_request(&raw_frame(3, &body)).unwrap();
        assert_eq!(req, Request::new(3, Op::RsaSignSha256, vec![0x42]));

        // Responses ignore request-only items too.
        let body = [0x04, 0x00, 0x01, 0x00, 0x11, 0x00, 0x01, 0xF0];
        let resp = decode_response(&raw_frame(4, &body)).unwrap();
        assert_eq!(resp, Response::payload(4, Vec::new()));
    }

    #[test]
    fn unknown_opcode_decodes() {
        let body = [0x11, 0x00, 0x01, 0x99];
        let req = decode_request(&raw_frame(1, &body)).unwrap();
        assert_eq!(req.op, Op::Unknown(0x99));
    }

    #[test]
    fn split_frame_waits_for_whole_frame() {
        let frame = Request::new(5, Op::Ping, b"x".to_vec()).encode().unwrap();
        for cut in 0..frame.len() {
            assert_eq!(split_frame(&frame[..cut]).unwrap(), None, "cut {cut}");
        }
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let (h, len) = split_frame(&two).unwrap().unwrap();
        assert_eq!((h.id, len), (5, frame.len()));
        let (h2, len2) = split_frame(&two[len..]).unwrap().unwrap();
        assert_eq!((h2.id, len2), (5, frame.len()));

        let empty = raw_frame(6, &[]);
        assert_eq!(split_frame(&empty).unwrap(), Some((Header::new(6, 0), 8)));
    }

    #[test]
    fn bad_version_is_reported_with_id() {
        let mut frame = Request::new(0x1234, Op::Ping, Vec::new()).encode().unwrap();
        frame[0] = 2;
        frame[1] = 7;
        let err = split_frame(&frame[..8]).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::BadVersion {
                major: 2,
                minor: 7,
                id: 0x1234
            }
        );
        assert_eq!(err.error_code(), ErrorCode::VersionMismatch);
        let h = Header::decode(&frame).unwrap();
        assert_eq!(Request::decode(&h, &frame[8..]), Err(err.clone()));
        assert_eq!(Response::decode(&h, &frame[8..]), Err(err));

        // A non-zero minor version is accepted.
        frame[0] = 1;
        assert_eq!(decode_request(&frame).unwrap().op, Op::Ping);
    }

    #[test]
    fn malformed_inputs_give_specific_errors() {
        use ProtocolError as E;
        let cases: Vec<(&[u8], ProtocolError)> = vec![
            (
                &[0x11, 0x00, 0x01, 0x01, 0x12],
                E::TruncatedItem {
                    offset: 4,
                    remaining: 1,
                },
            ),
            (
                &[0x11, 0x00],
                E::TruncatedItem {
                    offset: 0,
                    remaining: 2,
                },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x12, 0x00, 0x05, 1, 2],
                E::ItemOverrun {
                    tag: 0x12,
                    offset: 4,
                    len: 5,
                    available: 2,
                },
            ),
            (&[0x12, 0x00, 0x01, 0x01], E::MissingOpcode),
            (&[], E::MissingOpcode),
            (
                &[0x11, 0x00, 0x02, 0x01, 0x01],
                E::BadOpcodeLength { len: 2 },
            ),
            (&[0x11, 0x00, 0x00], E::BadOpcodeLength { len: 0 }),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x11, 0x00, 0x01, 0x01],
                E::DuplicateItem { tag: 0x11 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x20, 0x00, 0x00, 0x20, 0x00, 0x00],
                E::DuplicateItem { tag: 0x20 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5],
                E::BadIpLength { tag: 0x03, len: 5 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x05, 0x00, 0x00],
                E::BadIpLength { tag: 0x05, len: 0 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x04, 0x00, 0x02, 1, 2],
                E::BadSkiLength { len: 2 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x01, 0x00, 0x01, 1],
                E::BadDigestLength { len: 1 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x02, 0x00, 0x02, 0xC3, 0x28],
                E::InvalidUtf8 { tag: 0x02 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x06, 0x00, 0x01, 0xFF],
                E::InvalidUtf8 { tag: 0x06 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x01, 0x13, 0x00, 0x01, 0x80],
                E::InvalidUtf8 { tag: 0x13 },
            ),
        ];
        for (body, err) in cases {
            assert_eq!(
                decode_request(&raw_frame(1, body)),
                Err(err.clone()),
                "{body:02x?}"
            );
            assert_eq!(err.error_code(), ErrorCode::Format);
        }

        let h = Header::new(1, 4);
        assert_eq!(
            Request::decode(&h, &[0x11, 0, 1]),
            Err(E::BodyLengthMismatch {
                declared: 4,
                actual: 3
            })
        );
        assert_eq!(
            Response::decode(&h, &[0x11, 0, 1, 0xF0, 0]),
            Err(E::BodyLengthMismatch {
                declared: 4,
                actual: 5
            })
        );

        let response_cases: Vec<(&[u8], ProtocolError)> = vec![
            (&[0x11, 0x00, 0x01, 0xFF], E::BadErrorPayload { len: 0 }),
            (
                &[0x11, 0x00, 0x01, 0xFF, 0x12, 0x00, 0x02, 1, 2],
                E::BadErrorPayload { len: 2 },
            ),
            (
                &[0x11, 0x00, 0x01, 0xF1],
                E::UnexpectedResponseOpcode { op: 0xF1 },
            ),
            (
                &[0x11, 0x00, 0x01, 0x05],
                E::UnexpectedResponseOpcode { op: 0x05 },
            ),
            (&[0x12, 0x00, 0x00], E::MissingOpcode),
            (
                &[0x11, 0x00, 0x01, 0xF0, 0x12, 0x00, 0x00, 0x12, 0x00, 0x00],
                E::DuplicateItem { tag: 0x12 },
            ),
            (
                &[0x11, 0x00, 0x01, 0xF0, 0x20],
                E::TruncatedItem {
                    offset: 4,
                    remaining: 1,
                },
            ),
            (
                &[0x11, 0x00, 0x01, 0xF0, 0x20, 0xFF, 0xFF],
                E::ItemOverrun {
                    tag: 0x20,
                    offset: 4,
                    len: 0xFFFF,
                    available: 0,
                },
            ),
        ];
        for (body, err) in response_cases {
            assert_eq!(
                decode_response(&raw_frame(1, body)),
                Err(err),
                "{body:02x?}"
            );
        }
    }

    #[test]
    fn oversized_messages_are_rejected_on_encode() {
        let req = Request::new(1, Op::Rpc, vec![0; 65536]);
        assert_eq!(
            req.encode(),
            Err(ProtocolError::ItemTooLong {
                tag: 0x12,
                len: 65536
            })
        );
        // Each item fits, but the body does not.
        let mut req = Request::new(1, Op::Rpc, vec![0; 65535]);
        req.extra = Some(vec![0; 10]);
        assert_eq!(
            req.encode(),
            Err(ProtocolError::FrameTooLarge {
                len: 4 + 3 + 65535 + 3 + 10
            })
        );
        // The largest body that fits is accepted.
        let req = Request::new(1, Op::Rpc, vec![0; 65535 - 7]);
        let frame = req.encode().unwrap();
        assert_eq!(frame.len(), HEADER_LEN + MAX_BODY_LEN);
        assert_eq!(decode_request(&frame).unwrap(), req);
        assert_eq!(
            Response::pong(1, vec![0; 65536]).encode(),
            Err(ProtocolError::ItemTooLong {
                tag: 0x12,
                len: 65536
            })
        );
    }

    /// Runs every decoder on `buf`; only panics matter here.
    fn decode_everything(buf: &[u8]) {
        let _ = Header::decode(buf);
        if let Ok(Some((h, len))) = split_frame(buf) {
            let body = &buf[HEADER_LEN..len];
            let _ = Request::decode(&h, body);
            let _ = Response::decode(&h, body);
        }
        if let Ok(h) = Header::decode(buf) {
            // Deliberately mismatched lengths must also be handled.
            let _ = Request::decode(&h, buf);
            let _ = Response::decode(&h, buf.get(HEADER_LEN..).unwrap_or(&[]));
        }
        let _ = Request::decode(&Header::new(0, buf.len() as u16), buf);
        let _ = Response::decode(&Header::new(0, buf.len() as u16), buf);
    }

    use crate::testutil::XorShift;

    #[test]
    fn no_panic_on_truncated_or_mutated_frames() {
        let seeds = vec![
            full_request().encode().unwrap(),
            Request::new(1, Op::Ping, b"hi".to_vec()).encode().unwrap(),
            Response::error(2, ErrorCode::Crypto).encode().unwrap(),
            Response::payload(3, vec![9; 40]).encode().unwrap(),
            raw_frame(4, &[0x11, 0x00, 0x01, 0xF0, 0x12, 0x00, 0x02, 1, 2]),
        ];
        // Exhaustive: every prefix, and every single byte of the first 64
        // bytes (where the headers and items live) set to interesting values.
        for seed in &seeds {
            for cut in 0..=seed.len() {
                decode_everything(&seed[..cut]);
            }
            for pos in 0..seed.len().min(64) {
                for v in [
                    0x00, 0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x20, 0x7F, 0xFF,
                ] {
                    let mut m = seed.clone();
                    m[pos] = v;
                    decode_everything(&m);
                }
            }
        }
        // Randomised: several mutations at once, plus random truncation.
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let mut m = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(8) {
                let pos = if rng.below(2) == 0 {
                    rng.below(m.len().min(48))
                } else {
                    rng.below(m.len())
                };
                m[pos] = rng.next() as u8;
            }
            let cut = if rng.below(4) == 0 {
                rng.below(m.len() + 1)
            } else {
                m.len()
            };
            decode_everything(&m[..cut]);
        }
        // Pure noise.
        for _ in 0..5_000 {
            let len = rng.below(80);
            let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if m.len() >= 4 && rng.below(2) == 0 {
                m[0] = 1;
                let body = (m.len() - HEADER_LEN.min(m.len())) as u16;
                m[2..4].copy_from_slice(&body.to_be_bytes());
            }
            decode_everything(&m);
        }
    }
}

/// decode(encode(x)) = x over randomly built requests and responses.
#[cfg(test)]
mod property {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // splitmix64: every seed gives a full-period, well-mixed stream.
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = (self.next() as usize) % (max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn text(&mut self, max: usize) -> String {
            let n = (self.next() as usize) % (max + 1);
            (0..n)
                .map(|_| (b'a' + (self.next() % 26) as u8) as char)
                .collect()
        }
        fn ip(&mut self) -> IpAddr {
            if self.coin() {
                IpAddr::V4(Ipv4Addr::from(self.next() as u32))
            } else {
                // Not IPv4-mapped: those travel as 4 bytes, as in gokeyless.
                let mut v = (self.next() as u128) << 64 | self.next() as u128;
                v |= 1 << 127;
                IpAddr::V6(Ipv6Addr::from(v))
            }
        }
    }

    fn request(r: &mut Rng) -> Request {
        let mut req = Request::new(r.next() as u32, Op::from(r.next() as u8), r.bytes(3000));
        if r.coin() {
            let mut s = [0u8; SKI_LEN];
            s.iter_mut().for_each(|b| *b = r.next() as u8);
            req.ski = Some(s);
        }
        if r.coin() {
            let mut d = [0u8; DIGEST_LEN];
            d.iter_mut().for_each(|b| *b = r.next() as u8);
            req.digest = Some(d);
        }
        req.sni = r.coin().then(|| r.text(200));
        req.client_ip = r.coin().then(|| r.ip());
        req.server_ip = r.coin().then(|| r.ip());
        req.cert_id = r.coin().then(|| r.text(64));
        req.custom_func_name = r.coin().then(|| r.text(32));
        req.extra = r.coin().then(|| r.bytes(300));
        req.jaeger_span = r.coin().then(|| r.bytes(64));
        req.compliance_region = r.coin().then(|| r.bytes(16));
        req
    }

    #[test]
    fn decode_inverts_encode_for_random_requests_and_responses() {
        let mut r = Rng(0x0051_676d_7578);
        for _ in 0..5000 {
            let req = request(&mut r);
            let frame = req.encode().unwrap();
            let (h, len) = split_frame(&frame).unwrap().unwrap();
            assert_eq!(len, frame.len());
            assert_eq!(Request::decode(&h, &frame[HEADER_LEN..]).unwrap(), req);

            let id = r.next() as u32;
            let resp = match r.next() % 3 {
                0 => Response::payload(id, r.bytes(2000)),
                1 => Response::pong(id, r.bytes(100)),
                _ => Response::error(id, ErrorCode::from(1 + (r.next() % 11) as u8)),
            };
            let frame = resp.encode().unwrap();
            let (h, _) = split_frame(&frame).unwrap().unwrap();
            assert_eq!(Response::decode(&h, &frame[HEADER_LEN..]).unwrap(), resp);
        }
    }
}
