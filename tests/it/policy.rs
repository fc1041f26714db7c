//! The policy engine end to end: per-client answers, hot reload, broken files, admin API,
//! persistence across restarts, and "a blocked query never reaches the upstream".

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{self, AuthServer, Cleanpipe, addresses, dig, ede, query};

const INFECTED: &str = "infected:\n  - prefix: 127.0.0.10\n    family: Mirai\n    source: shadowserver\n    first_seen: 2026-11-20T08:00:00Z\n    ticket: ABUSE-7\n";
const ENROLLED: &str = "enrolments:\n  - prefix: 127.0.0.20\n    profile: clean-pipe\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// An upstream serving `pol.example.` names on 127.0.98.N:5354, and cleanpipe forwarding to it.
fn setup(n: u8, policy: &[(&str, &str)]) -> (AuthServer, Cleanpipe) {
    let names: String = ["www", "a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|n| format!("{n} 300 IN A 198.51.100.7\n"))
        .collect();
    let zone = support::Zone::parse(
        "pol.example.",
        &format!("@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\n{names}"),
    );
    let up = support::start_server(&format!("127.0.98.{n}"), 5354, vec![zone]);
    let cp = Cleanpipe::start(
        &format!("  mode: forward\n  forward:\n    - address: 127.0.98.{n}\n      port: 5354"),
        "",
        policy,
    );
    (up, cp)
}

#[test]
fn clients_get_their_own_answers_and_blocks_never_reach_the_upstream() {
    let (up, cp) = setup(
        1,
        &[("infected.yaml", INFECTED), ("enrolments.yaml", ENROLLED)],
    );
    // Infected subscriber: sinkholed with EDE 15, A and AAAA.
    let m = query(cp.dns, ip("127.0.0.10"), "a.pol.example.", RecordType::A);
    assert_eq!(addresses(&m), vec![cp.sink()]);
    assert_eq!(ede(&m), Some(15));
    let m = query(cp.dns, ip("127.0.0.10"), "a.pol.example.", RecordType::AAAA);
    assert_eq!(addresses(&m), vec!["2001:db8::1"]);
    // Trusted-zone customer: not in the zone → NXDOMAIN with EDE 17.
    let d = dig(cp.dns, Some(ip("127.0.0.20")), "a.pol.example", "A", &[]);
    assert_eq!(
        (d.status.as_str(), d.ede),
        ("NXDOMAIN", Some(17)),
        "{}",
        d.text
    );
    assert_eq!(
        up.count("a.pol.example", RecordType::A),
        0,
        "blocked queries must never reach the upstream"
    );
    assert_eq!(up.count("a.pol.example", RecordType::AAAA), 0);
    // Everyone else: resolved by the upstream.
    let m = query(cp.dns, ip("127.0.0.30"), "a.pol.example.", RecordType::A);
    assert_eq!(addresses(&m), vec!["198.51.100.7"]);
    assert_eq!(up.count("a.pol.example", RecordType::A), 1);
}

#[test]
fn policy_file_edit_changes_answers_within_one_second() {
    let (_up, cp) = setup(2, &[("infected.yaml", INFECTED)]);
    let client = ip("127.0.0.31");
    assert_eq!(
        addresses(&query(cp.dns, client, "b.pol.example.", RecordType::A)),
        vec!["198.51.100.7"]
    );
    cp.write_policy("infected.yaml", &format!("{INFECTED}  - prefix: 127.0.0.31\n    family: Emotet\n    source: cert\n    first_seen: 2026-11-21T08:00:00Z\n"));
    let took = support::within(Duration::from_secs(1), || {
        addresses(&query(cp.dns, client, "b.pol.example.", RecordType::A)) == vec![cp.sink()]
    });
    assert!(
        took.is_some(),
        "edit not in force within 1 s; log:\n{}",
        cp.log()
    );
    eprintln!("file edit in force after {took:?}");
}

#[test]
fn broken_file_keeps_the_old_policy_and_reports_the_error() {
    let (_up, cp) = setup(3, &[("infected.yaml", INFECTED)]);
    let (_, before) = cp.admin("GET", "/v1/status", None);
    let generation = before["generation"].as_u64().expect("generation");
    // A bad address on line 3.
    cp.write_policy("infected.yaml", "infected:\n  - prefix: 127.0.0.10\n    family: Mirai\n    source: x\n    first_seen: 2026-11-20T08:00:00Z\n  - prefix: 127.0.0.300\n    family: X\n    source: y\n    first_seen: 2026-11-20T08:00:00Z\n");
    let reported = support::within(Duration::from_secs(3), || {
        let (_, st) = cp.admin("GET", "/v1/status", None);
        st["reload"]["last_errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    assert!(reported.is_some(), "the error must reach the status");
    let (_, st) = cp.admin("GET", "/v1/status", None);
    let err = st["reload"]["last_errors"][0].as_str().expect("error text");
    assert!(
        err.contains("infected.yaml:6:") && err.contains("127.0.0.300"),
        "{err}"
    );
    assert_eq!(
        st["generation"].as_u64(),
        Some(generation),
        "the old snapshot keeps serving"
    );
    // Old policy still answers: 127.0.0.10 still quarantined.
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.0.10"),
            "c.pol.example.",
            RecordType::A
        )),
        vec![cp.sink()]
    );
    assert!(cp.log().contains("policy reload failed"));
    let (code, metrics) =
        cleanpipe::web::client::call(cp.admin, "GET", "/metrics", None, None).expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cleanpipe_policy_reload_failures_total 1"),
        "{metrics}"
    );
    // Fixing the file recovers.
    cp.write_policy("infected.yaml", "infected: []\n");
    assert!(
        support::within(Duration::from_secs(2), || {
            addresses(&query(
                cp.dns,
                ip("127.0.0.10"),
                "c.pol.example.",
                RecordType::A,
            )) == vec!["198.51.100.7"]
        })
        .is_some()
    );
}

