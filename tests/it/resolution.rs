//! The resolution core against real servers on loopback: failover on dead and half-lame
//! delegations (timed), answers in canonical case through a real upstream that echoes the 0x20
//! mix (Knot), conformance on odd and broken authoritative answers (a scripted server in the
//! private internet), serve-stale and prefetch.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use crate::support::{self, Cleanpipe, Knot, dig, ede, query, recursive_yaml};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn recursive() -> Option<Cleanpipe> {
    let internet = support::internet()?;
    Some(Cleanpipe::start(
        &recursive_yaml(internet),
        "cache:\n  servfail_ttl: 5\n",
        &[],
    ))
}

fn timed(f: impl FnOnce() -> hickory_proto::op::Message) -> (hickory_proto::op::Message, Duration) {
    let t = Instant::now();
    let m = f();
    (m, t.elapsed())
}

#[test]
fn a_half_lame_domain_answers_quickly_cold_and_at_full_speed_once_known() {
    let Some(cp) = recursive() else { return };
    let client = ip("127.0.0.9");
    // One of the two name servers of halflame.example never answers.
    let (m, cold) = timed(|| query(cp.dns, client, "w0.halflame.example.", RecordType::A));
    assert_eq!(support::addresses(&m), vec!["192.0.2.100"]);
    assert!(cold <= Duration::from_millis(1500), "cold: {cold:?}");
    // Other names of the zone: the dead server is known, the live one is asked first.
    for i in 1..6 {
        let name = format!("w{i}.halflame.example.");
        let (m, t) = timed(|| query(cp.dns, client, &name, RecordType::A));
        assert_eq!(support::addresses(&m), vec![format!("192.0.2.{}", 100 + i)]);
        assert!(
            t <= Duration::from_millis(300),
            "{name} once the zone is known: {t:?}"
        );
    }
    // A name asked before comes from the cache.
    let (_, warm) = timed(|| query(cp.dns, client, "w0.halflame.example.", RecordType::A));
    assert!(warm <= Duration::from_millis(50), "cached: {warm:?}");
}

