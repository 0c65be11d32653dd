//! The audit log: append-only JSON lines, each carrying the SHA-256 of the
//! line before it, so that removing, reordering or editing any record breaks
//! the chain at that point (`sigmux audit verify`). Records never hold key
//! material.
//!
//! The log is split into segments by size: when appending would take the
//! current file (`audit.log`) past the segment limit, it is renamed to
//! `audit.log.<N>` (`N` counting up from 1, zero-padded to six digits so the
//! names sort) and a fresh `audit.log` starts. The chain does not restart:
//! the first record of the new file carries the hash of the last line of the
//! previous segment as its `prev`, and `seq` keeps counting. [`verify`] reads
//! `audit.log.000001`, `audit.log.000002`, … and then `audit.log` as one
//! chain.
//!
//! Every [`AuditLog`] opened on the same path in one process shares one
//! tail, so the issuance API and the rotation scheduler extend the same
//! chain. Processes (a running `serve` and the CLI next to it) take turns
//! through a lock file (`.<name>.lock`): before each append a process
//! reads back its own last line (one positioned read) and checks that it
//! still hashes to what it wrote or read, then checks the records other
//! processes appended since, chain link by chain link, and continues the
//! chain after them.
//!
//! An unkeyed chain cannot protect its newest records: whoever can write
//! the file can cut the last records off, or rewrite the last line (and
//! anything after a point) with a chain of their own. The chain proves
//! order and integrity relative to a head exported earlier: [`Anchor`]
//! (`seq:sha256`, printed by `sigmux audit verify`) kept off the host, and
//! checked later with [`verify_anchored`].
//!
//! A log whose chain is broken is never extended; [`restart`] moves its
//! files aside into a quarantine directory and starts a new chain whose
//! first record (`audit_restarted`) names them with their hashes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The `prev` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest line `verify` reads; a longer one is reported, not loaded.
/// `append_many` refuses a record whose line would be longer, so the log
/// it writes always verifies.
pub const MAX_LINE: usize = 1 << 20;

/// Room on a line for what `finish_line` adds: `"prev":"<64 hex>",`,
/// `"seq":<20 digits>` and the closing brace.
const CHAIN_FIELDS_LEN: usize = 100;

/// Default size at which the current file becomes a segment: 64 MiB.
pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// Digits of a segment number in its file name.
const SEGMENT_DIGITS: usize = 6;

/// The event that opens a chain started by [`restart`].
pub const RESTART_EVENT: &str = "audit_restarted";

/// An open audit log, appended to by many threads.
pub struct AuditLog {
    path: PathBuf,
    state: Arc<Mutex<Tail>>,
}

struct Tail {
    /// The current file, open for appending and reading back.
    file: File,
    /// The cross-process lock file, held (exclusively) for each append.
    lock: File,
    seq: u64,
    /// SHA-256 of the last line this process wrote or checked.
    last: String,
    /// Bytes in the current file.
    size: u64,
    /// Lines in the current file.
    lines: u64,
    /// Where that last line starts in the current file (it ends at `size`);
    /// `None` while the current file holds no line.
    last_start: Option<u64>,
    /// Number the current file gets when it becomes a segment.
    next_segment: u64,
    max_segment_bytes: u64,
}

/// Tails of the logs open in this process, by canonical path.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Mutex<Tail>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What `verify` found in a log whose chain is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records in all segments together.
    pub records: u64,
    /// SHA-256 (hex) of the last line: publish it to detect truncation.
    pub head: String,
    /// Older segments read before the current file.
    pub segments: u64,
}

impl Verified {
    /// The head as an anchor to export (`None` for a log without records).
    pub fn anchor(&self) -> Option<Anchor> {
        (self.records > 0).then(|| Anchor {
            seq: self.records,
            hash: self.head.clone(),
        })
    }
}

/// A head exported earlier: record `seq` of the chain had the SHA-256
/// `hash` (of its line). Written and parsed as `SEQ:HEX`. A log that still
/// holds that record with that hash has not been cut short or rewritten up
/// to it since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The record's number (from 1).
    pub seq: u64,
    /// SHA-256 of its line, lowercase hex.
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Anchor> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "audit anchor '{}': {why} (expected SEQ:SHA256 as `sigmux audit verify` prints it)",
                s.escape_debug()
            ))
        };
        let (seq, hash) = s.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| bad("the record number is not a whole number"))?;
        if seq == 0 {
            return Err(bad("record numbers start at 1"));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the hash is not 64 hex digits"));
        }
        Ok(Anchor {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// A file [`restart`] moved into quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MovedFile {
    /// Its name (kept in the quarantine directory).
    pub name: String,
    /// SHA-256 of its content, hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// What [`restart`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The directory the broken log's files were moved into.
    pub quarantine: PathBuf,
    /// The files moved, in chain order (segments, then the current file).
    pub moved: Vec<MovedFile>,
    /// Why the old chain did not verify.
    pub error: String,
    /// Records that continued the old chain before the break.
    pub records_verified: u64,
    /// The new chain: one record, `audit_restarted`.
    pub verified: Verified,
}

/// "1 record", "2 records".
fn records(n: u64) -> String {
    format!("{n} record{}", if n == 1 { "" } else { "s" })
}

fn sha256_hex(line: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, line))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The file name of segment `n` of the log at `path`.
pub fn segment_path(path: &Path, n: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n:0SEGMENT_DIGITS$}"));
    path.with_file_name(name)
}

/// The older segments of the log at `path`, by number, oldest first.
pub fn segments(path: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = parent_dir(path);
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(Error::Invalid(format!(
            "audit log path {} has no usable file name",
            path.display()
        )));
    };
    let prefix = format!("{base}.");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name.strip_prefix(&prefix) else {
            continue;
        };
        if num.len() < SEGMENT_DIGITS || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = num.parse::<u64>() {
            out.push((n, path.with_file_name(name)));
        }
    }
    out.sort();
    Ok(out)
}

/// The lock file that orders appends by all processes: `.<name>.lock`
/// beside the log (not a segment name, so never taken for one).
fn lock_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".lock");
    path.with_file_name(name)
}

fn open_lock(path: &Path) -> Result<File> {
    let lp = lock_path(path);
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&lp).map_err(|e| Error::io(&lp, e))
}

/// Whether `a` and `b` are the same file (not only the same name).
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        a.len() == b.len()
    }
}

