//! The cleanup page over real HTTP from real source addresses, a real browser, and the whole
//! quarantine → cleanup → self-release → normal resolution path with dig.

use std::net::IpAddr;
use std::process::Command;

use hickory_proto::rr::RecordType;

use cleanpipe::web::content::Content;
use cleanpipe::web::page::esc;

use crate::support::{self, AuthServer, Cleanpipe, addresses, dig, query};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const INFECTED: &str = "infected:
  - prefix: 127.0.0.80
    family: Mirai
    source: shadowserver
    first_seen: 2026-11-20T08:00:00Z
    ticket: ABUSE-80
  - prefix: 127.0.0.81
    family: Emotet
    source: cert.be
    first_seen: 2026-11-20T08:00:00Z
  - prefix: 127.0.0.82
    family: \"<script>alert('x')</script>\"
    source: \"feed & <b>bold</b>\"
    first_seen: 2026-11-20T08:00:00Z
  - prefix: 127.0.0.85
    family: Qakbot
    source: botnet-lookup
    first_seen: 2026-11-20T08:00:00Z
";
const ENROLLED: &str = "enrolments:
  - {prefix: 127.0.0.83, profile: kids, enabled_by: portal, enabled_at: 2026-11-01T10:00:00Z}
";

fn setup(n: u8) -> (AuthServer, Cleanpipe) {
    let zone = support::Zone::parse(
        "page.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.8\nrandom-7f3a 300 IN A 198.51.100.9\n",
    );
    let up = support::start_server(&format!("127.0.97.{n}"), 5354, vec![zone]);
    let cp = Cleanpipe::start(
        &format!("  mode: forward\n  forward:\n    - address: 127.0.97.{n}\n      port: 5354"),
        "",
        &[("infected.yaml", INFECTED), ("enrolments.yaml", ENROLLED)],
    );
    (up, cp)
}

fn csrf(body: &str) -> String {
    body.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries a CSRF token")
        .to_owned()
}

