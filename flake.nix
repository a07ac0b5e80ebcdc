{
  description = "nixery: container images from Nix, as a Nix library and an on-demand registry";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      pkgsFor = system: nixpkgs.legacyPackages.${system};
    in
    {
      # The helper (nixery), built with nixpkgs' rustPlatform and linked
      # against the store's glibc, which the sandbox has.
      # nixery-image: the registry shim as a container image, built by
      # buildNixeryImage (nix/nixery-image.nix).
      packages = forAllSystems (system: rec {
        default = (pkgsFor system).callPackage ./nix/helper.nix { };
        nixery-image = import ./nix/nixery-image.nix { pkgs = pkgsFor system; helper = default; };
      });

      # A NixOS service for the registry shim (nix/module.nix):
      #   services.nixery = { enable = true; settings.NIXERY_CHANNEL = "nixos-unstable"; };
      nixosModules.default = import ./nix/module.nix { helperFor = pkgs: pkgs.callPackage ./nix/helper.nix { }; };

      # The library, for any system, independent of this flake's nixpkgs:
      #   nixery.lib.forPkgs pkgs              the helper built from `pkgs`
      #   nixery.lib.withHelper { helper; }    a helper derivation, or a
      #                                        static binary with `system`
      # Each gives { buildNixeryImage; }: see lib.nix.
      lib = {
        withHelper = { helper, system ? null }: import ./lib.nix { inherit helper system; };
        forPkgs = pkgs: import ./lib.nix {
          helper = pkgs.buildPackages.callPackage ./nix/helper.nix { };
          system = pkgs.stdenv.buildPlatform.system;
        };
      };

      # The library with this flake's helper, per system:
      #   nixery.legacyPackages.${system}.buildNixeryImage { … }
      legacyPackages = forAllSystems (system: import ./lib.nix {
        helper = self.packages.${system}.default;
        inherit system;
      });

      # `nix flake check` builds the examples with nixpkgs' packages.
      checks = forAllSystems (system:
        let
          pkgs = pkgsFor system;
          helper = self.packages.${system}.default;
        in
        {
          hello = import ./examples/hello.nix { inherit helper pkgs system; };
          # The same image planned from the first one's layer lock, in pure
          # evaluation and without import-from-derivation.
          hello-locked = import ./examples/hello.nix { inherit helper pkgs system; layerLock = self.checks.${system}.hello; };
          app = import ./examples/app.nix { inherit helper pkgs system; };
        });
    };
}
