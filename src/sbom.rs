//! Software bills of materials of an image, made inside its build from
//! what the build knows exactly: every store path in the image's layers
//! (the closure graph Nix exported, with each path's NAR hash and
//! references), the packages the expression named with their `meta`
//! (passed by lib.nix as data), and the base image's layers. Two
//! documents, SPDX 2.3 JSON and CycloneDX 1.6 JSON, each deterministic:
//! no wall-clock time (the image's `created`), identifiers derived from the
//! image's manifest digest and the store paths, everything sorted.
//!
//! Names and versions are split from store path names as Nix's
//! `builtins.parseDrvName` does (the version begins at the first `-` not
//! followed by a letter). A package's purl is `pkg:generic/NAME@VERSION`
//! (there is no registered Nix purl type) with its NAR hash as checksum.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::graph::{ClosureGraph, PathInfo, STORE_DIR};

/// File names of the documents, beside `index.json` in an image's output.
pub const SPDX_FILE: &str = "sbom.spdx.json";
/// See [`SPDX_FILE`].
pub const CYCLONEDX_FILE: &str = "sbom.cdx.json";

pub use crate::graph::PackageMeta;

/// What the documents say of a base image's layer.
const BASE_LAYER_NOTE: &str = "a layer of the base image (fromImage), listed as what it is: its contents are not known to this build";

/// What the documents describe.
#[derive(Debug, Clone)]
pub struct ImageFacts<'a> {
    /// The image's name.
    pub name: &'a str,
    /// Its tag.
    pub tag: &'a str,
    /// Its creation time (RFC 3339): the documents' time.
    pub created: &'a str,
    /// Its manifest's digest.
    pub manifest: &'a Digest,
    /// The store paths in its layers.
    pub graph: &'a ClosureGraph,
    /// The meta of the packages the expression named.
    pub meta: &'a [PackageMeta],
    /// The base image's layers (`fromImage`), bottom first.
    pub base_layers: Vec<Digest>,
    /// Who supplies the image's packages (`sbomSupplier`: an
    /// organisation, as `NixOS` for nixpkgs'), when the expression says.
    pub supplier: Option<&'a str>,
}

pub use crate::graph::parse_name;

/// The hash part and name of a store path.
fn split_store_path(path: &str) -> (&str, &str) {
    let base = path.strip_prefix(STORE_DIR).and_then(|p| p.strip_prefix('/')).unwrap_or(path);
    base.split_once('-').unwrap_or((base, base))
}

/// A NAR hash as Nix writes it (`sha256:<nix32>`, or SRI `sha256-<base64>`)
/// in hexadecimal.
pub fn nar_hash_hex(hash: &str) -> Option<String> {
    use base64::Engine;
    let bytes = if let Some(b32) = hash.strip_prefix("sha256:") {
        nix32_decode(b32)?
    } else {
        base64::engine::general_purpose::STANDARD.decode(hash.strip_prefix("sha256-")?).ok()?
    };
    (bytes.len() == 32).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Decodes Nix's base32 (its own alphabet, least significant digit last).
fn nix32_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let len = s.len() * 5 / 8;
    let mut out = vec![0u8; len];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = ALPHABET.iter().position(|a| *a == c)? as u16;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let value = digit << j;
        *out.get_mut(i)? |= value as u8;
        if let Some(next) = out.get_mut(i + 1) {
            *next |= (value >> 8) as u8;
        } else if value >> 8 != 0 {
            return None;
        }
    }
    Some(out)
}

/// Percent-encodes a purl segment (what is not unreserved).
fn purl_segment(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// One store path, as both documents say it.
struct Component<'a> {
    info: &'a PathInfo,
    hash: &'a str,
    name: String,
    version: Option<String>,
    sha256: Option<String>,
    meta: Option<&'a PackageMeta>,
}

impl Component<'_> {
    fn purl(&self) -> String {
        let mut p = format!("pkg:generic/{}", purl_segment(&self.name));
        if let Some(v) = &self.version {
            p.push('@');
            p.push_str(&purl_segment(v));
        }
        if let Some(h) = &self.sha256 {
            p.push_str("?checksum=sha256:");
            p.push_str(h);
        }
        p
    }

    /// The other store paths it refers to, sorted, once each.
    fn references(&self) -> Vec<&String> {
        let mut refs: Vec<&String> = self.info.references.iter().filter(|r| **r != self.info.path).collect();
        refs.sort();
        refs.dedup();
        refs
    }

    fn spdx_id(&self) -> String {
        format!("SPDXRef-StorePath-{}", self.hash)
    }

    /// The license expression of its meta, when it has SPDX identifiers.
    fn license(&self) -> Option<String> {
        let ids = &self.meta?.licenses;
        let valid = |id: &String| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b));
        (!ids.is_empty() && ids.iter().all(valid)).then(|| ids.join(" AND "))
    }
}

