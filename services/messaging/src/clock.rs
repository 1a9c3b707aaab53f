//! The one clock of the shop: wall-clock time as the tables store it.

use time::OffsetDateTime;

/// Now, as Unix milliseconds (deadlines, back-off, arrival times).
pub fn now_ms() -> i64 {
    unix_ms(OffsetDateTime::now_utc())
}

/// `at` as Unix milliseconds.
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Now, as RFC 3339 text (what every table's `*_at` column holds).
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// `at` as RFC 3339 text; empty if it cannot be formatted (years beyond 9999).
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_text_agree() {
        let at = time::macros::datetime!(2024-05-01 12:00:00.250 UTC);
        assert_eq!(unix_ms(at), 1_714_564_800_250);
        assert_eq!(rfc3339(at), "2024-05-01T12:00:00.25Z");
        let before = now_ms();
        let text = now_rfc3339();
        let parsed =
            OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).unwrap();
        assert!(unix_ms(parsed) >= before - 1, "{text} is before {before}");
    }
}
