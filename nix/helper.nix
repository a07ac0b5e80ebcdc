# The nixery helper, built with nixpkgs' rustPlatform. The flake's
# packages.default; pass it to lib.nix as `helper`.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "nixery";
  version = (lib.importTOML ../Cargo.toml).package.version;

  src = lib.cleanSourceWith {
    src = ../.;
    # The crate, the Nix files it embeds (include_str!), the Rust files of
    # its test and bench targets (Cargo refuses a manifest whose declared
    # targets are missing) and the fuzz corpus its unit tests replay.
    filter = path: type:
      let rel = lib.removePrefix (toString ../. + "/") (toString path);
      in rel == "Cargo.toml" || rel == "Cargo.lock" || rel == "src" || lib.hasPrefix "src/" rel
        || rel == "prepare-image" || rel == "prepare-image/default.nix" || rel == "prepare-image/package-meta.nix"
        || rel == "nix" || rel == "nix/top-level-outputs.nix"
        || rel == "benches" || lib.hasPrefix "benches/" rel
        || rel == "tests" || rel == "tests/support"
        || (lib.hasPrefix "tests/" rel && lib.hasSuffix ".rs" rel)
        || rel == "fuzz" || rel == "fuzz/corpus" || lib.hasPrefix "fuzz/corpus/" rel;
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The unit tests run here (tests/flake.rs runs this check phase in the
  # sandbox); the integration tests need nix-build, skopeo and podman,
  # which a sandboxed build does not have.
  cargoTestFlags = [ "--lib" ];

  meta = {
    description = "Container images from Nix: layering, reproducible packing and an on-demand registry";
    mainProgram = "nixery";
    license = lib.licenses.asl20;
    platforms = lib.platforms.linux;
  };
}
