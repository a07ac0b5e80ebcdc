//! Build provenance of an image, made inside its build: an in-toto
//! Statement v1 whose subject is the image's manifest and whose predicate
//! is SLSA Provenance v1: the build type (the library's function), its
//! parameters (name, tag, the packages asked for), every store path in the
//! image as a resolved dependency with its NAR hash, the derivations of the
//! packages the expression named, and the builder (this
//! helper, its version and store path). Deterministic like the image: no
//! wall-clock time, nothing of the build machine.
//!
//! What a build cannot know of itself is left out: its own derivation path
//! (a derivation cannot name itself) and the Nix version that ran it.
//!
//! The shim's images say the same with the shim as the builder, and the
//! package set's source and pinned revision among the parameters.

use serde_json::{json, Value};

use crate::sbom::{nar_hash_hex, ImageFacts};

/// File name of the statement, beside `index.json` in an image's output.
pub const PROVENANCE_FILE: &str = "provenance.intoto.json";
/// The in-toto statement type.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// The SLSA Provenance v1 predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// The build type: an image made by lib.nix's functions under nix-build.
pub const BUILD_TYPE: &str = "https://nixery.dev/buildtypes/nix-build-image/v1";
/// The build type of an image the shim built from its name.
pub const SHIM_BUILD_TYPE: &str = "https://nixery.dev/buildtypes/nixery-serve-image/v1";

/// Who built an image, and from what.
#[derive(Debug, Clone, Copy)]
pub enum Invocation<'a> {
    /// A library function inside nix-build, run by the helper at `helper`.
    Library {
        /// `buildNixeryImage` or `streamNixeryImage`.
        function: &'a str,
        /// The helper's store path.
        helper: &'a str,
    },
    /// The shim, from its package set.
    Shim {
        /// `channel`, `git` or `path`.
        source_type: &'a str,
        /// The package set's pinned revision (a commit, a tree hash).
        revision: &'a str,
    },
}

impl Invocation<'_> {
    fn build_type(&self) -> &'static str {
        match self {
            Invocation::Library { .. } => BUILD_TYPE,
            Invocation::Shim { .. } => SHIM_BUILD_TYPE,
        }
    }

    fn builder_id(&self) -> &'static str {
        match self {
            Invocation::Library { .. } => "https://nixery.dev/builders/nix-build",
            Invocation::Shim { .. } => "https://nixery.dev/builders/nixery-serve",
        }
    }
}

/// The statement for an image built by `helper` (its path in the store).
pub fn statement(facts: &ImageFacts, invocation: &Invocation) -> Value {
    let dependencies: Vec<Value> = facts
        .graph
        .paths
        .values()
        .map(|p| {
            let mut d = json!({ "uri": format!("nix-store:{}", p.path), "name": p.path.rsplit('/').next().unwrap_or(&p.path) });
            if let Some(h) = p.nar_hash.as_deref().and_then(nar_hash_hex) {
                d["digest"] = json!({ "sha256": h });
            }
            d
        })
        .chain(facts.base_layers.iter().map(|l| json!({ "uri": format!("oci-layer:{l}"), "digest": { "sha256": l.hex() } })))
        // The derivations of the packages the expression named.
        .chain(facts.meta.iter().filter_map(|m| {
            let drv = m.drv_path.as_deref()?;
            Some(json!({ "uri": format!("nix-store:{drv}"), "name": drv.rsplit('/').next().unwrap_or(drv) }))
        }))
        .collect();
    let mut external = json!({ "name": facts.name, "tag": facts.tag, "packages": facts.graph.roots });
    let builder_dependencies = match invocation {
        Invocation::Library { function, helper } => {
            external["function"] = json!(function);
            json!([{ "uri": format!("nix-store:{helper}"), "name": "nixery" }])
        }
        Invocation::Shim { source_type, revision } => {
            external["source"] = json!({ "type": source_type, "revision": revision });
            json!([])
        }
    };
    json!({
        "_type": STATEMENT_V1,
        "subject": [{ "name": facts.name, "digest": { "sha256": facts.manifest.hex() } }],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": invocation.build_type(),
                "externalParameters": external,
                "internalParameters": { "created": facts.created },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": invocation.builder_id(),
                    "version": { "nixery": env!("CARGO_PKG_VERSION") },
                    "builderDependencies": builder_dependencies,
                },
                "metadata": { "invocationId": format!("{}@{}", facts.name, facts.manifest) },
            },
        },
    })
}
