//! The issuance endpoints: `POST /v1/x509svids:batch`, `POST /v1/jwtsvids`,
//! `GET /v1/bundle` (PEM, also at `/v1/bundle.pem`) and
//! `GET /v1/bundle.jwks` (the SPIFFE bundle as a JWK Set).
//!
//! Request bodies are parsed strictly (unknown fields are refused) and a
//! malformed one gets 400 with a JSON error; a body not received within
//! `issuance.body_timeout_seconds` gets 408. In a batch, a bad item fails
//! alone, one that cannot be read as an item too (`item_malformed`: a
//! field of the wrong type, unknown or missing); every valid item is
//! signed in one engine group. An item's DNS names must lie under the
//! `allowed_dns_suffixes` of the caller's rule ([`check_dns_names`]);
//! without any, a caller gets no DNS SAN. A batch's CPU
//! work (CSR checks, certificate building, JSON) runs on a blocking thread,
//! never on the async workers the keyless server shares, and at most
//! `issuance.max_concurrent_batches` run at once.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::metrics::IssuanceMetrics;
use super::rate::CallerRate;
use super::refusals::{self, RefusalBudget};
use super::{CallerRule, IssuanceSettings, Peer, caller_allows};
use crate::ca::authority::{self, CaState, CaStatus};
use crate::ca::crl::CrlCache;
use crate::ca::csr::{self, CsrError};
use crate::ca::spiffe::{SpiffeId, TrustDomain};
use crate::ca::svid::{self, Issuer, SvidPolicy, SvidRequest};
use crate::engine::Engine;
use crate::keyless::auth::{ClientIdentity, ClientMatch};
use crate::keys::KeyStore;

/// Body bytes allowed per batch item (a CSR is at most 64 KiB).
const BODY_PER_ITEM: usize = 16 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The data directory holding the CA state.
    pub data_dir: PathBuf,
    /// The signing engine.
    pub engine: Arc<Engine>,
    /// The key store holding the CA keys.
    pub keys: Arc<KeyStore>,
    /// Listener settings (their `callers` as at start: the rules in force
    /// are [`ApiState::callers`]).
    pub settings: Arc<IssuanceSettings>,
    /// The caller rules in force, replaced whole at SIGHUP
    /// ([`ApiState::set_callers`]).
    pub callers: Arc<parking_lot::RwLock<Arc<Vec<CallerRule>>>>,
    /// Every issued SVID and refused item is recorded here, on disk,
    /// before the response carrying it leaves.
    pub audit: Arc<crate::audit::AuditLog>,
    /// The CA state as last read, with the file's stamp: re-read only when
    /// `ca rotate`/`ca revoke` (or the server's own rotation) replaced it.
    pub ca_state: Arc<parking_lot::Mutex<CachedState>>,
    /// One permit per X.509-SVID batch being worked on
    /// (`issuance.max_concurrent_batches`).
    pub batches: Arc<tokio::sync::Semaphore>,
    /// Signed CRLs, reused until they near their nextUpdate or the CA
    /// state they list changes.
    pub crl_cache: Arc<CrlCache>,
    /// Refusal records each caller may add to the audit log per minute
    /// (`issuance.max_refusal_records_per_minute`); past it they are
    /// counted in a summary record.
    pub refusals: Arc<RefusalBudget>,
    /// The listener's metrics (rendered on `/metrics`).
    pub metrics: Arc<IssuanceMetrics>,
    /// Each caller's SVID rate, when limited
    /// (`issuance.svids_per_caller_per_second`).
    pub rate: Option<Arc<CallerRate>>,
}

impl ApiState {
    /// Replaces the caller rules: every request from now on, on open
    /// connections too, is judged by `rules`.
    pub fn set_callers(&self, rules: Vec<CallerRule>) {
        *self.callers.write() = Arc::new(rules);
    }

    /// The caller rules in force.
    #[must_use]
    pub fn caller_rules(&self) -> Arc<Vec<CallerRule>> {
        self.callers.read().clone()
    }

    /// The state of a listener with `settings`, nothing cached yet.
    #[must_use]
    pub fn new(
        data_dir: PathBuf,
        engine: Arc<Engine>,
        keys: Arc<KeyStore>,
        settings: Arc<IssuanceSettings>,
        audit: Arc<crate::audit::AuditLog>,
    ) -> ApiState {
        let batches = Arc::new(tokio::sync::Semaphore::new(
            settings.max_concurrent_batches.max(1),
        ));
        // A full bucket passes a whole batch.
        let rate = (settings.svids_per_caller_per_second > 0.0).then(|| {
            let per_second = settings.svids_per_caller_per_second;
            Arc::new(CallerRate::new(
                per_second,
                per_second.max(settings.max_items as f64),
            ))
        });
        let refusals = Arc::new(RefusalBudget::new(
            settings.max_refusal_records_per_minute,
            Duration::from_secs(60),
        ));
        ApiState {
            data_dir,
            engine,
            keys,
            callers: Arc::new(parking_lot::RwLock::new(Arc::new(settings.callers.clone()))),
            settings,
            audit,
            ca_state: Arc::default(),
            batches,
            crl_cache: Arc::default(),
            refusals,
            metrics: Arc::default(),
            rate,
        }
    }

    /// Appends the listener's metrics, and the CA's when its state can be
    /// read, to `out`.
    pub async fn render_metrics(&self, out: &mut String) {
        let ca = load_state(self).await.ok();
        self.metrics
            .render(out, self.crl_cache.signed(), ca.as_deref());
    }

    /// Counts a refusal with `code` for `caller` in the metrics and its
    /// refusal budget: whether to record it in full, and the summary of
    /// the caller's previous window if this refusal starts a new one.
    fn refusal(
        &self,
        caller: &str,
        code: &'static str,
        now: Instant,
    ) -> (bool, Option<serde_json::Value>) {
        self.metrics.refused(code);
        let (full, ended) = self.refusals.admit(caller, code, now);
        if !full {
            self.metrics
                .refusal_records_held_back
                .fetch_add(1, Ordering::Relaxed);
        }
        (full, ended)
    }

    /// Writes the summaries of refusal windows that have ended (all of
    /// them when `all`, at shutdown) to the audit log.
    ///
    /// # Errors
    ///
    /// The audit log's, when it cannot be written.
    pub fn record_refusal_summaries(&self, all: bool) -> crate::Result<()> {
        let ended = self.refusals.take_ended(Instant::now(), all);
        if ended.is_empty() {
            return Ok(());
        }
        self.audit.append_many(
            ended
                .into_iter()
                .map(|s| (refusals::SUMMARY_EVENT, s))
                .collect(),
        )
    }
}

/// The CA state and the stamp of the file it was read from.
pub type CachedState = Option<(StateStamp, Arc<CaState>)>;

/// What identifies one version of the CA state file: it is always replaced
/// whole (written aside and renamed), so a new version is a new inode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StateStamp {
    inode: u64,
    len: u64,
    modified: std::time::SystemTime,
}

impl StateStamp {
    fn of(data_dir: &std::path::Path) -> Option<StateStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(authority::state_file(data_dir)).ok()?;
        Some(StateStamp {
            inode: m.ino(),
            len: m.len(),
            modified: m.modified().ok()?,
        })
    }
}

/// The issuance router.
pub fn router(state: ApiState) -> Router {
    // Bodies up to twice the limit are read in full and refused by
    // `body_bytes`, so the client gets its JSON error on a connection that
    // is still whole; past that the connection is cut after the answer.
    let hard_limit = body_limit(&state.settings).saturating_mul(2);
    Router::new()
        .route("/v1/x509svids:batch", post(x509_batch))
        .route("/v1/jwtsvids", post(jwt_svid))
        .route("/v1/bundle", get(bundle_jwks))
        .route("/v1/bundle.pem", get(bundle_pem))
        .route("/v1/bundle.jwks", get(bundle_jwks))
        .route("/v1/crl/{serial}", get(crl))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(hard_limit))
        .with_state(state)
}

