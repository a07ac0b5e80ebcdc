//! Packing tests, and the golden digests that pin nixery's output format.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// The store path of the golden fixture.
pub(crate) const GOLDEN_STORE_PATH: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-golden-1.0";

/// Writes the golden fixture under `root` (a chroot store): a program, a
/// symlink, a document, and 1.5 MiB of data so that gzip spans two chunks.
/// Modes are set explicitly, as the store has them.
pub(crate) fn golden_store(root: &Path) -> PathBuf {
    let p = root.join(GOLDEN_STORE_PATH.trim_start_matches('/'));
    for d in ["bin", "lib", "share/doc"] {
        fs::create_dir_all(p.join(d)).unwrap();
    }
    fs::write(p.join("bin/hello"), b"#!/bin/sh\necho hello from the golden fixture\n").unwrap();
    let mut x: u32 = 7;
    let data: Vec<u8> = (0..(3usize << 19))
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if (i / 8192) % 2 == 0 {
                (i % 13) as u8
            } else {
                (x >> 16) as u8
            }
        })
        .collect();
    fs::write(p.join("lib/data.bin"), data).unwrap();
    fs::write(p.join("share/doc/README"), b"The golden fixture of nixery's packing tests.\n").unwrap();
    std::os::unix::fs::symlink("bin/hello", p.join("hello")).unwrap();
    for (f, mode) in [("bin/hello", 0o555), ("lib/data.bin", 0o444), ("share/doc/README", 0o444)] {
        fs::set_permissions(p.join(f), fs::Permissions::from_mode(mode)).unwrap();
    }
    for d in ["bin", "lib", "share/doc", "share", ""] {
        fs::set_permissions(p.join(d), fs::Permissions::from_mode(0o555)).unwrap();
    }
    root.to_path_buf()
}

/// The golden fixture's store layer.
pub(crate) fn golden_store_layer(root: &Path) -> LayerContent {
    LayerContent { store_root: root.to_path_buf(), ..LayerContent::store_paths(vec![GOLDEN_STORE_PATH.to_string()]) }
}

/// A root layer for the golden fixture: links, /tmp, a generated file.
pub(crate) fn golden_root_layer() -> LayerContent {
    LayerContent::tree(vec![
        TreeEntry::Dir { path: "bin".into(), mode: 0o755, owner: Owner::default() },
        TreeEntry::Symlink { path: "bin/hello".into(), target: format!("{GOLDEN_STORE_PATH}/bin/hello") },
        TreeEntry::Dir { path: "etc".into(), mode: 0o755, owner: Owner::default() },
        TreeEntry::File { path: "etc/passwd".into(), mode: 0o644, owner: Owner::default(), data: FileData::bytes("root:x:0:0::/root:/bin/sh\n") },
        TreeEntry::Dir { path: "tmp".into(), mode: 0o1777, owner: Owner::default() },
    ])
}

/// Digests of the golden fixture, pinned per [`crate::FORMAT_VERSION`].
#[derive(Debug)]
pub(crate) struct Golden {
    pub gzip_layer: &'static str,
    pub gzip_diff_id: &'static str,
    pub zstd_layer: &'static str,
    pub root_layer: &'static str,
    pub config: &'static str,
    pub oci_manifest: &'static str,
    pub docker_manifest: &'static str,
}

