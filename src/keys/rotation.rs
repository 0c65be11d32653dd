//! Key-encryption-key rotation: every stored private key re-encrypted
//! under a new KEK, safe against a crash at any point and against other
//! sigmux processes writing keys meanwhile.
//!
//! The keys directory records which KEK its keys are under in
//! `kek-state.json` (the KEK's public id only). A rotation stages a new KEK
//! file (`<kek_file>.next`), re-encrypts every key in memory (so a key the
//! current KEK cannot open stops it before anything changes), writes
//! `rotating_to` in the record, replaces the key files one by one (each
//! atomically, tagged with the id of its KEK), installs the new KEK where
//! the config finds it, and only then finishes the record. A crash leaves
//! `rotating_to` set: every command that needs the KEK then says to run
//! `sigmux keys rotate-kek` again, which carries on where the last run
//! stopped.

use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::{Kek, KekSource, key_files, read_key_file, write_atomic};
use crate::error::{Error, Result};

const STATE_FILE: &str = "kek-state.json";
const LOCK_FILE: &str = ".lock";

/// Which KEK the keys directory's keys are sealed under, and where an
/// unfinished rotation is taking them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekState {
    /// Id of the KEK every sealed key is under (absent in a directory no
    /// key has been sealed in since this record was introduced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_id: Option<String>,
    /// Id of the KEK an unfinished rotation is moving the keys to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_to: Option<String>,
}

impl KekState {
    /// Reads the record of `keys_dir`; an absent file is an empty record.
    pub fn load(keys_dir: &Path) -> Result<KekState> {
        let path = keys_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Kek(format!("{} is corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KekState::default()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn save(&self, keys_dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Kek(format!("cannot encode {STATE_FILE}: {e}")))?;
        write_atomic(keys_dir, STATE_FILE, &text)
    }

    /// Checks that `kek` may open the keys of `keys_dir`: no rotation is
    /// unfinished and the recorded KEK, if any, is this one.
    pub fn check(&self, keys_dir: &Path, kek: &Kek) -> Result<()> {
        if let Some(to) = &self.rotating_to {
            return Err(interrupted(keys_dir, to));
        }
        match &self.kek_id {
            Some(id) if id != kek.id() => Err(Error::Kek(format!(
                "the configured one (id {}) is not the one the keys in {} are encrypted under (id {id}); after `sigmux keys rotate-kek` every sigmux process needs the new key",
                kek.id(),
                keys_dir.display()
            ))),
            _ => Ok(()),
        }
    }
}

/// The error for using the KEK while a rotation is unfinished.
pub(super) fn interrupted(keys_dir: &Path, to: &str) -> Error {
    Error::Kek(format!(
        "a rotation (to id {to}) of the keys in {} did not finish; run `sigmux keys rotate-kek` again to finish it",
        keys_dir.display()
    ))
}

/// A lock on a keys directory: shared while one key is sealed and
/// written, exclusive for a whole rotation, so no key is sealed under a KEK
/// that is on its way out.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    fn open(keys_dir: &Path) -> Result<File> {
        super::create_private_dir(keys_dir).map_err(|e| Error::io(keys_dir, e))?;
        let path = keys_dir.join(LOCK_FILE);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))
    }

    /// Waits for a shared lock (sealing one key).
    pub fn shared(keys_dir: &Path) -> Result<DirLock> {
        let file = DirLock::open(keys_dir)?;
        file.lock_shared()
            .map_err(|e| Error::io(keys_dir.join(LOCK_FILE), e))?;
        Ok(DirLock { _file: file })
    }

    /// Waits for the exclusive lock (a rotation).
    pub fn exclusive(keys_dir: &Path) -> Result<DirLock> {
        let file = DirLock::open(keys_dir)?;
        file.lock()
            .map_err(|e| Error::io(keys_dir.join(LOCK_FILE), e))?;
        Ok(DirLock { _file: file })
    }
}