/// An unknown path, answered in the API's JSON error form.
async fn not_found(uri: axum::http::Uri) -> ApiError {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}", excerpt(uri.path())),
    )
}

/// A known path with the wrong method, answered in the API's JSON error
/// form.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", excerpt(uri.path())),
    )
}

/// The most body bytes a request may carry.
fn body_limit(settings: &IssuanceSettings) -> usize {
    settings
        .max_items
        .saturating_mul(BODY_PER_ITEM)
        .saturating_add(64 * 1024)
}

/// The body, or a JSON error: one over [`body_limit`] gets 413
/// `body_too_large` (also when axum's [`DefaultBodyLimit`] refused it, rather
/// than its plain-text answer).
fn body_bytes(s: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let limit = body_limit(&s.settings);
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    };
    match body {
        Ok(b) if b.len() > limit => Err(too_large()),
        Ok(b) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large()),
        Err(e) => Err(error(e.status(), "bad_request", e.body_text())),
    }
}

/// Reads the request body within `issuance.body_timeout_seconds` (408
/// `body_timeout` past it: a caller trickling its body cannot hold the
/// connection), then checks it as [`body_bytes`] does.
async fn read_body(s: &ApiState, req: Request) -> Result<Bytes, ApiError> {
    // JSON only: a form or plain-text POST is what a browser may send
    // across sites without asking, and it never reaches the parser.
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media.as_deref() != Some("application/json") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be JSON with Content-Type: application/json (got {})",
                media.map_or_else(|| "none".to_string(), |m| format!("'{}'", excerpt(&m)))
            ),
        ));
    }
    let limit = s.settings.body_timeout;
    match tokio::time::timeout(limit, Bytes::from_request(req, s)).await {
        Ok(body) => body_bytes(s, body),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "request body not received within {} s (issuance.body_timeout_seconds)",
                limit.as_secs_f64()
            ),
        )),
    }
}

/// The CSR as [`csr::parse_and_verify`] takes it: PEM as given, anything
/// else decoded from standard base64 (whitespace ignored, padding
/// optional) into DER.
fn csr_input(text: &str) -> Result<Cow<'_, [u8]>, CsrError> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const B64: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let t = text.trim_ascii();
    if t.is_empty() || t.starts_with("-----BEGIN") {
        return Ok(Cow::Borrowed(text.as_bytes()));
    }
    let compact: Vec<u8> = t.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.len() / 4 * 3 > csr::MAX_CSR_LEN {
        return Err(CsrError::TooLarge {
            len: compact.len() / 4 * 3,
            max: csr::MAX_CSR_LEN,
        });
    }
    B64.decode(&compact).map(Cow::Owned).map_err(|e| {
        CsrError::Malformed(format!(
            "not PEM ('-----BEGIN CERTIFICATE REQUEST-----') and not standard base64 of DER ({e})"
        ))
    })
}

/// `POST /v1/x509svids:batch` body. The body itself is parsed strictly: one
/// that is not JSON, not an object, has fields besides `items` or an
/// `items` that is not a list is refused whole. Each item is read on its
/// own ([`BatchEntry`]), so a malformed item fails alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The SVIDs to issue.
    pub items: Vec<BatchEntry>,
}

/// One entry of a batch's `items`: the item, or why it is not one (a
/// field of the wrong type, unknown, missing or given twice, or an entry
/// that is not an object), refused alone with `item_malformed`.
#[derive(Debug)]
pub struct BatchEntry(pub Result<BatchItem, MalformedItem>);

/// One X.509-SVID request.
#[derive(Debug)]
pub struct BatchItem {
    /// PKCS#10 CSR, PEM or base64 DER.
    pub csr: String,
    /// The SPIFFE ID to put in the URI SAN.
    pub spiffe_id: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// Requested lifetime (capped by the policy; unset: the maximum).
    pub ttl_seconds: Option<u64>,
}

/// A batch item that could not be read.
#[derive(Debug)]
pub struct MalformedItem {
    /// The requested SPIFFE ID when the item had one as a string (for the
    /// audit record), else empty.
    pub spiffe_id: String,
    /// What is wrong, naming the field:
    /// `ttl_seconds: expected a positive integer (seconds), got -5`.
    pub message: String,
}

/// `POST /v1/jwtsvids` body.
#[derive(Debug)]
pub struct JwtRequest {
    /// The subject SPIFFE ID.
    pub spiffe_id: String,
    /// The audiences (at least one).
    pub audience: Vec<String>,
    /// Requested lifetime (capped by the policy; unset: the maximum).
    pub ttl_seconds: Option<u64>,
}

/// A `POST /v1/jwtsvids` body as read: the request, or what is wrong with
/// it, naming the field.
struct JwtBody(Result<JwtRequest, String>);

/// A field name in a batch item or a JWT-SVID request.
enum Field {
    Csr,
    SpiffeId,
    DnsNames,
    Audience,
    TtlSeconds,
    /// Any other name (at most 64 characters of it, for the message).
    Other(String),
}

