//! DNS over TLS and DNS over HTTPS with the same policy as plain DNS: real clients (kdig, curl
//! over HTTP/2), a private CA, quarantine and kids answers, a certificate renewed on disk, and
//! handshakes that never finish.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::support::tls::{self as t, Dot, HOST};
use crate::support::{self, AuthServer, Cleanpipe};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const INFECTED: &str = "infected:\n  - {prefix: 127.0.90.66, family: Mirai, source: cert, first_seen: 2026-11-20T08:00:00Z}\n";
const ENROLLED: &str = "enrolments:\n  - {prefix: 127.0.90.20, profile: kids, enabled_by: portal, enabled_at: 2026-11-01T10:00:00Z}\n";

/// An instance serving DoT on :8853 and DoH on :8443 with a certificate from a private CA.
/// Returns the upstream, the instance and the CA file.
pub fn tls_instance(n: u8) -> (AuthServer, Cleanpipe, PathBuf) {
    let zone = support::Zone::parse(
        "tls.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.60\n",
    );
    let up = support::start_server(&format!("127.0.90.{n}"), 5354, vec![zone]);
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        &format!("  mode: forward\n  forward:\n    - address: 127.0.90.{n}\n      port: 5354"),
        "",
        &[("infected.yaml", INFECTED), ("enrolments.yaml", ENROLLED)],
    );
    let ca = t::make_ca(&cp.dir);
    t::make_server_cert(
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
        format!(
            "{c}tls:\n  certificate: cert.pem\n  key: key.pem\n  dot: [\"{dot}\"]\n  doh: [\"{doh}\"]\n  handshake_timeout_secs: 1\n  reload_check_secs: 1\n"
        )
    });
    cp.spawn();
    (up, cp, ca)
}

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x7777;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let mut e = hickory_proto::op::Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().expect("query")
}