#[test]
fn global_mode_flips_within_one_second_and_survives_restart() {
    let (up, mut cp) = setup(4, &[]);
    let client = ip("127.0.0.40");
    assert_eq!(
        addresses(&query(cp.dns, client, "d.pol.example.", RecordType::A)),
        vec!["198.51.100.7"]
    );
    let asked_before = up.count("e.pol.example", RecordType::A);
    let start = std::time::Instant::now();
    let (code, body) = cp.admin(
        "PUT",
        "/v1/mode",
        Some(r#"{"mode":"trusted-only","reason":"worldwide worm","exempt":["127.0.0.41"]}"#),
    );
    assert_eq!(code, 200, "{body}");
    let blocked = |cp: &Cleanpipe| {
        let m = query(cp.dns, client, "e.pol.example.", RecordType::A);
        m.metadata.response_code == ResponseCode::NXDomain && ede(&m) == Some(15)
    };
    assert!(support::within(Duration::from_secs(1), || blocked(&cp)).is_some());
    eprintln!("global mode in force after {:?}", start.elapsed());
    // Trusted services still resolve through the upstream path; exempt infrastructure is normal.
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.0.41"),
            "e.pol.example.",
            RecordType::A
        )),
        vec!["198.51.100.7"]
    );
    assert_eq!(
        up.count("e.pol.example", RecordType::A),
        asked_before + 1,
        "only the exempt client's query went upstream"
    );
    // Restart: the mode is durable.
    cp.terminate();
    cp.spawn();
    assert!(blocked(&cp), "trusted-only must survive a restart");
    let (code, _) = cp.admin("DELETE", "/v1/mode?reason=over", None);
    assert_eq!(code, 200);
    assert_eq!(
        addresses(&query(cp.dns, client, "e.pol.example.", RecordType::A)),
        vec!["198.51.100.7"]
    );
}

