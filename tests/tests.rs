//! Integration tests: the `nixery` CLI contract, images built by nix-build
//! through `lib.nix`, and real clients (skopeo, podman, umoci, the
//! reference registry) consuming them.

mod support;

mod binary_cache;
mod cli;
mod clients;
mod deploy;
mod differential;
mod docs;
mod faults;
mod flake;
mod library;
mod multiarch;
mod nix_image;
mod push;
mod readme;
mod shim;
mod shim_safety;
mod storage;
mod worlds;