fn post_release(
    cp: &Cleanpipe,
    source: IpAddr,
    form: &str,
) -> cleanpipe::web::client::HttpResponse {
    cleanpipe::web::client::request(
        cp.web,
        Some(source),
        "POST",
        "/release",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
    .expect("page reachable")
}

#[test]
fn quarantined_visitor_sees_the_infection_and_help_on_any_host_and_path() {
    let (_up, cp) = setup(1);
    for path in ["/", "/some/deep/path?x=1"] {
        let r = cp.page(ip("127.0.0.80"), path, &[("Host", "www.bank.example")]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("cache-control"),
            Some("no-store"),
            "never cached under a real site's name"
        );
        for want in [
            "Mirai",
            "shadowserver",
            "ABUSE-80",
            "2026-11-20",
            "You are not blocked for good",
            "name=\"csrf\"",
            "Example ISP",
            "+32 2 555 00 00",
            "For businesses",
        ] {
            assert!(r.body.contains(want), "{path}: page must show {want}");
        }
        assert!(!r.body.contains("<script"), "no JavaScript");
        assert!(!r.body.contains("src=\"http"), "no external resources");
    }
    // The family's description comes from web/malware.yaml.
    let c = Content::builtin().expect("content");
    assert!(cp.page(ip("127.0.0.80"), "/", &[]).body.contains(&esc(
        c.family_description("Mirai", "en").expect("mirai known")
    )));
}

#[test]
fn every_language_by_accept_language_and_switcher() {
    let (_up, cp) = setup(2);
    let c = Content::builtin().expect("content");
    for (accept, lang) in [
        ("nl-BE,nl;q=0.9", "nl"),
        ("fr-BE", "fr"),
        ("de-DE,de;q=0.8,en;q=0.5", "de"),
        ("en-GB", "en"),
        ("es", "en"),
    ] {
        let r = cp.page(ip("127.0.0.80"), "/", &[("Accept-Language", accept)]);
        assert!(
            r.body.contains(&format!("<html lang=\"{lang}\">")),
            "{accept} → {lang}"
        );
        let title = esc(&c.text(lang, "quarantine_title", &[]));
        assert!(r.body.contains(&title), "{lang} title: {title}");
    }
    let r = cp.page(ip("127.0.0.80"), "/?lang=fr", &[("Accept-Language", "nl")]);
    assert!(r.body.contains("<html lang=\"fr\">"), "the switcher wins");
    assert!(
        r.body.contains("href=\"/?lang=de\""),
        "switcher links to the other languages"
    );
}

#[test]
fn feed_data_is_escaped() {
    let (_up, cp) = setup(3);
    let r = cp.page(ip("127.0.0.82"), "/", &[]);
    assert!(
        r.body
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "the family is shown as text"
    );
    assert!(r.body.contains("feed &amp; &lt;b&gt;bold&lt;/b&gt;"));
    assert!(!r.body.contains("<script>") && !r.body.contains("<b>bold"));
}

#[test]
fn csrf_is_required_and_releases_are_limited() {
    let (_up, cp) = setup(4);
    let client = ip("127.0.0.81");
    let r = post_release(&cp, client, "confirm=yes");
    assert_eq!(r.status, 403, "no token");
    let token = csrf(&cp.page(client, "/", &[]).body);
    let r = post_release(&cp, client, "confirm=yes&csrf=0000");
    assert_eq!(r.status, 403, "wrong token");
    // Another client's token does not work for this one.
    let other = csrf(&cp.page(ip("127.0.0.80"), "/", &[]).body);
    assert_eq!(
        post_release(&cp, client, &format!("confirm=yes&csrf={other}")).status,
        403
    );
    let r = cleanpipe::web::client::request(cp.web, Some(client), "GET", "/release", &[], "")
        .expect("get");
    assert_ne!(r.status, 200, "release is POST only");
    // Two releases allowed (self_release_max: 2); each new report quarantines again.
    for round in 1..=2 {
        let token = if round == 1 {
            token.clone()
        } else {
            csrf(&cp.page(client, "/", &[]).body)
        };
        let r = post_release(&cp, client, &format!("confirm=yes&csrf={token}"));
        assert_eq!(r.status, 200, "release {round}");
        assert!(r.body.contains("id=\"released\""));
        assert_eq!(
            addresses(&query(cp.dns, client, "www.page.example.", RecordType::A)),
            vec!["198.51.100.8"],
            "released after {round}"
        );
        // A report one second after the release (timestamps have one-second resolution).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let later = chrono::Utc::now().to_rfc3339();
        let (code, _) = cp.admin(
            "POST",
            "/v1/infected",
            Some(&format!(
                r#"{{"prefix":"127.0.0.81","family":"Emotet","first_seen":"{later}"}}"#
            )),
        );
        assert_eq!(code, 200);
        assert_eq!(
            addresses(&query(cp.dns, client, "www.page.example.", RecordType::A)),
            vec![cp.sink()],
            "a newer report quarantines again"
        );
    }
    let r = cp.page(client, "/", &[]);
    assert!(
        r.body.contains("id=\"out-of-releases\"") && !r.body.contains("name=\"csrf\""),
        "out of releases: support instead of the button"
    );
    let (_, audit) = cp.admin("GET", "/v1/audit", None);
    assert_eq!(
        audit
            .as_array()
            .expect("list")
            .iter()
            .filter(|a| a["action"] == "self-release")
            .count(),
        2,
        "recorded durably"
    );
}

#[test]
fn trusted_zone_and_normal_visitors() {
    let (_up, cp) = setup(5);
    let r = cp.page(ip("127.0.0.83"), "/", &[]);
    assert!(r.body.contains("This site is not in your trusted zone"));
    assert!(
        r.body.contains("YouTube") && r.body.contains("kids"),
        "lists the profile's services"
    );
    assert!(!r.body.contains("name=\"csrf\""));
    let r = cp.page(ip("127.0.0.84"), "/", &[]);
    assert!(r.body.contains("Your connection is not restricted"));
    assert!(!r.body.contains("trusted zone"));
}

#[test]
fn captive_portal_api_and_probe_redirects() {
    let (_up, cp) = setup(6);
    let api = |who: &str| {
        let r = cp.page(ip(who), "/captive-portal/api", &[]);
        assert_eq!(r.header("content-type"), Some("application/captive+json"));
        serde_json::from_str::<serde_json::Value>(&r.body).expect("json")
    };
    let q = api("127.0.0.80");
    assert_eq!(q["captive"], true);
    assert_eq!(q["user-portal-url"], format!("http://{}/", cp.web));
    assert_eq!(api("127.0.0.84")["captive"], false);
    let r = cp.page(
        ip("127.0.0.80"),
        "/generate_204",
        &[("Host", "connectivitycheck.gstatic.com")],
    );
    assert_eq!(r.status, 302, "Android's probe is redirected to the portal");
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}/", cp.web).as_str())
    );
    assert_eq!(
        cp.page(ip("127.0.0.80"), "/hotspot-detect.html", &[])
            .status,
        302
    );
    let token = csrf(&cp.page(ip("127.0.0.80"), "/", &[]).body);
    assert_eq!(
        post_release(&cp, ip("127.0.0.80"), &format!("confirm=yes&csrf={token}")).status,
        200
    );
    let q = api("127.0.0.80");
    assert_eq!(q["captive"], false);
    let left = q["seconds-remaining"].as_i64().expect("seconds-remaining");
    assert!((86_000..=86_400).contains(&left), "{left}");
}

