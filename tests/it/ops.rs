//! What the NOC relies on: every metric the dashboard and the alert rules use is served (with
//! values that move), systemd's readiness protocol, and the ops/ checks (promtool,
//! systemd-analyze, the dashboard) when their tools are installed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::{self, AuthServer, Cleanpipe, query, within};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Metric names (`cleanpipe_…`) in a text, with histogram series suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cleanpipe_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_owned());
        i = end;
    }
    out
}

/// A forwarding instance with a file feed, an enrolment and an infected subscriber.
fn setup(n: u8) -> (AuthServer, Cleanpipe) {
    let zone = support::Zone::parse(
        "ops.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.7\n",
    );
    let up = support::start_server(&format!("127.0.80.{n}"), 5354, vec![zone]);
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        &format!("  mode: forward\n  forward:\n    - address: 127.0.80.{n}\n      port: 5354"),
        "feeds:\n  - name: blocklist\n    file: blocklist.rpz\n    zone: rpz.ops.\n",
        &[(
            "infected.yaml",
            "infected:\n  - {prefix: 127.0.0.10, family: Mirai, source: t, first_seen: 2026-11-20T08:00:00Z}\n",
        )],
    );
    std::fs::write(
        cp.dir.join("blocklist.rpz"),
        "$TTL 300\n@ SOA ns hostmaster 7 3600 600 86400 300\n@ NS localhost.\nbad.ops.example CNAME .\n",
    )
    .expect("feed file");
    cp.spawn();
    (up, cp)
}

#[test]
fn every_metric_of_the_dashboard_and_the_alert_rules_is_served_and_moves() {
    let (_up, cp) = setup(1);
    // An upstream answer, then the same from the cache, a feed block, a quarantine.
    let _ = query(cp.dns, ip("127.0.0.9"), "www.ops.example.", RecordType::A);
    let _ = query(cp.dns, ip("127.0.0.9"), "www.ops.example.", RecordType::A);
    let _ = query(cp.dns, ip("127.0.0.9"), "bad.ops.example.", RecordType::A);
    let _ = query(cp.dns, ip("127.0.0.10"), "www.ops.example.", RecordType::A);

    let text = cp.metrics();
    let served = metric_names(&text);
    let dashboard =
        std::fs::read_to_string(repo("ops/grafana/cleanpipe.json")).expect("dashboard JSON");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let rules = std::fs::read_to_string(repo("ops/prometheus/cleanpipe-rules.yml")).expect("rules");
    let used: BTreeSet<String> = metric_names(&dashboard.to_string())
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(
        used.len() >= 30,
        "the dashboard uses {} metrics",
        used.len()
    );
    let missing: Vec<_> = used.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "used by ops/ but not in /metrics: {missing:?}"
    );

    // The values answer the NOC's questions.
    let m = |name: &str, labels: &[(&str, &str)]| support::metric(&text, name, labels);
    assert_eq!(m("cleanpipe_ready", &[]), Some(1.0));
    assert_eq!(m("cleanpipe_policy_last_reload_ok", &[]), Some(1.0));
    assert!(m("cleanpipe_policy_reload_seconds_count", &[]) >= Some(1.0));
    assert!(m("cleanpipe_responses_total", &[("rcode", "NOERROR")]) >= Some(3.0));
    assert!(m("cleanpipe_responses_total", &[("rcode", "NXDOMAIN")]) >= Some(1.0));
    for source in ["cache", "upstream", "synthesized"] {
        assert!(
            m(
                "cleanpipe_response_seconds_count",
                &[("transport", "udp"), ("source", source)]
            ) >= Some(1.0),
            "{source}: {text}"
        );
    }
    assert!(
        m(
            "cleanpipe_upstream_rtt_seconds_count",
            &[("backend", "forward")]
        ) >= Some(1.0)
    );
    assert_eq!(
        m("cleanpipe_feed_serial", &[("feed", "blocklist")]),
        Some(7.0)
    );
    assert!(
        within(Duration::from_secs(7), || {
            support::metric(&cp.metrics(), "cleanpipe_cache_entries", &[]) >= Some(1.0)
        })
        .is_some(),
        "cache size gauge"
    );
    assert!(
        support::metric(
            &cp.metrics(),
            "cleanpipe_feed_age_seconds",
            &[("feed", "blocklist")]
        )
        .is_some_and(|a| (0.0..600.0).contains(&a))
    );

    // A reload that fails turns the gauge to 0; fixing it turns it back.
    cp.write_policy("infected.yaml", "infected: [this is not valid\n");
    assert!(
        within(Duration::from_secs(3), || {
            support::metric(&cp.metrics(), "cleanpipe_policy_last_reload_ok", &[]) == Some(0.0)
        })
        .is_some()
    );
}

