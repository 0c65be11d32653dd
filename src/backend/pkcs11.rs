//! The PKCS#11 backend: one backend per token (or HSM partition), signing
//! with keys that never leave it.
//!
//! - The module (a shared library such as SoftHSM2's) is loaded and
//!   initialised once per process and shared by every token that uses it.
//! - A pool of sessions per token: the user logs in once (a PKCS#11 login
//!   holds for all of an application's sessions on a token), each session
//!   serves one thread at a time. A session that the token drops
//!   (`CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`,
//!   `CKR_USER_NOT_LOGGED_IN`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`)
//!   is replaced by a freshly opened and logged-in one and the operation is
//!   retried on it, so requests in flight are not lost.
//! - A token that stops answering `C_GetTokenInfo` (removed, deleted, its
//!   files gone) is reported as such, and brought back by initialising the
//!   module again ([`Token::recover`]) once it returns.
//! - Mechanisms: `CKM_RSA_PKCS` over the DigestInfo that sigmux prepends,
//!   `CKM_RSA_PKCS_PSS` (MGF1 with the scheme's hash, salt = hash length),
//!   `CKM_ECDSA` (raw `r‖s` turned into DER) and `CKM_EDDSA`, each offered
//!   only when `C_GetMechanismList` reports it with the sign flag.
//! - A batch is spread over the pool's idle sessions in parallel.
//! - Cost seed: a short calibration at start signs a few operations with
//!   throwaway session keys (`CKA_TOKEN=false`, gone when the session
//!   closes) on one session; `calibrate = false` skips it and seeds
//!   conservatively instead.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use parking_lot::{Condvar, Mutex, RwLock};
use serde_json::json;
use zeroize::Zeroizing;

use super::{Backend, Capabilities, CostSeed};
use crate::error::{Error, Result};
use crate::keys::{HsmRef, Key, KeyId, Placement};
use crate::scheme::{Family, HashAlg, KeyKind, Scheme};

/// Where Debian and Ubuntu's `softhsm2` package puts SoftHSM2's module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Which token of a module a backend uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label (`CKA_LABEL` of the token, trailing blanks
    /// ignored).
    Label(String),
    /// The token in the slot with this id.
    Slot(u64),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => f.write_str(l),
            TokenSelector::Slot(s) => write!(f, "slot {s}"),
        }
    }
}

/// Where the user PIN comes from. Never the config file itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored).
    File(PathBuf),
    /// An environment variable holding the PIN.
    Env(String),
}

/// Settings of one PKCS#11 backend (one token).
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// The module (shared library) path.
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The user PIN's source.
    pub pin: PinSource,
    /// Sessions in the pool: operations run on the token at once.
    pub sessions: usize,
    /// Largest batch per call.
    pub max_batch: usize,
    /// Whether to time a few operations at start to seed the scheduler.
    pub calibrate: bool,
}

impl Pkcs11Config {
    /// Settings for `token` in SoftHSM2 with the PIN from `pin`, four
    /// sessions and calibration on.
    pub fn softhsm(token: &str, pin: PinSource) -> Pkcs11Config {
        Pkcs11Config {
            module: PathBuf::from(DEFAULT_MODULE),
            token: TokenSelector::Label(token.to_string()),
            pin,
            sessions: 4,
            max_batch: 64,
            calibrate: true,
        }
    }
}

