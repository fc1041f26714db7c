//! Metric names, described once. Labels are bounded: an action, a reason label, a backend kind;
//! never a client address or a query name.

use crate::policy::Counts;

/// Queries answered, by `action` and `reason`.
pub const DECISIONS: &str = "cleanpipe_decisions_total";
/// Malformed or unsupported requests, by `kind`.
pub const BAD_REQUESTS: &str = "cleanpipe_bad_requests_total";
/// Answer-cache hits.
pub const CACHE_HITS: &str = "cleanpipe_cache_hits_total";
/// Answer-cache misses.
pub const CACHE_MISSES: &str = "cleanpipe_cache_misses_total";
/// Resolutions that failed upstream (SERVFAIL to the client), by `backend`.
pub const UPSTREAM_FAILURES: &str = "cleanpipe_upstream_failures_total";
/// Successful policy reloads.
pub const RELOADS: &str = "cleanpipe_policy_reloads_total";
/// Failed policy reloads (the previous policy stays in force).
pub const RELOAD_FAILURES: &str = "cleanpipe_policy_reload_failures_total";
/// Generation of the serving policy snapshot.
pub const GENERATION: &str = "cleanpipe_policy_generation";
/// Milliseconds the last successful compile took.
pub const COMPILE_MS: &str = "cleanpipe_policy_compile_milliseconds";
/// Entries in the serving snapshot, by `kind`.
pub const SNAPSHOT_ENTRIES: &str = "cleanpipe_policy_entries";
/// Self-releases accepted on the cleanup page.
pub const SELF_RELEASES: &str = "cleanpipe_self_releases_total";
/// Matches of log-only feeds (answers unchanged).
pub const FEED_LOG_ONLY: &str = "cleanpipe_feed_log_only_matches_total";
/// Botnet-feed lookups recorded, by `outcome`: `flagged` (the subscriber was flagged infected) or
/// `evidence` (already flagged: one more signature or sighting).
pub const DETECTIONS: &str = "cleanpipe_botnet_detections_total";
/// Feed transfers applied, by `kind` (AXFR, IXFR).
pub const FEED_TRANSFERS: &str = "cleanpipe_feed_transfers_total";
/// Feed transfers that failed (the last good copy is kept).
pub const FEED_TRANSFER_FAILURES: &str = "cleanpipe_feed_transfer_failures_total";
/// Seconds since a transferred feed's copy was last confirmed by its primary, by `feed`.
pub const FEED_AGE: &str = "cleanpipe_feed_age_seconds";
/// SOA serial of the feed copy in use, by `feed`.
pub const FEED_SERIAL: &str = "cleanpipe_feed_serial";
/// Open client connections of a stream transport, by `transport` (tcp).
pub const CONNECTIONS_OPEN: &str = "cleanpipe_connections_open";
/// Connections refused at accept, by `transport` and `why` (per_client, full).
pub const CONNECTIONS_REFUSED: &str = "cleanpipe_connections_refused_total";
/// Idle connections closed to make room for new ones, by `transport`.
pub const CONNECTIONS_EVICTED: &str = "cleanpipe_connections_evicted_total";
/// Botnet-feed lookups over UDP without a proven source (no valid DNS cookie): answered TC=1,
/// nobody flagged until the client asks over TCP.
pub const UNPROVEN_LOOKUPS: &str = "cleanpipe_botnet_lookups_unproven_total";
/// Queries that ran into a rate limit, by `limit` (client, new_names, client_outstanding,
/// zone_outstanding, refused).
pub const RATE_LIMITED: &str = "cleanpipe_rate_limited_total";
/// Cache misses that joined an identical question already on its way upstream.
pub const UPSTREAM_JOINED: &str = "cleanpipe_upstream_joined_total";
/// TLS handshakes of DoT and DoH, by `transport` and `result` (ok, failed, timeout).
pub const TLS_HANDSHAKES: &str = "cleanpipe_tls_handshakes_total";
/// TLS certificate reloads, by `result` (ok, failed).
pub const TLS_RELOADS: &str = "cleanpipe_tls_certificate_reloads_total";
/// Queries received, by `transport` (udp, tcp, tls, https).
pub const QUERIES: &str = "cleanpipe_queries_total";
/// Organisation alerts opened.
pub const ALERTS_OPENED: &str = "cleanpipe_alerts_opened_total";
/// Organisation alerts resolved by an operator.
pub const ALERTS_RESOLVED: &str = "cleanpipe_alerts_resolved_total";
/// Alerts still open at their deadline.
pub const ALERTS_OVERDUE: &str = "cleanpipe_alerts_overdue_total";
/// Organisations whose whitelisting was revoked.
pub const REVOCATIONS: &str = "cleanpipe_organisation_revocations_total";
/// Webhook delivery attempts, by `result` (ok, failed).
pub const DELIVERIES: &str = "cleanpipe_alert_deliveries_total";
/// 1 while global trusted-only mode is in force.
pub const TRUSTED_ONLY: &str = "cleanpipe_global_trusted_only";
/// Answers served stale (RFC 8767) because refreshing them failed.
pub const STALE_ANSWERS: &str = "cleanpipe_stale_answers_total";
/// Cache entries refreshed in the background before they expired.
pub const PREFETCHES: &str = "cleanpipe_prefetches_total";
/// DNSSEC validations of upstream answers, by `result` (secure, insecure, bogus).
pub const DNSSEC: &str = "cleanpipe_dnssec_validations_total";
/// Answers sent, by `rcode` (as dig spells it: NOERROR, NXDOMAIN, SERVFAIL, REFUSED...).
pub const RESPONSES: &str = "cleanpipe_responses_total";
/// Time from a query's arrival to its answer, by `transport` and `source` (cache, synthesized,
/// upstream).
pub const RESPONSE_SECONDS: &str = "cleanpipe_response_seconds";
/// Time an upstream resolution took (forward: the upstream's round trip, retries included;
/// recursive: the whole recursion), by `backend`.
pub const UPSTREAM_RTT: &str = "cleanpipe_upstream_rtt_seconds";
/// Upstream errors, by `backend`, `kind` and (forward) `upstream`.
pub const UPSTREAM_ERRORS: &str = "cleanpipe_upstream_errors_total";
/// Answers in the cache.
pub const CACHE_ENTRIES: &str = "cleanpipe_cache_entries";
/// Bytes the cached answers take.
pub const CACHE_BYTES: &str = "cleanpipe_cache_bytes";
/// Time a policy reload took (read, compile, swap), successful or not.
pub const RELOAD_SECONDS: &str = "cleanpipe_policy_reload_seconds";
/// 1 when the last reload succeeded, 0 when it failed (the previous policy serves).
pub const LAST_RELOAD_OK: &str = "cleanpipe_policy_last_reload_ok";
/// Alert deliveries (webhook, e-mail) waiting in the outbox.
pub const OUTBOX_PENDING: &str = "cleanpipe_alert_outbox_pending";
/// Age of the oldest undelivered alert delivery, 0 when the outbox is empty.
pub const OUTBOX_OLDEST: &str = "cleanpipe_alert_outbox_oldest_seconds";
/// Unix time the global mode in force was set (0: never).
pub const MODE_SET_AT: &str = "cleanpipe_global_mode_set_timestamp_seconds";
/// 1 once the service answers (sockets bound, first policy serving), 0 while starting or
/// stopping.
pub const READY: &str = "cleanpipe_ready";
/// Admin API calls refused because the token lacks the scope.
pub const ADMIN_FORBIDDEN: &str = "cleanpipe_admin_forbidden_total";
/// Names trusted-zone clients were denied, by profile.
pub const TRUSTED_DENIED: &str = "cleanpipe_trusted_zone_denied_total";

