//! The tar stream of a layer: which entries, in which order, with which
//! headers.
//!
//! - Entries are written depth first with each directory's children
//!   sorted by name (byte order, component by component), after the
//!   parent directories `nix/` and `nix/store/` of store paths.
//! - Every header is GNU format with mtime [`ENTRY_MTIME`], the permission
//!   bits of the file (`mode & 0o7777`), uid and gid 0 and no user or group
//!   names, unless an entry or a permission rule declares an owner.
//! - Hard links are not recorded: a file hard-linked elsewhere (as
//!   `nix-store --optimise` makes them) is written in full, so a layer does
//!   not depend on whether the store it came from was optimised.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{FileData, LayerContent, Owner, PackError, PermRule, TreeEntry};

/// The fixed modification time of every entry (1 second after the epoch,
/// as Nix uses for store paths).
pub const ENTRY_MTIME: u64 = 1;

/// A deterministic tar header: GNU format, mtime [`ENTRY_MTIME`], the
/// permission bits of `mode`, owned by `owner`.
pub fn tar_header(kind: tar::EntryType, mode: u32, size: u64, owner: &Owner) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(owner.uid.into());
    h.set_gid(owner.gid.into());
    // Names fit the GNU header's 32 bytes: PermRule and Owner check them.
    if let Some(u) = &owner.uname {
        let _ = h.set_username(u);
    }
    if let Some(g) = &owner.gname {
        let _ = h.set_groupname(g);
    }
    h.set_mtime(ENTRY_MTIME);
    h.set_size(size);
    h
}

