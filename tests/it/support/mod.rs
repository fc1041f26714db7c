//! Test support: a private internet on loopback, a running `cleanpipe` binary, DNS clients.

pub mod auth;
pub mod tls;
pub mod webhook;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

pub use auth::{AuthServer, Behaviour, Zone};

/// Root hints of the private internet.
pub const HINTS: &str =
    ". 3600000 NS a.root-servers.lab.\na.root-servers.lab. 3600000 A 127.53.0.1\n";

const SOA: &str = "@ 3600 IN SOA ns hostmaster 1 3600 600 86400 300\n";

fn zones() -> Vec<(IpAddr, Vec<Zone>, Behaviour)> {
    let ip = |s: &str| s.parse::<IpAddr>().expect("fixture address");
    let big: String = (0..10)
        .map(|i| format!("big 300 IN TXT \"{}{}\"\n", i, "x".repeat(200)))
        .collect();
    vec![
        (
            ip("127.53.0.1"),
            vec![Zone::parse(
                ".",
                &format!(
                    "{SOA}\
@ 3600 IN NS a.root-servers.lab.\n\
a.root-servers.lab. 3600 IN A 127.53.0.1\n\
example. 3600 IN NS ns1.nic.example.\n\
ns1.nic.example. 3600 IN A 127.53.1.1\n\
test. 3600 IN NS ns.nic.test.\n\
ns.nic.test. 3600 IN A 127.53.1.2\n"
                ),
            )],
            Behaviour::Authoritative,
        ),
        (
            ip("127.53.1.1"),
            vec![Zone::parse(
                "example.",
                &format!(
                    "{SOA}\
@ 3600 IN NS ns1.nic.example.\n\
ns1.nic 3600 IN A 127.53.1.1\n\
alpha 3600 IN NS ns1.alpha\n\
ns1.alpha 3600 IN A 127.53.2.1\n\
beta 3600 IN NS ns.beta-dns.test.\n\
lame 3600 IN NS ns.lame\n\
ns.lame 3600 IN A 127.53.2.9\n\
dead 3600 IN NS ns.dead\n\
ns.dead 3600 IN A 127.53.2.10\n\
halflame 3600 IN NS ns1.halflame\n\
halflame 3600 IN NS ns2.halflame\n\
ns1.halflame 3600 IN A 127.53.2.11\n\
ns2.halflame 3600 IN A 127.53.2.12\n\
odd 3600 IN NS ns.odd\n\
ns.odd 3600 IN A 127.53.3.1\n"
                ),
            )],
            Behaviour::Authoritative,
        ),
        (
            ip("127.53.1.2"),
            vec![Zone::parse(
                "test.",
                &format!(
                    "{SOA}\
@ 3600 IN NS ns.nic.test.\n\
ns.nic 3600 IN A 127.53.1.2\n\
ns.beta-dns 3600 IN A 127.53.2.2\n"
                ),
            )],
            Behaviour::Authoritative,
        ),
        (
            ip("127.53.2.1"),
            vec![alpha_zone(&big)],
            Behaviour::Authoritative,
        ),
        (
            ip("127.53.2.2"),
            vec![Zone::parse(
                "beta.example.",
                &format!(
                    "{SOA}\
@ 3600 IN NS ns.beta-dns.test.\n\
www 300 IN A 192.0.2.20\n\
www 300 IN AAAA 2001:db8::20\n"
                ),
            )],
            Behaviour::Authoritative,
        ),
        (ip("127.53.2.9"), vec![], Behaviour::Lame),
        // 127.53.2.11, the other server of halflame.example, is dead: nothing listens there.
        (
            ip("127.53.2.12"),
            vec![Zone::parse(
                "halflame.example.",
                &format!(
                    "{SOA}\
@ 3600 IN NS ns1\n\
@ 3600 IN NS ns2\n\
ns1 3600 IN A 127.53.2.11\n\
ns2 3600 IN A 127.53.2.12\n\
{}",
                    (0..40)
                        .map(|i| format!("w{i} 300 IN A 192.0.2.{}\n", 100 + i))
                        .collect::<String>()
                ),
            )],
            Behaviour::Authoritative,
        ),
        (
            ip("127.53.3.2"),
            vec![Zone::parse(
                "ref.odd.example.",
                &format!(
                    "{SOA}@ 3600 IN NS ns.ref\nns.ref 3600 IN A 127.53.3.2\nwww 300 IN A 192.0.2.70\n"
                ),
            )],
            Behaviour::Authoritative,
        ),
    ]
}