/// Every format version's golden digests. A change to the bytes of any
/// layer, config or manifest must bump [`crate::FORMAT_VERSION`] (which
/// every cache key includes, so no cache serves bytes of the old format)
/// and pin the new digests here.
pub(crate) const GOLDEN: &[(u32, Golden)] = &[
    (
        2,
        Golden {
            gzip_layer: "sha256:9332a7b729f3f859b68a9f3e60dd35e05e922b6272a1846bee2f179fb0a6d432",
            gzip_diff_id: "sha256:6160952dc1c639d59476881980154fa541f1a39fa72afa200dd251279de5884a",
            zstd_layer: "sha256:c86d440d3c0e5a0092960e78454410a25ec1c1cebe977e2807cd4c4828c2dc45",
            root_layer: "sha256:c8af36a9d42c0fb920eecb0cca933ccafe31ec48754d1b4b6759e761c3abd222",
            config: "sha256:59f39a039ef56966552d22c4776e1391965f641105f8481b0d4671f07f12321b",
            oci_manifest: "sha256:477fbb0eff357c78394551e480ebedb7792120398b4c6a48ca369c2e2a12168a",
            docker_manifest: "sha256:a5aad96b432cb632c9ac4935eb88d0d2e00deba2444e38fca77bc2b94a01fc7d",
        },
    ),
    // Version 1: one gzip member of zlib-compressed chunks primed with the
    // previous chunk's window (before libdeflate).
    (
        1,
        Golden {
            gzip_layer: "sha256:55c91af29ecb1c3dbcadea4d3227aed131095b42bf81c420a50d0a8eb2eca5ac",
            gzip_diff_id: "sha256:6160952dc1c639d59476881980154fa541f1a39fa72afa200dd251279de5884a",
            zstd_layer: "sha256:c86d440d3c0e5a0092960e78454410a25ec1c1cebe977e2807cd4c4828c2dc45",
            root_layer: "sha256:5d9f88814c7ce3b1037d49ab5d756a2d404d0355221fed4ea8b99df4fd4fb028",
            config: "sha256:59f39a039ef56966552d22c4776e1391965f641105f8481b0d4671f07f12321b",
            oci_manifest: "sha256:f336c2fbeddfa3e8206e37c95036a305d121897ba2076b2c01ee89f05e517084",
            docker_manifest: "sha256:a26623233f55932840bc70a2613cb16bfda5d9d9d5ac3dd0b90a373692551cf5",
        },
    ),
];

/// The golden digests of the current format version.
pub(crate) fn golden() -> &'static Golden {
    &GOLDEN
        .iter()
        .find(|(v, _)| *v == crate::FORMAT_VERSION)
        .unwrap_or_else(|| panic!("no golden digests are pinned for FORMAT_VERSION {}: pin them in src/packing/tests.rs", crate::FORMAT_VERSION))
        .1
}

/// Fails, naming what changed, when `actual` is not the pinned digest.
/// With `NIXERY_PRINT_GOLDEN=1` it prints the digest instead, for pinning
/// a new format version (`NIXERY_PRINT_GOLDEN=1 cargo test golden -- --nocapture`).
pub(crate) fn check_golden(what: &str, actual: &crate::digest::Digest, pinned: &str) {
    if std::env::var_os("NIXERY_PRINT_GOLDEN").is_some() {
        eprintln!("golden {what}: {actual}");
        return;
    }
    assert!(
        actual.as_str() == pinned,
        "the golden fixture's {what} is now {actual}, but {pinned} is pinned for FORMAT_VERSION {v}: \
         the bytes nixery writes changed. If that is intended, bump nixery::FORMAT_VERSION \
         (so that no cache serves layers of the old format) and pin the new digests in src/packing/tests.rs (NIXERY_PRINT_GOLDEN=1 prints them).",
        v = crate::FORMAT_VERSION
    );
}

#[test]
fn golden_layers_have_their_pinned_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let root = golden_store(tmp.path());
    let g = golden();
    let gzip = pack_to_sink(&golden_store_layer(&root), PackOptions::default()).unwrap();
    check_golden("gzip layer", &gzip.digest, g.gzip_layer);
    check_golden("layer diff_id (the tar stream)", &gzip.diff_id, g.gzip_diff_id);
    let zstd = pack_to_sink(&golden_store_layer(&root), PackOptions::new(Compression::Zstd, None).unwrap()).unwrap();
    check_golden("zstd layer", &zstd.digest, g.zstd_layer);
    assert_eq!(zstd.diff_id, gzip.diff_id, "the same tar under either compression");
    let root_layer = pack_to_sink(&golden_root_layer(), PackOptions::default()).unwrap();
    check_golden("root layer", &root_layer.digest, g.root_layer);
}

#[test]
fn packing_is_reproducible_and_hashes_match_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = golden_store(tmp.path());
    let content = golden_store_layer(&root);
    let a = pack_to_file(&content, &tmp.path().join("a.tgz"), PackOptions::default()).unwrap();
    let b = pack_to_file(&content, &tmp.path().join("b.tgz"), PackOptions::default()).unwrap();
    assert_eq!(a, b);
    assert_eq!(pack_to_sink(&content, PackOptions::default()).unwrap(), a, "digests without writing anything");
    let blob = fs::read(tmp.path().join("a.tgz")).unwrap();
    assert_eq!(Digest::of(&blob), a.digest);
    assert_eq!(blob.len() as u64, a.size);
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut tar).unwrap();
    assert_eq!(Digest::of(&tar), a.diff_id);
    assert_eq!(tar.len() as u64, a.tar_size);
}

