//! Package sources (`NIXERY_CHANNEL`, `NIXERY_PKGS_REPO`,
//! `NIXERY_PKGS_PATH`) and their exact revisions: a git commit, a nixpkgs
//! commit, or the content hash of a local directory. A revision is part of
//! every manifest cache key, so an image is rebuilt exactly when its
//! package set changed.

use std::path::{Path, PathBuf};

use super::{output_of, NixError};

/// `NIXERY_PKGS_PATH` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageSource {
    /// A nixpkgs channel (branch) name or commit, fetched as a tarball.
    Channel(String),
    /// A git repository; the image tag is the ref (`latest`: HEAD).
    Git(String),
    /// A local directory.
    Path(PathBuf),
}

/// A package source pinned to an exact revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    /// `path`, `git` or `channel`: prepare-image's `srcType`.
    pub(crate) src_type: &'static str,
    /// prepare-image's `srcArgs`.
    pub(crate) src_args: String,
    /// Identifies the exact package set: a git or channel commit, or the
    /// content hash of a local directory. Part of every manifest cache key.
    pub revision: String,
}

/// A content hash of the directory tree at `root`: every entry's relative
/// path and type, each file's executable bit and contents, each symlink's
/// target. What `nix-hash` would tell apart, without a process: files are
/// hashed in parallel, then combined in path order.
pub fn tree_hash(root: &Path) -> std::io::Result<String> {
    use rayon::prelude::*;
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::PermissionsExt;

    enum Kind {
        Dir,
        File { executable: bool },
        Link(PathBuf),
    }
    let mut entries: Vec<(PathBuf, Kind)> = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::from)?;
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path()).to_path_buf();
        let t = entry.file_type();
        let kind = if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Link(std::fs::read_link(entry.path())?)
        } else {
            Kind::File { executable: entry.metadata().map_err(std::io::Error::from)?.permissions().mode() & 0o111 != 0 }
        };
        entries.push((rel, kind));
    }
    let file_hashes: Vec<Option<[u8; 32]>> = entries
        .par_iter()
        .map(|(rel, kind)| match kind {
            Kind::File { .. } => {
                let mut h = Sha256::new();
                std::io::copy(&mut std::fs::File::open(root.join(rel))?, &mut h)?;
                Ok(Some(h.finalize().into()))
            }
            _ => Ok(None),
        })
        .collect::<std::io::Result<_>>()?;
    let mut h = Sha256::new();
    for ((rel, kind), content) in entries.iter().zip(file_hashes) {
        use std::os::unix::ffi::OsStrExt;
        let path = rel.as_os_str().as_bytes();
        h.update((path.len() as u64).to_le_bytes());
        h.update(path);
        match kind {
            Kind::Dir => h.update(b"d"),
            Kind::File { executable } => {
                h.update(if *executable { b"x" } else { b"f" });
                h.update(content.expect("a file has a hash"));
            }
            Kind::Link(target) => {
                let t = target.as_os_str().as_bytes();
                h.update(b"l");
                h.update((t.len() as u64).to_le_bytes());
                h.update(t);
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit a ref names in a git repository, by `git ls-remote`.
async fn ls_remote(url: &str, git_ref: &str) -> Result<String, NixError> {
    let out = output_of(tokio::process::Command::new("git").arg("ls-remote").arg(url), "git ls-remote").await?;
    // Prefer a peeled tag, then a tag, then a branch, then HEAD.
    let wanted: Vec<String> = if git_ref == "HEAD" {
        vec!["HEAD".into()]
    } else {
        vec![format!("refs/tags/{git_ref}^{{}}"), format!("refs/tags/{git_ref}"), format!("refs/heads/{git_ref}")]
    };
    let refs: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
    for w in &wanted {
        if let Some((commit, _)) = refs.iter().find(|(_, name)| name == w) {
            return Ok(commit.to_string());
        }
    }
    Err(NixError::UnknownRef(git_ref.to_string()))
}

impl PackageSource {
    /// The tags an image name has: `latest`, and for a git source every
    /// branch and tag name that is a valid registry tag.
    pub async fn tags(&self) -> Result<Vec<String>, NixError> {
        let mut tags = std::collections::BTreeSet::from(["latest".to_string()]);
        if let PackageSource::Git(url) = self {
            let out = output_of(tokio::process::Command::new("git").arg("ls-remote").arg(url), "git ls-remote").await?;
            for name in out.lines().filter_map(|l| l.split_once('\t')).map(|(_, n)| n) {
                let short = name.strip_prefix("refs/tags/").or_else(|| name.strip_prefix("refs/heads/"));
                if let Some(t) = short.filter(|t| !t.ends_with("^{}") && crate::image_name::valid_tag(t)) {
                    tags.insert(t.to_string());
                }
            }
        }
        Ok(tags.into_iter().collect())
    }

    /// Pins the source for an image tag. For git the tag is the ref
    /// (`latest` is the default branch); other sources ignore it.
    pub async fn resolve(&self, tag: &str) -> Result<ResolvedSource, NixError> {
        match self {
            PackageSource::Path(p) => {
                let dir = p.clone();
                let hash = tokio::task::spawn_blocking(move || tree_hash(&dir))
                    .await
                    .map_err(|e| NixError::Command { command: "hashing the package set".into(), log: e.to_string() })?
                    .map_err(|e| NixError::Command { command: format!("hashing the package set {}", p.display()), log: e.to_string() })?;
                Ok(ResolvedSource { src_type: "path", src_args: p.display().to_string(), revision: format!("path:{hash}") })
            }
            PackageSource::Git(url) => {
                let commit = if is_commit(tag) { tag.to_ascii_lowercase() } else { ls_remote(url, if tag == "latest" { "HEAD" } else { tag }).await? };
                let args = serde_json::json!({ "url": url, "rev": commit }).to_string();
                Ok(ResolvedSource { src_type: "git", src_args: args, revision: format!("git:{commit}") })
            }
            PackageSource::Channel(channel) => {
                let commit = if is_commit(channel) { channel.to_ascii_lowercase() } else { ls_remote("https://github.com/NixOS/nixpkgs", channel).await? };
                Ok(ResolvedSource { src_type: "channel", src_args: commit.clone(), revision: format!("nixpkgs:{commit}") })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_hash_tells_apart_what_nix_would() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("default.nix"), "{ }: { }").unwrap();
        std::fs::write(d.join("sub/a"), "a").unwrap();
        std::os::unix::fs::symlink("a", d.join("sub/link")).unwrap();
        let base = tree_hash(d).unwrap();
        assert_eq!(tree_hash(d).unwrap(), base, "stable");
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: Vec<Change> = vec![
            ("contents", Box::new(|| std::fs::write(d.join("sub/a"), "b").unwrap())),
            ("executable bit", Box::new(|| std::fs::set_permissions(d.join("sub/a"), std::fs::Permissions::from_mode(0o755)).unwrap())),
            (
                "symlink target",
                Box::new(|| {
                    std::fs::remove_file(d.join("sub/link")).unwrap();
                    std::os::unix::fs::symlink("default.nix", d.join("sub/link")).unwrap();
                }),
            ),
            ("a new empty directory", Box::new(|| std::fs::create_dir(d.join("empty")).unwrap())),
            ("a rename", Box::new(|| std::fs::rename(d.join("sub/a"), d.join("sub/b")).unwrap())),
        ];
        let mut seen = vec![base];
        for (what, change) in changes {
            change();
            let h = tree_hash(d).unwrap();
            assert!(!seen.contains(&h), "{what} changes the hash");
            seen.push(h);
        }
        // Same contents elsewhere: same hash (the location is not hashed).
        let copy = tempfile::tempdir().unwrap();
        std::fs::write(copy.path().join("f"), "x").unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("f"), "x").unwrap();
        assert_eq!(tree_hash(copy.path()).unwrap(), tree_hash(other.path()).unwrap());
        assert!(tree_hash(&d.join("missing")).is_err());
    }

    #[test]
    fn commits_are_recognised() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(!is_commit("latest"));
        assert!(!is_commit(&"g".repeat(40)));
    }
}
