//! The TOML configuration. `config/sigmux.toml` documents every field and
//! is compiled in as the defaults; a user's file overrides field by field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::cpu::{CpuConfig, CpuEngine, EngineChoice};
use crate::backend::cuda::{CheckPolicy, CudaConfig, RsaMapping};
use crate::backend::pkcs11::{self, PinSource, Pkcs11Config, TokenSelector};
use crate::engine::EngineConfig;
use crate::error::{Error, Result};
use crate::keys::KekSource;

/// The documented default configuration, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../config/sigmux.toml");

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where keys and state live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Seconds `serve` gives requests in flight to finish after SIGTERM or
    /// SIGINT, once its listeners are closed.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// Key-encryption key source.
    #[serde(default)]
    pub keys: KeysSection,
    /// Engine limits.
    #[serde(default)]
    pub engine: EngineSection,
    /// Backends.
    #[serde(default)]
    pub backends: BackendsSection,
    /// Health and metrics listener.
    #[serde(default)]
    pub http: HttpSection,
    /// Keyless TLS listener.
    #[serde(default)]
    pub keyless: KeylessSection,
    /// SPIFFE issuance HTTPS API.
    #[serde(default)]
    pub issuance: IssuanceSection,
    /// The SPIFFE CA's scheduled rotation.
    #[serde(default)]
    pub ca: CaSection,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sigmux-data")
}

fn default_shutdown_grace_seconds() -> u64 {
    20
}

/// `[keys]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// KEK file, relative to the data dir unless absolute.
    pub kek_file: Option<PathBuf>,
    /// Environment variable holding the KEK.
    pub kek_env: Option<String>,
}

impl Default for KeysSection {
    fn default() -> Self {
        KeysSection {
            kek_file: Some(PathBuf::from("kek")),
            kek_env: None,
        }
    }
}

/// `[engine]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Flush a queue at this many requests.
    pub max_batch: usize,
    /// Flush a queue when its oldest request has waited this long.
    pub max_wait_us: u64,
    /// Requests accepted and not yet answered.
    pub queue_capacity: usize,
    /// Default per-request deadline.
    pub deadline_ms: u64,
    /// Verify again in the engine what a backend already checked itself.
    pub recheck_self_checked: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        EngineSection {
            max_batch: d.max_batch,
            max_wait_us: d.max_wait.as_micros() as u64,
            queue_capacity: d.queue_capacity,
            deadline_ms: d.deadline.as_millis() as u64,
            recheck_self_checked: d.recheck_self_checked,
        }
    }
}

/// `[backends]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsSection {
    /// `[backends.cpu]`.
    #[serde(default)]
    pub cpu: CpuSection,
    /// `[backends.pkcs11]` (one token) or `[[backends.pkcs11]]` (several).
    #[serde(default, deserialize_with = "one_or_many")]
    pub pkcs11: Vec<Pkcs11Section>,
    /// `[backends.cuda]`.
    #[serde(default)]
    pub cuda: CudaSection,
}

/// `[backends.cuda]`: the GPUs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CudaSection {
    /// Use the GPUs when present.
    pub enabled: bool,
    /// `"all"` or a list of device ordinals.
    pub devices: CudaDevices,
    /// Streams (batches in flight) per device.
    pub streams: usize,
    /// Largest batch per call.
    pub max_batch: usize,
    /// Device memory for cached keys, per device, in bytes.
    pub key_cache_bytes: u64,
    /// The NVRTC library (a path).
    pub nvrtc: Option<PathBuf>,
    /// Compiled-kernel cache folder, relative to data_dir unless absolute.
    pub cache_dir: PathBuf,
    /// `"all"` or `"sample:N"`: which ECDSA signatures the GPU checks.
    pub check: String,
    /// `"thread"`, `"wide"`, `"coop:8"` or `"coop:16"`: the RSA sign kernels' thread
    /// mapping.
    pub rsa_mapping: String,
}

impl Default for CudaSection {
    fn default() -> Self {
        let d = CudaConfig::default();
        CudaSection {
            enabled: d.enabled,
            devices: CudaDevices::All,
            streams: d.streams,
            max_batch: d.max_batch,
            key_cache_bytes: d.key_cache_bytes as u64,
            nvrtc: None,
            cache_dir: PathBuf::from("kernel-cache"),
            check: d.check.to_string(),
            rsa_mapping: d.rsa_mapping.to_string(),
        }
    }
}

/// `backends.cuda.devices`: every visible device, or these ordinals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaDevices {
    /// `"all"`.
    All,
    /// `[0, 2]`.
    List(Vec<usize>),
}