#[test]
fn admin_api_requires_the_token_and_flags_subscribers() {
    let (_up, cp) = setup(5, &[]);
    for (method, path) in [
        ("GET", "/v1/status"),
        ("PUT", "/v1/mode"),
        ("POST", "/v1/infected"),
        ("DELETE", "/v1/enrolments?prefix=127.0.0.1"),
    ] {
        let (code, _) =
            cleanpipe::web::client::call(cp.admin, method, path, None, Some("{}")).expect("call");
        assert_eq!(code, 401, "{method} {path} without token");
        let (code, _) =
            cleanpipe::web::client::call(cp.admin, method, path, Some("wrong"), Some("{}"))
                .expect("call");
        assert_eq!(code, 401, "{method} {path} with a wrong token");
    }
    let client = ip("127.0.0.50");
    let (code, body) = cp.admin(
        "POST",
        "/v1/infected",
        Some(r#"{"prefix":"127.0.0.50","family":"Qakbot","ticket":"T-50"}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        addresses(&query(cp.dns, client, "f.pol.example.", RecordType::A)),
        vec![cp.sink()]
    );
    let (code, body) = cp.admin(
        "POST",
        "/v1/enrolments",
        Some(r#"{"prefix":"127.0.0.51","profile":"nope"}"#),
    );
    assert_eq!(
        code, 400,
        "unknown profile is rejected before anything is stored: {body}"
    );
    let (code, _) = cp.admin(
        "POST",
        "/v1/enrolments",
        Some(r#"{"prefix":"127.0.0.51","profile":"kids"}"#),
    );
    assert_eq!(code, 200);
    let m = query(cp.dns, ip("127.0.0.51"), "f.pol.example.", RecordType::A);
    assert_eq!(
        addresses(&m),
        vec![cp.sink()],
        "kids profile blocks to the information page"
    );
    assert_eq!(ede(&m), Some(17));
    let (code, _) = cp.admin(
        "DELETE",
        "/v1/infected?prefix=127.0.0.50&reason=cleaned",
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        addresses(&query(cp.dns, client, "f.pol.example.", RecordType::A)),
        vec!["198.51.100.7"]
    );
    let (_, audit) = cp.admin("GET", "/v1/audit", None);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(actions, vec!["unflag", "enrol", "flag"]);
}

#[test]
fn check_and_explain_commands() {
    let (_up, cp) = setup(6, &[("infected.yaml", INFECTED)]);
    let bin = env!("CARGO_BIN_EXE_cleanpipe");
    let config = cp.dir.join("cleanpipe.yaml");
    let out = Command::new(bin)
        .args(["explain", "--config"])
        .arg(&config)
        .args(["127.0.0.10", "www.example.org"])
        .output()
        .expect("explain runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("sinkhole to the cleanup page"), "{text}");
    assert!(
        text.contains("Mirai") && text.contains("infected.yaml:2"),
        "explain names the file and entry: {text}"
    );
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(cp.dir.join("policy/enrolments.yaml"), "enrolments:\n  - prefix: 127.0.0.0/33\n    profile: kids\n    enabled_by: x\n    enabled_at: 2026-11-01T10:00:00Z\n").expect("write");
    std::fs::write(cp.dir.join("policy/mode.yaml"), "mode: sideways\n").expect("write");
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("enrolments.yaml:2:") && err.contains("mode.yaml:1:"),
        "every error with file and line: {err}"
    );
}

#[test]
fn cli_admin_commands_drive_the_running_service() {
    let (_up, cp) = setup(7, &[]);
    let bin = env!("CARGO_BIN_EXE_cleanpipe");
    let config = cp.dir.join("cleanpipe.yaml");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("cli runs");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "flag",
        "127.0.0.70",
        "--family",
        "Mirai",
        "--ticket",
        "T-70",
    ]);
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.0.70"),
            "a.pol.example.",
            RecordType::A
        )),
        vec![cp.sink()]
    );
    run(&["enrol", "127.0.0.71", "clean-pipe"]);
    assert_eq!(
        query(cp.dns, ip("127.0.0.71"), "a.pol.example.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    run(&["mode", "trusted-only", "--reason", "drill"]);
    let m = query(cp.dns, ip("127.0.0.72"), "a.pol.example.", RecordType::A);
    assert_eq!(
        (m.metadata.response_code, ede(&m)),
        (ResponseCode::NXDomain, Some(15))
    );
    let status = run(&["status", "--json"]);
    assert!(
        status.contains("\"trusted_only_in_force\":true"),
        "{status}"
    );
    // For people: aligned text, RFC 3339 times, the operator in the audit log.
    let status = run(&["status"]);
    assert!(
        status.contains("  mode          TRUSTED-ONLY since 20") && status.contains("drill"),
        "{status}"
    );
    let audit = run(&["audit", "--actor", "noc/alice", "--limit", "3"]);
    let mut lines = audit.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("AT ") && h.contains("ACTOR")),
        "{audit}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("20") && l.contains("T") && l.contains("mode")),
        "{audit}"
    );
    run(&["mode", "clear", "--reason", "drill over"]);
    run(&["unflag", "127.0.0.70", "--reason", "cleaned"]);
    run(&["unenrol", "127.0.0.71"]);
    for c in ["127.0.0.70", "127.0.0.71", "127.0.0.72"] {
        assert_eq!(
            addresses(&query(cp.dns, ip(c), "a.pol.example.", RecordType::A)),
            vec!["198.51.100.7"],
            "{c} back to normal"
        );
    }
    // Without the token the CLI fails clearly.
    let cfg = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        cp.dir.join("notoken.yaml"),
        cfg.replace(&format!("token: {}", support::TOKEN), "token: wrong"),
    )
    .expect("write");
    let out = Command::new(bin)
        .args(["status", "--config"])
        .arg(cp.dir.join("notoken.yaml"))
        .output()
        .expect("cli");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the token") && err.contains("admin.token"),
        "the error says what to check: {err}"
    );
    // Decisions are counted by action and reason.
    let (_, metrics) =
        cleanpipe::web::client::call(cp.admin, "GET", "/metrics", None, None).expect("metrics");
    assert!(
        metrics.contains("cleanpipe_decisions_total{action=\"sinkhole\",reason=\"quarantined\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "cleanpipe_decisions_total{action=\"nxdomain\",reason=\"global_trusted_blocked\"} 1"
        ),
        "{metrics}"
    );
}

