//! Attacks from the access network (all on loopback): forged source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

use crate::support::{self, Cleanpipe};

const BOTNET: &str = "$ORIGIN botnet.rpz.example.
@ 300 SOA ns.rpz.example. hostmaster.rpz.example. 7 3600 600 86400 300
c2.evil.example       CNAME .
c2.evil.example       TXT \"family=Emotet\"
";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// An instance with a botnet feed, forwarding to an upstream on 127.0.89.N.
fn botnet_instance(n: u8) -> (support::AuthServer, Cleanpipe) {
    let zone = support::Zone::parse(
        "feed.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.10\n",
    );
    let up = support::start_server(&format!("127.0.89.{n}"), 5354, vec![zone]);
    let cp = Cleanpipe::start(
        &format!("  mode: forward\n  forward:\n    - address: 127.0.89.{n}\n      port: 5354"),
        "feeds:\n  - name: cert-botnet\n    file: policy/botnet.rpz\n    botnet: true\n",
        &[("botnet.rpz", BOTNET)],
    );
    (up, cp)
}

/// A UDP datagram with any source address, sent through a raw socket (root only): what a
/// subscriber's infected machine can do when the access network does not filter sources.
fn forged_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    p.extend_from_slice(payload);
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )?;
    sock.set_header_included_v4(true)?;
    sock.send_to(&p, &SocketAddr::new(IpAddr::V4(d), 0).into())?;
    Ok(())
}

fn query_bytes(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = rand_id();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    m.to_vec().expect("query")
}

fn rand_id() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos() as u16)
}

fn reason(cp: &Cleanpipe, client: &str) -> String {
    cp.admin(
        "GET",
        &format!("/v1/explain?client={client}&name=www.feed.example"),
        None,
    )
    .1["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// 200 botnet lookups with forged source addresses quarantine nobody; a real client that
/// retries over TCP (dig) is flagged; so is one that proves itself with a DNS cookie.
#[test]
fn forged_packets_never_flag_anyone_real_clients_still_are() {
    let (_up, cp) = botnet_instance(1);
    let mut sent = 0;
    for i in 1..=200u8 {
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 88, i)), 40_000);
        match forged_udp(src, cp.dns, &query_bytes("c2.evil.example.")) {
            Ok(()) => sent += 1,
            Err(e) if std::env::var_os("CLEANPIPE_REQUIRE_PORT53").is_none() => {
                eprintln!("SKIPPED: raw sockets need root ({e})");
                return;
            }
            Err(e) => panic!("raw socket: {e}"),
        }
    }
    assert_eq!(sent, 200);
    let counted = support::within(Duration::from_secs(3), || {
        cp.metric("cleanpipe_botnet_lookups_unproven_total", &[])
            .is_some_and(|n| n >= 200.0)
    });
    assert!(
        counted.is_some(),
        "the forged lookups arrived and were not proven"
    );
    std::thread::sleep(Duration::from_millis(500));
    for i in [1u8, 50, 100, 200] {
        assert_eq!(
            reason(&cp, &format!("127.0.88.{i}")),
            "normal",
            "127.0.88.{i} must not be flagged by a forged packet"
        );
    }
    assert_eq!(
        cp.metric("cleanpipe_botnet_detections_total", &[]),
        Some(0.0),
        "no detection recorded"
    );

    // A real stub: UDP gets TC=1, the retry over TCP proves the address.
    let d = support::dig(
        cp.dns,
        Some(ip("127.0.88.201")),
        "c2.evil.example",
        "A",
        &[],
    );
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(d.text.contains("retrying in TCP mode"), "{}", d.text);
    assert!(
        support::within(Duration::from_secs(3), || reason(&cp, "127.0.88.201")
            == "quarantined")
        .is_some(),
        "a real client is still flagged"
    );

    // A stub with DNS cookies proves itself over UDP: its first answer carries our cookie,
    // the second query returns it and is answered without TC.
    let client = ip("127.0.88.202");
    let first = support::dig(cp.dns, Some(client), "www.feed.example", "A", &["+cookie"]);
    let cookie = first
        .text
        .split("; COOKIE: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("dig shows the cookie")
        .to_owned();
    assert_eq!(
        cookie.len(),
        48,
        "client (8) and server (16) cookie: {}",
        first.text
    );
    let second = support::dig(
        cp.dns,
        Some(client),
        "c2.evil.example",
        "A",
        &[&format!("+cookie={cookie}"), "+ignore"],
    );
    assert_eq!(second.status, "NXDOMAIN", "{}", second.text);
    assert!(
        !second.text.contains(" tc"),
        "proven: no TC: {}",
        second.text
    );
    assert!(
        support::within(Duration::from_secs(3), || reason(&cp, "127.0.88.202")
            == "quarantined")
        .is_some(),
        "a client proven by its cookie is flagged"
    );
}

