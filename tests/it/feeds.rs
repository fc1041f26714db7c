//! Threat feeds (RPZ) end to end: every action over real DNS, feed order, log-only mode, botnet
//! detection (quarantine, or an alert inside a whitelisted organisation), reload on change.

use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{self, AuthServer, Cleanpipe, addresses, dig, ede, query, try_query};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const THREATS: &str = "$ORIGIN threats.rpz.example.
@ 300 SOA ns.rpz.example. hostmaster.rpz.example. 1 3600 600 86400 300
@ NS ns.rpz.example.
nx.bad.example        CNAME .
nodata.bad.example    CNAME *.
*.wild.bad.example    CNAME .
drop.bad.example      CNAME rpz-drop.
tcp.bad.example       CNAME rpz-tcp-only.
garden.bad.example    CNAME www.feed.example.
local.bad.example     A 192.0.2.99
local.bad.example     TXT \"blocked by policy\"
allowed.wild.bad.example CNAME rpz-passthru.
32.66.0.0.127.rpz-client-ip CNAME .
";

const BOTNET: &str = "$ORIGIN botnet.rpz.example.
@ 300 SOA ns.rpz.example. hostmaster.rpz.example. 7 3600 600 86400 300
@ TXT \"family=GenericBot\"
c2.evil.example       CNAME .
c2.evil.example       TXT \"family=Emotet\"
panel.evil.example    CNAME .
allowed.wild.bad.example CNAME .
";

const LOGONLY: &str = "$ORIGIN watch.rpz.example.
@ 300 SOA ns.rpz.example. hostmaster.rpz.example. 1 3600 600 86400 300
watched.example       CNAME .
nx.bad.example        CNAME .
";

const ORG: &str = "organisations:
  - id: hospital
    name: Hospital
    networks: [127.0.3.0/24]
    grace_hours: 48
";

fn setup(n: u8) -> (AuthServer, Cleanpipe) {
    let zone = support::Zone::parse(
        "feed.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.10\nother 300 IN A 198.51.100.11\n",
    );
    let bad = support::Zone::parse(
        "bad.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nallowed.wild 300 IN A 198.51.100.12\ntcp 300 IN A 198.51.100.13\n",
    );
    let up = support::start_server(&format!("127.0.96.{n}"), 5354, vec![zone, bad]);
    let feeds = "feeds:
  - name: watchlist
    file: policy/watch.rpz
    log_only: true
  - name: cert-threats
    file: policy/threats.rpz
  - name: cert-botnet
    file: policy/botnet.rpz
    botnet: true
detection:
  debounce_secs: 3600
";
    let cp = Cleanpipe::start(
        &format!("  mode: forward\n  forward:\n    - address: 127.0.96.{n}\n      port: 5354"),
        feeds,
        &[
            ("threats.rpz", THREATS),
            ("botnet.rpz", BOTNET),
            ("watch.rpz", LOGONLY),
            ("organisations.yaml", ORG),
        ],
    );
    (up, cp)
}