#[test]
fn zstd_layers_round_trip_and_do_not_depend_on_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let root = golden_store(tmp.path());
    let content = golden_store_layer(&root);
    let opts = PackOptions::new(Compression::Zstd, None).unwrap();
    let with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| pack_to_writer(&content, Vec::new(), opts, Path::new("mem")).unwrap())
    };
    let (one, p1) = with(1);
    let (three, p3) = with(3);
    assert_eq!(one, three);
    assert_eq!(p1, p3);
    assert_eq!(p1.compression, Compression::Zstd);
    let tar = zstd::stream::decode_all(&one[..]).unwrap();
    assert_eq!(Digest::of(&tar), p1.diff_id);
    assert_eq!(Digest::of(&one), p1.digest);
}

#[test]
fn pack_to_dir_names_blobs_by_digest_and_leaves_no_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    let a = pack_to_dir(&golden_root_layer(), &blobs, PackOptions::default()).unwrap();
    let b = pack_to_dir(&LayerContent::tree(vec![TreeEntry::Dir { path: "etc".into(), mode: 0o755, owner: Owner::default() }]), &blobs, PackOptions::default())
        .unwrap();
    for p in [&a, &b] {
        assert_eq!(Digest::of(&fs::read(blobs.join(p.digest.hex())).unwrap()), p.digest);
    }
    assert_eq!(fs::read_dir(&blobs).unwrap().count(), 2);
}

#[test]
fn levels_out_of_range_are_errors_not_clamped() {
    assert!(PackOptions::new(Compression::Gzip, Some(13)).is_err());
    assert!(PackOptions::new(Compression::Zstd, Some(0)).is_err());
    assert!(PackOptions::new(Compression::Zstd, Some(20)).is_err());
    let e = PackOptions::new(Compression::Gzip, Some(13)).unwrap_err().to_string();
    assert_eq!(e, "compression level 13 is out of range for gzip (0 to 12)");
    assert_eq!(PackOptions::new(Compression::Gzip, None).unwrap(), PackOptions::default());
    assert_eq!(PackOptions::new(Compression::Zstd, None).unwrap().level, DEFAULT_ZSTD_LEVEL);
}

#[test]
fn keys_name_exactly_what_decides_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = golden_store(tmp.path());
    let opts = PackOptions::default();
    let a = LayerContent::store_paths(vec!["/nix/store/b".into(), "/nix/store/a".into()]);
    let b = LayerContent { store_root: root, ..LayerContent::store_paths(vec!["/nix/store/a".into(), "/nix/store/b".into(), "/nix/store/a".into()]) };
    assert_eq!(a.key(opts), b.key(opts), "order, repetition and the store's location do not matter");
    assert_ne!(a.key(opts), a.key(PackOptions::new(Compression::Gzip, Some(6)).unwrap()));
    assert_ne!(a.key(opts), a.key(PackOptions::new(Compression::Zstd, None).unwrap()));
    let ruled =
        LayerContent { perms: vec![PermRule { path: "/nix/store/a".into(), regex: ".*".into(), mode: Some(0o700), ..Default::default() }], ..a.clone() };
    assert_ne!(a.key(opts), ruled.key(opts));
    let root_layer = golden_root_layer();
    let mut reordered = root_layer.clone();
    reordered.entries.reverse();
    assert_eq!(root_layer.key(opts), reordered.key(opts));
    let mut changed = root_layer.clone();
    changed.entries[3] = TreeEntry::File { path: "etc/passwd".into(), mode: 0o644, owner: Owner::default(), data: FileData::bytes("other\n") };
    assert_ne!(root_layer.key(opts), changed.key(opts), "a file's bytes are part of the key");
    assert_eq!(a.key(opts).as_str().len(), 64);
}

#[test]
fn a_failed_write_names_the_blob() {
    #[derive(Debug)]
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = golden_store(tmp.path());
    for opts in [PackOptions::default(), PackOptions::new(Compression::Zstd, None).unwrap()] {
        let e = pack_to_writer(&golden_store_layer(&root), Full, opts, Path::new("/storage/blob")).unwrap_err();
        assert!(matches!(&e, PackError::Io { path, .. } if path == Path::new("/storage/blob")), "{e}");
    }
    let missing = LayerContent::store_paths(vec!["/nix/store/0123456789abcdfghijklmnpqrsvwxyz-missing".into()]);
    let e = pack_to_sink(&LayerContent { store_root: tmp.path().to_path_buf(), ..missing }, PackOptions::default()).unwrap_err();
    assert!(e.to_string().contains("-missing"), "a missing source is named: {e}");
}
