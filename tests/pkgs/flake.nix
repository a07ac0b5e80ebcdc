# tests/pkgs as a flake: the stand-in for nixpkgs that nixery's own flake is
# tested with (`--override-input nixpkgs path:tests/pkgs`). It has what the
# flake takes from nixpkgs: `lib` (tests/pkgs/lib.nix) and, in
# `legacyPackages`, the packages, `callPackage`, `stdenv`'s platforms and a
# `rustPlatform` that builds as nixpkgs' does (tests/pkgs/rust.nix).
{
  description = "A stand-in for nixpkgs in nixery's tests";

  # This machine's files, since pure evaluation reads nothing outside the
  # store: tests/support/standin-host DIR assembles them, and the tests
  # give DIR with `--override-input nixpkgs/host path:DIR`.
  inputs.host = { url = "path:./host"; flake = false; };

  outputs = { self, host }: {
    lib = import ./lib.nix;
    legacyPackages.x86_64-linux = import ./. { system = "x86_64-linux"; hostRoot = "${host}"; };
  };
}
