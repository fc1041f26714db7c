//! DNS over TCP done right: pipelined queries answered concurrently and out of order (RFC 7766),
//! and idle connections that can never lock out a client with a question to ask, even past the
//! open-file limit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::support::{self, Cleanpipe};

const FEED: &str = "$ORIGIN tcp.rpz.example.
@ 300 SOA ns.rpz.example. hostmaster.rpz.example. 1 3600 600 86400 300
blocked.example CNAME .
";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encodes")
}

/// A slow question first, a quick one second, on one connection: the quick answer comes
/// first (hickory-server answered one at a time, in order).
#[test]
fn pipelined_queries_are_answered_out_of_order() {
    // The upstream does not exist: a question for it waits for the upstream timeout.
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.92.250\n      port: 5354\n  query_timeout_secs: 1",
        "feeds:\n  - name: tcp-feed\n    file: policy/tcp.rpz\n",
        &[("tcp.rpz", FEED)],
    );
    let mut s = support::tcp_connect(cp.dns, ip("127.0.92.1")).expect("connect");
    support::tcp_send(&mut s, &query(1, "slow.example.")).expect("send");
    support::tcp_send(&mut s, &query(2, "blocked.example.")).expect("send");
    let started = Instant::now();
    let first = support::tcp_recv(&mut s, Duration::from_secs(8)).expect("a first answer");
    let first = Message::from_vec(&first).expect("valid");
    assert_eq!(
        (first.metadata.id, first.metadata.response_code),
        (2, ResponseCode::NXDomain),
        "the quick answer first"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "not held behind the slow one: {:?}",
        started.elapsed()
    );
    let second = support::tcp_recv(&mut s, Duration::from_secs(10)).expect("the slow answer");
    let second = Message::from_vec(&second).expect("valid");
    assert_eq!(
        (second.metadata.id, second.metadata.response_code),
        (1, ResponseCode::ServFail)
    );
}

/// More idle connections than the open-file limit allows, from many addresses: the process
/// neither spins nor stops answering; another client's TCP queries are answered at once.
#[test]
fn idle_connections_past_the_file_limit_do_not_lock_out_other_clients() {
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.92.250\n      port: 5354",
        "feeds:\n  - name: tcp-feed\n    file: policy/tcp.rpz\n",
        &[("tcp.rpz", FEED)],
    );
    // 256 descriptors: cleanpipe allows itself 64 TCP connections; the attacker opens 400.
    cp.nofile = Some(256);
    cp.spawn();
    let mut idle = Vec::new();
    for i in 0..400u32 {
        let source = ip(&format!("127.93.{}.{}", i / 10, i % 10 + 1));
        if let Ok(s) = support::tcp_connect(cp.dns, source) {
            idle.push(s);
        }
    }
    assert!(
        idle.len() >= 300,
        "the kernel accepted the attacker's connections"
    );
    let cpu_before = cp.cpu_seconds();
    let started = Instant::now();
    // Another client asks, five times over new connections: every answer comes promptly.
    for i in 0..5u16 {
        let t = Instant::now();
        let reply = support::tcp_exchange(
            cp.dns,
            ip("127.0.92.7"),
            &query(100 + i, "blocked.example."),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|| panic!("query {i} unanswered; log:\n{}", cp.log()));
        let m = Message::from_vec(&reply).expect("valid");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(1500));
    let busy = (cp.cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64();
    assert!(
        busy < 0.3,
        "the process spins: {busy:.2} CPU while connections sit idle"
    );
    let evicted = cp
        .metric(
            "cleanpipe_connections_evicted_total",
            &[("transport", "tcp")],
        )
        .unwrap_or(0.0);
    assert!(evicted > 0.0, "idle connections were closed to make room");
    let open = cp
        .metric("cleanpipe_connections_open", &[("transport", "tcp")])
        .unwrap_or(f64::MAX);
    assert!(open <= 64.0, "at most a quarter of the file limit: {open}");
    // UDP is unaffected.
    let m = support::query(cp.dns, ip("127.0.92.8"), "blocked.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    drop(idle);
}

/// A client opening more than its share is refused at once; others are not affected.
#[test]
fn one_client_cannot_hold_more_than_its_share() {
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.92.250\n      port: 5354",
        "feeds:\n  - name: tcp-feed\n    file: policy/tcp.rpz\n",
        &[("tcp.rpz", FEED)],
    );
    cp.edit_config(|c| {
        c.replace(
            "  threads: 2\n",
            "  threads: 2\n  tcp_connections_per_client: 4\n",
        )
    });
    cp.spawn();
    let hog = ip("127.0.92.9");
    let mut held = Vec::new();
    for i in 0..4 {
        // One query each, so that each is admitted before the next connects.
        let mut s = support::tcp_connect(cp.dns, hog).expect("within its share");
        support::tcp_send(&mut s, &query(10 + i, "blocked.example.")).expect("send");
        assert!(support::tcp_recv(&mut s, Duration::from_secs(2)).is_some());
        held.push(s);
    }
    // The fifth is accepted by the kernel and closed by cleanpipe: no answer on it.
    let mut fifth = support::tcp_connect(cp.dns, hog).expect("connect");
    let _ = support::tcp_send(&mut fifth, &query(5, "blocked.example."));
    assert!(
        support::tcp_recv(&mut fifth, Duration::from_secs(2)).is_none(),
        "over its share: closed"
    );
    // Its held connections still work, and another client is served.
    support::tcp_send(&mut held[0], &query(6, "blocked.example.")).expect("send");
    assert!(support::tcp_recv(&mut held[0], Duration::from_secs(2)).is_some());
    assert!(
        support::tcp_exchange(
            cp.dns,
            ip("127.0.92.10"),
            &query(7, "blocked.example."),
            Duration::from_secs(2)
        )
        .is_some()
    );
    assert!(
        cp.metric(
            "cleanpipe_connections_refused_total",
            &[("transport", "tcp"), ("why", "per_client")]
        )
        .is_some_and(|n| n >= 1.0)
    );
}