fn components<'a>(facts: &'a ImageFacts<'a>) -> Vec<Component<'a>> {
    let meta: BTreeMap<&str, &PackageMeta> = facts.meta.iter().map(|m| (m.path.as_str(), m)).collect();
    facts
        .graph
        .paths
        .values()
        .map(|info| {
            let (hash, full) = split_store_path(&info.path);
            let meta = meta.get(info.path.as_str()).copied();
            let (name, version) = parse_name(full);
            let name = meta.and_then(|m| m.pname.clone()).unwrap_or_else(|| name.to_string());
            // A path whose name has no version (a script, a source) is
            // versioned by its store hash: what tells this build from
            // any other of the same name.
            let version = meta.and_then(|m| m.version.clone()).or_else(|| version.map(str::to_string)).or_else(|| Some(hash.to_string()));
            Component { info, hash, name, version, sha256: info.nar_hash.as_deref().and_then(nar_hash_hex), meta }
        })
        .collect()
}

/// The creation time as SPDX wants it (`YYYY-MM-DDThh:mm:ssZ`).
fn timestamp(created: &str) -> String {
    match humantime::parse_rfc3339_weak(created.trim_end_matches('Z')) {
        Ok(t) => humantime::format_rfc3339_seconds(t).to_string(),
        Err(_) => created.to_string(),
    }
}

fn tool() -> String {
    format!("nixery-{}", env!("CARGO_PKG_VERSION"))
}

/// An SPDX package with what nothing here asserts said so.
fn spdx_package(id: &str, name: &str, supplier: Option<&str>) -> Value {
    json!({
        "SPDXID": id,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "supplier": supplier.map_or_else(|| "NOASSERTION".to_string(), |s| format!("Organization: {s}")),
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })
}