/// Opens the current file for appending, and for reading back the last
/// line before each append.
fn open_append(path: &Path) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).read(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| Error::io(path, e))
}

/// Reads `buf.len()` bytes at `offset` without moving a shared position.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(not(unix))]
    {
        let mut f = file;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

/// Makes a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

impl AuditLog {
    /// Opens (or creates) the log at `path` with segments of
    /// [`DEFAULT_MAX_SEGMENT_BYTES`]; see [`AuditLog::open_with`].
    pub fn open(path: &Path) -> Result<AuditLog> {
        AuditLog::open_with(path, DEFAULT_MAX_SEGMENT_BYTES)
    }

    /// Opens (or creates) the log at `path`, checking the whole chain
    /// (every segment) first so that new records never extend a broken one.
    /// The current file becomes a segment when an append would take it past
    /// `max_segment_bytes`. A log already open in this process is shared
    /// (and keeps the limit it was first opened with).
    pub fn open_with(path: &Path, max_segment_bytes: u64) -> Result<AuditLog> {
        let dir = parent_dir(path);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let canonical = std::fs::canonicalize(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .join(path.file_name().unwrap_or_default());
        let mut open = OPEN.lock();
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(state) = open.get(&canonical).and_then(Weak::upgrade) {
            return Ok(AuditLog {
                path: path.to_path_buf(),
                state,
            });
        }
        let state = open_tail(path, max_segment_bytes)?;
        open.insert(canonical, Arc::downgrade(&state));
        Ok(AuditLog {
            path: path.to_path_buf(),
            state,
        })
    }

    /// A log with a tail of its own, as another process would hold it.
    #[cfg(test)]
    fn open_unshared(path: &Path, max_segment_bytes: u64) -> Result<AuditLog> {
        Ok(AuditLog {
            path: path.to_path_buf(),
            state: open_tail(path, max_segment_bytes)?,
        })
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (`fields` must be a JSON object; `seq`, `time`,
    /// `event` and `prev` are added) and syncs it to disk before returning.
    pub fn append(&self, event: &str, fields: Value) -> Result<()> {
        self.append_many(vec![(event, fields)])
    }

    /// Appends several records with one write and one sync (group commit):
    /// for a batch whose answer must not leave before its records are on
    /// disk. A batch is never split between segments.
    ///
    /// Each record's fields are any JSON object (`serde_json::Value` or a
    /// typed struct, which skips building a JSON tree per record); they must
    /// not use the names `event`, `prev`, `seq` or `time`.
    pub fn append_many<E: AsRef<str>, T: Serialize>(&self, records: Vec<(E, T)>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        // Serialized before taking the lock: only the chaining is serial.
        let time = now_secs();
        let bodies = records
            .iter()
            .map(|(event, fields)| checked_body(event.as_ref(), fields, time))
            .collect::<Result<Vec<_>>>()?;
        let mut tail = self.state.lock();
        tail.lock
            .lock()
            .map_err(|e| Error::io(lock_path(&self.path), e))?;
        let done = self.append_locked(&mut tail, bodies);
        let _ = tail.lock.unlock();
        done
    }

    /// Catches up with other processes' records, then appends `bodies`;
    /// the caller holds the lock file.
    fn append_locked(&self, tail: &mut Tail, bodies: Vec<Vec<u8>>) -> Result<()> {
        self.catch_up(tail)?;
        let (mut seq, mut last) = (tail.seq, tail.last.clone());
        let count = bodies.len() as u64;
        let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 100).sum());
        let mut last_at = 0;
        for body in bodies {
            seq += 1;
            let mut line = body;
            finish_line(&mut line, seq, &last);
            last = sha256_hex(&line);
            line.push(b'\n');
            last_at = out.len() as u64;
            out.extend_from_slice(&line);
        }
        if tail.size > 0 && tail.size.saturating_add(out.len() as u64) > tail.max_segment_bytes {
            self.rotate(tail)?;
        }
        tail.file
            .write_all(&out)
            .and_then(|_| tail.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        tail.seq = seq;
        tail.last = last;
        tail.last_start = Some(tail.size + last_at);
        tail.size += out.len() as u64;
        tail.lines += count;
        Ok(())
    }

    /// Brings the tail up to date before an append. First the last line
    /// this process knows must still be what it wrote or checked (an edit
    /// in place keeps the file's size; reading that one line back finds
    /// it). Then the records other processes appended since are each
    /// checked to continue the chain (a broken one is refused, never
    /// extended). When another process turned the file into a segment, or
    /// the file was replaced, the whole log is read again, and must still
    /// hold this process's last record unchanged.
    fn catch_up(&self, tail: &mut Tail) -> Result<()> {
        let ours = tail.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        let on_disk = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let len = match on_disk {
            Some(m) if same_file(&m, &ours) => m.len(),
            _ => {
                // Our last line is still in the file this process holds
                // (now a segment, or gone): checked before the rest.
                if let Some(start) = tail.last_start {
                    self.check_last_line(tail, start)?;
                }
                return self.reread(tail);
            }
        };
        if len < tail.size {
            return Err(Error::Invalid(format!(
                "audit log {} shrank from {} to {} bytes since this process last wrote (truncated?); not extending it",
                self.path.display(),
                tail.size,
                len
            )));
        }
        match tail.last_start {
            Some(start) => self.check_last_line(tail, start)?,
            // The last line is in an older segment: read it all again.
            None if tail.seq > 0 => return self.reread(tail),
            None => {}
        }
        if len == tail.size {
            return Ok(());
        }
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(tail.size))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut walk = Walk::new(Vec::new());
        walk.prev.clone_from(&tail.last);
        walk.n = tail.seq;
        walk.file_lines = tail.lines;
        walk.last_start = tail.last_start;
        verify_lines(
            BufReader::new(file),
            &self.path.display().to_string(),
            tail.size,
            &mut walk,
        )?;
        tail.last = walk.prev;
        tail.seq = walk.n;
        tail.lines = walk.file_lines;
        tail.last_start = walk.last_start;
        tail.size = len;
        Ok(())
    }

    /// Reads back the line `[start, size)` of the current file: it must
    /// still hash to `tail.last`.
    fn check_last_line(&self, tail: &Tail, start: u64) -> Result<()> {
        let len = usize::try_from(tail.size - start).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; len.min(MAX_LINE + 1)];
        let read = match read_exact_at(&tail.file, &mut buf, start) {
            Ok(()) => true,
            // Cut short under it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let unchanged = read
            && buf.len() == len
            && buf.last() == Some(&b'\n')
            && sha256_hex(&buf[..len - 1]) == tail.last;
        if unchanged {
            return Ok(());
        }
        Err(changed(&self.held_file_name(tail), tail.lines))
    }

    /// The name of the file this process holds open: the log's, or that
    /// of the segment it became.
    fn held_file_name(&self, tail: &Tail) -> String {
        let Ok(ours) = tail.file.metadata() else {
            return self.path.display().to_string();
        };
        let is_ours = |p: &Path| std::fs::metadata(p).is_ok_and(|m| same_file(&m, &ours));
        if is_ours(&self.path) {
            return self.path.display().to_string();
        }
        let segs = segments(&self.path).unwrap_or_default();
        match segs.iter().rev().find(|(_, p)| is_ours(p)) {
            Some((_, p)) => p.display().to_string(),
            None => format!(
                "{} (the file this process last wrote, since moved away or removed)",
                self.path.display()
            ),
        }
    }

    /// Reads the whole log again (after another process made a segment, or
    /// the file was replaced): it must verify, and still hold the last
    /// record this process knows, unchanged.
    fn reread(&self, tail: &mut Tail) -> Result<()> {
        let ours = (tail.seq > 0).then(|| (tail.seq, tail.last.clone()));
        let mut walk = Walk::new(ours.iter().map(|(s, _)| *s).collect());
        walk_chain(&self.path, &mut walk)?;
        if let Some((seq, hash)) = ours {
            match &walk.watch[0].found {
                Some(found) if found.hash == hash => {}
                Some(found) => return Err(changed(&found.file, found.line)),
                None => {
                    return Err(Error::Invalid(format!(
                        "audit log {} no longer holds record {seq}, which this process wrote or \
                         checked (it has {} now: cut short, or started anew by \
                         `sigmux audit restart`, after which this process must be restarted); \
                         not extending it",
                        self.path.display(),
                        records(walk.n)
                    )));
                }
            }
        }
        tail.file = open_append(&self.path)?;
        tail.size = tail
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        tail.seq = walk.n;
        tail.last = walk.prev;
        tail.lines = walk.file_lines;
        tail.last_start = walk.last_start;
        tail.next_segment = segments(&self.path)?.last().map_or(1, |(n, _)| n + 1);
        Ok(())
    }

    /// Turns the current file into the next segment and starts a new one.
    fn rotate(&self, tail: &mut Tail) -> Result<()> {
        let seg = segment_path(&self.path, tail.next_segment);
        if seg.exists() {
            return Err(Error::Invalid(format!(
                "audit log segment {} already exists; not overwriting it",
                seg.display()
            )));
        }
        tail.file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        std::fs::rename(&self.path, &seg).map_err(|e| Error::io(&seg, e))?;
        let dir = parent_dir(&self.path);
        // A crash here leaves the segments and no current file: `open`
        // continues the chain from the last segment.
        sync_dir(&dir)?;
        tail.file = open_append(&self.path)?;
        sync_dir(&dir)?;
        tail.next_segment += 1;
        tail.size = 0;
        tail.lines = 0;
        tail.last_start = None;
        Ok(())
    }
}

/// The error for a line that no longer hashes to what was written there.
fn changed(file: &str, line: u64) -> Error {
    Error::Invalid(format!(
        "audit log {file} line {line} was changed after it was written; not extending it"
    ))
}

/// Reads the chain of the log at `path` (under the lock file) and opens
/// it for appending.
/// Where [`restart`] writes the new chain's first record before the old
/// files are moved away: `.<name>.restart` beside the log.
fn restart_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".restart");
    path.with_file_name(name)
}

