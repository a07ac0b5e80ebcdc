# prepare-image: loads a package set, looks up the packages an image asks
# for, and builds a derivation whose output is the image's runtime closure
# graph, as JSON written by the nixery helper (`nixery write-graph`):
#
#   { "version": 1, "notFound": [names…], "missing": [why…],
#     "roots": [store paths…],
#     "graph": [{ "path", "narSize", "closureSize", "references" }…] }
#
# When a name is not found, nothing is built: `notFound` lists it and
# `missing` says why ({ name, kind: absent | notPackage | refused }, and
# for absent names the component that failed, the set it was looked up
# in and that set's names of about its length, for "did you mean").
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

  isDerivation = v: builtins.isAttrs v && v ? outPath;

  # The names of `set` close enough in length to `name` to be what was
  # meant (an edit distance within a third of the name's length needs a
  # length within that too): the helper picks the closest.
  closeNames = set: name:
    let
      len = builtins.stringLength name;
      slack = if len < 6 then 1 else len / 3;
      near = n: let d = builtins.stringLength n - len; in d <= slack && d >= 0 - slack;
    in
    if builtins.isAttrs set && !(isDerivation set) then builtins.filter near (builtins.attrNames set) else [ ];

  # Walks a dotted name component by component: { value } when every
  # component is found, else { stop } saying where it stopped.
  walk = name:
    builtins.foldl'
      (acc: c:
        if acc ? stop then acc
        else
          let v = lookupOne acc.value c; in
          if v == null then { stop = { component = c; within = acc.path; candidates = closeNames acc.value c; }; }
          else { value = v; path = acc.path ++ [ c ]; })
      { value = pkgs; path = [ ]; }
      (components name);

  # A package by (dotted) name: { value } or { missing } saying why not:
  # absent (with the names near the one that failed), not a package (a
  # set of packages), or refused (its evaluation throws: broken, unfree,
  # insecure or failing, as nixpkgs reports them).
  lookup = name:
    let
      walked = builtins.tryEval (walk name);
      value = walked.value.value;
      evaluated = builtins.tryEval (builtins.seq (toString value.outPath) value);
      missing = kind: extra: { missing = { inherit name kind; } // extra; };
    in
    if !walked.success then missing "refused" { }
    else if walked.value ? stop then missing "absent" (walked.value.stop // { within = builtins.concatStringsSep "." walked.value.stop.within; })
    else if !(isDerivation value) then missing "notPackage" { }
    else if !evaluated.success then missing "refused" { }
    else { inherit value; };

  found = names: builtins.filter (x: x ? value) (map (n: { name = n; } // lookup n) names);

  requested = builtins.fromJSON packages;
  looked = map (n: { name = n; } // lookup n) requested;
  requestedFound = builtins.filter (x: x ? value) looked;
  missing = map (x: x.missing) (builtins.filter (x: x ? missing) looked);
  notFound = map (m: m.name) missing;
  bases = found (builtins.filter (n: !(builtins.elem n requested)) (builtins.fromJSON basePackages));
  # The base packages first: every image has them, and layers are ordered
  # by the contents they come from.
  contents = map (x: x.value) (bases ++ requestedFound);

  # What the SBOMs say of each package (as buildNixeryImage says it). A
  # package whose meta fails to evaluate is named by its path alone.
  packageMeta = map
    (p:
      let m = import ./package-meta.nix p; tried = builtins.tryEval (builtins.deepSeq m m); in
      if tried.success then tried.value else { path = toString p; })
    (if notFound == [ ] then contents else [ ]);
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
  nixeryGraph = { version = 1; inherit notFound missing packageMeta; };
  allowSubstitutes = false;
}