/// The SPDX 2.3 document of the image.
pub fn spdx(facts: &ImageFacts) -> Value {
    let comps = components(facts);
    let image_id = "SPDXRef-Image";
    let mut image = spdx_package(image_id, facts.name, facts.supplier);
    image["versionInfo"] = json!(facts.tag);
    image["primaryPackagePurpose"] = json!("CONTAINER");
    image["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": facts.manifest.hex() }]);
    image["externalRefs"] = json!([{
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": format!("pkg:oci/{}@{}", purl_segment(facts.name.rsplit('/').next().unwrap_or(facts.name)), purl_segment(&facts.manifest.to_string())),
    }]);
    let mut packages = vec![image];
    let mut relationships = vec![json!({ "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id })];
    for c in &comps {
        let mut p = spdx_package(&c.spdx_id(), &c.name, facts.supplier);
        p["packageFileName"] = json!(c.info.path);
        p["licenseDeclared"] = json!(c.license().unwrap_or_else(|| "NOASSERTION".into()));
        p["externalRefs"] = json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": c.purl() }]);
        if let Some(v) = &c.version {
            p["versionInfo"] = json!(v);
        }
        if let Some(h) = &c.sha256 {
            p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": h }]);
        }
        if let Some(m) = c.meta {
            if let Some(h) = &m.homepage {
                p["homepage"] = json!(h);
            }
            if let Some(d) = &m.description {
                p["description"] = json!(d);
            }
        }
        packages.push(p);
        relationships.push(json!({ "spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": c.spdx_id() }));
        for r in c.references() {
            let (hash, _) = split_store_path(r);
            relationships
                .push(json!({ "spdxElementId": c.spdx_id(), "relationshipType": "DEPENDS_ON", "relatedSpdxElement": format!("SPDXRef-StorePath-{hash}") }));
        }
    }
    for root in &facts.graph.roots {
        let (hash, _) = split_store_path(root);
        relationships.push(json!({ "spdxElementId": image_id, "relationshipType": "DEPENDS_ON", "relatedSpdxElement": format!("SPDXRef-StorePath-{hash}") }));
    }
    for (i, layer) in facts.base_layers.iter().enumerate() {
        let id = format!("SPDXRef-BaseLayer-{i}");
        let mut p = spdx_package(&id, &format!("base image layer {layer}"), None);
        p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": layer.hex() }]);
        p["comment"] = json!(BASE_LAYER_NOTE);
        packages.push(p);
        relationships.push(json!({ "spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": id }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}:{}", facts.name, facts.tag),
        "documentNamespace": format!("https://nixery.dev/spdx/{}", facts.manifest.hex()),
        "creationInfo": { "created": timestamp(facts.created), "creators": [format!("Tool: {}", tool())] },
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    })
}

/// A UUID (version 5 style: SHA-256 based, marked as such) from a digest,
/// for CycloneDX's serial number.
fn uuid_from(digest: &Digest) -> String {
    let h = digest.hex();
    format!("{}-{}-5{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// The CycloneDX 1.6 document of the image.
pub fn cyclonedx(facts: &ImageFacts) -> Value {
    let comps = components(facts);
    let image_ref = format!("image@{}", facts.manifest);
    let mut components = Vec::new();
    let mut dependencies = Vec::new();
    let root_refs: Vec<String> = facts.graph.roots.iter().map(|r| facts.graph.paths.get(r).map(|i| i.path.clone()).unwrap_or_else(|| r.clone())).collect();
    for c in &comps {
        let mut comp = json!({
            "type": "library",
            "bom-ref": c.info.path,
            "name": c.name,
            "purl": c.purl(),
            "properties": [{ "name": "nix:store_path", "value": c.info.path }],
        });
        if let Some(v) = &c.version {
            comp["version"] = json!(v);
        }
        if let Some(s) = facts.supplier {
            comp["supplier"] = json!({ "name": s });
        }
        if let Some(h) = &c.sha256 {
            comp["hashes"] = json!([{ "alg": "SHA-256", "content": h }]);
        }
        if let Some(m) = c.meta {
            if let Some(l) = c.license() {
                comp["licenses"] = json!([{ "expression": l }]);
            }
            if let Some(h) = &m.homepage {
                comp["externalReferences"] = json!([{ "type": "website", "url": h }]);
            }
            if let Some(d) = &m.description {
                comp["description"] = json!(d);
            }
        }
        components.push(comp);
        dependencies.push(json!({ "ref": c.info.path, "dependsOn": c.references() }));
    }
    for layer in &facts.base_layers {
        components.push(json!({
            "type": "data",
            "bom-ref": format!("base-layer@{layer}"),
            "name": format!("base image layer {layer}"),
            "hashes": [{ "alg": "SHA-256", "content": layer.hex() }],
            "description": BASE_LAYER_NOTE,
        }));
    }
    dependencies.insert(0, json!({ "ref": image_ref, "dependsOn": root_refs }));
    let mut doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid_from(facts.manifest)),
        "version": 1,
        "metadata": {
            "timestamp": timestamp(facts.created),
            "tools": { "components": [{ "type": "application", "name": "nixery", "version": env!("CARGO_PKG_VERSION") }] },
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": facts.name,
                "version": facts.tag,
                "hashes": [{ "alg": "SHA-256", "content": facts.manifest.hex() }],
            },
        },
        "components": components,
        "dependencies": dependencies,
    });
    if let Some(s) = facts.supplier {
        doc["metadata"]["supplier"] = json!({ "name": s });
        doc["metadata"]["component"]["supplier"] = json!({ "name": s });
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_as_nix_parses_them() {
        assert_eq!(parse_name("hello-2.10"), ("hello", Some("2.10")));
        assert_eq!(parse_name("glibc-2.37-8"), ("glibc", Some("2.37-8")));
        assert_eq!(parse_name("bash-interactive-5.2-p15"), ("bash-interactive", Some("5.2-p15")));
        assert_eq!(parse_name("python3.11-requests-2.31.0"), ("python3.11-requests", Some("2.31.0")));
        assert_eq!(parse_name("source"), ("source", None));
        assert_eq!(parse_name("iana-etc-20230316"), ("iana-etc", Some("20230316")));
    }

    #[test]
    fn nar_hashes_in_both_of_nixs_spellings() {
        // The same hash, as `nix hash convert` gives it.
        let nix32 = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        let sri = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(nar_hash_hex(sri).as_deref(), Some(hex));
        assert_eq!(nar_hash_hex(nix32).as_deref(), Some(hex));
        assert_eq!(nar_hash_hex("sha256:not-base32"), None);
        assert_eq!(nar_hash_hex("md5:00"), None);
    }

    #[test]
    fn purls_encode_what_is_not_unreserved() {
        assert_eq!(purl_segment("gtk+3"), "gtk%2B3");
        assert_eq!(purl_segment("1.2_x-y~z"), "1.2_x-y~z");
    }
}
