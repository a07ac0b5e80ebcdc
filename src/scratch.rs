//! Temporary files and folders: those a process owns (and another process
//! must be able to tell when their owner is gone), and those that only
//! live for one operation.
//!
//! # Owned scratch
//!
//! Several shims may share a store and a temporary directory (two on one
//! machine, containers with a shared volume or `--network host`, PID
//! namespaces with the same host name): a shim that starts must remove
//! what a killed one left behind, and nothing that a live one is writing.
//! A host name and a pid cannot tell (two PID namespaces hand out the same
//! pids, and a PID 1 never looks gone); a lock can. A process keeps, in
//! each directory where it has scratch of a kind (`prefix`), an owner file
//! `<prefix>.<token>.owner` with an exclusive lock on it for as long as it
//! lives, `token` being random per process; the kernel drops the lock when
//! the process dies, however it dies. Its scratch is named
//! `<prefix>.<token>` or `<prefix>.<token>.<suffix>`.
//!
//! ```text
//! staging/
//! ├── staging.3f9c…e1.owner      locked by a live shim: its files stay
//! ├── staging.3f9c…e1.17
//! ├── staging.a07b…42.owner      lock free: its shim is gone
//! └── staging.a07b…42.3          removed, then the owner file
//! ```
//!
//! [`remove_leftovers`] removes the scratch whose owner file it can lock,
//! then the owner file. Scratch without an owner file (an older nixery's
//! `<prefix>.<host>.<pid>`, or what a cleaner interrupted) is removed once
//! a day old.
//!
//! # Scratch of one operation
//!
//! [`TempFile`] is a file beside its destination that becomes the
//! destination on [`TempFile::persist`] and is removed on every other path
//! (an error, a panic, an early return).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// How old scratch without an owner file must be to be removed.
const STALE: Duration = Duration::from_secs(24 * 3600);

/// The suffix of owner files.
const OWNER_SUFFIX: &str = "owner";

/// This process's token: 16 random hex digits.
fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let random = File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes));
        if random.is_err() {
            // No /dev/urandom: the pid and the time still make it unique
            // enough among the processes that share a directory.
            let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
            bytes = (t ^ ((std::process::id() as u64) << 32)).to_le_bytes();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// The owner files this process holds locked, by (directory, prefix).
fn owners() -> &'static Mutex<HashMap<(PathBuf, String), File>> {
    static OWNERS: OnceLock<Mutex<HashMap<(PathBuf, String), File>>> = OnceLock::new();
    OWNERS.get_or_init(Default::default)
}

/// A path in `dir` this process owns: `<prefix>.<token>` and, when given,
/// `.<suffix>`. The first call for a directory and prefix creates and
/// locks the owner file there (the directory must exist).
pub fn owned(dir: &Path, prefix: &str, suffix: Option<&str>) -> io::Result<PathBuf> {
    let mut held = owners().lock().unwrap_or_else(|e| e.into_inner());
    if let std::collections::hash_map::Entry::Vacant(slot) = held.entry((dir.to_path_buf(), prefix.to_string())) {
        let owner = dir.join(format!("{prefix}.{}.{OWNER_SUFFIX}", token()));
        let file = File::options().create(true).truncate(false).write(true).open(&owner)?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => io::Error::other(format!("{} is locked by another process", owner.display())),
        })?;
        slot.insert(file);
    }
    let base = format!("{prefix}.{}", token());
    Ok(dir.join(match suffix {
        Some(s) => format!("{base}.{s}"),
        None => base,
    }))
}

