//! Organisation alerting: real webhook receivers on loopback, HMAC signatures, retries, a crash
//! (SIGKILL) between accepting and delivering, and deadlines with a controllable clock.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use cleanpipe::alerts::{AlertEngine, ManualClock, signature};
use cleanpipe::config::Config;
use cleanpipe::policy::{Action, Question, decide};
use cleanpipe::state::{SqliteStore, StateStore};
use cleanpipe::store::PolicyStore;

use crate::support::webhook::{Received, Receiver};
use crate::support::{self, Cleanpipe, addresses, query};

const ORG_SECRET: &str = "org-shared-secret";
const CERT_SECRET: &str = "cert-shared-secret";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn org_yaml(hook: SocketAddr, grace_hours: &str) -> String {
    format!(
        "organisations:\n  - id: hospital\n    name: Example Hospital\n    networks: [127.0.4.0/24]\n    grace_hours: {grace_hours}\n    contacts:\n      - name: SOC\n        email: soc@hospital.example\n        webhook: http://{hook}/hook\n        webhook_secret: {ORG_SECRET}\n"
    )
}

const INFECTED: &str = "infected:\n  - {prefix: 127.0.4.7, family: Qakbot, source: cert.be, first_seen: 2026-11-20T08:00:00Z, ticket: T-7}\n";

fn alerts_yaml(hook: SocketAddr) -> String {
    format!(
        "alerts:\n  cert_webhook: http://{hook}/cert\n  cert_secret: {CERT_SECRET}\n  tick_secs: 1\n  max_backoff_secs: 1\n"
    )
}

fn check_signed(r: &Received, secret: &str) {
    let sig = r
        .headers
        .get("x-cleanpipe-signature")
        .expect("signature header");
    assert_eq!(
        sig,
        &format!("sha256={}", signature(secret, r.body.as_bytes())),
        "valid HMAC-SHA256 over the body"
    );
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
    assert_eq!(
        body["idempotency_key"].as_str(),
        r.headers.get("idempotency-key").map(String::as_str),
        "key in body and header"
    );
}

fn upstream(n: u8) -> support::AuthServer {
    support::start_server(
        &format!("127.0.93.{n}"),
        5354,
        vec![support::Zone::parse(
            "org.example.",
            "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.30\n",
        )],
    )
}

fn forward(n: u8) -> String {
    format!("  mode: forward\n  forward:\n    - address: 127.0.93.{n}\n      port: 5354")
}

