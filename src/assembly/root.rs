//! The image root: what makes an image of store paths usable.
//!
//! Three kinds of entries, in this order of precedence:
//!
//! 1. Generated files: `/etc/passwd`, `/etc/group` and the rest for
//!    declared users ([`super::users`]), a Nix database
//!    ([`super::nixdb`]), home directories owned by their users.
//! 2. Copies of the `copyToRoot` packages' files (as dockerTools and
//!    nix2container copy them): real files and directories at the root,
//!    symlinks kept as symlinks.
//! 3. A symlink join of the content packages (as nixpkgs' `symlinkJoin`
//!    and `lndir` make it): for each top-level folder of each package
//!    (`bin`, `lib`, `share`, `etc`, …) real directories at the image
//!    root, and in them symlinks to the files in the store.
//!
//! Within a kind, the package listed first wins; across kinds, the higher
//! one does; directories merge. Every conflict is reported, so the build
//! log shows it. On top come `/tmp` (mode 1777) and `/usr/bin/env` when a
//! package provides `bin/env`. This module computes the entries;
//! [`crate::packing`] writes them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::packing::{FileData, Owner, TreeEntry};

/// Top-level entries of a package that are never linked or copied into
/// the root.
const SKIPPED: &[&str] = &["nix-support"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32, owner: Owner },
    Link { target: String },
    File { mode: u32, owner: Owner, data: FileData },
}

/// The planned root tree and what was skipped on the way.
#[derive(Debug, Clone, Default)]
pub struct RootTree {
    /// The entries, with paths relative to `/`.
    pub entries: Vec<TreeEntry>,
    /// Human-readable reports of conflicts and skipped contents.
    pub warnings: Vec<String>,
}

/// Builds the root: add generated entries first, then copies, then links.
#[derive(Debug, Default)]
pub struct RootBuilder {
    /// Path → (entry, who put it there).
    nodes: BTreeMap<String, (Node, String)>,
    warnings: Vec<String>,
    store_root: PathBuf,
}

impl RootBuilder {
    /// A builder reading packages from the store under `store_root`.
    pub fn new(store_root: &Path) -> RootBuilder {
        RootBuilder { store_root: store_root.to_path_buf(), ..Default::default() }
    }

    /// Adds a generated entry (and its parent directories, root-owned,
    /// mode 0755, where nothing is yet). Generated entries come first, so
    /// they win over copies and links; two generated entries at one path
    /// are a conflict the later one loses.
    pub fn generated(&mut self, entry: TreeEntry, by: &str) {
        let (path, node) = match entry {
            TreeEntry::Dir { path, mode, owner } => (path, Node::Dir { mode, owner }),
            TreeEntry::Symlink { path, target } => (path, Node::Link { target }),
            TreeEntry::File { path, mode, owner, data } => (path, Node::File { mode, owner, data }),
        };
        self.parents(&path, by);
        self.put(path, node, by);
    }