/// Whether the owner whose owner file is `owner` is gone: its lock can be
/// taken (the returned file holds it while the caller removes what it
/// owned). `None` when it cannot tell (a file system without locks).
fn take_if_gone(owner: &Path) -> Option<Option<File>> {
    let file = File::options().write(true).open(owner).ok()?;
    match file.try_lock() {
        Ok(()) => Some(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Some(None),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The token of an entry named `<prefix>.<token>[.…]`.
fn token_of<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?.strip_prefix('.')?.split('.').next().filter(|t| !t.is_empty())
}

fn remove(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).is_ok(),
        Ok(_) => std::fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}

/// Removes the entries of `dir` named with `prefix` whose owner is gone
/// (files and folders alike; see the module documentation). Returns how
/// many it removed, owner files not counted.
pub fn remove_leftovers(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut by_token: HashMap<String, Vec<(PathBuf, Option<SystemTime>)>> = HashMap::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(t) = token_of(&name, prefix) else { continue };
        if name == format!("{prefix}.{t}.{OWNER_SUFFIX}") {
            by_token.entry(t.to_string()).or_default();
            continue;
        }
        let modified = e.metadata().ok().and_then(|m| m.modified().ok());
        by_token.entry(t.to_string()).or_default().push((e.path(), modified));
    }
    let mut removed = 0;
    for (t, items) in by_token {
        if t == token() {
            continue;
        }
        let owner = dir.join(format!("{prefix}.{t}.{OWNER_SUFFIX}"));
        let gone = if owner.exists() {
            match take_if_gone(&owner) {
                Some(Some(lock)) => Some(lock),
                // Alive, or no way to tell: kept.
                Some(None) | None => continue,
            }
        } else {
            None
        };
        let stale = |m: &Option<SystemTime>| m.and_then(|m| m.elapsed().ok()).is_some_and(|age| age > STALE);
        for (path, modified) in &items {
            if (gone.is_some() || stale(modified)) && remove(path) {
                removed += 1;
            }
        }
        if gone.is_some() {
            // Removed while locked: no other cleaner acts on it meanwhile.
            let _ = std::fs::remove_file(&owner);
        }
    }
    removed
}

/// A file beside `target` (`<target>.nixery-tmp.<token>.<n>`) that becomes
/// `target` on [`TempFile::persist`] and is removed otherwise.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    target: PathBuf,
    kept: bool,
}

impl TempFile {
    /// Creates the file (which must not exist) and opens it for writing.
    pub fn beside(target: &Path) -> io::Result<(TempFile, File)> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".nixery-tmp.{}.{n}", token()));
        let path = target.with_file_name(name);
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok((TempFile { path, target: target.to_path_buf(), kept: false }, file))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to its target.
    pub fn persist(mut self) -> io::Result<()> {
        std::fs::rename(&self.path, &self.target)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> std::collections::BTreeSet<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    }

    /// An owner of another process: its owner file, locked by `lock`
    /// while it lives (a file handle of this test stands in for it).
    fn other_owner(dir: &Path, prefix: &str, token: &str, alive: bool) -> Option<File> {
        let owner = dir.join(format!("{prefix}.{token}.owner"));
        let f = File::create(&owner).unwrap();
        if alive {
            f.lock().unwrap();
            Some(f)
        } else {
            None
        }
    }

    #[test]
    fn only_what_a_gone_owner_left_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mine = owned(d, "staging", Some("1")).unwrap();
        std::fs::write(&mine, b"x").unwrap();
        // Another live process: the same host and pid would not matter.
        let _live = other_owner(d, "staging", "aaaaaaaaaaaaaaaa", true);
        std::fs::write(d.join("staging.aaaaaaaaaaaaaaaa.4"), b"x").unwrap();
        // A process that is gone: its files and a folder.
        other_owner(d, "staging", "bbbbbbbbbbbbbbbb", false);
        std::fs::write(d.join("staging.bbbbbbbbbbbbbbbb.3"), b"x").unwrap();
        std::fs::create_dir(d.join("staging.bbbbbbbbbbbbbbbb")).unwrap();
        std::fs::write(d.join("staging.bbbbbbbbbbbbbbbb/inner"), b"x").unwrap();
        // An older nixery's name, fresh (kept), and an unrelated file.
        std::fs::write(d.join("staging.host.12.3"), b"x").unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();

        assert_eq!(remove_leftovers(d, "staging"), 2);
        let left = names(d);
        let expected: std::collections::BTreeSet<String> = [
            mine.file_name().unwrap().to_str().unwrap().to_string(),
            format!("staging.{}.owner", token()),
            "staging.aaaaaaaaaaaaaaaa.owner".to_string(),
            "staging.aaaaaaaaaaaaaaaa.4".to_string(),
            "staging.host.12.3".to_string(),
            "notes.txt".to_string(),
        ]
        .into_iter()
        .collect();
        assert_eq!(left, expected);
        // A cleaner in another process does not take this one's files.
        assert!(take_if_gone(&d.join(format!("staging.{}.owner", token()))).unwrap().is_none());
    }

    #[test]
    fn temp_files_are_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.tar");
        {
            let (t, _f) = TempFile::beside(&target).unwrap();
            assert!(t.path().exists());
        }
        assert!(names(dir.path()).is_empty(), "dropped: removed");
        let (t, f) = TempFile::beside(&target).unwrap();
        drop(f);
        t.persist().unwrap();
        assert_eq!(names(dir.path()), ["out.tar".to_string()].into_iter().collect());
    }
}
