//! Nix invocation for the registry shim: resolving a package source to an
//! exact revision, and running `prepare-image/` under `nix-build` to get
//! the runtime closure graph of the packages an image asks for.
//!
//! Package names and refs reach Nix only as `--argstr` values (lists as
//! JSON), never as Nix code. Every run is bounded by a timeout, after which
//! the whole process group is killed.
//!
//! The helper side of `prepare-image/` is here too: [`write_graph_from_attrs`]
//! is what `nixery write-graph` runs as the graph derivation's builder.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::graph::{ClosureGraph, GraphError, PathInfo};

/// The prepare-image expression, embedded so the binary is self-contained.
pub const PREPARE_IMAGE_NIX: &str = include_str!("../prepare-image/default.nix");

/// Lists a package set's top-level outputs, embedded like prepare-image.
pub const TOP_LEVEL_OUTPUTS_NIX: &str = include_str!("../nix/top-level-outputs.nix");

/// Version of the graph document `write-graph` writes.
pub const GRAPH_VERSION: u32 = 1;

/// Errors running Nix.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("nix-build failed ({status}): {log}")]
    BuildFailed { status: String, log: String },
    #[error("nix-build timed out after {} s: {log}", .timeout.as_secs())]
    Timeout { timeout: Duration, log: String },
    #[error("{command} failed: {log}")]
    Command { command: String, log: String },
    #[error("unknown git ref {0:?}")]
    UnknownRef(String),
    #[error("the graph nix-build wrote is unreadable: {0}")]
    Output(String),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Where packages come from, as `NIXERY_CHANNEL`, `NIXERY_PKGS_REPO` or
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
    src_type: &'static str,
    src_args: String,
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

async fn output_of(cmd: &mut tokio::process::Command, what: &str) -> Result<String, NixError> {
    let out = cmd.stdin(Stdio::null()).output().await.map_err(|source| NixError::Spawn { command: what.to_string(), source })?;
    if !out.status.success() {
        return Err(NixError::Command { command: what.to_string(), log: tail(&String::from_utf8_lossy(&out.stderr)) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last lines of a log, enough to say what went wrong.
fn tail(log: &str) -> String {
    const KEEP: usize = 4000;
    let log = log.trim();
    if log.len() <= KEEP {
        return log.to_string();
    }
    let mut start = log.len() - KEEP;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &log[start..])
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
                let commit = if is_commit(tag) {
                    tag.to_ascii_lowercase()
                } else {
                    ls_remote(url, if tag == "latest" { "HEAD" } else { tag }).await?
                };
                let args = serde_json::json!({ "url": url, "rev": commit }).to_string();
                Ok(ResolvedSource { src_type: "git", src_args: args, revision: format!("git:{commit}") })
            }
            PackageSource::Channel(channel) => {
                let commit = if is_commit(channel) {
                    channel.to_ascii_lowercase()
                } else {
                    ls_remote("https://github.com/NixOS/nixpkgs", channel).await?
                };
                Ok(ResolvedSource { src_type: "channel", src_args: commit.clone(), revision: format!("nixpkgs:{commit}") })
            }
        }
    }
}

/// What `prepare-image` found.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// The closure graph of the image's packages (roots: the packages).
    Graph(ClosureGraph),
    /// These names are not in the package set.
    NotFound(Vec<String>),
}

/// How to run prepare-image.
#[derive(Debug, Clone)]
pub struct Prepare {
    /// The prepare-image expression file.
    pub expression: PathBuf,
    /// The helper binary (this program).
    pub helper: PathBuf,
    /// The longest a nix-build may take.
    pub timeout: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphDoc {
    version: u32,
    not_found: Vec<String>,
    roots: Vec<String>,
    graph: Vec<PathInfo>,
}

impl Prepare {
    /// Writes the embedded expression under `dir` and returns the settings.
    pub fn install(dir: &Path, helper: PathBuf, timeout: Duration) -> std::io::Result<Prepare> {
        std::fs::create_dir_all(dir)?;
        let expression = dir.join("prepare-image.nix");
        std::fs::write(&expression, PREPARE_IMAGE_NIX)?;
        Ok(Prepare { expression, helper, timeout })
    }

