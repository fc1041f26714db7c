//! The trusted zone as parents and the ISP's customer portal use it: households' own additions
//! and removals through a provisioning-scope token, schedules crossing a period boundary while
//! serving, the bypass list, and the "service broken?" misses report, all over real DNS.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::rr::RecordType;

use crate::support::{self, AuthServer, Cleanpipe, TOKEN, addresses, dig, query};

const PORTAL: &str = "portal-token-0123456789abcdef";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// An upstream on 127.0.81.N:5354 serving `tz.example.`, a bank of the shipped allowlists
/// (`kbc.be`, clean-pipe only) and `google.com` (kids reach it with safe search), and a
/// cleanpipe forwarding to it, with a second admin token for the customer portal.
fn setup(n: u8, policy: &[(&str, &str)]) -> (AuthServer, Cleanpipe) {
    let soa = "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\n";
    let zones = vec![
        support::Zone::parse(
            "tz.example.",
            &format!("{soa}www 300 IN A 198.51.100.9\nportal 300 IN A 198.51.100.10\n"),
        ),
        support::Zone::parse("kbc.be.", &format!("{soa}www 300 IN A 198.51.100.11\n")),
        support::Zone::parse(
            "google.com.",
            &format!("{soa}dns 300 IN A 198.51.100.12\nwww 300 IN A 198.51.100.13\n"),
        ),
    ];
    let up = support::start_server(&format!("127.0.81.{n}"), 5354, zones);
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        &format!("  mode: forward\n  forward:\n    - address: 127.0.81.{n}\n      port: 5354"),
        "",
        policy,
    );
    cp.edit_config(|c| {
        c.replace(
            &format!("  token: {TOKEN}\n"),
            &format!(
                "  token: {TOKEN}\n  tokens:\n    - name: customer-portal\n      token: {PORTAL}\n      scopes: [provisioning]\n"
            ),
        )
    });
    cp.spawn();
    (up, cp)
}

