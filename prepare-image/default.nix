# prepare-image: loads a package set, looks up the packages an image asks
# for, and builds a derivation whose output is the image's runtime closure
# graph, as JSON written by the nixery helper (`nixery write-graph`):
#
#   { "version": 1, "notFound": [names…], "roots": [store paths…],
#     "graph": [{ "path", "narSize", "closureSize", "references" }…] }
#
# When a name is not found, nothing is built and `notFound` lists it.
#
# Every argument is a string passed with --argstr; lists are JSON. User
# input (package names, refs) is data here, never Nix code. Nothing is
# taken from the package set beyond the attributes asked for.
{
  # "path", "git" or "channel".
  srcType,
  # path: the package set's directory. git: JSON { "url", "rev" } with an
  # exact commit. channel: a nixpkgs commit (or branch) to fetch as a tarball.
  srcArgs,
  # JSON list of attribute names (dotted names reach nested sets).
  packages,
  # JSON list of attribute names every image gets when the set has them.
  basePackages ? "[]",
  # The system to instantiate the package set for.
  system,
  # Absolute path of the nixery helper binary.
  helper,
}:

let
  src =
    if srcType == "path" then srcArgs
    else if srcType == "git" then
      let a = builtins.fromJSON srcArgs; in
      builtins.fetchGit { url = a.url; rev = a.rev; allRefs = true; }
    else if srcType == "channel" then
      builtins.fetchTarball { url = "https://github.com/NixOS/nixpkgs/archive/${srcArgs}.tar.gz"; }
    else throw "prepare-image: unknown source type ${srcType}";

  # Pass only the arguments the set takes (nixpkgs takes config and
  # overlays; a small set may take only system).
  pkgsFun = import src;
  pkgs =
    if builtins.isFunction pkgsFun then
      pkgsFun (builtins.intersectAttrs (builtins.functionArgs pkgsFun) { inherit system; config = { }; overlays = [ ]; })
    else pkgsFun;

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;
  startsWithDigit = name: builtins.match "[0-9].*" name != null;

  # One component in one set: exact name, then a case-insensitive match
  # (registry names are lower-case), then `_name` for names that start
  # with a digit (`1password` finds `_1password`).
  lookupOne = set: name:
    let
      candidates = [ name ] ++ (if startsWithDigit name then [ "_${name}" ] else [ ]);
      exact = builtins.filter (n: builtins.hasAttr n set) candidates;
      lowered = map toLower candidates;
      folded = builtins.sort builtins.lessThan
        (builtins.filter (n: builtins.elem (toLower n) lowered) (builtins.attrNames set));
    in
    if !(builtins.isAttrs set) then null
    else if exact != [ ] then set.${builtins.head exact}
    else if folded != [ ] then set.${builtins.head folded}
    else null;

  components = name: builtins.filter builtins.isString (builtins.split "\\." name);

  # A package by (dotted) name, or null. Evaluation errors (a broken or
  # disallowed package) count as not found.
  lookup = name:
    let
      value = builtins.foldl' (acc: c: if acc == null then null else lookupOne acc c) pkgs (components name);
      isPackage = value != null && builtins.isAttrs value && value ? outPath;
      tried = builtins.tryEval (if isPackage then builtins.seq (toString value.outPath) value else null);
    in
    if tried.success then tried.value else null;

  found = names: builtins.filter (x: x.value != null) (map (n: { name = n; value = lookup n; }) names);

  requested = builtins.fromJSON packages;
  requestedFound = found requested;
  foundNames = map (x: x.name) requestedFound;
  notFound = builtins.filter (n: !(builtins.elem n foundNames)) requested;
  bases = found (builtins.filter (n: !(builtins.elem n requested)) (builtins.fromJSON basePackages));
  # The base packages first: every image has them, and layers are ordered
  # by the contents they come from.
  contents = map (x: x.value) (bases ++ requestedFound);
in
let
  # The helper as the builder. In the store (a nixpkgs-built helper), it
  # is taken with its store path's context, so the sandbox gets its
  # closure (its libraries); elsewhere (a static cargo build) it is copied
  # into the store.
  storeMatch = builtins.match "(${builtins.storeDir}/[^/]+)(.*)" helper;
  builder =
    if storeMatch != null then "${builtins.storePath (builtins.head storeMatch)}${builtins.elemAt storeMatch 1}"
    else "${/. + helper}";
in
derivation {
  name = "nixery-image-graph";
  # The helper runs on this machine whatever system the image is for.
  system = builtins.currentSystem;
  inherit builder;
  args = [ "internal" "write-graph" ];
  __structuredAttrs = true;
  exportReferencesGraph.graph = if notFound == [ ] then contents else [ ];
  nixeryGraph = { version = 1; inherit notFound; };
  allowSubstitutes = false;
}
