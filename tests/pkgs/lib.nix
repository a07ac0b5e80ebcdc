# The part of nixpkgs' `lib` that nixery's Nix files use (nix/helper.nix,
# nix/module.nix's callers, the flake), with nixpkgs' semantics: the
# stand-in package set's `lib`, and the stand-in flake's `lib` output.
rec {
  hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;

  hasSuffix = suf: s:
    let n = builtins.stringLength s; m = builtins.stringLength suf; in
    n >= m && builtins.substring (n - m) m s == suf;

  removePrefix = pre: s:
    if hasPrefix pre s then builtins.substring (builtins.stringLength pre) (-1) s else s;

  importTOML = path: builtins.fromTOML (builtins.readFile path);

  # nixpkgs' cleanSourceWith on a path: the source copied into the store
  # with `filter` deciding, named "source" (as nixpkgs names it). The
  # filter sees absolute paths of the source as it is read.
  cleanSourceWith = { src, filter ? _: _: true, name ? "source" }:
    builtins.path { path = src; inherit filter name; };

  licenses.asl20 = { spdxId = "Apache-2.0"; fullName = "Apache License 2.0"; free = true; shortName = "asl20"; };

  platforms.linux = [ "x86_64-linux" "aarch64-linux" ];

  # callPackage without overrides: the function's arguments from `scope`,
  # then `args`.
  callPackageWith = scope: fn: args:
    let f = if builtins.isFunction fn then fn else import fn; in
    f (builtins.intersectAttrs (builtins.functionArgs f) scope // args);
}