/// The authoritative server of `odd.example.` (127.53.3.1): answers that are legal but unusual,
/// or broken, as real servers send them. Names:
/// - `nosoa`: NXDOMAIN without an SOA record;
/// - `cnx`: a CNAME to a name that does not exist (NXDOMAIN with the CNAME);
/// - `cnodata`: a CNAME to a name without records of the type (NODATA with the CNAME);
/// - `dup`: the same CNAME twice, then the address;
/// - `wrongtype`: an A record beside the AAAA asked for, and a record of another name;
/// - `tc`: truncated over UDP, the answer over TCP only;
/// - `www.ref`: a referral to `ref.odd.example.` (127.53.3.2) in place of an answer;
/// - `lossy`: the first query for it is lost (never answered), later ones get an address.
pub fn odd_server() -> auth::Script {
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA as Soa, TXT};
    use hickory_proto::rr::{RData, Record};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let lost_one = AtomicBool::new(false);
    Arc::new(move |req: &Message, udp: bool| {
        let q = req.queries.first()?.clone();
        let name = q.name().to_ascii().to_ascii_lowercase();
        if name == "lossy.odd.example." && !lost_one.swap(true, Ordering::SeqCst) {
            return None;
        }
        let n = |s: &str| Name::from_ascii(s).expect("name");
        let soa = Record::from_rdata(
            n("odd.example."),
            300,
            RData::SOA(Soa::new(
                n("ns.odd.example."),
                n("h.odd.example."),
                1,
                3600,
                600,
                86400,
                300,
            )),
        );
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.add_query(q.clone());
        m.metadata.authoritative = true;
        let owner = q.name().clone();
        match name.as_str() {
            "nosoa.odd.example." => {
                m.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain
            }
            "cnx.odd.example." => {
                m.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
                m.add_answer(Record::from_rdata(
                    owner,
                    300,
                    RData::CNAME(CNAME(n("gone.odd.example."))),
                ));
                m.add_authority(soa);
            }
            "cnodata.odd.example." => {
                m.add_answer(Record::from_rdata(
                    owner,
                    300,
                    RData::CNAME(CNAME(n("empty.odd.example."))),
                ));
                m.add_authority(soa);
            }
            "dup.odd.example." => {
                let c =
                    Record::from_rdata(owner, 300, RData::CNAME(CNAME(n("target.odd.example."))));
                m.add_answer(c.clone());
                m.add_answer(c);
                m.add_answer(Record::from_rdata(
                    n("target.odd.example."),
                    300,
                    RData::A(A::new(192, 0, 2, 60)),
                ));
            }
            "wrongtype.odd.example." => {
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    300,
                    RData::A(A::new(192, 0, 2, 61)),
                ));
                m.add_answer(Record::from_rdata(
                    owner,
                    300,
                    RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x61)),
                ));
                m.add_answer(Record::from_rdata(
                    n("victim.beta.example."),
                    300,
                    RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x66)),
                ));
            }
            "tc.odd.example." if udp => m.metadata.truncation = true,
            "tc.odd.example." => {
                m.add_answer(Record::from_rdata(
                    owner,
                    300,
                    RData::TXT(TXT::new(vec!["over tcp".into()])),
                ));
            }
            "lossy.odd.example." => {
                m.add_answer(Record::from_rdata(
                    owner,
                    300,
                    RData::A(A::new(192, 0, 2, 62)),
                ));
            }
            "www.ref.odd.example." => {
                m.metadata.authoritative = false;
                m.add_authority(Record::from_rdata(
                    n("ref.odd.example."),
                    3600,
                    RData::NS(NS(n("ns.ref.odd.example."))),
                ));
                m.add_additional(Record::from_rdata(
                    n("ns.ref.odd.example."),
                    3600,
                    RData::A(A::new(127, 53, 3, 2)),
                ));
            }
            _ => {
                m.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
                m.add_authority(soa);
            }
        }
        Some(m)
    })
}