/// The NOC flips trusted-only from the CLI during an emergency: the infrastructure exempted in
/// `mode.yaml` must keep working unless the operator explicitly replaces the list.
#[test]
fn emergency_mode_from_the_cli_keeps_the_exemptions_of_mode_yaml() {
    const MODE: &str = "mode: normal\nexempt: [127.0.0.81]\n";
    let (up, cp) = setup(8, &[("mode.yaml", MODE)]);
    let bin = env!("CARGO_BIN_EXE_cleanpipe");
    let config = cp.dir.join("cleanpipe.yaml");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("USER", "noc-alice")
            .output()
            .expect("cli runs");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let resolves = |client: &str| {
        addresses(&query(cp.dns, ip(client), "f.pol.example.", RecordType::A))
            == vec!["198.51.100.7"]
    };
    let blocked = |client: &str| {
        let m = query(cp.dns, ip(client), "f.pol.example.", RecordType::A);
        m.metadata.response_code == ResponseCode::NXDomain && ede(&m) == Some(15)
    };
    run(&["mode", "trusted-only", "--reason", "worm outbreak"]);
    assert!(
        blocked("127.0.0.80"),
        "a subscriber gets only the trusted zone"
    );
    assert!(
        resolves("127.0.0.81"),
        "the NOC network listed in mode.yaml stays exempt"
    );
    let explained = run(&["explain", "127.0.0.81", "f.pol.example"]);
    assert!(explained.contains("reason:   exempt"), "{explained}");
    assert!(explained.contains("127.0.0.81"), "{explained}");

    // Extra exemptions add to the file's.
    run(&[
        "mode",
        "trusted-only",
        "--reason",
        "worm outbreak",
        "--exempt",
        "127.0.0.82",
        "--exempt",
        "127.0.0.83",
    ]);
    for c in ["127.0.0.81", "127.0.0.82", "127.0.0.83"] {
        assert!(resolves(c), "{c} exempt");
    }
    // A flip without a list keeps the operator's extra networks.
    run(&["mode", "trusted-only", "--reason", "still the worm"]);
    assert!(resolves("127.0.0.82"), "an earlier --exempt carries over");

    // Replacing is explicit and audited.
    run(&[
        "mode",
        "trusted-only",
        "--reason",
        "lock down",
        "--exempt",
        "127.0.0.82",
        "--replace-exemptions",
    ]);
    assert!(
        blocked("127.0.0.81"),
        "replaced: the file's exemption is gone"
    );
    assert!(resolves("127.0.0.82"));
    let (_, audit) = cp.admin("GET", "/v1/audit", None);
    assert!(
        audit.to_string().contains("REPLACED by 127.0.0.82"),
        "{audit}"
    );
    let asked = up.count("f.pol.example", RecordType::A);
    assert!(blocked("127.0.0.80"));
    assert_eq!(up.count("f.pol.example", RecordType::A), asked);
}

