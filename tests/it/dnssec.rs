//! DNSSEC validation against a real signed hierarchy on loopback: a private root, a TLD and
//! leaf zones signed by BIND's `dnssec-signzone` in the fixture and served by three Knot DNS
//! servers (127.53.20.1 root, .2 `sec.`, .3 the leaves), as the real internet is delegated:
//!
//! - `good.sec.` (NSEC) and `nsec3.sec.` (NSEC3): secure - AD for clients that ask;
//! - `bogus.sec.`: the parent's DS names a key the zone does not use - SERVFAIL, EDE 6;
//! - `expired.sec.`: right keys, signatures expired yesterday - SERVFAIL, EDE 6;
//! - `island.sec.`: unsigned, no DS (proven by the parent's NSEC) - answered, no AD.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::support::{self, Cleanpipe, ede, within};

/// The signed hierarchy is started once per test, one test at a time (fixed addresses).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const ROOT: &str = "127.53.20.1";
const TLD: &str = "127.53.20.2";
const LEAVES: &str = "127.53.20.3";

struct Signed {
    _dir: tempfile::TempDir,
    servers: Vec<Child>,
    hints: PathBuf,
    anchor: PathBuf,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Signed {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const SOA: &str = "@ 300 IN SOA ns h 1 3600 600 86400 300\n";

/// Writes `zone`'s file, a key, and signs it (`extra` arguments to dnssec-signzone); returns
/// the signed file. The DS set lands in `dsset-<zone>.`.
fn sign(dir: &Path, zone: &str, text: &str, extra: &[&str]) -> PathBuf {
    let keys = dir.join(format!("keys-{zone}"));
    std::fs::create_dir_all(&keys).expect("key dir");
    let k = keys.display().to_string();
    run(
        dir,
        "dnssec-keygen",
        // Published and active since three days, so that signatures may start in the past.
        &[
            "-q",
            "-K",
            &k,
            "-a",
            "ECDSAP256SHA256",
            "-f",
            "KSK",
            "-n",
            "ZONE",
            "-P",
            "-3d",
            "-A",
            "-3d",
            zone,
        ],
    );
    let file = dir.join(format!("{zone}zone"));
    std::fs::write(&file, format!("$ORIGIN {zone}\n$TTL 300\n{SOA}{text}")).expect("zone");
    let signed = dir.join(format!("{zone}signed"));
    let (f, s) = (file.display().to_string(), signed.display().to_string());
    let mut args = vec!["-q", "-K", &k, "-d", ".", "-S", "-z", "-o", zone, "-f", &s];
    args.extend_from_slice(extra);
    args.push(&f);
    run(dir, "dnssec-signzone", &args);
    signed
}

fn dsset(dir: &Path, zone: &str) -> String {
    std::fs::read_to_string(dir.join(format!("dsset-{zone}"))).expect("dsset")
}

fn knot(dir: &Path, name: &str, ip: &str, zones: &[(&str, &Path)]) -> Child {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("knot dir");
    let mut conf = format!(
        "server:\n  listen: {ip}@53\n  rundir: {r}\n  user: root:root\ncontrol:\n  listen: {r}/knot.sock\n\
log:\n  - target: {r}/knot.log\n    any: info\ndatabase:\n  storage: {r}\nzone:\n",
        r = d.display()
    );
    for (zone, file) in zones {
        conf.push_str(&format!(
            "  - domain: \"{zone}\"\n    file: {}\n    zonefile-load: whole\n    journal-content: none\n    zonefile-sync: -1\n    semantic-checks: off\n",
            file.display()
        ));
    }
    std::fs::write(d.join("knot.conf"), conf).expect("knot conf");
    let child = Command::new("/usr/sbin/knotd")
        .arg("-c")
        .arg(d.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("knotd starts");
    let apex = zones[0].0;
    let up = within(Duration::from_secs(10), || {
        support::try_query(
            SocketAddr::new(ip.parse().expect("ip"), 53),
            "127.0.0.1".parse().expect("ip"),
            apex,
            RecordType::SOA,
            Duration::from_millis(300),
        )
        .is_ok_and(|m| m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
    });
    assert!(
        up.is_some(),
        "knotd on {ip} did not serve {apex}: {}",
        std::fs::read_to_string(d.join("knot.log")).unwrap_or_default()
    );
    child
}

impl Signed {
    /// `None` (with a printed reason) without knotd, dnssec-signzone or port 53; a panic
    /// instead when CI requires them.
    fn start() -> Option<Signed> {
        support::internet()?; // port 53 on 127.53/16 can be bound here
        let missing = [
            "/usr/sbin/knotd",
            "/usr/bin/dnssec-signzone",
            "/usr/bin/dnssec-keygen",
        ]
        .into_iter()
        .find(|p| !Path::new(p).exists());
        if let Some(p) = missing {
            let why = format!("needs {p} (apt-get install knot bind9-utils)");
            if std::env::var_os("CLEANPIPE_REQUIRE_KNOT").is_some() {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ns = |ip: &str| format!("@ 300 IN NS ns\nns 300 IN A {ip}\n");

        let good = sign(
            d,
            "good.sec.",
            &format!(
                "{}www 300 IN A 192.0.2.81\nalias 300 IN CNAME www.island.sec.\n*.wild 300 IN A 192.0.2.82\n",
                ns(LEAVES)
            ),
            &[],
        );
        let nsec3 = sign(
            d,
            "nsec3.sec.",
            &format!("{}www 300 IN A 192.0.2.83\n", ns(LEAVES)),
            &["-3", "-", "-H", "0"],
        );
        let bogus = sign(
            d,
            "bogus.sec.",
            &format!("{}www 300 IN A 192.0.2.84\n", ns(LEAVES)),
            &[],
        );
        let ago = |hours: i64| {
            (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(hours))
                .strftime("%Y%m%d%H%M%S")
                .to_string()
        };
        let (start, end) = (ago(48), ago(24));
        let expired = sign(
            d,
            "expired.sec.",
            &format!("{}www 300 IN A 192.0.2.86\n", ns(LEAVES)),
            &["-P", "-s", &start, "-e", &end],
        );
        let island = d.join("island.sec.zone");
        std::fs::write(
            &island,
            format!(
                "$ORIGIN island.sec.\n$TTL 300\n{SOA}{}www 300 IN A 192.0.2.85\n",
                ns(LEAVES)
            ),
        )
        .expect("zone");
        // bogus.sec.: the parent publishes the DS of another key.
        let other = d.join("other-key");
        std::fs::create_dir_all(&other).expect("dir");
        let o = other.display().to_string();
        let k = run(
            d,
            "dnssec-keygen",
            &[
                "-q",
                "-K",
                &o,
                "-a",
                "ECDSAP256SHA256",
                "-f",
                "KSK",
                "-n",
                "ZONE",
                "bogus.sec.",
            ],
        );
        let wrong_ds = run(
            d,
            "dnssec-dsfromkey",
            &["-2", &other.join(format!("{k}.key")).display().to_string()],
        );

        let mut tld = ns(TLD);
        for zone in ["good", "nsec3", "bogus", "expired", "island"] {
            tld.push_str(&format!(
                "{zone} 300 IN NS ns.{zone}\nns.{zone} 300 IN A {LEAVES}\n"
            ));
        }
        tld.push_str(&dsset(d, "good.sec."));
        tld.push_str(&dsset(d, "nsec3.sec."));
        tld.push_str(&dsset(d, "expired.sec."));
        tld.push_str(&format!("{wrong_ds}\n"));
        let tld = sign(d, "sec.", &tld, &[]);

        let root_text = format!(
            "@ 300 IN NS a.root.\na.root. 300 IN A {ROOT}\nsec. 300 IN NS ns.sec.\nns.sec. 300 IN A {TLD}\n{}",
            dsset(d, "sec.")
        );
        let root = sign(d, ".", &root_text, &[]);

        let servers = vec![
            knot(d, "root", ROOT, &[(".", &root)]),
            knot(d, "tld", TLD, &[("sec.", &tld)]),
            knot(
                d,
                "leaves",
                LEAVES,
                &[
                    ("good.sec.", &good),
                    ("nsec3.sec.", &nsec3),
                    ("bogus.sec.", &bogus),
                    ("expired.sec.", &expired),
                    ("island.sec.", &island),
                ],
            ),
        ];
        let hints = d.join("root.hints");
        std::fs::write(
            &hints,
            format!(". 3600000 IN NS a.root.\na.root. 3600000 IN A {ROOT}\n"),
        )
        .expect("hints");
        // The trust anchor: the root's key, as dnssec-keygen wrote it (comments and all).
        let keys = d.join("keys-.");
        let key = std::fs::read_dir(&keys)
            .expect("root keys")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "key"))
            .expect("root key file");
        let anchor = d.join("root.key");
        std::fs::copy(key, &anchor).expect("anchor");
        Some(Signed {
            _dir: dir,
            servers,
            hints,
            anchor,
            _guard: guard,
        })
    }

    fn resolver_yaml(&self, extra: &str) -> String {
        format!(
            "  mode: recursive\n  root_hints: {}\n  allow_private_servers: true\n  query_timeout_secs: 1\n  resolution_timeout_secs: 4\n  dnssec:\n    trust_anchor: {}\n{extra}",
            self.hints.display(),
            self.anchor.display()
        )
    }
}

/// A query with the DNSSEC bits a validating or a plain stub would set.
#[derive(Clone, Copy)]
struct Bits {
    dnssec_ok: bool,
    ad: bool,
    cd: bool,
}

const PLAIN: Bits = Bits {
    dnssec_ok: false,
    ad: false,
    cd: false,
};
const DO: Bits = Bits {
    dnssec_ok: true,
    ad: false,
    cd: false,
};

fn ask(server: SocketAddr, name: &str, qtype: RecordType, bits: Bits) -> Message {
    ask_from(server, "127.0.0.9".parse().expect("ip"), name, qtype, bits)
}

fn ask_from(server: SocketAddr, src: IpAddr, name: &str, qtype: RecordType, bits: Bits) -> Message {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.metadata.authentic_data = bits.ad;
    m.metadata.checking_disabled = bits.cd;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(bits.dnssec_ok);
    m.set_edns(edns);
    sock.send_to(&m.to_vec().expect("encode"), server)
        .expect("send");
    let mut buf = vec![0u8; 65535];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("{name} {qtype}: {e}"));
    Message::from_vec(&buf[..n]).expect("decode")
}

#[test]
fn signed_answers_get_ad_bogus_ones_servfail_with_ede_6_and_unsigned_ones_pass() {
    let Some(net) = Signed::start() else { return };
    let infected = "infected:\n  - {prefix: 127.0.7.66, family: Qakbot, source: cert.example, first_seen: 2026-11-20T08:00:00Z}\n";
    let cp = Cleanpipe::start(&net.resolver_yaml(""), "", &[("infected.yaml", infected)]);

    // Secure data, NSEC zone: AD for a client that sets DO, and for one that sets AD; none
    // for a client that sets neither (RFC 6840 §5.8).
    let m = ask(cp.dns, "www.good.sec.", RecordType::A, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(support::addresses(&m), vec!["192.0.2.81"]);
    assert!(m.metadata.authentic_data, "secure answer with DO: AD");
    let ad_only = Bits { ad: true, ..PLAIN };
    assert!(
        ask(cp.dns, "www.good.sec.", RecordType::A, ad_only)
            .metadata
            .authentic_data
    );
    let m = ask(cp.dns, "www.good.sec.", RecordType::A, PLAIN);
    assert_eq!(support::addresses(&m), vec!["192.0.2.81"]);
    assert!(
        !m.metadata.authentic_data,
        "no AD for a client that did not ask"
    );

    // Proven denials: NXDOMAIN and NODATA (NSEC), a wildcard expansion.
    let m = ask(cp.dns, "nope.good.sec.", RecordType::A, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authentic_data, "NSEC-proven NXDOMAIN");
    let m = ask(cp.dns, "www.good.sec.", RecordType::TXT, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(m.metadata.authentic_data, "NSEC-proven NODATA");
    let m = ask(cp.dns, "anything.wild.good.sec.", RecordType::A, DO);
    assert_eq!(support::addresses(&m), vec!["192.0.2.82"], "{}", cp.log());
    assert!(
        m.metadata.authentic_data,
        "wildcard expansion with its proof"
    );

    // NSEC3 zone: data and denial.
    let m = ask(cp.dns, "www.nsec3.sec.", RecordType::A, DO);
    assert_eq!(support::addresses(&m), vec!["192.0.2.83"]);
    assert!(m.metadata.authentic_data);
    let m = ask(cp.dns, "nope.nsec3.sec.", RecordType::A, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authentic_data, "NSEC3-proven NXDOMAIN");

    // Unsigned island (no DS, proven by the parent): answered, never AD; a secure CNAME into
    // it makes the whole answer insecure.
    let m = ask(cp.dns, "www.island.sec.", RecordType::A, DO);
    assert_eq!(support::addresses(&m), vec!["192.0.2.85"]);
    assert!(!m.metadata.authentic_data, "insecure: no AD");
    let m = ask(cp.dns, "alias.good.sec.", RecordType::A, DO);
    assert_eq!(support::addresses(&m), vec!["192.0.2.85"]);
    assert!(
        !m.metadata.authentic_data,
        "chain into an unsigned zone: no AD"
    );

    // Bogus: a DS for the wrong key, and expired signatures. SERVFAIL with EDE 6 - also for
    // clients that did not set DO - and the data with CD (the client validates itself).
    for name in ["www.bogus.sec.", "www.expired.sec."] {
        for bits in [DO, PLAIN] {
            let m = ask(cp.dns, name, RecordType::A, bits);
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
            assert_eq!(ede(&m), Some(6), "{name}: EDE 6 (DNSSEC Bogus)");
        }
    }
    let cd = Bits { cd: true, ..DO };
    let m = ask(cp.dns, "www.bogus.sec.", RecordType::A, cd);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(support::addresses(&m), vec!["192.0.2.84"]);
    assert!(!m.metadata.authentic_data, "CD: unvalidated data, no AD");
    // ... and CD does not leak into the validated cache.
    let m = ask(cp.dns, "www.bogus.sec.", RecordType::A, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    // Operators see the results: www.bogus and www.expired failed (once each, then from the
    // failure cache), the secure names passed, the island was insecure.
    let text = cp.metrics();
    let count = |result: &str| {
        support::metric(
            &text,
            "cleanpipe_dnssec_validations_total",
            &[("result", result)],
        )
    };
    assert_eq!(count("bogus"), Some(2.0), "{text}");
    assert!(count("secure") >= Some(6.0), "{text}");
    assert!(count("insecure") >= Some(2.0), "{text}");

    // Policy answers are never AD, even for a name that validates.
    let m = ask_from(
        cp.dns,
        "127.0.7.66".parse().expect("ip"),
        "www.good.sec.",
        RecordType::A,
        DO,
    );
    assert_eq!(ede(&m), Some(15), "quarantined: the cleanup page");
    assert!(!m.metadata.authentic_data, "synthesized: no AD");
}

#[test]
fn a_negative_trust_anchor_lets_a_broken_domain_resolve_unvalidated() {
    let Some(net) = Signed::start() else { return };
    let cp = Cleanpipe::start(
        &net.resolver_yaml("    negative_trust_anchors: [bogus.sec]\n"),
        "",
        &[],
    );
    let m = ask(cp.dns, "www.bogus.sec.", RecordType::A, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(support::addresses(&m), vec!["192.0.2.84"]);
    assert!(
        !m.metadata.authentic_data,
        "below a negative trust anchor: no AD"
    );
    // Everything else is still validated.
    assert!(
        ask(cp.dns, "www.good.sec.", RecordType::A, DO)
            .metadata
            .authentic_data
    );
    let m = ask(cp.dns, "www.expired.sec.", RecordType::A, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&m), Some(6));
}

#[test]
fn without_a_trust_anchor_for_a_private_root_nothing_is_validated() {
    let Some(net) = Signed::start() else { return };
    let yaml = format!(
        "  mode: recursive\n  root_hints: {}\n  allow_private_servers: true\n  query_timeout_secs: 1\n",
        net.hints.display()
    );
    let cp = Cleanpipe::start(&yaml, "", &[]);
    let m = ask(cp.dns, "www.good.sec.", RecordType::A, DO);
    assert_eq!(support::addresses(&m), vec!["192.0.2.81"]);
    assert!(!m.metadata.authentic_data);
    let m = ask(cp.dns, "www.bogus.sec.", RecordType::A, DO);
    assert_eq!(
        support::addresses(&m),
        vec!["192.0.2.84"],
        "not validated: answered"
    );
}

/// A validating upstream, scripted: AD on `signed.fwd.example.` when asked with DO; SERVFAIL for
/// `bogus.fwd.example.` unless asked with CD (then the data).
fn validating_upstream(ip: &str, port: u16) -> support::auth::AuthServer {
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    let script: support::auth::Script = std::sync::Arc::new(|req: &Message, _udp: bool| {
        let q = req.queries.first()?.clone();
        let dnssec_ok = req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.add_query(q.clone());
        m.metadata.recursion_available = true;
        let a =
            |last: u8| Record::from_rdata(q.name().clone(), 300, RData::A(A::new(192, 0, 2, last)));
        match q.name().to_ascii().to_ascii_lowercase().as_str() {
            "signed.fwd.example." => {
                m.metadata.authentic_data = dnssec_ok;
                m.add_answer(a(91));
            }
            "bogus.fwd.example." if req.metadata.checking_disabled => {
                m.add_answer(a(92));
            }
            "bogus.fwd.example." => m.metadata.response_code = ResponseCode::ServFail,
            _ => m.metadata.response_code = ResponseCode::NXDomain,
        }
        Some(m)
    });
    let addr: IpAddr = ip.parse().expect("ip");
    support::background()
        .block_on(support::auth::start_scripted(addr, port, script))
        .expect("scripted upstream")
}

#[test]
fn forward_mode_passes_ad_and_cd_only_with_an_upstream_marked_as_a_trusted_validator() {
    let _upstream = validating_upstream("127.0.99.27", 5354);
    let trusted = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.27\n      port: 5354\n      validator: true\n",
        "",
        &[],
    );
    let m = ask(trusted.dns, "signed.fwd.example.", RecordType::A, DO);
    assert_eq!(support::addresses(&m), vec!["192.0.2.91"]);
    assert!(
        m.metadata.authentic_data,
        "AD from a trusted validator, for a DO client"
    );
    let m = ask(trusted.dns, "signed.fwd.example.", RecordType::A, PLAIN);
    assert!(
        !m.metadata.authentic_data,
        "no AD for a client that did not ask"
    );
    let m = ask(trusted.dns, "bogus.fwd.example.", RecordType::A, DO);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = ask(
        trusted.dns,
        "bogus.fwd.example.",
        RecordType::A,
        Bits { cd: true, ..DO },
    );
    assert_eq!(
        support::addresses(&m),
        vec!["192.0.2.92"],
        "CD passed to the validator"
    );
    assert!(!m.metadata.authentic_data);

    // The same upstream, not marked: asked without DO, its AD never reaches a client.
    let untrusted = Cleanpipe::start(
        "  mode: forward\n  forward:\n    - address: 127.0.99.27\n      port: 5354\n",
        "",
        &[],
    );
    let m = ask(untrusted.dns, "signed.fwd.example.", RecordType::A, DO);
    assert_eq!(support::addresses(&m), vec!["192.0.2.91"]);
    assert!(
        !m.metadata.authentic_data,
        "AD from an untrusted upstream is not passed on"
    );
    let m = ask(
        untrusted.dns,
        "bogus.fwd.example.",
        RecordType::A,
        Bits { cd: true, ..DO },
    );
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "CD not passed on"
    );
}