/// The `alpha.example.` zone (also used as a forwarding upstream).
pub fn alpha_zone(big: &str) -> Zone {
    Zone::parse(
        "alpha.example.",
        &format!(
            "{SOA}\
@ 3600 IN NS ns1\n\
ns1 3600 IN A 127.53.2.1\n\
www 300 IN A 192.0.2.10\n\
www 300 IN AAAA 2001:db8::10\n\
@ 300 IN MX 10 mail\n\
mail 300 IN A 192.0.2.25\n\
txt 300 IN TXT \"hello from alpha\"\n\
cname 300 IN CNAME www.beta.example.\n\
inzone 300 IN CNAME www\n\
nodata 300 IN TXT \"only text here\"\n\
{big}"
        ),
    )
}

/// The private internet: root, TLDs, domains, a lame server, all on port 53.
pub struct Internet {
    /// Servers by address.
    pub servers: Vec<AuthServer>,
    /// Root hints file.
    pub hints: PathBuf,
}

impl Internet {
    /// The server at `addr`.
    pub fn server(&self, addr: &str) -> &AuthServer {
        let ip: IpAddr = addr.parse().expect("address");
        self.servers
            .iter()
            .find(|s| s.addr == ip)
            .expect("fixture server exists")
    }
}

static INTERNET: OnceLock<Result<Internet, String>> = OnceLock::new();

/// Runs `f` on a background runtime that lives as long as the test binary.
pub fn background() -> &'static tokio::runtime::Handle {
    static RT: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test runtime");
            let _ = tx.send(rt.handle().clone());
            rt.block_on(std::future::pending::<()>());
        });
        rx.recv().expect("test runtime handle")
    })
}

/// The private internet, started once. `None` (with a printed reason) when port 53 cannot be
/// bound here; with `CLEANPIPE_REQUIRE_PORT53=1` (set by CI, which runs as root) that panics.
pub fn internet() -> Option<&'static Internet> {
    let r = INTERNET.get_or_init(|| {
        let rt = background();
        let mut servers = Vec::new();
        for (addr, zones, behaviour) in zones() {
            match rt.block_on(auth::start(addr, 53, zones, behaviour)) {
                Ok(s) => servers.push(s),
                Err(e) => {
                    return Err(format!(
                        "cannot bind {addr}:53 ({e}); binding port 53 needs root"
                    ));
                }
            }
        }
        let odd: IpAddr = "127.53.3.1".parse().map_err(|e| format!("{e}"))?;
        servers.push(
            rt.block_on(auth::start_scripted(odd, 53, odd_server()))
                .map_err(|e| format!("cannot bind {odd}:53 ({e})"))?,
        );
        let dir = std::env::temp_dir().join(format!("cleanpipe-internet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let hints = dir.join("root.hints");
        std::fs::write(&hints, HINTS).map_err(|e| e.to_string())?;
        Ok(Internet { servers, hints })
    });
    match r {
        Ok(i) => Some(i),
        Err(e) if std::env::var_os("CLEANPIPE_REQUIRE_PORT53").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// Starts an extra authoritative server that echoes questions in lowercase (no 0x20).
pub fn start_lowercase_server(addr: &str, port: u16, zones: Vec<Zone>) -> AuthServer {
    let ip: IpAddr = addr.parse().expect("address");
    background()
        .block_on(auth::start(ip, port, zones, Behaviour::LowercaseEcho))
        .unwrap_or_else(|e| panic!("cannot start test upstream on {addr}:{port}: {e}"))
}

/// Starts an extra authoritative server that answers `delay_ms` late over UDP.
pub fn start_slow_server(addr: &str, port: u16, zones: Vec<Zone>, delay_ms: u64) -> AuthServer {
    let ip: IpAddr = addr.parse().expect("address");
    background()
        .block_on(auth::start(ip, port, zones, Behaviour::Delayed(delay_ms)))
        .unwrap_or_else(|e| panic!("cannot start test upstream on {addr}:{port}: {e}"))
}

/// Starts an extra authoritative server (e.g. a forwarding upstream on an unprivileged port).
pub fn start_server(addr: &str, port: u16, zones: Vec<Zone>) -> AuthServer {
    let ip: IpAddr = addr.parse().expect("address");
    background()
        .block_on(auth::start(ip, port, zones, Behaviour::Authoritative))
        .unwrap_or_else(|e| panic!("cannot start test upstream on {addr}:{port}: {e}"))
}

/// A fresh loopback address for one cleanpipe instance (127.1.0.N).
pub fn fresh_ip() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        1,
        0,
        NEXT.fetch_add(1, Ordering::Relaxed),
    ))
}