    /// Runs prepare-image for `packages` on `system`.
    pub async fn run(
        &self,
        source: &ResolvedSource,
        packages: &[String],
        base_packages: &[String],
        system: &str,
    ) -> Result<Prepared, NixError> {
        let mut cmd = tokio::process::Command::new("nix-build");
        cmd.arg(&self.expression)
            .arg("--no-out-link")
            .args(["--argstr", "srcType", source.src_type])
            .args(["--argstr", "srcArgs", &source.src_args])
            .args(["--argstr", "packages", &serde_json::to_string(packages).expect("json")])
            .args(["--argstr", "basePackages", &serde_json::to_string(base_packages).expect("json")])
            .args(["--argstr", "system", system])
            .arg("--argstr")
            .arg("helper")
            .arg(&self.helper)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| NixError::Spawn { command: "nix-build".into(), source })?;
        let pid = child.id();
        let mut stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // Nix's log is collected as it comes, so a timeout can still show it.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log_task = tokio::spawn({
            let log = log.clone();
            async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut l = log.lock().expect("log lock");
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let run = async {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out).await;
            out
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let finished = match tokio::time::timeout_at(deadline, run).await {
            Ok(out) => match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(status) => Some((out, status)),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let (out, status) = match finished {
            Some(r) => r,
            None => {
                if let Some(pid) = pid {
                    stop_group(pid, &mut child).await;
                }
                log_task.abort();
                let log = tail(&log.lock().expect("log lock"));
                return Err(NixError::Timeout { timeout: self.timeout, log });
            }
        };
        let _ = log_task.await;
        let err = log.lock().expect("log lock").clone();
        let status = status.map_err(|source| NixError::Spawn { command: "nix-build".into(), source })?;
        if !status.success() {
            return Err(NixError::BuildFailed { status: status.to_string(), log: tail(&err) });
        }
        let out_path = out.trim();
        let text = tokio::fs::read_to_string(out_path).await.map_err(|e| NixError::Output(format!("{out_path}: {e}")))?;
        let doc: GraphDoc = serde_json::from_str(&text).map_err(|e| NixError::Output(e.to_string()))?;
        if !doc.not_found.is_empty() {
            return Ok(Prepared::NotFound(doc.not_found));
        }
        Ok(Prepared::Graph(ClosureGraph::new(doc.graph, Some(doc.roots))?))
    }
}

/// Stops nix-build and what it started: SIGINT first, on which Nix stops
/// its builders (they run in sessions of their own), then SIGKILL to the
/// whole process group if it has not exited within five seconds.
async fn stop_group(pid: u32, child: &mut tokio::process::Child) {
    let signal = |sig| {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (it was started with process_group(0)).
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    };
    signal(libc::SIGINT);
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        signal(libc::SIGKILL);
        let _ = child.wait().await;
    }
}