#[test]
fn systemd_hears_ready_once_serving_and_stopping_at_shutdown() {
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.80.250\n      port: 5354",
        "",
        &[],
    );
    let sock_path = cp.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    cp.env
        .push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));
    cp.spawn();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means answering: the admin API says so too.
    assert_eq!(
        cleanpipe::web::client::call(cp.admin, "GET", "/ready", None, None)
            .expect("admin")
            .0,
        200
    );
    let status = cp.terminate();
    assert!(status.success(), "{status}");
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
}

/// `bash ops/check.sh`: promtool check/test rules, the dashboard against its generator, the
/// systemd unit with systemd-analyze verify. CI installs the tools and sets
/// CLEANPIPE_REQUIRE_OPS_TOOLS=1; elsewhere the test says what it skipped.
#[test]
fn the_alert_rules_dashboard_and_systemd_unit_pass_their_checks() {
    let have = |tool: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let required = std::env::var("CLEANPIPE_REQUIRE_OPS_TOOLS").is_ok_and(|v| v == "1");
    let missing: Vec<_> = ["promtool", "systemd-analyze"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        assert!(
            !required,
            "missing {missing:?} (apt-get install prometheus systemd)"
        );
        eprintln!("SKIPPED: {missing:?} not installed; ops/check.sh not run");
        return;
    }
    let out = std::process::Command::new("bash")
        .arg(repo("ops/check.sh"))
        .output()
        .expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ops checks: OK"), "{text}");
    assert!(!text.contains("SKIPPED"), "{text}");
}

/// `cleanpipe backup` copies the state database of a running instance; a new instance started
/// on the copy (same configuration and policy files) makes the same decisions.
#[test]
fn a_backup_restored_into_a_new_instance_gives_the_same_decisions() {
    let (_up, a) = setup(2);
    let changes: [(&str, &str, &str); 4] = [
        (
            "POST",
            "/v1/infected",
            r#"{"prefix": "127.0.0.31", "family": "Emotet", "ticket": "T-31"}"#,
        ),
        (
            "POST",
            "/v1/enrolments",
            r#"{"prefix": "127.0.0.32", "profile": "kids", "allow": ["www.ops.example"]}"#,
        ),
        (
            "POST",
            "/v1/enrolments",
            r#"{"prefix": "127.0.0.33", "profile": "clean-pipe"}"#,
        ),
        (
            "PUT",
            "/v1/mode",
            r#"{"mode": "trusted-only", "reason": "drill", "exempt": ["127.0.0.34"]}"#,
        ),
    ];
    for (method, path, body) in changes {
        let (code, resp) = a.admin(method, path, Some(body));
        assert_eq!(code, 200, "{method} {path}: {resp}");
    }
    let copy = a.dir.join("backup.sqlite");
    let out = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(["backup", "--config"])
        .arg(a.dir.join("cleanpipe.yaml"))
        .arg(&copy)
        .output()
        .expect("cleanpipe backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Restore into a new instance: same configuration and policy, the copy as its database.
    let mut b = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.80.2\n      port: 5354",
        "",
        &[],
    );
    for f in ["cleanpipe.yaml", "blocklist.rpz", "policy/infected.yaml"] {
        let text = std::fs::read_to_string(a.dir.join(f)).expect("copy");
        let text = text.replace(&a.dns.ip().to_string(), &b.dns.ip().to_string());
        std::fs::write(b.dir.join(f), text).expect("write");
    }
    std::fs::copy(&copy, b.dir.join("state.sqlite")).expect("restore");
    b.spawn();
    let decide = |cp: &Cleanpipe, client: &str, name: &str| {
        let (code, e) = cp.admin(
            "GET",
            &format!("/v1/explain?client={client}&name={name}"),
            None,
        );
        assert_eq!(code, 200, "{e}");
        (e["action"].clone(), e["reason"].clone())
    };
    let mut compared = 0;
    for client in [
        "127.0.0.9",
        "127.0.0.10",
        "127.0.0.31",
        "127.0.0.32",
        "127.0.0.33",
        "127.0.0.34",
    ] {
        for name in [
            "www.ops.example",
            "bad.ops.example",
            "www.kbc.be",
            "www.youtube.com",
        ] {
            assert_eq!(
                decide(&a, client, name),
                decide(&b, client, name),
                "{client} {name}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 24);
    // And the restored instance really holds the changes (not a fresh, empty state).
    assert_eq!(decide(&b, "127.0.0.31", "www.ops.example").1, "quarantined");
    assert_eq!(
        decide(&b, "127.0.0.32", "www.ops.example").1,
        "household_allowed"
    );
    assert_eq!(decide(&b, "127.0.0.34", "www.ops.example").1, "exempt");
    let (_, audit) = b.admin("GET", "/v1/audit", None);
    assert_eq!(audit.as_array().map(Vec::len), Some(4), "{audit}");
    // A backup never overwrites a file.
    let again = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(["backup", "--config"])
        .arg(a.dir.join("cleanpipe.yaml"))
        .arg(&copy)
        .output()
        .expect("cleanpipe backup");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
}