/// Finishes a [`restart`] that stopped after moving the old files away and
/// before the new chain took the log's name (a crash): with no log and no
/// segment left, the waiting first record becomes the log, so the new
/// chain still opens with `audit_restarted` instead of starting bare. The
/// caller holds the lock file.
fn finish_interrupted_restart(path: &Path) -> Result<()> {
    let fresh = restart_path(path);
    if path.exists() || !fresh.exists() || !segments(path)?.is_empty() {
        return Ok(());
    }
    let mut walk = Walk::new(Vec::new());
    verify_file(&fresh, &mut walk)?;
    let text = std::fs::read_to_string(&fresh).map_err(|e| Error::io(&fresh, e))?;
    if walk.n != 1 || !text.contains("\"event\":\"audit_restarted\"") {
        return Err(Error::Invalid(format!(
            "{} is not the first record of a restarted audit log; move it away to go on",
            fresh.display()
        )));
    }
    std::fs::rename(&fresh, path).map_err(|e| Error::io(path, e))?;
    sync_dir(&parent_dir(path))?;
    tracing::warn!(log = %path.display(), "an interrupted `audit restart` was finished");
    Ok(())
}

fn open_tail(path: &Path, max_segment_bytes: u64) -> Result<Arc<Mutex<Tail>>> {
    let lock = open_lock(path)?;
    lock.lock().map_err(|e| Error::io(lock_path(path), e))?;
    let opened = (|| {
        finish_interrupted_restart(path)?;
        let segs = segments(path)?;
        let mut walk = Walk::new(Vec::new());
        if path.exists() || !segs.is_empty() {
            walk_chain(path, &mut walk)?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok((segs, walk, file, size))
    })();
    let _ = lock.unlock();
    let (segs, walk, file, size) = opened?;
    Ok(Arc::new(Mutex::new(Tail {
        file,
        lock,
        seq: walk.n,
        last: walk.prev,
        size,
        lines: walk.file_lines,
        last_start: walk.last_start,
        next_segment: segs.last().map_or(1, |(n, _)| n + 1),
        max_segment_bytes: max_segment_bytes.max(1),
    })))
}

/// [`record_body`], refused when its line would be over [`MAX_LINE`].
fn checked_body<T: Serialize>(event: &str, fields: &T, time: u64) -> Result<Vec<u8>> {
    let body = record_body(event, fields, time)?;
    if body.len() + CHAIN_FIELDS_LEN > MAX_LINE {
        return Err(Error::Invalid(format!(
            "audit record '{}' is {} bytes, over the log's line limit of {MAX_LINE}; \
             nothing of this batch was written",
            event.escape_debug(),
            body.len()
        )));
    }
    Ok(body)
}

/// A record's line up to its chain fields: `{<fields>,"event":..,"time":..,`
/// (`finish_line` adds `prev` and `seq`). The reserved keys come after the
/// fields, so a reader that keeps the last of duplicate keys sees them.
fn record_body<T: Serialize>(event: &str, fields: &T, time: u64) -> Result<Vec<u8>> {
    let bad = |e: serde_json::Error| Error::Invalid(format!("audit record: {e}"));
    let mut line = serde_json::to_vec(fields).map_err(bad)?;
    if line.first() == Some(&b'{') && line.last() == Some(&b'}') {
        line.pop();
        if line.len() > 1 {
            line.push(b',');
        }
    } else if line == b"null" {
        line.clear();
        line.push(b'{');
    } else {
        let mut wrapped = b"{\"value\":".to_vec();
        wrapped.extend_from_slice(&line);
        wrapped.push(b',');
        line = wrapped;
    }
    line.extend_from_slice(b"\"event\":");
    serde_json::to_writer(&mut line, event).map_err(bad)?;
    line.extend_from_slice(format!(",\"time\":{time},").as_bytes());
    Ok(line)
}

/// Completes a line from [`record_body`] with its place in the chain.
fn finish_line(line: &mut Vec<u8>, seq: u64, prev: &str) {
    line.extend_from_slice(format!("\"prev\":\"{prev}\",\"seq\":{seq}}}").as_bytes());
}

/// Checks every link of the chain across all segments (oldest first, then
/// the current file); the error names the first bad file and line, or the
/// missing segment. Appends by other processes wait until it is done (where
/// the lock file can be made: a copy on read-only media is read as it is).
///
/// An intact chain may still have lost its newest records, or have been
/// rewritten from some record on: [`verify_anchored`] checks it against
/// heads exported earlier.
pub fn verify(path: &Path) -> Result<Verified> {
    verify_anchored(path, &[])
}

/// [`verify`], and each anchor (a head exported earlier) must still be
/// part of the chain: the record with its number is there, with its hash.
/// A log cut short before an anchored record, or rewritten at or before
/// it, is refused with an error naming the anchor.
pub fn verify_anchored(path: &Path, anchors: &[Anchor]) -> Result<Verified> {
    let lock = open_lock(path).ok();
    if let Some(l) = &lock {
        l.lock_shared().map_err(|e| Error::io(lock_path(path), e))?;
    }
    let mut walk = Walk::new(anchors.iter().map(|a| a.seq).collect());
    let walked = walk_chain(path, &mut walk);
    if let Some(l) = &lock {
        let _ = l.unlock();
    }
    walked?;
    for (anchor, watched) in anchors.iter().zip(&walk.watch) {
        match &watched.found {
            Some(found) if found.hash == anchor.hash => {}
            Some(found) => {
                return Err(Error::Invalid(format!(
                    "audit log {} line {} (record {}) hashes to {}, not to {} as anchored: \
                     the log was rewritten after the anchor {anchor} was taken",
                    found.file, found.line, anchor.seq, found.hash, anchor.hash
                )));
            }
            None => {
                return Err(Error::Invalid(format!(
                    "audit log {} has {}, but the anchor {anchor} names record {}: \
                     records were removed from its end (or it was replaced) after the anchor was taken",
                    path.display(),
                    records(walk.n),
                    anchor.seq
                )));
            }
        }
    }
    Ok(walk.verified())
}

/// Where a watched record was found, and its hash.
struct Found {
    file: String,
    line: u64,
    hash: String,
}

/// A record whose hash a walk notes on the way.
struct Watched {
    seq: u64,
    found: Option<Found>,
}

/// How far a walk along the chain got; still there when it stopped at a
/// break.
struct Walk {
    /// SHA-256 of the last line that continued the chain.
    prev: String,
    /// Records that continued the chain.
    n: u64,
    /// Older segments.
    segments: u64,
    /// In the file read last: the lines that continued the chain, and
    /// where the last of them starts.
    file_lines: u64,
    last_start: Option<u64>,
    watch: Vec<Watched>,
}

impl Walk {
    fn new(watch: Vec<u64>) -> Walk {
        Walk {
            prev: GENESIS.to_string(),
            n: 0,
            segments: 0,
            file_lines: 0,
            last_start: None,
            watch: watch
                .into_iter()
                .map(|seq| Watched { seq, found: None })
                .collect(),
        }
    }

    fn verified(&self) -> Verified {
        Verified {
            records: self.n,
            head: self.prev.clone(),
            segments: self.segments,
        }
    }
}

/// Walks the chain of the log at `path`: segments, then the current file.
fn walk_chain(path: &Path, walk: &mut Walk) -> Result<()> {
    let segs = segments(path)?;
    walk.segments = segs.len() as u64;
    for (expected, (num, seg)) in (1..).zip(&segs) {
        if *num != expected {
            let missing = segment_path(path, expected);
            return Err(Error::Invalid(format!(
                "audit log segment {} is missing: {} line 1 does not continue the chain (records {}.. are gone)",
                missing.display(),
                seg.display(),
                walk.n + 1
            )));
        }
        verify_file(seg, walk)?;
    }
    walk.file_lines = 0;
    walk.last_start = None;
    if segs.is_empty() || path.exists() {
        verify_file(path, walk)?;
    }
    Ok(())
}

/// Checks one file of the chain as the continuation of `walk`.
fn verify_file(path: &Path, walk: &mut Walk) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    walk.file_lines = 0;
    walk.last_start = None;
    verify_lines(BufReader::new(file), &path.display().to_string(), 0, walk)
}

