# The image a CI job pushes: streamNixeryImage keeps no layer tarballs in
# the store (its output is a few KB: manifest, config, root layer and the
# store paths of each layer); `nixery push` packs the layers the registry
# lacks on the fly. `version` stands in for the commit being built: the
# app layer changes with it, the rest stays the same.
#
#   REGISTRY=127.0.0.1:5000 examples/ci-push.sh        # see there
{
  # The nixery helper: a path to the static binary, or the flake's package.
  helper,
  # The package set: the bundled test set, or nixpkgs.
  pkgs ? import ../tests/pkgs { },
  system ? null,
  version ? "1",
}:

let
  nixery = import ../lib.nix { inherit helper system; };
  # The application: what a CI job rebuilds on every commit.
  app = derivation {
    name = "ci-app-${version}";
    system = if system != null then system else builtins.currentSystem;
    builder = "${pkgs.busybox}/bin/sh";
    args = [ "-c" "mkdir -p $out/bin; printf '#!/bin/sh\\necho app version ${version}\\n' > $out/bin/app; chmod +x $out/bin/app" ];
  };
in
nixery.streamNixeryImage {
  name = "nixery-examples/ci-app";
  tag = "v${version}";
  contents = [ pkgs.busybox pkgs.jq app ];
  config.Cmd = [ "/bin/app" ];
}