/// Half-sent HTTP requests (the slowloris attack) against the cleanup page, which faces the
/// infected machines: they are cut off after the header timeout, one client gets only its
/// share, other visitors and the health check are served, and SIGTERM still ends the process
/// within the promised 5 s.
#[test]
fn half_sent_http_requests_cannot_exhaust_the_page_or_the_admin_api() {
    use std::io::{Read, Write};
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.89.250\n      port: 5354",
        "",
        &[],
    );
    cp.edit_config(|c| {
        c.replace(
            "  isp_name: Example ISP\n",
            "  isp_name: Example ISP\n  header_timeout_secs: 1\n  connections_per_client: 8\n",
        )
    });
    cp.nofile = Some(512); // the page may hold 64 connections
    cp.spawn();
    let half_sent = |addr: SocketAddr, from: IpAddr| -> Option<std::net::TcpStream> {
        let mut s = support::tcp_connect(addr, from).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: page\r\nX-Slow: ")
            .ok()?;
        Some(s)
    };
    // One client, 30 half-sent requests: its share (8) is held, the rest closed at once.
    let mut one: Vec<_> = (0..30)
        .filter_map(|_| half_sent(cp.web, ip("127.0.87.1")))
        .collect();
    // Many clients at once: 200 half-sent requests from 50 addresses.
    let mut many: Vec<_> = (0..200u32)
        .filter_map(|i| half_sent(cp.web, ip(&format!("127.87.{}.{}", i / 4, i % 4 + 1))))
        .collect();
    many.extend(
        (0..40u32).filter_map(|i| half_sent(cp.admin, ip(&format!("127.87.100.{}", i + 1)))),
    );
    // Another visitor and the health check are served meanwhile.
    let r = cp.page(ip("127.0.87.2"), "/", &[]);
    assert_eq!(r.status, 200, "the page answers another visitor");
    let (code, _) = cleanpipe::web::client::call(cp.admin, "GET", "/ready", None, None)
        .expect("the admin API answers");
    assert_eq!(code, 200, "/ready answers during the attack");
    // After the header timeout every half-sent request has been cut off.
    std::thread::sleep(Duration::from_millis(2500));
    let still_open = one
        .iter_mut()
        .chain(many.iter_mut())
        .filter(|s: &&mut std::net::TcpStream| {
            let s: &std::net::TcpStream = s;
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_millis(50))).ok();
            let mut b = [0u8; 512];
            loop {
                match s.read(&mut b) {
                    Ok(0) => return false,
                    Ok(_) => continue, // a 408 or similar before the close
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return true;
                    }
                    Err(_) => return false,
                }
            }
        })
        .count();
    assert_eq!(
        still_open, 0,
        "half-sent requests outlived the header timeout"
    );
    assert!(
        cp.metric(
            "cleanpipe_connections_refused_total",
            &[("transport", "page"), ("why", "per_client")]
        )
        .is_some_and(|n| n >= 20.0),
        "one client got only its share"
    );
    // SIGTERM with 20 half-sent requests open: out within 5 s.
    let _held: Vec<_> = (0..20u32)
        .filter_map(|i| half_sent(cp.web, ip(&format!("127.87.200.{}", i + 1))))
        .collect();
    let t = std::time::Instant::now();
    let status = cp.terminate();
    assert!(status.success(), "clean exit: {status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?} with half-sent requests open",
        t.elapsed()
    );
}