/// What one [`reseal_all`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Keys re-encrypted by this run.
    pub resealed: Vec<String>,
    /// Keys already under the new KEK (an interrupted run got to them).
    pub already: Vec<String>,
    /// Keys in PKCS#11 tokens: their files hold no private material.
    pub in_tokens: Vec<String>,
}

/// Starts (or resumes) a rotation of `keys_dir` from `old` to `new`:
/// re-encrypts every sealed key that is not yet under `new` in memory
/// (any key that `old` cannot open stops it here, before anything is
/// written), records the rotation, then replaces the files one by one.
/// The caller holds the [`DirLock::exclusive`] lock, installs `new` where
/// the configuration finds it and then calls [`finish`].
///
/// # Errors
///
/// When `new` is `old`, when an unfinished rotation is to another KEK,
/// when the directory's keys are under neither, or when a key file cannot
/// be read, decrypted or written (running it again carries on).
pub fn reseal_all(keys_dir: &Path, old: &Kek, new: &Kek, _lock: &DirLock) -> Result<Resealed> {
    if old.id() == new.id() {
        return Err(Error::Kek(format!(
            "the new key is the one in use (id {})",
            old.id()
        )));
    }
    let mut state = KekState::load(keys_dir)?;
    if let Some(to) = state.rotating_to.as_deref().filter(|to| *to != new.id()) {
        return Err(Error::Kek(format!(
            "an unfinished rotation to id {to} must be finished first: run `sigmux keys rotate-kek` again with that key"
        )));
    }
    if let Some(id) = state.kek_id.as_deref().filter(|id| *id != old.id()) {
        return Err(Error::Kek(format!(
            "the keys in {} are under id {id}, not under the configured one ({})",
            keys_dir.display(),
            old.id()
        )));
    }

    let mut out = Resealed::default();
    let mut writes = Vec::new();
    for path in key_files(keys_dir)? {
        let mut file = read_key_file(&path)?;
        let name = file.info.name.clone();
        let Some(sealed) = &file.sealed else {
            out.in_tokens.push(name);
            continue;
        };
        if file.kek_id.as_deref() == Some(new.id()) {
            out.already.push(name);
            continue;
        }
        let sealed = B64
            .decode(sealed)
            .map_err(|_| Error::key_file(&path, "encrypted key is not valid base64"))?;
        let der = old.open(&name, &sealed).map_err(|e| {
            Error::key_file(
                &path,
                format!("{e} (expected key-encryption key {})", old.id()),
            )
        })?;
        file.sealed = Some(B64.encode(new.seal(&name, &der)?));
        file.kek_id = Some(new.id().to_owned());
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Invalid(format!("cannot encode key file: {e}")))?;
        writes.push((name, text));
    }

    state.kek_id = Some(old.id().to_owned());
    state.rotating_to = Some(new.id().to_owned());
    state.save(keys_dir)?;
    for (name, text) in writes {
        write_atomic(keys_dir, &format!("{name}.key"), &text)?;
        out.resealed.push(name);
    }
    Ok(out)
}

/// Finishes a rotation to `new` once the new KEK is installed: checks that
/// every sealed key is under it, then records it as the directory's KEK.
pub fn finish(keys_dir: &Path, new: &Kek, _lock: &DirLock) -> Result<()> {
    for path in key_files(keys_dir)? {
        let file = read_key_file(&path)?;
        if file.sealed.is_some() && file.kek_id.as_deref() != Some(new.id()) {
            return Err(Error::key_file(
                &path,
                format!(
                    "is not yet under key-encryption key {}, so the rotation cannot finish: run `sigmux keys rotate-kek` with the previous key configured and this one given",
                    new.id()
                ),
            ));
        }
    }
    KekState {
        kek_id: Some(new.id().to_owned()),
        rotating_to: None,
    }
    .save(keys_dir)
}

