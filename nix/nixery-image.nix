# The registry shim as a container image, built by buildNixeryImage itself
# (as the original Nixery's build-registry-image.nix):
#
#   nix-build nix -A nixery-image      # nixpkgs from <nixpkgs>
#   nix build .#nixery-image           # the flake
#
# The image runs `nixery serve` as root with a Nix of its own: its store
# paths are registered in the image's Nix database, so that Nix knows it
# has them. It listens on 0.0.0.0:8080 and keeps layers in
# /var/lib/nixery unless told otherwise; everything else is configured
# with the usual variables (docs/shim.md), the package source first
# (NIXERY_CHANNEL, NIXERY_PKGS_REPO or NIXERY_PKGS_PATH).
#
# Nix inside builds without its sandbox and without build users: a
# container may rarely create namespaces. In a privileged pod, give
# NIX_CONFIG="sandbox = true" to turn the sandbox back on; NIX_CONFIG is
# read after the image's settings, so binary caches and remote builders
# are set there too.
{
  # A package set with `nix` and `cacert` (nixpkgs, or tests/pkgs here).
  pkgs,
  # The nixery helper: a derivation with bin/nixery, or a path to a
  # statically linked binary.
  helper,
  # git, for NIXERY_PKGS_REPO and Nix's fetchGit; null leaves it out.
  git ? pkgs.git or null,
  # More packages in the image (a shell to exec into, say).
  extraContents ? [ ],
  # The build machine's Nix system, when `helper` is a path and evaluation
  # is pure (see lib.nix).
  system ? null,
  tag ? "latest",
}:

let
  nixery = import ../lib.nix { inherit helper system; };
  exe =
    if builtins.isAttrs helper then "${helper}/bin/nixery"
    else if builtins.isPath helper then "${helper}"
    else "${/. + helper}";
  # Nix's settings in the image; NIX_CONFIG adds to them.
  nixConf = builtins.toFile "nix.conf" ''
    build-users-group =
    sandbox = false
    experimental-features = nix-command
  '';
in
nixery.buildNixeryImage {
  name = "nixery";
  inherit tag;
  contents = [ pkgs.nix pkgs.cacert ] ++ (if git == null then [ ] else [ git ]) ++ extraContents;
  initializeNixDatabase = true;
  config = {
    Entrypoint = [ exe "serve" ];
    Env = [
      "PATH=/bin"
      "NIX_USER_CONF_FILES=${nixConf}"
      "NIX_SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
      "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
      "HOME=/root"
      "USER=root"
      "NIXERY_BIND=0.0.0.0"
      "PORT=8080"
      "STORAGE_PATH=/var/lib/nixery"
    ];
    ExposedPorts = [ "8080/tcp" ];
    Volumes = [ "/var/lib/nixery" ];
    Labels = {
      "org.opencontainers.image.title" = "nixery";
      "org.opencontainers.image.description" = "A container registry that builds images from package names with Nix";
    };
  };
}
