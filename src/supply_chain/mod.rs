//! What an image carries beside its layers: the documents its build
//! writes (SBOMs and provenance), published as OCI 1.1 referrers, and
//! cosign's signatures and attestations of it.
//!
//! Everything here is made as plain manifests and blobs ([`Artifact`]),
//! with no idea of where they go: the library's build lists the referrers
//! in the image's layout, `nixery push` uploads the artifacts to a
//! registry, the shim stores and serves them, and `nixery verify` checks
//! what a registry holds against the same definitions.
//!
//! ```text
//! documents (sbom.rs, provenance.rs)
//!   ├─► referrers: artifact manifests, subject = the image     (referrers.rs)
//!   └─► signed with a key (key.rs) into cosign's layout      (cosign.rs)
//!         sha256-<hex>.sig  simple-signing payload, ECDSA P-256
//!         sha256-<hex>.att  one DSSE envelope per document
//! ```

pub mod cosign;
pub mod key;
pub mod referrers;

use crate::digest::Digest;

/// A document an image's build writes beside it, and how it is published:
/// as an OCI 1.1 referrer of `artifact_type`, and (signed) as cosign's
/// attestation of `predicate_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentKind {
    /// Its file, beside `index.json`.
    pub file: &'static str,
    /// The referrer's artifact type (and its blob's media type).
    pub artifact_type: &'static str,
    /// The predicate type cosign names its attestation by.
    pub predicate_type: &'static str,
    /// The file is a whole in-toto statement, whose predicate is attested
    /// (else the file is the predicate).
    pub is_statement: bool,
    /// What `--type` cosign's `verify-attestation` takes for it.
    pub cosign_type: &'static str,
}

/// The SBOMs and the provenance.
pub const DOCUMENTS: [DocumentKind; 3] = [
    DocumentKind {
        file: crate::sbom::SPDX_FILE,
        artifact_type: "application/spdx+json",
        predicate_type: "https://spdx.dev/Document",
        is_statement: false,
        cosign_type: "spdxjson",
    },
    DocumentKind {
        file: crate::sbom::CYCLONEDX_FILE,
        artifact_type: "application/vnd.cyclonedx+json",
        predicate_type: "https://cyclonedx.org/bom",
        is_statement: false,
        cosign_type: "cyclonedx",
    },
    DocumentKind {
        file: crate::provenance::PROVENANCE_FILE,
        artifact_type: "application/vnd.in-toto+json",
        predicate_type: crate::provenance::SLSA_PROVENANCE_V1,
        is_statement: true,
        cosign_type: "slsaprovenance1",
    },
];

/// An image's documents, each with its kind.
pub type Documents = Vec<(DocumentKind, Vec<u8>)>;

/// The documents of an image: its SBOMs and provenance, as the files
/// beside its layout hold them.
pub fn documents(facts: &crate::sbom::ImageFacts, invocation: &crate::provenance::Invocation) -> Documents {
    let json = |v: serde_json::Value| serde_json::to_vec_pretty(&v).expect("json");
    vec![
        (DOCUMENTS[0], json(crate::sbom::spdx(facts))),
        (DOCUMENTS[1], json(crate::sbom::cyclonedx(facts))),
        (DOCUMENTS[2], json(crate::provenance::statement(facts, invocation))),
    ]
}

/// A manifest and the blobs it needs, ready to be stored or uploaded
/// (blobs first, then the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// What it is (a referrer's `artifactType`), for the listings.
    pub artifact_type: Option<String>,
    /// Its config and layers.
    pub blobs: Vec<Blob>,
}

/// A blob of an [`Artifact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its digest.
    pub digest: Digest,
    /// Its media type, as its descriptor names it.
    pub media_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Blob {
    /// A blob of `bytes`.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob { digest: Digest::of(&bytes), media_type: media_type.to_string(), bytes }
    }
}

impl Artifact {
    /// Its descriptor as an index lists it (with `artifactType`).
    pub fn descriptor(&self) -> serde_json::Value {
        let mut d = serde_json::json!({ "mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.manifest.len() });
        if let Some(t) = &self.artifact_type {
            d["artifactType"] = t.as_str().into();
        }
        d
    }
}
