//! Times as people and other programs read them: RFC 3339 in UTC (`2026-12-01T08:00:00Z`)
//! everywhere cleanpipe shows one (admin API, CLI, webhooks, e-mails, logs of actions).

/// Unix seconds as RFC 3339 UTC, seconds precision; the number itself if out of range.
pub fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// `serialize_with` for unix seconds.
pub fn ser<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// `serialize_with` for optional unix seconds.
pub fn ser_opt<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_with_a_z() {
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
