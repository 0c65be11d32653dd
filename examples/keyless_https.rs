//! A small HTTPS server whose private key exists only inside sigmux.
//!
//! It holds its certificate chain and nothing else: every TLS handshake's
//! signature is made by a `sigmux serve` keyless listener, reached over
//! mutual TLS.
//!
//! ```text
//! cargo run --example keyless_https -- \
//!     --listen 127.0.0.1:8443 --cert-chain site.pem \
//!     --keyless 127.0.0.1:2407 --keyless-ca sigmux-ca.pem \
//!     --client-cert proxy.pem --client-key proxy.key \
//!     --ski <40 hex> --kind p256
//! curl --cacert site-ca.pem https://localhost:8443/
//! ```
//!
//! Serves `GET /` over HTTP/1.1 with TLS 1.3 and TLS 1.2, and prints
//! `listening on https://ADDR` to stderr once bound (port 0 picks a free
//! port; the real one is printed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use sigmux::KeyKind;
use sigmux::keyless::client::{ClientConfig, KeylessClient};
use sigmux::keyless::rustls::certified_key;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const BODY: &str = "hello from a key that lives in sigmux\n";

/// HTTPS server whose private key lives in sigmux.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8443 (port 0 picks one).
    #[arg(long)]
    listen: String,
    /// PEM certificate chain to serve, leaf first.
    #[arg(long)]
    cert_chain: PathBuf,
    /// Address of the sigmux keyless listener, host:port.
    #[arg(long)]
    keyless: String,
    /// PEM CA bundle that issues the keyless listener's certificate.
    #[arg(long)]
    keyless_ca: PathBuf,
    /// Name expected in the keyless listener's certificate (default: the
    /// host part of --keyless).
    #[arg(long)]
    keyless_name: Option<String>,
    /// PEM client certificate (chain) presented to sigmux.
    #[arg(long)]
    client_cert: PathBuf,
    /// PEM private key of the client certificate.
    #[arg(long)]
    client_key: PathBuf,
    /// Subject Key Identifier of the site key in sigmux (40 hex characters).
    #[arg(long)]
    ski: String,
    /// Kind of the site key: rsa2048, rsa3072, rsa4096, p256, p384, ed25519.
    #[arg(long)]
    kind: KeyKind,
    /// Connections to the keyless listener.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Deadline of each keyless request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The host part of `host:port` (brackets removed from an IPv6 literal).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut ski = [0u8; 20];
    if hex::decode_to_slice(args.ski.trim(), &mut ski).is_err() {
        bail!("--ski must be 40 hex characters");
    }
    let chain = read(&args.cert_chain)?;
    let cfg = ClientConfig {
        addr: args.keyless.clone(),
        server_name: args
            .keyless_name
            .clone()
            .unwrap_or_else(|| host_of(&args.keyless).to_string()),
        ca_pem: read(&args.keyless_ca)?,
        cert_chain_pem: read(&args.client_cert)?,
        key_pem: read(&args.client_key)?,
        connections: args.connections,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let client = Arc::new(KeylessClient::connect(cfg).await?);
    let ck = certified_key(&chain, client, ski, args.kind)?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("listening on https://{}", listener.local_addr()?);

    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(acceptor, tcp).await {
                eprintln!("{peer}: {e:#}");
            }
        });
    }
}

/// One connection: TLS, then HTTP/1.1 requests until the client is done.
async fn serve(acceptor: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream) -> Result<()> {
    let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    let mut stream = BufReader::new(tls);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut close = false;
        // Headers; only Connection matters here, and no body is read.
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("connection")
                && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if request_line.trim_end().ends_with("HTTP/1.0") {
            close = true;
        }
        let (status, body) = match (method, path) {
            ("GET", "/") => ("200 OK", BODY),
            ("GET", _) => ("404 Not Found", "not found\n"),
            _ => {
                close = true;
                ("405 Method Not Allowed", "method not allowed\n")
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        let tls = stream.get_mut();
        tls.write_all(response.as_bytes()).await?;
        tls.flush().await?;
        if close {
            tls.shutdown().await?;
            return Ok(());
        }
    }
}
