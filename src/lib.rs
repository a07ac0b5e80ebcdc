//! nixery: container images from Nix.
//!
//! The data path reads top to bottom, one module per step; nothing further
//! down imports anything further up:
//!
//! ```text
//! graph       the closure of store paths and their references, popularity
//!   ↓
//! layering    which paths share a layer (a plan within a layer budget)
//!   ↓
//! packing     each layer as a reproducible gzip tar, hashed while written
//! root_layer  the symlink join of the contents that makes an image usable
//!   ↓
//! image       config, manifest, index; OCI layout and docker-archive
//!   ↓
//! builder     the whole path as `buildNixeryImage` runs it in nix-build
//! ```
//!
//! The registry shim (`nixery serve`) reuses that path:
//!
//! ```text
//! image_name  registry names, tags and digests; names to package lists
//! nix         source revisions; prepare-image under nix-build → graph
//! storage     blobs and caches behind one trait (filesystem, gcs, s3)
//! shim        name → graph → plan → packed layers → manifests, cached
//! registry    the pull-only distribution API over HTTP, start page
//! ```
//!
//! The same store paths always give the same layer bytes, whichever way an
//! image is built, so images share layers in registries and client caches.

#![deny(missing_debug_implementations)]

pub mod builder;
pub mod graph;
pub mod image;
pub mod image_name;
pub mod layering;
pub mod nix;
pub mod packing;
pub mod registry;
pub mod root_layer;
pub mod shim;
pub mod storage;
