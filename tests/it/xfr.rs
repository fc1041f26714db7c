//! Threat feed kept current by zone transfer from a real primary (Knot DNS) with TSIG:
//! AXFR at start, IXFR after NOTIFY, a wrong key refused, the last good copy kept.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{self, Cleanpipe, Knot, TSIG_SECRET, dig, query};

fn zone(serial: u32, extra: &str) -> String {
    format!(
        "$ORIGIN xfr.rpz.example.\n$TTL 300\n@ SOA ns.xfr.rpz.example. hostmaster.xfr.rpz.example. {serial} 3600 600 86400 300\n@ NS ns.xfr.rpz.example.\nns A 127.0.94.1\nc2.transfer.example CNAME .\nold.transfer.example CNAME .\n{extra}"
    )
}

/// Blocked by the feed: NXDOMAIN with cleanpipe's EDE 15 (not an upstream's NXDOMAIN).
fn blocked(cp: &Cleanpipe, name: &str) -> bool {
    let m = query(
        cp.dns,
        "127.0.0.70".parse::<IpAddr>().expect("ip"),
        name,
        RecordType::A,
    );
    m.metadata.response_code == ResponseCode::NXDomain && support::ede(&m) == Some(15)
}

fn feed_yaml(secret: &str) -> String {
    format!(
        "feeds:\n  - name: cert-transfer\n    primary: 127.0.94.1:5399\n    zone: xfr.rpz.example\n    tsig:\n      name: xfr-key\n      algorithm: hmac-sha256\n      secret: {secret}\n"
    )
}

#[test]
fn axfr_then_ixfr_on_notify_with_tsig() {
    let upstream = support::start_server(
        "127.0.94.9",
        5354,
        vec![support::Zone::parse(
            "transfer.example.",
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nnew 300 IN A 198.51.100.20\nold 300 IN A 198.51.100.21\n",
        )],
    );
    let ip = support::fresh_ip();
    let Some(knot) = Knot::start(
        SocketAddr::new("127.0.94.1".parse().expect("ip"), 5399),
        "xfr.rpz.example",
        &zone(1, ""),
        SocketAddr::new(ip, 5300),
    ) else {
        return;
    };
    let cp = Cleanpipe::start_at(
        ip,
        "  mode: forward\n  forward:\n    - address: 127.0.94.9\n      port: 5354",
        &feed_yaml(TSIG_SECRET),
        &[],
    );
    // AXFR at start.
    let first = support::within(Duration::from_secs(10), || {
        blocked(&cp, "c2.transfer.example.")
    });
    assert!(
        first.is_some(),
        "AXFR did not arrive; cleanpipe log:\n{}\nknot log:\n{}",
        cp.log(),
        knot.log()
    );
    assert!(cp.log().contains("AXFR"), "{}", cp.log());
    assert!(!blocked(&cp, "new.transfer.example."));
    let asked = upstream.count("new.transfer.example", RecordType::A);
    // A change on the primary: Knot sends NOTIFY, cleanpipe asks for IXFR.
    knot.update(
        &zone(2, "new.transfer.example CNAME .\n").replace("old.transfer.example CNAME .\n", ""),
    );
    let took = support::within(Duration::from_secs(5), || {
        blocked(&cp, "new.transfer.example.")
    });
    assert!(
        took.is_some(),
        "IXFR after NOTIFY did not arrive within 5 s; cleanpipe log:\n{}\nknot log:\n{}",
        cp.log(),
        knot.log()
    );
    eprintln!("change on the primary in force after {took:?}");
    assert!(
        cp.log().contains("IXFR"),
        "incremental transfer used: {}",
        cp.log()
    );
    assert!(
        knot.log().to_ascii_lowercase().contains("notify"),
        "Knot sent NOTIFY: {}",
        knot.log()
    );
    let d = dig(cp.dns, None, "old.transfer.example", "A", &[]);
    assert!(
        d.answers.iter().any(|a| a.ends_with("198.51.100.21")),
        "a name deleted by IXFR resolves again: {}",
        d.text
    );
    assert!(d.ede.is_none());
    assert_eq!(
        upstream.count("new.transfer.example", RecordType::A),
        asked,
        "blocked after IXFR, never upstream"
    );
    let (_, st) = cp.admin("GET", "/v1/status", None);
    // c2 and new (old was deleted by the IXFR); `ns` with its A record is a trigger too, as in BIND.
    assert_eq!(st["counts"]["feed_triggers"], 3, "{st}");
}

