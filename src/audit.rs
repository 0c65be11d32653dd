//! The audit log: append-only JSON lines, each carrying the SHA-256 of the
//! line before it, so that removing, reordering or editing any record breaks
//! the chain at that point (`sigmux audit verify`). Records never hold key
//! material.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// The `prev` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest line `verify` reads; a longer one is reported, not loaded.
const MAX_LINE: usize = 1 << 20;

/// An open audit log, appended to by many threads.
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<Tail>,
}

struct Tail {
    file: File,
    seq: u64,
    last: String,
}

/// What `verify` found in a log whose chain is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records in the file.
    pub records: u64,
    /// SHA-256 (hex) of the last line: publish it to detect truncation.
    pub head: String,
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

impl AuditLog {
    /// Opens (or creates) the log at `path`, checking the whole chain first
    /// so that new records never extend a broken one.
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let (seq, last) = if path.exists() {
            let v = verify(path)?;
            (v.records, v.head)
        } else {
            (0, GENESIS.to_string())
        };
        let mut opts = OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path).map_err(|e| Error::io(path, e))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            state: Mutex::new(Tail { file, seq, last }),
        })
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (`fields` must be a JSON object; `seq`, `time`,
    /// `event` and `prev` are added) and syncs it to disk before returning.
    pub fn append(&self, event: &str, fields: Value) -> Result<()> {
        self.append_many(vec![(event.to_string(), fields)])
    }

    /// Appends several records with one write and one sync (group commit):
    /// for a batch whose answer must not leave before its records are on
    /// disk.
    pub fn append_many(&self, records: Vec<(String, Value)>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tail = self.state.lock();
        let (mut seq, mut last) = (tail.seq, tail.last.clone());
        let mut out = Vec::new();
        for (event, fields) in records {
            seq += 1;
            let mut line = record_line(seq, &event, fields, &last)?;
            last = sha256_hex(&line);
            line.push(b'\n');
            out.extend_from_slice(&line);
        }
        tail.file
            .write_all(&out)
            .and_then(|_| tail.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        tail.seq = seq;
        tail.last = last;
        Ok(())
    }
}

/// One record's JSON line (without the newline).
fn record_line(seq: u64, event: &str, fields: Value, prev: &str) -> Result<Vec<u8>> {
    let mut record = match fields {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    for (k, v) in [
        ("seq", json!(seq)),
        ("time", json!(now_secs())),
        ("event", json!(event)),
        ("prev", json!(prev)),
    ] {
        record.insert(k.into(), v);
    }
    serde_json::to_vec(&Value::Object(record))
        .map_err(|e| Error::Invalid(format!("audit record: {e}")))
}

/// Checks every link of the chain; the error names the first bad line.
pub fn verify(path: &Path) -> Result<Verified> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS.to_string();
    let mut n: u64 = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = std::io::Read::take(&mut reader, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let bad =
            |why: String| Error::Invalid(format!("audit log {} line {n}: {why}", path.display()));
        if buf.last() != Some(&b'\n') {
            return Err(bad(if buf.len() > MAX_LINE {
                "line too long".into()
            } else {
                "truncated record (no newline)".into()
            }));
        }
        let line = &buf[..buf.len() - 1];
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        if v["seq"].as_u64() != Some(n) {
            return Err(bad(format!("sequence is {}, expected {n}", v["seq"])));
        }
        if v["prev"].as_str() != Some(prev.as_str()) {
            return Err(bad(
                "hash chain broken: prev does not match the line before (a record was removed, reordered or edited)"
                    .into(),
            ));
        }
        prev = sha256_hex(line);
    }
    Ok(Verified {
        records: n,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