impl Field {
    fn name(&self) -> &str {
        match self {
            Field::Csr => "csr",
            Field::SpiffeId => "spiffe_id",
            Field::DnsNames => "dns_names",
            Field::Audience => "audience",
            Field::TtlSeconds => "ttl_seconds",
            Field::Other(name) => name,
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
                Ok(match s {
                    "csr" => Field::Csr,
                    "spiffe_id" => Field::SpiffeId,
                    "dns_names" => Field::DnsNames,
                    "audience" => Field::Audience,
                    "ttl_seconds" => Field::TtlSeconds,
                    other => Field::Other(excerpt(other)),
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON value read whatever its type: what request fields hold (a
/// string, a non-negative integer, null, a list of strings) is kept,
/// anything else only described for the message. Reading a field this way
/// costs what reading it as its type would.
enum Loose {
    Str(String),
    Uint(u64),
    Null,
    Strs(Vec<String>),
    /// A list holding something other than a string: its index, and what.
    BadList(usize, String),
    /// Anything else, as a message says it (`-5`, `an object`).
    Other(String),
}

impl Loose {
    /// What the value was, for a message.
    fn describe(&self) -> String {
        match self {
            Loose::Str(s) => format!("\"{}\"", excerpt(s)),
            Loose::Uint(n) => n.to_string(),
            Loose::Null => "null".into(),
            Loose::Strs(_) | Loose::BadList(..) => "a list".into(),
            Loose::Other(d) => d.clone(),
        }
    }

    fn string(self, name: &str) -> Result<String, String> {
        match self {
            Loose::Str(s) => Ok(s),
            v => Err(format!("{name}: expected a string, got {}", v.describe())),
        }
    }

    fn strings(self, name: &str) -> Result<Vec<String>, String> {
        match self {
            Loose::Strs(v) => Ok(v),
            Loose::BadList(i, got) => Err(format!("{name}[{i}]: expected a string, got {got}")),
            v => Err(format!(
                "{name}: expected a list of strings, got {}",
                v.describe()
            )),
        }
    }

    /// A lifetime in seconds; null is none.
    fn seconds(self, name: &str) -> Result<Option<u64>, String> {
        match self {
            Loose::Uint(n) => Ok(Some(n)),
            Loose::Null => Ok(None),
            v => Err(format!(
                "{name}: expected a positive integer (seconds), got {}",
                v.describe()
            )),
        }
    }
}

/// At most 64 characters of `s`, then `...` when cut.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Loose, E> {
        Ok(Loose::Other(b.to_string()))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Loose, E> {
        Ok(u64::try_from(n).map_or_else(|_| Loose::Other(n.to_string()), Loose::Uint))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Loose, E> {
        Ok(Loose::Uint(n))
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Loose, E> {
        // `{:?}`: 300.0 reads as a fraction, not as 300.
        Ok(Loose::Other(format!("{x:?}")))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Loose, E> {
        Ok(Loose::Str(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Loose, E> {
        Ok(Loose::Str(s))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Loose, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
        let mut strs = Vec::new();
        while let Some(v) = seq.next_element::<Loose>()? {
            let Loose::Str(s) = v else {
                let bad = Loose::BadList(strs.len(), v.describe());
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(bad);
            };
            strs.push(s);
        }
        Ok(Loose::Strs(strs))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Other("an object".into()))
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Loose, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// Reads every field of a request object whatever its type (so the JSON
/// around is parsed on) and hands each known one to `take`, which says
/// what is wrong with it, if anything. The answer is the first problem:
/// `take`'s, or an unknown field (`fields` lists the known ones).
fn read_fields<'de, A: MapAccess<'de>>(
    map: &mut A,
    fields: &str,
    mut take: impl FnMut(Field, Loose) -> Result<(), String>,
) -> Result<Result<(), String>, A::Error> {
    let mut first = Ok(());
    while let Some(field) = map.next_key::<Field>()? {
        let r = if let Field::Other(name) = &field {
            map.next_value::<IgnoredAny>()?;
            Err(unknown_field(name, fields))
        } else {
            take(field, map.next_value::<Loose>()?)
        };
        if first.is_ok() {
            first = r;
        }
    }
    Ok(first)
}

fn unknown_field(name: &str, fields: &str) -> String {
    format!("{name}: unknown field (the fields are {fields})")
}

/// Puts a field's value in `slot`, or says what is wrong with it.
fn set<T>(slot: &mut Option<T>, name: &str, v: Result<T, String>) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{name}: given more than once"));
    }
    *slot = Some(v?);
    Ok(())
}

/// A request object read field by field ([`read_fields`]); any other JSON
/// value reads as the message saying it is not one.
trait RequestObject: Sized {
    /// The known fields, for messages.
    const FIELDS: &'static str;
    fn read<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
    fn malformed(message: String) -> Self;
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<T: RequestObject> ObjectVisitor<T> {
    fn not_an_object(v: &Loose) -> T {
        T::malformed(format!(
            "expected an object ({}), got {}",
            T::FIELDS,
            v.describe()
        ))
    }
}

impl<'de, T: RequestObject> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::read(map)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<T, E> {
        Ok(Self::not_an_object(&LooseVisitor.visit_bool(b)?))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        Ok(Self::not_an_object(&LooseVisitor.visit_i64(n)?))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        Ok(Self::not_an_object(&LooseVisitor.visit_u64(n)?))
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<T, E> {
        Ok(Self::not_an_object(&LooseVisitor.visit_f64(x)?))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        Ok(Self::not_an_object(&Loose::Str(excerpt(s))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(Self::not_an_object(&Loose::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::not_an_object(&Loose::Strs(Vec::new())))
    }
}

impl RequestObject for BatchEntry {
    const FIELDS: &'static str = "csr, spiffe_id, dns_names, ttl_seconds";

    fn read<'de, A: MapAccess<'de>>(mut map: A) -> Result<BatchEntry, A::Error> {
        let (mut csr, mut id, mut dns, mut ttl) = (None, None, None, None);
        let read = read_fields(&mut map, Self::FIELDS, |field, v| match field {
            Field::Csr => set(&mut csr, "csr", v.string("csr")),
            Field::SpiffeId => set(&mut id, "spiffe_id", v.string("spiffe_id")),
            Field::DnsNames => set(&mut dns, "dns_names", v.strings("dns_names")),
            Field::TtlSeconds => set(&mut ttl, "ttl_seconds", v.seconds("ttl_seconds")),
            f => Err(unknown_field(f.name(), Self::FIELDS)),
        })?;
        let item = read.and_then(|()| {
            let csr = csr.ok_or_else(|| "csr: missing".to_string())?;
            let spiffe_id = id.take().ok_or_else(|| "spiffe_id: missing".to_string())?;
            Ok(BatchItem {
                csr,
                spiffe_id,
                dns_names: dns.unwrap_or_default(),
                ttl_seconds: ttl.flatten(),
            })
        });
        Ok(BatchEntry(item.map_err(|message| MalformedItem {
            spiffe_id: id.unwrap_or_default(),
            message,
        })))
    }

    fn malformed(message: String) -> BatchEntry {
        BatchEntry(Err(MalformedItem {
            spiffe_id: String::new(),
            message,
        }))
    }
}

impl<'de> Deserialize<'de> for BatchEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BatchEntry, D::Error> {
        d.deserialize_any(ObjectVisitor(PhantomData))
    }
}

impl RequestObject for JwtBody {
    const FIELDS: &'static str = "spiffe_id, audience, ttl_seconds";

    fn read<'de, A: MapAccess<'de>>(mut map: A) -> Result<JwtBody, A::Error> {
        let (mut id, mut audience, mut ttl) = (None, None, None);
        let read = read_fields(&mut map, Self::FIELDS, |field, v| match field {
            Field::SpiffeId => set(&mut id, "spiffe_id", v.string("spiffe_id")),
            Field::Audience => set(&mut audience, "audience", v.strings("audience")),
            Field::TtlSeconds => set(&mut ttl, "ttl_seconds", v.seconds("ttl_seconds")),
            f => Err(unknown_field(f.name(), Self::FIELDS)),
        })?;
        Ok(JwtBody(read.and_then(|()| {
            Ok(JwtRequest {
                spiffe_id: id.ok_or_else(|| "spiffe_id: missing".to_string())?,
                audience: audience.ok_or_else(|| "audience: missing".to_string())?,
                ttl_seconds: ttl.flatten(),
            })
        })))
    }

    fn malformed(message: String) -> JwtBody {
        JwtBody(Err(message))
    }
}

impl<'de> Deserialize<'de> for JwtBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JwtBody, D::Error> {
        d.deserialize_any(ObjectVisitor(PhantomData))
    }
}

/// An error answer: HTTP status, a stable code and a message, sent as
/// `{"error":{"code","message"}}` (an overload also carries `Retry-After`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After`, on answers that ask the caller to retry.
    retry_after: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        r
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

/// `e`, asking the caller to retry after `secs` seconds.
fn retry_after(mut e: ApiError, secs: u64) -> ApiError {
    e.retry_after = Some(secs.max(1));
    e
}

/// Takes `n` SVIDs from the caller's rate (`issuance.svids_per_caller_per_second`),
/// or answers 429 `rate_limited` with the wait in `Retry-After`.
fn check_rate(s: &ApiState, peer: &Peer, n: usize) -> Result<(), ApiError> {
    let Some(rate) = &s.rate else { return Ok(()) };
    rate.take(&peer.identity.label(), n, Instant::now())
        .map_err(|wait| {
            let secs = wait.as_secs_f64().ceil() as u64;
            retry_after(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "{n} SVIDs asked for beyond this caller's rate (issuance.svids_per_caller_per_second); retry in {secs} s"
                    ),
                ),
                secs,
            )
        })
}

fn overloaded() -> ApiError {
    retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the signing engine is overloaded; retry later",
        ),
        1,
    )
}

/// 503 when `issuance.max_concurrent_batches` batches are already being
/// worked on.
fn too_many_batches(s: &ApiState) -> ApiError {
    retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_batches",
            format!(
                "{} X.509-SVID batches are already being issued (issuance.max_concurrent_batches); retry later",
                s.settings.max_concurrent_batches
            ),
        ),
        1,
    )
}

fn internal(message: impl Into<String>) -> ApiError {
    error(StatusCode::INTERNAL_SERVER_ERROR, "ca_internal", message)
}

/// Parses a JSON body strictly, or answers 400 naming the problem.
fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed request body: expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed request body: {e}"),
        )
    })
}

/// Loads the CA state (a file read, off the async threads).
/// The CA state: the cached copy while the file is unchanged (one `stat`),
/// else read and parsed off the async threads.
async fn load_state(s: &ApiState) -> Result<Arc<CaState>, ApiError> {
    let stamp = StateStamp::of(&s.data_dir);
    if let (Some(now), Some((seen, st))) = (stamp, s.ca_state.lock().as_ref())
        && now == *seen
    {
        return Ok(st.clone());
    }
    let dir = s.data_dir.clone();
    match tokio::task::spawn_blocking(move || CaState::require(&dir)).await {
        Ok(Ok(st)) => {
            let st = Arc::new(st);
            // Stamped before reading: a change in between is read next time.
            if let Some(stamp) = stamp {
                *s.ca_state.lock() = Some((stamp, st.clone()));
            }
            Ok(st)
        }
        Ok(Err(e)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_ca",
            e.to_string(),
        )),
        Err(e) => Err(internal(format!("loading CA state: {e}"))),
    }
}