/// A running `cleanpipe serve` process.
pub struct Cleanpipe {
    child: Option<Child>,
    /// DNS address.
    pub dns: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Cleanup page address (also the sinkhole's IPv4 address).
    pub web: SocketAddr,
    /// Working directory: `cleanpipe.yaml`, `policy/`, `state.sqlite`, `cleanpipe.log`.
    pub dir: PathBuf,
    /// Open-file limit (soft and hard) for the process, when set before [`Cleanpipe::spawn`].
    pub nofile: Option<u64>,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

/// Admin token used by test instances.
pub const TOKEN: &str = "test-token-0123456789";

/// The repository's curated allowlists.
pub fn repo_allowlists() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("allowlists")
}

impl Cleanpipe {
    /// Writes `resolver_yaml` (the `resolver:` section body) and `extra_yaml` into a config in a
    /// new temporary directory with `policy/` files, then starts the binary and waits until ready.
    pub fn start(resolver_yaml: &str, extra_yaml: &str, policy: &[(&str, &str)]) -> Cleanpipe {
        Self::start_at(fresh_ip(), resolver_yaml, extra_yaml, policy)
    }

    /// Like [`Cleanpipe::start`], on a given loopback address (from [`fresh_ip`]).
    pub fn start_at(
        ip: IpAddr,
        resolver_yaml: &str,
        extra_yaml: &str,
        policy: &[(&str, &str)],
    ) -> Cleanpipe {
        let mut c = Self::prepare(ip, resolver_yaml, extra_yaml, policy);
        c.spawn();
        c
    }

    /// Writes the configuration and policy like [`Cleanpipe::start_at`] without starting.
    pub fn prepare(
        ip: IpAddr,
        resolver_yaml: &str,
        extra_yaml: &str,
        policy: &[(&str, &str)],
    ) -> Cleanpipe {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        std::fs::create_dir_all(dir.join("policy")).expect("policy dir");
        for (name, text) in policy {
            std::fs::write(dir.join("policy").join(name), text).expect("policy file");
        }
        let config = format!(
            "listen:\n  dns: [\"{ip}:5300\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8, \"::1/128\"]\nresolver:\n{resolver_yaml}\npolicy:\n  dir: policy\n  allowlists: {}\n  reload_debounce_ms: 100\nadmin:\n  listen: \"{ip}:8053\"\n  token: {TOKEN}\nstate:\n  path: state.sqlite\nsinkhole:\n  ipv4: [{ip}]\n  ipv6: [\"2001:db8::1\"]\nweb:\n  listen: [\"{ip}:8080\"]\n  isp_name: Example ISP\n  support_phone: \"+32 2 555 00 00\"\n  support_url: https://support.isp.example/\n  self_release_hours: 24\n  self_release_max: 2\n{extra_yaml}",
            repo_allowlists().display()
        );
        std::fs::write(dir.join("cleanpipe.yaml"), config).expect("config");
        Cleanpipe {
            child: None,
            dns: SocketAddr::new(ip, 5300),
            admin: SocketAddr::new(ip, 8053),
            web: SocketAddr::new(ip, 8080),
            dir,
            nofile: None,
            env: Vec::new(),
            _tmp: Some(tmp),
        }
    }

