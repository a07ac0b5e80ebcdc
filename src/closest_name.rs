//! "Did you mean …?": the known name closest to one that is not known.
//!
//! One rule for every such hint (package names in the shim's errors, load
//! targets, settings' variables): names are compared without regard to
//! case by Damerau-Levenshtein distance; a candidate is offered when it is
//! between 1 and `most` edits away, the closest first and, among equals,
//! the first in byte order. A name that differs only in case is not
//! offered: the shim's lookup folds case already (and registry names are
//! lower-case), and the other errors list the names they take.

/// The candidate closest to `wanted`, within `most` edits (see the module
/// documentation).
pub fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>, most: usize) -> Option<&'a str> {
    let wanted = wanted.to_lowercase();
    candidates.into_iter().map(|c| (strsim::damerau_levenshtein(&wanted, &c.to_lowercase()), c)).filter(|(d, _)| (1..=most).contains(d)).min().map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn the_closest_within_reach_and_the_first_among_equals() {
        assert_eq!(closest("hellp", ["help", "hello", "jq"], 1), Some("hello"));
        assert_eq!(closest("hlelo", ["hello"], 1), Some("hello"), "a swap is one edit");
        assert_eq!(closest("HELO", ["hello", "help"], 1), Some("hello"), "case is ignored");
        assert_eq!(closest("curl", ["coreutils", "jq"], 1), None, "nothing within reach");
        assert_eq!(closest("a", ["A"], 2), None, "a name differing in case only is not offered");
        assert_eq!(closest("NIX_TIMOUT", ["NIX_TIMEOUT", "NIX_TIMEOUTS"], 2), Some("NIX_TIMEOUT"));
    }
}