#[test]
fn every_rpz_action_over_real_dns() {
    let (up, cp) = setup(1);
    let c = ip("127.0.0.60");
    let d = dig(cp.dns, Some(c), "nx.bad.example", "A", &[]);
    assert_eq!(
        (d.status.as_str(), d.ede),
        ("NXDOMAIN", Some(15)),
        "{}",
        d.text
    );
    assert!(
        d.text.contains("cert-threats"),
        "EDE names the feed: {}",
        d.text
    );
    let m = query(cp.dns, c, "nodata.bad.example.", RecordType::A);
    assert_eq!(
        (m.metadata.response_code, m.answers.len()),
        (ResponseCode::NoError, 0)
    );
    let m = query(cp.dns, c, "deep.wild.bad.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        try_query(
            cp.dns,
            c,
            "drop.bad.example.",
            RecordType::A,
            Duration::from_millis(800)
        )
        .is_err(),
        "DROP sends no answer"
    );
    let m = query(cp.dns, c, "tcp.bad.example.", RecordType::A);
    assert!(m.metadata.truncation, "TCP-only truncates over UDP");
    let d = dig(cp.dns, Some(c), "tcp.bad.example", "A", &["+tcp"]);
    assert!(
        d.answers.iter().any(|a| a.ends_with("198.51.100.13")),
        "over TCP it is resolved normally: {}",
        d.text
    );
    let d = dig(cp.dns, Some(c), "tcp.bad.example", "A", &[]);
    assert!(
        d.text.contains("Truncated, retrying in TCP mode") && d.answers.len() == 1,
        "dig follows TC to TCP: {}",
        d.text
    );
    let m = query(cp.dns, c, "garden.bad.example.", RecordType::A);
    assert_eq!(
        addresses(&m),
        vec!["198.51.100.10"],
        "local-data CNAME is followed"
    );
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(
        addresses(&query(cp.dns, c, "local.bad.example.", RecordType::A)),
        vec!["192.0.2.99"]
    );
    let m = query(cp.dns, c, "local.bad.example.", RecordType::TXT);
    assert_eq!(m.answers.len(), 1);
    // PASSTHRU in an earlier feed wins over the botnet feed listing the same name.
    let m = query(cp.dns, c, "allowed.wild.bad.example.", RecordType::A);
    assert_eq!(
        addresses(&m),
        vec!["198.51.100.12"],
        "passed through to resolution"
    );
    assert_eq!(up.count("allowed.wild.bad.example", RecordType::A), 1);
    // rpz-client-ip: this client gets NXDOMAIN for everything.
    let m = query(cp.dns, ip("127.0.0.66"), "www.feed.example.", RecordType::A);
    assert_eq!(
        (m.metadata.response_code, ede(&m)),
        (ResponseCode::NXDomain, Some(15))
    );
    // Feeds never sent a blocked query upstream; normal names still resolve.
    for n in [
        "nx.bad.example",
        "nodata.bad.example",
        "deep.wild.bad.example",
        "local.bad.example",
    ] {
        assert_eq!(
            up.count(n, RecordType::A),
            0,
            "{n} must not reach the upstream"
        );
    }
    assert_eq!(
        addresses(&query(cp.dns, c, "www.feed.example.", RecordType::A)),
        vec!["198.51.100.10"]
    );
}

#[test]
fn log_only_feed_changes_nothing_but_counts() {
    let (_up, cp) = setup(2);
    let c = ip("127.0.0.61");
    let m = query(cp.dns, c, "watched.example.", RecordType::A);
    assert_ne!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "log-only: the answer is not rewritten"
    );
    assert_eq!(ede(&m), None);
    // An earlier log-only match does not stop a later feed.
    assert_eq!(
        query(cp.dns, c, "nx.bad.example.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    let (_, metrics) =
        cleanpipe::web::client::call(cp.admin, "GET", "/metrics", None, None).expect("metrics");
    assert!(
        metrics.contains("cleanpipe_feed_log_only_matches_total 2"),
        "{metrics}"
    );
    assert!(cp.log().contains("log-only feed matched"));
}

#[test]
fn botnet_lookup_quarantines_the_subscriber() {
    let (up, cp) = setup(3);
    let c = ip("127.0.0.90");
    assert_eq!(
        addresses(&query(cp.dns, c, "www.feed.example.", RecordType::A)),
        vec!["198.51.100.10"]
    );
    let d = dig(cp.dns, Some(c), "c2.evil.example", "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    // Flagging is asynchronous (evidence written, policy rebuilt): wait for it through the
    // admin API, which sends nothing upstream, then the next unrelated lookup lands on the
    // cleanup page.
    let flagged = support::within(Duration::from_secs(3), || {
        let (_, e) = cp.admin(
            "GET",
            "/v1/explain?client=127.0.0.90&name=other.feed.example",
            None,
        );
        e["reason"] == "quarantined"
    });
    assert!(
        flagged.is_some(),
        "subscriber not quarantined; log:\n{}",
        cp.log()
    );
    eprintln!("flagged {flagged:?} after the C2 lookup");
    assert_eq!(
        addresses(&query(cp.dns, c, "other.feed.example.", RecordType::A)),
        vec![cp.sink()]
    );
    assert_eq!(up.count("other.feed.example", RecordType::A), 0);
    // The cleanup page names the family from the feed's TXT record and the name looked up;
    // evidence is durable.
    let page = cp.page(c, "/", &[]);
    assert!(
        page.body.contains("Emotet")
            && page.body.contains("botnet detection")
            && page.body.contains("c2.evil.example")
            && page.body.contains("cert-botnet"),
        "{}",
        page.body
    );
    // explain shows the evidence: the C2 name, the feed, the family, when, and the origin.
    let (_, e) = cp.admin(
        "GET",
        "/v1/explain?client=127.0.0.90&name=other.feed.example",
        None,
    );
    let details = e["details"].to_string();
    assert!(
        details.contains("looked up c2.evil.example (threat feed `cert-botnet`, family Emotet) 20"),
        "{e}"
    );
    assert!(details.contains("(botnet detection)"), "origin: {e}");
    assert!(!details.contains("admin-api"), "not an admin change: {e}");
    let (_, audit) = cp.admin("GET", "/v1/audit", None);
    assert!(audit.as_array().expect("list").iter().any(|a| {
        a["action"] == "detect"
            && a["detail"]
                .as_str()
                .is_some_and(|d| d.contains("c2.evil.example"))
    }));
    // Another subscriber is not affected.
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.0.91"),
            "other.feed.example.",
            RecordType::A
        )),
        vec!["198.51.100.11"]
    );
}

