//! The client side of the issuance API (`sigmux issue`): reads CSR files,
//! sends them in batches to `POST /v1/x509svids:batch` over mutual TLS and
//! writes each issued chain as `<out>/<stem>.pem`.
//!
//! The HTTP layer is a minimal HTTP/1.1 client over tokio-rustls (one
//! connection per request, `Connection: close`): the only server it talks
//! to is sigmux's own API.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// How long the TCP connect and TLS handshake may take together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request (sending, signing, answer) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest response accepted.
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// How often an `overloaded` (503) answer is retried before giving up.
const OVERLOAD_RETRIES: u32 = 5;

/// An `https://host[:port][/prefix]` address of the issuance API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or IP address (no brackets).
    pub host: String,
    /// TCP port (443 unless given).
    pub port: u16,
    /// Path prefix without a trailing slash (usually empty).
    pub prefix: String,
}

impl ServerUrl {
    /// Parses `https://host[:port][/prefix]`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for any other scheme, an empty host or a bad port.
    pub fn parse(s: &str) -> Result<ServerUrl> {
        let bad = |why: &str| Error::Invalid(format!("bad server URL '{s}': {why}"));
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| bad("expected https://HOST[:PORT]"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(bad("no query or fragment allowed"));
        }
        if authority.contains('@') {
            return Err(bad("no user information allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed '['"))?;
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("junk after ']'")),
            };
            (&v6[..end], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        Ok(ServerUrl {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            write!(f, "https://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

/// An HTTP answer: status code and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Reason phrase from the status line.
    pub reason: String,
    /// Body (chunked encoding already removed).
    pub body: Vec<u8>,
    /// `Retry-After` in seconds, when present.
    pub retry_after: Option<u64>,
}

/// A mutual-TLS client of the issuance API.
pub struct ApiClient {
    url: ServerUrl,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    /// Kept-alive connections, reused so a bulk run does not pay a TLS
    /// handshake per request.
    idle: parking_lot::Mutex<Vec<Conn>>,
}

type Conn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Most kept-alive connections a client holds.
const MAX_IDLE: usize = 32;

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Invalid(format!("cannot read {what} {}: {e}", path.display())))
}

impl ApiClient {
    /// A client of `url` that trusts the CA certificates in `ca` and shows
    /// the certificate chain in `cert` with its private key in `key` (all
    /// PEM).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when a file cannot be read or holds nothing
    /// usable, or the host is not a valid TLS server name.
    pub fn new(url: ServerUrl, ca: &Path, cert: &Path, key: &Path) -> Result<ApiClient> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read_file(ca, "CA file")?) {
            let c = c.map_err(|e| Error::Invalid(format!("CA file {}: {e}", ca.display())))?;
            roots
                .add(c)
                .map_err(|e| Error::Invalid(format!("CA file {}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(Error::Invalid(format!(
                "CA file {}: no certificate in it",
                ca.display()
            )));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read_file(cert, "certificate")?)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Invalid(format!("certificate {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(Error::Invalid(format!(
                "certificate {}: no certificate in it",
                cert.display()
            )));
        }
        let pkey = PrivateKeyDer::from_pem_slice(&read_file(key, "key")?)
            .map_err(|e| Error::Invalid(format!("key {}: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Invalid(format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, pkey)
            .map_err(|e| Error::Invalid(format!("client certificate and key: {e}")))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(url.host.clone())
            .map_err(|e| Error::Invalid(format!("bad server URL host '{}': {e}", url.host)))?;
        Ok(ApiClient {
            url,
            server_name,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            idle: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Sends one request and reads the whole answer.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the server for connect, TLS, timeout and
    /// protocol failures.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse> {
        let fail = |what: String| Error::Invalid(format!("{}: {what}", self.url));
        // A kept-alive connection the server has since closed fails before
        // any answer arrives: then the request goes once more on a new one
        // (the server cannot have acted on it).
        let reused = self.idle.lock().pop();
        if let Some(conn) = reused {
            match self.exchange(conn, method, path, body).await {
                Ok(r) => return Ok(r),
                Err(Exchange::NotAnswered(_)) => {}
                Err(Exchange::Failed(e)) => return Err(fail(e)),
            }
        }
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
                .await
                .map_err(|e| fail(format!("cannot connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            self.connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| fail(format!("TLS handshake failed: {e}")))
        })
        .await
        .map_err(|_| fail("connect timed out".into()))??;
        match self.exchange(conn, method, path, body).await {
            Ok(r) => Ok(r),
            Err(Exchange::NotAnswered(e) | Exchange::Failed(e)) => Err(fail(e)),
        }
    }

    /// One request and its answer on `conn`, which goes back to the idle
    /// list when the answer was complete and the server keeps it open.
    async fn exchange(
        &self,
        mut conn: Conn,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::result::Result<HttpResponse, Exchange> {
        let host = if self.url.host.contains(':') {
            format!("[{}]:{}", self.url.host, self.url.port)
        } else {
            format!("{}:{}", self.url.host, self.url.port)
        };
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {host}\r\n\
             Accept: application/json\r\nUser-Agent: sigmux/{}\r\n",
            self.url.prefix,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let exchange = async {
            let sent = async {
                conn.write_all(head.as_bytes()).await?;
                if let Some(b) = body {
                    conn.write_all(b).await?;
                }
                conn.flush().await
            };
            sent.await
                .map_err(|e| Exchange::NotAnswered(format!("send failed: {e}")))?;
            read_response(&mut conn).await
        };
        let (resp, keep) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| Exchange::Failed("no answer in time".into()))??;
        if keep {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        Ok(resp)
    }
}

/// How an exchange failed.
enum Exchange {
    /// Nothing came back: on a reused connection, worth one more try.
    NotAnswered(String),
    /// It failed after the server started answering.
    Failed(String),
}

/// Parsed response head.
struct Head {
    status: u16,
    reason: String,
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
    retry_after: Option<u64>,
    /// The server said `Connection: close`.
    close: bool,
}

fn parse_head(buf: &[u8]) -> std::result::Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "malformed HTTP answer".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x answer: {status_line:.80}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad HTTP status line: {status_line:.80}"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut head = Head {
        status,
        reason,
        len: end + 4,
        content_length: None,
        chunked: false,
        retry_after: None,
        close: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad Content-Length: {value:.40}"))?,
                );
            }
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "retry-after" => head.retry_after = value.parse().ok(),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    Ok(Some(head))
}

fn dechunk(mut data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked answer")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunked answer".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Reads one answer; the flag says whether the connection may carry another
/// request (the answer's end was known from its framing and the server did
/// not ask to close).
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::result::Result<(HttpResponse, bool), Exchange> {
    let failed = Exchange::Failed;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut head: Option<Head> = None;
    // Whether the answer's end is known from its framing (so the
    // connection can carry another request).
    let mut framed = false;
    loop {
        if head.is_none() {
            head = parse_head(&buf).map_err(failed)?;
        }
        if let Some(h) = &head {
            if let Some(n) = h.content_length
                && buf.len() >= h.len + n
            {
                buf.truncate(h.len + n);
                framed = true;
                break;
            }
            if h.chunked && buf.ends_with(b"\r\n\r\n") && dechunk(&buf[h.len..]).is_ok() {
                framed = true;
                break;
            }
        }
        if buf.len() > MAX_RESPONSE {
            return Err(failed("answer too large".into()));
        }
        let got = stream.read(&mut chunk).await;
        match got {
            Ok(0) if buf.is_empty() => {
                return Err(Exchange::NotAnswered(
                    "connection closed before an HTTP answer".into(),
                ));
            }
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A peer that closes without close_notify after a complete
            // answer is fine; before one, the checks below catch it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && head.is_some() => break,
            Err(e) if buf.is_empty() => {
                return Err(Exchange::NotAnswered(format!("receive failed: {e}")));
            }
            Err(e) => return Err(failed(format!("receive failed: {e}"))),
        }
    }
    let h = match head {
        Some(h) => h,
        None => parse_head(&buf)
            .map_err(failed)?
            .ok_or_else(|| failed("connection closed before an HTTP answer".into()))?,
    };
    let raw = &buf[h.len.min(buf.len())..];
    let body = if let Some(n) = h.content_length {
        if raw.len() < n {
            return Err(failed(
                "connection closed in the middle of the answer".into(),
            ));
        }
        raw[..n].to_vec()
    } else if h.chunked {
        dechunk(raw).map_err(failed)?
    } else {
        raw.to_vec()
    };
    Ok((
        HttpResponse {
            status: h.status,
            reason: h.reason,
            body,
            retry_after: h.retry_after,
        },
        framed && !h.close,
    ))
}

/// `code: message` from a JSON error body (`{"error":{"code","message"}}`),
/// or a short excerpt of whatever else came.
fn error_text(r: &HttpResponse) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(&r.body)
        && let Some(e) = v.get("error")
    {
        let code = e.get("code").and_then(Value::as_str).unwrap_or("error");
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
        return format!("{code}: {msg}");
    }
    let text = String::from_utf8_lossy(&r.body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        format!("{:.200}", text.replace('\n', " "))
    }
}

/// Where the CSRs come from.
#[derive(Clone, Debug)]
pub enum CsrSource {
    /// One CSR file.
    File(PathBuf),
    /// Every `*.csr` and `*.pem` file in a directory, sorted by name.
    Dir(PathBuf),
}

/// How the SPIFFE ID of each CSR is chosen.
#[derive(Clone, Debug)]
pub enum IdChoice {
    /// The same ID for every CSR.
    Fixed(String),
    /// A template whose `{stem}` is replaced by the CSR file's stem.
    Template(String),
}

impl IdChoice {
    /// The SPIFFE ID for a CSR file with this stem.
    #[must_use]
    pub fn for_stem(&self, stem: &str) -> String {
        match self {
            IdChoice::Fixed(id) => id.clone(),
            IdChoice::Template(t) => t.replace("{stem}", stem),
        }
    }
}

/// What `sigmux issue` does.
#[derive(Clone, Debug)]
pub struct IssueOptions {
    /// The API, `https://HOST:PORT`.
    pub server: String,
    /// CA certificates that the server's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// The caller's certificate chain (PEM).
    pub cert: PathBuf,
    /// The caller's private key (PEM).
    pub key: PathBuf,
    /// The CSRs.
    pub csrs: CsrSource,
    /// The SPIFFE ID of each SVID.
    pub id: IdChoice,
    /// DNS SANs for every SVID.
    pub dns_names: Vec<String>,
    /// Requested lifetime in seconds (unset: the server's maximum).
    pub ttl_seconds: Option<u64>,
    /// Directory for the `<stem>.pem` chain files (created if missing).
    pub out: PathBuf,
    /// Items per request.
    pub batch: usize,
    /// Draw a progress bar (only shown when stderr is a terminal).
    pub progress: bool,
}

/// What a run of `sigmux issue` achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IssueSummary {
    /// SVIDs issued and written.
    pub issued: usize,
    /// CSRs that got no SVID (each reported on stderr).
    pub failed: usize,
}

/// One CSR ready to send.
struct Job {
    file: PathBuf,
    stem: String,
    csr: String,
    spiffe_id: String,
}

/// Lists the CSR files of `source`.
///
/// # Errors
///
/// [`Error::Invalid`] when the directory cannot be read or holds no CSR.
pub fn csr_files(source: &CsrSource) -> Result<Vec<PathBuf>> {
    match source {
        CsrSource::File(f) => Ok(vec![f.clone()]),
        CsrSource::Dir(d) => {
            let entries = std::fs::read_dir(d).map_err(|e| {
                Error::Invalid(format!("cannot read CSR directory {}: {e}", d.display()))
            })?;
            let mut files = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| {
                    Error::Invalid(format!("cannot read CSR directory {}: {e}", d.display()))
                })?;
                let path = entry.path();
                let wanted = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    e.eq_ignore_ascii_case("csr") || e.eq_ignore_ascii_case("pem")
                });
                if wanted && path.is_file() {
                    files.push(path);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(Error::Invalid(format!(
                    "no *.csr or *.pem file in {}",
                    d.display()
                )));
            }
            Ok(files)
        }
    }
}