    /// Runs `cleanpipe serve` expecting it to exit by itself (a start-up failure) within
    /// `limit`; returns its exit status and what it wrote to stderr.
    pub fn serve_until_exit(&self, limit: Duration) -> (std::process::ExitStatus, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cleanpipe"))
            .args(["serve", "--config"])
            .arg(self.dir.join("cleanpipe.yaml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cleanpipe binary starts");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (status, err);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cleanpipe still running after {limit:?}; it was expected to fail");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts (or restarts) the process and waits for readiness.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("cleanpipe.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cleanpipe"));
        cmd.args(["serve", "--config"])
            .arg(self.dir.join("cleanpipe.yaml"))
            .env("RUST_LOG", "info,cleanpipe=debug,hickory_net=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("cleanpipe binary starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((200, _)) =
                cleanpipe::web::client::call(self.admin, "GET", "/ready", None, None)
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("cleanpipe exited with {status}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cleanpipe not ready within 20 s; log:\n{}", self.log());
    }

    /// Rewrites `cleanpipe.yaml` (before [`Cleanpipe::spawn`], or before a restart).
    pub fn edit_config(&self, f: impl FnOnce(&str) -> String) {
        let path = self.dir.join("cleanpipe.yaml");
        let text = std::fs::read_to_string(&path).expect("config");
        std::fs::write(&path, f(&text)).expect("write config");
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz
    }

    /// Kills the process with SIGKILL (no shutdown at all), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cleanpipe did not stop within 15 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sinkhole IPv4 address (where the cleanup page listens), as text.
    pub fn sink(&self) -> String {
        self.web.ip().to_string()
    }

    /// GET a page from the cleanup page service as `source`.
    pub fn page(
        &self,
        source: IpAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> cleanpipe::web::client::HttpResponse {
        cleanpipe::web::client::request(self.web, Some(source), "GET", path, headers, "")
            .expect("cleanup page reachable")
    }

    /// The process log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cleanpipe.log")).unwrap_or_default()
    }

    /// An admin API call with the token.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (code, text) =
            cleanpipe::web::client::call(self.admin, method, path, Some(TOKEN), body)
                .expect("admin API reachable");
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Replaces a policy file the way editors do: write a temporary file, rename it over.
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.dir.join("policy").join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write temp policy");
        std::fs::rename(&tmp, self.dir.join("policy").join(name)).expect("rename policy");
    }
}

impl Drop for Cleanpipe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends one query over UDP from `source` (any 127/8 address) and returns the response.
pub fn query(server: SocketAddr, source: IpAddr, name: &str, qtype: RecordType) -> Message {
    try_query(server, source, name, qtype, Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("query {name} {qtype} to {server}: {e}"))
}

/// Like [`query`], returning the error instead of panicking.
pub fn try_query(
    server: SocketAddr,
    source: IpAddr,
    name: &str,
    qtype: RecordType,
    timeout: Duration,
) -> Result<Message, String> {
    let sock = UdpSocket::bind(SocketAddr::new(source, 0)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut m = Message::query();
    m.metadata.id = rand_id();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).map_err(|e| e.to_string())?,
        qtype,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    sock.send_to(&m.to_vec().map_err(|e| e.to_string())?, server)
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
    Message::from_vec(&buf[..n]).map_err(|e| e.to_string())
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    (t ^ (t >> 16)) as u16
}

/// Sends raw bytes over UDP from `source` and returns the raw reply, `None` after `timeout`.
pub fn udp_exchange(
    server: SocketAddr,
    source: IpAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind(SocketAddr::new(source, 0)).expect("udp socket");
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    sock.send_to(bytes, server).expect("send");
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// A TCP connection to `server` from `source` (any 127/8 address).
pub fn tcp_connect(server: SocketAddr, source: IpAddr) -> std::io::Result<std::net::TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&server.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// Writes one DNS message on a TCP stream (two-byte length first).
pub fn tcp_send(s: &mut std::net::TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed)
}

/// Reads one DNS message from a TCP stream; `None` on EOF, error or after `timeout`.
pub fn tcp_recv(s: &mut std::net::TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    use std::io::Read;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// One query over a new TCP connection from `source`; the raw reply or `None`.
pub fn tcp_exchange(
    server: SocketAddr,
    source: IpAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let mut s = tcp_connect(server, source).ok()?;
    tcp_send(&mut s, bytes).ok()?;
    tcp_recv(&mut s, timeout)
}

/// Addresses in the answer section (A and AAAA), as text.
pub fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .map(|ip| ip.to_string())
        .collect()
}

/// The Extended DNS Error code of a response, if any.
pub fn ede(m: &Message) -> Option<u16> {
    let edns = m.edns.as_ref()?;
    edns.options().as_ref().iter().find_map(|(code, opt)| {
        if u16::from(*code) != 15 {
            return None;
        }
        match opt {
            hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, data) if data.len() >= 2 => {
                Some(u16::from_be_bytes([data[0], data[1]]))
            }
            _ => None,
        }
    })
}

/// Output of the real `dig` client.
pub struct Dig {
    /// `NOERROR`, `NXDOMAIN`...
    pub status: String,
    /// Answer-section lines.
    pub answers: Vec<String>,
    /// Extended DNS Error info code.
    pub ede: Option<u16>,
    /// Everything dig printed.
    pub text: String,
}

/// Runs `dig @server -p port [-b source] name type +tries=1 +time=T [extra]`.
pub fn dig(
    server: SocketAddr,
    source: Option<IpAddr>,
    name: &str,
    qtype: &str,
    extra: &[&str],
) -> Dig {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()]);
    if let Some(s) = source {
        cmd.args(["-b", &s.to_string()]);
    }
    cmd.args([name, qtype, "+tries=1", "+time=8"]).args(extra);
    let out = cmd
        .output()
        .expect("dig (bind9-dnsutils) must be installed: .ci/run installs it");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_owned();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                in_answer = false;
            } else {
                answers.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
    }
    let ede = text
        .split("; EDE: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|c| c.parse().ok());
    Dig {
        status,
        answers,
        ede,
        text,
    }
}

