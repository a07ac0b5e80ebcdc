# What the SBOMs say of a package an image names, from its meta: shared
# by lib.nix (buildNixeryImage) and prepare-image (the registry shim), so
# that an image says the same of its packages whichever way it is built.
# Only strings of the types expected are taken, so any package set works.
p:
let
  inherit (builtins) filter head isAttrs isList isString;
  stringOr = v: if isString v then v else if isList v && v != [ ] && isString (head v) then head v else null;
  licenseIds = l: filter isString (map (x: if isAttrs x then x.spdxId or null else null) (if isList l then l else [ l ]));
in
{
  path = toString p;
  pname = stringOr (p.pname or null);
  version = stringOr (p.version or null);
  licenses = licenseIds (p.meta.license or [ ]);
  homepage = stringOr (p.meta.homepage or null);
  description = stringOr (p.meta.description or null);
  # As a plain string: the provenance names the derivation, and the image
  # does not depend on it.
  drvPath = if isString (p.drvPath or null) then builtins.unsafeDiscardStringContext p.drvPath else null;
}