/// Prints per-file failures without tearing the progress bar.
struct Reporter {
    bar: indicatif::ProgressBar,
    failed: usize,
    issued: usize,
}

impl Reporter {
    fn fail(&mut self, file: &Path, code: &str, message: &str) {
        self.failed += 1;
        let line = format!("{}: {code}: {message}", file.display());
        self.bar.suspend(|| eprintln!("{line}"));
        self.bar.inc(1);
    }

    fn ok(&mut self) {
        self.issued += 1;
        self.bar.inc(1);
    }
}

/// Writes `data` to `path` by way of a temporary file in the same folder.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Runs `sigmux issue`: reads the CSRs, requests SVIDs batch by batch and
/// writes every issued chain to `<out>/<stem>.pem`. A CSR that cannot be
/// read, or that the server refuses, is reported on stderr as
/// `<file>: <code>: <message>` and counted as failed.
///
/// # Errors
///
/// [`Error::Invalid`] for bad options, unreadable TLS files or CSR
/// directory, connect and TLS failures and non-200 answers (with the
/// server's error code and message); SVIDs written before such an error
/// stay written.
pub fn issue(opts: &IssueOptions) -> Result<IssueSummary> {
    if opts.batch == 0 {
        return Err(Error::Invalid("--batch must be at least 1".into()));
    }
    let url = ServerUrl::parse(&opts.server)?;
    let client = ApiClient::new(url, &opts.ca, &opts.cert, &opts.key)?;
    let files = csr_files(&opts.csrs)?;
    crate::keys::create_private_dir(&opts.out).map_err(|e| {
        Error::Invalid(format!(
            "cannot create output directory {}: {e}",
            opts.out.display()
        ))
    })?;
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(files.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut rep = Reporter {
        bar,
        failed: 0,
        issued: 0,
    };

    let mut jobs = Vec::with_capacity(files.len());
    let mut stems = HashSet::new();
    for file in files {
        let Some(stem) = file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            rep.fail(
                &file,
                "bad_name",
                "file name is not valid UTF-8 or has no stem",
            );
            continue;
        };
        if !stems.insert(stem.clone()) {
            rep.fail(
                &file,
                "duplicate_stem",
                &format!("another CSR file already maps to {stem}.pem"),
            );
            continue;
        }
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                rep.fail(&file, "unreadable", &e.to_string());
                continue;
            }
        };
        // PEM goes as text; anything else (DER) as base64, which the API
        // also takes.
        let csr = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
        };
        let spiffe_id = opts.id.for_stem(&stem);
        jobs.push(Job {
            file,
            stem,
            csr,
            spiffe_id,
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start runtime: {e}")))?;
    let result = rt.block_on(async {
        for batch in jobs.chunks(opts.batch) {
            send_batch(&client, opts, batch, &mut rep)
                .await
                .map_err(|e| {
                    Error::Invalid(format!(
                        "{e} (issued {}, failed {} before stopping)",
                        rep.issued, rep.failed
                    ))
                })?;
        }
        Ok(())
    });
    rep.bar.finish_and_clear();
    result?;
    Ok(IssueSummary {
        issued: rep.issued,
        failed: rep.failed,
    })
}

async fn send_batch(
    client: &ApiClient,
    opts: &IssueOptions,
    batch: &[Job],
    rep: &mut Reporter,
) -> Result<()> {
    let items: Vec<Value> = batch
        .iter()
        .map(|j| {
            let mut item = json!({
                "csr": j.csr,
                "spiffe_id": j.spiffe_id,
                "dns_names": opts.dns_names,
            });
            if let Some(ttl) = opts.ttl_seconds {
                item["ttl_seconds"] = json!(ttl);
            }
            item
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "items": items }))
        .map_err(|e| Error::Invalid(format!("cannot encode request: {e}")))?;
    let path = "/v1/x509svids:batch";
    let mut tries = 0;
    let resp = loop {
        let resp = client.request("POST", path, Some(&body)).await?;
        if resp.status == 503 && tries < OVERLOAD_RETRIES {
            tries += 1;
            let wait = resp.retry_after.unwrap_or(1).clamp(1, 30);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        break resp;
    };
    if resp.status != 200 {
        return Err(Error::Invalid(format!(
            "POST {path}: server answered {} {}: {}",
            resp.status,
            resp.reason,
            error_text(&resp)
        )));
    }
    let v: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| Error::Invalid(format!("POST {path}: answer is not JSON: {e}")))?;
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Invalid(format!("POST {path}: answer has no results")))?;
    if results.len() != batch.len() {
        return Err(Error::Invalid(format!(
            "POST {path}: {} results for {} items",
            results.len(),
            batch.len()
        )));
    }
    for (job, r) in batch.iter().zip(results) {
        let field = |k: &str| r.get(k).and_then(Value::as_str);
        match (field("status"), field("svid_chain_pem")) {
            (Some("ok"), Some(chain)) => {
                let out = opts.out.join(format!("{}.pem", job.stem));
                match write_atomic(&out, chain.as_bytes()) {
                    Ok(()) => rep.ok(),
                    Err(e) => rep.fail(
                        &job.file,
                        "write_failed",
                        &format!("{}: {e}", out.display()),
                    ),
                }
            }
            (Some("ok"), None) => rep.fail(&job.file, "bad_answer", "ok result without a chain"),
            _ => rep.fail(
                &job.file,
                field("code").unwrap_or("error"),
                field("message").unwrap_or("(no message)"),
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8]) -> std::result::Result<(HttpResponse, bool), Exchange> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = raw;
            read_response(&mut r).await
        })
    }

    #[test]
    fn answers_are_framed_for_keep_alive() {
        // Content-Length: complete, reusable, trailing bytes not taken.
        let (r, keep) = read(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
            .ok()
            .unwrap();
        assert_eq!((r.status, r.body.as_slice(), keep), (200, &b"ok"[..], true));
        // The server asks to close.
        let (_, keep) = read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .ok()
            .unwrap();
        assert!(!keep);
        // Chunked: the end is known from the last chunk.
        let (r, keep) = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .ok()
        .unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"abc"[..], true));
        // No framing: read to the end, not reusable.
        let (r, keep) = read(b"HTTP/1.1 200 OK\r\n\r\nall of it").ok().unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"all of it"[..], false));
        // Nothing at all: a closed kept-alive connection, worth a retry.
        assert!(matches!(read(b""), Err(Exchange::NotAnswered(_))));
        // Cut short after the head: a failure, not retried.
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            Err(Exchange::Failed(_))
        ));
    }

    #[test]
    fn urls() {
        let u = ServerUrl::parse("https://localhost:8443").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("localhost", 8443, "")
        );
        let u = ServerUrl::parse("https://[::1]/api/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 443, "/api")
        );
        assert_eq!(u.to_string(), "https://[::1]:443/api");
        for bad in [
            "http://x",
            "https://",
            "https://x:0",
            "https://x:99999",
            "https://x:y",
            "https://[::1",
            "https://u@x",
            "x:1",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunked_and_heads() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
        let h = parse_head(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nRetry-After: 2\r\n\r\nhello",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.retry_after),
            (413, Some(5), Some(2))
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn templates() {
        let t = IdChoice::Template("spiffe://td/ns/{stem}".into());
        assert_eq!(t.for_stem("web"), "spiffe://td/ns/web");
        assert_eq!(
            IdChoice::Fixed("spiffe://td/a".into()).for_stem("x"),
            "spiffe://td/a"
        );
    }
}
