//! Image names as package lists: `shell/hello` asks for the `shell`
//! meta-package and `hello`.
//!
//! This module owns the registry-facing grammar of names and tags (as the
//! OCI distribution spec defines them; digests are [`crate::digest`]'s)
//! and the mapping from a name to what Nix is asked to build. It does not
//! look anything up.
//!
//! - Path components are attribute names; dotted components reach nested
//!   sets (`xorg.xev`). The lookup in `prepare-image/` falls back to a
//!   case-insensitive match and to `_`-prefixed names for names starting
//!   with a digit (`1password` → `_1password`).
//! - Meta-packages expand: `shell` into a configurable list, `arm64`
//!   selects `aarch64-linux`. They may appear anywhere in the name.
//! - Order and repetition do not matter: `a/b`, `b/a` and `a/b/a` are the
//!   same image.

use std::collections::BTreeSet;

/// A name that is not an image name (the registry's `NAME_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a repository name under the distribution spec's grammar, or a
    /// name that asks for no package.
    #[error("invalid repository name {0:?}")]
    Name(String),
}

/// The default expansion of the `shell` meta-package, as the original.
pub const DEFAULT_SHELL_PACKAGES: &[&str] = &["bashInteractive", "coreutils", "moreutils", "nano"];

/// The system an image is built for.
pub const DEFAULT_SYSTEM: &str = "x86_64-linux";

/// What an image name asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRequest {
    /// Attribute names to look up, unique, in a canonical order: the
    /// meta-packages' expansions first (in their configured order, as
    /// every image that names them shares them, and layers are ordered by
    /// the contents they come from), then the other names sorted.
    pub packages: Vec<String>,
    /// Nix system, e.g. `x86_64-linux`.
    pub system: String,
}

/// Whether `name` is a repository name under the distribution spec's
/// grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn valid_repository_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).copied().is_some_and(alnum) {
            return false;
        }
    }
    true
}

/// Whether `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty() && b.len() <= 128 && (b[0].is_ascii_alphanumeric() || b[0] == b'_') && b.iter().all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// Whether `reference` looks like a digest (`algorithm:encoded`).
pub fn is_digest_reference(reference: &str) -> bool {
    reference.contains(':')
}

/// Meta-package settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaPackages {
    /// What `shell` expands to.
    pub shell: Vec<String>,
    /// The system of images that do not name `arm64`.
    pub default_system: String,
}

impl Default for MetaPackages {
    fn default() -> Self {
        MetaPackages { shell: DEFAULT_SHELL_PACKAGES.iter().map(|s| s.to_string()).collect(), default_system: DEFAULT_SYSTEM.to_string() }
    }
}

/// Turns a repository name into the packages it asks for.
pub fn parse_image_name(name: &str, meta: &MetaPackages) -> Result<ImageRequest, NameError> {
    if !valid_repository_name(name) {
        return Err(NameError::Name(name.to_string()));
    }
    let mut named = BTreeSet::new();
    let mut shell = false;
    let mut system = meta.default_system.clone();
    for component in name.split('/') {
        match component {
            "shell" => shell = true,
            "arm64" => system = "aarch64-linux".to_string(),
            other => {
                named.insert(other.to_string());
            }
        }
    }
    let mut packages: Vec<String> = Vec::new();
    if shell {
        for p in &meta.shell {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
    }
    packages.extend(named.into_iter().filter(|p| !meta.shell.contains(p) || !shell));
    if packages.is_empty() {
        return Err(NameError::Name(name.to_string()));
    }
    Ok(ImageRequest { packages, system })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ImageRequest {
        fn with_package(mut self, p: &str) -> ImageRequest {
            if !self.packages.iter().any(|x| x == p) {
                self.packages.push(p.into());
            }
            self
        }
    }

    fn parse(name: &str) -> Result<ImageRequest, NameError> {
        parse_image_name(name, &MetaPackages::default())
    }

    #[test]
    fn names_follow_the_distribution_grammar() {
        for ok in ["a", "shell/hello", "xorg.xev", "a_b", "a__b", "a---b", "1password", "haskellpackages.stylish-haskell", "a/b/c"] {
            assert!(valid_repository_name(ok), "{ok}");
        }
        for bad in ["", "A", "Shell/hello", "a/", "/a", "a//b", "-a", "a-", "a___b", "a..b", "a._b", ".a", "a b", "a/b?", "ä"] {
            assert!(!valid_repository_name(bad), "{bad}");
        }
        assert!(!valid_repository_name(&"a".repeat(256)));
    }

    #[test]
    fn order_and_repetition_do_not_matter() {
        assert_eq!(parse("hello/jq").unwrap(), parse("jq/hello").unwrap());
        assert_eq!(parse("jq/hello/jq").unwrap(), parse("hello/jq").unwrap());
        assert_eq!(parse("hello/jq").unwrap().packages, vec!["hello", "jq"]);
    }

    #[test]
    fn meta_packages_expand() {
        let r = parse("shell/hello").unwrap();
        assert_eq!(r.packages, vec!["bashInteractive", "coreutils", "moreutils", "nano", "hello"], "the shell first");
        assert_eq!(parse("hello/shell/nano").unwrap(), r.clone().with_package("nano"), "canonical: order and repetition do not matter");
        assert_eq!(r.system, "x86_64-linux");
        let r = parse("arm64/shell").unwrap();
        assert_eq!(r.system, "aarch64-linux");
        assert_eq!(r.packages.len(), 4);
        assert_eq!(parse("arm64"), Err(NameError::Name("arm64".into())), "an image needs a package");
        let custom = MetaPackages { shell: vec!["busybox".into()], ..Default::default() };
        assert_eq!(parse_image_name("shell", &custom).unwrap().packages, vec!["busybox"]);
    }

    #[test]
    fn dotted_and_digit_names_pass_through_for_lookup() {
        assert_eq!(parse("xorg.xev").unwrap().packages, vec!["xorg.xev"]);
        assert_eq!(parse("1password").unwrap().packages, vec!["1password"]);
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"t".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}