/// The signing policy of this listener for the CA's trust domain.
fn policy(s: &ApiState, td: TrustDomain) -> SvidPolicy {
    let mut p = SvidPolicy {
        trust_domain: Some(td),
        ..SvidPolicy::default()
    };
    if let Some(t) = s.settings.max_ttl {
        p.max_ttl = t;
    }
    p
}

/// The active intermediate as an [`Issuer`].
fn active_issuer(s: &ApiState, st: &CaState) -> Result<Issuer, ApiError> {
    let rec = st
        .intermediates
        .iter()
        .rev()
        .find(|i| i.status == CaStatus::Active)
        .ok_or_else(|| internal("the CA has no active intermediate"))?;
    let cert = pem::parse(&rec.cert_pem)
        .map_err(|e| internal(format!("active intermediate certificate: {e}")))?;
    let key = s
        .keys
        .get(&rec.key_name)
        .map_err(|e| internal(format!("active intermediate key: {e}")))?;
    Ok(Issuer {
        cert_der: cert.contents().to_vec(),
        key,
        scheme: rec.scheme,
        chain_der: Vec::new(),
    })
}

/// Checks a requested SPIFFE ID: syntax, trust domain, then the caller's
/// rules. Errors are `(code, message)`.
fn check_id(
    s: &ApiState,
    td: &TrustDomain,
    peer: &Peer,
    raw: &str,
) -> Result<SpiffeId, (&'static str, String)> {
    let id = SpiffeId::parse(raw).map_err(|e| (e.code(), format!("invalid SPIFFE ID: {e}")))?;
    if !id.is_member_of(td) {
        return Err((
            "spiffe_id_trust_domain",
            format!("{id} is not in the trust domain {td}"),
        ));
    }
    if !caller_allows(&s.caller_rules(), &peer.identity, &id) {
        return Err((
            "forbidden",
            format!("caller {} may not request {id}", peer.identity.label()),
        ));
    }
    Ok(id)
}

/// A DNS suffix under which a caller may request DNS SANs
/// (`issuance.callers[i].allowed_dns_suffixes`): a DNS name, lowercase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSuffix(String);

impl DnsSuffix {
    /// Reads a suffix: a DNS name as a DNS SAN takes it (LDH labels, no
    /// wildcard, no trailing dot), without a leading dot; any case, kept
    /// lowercase.
    ///
    /// # Errors
    ///
    /// What is wrong with it, for a message naming the config field.
    pub fn parse(s: &str) -> Result<DnsSuffix, String> {
        if let Some(rest) = s.strip_prefix('.') {
            return Err(format!(
                "'{}': write it without the leading '.' ('{rest}' allows {rest} and names under it, such as a.{rest}, never names that only end the same way)",
                excerpt(s)
            ));
        }
        if s.starts_with('*') {
            return Err(format!(
                "'{}': write it without a wildcard: a suffix already allows every name under it",
                excerpt(s)
            ));
        }
        svid::validate_dns_name(s, false).map_err(|e| e.to_string())?;
        Ok(DnsSuffix(s.to_ascii_lowercase()))
    }

    /// The suffix, lowercase.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` (a DNS SAN, any case) is the suffix itself or lies
    /// under it: it ends with `.` and the suffix, so `prod.svc` covers
    /// `prod.svc` and `a.prod.svc`, never `evilprod.svc`. A wildcard
    /// `*.base` is judged by its base, every name it stands for then lying
    /// under the suffix too.
    #[must_use]
    pub fn covers(&self, name: &str) -> bool {
        let base = name.strip_prefix("*.").unwrap_or(name).as_bytes();
        let suffix = self.0.as_bytes();
        match base.len().checked_sub(suffix.len()) {
            Some(0) => base.eq_ignore_ascii_case(suffix),
            Some(cut) => base[cut - 1] == b'.' && base[cut..].eq_ignore_ascii_case(suffix),
            None => false,
        }
    }
}

/// A batch item refused before signing: its code, the message and, when a
/// DNS name was refused, that name (for the audit record).
#[derive(Debug, PartialEq, Eq)]
pub struct ItemRefusal {
    /// The item's error code.
    pub code: &'static str,
    /// What is wrong, for the caller.
    pub message: String,
    /// The DNS name refused by the caller's rules, if that was the reason.
    pub dns_name: Option<String>,
}

/// Whether `rule` names `who`.
fn names_caller(rule: &CallerRule, who: &ClientIdentity) -> bool {
    match &rule.client {
        ClientMatch::SpiffeId(s) => who.spiffe_id.as_deref() == Some(s.as_str()),
        ClientMatch::Fingerprint(f) => *f == who.fingerprint,
    }
}

/// Checks the DNS names `who` requests with `id` (which its rules allow)
/// and returns them lowercased, as the SVID will carry them. Each must be
/// a valid DNS SAN under `policy` (else `dns_name`), and one
/// `[[issuance.callers]]` rule naming `who` must allow both `id` and every
/// name: each equal to or under one of its `allowed_dns_suffixes`
/// ([`DnsSuffix::covers`]). A rule without any allows no DNS name, so a
/// caller gets DNS SANs only where the config says so; a name refused is
/// `forbidden`, the message naming it and the config field.
///
/// # Errors
///
/// The item's refusal.
pub fn check_dns_names(
    rules: &[CallerRule],
    who: &ClientIdentity,
    id: &SpiffeId,
    names: Vec<String>,
    policy: &SvidPolicy,
) -> Result<Vec<String>, ItemRefusal> {
    if names.is_empty() {
        return Ok(names);
    }
    let invalid = |e: svid::SvidError| ItemRefusal {
        code: e.code(),
        message: e.to_string(),
        dns_name: None,
    };
    if names.len() > policy.max_dns_names {
        return Err(invalid(svid::SvidError::TooManyDnsNames {
            count: names.len(),
            max: policy.max_dns_names,
        }));
    }
    let mut names = names;
    for name in &mut names {
        name.make_ascii_lowercase();
        svid::validate_dns_name(name, policy.allow_wildcard_dns).map_err(invalid)?;
    }
    // The first name refused, by the first rule that allows the ID.
    let mut refused: Option<(usize, &CallerRule, &str)> = None;
    for (i, rule) in rules.iter().enumerate() {
        if !names_caller(rule, who) || !rule.allowed_prefixes.iter().any(|p| p.matches(id)) {
            continue;
        }
        let uncovered = names
            .iter()
            .find(|n| !rule.allowed_dns_suffixes.iter().any(|s| s.covers(n)));
        match uncovered {
            None => return Ok(names),
            Some(n) => {
                refused.get_or_insert((i, rule, n));
            }
        }
    }
    let caller = who.label();
    let (message, dns_name) = match refused {
        Some((i, rule, name)) => {
            let field = format!("issuance.callers[{i}].allowed_dns_suffixes");
            let why = if rule.allowed_dns_suffixes.is_empty() {
                format!("{field} is empty, so no DNS name is allowed")
            } else {
                format!("it is not under any suffix in {field}")
            };
            (
                format!("caller {caller} may not request the DNS name '{name}' with {id}: {why}"),
                Some(name.to_owned()),
            )
        }
        // check_id allowed the ID, so some rule did; kept refusing anyway.
        None => (format!("caller {caller} may not request {id}"), None),
    };
    Err(ItemRefusal {
        code: "forbidden",
        message,
        dns_name,
    })
}

