//! Query logs: the policy-action log (JSON lines, truncated client addresses, no normal
//! queries) and dnstap read back by real dnstap tools (fstrm_capture receives the Frame
//! Streams on a Unix socket, dnstap-read decodes them).

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::{self, AuthServer, Cleanpipe, query, within};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// An instance forwarding to 127.0.77.N with a feed listing `bad.log.example` and one infected
/// subscriber (127.0.0.10); `log` is the `log:` section.
fn setup(n: u8, log: &str) -> (AuthServer, Cleanpipe) {
    let zone = support::Zone::parse(
        "log.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.7\n",
    );
    let up = support::start_server(&format!("127.0.77.{n}"), 5354, vec![zone]);
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        &format!("  mode: forward\n  forward:\n    - address: 127.0.77.{n}\n      port: 5354"),
        &format!("feeds:\n  - name: blocklist\n    file: blocklist.rpz\n    zone: rpz.log.\n{log}"),
        &[(
            "infected.yaml",
            "infected:\n  - {prefix: 127.0.0.10, family: Mirai, source: t, first_seen: 2026-11-20T08:00:00Z}\n",
        )],
    );
    std::fs::write(
        cp.dir.join("blocklist.rpz"),
        "$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS localhost.\nbad.log.example CNAME .\n",
    )
    .expect("feed");
    cp.spawn();
    (up, cp)
}

fn traffic(cp: &Cleanpipe) {
    let _ = query(cp.dns, ip("127.0.0.9"), "www.log.example.", RecordType::A); // normal
    let _ = query(cp.dns, ip("127.0.0.9"), "bad.log.example.", RecordType::A); // feed
    let _ = query(
        cp.dns,
        ip("127.0.0.10"),
        "www.log.example.",
        RecordType::AAAA,
    ); // sinkhole
}

#[test]
fn policy_actions_are_logged_as_json_lines_with_truncated_clients() {
    let (_up, cp) = setup(1, "log:\n  actions:\n    path: actions.jsonl\n");
    traffic(&cp);
    let path = cp.dir.join("actions.jsonl");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    };
    assert!(
        within(Duration::from_secs(3), || lines().len() >= 2).is_some(),
        "no action lines; log:\n{}",
        cp.log()
    );
    let all = lines();
    assert_eq!(all.len(), 2, "the normal query is not logged: {all:?}");
    let feed = all
        .iter()
        .find(|l| l["reason"] == "threat_feed")
        .expect("feed line");
    assert_eq!(feed["qname"], "bad.log.example");
    assert_eq!(feed["qtype"], "A");
    assert_eq!(feed["action"], "nxdomain");
    assert_eq!(feed["rcode"], "NXDOMAIN");
    assert!(
        feed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("blocklist"))
    );
    assert_eq!(feed["client"], "127.0.0.0/24");
    assert_eq!(feed["transport"], "udp");
    assert!(
        feed["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T'))
    );
    let sink = all
        .iter()
        .find(|l| l["reason"] == "quarantined")
        .expect("sinkhole line");
    assert_eq!(sink["action"], "sinkhole");
    assert_eq!(sink["qtype"], "AAAA");
    assert!(sink["detail"].as_str().is_some_and(|d| d.contains("Mirai")));
    let text = std::fs::read_to_string(&path).expect("log");
    assert!(
        !text.contains("127.0.0.10") && !text.contains("127.0.0.9"),
        "{text}"
    );
}

struct Capture(Child);

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tools_available() -> bool {
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = have("fstrm_capture") && have("dnstap-read");
    if !ok {
        assert!(
            std::env::var("CLEANPIPE_REQUIRE_DNSTAP").as_deref() != Ok("1"),
            "fstrm_capture (fstrm-bin) and dnstap-read (bind9-dnsutils) are required"
        );
        eprintln!("SKIPPED: fstrm_capture or dnstap-read not installed");
    }
    ok
}

#[test]
fn dnstap_frames_are_read_back_by_fstrm_capture_and_dnstap_read() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("dnstap.sock");
    let out = dir.path().join("capture.fstrm");
    let capture = Capture(
        Command::new("fstrm_capture")
            .args(["-t", "protobuf:dnstap.Dnstap", "-u"])
            .arg(&sock)
            .arg("-w")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fstrm_capture starts"),
    );
    assert!(
        within(Duration::from_secs(5), || sock.exists()).is_some(),
        "fstrm_capture did not open its socket"
    );
    let (_up, mut cp) = setup(
        2,
        &format!(
            "log:\n  dnstap:\n    socket: {}\n    identity: resolver-test\n    client: full\n",
            sock.display()
        ),
    );
    traffic(&cp);
    // Stopping cleanpipe ends the stream (STOP, FINISH); then fstrm_capture closes the file.
    assert!(cp.terminate().success());
    let mut capture = capture;
    let _ = Command::new("kill")
        .args(["-INT", &capture.0.id().to_string()])
        .status();
    let _ = capture.0.wait();
    let read = Command::new("dnstap-read")
        .arg("-y")
        .arg(&out)
        .output()
        .expect("dnstap-read runs");
    let yaml = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(
        read.status.success(),
        "{yaml}{}",
        String::from_utf8_lossy(&read.stderr)
    );
    // Two policy actions, each as a client query and a client response; no normal query.
    assert_eq!(yaml.matches("type: CLIENT_QUERY").count(), 2, "{yaml}");
    assert_eq!(yaml.matches("type: CLIENT_RESPONSE").count(), 2, "{yaml}");
    assert!(yaml.contains("identity: resolver-test"), "{yaml}");
    assert!(yaml.contains("query_address: \"127.0.0.9\""), "{yaml}");
    assert!(yaml.contains("query_address: \"127.0.0.10\""), "{yaml}");
    assert!(yaml.contains("bad.log.example"), "{yaml}");
    assert!(yaml.contains("NXDOMAIN"), "{yaml}");
    assert!(yaml.contains("socket_protocol: UDP"), "{yaml}");
}
