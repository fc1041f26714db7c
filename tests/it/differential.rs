//! One request path: the same queries over UDP, TCP, DoT and DoH get the same answers, apart
//! from the ID and the framing (and where UDP must truncate: TC=1 over UDP, the whole answer on
//! the others; and RPZ DROP, where HTTP must answer something: SERVFAIL over DoH). The corpus
//! covers normal resolution, every policy answer, every feed action, EDNS variants, truncation
//! and malformed packets.

use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

use crate::support::{self, Cleanpipe};

const THREATS: &str = "$ORIGIN diff.rpz.example.
@ 300 SOA ns.rpz.example. hostmaster.rpz.example. 1 3600 600 86400 300
nx.bad.example        CNAME .
nodata.bad.example    CNAME *.
drop.bad.example      CNAME rpz-drop.
tcp.bad.example       CNAME rpz-tcp-only.
garden.bad.example    CNAME www.diff.example.
local.bad.example     A 192.0.2.99
local.bad.example     TXT \"blocked by policy\"
";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A query message: name, type, EDNS payload (None: no OPT), DO, CD, RD.
fn q(name: &str, qtype: RecordType, edns: Option<u16>, dnssec_ok: bool, cd: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m.to_vec().expect("encodes")
}

/// The reply with what may differ between transports removed: the ID, and every TTL (the
/// second query may come a second later and see TTLs one lower).
fn normalised(reply: &[u8]) -> Vec<u8> {
    let mut m = Message::from_vec(reply).expect("a valid reply");
    m.metadata.id = 0;
    for r in m
        .answers
        .iter_mut()
        .chain(m.authorities.iter_mut())
        .chain(m.additionals.iter_mut())
    {
        r.ttl = 0;
    }
    m.to_vec().expect("re-encodes")
}