#[test]
fn alert_is_delivered_signed_and_retried_until_the_receiver_accepts() {
    let _up = upstream(1);
    let hook: SocketAddr = "127.0.92.1:8090".parse().expect("addr");
    let rx = Receiver::start(hook);
    rx.fail_next(3);
    let cp = Cleanpipe::start(
        &forward(1),
        &alerts_yaml(hook),
        &[
            ("organisations.yaml", &org_yaml(hook, "720")),
            ("infected.yaml", INFECTED),
        ],
    );
    // The infected host inside the organisation is not quarantined: resolved, and alerted.
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.4.7"),
            "www.org.example.",
            RecordType::A
        )),
        vec!["198.51.100.30"]
    );
    let both = support::within(Duration::from_secs(20), || {
        !rx.accepted("/hook", "alert.opened").is_empty()
            && !rx.accepted("/cert", "alert.opened").is_empty()
    });
    assert!(
        both.is_some(),
        "deliveries: {:?}\nlog:\n{}",
        rx.received(),
        cp.log()
    );
    let org = &rx.accepted("/hook", "alert.opened")[0];
    check_signed(org, ORG_SECRET);
    check_signed(&rx.accepted("/cert", "alert.opened")[0], CERT_SECRET);
    let body: serde_json::Value = serde_json::from_str(&org.body).expect("json");
    assert_eq!(body["alert"]["organisation"]["id"], "hospital");
    assert_eq!(body["alert"]["host"], "127.0.4.7");
    assert_eq!(body["alert"]["signature"], "Qakbot");
    assert_eq!(
        body["alert"]["deadline"], "2026-12-20T08:00:00Z",
        "first seen + 720 h"
    );
    // The failed attempts carried the same idempotency key as the delivered one.
    let failed: Vec<_> = rx.received().into_iter().filter(|r| !r.accepted).collect();
    assert_eq!(failed.len(), 3);
    for f in &failed {
        let key = f.headers.get("idempotency-key").expect("key");
        assert!(
            rx.received()
                .iter()
                .any(|r| r.accepted && r.headers.get("idempotency-key") == Some(key)),
            "retry of {key} delivered"
        );
    }
    // Sightings and the lifecycle through the API.
    let (_, list) = cp.admin("GET", "/v1/alerts?org=hospital&state=open", None);
    let a = &list.as_array().expect("list")[0];
    let id = a["id"].as_i64().expect("id");
    assert!(a["sightings"].as_i64().expect("sightings") >= 1);
    assert_eq!(
        cp.admin(
            "POST",
            &format!("/v1/alerts/{id}/acknowledge"),
            Some(r#"{"reason":"SOC on it"}"#)
        )
        .0,
        200
    );
    assert_eq!(
        cp.admin("POST", &format!("/v1/alerts/{id}/acknowledge"), None)
            .0,
        409,
        "only open alerts can be acknowledged"
    );
    assert_eq!(
        cp.admin(
            "POST",
            &format!("/v1/alerts/{id}/resolve"),
            Some(r#"{"reason":"reimaged"}"#)
        )
        .0,
        200
    );
    assert_eq!(
        cp.admin(
            "POST",
            &format!("/v1/alerts/{id}/reopen"),
            Some(r#"{"reason":"seen again"}"#)
        )
        .1["state"],
        "open"
    );
    let (_, audit) = cp.admin("GET", "/v1/audit", None);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|x| x["action"].as_str())
        .collect();
    for want in [
        "alert-open",
        "alert-acknowledged",
        "alert-resolved",
        "alert-open",
    ] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    let (_, m) =
        cleanpipe::web::client::call(cp.admin, "GET", "/metrics", None, None).expect("metrics");
    assert!(
        m.contains("cleanpipe_alerts_opened_total 1")
            && m.contains("cleanpipe_alert_deliveries_total{result=\"failed\"} 3"),
        "{m}"
    );
}

#[test]
fn sigkill_between_accepting_and_delivering_still_delivers_with_the_same_key() {
    let _up = upstream(2);
    let hook: SocketAddr = "127.0.92.2:8090".parse().expect("addr");
    // The receiver is down: the alert is accepted and stored, the delivery fails.
    let mut cp = Cleanpipe::start(
        &forward(2),
        &alerts_yaml(hook),
        &[
            ("organisations.yaml", &org_yaml(hook, "720")),
            ("infected.yaml", INFECTED),
        ],
    );
    let attempted = support::within(Duration::from_secs(10), || {
        cp.log().contains("alert delivery failed")
    });
    assert!(attempted.is_some(), "log:\n{}", cp.log());
    let (_, before) = cp.admin("GET", "/v1/alerts", None);
    let before = before.as_array().expect("list").clone();
    assert_eq!(before.len(), 1);
    cp.kill9();
    let rx = Receiver::start(hook);
    cp.spawn();
    let delivered = support::within(Duration::from_secs(20), || {
        !rx.accepted("/hook", "alert.opened").is_empty()
            && !rx.accepted("/cert", "alert.opened").is_empty()
    });
    assert!(delivered.is_some(), "log:\n{}", cp.log());
    let (_, after) = cp.admin("GET", "/v1/alerts", None);
    assert_eq!(
        after.as_array().expect("list").len(),
        1,
        "the same alert, not a new one"
    );
    assert_eq!(after[0]["id"], before[0]["id"]);
    // At least once: every copy of the delivery carries one and the same key.
    let keys: std::collections::HashSet<_> = rx
        .accepted("/hook", "alert.opened")
        .iter()
        .filter_map(|r| r.headers.get("idempotency-key").cloned())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    check_signed(&rx.accepted("/hook", "alert.opened")[0], ORG_SECRET);
}

#[test]
fn missed_deadline_quarantines_the_host_until_reinstated() {
    let _up = upstream(3);
    let hook: SocketAddr = "127.0.92.3:8090".parse().expect("addr");
    let rx = Receiver::start(hook);
    // A drill-length grace period: 4 seconds from the report (first seen = now).
    let now = chrono::Utc::now();
    let infected = format!(
        "infected:\n  - {{prefix: 127.0.4.9, family: Emotet, source: cert.be, first_seen: {}}}\n",
        now.to_rfc3339()
    );
    let cp = Cleanpipe::start(
        &forward(3),
        &alerts_yaml(hook),
        &[
            ("organisations.yaml", &org_yaml(hook, "0.0011")),
            ("infected.yaml", &infected),
        ],
    );
    let host = ip("127.0.4.9");
    assert_eq!(
        addresses(&query(cp.dns, host, "www.org.example.", RecordType::A)),
        vec!["198.51.100.30"],
        "whitelisted: resolved"
    );
    let quarantined = support::within(Duration::from_secs(15), || {
        addresses(&query(cp.dns, host, "www.org.example.", RecordType::A)) == vec![cp.sink()]
    });
    assert!(
        quarantined.is_some(),
        "after the deadline the host is quarantined; log:\n{}",
        cp.log()
    );
    assert!(
        support::within(Duration::from_secs(10), || !rx
            .accepted("/cert", "organisation.revoked")
            .is_empty())
        .is_some(),
        "CERT told about the revocation"
    );
    let (_, st) = cp.admin("GET", "/v1/status", None);
    assert_eq!(st["organisations"][0]["standing"], "revoked");
    assert_eq!(st["organisations"][0]["strikes"], 1);
    assert_eq!(
        cp.admin(
            "POST",
            "/v1/organisations/hospital/reinstate",
            Some(r#"{"reason":""}"#)
        )
        .0,
        400,
        "a reason is required"
    );
    assert_eq!(
        cp.admin(
            "POST",
            "/v1/organisations/hospital/reinstate",
            Some(r#"{"reason":"cleanup process agreed"}"#)
        )
        .0,
        200
    );
    assert_eq!(
        addresses(&query(cp.dns, host, "www.org.example.", RecordType::A)),
        vec!["198.51.100.30"],
        "reinstated: resolved again"
    );
}

#[test]
fn reminders_and_revocation_follow_the_clock() {
    let rt = support::background();
    let hook: SocketAddr = "127.0.92.4:8090".parse().expect("addr");
    let rx = Receiver::start(hook);
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("policy")).expect("policy dir");
    std::fs::write(
        dir.path().join("policy/organisations.yaml"),
        org_yaml(hook, "100"),
    )
    .expect("orgs");
    std::fs::write(dir.path().join("policy/infected.yaml"), INFECTED).expect("infected");
    let config = Config::from_str_in(
        &format!(
            "clients:\n  allow: [127.0.0.0/8]\npolicy:\n  dir: policy\n  allowlists: {}\n{}",
            support::repo_allowlists().display(),
            alerts_yaml(hook)
        ),
        "test.yaml",
        dir.path(),
    )
    .expect("config");
    let state = Arc::new(SqliteStore::open(&dir.path().join("state.sqlite")).expect("state"));
    let store =
        Arc::new(PolicyStore::open(&config, state.clone(), Default::default()).expect("policy"));
    let first_seen = 1_795_161_600; // 2026-11-20T08:00:00Z; grace 100 h
    let clock = Arc::new(ManualClock::at(first_seen + 60));
    let engine =
        AlertEngine::new(store.clone(), config.alerts.clone(), clock.clone()).expect("engine");

    let decide_host = |store: &PolicyStore| {
        let snap = store.snapshot();
        let q = Question::new("www.org.example", RecordType::A).expect("q");
        decide(
            &snap,
            &snap.classify(ip("127.0.4.7")),
            &q,
            clock_now(&clock),
        )
        .action
    };
    fn clock_now(c: &ManualClock) -> i64 {
        use cleanpipe::alerts::Clock;
        c.now()
    }

    let s = engine.sync().expect("sync");
    assert_eq!(s, 1, "one alert opened");
    assert_eq!(engine.sync().expect("sync"), 0, "deduplicated");
    assert_eq!(decide_host(&store), Action::Alert);
    let t = engine.tick().expect("tick");
    assert_eq!((t.reminders, t.revoked), (0, 0), "nothing due yet");
    rt.block_on(engine.deliver());
    assert_eq!(rx.accepted("/hook", "alert.opened").len(), 1);

    clock.advance(50 * 3600); // 50 % of 100 h
    let t = engine.tick().expect("tick");
    assert_eq!(t.reminders, 1);
    rt.block_on(engine.deliver());
    let r = rx.accepted("/hook", "alert.reminder");
    assert_eq!(r.len(), 1);
    assert!(r[0].body.contains("\"percent\":50"));
    clock.advance(40 * 3600); // 90 %
    assert_eq!(engine.tick().expect("tick").reminders, 1);
    assert_eq!(
        engine.tick().expect("tick").reminders,
        0,
        "each reminder once"
    );
    clock.advance(10 * 3600); // the deadline
    let t = engine.tick().expect("tick");
    assert_eq!(t.revoked, 1);
    assert_eq!(
        decide_host(&store),
        Action::Alert,
        "revocation takes effect with the next policy"
    );
    store.reload().expect("reload");
    assert_eq!(
        decide_host(&store),
        Action::Sinkhole(cleanpipe::policy::Page::Cleanup),
        "revoked: quarantined like anyone"
    );
    rt.block_on(engine.deliver());
    assert_eq!(rx.accepted("/cert", "organisation.revoked").len(), 1);
    assert_eq!(
        state
            .alerts(Some("hospital"), Some("overdue"))
            .expect("alerts")
            .len(),
        1
    );
    assert_eq!(
        state.strikes(0).expect("strikes"),
        vec![("hospital".to_owned(), 1)]
    );
    assert!(
        state
            .reinstate("hospital", "noc", "process agreed", clock_now(&clock))
            .expect("reinstate")
    );
    store.reload().expect("reload");
    assert_eq!(decide_host(&store), Action::Alert, "reinstated");
    assert_eq!(
        engine.sync().expect("sync"),
        0,
        "the overdue alert is not reopened for the same report"
    );
}
