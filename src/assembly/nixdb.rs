//! A Nix database in the image (`initializeNixDatabase`): every store path
//! of the image registered as valid, with its NAR hash, size and
//! references, so that Nix run inside the container (a CI runner, a dev
//! image) knows its store, as `nix-store --load-db` would make it.
//!
//! ```text
//! /nix/var/nix/
//! ├── db/db.sqlite     ValidPaths and Refs (Nix's schema version 10)
//! ├── db/schema        "10"
//! ├── gcroots/
//! └── profiles/
//! ```
//!
//! The database is written with the bundled SQLite in one transaction, in
//! store-path order with registration time 1, so the same closure gives
//! the same bytes.

use std::path::Path;

use crate::graph::ClosureGraph;
use crate::packing::{FileData, Owner, TreeEntry};

/// The schema version Nix 2.0 and later write (`nixSchemaVersion`).
pub const SCHEMA_VERSION: &str = "10";

/// Nix's tables, as `src/libstore/schema.sql` creates them.
const SCHEMA: &str = "
create table ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index IndexReferrer on Refs(referrer);
create index IndexReference on Refs(reference);
create trigger DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index IndexDerivationOutputs on DerivationOutputs(path);
";

/// Errors writing the database.
#[derive(Debug, thiserror::Error)]
pub enum NixDbError {
    /// Nix did not export the path's NAR hash (exportReferencesGraph
    /// always does; a hand-written graph may not).
    #[error("{0} has no NAR hash in the closure graph")]
    NoHash(String),
    /// SQLite failed.
    #[error("writing the Nix database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The temporary database file cannot be read back.
    #[error("reading the Nix database back: {0}")]
    Io(#[from] std::io::Error),
}

/// The database registering every path of `graph`, as SQLite file bytes.
/// `scratch` is a directory to write it in first.
pub fn database(graph: &ClosureGraph, scratch: &Path) -> Result<Vec<u8>, NixDbError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let file = scratch.join(format!(".nixery-db-{}-{}.sqlite", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut db = rusqlite::Connection::open(&file)?;
        // One file, no journal left behind, fixed page size: the bytes
        // depend only on what is inserted.
        db.execute_batch("pragma journal_mode = delete; pragma page_size = 4096;")?;
        let tx = db.transaction()?;
        tx.execute_batch(SCHEMA)?;
        {
            let mut add = tx.prepare("insert into ValidPaths (path, hash, registrationTime, narSize) values (?1, ?2, 1, ?3)")?;
            for (path, info) in &graph.paths {
                let hash = info.nar_hash.as_deref().ok_or_else(|| NixDbError::NoHash(path.clone()))?;
                add.execute(rusqlite::params![path, hash, info.nar_size as i64])?;
            }
            let mut link =
                tx.prepare("insert into Refs (referrer, reference) select a.id, b.id from ValidPaths a, ValidPaths b where a.path = ?1 and b.path = ?2")?;
            for (path, info) in &graph.paths {
                for r in &info.references {
                    link.execute(rusqlite::params![path, r])?;
                }
            }
        }
        tx.commit()?;
        db.close().map_err(|(_, e)| e)?;
        Ok(std::fs::read(&file)?)
    })();
    let _ = std::fs::remove_file(&file);
    result
}

/// The image root's entries for a Nix database of `graph`, owned by
/// `owner` (who runs Nix in the container).
pub fn entries(graph: &ClosureGraph, owner: &Owner, scratch: &Path) -> Result<Vec<TreeEntry>, NixDbError> {
    let bytes = database(graph, scratch)?;
    let dir = |path: &str| TreeEntry::Dir { path: path.into(), mode: 0o755, owner: owner.clone() };
    let file = |path: &str, data: FileData| TreeEntry::File { path: path.into(), mode: 0o644, owner: owner.clone(), data };
    let mut entries = vec![
        dir("nix/var"),
        dir("nix/var/nix"),
        dir("nix/var/nix/db"),
        file("nix/var/nix/db/db.sqlite", FileData::bytes(bytes)),
        file("nix/var/nix/db/schema", FileData::bytes(SCHEMA_VERSION)),
        dir("nix/var/nix/gcroots"),
        dir("nix/var/nix/profiles"),
    ];
    if owner != &Owner::default() {
        // A user other than root runs Nix: it must write the store.
        entries.push(dir("nix"));
        entries.push(dir("nix/store"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::sp;
    use crate::graph::PathInfo;

    fn graph() -> ClosureGraph {
        let info = |n: &str, refs: &[&str]| PathInfo {
            path: sp(n),
            nar_size: 100,
            closure_size: 0,
            references: refs.iter().map(|r| sp(r)).collect(),
            nar_hash: Some(format!("sha256:{}", "0".repeat(52))),
        };
        ClosureGraph::new(vec![info("app", &["app", "lib"]), info("lib", &[])], Some(vec![sp("app")])).unwrap()
    }

    #[test]
    fn every_path_is_registered_with_its_references_and_the_bytes_are_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let a = database(&graph(), tmp.path()).unwrap();
        let b = database(&graph(), tmp.path()).unwrap();
        assert_eq!(a, b, "the same closure gives the same bytes");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing left behind");
        let f = tmp.path().join("check.sqlite");
        std::fs::write(&f, &a).unwrap();
        let db = rusqlite::Connection::open(&f).unwrap();
        let n: i64 = db.query_row("select count(*) from ValidPaths", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        let refs: Vec<(String, String)> = db
            .prepare("select a.path, b.path from Refs join ValidPaths a on a.id = referrer join ValidPaths b on b.id = reference order by 1, 2")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut want = vec![(sp("app"), sp("app")), (sp("app"), sp("lib"))];
        want.sort();
        assert_eq!(refs, want);
    }

    #[test]
    fn a_path_without_a_hash_is_an_error() {
        let mut g = graph();
        g.paths.values_mut().next().unwrap().nar_hash = None;
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(database(&g, tmp.path()), Err(NixDbError::NoHash(_))));
    }
}