/// A flag or enrolment for a whole network (`/0`) would quarantine or restrict everyone: refused
/// unless forced (and then audited), from the API, the CLI, files and feeds; `check` warns
/// about an open resolver and an exposed admin API with a short token.
#[test]
fn whole_network_flags_and_enrolments_are_refused_unless_forced() {
    let (_up, cp) = botnet_instance(2);
    let (code, body) = cp.admin(
        "POST",
        "/v1/infected",
        Some(r#"{"prefix":"0.0.0.0/0","family":"Mirai"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("policy.min_prefix_v4"), "{body}");
    let (code, body) = cp.admin(
        "POST",
        "/v1/enrolments",
        Some(r#"{"prefix":"::/0","profile":"kids"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(reason(&cp, "127.0.86.1"), "normal");
    // Forced: in force, and the audit log says so.
    let (code, body) = cp.admin(
        "POST",
        "/v1/infected",
        Some(r#"{"prefix":"127.0.0.0/8","family":"Mirai","force":true}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(reason(&cp, "127.0.86.1"), "quarantined");
    let (_, audit) = cp.admin("GET", "/v1/audit", None);
    assert!(audit.to_string().contains("FORCED"), "{audit}");
    let (code, _) = cp.admin(
        "DELETE",
        "/v1/infected?prefix=127.0.0.0/8&reason=drill",
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(reason(&cp, "127.0.86.1"), "normal");

    // A /0 line in an abuse-feed export: the reload fails, the previous policy stays.
    cp.write_policy(
        "infected-export.csv",
        "prefix,family,source,first_seen\n127.0.86.2,Mirai,feed,2026-11-20T08:00:00Z\n0.0.0.0/0,Mirai,feed,2026-11-20T08:00:00Z\n",
    );
    let refused = support::within(Duration::from_secs(3), || {
        cp.admin("GET", "/v1/status", None).1["reload"]["last_errors"]
            .to_string()
            .contains("infected-export.csv:3")
    });
    assert!(
        refused.is_some(),
        "{}",
        cp.admin("GET", "/v1/status", None).1
    );
    assert_eq!(reason(&cp, "127.0.86.1"), "normal", "nobody quarantined");
    assert_eq!(reason(&cp, "127.0.86.2"), "normal", "the old policy stays");

    // A 0/0 client trigger in a feed is refused the same way.
    std::fs::remove_file(cp.dir.join("policy/infected-export.csv")).expect("remove");
    cp.write_policy(
        "botnet.rpz",
        &format!("{BOTNET}0.0.0.0.0.rpz-client-ip CNAME .\n"),
    );
    let refused = support::within(Duration::from_secs(3), || {
        cp.admin("GET", "/v1/status", None).1["reload"]["last_errors"]
            .to_string()
            .contains("rpz-client-ip trigger 0.0.0.0/0")
    });
    assert!(
        refused.is_some(),
        "{}",
        cp.admin("GET", "/v1/status", None).1
    );

    // `check` warns about an open resolver and an exposed admin API with a short token.
    cp.edit_config(|c| {
        c.replace(
            "allow: [127.0.0.0/8, \"::1/128\"]",
            "allow: [0.0.0.0/0, \"::1/128\"]",
        )
        .replace(
            &format!("listen: \"{}\"", cp.admin),
            "listen: \"0.0.0.0:18053\"",
        )
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(["check", "--config"])
        .arg(cp.dir.join("cleanpipe.yaml"))
        .output()
        .expect("check runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open resolver"), "{err}");
    assert!(err.contains("not on loopback"), "{err}");
}

/// A name not in any feed whose answer is `CNAME c2.listed.example` used to return the C2
/// address unblocked and flag nobody. Every name of the chain is checked against the feeds,
/// as BIND, Unbound and Knot do: on the first (resolved) answer and on cached ones.
#[test]
fn a_cname_to_a_listed_name_is_blocked_and_flags_the_client() {
    let zone = support::Zone::parse(
        "cdn.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN CNAME c2.evil.example.\nsafe 300 IN A 198.51.100.10\n",
    );
    let evil = support::Zone::parse(
        "evil.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nc2 300 IN A 198.51.100.66\n",
    );
    let _up = support::start_server("127.0.89.3", 5354, vec![zone, evil]);
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.89.3\n      port: 5354",
        "feeds:\n  - name: cert-botnet\n    file: policy/botnet.rpz\n    botnet: true\n",
        &[("botnet.rpz", BOTNET)],
    );
    let ask_tcp = |from: &str| {
        let reply = support::tcp_exchange(
            cp.dns,
            ip(from),
            &query_bytes("www.cdn.example."),
            Duration::from_secs(5),
        )
        .expect("TCP answer");
        Message::from_vec(&reply).expect("valid")
    };
    // First ask (resolved now), then another client (from the cache).
    for client in ["127.0.86.10", "127.0.86.11"] {
        let m = ask_tcp(client);
        assert_eq!(
            m.metadata.response_code,
            hickory_proto::op::ResponseCode::NXDomain,
            "{client}: the chain leads to a botnet name: {m:?}"
        );
        assert!(support::addresses(&m).is_empty(), "no C2 address leaks");
        assert_eq!(support::ede(&m), Some(15));
        assert!(
            support::within(Duration::from_secs(3), || reason(&cp, client)
                == "quarantined")
            .is_some(),
            "{client} is flagged as if it had asked the C2 name"
        );
    }
    // Over UDP without a cookie: TC, nobody flagged.
    let m = support::query(cp.dns, ip("127.0.86.12"), "www.cdn.example.", RecordType::A);
    assert!(m.metadata.truncation, "{m:?}");
    assert!(support::addresses(&m).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reason(&cp, "127.0.86.12"), "normal");
    // A chain-free name is untouched.
    assert_eq!(
        support::addresses(&support::query(
            cp.dns,
            ip("127.0.86.13"),
            "safe.cdn.example.",
            RecordType::A
        )),
        vec!["198.51.100.10"]
    );
}

/// One client flooding random never-cached names (a random-subdomain attack) reaches the
/// upstream only within its budget, on by default; another client's new names are resolved
/// meanwhile. 100 clients asking one slow name cost one upstream query; ANY gets a minimal
/// answer without going upstream.
#[test]
fn a_random_subdomain_flood_from_one_client_does_not_reach_the_upstream() {
    let zone = support::Zone::parse(
        "victim.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.40\n",
    );
    let slow = support::Zone::parse(
        "slow.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\none 300 IN A 198.51.100.41\n",
    );
    let up = support::start_server("127.0.89.4", 5354, vec![zone]);
    let slow_up = support::start_slow_server("127.0.89.5", 5354, vec![slow], 300);
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.89.4\n      port: 5354",
        "",
        &[],
    );
    // The flood: 3,000 random names from one address, sent as fast as the socket takes them.
    let flooder = std::net::UdpSocket::bind("127.0.85.1:0").expect("socket");
    let started = std::time::Instant::now();
    for i in 0..3000u32 {
        let _ = flooder.send_to(&query_bytes(&format!("r{i:05}x.victim.example.")), cp.dns);
    }
    // A victim's own new names are resolved during the flood.
    for i in 0..20 {
        let m = support::query(
            cp.dns,
            ip("127.0.85.2"),
            &format!("v{i}.victim.example."),
            RecordType::A,
        );
        assert_eq!(
            m.metadata.response_code,
            hickory_proto::op::ResponseCode::NXDomain,
            "the victim's query {i} answered by the upstream"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let elapsed = started.elapsed().as_secs_f64();
    let reached = up.total() - 20;
    // Budget: a burst of 500, then 100 names a second.
    let budget = 500.0 + 100.0 * elapsed;
    assert!(
        (reached as f64) <= budget,
        "{reached} flood queries reached the upstream in {elapsed:.1} s (budget {budget:.0})"
    );
    assert!(
        cp.metric("cleanpipe_rate_limited_total", &[("limit", "new_names")])
            .is_some_and(|n| n >= 2000.0),
        "the excess was counted"
    );

    // 100 clients ask one slow name at once: one upstream query.
    let cp2 = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.89.5\n      port: 5354",
        "",
        &[],
    );
    let socks: Vec<_> = (0..100u8)
        .map(|i| {
            let s =
                std::net::UdpSocket::bind(SocketAddr::new(ip(&format!("127.0.84.{}", i + 1)), 0))
                    .expect("socket");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.send_to(&query_bytes("one.slow.example."), cp2.dns)
                .expect("send");
            s
        })
        .collect();
    for s in &socks {
        let mut b = [0u8; 512];
        let n = s.recv(&mut b).expect("every client answered");
        assert_eq!(
            support::addresses(&Message::from_vec(&b[..n]).expect("valid")),
            vec!["198.51.100.41"]
        );
    }
    assert_eq!(
        slow_up.count("one.slow.example", RecordType::A),
        1,
        "identical questions in flight are asked upstream once"
    );

    // ANY: RFC 8482 minimal answer, nothing upstream.
    let before = up.total();
    let m = support::query(
        cp.dns,
        ip("127.0.85.3"),
        "www.victim.example.",
        RecordType::ANY,
    );
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::HINFO, "{m:?}");
    assert_eq!(up.total(), before, "ANY never goes upstream");
}

/// REFUSED answers to unserved sources are bigger than the queries: a forged source must not
/// turn cleanpipe into a reflector. Beyond a small budget per source network they are dropped.
#[test]
fn refusals_to_unserved_sources_are_rate_limited() {
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.89.250\n      port: 5354",
        "",
        &[],
    );
    cp.edit_config(|c| {
        c.replace(
            "allow: [127.0.0.0/8, \"::1/128\"]",
            "allow: [127.1.0.0/16, 127.0.0.1/32, 127.0.83.2/32]",
        ) + "limits:\n  client_qps: 20\n"
    });
    cp.spawn();
    let sock = std::net::UdpSocket::bind("127.0.83.1:0").expect("socket");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    for _ in 0..100 {
        let _ = sock.send_to(&query_bytes("www.example.org."), cp.dns);
    }
    let mut answered = 0;
    let mut b = [0u8; 512];
    while sock.recv(&mut b).is_ok() {
        answered += 1;
    }
    assert!(
        answered >= 1,
        "the first refusals are answered (REFUSED, EDE 18)"
    );
    assert!(
        answered <= 15,
        "{answered} refusals for 100 queries from an unserved network"
    );
    // Every query not answered was counted: by the refusal budget, or (here, with
    // client_qps set) first by the client's own rate.
    let refused = cp
        .metric("cleanpipe_rate_limited_total", &[("limit", "refused")])
        .unwrap_or(0.0);
    let client = cp
        .metric("cleanpipe_rate_limited_total", &[("limit", "client")])
        .unwrap_or(0.0);
    assert!(refused >= 20.0, "{refused}");
    assert!(
        refused + client + answered as f64 >= 95.0,
        "{refused} + {client} + {answered}"
    );
    // A served client over its query rate (limits.client_qps: 20, bursts of 40): the excess
    // is dropped.
    let client = std::net::UdpSocket::bind("127.0.83.2:0").expect("socket");
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut any = query_bytes("www.example.org.");
    let n = any.len();
    any[n - 14] = 255; // QTYPE ANY (before QCLASS and the OPT record): no upstream needed
    for _ in 0..200 {
        let _ = client.send_to(&any, cp.dns);
    }
    let mut answered = 0;
    while client.recv(&mut b).is_ok() {
        answered += 1;
    }
    assert!(
        (30..=60).contains(&answered),
        "{answered} of 200 answered at 20/s with bursts of 40"
    );
}

/// Failures that used to be silent: a symlinked policy file whose target moved away (its
/// subscribers were released), FIFOs and symlink loops in the policy directory, a 20 MB line
/// copied whole into the status, an upstream that does not echo the 0x20 case (every query
/// SERVFAIL).
#[test]
fn failures_that_were_silent_are_reported_and_lose_nothing() {
    let zone = support::Zone::parse(
        "plain.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.50\n",
    );
    let _up = support::start_lowercase_server("127.0.89.6", 5354, vec![zone]);
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let target = elsewhere.path().join("infected.yaml");
    std::fs::write(
        &target,
        "infected:\n  - {prefix: 127.0.82.1, family: Mirai, source: cert, first_seen: 2026-11-20T08:00:00Z}\n",
    )
    .expect("write");
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.89.6\n      port: 5354",
        "",
        &[],
    );
    std::os::unix::fs::symlink(&target, cp.dir.join("policy/infected.yaml")).expect("symlink");
    cp.spawn();
    assert_eq!(reason(&cp, "127.0.82.1"), "quarantined");
    let errors =
        |cp: &Cleanpipe| cp.admin("GET", "/v1/status", None).1["reload"]["last_errors"].to_string();
    // The target moves away: the reload (triggered by the watch on the target) fails with the
    // reason, and the subscriber stays quarantined.
    std::fs::rename(&target, elsewhere.path().join("moved.yaml")).expect("move");
    let seen = support::within(Duration::from_secs(3), || {
        errors(&cp).contains("does not exist")
    });
    assert!(
        seen.is_some(),
        "status: {}; log:\n{}",
        errors(&cp),
        cp.log()
    );
    assert_eq!(reason(&cp, "127.0.82.1"), "quarantined", "nothing lost");
    std::fs::rename(elsewhere.path().join("moved.yaml"), &target).expect("move back");
    // A FIFO named like a policy file: an error, not a hang and not silence.
    let fifo = cp.dir.join("policy/infected-pipe.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    assert!(
        support::within(Duration::from_secs(3), || errors(&cp)
            .contains("not a regular file"))
        .is_some(),
        "{}",
        errors(&cp)
    );
    std::fs::remove_file(&fifo).expect("rm fifo");
    // A symlink loop.
    let l = cp.dir.join("policy/enrolments-loop.yaml");
    std::os::unix::fs::symlink(&l, &l).expect("loop");
    assert!(
        support::within(Duration::from_secs(3), || errors(&cp)
            .contains("symlink loop"))
        .is_some(),
        "{}",
        errors(&cp)
    );
    std::fs::remove_file(&l).expect("rm loop");
    // A 20 MB line: the error is reported, clipped.
    cp.write_policy(
        "infected-huge.csv",
        &format!("{},Mirai,x,2026-11-20T08:00:00Z\n", "9".repeat(20 << 20)),
    );
    assert!(
        support::within(Duration::from_secs(5), || errors(&cp)
            .contains("infected-huge.csv:1"))
        .is_some(),
        "{}",
        errors(&cp)
    );
    let (_, st) = cp.admin("GET", "/v1/status", None);
    assert!(
        st.to_string().len() < 20_000,
        "the status stays small: {} bytes",
        st.to_string().len()
    );
    assert!(cp.log().len() < 1 << 20, "the log stays small");
    std::fs::remove_file(cp.dir.join("policy/infected-huge.csv")).expect("rm");

    // The upstream answers in lowercase whatever case it was asked: answered anyway.
    let m = support::query(
        cp.dns,
        ip("127.0.82.9"),
        "www.plain.example.",
        RecordType::A,
    );
    assert_eq!(support::addresses(&m), vec!["198.51.100.50"], "{m:?}");
    assert!(
        cp.log()
            .contains("does not echo the question's letter case")
    );
}
