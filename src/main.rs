//! The `sigmux` command line: parses, loads config, calls the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use sigmux::app::{self, KekUse};
use sigmux::bench::{self, BenchOptions};
use sigmux::config::Config;
use sigmux::keys::KekSource;
use sigmux::{Error, KeyKind, Result, Scheme, SignInput, SignRequest};

/// The server allocates and frees many small buffers per request (JSON,
/// PEM, DER) from several threads; mimalloc's thread-local heaps keep that
/// off the signing threads' path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The variable holding the log filter.
const LOG_ENV: &str = "SIGMUX_LOG";

#[derive(Parser)]
#[command(
    name = "sigmux",
    version,
    about = "Signing and TLS-handshake offload service",
    after_help = "Logging: to stderr. SIGMUX_LOG sets the filter, as tracing EnvFilter \
directives (e.g. SIGMUX_LOG=debug, or SIGMUX_LOG=info,sigmux=debug); default: info for \
`serve`, warn for the other commands."
)]
struct Cli {
    /// Config file (TOML); without it sigmux runs on its embedded defaults.
    #[arg(long, global = true, env = "SIGMUX_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides data_dir in the config).
    #[arg(long, global = true, env = "SIGMUX_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine with its listeners (health and metrics).
    Serve,
    /// Manage keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign one message or digest with a stored key.
    Sign(SignArgs),
    /// Show the backends: availability, chosen libraries, rates, health.
    Backends {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load-test the engine in process, or a running keyless server or
    /// issuance API (--target).
    Bench(BenchArgs),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The SPIFFE CA: chain and trust bundle.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Request X.509-SVIDs from a sigmux issuance API for CSR files.
    Issue(IssueArgs),
}

/// `sigmux issue`: CSR files or a directory in, SVID chain files out.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("csrs").required(true))]
#[command(group = clap::ArgGroup::new("ids").required(true))]
struct IssueArgs {
    /// The issuance API: https://HOST:PORT.
    #[arg(long)]
    server: String,
    /// CA certificates for the server (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Caller certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Caller private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// One CSR file (PEM or DER).
    #[arg(long, group = "csrs")]
    csr: Option<PathBuf>,
    /// A directory: every *.csr and *.pem file in it, sorted by name.
    #[arg(long, group = "csrs")]
    csr_dir: Option<PathBuf>,
    /// The SPIFFE ID of every SVID.
    #[arg(long, group = "ids")]
    spiffe_id: Option<String>,
    /// A SPIFFE ID template; {stem} becomes the CSR file's stem.
    #[arg(long, group = "ids")]
    spiffe_id_template: Option<String>,
    /// DNS SAN for every SVID (repeatable).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Requested lifetime in seconds (default: the server's maximum).
    #[arg(long)]
    ttl: Option<u64>,
    /// Output directory: <stem>.pem holds each SVID chain.
    #[arg(long)]
    out: PathBuf,
    /// CSRs per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: u64,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Make the root CA, the intermediate signing CA and the JWT-SVID key.
    Init {
        /// The trust domain's name, e.g. example.org (not spiffe://example.org).
        #[arg(long)]
        trust_domain: String,
        /// Kind of the root key.
        #[arg(long, default_value = "p256")]
        root_kind: String,
        /// Kind of the intermediate key.
        #[arg(long, default_value = "p256")]
        intermediate_kind: String,
        /// Where the intermediate's key (and its successors') is made: soft
        /// (the key store; signs on CPU or GPU) or hsm (inside the PKCS#11
        /// token, not extractable).
        #[arg(long, default_value = "soft")]
        intermediate_backend: String,
        /// With --intermediate-backend hsm: the token's label, when several
        /// are configured.
        #[arg(long)]
        intermediate_token: Option<String>,
        /// Kind of the JWT-SVID signing key (p256, p384 or RSA).
        #[arg(long, default_value = "p256")]
        jwt_kind: String,
        /// Root certificate lifetime in days.
        #[arg(long, default_value_t = 3650)]
        root_days: u64,
        /// Intermediate certificate lifetime in days.
        #[arg(long, default_value_t = 365)]
        intermediate_days: u64,
        /// Write the root key here, encrypted with the passphrase in
        /// SIGMUX_ROOT_PASSPHRASE, instead of keeping it in the key store.
        #[arg(long)]
        offline_root: Option<PathBuf>,
    },
    /// Show the CA: root, intermediates and JWT-SVID keys with where each
    /// is in its life, and when the rotation schedule is next due.
    Status {
        /// Print JSON (times as Unix seconds).
        #[arg(long)]
        json: bool,
    },
    /// Print the trust bundle.
    Bundle {
        /// pem (root and intermediates) or jwks (SPIFFE bundle).
        #[arg(long, default_value = "pem")]
        format: String,
    },
    /// Rotate the intermediate signing CA.
    #[command(subcommand)]
    Rotate(RotateCommand),
    /// Encrypt the offline root key file again: opened with the passphrase
    /// in SIGMUX_ROOT_PASSPHRASE, sealed under the one in
    /// SIGMUX_NEW_ROOT_PASSPHRASE with the current settings (PBKDF2-SHA256,
    /// 600000 rounds).
    ResealRoot,
    /// Revoke an SVID by serial, or (emergency) the active intermediate or
    /// JWT-SVID signing key.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["serial", "intermediate", "jwt_key"]))]
    Revoke {
        /// Serial number of the SVID, hex (as openssl prints it; colons,
        /// 0x and leading zeros are fine).
        #[arg(long)]
        serial: Option<String>,
        /// Revoke the active intermediate and activate a new one at once.
        #[arg(long)]
        intermediate: bool,
        /// Revoke the active JWT-SVID signing key (out of the JWKS bundle at
        /// once, so its tokens stop verifying) and sign with a new one.
        #[arg(long)]
        jwt_key: bool,
        /// Lifetime of the replacement intermediate, days.
        #[arg(long, default_value_t = 365)]
        intermediate_days: u64,
    },
}

#[derive(Subcommand)]
enum RotateCommand {
    /// Make a new intermediate and publish it in the bundle (it does not
    /// sign yet).
    Prepare {
        /// Key kind (default: the active intermediate's).
        #[arg(long)]
        kind: Option<String>,
        /// Lifetime, days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// The prepared intermediate signs from now on; the old one drains.
    Activate,
    /// Drop drained intermediates from the bundle once their SVIDs expired.
    Retire {
        /// The longest SVID lifetime the CA issues, seconds [default:
        /// issuance.max_ttl_seconds, else 3600].
        #[arg(long)]
        max_svid_ttl_seconds: Option<u64>,
        /// Retire even if SVIDs they signed may still be valid.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log; prints the record count, the
    /// head hash and the head as an anchor (`SEQ:SHA256`): export it off
    /// the host and pass it to a later verify to detect truncation or
    /// rewriting.
    Verify {
        /// The log file (default: <data-dir>/audit.log).
        file: Option<PathBuf>,
        /// A head exported earlier (`SEQ:SHA256`, repeatable): record SEQ
        /// must still be in the chain with that hash.
        #[arg(long = "anchor", value_name = "SEQ:SHA256")]
        anchors: Vec<sigmux::audit::Anchor>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// After a break: move the broken log's files into
    /// `audit.log.broken-<UTC time>/` and start a new chain whose first
    /// record (`audit_restarted`) names them with their SHA-256. Refused
    /// when the chain verifies.
    Restart {
        /// Why (recorded in the new chain's first record).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a key and store it encrypted.
    Generate {
        /// Name of the new key.
        #[arg(long)]
        name: String,
        /// rsa2048, rsa3072, rsa4096, p256, p384 or ed25519.
        #[arg(long)]
        kind: String,
        /// soft (held by sigmux, encrypted at rest) or hsm (made inside the
        /// configured PKCS#11 token, never leaves it).
        #[arg(long, default_value = "soft")]
        backend: String,
        /// With --backend hsm: the token's label, when several are configured.
        #[arg(long)]
        token: Option<String>,
    },
    /// Import a private key (PKCS#8, PKCS#1 or SEC1; PEM or DER), or with
    /// --backend hsm register a key already in a PKCS#11 token.
    Import {
        /// Name for the key (with --backend hsm: defaults to --label).
        #[arg(long)]
        name: Option<String>,
        /// The key file (soft keys).
        #[arg(long)]
        file: Option<PathBuf>,
        /// soft or hsm.
        #[arg(long, default_value = "soft")]
        backend: String,
        /// With --backend hsm: the private key's CKA_LABEL.
        #[arg(long)]
        label: Option<String>,
        /// With --backend hsm: the private key's CKA_ID (hex).
        #[arg(long)]
        id: Option<String>,
        /// With --backend hsm: bind the key to this token; without it, and
        /// several tokens configured, every token holding the key may use it.
        #[arg(long)]
        token: Option<String>,
    },
    /// List stored keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's public key (SPKI PEM).
    Public {
        /// The key's name.
        #[arg(long)]
        name: String,
    },
    /// Delete a stored key (a running `serve` drops it at SIGHUP). For a
    /// key in a PKCS#11 token only sigmux's reference goes. Keys the CA
    /// state names are refused.
    Delete {
        /// The key's name.
        #[arg(long)]
        name: String,
    },
    /// Re-encrypt every stored key under a new key-encryption key. With a
    /// KEK file (the default) a fresh key is made, unless one is given, and
    /// the file ends up holding it; a running `serve` reads it when it next
    /// needs it. With kek_env, give the new key and set the variable to it
    /// before sigmux starts again. After a crash, run it again to finish.
    RotateKek {
        /// A file holding the new KEK (64 hex characters).
        #[arg(long, conflicts_with = "new_kek_env")]
        new_kek_file: Option<PathBuf>,
        /// An environment variable holding the new KEK (64 hex characters).
        #[arg(long)]
        new_kek_env: Option<String>,
    },
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("input_or_digest").required(true).args(["input", "digest_hex"]))]
struct SignArgs {
    /// Name of the key.
    #[arg(long)]
    key: String,
    /// Scheme (IANA TLS name, e.g. rsa_pss_rsae_sha256).
    #[arg(long)]
    scheme: String,
    /// Sign this file's contents (hashed by sigmux).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Sign this prehashed digest (hex).
    #[arg(long)]
    digest_hex: Option<String>,
    /// Write the signature (binary) here; default: hex on stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

// Flags some kinds of run do not use are refused (`bench::check_flags`),
// so the ones with a default are options here: given or not is known.
#[derive(Args)]
struct BenchArgs {
    /// cpu, cuda, pkcs11 or auto [default: cpu]. In process only.
    #[arg(long)]
    backend: Option<String>,
    /// Scheme to sign with. Required, except with --target https://, where
    /// the server's intermediate signs with the scheme of --ca-kind.
    #[arg(long)]
    scheme: Option<String>,
    /// Key kind (default: rsa2048 for RSA schemes, the scheme's curve
    /// otherwise). In process only: a keyless server's kind is read from its
    /// signatures.
    #[arg(long)]
    kind: Option<String>,
    /// Measured seconds (after a short warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Requests in flight (closed loop), at least 1.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// In process: submit groups of N requests (latency is then per group)
    /// and use N as the engine's max_batch. With --target https://: CSRs
    /// per request [default there: 500]. Not with keyless://.
    #[arg(long)]
    batch: Option<usize>,
    /// Open loop: offer this many requests per second instead. In process
    /// only.
    #[arg(long)]
    rate: Option<f64>,
    /// Also run the bare library on the same threads and report the ratio.
    /// In process and with --target https:// (the CSR-verify-plus-sign bound).
    #[arg(long)]
    compare_raw: bool,
    /// Closed-loop clients take answers by callback on the engine's threads
    /// (no async runtime between answers and the next request). In process
    /// only.
    #[arg(long)]
    callbacks: bool,
    /// Scheduling of the closed-loop load generator's thread: "batch"
    /// (never preempts the engine's workers on wake-up) or "normal"
    /// [default: batch]. In process only.
    #[arg(long)]
    caller_sched: Option<String>,
    /// With --backend cuda: how many ECDSA signatures the GPU checks
    /// ("all" or "sample:N"), overriding backends.cuda.check. In process only.
    #[arg(long)]
    cuda_check: Option<String>,
    /// With --backend cuda: the RSA sign kernels' thread mapping ("thread",
    /// "wide", "coop:8" or "coop:16"), overriding backends.cuda.rsa_mapping.
    /// In process only.
    #[arg(long)]
    cuda_rsa_mapping: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Load a running server instead: keyless://HOST:PORT (a host name, an
    /// IPv4 address or [IPv6]), or the issuance API at https://HOST[:PORT]
    /// (443 by default). Flags that kind of run does not use are refused.
    #[arg(long)]
    target: Option<String>,
    /// With --target keyless://: SKI (hex) of the key to sign with.
    #[arg(long, requires = "target")]
    ski: Option<String>,
    /// With --target: CA certificates for the server (PEM).
    #[arg(long, requires = "target")]
    ca: Option<PathBuf>,
    /// With --target: client certificate chain (PEM).
    #[arg(long, requires = "target")]
    client_cert: Option<PathBuf>,
    /// With --target: client private key (PEM).
    #[arg(long, requires = "target")]
    client_key: Option<PathBuf>,
    /// With --target keyless://: name in the server's certificate (default:
    /// the host; an IP address is matched against IP address SANs).
    #[arg(long, requires = "target")]
    server_name: Option<String>,
    /// With --target keyless://: connections in the client pool [default: 8].
    #[arg(long)]
    connections: Option<usize>,
    /// With --target https://: key kind of the CSRs' workload keys
    /// [default: p256].
    #[arg(long)]
    csr_kind: Option<String>,
    /// With --target https://: key kind of the server's intermediate (for
    /// the raw-crypto bound and the scheme reported) [default: p256].
    #[arg(long)]
    ca_kind: Option<String>,
    /// With --target https://: SPIFFE ID prefix the caller may request
    /// [default: spiffe://example.org/bench].
    #[arg(long)]
    spiffe_prefix: Option<String>,
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(std::io::stderr(), "sigmux: internal error: {msg}");
    }));
    let cli = Cli::parse();
    // SIGMUX_LOG (EnvFilter directives) replaces the default filter; one
    // that does not parse is named rather than silently ignored.
    let from_env = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&v)
            .map_err(|e| eprintln!("sigmux: warning: {LOG_ENV}='{v}' ignored: {e}"))
            .ok(),
        _ => None,
    };
    let filter = from_env.unwrap_or_else(|| {
        // cryptoki logs every mechanism number it has no name for (vendor
        // and newer ones) at error level while listing a token's mechanisms.
        tracing_subscriber::EnvFilter::new(if matches!(cli.command, Command::Serve) {
            "info,cryptoki::mechanism=off"
        } else {
            "warn,cryptoki::mechanism=off"
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not take the service down: the default would
        // report the failed write with eprintln!, which panics.
        .log_internal_errors(false)
        .init();
    let result = match cli.command {
        Command::Issue(a) => issue_cmd(a),
        command => run(Cli {
            command,
            config: cli.config,
            data_dir: cli.data_dir,
        })
        .map(|()| ExitCode::SUCCESS),
    };
    let success = match result {
        Ok(code) => code == ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigmux: error: {e}");
            false
        }
    };
    leave(success)
}

/// Ends the process. With a PKCS#11 module loaded, exit handlers are
/// skipped: SoftHSM2's C++ destructors run at exit and can crash while other
/// exit handlers (OpenSSL's cleanup) still reach into it (SoftHSMv2 issues
/// 635 and 729), turning a finished command into a SIGSEGV with nothing on
/// stderr. Everything sigmux writes is synced before this point; only the
/// standard streams are flushed here.
fn leave(success: bool) -> ExitCode {
    if sigmux::backend::pkcs11::modules_loaded() {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends the process at once; nothing runs after it.
        unsafe { libc::_exit(if success { 0 } else { 1 }) }
    }
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(d) = cli.data_dir {
        cfg.data_dir = d;
    }
    match cli.command {
        Command::Serve => tokio::runtime::Runtime::new()
            .map_err(|e| Error::Invalid(format!("cannot start runtime: {e}")))?
            .block_on(sigmux::server::serve(cfg, cli.config.clone())),
        Command::Keys(k) => keys(&cfg, k),
        Command::Sign(a) => sign(&cfg, a),
        Command::Backends { json } => {
            let engine = app::start_engine(&cfg, cfg.engine_config(), "auto")?;
            let report = engine.report();
            if json {
                println!("{}", pretty(&report));
            } else {
                print_backends(&report);
            }
            Ok(())
        }
        Command::Bench(a) => bench_cmd(&cfg, a),
        Command::Ca(c) => ca_cmd(&cfg, c),
        Command::Issue(a) => issue_cmd(a).map(|_| ()),
        Command::Audit(a) => audit_cmd(&cfg, a),
    }
}

/// `sigmux audit verify | restart`.
fn audit_cmd(cfg: &Config, cmd: AuditCommand) -> Result<()> {
    let log = cfg.data_dir.join("audit.log");
    match cmd {
        AuditCommand::Verify {
            file,
            anchors,
            json,
        } => {
            let path = file.unwrap_or(log);
            let v = sigmux::audit::verify_anchored(&path, &anchors)?;
            let anchor = v.anchor().map(|a| a.to_string());
            if json {
                println!(
                    "{}",
                    pretty(&serde_json::json!({
                        "records": v.records,
                        "head": v.head,
                        "segments": v.segments,
                        "anchor": anchor,
                        "anchors_held": anchors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }))
                );
                return Ok(());
            }
            let plural = if v.records == 1 { "" } else { "s" };
            println!("ok: {} record{plural}, head {}", v.records, v.head);
            for a in &anchors {
                println!("held: {a}");
            }
            if let Some(a) = anchor {
                println!("anchor: {a}");
            }
            Ok(())
        }
        AuditCommand::Restart { reason } => {
            let r = sigmux::audit::restart(&log, &reason)?;
            let plural = |n: u64| if n == 1 { "" } else { "s" };
            let files = r.moved.len() as u64;
            println!(
                "restarted: {files} file{} moved to {} ({} record{} verified before the break); \
                 new chain head {}",
                plural(files),
                r.quarantine.display(),
                r.records_verified,
                plural(r.records_verified),
                r.verified.head
            );
            if let Some(a) = r.verified.anchor() {
                println!("anchor: {a}");
            }
            Ok(())
        }
    }
}

/// `sigmux issue`; fails (exit 1) when any CSR got no SVID.
fn issue_cmd(a: IssueArgs) -> Result<ExitCode> {
    use sigmux::api::client::{CsrSource, IdChoice, IssueOptions};
    let csrs = match (a.csr, a.csr_dir) {
        (Some(f), _) => CsrSource::File(f),
        (None, Some(d)) => CsrSource::Dir(d),
        (None, None) => return Err(Error::Invalid("give --csr or --csr-dir".into())),
    };
    let id = match (a.spiffe_id, a.spiffe_id_template) {
        (Some(id), _) => IdChoice::Fixed(id),
        (None, Some(t)) => IdChoice::Template(t),
        (None, None) => {
            return Err(Error::Invalid(
                "give --spiffe-id or --spiffe-id-template".into(),
            ));
        }
    };
    let opts = IssueOptions {
        server: a.server,
        ca: a.ca,
        cert: a.cert,
        key: a.key,
        csrs,
        id,
        dns_names: a.dns,
        ttl_seconds: a.ttl,
        out: a.out,
        batch: usize::try_from(a.batch).unwrap_or(usize::MAX),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let s = sigmux::api::client::issue(&opts)?;
    println!("issued {}, failed {}", s.issued, s.failed);
    Ok(if s.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Records `event` for `key` in the audit log.
fn key_event(cfg: &Config, event: &str, key: &sigmux::Key) -> Result<()> {
    let info = key.info();
    sigmux::audit::AuditLog::open(&cfg.data_dir.join("audit.log"))?.append(
        event,
        serde_json::json!({
            "name": info.name,
            "kind": info.kind,
            "placement": info.placement,
            "key_id": info.key_id,
        }),
    )
}

/// Records a new key in the audit log and prints it.
fn key_made(cfg: &Config, event: &str, key: &sigmux::Key) -> Result<()> {
    key_event(cfg, event, key)?;
    println!("{} {} {}", key.name(), key.kind(), key.id());
    Ok(())
}

fn keys(cfg: &Config, cmd: KeysCommand) -> Result<()> {
    // A key must not be made when its event cannot be recorded: refuse up
    // front if the audit log's chain is broken.
    let audit = cfg.data_dir.join("audit.log");
    if matches!(
        cmd,
        KeysCommand::Generate { .. }
            | KeysCommand::Import { .. }
            | KeysCommand::Delete { .. }
            | KeysCommand::RotateKek { .. }
    ) && audit.exists()
    {
        sigmux::audit::verify(&audit)?;
    }
    match cmd {
        KeysCommand::Generate {
            name,
            kind,
            backend,
            token,
        } => {
            let kind: KeyKind = kind.parse()?;
            match backend.as_str() {
                "soft" if token.is_some() => {
                    return Err(Error::Invalid("--token needs --backend hsm".into()));
                }
                "soft" => {}
                "hsm" => {
                    sigmux::keys::validate_operator_key_name(&name)?;
                    app::require_hsm(cfg)?;
                    let store = app::open_key_store(cfg, KekUse::CreateIfNew)?;
                    let key = app::hsm_generate(cfg, &store, &name, kind, token.as_deref())?;
                    key_made(cfg, "key.generate", &key)?;
                    return Ok(());
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown key backend '{other}' (expected soft or hsm)"
                    )));
                }
            }
            // Refuse bad input before the data dir (and its KEK) is made.
            sigmux::keys::validate_operator_key_name(&name)?;
            let store = app::open_key_store(cfg, KekUse::CreateIfNew)?;
            let key = store.generate(&name, kind)?;
            key_made(cfg, "key.generate", &key)?;
            Ok(())
        }
        KeysCommand::Import {
            name,
            file,
            backend,
            label,
            id,
            token,
        } => {
            if backend == "hsm" {
                if file.is_some() {
                    return Err(Error::Invalid(
                        "--file is for soft keys; an HSM key is found by --label or --id".into(),
                    ));
                }
                let id = id
                    .map(|h| {
                        hex::decode(h.trim())
                            .map_err(|_| Error::Invalid("--id is not valid hex".into()))
                    })
                    .transpose()?;
                if label.is_none() && id.is_none() {
                    return Err(Error::Invalid(
                        "--backend hsm needs --label or --id to find the key".into(),
                    ));
                }
                if let Some(n) = name.as_deref().or(label.as_deref()) {
                    sigmux::keys::validate_operator_key_name(n)?;
                }
                app::require_hsm(cfg)?;
                let store = app::open_key_store(cfg, KekUse::CreateIfNew)?;
                let key = app::hsm_import(
                    cfg,
                    &store,
                    name.as_deref(),
                    label.as_deref(),
                    id.as_deref(),
                    token.as_deref(),
                )?;
                key_made(cfg, "key.import", &key)?;
                return Ok(());
            }
            if backend != "soft" {
                return Err(Error::Invalid(format!(
                    "unknown key backend '{backend}' (expected soft or hsm)"
                )));
            }
            if label.is_some() || id.is_some() || token.is_some() {
                return Err(Error::Invalid(
                    "--label, --id and --token need --backend hsm".into(),
                ));
            }
            let name = name.ok_or_else(|| Error::Invalid("give --name".into()))?;
            let file =
                file.ok_or_else(|| Error::Invalid("give --file with the private key".into()))?;
            let bytes =
                zeroize::Zeroizing::new(std::fs::read(&file).map_err(|e| Error::io(&file, e))?);
            sigmux::keys::validate_operator_key_name(&name)?;
            sigmux::keys::check_import(&bytes)?;
            let store = app::open_key_store(cfg, KekUse::CreateIfNew)?;
            let key = store.import(&name, &bytes)?;
            key_made(cfg, "key.import", &key)?;
            Ok(())
        }
        KeysCommand::List { json } => {
            // Unreadable key files are listed below, not warned of.
            let store = sigmux::keys::KeyStore::open(&cfg.data_dir, None)?;
            let list = store.list();
            let unreadable = store.unreadable();
            if json {
                let mut entries: Vec<serde_json::Value> = list
                    .iter()
                    .map(|k| serde_json::to_value(k).unwrap_or_default())
                    .collect();
                entries.extend(unreadable.iter().map(
                    |u| serde_json::json!({"name": u.name, "file": u.file, "unreadable": u.reason}),
                ));
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<24} {:<8} {:<5} {:<64} SKI",
                    "NAME", "KIND", "WHERE", "KEY ID"
                );
                for k in list {
                    let place = serde_json::to_value(k.placement).unwrap_or_default();
                    // Display impls of our types ignore width: pad strings.
                    println!(
                        "{:<24} {:<8} {:<5} {:<64} {}",
                        k.name,
                        k.kind.to_string(),
                        place.as_str().unwrap_or(""),
                        k.key_id.to_string(),
                        k.ski
                    );
                }
                for u in &unreadable {
                    println!(
                        "{:<24} UNREADABLE {}: {}",
                        u.name,
                        u.file.display(),
                        u.reason
                    );
                }
            }
            if !unreadable.is_empty() {
                eprintln!(
                    "sigmux: warning: {} key file(s) could not be read; the keys in them are not available (`sigmux keys delete --name NAME` removes such a file)",
                    unreadable.len()
                );
            }
            Ok(())
        }
        KeysCommand::Public { name } => {
            let store = app::open_keys(cfg, KekUse::NotNeeded)?;
            print!("{}", store.get(&name)?.info().public_pem());
            Ok(())
        }
        KeysCommand::Delete { name } => {
            let store = app::open_keys(cfg, KekUse::NotNeeded)?;
            if let Some(role) = ca_role(cfg, &name)? {
                return Err(Error::Invalid(format!(
                    "key '{name}' is the CA's {role}; the CA's keys go with its rotation (sigmux ca rotate), not keys delete"
                )));
            }
            if store.unreadable().iter().any(|u| u.name == name) {
                let gone = store.delete_unreadable(&name)?;
                sigmux::audit::AuditLog::open(&cfg.data_dir.join("audit.log"))?.append(
                    "key.delete",
                    serde_json::json!({
                        "name": gone.file.name,
                        "unreadable": gone.file.reason,
                        "file": gone.file.file,
                        "file_sha256": gone.sha256,
                    }),
                )?;
                println!(
                    "deleted {} (its file {} could not be read: {})",
                    gone.file.name,
                    gone.file.file.display(),
                    gone.file.reason
                );
                return Ok(());
            }
            let key = store.delete(&name)?;
            key_event(cfg, "key.delete", &key)?;
            match &key.info().hsm {
                Some(h) => println!(
                    "deleted {} {} (sigmux's reference only: the key stays in {})",
                    key.name(),
                    key.id(),
                    h.token
                        .as_deref()
                        .map_or("its token".to_string(), |t| format!("token '{t}'"))
                ),
                None => println!("deleted {} {}", key.name(), key.id()),
            }
            Ok(())
        }
        KeysCommand::RotateKek {
            new_kek_file,
            new_kek_env,
        } => rotate_kek(
            cfg,
            new_kek_file
                .map(KekSource::File)
                .or(new_kek_env.map(KekSource::Env)),
        ),
    }
}

fn rotate_kek(cfg: &Config, new: Option<KekSource>) -> Result<()> {
    let configured = cfg.kek_source();
    let done =
        sigmux::keys::rotation::rotate(&cfg.data_dir.join("keys"), &configured, new.as_ref())?;
    let keys = &done.keys;
    sigmux::audit::AuditLog::open(&cfg.data_dir.join("audit.log"))?.append(
        "kek.rotate",
        serde_json::json!({
            "from": done.from,
            "to": done.to,
            "resealed": keys.resealed,
            "already": keys.already,
            "in_tokens": keys.in_tokens,
        }),
    )?;
    let mut line = format!(
        "key-encryption key rotated: {} -> {}; {} key(s) re-encrypted",
        done.from.as_deref().unwrap_or("?"),
        done.to,
        keys.resealed.len()
    );
    if !keys.already.is_empty() {
        line += &format!(", {} already by an earlier run", keys.already.len());
    }
    if !keys.in_tokens.is_empty() {
        line += &format!(
            ", {} in PKCS#11 tokens (nothing to re-encrypt)",
            keys.in_tokens.len()
        );
    }
    println!("{line}");
    match (&done.kek_file, &configured) {
        (Some(path), _) => println!(
            "the new key is in {}; back it up (backups of {} made before now still need the previous one)",
            path.display(),
            cfg.data_dir.display()
        ),
        (None, source) => println!(
            "set the {source} to the new key before sigmux starts again (a running serve keeps its keys but cannot add any until then)"
        ),
    }
    Ok(())
}

/// What the CA state uses key `name` for, if anything.
/// A CA item's status as the state file and `ca status` spell it.
fn status_word(s: sigmux::ca::authority::CaStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn ca_role(cfg: &Config, name: &str) -> Result<Option<String>> {
    let Some(st) = sigmux::ca::authority::CaState::load(&cfg.data_dir)? else {
        return Ok(None);
    };
    if st.root.key_name.as_deref() == Some(name) {
        return Ok(Some("root key".into()));
    }
    if let Some(i) = st.intermediates.iter().find(|i| i.key_name == name) {
        return Ok(Some(format!(
            "intermediate {} ({})",
            i.serial,
            status_word(i.status)
        )));
    }
    if let Some(j) = st.jwt_keys.iter().find(|j| j.key_name == name) {
        return Ok(Some(format!(
            "JWT signing key {} ({})",
            j.kid,
            status_word(j.status)
        )));
    }
    Ok(None)
}

fn sign(cfg: &Config, a: SignArgs) -> Result<()> {
    let scheme: Scheme = a.scheme.parse()?;
    let input = match (&a.input, &a.digest_hex) {
        (Some(path), _) => SignInput::Message(std::fs::read(path).map_err(|e| Error::io(path, e))?),
        (None, Some(h)) => SignInput::Digest(
            hex::decode(h.trim())
                .map_err(|_| Error::Invalid("--digest-hex is not valid hex".into()))?,
        ),
        (None, None) => return Err(Error::Invalid("give --in FILE or --digest-hex HEX".into())),
    };
    if sigmux::keys::is_ca_key_name(&a.key) {
        return Err(Error::Invalid(format!(
            "key '{}' is one of the CA's own keys: it signs only certificates, CRLs and JWT-SVIDs, through the CA",
            a.key
        )));
    }
    let store = app::open_keys(cfg, KekUse::MustExist)?;
    let key = store.get(&a.key)?;
    scheme.check_fits(key.kind())?;
    scheme.prepare(input.clone())?;
    let engine = app::start_engine(cfg, cfg.engine_config(), "auto")?;
    let sig = engine.sign_blocking(SignRequest::new(key, scheme, input))?;
    match a.out {
        Some(path) => std::fs::write(&path, &sig.bytes).map_err(|e| Error::io(&path, e))?,
        None => println!("{}", hex::encode(&sig.bytes)),
    }
    Ok(())
}

fn bench_cmd(cfg: &Config, a: BenchArgs) -> Result<()> {
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        return Err(Error::Invalid(
            "--duration must be a positive number of seconds".into(),
        ));
    }
    if a.concurrency == 0 {
        return Err(Error::Invalid("--concurrency must be at least 1".into()));
    }
    // What the run drives decides which flags mean something: the others
    // are refused, naming the flag, rather than ignored.
    let run_kind = bench::RunKind::of(a.target.as_deref())?;
    let given: Vec<&str> = [
        ("--backend", a.backend.is_some()),
        ("--kind", a.kind.is_some()),
        ("--batch", a.batch.is_some()),
        ("--rate", a.rate.is_some()),
        ("--compare-raw", a.compare_raw),
        ("--callbacks", a.callbacks),
        ("--caller-sched", a.caller_sched.is_some()),
        ("--cuda-check", a.cuda_check.is_some()),
        ("--cuda-rsa-mapping", a.cuda_rsa_mapping.is_some()),
        ("--ski", a.ski.is_some()),
        ("--server-name", a.server_name.is_some()),
        ("--connections", a.connections.is_some()),
        ("--ca", a.ca.is_some()),
        ("--client-cert", a.client_cert.is_some()),
        ("--client-key", a.client_key.is_some()),
        ("--csr-kind", a.csr_kind.is_some()),
        ("--ca-kind", a.ca_kind.is_some()),
        ("--spiffe-prefix", a.spiffe_prefix.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    bench::check_flags(run_kind, &given)?;
    let need = |v: &Option<PathBuf>, flag: &str| {
        v.clone().ok_or_else(|| {
            Error::Invalid(format!(
                "--target {} needs {flag}",
                a.target.as_deref().unwrap_or("")
            ))
        })
    };
    let scheme_flag = || -> Result<Scheme> {
        a.scheme
            .as_deref()
            .ok_or_else(|| {
                Error::Invalid("--scheme is required (e.g. ecdsa_secp256r1_sha256)".into())
            })?
            .parse()
    };
    let (target, issue_target, scheme) = match (run_kind, a.target.as_deref()) {
        (bench::RunKind::Keyless, Some(t)) => {
            let addr = bench::KeylessAddr::parse(t)?;
            let mut ski = [0u8; 20];
            hex::decode_to_slice(a.ski.as_deref().unwrap_or(""), &mut ski).map_err(|_| {
                Error::Invalid("--target keyless:// needs --ski with 40 hex characters".into())
            })?;
            let server_name = a
                .server_name
                .clone()
                .unwrap_or_else(|| addr.default_server_name());
            bench::check_server_name(&server_name)?;
            let target = bench::KeylessTarget {
                addr: addr.dial(),
                server_name,
                ca: need(&a.ca, "--ca")?,
                cert: need(&a.client_cert, "--client-cert")?,
                key: need(&a.client_key, "--client-key")?,
                ski,
                connections: a.connections.unwrap_or(8),
            };
            (Some(target), None, scheme_flag()?)
        }
        (bench::RunKind::Issuance, Some(t)) => {
            bench::check_issue_target(t)?;
            let ca_kind: KeyKind = a.ca_kind.as_deref().unwrap_or("p256").parse()?;
            // The intermediate signs with its kind's scheme; --scheme is
            // taken for compatibility and does not change it.
            let used = Scheme::default_for(ca_kind);
            if let Some(s) = &a.scheme
                && s.parse::<Scheme>()? != used
            {
                eprintln!(
                    "sigmux: warning: --scheme {s} is not used with --target https://: the \
                     intermediate ({ca_kind}, --ca-kind) signs with {}",
                    used.name()
                );
            }
            let target = sigmux::bench_issue::IssueTarget {
                url: t.to_string(),
                ca: need(&a.ca, "--ca")?,
                cert: need(&a.client_cert, "--client-cert")?,
                key: need(&a.client_key, "--client-key")?,
                csr_kind: a.csr_kind.as_deref().unwrap_or("p256").parse()?,
                ca_kind,
                id_prefix: a
                    .spiffe_prefix
                    .as_deref()
                    .unwrap_or("spiffe://example.org/bench")
                    .trim_end_matches('/')
                    .to_string(),
            };
            (None, Some(target), used)
        }
        _ => (None, None, scheme_flag()?),
    };
    let opts = BenchOptions {
        target,
        issue_target,
        backend: a.backend.unwrap_or_else(|| "cpu".into()),
        scheme,
        kind: a.kind.map(|k| k.parse()).transpose()?,
        duration: Duration::from_secs_f64(a.duration),
        concurrency: a.concurrency,
        batch: a.batch,
        rate: a.rate,
        compare_raw: a.compare_raw,
        callbacks: a.callbacks,
        caller_sched: a.caller_sched.as_deref().unwrap_or("batch").parse()?,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        cuda_check: a
            .cuda_check
            .as_deref()
            .map(|c| {
                c.parse::<sigmux::backend::cuda::CheckPolicy>()
                    .map_err(|e| Error::Invalid(format!("--cuda-check: {e}")))
            })
            .transpose()?,
        cuda_rsa_mapping: a
            .cuda_rsa_mapping
            .as_deref()
            .map(|m| {
                m.parse::<sigmux::backend::cuda::RsaMapping>()
                    .map_err(|e| Error::Invalid(format!("--cuda-rsa-mapping: {e}")))
            })
            .transpose()?,
    };
    let report = bench::run(cfg, &opts)?;
    println!("{}", report.summary());
    if let Some(path) = a.json {
        report.write_json(&path)?;
    }
    if report.ops == 0 && report.errors > 0 {
        return Err(Error::Invalid(format!(
            "every request failed ({} errors{}): nothing was measured",
            report.errors,
            report
                .first_error
                .as_deref()
                .map_or_else(String::new, |e| format!("; the first: {e}"))
        )));
    }
    Ok(())
}

/// Where `ca reseal-root` reads the offline root's new passphrase.
const NEW_ROOT_PASSPHRASE_ENV: &str = "SIGMUX_NEW_ROOT_PASSPHRASE";

fn ca_cmd(cfg: &Config, cmd: CaCommand) -> Result<()> {
    use sigmux::ca::authority::{self, CaState, InitOptions};
    match cmd {
        CaCommand::Init {
            trust_domain,
            root_kind,
            intermediate_kind,
            intermediate_backend,
            intermediate_token,
            jwt_kind,
            root_days,
            intermediate_days,
            offline_root,
        } => {
            let intermediate_home = match (intermediate_backend.as_str(), intermediate_token) {
                ("soft", None) => sigmux::keys::KeyHome::Soft,
                ("soft", Some(_)) => {
                    return Err(Error::Invalid(
                        "--intermediate-token needs --intermediate-backend hsm".into(),
                    ));
                }
                ("hsm", token) => {
                    app::require_hsm(cfg)?;
                    sigmux::keys::KeyHome::Hsm { token }
                }
                (other, _) => {
                    return Err(Error::Invalid(format!(
                        "unknown --intermediate-backend '{other}' (expected soft or hsm)"
                    )));
                }
            };
            let td = sigmux::ca::spiffe::TrustDomain::parse_name(&trust_domain)
                .map_err(|e| Error::Invalid(format!("--trust-domain: {e}")))?;
            let days = |d: u64| Duration::from_secs(d.saturating_mul(86_400));
            let opts = InitOptions {
                root_kind: root_kind.parse()?,
                intermediate_kind: intermediate_kind.parse()?,
                jwt_kind: jwt_kind.parse()?,
                root_ttl: days(root_days),
                intermediate_ttl: days(intermediate_days),
                offline_root,
                intermediate_home,
                ..InitOptions::new(td)
            };
            // Refuse before the data dir, keys or an engine are touched.
            if CaState::exists(&cfg.data_dir) {
                return Err(Error::Invalid(format!(
                    "a CA already exists in {}; refusing to make another",
                    cfg.data_dir.display()
                )));
            }
            opts.check()?;
            let pass = match opts.offline_root {
                Some(_) => Some(authority::root_passphrase_from_env()?),
                None => None,
            };
            // A passphrase that will be refused must not leave a KEK and a
            // key folder behind.
            if let Some(p) = &pass {
                sigmux::ca::offline_root::check_passphrase(p)?;
            }
            let audit = cfg.data_dir.join("audit.log");
            if audit.exists() {
                sigmux::audit::verify(&audit)?;
            }
            let store = app::open_keys(cfg, KekUse::CreateIfNew)?;
            let engine = app::start_engine(cfg, cfg.engine_config(), "auto")?;
            let state = authority::init(
                &cfg.data_dir,
                &store,
                &engine,
                &opts,
                pass.as_deref().map(String::as_str),
            )?;
            let int = &state.intermediates[0];
            sigmux::audit::AuditLog::open(&audit)?.append(
                "ca_init",
                serde_json::json!({
                    "trust_domain": state.trust_domain,
                    "root_serial": state.root.serial,
                    "root_key": state.root.key_name,
                    "intermediate_serial": int.serial,
                    "intermediate_key": int.key_name,
                    "intermediate_home": int.home.to_string(),
                    "jwt_key": state.jwt_keys[0].key_name,
                    "jwt_kid": state.jwt_keys[0].kid,
                }),
            )?;
            println!(
                "trust domain {}: root {} ({}), intermediate {} ({}, {}), jwt kid {}",
                state.trust_domain,
                state.root.serial,
                state.root.key_name.as_deref().unwrap_or("offline"),
                int.serial,
                int.key_name,
                int.home,
                state.jwt_keys[0].kid
            );
            if int.not_after == state.root.not_after {
                eprintln!(
                    "sigmux: note: the intermediate ends with the root ({}), before the {intermediate_days} days asked for",
                    sigmux::ca::svid::rfc3339(int.not_after)
                );
            }
            Ok(())
        }
        CaCommand::Rotate(r) => ca_rotate(cfg, r),
        CaCommand::Revoke {
            serial,
            intermediate,
            jwt_key,
            intermediate_days,
        } => {
            use sigmux::ca::rotation;
            let audit = ca_audit_log(cfg)?;
            if let Some(serial) = serial {
                let (serial, new) = rotation::revoke_serial(&cfg.data_dir, &serial)?;
                if !rotation::could_be_ours(&serial) {
                    eprintln!(
                        "sigmux: warning: {serial} is not shaped like the serials this CA gives (16 bytes, the first 40 to 7f); revoked anyway"
                    );
                }
                // A repeat is recorded too: the log answers who asked to
                // revoke what and when, not only what changed.
                audit.append(
                    "ca_revoke_svid",
                    serde_json::json!({ "serial": serial, "already_revoked": !new }),
                )?;
                println!(
                    "{} {serial}",
                    if new { "revoked" } else { "already revoked" }
                );
                return Ok(());
            }
            if jwt_key {
                CaState::require(&cfg.data_dir)?;
                let store = app::open_keys(cfg, KekUse::MustExist)?;
                let (old, new) = rotation::revoke_jwt_key(&cfg.data_dir, &store)?;
                audit.append(
                    "ca_revoke_jwt_key",
                    serde_json::json!({ "revoked": old, "active": new }),
                )?;
                println!("revoked JWT key {old}; JWT key {new} signs");
                return destroy_dead_ca_keys(cfg, &store, &audit);
            }
            debug_assert!(intermediate);
            let (store, engine, pass) = ca_signer(cfg)?;
            let (old, new) = rotation::revoke_intermediate(
                &cfg.data_dir,
                &store,
                &engine,
                pass.as_deref().map(String::as_str),
                Duration::from_secs(intermediate_days.saturating_mul(86_400)),
            )?;
            audit.append(
                "ca_revoke_intermediate",
                serde_json::json!({ "revoked": old, "active": new }),
            )?;
            println!("revoked intermediate {old}; intermediate {new} is active");
            destroy_dead_ca_keys(cfg, &store, &audit)
        }
        CaCommand::ResealRoot => {
            let audit = ca_audit_log(cfg)?;
            let old = authority::root_passphrase_from_env()?;
            let new = match std::env::var(NEW_ROOT_PASSPHRASE_ENV) {
                Ok(p) if !p.is_empty() => zeroize::Zeroizing::new(p),
                _ => {
                    return Err(Error::Invalid(format!(
                        "give the new passphrase in the environment variable {NEW_ROOT_PASSPHRASE_ENV}"
                    )));
                }
            };
            let file = sigmux::ca::rotation::reseal_offline_root(&cfg.data_dir, &old, &new)?;
            audit.append(
                "ca_root_resealed",
                serde_json::json!({ "file": file.display().to_string() }),
            )?;
            println!("resealed {}", file.display());
            Ok(())
        }
        CaCommand::Status { json } => {
            let state = CaState::require(&cfg.data_dir)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let summary = sigmux::ca::status::summary(&state, now, cfg.max_svid_ttl());
            if json {
                println!("{}", pretty(&summary));
            } else {
                print!("{}", sigmux::ca::status::render(&summary));
            }
            Ok(())
        }
        CaCommand::Bundle { format } => {
            let state = CaState::require(&cfg.data_dir)?;
            match format.as_str() {
                "pem" => print!("{}", authority::bundle_pem(&state)?),
                "jwks" => {
                    let store = app::open_keys(cfg, KekUse::NotNeeded)?;
                    println!("{}", pretty(&authority::bundle_jwks(&state, &store)?));
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown bundle format '{other}' (expected pem or jwks)"
                    )));
                }
            }
            Ok(())
        }
    }
}

