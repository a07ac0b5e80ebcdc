# nixery's Nix library.
#
#   nixery = import ./lib.nix { helper = <the nixery helper>; };
#   image = nixery.buildNixeryImage { name = "hello"; contents = [ pkgs.hello ]; };
#
# `helper` is a derivation with `bin/nixery` (the flake's packages.default,
# built by nixpkgs) or a path to a statically linked `nixery` binary (what
# `cargo build --release` makes in this repository: see
# scripts/helper-path). The image derivation's builder is the helper
# itself: no shell, coreutils or jq from a package set takes part, so this
# file needs nothing from nixpkgs, works with any package set, builds in
# Nix's sandbox and evaluates in pure mode (flakes).
{
  # The nixery helper: a derivation providing bin/nixery, or a path to a
  # statically linked binary.
  helper,
  # The Nix system the helper runs on (the build machine). Default: the
  # helper derivation's `system`, else the evaluating machine's (which pure
  # evaluation does not know: give it there when `helper` is a path).
  system ? null,
}:

let
  inherit (builtins) isAttrs isList isString isInt isBool isPath hasAttr attrNames concatMap filter head
    map length elem toJSON fromJSON match split replaceStrings substring stringLength storeDir;

  helperExe =
    if isAttrs helper then "${helper}/bin/nixery"
    else if (isPath helper || (isString helper && substring 0 1 helper == "/")) && !(builtins.pathExists helper) then
      throw "nixery: the helper ${toString helper} does not exist: build one with `cargo install --locked --path .` in nixery's checkout and pass `$(command -v nixery)`, or use the flake's packages.default (in nixery's checkout, scripts/helper-path builds it and prints its path)"
    else if isPath helper then "${helper}"
    else if isString helper && substring 0 1 helper == "/" then "${/. + helper}"
    else throw "nixery: `helper` must be a derivation with bin/nixery or a path to the nixery binary";

  buildSystem =
    if system != null then system
    else if isAttrs helper && helper ? system then helper.system
    else if builtins ? currentSystem then builtins.currentSystem
    else throw "nixery: pure evaluation does not know the build machine: import lib.nix with `system`, or pass the helper as a derivation";

  # Version of the JSON contract between this file and the helper.
  specVersion = 2;

  unique = list: builtins.foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ] list;

  # Registry names, as the distribution spec's reference grammar has them:
  # an optional registry host (with a port), then lower-case path components.
  domainComponent = "([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
  pathComponent = "[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*";
  nameRegex = "(${domainComponent}(\\.${domainComponent})*(:[0-9]+)?/)?${pathComponent}(/${pathComponent})*";
  tagRegex = "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}";

  # The store paths a value's strings name, with the value's context: the
  # packages a config mentions (`Entrypoint = [ "${pkgs.jq}/bin/jq" ]`),
  # so that their closures are in the image. Only paths the context
  # accounts for are taken (a source path itself, or a derivation's output
  # by name), so a literal /nix/store string never breaks the build.
  referencedPaths = value:
    let
      json = toJSON value;
      context = builtins.getContext json;
      plain = builtins.unsafeDiscardStringContext json;
      found = unique (map head (filter isList (split "(${storeDir}/[0-9a-z]{32}-[-.+_?=0-9a-zA-Z]+)" plain)));
      nameOf = p: substring (stringLength storeDir + 34) (-1) p;
      drvName = p: let n = nameOf p; in substring 0 (stringLength n - 4) n;
      expectedNames = concatMap (key:
        let c = context.${key}; in
        if c ? outputs then map (o: if o == "out" then drvName key else "${drvName key}-${o}") c.outputs
        else if c.allOutputs or false then [ (drvName key) ]
        else [ (nameOf key) ]) (attrNames context);
      accounted = p: hasAttr p context || elem (nameOf p) expectedNames;
    in map (p: builtins.appendContext p context) (filter accounted found);

  # The Nix system a package is for: its host platform's when it is a
  # nixpkgs package (cross-compiled ones are built elsewhere), else the
  # system it is built on.
  systemOf = p: p.stdenv.hostPlatform.system or p.system or null;

  fail = name: msg: throw "in nixery image ${name}: ${msg}";

  # "Did you mean": the edit distance of two names (case aside), and the
  # closest of some names.
  toLower = replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  chars = s: builtins.genList (i: substring i 1 s) (stringLength s);
  min = a: b: if a < b then a else b;
  editDistance = a: b:
    let
      ca = chars (toLower a);
      cb = chars (toLower b);
      n = length cb;
      nextRow = prev: c: builtins.foldl'
        (row: j: row ++ [ (min (min (builtins.elemAt prev (j + 1) + 1) (builtins.elemAt row j + 1))
          (builtins.elemAt prev j + (if builtins.elemAt cb j == c then 0 else 1))) ])
        [ (head prev + 1) ]
        (builtins.genList (j: j) n);
    in
    builtins.elemAt (builtins.foldl' nextRow (builtins.genList (j: j) (n + 1)) ca) n;
  didYouMean = word: names:
    let
      # Half the name's length (one edit for short names): the names
      # compared with are few, so a loose bound suggests little amiss.
      limit = let l = stringLength word / 2; in if l < 1 then 1 else l;
      near = builtins.foldl' (best: c: let d = editDistance word c; in
        if d <= limit && (best == null || d < best.d) then { inherit c d; } else best) null names;
    in
    if near == null then "" else ": did you mean `${near.c}`?";

  # The first attribute of `set` that is not one of `known`, said with
  # the closest known one, or null.
  unknownAttr = what: set: known:
    let extra = filter (k: !(elem k known)) (attrNames set); in
    if extra == [ ] then null
    else "${what} has no `${head extra}`${didYouMean (head extra) known} (it takes ${builtins.concatStringsSep ", " known})";

  # What a value is, for messages.
  describe = v:
    let t = builtins.typeOf v; in
    if t == "string" then "the string ${toJSON (builtins.unsafeDiscardStringContext v)}"
    else if t == "set" then (if v ? outPath then "a derivation" else "an attribute set")
    else if t == "list" then
      (let j = if builtins.all isString v then toJSON (map builtins.unsafeDiscardStringContext v) else ""; in
        if j != "" && stringLength j <= 80 then "the list ${j}" else "a list")
    else if t == "lambda" then "a function"
    else if t == "null" then "null"
    else if t == "int" then "the integer ${toJSON v}"
    else "the ${t} ${toJSON v}";

  firstOf = list: let found = filter (x: x != null) list; in if found == [ ] then null else head found;

  isStringList = v: isList v && builtins.all isString v;

  # The runtime config's keys, and what each must be.
  configRules = {
    Cmd = { ok = isStringList; expect = "a list of strings, as [ \"hello\" \"--greeting\" \"hi\" ]"; };
    Entrypoint = { ok = isStringList; expect = "a list of strings, as [ \"\${pkgs.jq}/bin/jq\" ]"; };
    Env = { ok = v: isStringList v && builtins.all (e: match "[^=]+=.*" e != null) v; expect = "a list of \"NAME=value\" strings"; };
    WorkingDir = { ok = isString; expect = "a string (a directory in the image)"; };
    User = { ok = isString; expect = "a string, as \"app\" or \"1000:1000\""; };
    StopSignal = { ok = isString; expect = "a string, as \"SIGTERM\""; };
    Labels = { ok = v: isAttrs v && builtins.all isString (builtins.attrValues v); expect = "an attribute set of strings"; };
    ExposedPorts = { ok = v: isStringList v || isAttrs v; expect = "a list of strings, as [ \"8080/tcp\" ], or an attribute set of them"; };
    Volumes = { ok = v: isStringList v || isAttrs v; expect = "a list of paths in the image, or an attribute set of them"; };
  };
  configProblem = config:
    firstOf ([ (unknownAttr "config" config (attrNames configRules)) ]
      ++ map (k: if config.${k} == null || configRules.${k}.ok config.${k} then null
        else "config.${k} must be ${configRules.${k}.expect}, got ${describe config.${k}}")
        (filter (k: hasAttr k configRules) (attrNames config)));

  # Users, groups and permission rules: their fields, and what each must be.
  isIntOrNull = v: v == null || isInt v;
  isStringOrNull = v: v == null || isString v;
  field = ok: expect: { inherit ok expect; };
  userFields = {
    name = field isString "a string"; uid = field isInt "an integer"; gid = field isIntOrNull "an integer";
    home = field isStringOrNull "a string"; shell = field isStringOrNull "a string";
    description = field isStringOrNull "a string"; groups = field isStringList "a list of group names";
  };
  groupFields = { name = field isString "a string"; gid = field isInt "an integer"; members = field isStringList "a list of user names"; };
  permFields = {
    path = field (v: true) "a package or a path"; regex = field isStringOrNull "a regular expression (a string)";
    mode = field isStringOrNull "an octal string, as \"0750\""; uid = field isIntOrNull "an integer";
    gid = field isIntOrNull "an integer"; uname = field isStringOrNull "a string"; gname = field isStringOrNull "a string";
  };
  entryProblem = what: fields: required: example: i: e:
    let who = if isAttrs e && e ? name && isString e.name then "${what} ${toJSON e.name}" else "${what}s[${toString i}]"; in
    if !(isAttrs e) then "${who} must be an attribute set, as ${example}, got ${describe e}"
    else firstOf ([ (unknownAttr who e (attrNames fields)) ]
      ++ map (f: if e ? ${f} then null else "${who} has no `${f}`, which is required, as in ${example}") required
      ++ map (f: if fields.${f}.ok e.${f} then null else "${who}: `${f}` must be ${fields.${f}.expect}, got ${describe e.${f}}") (filter (f: hasAttr f fields) (attrNames e)));
  listProblem = what: fields: required: example: list:
    if !(isList list) then "`${what}s` must be a list, as [ ${example} ], got ${describe list}"
    else firstOf (builtins.genList (i: entryProblem what fields required example i (builtins.elemAt list i)) (length list));

  # Checks the names of a function's arguments before the call, so that a
  # misspelt one is named with the one meant.
  checkArguments = function: known: args:
    if !(isAttrs args) then throw "nixery: ${function} takes an attribute set of arguments, as { name = \"app\"; contents = [ … ]; }, not ${describe args}"
    else if !(args ? name) then throw "nixery: ${function} needs `name`, the image's name, as name = \"app\""
    else
      let problem = unknownAttr function args known; in
      if problem == null then args
      else throw "in nixery ${if function == "buildNixeryIndex" then "index" else "image"} ${toString args.name}: ${builtins.replaceStrings [ " has no " ] [ " has no argument " ] problem}";

  # A derivation name for an image name ("ghcr.io/acme/app" →
  # "ghcr.io-acme-app", "127.0.0.1:5000/app" → "127.0.0.1_5000-app"): `/`
  # becomes `-` and `:` becomes `_`, and no `-` is left before a digit or
  # another `-`, where Nix would see a version begin (`nix run`, `nix-env`
  # and the build log's `NAME>` prefix would cut the name there).
  storeName = name:
    let
      digits = [ "0" "1" "2" "3" "4" "5" "6" "7" "8" "9" ];
      step = replaceStrings
        (map (d: "/${d}") digits ++ map (d: "-${d}") digits ++ [ "--" "/" ":" ])
        (map (d: "_${d}") digits ++ map (d: "_${d}") digits ++ [ "_-" "-" "_" ]);
      fix = s: let t = step s; in if t == s then s else fix t;
    in
    fix name;

  # Nix refuses a derivation whose name is longer than this (211, a store
  # path name's limit, less ".drv").
  maxDrvName = 207;

  # Checks that `drvName` with each of `suffixes` (the derivations made
  # for an image or an index) stays within Nix's limit.
  checkDrvNames = what: name: drvName: suffixes:
    let
      longest = builtins.foldl' (a: b: if stringLength b > stringLength a then b else a) "" suffixes;
      length = stringLength drvName + stringLength longest;
    in
    if length <= maxDrvName then true
    else throw "in nixery ${what} ${name}: `name` is too long (${toString (stringLength name)} characters): Nix limits derivation names to ${toString maxDrvName} characters, and its derivation named ${toJSON "…${longest}"} would have ${toString length}; use a name of at most ${toString (maxDrvName - stringLength longest)} characters";

  # The derivations an image makes besides itself, by their name's end.
  imageDrvSuffixes = [ "" "-layer-plan" "-docker-archive.tar" "-copy-to-podman" "-copy-to-docker" "-copy-to-registry" ];
  indexDrvSuffixes = [ "-index" "-copy-to-podman" "-copy-to-docker" "-copy-to-registry" ];

  # Checks the arguments and computes everything both image functions need.
  prepare = args@{
    # Name of the image, as recorded in index.json and the docker-archive
    # (`name:tag`): a registry name, optionally with its host
    # (`ghcr.io/acme/app`, `localhost:5000/app`). Path components are
    # lower-case, as registries require. Required.
    name,

    # Tag of the image. Default: the hash of the output path, as dockerTools
    # does, so that different images never claim the same tag.
    tag ? null,

    # Packages in the image. Their whole runtime closure is in the image
    # under /nix/store, and their top-level folders (bin, lib, share, etc,
    # ...) are symlinked into the image root, as a symlink join of them
    # would give. The first package listed wins a conflict (reported in the
    # build log). Default: none.
    contents ? [ ],

    # Packages whose files are copied (not linked) into the image root, as
    # dockerTools' and nix2container's copyToRoot do; their closures are in
    # the image too. Copies win over the links of `contents`. Default: none.
    copyToRoot ? [ ],

    # The runtime config (OCI `config`): Cmd, Entrypoint, Env, WorkingDir,
    # User, ExposedPorts, Labels, Volumes, StopSignal. ExposedPorts and
    # Volumes may be lists or attribute sets. Every store path a value
    # names ("${pkgs.jq}/bin/jq") is in the image with its closure. A
    # default PATH is added when Env (and the base image's) sets none.
    # Unknown keys are an error. Default: {}.
    config ? { },

    # The most layers the image may have, every layer counted: the base
    # image's, the explicit ones and the root layer. Registries and
    # runtimes cap layers near 125; 100 leaves room for images built on
    # top of this one. Default: 100.
    maxLayers ? 100,

    # Explicit layers: groups of packages, each group's closure (less what
    # earlier groups hold) in a layer of its own, first, so that they stay
    # the same across rebuilds however the rest changes (nix2container's
    # buildLayer). Each is packed by a derivation of its own, so a rebuild
    # never packs it again while its packages stay the same, in every mode
    # and without import-from-derivation. A group is a list of packages or
    # { deps = [ … ]; }. Automatic layering does the rest. Default: none.
    layers ? [ ],

    # A base image: its layers come first, unchanged (they count against
    # maxLayers), and its config is the default for this one's (Env merged
    # by name, Labels merged, other keys replaced). An image built by
    # buildNixeryImage, an OCI layout directory, or a tarball holding an
    # OCI layout or a docker-archive (dockerTools.pullImage, a fetchurl of
    # `docker save` output). Default: null.
    fromImage ? null,

    # Which image of fromImage, when it holds several: its tag. Default: null.
    fromImageTag ? null,

    # The layer plan of an earlier release, kept where it can be: a
    # layers.lock.json (written beside every image; `nixery lock-layers
    # result > layers.lock.json` to commit one), or an image built before
    # (a path or a derivation). Locked layers keep their paths and order,
    # new versions of their paths go where the old ones were, and only
    # what is new is planned afresh, within maxLayers: clients keep the
    # layers they have. Read inside the build: pure evaluation, no
    # import-from-derivation. Default: null.
    layerLock ? null,

    # Users of the image: [ { name; uid; gid ? uid; home ? "/home/<name>";
    # shell ? "/bin/sh"; groups ? [ ]; description ? ""; } ]. They get
    # /etc/passwd, /etc/group, /etc/shadow and /etc/nsswitch.conf entries
    # (with root and nobody), and a home directory they own, so that
    # config.User = "app" runs as them and they can write their home.
    # Default: none.
    users ? [ ],

    # Groups of the image: [ { name; gid; members ? [ ]; } ]. A user's
    # primary group is made when no group has its gid. Default: none.
    groups ? [ ],

    # Mode and ownership of files in the layers, without fakeroot
    # (nix2container's perms): [ { path; regex ? ".*"; mode ? null;
    # uid ? null; gid ? null; uname ? null; gname ? null; } ]. `path` is a
    # package (or a path in the image, "/" for everything): the rule covers
    # it and what is below it, and files copied from it; `regex` is matched
    # against each file's absolute path in the image; `mode` is an octal
    # string ("0750"). Later rules win. Default: none.
    perms ? [ ],

    # Register the image's store paths in a Nix database
    # (/nix/var/nix/db), for images that run Nix inside. Default: false.
    initializeNixDatabase ? false,

    # Owner of the Nix database, and of /nix/store when not root, for a
    # Nix run by another user. Default: 0 and 0.
    nixUid ? 0,
    nixGid ? 0,

    # Popularity data for layering: a path to a JSON file or an attribute
    # set from package name without hash (e.g. "glibc-2.37-8") to how many
    # packages refer to it, as the original Nixery's popcount writes it and
    # `nixery popcount` computes. Popular paths get layers of their own, so
    # images share them. Default: null (layering by graph structure alone).
    popularity ? null,

    # The layering algorithm: "sharing" (a layer per store path while the
    # budget allows, then the paths whose sharing saves most; measured in
    # BENCHMARKS.md), "nixery" (the original Nixery's) or
    # "popularity-contest" (nixpkgs' buildLayeredImage). Default: "sharing".
    layering ? "sharing",

    # Creation time recorded in the config: an RFC 3339 time, or "now" for
    # the build's time (which makes the image unreproducible).
    # Default: 1970-01-01T00:00:01Z, so that the image is reproducible.
    created ? "1970-01-01T00:00:01Z",

    # The architecture recorded in the config (GOARCH names: "amd64",
    # "arm64"), and its CPU variant. Default: the system of the contents
    # (a nixpkgs package's host platform, so cross-compiled contents give
    # their architecture), else the build machine's.
    architecture ? null,
    variant ? null,

    # Output format: "oci-dir" (an OCI image layout directory, for
    # `skopeo copy oci:result:TAG ...` or `podman load -i result`) or
    # "docker-archive" (a tarball for `docker load`). Either way the
    # `dockerArchive` passthru gives the tarball. Default: "oci-dir".
    format ? "oci-dir",

    # Layer compression: "gzip", which every client reads; "zstd" (smaller
    # and much faster to pack; Docker 23+, containerd 1.5+, podman 4+); or
    # "none" (fastest, for loading locally). Default: "gzip".
    compression ? "gzip",

    # Compression level: gzip 0 to 12 (libdeflate's levels), zstd 1 to 19.
    # Default: null, which means 5 for gzip (the fastest level whose output
    # is no larger than pigz -6's, BENCHMARKS.md) and 3 for zstd.
    compressionLevel ? null,

    # Pack each layer in a derivation of its own, so that a rebuild packs
    # only the layers whose store paths changed (and images with the same
    # layers share their derivations). The layer plan is computed by a
    # first derivation and read at evaluation time, so this needs
    # import-from-derivation (allowed by default; refused where
    # allow-import-from-derivation = false, as on Hydra, and by
    # `nix flake check --no-build`). Evaluates in pure mode. The image is
    # the same either way. Default: false.
    incremental ? false,

    # Write SBOMs of the image beside its index.json, made in the build:
    # sbom.spdx.json (SPDX 2.3) and sbom.cdx.json (CycloneDX 1.6), one
    # package per store path in the image (name and version as Nix parses
    # them, the NAR hash as checksum, the reference graph as dependencies),
    # with the license (SPDX ids), homepage and description of every
    # package named here (contents, copyToRoot, layers, perms). Reproducible
    # like the image. For the "oci-dir" format and stream images.
    # Default: true.
    sbom ? true,

    # Who supplies the image's packages, named in the SBOMs as each
    # package's supplier (SPDX `Organization: …`, CycloneDX `supplier`):
    # "NixOS" for packages from nixpkgs, as a distribution names itself.
    # Default: null (NOASSERTION: a store path does not say).
    sbomSupplier ? null,

    # Attributes of the result's meta, as for any derivation. Default: {}.
    meta ? { },

    # Attributes added to the result. Default: {}.
    passthru ? { },
  }:
    let
      groupPackages = g: if isList g then g else if isAttrs g && g ? deps then g.deps else fail name "each of `layers` must be a list of packages or { deps = [ … ]; }";
      layerGroups = map groupPackages layers;
      permPath = p: if isAttrs p.path then "${p.path}" else toString p.path;
      configIssue = configProblem config;
      usersIssue = listProblem "user" userFields [ "name" "uid" ] "{ name = \"app\"; uid = 1000; }" users;
      groupsIssue = listProblem "group" groupFields [ "name" "gid" ] "{ name = \"app\"; gid = 1000; }" groups;
      undeclaredGroup = firstOf (concatMap (u: map (g:
        if elem g (map (x: x.name) groups) then null
        else "user ${toJSON u.name} is in group ${toJSON g}, which is not declared: add { name = ${toJSON g}; gid = …; } to `groups`")
        (u.groups or [ ])) users);
      permsIssue = listProblem "perm" permFields [ "path" ] "{ path = pkgs.app; mode = \"0750\"; }" perms;

      checked =
        if !(isString name) || name == "" then fail "<unnamed>" "`name` must be a non-empty string"
        else if stringLength name > 255 || match nameRegex name == null then
          fail name "`name` must be a registry name such as \"app\", \"acme/app\" or \"ghcr.io/acme/app\": lower-case path components of letters, digits and . _ - separators, after an optional registry host"
        else if tag != null && !(isString tag && match tagRegex tag != null) then
          fail name "`tag` must be null or a registry tag: letters, digits, _ . and -, not starting with . or -, at most 128 characters"
        else if !(isInt maxLayers) || maxLayers < 2 then
          fail name "`maxLayers` must be an integer of at least 2 (one layer for the root), got ${toJSON maxLayers}"
        else if !(elem format [ "oci-dir" "docker-archive" ]) then
          fail name "`format` must be \"oci-dir\" or \"docker-archive\", got ${toJSON format}"
        else if !(isList contents) then fail name "`contents` must be a list of packages"
        else if !(isList copyToRoot) then fail name "`copyToRoot` must be a list of packages"
        else if !(isAttrs config) then fail name "`config` must be an attribute set, as { Cmd = [ \"hello\" ]; }, got ${describe config}"
        else if configIssue != null then fail name configIssue
        else if !(isList layers) then fail name "`layers` must be a list of package groups"
        else if usersIssue != null then fail name usersIssue
        else if groupsIssue != null then fail name groupsIssue
        else if undeclaredGroup != null then fail name undeclaredGroup
        else if permsIssue != null then fail name permsIssue
        else if !(layerLock == null || isPath layerLock || (isAttrs layerLock && layerLock ? outPath) || (isString layerLock && substring 0 1 layerLock == "/")) then
          fail name "`layerLock` must be a layer lock: a layers.lock.json file or an image built before (a path or a derivation), got ${describe layerLock}"
        else if !(fromImage == null || isPath fromImage || (isAttrs fromImage && fromImage ? outPath) || (isString fromImage && substring 0 1 fromImage == "/")) then
          fail name "`fromImage` must be an image: a buildNixeryImage result, an OCI layout directory or an image tarball (a path or a derivation), got ${describe fromImage}"
        else if !(elem compression [ "gzip" "zstd" "none" ]) then
          fail name "`compression` must be \"gzip\", \"zstd\" or \"none\", got ${toJSON compression}"
        else if compressionLevel != null && !(isInt compressionLevel
          && compressionLevel >= (if compression == "zstd" then 1 else 0)
          && compressionLevel <= (if compression == "gzip" then 12 else if compression == "zstd" then 19 else 0)) then
          fail name "`compressionLevel` must be null or an integer (gzip 0 to 12, zstd 1 to 19, none 0)"
        else if !(isBool incremental) then fail name "`incremental` must be a boolean"
        else if !(isBool initializeNixDatabase) then fail name "`initializeNixDatabase` must be a boolean"
        else if !(isBool sbom) then fail name "`sbom` must be a boolean"
        else if !(sbomSupplier == null || isString sbomSupplier && sbomSupplier != "") then fail name "`sbomSupplier` must be an organisation's name (a string, as \"NixOS\") or null"
        else if !(isInt nixUid && isInt nixGid) then fail name "`nixUid` and `nixGid` must be integers"
        else if !(elem layering [ "sharing" "nixery" "popularity-contest" ]) then
          fail name "`layering` must be \"sharing\", \"nixery\" or \"popularity-contest\", got ${toJSON layering}"
        else if !(isString created) then fail name "`created` must be an RFC 3339 time or \"now\""
        else checkDrvNames "image" name drvName imageDrvSuffixes;

      drvName = storeName name;

      # The image's platform: the contents' system, unless given.
      imageSystem = let systems = filter (s: s != null) (map systemOf (contents ++ copyToRoot)); in
        if systems == [ ] then buildSystem else head systems;

      # Everything whose closure is in the image.
      permPackages = map (p: p.path) (filter (p: isAttrs p.path || builtins.hasContext (toString p.path)) perms);
      closureRoots = contents ++ copyToRoot ++ builtins.concatLists layerGroups ++ referencedPaths config ++ permPackages;

      # What the SBOMs say of the packages named here, from their meta.
      packageMeta = import ./prepare-image/package-meta.nix;
      namedPackages = filter (p: isAttrs p && p ? outPath) (contents ++ copyToRoot ++ builtins.concatLists layerGroups ++ permPackages);

      spec = {
        version = specVersion;
        inherit sbom sbomSupplier;
        packageMeta = if sbom then map packageMeta namedPackages else [ ];
        inherit name tag config maxLayers created format compression compressionLevel layering
          users groups initializeNixDatabase nixUid nixGid fromImageTag imageSystem architecture variant;
        contents = map toString contents;
        copyToRoot = map toString copyToRoot;
        layers = map (map toString) layerGroups;
        perms = map (p: {
          path = permPath p;
          regex = p.regex or null;
          mode = p.mode or null;
          uid = p.uid or null;
          gid = p.gid or null;
          uname = p.uname or null;
          gname = p.gname or null;
        }) perms;
        fromImage = if fromImage == null then null else "${fromImage}";
        layerLock = if layerLock == null then null else "${layerLock}";
        popularity =
          if popularity == null || isAttrs popularity then popularity
          else "${popularity}";
      };

      # A derivation run by the helper, with the closure of the image
      # (sizes, hashes and references) written by Nix into its attributes.
      helperDerivation = drvName: subcommand: nixery: derivation {
        name = drvName;
        system = buildSystem;
        inherit nixery;
        builder = helperExe;
        args = [ "internal" subcommand ];
        __structuredAttrs = true;
        exportReferencesGraph.graph = closureRoots;
        # The result is a pure function of the inputs.
        allowSubstitutes = false;
      };

      # Explicit layers: a derivation each, whose inputs are its group and
      # the groups before it (it subtracts their closures when it runs), so
      # it is built once and kept however the rest of the image changes,
      # with or without `incremental`, and without import-from-derivation.
      # With `digestOnly` (streamNixeryImage), a layer derivation keeps
      # only the layer's digests, not its bytes.
      explicitLayersFor = digestOnly: builtins.genList (i:
        let before = builtins.concatLists (builtins.genList (j: builtins.elemAt layerGroups j) i); in
        derivation {
          name = if digestOnly then "nixery-explicit-layer-digest" else "nixery-explicit-layer";
          system = buildSystem;
          builder = helperExe;
          args = [ "internal" "pack-group" ];
          __structuredAttrs = true;
          exportReferencesGraph.graph = builtins.elemAt layerGroups i ++ before;
          nixeryGroup = {
            version = specVersion;
            group = map toString (builtins.elemAt layerGroups i);
            before = map toString before;
            inherit (spec) perms compression compressionLevel;
          } // (if digestOnly then { inherit digestOnly; } else { });
          allowSubstitutes = false;
        }) (length layerGroups);

      # Incremental builds: the plan, then one derivation per layer. Layer
      # derivations depend only on their store paths, rules and the
      # compression, so unchanged layers are never packed again. The plan
      # names store paths; their context is given back with
      # builtins.appendContext, which pure evaluation allows.
      layerDerivationsFor = digestOnly:
        let
          planDoc = fromJSON (builtins.unsafeDiscardStringContext
            (builtins.readFile (helperDerivation "${drvName}-layer-plan" "plan-layers" spec)));
          plan = if planDoc.version or null == specVersion then planDoc
            else throw "in nixery image ${args.name}: the helper wrote a layer plan of version ${toJSON (planDoc.version or null)}, this lib.nix reads version ${toString specVersion}: use the helper that matches lib.nix";
          withContext = path: builtins.appendContext path { ${path} = { path = true; }; };
        in
        map (layer: derivation {
          name = if digestOnly then "nixery-layer-digest" else "nixery-layer";
          system = buildSystem;
          builder = helperExe;
          args = [ "internal" "pack-layer" ];
          __structuredAttrs = true;
          nixeryLayer = {
            version = specVersion;
            paths = map withContext layer.paths;
            perms = layer.perms or [ ];
            inherit (spec) compression compressionLevel;
          } // (if digestOnly then { inherit digestOnly; } else { });
          allowSubstitutes = false;
        }) plan.layers;

      # The result: `drv` with the passthru on it and on each of its
      # outputs (so `image.out.imageTag` works too).
      withPassthru = drv: extra:
        let self = drv // extra // { out = self; all = [ self ]; }; in self;
    in
    assert checked;
    { inherit spec helperDerivation drvName withPassthru imageSystem explicitLayersFor layerDerivationsFor; args = args; };

  imageArguments = attrNames (builtins.functionArgs prepare);

  buildNixeryImage = userArgs:
    let
      args = checkArguments "buildNixeryImage" imageArguments userArgs;
      p = prepare args;
      inherit (p) spec drvName;
      name = args.name;
      incremental = args.incremental or false;

      image = p.helperDerivation drvName "build-image"
        (spec // { prepacked = p.explicitLayersFor false ++ (if incremental then p.layerDerivationsFor false else [ ]); });

      imageTag = if spec.tag != null then spec.tag else head (split "-" (baseNameOf image.outPath));

      dockerArchive =
        if spec.format == "docker-archive" then image
        else derivation {
          name = "${drvName}-docker-archive.tar";
          system = buildSystem;
          builder = helperExe;
          args = [ "internal" "docker-archive" "--oci" "${image}" "--repo-tag" "${name}:${imageTag}" "--out" (builtins.placeholder "out") ];
        };
    in
    p.withPassthru image ({
      inherit imageTag dockerArchive;
      imageName = name;
      # The image reference for `skopeo copy` (oci-dir format only).
      ociRef = "oci:${image}:${imageTag}";
      meta = (image.meta or { }) // (args.meta or { });
    } // copyPrograms { inherit name imageTag drvName image; } // (args.passthru or { }));

  # Programs that push the image to a registry or load it into podman or
  # docker, for `nix run .#image.copyToRegistry -- REGISTRY/REPO:TAG`,
  # `nix run .#image.copyToPodman`, `nix run .#image.copyToDockerDaemon`.
  copyPrograms = { name, imageTag, drvName, image }: {
    copyToRegistry = copyToRegistry { inherit name imageTag drvName image; };
    copyToPodman = loadProgram { inherit drvName image; target = "podman"; };
    copyToDockerDaemon = loadProgram { inherit drvName image; target = "docker"; };
  };

  loadProgram = { drvName, image, target }:
    let
      drv = derivation {
        name = "${drvName}-copy-to-${target}";
        system = buildSystem;
        builder = helperExe;
        args = [ "internal" "write-script" "--action" "load" "--out" (builtins.placeholder "out") "--name" "copy-to-${target}"
          "--helper" helperExe "--image" "${image}" "--default-dest" target ];
      };
    in
    drv // { meta.mainProgram = "copy-to-${target}"; };

  # A program that pushes `image` with `nixery push`
  # (`nix run .#image.copyToRegistry -- REGISTRY/REPO:TAG`); with no
  # destination, the image's name when it names a registry
  # (`ghcr.io/acme/app`). The helper is its interpreter: no shell needed.
  copyToRegistry = { name, imageTag, drvName, image }:
    let
      first = head (split "/" name);
      namesRegistry = builtins.length (split "/" name) > 1
        && (builtins.match ".*[.:].*" first != null || first == "localhost");
      drv = derivation {
        name = "${drvName}-copy-to-registry";
        system = buildSystem;
        builder = helperExe;
        args = [ "internal" "write-script" "--out" (builtins.placeholder "out") "--name" "copy-to-registry"
          "--helper" helperExe "--image" "${image}" ]
          ++ (if namesRegistry then [ "--default-dest" "${name}:${imageTag}" ] else [ ]);
      };
    in
    drv // { meta.mainProgram = "copy-to-registry"; };

  # The same image as buildNixeryImage with the same arguments (the same
  # manifest digest), kept out of the store: the output holds the
  # manifest, the config, the root layer and the recipes of the other
  # layers (their store paths), not their bytes. `nixery push` (and the
  # `copyToRegistry` passthru) packs those layers on the fly, only the
  # ones the registry lacks. Building it packs each layer once into a
  # hashing sink, writing nothing, to know the digests.
  streamNixeryImage = userArgs:
    let
      args = checkArguments "streamNixeryImage" imageArguments userArgs;
      p = prepare (builtins.removeAttrs args [ "format" ]);
      inherit (p) drvName;
      name = args.name;
      incremental = args.incremental or false;
      # Layer derivations that keep digests alone: with `incremental` (or
      # explicit `layers`), a rebuild hashes only the layers that changed.
      image = p.helperDerivation drvName "build-image" (p.spec // {
        format = "stream";
        prepacked = p.explicitLayersFor true ++ (if incremental then p.layerDerivationsFor true else [ ]);
      });
      imageTag = if p.spec.tag != null then p.spec.tag else head (split "-" (baseNameOf image.outPath));
    in
    p.withPassthru image ({
      inherit imageTag;
      imageName = name;
      meta = (image.meta or { }) // (args.meta or { });
    } // copyPrograms { inherit name imageTag drvName image; } // (args.passthru or { }));

  # One name for several platforms: an OCI layout whose entry is an image
  # index of `images` (buildNixeryImage or streamNixeryImage results, one
  # per platform, for example the same arguments with the contents of
  # `pkgs` and of `pkgsCross.aarch64-multiplatform`). `skopeo copy --all
  # oci:result:TAG docker://…` and `nixery push result …` push it; each
  # client pulls its platform.
  buildNixeryIndex = args: indexOf (checkArguments "buildNixeryIndex" (attrNames (builtins.functionArgs indexOf)) args);
  indexOf = { name, tag ? "latest", images }:
    let
      drvName = storeName name;
      image = derivation {
        name = "${drvName}-index";
        system = buildSystem;
        builder = helperExe;
        args = [ "internal" "build-index" "--name" name "--tag" tag "--out" (builtins.placeholder "out") ] ++ map (i: "${i}") images;
      };
      self = image // {
        imageName = name;
        imageTag = tag;
        ociRef = "oci:${image}:${tag}";
        out = self;
        all = [ self ];
      } // copyPrograms { inherit name drvName image; imageTag = tag; };
    in
    if !(isString name) || match nameRegex name == null then
      throw "in nixery index ${toJSON name}: `name` must be a registry name such as \"app\", \"acme/app\" or \"ghcr.io/acme/app\""
    else if images == [ ] then throw "in nixery index ${name}: `images` is empty"
    else if !(checkDrvNames "index" name drvName indexDrvSuffixes) then throw "unreachable"
    else if builtins.match "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}" tag == null then throw "in nixery index ${name}: `tag` ${builtins.toJSON tag} is not a valid tag"
    else self;
in
{
  inherit buildNixeryImage streamNixeryImage buildNixeryIndex;

  # The arguments each function takes, by name (for tools and docs; a test
  # checks docs/library.md against them).
  arguments = {
    buildNixeryImage = attrNames (builtins.functionArgs prepare);
    streamNixeryImage = filter (a: a != "format") (attrNames (builtins.functionArgs prepare));
    buildNixeryIndex = attrNames (builtins.functionArgs indexOf);
  };
}
