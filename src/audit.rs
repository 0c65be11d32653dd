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
//! checks the records other processes appended since its own last one,
//! chain link by chain link, and continues the chain after them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
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

/// An open audit log, appended to by many threads.
pub struct AuditLog {
    path: PathBuf,
    state: Arc<Mutex<Tail>>,
}

struct Tail {
    file: File,
    /// The cross-process lock file, held (exclusively) for each append.
    lock: File,
    seq: u64,
    last: String,
    /// Bytes in the current file.
    size: u64,
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

fn sha256_hex(line: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, line))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The file name of segment `n` of the log at `path`.
pub fn segment_path(path: &Path, n: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n:0SEGMENT_DIGITS$}"));
    path.with_file_name(name)
}

/// The older segments of the log at `path`, by number, oldest first.
pub fn segments(path: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
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

fn open_append(path: &Path) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| Error::io(path, e))
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
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
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
            .map(|(event, fields)| {
                let body = record_body(event.as_ref(), fields, time)?;
                if body.len() + CHAIN_FIELDS_LEN > MAX_LINE {
                    return Err(Error::Invalid(format!(
                        "audit record '{}' is {} bytes, over the log's line limit of {MAX_LINE}; \
                         nothing of this batch was written",
                        event.as_ref().escape_debug(),
                        body.len()
                    )));
                }
                Ok(body)
            })
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
        let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 100).sum());
        for body in bodies {
            seq += 1;
            let mut line = body;
            finish_line(&mut line, seq, &last);
            last = sha256_hex(&line);
            line.push(b'\n');
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
        tail.size += out.len() as u64;
        Ok(())
    }

    /// Brings the tail up to date with records other processes appended
    /// since this one last wrote: each is checked to continue the chain
    /// (a broken one is refused, never extended). When another process
    /// turned the file into a segment, the whole log is read again.
    fn catch_up(&self, tail: &mut Tail) -> Result<()> {
        let ours = tail.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        let on_disk = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        match on_disk {
            Some(m) if same_file(&m, &ours) => {
                if m.len() == tail.size {
                    return Ok(());
                }
                if m.len() < tail.size {
                    return Err(Error::Invalid(format!(
                        "audit log {} shrank from {} to {} bytes since this process last wrote (truncated?); not extending it",
                        self.path.display(),
                        tail.size,
                        m.len()
                    )));
                }
                let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(tail.size))
                    .map_err(|e| Error::io(&self.path, e))?;
                let mut last = tail.last.clone();
                let mut n = tail.seq;
                verify_lines(
                    BufReader::new(file),
                    &format!("{} (after byte {})", self.path.display(), tail.size),
                    &mut last,
                    &mut n,
                )?;
                tail.last = last;
                tail.seq = n;
                tail.size = m.len();
            }
            _ => {
                let v = verify_unlocked(&self.path)?;
                tail.file = open_append(&self.path)?;
                tail.size = tail
                    .file
                    .metadata()
                    .map_err(|e| Error::io(&self.path, e))?
                    .len();
                tail.seq = v.records;
                tail.last = v.head;
                tail.next_segment = segments(&self.path)?.last().map_or(1, |(n, _)| n + 1);
            }
        }
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
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // A crash here leaves the segments and no current file: `open`
        // continues the chain from the last segment.
        sync_dir(&dir)?;
        tail.file = open_append(&self.path)?;
        sync_dir(&dir)?;
        tail.next_segment += 1;
        tail.size = 0;
        Ok(())
    }
}

/// Reads the chain of the log at `path` (under the lock file) and opens
/// it for appending.
fn open_tail(path: &Path, max_segment_bytes: u64) -> Result<Arc<Mutex<Tail>>> {
    let lock = open_lock(path)?;
    lock.lock().map_err(|e| Error::io(lock_path(path), e))?;
    let opened = (|| {
        let segs = segments(path)?;
        let (seq, last) = if path.exists() || !segs.is_empty() {
            let v = verify_unlocked(path)?;
            (v.records, v.head)
        } else {
            (0, GENESIS.to_string())
        };
        let file = open_append(path)?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok((segs, seq, last, file, size))
    })();
    let _ = lock.unlock();
    let (segs, seq, last, file, size) = opened?;
    Ok(Arc::new(Mutex::new(Tail {
        file,
        lock,
        seq,
        last,
        size,
        next_segment: segs.last().map_or(1, |(n, _)| n + 1),
        max_segment_bytes: max_segment_bytes.max(1),
    })))
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
pub fn verify(path: &Path) -> Result<Verified> {
    let lock = open_lock(path).ok();
    if let Some(l) = &lock {
        l.lock_shared().map_err(|e| Error::io(lock_path(path), e))?;
    }
    let v = verify_unlocked(path);
    if let Some(l) = &lock {
        let _ = l.unlock();
    }
    v
}

fn verify_unlocked(path: &Path) -> Result<Verified> {
    let segs = segments(path)?;
    let mut prev = GENESIS.to_string();
    let mut n: u64 = 0;
    for (expected, (num, seg)) in (1..).zip(&segs) {
        if *num != expected {
            let missing = segment_path(path, expected);
            return Err(Error::Invalid(format!(
                "audit log segment {} is missing: {} line 1 does not continue the chain (records {}.. are gone)",
                missing.display(),
                seg.display(),
                n + 1
            )));
        }
        verify_file(seg, &mut prev, &mut n)?;
    }
    if segs.is_empty() || path.exists() {
        verify_file(path, &mut prev, &mut n)?;
    }
    Ok(Verified {
        records: n,
        head: prev,
        segments: segs.len() as u64,
    })
}

/// Checks one file of the chain: `prev` is the hash before its first line
/// and `n` the records before it; both are advanced.
fn verify_file(path: &Path, prev: &mut String, n: &mut u64) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    verify_lines(BufReader::new(file), &path.display().to_string(), prev, n)
}

/// Checks the lines `reader` gives as the continuation of a chain whose
/// last hash is `prev` after `n` records; both are advanced. `what` names
/// the file (and where reading started) in errors.
fn verify_lines(
    mut reader: impl BufRead,
    what: &str,
    prev: &mut String,
    n: &mut u64,
) -> Result<()> {
    let mut line_no: u64 = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = std::io::Read::take(&mut reader, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::Invalid(format!("audit log {what}: cannot read: {e}")))?;
        if read == 0 {
            break;
        }
        line_no += 1;
        *n += 1;
        let seq = *n;
        let bad = |why: String| Error::Invalid(format!("audit log {what} line {line_no}: {why}"));
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
        if v["prev"].as_str() != Some(prev.as_str()) {
            return Err(bad(
                "hash chain broken: prev does not match the line before (a record was removed, reordered or edited)"
                    .into(),
            ));
        }
        *prev = sha256_hex(line);
    }
    Ok(())
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
        assert!(
            e.contains("after byte") && e.contains("chain broken"),
            "{e}"
        );
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
}
