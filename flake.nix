{
  description = "nixery: container images from Nix, as a Nix library and an on-demand registry";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      # The helper binary (nixery), built with rustPlatform.
      packages = forAllSystems (system: pkgs: {
        default = pkgs.callPackage ./nix/helper.nix { };
      });

      # lib.${system}.buildNixeryImage { name; contents; ... }: see lib.nix.
      lib = forAllSystems (system: pkgs: import ./lib.nix {
        helper = self.packages.${system}.default;
        inherit system;
      });
    };
}