#[test]
fn botnet_lookup_inside_whitelisted_organisation_alerts_instead() {
    let (_up, cp) = setup(4);
    let c = ip("127.0.3.7");
    // Over UDP without a cookie the lookup is not proven: TC=1, the client asks over TCP.
    let m = query(cp.dns, c, "panel.evil.example.", RecordType::A);
    assert!(
        m.metadata.truncation,
        "unproven UDP lookup of a botnet name: TC"
    );
    let m = hickory_proto::op::Message::from_vec(
        &support::tcp_exchange(
            cp.dns,
            c,
            &m.queries
                .first()
                .map(|q| {
                    let mut m = hickory_proto::op::Message::query();
                    m.add_query(q.clone());
                    m.to_vec().expect("query")
                })
                .expect("question"),
            Duration::from_secs(3),
        )
        .expect("TCP answer"),
    )
    .expect("valid");
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "the C2 name itself is still blocked"
    );
    let alerted = support::within(Duration::from_secs(3), || {
        let (_, e) = cp.admin(
            "GET",
            "/v1/explain?client=127.0.3.7&name=www.feed.example",
            None,
        );
        e["reason"] == "organisation_alert"
    });
    assert!(
        alerted.is_some(),
        "the detection must turn into an alert; log:\n{}",
        cp.log()
    );
    assert_eq!(
        addresses(&query(cp.dns, c, "www.feed.example.", RecordType::A)),
        vec!["198.51.100.10"],
        "no quarantine"
    );
    let (_, e) = cp.admin(
        "GET",
        "/v1/explain?client=127.0.3.7&name=www.feed.example",
        None,
    );
    assert!(
        e["details"].to_string().contains("GenericBot"),
        "zone-level family: {e}"
    );
}

#[test]
fn feed_file_change_is_picked_up_and_broken_feed_is_reported() {
    let (_up, cp) = setup(5);
    let c = ip("127.0.0.62");
    assert_eq!(
        addresses(&query(cp.dns, c, "other.feed.example.", RecordType::A)),
        vec!["198.51.100.11"]
    );
    cp.write_policy(
        "threats.rpz",
        &format!("{THREATS}other.feed.example CNAME .\n"),
    );
    assert!(
        support::within(Duration::from_secs(2), || query(
            cp.dns,
            c,
            "other.feed.example.",
            RecordType::A
        )
        .metadata
        .response_code
            == ResponseCode::NXDomain)
        .is_some()
    );
    cp.write_policy(
        "threats.rpz",
        &format!("{THREATS}broken.example A 300.1.1.1\n"),
    );
    let reported = support::within(Duration::from_secs(3), || {
        let (_, st) = cp.admin("GET", "/v1/status", None);
        st["reload"]["last_errors"]
            .to_string()
            .contains("threats.rpz:14: bad IPv4 address `300.1.1.1`")
    });
    assert!(
        reported.is_some(),
        "{}",
        cp.admin("GET", "/v1/status", None).1
    );
    assert_eq!(
        query(cp.dns, c, "other.feed.example.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain,
        "the last good copy keeps serving"
    );
}

/// A feed broken at start-up: one message that says start-up failed, the first errors with
/// file:line, how many more; never "the previous policy stays in force" (there is none), and
/// nothing served.
#[test]
fn a_broken_feed_at_start_up_says_so_once_with_the_first_errors() {
    let bad: String = (0..100)
        .map(|i| format!("c{i}.evil.example A 999.0.0.{i}\n"))
        .collect();
    let feed = format!("$ORIGIN broken.rpz.example.\n@ SOA ns hm 1 1 1 1 1\n{bad}");
    let cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.96.99\n      port: 5354",
        "feeds:\n  - name: broken\n    file: policy/broken.rpz\n",
        &[("broken.rpz", &feed)],
    );
    let (status, log) = cp.serve_until_exit(Duration::from_secs(20));
    assert!(!status.success(), "{log}");
    assert_eq!(
        log.matches("start-up failed").count(),
        2,
        "one log line, one final error: {log}"
    );
    assert!(!log.contains("previous policy"), "{log}");
    assert!(log.contains("broken.rpz:3: bad IPv4 address"), "{log}");
    assert!(log.contains("and 90 more"), "{log}");
    let lines = log.lines().count();
    assert!(lines < 20, "{lines} lines for one broken feed:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal"
    );
}

