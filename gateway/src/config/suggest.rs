//! "Did you mean …?" for names a policy author can misspell: closed sets of values
//! (`load_balancing`, `auth`, `per`, key parts) and references to upstreams, issuers and
//! rate-limit policies.

/// The candidate closest to `input`, if it is close enough to be a typo: an edit distance of at
/// most 1 for short names, 2 from six characters, 3 from twelve (case-insensitive).
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    let budget = match input.chars().count() {
        0..=5 => 1,
        6..=11 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (edit_distance(&input, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean "x"?` when a candidate is close to `input`, else nothing.
pub(crate) fn hint<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(input, candidates)
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}

/// `"x" is not one of a, b, c` plus a [`hint`]: the message for a value outside a closed set.
pub(crate) fn not_one_of(input: &str, names: &[&str]) -> String {
    format!(
        "{input:?} is not one of {}{}",
        names.join(", "),
        hint(input, names.iter().copied())
    )
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions
/// of neighbours each cost 1 (so `ordres` is one edit from `orders`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let upstreams = ["users", "orders", "inventory"];
        assert_eq!(did_you_mean("ordres", upstreams), Some("orders"));
        assert_eq!(did_you_mean("Users", upstreams), Some("users"));
        assert_eq!(did_you_mean("inventroy", upstreams), Some("inventory"));
        assert_eq!(did_you_mean("payment", upstreams), None);
        assert_eq!(
            did_you_mean("round-robin", ["round_robin"]),
            Some("round_robin")
        );
    }

    #[test]
    fn the_closed_set_message_lists_every_value() {
        assert_eq!(
            not_one_of("minutes", &["second", "minute", "hour"]),
            "\"minutes\" is not one of second, minute, hour; did you mean \"minute\"?"
        );
        assert_eq!(
            not_one_of("fortnight", &["second", "minute", "hour"]),
            "\"fortnight\" is not one of second, minute, hour"
        );
    }

    #[test]
    fn edit_distance_counts_transpositions_once() {
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "acb"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
