//! The root layer: what makes an image of store paths usable.
//!
//! It holds what a symlink join of the content packages gives (as nixpkgs'
//! `symlinkJoin` and `lndir` make it): for each top-level folder of each
//! content package (`bin`, `lib`, `share`, `etc`, …) real directories at the
//! image root, and in them symlinks to the files in the store. On top it
//! adds `/tmp` (mode 1777) and `/usr/bin/env` when a package provides
//! `bin/env`.
//!
//! Conflicts are resolved deterministically: the package listed first in
//! `contents` wins, and every conflict is reported so the build log shows
//! it. This module computes the entries; [`crate::packing`] writes them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use crate::packing::{Owner, TreeEntry};

/// Top-level entries of a package that are never linked into the root.
const SKIPPED: &[&str] = &["nix-support"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    Link { target: String, package: String },
}

/// The planned root tree and what was skipped on the way.
#[derive(Debug, Clone, Default)]
pub struct RootTree {
    /// The entries, with paths relative to `/`.
    pub entries: Vec<TreeEntry>,
    /// Human-readable reports of conflicts and skipped contents.
    pub warnings: Vec<String>,
}

/// Joins the content packages (store paths, in the user's order), read
/// from the store under `store_root` (`/`, or a chroot store's root).
pub fn join(contents: &[String], store_root: &Path) -> io::Result<RootTree> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut warnings = Vec::new();
    for pkg in contents {
        let on_disk = store_root.join(pkg.trim_start_matches('/'));
        let meta = fs::symlink_metadata(&on_disk).map_err(|e| io::Error::new(e.kind(), format!("{pkg}: {e}")))?;
        if !meta.is_dir() {
            warnings.push(format!("{pkg} is not a directory, so nothing of it is linked into the image root"));
            continue;
        }
        for entry in sorted_dir(&on_disk)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if SKIPPED.contains(&name.as_str()) {
                continue;
            }
            let source = Source { disk: entry.path(), image: format!("{pkg}/{name}") };
            merge(&source, &name, pkg, &mut nodes, &mut warnings)?;
        }
    }
    // /usr/bin/env from the first package that provides bin/env.
    if let Some(Node::Link { target, package }) = nodes.get("bin/env").cloned() {
        if !nodes.contains_key("usr/bin/env") {
            for d in ["usr", "usr/bin"] {
                match nodes.get(d) {
                    None => {
                        nodes.insert(d.to_string(), Node::Dir);
                    }
                    Some(Node::Dir) => {}
                    Some(Node::Link { package: p, .. }) => {
                        warnings.push(format!("/{d} is a link from {p}, so /usr/bin/env is not added"));
                    }
                }
            }
            if matches!(nodes.get("usr/bin"), Some(Node::Dir)) && matches!(nodes.get("usr"), Some(Node::Dir)) {
                nodes.insert("usr/bin/env".to_string(), Node::Link { target, package });
            }
        }
    }
    let mut entries: Vec<TreeEntry> = nodes
        .into_iter()
        .filter(|(path, _)| path != "tmp")
        .map(|(path, node)| match node {
            Node::Dir => TreeEntry::Dir { path, mode: 0o755, owner: Owner::default() },
            Node::Link { target, .. } => TreeEntry::Symlink { path, target },
        })
        .collect();
    entries.push(TreeEntry::Dir { path: "tmp".to_string(), mode: 0o1777, owner: Owner::default() });
    Ok(RootTree { entries, warnings })
}

fn sorted_dir(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let mut v = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// A file of a content package: where it is on disk, and its store path
/// (what links in the image point to).
struct Source {
    disk: std::path::PathBuf,
    image: String,
}

fn merge(src: &Source, dst: &str, pkg: &str, nodes: &mut BTreeMap<String, Node>, warnings: &mut Vec<String>) -> io::Result<()> {
    let meta = fs::symlink_metadata(&src.disk)?;
    if dst == "tmp" {
        warnings.push(format!("{pkg} provides /tmp; the image's /tmp is an empty directory with mode 1777 instead"));
        return Ok(());
    }
    if meta.is_dir() {
        match nodes.get(dst) {
            None => {
                nodes.insert(dst.to_string(), Node::Dir);
            }
            Some(Node::Dir) => {}
            Some(Node::Link { package, .. }) => {
                warnings.push(format!("conflict at /{dst}: {package} provides a file, {pkg} a directory; keeping {package}'s"));
                return Ok(());
            }
        }
        for entry in sorted_dir(&src.disk)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = Source { disk: entry.path(), image: format!("{}/{name}", src.image) };
            merge(&child, &format!("{dst}/{name}"), pkg, nodes, warnings)?;
        }
    } else {
        let target = src.image.clone();
        match nodes.get(dst) {
            None => {
                nodes.insert(dst.to_string(), Node::Link { target, package: pkg.to_string() });
            }
            Some(Node::Dir) => {
                warnings.push(format!("conflict at /{dst}: an earlier package provides a directory, {pkg} a file; keeping the directory"));
            }
            Some(Node::Link { package, .. }) => {
                warnings.push(format!("conflict at /{dst}: provided by {package} and {pkg}; keeping {package}'s"));
            }
        }
    }
    Ok(())
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

    #[test]
    fn joins_packages_and_reports_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        let a = pkg(tmp.path(), "a", &["bin/sh", "bin/env", "lib/liba.so", "nix-support/propagated"]);
        let b = pkg(tmp.path(), "b", &["bin/sh", "bin/hello", "share/doc/b"]);
        let tree = join(&[a.clone(), b.clone()], Path::new("/")).unwrap();
        assert_eq!(find(&tree, "bin"), Some(&TreeEntry::Dir { path: "bin".into(), mode: 0o755, owner: Owner::default() }));
        assert_eq!(find(&tree, "bin/sh"), Some(&TreeEntry::Symlink { path: "bin/sh".into(), target: format!("{a}/bin/sh") }));
        assert_eq!(find(&tree, "bin/hello"), Some(&TreeEntry::Symlink { path: "bin/hello".into(), target: format!("{b}/bin/hello") }));
        assert_eq!(find(&tree, "usr/bin/env"), Some(&TreeEntry::Symlink { path: "usr/bin/env".into(), target: format!("{a}/bin/env") }));
        assert_eq!(find(&tree, "tmp"), Some(&TreeEntry::Dir { path: "tmp".into(), mode: 0o1777, owner: Owner::default() }));
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
        assert_eq!(tree.entries, vec![TreeEntry::Dir { path: "tmp".into(), mode: 0o1777, owner: Owner::default() }]);
    }
}