/// Orders paths as a sorted depth-first walk does: component by component,
/// so `a/b` comes before `a.c` and right after `a`.
pub fn tar_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// One item of a layer, at its path in the image (no leading slash).
enum Item<'a> {
    /// A directory the layer needs as a parent (`nix`, `nix/store`).
    Parent(&'a str),
    /// A store path, written with everything below it.
    StorePath(&'a str),
    /// A synthetic entry.
    Entry(&'a TreeEntry),
}

impl Item<'_> {
    fn path(&self) -> &str {
        match self {
            Item::Parent(p) => p,
            Item::StorePath(p) => p.trim_start_matches('/'),
            Item::Entry(e) => e.path(),
        }
    }
}

/// Permission rules compiled for one layer.
struct Rules<'a> {
    rules: Vec<(&'a PermRule, regex::Regex)>,
}

impl<'a> Rules<'a> {
    fn compile(perms: &'a [PermRule]) -> Result<Rules<'a>, PackError> {
        let rules = perms
            .iter()
            .map(|r| regex::Regex::new(&r.regex).map(|re| (r, re)).map_err(|e| PackError::Perms(format!("regex {:?}: {e}", r.regex))))
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    /// The mode and owner of the entry at `image_path` (absolute, e.g.
    /// `/nix/store/…-app/bin/app`) whose source is `source`, starting from
    /// what it has on disk or was declared with. Later rules win.
    fn apply(&self, source: Option<&str>, image_path: &str, mut mode: u32, mut owner: Owner) -> (u32, Owner) {
        for (rule, re) in &self.rules {
            let under = |p: &str| p == rule.path || p.strip_prefix(rule.path.as_str()).is_some_and(|rest| rest.starts_with('/'));
            if !(under(image_path) || source.is_some_and(under)) || !re.is_match(image_path) {
                continue;
            }
            if let Some(m) = rule.mode {
                mode = (mode & !0o7777) | (m & 0o7777);
            }
            rule.owner.apply_to(&mut owner);
        }
        (mode, owner)
    }
}

/// Writes the uncompressed tar of `content` to `out`.
pub fn write_tar<W: Write>(content: &LayerContent, out: W) -> Result<W, PackError> {
    let rules = Rules::compile(&content.perms)?;
    let mut items: Vec<Item> = Vec::new();
    let mut store_paths: Vec<&str> = content.store_paths.iter().map(String::as_str).collect();
    store_paths.sort_unstable();
    store_paths.dedup();
    if !store_paths.is_empty() {
        for parent in ["nix", "nix/store"] {
            if !content.entries.iter().any(|e| e.path() == parent) {
                items.push(Item::Parent(parent));
            }
        }
    }
    items.extend(store_paths.iter().map(|p| Item::StorePath(p)));
    items.extend(content.entries.iter().map(Item::Entry));
    items.sort_by(|a, b| tar_order(a.path(), b.path()));
    for w in items.windows(2) {
        let (a, b) = (w[0].path(), w[1].path());
        let inside_store_path = matches!(w[0], Item::StorePath(_)) && b.strip_prefix(a).is_some_and(|r| r.starts_with('/'));
        if a == b || inside_store_path {
            return Err(PackError::Conflict(format!("/{b}")));
        }
    }

    let mut tar = tar::Builder::new(out);
    let root = &content.store_root;
    let mut buf = ReadBuffer::default();
    for item in items {
        match item {
            Item::Parent(p) => {
                let (mode, owner) = rules.apply(None, &format!("/{p}"), 0o755, Owner::default());
                let mut h = tar_header(tar::EntryType::Directory, mode, 0, &owner);
                tar.append_data(&mut h, p, io::empty()).map_err(PackError::io(p))?;
            }
            Item::StorePath(p) => {
                let source = root.join(p.trim_start_matches('/'));
                write_tree(&mut tar, &source, p, &rules, &mut buf)?;
            }
            Item::Entry(e) => write_entry(&mut tar, e, &rules, &mut buf)?,
        }
    }
    tar.into_inner().map_err(PackError::io("<tar>"))
}

fn write_entry<W: Write>(tar: &mut tar::Builder<W>, e: &TreeEntry, rules: &Rules, buf: &mut ReadBuffer) -> Result<(), PackError> {
    let image_path = format!("/{}", e.path());
    match e {
        TreeEntry::Dir { path, mode, owner } => {
            let (mode, owner) = rules.apply(None, &image_path, *mode, owner.clone());
            let mut h = tar_header(tar::EntryType::Directory, mode, 0, &owner);
            tar.append_data(&mut h, path, io::empty()).map_err(PackError::io(path))
        }
        TreeEntry::Symlink { path, target } => {
            let mut h = tar_header(tar::EntryType::Symlink, 0o777, 0, &Owner::default());
            tar.append_link(&mut h, path, target).map_err(PackError::io(path))
        }
        TreeEntry::File { path, mode, owner, data } => match data {
            FileData::Bytes(bytes) => {
                let (mode, owner) = rules.apply(None, &image_path, *mode, owner.clone());
                let mut h = tar_header(tar::EntryType::Regular, mode, bytes.len() as u64, &owner);
                tar.append_data(&mut h, path, &bytes[..]).map_err(PackError::io(path))
            }
            FileData::Disk(source) => {
                let (mode, owner) = rules.apply(Some(source), &image_path, *mode, owner.clone());
                let f = File::open(source).map_err(PackError::io(source))?;
                let len = f.metadata().map_err(PackError::io(source))?.len();
                let mut h = tar_header(tar::EntryType::Regular, mode, len, &owner);
                tar.append_data(&mut h, path, buf.body(f, len)).map_err(PackError::io(source))
            }
        },
    }
}

/// Writes `source` (a file, directory or symlink on disk) and, for a
/// directory, everything below it, under the image path `name` (absolute).
fn write_tree<W: Write>(tar: &mut tar::Builder<W>, source: &Path, name: &str, rules: &Rules, buf: &mut ReadBuffer) -> Result<(), PackError> {
    let walk = walkdir::WalkDir::new(source).follow_links(false).follow_root_links(false).sort_by(|a, b| a.file_name().cmp(b.file_name()));
    for entry in walk {
        let entry = entry.map_err(|e| PackError::Walk(source.to_path_buf(), e))?;
        let path = entry.path();
        let rel = path.strip_prefix(source).expect("walkdir stays below its root");
        let image_path = if rel.as_os_str().is_empty() {
            name.to_string()
        } else {
            format!("{name}/{}", rel.to_str().ok_or_else(|| PackError::NotUtf8(path.to_path_buf()))?)
        };
        let tar_path = image_path.trim_start_matches('/');
        let meta = entry.metadata().map_err(|e| PackError::Walk(path.to_path_buf(), e))?;
        let ft = meta.file_type();
        let (mode, owner) = rules.apply(None, &image_path, meta.mode(), Owner::default());
        if ft.is_dir() {
            let mut h = tar_header(tar::EntryType::Directory, mode, 0, &owner);
            tar.append_data(&mut h, tar_path, io::empty()).map_err(PackError::io(path))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(PackError::io(path))?;
            let mut h = tar_header(tar::EntryType::Symlink, 0o777, 0, &owner);
            tar.append_link(&mut h, tar_path, &target).map_err(PackError::io(path))?;
        } else if ft.is_file() {
            let f = File::open(path).map_err(PackError::io(path))?;
            let mut h = tar_header(tar::EntryType::Regular, mode, meta.len(), &owner);
            tar.append_data(&mut h, tar_path, buf.body(f, meta.len())).map_err(PackError::io(path))?;
        } else {
            return Err(PackError::UnsupportedFileType(path.to_path_buf()));
        }
    }
    Ok(())
}

/// The size of one read from a source file. The tar writer takes data in
/// small pieces; reading in large ones makes a few system calls per file
/// rather than one per 8 KiB (and one for a small file, not two).
const READ_SIZE: usize = 256 * 1024;

/// One buffer for reading source files, reused for every file of a layer.
#[derive(Default)]
struct ReadBuffer {
    bytes: Vec<u8>,
}

impl ReadBuffer {
    /// The `len` bytes of `file`, as its tar header declared them.
    fn body(&mut self, file: File, len: u64) -> FileBody<'_> {
        if self.bytes.is_empty() {
            self.bytes = vec![0; READ_SIZE];
        }
        FileBody { file, left: len, buf: &mut self.bytes, start: 0, end: 0 }
    }
}

/// Exactly the bytes a header declared: a file that has shrunk since its
/// size was read is an error rather than a tar stream out of step with its
/// headers; a file that has grown is read to its declared size.
struct FileBody<'a> {
    file: File,
    left: u64,
    buf: &'a mut Vec<u8>,
    start: usize,
    end: usize,
}

impl io::Read for FileBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if self.left == 0 {
                return Ok(0);
            }
            let want = self.buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
            let n = loop {
                match self.file.read(&mut self.buf[..want]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the file shrank while it was packed ({} bytes missing)", self.left)));
            }
            self.left -= n as u64;
            (self.start, self.end) = (0, n);
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    pub(crate) fn tree_fixture(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("share/doc")).unwrap();
        fs::write(dir.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
        fs::set_permissions(dir.join("bin/hello"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::write(dir.join("share/doc/README"), b"read me").unwrap();
        fs::write(dir.join("a.txt"), vec![b'x'; 10_000]).unwrap();
        std::os::unix::fs::symlink("bin/hello", dir.join("link")).unwrap();
        let long = "l".repeat(150);
        fs::write(dir.join(&long), b"long name").unwrap();
        std::os::unix::fs::symlink(format!("/some/where/{}", "t".repeat(120)), dir.join("longlink")).unwrap();
    }

    /// (path, type, mode, mtime, size, link target, uid, gid, uname)
    type Row = (String, tar::EntryType, u32, u64, u64, String, u64, u64, String);

    pub(crate) fn entries(tar_bytes: &[u8]) -> Vec<Row> {
        let mut ar = tar::Archive::new(tar_bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    body.len() as u64,
                    link,
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.username().unwrap().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// A store under a temporary root: `<root>/nix/store/<hash>-pkg`.
    fn store_with_fixture(tmp: &Path) -> (PathBuf, String) {
        let store_path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-pkg".to_string();
        tree_fixture(&tmp.join(store_path.trim_start_matches('/')));
        (tmp.to_path_buf(), store_path)
    }

    #[test]
    fn files_are_read_whole_and_a_file_that_shrank_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        // Larger than one read, and not a multiple of it.
        let big: Vec<u8> = (0..2 * READ_SIZE + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        let store_path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-big".to_string();
        let dir = tmp.path().join(store_path.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), &big).unwrap();
        fs::write(dir.join("small"), b"small").unwrap();
        let content = LayerContent { store_root: tmp.path().to_path_buf(), ..LayerContent::store_paths(vec![store_path.clone()]) };
        let bytes = write_tar(&content, Vec::new()).unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut bodies = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            bodies.push((e.path().unwrap().to_string_lossy().into_owned(), body));
        }
        assert!(bodies.contains(&(format!("{}/data", store_path.trim_start_matches('/')), big.clone())));
        assert!(bodies.contains(&(format!("{}/small", store_path.trim_start_matches('/')), b"small".to_vec())));

        // A header that declared more than the file holds.
        let mut buf = ReadBuffer::default();
        let f = File::open(dir.join("small")).unwrap();
        let err = io::copy(&mut buf.body(f, 9), &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("shrank"), "{err}");
        // A file that grew is read to its declared size.
        let f = File::open(dir.join("data")).unwrap();
        let mut out = Vec::new();
        io::copy(&mut buf.body(f, 1000), &mut out).unwrap();
        assert_eq!(out, big[..1000]);
    }

    #[test]
    fn store_paths_are_sorted_with_fixed_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, sp) = store_with_fixture(tmp.path());
        let content = LayerContent { store_root: root, ..LayerContent::store_paths(vec![sp.clone()]) };
        let es = entries(&write_tar(&content, Vec::new()).unwrap());
        let prefix = sp.trim_start_matches('/');
        let names: Vec<String> = es.iter().map(|e| e.0.clone()).collect();
        let mut want = vec!["nix".to_string(), "nix/store".to_string(), prefix.to_string()];
        for n in ["a.txt", "bin", "bin/hello", "link", &"l".repeat(150), "longlink", "share", "share/doc", "share/doc/README"] {
            want.push(format!("{prefix}/{n}"));
        }
        assert_eq!(names, want);
        for e in &es {
            assert_eq!((e.3, e.6, e.7, e.8.as_str()), (ENTRY_MTIME, 0, 0, ""), "{}", e.0);
        }
        let hello = es.iter().find(|e| e.0.ends_with("bin/hello")).unwrap();
        assert_eq!((hello.2, hello.4), (0o555, 21));
        let link = es.iter().find(|e| e.0.ends_with("/longlink")).unwrap();
        assert_eq!(link.1, tar::EntryType::Symlink);
        assert!(link.5.ends_with(&"t".repeat(120)));
    }

    #[test]
    fn a_store_path_that_is_a_symlink_stays_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("nix/store");
        let target = store.join("0123456789abcdfghijklmnpqrsvwxyz-target");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("big"), vec![0u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-target", store.join("1123456789abcdfghijklmnpqrsvwxyz-link")).unwrap();
        let content =
            LayerContent { store_root: tmp.path().to_path_buf(), ..LayerContent::store_paths(vec!["/nix/store/1123456789abcdfghijklmnpqrsvwxyz-link".into()]) };
        let es = entries(&write_tar(&content, Vec::new()).unwrap());
        assert_eq!(es.len(), 3, "nix, nix/store and the link itself: {es:?}");
        assert_eq!(es[2].1, tar::EntryType::Symlink);
        assert_eq!(es[2].5, "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-target");
    }

    #[test]
    fn hard_links_are_written_as_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, sp) = store_with_fixture(tmp.path());
        let content = LayerContent { store_root: root.clone(), ..LayerContent::store_paths(vec![sp.clone()]) };
        let before = write_tar(&content, Vec::new()).unwrap();
        fs::hard_link(root.join(sp.trim_start_matches('/')).join("a.txt"), tmp.path().join("elsewhere")).unwrap();
        assert_eq!(before, write_tar(&content, Vec::new()).unwrap());
    }

    #[test]
    fn tree_entries_are_sorted_like_a_walk_and_carry_owners() {
        let app = Owner { uid: 1000, gid: 100, uname: Some("app".into()), gname: Some("users".into()) };
        let content = LayerContent::tree(vec![
            TreeEntry::Symlink { path: "bin/sh".into(), target: "/nix/store/x/bin/sh".into() },
            TreeEntry::Dir { path: "bin.d".into(), mode: 0o755, owner: Owner::default() },
            TreeEntry::Dir { path: "tmp".into(), mode: 0o1777, owner: Owner::default() },
            TreeEntry::Dir { path: "bin".into(), mode: 0o755, owner: Owner::default() },
            TreeEntry::File { path: "home/app/.profile".into(), mode: 0o600, owner: app.clone(), data: FileData::bytes(b"x=1\n") },
        ]);
        let es = entries(&write_tar(&content, Vec::new()).unwrap());
        let names: Vec<&str> = es.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/sh", "bin.d", "home/app/.profile", "tmp"]);
        assert_eq!(es[4].2, 0o1777);
        assert_eq!((es[3].2, es[3].4, es[3].6, es[3].7, es[3].8.as_str()), (0o600, 4, 1000, 100, "app"));
    }

    #[test]
    fn permission_rules_set_modes_and_owners_of_matching_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, sp) = store_with_fixture(tmp.path());
        let rule = PermRule {
            path: sp.clone(),
            regex: "/bin(/.*)?$".into(),
            mode: Some(0o750),
            owner: super::super::OwnerRule { uid: Some(1000), gid: Some(1000), uname: Some("app".into()), gname: None },
        };
        let content = LayerContent { store_root: root, perms: vec![rule], ..LayerContent::store_paths(vec![sp.clone()]) };
        let es = entries(&write_tar(&content, Vec::new()).unwrap());
        let get = |suffix: &str| es.iter().find(|e| e.0.ends_with(suffix)).unwrap().clone();
        let bin = get("-pkg/bin");
        assert_eq!((bin.2, bin.6, bin.7, bin.8.as_str()), (0o750, 1000, 1000, "app"));
        let hello = get("bin/hello");
        assert_eq!((hello.2, hello.6), (0o750, 1000));
        let readme = get("share/doc/README");
        assert_eq!((readme.6, readme.8.as_str()), (0, ""), "files the regex does not match keep root");
        let bad = LayerContent { perms: vec![PermRule { regex: "(".into(), ..PermRule::default() }], ..LayerContent::default() };
        assert!(matches!(write_tar(&bad, Vec::new()), Err(PackError::Perms(_))));
    }

    #[test]
    fn conflicting_entries_are_an_error() {
        let dup = LayerContent::tree(vec![
            TreeEntry::Dir { path: "etc".into(), mode: 0o755, owner: Owner::default() },
            TreeEntry::Symlink { path: "etc".into(), target: "x".into() },
        ]);
        assert!(matches!(write_tar(&dup, Vec::new()), Err(PackError::Conflict(p)) if p == "/etc"));
        let tmp = tempfile::tempdir().unwrap();
        let (root, sp) = store_with_fixture(tmp.path());
        let mut inside = LayerContent { store_root: root, ..LayerContent::store_paths(vec![sp.clone()]) };
        inside.entries.push(TreeEntry::Symlink { path: format!("{}/extra", sp.trim_start_matches('/')), target: "x".into() });
        assert!(matches!(write_tar(&inside, Vec::new()), Err(PackError::Conflict(_))));
    }
}