impl<'de> Deserialize<'de> for CudaDevices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CudaDevices;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("backends.cuda.devices: \"all\" or a list of device ordinals")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CudaDevices, E> {
                if v == "all" {
                    Ok(CudaDevices::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CudaDevices, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = seq.next_element::<usize>()? {
                    out.push(n);
                }
                Ok(CudaDevices::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[backends.pkcs11]`: one PKCS#11 token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Section {
    /// The module (shared library).
    #[serde(default = "default_pkcs11_module")]
    pub module: PathBuf,
    /// The token's label.
    pub token_label: Option<String>,
    /// Or the token's slot id.
    pub slot: Option<u64>,
    /// File holding the user PIN, relative to data_dir unless absolute.
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Refused: a PIN is never read from the config itself. Its value is
    /// not even kept.
    #[serde(default)]
    pub pin: Option<InlinePin>,
    /// Sessions in the pool.
    #[serde(default = "default_pkcs11_sessions")]
    pub sessions: usize,
    /// Largest batch per call.
    #[serde(default = "default_pkcs11_max_batch")]
    pub max_batch: usize,
    /// Time a few operations at start to seed the scheduler.
    #[serde(default = "default_true")]
    pub calibrate: bool,
}

/// A `pin` field found in the config: remembered only to refuse it; its
/// value is dropped while parsing.
#[derive(Clone, Copy, Debug)]
pub struct InlinePin;

impl<'de> Deserialize<'de> for InlinePin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(InlinePin)
    }
}

fn default_pkcs11_module() -> PathBuf {
    PathBuf::from(pkcs11::DEFAULT_MODULE)
}

fn default_pkcs11_sessions() -> usize {
    4
}

fn default_pkcs11_max_batch() -> usize {
    64
}

fn default_true() -> bool {
    true
}

/// A table or an array of tables.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Pkcs11Section>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Pkcs11Section>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [backends.pkcs11] table or [[backends.pkcs11]] tables")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Pkcs11Section::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                .map(|s| vec![s])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::<Pkcs11Section>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(V)
}

/// `[backends.cpu]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuSection {
    /// Whether the CPU backend runs.
    pub enabled: bool,
    /// Pool threads; 0 = one per core.
    pub threads: usize,
    /// `auto`, `aws-lc` or `openssl`.
    pub engine: String,
    /// Largest batch per call.
    pub max_batch: usize,
}

impl Default for CpuSection {
    fn default() -> Self {
        CpuSection {
            enabled: true,
            threads: 0,
            engine: "auto".into(),
            max_batch: 256,
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Listen address for /healthz and /metrics.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Open connections at most; more are closed at once.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Seconds allowed for a request's head, and for an idle keep-alive
    /// connection.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// Seconds a write may stay blocked (the client not reading) before
    /// the connection is dropped.
    #[serde(default = "default_http_write_timeout")]
    pub write_timeout_seconds: u64,
}

fn default_listen() -> String {
    "127.0.0.1:9407".into()
}

fn default_http_max_connections() -> usize {
    256
}

fn default_header_timeout() -> u64 {
    10
}

fn default_http_write_timeout() -> u64 {
    30
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_listen(),
            max_connections: default_http_max_connections(),
            header_timeout_seconds: default_header_timeout(),
            write_timeout_seconds: default_http_write_timeout(),
        }
    }
}

/// Checks the connection limits and timeouts of an HTTP listener
/// (`section` is `http` or `issuance`).
fn serve_limits(
    section: &str,
    max_connections: usize,
    header_timeout_seconds: u64,
    write_timeout_seconds: u64,
) -> Result<crate::api::ServeLimits> {
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(bad(
            &format!("{section}.max_connections"),
            "must be between 1 and 1000000",
        ));
    }
    if !(1..=3600).contains(&header_timeout_seconds) {
        return Err(bad(
            &format!("{section}.header_timeout_seconds"),
            "must be between 1 and 3600",
        ));
    }
    if !(1..=3600).contains(&write_timeout_seconds) {
        return Err(bad(
            &format!("{section}.write_timeout_seconds"),
            "must be between 1 and 3600",
        ));
    }
    Ok(crate::api::ServeLimits {
        max_connections,
        header_timeout: Duration::from_secs(header_timeout_seconds),
        write_timeout: Duration::from_secs(write_timeout_seconds),
    })
}

/// `[keyless]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeylessSection {
    /// Listen address.
    #[serde(default = "default_keyless_listen")]
    pub listen: String,
    /// Server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates that issue client certificates (PEM).
    pub client_ca: Option<PathBuf>,
    /// Unanswered requests per connection before the server stops reading.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Bytes of requests and their answers held per connection (until each
    /// answer is written) before the server stops reading.
    #[serde(default = "default_keyless_max_bytes_in_flight")]
    pub max_bytes_in_flight: usize,
    /// Bytes of requests and answers held by all connections together
    /// before every connection stops reading.
    #[serde(default = "default_keyless_max_total_bytes_in_flight")]
    pub max_total_bytes_in_flight: usize,
    /// Open connections (handshakes included); more are closed at once.
    #[serde(default = "default_keyless_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may leave an answer unread before it is
    /// disconnected.
    #[serde(default = "default_keyless_write_timeout")]
    pub write_timeout_seconds: u64,
    /// Seconds a connection with no request in flight may send nothing
    /// before it is closed.
    #[serde(default = "default_keyless_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Seconds a new connection has to finish its TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_seconds: u64,
    /// Which client may use which keys.
    #[serde(default)]
    pub clients: Vec<KeylessClientRule>,
}

/// `[[keyless.clients]]`: one client and the keys it may use.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeylessClientRule {
    /// The SPIFFE ID in the client certificate's URI SAN.
    pub id: Option<String>,
    /// SHA-256 of the client certificate DER, hex (colons allowed).
    pub fingerprint: Option<String>,
    /// Key names it may use; `"*"` for all.
    pub keys: Vec<String>,
}

fn default_keyless_listen() -> String {
    "127.0.0.1:2407".into()
}

fn default_max_in_flight() -> usize {
    1024
}

fn default_keyless_max_bytes_in_flight() -> usize {
    4 << 20
}

fn default_keyless_max_total_bytes_in_flight() -> usize {
    512 << 20
}

fn default_keyless_max_connections() -> usize {
    4096
}

fn default_keyless_write_timeout() -> u64 {
    30
}

fn default_keyless_idle_timeout() -> u64 {
    300
}

fn default_handshake_timeout() -> u64 {
    10
}

/// Checks `<section>.handshake_timeout_seconds`.
fn handshake_timeout(section: &str, seconds: u64) -> Result<Duration> {
    if !(1..=300).contains(&seconds) {
        return Err(bad(
            &format!("{section}.handshake_timeout_seconds"),
            "must be between 1 and 300",
        ));
    }
    Ok(Duration::from_secs(seconds))
}

impl Default for KeylessSection {
    fn default() -> Self {
        KeylessSection {
            listen: default_keyless_listen(),
            cert: None,
            key: None,
            client_ca: None,
            max_in_flight: default_max_in_flight(),
            max_bytes_in_flight: default_keyless_max_bytes_in_flight(),
            max_total_bytes_in_flight: default_keyless_max_total_bytes_in_flight(),
            max_connections: default_keyless_max_connections(),
            write_timeout_seconds: default_keyless_write_timeout(),
            idle_timeout_seconds: default_keyless_idle_timeout(),
            handshake_timeout_seconds: default_handshake_timeout(),
            clients: Vec::new(),
        }
    }
}

/// `[issuance]`: the SPIFFE issuance HTTPS API (mutual TLS).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceSection {
    /// Listen address.
    #[serde(default = "default_issuance_listen")]
    pub listen: String,
    /// Server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates that issue caller certificates (PEM).
    pub client_ca: Option<PathBuf>,
    /// Most items in one batch request.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Upper bound on an SVID's lifetime, seconds (unset: the CA default).
    pub max_ttl_seconds: Option<u64>,
    /// Open connections at most, TLS handshakes included; more are closed
    /// at once.
    #[serde(default = "default_issuance_max_connections")]
    pub max_connections: usize,
    /// X.509-SVID batches worked on at once; more are answered 503.
    #[serde(default = "default_max_concurrent_batches")]
    pub max_concurrent_batches: usize,
    /// Seconds allowed for a request's head, and for an idle keep-alive
    /// connection.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// Seconds allowed to receive a request body; past it the answer is 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_seconds: u64,
    /// Seconds a write may stay blocked (the caller not reading) before
    /// the connection is dropped.
    #[serde(default = "default_http_write_timeout")]
    pub write_timeout_seconds: u64,
    /// Seconds a new connection has to finish its TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_seconds: u64,
    /// Refusals per caller and minute recorded in the audit log in full;
    /// past it they are counted in a `refusals_summarized` record.
    #[serde(default = "default_max_refusal_records")]
    pub max_refusal_records_per_minute: u64,
    /// SVIDs each caller may ask for per second on average (a whole batch
    /// at once); 0: no limit.
    #[serde(default)]
    pub svids_per_caller_per_second: f64,
    /// Which caller may request which SPIFFE IDs.
    #[serde(default)]
    pub callers: Vec<IssuanceCallerRule>,
}

