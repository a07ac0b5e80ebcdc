//! What the local store knows, for `nixery popcount --package-set`: the
//! output paths of a package set's top-level packages, and the references
//! of everything in their closures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{run_sync, NixError};

/// Each store path's references.
pub type References = BTreeMap<String, Vec<String>>;

/// The references of `nix path-info --json` output: a list of `{path,
/// references}` (Nix before 2.19) or an object from path to
/// `{references}` (2.19 and later).
pub fn path_info_references(text: &str) -> Result<References, NixError> {
    #[derive(serde::Deserialize)]
    struct Info {
        path: Option<String>,
        #[serde(default)]
        references: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<Info>),
        Map(BTreeMap<String, Info>),
    }
    let unreadable = |detail: String| NixError::Output { what: "nix path-info --json".into(), detail };
    let doc: Doc = serde_json::from_str(text).map_err(|e| unreadable(format!("not its JSON: {e}")))?;
    match doc {
        Doc::List(v) => v.into_iter().map(|i| i.path.map(|p| (p, i.references)).ok_or_else(|| unreadable("an entry has no \"path\"".into()))).collect(),
        Doc::Map(m) => Ok(m.into_iter().map(|(p, i)| (p, i.references)).collect()),
    }
}

/// Lists a package set's top-level outputs, embedded like prepare-image.
pub const TOP_LEVEL_OUTPUTS_NIX: &str = include_str!("../../nix/top-level-outputs.nix");

/// The output paths of the top-level packages of the package set at
/// `dir`, evaluated for `system`.
pub fn top_level_outputs(dir: &Path, system: &str) -> Result<Vec<String>, NixError> {
    let tmp = std::env::temp_dir().join(format!("nixery-top-level-{}.nix", std::process::id()));
    std::fs::write(&tmp, TOP_LEVEL_OUTPUTS_NIX).map_err(|source| NixError::Io { path: tmp.clone(), source })?;
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
    serde_json::from_str(&out?).map_err(|e| NixError::Output { what: "nix-instantiate".into(), detail: e.to_string() })
}

/// The references of every path in the closure of the given store paths
/// that are valid in the local store (the closure from `nix-store --query
/// --requisites`, its references from one `nix-store --dump-db`). Returns
/// the references and the given paths that were not valid.
pub fn local_closure_references(paths: &[String]) -> Result<(References, Vec<String>), NixError> {
    let invalid_out = if paths.is_empty() {
        String::new()
    } else {
        // --print-invalid exits 0 and prints the invalid paths.
        run_sync(std::process::Command::new("nix-store").args(["--check-validity", "--print-invalid"]).args(paths), "nix-store --check-validity")?
    };
    let invalid: BTreeSet<&str> = invalid_out.lines().collect();
    let valid: Vec<&String> = paths.iter().filter(|p| !invalid.contains(p.as_str())).collect();
    let mut refs = BTreeMap::new();
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
fn parse_dump_db(dump: &str) -> Result<BTreeMap<String, Vec<String>>, NixError> {
    let bad = || NixError::Output { what: "nix-store --dump-db".into(), detail: "not registration records".into() };
    let mut lines = dump.lines();
    let mut refs = BTreeMap::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_db_records() {
        let dump = "/nix/store/a-x\nsha\n10\n\n0\n/nix/store/b-y\nsha\n20\n/nix/store/d-y.drv\n2\n/nix/store/a-x\n/nix/store/b-y\n";
        let refs = parse_dump_db(dump).unwrap();
        assert_eq!(refs["/nix/store/a-x"], Vec::<String>::new());
        assert_eq!(refs["/nix/store/b-y"], vec!["/nix/store/a-x", "/nix/store/b-y"]);
        assert!(parse_dump_db("/nix/store/a-x\nsha\n").is_err());
    }
}