    fn parents(&mut self, path: &str, by: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            self.put(parent.to_string(), Node::Dir { mode: 0o755, owner: Owner::default() }, by);
            at += i + 1;
        }
    }

    /// Puts `node` at `path` unless something is there: directories merge
    /// (the first one's mode and owner stay); anything else is a conflict
    /// that the entry already there wins.
    fn put(&mut self, path: String, node: Node, by: &str) -> bool {
        match self.nodes.get(&path) {
            None => {
                self.nodes.insert(path, (node, by.to_string()));
                true
            }
            Some((Node::Dir { .. }, _)) if matches!(node, Node::Dir { .. }) => true,
            Some((existing, owner_of)) => {
                let what = |n: &Node| match n {
                    Node::Dir { .. } => "a directory",
                    Node::Link { .. } => "a link",
                    Node::File { .. } => "a file",
                };
                self.warnings.push(format!("conflict at /{path}: {owner_of} provides {}, {by} {}; keeping {owner_of}'s", what(existing), what(&node)));
                false
            }
        }
    }

    /// Copies the files of `packages` (store paths, first wins) into the
    /// root.
    pub fn copy(&mut self, packages: &[String]) -> io::Result<()> {
        for pkg in packages {
            self.each_top_level(pkg, |b, source, dst| b.merge_copy(source, &dst, pkg))?;
        }
        Ok(())
    }

    /// Links the files of `contents` (store paths, first wins) into the
    /// root: real directories, symlinks to the store for everything else.
    pub fn link(&mut self, contents: &[String]) -> io::Result<()> {
        for pkg in contents {
            self.each_top_level(pkg, |b, source, dst| b.merge_link(source, &dst, pkg))?;
        }
        Ok(())
    }

    fn each_top_level(&mut self, pkg: &str, mut f: impl FnMut(&mut Self, &Source, String) -> io::Result<()>) -> io::Result<()> {
        let on_disk = self.store_root.join(pkg.trim_start_matches('/'));
        let meta = fs::symlink_metadata(&on_disk).map_err(|e| io::Error::new(e.kind(), format!("{pkg}: {e}")))?;
        if !meta.is_dir() {
            self.warnings.push(format!("{pkg} is not a directory, so nothing of it goes into the image root"));
            return Ok(());
        }
        for entry in sorted_dir(&on_disk)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if SKIPPED.contains(&name.as_str()) {
                continue;
            }
            let source = Source { disk: entry.path(), image: format!("{pkg}/{name}") };
            f(self, &source, name)?;
        }
        Ok(())
    }

    fn merge_link(&mut self, src: &Source, dst: &str, pkg: &str) -> io::Result<()> {
        let meta = fs::symlink_metadata(&src.disk)?;
        if dst == "tmp" {
            self.warnings.push(format!("{pkg} provides /tmp; the image's /tmp is an empty directory with mode 1777 instead"));
            return Ok(());
        }
        if meta.is_dir() {
            if !self.put(dst.to_string(), Node::Dir { mode: 0o755, owner: Owner::default() }, pkg) {
                return Ok(());
            }
            for entry in sorted_dir(&src.disk)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = Source { disk: entry.path(), image: format!("{}/{name}", src.image) };
                self.merge_link(&child, &format!("{dst}/{name}"), pkg)?;
            }
        } else {
            self.put(dst.to_string(), Node::Link { target: src.image.clone() }, pkg);
        }
        Ok(())
    }

    fn merge_copy(&mut self, src: &Source, dst: &str, pkg: &str) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::symlink_metadata(&src.disk)?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            // Store directories are read-only (0555): copies are made
            // writable by their owner, as a package's files would be.
            if !self.put(dst.to_string(), Node::Dir { mode: mode | 0o200, owner: Owner::default() }, pkg) {
                return Ok(());
            }
            for entry in sorted_dir(&src.disk)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = Source { disk: entry.path(), image: format!("{}/{name}", src.image) };
                self.merge_copy(&child, &format!("{dst}/{name}"), pkg)?;
            }
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&src.disk)?.to_string_lossy().into_owned();
            self.put(dst.to_string(), Node::Link { target }, pkg);
        } else if meta.is_file() {
            let data = FileData::Disk(src.disk.to_string_lossy().into_owned());
            self.put(dst.to_string(), Node::File { mode, owner: Owner::default(), data }, pkg);
        } else {
            self.warnings.push(format!("{}: not a file, directory or symlink; not copied", src.image));
        }
        Ok(())
    }

    /// The entries, with `/tmp` and `/usr/bin/env` added.
    pub fn finish(mut self) -> RootTree {
        // /usr/bin/env from the first package that provides bin/env.
        if let Some((Node::Link { target }, by)) = self.nodes.get("bin/env").cloned() {
            if !self.nodes.contains_key("usr/bin/env") {
                let ok = ["usr", "usr/bin"].iter().all(|d| match self.nodes.get(*d) {
                    None | Some((Node::Dir { .. }, _)) => true,
                    Some((_, p)) => {
                        self.warnings.push(format!("/{d} comes from {p} and is not a directory, so /usr/bin/env is not added"));
                        false
                    }
                });
                if ok {
                    self.parents("usr/bin/env", &by);
                    self.put("usr/bin/env".into(), Node::Link { target }, &by);
                }
            }
        }
        if let Some((node, by)) = self.nodes.get("tmp") {
            if !matches!(node, Node::Dir { .. }) {
                self.warnings.push(format!("{by} provides /tmp; the image's /tmp is an empty directory with mode 1777 instead"));
            }
        }
        self.nodes.insert("tmp".into(), (Node::Dir { mode: 0o1777, owner: Owner::default() }, "nixery".into()));
        let entries = self
            .nodes
            .into_iter()
            .map(|(path, (node, _))| match node {
                Node::Dir { mode, owner } => TreeEntry::Dir { path, mode, owner },
                Node::Link { target } => TreeEntry::Symlink { path, target },
                Node::File { mode, owner, data } => TreeEntry::File { path, mode, owner, data },
            })
            .collect();
        RootTree { entries, warnings: self.warnings }
    }
}

/// The symlink join of `contents` (store paths, in the user's order),
/// read from the store under `store_root`, with `/tmp` and `/usr/bin/env`.
pub fn join(contents: &[String], store_root: &Path) -> io::Result<RootTree> {
    let mut b = RootBuilder::new(store_root);
    b.link(contents)?;
    Ok(b.finish())
}

/// A file of a package: where it is on disk, and its path in the store
/// (what links in the image point to).
struct Source {
    disk: PathBuf,
    image: String,
}

