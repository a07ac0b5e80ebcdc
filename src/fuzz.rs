//! The properties the fuzz targets check, on everything a client sends
//! before the image service sees it: image names, references and digests,
//! `Range` headers, and request routing. The targets under `fuzz/` (run
//! with `cargo +nightly fuzz run TARGET`, or `scripts/fuzz`) call these
//! functions; ordinary tests replay the saved corpus, so a finding stays
//! fixed, and run a bounded, deterministic mutation of it (half a million
//! inputs) on the stable toolchain, so every CI run fuzzes too.
//!
//! Each function panics when a property fails; on any input it must not
//! panic otherwise.

use axum::http::Method;

use crate::digest::Digest;
use crate::image_name::{is_digest_reference, parse_image_name, valid_repository_name, valid_tag, MetaPackages};
use crate::registry::blobs::{parse_range, RangeRequest};
use crate::registry::{classify, route, Refusal, Route};

/// Names, references, digests and ranges, from one string.
pub fn client_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();

    // A name the shim accepts asks for packages by attribute names only:
    // nothing that Nix could read as code, nothing that leaves a path.
    if let Ok(request) = parse_image_name(s, &MetaPackages::default()) {
        assert!(valid_repository_name(s), "{s:?} parsed but is not a repository name");
        assert!(!request.packages.is_empty() || s.split('/').all(|c| c == "arm64"), "{s:?} asks for nothing");
        for p in &request.packages {
            assert!(!p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)), "{s:?} gave the package {p:?}");
            assert!(!p.split('.').any(|part| part.is_empty() || part == ".."), "{s:?} gave the package {p:?}");
        }
    }
    // A digest prints as it was written, and is a digest reference.
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        assert!(is_digest_reference(s));
        assert_eq!(d.hex().len(), 64);
    }
    if valid_tag(s) {
        assert!(s.len() <= 128 && !is_digest_reference(s), "{s:?}");
    }
    // A range lies inside the blob, whatever its size.
    for size in [0, 1, 2, 1000, u64::MAX] {
        match parse_range(Some(s), size) {
            RangeRequest::Partial { start, end } => assert!(start <= end && end < size, "{s:?} on {size} bytes: {start}-{end}"),
            RangeRequest::Full | RangeRequest::Unsatisfiable => {}
        }
    }
}

/// Routing: the first byte picks the method, the rest is the path.
pub fn request_routing(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else { return };
    const METHODS: [Method; 7] = [Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS];
    let method = &METHODS[m as usize % METHODS.len()];
    let text = String::from_utf8_lossy(rest);
    let path = text.as_ref();
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    match classify(method, path) {
        Ok(r) => {
            assert!(*method == Method::GET || *method == Method::HEAD, "{method} {path:?} was routed");
            let name = match r {
                Route::Manifest { name, reference } => {
                    assert_eq!(format!("{name}/manifests/{reference}"), rest);
                    name
                }
                Route::Blob { name, digest } => {
                    assert_eq!(format!("{name}/blobs/{digest}"), rest);
                    assert!(!rest.contains("/blobs/uploads"), "{path:?}");
                    name
                }
                Route::Referrers { name, digest } => {
                    assert_eq!(format!("{name}/referrers/{digest}"), rest);
                    name
                }
                Route::Tags { name } => {
                    assert_eq!(format!("{name}/tags/list"), rest);
                    name
                }
                Route::Unsupported => panic!("{path:?}: an unsupported route passed"),
            };
            assert!(valid_repository_name(name), "{path:?}: the name {name:?} passed");
        }
        Err(Refusal::Unsupported) => {
            let pull = *method == Method::GET || *method == Method::HEAD;
            assert!(!pull || route(rest) == Route::Unsupported, "{method} {path:?} refused as unsupported");
        }
        Err(Refusal::NameInvalid(name)) => {
            assert!(*method == Method::GET || *method == Method::HEAD, "{method} {path:?}: the name is checked before the method");
            assert!(!valid_repository_name(&name), "{name:?} refused");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The corpus of a target.
    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
    }

    /// A bounded mutation run on the stable toolchain, so CI fuzzes on
    /// every run (cargo-fuzz's coverage-guided runs need nightly and a
    /// 14-minute instrumented build: `scripts/fuzz`). Deterministic: the
    /// same inputs every time, so a failure reproduces.
    #[test]
    fn mutated_corpus_inputs_keep_the_properties() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        const INTERESTING: &[&[u8]] = &[
            b"/",
            b":",
            b".",
            b"-",
            b"_",
            b"..",
            b"sha256:",
            b"/manifests/",
            b"/blobs/",
            b"/tags/list",
            b"bytes=",
            b",",
            b"\0",
            b"\xff",
            b"%2F",
            b"arm64",
            b"shell",
        ];
        for (target, check) in [("client_input", super::client_input as fn(&[u8])), ("request_routing", super::request_routing)] {
            let seeds = corpus(target);
            for _ in 0..250_000 {
                let mut input = seeds[(next() as usize) % seeds.len()].clone();
                for _ in 0..1 + next() % 4 {
                    let at = if input.is_empty() { 0 } else { (next() as usize) % (input.len() + 1) };
                    match next() % 5 {
                        0 if !input.is_empty() => {
                            let i = at.min(input.len() - 1);
                            input[i] ^= 1 << (next() % 8);
                        }
                        1 if !input.is_empty() => {
                            input.remove(at.min(input.len() - 1));
                        }
                        2 => input.insert(at, next() as u8),
                        3 => {
                            let piece = INTERESTING[(next() as usize) % INTERESTING.len()];
                            input.splice(at..at, piece.iter().copied());
                        }
                        _ => {
                            let other = &seeds[(next() as usize) % seeds.len()];
                            input.truncate(at);
                            input.extend_from_slice(&other[other.len() / 2..]);
                        }
                    }
                }
                check(&input);
            }
        }
    }

    /// Every input saved under `fuzz/corpus/<target>/` (findings and the
    /// seeds) still holds.
    #[test]
    fn the_fuzz_corpus_replays() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut replayed = 0;
        for (target, check) in [("client_input", super::client_input as fn(&[u8])), ("request_routing", super::request_routing)] {
            let dir = corpus.join(target);
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                check(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed >= 20, "the corpus has its seeds: {replayed}");
    }
}
