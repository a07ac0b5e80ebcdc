//! Temporary files and folders a process owns, named so that another
//! process can tell whether their owner is gone: `<prefix>.<host>.<pid>.…`.
//!
//! Several shims may share a store (a filesystem on a network mount, or
//! one machine running two): a shim that starts must remove what a killed
//! one left behind, and nothing that a live one is writing. So leftovers
//! are removed when their owner is a process of this host that no longer
//! runs, or when they are older than a day (whatever their host).

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How old a leftover of another host must be to be removed.
const STALE: Duration = Duration::from_secs(24 * 3600);

/// This host's name, as the owner part of names.
fn host() -> String {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// A name this process owns: `<prefix>.<host>.<pid>` and, when given,
/// `.<suffix>`.
pub fn owned(prefix: &str, suffix: Option<&str>) -> String {
    let base = format!("{prefix}.{}.{}", host(), std::process::id());
    match suffix {
        Some(s) => format!("{base}.{s}"),
        None => base,
    }
}

/// Whether the process `pid` of this host runs.
fn alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // It runs, as another user.
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Whether an entry named `name` (modified at `modified`) is a leftover of
/// a process that is gone.
fn leftover(name: &str, prefix: &str, modified: Option<SystemTime>, our_host: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else { return false };
    let mut parts = rest.splitn(3, '.');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else { return false };
    let old = modified.and_then(|m| m.elapsed().ok()).is_some_and(|age| age > STALE);
    match pid.parse::<i32>() {
        Ok(pid) if host == our_host => pid != std::process::id() as i32 && !alive(pid),
        _ => old,
    }
}

/// Removes the entries of `dir` named with `prefix` whose owner is gone
/// (files and folders alike). Returns how many it removed.
pub fn remove_leftovers(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let our_host = host();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = e.metadata().ok();
        if !leftover(&name, prefix, meta.as_ref().and_then(|m| m.modified().ok()), &our_host) {
            continue;
        }
        let path = e.path();
        let gone = if meta.is_some_and(|m| m.is_dir()) { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        if gone.is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_gone_process_left_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let host = host();
        // A process that cannot run: pid numbers are below 2^22 on Linux.
        let gone = format!("staging.{host}.4194305.7");
        let mine = owned("staging", Some("1"));
        let other_host_fresh = "staging.elsewhere.12.3".to_string();
        let unrelated = "notes.txt".to_string();
        for n in [&gone, &mine, &other_host_fresh, &unrelated] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!("prepare.{host}.4194306"))).unwrap();
        assert_eq!(remove_leftovers(dir.path(), "staging"), 1);
        assert_eq!(remove_leftovers(dir.path(), "prepare"), 1);
        let left: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left, [mine, other_host_fresh, unrelated].into_iter().collect());
        assert!(alive(std::process::id() as i32));
    }
}