#[test]
fn end_to_end_quarantine_cleanup_self_release_resolve() {
    let (up, cp) = setup(7);
    let client = ip("127.0.0.85");
    // A quarantined client resolves a random name and gets the sinkhole address.
    let d = dig(cp.dns, Some(client), "random-7f3a.page.example", "A", &[]);
    assert_eq!(d.answers.len(), 1, "{}", d.text);
    assert!(d.answers[0].ends_with(&cp.sink()), "{}", d.text);
    assert_eq!(up.count("random-7f3a.page.example", RecordType::A), 0);
    // It fetches the page from that address, the way its browser would.
    let sink: IpAddr = cp.sink().parse().expect("sink");
    let page = cleanpipe::web::client::request(
        std::net::SocketAddr::new(sink, cp.web.port()),
        Some(client),
        "GET",
        "/",
        &[("Host", "random-7f3a.page.example")],
        "",
    )
    .expect("page");
    assert!(page.body.contains("Qakbot"));
    let r = post_release(
        &cp,
        client,
        &format!("confirm=yes&csrf={}", csrf(&page.body)),
    );
    assert_eq!(r.status, 200);
    // And now the name resolves normally.
    let d = dig(cp.dns, Some(client), "random-7f3a.page.example", "A", &[]);
    assert_eq!(d.answers.len(), 1, "{}", d.text);
    assert!(d.answers[0].ends_with("198.51.100.9"), "{}", d.text);
    assert_eq!(d.ede, None);
}

#[test]
fn real_browser_clicks_self_release() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/selfrelease.mjs");
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules/playwright-core");
    let have = std::path::Path::new("/usr/bin/chromium").exists() && modules.exists();
    if !have {
        let why = "needs /usr/bin/chromium and tests/browser/node_modules (npm ci --prefix tests/browser)";
        if std::env::var_os("CLEANPIPE_REQUIRE_BROWSER").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return;
    }
    // The browser connects from 127.0.0.1: make that the infected subscriber in this instance.
    let zone = support::Zone::parse(
        "page.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.8\n",
    );
    let _up = support::start_server("127.0.97.8", 5354, vec![zone]);
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.97.8\n      port: 5354",
        "",
        &[(
            "infected.yaml",
            "infected:\n  - {prefix: 127.0.0.1, family: Redline, source: cert.be, first_seen: 2026-11-20T08:00:00Z}\n",
        )],
    );
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{}/", cp.web))
        .arg(&artifacts)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("script prints JSON");
    assert_eq!(v["status"], 200);
    assert!(
        v["heading"]
            .as_str()
            .is_some_and(|h| h.contains("restricted")),
        "{v}"
    );
    assert_eq!(v["family"], "Redline");
    assert!(
        v["released"]
            .as_str()
            .is_some_and(|t| t.contains("works normally again")),
        "{v}"
    );
    assert!(
        artifacts.join("cleanup-page.png").exists()
            && artifacts.join("cleanup-page-released.png").exists()
    );
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.0.1"),
            "www.page.example.",
            RecordType::A
        )),
        vec!["198.51.100.8"]
    );
}