/// The `resolver:` section for recursion through the private internet.
pub fn recursive_yaml(internet: &Internet) -> String {
    format!(
        "  mode: recursive\n  root_hints: {}\n  allow_private_servers: true\n  query_timeout_secs: 1\n  resolution_timeout_secs: 4",
        internet.hints.display()
    )
}

/// The value of a Prometheus sample in `/metrics` text: the line for `name` whose labels
/// include every `label="value"` pair given (all of them summed), `None` if no line matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if all && let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

impl Cleanpipe {
    /// `/metrics` of the running instance.
    pub fn metrics(&self) -> String {
        cleanpipe::web::client::call(self.admin, "GET", "/metrics", None, None)
            .expect("metrics reachable")
            .1
    }

    /// One metric's value (see [`metric`]).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.metrics(), name, labels)
    }
}

/// Polls `f` every 25 ms until it returns true or `limit` passes; returns the time it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// A Knot DNS primary server (Debian package `knot`) serving one zone with a TSIG key and
/// sending NOTIFY to `notify` on every change.
pub struct Knot {
    child: Child,
    dir: tempfile::TempDir,
    zone: String,
}

/// TSIG secret shared by the test primary and cleanpipe (base64).
pub const TSIG_SECRET: &str = "Y2xlYW5waXBlLXRlc3QtdHNpZy1zZWNyZXQtMzJieXQ=";

impl Knot {
    /// Starts knotd for `zone` with `text`; `None` (with a printed reason) when knotd is missing,
    /// a panic with `CLEANPIPE_REQUIRE_KNOT=1` (set by CI).
    pub fn start(addr: SocketAddr, zone: &str, text: &str, notify: SocketAddr) -> Option<Knot> {
        if !Path::new("/usr/sbin/knotd").exists() {
            let why = "needs knotd (apt-get install knot)";
            if std::env::var_os("CLEANPIPE_REQUIRE_KNOT").is_some() {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("zone.rpz"), text).expect("zone file");
        let conf = format!(
            "server:\n  listen: {ip}@{port}\n  rundir: {d}\n  user: root:root\n\
control:\n  listen: {d}/knot.sock\n\
log:\n  - target: {d}/knot.log\n    any: info\n\
database:\n  storage: {d}\n\
key:\n  - id: xfr-key\n    algorithm: hmac-sha256\n    secret: {TSIG_SECRET}\n\
remote:\n  - id: cleanpipe\n    address: {nip}@{nport}\n    via: {ip}\n\
acl:\n  - id: xfr\n    key: xfr-key\n    action: transfer\n\
zone:\n  - domain: {zone}\n    file: {d}/zone.rpz\n    notify: cleanpipe\n    acl: xfr\n    zonefile-load: difference\n    journal-content: changes\n    semantic-checks: off\n    zonefile-sync: -1\n",
            ip = addr.ip(),
            port = addr.port(),
            nip = notify.ip(),
            nport = notify.port(),
        );
        std::fs::write(dir.path().join("knot.conf"), conf).expect("knot conf");
        let child = Command::new("/usr/sbin/knotd")
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("knotd starts");
        let k = Knot {
            child,
            dir,
            zone: zone.to_owned(),
        };
        let ok = within(Duration::from_secs(10), || {
            k.knotc(&["zone-status", zone]).is_ok()
        });
        assert!(ok.is_some(), "knotd did not start; log:\n{}", k.log());
        Some(k)
    }

    fn knotc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("knotc")
            .arg("-c")
            .arg(self.dir.path().join("knot.conf"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Replaces the zone file and reloads it: Knot computes the difference (served by IXFR)
    /// and sends NOTIFY.
    pub fn update(&self, text: &str) {
        std::fs::write(self.dir.path().join("zone.rpz"), text).expect("zone file");
        self.knotc(&["zone-reload", &self.zone])
            .unwrap_or_else(|e| panic!("knotc zone-reload: {e}\n{}", self.log()));
    }

    /// Knot's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