/// `[[issuance.callers]]`: one caller, the SPIFFE ID prefixes it may
/// request and the DNS suffixes it may put in those SVIDs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceCallerRule {
    /// The SPIFFE ID in the caller certificate's URI SAN.
    pub id: Option<String>,
    /// SHA-256 of the caller certificate DER, hex (colons allowed).
    pub fingerprint: Option<String>,
    /// SPIFFE ID prefixes (path-segment aligned) it may request.
    pub allowed_prefixes: Vec<String>,
    /// DNS suffixes (label aligned) its DNS SANs must lie under; empty (the
    /// default): it may request no DNS SAN.
    #[serde(default)]
    pub allowed_dns_suffixes: Vec<String>,
}

fn default_issuance_listen() -> String {
    "127.0.0.1:8443".into()
}

fn default_max_items() -> usize {
    1000
}

fn default_issuance_max_connections() -> usize {
    1024
}

fn default_max_concurrent_batches() -> usize {
    32
}

fn default_body_timeout() -> u64 {
    30
}

fn default_max_refusal_records() -> u64 {
    1000
}

impl Default for IssuanceSection {
    fn default() -> Self {
        IssuanceSection {
            listen: default_issuance_listen(),
            cert: None,
            key: None,
            client_ca: None,
            max_items: default_max_items(),
            max_ttl_seconds: None,
            max_connections: default_issuance_max_connections(),
            max_concurrent_batches: default_max_concurrent_batches(),
            header_timeout_seconds: default_header_timeout(),
            body_timeout_seconds: default_body_timeout(),
            write_timeout_seconds: default_http_write_timeout(),
            handshake_timeout_seconds: default_handshake_timeout(),
            max_refusal_records_per_minute: default_max_refusal_records(),
            svids_per_caller_per_second: 0.0,
            callers: Vec::new(),
        }
    }
}

/// `[ca]`: scheduled rotation of the intermediate signing CA in `serve`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaSection {
    /// Prepare, activate and retire intermediates on schedule.
    pub auto_rotate: bool,
    /// Seconds between two checks of the schedule.
    pub rotation_check_seconds: u64,
}

impl Default for CaSection {
    fn default() -> Self {
        CaSection {
            auto_rotate: true,
            rotation_check_seconds: 60,
        }
    }
}

/// How `serve` runs the rotation schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationSettings {
    /// Time between two checks.
    pub check_every: Duration,
    /// The longest SVID lifetime the CA issues: how long a drained
    /// intermediate stays in the bundle.
    pub max_svid_ttl: Duration,
}

/// A client named in a `[[keyless.clients]]` or `[[issuance.callers]]`
/// rule: by SPIFFE ID or by certificate fingerprint, exactly one.
fn client_match(
    field: &str,
    id: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<crate::keyless::auth::ClientMatch> {
    use crate::keyless::auth::ClientMatch;
    match (id, fingerprint) {
        (Some(id), None) => {
            crate::ca::spiffe::SpiffeId::parse(id).map_err(|e| bad(&format!("{field}.id"), e))?;
            Ok(ClientMatch::SpiffeId(id.to_string()))
        }
        (None, Some(fp)) => {
            let hexed: String = fp.chars().filter(|c| *c != ':').collect();
            let mut out = [0u8; 32];
            hex::decode_to_slice(&hexed, &mut out).map_err(|_| {
                bad(
                    &format!("{field}.fingerprint"),
                    "must be the SHA-256 of the certificate: 64 hex characters",
                )
            })?;
            Ok(ClientMatch::Fingerprint(out))
        }
        _ => Err(bad(field, "give exactly one of id or fingerprint")),
    }
}

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::Config(format!("{field}: {why}"))
}

impl Config {
    /// The embedded defaults.
    pub fn defaults() -> Config {
        // The embedded file is checked by a unit test, so this cannot fail
        // in a released binary.
        Config::parse(DEFAULT_TOML, "embedded defaults").unwrap_or_else(|_| Config {
            data_dir: default_data_dir(),
            shutdown_grace_seconds: default_shutdown_grace_seconds(),
            keys: KeysSection::default(),
            engine: EngineSection::default(),
            backends: BackendsSection::default(),
            http: HttpSection::default(),
            keyless: KeylessSection::default(),
            issuance: IssuanceSection::default(),
            ca: CaSection::default(),
        })
    }