// ---------------------------------------------------------------------------
// Error text
// ---------------------------------------------------------------------------

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`.
fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `Function::Login` -> `C_Login`.
fn fn_name(f: Function) -> String {
    format!("C_{f:?}")
}

/// A one-line description of a cryptoki error.
fn ck(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => {
            let hint = match rv {
                RvError::PinIncorrect => " (wrong PIN)",
                RvError::PinLocked => " (the PIN is locked: too many wrong tries)",
                RvError::TokenNotPresent => " (no token in the slot)",
                _ => "",
            };
            format!("{} returned {}{hint}", fn_name(*f), ckr_name(*rv))
        }
        CkError::LibraryLoading(e) => format!("cannot load the module: {e}"),
        other => other.to_string().replace('\n', " "),
    }
}

/// The return value of a failed call, if it came from the module.
fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Whether the session (or the login behind it) is gone, so the operation
/// should be retried on a freshly opened and logged-in session.
fn session_lost(e: &CkError) -> bool {
    matches!(
        rv_of(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::DeviceError
        )
    )
}

/// Whether a cached object handle went stale (e.g. the token dropped the
/// handles of private objects when every session closed).
fn handle_stale(e: &CkError) -> bool {
    matches!(
        rv_of(e),
        Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid)
    )
}

// ---------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------

/// A loaded module, shared by every token of it in the process.
struct Module {
    ctx: Pkcs11,
    /// Held shared around every call into the module, and exclusively while
    /// it is initialised again ([`Token::recover`]) or every session is
    /// closed from under the pools ([`Pkcs11Backend::with_token_quiet`]):
    /// PKCS#11 leaves undefined what a call racing those does.
    gate: RwLock<()>,
    /// Bumped when the module is initialised again: every session and
    /// object handle from before is dead (and its number may be handed out
    /// again, so it must not even be closed).
    generation: AtomicU64,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();

/// Whether this process has loaded a PKCS#11 module (then it must not run
/// exit handlers: see `leave` in main.rs).
pub fn modules_loaded() -> bool {
    MODULES.get().is_some_and(|m| !m.lock().is_empty())
}

/// The process-wide context for `path`: loaded and `C_Initialize`d once,
/// shared by every token of that module, never finalised (other tokens may
/// still use it).
fn module(path: &Path) -> std::result::Result<Arc<Module>, String> {
    let mut map = MODULES.get_or_init(Default::default).lock();
    if let Some(m) = map.get(path) {
        return Ok(m.clone());
    }
    if path.components().count() > 1 && !path.exists() {
        return Err(format!("PKCS#11 module {} does not exist", path.display()));
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        format!(
            "cannot load PKCS#11 module {}: {}",
            path.display(),
            ck(&e).trim_start_matches("cannot load the module: ")
        )
    })?;
    end_at_exit_before_module_destructors();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(format!("PKCS#11 module {}: {}", path.display(), ck(&e)));
        }
    }
    let m = Arc::new(Module {
        ctx,
        gate: RwLock::new(()),
        generation: AtomicU64::new(0),
    });
    map.insert(path.to_path_buf(), m.clone());
    Ok(m)
}

/// From now on, `exit` ends the process with `_exit` (its status kept)
/// before the exit handlers registered so far run, among them the C++
/// destructors of the module just loaded. SoftHSM2's crash at exit when
/// they run beside OpenSSL's cleanup or a thread still in the module
/// (SoftHSMv2 issues 635 and 729), which turned finished runs, test
/// binaries included, into a SIGSEGV. `main`'s `leave` does the same for
/// the binary on every platform; this covers any process that loads a
/// module through this crate. Only glibc has `on_exit`, which passes the
/// status on.
fn end_at_exit_before_module_destructors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        unsafe extern "C" {
            fn on_exit(
                f: extern "C" fn(libc::c_int, *mut libc::c_void),
                arg: *mut libc::c_void,
            ) -> libc::c_int;
        }
        extern "C" fn end_now(status: libc::c_int, _: *mut libc::c_void) {
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(status) }
        }
        // SAFETY: registers a handler with a 'static function and no
        // argument; glibc calls it from exit() only.
        ONCE.call_once(|| unsafe {
            on_exit(end_now, std::ptr::null_mut());
        });
    }
}

fn read_pin(src: &PinSource) -> std::result::Result<Zeroizing<String>, String> {
    let raw: Zeroizing<String> =
        match src {
            PinSource::File(p) => Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read the PIN file {}: {e}", p.display()))?,
            ),
            PinSource::Env(v) => Zeroizing::new(std::env::var(v).map_err(|_| {
                format!("the PIN environment variable {v} is not set (or not UTF-8)")
            })?),
        };
    let pin = raw.strip_suffix('\n').unwrap_or(&raw);
    let pin = pin.strip_suffix('\r').unwrap_or(pin);
    if pin.is_empty() {
        return Err(match src {
            PinSource::File(p) => format!("the PIN file {} is empty", p.display()),
            PinSource::Env(v) => format!("the PIN environment variable {v} is empty"),
        });
    }
    Ok(Zeroizing::new(pin.to_string()))
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "file {}", p.display()),
            PinSource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// The slot of the token `selector` names, and the token's label. A token
/// label two tokens share is refused.
fn find_slot(
    ctx: &Pkcs11,
    selector: &TokenSelector,
    module: &Path,
) -> std::result::Result<(Slot, String), String> {
    // Not get_slots_with_initialized_token: it fails outright when one
    // token's C_GetTokenInfo does (see below).
    let slots = ctx.get_slots_with_token().map_err(|e| ck(&e))?;
    let mut seen = Vec::new();
    // Every slot that matches: a label two tokens share picks neither
    // (which one came first would decide where keys are made and used).
    let mut hits: Vec<(Slot, String, String)> = Vec::new();
    // A token another process is changing (SoftHSM2 reads its files
    // here) can fail C_GetTokenInfo for a moment: such slots are passed
    // over and asked again, so they stop neither this token's start nor
    // the search for it.
    let mut pending = slots;
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut unreadable = Vec::new();
        for slot in pending {
            let info = match ctx.get_token_info(slot) {
                Ok(info) if !info.token_initialized() => continue,
                Ok(info) => info,
                Err(e) => {
                    unreadable.push((slot, ck(&e)));
                    continue;
                }
            };
            let label = info.label().trim_end().to_string();
            let hit = match selector {
                TokenSelector::Label(l) => *l == label,
                TokenSelector::Slot(id) => slot.id() == *id,
            };
            if hit {
                let serial = info.serial_number().trim().to_string();
                hits.push((slot, label, serial));
                if matches!(selector, TokenSelector::Slot(_)) {
                    break;
                }
                continue;
            }
            seen.push(format!("'{label}' (slot {})", slot.id()));
        }
        let by_slot = matches!(selector, TokenSelector::Slot(_));
        if (by_slot && !hits.is_empty()) || unreadable.is_empty() {
            break;
        }
        if attempt == 2 {
            seen.extend(
                unreadable
                    .iter()
                    .map(|(slot, e)| format!("slot {} unreadable: {e}", slot.id())),
            );
        }
        pending = unreadable.into_iter().map(|(slot, _)| slot).collect();
    }
    if hits.len() > 1 {
        return Err(format!(
            "{} tokens in module {} are labelled '{}' ({}): choose one with `slot = ID` instead of token_label",
            hits.len(),
            module.display(),
            hits[0].1,
            hits.iter()
                .map(|(slot, _, serial)| format!("slot {} serial {serial}", slot.id()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let found = hits.pop().map(|(slot, label, _)| (slot, label));
    found.ok_or_else(|| {
        format!(
            "no token {} in module {} (it has: {})",
            match selector {
                TokenSelector::Label(l) => format!("labelled '{l}'"),
                TokenSelector::Slot(s) => format!("in slot {s}"),
            },
            module.display(),
            if seen.is_empty() {
                "no initialized token".to_string()
            } else {
                seen.join(", ")
            }
        )
    })
}

/// A session that is closed on drop unless it is known to be dead already
/// (closing a dead handle could close someone else's on a module that
/// reuses handle numbers).
struct OwnedSession {
    session: Option<Session>,
    close: bool,
    /// The module's generation it was opened in.
    generation: u64,
    lib: Arc<Module>,
}

impl OwnedSession {
    fn get(&self) -> &Session {
        // Always Some until drop.
        self.session.as_ref().expect("session present until drop")
    }

    fn discard(mut self) {
        self.close = false;
    }

    /// Whether the module was initialised again since it was opened.
    fn stale(&self) -> bool {
        self.generation != self.lib.generation.load(Ordering::Acquire)
    }
}

impl Drop for OwnedSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && self.close
            && !self.stale()
        {
            let _ = s.close();
        }
    }
}

/// An opened, logged-in token: what key generation, import and the
/// backend's pool share.
pub struct Token {
    lib: Arc<Module>,
    /// The slot it was found in (again, after [`Token::recover`]).
    slot: RwLock<Slot>,
    /// How it was asked for.
    selector: TokenSelector,
    label: String,
    module: PathBuf,
    /// The user PIN; held while logging in, so that two sessions never
    /// both try a PIN the token is about to refuse.
    pin: Mutex<Zeroizing<String>>,
    /// Where the PIN came from (read again at SIGHUP after a refusal).
    pin_source: PinSource,
    /// Why the token refused the PIN after start, once it has: logging in
    /// again with the same PIN would only burn retries towards a locked
    /// PIN.
    pin_refused: Mutex<Option<String>>,
    /// When [`Token::recover`] last initialised the module again.
    last_recover: Mutex<Option<Instant>>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.label)
            .field("slot", &self.slot_id())
            .field("module", &self.module)
            .field("pin", &"<redacted>")
            .finish()
    }
}

impl Token {
    /// Loads the module, finds the token and logs in once to check the PIN.
    /// Errors are one line naming the token and the cause.
    pub fn open(cfg: &Pkcs11Config) -> Result<Token> {
        let who = format!("pkcs11:{}", cfg.token);
        let fail = |reason: String| Error::backend(who.clone(), reason);
        let lib = module(&cfg.module).map_err(fail)?;
        let (slot, label) = {
            let _gate = lib.gate.read();
            find_slot(&lib.ctx, &cfg.token, &cfg.module).map_err(fail)?
        };
        let pin = read_pin(&cfg.pin).map_err(fail)?;
        let token = Token {
            lib,
            slot: RwLock::new(slot),
            selector: cfg.token.clone(),
            label,
            module: cfg.module.clone(),
            pin: Mutex::new(pin),
            pin_source: cfg.pin.clone(),
            pin_refused: Mutex::new(None),
            last_recover: Mutex::new(None),
        };
        {
            let _gate = token.lib.gate.read();
            token
                .open_session(false)
                .map_err(|e| Error::backend(format!("pkcs11:{}", token.label), e))?;
        }
        Ok(token)
    }

    fn slot(&self) -> Slot {
        *self.slot.read()
    }

    /// Why the token cannot be used now, if it cannot: its slot no longer
    /// answers `C_GetTokenInfo` (the token removed, deleted or initialised
    /// again; SoftHSM2 says `CKR_GENERAL_ERROR` once its files are gone),
    /// or holds another token. Looking a key up on such a token finds
    /// nothing, which says nothing about the key.
    pub fn unreadable(&self) -> Option<String> {
        let slot = self.slot();
        let what = format!("token '{}' (slot {})", self.label, slot.id());
        match self.lib.ctx.get_token_info(slot) {
            Ok(info) if !info.token_initialized() => {
                Some(format!("{what} is no longer initialized"))
            }
            Ok(info) if info.label().trim_end() != self.label => Some(format!(
                "{what}: the slot now holds token '{}'",
                info.label().trim_end()
            )),
            Ok(_) => None,
            Err(e) => Some(format!(
                "{what} cannot be read: {} (removed, deleted or initialised again?)",
                ck(&e)
            )),
        }
    }

    /// Brings back a token that [`Token::unreadable`] reports: the module
    /// is finalised and initialised again (how a PKCS#11 library notices a
    /// token that came back; SoftHSM2 does not otherwise) and the token
    /// looked for again by its label or slot. Every session and object
    /// handle of the module's tokens in this process dies with it; the
    /// pools open fresh ones on their next use. Waits for every call into
    /// the module to finish first. Unless `now`, does nothing within
    /// [`RECOVER_INTERVAL`] of the last try. Returns whether the token can
    /// be used again, or why not.
    pub fn recover(&self, now: bool) -> std::result::Result<(), String> {
        {
            let mut last = self.last_recover.lock();
            if !now && last.is_some_and(|t| t.elapsed() < RECOVER_INTERVAL) {
                // Brought back meanwhile by another thread, or not yet.
                return self.unreadable().map_or(Ok(()), Err);
            }
            *last = Some(Instant::now());
        }
        let _quiet = self.lib.gate.write();
        let Some(why) = self.unreadable() else {
            return Ok(());
        };
        tracing::warn!(token = %self.label, reason = %why,
            module = %self.module.display(), "initialising the PKCS#11 module again");
        let ctx = &self.lib.ctx;
        // Whatever C_Finalize says, the sessions from before are gone.
        let _ = ctx.clone().finalize();
        self.lib.generation.fetch_add(1, Ordering::AcqRel);
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(format!("{why}; initialising the module again: {}", ck(&e))),
        }
        let (slot, label) = find_slot(ctx, &self.selector, &self.module)
            .map_err(|e| format!("{why}; after initialising the module again: {e}"))?;
        if label != self.label {
            return Err(format!(
                "{why}; slot {} now holds token '{label}'",
                slot.id()
            ));
        }
        *self.slot.write() = slot;
        // Logged in again (the module forgot the login).
        self.open_session(false).map_err(|e| {
            format!(
                "token '{}' is back in slot {}, but {e}",
                self.label,
                slot.id()
            )
        })?;
        tracing::info!(token = %self.label, slot = slot.id(), "token usable again");
        Ok(())
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The slot id the token sits in.
    pub fn slot_id(&self) -> u64 {
        self.slot().id()
    }

    /// The module path.
    pub fn module(&self) -> &Path {
        &self.module
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::backend(format!("pkcs11:{}", self.label), reason)
    }

    /// Opens a session and makes sure the user is logged in. The caller
    /// holds the module's gate for as long as it uses the session.
    fn open_session(&self, rw: bool) -> std::result::Result<OwnedSession, String> {
        let generation = self.lib.generation.load(Ordering::Acquire);
        let slot = self.slot();
        let s = if rw {
            self.lib.ctx.open_rw_session_no_drop(slot)
        } else {
            self.lib.ctx.open_ro_session_no_drop(slot)
        }
        .map_err(|e| ck(&e))?;
        let s = OwnedSession {
            session: Some(s),
            close: true,
            generation,
            lib: self.lib.clone(),
        };
        self.login(s.get())?;
        Ok(s)
    }

    fn login(&self, s: &Session) -> std::result::Result<(), String> {
        let pin = self.pin.lock();
        if let Some(why) = &*self.pin_refused.lock() {
            return Err(format!(
                "the token refused the PIN from the {} ({why}); not trying it again: fix it and send SIGHUP",
                self.pin_source
            ));
        }
        match s.login(
            UserType::User,
            Some(&AuthPin::from(pin.as_str().to_string())),
        ) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => {
                let why = format!("login failed: {}", ck(&e));
                if matches!(
                    rv_of(&e),
                    Some(RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired)
                ) {
                    *self.pin_refused.lock() = Some(why.clone());
                }
                Err(why)
            }
        }
    }

    /// SIGHUP after the token refused the PIN: the PIN is read again from
    /// its source and, if it changed, tried once. `None` when no PIN was
    /// refused.
    fn retry_pin(&self) -> Option<std::result::Result<(), String>> {
        let refused = self.pin_refused.lock().clone()?;
        let fresh = match read_pin(&self.pin_source) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        {
            let mut pin = self.pin.lock();
            if *pin == fresh {
                return Some(Err(format!(
                    "the token refused the PIN from the {} ({refused}) and it has not changed; not trying it again",
                    self.pin_source
                )));
            }
            *pin = fresh;
            *self.pin_refused.lock() = None;
        }
        let _gate = self.lib.gate.read();
        Some(self.open_session(false).map(|_| ()))
    }

    /// Mechanisms the token reports with the sign flag.
    fn sign_mechanisms(&self) -> Result<Vec<MechanismType>> {
        let _gate = self.lib.gate.read();
        let slot = self.slot();
        let all = self
            .lib
            .ctx
            .get_mechanism_list(slot)
            .map_err(|e| self.err(ck(&e)))?;
        Ok(all
            .into_iter()
            .filter(|m| {
                self.lib
                    .ctx
                    .get_mechanism_info(slot, *m)
                    .is_ok_and(|i| i.sign())
            })
            .collect())
    }

    /// Destroys every object labelled `name` (the bench's throwaway keys).
    pub fn destroy_labelled(&self, name: &str) -> Result<usize> {
        let _gate = self.lib.gate.read();
        let s = self.open_session(true).map_err(|e| self.err(e))?;
        let s = s.get();
        let found = s
            .find_objects(&[Attribute::Label(name.as_bytes().to_vec())])
            .map_err(|e| self.err(ck(&e)))?;
        for h in &found {
            s.destroy_object(*h).map_err(|e| self.err(ck(&e)))?;
        }
        Ok(found.len())
    }

    /// Destroys the key pair with this label and `CKA_ID` (private and
    /// public objects; other objects under the same label and id stay).
    /// Returns how many objects went: none when the token no longer holds
    /// the key.
    pub fn destroy_key(&self, label: &str, id: &[u8]) -> Result<usize> {
        let _gate = self.lib.gate.read();
        let s = self.open_session(true).map_err(|e| self.err(e))?;
        let s = s.get();
        let mut gone = 0;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let found = s
                .find_objects(&[
                    Attribute::Class(class),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(id.to_vec()),
                ])
                .map_err(|e| self.err(ck(&e)))?;
            for h in found {
                s.destroy_object(h).map_err(|e| self.err(ck(&e)))?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// Generates a key pair of `kind` inside the token, labelled `name`:
    /// private half `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`,
    /// `CKA_SIGN`, not `CKA_EXTRACTABLE`. It is generated under a random
    /// 16-byte `CKA_ID`, which is then changed to the first 16 bytes of its
    /// KeyId (SHA-256 of the public key) with `C_SetAttributeValue`; a token
    /// that refuses the change keeps the random id. The id used is
    /// returned.
    pub fn generate(&self, name: &str, kind: KeyKind) -> Result<HsmKey> {
        let _gate = self.lib.gate.read();
        let s = self.open_session(true).map_err(|e| self.err(e))?;
        let s = s.get();
        let existing = s
            .find_objects(&[Attribute::Label(name.as_bytes().to_vec())])
            .map_err(|e| self.err(ck(&e)))?;
        if !existing.is_empty() {
            return Err(self.err(format!(
                "the token already holds an object labelled '{name}'"
            )));
        }
        let mut id = vec![0u8; 16];
        openssl::rand::rand_bytes(&mut id).map_err(|e| self.err(format!("no random id: {e}")))?;
        let label = Attribute::Label(name.as_bytes().to_vec());
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            label.clone(),
            Attribute::Id(id.clone()),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            label,
            Attribute::Id(id.clone()),
        ];
        let mech = match kind.family() {
            Family::Rsa => {
                public.push(Attribute::ModulusBits(
                    (kind.rsa_bits().unwrap_or(2048) as u64).into(),
                ));
                public.push(Attribute::PublicExponent(vec![1, 0, 1]));
                Mechanism::RsaPkcsKeyPairGen
            }
            Family::Ecdsa(_) => {
                public.push(Attribute::EcParams(curve_oid(kind).to_vec()));
                Mechanism::EccKeyPairGen
            }
            Family::Ed25519 => {
                public.push(Attribute::EcParams(curve_oid(kind).to_vec()));
                Mechanism::EccEdwardsKeyPairGen
            }
        };
        let (pub_h, priv_h) = s
            .generate_key_pair(&mech, &public, &private)
            .map_err(|e| self.err(format!("cannot generate a {kind} key pair: {}", ck(&e))))?;
        let (got_kind, spki) =
            read_public(s, priv_h).map_err(|e| self.err(format!("new key: {e}")))?;
        if got_kind != kind {
            return Err(self.err(format!(
                "asked for a {kind} key, the token made a {got_kind} key"
            )));
        }
        let key_id = KeyId::of_spki(&spki);
        let wanted = key_id.0[..16].to_vec();
        let id = match s.update_attributes(priv_h, &[Attribute::Id(wanted.clone())]) {
            Ok(()) => match s.update_attributes(pub_h, &[Attribute::Id(wanted.clone())]) {
                Ok(()) => wanted,
                Err(_) => {
                    let _ = s.update_attributes(priv_h, &[Attribute::Id(id.clone())]);
                    id
                }
            },
            Err(_) => id,
        };
        Ok(HsmKey {
            kind,
            spki_der: spki,
            hsm: HsmRef {
                token: Some(self.label.clone()),
                label: name.to_string(),
                id: hex::encode(&id),
            },
        })
    }

    /// Finds a private key made by another tool, by label and/or `CKA_ID`,
    /// and reads its public half. Exactly one key must match.
    pub fn find(&self, label: Option<&str>, id: Option<&[u8]>) -> Result<HsmKey> {
        if label.is_none() && id.is_none() {
            return Err(Error::Invalid(
                "give the key's label or id (or both)".into(),
            ));
        }
        let _gate = self.lib.gate.read();
        let s = self.open_session(false).map_err(|e| self.err(e))?;
        let s = s.get();
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(l) = label {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(i) = id {
            template.push(Attribute::Id(i.to_vec()));
        }
        let what = match (label, id) {
            (Some(l), Some(i)) => format!("label '{l}' and id {}", hex::encode(i)),
            (Some(l), None) => format!("label '{l}'"),
            (None, Some(i)) => format!("id {}", hex::encode(i)),
            (None, None) => String::new(),
        };
        let found = s.find_objects(&template).map_err(|e| self.err(ck(&e)))?;
        let h = match found.as_slice() {
            [h] => *h,
            [] => {
                return Err(self.err(format!("no private key with {what} in the token")));
            }
            more => {
                return Err(self.err(format!(
                    "{} private keys match {what}; give --id too",
                    more.len()
                )));
            }
        };
        let attrs = s
            .get_attributes(h, &[AttributeType::Label, AttributeType::Id])
            .map_err(|e| self.err(ck(&e)))?;
        let mut got_label = String::new();
        let mut got_id = Vec::new();
        for a in attrs {
            match a {
                Attribute::Label(l) => got_label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Id(i) => got_id = i,
                _ => {}
            }
        }
        let (kind, spki) = read_public(s, h).map_err(|e| self.err(e))?;
        Ok(HsmKey {
            kind,
            spki_der: spki,
            hsm: HsmRef {
                token: Some(self.label.clone()),
                label: got_label,
                id: hex::encode(got_id),
            },
        })
    }

    /// The private key object for `r` whose public half is `spki`, if the
    /// token holds it.
    fn locate(
        &self,
        s: &Session,
        r: &HsmRef,
        spki: &[u8],
    ) -> std::result::Result<Option<ObjectHandle>, CkError> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if !r.label.is_empty() {
            template.push(Attribute::Label(r.label.as_bytes().to_vec()));
        }
        if let Ok(id) = hex::decode(&r.id)
            && !id.is_empty()
        {
            template.push(Attribute::Id(id));
        }
        for h in s.find_objects(&template)? {
            match read_public(s, h) {
                Ok((_, got)) if got == spki => return Ok(Some(h)),
                _ => continue,
            }
        }
        Ok(None)
    }
}

/// A key inside a token, as sigmux records it.
#[derive(Clone, Debug)]
pub struct HsmKey {
    /// Algorithm and size.
    pub kind: KeyKind,
    /// The public half, SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// How to find it again.
    pub hsm: HsmRef,
}

const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// `PrintableString "edwards25519"`, the other way tokens name the curve.
const NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";

fn curve_oid(kind: KeyKind) -> &'static [u8] {
    match kind {
        KeyKind::P384 => OID_P384,
        KeyKind::Ed25519 => OID_ED25519,
        _ => OID_P256,
    }
}

/// The contents of a DER OCTET STRING, or `raw` itself when it is already
/// a bare point of `bare_len` bytes.
fn unwrap_point(raw: &[u8], bare_len: usize) -> Option<&[u8]> {
    if raw.len() == bare_len {
        return Some(raw);
    }
    match raw {
        [0x04, n, rest @ ..] if (*n as usize) < 0x80 && rest.len() == *n as usize => Some(rest),
        [0x04, 0x81, n, rest @ ..] if rest.len() == *n as usize => Some(rest),
        _ => None,
    }
}

/// The kind and SubjectPublicKeyInfo of a private key object: RSA from the
/// object's own modulus and exponent; EC and EdDSA from the public key
/// object with the same `CKA_ID`.
fn read_public(
    s: &Session,
    private: ObjectHandle,
) -> std::result::Result<(KeyKind, Vec<u8>), String> {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey, EcPoint};
    use openssl::nid::Nid;
    use openssl::pkey::{Id, PKey};
    let ossl = |e: openssl::error::ErrorStack| format!("public key: {e}");
    let attrs = s
        .get_attributes(private, &[AttributeType::KeyType, AttributeType::Id])
        .map_err(|e| ck(&e))?;
    let mut key_type = None;
    let mut id = Vec::new();
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Id(i) => id = i,
            _ => {}
        }
    }
    let key_type = key_type.ok_or("the key has no CKA_KEY_TYPE")?;
    if key_type == KeyType::RSA {
        let mut n = None;
        let mut e = None;
        for a in s
            .get_attributes(
                private,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(|e| ck(&e))?
        {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (n, e) = n
            .zip(e)
            .ok_or("the RSA key does not show its modulus and exponent")?;
        let n = BigNum::from_slice(&n).map_err(ossl)?;
        let bits = n.num_bits() as u32;
        let kind = KeyKind::from_rsa_bits(bits)
            .ok_or_else(|| format!("RSA-{bits} is not a size sigmux supports"))?;
        let rsa =
            openssl::rsa::Rsa::from_public_components(n, BigNum::from_slice(&e).map_err(ossl)?)
                .map_err(ossl)?;
        let spki = PKey::from_rsa(rsa)
            .and_then(|k| k.public_key_to_der())
            .map_err(ossl)?;
        return Ok((kind, spki));
    }
    if key_type != KeyType::EC && key_type != KeyType::EC_EDWARDS {
        return Err(format!("key type {key_type} is not RSA, EC or EdDSA"));
    }
    let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    if id.is_empty() {
        return Err("the key has no CKA_ID, so its public key object cannot be found".into());
    }
    template.push(Attribute::Id(id));
    let publics = s.find_objects(&template).map_err(|e| ck(&e))?;
    let public = *publics
        .first()
        .ok_or("no public key object with the same CKA_ID in the token")?;
    let mut params = None;
    let mut point = None;
    for a in s
        .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| ck(&e))?
    {
        match a {
            Attribute::EcParams(v) => params = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            _ => {}
        }
    }
    let (params, point) = params
        .zip(point)
        .ok_or("the public key object lacks CKA_EC_PARAMS or CKA_EC_POINT")?;
    let (kind, nid) = if params == OID_P256 {
        (KeyKind::P256, Nid::X9_62_PRIME256V1)
    } else if params == OID_P384 {
        (KeyKind::P384, Nid::SECP384R1)
    } else if params == OID_ED25519 || params == NAME_ED25519 {
        let raw = unwrap_point(&point, 32).ok_or("malformed Ed25519 CKA_EC_POINT")?;
        let spki = PKey::public_key_from_raw_bytes(raw, Id::ED25519)
            .and_then(|k| k.public_key_to_der())
            .map_err(ossl)?;
        return Ok((KeyKind::Ed25519, spki));
    } else {
        return Err(format!(
            "curve {} is not one sigmux supports (P-256, P-384, Ed25519)",
            hex::encode(&params)
        ));
    };
    let field = if kind == KeyKind::P256 { 32 } else { 48 };
    let raw = unwrap_point(&point, 2 * field + 1).ok_or("malformed CKA_EC_POINT")?;
    let group = EcGroup::from_curve_name(nid).map_err(ossl)?;
    let mut ctx = BigNumContext::new().map_err(ossl)?;
    let pt = EcPoint::from_bytes(&group, raw, &mut ctx).map_err(ossl)?;
    let spki = EcKey::from_public_key(&group, &pt)
        .and_then(PKey::from_ec_key)
        .and_then(|k| k.public_key_to_der())
        .map_err(ossl)?;
    Ok((kind, spki))
}

// ---------------------------------------------------------------------------
// The session pool
// ---------------------------------------------------------------------------

/// A fixed number of session slots; an empty slot (`None`) gets a fresh
/// session when next taken.
struct Pool {
    token: Arc<Token>,
    idle: Mutex<Vec<Option<OwnedSession>>>,
    cv: Condvar,
    reopened: AtomicU64,
}

/// One session, lent to one thread; handed back on drop.
struct Lease<'a> {
    pool: &'a Pool,
    session: Option<OwnedSession>,
}

impl Pool {
    fn new(token: Arc<Token>, size: usize) -> std::result::Result<Pool, String> {
        let lib = token.lib.clone();
        let _gate = lib.gate.read();
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(Some(token.open_session(false)?));
        }
        Ok(Pool {
            token,
            idle: Mutex::new(idle),
            cv: Condvar::new(),
            reopened: AtomicU64::new(0),
        })
    }

    /// Waits for a session (opening a fresh one, inside the token's gate,
    /// if its slot was emptied).
    fn acquire(&self) -> std::result::Result<Lease<'_>, String> {
        let slot = {
            let mut idle = self.idle.lock();
            loop {
                if let Some(s) = idle.pop() {
                    break s;
                }
                self.cv.wait(&mut idle);
            }
        };
        self.lease(slot)
    }

    /// A session if one is idle now.
    fn try_acquire(&self) -> Option<Lease<'_>> {
        let slot = self.idle.lock().pop()?;
        self.lease(slot).ok()
    }

    fn lease(&self, slot: Option<OwnedSession>) -> std::result::Result<Lease<'_>, String> {
        let mut lease = Lease {
            pool: self,
            session: slot,
        };
        if lease.session.is_none() {
            let _gate = self.token.lib.gate.read();
            lease.session = Some(self.token.open_session(false)?);
            self.reopened.fetch_add(1, Ordering::Relaxed);
        }
        Ok(lease)
    }
}

impl Lease<'_> {
    /// The session, replaced first if the module was initialised again
    /// since it was opened. The caller holds the module's gate.
    fn session(&mut self) -> std::result::Result<&Session, String> {
        if self.session.as_ref().is_none_or(|s| s.stale()) {
            self.renew()?;
        }
        self.session
            .as_ref()
            .map(|s| s.get())
            .ok_or_else(|| "no session".to_string())
    }

    /// Replaces a session the token dropped with a fresh, logged-in one.
    fn renew(&mut self) -> std::result::Result<(), String> {
        if let Some(dead) = self.session.take() {
            dead.discard();
        }
        let fresh = self.pool.token.open_session(false)?;
        self.pool.reopened.fetch_add(1, Ordering::Relaxed);
        self.session = Some(fresh);
        Ok(())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.idle.lock().push(self.session.take());
        self.pool.cv.notify_one();
    }
}

// ---------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------

/// Tries per operation before its batch fails (each after a lost session).
const ATTEMPTS: u32 = 4;
/// How long "this token does not hold that key" is believed.
const MISSING_TTL: Duration = Duration::from_secs(5);
/// How often a token that cannot be read is tried again by itself
/// ([`Token::recover`]; SIGHUP tries at once).
pub const RECOVER_INTERVAL: Duration = Duration::from_secs(5);

/// Whether the token holds a key: a fact that outlives sessions, unlike
/// object handles.
#[derive(Clone, Copy)]
enum Presence {
    Held,
    Missing(Instant),
}

/// Operations per second need some kind to be measured on.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Calibration {
    rsa2048_us: Option<f64>,
    p256_us: Option<f64>,
    ed25519_us: Option<f64>,
    measured: bool,
}

/// The PKCS#11 backend for one token.
pub struct Pkcs11Backend {
    name: String,
    caps: Capabilities,
    token: Arc<Token>,
    pool: Pool,
    sessions: usize,
    mechanisms: Vec<MechanismType>,
    /// Object handles of keys in use, with the module generation they
    /// belong to; dropped when sessions are lost.
    handles: RwLock<HashMap<KeyId, (u64, ObjectHandle)>>,
    /// What `holds` answers, per key.
    presence: RwLock<HashMap<KeyId, Presence>>,
    calibration: Calibration,
    retried_ops: AtomicU64,
}

impl fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("name", &self.name)
            .field("token", &self.token)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Opens the token, logs in, opens the session pool, reads the
    /// mechanisms and (unless turned off) calibrates.
    pub fn start(cfg: &Pkcs11Config) -> Result<Pkcs11Backend> {
        let token = Arc::new(Token::open(cfg)?);
        let name = format!("pkcs11:{}", token.label);
        let mechanisms = token.sign_mechanisms()?;
        let schemes: Vec<Scheme> = Scheme::all()
            .iter()
            .copied()
            .filter(|s| mechanisms.contains(&mechanism_type(*s)))
            .collect();
        let sessions = cfg.sessions.max(1);
        let pool = Pool::new(token.clone(), sessions)
            .map_err(|e| Error::backend(name.clone(), format!("cannot open sessions: {e}")))?;
        let mut backend = Pkcs11Backend {
            name,
            caps: Capabilities {
                schemes,
                placements: vec![Placement::Hsm],
                max_batch: cfg.max_batch.max(1),
                parallelism: sessions,
            },
            token,
            pool,
            sessions,
            mechanisms,
            handles: RwLock::new(HashMap::new()),
            presence: RwLock::new(HashMap::new()),
            calibration: Calibration {
                rsa2048_us: None,
                p256_us: None,
                ed25519_us: None,
                measured: false,
            },
            retried_ops: AtomicU64::new(0),
        };
        if cfg.calibrate {
            backend.calibration = backend.calibrate()?;
        }
        Ok(backend)
    }

    /// A plain cryptoki loop, the baseline of `sigmux bench --compare-raw`:
    /// one thread per session of the pool, each calling `C_Sign` with `key`
    /// on the same prepared `input` for `duration`; no engine, no batching.
    /// Returns the operations done and the time they took.
    pub fn raw_sign_loop(
        &self,
        key: &Key,
        scheme: Scheme,
        input: &[u8],
        duration: Duration,
    ) -> Result<(u64, Duration)> {
        let fail = |reason: String| Error::backend(self.name.clone(), reason);
        let data = prepare_for(scheme, input);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let start = std::time::Instant::now();
        let total = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..self.sessions)
                .map(|_| {
                    sc.spawn(|| -> Result<u64> {
                        // Mechanism parameters hold raw pointers: one per thread.
                        let mech = mechanism(scheme);
                        let mut lease = self.pool.acquire().map_err(fail)?;
                        let _gate = self.token.lib.gate.read();
                        let s = lease.session().map_err(fail)?;
                        let h = self
                            .handle_for(key, s)
                            .map_err(|e| fail(ck(&e)))?
                            .ok_or_else(|| {
                                fail(format!("key '{}' is not in the token", key.name()))
                            })?;
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            s.sign(&mech, h, &data).map_err(|e| fail(ck(&e)))?;
                            n += 1;
                        }
                        Ok(n)
                    })
                })
                .collect();
            std::thread::sleep(duration);
            stop.store(true, Ordering::Relaxed);
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(fail("raw loop panicked".into())))
                })
                .sum::<Result<u64>>()
        })?;
        Ok((total, start.elapsed()))
    }

    /// Makes a key pair in the token for a benchmark; `drop_bench_key`
    /// removes it again.
    pub fn bench_key(&self, kind: KeyKind) -> Result<Arc<Key>> {
        let name = format!("sigmux-bench-{}", std::process::id());
        let hk = self.token.generate(&name, kind)?;
        Ok(Arc::new(Key::from_hsm(
            &name,
            hk.kind,
            &hk.spki_der,
            hk.hsm,
        )?))
    }

    /// Removes a key made by `bench_key` from the token.
    pub fn drop_bench_key(&self, key: &Key) -> Result<()> {
        self.token.destroy_labelled(key.name()).map(|_| ())
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token.label
    }

    /// The token's slot id.
    pub fn slot_id(&self) -> u64 {
        self.token.slot_id()
    }

    /// Runs `f` while no thread of this process is inside the module
    /// through sigmux (this backend's, or any other token's of the same
    /// module), holding new calls back until it returns. PKCS#11 leaves undefined
    /// what happens when a session is closed while another thread uses it
    /// (SoftHSM2 crashes), so this is how an operator tool or a test closes
    /// every session from under the pool (`C_CloseAllSessions` from another
    /// handle) to check that requests in flight survive it.
    pub fn with_token_quiet<R>(&self, f: impl FnOnce() -> R) -> R {
        let _quiet = self.token.lib.gate.write();
        f()
    }

    /// Sessions re-opened after the token dropped one (or the login).
    pub fn sessions_reopened(&self) -> u64 {
        self.pool.reopened.load(Ordering::Relaxed)
    }

    /// Operations retried on a fresh session.
    pub fn retried_ops(&self) -> u64 {
        self.retried_ops.load(Ordering::Relaxed)
    }

    /// Signs a few operations per key family with session keys on one
    /// session: microseconds per operation.
    fn calibrate(&self) -> Result<Calibration> {
        let mut lease = self
            .pool
            .acquire()
            .map_err(|e| Error::backend(self.name.clone(), e))?;
        let _gate = self.token.lib.gate.read();
        let s = lease
            .session()
            .map_err(|e| Error::backend(self.name.clone(), e))?;
        let time = |kind: KeyKind, scheme: Scheme, n: u32| -> Option<f64> {
            if !self.caps.schemes.contains(&scheme) {
                return None;
            }
            let (pub_h, priv_h) = session_key(s, kind).ok()?;
            let data = prepare_for(scheme, &vec![0x5a; scheme.hash().map_or(32, |h| h.len())]);
            let mech = mechanism(scheme);
            let mut result = None;
            if s.sign(&mech, priv_h, &data).is_ok() {
                let start = Instant::now();
                let mut ok = true;
                for _ in 0..n {
                    ok &= s.sign(&mech, priv_h, &data).is_ok();
                }
                if ok {
                    result = Some(start.elapsed().as_secs_f64() * 1e6 / n as f64);
                }
            }
            let _ = s.destroy_object(priv_h);
            let _ = s.destroy_object(pub_h);
            result
        };
        Ok(Calibration {
            rsa2048_us: time(KeyKind::Rsa2048, Scheme::RsaPkcs1Sha256, 8),
            p256_us: time(KeyKind::P256, Scheme::EcdsaSecp256r1Sha256, 16),
            ed25519_us: time(KeyKind::Ed25519, Scheme::Ed25519, 16),
            measured: true,
        })
    }

    /// The token's handle for `key`, looked up once and cached.
    fn handle_for(
        &self,
        key: &Key,
        s: &Session,
    ) -> std::result::Result<Option<ObjectHandle>, CkError> {
        let generation = self.token.lib.generation.load(Ordering::Acquire);
        if let Some((g, h)) = self.handles.read().get(&key.id())
            && *g == generation
        {
            return Ok(Some(*h));
        }
        let Some(r) = key.info().hsm.as_ref() else {
            return Ok(None);
        };
        let found = self.token.locate(s, r, key.spki_der())?;
        if found.is_none() && self.token.unreadable().is_some() {
            // Nothing is known about the key until the token is back.
            return Ok(None);
        }
        if let Some(h) = found {
            self.handles.write().insert(key.id(), (generation, h));
        }
        self.presence.write().insert(
            key.id(),
            match found {
                Some(_) => Presence::Held,
                None => Presence::Missing(Instant::now()),
            },
        );
        Ok(found)
    }

    /// Signs one prepared input, replacing the session and retrying when the
    /// token dropped it.
    fn sign_one(
        &self,
        lease: &mut Lease<'_>,
        key: &Key,
        mech: &Mechanism,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let fail = |reason: String| Error::backend(self.name.clone(), reason);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                self.retried_ops.fetch_add(1, Ordering::Relaxed);
            }
            let gate = self.token.lib.gate.read();
            let s = match lease.session() {
                Ok(s) => s,
                Err(e) => {
                    drop(gate);
                    self.bring_back(&e).map_err(fail)?;
                    last = e;
                    continue;
                }
            };
            let result = match self.handle_for(key, s) {
                Ok(Some(h)) => s.sign(mech, h, data),
                Ok(None) => {
                    drop(gate);
                    let gone = format!(
                        "key '{}' is not in token '{}'",
                        key.name(),
                        self.token.label
                    );
                    self.bring_back(&gone).map_err(fail)?;
                    // The token is back: look again.
                    last = gone;
                    continue;
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(sig) => return Ok(sig),
                Err(e) if session_lost(&e) => {
                    last = ck(&e);
                    tracing::debug!(backend = %self.name, error = %last, "session lost; reopening");
                    // Handles of private objects may die with the login.
                    self.handles.write().clear();
                    if matches!(
                        rv_of(&e),
                        Some(RvError::DeviceRemoved | RvError::TokenNotPresent)
                    ) {
                        drop(gate);
                        std::thread::sleep(Duration::from_millis(20 << attempt));
                        let _gate = self.token.lib.gate.read();
                        if let Err(reopen) = lease.renew() {
                            last = format!("{last}; reopening the session failed: {reopen}");
                        }
                    } else if let Err(reopen) = lease.renew() {
                        last = format!("{last}; reopening the session failed: {reopen}");
                    }
                }
                Err(e) if handle_stale(&e) => {
                    last = ck(&e);
                    self.handles.write().remove(&key.id());
                }
                Err(e) => return Err(fail(ck(&e))),
            }
        }
        Err(fail(format!("gave up after {ATTEMPTS} tries: {last}")))
    }

    /// After `failure`: when the token cannot be read, tries to bring it
    /// back ([`Token::recover`], at most every [`RECOVER_INTERVAL`]) and
    /// returns `Ok` once it is usable again; otherwise (the token is fine,
    /// or still gone) the error to report, naming the token's problem
    /// when it has one. Called without the module's gate.
    fn bring_back(&self, failure: &str) -> std::result::Result<(), String> {
        let Some(why) = self.token.unreadable() else {
            return Err(failure.to_string());
        };
        self.token
            .recover(false)
            .map_err(|e| if e.is_empty() { why } else { e })
    }

    /// SIGHUP: a token that cannot be read is tried again at once. Returns
    /// what happened, for the operator, or `None` when the token was fine.
    /// Also reads a PIN the token refused again and, if it changed,
    /// tries it.
    pub fn recover_now(&self) -> Option<std::result::Result<(), String>> {
        let token = if self.token.unreadable().is_some() {
            let r = self.token.recover(true);
            if r.is_ok() {
                self.handles.write().clear();
            }
            Some(r)
        } else {
            None
        };
        // A PIN tried after the token came back has the last word.
        match (token, self.token.retry_pin()) {
            (_, Some(pin)) => Some(pin),
            (token, None) => token,
        }
    }

    fn sign_chunk(
        &self,
        lease: &mut Lease<'_>,
        key: &Key,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        let mech = mechanism(scheme);
        let modulus_len = key.kind().rsa_bits().map(|b| b as usize / 8);
        inputs
            .iter()
            .map(|input| {
                let sig = self.sign_one(lease, key, &mech, &prepare_for(scheme, input))?;
                finish(scheme, sig, modulus_len).map_err(|e| Error::backend(self.name.clone(), e))
            })
            .collect()
    }
}

/// A throwaway key pair that lives only as long as the session.
fn session_key(
    s: &Session,
    kind: KeyKind,
) -> std::result::Result<(ObjectHandle, ObjectHandle), CkError> {
    let mut public = vec![Attribute::Token(false), Attribute::Verify(true)];
    let private = vec![
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ];
    let mech = match kind.family() {
        Family::Rsa => {
            public.push(Attribute::ModulusBits(
                (kind.rsa_bits().unwrap_or(2048) as u64).into(),
            ));
            public.push(Attribute::PublicExponent(vec![1, 0, 1]));
            Mechanism::RsaPkcsKeyPairGen
        }
        Family::Ecdsa(_) => {
            public.push(Attribute::EcParams(curve_oid(kind).to_vec()));
            Mechanism::EccKeyPairGen
        }
        Family::Ed25519 => {
            public.push(Attribute::EcParams(curve_oid(kind).to_vec()));
            Mechanism::EccEdwardsKeyPairGen
        }
    };
    s.generate_key_pair(&mech, &public, &private)
}

/// The PKCS#11 mechanism that signs `scheme`.
fn mechanism_type(scheme: Scheme) -> MechanismType {
    match scheme.family() {
        Family::Rsa if scheme.is_pss() => MechanismType::RSA_PKCS_PSS,
        Family::Rsa => MechanismType::RSA_PKCS,
        Family::Ecdsa(_) => MechanismType::ECDSA,
        Family::Ed25519 => MechanismType::EDDSA,
    }
}

fn mechanism(scheme: Scheme) -> Mechanism<'static> {
    match (scheme.family(), scheme.hash()) {
        (Family::Rsa, Some(h)) if scheme.is_pss() => {
            let (hash_alg, mgf) = match h {
                HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
            };
            Mechanism::RsaPkcsPss(PkcsPssParams {
                hash_alg,
                mgf,
                s_len: (h.len() as u64).into(),
            })
        }
        (Family::Rsa, _) => Mechanism::RsaPkcs,
        (Family::Ecdsa(_), _) => Mechanism::Ecdsa,
        (Family::Ed25519, _) => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
    }
}

/// What the token signs: DigestInfo ‖ digest for PKCS#1 v1.5 (the token's
/// `CKM_RSA_PKCS` adds only the padding), the digest for PSS and ECDSA, the
/// message for Ed25519.
fn prepare_for(scheme: Scheme, input: &[u8]) -> Vec<u8> {
    match scheme.hash() {
        Some(h) if scheme.family() == Family::Rsa && !scheme.is_pss() => h.digest_info(input),
        _ => input.to_vec(),
    }
}

/// The token's output in sigmux's form: RSA left-padded to the modulus
/// length, ECDSA as DER.
fn finish(
    scheme: Scheme,
    sig: Vec<u8>,
    modulus_len: Option<usize>,
) -> std::result::Result<Vec<u8>, String> {
    match scheme.family() {
        Family::Rsa => {
            let k = modulus_len.unwrap_or(sig.len());
            if sig.len() > k {
                return Err(format!(
                    "token returned a {}-byte RSA signature for a {k}-byte modulus",
                    sig.len()
                ));
            }
            let mut out = vec![0u8; k - sig.len()];
            out.extend_from_slice(&sig);
            Ok(out)
        }
        Family::Ecdsa(c) => {
            if sig.len() != 2 * c.field_len() {
                return Err(format!(
                    "token returned a {}-byte ECDSA signature, expected {}",
                    sig.len(),
                    2 * c.field_len()
                ));
            }
            crate::der::ecdsa_raw_to_der(&sig).map_err(|e| e.to_string())
        }
        Family::Ed25519 => {
            if sig.len() != 64 {
                return Err(format!(
                    "token returned a {}-byte Ed25519 signature",
                    sig.len()
                ));
            }
            Ok(sig)
        }
    }
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// HSM keys recorded for this token (or for any token) that the token
    /// really holds, with the recorded public key; the answer is cached.
    fn holds(&self, key: &Key) -> bool {
        if key.placement() != Placement::Hsm {
            return false;
        }
        let Some(r) = key.info().hsm.as_ref() else {
            return false;
        };
        if r.token.as_deref().is_some_and(|t| t != self.token.label) {
            return false;
        }
        match self.presence.read().get(&key.id()) {
            Some(Presence::Held) => return true,
            Some(Presence::Missing(at)) if at.elapsed() < MISSING_TTL => return false,
            _ => {}
        }
        // Look it up once, on a short-lived session so as not to wait
        // behind signing work (or, if the token allows no more sessions, on
        // an idle pooled one, renewed if the token dropped it).
        // A key bound to this token while the token cannot be read: its
        // requests come here and fail naming the token's problem (and try
        // to bring it back) rather than finding no backend at all.
        let bound_here = r.token.as_deref() == Some(self.token.label.as_str());
        {
            let _gate = self.token.lib.gate.read();
            if let Ok(s) = self.token.open_session(false) {
                return match self.handle_for(key, s.get()) {
                    Ok(Some(_)) => true,
                    _ => bound_here && self.token.unreadable().is_some(),
                };
            }
        }
        if bound_here && self.token.unreadable().is_some() {
            return true;
        }
        let Some(mut lease) = self.pool.try_acquire() else {
            return false;
        };
        let _gate = self.token.lib.gate.read();
        for _ in 0..2 {
            let Ok(s) = lease.session() else {
                return false;
            };
            match self.handle_for(key, s) {
                Ok(found) => return found.is_some(),
                Err(e) if session_lost(&e) => {
                    if lease.renew().is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn sign_batch(
        &self,
        key: &Arc<Key>,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>> {
        scheme.check_fits(key.kind())?;
        if !self.caps.schemes.contains(&scheme) {
            return Err(Error::backend(
                self.name.clone(),
                format!("the token does not offer a mechanism for {scheme}"),
            ));
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        // The engine runs one worker per session and splits every batch into
        // one share per session, so a call signs its share on one session.
        let mut lease = match self.pool.acquire() {
            Ok(lease) => lease,
            Err(e) => {
                let fail = |reason: String| Error::backend(self.name.clone(), reason);
                self.bring_back(&format!("no session: {e}")).map_err(fail)?;
                self.pool
                    .acquire()
                    .map_err(|e| fail(format!("no session: {e}")))?
            }
        };
        self.sign_chunk(&mut lease, key, scheme, inputs)
    }

    // RSA results are always checked by the engine; an HSM's ECDSA and
    // Ed25519 results are trusted like the CPU libraries' (the rules ask
    // for them to be checked from the GPU, whose kernels are our own).
    fn needs_check(&self, _scheme: Scheme) -> bool {
        false
    }

    fn cost_seed(&self, kind: KeyKind, scheme: Scheme) -> Option<CostSeed> {
        if !self.caps.schemes.contains(&scheme) {
            return None;
        }
        let c = &self.calibration;
        // Measured on rsa2048, p256 and ed25519; other sizes scaled (RSA
        // private-key cost grows about with the cube of the modulus size,
        // P-384 costs about three P-256). Uncalibrated: conservative guesses.
        let single = match kind {
            KeyKind::Rsa2048 => c.rsa2048_us.unwrap_or(5_000.0),
            KeyKind::Rsa3072 => c.rsa2048_us.unwrap_or(5_000.0) * 3.2,
            KeyKind::Rsa4096 => c.rsa2048_us.unwrap_or(5_000.0) * 7.0,
            KeyKind::P256 => c.p256_us.unwrap_or(1_000.0),
            KeyKind::P384 => c.p256_us.unwrap_or(1_000.0) * 3.0,
            KeyKind::Ed25519 => c.ed25519_us.unwrap_or(1_000.0),
        };
        Some(CostSeed {
            per_batch_us: 50.0,
            per_op_us: single / self.sessions as f64,
        })
    }

    fn describe(&self) -> serde_json::Value {
        let mechs: Vec<String> = self.mechanisms.iter().map(|m| m.to_string()).collect();
        json!({
            "module": self.token.module.display().to_string(),
            "token": self.token.label,
            "slot": self.token.slot_id(),
            "sessions": self.sessions,
            "sign_mechanisms": mechs,
            "calibration": self.calibration,
            "sessions_reopened": self.sessions_reopened(),
            "retried_ops": self.retried_ops(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_read_like_the_spec() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(fn_name(Function::Login), "C_Login");
    }

    #[test]
    fn points_unwrap_from_der_or_pass_through() {
        let mut bare = vec![4u8; 65];
        bare[1] = 63; // looks like a DER length, but the size says bare
        assert_eq!(unwrap_point(&bare, 65), Some(&bare[..]));
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&bare);
        assert_eq!(unwrap_point(&der, 65), Some(&bare[..]));
        let mut long = vec![0x04, 0x81, 97];
        long.extend_from_slice(&[4u8; 97]);
        assert_eq!(unwrap_point(&long, 97).map(|p| p.len()), Some(97));
        assert_eq!(unwrap_point(&[1, 2, 3], 65), None);
    }

    #[test]
    fn inputs_and_outputs_take_the_token_form() {
        let d = vec![7u8; 32];
        let p = prepare_for(Scheme::RsaPkcs1Sha256, &d);
        assert_eq!(p, HashAlg::Sha256.digest_info(&d));
        assert_eq!(prepare_for(Scheme::RsaPssRsaeSha256, &d), d);
        assert_eq!(
            finish(Scheme::RsaPkcs1Sha256, vec![1, 2], Some(4)).unwrap(),
            vec![0, 0, 1, 2]
        );
        assert!(finish(Scheme::EcdsaSecp256r1Sha256, vec![1; 63], None).is_err());
        let der = finish(Scheme::EcdsaSecp256r1Sha256, vec![1; 64], None).unwrap();
        assert_eq!(der[0], 0x30);
    }

    #[test]
    fn a_missing_module_is_one_clear_line() {
        let e = module(Path::new("/nonexistent/libnothing.so")).unwrap_err();
        assert!(e.contains("/nonexistent/libnothing.so") && e.contains("does not exist"));
        assert!(!e.contains('\n'));
    }
}