/// Checks the lines `reader` gives as the continuation of the chain walked
/// so far. `what` names the file in errors; `offset` is where in the file
/// the reader starts, after `walk.file_lines` lines.
fn verify_lines(mut reader: impl BufRead, what: &str, offset: u64, walk: &mut Walk) -> Result<()> {
    let mut pos = offset;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = Read::take(&mut reader, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::Invalid(format!("audit log {what}: cannot read: {e}")))?;
        if read == 0 {
            break;
        }
        let line_no = walk.file_lines + 1;
        let seq = walk.n + 1;
        let bad = |why: String| {
            Error::Invalid(format!(
                "audit log {what} line {line_no}: {why} (once investigated, `sigmux audit restart --reason ...` moves the log aside and starts a new chain)"
            ))
        };
        if buf.last() != Some(&b'\n') {
            return Err(bad(if buf.len() > MAX_LINE {
                "line too long".into()
            } else {
                "truncated record (no newline)".into()
            }));
        }
        let line = &buf[..buf.len() - 1];
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        if v["seq"].as_u64() != Some(seq) {
            return Err(bad(format!("sequence is {}, expected {seq}", v["seq"])));
        }
        if v["prev"].as_str() != Some(walk.prev.as_str()) {
            return Err(bad(
                "hash chain broken: prev does not match the line before (a record was removed, reordered or edited)"
                    .into(),
            ));
        }
        walk.prev = sha256_hex(line);
        walk.n = seq;
        walk.file_lines = line_no;
        walk.last_start = Some(pos);
        pos += read as u64;
        for w in walk.watch.iter_mut().filter(|w| w.seq == seq) {
            w.found = Some(Found {
                file: what.to_string(),
                line: line_no,
                hash: walk.prev.clone(),
            });
        }
    }
    Ok(())
}