/// The audit log, its chain checked first (a CA change must be recordable).
/// The audit log for a command that changes the CA: only once a CA exists,
/// so a command run against the wrong data dir leaves nothing behind.
fn ca_audit_log(cfg: &Config) -> Result<sigmux::audit::AuditLog> {
    sigmux::ca::authority::CaState::require(&cfg.data_dir)?;
    sigmux::audit::AuditLog::open(&cfg.data_dir.join("audit.log"))
}

/// What signing a new intermediate needs: the key store, an engine, and
/// the offline root's passphrase when the root key is not in the store.
type CaSigner = (
    sigmux::KeyStore,
    std::sync::Arc<sigmux::Engine>,
    Option<zeroize::Zeroizing<String>>,
);

fn ca_signer(cfg: &Config) -> Result<CaSigner> {
    use sigmux::ca::authority::{self, CaState};
    let state = CaState::require(&cfg.data_dir)?;
    let pass = match state.root.key_name {
        Some(_) => None,
        None => Some(authority::root_passphrase_from_env()?),
    };
    let store = app::open_keys(cfg, KekUse::MustExist)?;
    let engine = app::start_engine(cfg, cfg.engine_config(), "auto")?;
    Ok((store, engine, pass))
}

fn ca_rotate(cfg: &Config, cmd: RotateCommand) -> Result<()> {
    use sigmux::ca::rotation;
    let audit = ca_audit_log(cfg)?;
    match cmd {
        RotateCommand::Prepare { kind, days } => {
            let kind: Option<KeyKind> = kind.map(|k| k.parse()).transpose()?;
            let (store, engine, pass) = ca_signer(cfg)?;
            let made = rotation::prepare(
                &cfg.data_dir,
                &store,
                &engine,
                pass.as_deref().map(String::as_str),
                kind,
                Duration::from_secs(days.saturating_mul(86_400)),
            )?;
            let jwt_kid = made.jwt.as_ref().map(|j| j.kid.clone());
            audit.append(
                "ca_rotate_prepare",
                serde_json::json!({
                    "serial": made.intermediate.serial,
                    "key": made.intermediate.key_name,
                    "jwt_kid": jwt_kid,
                }),
            )?;
            println!(
                "prepared intermediate {} (in the bundle, not signing)",
                made.intermediate.serial
            );
            let state = sigmux::ca::authority::CaState::require(&cfg.data_dir)?;
            if made.intermediate.not_after == state.root.not_after {
                eprintln!(
                    "sigmux: note: the intermediate ends with the root ({}), before the {days} days asked for",
                    sigmux::ca::svid::rfc3339(state.root.not_after)
                );
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            for w in sigmux::ca::status::summary(&state, now, cfg.max_svid_ttl())["warnings"]
                .as_array()
                .into_iter()
                .flatten()
            {
                eprintln!("warning: {}", w.as_str().unwrap_or_default());
            }
            if let Some(kid) = jwt_kid {
                println!("prepared JWT key {kid} (in the JWKS bundle, not signing)");
            }
        }
        RotateCommand::Activate => {
            let done = rotation::activate(&cfg.data_dir)?;
            audit.append(
                "ca_rotate_activate",
                serde_json::json!({
                    "active": done.active,
                    "draining": done.previous,
                    "jwt_kid": done.jwt_kid,
                }),
            )?;
            println!("{done}");
        }
        RotateCommand::Retire {
            max_svid_ttl_seconds,
            force,
        } => {
            let configured = cfg.max_svid_ttl();
            let max_svid_ttl = max_svid_ttl_seconds.map_or(configured, Duration::from_secs);
            // A shorter lifetime than the CA issues would retire what signed
            // SVIDs still valid: that is what --force is for, said as such.
            if max_svid_ttl < configured && !force {
                return Err(Error::Invalid(format!(
                    "--max-svid-ttl-seconds {} is shorter than the SVID lifetime this CA issues \
                     (issuance.max_ttl_seconds, {} s): SVIDs may outlive it; use --force to retire anyway",
                    max_svid_ttl.as_secs(),
                    configured.as_secs()
                )));
            }
            let retired = rotation::retire(&cfg.data_dir, max_svid_ttl, force)?;
            audit.append(
                "ca_rotate_retire",
                serde_json::json!({
                    "retired": retired.serials,
                    "retired_jwt": retired.jwt_kids,
                    "max_svid_ttl_seconds": max_svid_ttl.as_secs(),
                    "force": force,
                }),
            )?;
            println!("{retired}");
            let store = app::open_keys(cfg, KekUse::NotNeeded)?;
            destroy_dead_ca_keys(cfg, &store, &audit)?;
        }
    }
    Ok(())
}

/// Destroys the keys of retired and revoked intermediates, records each in
/// the audit log and says so. A key that cannot be destroyed (its token
/// unreachable) is a warning: the intermediate is out of the bundle
/// already, and `serve` tries again on its rotation schedule.
fn destroy_dead_ca_keys(
    cfg: &Config,
    store: &sigmux::KeyStore,
    audit: &sigmux::audit::AuditLog,
) -> Result<()> {
    let (destroyed, failed) = sigmux::ca::rotation::destroy_dead_keys(&cfg.data_dir, store)?;
    audit.append_many(destroyed.iter().map(|d| d.audit_record()).collect())?;
    for d in &destroyed {
        println!("{d}");
    }
    for f in &failed {
        eprintln!("sigmux: warning: {f} (`sigmux serve` tries again)");
    }
    Ok(())
}

fn print_backends(report: &serde_json::Value) {
    println!(
        "queue depth {} / {}, max_batch {}, max_wait {} us",
        report["queue_depth"], report["queue_capacity"], report["max_batch"], report["max_wait_us"]
    );
    for b in report["backends"].as_array().into_iter().flatten() {
        if b["availability"]["state"].as_str() != Some("available") {
            // Nothing else about it means anything: it never runs here.
            println!(
                "\n{}: unavailable: {}",
                b["name"].as_str().unwrap_or("?"),
                b["availability"]["reason"].as_str().unwrap_or("")
            );
            continue;
        }
        let avail = "available";
        println!(
            "\n{}: {avail}, health {}, in flight {}, queued {} us",
            b["name"].as_str().unwrap_or("?"),
            b["health"]["state"].as_str().unwrap_or("?"),
            b["in_flight_ops"],
            b["queued_us"]
        );
        let d = &b["details"];
        if let Some(dev) = d["device"].as_str() {
            println!(
                "  device {dev}, compute capability {}, {}, driver {}, NVRTC {}, {} streams, ECDSA check {}, RSA mapping {}",
                d["compute_capability"].as_str().unwrap_or("?"),
                d["arch"].as_str().unwrap_or("?"),
                d["driver"].as_str().unwrap_or("?"),
                d["nvrtc"].as_str().unwrap_or("?"),
                d["streams"],
                d["check"].as_str().unwrap_or("?"),
                d["rsa_mapping"].as_str().unwrap_or("?"),
            );
        }
        let engines = &b["details"]["engines"];
        println!(
            "  {:<24} {:<8} {:<9} {:>12} {:>12}",
            "SCHEME", "KIND", "LIBRARY", "OPS/S", "US/OP"
        );
        for r in b["rates"].as_array().into_iter().flatten() {
            let scheme = r["scheme"].as_str().unwrap_or("");
            println!(
                "  {:<24} {:<8} {:<9} {:>12} {:>12}",
                scheme,
                r["kind"].as_str().unwrap_or(""),
                engines[scheme]["engine"].as_str().unwrap_or("-"),
                // JSON numbers ignore width: format them first.
                r["ops_per_sec"]
                    .as_f64()
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.0}")),
                r["per_op_us"]
                    .as_f64()
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
            );
        }
    }
}