fn ttl(requested: Option<u64>, max: Duration) -> Duration {
    requested.map_or(max, Duration::from_secs)
}

fn item_error(code: &'static str, message: impl Into<String>) -> ItemResult {
    ItemResult::Error {
        code,
        message: message.into(),
    }
}

/// One batch item on its way through [`x509_batch_inner`].
struct Slot {
    /// The requested SPIFFE ID, for its audit record.
    spiffe_id: String,
    /// The DNS name the caller's rules refused, for its audit record.
    dns_name: Option<String>,
    /// Its error already, or its index in the requests to sign.
    result: Result<usize, ItemResult>,
}

impl Slot {
    fn refused(spiffe_id: String, e: ItemResult) -> Slot {
        Slot {
            spiffe_id,
            dns_name: None,
            result: Err(e),
        }
    }
}

/// One item's answer in a batch response.
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum ItemResult {
    Ok {
        svid_chain_pem: String,
        serial: String,
        expires_at: u64,
    },
    Error {
        code: &'static str,
        message: String,
    },
}

/// `POST /v1/x509svids:batch` answer.
#[derive(Serialize)]
struct BatchResponse {
    results: Vec<ItemResult>,
}

/// An audit record of one batch item (typed, so a batch of hundreds is
/// serialized straight to the log line without building JSON trees).
#[derive(Serialize)]
#[serde(untagged)]
enum ItemRecord {
    Issued {
        caller: Arc<str>,
        spiffe_id: String,
        serial: String,
        not_after: u64,
        ca_key_id: Arc<str>,
        backend: &'static str,
        /// The certificate's DNS SANs, when it has any.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        dns_names: Vec<String>,
    },
    Refused {
        caller: Arc<str>,
        spiffe_id: String,
        code: &'static str,
        /// The DNS name the caller's rules refused, if that was the reason.
        #[serde(skip_serializing_if = "Option::is_none")]
        dns_name: Option<String>,
    },
    /// A `refusals_summarized` record (see [`RefusalBudget`]).
    Summary(serde_json::Value),
}

async fn x509_batch(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Result<Response, ApiError> {
    let r = async {
        let body = read_body(&s, req).await?;
        // Taken once the body is in, so a slow sender holds no slot.
        let permit = s
            .batches
            .clone()
            .try_acquire_owned()
            .map_err(|_| too_many_batches(&s))?;
        let (st, who) = (s.clone(), peer.clone());
        let rt = tokio::runtime::Handle::current();
        // Parsing up to `max_items` CSRs (RSA keys up to 8192 bits), building
        // the certificates and the JSON is CPU work: it runs on a blocking
        // thread, which also waits there for the engine's signatures.
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let r = rt.block_on(x509_batch_inner(&st, &who, body));
            drop(permit);
            st.metrics.batch(started.elapsed());
            r
        })
        .await
        .map_err(|e| internal(format!("issuing the batch: {e}")))?
    }
    .await;
    audit_refusal(&s, &peer, "/v1/x509svids:batch", r).await
}