/// Registers descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(DECISIONS, "Queries answered, by action and reason");
    metrics::describe_counter!(BAD_REQUESTS, "Malformed or unsupported requests, by kind");
    metrics::describe_counter!(CACHE_HITS, "Answer cache hits");
    metrics::describe_counter!(CACHE_MISSES, "Answer cache misses");
    metrics::describe_counter!(
        UPSTREAM_FAILURES,
        "Resolutions that failed upstream, by backend"
    );
    metrics::describe_counter!(RELOADS, "Successful policy reloads");
    metrics::describe_counter!(
        RELOAD_FAILURES,
        "Failed policy reloads (previous policy kept)"
    );
    metrics::describe_gauge!(GENERATION, "Generation of the serving policy snapshot");
    metrics::describe_gauge!(
        COMPILE_MS,
        "Milliseconds the last successful policy compile took"
    );
    metrics::describe_gauge!(SNAPSHOT_ENTRIES, "Entries in the serving policy, by kind");
    metrics::describe_counter!(SELF_RELEASES, "Self-releases accepted on the cleanup page");
    metrics::describe_counter!(FEED_LOG_ONLY, "Matches of log-only threat feeds");
    metrics::describe_counter!(RATE_LIMITED, "Queries that ran into a rate limit, by limit");
    metrics::describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes of DoT and DoH, by transport and result"
    );
    metrics::describe_counter!(TLS_RELOADS, "TLS certificate reloads, by result");
    metrics::describe_counter!(QUERIES, "Queries received, by transport");
    metrics::describe_counter!(
        UPSTREAM_JOINED,
        "Cache misses that joined an identical question already on its way upstream"
    );
    metrics::describe_counter!(
        UNPROVEN_LOOKUPS,
        "Botnet-feed lookups over UDP without a proven source, answered TC=1 and not flagged"
    );
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Open client connections, by transport");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused at accept, by transport and why (per_client, full)"
    );
    metrics::describe_counter!(
        CONNECTIONS_EVICTED,
        "Idle connections closed to make room for new ones, by transport"
    );
    metrics::describe_gauge!(
        FEED_AGE,
        "Seconds since the primary last transferred or confirmed the feed copy in use, by feed"
    );
    metrics::describe_gauge!(FEED_SERIAL, "SOA serial of the feed copy in use, by feed");
    metrics::describe_counter!(
        DETECTIONS,
        "Botnet-feed lookups recorded, by outcome (flagged, evidence)"
    );
    metrics::describe_counter!(FEED_TRANSFERS, "Feed zone transfers applied, by kind");
    metrics::describe_counter!(
        FEED_TRANSFER_FAILURES,
        "Feed zone transfers that failed (last good copy kept)"
    );
    metrics::describe_counter!(ALERTS_OPENED, "Organisation alerts opened");
    metrics::describe_counter!(ALERTS_RESOLVED, "Organisation alerts resolved");
    metrics::describe_counter!(
        ALERTS_OVERDUE,
        "Organisation alerts still open at their deadline"
    );
    metrics::describe_counter!(REVOCATIONS, "Organisations whose whitelisting was revoked");
    metrics::describe_counter!(DELIVERIES, "Alert webhook delivery attempts, by result");
    metrics::describe_gauge!(TRUSTED_ONLY, "1 while global trusted-only mode is in force");
    metrics::describe_counter!(RESPONSES, "Answers sent, by rcode");
    metrics::describe_counter!(
        STALE_ANSWERS,
        "Answers served stale because refreshing them failed (RFC 8767)"
    );
    metrics::describe_counter!(PREFETCHES, "Cache entries refreshed before they expired");
    metrics::describe_counter!(
        DNSSEC,
        "DNSSEC validations of upstream answers, by result (secure, insecure, bogus)"
    );
    metrics::describe_histogram!(
        RESPONSE_SECONDS,
        metrics::Unit::Seconds,
        "Time from a query's arrival to its answer, by transport and source (cache, synthesized, upstream)"
    );
    metrics::describe_histogram!(
        UPSTREAM_RTT,
        metrics::Unit::Seconds,
        "Time an upstream resolution took, by backend"
    );
    metrics::describe_counter!(UPSTREAM_ERRORS, "Upstream errors, by backend and kind");
    metrics::describe_gauge!(CACHE_ENTRIES, "Answers in the cache");
    metrics::describe_gauge!(CACHE_BYTES, "Bytes the cached answers take");
    metrics::describe_histogram!(
        RELOAD_SECONDS,
        metrics::Unit::Seconds,
        "Time a policy reload took, successful or not"
    );
    metrics::describe_gauge!(LAST_RELOAD_OK, "1 when the last policy reload succeeded");
    metrics::describe_gauge!(OUTBOX_PENDING, "Alert deliveries waiting in the outbox");
    metrics::describe_gauge!(
        OUTBOX_OLDEST,
        "Age in seconds of the oldest undelivered alert delivery (0: none)"
    );
    metrics::describe_gauge!(MODE_SET_AT, "Unix time the global mode in force was set");
    metrics::describe_gauge!(READY, "1 while the service is ready to answer");
    metrics::describe_counter!(
        ADMIN_FORBIDDEN,
        "Admin API calls refused because the token lacks the scope"
    );
    metrics::describe_counter!(
        TRUSTED_DENIED,
        "Queries of trusted-zone clients for names outside their zone, by profile"
    );
}