/// An admin call with the customer portal's token.
fn portal(
    cp: &Cleanpipe,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (code, text) = cleanpipe::web::client::call(cp.admin, method, path, Some(PORTAL), body)
        .expect("admin API reachable");
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn a(cp: &Cleanpipe, client: &str, name: &str) -> Vec<String> {
    addresses(&query(cp.dns, ip(client), name, RecordType::A))
}

fn cli(cp: &Cleanpipe, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(args)
        .arg("--config")
        .arg(cp.dir.join("cleanpipe.yaml"))
        .output()
        .expect("cli runs");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_customer_portal_edits_households_with_its_token_and_nothing_else() {
    let (_up, cp) = setup(1, &[]);
    let kid = "127.0.0.30";
    let sink = cp.sink();
    // Before: an ordinary kids enrolment. The school portal is outside (information page),
    // YouTube is inside with Restricted Mode.
    let (code, body) = portal(
        &cp,
        "POST",
        "/v1/enrolments",
        Some(&format!(r#"{{"prefix": "{kid}", "profile": "kids"}}"#)),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(a(&cp, kid, "portal.tz.example."), vec![sink.clone()]);
    let d = dig(cp.dns, Some(ip(kid)), "www.youtube.com", "A", &[]);
    assert!(d.text.contains("restrict.youtube.com"), "{}", d.text);

    // The parent adds the school portal and removes video, through the portal.
    let (code, body) = portal(
        &cp,
        "PATCH",
        "/v1/enrolments",
        Some(&format!(
            r#"{{"prefix": "{kid}", "allow": ["Portal.TZ.example."], "remove": ["video"]}}"#
        )),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["enrolment"]["allow"],
        serde_json::json!(["portal.tz.example"])
    );
    // In force when the call returns: the addition resolves (whole subtree), the rest of
    // tz.example does not, YouTube is gone.
    assert_eq!(a(&cp, kid, "portal.tz.example."), vec!["198.51.100.10"]);
    assert_eq!(a(&cp, kid, "www.tz.example."), vec![sink.clone()]);
    assert_eq!(a(&cp, kid, "www.youtube.com."), vec![sink.clone()]);
    // Another kids household is unaffected.
    portal(
        &cp,
        "POST",
        "/v1/enrolments",
        Some(r#"{"prefix": "127.0.0.31", "profile": "kids"}"#),
    );
    assert_eq!(
        a(&cp, "127.0.0.31", "portal.tz.example."),
        vec![sink.clone()]
    );
    let d = dig(cp.dns, Some(ip("127.0.0.31")), "www.youtube.com", "A", &[]);
    assert!(d.text.contains("restrict.youtube.com"), "{}", d.text);

    // Names that would open the zone are refused, and nothing changes.
    for bad in [r#"["com"]"#, r#"["*"]"#, r#"["co.uk"]"#] {
        let (code, body) = portal(
            &cp,
            "PATCH",
            "/v1/enrolments",
            Some(&format!(r#"{{"prefix": "{kid}", "allow": {bad}}}"#)),
        );
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (code, body) = portal(&cp, "GET", &format!("/v1/enrolments?prefix={kid}"), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["enrolment"]["allow"],
        serde_json::json!(["portal.tz.example"])
    );
    assert!(
        body["enrolment"]["remove"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| s == "youtube")),
        "{body}"
    );

    // Outside its scope: 403, and the mode stays normal.
    for (method, path, body) in [
        (
            "PUT",
            "/v1/mode",
            Some(r#"{"mode": "trusted-only", "reason": "x"}"#),
        ),
        (
            "POST",
            "/v1/infected",
            Some(r#"{"prefix": "127.0.0.9", "family": "Mirai"}"#),
        ),
        ("GET", "/v1/status", None),
        ("GET", "/v1/audit", None),
    ] {
        let (code, resp) = portal(&cp, method, path, body);
        assert_eq!(code, 403, "{method} {path}: {resp}");
        assert!(
            resp["error"]
                .as_str()
                .is_some_and(|e| e.contains("customer-portal")),
            "{resp}"
        );
    }
    let (_, status) = cp.admin("GET", "/v1/status", None);
    assert_eq!(status["mode"]["mode"], "normal");
    assert_eq!(a(&cp, "127.0.0.9", "www.tz.example."), vec!["198.51.100.9"]);

    // The audit log names the token that acted, and explain shows the household.
    let (_, audit) = cp.admin("GET", "/v1/audit", None);
    let text = audit.to_string();
    assert!(
        text.contains("[token customer-portal]") && text.contains("adds portal.tz.example"),
        "{text}"
    );
    let (_, ex) = cp.admin(
        "GET",
        &format!("/v1/explain?client={kid}&name=portal.tz.example"),
        None,
    );
    assert_eq!(ex["reason"], "household_allowed", "{ex}");
    assert!(
        ex.to_string().contains("household adds: portal.tz.example"),
        "{ex}"
    );

    // The CLI does the same with the operator's token: give video back, take the portal away.
    cli(
        &cp,
        &[
            "household",
            kid,
            "--restore",
            "video",
            "--disallow",
            "portal.tz.example",
        ],
    );
    assert_eq!(a(&cp, kid, "portal.tz.example."), vec![sink.clone()]);
    let d = dig(cp.dns, Some(ip(kid)), "www.youtube.com", "A", &[]);
    assert!(d.text.contains("restrict.youtube.com"), "{}", d.text);
}

/// `HH:MM:SS` (UTC) of unix second `t`.
fn utc_clock(t: u64) -> String {
    let s = t % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn a_schedule_period_ends_while_serving_and_the_answers_follow_without_a_reload() {
    // A period that started an hour ago and ends in a few seconds: homework time puts this
    // clean-pipe household in kids, where the bank is not.
    let now = unix_now();
    let end = now + 4;
    let schedules = format!(
        "time_zone: UTC\nschedules:\n  - id: homework-time\n    periods:\n      - {{name: homework, days: [daily], from: \"{}\", to: \"{}\", profile: kids}}\n",
        utc_clock(now - 3600),
        utc_clock(end)
    );
    let enrol = "enrolments:\n  - prefix: 127.0.0.40\n    profile: clean-pipe\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n    schedule: homework-time\n";
    let (_up, cp) = setup(
        2,
        &[("schedules.yaml", &schedules), ("enrolments.yaml", enrol)],
    );
    let client = "127.0.0.40";
    assert!(
        unix_now() < end,
        "the test machine was too slow to start in time"
    );
    assert_eq!(a(&cp, client, "www.kbc.be."), vec![cp.sink()]);
    let (_, ex) = cp.admin(
        "GET",
        &format!("/v1/explain?client={client}&name=www.kbc.be"),
        None,
    );
    assert!(
        ex.to_string().contains("period `homework`")
            && ex.to_string().contains("profile `kids` applies"),
        "{ex}"
    );
    let (_, before) = cp.admin("GET", "/v1/status", None);

    while unix_now() <= end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a(&cp, client, "www.kbc.be."), vec!["198.51.100.11"]);
    let (_, after) = cp.admin("GET", "/v1/status", None);
    assert_eq!(
        before["generation"], after["generation"],
        "a change of period needs no reload"
    );
    let (_, ex) = cp.admin(
        "GET",
        &format!("/v1/explain?client={client}&name=www.kbc.be"),
        None,
    );
    assert!(ex.to_string().contains("no period in force now"), "{ex}");
    // The enrolment's own view says the same.
    let (_, e) = cp.admin("GET", &format!("/v1/enrolments?prefix={client}"), None);
    assert_eq!(e["profile_now"], "clean-pipe", "{e}");
    assert_eq!(e["period_now"], serde_json::Value::Null, "{e}");
}

#[test]
fn the_bypass_list_blocks_a_public_doh_name_for_kids_only() {
    let enrol = "enrolments:\n  - {prefix: 127.0.0.50, profile: kids, enabled_by: t, enabled_at: 2026-11-01T10:00:00Z}\n  - {prefix: 127.0.0.51, profile: clean-pipe, enabled_by: t, enabled_at: 2026-11-01T10:00:00Z}\n";
    let (_up, cp) = setup(3, &[("enrolments.yaml", enrol)]);
    // dns.google.com is Google's JSON/DoH endpoint, inside google.com.
    let kids = dig(cp.dns, Some(ip("127.0.0.50")), "dns.google.com", "A", &[]);
    assert_eq!(
        (kids.status.as_str(), kids.ede),
        ("NXDOMAIN", Some(17)),
        "{}",
        kids.text
    );
    let clean = dig(cp.dns, Some(ip("127.0.0.51")), "dns.google.com", "A", &[]);
    assert_eq!(clean.status, "NOERROR", "{}", clean.text);
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.0.51"),
            "dns.google.com.",
            RecordType::A
        )),
        vec!["198.51.100.12"]
    );
    let other = dig(cp.dns, Some(ip("127.0.0.52")), "dns.google.com", "A", &[]);
    assert_eq!(other.status, "NOERROR", "{}", other.text);

    // Households are set in files too: an addition written to the enrolments file is in force
    // within a second, and even it cannot reopen a bypass name.
    assert_eq!(a(&cp, "127.0.0.50", "www.tz.example."), vec![cp.sink()]);
    cp.write_policy(
        "enrolments.yaml",
        &enrol.replace(
            "profile: kids,",
            "profile: kids, allow: [www.tz.example, dns.google.com],",
        ),
    );
    let took = support::within(Duration::from_secs(1), || {
        a(&cp, "127.0.0.50", "www.tz.example.") == vec!["198.51.100.9"]
    });
    assert!(
        took.is_some(),
        "the file's addition was not in force within 1 s"
    );
    let kids = dig(cp.dns, Some(ip("127.0.0.50")), "dns.google.com", "A", &[]);
    assert_eq!(kids.status, "NXDOMAIN", "{}", kids.text);
}

#[test]
fn the_misses_report_names_denied_names_and_the_service_before_them_never_a_client() {
    let enrol = "enrolments:\n  - {prefix: 127.0.0.60, profile: kids, enabled_by: t, enabled_at: 2026-11-01T10:00:00Z}\n  - {prefix: 127.0.0.61, profile: kids, enabled_by: t, enabled_at: 2026-11-01T10:00:00Z}\n  - {prefix: 127.0.0.62, profile: clean-pipe, enabled_by: t, enabled_at: 2026-11-01T10:00:00Z}\n";
    let (_up, mut cp) = setup(4, &[("enrolments.yaml", enrol)]);
    // A child opens the school platform, whose lesson videos come from a name the allowlist
    // lacks: three denials right after the school's own name.
    let _ = query(
        cp.dns,
        ip("127.0.0.60"),
        "www.smartschool.be.",
        RecordType::A,
    );
    for _ in 0..3 {
        assert_eq!(
            a(&cp, "127.0.0.60", "media.lesson-cdn.example."),
            vec![cp.sink()]
        );
    }
    // Another child asks it with no service before it; a clean-pipe customer asks it too.
    let _ = query(
        cp.dns,
        ip("127.0.0.61"),
        "media.lesson-cdn.example.",
        RecordType::A,
    );
    let _ = query(
        cp.dns,
        ip("127.0.0.62"),
        "media.lesson-cdn.example.",
        RecordType::A,
    );
    let _ = query(
        cp.dns,
        ip("127.0.0.62"),
        "tracker.ads.example.",
        RecordType::A,
    );
    // Allowed names and people outside the trusted zone are not counted.
    let _ = query(cp.dns, ip("127.0.0.63"), "unlisted.example.", RecordType::A);

    let (code, body) = cp.admin("GET", "/v1/misses?profile=kids", None);
    assert_eq!(code, 200, "{body}");
    let rows = body["misses"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["name"], "media.lesson-cdn.example");
    assert_eq!(rows[0]["count"], 4);
    assert!(
        rows[0]["hint"]
            .as_str()
            .is_some_and(|h| h.starts_with("smartschool")),
        "{body}"
    );
    assert_eq!(rows[0]["hint_count"], 3);
    let (_, all) = cp.admin("GET", "/v1/misses", None);
    let all_rows = all["misses"].as_array().cloned().unwrap_or_default();
    assert_eq!(all_rows.len(), 3, "{all}");
    assert!(
        all_rows
            .iter()
            .any(|r| r["profile"] == "clean-pipe" && r["name"] == "tracker.ads.example")
    );
    assert!(!all_rows.iter().any(|r| r["name"] == "unlisted.example"));
    assert!(!all_rows.iter().any(|r| r["name"] == "www.smartschool.be"));
    // No client address anywhere in the report.
    assert!(!all.to_string().contains("127.0.0."), "{all}");
    assert_eq!(
        cp.metric(
            "cleanpipe_trusted_zone_denied_total",
            &[("profile", "kids")]
        ),
        Some(4.0)
    );
    // The counts are kept across a restart (saved to the state database), and the CLI shows
    // them as a table.
    cp.terminate();
    cp.spawn();
    let table = cli(
        &cp,
        &["allowlist", "misses", "--profile", "kids", "--since", "1h"],
    );
    assert!(
        table.contains("media.lesson-cdn.example")
            && table.contains("smartschool")
            && table.contains("3 of 4"),
        "{table}"
    );
    let (code, body) = cp.admin("GET", "/v1/misses?since=yesterday", None);
    assert_eq!(code, 400, "{body}");
}