#[test]
fn udp_and_tcp_answer_the_same_corpus_the_same_way() {
    let big: String = (0..10)
        .map(|i| format!("big 300 IN TXT \"{}{}\"\n", i, "x".repeat(200)))
        .collect();
    let zone = support::Zone::parse(
        "diff.example.",
        &format!(
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.30\nwww 300 IN AAAA 2001:db8::30\nmail 300 IN MX 10 www\nalias 300 IN CNAME www\n{big}"
        ),
    );
    let bad = support::Zone::parse(
        "bad.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\ntcp 300 IN A 198.51.100.31\n",
    );
    let _up = support::start_server("127.0.91.1", 5354, vec![zone, bad]);
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.91.1\n      port: 5354",
        "feeds:\n  - name: diff-feed\n    file: policy/diff.rpz\n",
        &[
            ("diff.rpz", THREATS),
            (
                "infected.yaml",
                "infected:\n  - {prefix: 127.0.91.66, family: Mirai, source: cert, first_seen: 2026-11-20T08:00:00Z}\n",
            ),
            (
                "enrolments.yaml",
                "enrolments:\n  - {prefix: 127.0.91.20, profile: kids, enabled_by: portal, enabled_at: 2026-11-01T10:00:00Z}\n",
            ),
        ],
    );
    let ca = support::tls::make_ca(&cp.dir);
    support::tls::make_server_cert(
        &cp.dir,
        &cp.dir.join("cert.pem"),
        &cp.dir.join("key.pem"),
        1,
    );
    let (dot, doh) = (
        std::net::SocketAddr::new(cp.dns.ip(), 8853),
        std::net::SocketAddr::new(cp.dns.ip(), 8443),
    );
    cp.edit_config(|c| {
        format!("{c}tls:\n  certificate: cert.pem\n  key: key.pem\n  dot: [\"{dot}\"]\n  doh: [\"{doh}\"]\n")
    });
    cp.spawn();
    let (normal, infected, kid) = (ip("127.0.91.10"), ip("127.0.91.66"), ip("127.0.91.20"));
    let corpus: Vec<(&str, IpAddr, Vec<u8>)> = vec![
        (
            "A, no EDNS",
            normal,
            q("www.diff.example.", RecordType::A, None, false, false),
        ),
        (
            "AAAA, EDNS 1232",
            normal,
            q(
                "www.diff.example.",
                RecordType::AAAA,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "mixed case",
            normal,
            q("WwW.DiFf.ExAmPlE.", RecordType::A, Some(4096), false, false),
        ),
        (
            "MX, DO and CD",
            normal,
            q("mail.diff.example.", RecordType::MX, Some(1232), true, true),
        ),
        (
            "CNAME chain",
            normal,
            q(
                "alias.diff.example.",
                RecordType::A,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "NXDOMAIN upstream",
            normal,
            q(
                "nope.diff.example.",
                RecordType::A,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "NODATA upstream",
            normal,
            q("www.diff.example.", RecordType::TXT, None, false, false),
        ),
        (
            "truncated without EDNS",
            normal,
            q("big.diff.example.", RecordType::TXT, None, false, false),
        ),
        (
            "truncated at 1232",
            normal,
            q(
                "big.diff.example.",
                RecordType::TXT,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "EDNS payload below 512",
            normal,
            q("www.diff.example.", RecordType::A, Some(100), false, false),
        ),
        (
            "quarantined A",
            infected,
            q("www.diff.example.", RecordType::A, Some(1232), false, false),
        ),
        (
            "quarantined AAAA",
            infected,
            q(
                "www.diff.example.",
                RecordType::AAAA,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "quarantined MX",
            infected,
            q("www.diff.example.", RecordType::MX, None, false, false),
        ),
        (
            "kids outside the zone",
            kid,
            q("www.diff.example.", RecordType::A, Some(1232), false, false),
        ),
        (
            "kids safe search",
            kid,
            q("www.google.com.", RecordType::A, Some(1232), false, false),
        ),
        (
            "feed NXDOMAIN",
            normal,
            q("nx.bad.example.", RecordType::A, Some(1232), false, false),
        ),
        (
            "feed NODATA",
            normal,
            q(
                "nodata.bad.example.",
                RecordType::A,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "feed DROP",
            normal,
            q("drop.bad.example.", RecordType::A, Some(1232), false, false),
        ),
        (
            "feed TCP-only",
            normal,
            q("tcp.bad.example.", RecordType::A, Some(1232), false, false),
        ),
        (
            "feed garden CNAME",
            normal,
            q(
                "garden.bad.example.",
                RecordType::A,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "feed local A",
            normal,
            q(
                "local.bad.example.",
                RecordType::A,
                Some(1232),
                false,
                false,
            ),
        ),
        (
            "feed local TXT",
            normal,
            q("local.bad.example.", RecordType::TXT, None, false, false),
        ),
        ("class CH", normal, {
            let mut b = q("version.bind.", RecordType::TXT, None, false, false);
            let n = b.len();
            b[n - 1] = 3; // QCLASS CH
            b
        }),
        (
            "AXFR",
            normal,
            q("diff.example.", RecordType::AXFR, None, false, false),
        ),
        ("EDNS version 1", normal, {
            let mut b = q("www.diff.example.", RecordType::A, Some(1232), false, false);
            let n = b.len();
            b[n - 5] = 1;
            b
        }),
        ("two questions", normal, {
            let mut b = q("www.diff.example.", RecordType::A, None, false, false);
            b[5] = 2;
            b
        }),
        ("opcode UPDATE", normal, {
            let mut b = q("www.diff.example.", RecordType::A, None, false, false);
            b[2] |= 5 << 3;
            b
        }),
        ("cut short", normal, {
            let b = q("www.diff.example.", RecordType::A, None, false, false);
            b[..b.len() - 3].to_vec()
        }),
    ];
    let (mut compared, mut dot_doh) = (0, 0);
    for (what, client, query) in &corpus {
        // DROP answers nothing: wait less for it.
        let wait = Duration::from_millis(if *what == "feed DROP" { 700 } else { 3000 });
        // Over UDP first: a miss is resolved, so TCP then sees the same cached answer.
        let udp = support::udp_exchange(cp.dns, *client, query, wait);
        let tcp = support::tcp_exchange(cp.dns, *client, query, wait);
        match (&udp, &tcp) {
            (None, None) => {
                assert_eq!(*what, "feed DROP", "{what}: no answer on either transport");
                continue;
            }
            (Some(u), Some(t)) => {
                let (um, tm) = (
                    Message::from_vec(u).expect("valid UDP reply"),
                    Message::from_vec(t).expect("valid TCP reply"),
                );
                assert_eq!(um.metadata.id, 0x4242, "{what}: the query's ID over UDP");
                assert_eq!(tm.metadata.id, 0x4242, "{what}: the query's ID over TCP");
                if um.metadata.truncation {
                    // UDP could not carry it: TC=1 and nothing but the question (and OPT).
                    assert!(!tm.metadata.truncation, "{what}: TCP carries it whole");
                    assert!(um.answers.is_empty(), "{what}");
                    assert!(!tm.answers.is_empty(), "{what}: TCP has the records");
                    assert!(
                        matches!(
                            *what,
                            "truncated without EDNS" | "truncated at 1232" | "feed TCP-only"
                        ),
                        "{what}: unexpected truncation"
                    );
                } else {
                    assert_eq!(
                        normalised(u),
                        normalised(t),
                        "{what}: UDP and TCP differ\nUDP: {um:?}\nTCP: {tm:?}"
                    );
                }
                compared += 1;
            }
            _ => panic!("{what}: answered on one transport only (UDP {udp:?}, TCP {tcp:?})"),
        }
        // DoT and DoH, from the same client: the TCP answer exactly (ID and TTLs aside).
        let tcp = tcp.expect("answered over TCP");
        let mut d = support::tls::Dot::connect(dot, *client, &ca).expect("DoT");
        let over_dot = d.exchange(query).expect("DoT answer");
        assert_eq!(
            normalised(&over_dot),
            normalised(&tcp),
            "{what}: DoT differs from TCP"
        );
        let over_doh = support::tls::doh_post(doh, *client, &ca, query).expect("DoH answer");
        assert_eq!(
            normalised(&over_doh),
            normalised(&tcp),
            "{what}: DoH differs from TCP"
        );
        dot_doh += 1;
    }
    assert_eq!(
        dot_doh,
        corpus.len() - 1,
        "every query but DROP compared over DoT and DoH"
    );
    assert_eq!(
        compared,
        corpus.len() - 1,
        "every query but DROP answered on both"
    );
}