#[test]
fn a_dead_delegation_fails_within_three_seconds_with_ede_22_then_from_the_failure_cache() {
    let Some(cp) = recursive() else { return };
    let client = ip("127.0.0.9");
    let (m, first) = timed(|| query(cp.dns, client, "www.dead.example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&m), Some(22), "No Reachable Authority");
    assert!(first <= Duration::from_secs(3), "first failure: {first:?}");
    let (m, again) = timed(|| query(cp.dns, client, "www.dead.example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&m), Some(22));
    assert!(
        again <= Duration::from_millis(50),
        "from the failure cache: {again:?}"
    );
}

#[test]
fn one_lost_packet_to_a_zones_only_server_does_not_fail_the_lookup() {
    let Some(cp) = recursive() else { return };
    // odd.example. has one name server; it drops the first query for this name.
    let (m, t) = timed(|| query(cp.dns, ip("127.0.0.9"), "lossy.odd.example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(support::addresses(&m), vec!["192.0.2.62"]);
    assert!(
        t <= Duration::from_secs(3),
        "answered after one retry: {t:?}"
    );
}

#[test]
fn odd_but_legal_answers_pass_and_broken_ones_are_cleaned() {
    let Some(cp) = recursive() else { return };
    let client = ip("127.0.0.9");
    let ask = |name: &str, t: RecordType| query(cp.dns, client, name, t);

    // NXDOMAIN without an SOA record: passed on, not turned into SERVFAIL.
    let m = ask("nosoa.odd.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // A CNAME to a name that does not exist: NXDOMAIN, and the CNAME is kept (RFC 6604).
    let m = ask("cnx.odd.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        m.answers
            .iter()
            .any(|r| matches!(&r.data, RData::CNAME(t) if t.0.to_ascii() == "gone.odd.example.")),
        "{m:?}"
    );

    // A CNAME to a name without the type: NODATA with the CNAME.
    let m = ask("cnodata.odd.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);

    // The same CNAME twice: once.
    let m = ask("dup.odd.example.", RecordType::A);
    let cnames = m
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .count();
    assert_eq!(cnames, 1, "{m:?}");
    assert_eq!(support::addresses(&m), vec!["192.0.2.60"]);

    // An A record beside the AAAA asked for, and a record of an unrelated name: dropped.
    let m = ask("wrongtype.odd.example.", RecordType::AAAA);
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert_eq!(support::addresses(&m), vec!["2001:db8::61"]);
    let m = ask("victim.beta.example.", RecordType::AAAA);
    assert!(
        support::addresses(&m).is_empty(),
        "the injected record was not cached: {m:?}"
    );

    // Truncated over UDP: asked again over TCP.
    let m = ask("tc.odd.example.", RecordType::TXT);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        m.answers
            .iter()
            .any(|r| r.data.to_string().contains("over tcp")),
        "{m:?}"
    );

    // A referral where an answer was expected: followed.
    let m = ask("www.ref.odd.example.", RecordType::A);
    assert_eq!(support::addresses(&m), vec!["192.0.2.70"]);
}

#[test]
fn forwarded_answers_carry_the_canonical_case_whatever_the_0x20_mix() {
    let zone = "$ORIGIN bank.example.\n@ 300 SOA ns hostmaster 1 3600 600 86400 300\n@ 300 NS ns\nns 300 A 127.0.75.1\n@ 300 MX 10 mail\nmail 300 A 192.0.2.80\nlogin 300 CNAME www\nwww 300 A 192.0.2.81\nc1 300 CNAME c2\nc2 300 CNAME c3.long.chain.bank.example.\nc3.long.chain 300 A 192.0.2.82\n";
    let Some(_knot) = Knot::start(
        "127.0.75.1:5355".parse().expect("addr"),
        "bank.example.",
        zone,
        "127.0.75.99:5399".parse().expect("addr"),
    ) else {
        return;
    };
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.75.1\n      port: 5355",
        "",
        &[],
    );
    let client = ip("127.0.0.9");
    for (name, qtype, expect) in [
        ("bank.example", "MX", "mail.bank.example."),
        ("login.bank.example", "A", "www.bank.example."),
        ("c1.bank.example", "A", "c3.long.chain.bank.example."),
    ] {
        // Several times: the random mix differs each time, the answer must not.
        for _ in 0..4 {
            let d = dig(cp.dns, Some(client), name, qtype, &["+norecurse"]);
            assert_eq!(d.status, "NOERROR", "{}", d.text);
            let text = d.answers.join("\n");
            assert!(text.contains(expect), "{name} {qtype}:\n{text}");
            // Every name (owner and data) exactly as in the zone: all lowercase.
            for word in text.split_whitespace().filter(|w| w.ends_with('.')) {
                assert_eq!(
                    word.to_ascii_lowercase(),
                    word,
                    "{name} {qtype}: the 0x20 mix leaked:\n{text}"
                );
            }
        }
    }
}

/// An upstream on 127.0.74.N:5354 with short TTLs, and cleanpipe forwarding to it.
fn short_lived(n: u8, ttl: u32, extra: &str) -> (support::AuthServer, Cleanpipe) {
    let zone = support::Zone::parse(
        "stale.example.",
        &format!(
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww {ttl} IN A 198.51.100.90\n"
        ),
    );
    let up = support::start_server(&format!("127.0.74.{n}"), 5354, vec![zone]);
    let cp = Cleanpipe::start(
        &format!(
            "  mode: forward\n  forward:\n    - address: 127.0.74.{n}\n      port: 5354\n  query_timeout_secs: 1"
        ),
        extra,
        &[],
    );
    (up, cp)
}

#[test]
fn an_expired_answer_is_served_stale_when_the_upstream_is_gone_and_never_over_policy() {
    let (up, cp) = short_lived(1, 2, "");
    let client = ip("127.0.0.9");
    let m = query(cp.dns, client, "www.stale.example.", RecordType::A);
    assert_eq!(support::addresses(&m), vec!["198.51.100.90"]);
    assert_eq!(ede(&m), None);
    up.go_silent();
    std::thread::sleep(Duration::from_millis(2500));
    // Expired, and the upstream does not answer: the old answer, TTL 30, EDE 3.
    let m = query(cp.dns, client, "www.stale.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(support::addresses(&m), vec!["198.51.100.90"]);
    assert_eq!(ede(&m), Some(3), "Stale Answer");
    assert!(m.answers.iter().all(|r| r.ttl <= 30 && r.ttl > 0), "{m:?}");
    // For the next 30 s it comes from the cache at once.
    let (m, t) = timed(|| query(cp.dns, client, "www.stale.example.", RecordType::A));
    assert_eq!(ede(&m), Some(3));
    assert!(t <= Duration::from_millis(50), "{t:?}");
    assert_eq!(cp.metric("cleanpipe_stale_answers_total", &[]), Some(1.0));
    // A stale answer never overrides policy: a quarantined client gets the cleanup page.
    let (code, body) = cp.admin(
        "POST",
        "/v1/infected",
        Some(r#"{"prefix": "127.0.0.9", "family": "Mirai"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let m = query(cp.dns, client, "www.stale.example.", RecordType::A);
    assert_eq!(support::addresses(&m), vec![cp.sink()]);
}

#[test]
fn a_popular_name_is_refreshed_before_it_expires() {
    let (up, cp) = short_lived(2, 10, "");
    let client = ip("127.0.0.9");
    let name = "www.stale.example.";
    let _ = query(cp.dns, client, name, RecordType::A);
    assert_eq!(up.count(name, RecordType::A), 1);
    // In the last tenth of the TTL: answered from the cache, refreshed in the background.
    std::thread::sleep(Duration::from_millis(9300));
    let (m, t) = timed(|| query(cp.dns, client, name, RecordType::A));
    assert_eq!(support::addresses(&m), vec!["198.51.100.90"]);
    assert!(t <= Duration::from_millis(50), "{t:?}");
    assert!(
        support::within(Duration::from_secs(2), || up.count(name, RecordType::A)
            == 2)
        .is_some(),
        "no background refresh"
    );
    // After the old entry's TTL: the refreshed one answers, the upstream is not asked again.
    std::thread::sleep(Duration::from_millis(1500));
    let m = query(cp.dns, client, name, RecordType::A);
    assert_eq!(support::addresses(&m), vec!["198.51.100.90"]);
    assert!(m.answers.iter().all(|r| r.ttl >= 5), "fresh TTL: {m:?}");
    assert_eq!(up.count(name, RecordType::A), 2);
    assert!(cp.metric("cleanpipe_prefetches_total", &[]) >= Some(1.0));
}
