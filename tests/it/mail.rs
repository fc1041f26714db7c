//! Alert e-mails delivered to a real SMTP server (Debian's aiosmtpd, started by the test) that
//! requires STARTTLS and a login: in the organisation's language, to its contact and the
//! CERT, from the durable outbox, retried when the relay is down.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{self, Cleanpipe, within};

const PYTHON: &str = "/usr/bin/python3";

/// Debian's python3 with aiosmtpd (CI installs python3-aiosmtpd and requires it).
fn smtp_available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CLEANPIPE_REQUIRE_SMTP").as_deref() != Ok("1"),
            "python3-aiosmtpd is required (CLEANPIPE_REQUIRE_SMTP=1)"
        );
        eprintln!(
            "SKIPPED: /usr/bin/python3 with aiosmtpd not found (apt-get install python3-aiosmtpd)"
        );
    }
    ok
}

struct Smtp {
    child: Child,
    out: PathBuf,
}

impl Smtp {
    fn start(dir: &Path, host: &str, port: u16) -> Smtp {
        let out = dir.join("mailbox");
        std::fs::create_dir_all(&out).expect("mailbox dir");
        let mut child = Command::new(PYTHON)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py"))
            .args(["--host", host, "--port", &port.to_string()])
            .arg("--cert")
            .arg(dir.join("smtp.pem"))
            .arg("--key")
            .arg(dir.join("smtp.key"))
            .arg("--out")
            .arg(&out)
            .args(["--user", "cleanpipe", "--password", "relay-secret"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("SMTP server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready", "SMTP server did not start");
        Smtp { child, out }
    }

    /// `(metadata, raw message)` of every message received so far, in order.
    fn messages(&self) -> Vec<(serde_json::Value, String)> {
        let mut names: Vec<_> = std::fs::read_dir(&self.out)
            .expect("mailbox")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let meta = serde_json::from_str(&std::fs::read_to_string(p).expect("meta"))
                    .expect("meta JSON");
                let eml = std::fs::read_to_string(p.with_extension("eml")).expect("message");
                (meta, eml)
            })
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unfolded value of header `name` in a raw message.
fn header(eml: &str, name: &str) -> Option<String> {
    let head = eml.split("\r\n\r\n").next().unwrap_or(eml);
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    })
}

/// The decoded subject (lettre encodes non-ASCII subjects as RFC 2047 base64 words).
fn subject(eml: &str) -> String {
    use base64::Engine as _;
    let raw = header(eml, "Subject").unwrap_or_default();
    if !raw.contains("=?") {
        return raw;
    }
    raw.split_whitespace()
        .map(|w| {
            w.strip_prefix("=?utf-8?b?")
                .or_else(|| w.strip_prefix("=?UTF-8?B?"))
                .and_then(|b| b.strip_suffix("?="))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map_or_else(
                    || w.to_owned(),
                    |d| String::from_utf8_lossy(&d).into_owned(),
                )
        })
        .collect::<Vec<_>>()
        .join("")
}

#[test]
fn alert_emails_reach_the_contact_and_the_cert_over_starttls_in_their_language() {
    if !smtp_available() {
        return;
    }
    let host = "127.0.79.1";
    let port = 2587;
    let _up = support::start_server(
        "127.0.79.2",
        5354,
        vec![support::Zone::parse(
            "mail.example.",
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.40\n",
        )],
    );
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.79.2\n      port: 5354",
        "",
        &[
            (
                "organisations.yaml",
                "organisations:\n  - id: hospital\n    name: Example Hospital\n    networks: [127.0.78.0/24]\n    grace_hours: 10000\n    language: nl\n    contacts:\n      - {name: SOC, email: soc@hospital.example}\n",
            ),
            (
                "infected.yaml",
                "infected:\n  - {prefix: 127.0.78.7, family: Qakbot, source: cert.be, first_seen: 2026-11-20T08:00:00Z}\n",
            ),
        ],
    );
    let dir = cp.dir.clone();
    support::tls::make_ca(&dir);
    support::tls::make_cert_for(
        &dir,
        &dir.join("smtp.pem"),
        &dir.join("smtp.key"),
        1,
        &format!("IP:{host}"),
    );
    std::fs::write(dir.join("relay.password"), "relay-secret\n").expect("password file");
    cp.edit_config(|c| {
        format!(
            "{c}alerts:\n  tick_secs: 1\n  max_backoff_secs: 1\n  cert_email: [incident@cert.example]\n  smtp:\n    server: \"{host}\"\n    port: {port}\n    security: starttls\n    username: cleanpipe\n    password_file: relay.password\n    from: \"cleanpipe <abuse@isp.example>\"\n    ca_file: ca.pem\n"
        )
    });
    // The relay is down when the alert opens: the deliveries wait in the outbox.
    cp.spawn();
    assert!(
        within(Duration::from_secs(10), || {
            cp.metric("cleanpipe_alert_deliveries_total", &[("result", "failed")]) >= Some(2.0)
        })
        .is_some(),
        "deliveries were not attempted while the relay was down"
    );
    let smtp = Smtp::start(&dir, host, port);
    assert!(
        within(Duration::from_secs(20), || smtp.messages().len() >= 2).is_some(),
        "no e-mails within 20 s; log:\n{}",
        cp.log()
    );
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 2, "one per recipient, once each");
    let to = |who: &str| {
        msgs.iter()
            .find(|(m, _)| m["rcpt_tos"][0] == who)
            .unwrap_or_else(|| panic!("no message to {who}: {msgs:?}"))
    };
    for (meta, eml) in &msgs {
        assert_eq!(meta["tls"], true, "sent after STARTTLS: {meta}");
        assert_eq!(meta["authenticated"], true, "{meta}");
        assert_eq!(meta["mail_from"], "abuse@isp.example");
        let id = header(eml, "Message-ID").expect("Message-ID");
        assert!(id.ends_with("@isp.example>"), "{id}");
        for needle in ["127.0.78.7", "Qakbot", "Example Hospital"] {
            assert!(eml.contains(needle), "{needle} in\n{eml}");
        }
    }
    // The organisation reads Dutch (language: nl); the CERT gets alerts.language (English).
    let (_, org) = to("soc@hospital.example");
    assert!(subject(org).contains("opkuisen"), "{}", subject(org));
    let (_, cert) = to("incident@cert.example");
    assert!(
        subject(cert).contains("clean it up before"),
        "{}",
        subject(cert)
    );
    // The abuse desk reads the alert as a table, with RFC 3339 times.
    let out = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(["alerts", "list", "--config"])
        .arg(cp.dir.join("cleanpipe.yaml"))
        .output()
        .expect("cli");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|h| h.starts_with("ALERT  STATE  ORGANISATION")),
        "{table}"
    );
    let row = lines.get(1).copied().unwrap_or("");
    for cell in [
        "#1",
        "open",
        "hospital",
        "127.0.78.7",
        "Qakbot",
        "2026-11-20T08:00:00Z",
    ] {
        assert!(row.contains(cell), "{cell} in {table}");
    }
    // Delivered means done: nothing left in the outbox, and no second copy later.
    let (_, status) = cp.admin("GET", "/v1/status", None);
    assert_eq!(status["pending_deliveries"], 0, "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smtp.messages().len(), 2);
}