fn run_sync(cmd: &mut std::process::Command, what: &str) -> Result<String, NixError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| NixError::Spawn { command: what.to_string(), source })?;
    if !out.status.success() {
        return Err(NixError::Command { command: what.to_string(), log: tail(&String::from_utf8_lossy(&out.stderr)) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The output paths of the top-level packages of the package set at
/// `dir`, evaluated for `system`.
pub fn top_level_outputs(dir: &Path, system: &str) -> Result<Vec<String>, NixError> {
    let tmp = std::env::temp_dir().join(format!("nixery-top-level-{}.nix", std::process::id()));
    std::fs::write(&tmp, TOP_LEVEL_OUTPUTS_NIX).map_err(|source| NixError::Spawn { command: "write".into(), source })?;
    let out = run_sync(
        std::process::Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json"])
            .arg(&tmp)
            .arg("--argstr")
            .arg("path")
            .arg(dir)
            .args(["--argstr", "system", system]),
        "nix-instantiate",
    );
    let _ = std::fs::remove_file(&tmp);
    serde_json::from_str(&out?).map_err(|e| NixError::Output(e.to_string()))
}

/// The references of every path in the closure of the given store paths
/// that are valid in the local store (the closure from `nix-store --query
/// --requisites`, its references from one `nix-store --dump-db`). Returns
/// the references and the given paths that were not valid.
pub fn local_closure_references(paths: &[String]) -> Result<(std::collections::BTreeMap<String, Vec<String>>, Vec<String>), NixError> {
    let invalid_out = if paths.is_empty() {
        String::new()
    } else {
        // --print-invalid exits 0 and prints the invalid paths.
        run_sync(std::process::Command::new("nix-store").args(["--check-validity", "--print-invalid"]).args(paths), "nix-store --check-validity")?
    };
    let invalid: std::collections::BTreeSet<&str> = invalid_out.lines().collect();
    let valid: Vec<&String> = paths.iter().filter(|p| !invalid.contains(p.as_str())).collect();
    let mut refs = std::collections::BTreeMap::new();
    if !valid.is_empty() {
        let closure = run_sync(std::process::Command::new("nix-store").args(["--query", "--requisites"]).args(&valid), "nix-store --query --requisites")?;
        let closure: Vec<&str> = closure.lines().collect();
        let dump = run_sync(std::process::Command::new("nix-store").arg("--dump-db").args(&closure), "nix-store --dump-db")?;
        refs = parse_dump_db(&dump)?;
    }
    Ok((refs, invalid.into_iter().map(str::to_string).collect()))
}

/// Parses `nix-store --dump-db` registration records: path, NAR hash, NAR
/// size, deriver (maybe empty), the number of references, the references.
fn parse_dump_db(dump: &str) -> Result<std::collections::BTreeMap<String, Vec<String>>, NixError> {
    let bad = || NixError::Output("unexpected nix-store --dump-db output".into());
    let mut lines = dump.lines();
    let mut refs = std::collections::BTreeMap::new();
    while let Some(path) = lines.next() {
        if path.is_empty() {
            continue;
        }
        let (_hash, _size, _deriver) = (lines.next().ok_or_else(bad)?, lines.next().ok_or_else(bad)?, lines.next().ok_or_else(bad)?);
        let n: usize = lines.next().and_then(|l| l.parse().ok()).ok_or_else(bad)?;
        let r: Vec<String> = (0..n).map(|_| lines.next().map(str::to_string).ok_or_else(bad)).collect::<Result<_, _>>()?;
        refs.insert(path.to_string(), r);
    }
    Ok(refs)
}

#[derive(Deserialize)]
struct WriteGraphAttrs {
    outputs: std::collections::BTreeMap<String, PathBuf>,
    #[serde(rename = "nixeryGraph")]
    spec: WriteGraphSpec,
    #[serde(default)]
    graph: Vec<PathInfo>,
    #[serde(default, rename = "exportReferencesGraph")]
    export: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteGraphSpec {
    version: u32,
    not_found: Vec<String>,
}

/// The builder of prepare-image's graph derivation: copies the closure
/// graph Nix exported into the output as a [`GraphDoc`].
pub fn write_graph_from_attrs(attrs_path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(attrs_path).with_context(|| format!("cannot read {}", attrs_path.display()))?;
    let attrs: WriteGraphAttrs = serde_json::from_str(&text).with_context(|| format!("{} is not a graph description", attrs_path.display()))?;
    anyhow::ensure!(attrs.spec.version == GRAPH_VERSION, "graph description version {} is not {GRAPH_VERSION}", attrs.spec.version);
    let out = attrs.outputs.get("out").context("no `out` output")?;
    let roots = attrs.export.and_then(|mut e| e.remove("graph")).unwrap_or_default();
    let doc = GraphDoc { version: GRAPH_VERSION, not_found: attrs.spec.not_found, roots, graph: attrs.graph };
    std::fs::write(out, serde_json::to_vec(&doc)?).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
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
        let changes: Vec<(&str, Box<dyn Fn()>)> = vec![
            ("contents", Box::new(|| std::fs::write(d.join("sub/a"), "b").unwrap())),
            ("executable bit", Box::new(|| std::fs::set_permissions(d.join("sub/a"), std::fs::Permissions::from_mode(0o755)).unwrap())),
            ("symlink target", Box::new(|| {
                std::fs::remove_file(d.join("sub/link")).unwrap();
                std::os::unix::fs::symlink("default.nix", d.join("sub/link")).unwrap();
            })),
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

    #[test]
    fn dump_db_records() {
        let dump = "/nix/store/a-x\nsha\n10\n\n0\n/nix/store/b-y\nsha\n20\n/nix/store/d-y.drv\n2\n/nix/store/a-x\n/nix/store/b-y\n";
        let refs = parse_dump_db(dump).unwrap();
        assert_eq!(refs["/nix/store/a-x"], Vec::<String>::new());
        assert_eq!(refs["/nix/store/b-y"], vec!["/nix/store/a-x", "/nix/store/b-y"]);
        assert!(parse_dump_db("/nix/store/a-x\nsha\n").is_err());
    }

    #[test]
    fn logs_keep_their_end() {
        let long = format!("{}END", "x".repeat(10_000));
        let t = tail(&long);
        assert!(t.ends_with("END") && t.len() < 4100);
    }
}
