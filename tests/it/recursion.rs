//! Recursion through a private internet on loopback, forwarding, access control.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use crate::support::{self, Cleanpipe, addresses, dig, ede, query, recursive_yaml};

fn client() -> IpAddr {
    "127.0.0.1".parse().expect("loopback")
}

fn recursive() -> Option<(Cleanpipe, &'static support::Internet)> {
    let net = support::internet()?;
    Some((Cleanpipe::start(&recursive_yaml(net), "", &[]), net))
}

#[test]
fn referral_with_glue_answers_a_aaaa_mx_txt() {
    let Some((cp, _)) = recursive() else { return };
    let m = query(cp.dns, client(), "www.alpha.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), vec!["192.0.2.10"]);
    assert!(m.metadata.recursion_available, "a resolver sets RA");
    let m = query(cp.dns, client(), "www.alpha.example.", RecordType::AAAA);
    assert_eq!(addresses(&m), vec!["2001:db8::10"]);
    let m = query(cp.dns, client(), "alpha.example.", RecordType::MX);
    assert!(
        matches!(&m.answers[..], [r] if matches!(&r.data, RData::MX(mx) if mx.exchange.to_ascii() == "mail.alpha.example.")),
        "{m:?}"
    );
    let d = dig(cp.dns, None, "txt.alpha.example", "TXT", &[]);
    assert_eq!(d.status, "NOERROR");
    assert!(
        d.answers.iter().any(|l| l.contains("\"hello from alpha\"")),
        "{}",
        d.text
    );
}

#[test]
fn out_of_bailiwick_name_server_is_looked_up() {
    let Some((cp, net)) = recursive() else { return };
    let m = query(cp.dns, client(), "www.beta.example.", RecordType::A);
    assert_eq!(addresses(&m), vec!["192.0.2.20"]);
    assert!(
        net.server("127.53.1.2")
            .count("ns.beta-dns.test", RecordType::A)
            >= 1,
        "the NS name needed its own lookup"
    );
}

#[test]
fn cname_chain_across_zones() {
    let Some((cp, _)) = recursive() else { return };
    let m = query(cp.dns, client(), "cname.alpha.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let kinds: Vec<RecordType> = m.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(kinds, vec![RecordType::CNAME, RecordType::A], "{m:?}");
    assert_eq!(addresses(&m), vec!["192.0.2.20"]);
}

#[test]
fn nxdomain_and_nodata_carry_the_soa() {
    let Some((cp, _)) = recursive() else { return };
    let m = query(cp.dns, client(), "missing.alpha.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "negative answers carry the SOA: {m:?}"
    );
    let m = query(cp.dns, client(), "nodata.alpha.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "{m:?}"
    );
}

#[test]
fn truncated_udp_answer_is_retried_over_tcp() {
    let Some((cp, net)) = recursive() else { return };
    // ~2 KB of TXT: larger than any UDP payload in play, so the authoritative server truncates
    // and cleanpipe must retry over TCP; dig then also needs TCP to get it from cleanpipe.
    let d = dig(cp.dns, None, "big.alpha.example", "TXT", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(d.answers.len(), 10, "{}", d.text);
    assert!(
        d.text.contains("Truncated, retrying in TCP mode"),
        "dig had to use TCP: {}",
        d.text
    );
    assert!(
        net.server("127.53.2.1")
            .count("tcp:big.alpha.example", RecordType::TXT)
            >= 1,
        "cleanpipe asked over TCP"
    );
}

#[test]
fn lame_and_dead_delegations_servfail_in_bounded_time() {
    let Some((cp, _)) = recursive() else { return };
    for name in ["www.lame.example.", "www.dead.example."] {
        let start = Instant::now();
        let m = support::try_query(
            cp.dns,
            client(),
            name,
            RecordType::A,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{name}: cleanpipe must answer, not hang: {e}"));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{name} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn cached_answer_does_not_reach_the_authoritative_server_again() {
    let Some((cp, net)) = recursive() else { return };
    let alpha = net.server("127.53.2.1");
    let name = "inzone.alpha.example.";
    let t0 = Instant::now();
    let first = query(cp.dns, client(), name, RecordType::A);
    let cold = t0.elapsed();
    let t1 = Instant::now();
    let second = query(cp.dns, client(), name, RecordType::A);
    let warm = t1.elapsed();
    eprintln!("uncached {cold:?}, cached {warm:?}");
    assert_eq!(addresses(&first), vec!["192.0.2.10"]);
    assert_eq!(addresses(&second), vec!["192.0.2.10"]);
    assert_eq!(
        alpha.count("inzone.alpha.example", RecordType::A),
        1,
        "second answer must come from cache"
    );
    assert!(second.answers.iter().all(|r| r.ttl <= 300));
}

#[test]
fn forward_mode_answers_from_the_upstream() {
    let upstream = support::start_server(
        "127.0.99.1",
        5354,
        vec![support::auth::Zone::parse(
            "alpha.example.",
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 192.0.2.99\n",
        )],
    );
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.1\n      port: 5354",
        "",
        &[],
    );
    let m = query(cp.dns, client(), "www.alpha.example.", RecordType::A);
    assert_eq!(addresses(&m), vec!["192.0.2.99"]);
    // The forwarder mixes the case of the name it sends upstream (DNS 0x20); the client must
    // not see that mix in the answer.
    let owners: Vec<String> = m.answers.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(owners, vec!["www.alpha.example."]);
    let m = query(cp.dns, client(), "nope.alpha.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(upstream.count("www.alpha.example", RecordType::A) >= 1);
    let d = dig(cp.dns, None, "www.alpha.example", "A", &[]);
    assert_eq!(d.answers.len(), 1, "{}", d.text);
    assert!(d.answers[0].starts_with("www.alpha.example."), "{}", d.text);
}

#[test]
fn clients_outside_allowed_networks_are_refused() {
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.2\n      port: 5354",
        "",
        &[],
    );
    // Rewrite the config to serve only 127.0.0.0/24 and restart.
    let cfg = std::fs::read_to_string(cp.dir.join("cleanpipe.yaml")).expect("config");
    std::fs::write(
        cp.dir.join("cleanpipe.yaml"),
        cfg.replace("allow: [127.0.0.0/8, \"::1/128\"]", "allow: [127.0.0.0/24]"),
    )
    .expect("config");
    let mut cp = cp;
    cp.terminate();
    cp.spawn();
    let d = dig(
        cp.dns,
        Some("127.0.5.5".parse().expect("ip")),
        "www.example.org",
        "A",
        &[],
    );
    assert_eq!(d.status, "REFUSED", "{}", d.text);
    assert_eq!(d.ede, Some(18), "{}", d.text);
    let m = query(
        cp.dns,
        "127.0.7.7".parse().expect("ip"),
        "www.example.org.",
        RecordType::A,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(ede(&m), Some(18));
}

#[test]
fn malformed_packets_do_not_stop_the_server() {
    let upstream = support::start_server("127.0.99.3", 5354, vec![support::alpha_zone("")]);
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.3\n      port: 5354",
        "",
        &[],
    );
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    // Too short to have a header, or a response: never answered (no reflection).
    for garbage in [&b""[..], b"\x00", &[0xffu8; 600][..]] {
        let _ = sock.send_to(garbage, cp.dns);
        assert!(
            sock.recv(&mut buf).is_err(),
            "no answer to {} unreadable bytes",
            garbage.len()
        );
    }
    // A query header announcing five questions and carrying none: FORMERR with the same ID.
    sock.send_to(b"\x12\x34\x01\x00\x00\x05\x00\x00\x00\x00\x00\x00", cp.dns)
        .expect("send");
    let n = sock.recv(&mut buf).expect("a FORMERR answer");
    assert!(n >= 12, "a whole header");
    assert_eq!(&buf[..2], b"\x12\x34", "the query's ID");
    assert_eq!(buf[3] & 0x0f, 1, "RCODE FORMERR");
    // Still answering: a name with no CAA record is NODATA from the upstream (with its SOA).
    let m = query(cp.dns, client(), "www.alpha.example.", RecordType::CAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty(), "no CAA record: {m:?}");
    assert_eq!(upstream.count("www.alpha.example", RecordType::CAA), 1);
    let d = dig(cp.dns, None, "example.org", "A", &["+edns=1", "+noednsneg"]);
    assert_eq!(
        d.status, "BADVERS",
        "EDNS version 1 must get BADVERS: {}",
        d.text
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.4\n      port: 5354",
        "",
        &[],
    );
    let status = cp.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", cp.log());
    assert!(cp.log().contains("stopped"));
}

#[test]
fn a_second_instance_on_the_same_address_refuses_to_start() {
    // SO_REUSEPORT would let it bind and silently take a share of the first one's queries.
    let upstream = support::start_server(
        "127.0.99.7",
        5354,
        vec![support::auth::Zone::parse(
            "alpha.example.",
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 192.0.2.99\n",
        )],
    );
    let resolver = "  mode: forward\n  forward:\n    - address: 127.0.99.7\n      port: 5354";
    let first = Cleanpipe::start(resolver, "", &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = tmp.path().join("second.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  dns: [\"{}\"]\nclients:\n  allow: [127.0.0.0/8]\nresolver:\n{resolver}\nadmin:\n  listen: null\nweb:\n  listen: []\nstate:\n  path: {}\npolicy:\n  allowlists: {}\n",
            first.dns,
            tmp.path().join("state.sqlite").display(),
            support::repo_allowlists().display()
        ),
    )
    .expect("config");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("second instance starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second instance on {} kept running", first.dns);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&first.dns.to_string()) && stderr.contains("another cleanpipe"),
        "the error names the address and the likely cause: {stderr}"
    );
    // The first instance still answers every query itself.
    for _ in 0..20 {
        let m = query(first.dns, client(), "www.alpha.example.", RecordType::A);
        assert_eq!(addresses(&m), vec!["192.0.2.99"]);
    }
    assert!(upstream.count("www.alpha.example", RecordType::A) >= 1);
}

#[test]
fn forwarder_retries_truncated_answers_over_tcp() {
    let big: String = (0..10)
        .map(|i| format!("big 300 IN TXT \"{}{}\"\n", i, "y".repeat(200)))
        .collect();
    let upstream = support::start_server("127.0.99.5", 5354, vec![support::alpha_zone(&big)]);
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.5\n      port: 5354",
        "",
        &[],
    );
    let d = dig(cp.dns, None, "big.alpha.example", "TXT", &["+tcp"]);
    assert_eq!(d.answers.len(), 10, "{}", d.text);
    assert!(
        upstream.count("tcp:big.alpha.example", RecordType::TXT) >= 1,
        "the forwarder retried over TCP"
    );
}

#[test]
fn forwarder_rejects_answers_that_do_not_echo_the_question_case() {
    // A fake upstream that answers every query with the question name lowercased: a 0x20-aware
    // forwarder must not accept such an answer to a mixed-case question (it could be spoofed);
    // it asks again in plain lowercase, whose answer (another address here) it accepts.
    let sock = std::net::UdpSocket::bind("127.0.99.6:5354").expect("fake upstream");
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, src)) = sock.recv_from(&mut buf) {
            let Ok(q) = hickory_proto::op::Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(query) = q.queries.first() else {
                continue;
            };
            let lower = query.name().to_lowercase();
            let mixed = query.name().to_ascii() != lower.to_ascii();
            let mut r = hickory_proto::op::Message::response(q.metadata.id, q.metadata.op_code);
            r.add_query(hickory_proto::op::Query::query(
                lower.clone(),
                query.query_type(),
            ));
            r.add_answer(hickory_proto::rr::Record::from_rdata(
                lower,
                300,
                RData::A(hickory_proto::rr::rdata::A::new(
                    203,
                    0,
                    113,
                    if mixed { 66 } else { 67 },
                )),
            ));
            if let Ok(bytes) = r.to_vec() {
                let _ = sock.send_to(&bytes, src);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.6\n      port: 5354\n  query_timeout_secs: 1",
        "",
        &[],
    );
    let m = support::try_query(
        cp.dns,
        client(),
        "www.case-test.example.",
        RecordType::A,
        Duration::from_secs(8),
    )
    .expect("answer");
    assert_eq!(
        answered.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "asked with the 0x20 mix, then in lowercase"
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    assert_eq!(
        addresses(&m),
        vec!["203.0.113.67"],
        "the case-folded answer to the mixed-case question is never used"
    );
    assert!(
        cp.log()
            .contains("does not echo the question's letter case")
    );
}
