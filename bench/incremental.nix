# The image of the incremental-rebuild and push benchmarks (bench/incremental,
# bench/push): three
# large packages made of host files and one small package that changes with
# `version`. The large ones are copied from the host by their builders (an
# impure fixture, built once with the sandbox off by bench/incremental), and evaluated
# instantly, where builtins.path would hash 1.7 GB at every evaluation.
{ helper, version ? "0", incremental ? true, explicit ? false, nonce ? "", hostOnly ? false, stream ? false }:
let
  nixery = import ../lib.nix { inherit helper; };
  pkgs = import ../tests/pkgs { };
  host = name: path: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${pkgs.busybox}/bin/sh";
    args = [ "-c" "mkdir -p $out && cp -a ${path}/. $out/ || true" ];
  };
  changing = derivation {
    name = "changing-${version}";
    system = builtins.currentSystem;
    builder = "${pkgs.busybox}/bin/sh";
    args = [ "-c" "mkdir -p $out/bin; echo 'echo ${version} ${nonce}' > $out/bin/changing" ];
  };
  hosts = [
    (host "host-libs" "/usr/lib/x86_64-linux-gnu")
    (host "host-bin" "/usr/bin")
    (host "host-share" "/usr/share")
  ];
in
if hostOnly then hosts
else if stream then nixery.streamNixeryImage {
  name = "incremental-bench";
  tag = version;
  contents = hosts ++ [ pkgs.hello changing ];
  inherit incremental;
}
else nixery.buildNixeryImage {
  name = "incremental-bench";
  tag = version;
  contents = hosts ++ [ pkgs.hello changing ];
  # With `explicit`, the large packages are explicit layers: packed by
  # derivations of their own, so a rebuild skips them without
  # import-from-derivation.
  layers = if explicit then map (h: [ h ]) hosts else [ ];
  inherit incremental;
}