/// A host already flagged (by an abuse feed) that looks up another botnet's C2 name leaves
/// evidence of the new signature, shown by explain and the cleanup page; inside a whitelisted
/// organisation the new signature opens an alert of its own.
#[test]
fn lookups_by_hosts_already_flagged_are_recorded_per_signature() {
    let (_up, cp) = setup(6);
    // Reported an hour ago: the organisation is well within its 48 h to clean up.
    let seen = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    cp.write_policy(
        "infected.yaml",
        &format!("infected:\n  - {{prefix: 127.0.0.93, family: Mirai, source: shadowserver, first_seen: \"{seen}\"}}\n  - {{prefix: 127.0.3.9, family: Mirai, source: shadowserver, first_seen: \"{seen}\"}}\n"),
    );
    let explain = |client: &str| {
        cp.admin(
            "GET",
            &format!("/v1/explain?client={client}&name=www.feed.example"),
            None,
        )
        .1
    };
    assert!(
        support::within(Duration::from_secs(3), || explain("127.0.0.93")["reason"]
            == "quarantined")
        .is_some()
    );
    // The quarantined host looks up two botnets' names (Emotet by its own TXT, GenericBot by
    // the zone's).
    let c = ip("127.0.0.93");
    let d = dig(cp.dns, Some(c), "c2.evil.example", "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    let d = dig(cp.dns, Some(c), "panel.evil.example", "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    let both = support::within(Duration::from_secs(3), || {
        let e = explain("127.0.0.93").to_string();
        e.contains("looked up c2.evil.example") && e.contains("looked up panel.evil.example")
    });
    assert!(
        both.is_some(),
        "evidence of both signatures: {}",
        explain("127.0.0.93")
    );
    let e = explain("127.0.0.93");
    assert!(
        e["details"].to_string().contains("family Mirai"),
        "the abuse feed's flag stays: {e}"
    );
    let page = cp.page(c, "/", &[]);
    for needle in [
        "Mirai",
        "c2.evil.example",
        "Emotet",
        "panel.evil.example",
        "GenericBot",
    ] {
        assert!(
            page.body.contains(needle),
            "{needle} on the page: {}",
            page.body
        );
    }
    // A repeated lookup of the same signature within the debounce is not a new record.
    let d = dig(cp.dns, Some(c), "c2.evil.example", "A", &[]);
    assert_eq!(d.status, "NXDOMAIN");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !explain("127.0.0.93").to_string().contains("2 lookups"),
        "debounced per host and signature: {}",
        explain("127.0.0.93")
    );

    // Inside the whitelisted organisation: the Mirai alert, then one for Emotet.
    let h = ip("127.0.3.9");
    let alerts = || {
        cp.admin("GET", "/v1/alerts?org=hospital", None)
            .1
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        support::within(Duration::from_secs(5), || alerts().len() == 1).is_some(),
        "the abuse feed's alert: {:?}",
        alerts()
    );
    let d = dig(cp.dns, Some(h), "c2.evil.example", "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    let two = support::within(Duration::from_secs(5), || {
        let a = alerts();
        a.len() == 2 && a.iter().any(|a| a["signature"] == "Emotet")
    });
    assert!(
        two.is_some(),
        "a new signature opens its own alert: {:?}",
        alerts()
    );
    let (_, e) = cp.admin(
        "GET",
        "/v1/explain?client=127.0.3.9&name=www.feed.example",
        None,
    );
    assert_eq!(e["reason"], "organisation_alert", "still whitelisted: {e}");
}