/// `policy.allowlists` pointing at a directory that does not exist is an error naming the path
/// (it used to load with 0 profiles, and every enrolment then failed); running without a
/// trusted zone is possible only when the configuration says so.
#[test]
fn a_missing_allowlists_directory_is_an_error_unless_the_trusted_zone_is_off() {
    let cp = Cleanpipe::prepare(support::fresh_ip(), "  mode: recursive", "", &[]);
    let config = cp.dir.join("cleanpipe.yaml");
    let text = std::fs::read_to_string(&config).expect("config");
    let allowlists = format!("allowlists: {}", support::repo_allowlists().display());
    assert!(text.contains(&allowlists));
    let check = |yaml: &str| {
        std::fs::write(&config, yaml).expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("check runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let missing = cp.dir.join("no-such-allowlists");
    let (ok, out) =
        check(&text.replace(&allowlists, &format!("allowlists: {}", missing.display())));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&missing.display().to_string()),
        "names the path: {out}"
    );
    assert!(
        out.contains("trusted_zone: false"),
        "says how to opt out: {out}"
    );

    std::fs::create_dir_all(&missing).expect("empty dir");
    let (ok, out) =
        check(&text.replace(&allowlists, &format!("allowlists: {}", missing.display())));
    assert!(!ok, "an empty directory is no better: {out}");

    let (ok, out) = check(&text.replace(
        &allowlists,
        &format!("allowlists: {}\n  trusted_zone: false", missing.display()),
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: policy.trusted_zone is false"),
        "{out}"
    );
    assert!(out.contains("0 profiles"), "{out}");
}

/// cleanpipe's own writes never trigger reloads: a state database placed inside the policy
/// directory used to reload the policy every ~200 ms, forever.
#[test]
fn a_state_file_in_the_policy_directory_does_not_reload_forever() {
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.98.99\n      port: 5354",
        "",
        &[("infected.yaml", INFECTED)],
    );
    let config = cp.dir.join("cleanpipe.yaml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("path: state.sqlite", "path: policy/state.sqlite"),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check runs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is inside a directory watched"),
        "check warns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.spawn();
    let reloads = |cp: &Cleanpipe| {
        cp.admin("GET", "/v1/status", None).1["reload"]["reloads"]
            .as_u64()
            .expect("reload count")
    };
    // State writes: a flag and an unflag go to the database (and reload once each, on purpose).
    let (code, _) = cp.admin(
        "POST",
        "/v1/infected",
        Some(r#"{"prefix":"127.0.0.12","family":"Mirai"}"#),
    );
    assert_eq!(code, 200);
    let settled = reloads(&cp);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        reloads(&cp),
        settled,
        "no reload without a policy change; log:\n{}",
        cp.log()
    );
    // A real policy change still reloads.
    cp.write_policy(
        "infected.yaml",
        &INFECTED.replace("127.0.0.10", "127.0.0.11"),
    );
    assert!(
        support::within(Duration::from_secs(3), || reloads(&cp) > settled).is_some(),
        "the policy change was seen"
    );
}