fn kdig(cp: &Cleanpipe, ca: &std::path::Path, source: &str, https: bool, name: &str) -> String {
    let port = if https { "8443" } else { "8853" };
    let mut c = Command::new("kdig");
    c.arg(format!("@{}", cp.dns.ip()))
        .args(["-p", port, "-b", source])
        .arg(format!("+tls-ca={}", ca.display()))
        .arg(format!("+tls-hostname={HOST}"))
        .args(["+timeout=5", "+retry=0"]);
    if https {
        c.arg("+https");
    }
    let out = c
        .args([name, "A"])
        .output()
        .expect("kdig (Debian package knot-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn curl_doh(cp: &Cleanpipe, ca: &std::path::Path, source: &str, post: bool, q: &[u8]) -> Message {
    use base64::Engine as _;
    let url_host = format!("{HOST}:8443:{}", cp.dns.ip());
    let mut c = Command::new("curl");
    c.args(["-s", "--http2", "--fail", "--max-time", "5"])
        .args(["--interface", source, "--resolve", &url_host])
        .arg("--cacert")
        .arg(ca);
    if post {
        let f = cp.dir.join("q.bin");
        std::fs::write(&f, q).expect("query file");
        c.args([
            "-H",
            "content-type: application/dns-message",
            "--data-binary",
        ])
        .arg(format!("@{}", f.display()))
        .arg(format!("https://{HOST}:8443/dns-query"));
    } else {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(q);
        c.arg(format!("https://{HOST}:8443/dns-query?dns={b64}"));
    }
    let out = c.output().expect("curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Message::from_vec(&out.stdout).expect("a DNS message")
}

/// kdig over DoT and DoH, curl over HTTP/2 with GET and POST: the policy applies as on UDP
/// (quarantined client: the cleanup page with EDE 15; kids client: the safe-search CNAME).
#[test]
fn dot_and_doh_answer_with_the_same_policy() {
    let (up, cp, ca) = tls_instance(1);
    for https in [false, true] {
        let out = kdig(&cp, &ca, "127.0.90.10", https, "www.tls.example");
        assert!(
            out.contains("198.51.100.60"),
            "normal answer (https {https}): {out}"
        );
        let out = kdig(&cp, &ca, "127.0.90.66", https, "www.tls.example");
        assert!(
            out.contains(&cp.sink()),
            "cleanup page (https {https}): {out}"
        );
        assert!(out.contains("EDE: 15"), "EDE 15 (https {https}): {out}");
        let out = kdig(&cp, &ca, "127.0.90.20", https, "www.google.com");
        assert!(
            out.contains("forcesafesearch.google.com"),
            "kids safe search (https {https}): {out}"
        );
    }
    assert_eq!(
        up.count("www.tls.example", RecordType::A),
        1,
        "one upstream query, then the cache"
    );
    for post in [false, true] {
        let m = curl_doh(&cp, &ca, "127.0.90.11", post, &query("www.tls.example."));
        assert_eq!(support::addresses(&m), vec!["198.51.100.60"], "post {post}");
        let m = curl_doh(&cp, &ca, "127.0.90.66", post, &query("www.tls.example."));
        assert_eq!(support::addresses(&m), vec![cp.sink()], "post {post}");
        assert_eq!(support::ede(&m), Some(15));
    }
    for transport in ["tls", "https"] {
        assert!(
            cp.metric("cleanpipe_queries_total", &[("transport", transport)])
                .is_some_and(|n| n >= 3.0),
            "{transport} queries counted"
        );
        assert!(
            cp.metric(
                "cleanpipe_tls_handshakes_total",
                &[("transport", transport), ("result", "ok")]
            )
            .is_some_and(|n| n >= 3.0),
            "{transport} handshakes counted"
        );
    }
}

/// A certificate renewed on disk is served to new connections without a restart, while an
/// open connection keeps working; a client that never finishes its handshake is cut off.
#[test]
fn a_renewed_certificate_is_picked_up_and_slow_handshakes_are_cut_off() {
    let (_up, cp, ca) = tls_instance(2);
    let dot = std::net::SocketAddr::new(cp.dns.ip(), 8853);
    let mut open = Dot::connect(dot, ip("127.0.90.12"), &ca).expect("DoT");
    let first = open.peer_certificate();
    let m = Message::from_vec(&open.exchange(&query("www.tls.example.")).expect("answer"))
        .expect("valid");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // Renew: a new certificate (another serial) written over the files.
    t::make_server_cert(
        &cp.dir,
        &cp.dir.join("cert.new"),
        &cp.dir.join("key.new"),
        2,
    );
    std::fs::rename(cp.dir.join("key.new"), cp.dir.join("key.pem")).expect("key");
    std::fs::rename(cp.dir.join("cert.new"), cp.dir.join("cert.pem")).expect("cert");
    let renewed = support::within(Duration::from_secs(5), || {
        Dot::connect(dot, ip("127.0.90.13"), &ca).is_ok_and(|d| d.peer_certificate() != first)
    });
    assert!(
        renewed.is_some(),
        "new connections get the new certificate; log:\n{}",
        cp.log()
    );
    // The open connection still answers.
    let m = Message::from_vec(&open.exchange(&query("www.tls.example.")).expect("answer"))
        .expect("valid");
    assert_eq!(support::addresses(&m), vec!["198.51.100.60"]);

    // A connection that never starts its handshake is closed after the timeout (1 s here).
    use std::io::Read;
    for port in [8853, 8443] {
        let mut idle = support::tcp_connect(
            std::net::SocketAddr::new(cp.dns.ip(), port),
            ip("127.0.90.14"),
        )
        .expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(4)))
            .expect("timeout");
        let t0 = std::time::Instant::now();
        let mut b = [0u8; 16];
        let r = idle.read(&mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "closed: {r:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "within the handshake timeout: {:?}",
            t0.elapsed()
        );
    }
    assert!(
        cp.metric("cleanpipe_tls_handshakes_total", &[("result", "timeout")])
            .is_some_and(|n| n >= 2.0)
    );
}