async fn jwt_svid(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Result<Response, ApiError> {
    let r = async {
        let body = read_body(&s, req).await?;
        jwt_svid_inner(&s, &peer, body).await
    }
    .await;
    audit_refusal(&s, &peer, "/v1/jwtsvids", r).await
}

/// Records a whole request refused (malformed, too large, too many items,
/// overloaded, no CA...) in the audit log before the error goes back; items
/// refused inside a batch are recorded with the batch.
async fn audit_refusal(
    s: &ApiState,
    peer: &Peer,
    path: &'static str,
    r: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let Err(e) = r else { return r };
    let caller = peer.identity.label();
    let (full, ended) = s.refusal(&caller, e.code, Instant::now());
    let mut records: Vec<(&str, serde_json::Value)> = Vec::new();
    records.extend(ended.map(|summary| (refusals::SUMMARY_EVENT, summary)));
    if full {
        records.push((
            "request_refused",
            json!({
                "caller": caller,
                "path": path,
                "status": e.status.as_u16(),
                "code": e.code,
            }),
        ));
    }
    if records.is_empty() {
        return Err(e);
    }
    let audit = s.audit.clone();
    match tokio::task::spawn_blocking(move || audit.append_many(records)).await {
        Ok(Ok(())) => Err(e),
        Ok(Err(a)) => Err(internal(format!("audit log: {a}"))),
        Err(a) => Err(internal(format!("audit log: {a}"))),
    }
}

/// One X.509-SVID batch. Runs on a blocking thread (under
/// `Handle::block_on`), so its CPU-bound steps, and the audit write, are
/// done inline.
async fn x509_batch_inner(s: &ApiState, peer: &Peer, body: Bytes) -> Result<Response, ApiError> {
    let req: BatchRequest = parse_body(&body)?;
    if req.items.len() > s.settings.max_items {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_items",
            format!(
                "{} items in one batch; the most is {}",
                req.items.len(),
                s.settings.max_items
            ),
        ));
    }
    check_rate(s, peer, req.items.len())?;
    let st = load_state(s).await?;
    let td = TrustDomain::parse(&st.trust_domain)
        .map_err(|e| internal(format!("CA trust domain: {e}")))?;
    let issuer = active_issuer(s, &st)?;
    let policy = policy(s, td.clone());
    // One set of rules for the whole batch, even across a SIGHUP.
    let rules = s.caller_rules();
    // Per item: the requested SPIFFE ID and the DNS name refused, if any
    // (for its audit record), and either an error already or an index into
    // `reqs`.
    let mut slots: Vec<Slot> = Vec::with_capacity(req.items.len());
    let mut reqs = Vec::new();
    for BatchEntry(entry) in req.items {
        let item = match entry {
            Ok(item) => item,
            Err(bad) => {
                slots.push(Slot::refused(
                    bad.spiffe_id,
                    item_error("item_malformed", bad.message),
                ));
                continue;
            }
        };
        let id = match check_id(s, &td, peer, &item.spiffe_id) {
            Ok(id) => id,
            Err((code, msg)) => {
                slots.push(Slot::refused(item.spiffe_id, item_error(code, msg)));
                continue;
            }
        };
        let dns_names = match check_dns_names(&rules, &peer.identity, &id, item.dns_names, &policy)
        {
            Ok(names) => names,
            Err(r) => {
                slots.push(Slot {
                    dns_name: r.dns_name,
                    ..Slot::refused(item.spiffe_id, item_error(r.code, r.message))
                });
                continue;
            }
        };
        let csr = match csr_input(&item.csr).and_then(|der| csr::parse_and_verify(&der)) {
            Ok(c) => c,
            Err(e) => {
                slots.push(Slot::refused(
                    item.spiffe_id,
                    item_error(e.code(), e.to_string()),
                ));
                continue;
            }
        };
        slots.push(Slot {
            spiffe_id: item.spiffe_id,
            dns_name: None,
            result: Ok(reqs.len()),
        });
        reqs.push(SvidRequest {
            public_key_spki: csr.spki_der,
            spiffe_id: id,
            dns_names,
            ttl: ttl(item.ttl_seconds, policy.max_ttl),
        });
    }
    let issued = svid::issue_batch(&s.engine, &reqs, &issuer, &policy).await;
    if issued
        .iter()
        .any(|r| matches!(r, Err(e) if e.code() == "overloaded"))
    {
        return Err(overloaded());
    }
    let mut issued: Vec<Option<Result<svid::IssuedSvid, svid::SvidError>>> =
        issued.into_iter().map(Some).collect();
    let caller: Arc<str> = peer.identity.label().into();
    let ca_key_id: Arc<str> = issuer.key.id().to_string().into();
    let mut records = Vec::with_capacity(slots.len());
    let mut results = Vec::with_capacity(slots.len());
    let now = Instant::now();
    for Slot {
        mut spiffe_id,
        dns_name,
        result,
    } in slots
    {
        let result = match result {
            Err(e) => e,
            Ok(i) => match issued.get_mut(i).and_then(Option::take) {
                Some(Ok(svid)) => {
                    let expires_at = svid
                        .expires_at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    tracing::debug!(caller = %caller, serial = %svid.serial_hex, "issued X.509-SVID");
                    records.push((
                        "svid_issue",
                        ItemRecord::Issued {
                            caller: caller.clone(),
                            spiffe_id: std::mem::take(&mut spiffe_id),
                            serial: svid.serial_hex.clone(),
                            not_after: expires_at,
                            ca_key_id: ca_key_id.clone(),
                            backend: svid.backend,
                            dns_names: std::mem::take(&mut reqs[i].dns_names),
                        },
                    ));
                    ItemResult::Ok {
                        svid_chain_pem: svid.chain_pem,
                        serial: svid.serial_hex,
                        expires_at,
                    }
                }
                Some(Err(e)) => item_error(e.code(), e.to_string()),
                None => item_error("ca_internal", "no result for this item"),
            },
        };
        if let ItemResult::Error { code, .. } = &result {
            let (full, ended) = s.refusal(&caller, code, now);
            if let Some(summary) = ended {
                records.push((refusals::SUMMARY_EVENT, ItemRecord::Summary(summary)));
            }
            if full {
                records.push((
                    "svid_refused",
                    ItemRecord::Refused {
                        caller: caller.clone(),
                        spiffe_id: crate::ca::spiffe::for_record(spiffe_id),
                        code,
                        dns_name,
                    },
                ));
            }
        }
        results.push(result);
    }
    let refused = results
        .iter()
        .filter(|r| matches!(r, ItemResult::Error { .. }))
        .count();
    tracing::info!(
        caller = %caller,
        issued = results.len() - refused,
        refused,
        "X.509-SVID batch"
    );
    // Group commit: the certificates leave only once their records are on
    // disk; a failure to record fails the request. (A blocking thread: see
    // above.)
    s.audit
        .append_many(records)
        .map_err(|e| internal(format!("audit log: {e}")))?;
    s.metrics.issued("x509", (results.len() - refused) as u64);
    Ok(axum::Json(BatchResponse { results }).into_response())
}

async fn jwt_svid_inner(s: &ApiState, peer: &Peer, body: Bytes) -> Result<Response, ApiError> {
    let s = s.clone();
    let JwtBody(req) = parse_body(&body)?;
    let req = req.map_err(|m| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed request body: {m}"),
        )
    })?;
    if let Some((i, a)) = req
        .audience
        .iter()
        .enumerate()
        .find(|(i, a)| req.audience[..*i].contains(a))
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "malformed request body: audience[{i}]: '{}' is already in the list",
                excerpt(a)
            ),
        ));
    }
    check_rate(&s, peer, 1)?;
    let st = load_state(&s).await?;
    let td = TrustDomain::parse(&st.trust_domain)
        .map_err(|e| internal(format!("CA trust domain: {e}")))?;
    let id = match check_id(&s, &td, peer, &req.spiffe_id) {
        Ok(id) => id,
        Err((code, msg)) => {
            let status = if code == "forbidden" {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(error(status, code, msg));
        }
    };
    let Some(rec) = st
        .jwt_keys
        .iter()
        .rev()
        .find(|k| k.status == CaStatus::Active)
    else {
        return Err(internal("the CA has no active JWT signing key"));
    };
    let key = s
        .keys
        .get(&rec.key_name)
        .map_err(|e| internal(format!("JWT signing key: {e}")))?;
    let max = policy(&s, td).max_ttl;
    let ttl = ttl(req.ttl_seconds, max).min(max);
    match svid::mint_jwt(
        &s.engine,
        key,
        Some(&rec.kid),
        rec.scheme,
        &id,
        &req.audience,
        ttl,
    )
    .await
    {
        Ok(token) => {
            let audit = s.audit.clone();
            let record = json!({
                "caller": peer.identity.label(),
                "spiffe_id": req.spiffe_id,
                "audience": req.audience,
                "kid": rec.kid,
            });
            tokio::task::spawn_blocking(move || audit.append("jwt_svid_issue", record))
                .await
                .map_err(|e| internal(format!("audit log: {e}")))?
                .map_err(|e| internal(format!("audit log: {e}")))?;
            s.metrics.issued("jwt", 1);
            Ok(axum::Json(json!({ "token": token })).into_response())
        }
        Err(e) if e.code() == "overloaded" => Err(overloaded()),
        Err(e) if matches!(e.code(), "jwt" | "ttl") => {
            Err(error(StatusCode::BAD_REQUEST, e.code(), e.to_string()))
        }
        Err(e) => Err(internal(e.to_string())),
    }
}