/// Records `kek` as the directory's KEK when nothing is recorded yet (the
/// first key sealed, or a directory from before the record existed).
pub(super) fn record_if_absent(keys_dir: &Path, state: &KekState, kek: &Kek) -> Result<()> {
    if state.kek_id.is_none() && state.rotating_to.is_none() {
        KekState {
            kek_id: Some(kek.id().to_owned()),
            rotating_to: None,
        }
        .save(keys_dir)?;
    }
    Ok(())
}

/// What [`rotate`] did.
#[derive(Debug)]
pub struct Rotated {
    /// Id of the retired KEK (unknown only when a run that had already
    /// installed the new KEK is finished by another).
    pub from: Option<String>,
    /// Id of the KEK now in use.
    pub to: String,
    /// The keys, by what happened to them.
    pub keys: Resealed,
    /// The KEK file now holding the new KEK, when the KEK comes from a file.
    pub kek_file: Option<PathBuf>,
}

/// Where a KEK file's successor is written before any key is sealed under
/// it, so that a crash never leaves keys under a KEK kept nowhere.
fn staged_path(kek_file: &Path) -> PathBuf {
    let mut name = kek_file.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// Rotates the KEK of `keys_dir` (`sigmux keys rotate-kek`): from the
/// configured one to `new` or, where the configured KEK is a file and no
/// `new` is given, to a fresh random one; with a KEK file, the file ends up
/// holding the new key. Safe to run again after a crash at any point: it
/// finishes the rotation that was under way.
///
/// # Errors
///
/// What [`reseal_all`] and [`finish`] report; also a KEK from an
/// environment variable and no `new`, or a `new` that differs from the one
/// an unfinished rotation was moving to.
pub fn rotate(keys_dir: &Path, configured: &KekSource, new: Option<&KekSource>) -> Result<Rotated> {
    let lock = DirLock::exclusive(keys_dir)?;
    let state = KekState::load(keys_dir)?;
    let (current, _) = Kek::load(configured, false)?;
    let given = new
        .map(|s| Kek::load(s, false).map(|(k, _)| k))
        .transpose()?;
    let kek_file = match configured {
        KekSource::File(p) => Some(p.clone()),
        KekSource::Env(_) => None,
    };
    let staged = kek_file.as_deref().map(staged_path);

    if let Some(to) = state.rotating_to.as_deref() {
        if given.as_ref().is_some_and(|g| g.id() != to) {
            return Err(Error::Kek(format!(
                "an unfinished rotation to id {to} must be finished first: give that key, or none"
            )));
        }
        // The new KEK was installed before the run stopped: only the
        // record is left to write.
        if current.id() == to {
            finish(keys_dir, &current, &lock)?;
            if let Some(p) = &staged {
                remove_if_present(p)?;
            }
            return Ok(Rotated {
                from: state.kek_id,
                to: to.to_owned(),
                keys: Resealed::default(),
                kek_file,
            });
        }
    }
    let new = match (state.rotating_to.as_deref(), given, &staged) {
        (_, Some(g), _) => g,
        (Some(_), None, Some(p)) if p.exists() => Kek::load(&KekSource::File(p.clone()), false)?.0,
        (Some(to), None, _) => {
            return Err(Error::Kek(format!(
                "an unfinished rotation to id {to} needs that key: give it with --new-kek-file or --new-kek-env"
            )));
        }
        (None, None, Some(_)) => Kek::generate()?,
        (None, None, None) => {
            return Err(Error::Kek(format!(
                "it comes from the {configured}: give the new one with --new-kek-env or --new-kek-file"
            )));
        }
    };
    if let Some(p) = &staged {
        new.write_file(p)?;
    }
    let keys = reseal_all(keys_dir, &current, &new, &lock)?;
    if let (Some(from), Some(to)) = (&staged, &kek_file) {
        std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::audit::sync_dir(dir)?;
        }
    }
    finish(keys_dir, &new, &lock)?;
    Ok(Rotated {
        from: Some(current.id().to_owned()),
        to: new.id().to_owned(),
        keys,
        kek_file,
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::keys::{HsmRef, Key, KeyStore};
    use crate::scheme::KeyKind;

    /// A data dir with a KEK file, two soft keys and one HSM reference,
    /// opened the way `sigmux` opens it.
    fn populated() -> (tempfile::TempDir, KekSource, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let source = KekSource::File(dir.path().join("kek"));
        let (kek, _) = Kek::load(&source, true).unwrap();
        let store = KeyStore::open(dir.path(), Some(kek))
            .unwrap()
            .with_kek_source(source.clone());
        store.generate("a", KeyKind::P256).unwrap();
        store.generate("b", KeyKind::Ed25519).unwrap();
        let soft = Key::ephemeral("x", KeyKind::P256).unwrap();
        let r = HsmRef {
            token: Some("t".into()),
            label: "h".into(),
            id: "01".into(),
        };
        store
            .register_hsm(Key::from_hsm("h", KeyKind::P256, soft.spki_der(), r).unwrap())
            .unwrap();
        (dir, source, store)
    }

    fn kek_of(source: &KekSource) -> Kek {
        Kek::load(source, false).unwrap().0
    }

    fn file_kek_id(dir: &Path, name: &str) -> Option<String> {
        read_key_file(&dir.join(format!("keys/{name}.key")))
            .unwrap()
            .kek_id
    }

    /// Opens the store afresh with `kek` and checks every soft key decrypts
    /// to its recorded public key (the loader checks that) and signs.
    fn opens_with(dir: &Path, kek: Kek) -> KeyStore {
        let store = KeyStore::open(dir, Some(kek)).unwrap();
        for name in ["a", "b"] {
            assert!(store.get(name).unwrap().secret().is_ok(), "{name}");
        }
        store
    }

    #[test]
    fn a_file_kek_is_replaced_and_every_soft_key_follows_it() {
        let (dir, source, serving) = populated();
        let old = kek_of(&source);
        let done = rotate(&dir.path().join("keys"), &source, None).unwrap();
        let new = kek_of(&source);
        assert_ne!(old.id(), new.id());
        assert_eq!(done.from.as_deref(), Some(old.id()));
        assert_eq!(done.to, new.id());
        assert_eq!(done.keys.resealed, ["a", "b"]);
        assert_eq!(done.keys.in_tokens, ["h"]);
        assert!(done.keys.already.is_empty());
        assert_eq!(file_kek_id(dir.path(), "a").as_deref(), Some(new.id()));
        assert!(!dir.path().join("kek.next").exists());
        assert_eq!(
            KekState::load(&dir.path().join("keys")).unwrap(),
            KekState {
                kek_id: Some(new.id().to_owned()),
                rotating_to: None
            }
        );

        opens_with(dir.path(), kek_of(&source));
        let e = KeyStore::open(dir.path(), Some(old))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not the one the keys"), "{e}");

        // A process still holding the old KEK (a running serve) reads the
        // new KEK file before it seals another key.
        let c = serving.generate("c", KeyKind::P256).unwrap();
        assert_eq!(file_kek_id(dir.path(), "c").as_deref(), Some(new.id()));
        let fresh = opens_with(dir.path(), kek_of(&source));
        assert_eq!(fresh.get("c").unwrap().id(), c.id());
    }

    #[test]
    fn a_process_whose_kek_is_not_a_file_cannot_seal_after_a_rotation() {
        let (dir, source, _) = populated();
        let held = KeyStore::open(dir.path(), Some(kek_of(&source))).unwrap();
        rotate(&dir.path().join("keys"), &source, None).unwrap();
        let e = held.generate("c", KeyKind::P256).unwrap_err().to_string();
        assert!(e.contains("restart it with the new key"), "{e}");
        assert!(!dir.path().join("keys/c.key").exists());
    }

    #[test]
    fn a_given_new_kek_is_used_and_the_same_kek_is_refused() {
        let (dir, source, _) = populated();
        let keys = dir.path().join("keys");
        let given = KekSource::File(dir.path().join("given"));
        let e = rotate(&keys, &source, Some(&source))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the one in use"), "{e}");
        let (g, _) = Kek::load(&given, true).unwrap();
        let done = rotate(&keys, &source, Some(&given)).unwrap();
        assert_eq!(done.to, g.id());
        assert_eq!(kek_of(&source).id(), g.id());
    }

    #[test]
    fn a_wrong_configured_kek_changes_nothing() {
        let (dir, source, _) = populated();
        let keys = dir.path().join("keys");
        let before = std::fs::read(keys.join("a.key")).unwrap();
        let state = KekState::load(&keys).unwrap();
        let other = KekSource::File(dir.path().join("other"));
        Kek::load(&other, true).unwrap();
        let e = rotate(&keys, &other, None).unwrap_err().to_string();
        assert!(e.contains("not under the configured one"), "{e}");
        // Without the record, the keys themselves refuse the wrong KEK.
        std::fs::remove_file(keys.join(STATE_FILE)).unwrap();
        let e = rotate(&keys, &other, None).unwrap_err().to_string();
        assert!(e.contains("cannot decrypt") && e.contains("a.key"), "{e}");
        assert_eq!(std::fs::read(keys.join("a.key")).unwrap(), before);
        assert!(KekState::load(&keys).unwrap().rotating_to.is_none());
        state.save(&keys).unwrap();
        opens_with(dir.path(), kek_of(&source));
    }

    #[test]
    fn a_rotation_stopped_halfway_is_refused_then_finished_by_running_again() {
        let (dir, source, serving) = populated();
        let keys = dir.path().join("keys");
        let old = kek_of(&source);
        let old_a = std::fs::read(keys.join("a.key")).unwrap();
        // What a run leaves when it stops after sealing every key but one:
        // the staged KEK, the record, one key file still old.
        let new = Kek::generate().unwrap();
        new.write_file(&dir.path().join("kek.next")).unwrap();
        {
            let lock = DirLock::exclusive(&keys).unwrap();
            reseal_all(&keys, &old, &new, &lock).unwrap();
        }
        std::fs::write(keys.join("a.key"), &old_a).unwrap();

        let e = KeyStore::open(dir.path(), Some(kek_of(&source)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish") && e.contains(new.id()), "{e}");
        let e = serving
            .generate("c", KeyKind::P256)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish"), "{e}");
        // Another new KEK is refused while this rotation is unfinished.
        let other = KekSource::File(dir.path().join("other"));
        Kek::load(&other, true).unwrap();
        let e = rotate(&keys, &source, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be finished first"), "{e}");

        let done = rotate(&keys, &source, None).unwrap();
        assert_eq!(done.to, new.id());
        assert_eq!(done.keys.resealed, ["a"]);
        assert_eq!(done.keys.already, ["b"]);
        opens_with(dir.path(), kek_of(&source));
        assert_eq!(kek_of(&source).id(), new.id());
    }

    #[test]
    fn a_rotation_stopped_after_installing_the_kek_only_writes_the_record() {
        let (dir, source, _) = populated();
        let keys = dir.path().join("keys");
        let old = kek_of(&source);
        let new = Arc::new(Kek::generate().unwrap());
        {
            let lock = DirLock::exclusive(&keys).unwrap();
            reseal_all(&keys, &old, &new, &lock).unwrap();
        }
        let KekSource::File(path) = &source else {
            unreachable!()
        };
        new.write_file(path).unwrap();
        let done = rotate(&keys, &source, None).unwrap();
        assert_eq!(done.from.as_deref(), Some(old.id()));
        assert_eq!(done.to, new.id());
        opens_with(dir.path(), kek_of(&source));
    }
}