    /// Loads `path`, or the embedded defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        match path {
            None => Ok(Config::defaults()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
                Config::parse(&text, &p.display().to_string())
            }
        }
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Error::Config(format!("{origin}{at}: {msg}"))
        })?;
        cfg.validate().map_err(|e| {
            Error::Config(format!(
                "{origin}: {}",
                e.to_string().trim_start_matches("config: ")
            ))
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let e = &self.engine;
        if !(1..=65_536).contains(&e.max_batch) {
            return Err(bad("engine.max_batch", "must be between 1 and 65536"));
        }
        if e.max_wait_us > 1_000_000 {
            return Err(bad(
                "engine.max_wait_us",
                "must be at most 1000000 (one second)",
            ));
        }
        if !(1..=16_777_216).contains(&e.queue_capacity) {
            return Err(bad(
                "engine.queue_capacity",
                "must be between 1 and 16777216",
            ));
        }
        if e.deadline_ms == 0 {
            return Err(bad("engine.deadline_ms", "must be at least 1"));
        }
        self.shutdown_grace()?;
        let c = &self.backends.cpu;
        self.cpu_engine()?;
        if c.threads > 1024 {
            return Err(bad("backends.cpu.threads", "must be at most 1024"));
        }
        if c.max_batch == 0 {
            return Err(bad("backends.cpu.max_batch", "must be at least 1"));
        }
        self.pkcs11_configs()?;
        self.cuda_config()?;
        self.http_listen()?;
        self.keyless_settings()?;
        self.issuance_settings()?;
        self.rotation_settings()?;
        match (&self.keys.kek_file, &self.keys.kek_env) {
            (Some(_), Some(_)) => {
                return Err(bad("keys", "give kek_file or kek_env, not both"));
            }
            (None, None) => return Err(bad("keys", "give kek_file or kek_env")),
            (_, Some(v)) if v.is_empty() => {
                return Err(bad("keys.kek_env", "must name an environment variable"));
            }
            _ => {}
        }
        Ok(())
    }

    fn cpu_engine(&self) -> Result<EngineChoice> {
        match self.backends.cpu.engine.as_str() {
            "auto" => Ok(EngineChoice::Auto),
            other => other
                .parse::<CpuEngine>()
                .map(EngineChoice::Fixed)
                .map_err(|_| {
                    bad(
                        "backends.cpu.engine",
                        format!("'{other}' is not one of auto, aws-lc, openssl"),
                    )
                }),
        }
    }

    /// How long `serve` waits for requests in flight at shutdown.
    pub fn shutdown_grace(&self) -> Result<Duration> {
        if !(1..=3600).contains(&self.shutdown_grace_seconds) {
            return Err(bad("shutdown_grace_seconds", "must be between 1 and 3600"));
        }
        Ok(Duration::from_secs(self.shutdown_grace_seconds))
    }

    /// The health/metrics listen address (the rest of `[http]` is checked
    /// too, so a bad limit is refused at load).
    pub fn http_listen(&self) -> Result<SocketAddr> {
        self.http_limits()?;
        self.http.listen.parse().map_err(|_| {
            bad(
                "http.listen",
                format!(
                    "'{}' is not an address like 127.0.0.1:9407",
                    self.http.listen
                ),
            )
        })
    }

    /// The connection limits and timeouts of the health/metrics listener,
    /// for [`crate::api::serve_plain`].
    pub fn http_limits(&self) -> Result<crate::api::ServeLimits> {
        let h = &self.http;
        serve_limits(
            "http",
            h.max_connections,
            h.header_timeout_seconds,
            h.write_timeout_seconds,
        )
    }

    /// The keyless listener's address and settings, or `None` when it is
    /// not configured (cert, key and client_ca all unset).
    pub fn keyless_settings(
        &self,
    ) -> Result<Option<(SocketAddr, crate::keyless::server::KeylessSettings)>> {
        use crate::keyless::auth::{Policy, Rule};
        let k = &self.keyless;
        // Every field is checked even when the listener is off, so a bad
        // value is refused by every command, not first by `serve` once
        // the listener is configured.
        let tls = match (&k.cert, &k.key, &k.client_ca) {
            (None, None, None) => None,
            (Some(c), Some(k), Some(a)) => Some((c.clone(), k.clone(), a.clone())),
            _ => {
                return Err(bad(
                    "keyless",
                    "set all of cert, key and client_ca (mutual TLS is required), or none",
                ));
            }
        };
        let addr: SocketAddr = k.listen.parse().map_err(|_| {
            bad(
                "keyless.listen",
                format!("'{}' is not an address like 127.0.0.1:2407", k.listen),
            )
        })?;
        if !(1..=65_536).contains(&k.max_in_flight) {
            return Err(bad("keyless.max_in_flight", "must be between 1 and 65536"));
        }
        // At least two of the largest requests (64 KiB, with their answers).
        if !((256 << 10)..=(1 << 30)).contains(&k.max_bytes_in_flight) {
            return Err(bad(
                "keyless.max_bytes_in_flight",
                "must be between 262144 (256 KiB) and 1073741824 (1 GiB)",
            ));
        }
        if !(1..=1_000_000).contains(&k.max_connections) {
            return Err(bad(
                "keyless.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=3600).contains(&k.write_timeout_seconds) {
            return Err(bad(
                "keyless.write_timeout_seconds",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=86_400).contains(&k.idle_timeout_seconds) {
            return Err(bad(
                "keyless.idle_timeout_seconds",
                "must be between 1 and 86400",
            ));
        }
        if !(k.max_bytes_in_flight..=(64 << 30)).contains(&k.max_total_bytes_in_flight) {
            return Err(bad(
                "keyless.max_total_bytes_in_flight",
                "must be at least keyless.max_bytes_in_flight and at most 68719476736 (64 GiB)",
            ));
        }
        let handshake_timeout = handshake_timeout("keyless", k.handshake_timeout_seconds)?;
        let mut rules = Vec::new();
        for (i, r) in k.clients.iter().enumerate() {
            let field = format!("keyless.clients[{i}]");
            let client = client_match(&field, r.id.as_deref(), r.fingerprint.as_deref())?;
            if r.keys.is_empty() {
                return Err(bad(
                    &format!("{field}.keys"),
                    "list at least one key name, or \"*\"",
                ));
            }
            if let Some(ca) = r.keys.iter().find(|k| crate::keys::is_ca_key_name(k)) {
                return Err(bad(
                    &format!("{field}.keys"),
                    format!("'{ca}' is one of the CA's own keys, which keyless never uses"),
                ));
            }
            rules.push(Rule {
                client,
                keys: r.keys.clone(),
            });
        }
        let Some((cert, key, ca)) = tls else {
            return Ok(None);
        };
        Ok(Some((
            addr,
            crate::keyless::server::KeylessSettings {
                cert,
                key,
                client_ca: ca,
                max_in_flight: k.max_in_flight,
                max_bytes_in_flight: k.max_bytes_in_flight,
                max_total_bytes_in_flight: k.max_total_bytes_in_flight,
                max_connections: k.max_connections,
                write_timeout: Duration::from_secs(k.write_timeout_seconds),
                idle_timeout: Duration::from_secs(k.idle_timeout_seconds),
                handshake_timeout,
                policy: Policy::new(rules),
            },
        )))
    }

    /// The issuance listener's settings, or `None` when it is not
    /// configured (cert, key and client_ca all unset).
    pub fn issuance_settings(&self) -> Result<Option<crate::api::IssuanceSettings>> {
        use crate::api::issue::DnsSuffix;
        use crate::api::{CallerRule, IssuanceSettings};
        use crate::ca::spiffe::SpiffeIdPrefix;
        let s = &self.issuance;
        // Every field is checked even when the listener is off (see
        // keyless_settings).
        let tls = match (&s.cert, &s.key, &s.client_ca) {
            (None, None, None) => None,
            (Some(c), Some(k), Some(a)) => Some((c.clone(), k.clone(), a.clone())),
            _ => {
                return Err(bad(
                    "issuance",
                    "set all of cert, key and client_ca (mutual TLS is required), or none",
                ));
            }
        };
        let listen: SocketAddr = s.listen.parse().map_err(|_| {
            bad(
                "issuance.listen",
                format!("'{}' is not an address like 127.0.0.1:8443", s.listen),
            )
        })?;
        if !(1..=100_000).contains(&s.max_items) {
            return Err(bad("issuance.max_items", "must be between 1 and 100000"));
        }
        let limits = serve_limits(
            "issuance",
            s.max_connections,
            s.header_timeout_seconds,
            s.write_timeout_seconds,
        )?;
        if !(1..=10_000).contains(&s.max_concurrent_batches) {
            return Err(bad(
                "issuance.max_concurrent_batches",
                "must be between 1 and 10000",
            ));
        }
        let handshake_timeout = handshake_timeout("issuance", s.handshake_timeout_seconds)?;
        if !(0.0..=10_000_000.0).contains(&s.svids_per_caller_per_second) {
            return Err(bad(
                "issuance.svids_per_caller_per_second",
                "must be between 0 (no limit) and 10000000",
            ));
        }
        if s.max_refusal_records_per_minute > 10_000_000 {
            return Err(bad(
                "issuance.max_refusal_records_per_minute",
                "must be at most 10000000 (0: every refusal only counted)",
            ));
        }
        if !(1..=3600).contains(&s.body_timeout_seconds) {
            return Err(bad(
                "issuance.body_timeout_seconds",
                "must be between 1 and 3600",
            ));
        }
        let max_ttl = match s.max_ttl_seconds {
            None => None,
            Some(0) => return Err(bad("issuance.max_ttl_seconds", "must be at least 1")),
            Some(n) => Some(Duration::from_secs(n)),
        };
        let mut callers = Vec::new();
        for (i, r) in s.callers.iter().enumerate() {
            let field = format!("issuance.callers[{i}]");
            let client = client_match(&field, r.id.as_deref(), r.fingerprint.as_deref())?;
            if r.allowed_prefixes.is_empty() {
                return Err(bad(
                    &format!("{field}.allowed_prefixes"),
                    "list at least one SPIFFE ID prefix",
                ));
            }
            let mut prefixes = Vec::new();
            for (j, p) in r.allowed_prefixes.iter().enumerate() {
                prefixes.push(
                    SpiffeIdPrefix::parse(p)
                        .map_err(|e| bad(&format!("{field}.allowed_prefixes[{j}]"), e))?,
                );
            }
            let mut dns_suffixes = Vec::new();
            for (j, d) in r.allowed_dns_suffixes.iter().enumerate() {
                dns_suffixes.push(
                    DnsSuffix::parse(d)
                        .map_err(|e| bad(&format!("{field}.allowed_dns_suffixes[{j}]"), e))?,
                );
            }
            callers.push(CallerRule {
                client,
                allowed_prefixes: prefixes,
                allowed_dns_suffixes: dns_suffixes,
            });
        }
        let Some((cert, key, ca)) = tls else {
            return Ok(None);
        };
        Ok(Some(IssuanceSettings {
            listen,
            cert,
            key,
            client_ca: ca,
            max_items: s.max_items,
            max_ttl,
            callers,
            limits,
            body_timeout: Duration::from_secs(s.body_timeout_seconds),
            handshake_timeout,
            max_concurrent_batches: s.max_concurrent_batches,
            max_refusal_records_per_minute: s.max_refusal_records_per_minute,
            svids_per_caller_per_second: s.svids_per_caller_per_second,
        }))
    }

    /// The rotation schedule, or `None` when `ca.auto_rotate` is off. An
    /// intermediate drains for the longest SVID lifetime:
    /// `issuance.max_ttl_seconds`, or the CA's default of one hour.
    pub fn rotation_settings(&self) -> Result<Option<RotationSettings>> {
        let c = &self.ca;
        if !(1..=86_400).contains(&c.rotation_check_seconds) {
            return Err(bad(
                "ca.rotation_check_seconds",
                "must be between 1 and 86400",
            ));
        }
        if !c.auto_rotate {
            return Ok(None);
        }
        Ok(Some(RotationSettings {
            check_every: Duration::from_secs(c.rotation_check_seconds),
            max_svid_ttl: self.max_svid_ttl(),
        }))
    }

    /// The longest lifetime of an SVID the CA issues
    /// (`issuance.max_ttl_seconds`, or the CA's default of one hour): how
    /// long a drained intermediate or JWT key must stay in the bundle.
    pub fn max_svid_ttl(&self) -> Duration {
        self.issuance
            .max_ttl_seconds
            .map_or(crate::ca::svid::DEFAULT_MAX_TTL, Duration::from_secs)
    }

    /// The engine's limits.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_batch: self.engine.max_batch,
            max_wait: Duration::from_micros(self.engine.max_wait_us),
            queue_capacity: self.engine.queue_capacity,
            deadline: Duration::from_millis(self.engine.deadline_ms),
            recheck_self_checked: self.engine.recheck_self_checked,
        }
    }

    /// The CPU backend's settings.
    pub fn cpu_config(&self) -> CpuConfig {
        CpuConfig {
            threads: self.backends.cpu.threads,
            engine: self.cpu_engine().unwrap_or(EngineChoice::Auto),
            max_batch: self.backends.cpu.max_batch,
        }
    }

    /// The CUDA backends' settings, checked; `cache_dir` resolved against
    /// the data dir.
    pub fn cuda_config(&self) -> Result<CudaConfig> {
        let c = &self.backends.cuda;
        let devices = match &c.devices {
            CudaDevices::All => None,
            CudaDevices::List(l) if l.is_empty() => {
                return Err(bad(
                    "backends.cuda.devices",
                    "list at least one device, or \"all\" (to turn the GPUs off: enabled = false)",
                ));
            }
            CudaDevices::List(l) => {
                let mut seen = std::collections::HashSet::new();
                if let Some(d) = l.iter().find(|d| !seen.insert(**d)) {
                    return Err(bad(
                        "backends.cuda.devices",
                        format!("device {d} is listed twice"),
                    ));
                }
                Some(l.clone())
            }
        };
        if !(1..=64).contains(&c.streams) {
            return Err(bad("backends.cuda.streams", "must be between 1 and 64"));
        }
        if !(1..=1_048_576).contains(&c.max_batch) {
            return Err(bad(
                "backends.cuda.max_batch",
                "must be between 1 and 1048576",
            ));
        }
        if c.key_cache_bytes < 1 << 20 {
            return Err(bad(
                "backends.cuda.key_cache_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        let key_cache_bytes = usize::try_from(c.key_cache_bytes)
            .map_err(|_| bad("backends.cuda.key_cache_bytes", "is too large"))?;
        if c.nvrtc.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(bad(
                "backends.cuda.nvrtc",
                "must name the NVRTC library (e.g. /usr/local/cuda/lib64/libnvrtc.so.13)",
            ));
        }
        let check: CheckPolicy = c
            .check
            .parse()
            .map_err(|e: String| bad("backends.cuda.check", e))?;
        let rsa_mapping: RsaMapping = c
            .rsa_mapping
            .parse()
            .map_err(|e: String| bad("backends.cuda.rsa_mapping", e))?;
        let cache_dir = if c.cache_dir.as_os_str().is_empty() {
            None
        } else if c.cache_dir.is_absolute() {
            Some(c.cache_dir.clone())
        } else {
            Some(self.data_dir.join(&c.cache_dir))
        };
        Ok(CudaConfig {
            enabled: c.enabled,
            devices,
            streams: c.streams,
            max_batch: c.max_batch,
            key_cache_bytes,
            nvrtc: c.nvrtc.clone(),
            cache_dir,
            check,
            rsa_mapping,
        })
    }

    /// The PKCS#11 backends' settings, one per configured token, checked:
    /// a PIN only from `pin_file` or `pin_env`, a token by label or slot.
    pub fn pkcs11_configs(&self) -> Result<Vec<Pkcs11Config>> {
        let many = self.backends.pkcs11.len() > 1;
        let mut out: Vec<Pkcs11Config> = Vec::new();
        for (i, p) in self.backends.pkcs11.iter().enumerate() {
            let field = if many {
                format!("backends.pkcs11[{i}]")
            } else {
                "backends.pkcs11".to_string()
            };
            let f = |name: &str| format!("{field}.{name}");
            if p.pin.is_some() {
                return Err(bad(
                    &f("pin"),
                    "a PIN is never read from the config file; put it in a file (pin_file) or an environment variable (pin_env)",
                ));
            }
            let pin = match (&p.pin_file, &p.pin_env) {
                (Some(_), Some(_)) => {
                    return Err(bad(&field, "give pin_file or pin_env, not both"));
                }
                (None, None) => {
                    return Err(bad(&field, "give pin_file or pin_env for the user PIN"));
                }
                (None, Some(v)) if v.is_empty() => {
                    return Err(bad(&f("pin_env"), "must name an environment variable"));
                }
                (None, Some(v)) => PinSource::Env(v.clone()),
                (Some(file), None) if file.is_absolute() => PinSource::File(file.clone()),
                (Some(file), None) => PinSource::File(self.data_dir.join(file)),
            };
            let token = match (&p.token_label, p.slot) {
                (Some(_), Some(_)) => {
                    return Err(bad(&field, "give token_label or slot, not both"));
                }
                (None, None) => return Err(bad(&field, "give token_label (or slot)")),
                (Some(l), None) if l.is_empty() || l.len() > 32 => {
                    return Err(bad(&f("token_label"), "must be 1 to 32 bytes"));
                }
                (Some(l), None) => TokenSelector::Label(l.clone()),
                (None, Some(s)) => TokenSelector::Slot(s),
            };
            if p.module.as_os_str().is_empty() {
                return Err(bad(
                    &f("module"),
                    "must name the PKCS#11 module (a .so file)",
                ));
            }
            if !(1..=256).contains(&p.sessions) {
                return Err(bad(&f("sessions"), "must be between 1 and 256"));
            }
            if p.max_batch == 0 {
                return Err(bad(&f("max_batch"), "must be at least 1"));
            }
            if out.iter().any(|o| o.module == p.module && o.token == token) {
                return Err(bad(&field, format!("token {token} is configured twice")));
            }
            out.push(Pkcs11Config {
                module: p.module.clone(),
                token,
                pin,
                sessions: p.sessions,
                max_batch: p.max_batch,
                calibrate: p.calibrate,
            });
        }
        Ok(out)
    }

    /// Where the key-encryption key comes from, resolved against the data dir.
    pub fn kek_source(&self) -> KekSource {
        match (&self.keys.kek_env, &self.keys.kek_file) {
            (Some(var), _) => KekSource::Env(var.clone()),
            (None, Some(f)) if f.is_absolute() => KekSource::File(f.clone()),
            (None, Some(f)) => KekSource::File(self.data_dir.join(f)),
            (None, None) => KekSource::File(self.data_dir.join("kek")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_and_match_code_defaults() {
        let c = Config::parse(DEFAULT_TOML, "embedded").unwrap();
        let d = EngineSection::default();
        assert_eq!(c.engine.max_batch, d.max_batch);
        assert_eq!(c.engine.max_wait_us, d.max_wait_us);
        assert_eq!(c.engine.queue_capacity, d.queue_capacity);
        assert_eq!(c.engine.deadline_ms, d.deadline_ms);
        assert_eq!(c.engine.recheck_self_checked, d.recheck_self_checked);
        assert_eq!(c.http.listen, default_listen());
        assert_eq!(
            c.kek_source(),
            KekSource::File(PathBuf::from("./sigmux-data/kek"))
        );
        let empty = Config::parse("", "empty").unwrap();
        assert_eq!(empty.engine.max_batch, c.engine.max_batch);
        assert!(c.pkcs11_configs().unwrap().is_empty());
        let d = CaSection::default();
        assert_eq!(c.ca.auto_rotate, d.auto_rotate);
        assert_eq!(c.ca.rotation_check_seconds, d.rotation_check_seconds);
        assert_eq!(
            c.rotation_settings().unwrap(),
            Some(RotationSettings {
                check_every: Duration::from_secs(60),
                max_svid_ttl: Duration::from_secs(3600),
            })
        );
        let off = Config::parse(
            "[ca]\nauto_rotate = false\n[issuance]\nmax_ttl_seconds = 600\n",
            "t",
        )
        .unwrap();
        assert_eq!(off.rotation_settings().unwrap(), None);
        let short = Config::parse(
            "[ca]\nrotation_check_seconds = 5\n[issuance]\nmax_ttl_seconds = 600\n",
            "t",
        )
        .unwrap();
        let r = short.rotation_settings().unwrap().unwrap();
        assert_eq!(r.check_every, Duration::from_secs(5));
        assert_eq!(r.max_svid_ttl, Duration::from_secs(600));
    }

    #[test]
    fn pkcs11_one_table_or_many() {
        let one = Config::parse(
            "[backends.pkcs11]\ntoken_label = \"a\"\npin_file = \"pin\"\n",
            "t",
        )
        .unwrap();
        let p = one.pkcs11_configs().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].pin,
            PinSource::File(PathBuf::from("./sigmux-data/pin"))
        );
        assert_eq!(p[0].module, PathBuf::from(pkcs11::DEFAULT_MODULE));
        let two = Config::parse(
            "[[backends.pkcs11]]\ntoken_label = \"a\"\npin_env = \"P\"\n[[backends.pkcs11]]\nslot = 7\npin_env = \"P\"\nsessions = 2\n",
            "t",
        )
        .unwrap();
        let p = two.pkcs11_configs().unwrap();
        assert_eq!(p[1].token, TokenSelector::Slot(7));
        assert_eq!(p[1].sessions, 2);
        let inline = Config::parse(
            "[backends.pkcs11]\ntoken_label = \"a\"\npin = \"secret-1234\"\n",
            "t",
        );
        let err = inline.unwrap_err().to_string();
        assert!(!err.contains("secret-1234"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[engine]\nmax_bach = 3\n", "max_bach"),
            ("[engine]\nmax_batch = 0\n", "engine.max_batch"),
            ("[engine]\nmax_batch = \"x\"\n", "line 2"),
            ("[backends.cpu]\nengine = \"gpu\"\n", "backends.cpu.engine"),
            ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
            ("[keys]\nkek_file = \"a\"\nkek_env = \"B\"\n", "keys"),
            ("[backends.tpu]\n", "tpu"),
            ("[ca]\nauto_rotat = true\n", "auto_rotat"),
            (
                "[ca]\nrotation_check_seconds = 0\n",
                "ca.rotation_check_seconds: must be between",
            ),
            ("[ca]\nauto_rotate = \"yes\"\n", "line 2"),
            (
                "[backends.pkcs11]\ntoken_label = \"t\"\npin = \"1234\"\n",
                "backends.pkcs11.pin: a PIN is never read from the config file",
            ),
            (
                "[backends.pkcs11]\ntoken_label = \"t\"\n",
                "give pin_file or pin_env",
            ),
            (
                "[[backends.pkcs11]]\ntoken_label = \"a\"\npin_env = \"P\"\n[[backends.pkcs11]]\npin_env = \"P\"\n",
                "backends.pkcs11[1]: give token_label",
            ),
            (
                "[backends.pkcs11]\ntoken_label = \"t\"\npin_env = \"P\"\nsessions = 0\n",
                "backends.pkcs11.sessions",
            ),
            ("[backends.pkcs11]\ntoken_lable = \"t\"\n", "token_lable"),
            (
                "[keyless]\ncert = \"c.pem\"\n",
                "set all of cert, key and client_ca",
            ),
            (
                "[keyless]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n[[keyless.clients]]\nid = \"spiffe://TD/x\"\nkeys = [\"*\"]\n",
                "keyless.clients[0].id",
            ),
            (
                "[keyless]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n[[keyless.clients]]\nfingerprint = \"ab\"\nkeys = [\"*\"]\n",
                "keyless.clients[0].fingerprint",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("config: t.toml"), "{err}");
        }
    }

    #[test]
    fn cuda_section_parses_and_checks() {
        let c = Config::parse(DEFAULT_TOML, "embedded").unwrap();
        let d = CudaConfig::default();
        let got = c.cuda_config().unwrap();
        assert_eq!(
            (got.enabled, got.devices, got.streams, got.max_batch),
            (d.enabled, None, d.streams, d.max_batch)
        );
        assert_eq!(got.key_cache_bytes, d.key_cache_bytes);
        assert_eq!(got.check, CheckPolicy::All);
        assert_eq!(got.rsa_mapping, RsaMapping::Wide);
        assert_eq!(
            got.cache_dir,
            Some(PathBuf::from("./sigmux-data/kernel-cache"))
        );
        let c = Config::parse(
            "[backends.cuda]\ndevices = [1, 0]\nstreams = 2\ncheck = \"sample:64\"\nrsa_mapping = \"coop:16\"\nnvrtc = \"/opt/libnvrtc.so.13\"\ncache_dir = \"\"\n",
            "t",
        )
        .unwrap()
        .cuda_config()
        .unwrap();
        assert_eq!(c.devices, Some(vec![1, 0]));
        assert_eq!(c.check, CheckPolicy::Sample(64));
        assert_eq!(c.rsa_mapping, RsaMapping::Coop(16));
        assert_eq!(c.cache_dir, None);
        assert_eq!(c.nvrtc, Some(PathBuf::from("/opt/libnvrtc.so.13")));
        for (text, want) in [
            ("[backends.cuda]\nstreams = 0\n", "backends.cuda.streams"),
            (
                "[backends.cuda]\nmax_batch = 0\n",
                "backends.cuda.max_batch",
            ),
            (
                "[backends.cuda]\nkey_cache_bytes = 10\n",
                "backends.cuda.key_cache_bytes",
            ),
            ("[backends.cuda]\ncheck = \"some\"\n", "backends.cuda.check"),
            (
                "[backends.cuda]\ncheck = \"sample:0\"\n",
                "backends.cuda.check",
            ),
            (
                "[backends.cuda]\nrsa_mapping = \"coop:4\"\n",
                "backends.cuda.rsa_mapping",
            ),
            (
                "[backends.cuda]\nrsa_mapping = \"warp\"\n",
                "\"thread\", \"wide\", \"coop:8\", \"coop:16\"",
            ),
            (
                "[backends.cuda]\ndevices = \"first\"\n",
                "backends.cuda.devices",
            ),
            ("[backends.cuda]\ndevices = []\n", "backends.cuda.devices"),
            (
                "[backends.cuda]\ndevices = [0, 0]\n",
                "backends.cuda.devices",
            ),
            ("[backends.cuda]\nnvrtc = \"\"\n", "backends.cuda.nvrtc"),
            ("[backends.cuda]\nstream = 2\n", "stream"),
            ("[backends.cuda]\nenabled = \"yes\"\n", "line 2"),
        ] {
            let err = Config::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn issuance_section_parses_and_checks() {
        let c = Config::parse("", "t").unwrap();
        assert!(c.issuance_settings().unwrap().is_none());
        let c = Config::parse(
            "[issuance]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n[[issuance.callers]]\nid = \"spiffe://td/issuer\"\nallowed_prefixes = [\"spiffe://td/ns/prod\"]\n",
            "t",
        )
        .unwrap();
        let s = c.issuance_settings().unwrap().unwrap();
        assert_eq!(s.max_items, 1000);
        assert_eq!(s.max_ttl, None);
        assert_eq!(s.callers.len(), 1);
        for (text, want) in [
            ("[issuance]\ncert = \"c\"\n", "issuance: set all of"),
            (
                "[issuance]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\nmax_items = 0\n",
                "issuance.max_items",
            ),
            (
                "[issuance]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n[[issuance.callers]]\nid = \"spiffe://td/x\"\nallowed_prefixes = [\"http://td\"]\n",
                "issuance.callers[0].allowed_prefixes[0]",
            ),
            (
                "[issuance]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n[[issuance.callers]]\nallowed_prefixes = [\"spiffe://td\"]\n",
                "issuance.callers[0]: give exactly one",
            ),
        ] {
            let err = Config::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn issuance_caller_dns_suffixes_default_to_none_and_are_checked() {
        let head = "[issuance]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n\
                    [[issuance.callers]]\nid = \"spiffe://td/a\"\nallowed_prefixes = [\"spiffe://td\"]\n";
        let suffixes = |text: &str| -> Vec<Vec<String>> {
            let c = Config::parse(text, "t").unwrap();
            let s = c.issuance_settings().unwrap().unwrap();
            s.callers
                .iter()
                .map(|r| {
                    r.allowed_dns_suffixes
                        .iter()
                        .map(|d| d.as_str().to_string())
                        .collect()
                })
                .collect()
        };
        // Unset: none, so the caller gets no DNS SAN.
        assert_eq!(suffixes(head), [Vec::<String>::new()]);
        // Kept lowercase: names are compared without regard to case.
        assert_eq!(
            suffixes(&format!(
                "{head}allowed_dns_suffixes = [\"Prod.SVC\", \"cluster.local\", \"internal\"]\n"
            )),
            [vec!["prod.svc", "cluster.local", "internal"]]
        );
        let second =
            "[[issuance.callers]]\nfingerprint = \"00\"\nallowed_prefixes = [\"spiffe://td\"]\n";
        let second = second.replace("\"00\"", &format!("\"{}\"", "ab".repeat(32)));
        for (dns, want) in [
            (
                "[\"\"]",
                "issuance.callers[1].allowed_dns_suffixes[0]: invalid DNS name '': empty",
            ),
            (
                "[\"ok.svc\", \".prod.svc\"]",
                "issuance.callers[1].allowed_dns_suffixes[1]: '.prod.svc': write it without the leading '.'",
            ),
            (
                "[\"*.prod.svc\"]",
                "issuance.callers[1].allowed_dns_suffixes[0]: '*.prod.svc': write it without a wildcard",
            ),
            (
                "[\"prod.svc.\"]",
                "issuance.callers[1].allowed_dns_suffixes[0]: invalid DNS name 'prod.svc.': trailing dot",
            ),
            (
                "[\"a_b.svc\"]",
                "issuance.callers[1].allowed_dns_suffixes[0]: invalid DNS name 'a_b.svc'",
            ),
            (
                "[\"a..svc\"]",
                "issuance.callers[1].allowed_dns_suffixes[0]: invalid DNS name 'a..svc': empty label",
            ),
            (
                "[\"10.0.0.1\"]",
                "issuance.callers[1].allowed_dns_suffixes[0]: invalid DNS name '10.0.0.1'",
            ),
            ("\"prod.svc\"", "expected a sequence"),
        ] {
            let text = format!("{head}{second}allowed_dns_suffixes = {dns}\n");
            let err = Config::parse(&text, "t").unwrap_err().to_string();
            assert!(err.contains(want), "{dns}: {err}");
        }
        // A misspelt field is refused, not ignored (it would deny silently).
        let err = Config::parse(&format!("{head}allowed_dns_suffix = [\"a.svc\"]\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed_dns_suffix"), "{err}");
    }
}