/// Histogram buckets (seconds) of answer and upstream times: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Histogram buckets (seconds) of policy reloads: 1 ms to 60 s.
pub const RELOAD_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Creates every series whose labels are known in advance at 0, so that dashboards and alert
/// rules find them from the first scrape (a counter appears only once touched).
pub fn register_zero(backend: &'static str) {
    for (action, reason) in [("resolve", "normal"), ("sinkhole", "quarantined")] {
        metrics::counter!(DECISIONS, "action" => action, "reason" => reason).increment(0);
    }
    for name in [
        CACHE_HITS,
        CACHE_MISSES,
        RELOAD_FAILURES,
        SELF_RELEASES,
        FEED_LOG_ONLY,
        FEED_TRANSFER_FAILURES,
        UNPROVEN_LOOKUPS,
        UPSTREAM_JOINED,
        ALERTS_OPENED,
        ALERTS_RESOLVED,
        ALERTS_OVERDUE,
        REVOCATIONS,
        ADMIN_FORBIDDEN,
        STALE_ANSWERS,
        PREFETCHES,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::counter!(BAD_REQUESTS, "kind" => "malformed").increment(0);
    metrics::counter!(UPSTREAM_FAILURES, "backend" => backend).increment(0);
    metrics::counter!(UPSTREAM_ERRORS, "backend" => backend, "kind" => "timeout").increment(0);
    for rcode in ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED"] {
        metrics::counter!(RESPONSES, "rcode" => rcode).increment(0);
    }
    for kind in ["axfr", "ixfr"] {
        metrics::counter!(FEED_TRANSFERS, "kind" => kind).increment(0);
    }
    for outcome in ["flagged", "evidence"] {
        metrics::counter!(DETECTIONS, "outcome" => outcome).increment(0);
    }
    for result in ["ok", "failed"] {
        metrics::counter!(DELIVERIES, "result" => result).increment(0);
    }
    for result in ["secure", "insecure", "bogus"] {
        metrics::counter!(DNSSEC, "result" => result).increment(0);
    }
    for transport in ["tcp", "tls", "https", "admin", "page"] {
        metrics::gauge!(CONNECTIONS_OPEN, "transport" => transport).increment(0.0);
        metrics::counter!(CONNECTIONS_EVICTED, "transport" => transport).increment(0);
        for why in ["full", "per_client"] {
            metrics::counter!(CONNECTIONS_REFUSED, "transport" => transport, "why" => why)
                .increment(0);
        }
    }
    for transport in ["dot", "doh"] {
        for result in ["ok", "failed", "timeout"] {
            metrics::counter!(TLS_HANDSHAKES, "transport" => transport, "result" => result)
                .increment(0);
        }
    }
    for limit in [
        "new_names",
        "client",
        "refused",
        "client_outstanding",
        "zone_outstanding",
    ] {
        metrics::counter!(RATE_LIMITED, "limit" => limit).increment(0);
    }
    // Registered, not recorded: they render with empty buckets.
    let _ = metrics::histogram!(UPSTREAM_RTT, "backend" => backend);
    let _ = metrics::histogram!(RELOAD_SECONDS);
    metrics::gauge!(READY).set(0.0);
    metrics::gauge!(OUTBOX_PENDING).set(0.0);
    metrics::gauge!(OUTBOX_OLDEST).set(0.0);
    metrics::gauge!(CACHE_ENTRIES).set(0.0);
    metrics::gauge!(CACHE_BYTES).set(0.0);
}

/// Publishes the sizes of a freshly swapped snapshot.
pub fn record_snapshot(c: &Counts, generation: u64, compile_ms: u64) {
    metrics::counter!(RELOADS).increment(1);
    metrics::gauge!(GENERATION).set(generation as f64);
    metrics::gauge!(COMPILE_MS).set(compile_ms as f64);
    for (kind, n) in [
        ("infected", c.infected),
        ("enrolments", c.enrolments),
        ("organisations", c.organisations),
        ("services", c.services),
        ("allowlisted_names", c.allowlisted_names),
    ] {
        metrics::gauge!(SNAPSHOT_ENTRIES, "kind" => kind).set(n as f64);
    }
}
