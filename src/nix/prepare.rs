//! Running `prepare-image/` under `nix-build`: from a pinned source and a
//! list of attribute names to the closure graph of those packages (or the
//! names the set does not have). The graph derivation's builder is this
//! program too: [`crate::builder::write_graph_from_attrs`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{tail, NixError, ResolvedSource};
use crate::graph::{ClosureGraph, GraphDoc, MissingKind, MissingPackage};

/// The prepare-image expression, embedded so the binary is self-contained.
pub const PREPARE_IMAGE_NIX: &str = include_str!("../../prepare-image/default.nix");
/// What the SBOMs say of a package, which prepare-image imports from
/// beside it (lib.nix imports the same file).
pub const PACKAGE_META_NIX: &str = include_str!("../../prepare-image/package-meta.nix");

/// What `prepare-image` found.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// The closure graph of the image's packages (roots: the packages),
    /// and what their meta says.
    Graph(ClosureGraph, Vec<crate::graph::PackageMeta>),
    /// These names are not packages of the set, and why.
    NotFound(Vec<MissingPackage>),
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
    /// How nix-build is tied to this process's life.
    pub containment: Containment,
}

/// How a nix-build dies with the shim that started it, even when the shim
/// is killed with SIGKILL and cleans nothing up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// nix-build runs as the first process of a PID namespace of its own
    /// (`unshare --pid --fork --kill-child`, with a `/proc` of that
    /// namespace, which Nix's sandbox needs to set up its builders' user
    /// and PID namespaces by number), with a parent-death signal
    /// on `unshare`: when the shim dies, `unshare` is killed, and with it
    /// the namespace's first process; the kernel then kills everything in
    /// the namespace, Nix's builders (in their nested sandboxes) included.
    PidNamespace,
    /// Only nix-build has a parent-death signal (where PID namespaces are
    /// not allowed, as for most users who are not root): nix-build dies
    /// with the shim, a builder it started may finish its derivation.
    ParentDeathSignal,
}

impl Containment {
    /// The strongest containment this machine allows: a PID namespace
    /// when `unshare` can make one, else the parent-death signal.
    pub fn probe() -> Containment {
        let ok = std::process::Command::new("unshare")
            .args(["--pid", "--mount", "--mount-proc", "--fork", "--kill-child=KILL", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Containment::PidNamespace
        } else {
            Containment::ParentDeathSignal
        }
    }

    /// The command that runs `nix-build` this way.
    fn command(self) -> tokio::process::Command {
        let mut cmd = match self {
            Containment::PidNamespace => {
                let mut c = tokio::process::Command::new("unshare");
                c.args(["--pid", "--mount", "--mount-proc", "--fork", "--kill-child=KILL", "nix-build"]);
                c
            }
            Containment::ParentDeathSignal => tokio::process::Command::new("nix-build"),
        };
        // SAFETY: the closure runs in the forked child before exec and
        // only makes the prctl system call, which is async-signal-safe.
        // The signal fires when the thread that forked exits: that is a
        // runtime worker thread, which lives as long as the shim.
        unsafe {
            cmd.pre_exec(|| rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).map_err(std::io::Error::from));
        }
        cmd
    }
}

impl Prepare {
    /// Writes the embedded expression under `dir` and returns the settings.
    pub fn install(dir: &Path, helper: PathBuf, timeout: Duration) -> std::io::Result<Prepare> {
        std::fs::create_dir_all(dir)?;
        let expression = dir.join("prepare-image.nix");
        std::fs::write(&expression, PREPARE_IMAGE_NIX)?;
        std::fs::write(dir.join("package-meta.nix"), PACKAGE_META_NIX)?;
        Ok(Prepare { expression, helper, timeout, containment: Containment::probe() })
    }

    /// Runs prepare-image for `packages` on `system`.
    pub async fn run(&self, source: &ResolvedSource, packages: &[String], base_packages: &[String], system: &str) -> Result<Prepared, NixError> {
        let mut cmd = self.containment.command();
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
        let text = tokio::fs::read_to_string(out_path).await.map_err(|source| NixError::Io { path: out_path.into(), source })?;
        let doc = GraphDoc::from_json(&text).map_err(|e| NixError::Output { what: out_path.into(), detail: e.to_string() })?;
        if !doc.not_found.is_empty() {
            let mut missing = doc.missing;
            // Names a document lists without saying why are absent.
            for name in &doc.not_found {
                if !missing.iter().any(|m| &m.name == name) {
                    missing.push(MissingPackage {
                        name: name.clone(),
                        kind: MissingKind::Absent,
                        component: name.clone(),
                        within: String::new(),
                        candidates: vec![],
                    });
                }
            }
            return Ok(Prepared::NotFound(missing));
        }
        Ok(Prepared::Graph(ClosureGraph::new(doc.graph, Some(doc.roots))?, doc.package_meta))
    }
}

/// Stops nix-build and what it started: SIGINT first, on which Nix stops
/// its builders (they run in sessions of their own), then SIGKILL to the
/// whole process group if it has not exited within five seconds.
async fn stop_group(pid: u32, child: &mut tokio::process::Child) {
    use rustix::process::{kill_process_group, Pid, Signal};
    // The child leads its own process group (process_group(0)).
    let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) else { return };
    let _ = kill_process_group(group, Signal::INT);
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = kill_process_group(group, Signal::KILL);
        let _ = child.wait().await;
    }
}