fn sorted_dir(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let mut v = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn pkg(root: &Path, name: &str, files: &[&str]) -> String {
        let dir = root.join(name);
        for f in files {
            let p = dir.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, name).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        dir.to_str().unwrap().to_string()
    }

    fn find<'a>(t: &'a RootTree, path: &str) -> Option<&'a TreeEntry> {
        t.entries.iter().find(|e| e.path() == path)
    }

    fn dir(path: &str, mode: u32) -> TreeEntry {
        TreeEntry::Dir { path: path.into(), mode, owner: Owner::default() }
    }

    #[test]
    fn joins_packages_and_reports_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        let a = pkg(tmp.path(), "a", &["bin/sh", "bin/env", "lib/liba.so", "nix-support/propagated"]);
        let b = pkg(tmp.path(), "b", &["bin/sh", "bin/hello", "share/doc/b"]);
        let tree = join(&[a.clone(), b.clone()], Path::new("/")).unwrap();
        assert_eq!(find(&tree, "bin"), Some(&dir("bin", 0o755)));
        assert_eq!(find(&tree, "bin/sh"), Some(&TreeEntry::Symlink { path: "bin/sh".into(), target: format!("{a}/bin/sh") }));
        assert_eq!(find(&tree, "bin/hello"), Some(&TreeEntry::Symlink { path: "bin/hello".into(), target: format!("{b}/bin/hello") }));
        assert_eq!(find(&tree, "usr/bin/env"), Some(&TreeEntry::Symlink { path: "usr/bin/env".into(), target: format!("{a}/bin/env") }));
        assert_eq!(find(&tree, "tmp"), Some(&dir("tmp", 0o1777)));
        assert!(find(&tree, "nix-support").is_none());
        assert_eq!(tree.warnings.len(), 1);
        assert!(tree.warnings[0].contains("/bin/sh"), "{:?}", tree.warnings);
        // The other order gives the other winner: the first listed wins.
        let tree = join(&[b.clone(), a], Path::new("/")).unwrap();
        assert_eq!(find(&tree, "bin/sh"), Some(&TreeEntry::Symlink { path: "bin/sh".into(), target: format!("{b}/bin/sh") }));
    }

    #[test]
    fn symlinks_in_packages_are_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        let a = pkg(tmp.path(), "a", &["lib/x"]);
        symlink("lib", Path::new(&a).join("lib64")).unwrap();
        let tree = join(std::slice::from_ref(&a), Path::new("/")).unwrap();
        assert_eq!(find(&tree, "lib64"), Some(&TreeEntry::Symlink { path: "lib64".into(), target: format!("{a}/lib64") }));
        assert!(find(&tree, "usr/bin/env").is_none());
    }

    #[test]
    fn empty_contents_still_give_tmp() {
        let tree = join(&[], Path::new("/")).unwrap();
        assert_eq!(tree.entries, vec![dir("tmp", 0o1777)]);
    }

    #[test]
    fn generated_files_win_over_copies_which_win_over_links() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let linked = pkg(tmp.path(), "linked", &["etc/passwd", "etc/motd", "bin/tool"]);
        let copied = pkg(tmp.path(), "copied", &["etc/motd", "etc/app.conf"]);
        fs::set_permissions(Path::new(&copied).join("etc/app.conf"), fs::Permissions::from_mode(0o444)).unwrap();
        symlink("app.conf", Path::new(&copied).join("etc/app.link")).unwrap();
        let mut b = RootBuilder::new(Path::new("/"));
        let app = Owner { uid: 1000, gid: 1000, uname: Some("app".into()), gname: Some("app".into()) };
        b.generated(
            TreeEntry::File { path: "etc/passwd".into(), mode: 0o644, owner: Owner::default(), data: FileData::bytes("root:x:0:0::/root:/bin/sh\n") },
            "users",
        );
        b.generated(TreeEntry::Dir { path: "home/app".into(), mode: 0o755, owner: app.clone() }, "users");
        b.copy(std::slice::from_ref(&copied)).unwrap();
        b.link(std::slice::from_ref(&linked)).unwrap();
        let tree = b.finish();
        assert!(matches!(find(&tree, "etc/passwd"), Some(TreeEntry::File { data: FileData::Bytes(_), .. })), "generated wins");
        assert_eq!(
            find(&tree, "etc/motd"),
            Some(&TreeEntry::File { path: "etc/motd".into(), mode: 0o644, owner: Owner::default(), data: FileData::Disk(format!("{copied}/etc/motd")) }),
            "a copy wins over a link"
        );
        assert!(matches!(find(&tree, "etc/app.conf"), Some(TreeEntry::File { mode: 0o444, .. })), "copies keep their mode");
        assert_eq!(find(&tree, "etc/app.link"), Some(&TreeEntry::Symlink { path: "etc/app.link".into(), target: "app.conf".into() }));
        assert_eq!(find(&tree, "bin/tool"), Some(&TreeEntry::Symlink { path: "bin/tool".into(), target: format!("{linked}/bin/tool") }));
        assert_eq!(find(&tree, "home"), Some(&dir("home", 0o755)), "parents of generated entries");
        assert_eq!(find(&tree, "home/app"), Some(&TreeEntry::Dir { path: "home/app".into(), mode: 0o755, owner: app }));
        assert_eq!(tree.warnings.len(), 2, "{:?}", tree.warnings);
        assert!(tree.warnings.iter().any(|w| w.contains("/etc/passwd") && w.contains("keeping users")), "{:?}", tree.warnings);
    }
}