#[test]
fn wrong_tsig_key_is_refused_and_nothing_is_loaded() {
    // The upstream knows the C2 name: unfiltered, it resolves to an address.
    let _upstream = support::start_server(
        "127.0.94.8",
        5354,
        vec![support::Zone::parse(
            "transfer.example.",
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nc2 300 IN A 198.51.100.66\n",
        )],
    );
    let ip = support::fresh_ip();
    let Some(knot) = Knot::start(
        SocketAddr::new("127.0.94.2".parse().expect("ip"), 5399),
        "xfr.rpz.example",
        &zone(1, ""),
        SocketAddr::new(ip, 5300),
    ) else {
        return;
    };
    let wrong = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE=";
    let cp = Cleanpipe::start_at(
        ip,
        "  mode: forward\n  forward:\n    - address: 127.0.94.8\n      port: 5354",
        &feed_yaml(wrong).replace("127.0.94.1", "127.0.94.2"),
        &[],
    );
    let failures = || cp.metric("cleanpipe_feed_transfer_failures_total", &[]);
    let failed = support::within(Duration::from_secs(10), || failures().unwrap_or(0.0) >= 1.0);
    assert!(
        failed.is_some(),
        "a wrong key must fail the transfer and count it (counter {:?}); log:\n{}\nknot:\n{}",
        failures(),
        cp.log(),
        knot.log()
    );
    assert!(
        cp.log().contains("rejected our TSIG signature"),
        "the log says why: {}",
        cp.log()
    );
    let m = query(
        cp.dns,
        "127.0.0.70".parse::<IpAddr>().expect("ip"),
        "c2.transfer.example.",
        RecordType::A,
    );
    assert_eq!(
        support::addresses(&m),
        vec!["198.51.100.66".to_owned()],
        "nothing from an unauthenticated transfer is in force: the name resolves; log:\n{}",
        cp.log()
    );
    assert_eq!(support::ede(&m), None);
    let (_, st) = cp.admin("GET", "/v1/status", None);
    assert_eq!(st["counts"]["feed_triggers"], 0, "{st}");
}

/// Restarted while its primary is unreachable, cleanpipe serves the last good copy of the
/// feed from its first answer on (as BIND and Unbound secondaries do), shows its serial and
/// age, and warns once the copy is older than `max_age_hours`.
#[test]
fn the_last_good_copy_survives_a_restart_without_the_primary() {
    let _upstream = support::start_server(
        "127.0.94.7",
        5354,
        vec![support::Zone::parse(
            "transfer.example.",
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nc2 300 IN A 198.51.100.66\n",
        )],
    );
    let ip = support::fresh_ip();
    let knot = Knot::start(
        SocketAddr::new("127.0.94.3".parse().expect("ip"), 5399),
        "xfr.rpz.example",
        &zone(41, ""),
        SocketAddr::new(ip, 5300),
    );
    let Some(knot) = knot else { return };
    let feeds = format!(
        "{}    max_age_hours: 0.001\n",
        feed_yaml(TSIG_SECRET).replace("127.0.94.1", "127.0.94.3")
    );
    let mut cp = Cleanpipe::start_at(
        ip,
        "  mode: forward\n  forward:\n    - address: 127.0.94.7\n      port: 5354",
        &feeds,
        &[],
    );
    assert!(
        support::within(Duration::from_secs(10), || blocked(
            &cp,
            "c2.transfer.example."
        ))
        .is_some(),
        "AXFR did not arrive; log:\n{}",
        cp.log()
    );
    let saved = cp.dir.join("cleanpipe-feeds/cert-transfer.rpz");
    let text = std::fs::read_to_string(&saved).expect("the transferred feed is saved");
    assert!(text.contains("c2.transfer.example"), "{text}");
    assert!(
        text.lines().next().is_some_and(|l| l.contains(" 41 ")),
        "{text}"
    );

    // The primary goes away; cleanpipe restarts.
    drop(knot);
    cp.terminate();
    cp.spawn();
    // `spawn` returns on readiness: the very first answer is filtered.
    assert!(
        blocked(&cp, "c2.transfer.example."),
        "the saved copy is in force from the first answer; log:\n{}",
        cp.log()
    );
    let (_, st) = cp.admin("GET", "/v1/status", None);
    let feed = &st["feeds"][0];
    assert_eq!(feed["name"], "cert-transfer", "{st}");
    assert_eq!(feed["serial"], 41, "{st}");
    assert_eq!(feed["copy"], "saved copy", "{st}");
    // max_age_hours is 3.6 s here: once past it the copy is reported stale and still used.
    std::thread::sleep(Duration::from_secs(4));
    let stale = support::within(Duration::from_secs(40), || {
        cp.admin("GET", "/v1/status", None).1["feeds"][0]["stale"] == true
            && cp.log().contains("threat feed copy is stale")
    });
    assert!(stale.is_some(), "stale copy reported; log:\n{}", cp.log());
    assert!(
        blocked(&cp, "c2.transfer.example."),
        "a stale copy is still used"
    );
    assert!(
        cp.metric("cleanpipe_feed_age_seconds", &[("feed", "cert-transfer")])
            .is_some_and(|a| a >= 3.0),
        "the age is a metric"
    );
}
