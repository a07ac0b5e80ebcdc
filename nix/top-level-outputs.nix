# The output paths of a package set's top-level packages, for
# `nixery popcount --package-set`. Arguments come as strings (--argstr);
# attributes that fail to evaluate are skipped.
{ path, system }:
let
  f = import path;
  pkgs =
    if builtins.isFunction f then
      f (builtins.intersectAttrs (builtins.functionArgs f) { inherit system; config = { }; overlays = [ ]; })
    else f;
  outPath = name:
    let
      r = builtins.tryEval (
        let v = pkgs.${name}; in
        if builtins.isAttrs v && (v.type or null) == "derivation" then toString v.outPath else null
      );
    in
    if r.success then r.value else null;
in
builtins.filter (p: p != null) (map outPath (builtins.attrNames pkgs))