/// With no support contact configured the page leaves the "contact support" sentence out
/// instead of ending it with nothing, and `check` warns about it.
#[test]
fn no_support_contact_means_no_empty_contact_sentence_and_check_warns() {
    let zone = support::Zone::parse(
        "page.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.8\n",
    );
    let _up = support::start_server("127.0.97.9", 5354, vec![zone]);
    let mut cp = Cleanpipe::prepare(
        support::fresh_ip(),
        "  mode: forward\n  forward:\n    - address: 127.0.97.9\n      port: 5354",
        "",
        &[("infected.yaml", INFECTED)],
    );
    let config = cp.dir.join("cleanpipe.yaml");
    let text = std::fs::read_to_string(&config).expect("config");
    let without: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("support_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, without).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: web: no support contact"), "{err}");
    cp.spawn();
    let r = cp.page(ip("127.0.0.80"), "/", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Mirai"), "the cleanup page: {}", r.body);
    assert!(
        !r.body.contains("support:") && !r.body.contains("id=\"support\""),
        "no empty contact sentence: {}",
        r.body
    );
}

/// The page asks the policy core who the visitor is, as DNS does: a host of a whitelisted
/// organisation is resolved normally (an alert, not its kids profile), so its page is the
/// neutral one; a report dated in the future cannot be self-released (DNS would keep the
/// quarantine), so the page says so instead of reporting a success.
#[test]
fn the_page_and_dns_agree_on_who_the_visitor_is() {
    let zone = support::Zone::parse(
        "page.example.",
        "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 198.51.100.8\n",
    );
    let _up = support::start_server("127.0.97.10", 5354, vec![zone]);
    let infected = "infected:
  - {prefix: 127.0.5.7, family: Mirai, source: cert, first_seen: 2026-11-20T08:00:00Z}
  - {prefix: 127.0.0.87, family: Emotet, source: cert, first_seen: 2036-01-01T00:00:00Z}
";
    let cp = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.97.10\n      port: 5354",
        "alerts:\n  tick_secs: 3600\n",
        &[
            ("infected.yaml", infected),
            (
                "enrolments.yaml",
                "enrolments:\n  - {prefix: 127.0.5.7, profile: kids, enabled_by: portal, enabled_at: 2026-11-01T10:00:00Z}\n",
            ),
            (
                "organisations.yaml",
                "organisations:\n  - {id: clinic, name: Clinic, networks: [127.0.5.0/24], grace_hours: 100000}\n",
            ),
        ],
    );
    // Whitelisted + enrolled: DNS resolves normally (row 3 comes before trusted zones) ...
    assert_eq!(
        addresses(&query(
            cp.dns,
            ip("127.0.5.7"),
            "www.page.example.",
            RecordType::A
        )),
        vec!["198.51.100.8"]
    );
    // ... and the page agrees: neither the cleanup page nor the trusted-zone page.
    let r = cp.page(ip("127.0.5.7"), "/", &[]);
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("name=\"csrf\""),
        "not quarantined: {}",
        r.body
    );
    assert!(
        !r.body.contains("Trusted") && !r.body.contains("trusted zone"),
        "{}",
        r.body
    );

    // A report dated in the future: quarantined, and a release is refused, not faked.
    let host = ip("127.0.0.87");
    assert_eq!(
        addresses(&query(cp.dns, host, "www.page.example.", RecordType::A)),
        vec![cp.sink()]
    );
    let token = csrf(&cp.page(host, "/", &[]).body);
    let r = post_release(&cp, host, &format!("confirm=yes&csrf={token}"));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("release-impossible"), "{}", r.body);
    assert_eq!(
        addresses(&query(cp.dns, host, "www.page.example.", RecordType::A)),
        vec![cp.sink()],
        "DNS and the page agree: still quarantined"
    );
}