/// SHA-256 and size of a whole file, read in pieces.
fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((hex::encode(ctx.finish()), bytes))
}

/// `audit.log.broken-20260101T120000Z` beside the log: a new directory
/// (`-2`, `-3`, … appended when one of that second exists).
fn make_quarantine(path: &Path, now: u64) -> Result<PathBuf> {
    let stamp: String = crate::ca::svid::rfc3339(i64::try_from(now).unwrap_or(i64::MAX))
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let mut base = path.file_name().unwrap_or_default().to_os_string();
    base.push(format!(".broken-{stamp}"));
    for k in 1u32.. {
        let mut name = base.clone();
        if k > 1 {
            name.push(format!("-{k}"));
        }
        let dir = path.with_file_name(name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && k < 1000 => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    unreachable!("the loop returns")
}

/// Starts a new chain after a break: under the lock file, moves every file
/// of the log at `path` (its segments, then the current file) into a new
/// directory `<name>.broken-<UTC time>/` beside it, names kept, and writes
/// a new current file whose first record, `audit_restarted`, holds
/// `reason`, that directory, the verify error, the records that verified
/// before the break and the SHA-256 of every file moved.
///
/// Refused when the chain verifies (there is nothing to restart) or there
/// is no log. A process that still holds the old log open refuses to
/// append to the new chain until it is restarted.
pub fn restart(path: &Path, reason: &str) -> Result<Restarted> {
    if reason.trim().is_empty() {
        return Err(Error::Invalid(
            "an audit log restart needs a reason (--reason)".into(),
        ));
    }
    let lock = open_lock(path)?;
    lock.lock().map_err(|e| Error::io(lock_path(path), e))?;
    let done = restart_locked(path, reason);
    let _ = lock.unlock();
    done
}

fn restart_locked(path: &Path, reason: &str) -> Result<Restarted> {
    let segs = segments(path)?;
    if segs.is_empty() && !path.exists() {
        return Err(Error::Invalid(format!(
            "there is no audit log at {}; nothing to restart",
            path.display()
        )));
    }
    let mut walk = Walk::new(Vec::new());
    let error = match walk_chain(path, &mut walk) {
        Ok(()) => {
            return Err(Error::Invalid(format!(
                "audit log {} verifies ({}, head {}); there is nothing to restart",
                path.display(),
                records(walk.n),
                walk.prev
            )));
        }
        Err(e) => e.to_string(),
    };
    let mut files: Vec<PathBuf> = segs.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    let mut moved = Vec::with_capacity(files.len());
    for f in &files {
        let (sha256, bytes) = hash_file(f)?;
        moved.push(MovedFile {
            name: f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            sha256,
            bytes,
        });
    }
    let now = now_secs();
    let dir = parent_dir(path);
    let quarantine = make_quarantine(path, now)?;
    let shown = std::fs::canonicalize(&quarantine).unwrap_or_else(|_| quarantine.clone());
    let fields = serde_json::json!({
        "reason": reason,
        "quarantine": shown.display().to_string(),
        "error": error,
        "records_verified": walk.n,
        "files": moved,
    });
    let mut line = match checked_body(RESTART_EVENT, &fields, now) {
        Ok(body) => body,
        Err(e) => {
            let _ = std::fs::remove_dir(&quarantine);
            return Err(e);
        }
    };
    finish_line(&mut line, 1, GENESIS);
    let head = sha256_hex(&line);
    line.push(b'\n');
    // The new chain is written beside the log first, then the old files
    // go, then it takes the log's name.
    let fresh = restart_path(path);
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&fresh).map_err(|e| Error::io(&fresh, e))?;
        f.write_all(&line)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&fresh, e))?;
    }
    for (f, m) in files.iter().zip(&moved) {
        let to = quarantine.join(&m.name);
        std::fs::rename(f, &to).map_err(|e| Error::io(&to, e))?;
    }
    sync_dir(&quarantine)?;
    sync_dir(&dir)?;
    std::fs::rename(&fresh, path).map_err(|e| Error::io(path, e))?;
    sync_dir(&dir)?;
    Ok(Restarted {
        quarantine: shown,
        moved,
        error,
        records_verified: walk.n,
        verified: Verified {
            records: 1,
            head,
            segments: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn appends_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open(&p).unwrap();
        log.append("key.generate", json!({"name": "a", "kind": "p256"}))
            .unwrap();
        log.append("svid.issue", json!({"serial": "01"})).unwrap();
        drop(log);
        let log = AuditLog::open(&p).unwrap();
        log.append("key.import", json!({"name": "b"})).unwrap();
        let v = verify(&p).unwrap();
        assert_eq!(v.records, 3);
        let last = lines(&p).pop().unwrap();
        assert_eq!(v.head, sha256_hex(last.as_bytes()));
        let rec: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(rec["seq"], 3);
        assert_eq!(rec["event"], "key.import");
    }

    #[test]
    fn a_record_too_long_to_verify_is_refused_and_the_log_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open(&p).unwrap();
        log.append("before", json!({"i": 1})).unwrap();
        // The longest record that fits is written and verifies.
        let fits = "x".repeat(MAX_LINE - CHAIN_FIELDS_LEN - 200);
        log.append("fits", json!({ "s": fits })).unwrap();
        let huge = "x".repeat(MAX_LINE);
        let e = log
            .append_many(vec![
                ("ok", json!({"i": 2})),
                ("huge", json!({ "s": huge })),
            ])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'huge'") && e.contains("line limit"), "{e}");
        log.append("after", json!({"i": 3})).unwrap();
        drop(log);
        // Nothing of the refused batch was written, and the log reopens.
        let v = verify(&p).unwrap();
        assert_eq!(v.records, 3);
        AuditLog::open(&p).unwrap();
    }

    #[test]
    fn tampering_is_found_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open(&p).unwrap();
        for i in 0..5 {
            log.append("e", json!({ "i": i })).unwrap();
        }
        drop(log);
        let good = lines(&p);
        let write = |ls: &[String]| std::fs::write(&p, ls.join("\n") + "\n").unwrap();

        let mut edited = good.clone();
        edited[2] = edited[2].replace("\"i\":2", "\"i\":7");
        write(&edited);
        let e = verify(&p).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("chain broken"), "{e}");

        let mut removed = good.clone();
        removed.remove(1);
        write(&removed);
        let e = verify(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("sequence"), "{e}");

        let mut swapped = good.clone();
        swapped.swap(3, 4);
        write(&swapped);
        assert!(verify(&p).unwrap_err().to_string().contains("line 4"));

        std::fs::write(&p, good.join("\n")).unwrap();
        let e = verify(&p).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("truncated"), "{e}");
        // A log with a broken chain is not extended.
        assert!(AuditLog::open(&p).is_err());
    }

    #[test]
    fn segments_rotate_by_size_and_chain_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open_with(&p, 400).unwrap();
        for i in 0..12 {
            log.append("e", json!({ "i": i, "pad": "x".repeat(40) }))
                .unwrap();
        }
        // A second handle in the same process shares the tail.
        let other = AuditLog::open(&p).unwrap();
        other.append("e", json!({ "i": 12 })).unwrap();
        log.append_many(vec![("e", json!({ "i": 13 })), ("e", json!({ "i": 14 }))])
            .unwrap();
        let segs = segments(&p).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        for (k, (n, path)) in segs.iter().enumerate() {
            assert_eq!(*n, k as u64 + 1);
            assert_eq!(*path, segment_path(&p, *n));
            assert!(std::fs::metadata(path).unwrap().len() <= 400);
        }
        assert!(
            segment_path(&p, 1)
                .to_string_lossy()
                .ends_with("audit.log.000001")
        );
        // The new file's first record continues the chain of the segment
        // before it.
        let last_seg = lines(&segs.last().unwrap().1).pop().unwrap();
        let first: Value = serde_json::from_str(&lines(&p)[0]).unwrap();
        assert_eq!(first["prev"], sha256_hex(last_seg.as_bytes()));
        let before: Value = serde_json::from_str(&last_seg).unwrap();
        assert_eq!(first["seq"].as_u64(), before["seq"].as_u64().map(|s| s + 1));

        let v = verify(&p).unwrap();
        assert_eq!(v.records, 15);
        assert_eq!(v.segments, segs.len() as u64);
        assert_eq!(v.head, sha256_hex(lines(&p).pop().unwrap().as_bytes()));
        drop((log, other));

        // Reopened: verified across segments, and numbering goes on.
        let log = AuditLog::open_with(&p, 400).unwrap();
        for i in 15..20 {
            log.append("e", json!({ "i": i, "pad": "y".repeat(40) }))
                .unwrap();
        }
        let v = verify(&p).unwrap();
        assert_eq!(v.records, 20);
        assert!(segments(&p).unwrap().len() > segs.len());
        drop(log);

        // A crash between the rename and the new file: the chain goes on.
        let seg_n = segments(&p).unwrap().len() as u64 + 1;
        std::fs::rename(&p, segment_path(&p, seg_n)).unwrap();
        assert_eq!(verify(&p).unwrap().records, 20);
        let log = AuditLog::open_with(&p, 400).unwrap();
        log.append("e", json!({ "i": 20 })).unwrap();
        assert_eq!(verify(&p).unwrap().records, 21);
    }

    #[test]
    fn tampered_old_segment_and_missing_segment_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open_with(&p, 400).unwrap();
        for i in 0..12 {
            log.append("e", json!({ "i": i, "pad": "z".repeat(10) }))
                .unwrap();
        }
        drop(log);
        let segs = segments(&p).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");

        // Edit the first line of segment 2: the chain breaks at its line 2.
        let seg2 = &segs[1].1;
        let good = std::fs::read_to_string(seg2).unwrap();
        let mut ls = lines(seg2);
        let edited = ls[0].replace("\"pad\":\"z", "\"pad\":\"Z");
        assert_ne!(edited, ls[0]);
        ls[0] = edited;
        std::fs::write(seg2, ls.join("\n") + "\n").unwrap();
        let e = verify(&p).unwrap_err().to_string();
        assert!(
            e.contains("audit.log.000002 line 2") && e.contains("chain broken"),
            "{e}"
        );
        assert!(AuditLog::open(&p).is_err());
        std::fs::write(seg2, good).unwrap();
        verify(&p).unwrap();

        // Delete a middle segment.
        std::fs::remove_file(seg2).unwrap();
        let e = verify(&p).unwrap_err().to_string();
        assert!(
            e.contains("audit.log.000002 is missing") && e.contains("audit.log.000003 line 1"),
            "{e}"
        );
        assert!(AuditLog::open(&p).is_err());

        // Renumbering the rest to hide the gap is still found.
        for (n, path) in &segs[2..] {
            std::fs::rename(path, segment_path(&p, n - 1)).unwrap();
        }
        let e = verify(&p).unwrap_err().to_string();
        assert!(e.contains("audit.log.000002 line 1"), "{e}");
    }

    #[test]
    fn two_processes_extend_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        // A server holding the log open, and a CLI command next to it.
        let serve = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        serve.append("svid_issue", json!({"serial": "01"})).unwrap();
        let cli = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        cli.append("ca_rotate_prepare", json!({})).unwrap();
        cli.append("ca_rotate_activate", json!({})).unwrap();
        serve
            .append_many(vec![
                ("svid_issue", json!({"serial": "02"})),
                ("svid_issue", json!({"serial": "03"})),
            ])
            .unwrap();
        cli.append("key.destroy", json!({})).unwrap();
        let v = verify(&p).unwrap();
        assert_eq!(v.records, 6);
        let seqs: Vec<u64> = lines(&p)
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

        // A line another writer left that does not continue the chain is
        // refused, not extended.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"event\":\"forged\",\"prev\":\"00\",\"seq\":7}\n")
            .unwrap();
        let e = serve
            .append("svid_issue", json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 7") && e.contains("chain broken"), "{e}");
        // Nor is a log cut short under a writer.
        let len = std::fs::metadata(&p).unwrap().len();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len / 2).unwrap();
        let e = cli.append("x", json!({})).unwrap_err().to_string();
        assert!(e.contains("shrank"), "{e}");
    }

    #[test]
    fn a_segment_made_by_another_process_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let pad = "x".repeat(300);
        let serve = AuditLog::open_unshared(&p, 1000).unwrap();
        let cli = AuditLog::open_unshared(&p, 1000).unwrap();
        for i in 0..4 {
            serve.append("a", json!({"pad": pad, "i": i})).unwrap();
            // The CLI's appends roll the file over into segments too.
            cli.append("b", json!({"pad": pad, "i": i})).unwrap();
        }
        let v = verify(&p).unwrap();
        assert_eq!(v.records, 8);
        assert!(v.segments >= 2, "{v:?}");
    }

    /// Edits `path` in place (same length): the first `from` on line
    /// `line` (from 1) becomes `to`.
    fn edit_in_place(path: &Path, line: usize, from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let mut ls = lines(path);
        let edited = ls[line - 1].replacen(from, to, 1);
        assert_ne!(edited, ls[line - 1]);
        ls[line - 1] = edited;
        let before = std::fs::metadata(path).unwrap().len();
        // Written through the same inode, as an editor saving in place.
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all((ls.join("\n") + "\n").as_bytes()).unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), before);
    }

    #[test]
    fn an_own_last_line_edited_in_place_is_not_extended() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let serve = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        serve.append("svid_issue", json!({"serial": "01"})).unwrap();
        serve.append("svid_issue", json!({"serial": "02"})).unwrap();
        edit_in_place(&p, 2, "\"serial\":\"02\"", "\"serial\":\"99\"");
        let tampered = std::fs::read(&p).unwrap();
        let e = serve
            .append("svid_issue", json!({"serial": "03"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("audit.log line 2 was changed after it was written")
                && e.contains("not extending it"),
            "{e}"
        );
        // Nothing was written, and it stays refused.
        assert_eq!(std::fs::read(&p).unwrap(), tampered);
        assert!(serve.append("x", json!({})).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), tampered);
        // An edit of a batch's last line is found too; earlier lines of
        // the batch are chained by the last one.
        let p2 = dir.path().join("batch.log");
        let log = AuditLog::open_unshared(&p2, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        log.append_many(vec![("a", json!({"i": 1})), ("b", json!({"i": 2}))])
            .unwrap();
        edit_in_place(&p2, 2, "\"i\":2", "\"i\":3");
        let e = log.append("c", json!({})).unwrap_err().to_string();
        assert!(e.contains("batch.log line 2 was changed"), "{e}");
    }

    #[test]
    fn an_own_edited_line_is_found_before_what_others_appended_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let serve = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        let cli = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        cli.append("key.generate", json!({"name": "k"})).unwrap();
        serve.append("svid_issue", json!({"serial": "01"})).unwrap();
        serve.append("svid_issue", json!({"serial": "02"})).unwrap();
        // A process that read the log (to line 3) before the edit.
        let reader = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        edit_in_place(&p, 3, "\"serial\":\"02\"", "\"serial\":\"99\"");
        // A process started after the edit cannot tell (the last line is
        // protected by nothing yet) and chains after it: only an exported
        // anchor shows this.
        let cli_after = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        cli_after
            .append("ca_revoke_svid", json!({"serial": "aa"}))
            .unwrap();
        assert_eq!(verify(&p).unwrap().records, 4);
        let tampered = std::fs::read(&p).unwrap();
        // The writer of the edited line refuses, naming its line, before
        // looking at the record chained after it.
        let e = serve
            .append("svid_issue", json!({"serial": "03"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("audit.log line 3 was changed after it was written"),
            "{e}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), tampered);
        // So does the process that had read it before the edit.
        let e = reader.append("x", json!({})).unwrap_err().to_string();
        assert!(e.contains("audit.log line 3 was changed"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), tampered);
        // One whose last line is before it cannot tell, as one started
        // after the edit: the log verifies; an anchor exported by then
        // (3:<hash of the original line 3>) is what shows the edit.
        cli.append("y", json!({})).unwrap();
        assert_eq!(verify(&p).unwrap().records, 5);
    }

    #[test]
    fn an_own_last_line_edited_after_another_process_made_it_a_segment_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let pad = "x".repeat(300);
        let serve = AuditLog::open_unshared(&p, 1000).unwrap();
        let cli = AuditLog::open_unshared(&p, 1000).unwrap();
        serve.append("a", json!({"pad": pad, "i": 1})).unwrap();
        serve.append("a", json!({"pad": pad, "i": 2})).unwrap();
        // The CLI's append turns the file into segment 1.
        cli.append("b", json!({"pad": pad, "i": 3})).unwrap();
        let seg = segment_path(&p, 1);
        assert_eq!(lines(&seg).len(), 2);
        edit_in_place(&seg, 2, "\"i\":2", "\"i\":7");
        let e = serve.append("a", json!({"i": 4})).unwrap_err().to_string();
        assert!(
            e.contains("audit.log.000001 line 2 was changed after it was written"),
            "{e}"
        );
        // The current file was replaced by a fresh chain: the record this
        // process wrote is gone.
        std::fs::remove_file(&seg).unwrap();
        std::fs::remove_file(&p).unwrap();
        let fresh = AuditLog::open_unshared(&p, 1000).unwrap();
        fresh.append("c", json!({})).unwrap();
        let e = cli.append("b", json!({})).unwrap_err().to_string();
        assert!(
            e.contains("no longer holds record 3") && e.contains("has 1 record now"),
            "{e}"
        );
    }

    #[test]
    fn anchors_detect_truncation_and_rewriting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open(&p).unwrap();
        for i in 0..5 {
            log.append("e", json!({ "i": i })).unwrap();
        }
        drop(log);
        let v = verify(&p).unwrap();
        let head: Anchor = v.anchor().unwrap();
        assert_eq!(head.to_string(), format!("5:{}", v.head));
        let third: Anchor = format!("3:{}", sha256_hex(lines(&p)[2].as_bytes()).to_uppercase())
            .parse()
            .unwrap();
        assert_eq!(
            verify_anchored(&p, &[head.clone(), third.clone()]).unwrap(),
            v
        );

        // Later records do not disturb an earlier anchor.
        let log = AuditLog::open(&p).unwrap();
        log.append("e", json!({ "i": 5 })).unwrap();
        drop(log);
        verify_anchored(&p, &[head.clone(), third.clone()]).unwrap();
        let good = lines(&p);
        let write = |ls: &[String]| std::fs::write(&p, ls.join("\n") + "\n").unwrap();

        // Cut short: the rest still verifies, the anchor does not hold.
        write(&good[..4]);
        assert_eq!(verify(&p).unwrap().records, 4);
        let e = verify_anchored(&p, &[third.clone(), head.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has 4 records")
                && e.contains(&format!("anchor {head}"))
                && e.contains("removed"),
            "{e}"
        );

        // Rewritten from record 5 on, chained anew: verifies, but record 5
        // is not the one anchored.
        let mut rewritten = good[..4].to_vec();
        rewritten.push(good[4].replace("\"i\":4", "\"i\":9"));
        let prev = sha256_hex(rewritten[4].as_bytes());
        let mut last: Value = serde_json::from_str(&good[5]).unwrap();
        last["prev"] = Value::String(prev);
        rewritten.push(serde_json::to_string(&last).unwrap());
        write(&rewritten);
        assert_eq!(verify(&p).unwrap().records, 6);
        verify_anchored(&p, std::slice::from_ref(&third)).unwrap();
        let e = verify_anchored(&p, &[third, head]).unwrap_err().to_string();
        assert!(
            e.contains("audit.log line 5 (record 5)") && e.contains("rewritten"),
            "{e}"
        );

        for bad in [
            "",
            "5",
            "0:00",
            "x:ab",
            &format!("0:{}", "a".repeat(64)),
            "1:abc",
        ] {
            assert!(bad.parse::<Anchor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_restart_interrupted_before_its_last_rename_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        for i in 0..3 {
            log.append("e", json!({ "i": i })).unwrap();
        }
        drop(log);
        edit_in_place(&p, 2, "\"i\":1", "\"i\":7");
        restart(&p, "edited").unwrap();
        // As if the crash came after the old files were moved and before
        // the new first record took the log's name.
        std::fs::rename(&p, restart_path(&p)).unwrap();
        let log = AuditLog::open_unshared(&p, DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        log.append("after", json!({})).unwrap();
        drop(log);
        assert_eq!(verify(&p).unwrap().records, 2);
        let first = lines(&p).remove(0);
        assert!(first.contains("\"event\":\"audit_restarted\""), "{first}");
        assert!(!restart_path(&p).exists());
    }

    #[test]
    fn restart_moves_a_broken_log_aside_and_starts_a_new_chain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let e = restart(&p, "x").unwrap_err().to_string();
        assert!(e.contains("no audit log"), "{e}");
        let log = AuditLog::open_unshared(&p, 400).unwrap();
        for i in 0..12 {
            log.append("e", json!({ "i": i, "pad": "z".repeat(10) }))
                .unwrap();
        }
        let e = restart(&p, "x").unwrap_err().to_string();
        assert!(e.contains("nothing to restart"), "{e}");
        assert!(restart(&p, " ").is_err());

        let segs = segments(&p).unwrap();
        assert!(segs.len() >= 2, "{segs:?}");
        let mut originals: Vec<(String, Vec<u8>)> = segs
            .iter()
            .map(|(_, s)| s.clone())
            .chain([p.clone()])
            .map(|f| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&f).unwrap())
            })
            .collect();
        // Break segment 2 at its first line.
        let seg2 = &segs[1].1;
        let before_break = lines(&segs[0].1).len() as u64;
        edit_in_place(seg2, 1, "\"pad\":\"z", "\"pad\":\"Z");
        originals[1].1 = std::fs::read(seg2).unwrap();
        let broken = verify(&p).unwrap_err().to_string();

        let r = restart(&p, "segment 2 edited").unwrap();
        assert_eq!(r.error, broken);
        // The edited line itself still links to the one before it: the
        // chain breaks at the line after it.
        assert!(broken.contains("audit.log.000002 line 2"), "{broken}");
        assert_eq!(r.records_verified, before_break + 1);
        assert!(
            r.quarantine
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.log.broken-"),
            "{r:?}"
        );
        assert_eq!(r.moved.len(), originals.len());
        for ((name, content), moved) in originals.iter().zip(&r.moved) {
            assert_eq!(&moved.name, name);
            assert_eq!(moved.sha256, sha256_hex(content));
            assert_eq!(moved.bytes, content.len() as u64);
            assert_eq!(&std::fs::read(r.quarantine.join(name)).unwrap(), content);
        }
        assert!(segments(&p).unwrap().is_empty());
        let v = verify(&p).unwrap();
        assert_eq!(v, r.verified);
        let first: Value = serde_json::from_str(&lines(&p)[0]).unwrap();
        assert_eq!(first["event"], RESTART_EVENT);
        assert_eq!(first["reason"], "segment 2 edited");
        assert_eq!(first["error"], broken.as_str());
        assert_eq!(first["records_verified"], before_break + 1);
        assert_eq!(first["files"][1]["sha256"], r.moved[1].sha256.as_str());

        // The process that held the old log refuses to go on in the new
        // one; a new one continues it.
        let e = log.append("e", json!({})).unwrap_err().to_string();
        assert!(e.contains("audit restart"), "{e}");
        AuditLog::open_unshared(&p, 400)
            .unwrap()
            .append("e", json!({}))
            .unwrap();
        assert_eq!(verify(&p).unwrap().records, 2);
        // A second restart of the same second gets a directory of its own.
        std::fs::write(&p, "broken\n").unwrap();
        let again = restart(&p, "again").unwrap();
        assert_ne!(again.quarantine, r.quarantine);
    }
}