async fn bundle_pem(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let st = load_state(&s).await?;
    let pem = authority::bundle_pem(&st).map_err(|e| internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

async fn bundle_jwks(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let st = load_state(&s).await?;
    let v = authority::bundle_jwks(&st, &s.keys).map_err(|e| internal(e.to_string()))?;
    Ok(axum::Json(v).into_response())
}

/// `GET /v1/crl/{serial}`: the intermediate's current CRL, DER. One signed
/// CRL is served until it nears its nextUpdate or the CA state it lists
/// changes (a revocation, a rotation), so callers cannot spend CA
/// signatures at will. `GET /v1/crl/root`: the root's CRL (the revoked
/// intermediates), as the root key last signed it.
async fn crl(
    State(s): State<ApiState>,
    axum::extract::Path(serial): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let st = load_state(&s).await?;
    if serial == "root" {
        let pem = st.root_crl_pem.as_deref().ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "no_crl",
                "the root has no CRL yet: it is signed the next time the root key is used \
                 (ca rotate prepare)"
                    .to_string(),
            )
        })?;
        let der = pem::parse(pem)
            .ok()
            .filter(|p| p.tag() == "X509 CRL")
            .ok_or_else(|| internal("the CA state holds an unreadable root CRL"))?
            .into_contents();
        return Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response());
    }
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match s.crl_cache.get(&s.engine, &s.keys, &st, &serial, now).await {
        Ok(der) => Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response()),
        Err(crate::Error::Overloaded) => Err(overloaded()),
        Err(e @ crate::Error::Invalid(_)) => {
            Err(error(StatusCode::NOT_FOUND, "no_crl", e.to_string()))
        }
        Err(e) => Err(internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyless::auth::ClientIdentity;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_past_the_concurrency_limit_gets_503_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(crate::testutil::key_store(dir.path()));
        let engine = Arc::new(crate::testutil::cpu_engine());
        let settings = IssuanceSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: "unused".into(),
            key: "unused".into(),
            client_ca: "unused".into(),
            max_items: 4,
            max_ttl: None,
            callers: Vec::new(),
            limits: super::super::ServeLimits::default(),
            body_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_batches: 1,
            max_refusal_records_per_minute: 1000,
            svids_per_caller_per_second: 0.0,
        };
        let audit_path = dir.path().join("audit.log");
        let audit = Arc::new(crate::audit::AuditLog::open(&audit_path).unwrap());
        let s = ApiState::new(
            dir.path().to_path_buf(),
            engine,
            keys,
            Arc::new(settings),
            audit,
        );
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            identity: ClientIdentity {
                spiffe_id: Some("spiffe://example.org/issuer".into()),
                fingerprint: [1; 32],
            },
        };
        let call = || {
            let req = Request::builder()
                .method("POST")
                .uri("/v1/x509svids:batch")
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(r#"{"items":[]}"#))
                .unwrap();
            x509_batch(State(s.clone()), ConnectInfo(peer.clone()), req)
        };
        // The one batch slot is taken: refused at once, with Retry-After.
        let held = s.batches.clone().try_acquire_owned().unwrap();
        let e = call().await.unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "too_many_batches")
        );
        assert!(
            e.message.contains("issuance.max_concurrent_batches"),
            "{}",
            e.message
        );
        let r = e.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        // Freed: the batch goes on (and stops at the missing CA).
        drop(held);
        let e = call().await.unwrap_err();
        assert_eq!(e.code, "no_ca");
        let log = std::fs::read_to_string(&audit_path).unwrap();
        assert!(log.contains("\"code\":\"too_many_batches\""), "{log}");
    }

    #[test]
    fn csr_input_takes_pem_as_is_and_base64_der() {
        let pem = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(&*csr_input(pem).unwrap(), pem.as_bytes());
        assert_eq!(&*csr_input("  \n").unwrap(), b"  \n");
        // Standard base64, with or without padding, line breaks ignored.
        assert_eq!(&*csr_input("MIIBAA==").unwrap(), [0x30, 0x82, 0x01, 0x00]);
        assert_eq!(&*csr_input("MIIB\r\nAA").unwrap(), [0x30, 0x82, 0x01, 0x00]);
        let e = csr_input("MIIB_-AA").unwrap_err();
        assert_eq!(e.code(), "csr_malformed");
        assert!(e.to_string().contains("base64"), "{e}");
        let big = "A".repeat(csr::MAX_CSR_LEN / 3 * 4 + 8);
        assert_eq!(csr_input(&big).unwrap_err().code(), "csr_too_large");
    }

    /// The message of each item of `items` (JSON), `ok` for one read whole.
    fn item_messages(items: &str) -> Vec<String> {
        let req: BatchRequest = parse_body(format!("{{\"items\":{items}}}").as_bytes()).unwrap();
        req.items
            .into_iter()
            .map(|BatchEntry(e)| e.map_or_else(|bad| bad.message, |_| "ok".into()))
            .collect()
    }

    #[test]
    fn a_malformed_item_is_read_as_its_own_error_naming_the_field() {
        let id = r#""spiffe_id":"spiffe://example.org/a""#;
        let got = item_messages(&format!(
            r#"[{{"csr":"x",{id},"ttl_seconds":-5}},
                {{"csr":"x",{id},"dns_names":"x"}},
                {{"csr":"x",{id},"dns_names":["a",{{"b":[1]}},"c"]}},
                {{"csr":"x","spiffe_id":5}},
                [1,2],
                "a string",
                {{"csr":"x",{id},"extra":{{"deep":[1,{{"x":null}}]}}}},
                {{{id}}},
                {{"csr":"x"}},
                {{"csr":"x",{id},"csr":"y"}},
                {{"csr":"x",{id},"ttl_seconds":300.0}},
                {{"csr":"x",{id},"ttl_seconds":"60"}},
                {{"csr":"x",{id},"audience":["a"]}},
                {{"csr":"x",{id},"ttl_seconds":null,"dns_names":["a.b"]}},
                {{"csr":"x",{id}}}]"#
        ));
        assert_eq!(
            got,
            [
                "ttl_seconds: expected a positive integer (seconds), got -5",
                "dns_names: expected a list of strings, got \"x\"",
                "dns_names[1]: expected a string, got an object",
                "spiffe_id: expected a string, got 5",
                "expected an object (csr, spiffe_id, dns_names, ttl_seconds), got a list",
                "expected an object (csr, spiffe_id, dns_names, ttl_seconds), got \"a string\"",
                "extra: unknown field (the fields are csr, spiffe_id, dns_names, ttl_seconds)",
                "csr: missing",
                "spiffe_id: missing",
                "csr: given more than once",
                "ttl_seconds: expected a positive integer (seconds), got 300.0",
                "ttl_seconds: expected a positive integer (seconds), got \"60\"",
                "audience: unknown field (the fields are csr, spiffe_id, dns_names, ttl_seconds)",
                "ok",
                "ok",
            ]
        );
        // A malformed item keeps its requested ID for the audit record.
        let req: BatchRequest =
            parse_body(br#"{"items":[{"ttl_seconds":-1,"spiffe_id":"spiffe://x/y","csr":1}]}"#)
                .unwrap();
        let bad = req.items.into_iter().next().unwrap().0.unwrap_err();
        assert_eq!(bad.spiffe_id, "spiffe://x/y");
        assert!(bad.message.starts_with("ttl_seconds: "), "{}", bad.message);
        // Long values and names are cut in messages.
        let long = "a".repeat(10_000);
        let got = item_messages(&format!(r#"[{{"{long}":1}},"{long}"]"#));
        assert!(
            got.iter().all(|m| m.len() < 200 && m.contains("aaa...")),
            "{got:?}"
        );
        // What is not a batch at all is still refused whole.
        for body in [
            "[]",
            "{}",
            r#"{"items":{}}"#,
            r#"{"items":[],"extra":1}"#,
            r#"{"items":[{"csr":"x"]}"#,
            r#"{"items":[{"csr":"x"}]"#,
        ] {
            let e = parse_body::<BatchRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "bad_request"),
                "{body}"
            );
        }
    }

    #[test]
    fn a_jwt_request_with_a_badly_typed_field_is_refused_naming_it() {
        let read = |body: &str| parse_body::<JwtBody>(body.as_bytes()).unwrap().0;
        let id = r#""spiffe_id":"spiffe://example.org/a""#;
        assert_eq!(
            read(&format!(r#"{{{id},"audience":"svc-b"}}"#)).unwrap_err(),
            "audience: expected a list of strings, got \"svc-b\""
        );
        assert_eq!(
            read(&format!(r#"{{{id},"audience":["a"],"ttl_seconds":-1}}"#)).unwrap_err(),
            "ttl_seconds: expected a positive integer (seconds), got -1"
        );
        assert_eq!(read(&format!("{{{id}}}")).unwrap_err(), "audience: missing");
        assert_eq!(
            read(&format!(r#"{{{id},"audience":[],"csr":"x"}}"#)).unwrap_err(),
            "csr: unknown field (the fields are spiffe_id, audience, ttl_seconds)"
        );
        for list in ["[]", " [[]]"] {
            let Err(e) = parse_body::<JwtBody>(list.as_bytes()) else {
                panic!("{list} was taken for a JWT request");
            };
            assert_eq!(e.message, "malformed request body: expected a JSON object");
            let Err(e) = parse_body::<BatchRequest>(list.as_bytes()) else {
                panic!("{list} was taken for a batch");
            };
            assert_eq!(e.code, "bad_request", "{list}");
        }
        let req = read(&format!(
            r#"{{{id},"audience":["a","b"],"ttl_seconds":60}}"#
        ))
        .unwrap();
        assert_eq!(
            (req.spiffe_id.as_str(), req.audience, req.ttl_seconds),
            (
                "spiffe://example.org/a",
                vec!["a".to_string(), "b".into()],
                Some(60)
            )
        );
        assert!(parse_body::<JwtBody>(b"{\"audience\":").is_err());
    }

    #[test]
    fn a_dns_suffix_covers_itself_and_names_under_it_only() {
        let suffix = DnsSuffix::parse("Prod.Svc").unwrap();
        assert_eq!(suffix.as_str(), "prod.svc");
        for name in [
            "prod.svc",
            "a.prod.svc",
            "a.b.prod.svc",
            "A.PROD.SVC",
            "*.prod.svc",
        ] {
            assert!(suffix.covers(name), "{name}");
        }
        for name in [
            "evilprod.svc",
            "prod.svc.evil",
            "svc",
            "rod.svc",
            "xprod.svc",
            "www.google.com",
            "localhost",
            "*.svc",
            "*.evilprod.svc",
            "",
            ".prod.svcx",
        ] {
            assert!(!suffix.covers(name), "{name}");
        }
        // A one-label suffix is label aligned as well.
        let internal = DnsSuffix::parse("internal").unwrap();
        assert!(internal.covers("db.internal") && internal.covers("internal"));
        assert!(!internal.covers("notinternal") && !internal.covers("internal.com"));
        // What cannot be a suffix.
        for (bad, want) in [
            ("", "empty"),
            (".prod.svc", "without the leading '.'"),
            ("*.prod.svc", "without a wildcard"),
            ("*", "without a wildcard"),
            ("prod.svc.", "trailing dot"),
            ("a_b.svc", "labels may hold only"),
            ("10.0.0.1", "IP address"),
            ("é.svc", "labels may hold only"),
        ] {
            let e = DnsSuffix::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn dns_names_need_a_suffix_in_the_rule_that_allows_the_id() {
        use crate::ca::spiffe::SpiffeIdPrefix;
        let rule = |who: &str, prefix: &str, dns: &[&str]| CallerRule {
            client: ClientMatch::SpiffeId(who.into()),
            allowed_prefixes: vec![SpiffeIdPrefix::parse(prefix).unwrap()],
            allowed_dns_suffixes: dns.iter().map(|d| DnsSuffix::parse(d).unwrap()).collect(),
        };
        let rules = vec![
            rule("spiffe://td/training", "spiffe://td/ns/training", &[]),
            rule("spiffe://td/prod", "spiffe://td/ns/prod", &["prod.svc"]),
            rule(
                "spiffe://td/prod",
                "spiffe://td/ns/web",
                &["web.example.org"],
            ),
        ];
        let who = |id: &str| ClientIdentity {
            spiffe_id: Some(id.into()),
            fingerprint: [0; 32],
        };
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let policy = SvidPolicy::default();
        let check = |caller: &str, spiffe_id: &str, names: &[&str]| {
            check_dns_names(
                &rules,
                &who(caller),
                &id(spiffe_id),
                names.iter().map(|n| (*n).to_string()).collect(),
                &policy,
            )
        };

        // No DNS name: nothing to check, whatever the rule.
        assert_eq!(
            check("spiffe://td/training", "spiffe://td/ns/training/a", &[]),
            Ok(vec![])
        );
        // A rule without suffixes allows no DNS name, naming the field.
        let r = check(
            "spiffe://td/training",
            "spiffe://td/ns/training/a",
            &["www.google.com"],
        )
        .unwrap_err();
        assert_eq!(
            (r.code, r.dns_name.as_deref()),
            ("forbidden", Some("www.google.com"))
        );
        assert_eq!(
            r.message,
            "caller spiffe://td/training may not request the DNS name 'www.google.com' with \
             spiffe://td/ns/training/a: issuance.callers[0].allowed_dns_suffixes is empty, so no \
             DNS name is allowed"
        );
        // Under the suffix, lowercased as the SVID carries them.
        assert_eq!(
            check(
                "spiffe://td/prod",
                "spiffe://td/ns/prod/a",
                &["prod.svc", "A.Prod.Svc"]
            ),
            Ok(vec!["prod.svc".to_string(), "a.prod.svc".into()])
        );
        // One name outside refuses the item, naming that name.
        for bad in [
            "evilprod.svc",
            "www.google.com",
            "localhost",
            "web.example.org",
        ] {
            let r = check(
                "spiffe://td/prod",
                "spiffe://td/ns/prod/a",
                &["a.prod.svc", bad],
            )
            .unwrap_err();
            assert_eq!((r.code, r.dns_name.as_deref()), ("forbidden", Some(bad)));
            assert!(
                r.message.contains(&format!("'{bad}'"))
                    && r.message.contains(
                        "not under any suffix in issuance.callers[1].allowed_dns_suffixes"
                    ),
                "{}",
                r.message
            );
        }
        // The suffixes go with the IDs of their own rule, not the caller's
        // other rules.
        assert!(
            check(
                "spiffe://td/prod",
                "spiffe://td/ns/web/a",
                &["web.example.org"]
            )
            .is_ok()
        );
        let r = check("spiffe://td/prod", "spiffe://td/ns/web/a", &["a.prod.svc"]).unwrap_err();
        assert!(
            r.message
                .contains("issuance.callers[2].allowed_dns_suffixes"),
            "{}",
            r.message
        );
        // Another caller's suffixes are not this one's.
        assert_eq!(
            check(
                "spiffe://td/training",
                "spiffe://td/ns/training/a",
                &["a.prod.svc"]
            )
            .unwrap_err()
            .code,
            "forbidden"
        );
        // A name that is no DNS name is refused for that first (`dns_name`),
        // wildcards included while the policy refuses them; uppercase is not
        // a fault.
        for bad in ["*.prod.svc", "a_b.prod.svc", "prod.svc.", "10.0.0.1"] {
            let r = check("spiffe://td/prod", "spiffe://td/ns/prod/a", &[bad]).unwrap_err();
            assert_eq!((r.code, r.dns_name), ("dns_name", None), "{bad}");
        }
        let many: Vec<String> = (0..=policy.max_dns_names)
            .map(|i| format!("h{i}.prod.svc"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            check("spiffe://td/prod", "spiffe://td/ns/prod/a", &many)
                .unwrap_err()
                .code,
            "dns_name"
        );
        // Were wildcards allowed, one would need its base under a suffix.
        let wild = SvidPolicy {
            allow_wildcard_dns: true,
            ..SvidPolicy::default()
        };
        let with = |names: &[&str]| {
            check_dns_names(
                &rules,
                &who("spiffe://td/prod"),
                &id("spiffe://td/ns/prod/a"),
                names.iter().map(|n| (*n).to_string()).collect(),
                &wild,
            )
        };
        assert!(with(&["*.prod.svc"]).is_ok());
        assert!(with(&["*.a.prod.svc"]).is_ok());
        assert_eq!(with(&["*.svc.cluster"]).unwrap_err().code, "forbidden");
    }
}
