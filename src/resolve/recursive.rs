//! Iterative resolution from the root hints: cleanpipe's own resolver.
//!
//! It replaced hickory's recursor, which asked for the NS records of every label down to the
//! query name, waited out a fixed timeout on a dead server before trying the next, and turned
//! legal answers into failures (see the README, "Recursion"). What it does, as Unbound does:
//!
//! - **Server selection**: a smoothed round-trip time and variance per server address (an
//!   infrastructure cache). The fastest known server of a zone is asked first; an unknown one
//!   gets a 376 ms timeout, a known one `srtt + 4·rttvar` (at least 50 ms); a timeout doubles it.
//!   A server that timed out three times in a row is left out for a minute, then probed again.
//!   Servers of a zone that timed out are asked once more before the zone is given up (one lost
//!   packet must not fail a zone with a single server).
//! - **Delegations** are followed from referrals and cached (zone → name servers and
//!   addresses) for their NS TTL; glue is used only for name servers inside the zone of the
//!   server that gave it (in bailiwick). Name servers without usable glue are resolved on the
//!   way, with a depth limit and a guard against cycles: a cycle that only out-of-bailiwick glue
//!   could break fails (SERVFAIL), by design - such glue is what cache-poisoning attacks forge.
//! - **Answers**: the full name is asked (no per-label NS queries), CNAME chains are followed
//!   across zones, a referral in place of an answer is followed, a lame answer (upward or
//!   sideways referral, REFUSED, SERVFAIL) moves on to the next server, a truncated answer is
//!   asked again over TCP, and a negative answer without SOA is passed on (and not cached).
//! - **Bounds**: at most 48 queries and 4 levels of name-server lookups per resolution; the
//!   whole resolution is bounded by `resolver.resolution_timeout_secs` outside.
//!
//! Name servers on loopback and private addresses are refused unless
//! `resolver.allow_private_servers` is set (rebinding protection).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::txt::Parser;
use ipnet::IpNet;

use super::client::{Ask, Client, ExchangeError};
use super::dnssec::{self, Validator, Verdict};
use super::{Answer, Backend, Failure, ResolveError};
use crate::config::ResolverConfig;

/// The IANA root hints, as shipped in `zones/root.hints`.
pub const IANA_ROOT_HINTS: &str = include_str!("../../zones/root.hints");

/// Queries one resolution may send.
const MAX_QUERIES: u32 = 48;
/// Levels of name-server address lookups inside one resolution.
const MAX_DEPTH: u32 = 4;
/// CNAMEs followed across zones.
const MAX_CNAMES: usize = 12;
/// Timeout for a server never heard from (Unbound's value).
const UNKNOWN_RTO: Duration = Duration::from_millis(376);
/// Shortest timeout for a known server.
const MIN_RTO: Duration = Duration::from_millis(50);
/// Consecutive timeouts after which a server is left out.
const DEAD_AFTER: u32 = 3;
/// How long a dead server is left out before it is probed again.
const DEAD_FOR: Duration = Duration::from_secs(60);
/// Longest a delegation is remembered.
const MAX_DELEGATION_TTL: u32 = 86_400;

/// Addresses of the root servers in a hints file.
pub fn root_addresses(text: &str, file: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let (_, zone) = Parser::new(text, None, Some(Name::root()))
        .parse()
        .map_err(|e| ResolveError::Setup(format!("{file}: {e}")))?;
    let addrs: Vec<IpAddr> = zone
        .values()
        .flat_map(|set| set.records_without_rrsigs())
        .filter_map(|r| r.data.ip_addr())
        .collect();
    if addrs.is_empty() {
        return Err(ResolveError::Setup(format!(
            "{file}: no root server addresses"
        )));
    }
    Ok(addrs)
}

/// What the infrastructure cache knows about one server address.
#[derive(Debug, Clone, Copy)]
struct Server {
    /// Smoothed round-trip time and variance, milliseconds.
    srtt: f64,
    rttvar: f64,
    /// Consecutive timeouts.
    timeouts: u32,
    /// Left out until then.
    dead_until: Option<Instant>,
    /// It does not echo the 0x20 case: asked in lowercase.
    no_caps: bool,
}

impl Server {
    fn rto(&self) -> Duration {
        let ms = self.srtt + 4.0 * self.rttvar;
        let base = Duration::from_micros((ms * 1000.0) as u64).max(MIN_RTO);
        base * 2u32.saturating_pow(self.timeouts.min(4))
    }
}

/// A zone's name servers, as a referral (or the root hints) gave them.
#[derive(Debug, Clone)]
struct Delegation {
    zone: Name,
    ns: Vec<Name>,
    addrs: Vec<IpAddr>,
    expires: Instant,
}

/// State of one resolution.
struct Ctx {
    queries: u32,
    depth: u32,
    /// Name servers whose addresses are being looked up (a cycle guard).
    resolving: Vec<Name>,
    /// Some server of the last zone timed out (the failure is "no reachable authority").
    timed_out: bool,
    network_error: bool,
}

impl Ctx {
    fn new() -> Self {
        Self {
            queries: 0,
            depth: 0,
            resolving: Vec::new(),
            timed_out: false,
            network_error: false,
        }
    }
}

/// Why a step of the resolution failed.
#[derive(Debug)]
struct Fail {
    failure: Failure,
    message: String,
}

fn fail(failure: Failure, message: impl Into<String>) -> Fail {
    Fail {
        failure,
        message: message.into(),
    }
}

/// The recursive backend.
pub struct Recursive {
    client: Client,
    roots: Vec<IpAddr>,
    allow_private: bool,
    max_timeout: Duration,
    infra: Mutex<HashMap<IpAddr, Server>>,
    delegations: Mutex<HashMap<Name, Delegation>>,
    addresses: Mutex<HashMap<Name, (Vec<IpAddr>, Instant)>>,
    /// Ask with DO (validation is on): signatures, DS and denial proofs come with the data.
    dnssec: bool,
    /// Signed DS records seen in referrals (zone -> DS and RRSIG records, until they expire),
    /// so that the validator need not ask the parent again.
    referral_ds: Mutex<HashMap<Name, (Vec<hickory_proto::rr::Record>, Instant)>>,
}

/// The recursive backend: the resolver and, when DNSSEC validation is on, its validator.
pub struct RecursiveBackend {
    core: Arc<Recursive>,
    validator: Option<Validator>,
}

impl RecursiveBackend {
    /// Builds the resolver and validator from configuration.
    pub fn new(c: &ResolverConfig) -> Result<Self, ResolveError> {
        let validating = dnssec::enabled(c);
        let core = Arc::new(Recursive::new(c, validating)?);
        let validator = if validating {
            let anchor = c.dnssec.trust_anchor.as_ref().map_or_else(
                || "the IANA root keys".to_owned(),
                |p| p.display().to_string(),
            );
            tracing::info!(
                trust_anchor = %anchor,
                negative_trust_anchors = c.dnssec.negative_trust_anchors.len(),
                "DNSSEC validation on"
            );
            Some(Validator::new(core.clone(), &c.dnssec).map_err(ResolveError::Setup)?)
        } else {
            if c.dnssec.validate {
                tracing::warn!(
                    "DNSSEC validation is off: resolver.root_hints names a private root and \
                     resolver.dnssec.trust_anchor gives no key for it"
                );
            }
            None
        };
        Ok(Self { core, validator })
    }
}

/// Address ranges never queried unless `allow_private_servers` (loopback, private, link-local,
/// unspecified, documentation is allowed: it is only routable in labs).
fn private(ip: IpAddr) -> bool {
    const NETS: &[&str] = &[
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];
    let ip = crate::policy::prefix::canonical_ip(ip);
    NETS.iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&ip))
}

fn lower(n: &Name) -> Name {
    let mut l = n.to_lowercase();
    l.set_fqdn(true);
    l
}

/// What a server's response means for the question.
enum Reply {
    /// An answer or a negative answer: done with this name.
    Final(Message),
    /// A referral to `zone`, closer to the name.
    Referral(Delegation),
    /// Nothing usable from this server: try another.
    Lame(&'static str),
}

impl Recursive {
    /// Builds the resolver from configuration; `dnssec` sets DO on every query.
    fn new(c: &ResolverConfig, dnssec: bool) -> Result<Self, ResolveError> {
        let (text, file) = match &c.root_hints {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| ResolveError::Setup(format!("{}: {e}", p.display())))?,
                p.display().to_string(),
            ),
            None => (
                IANA_ROOT_HINTS.to_owned(),
                "<built-in root hints>".to_owned(),
            ),
        };
        let roots = root_addresses(&text, &file)?;
        Ok(Self {
            client: Client::new(),
            roots,
            allow_private: c.allow_private_servers,
            max_timeout: Duration::from_secs(c.query_timeout_secs.max(1)),
            infra: Mutex::new(HashMap::new()),
            delegations: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            dnssec,
            referral_ds: Mutex::new(HashMap::new()),
        })
    }

    /// The signed DS RRset of `zone` as its parent's referral gave it, as a DS response (for
    /// the validator, which checks the signature like any other).
    pub(super) fn referral_ds(&self, zone: &Name) -> Option<Message> {
        let mut m = self.referral_ds.lock().unwrap_or_else(|p| p.into_inner());
        let key = lower(zone);
        let records = match m.get(&key) {
            Some((r, until)) if *until > Instant::now() => r.clone(),
            Some(_) => {
                m.remove(&key);
                return None;
            }
            None => return None,
        };
        drop(m);
        let mut msg = Message::response(0, hickory_proto::op::OpCode::Query);
        msg.metadata.authoritative = true;
        msg.add_query(hickory_proto::op::Query::query(key, RecordType::DS));
        msg.add_answers(records);
        Some(msg)
    }

    /// Keeps the DS RRset and its signatures from a referral to `cut` (validation only).
    fn remember_referral_ds(&self, cut: &Name, authorities: &[hickory_proto::rr::Record]) {
        use hickory_proto::dnssec::rdata::DNSSECRData;
        let records: Vec<hickory_proto::rr::Record> = authorities
            .iter()
            .filter(|r| r.name.eq_ignore_root(cut))
            .filter(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::DS(_)) => true,
                RData::DNSSEC(DNSSECRData::RRSIG(sig)) => {
                    sig.input().type_covered == RecordType::DS
                }
                _ => false,
            })
            .cloned()
            .collect();
        let has_ds = records.iter().any(|r| r.record_type() == RecordType::DS);
        let has_sig = records.iter().any(|r| r.record_type() == RecordType::RRSIG);
        if !has_ds || !has_sig {
            return;
        }
        let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0).min(3600);
        let mut m = self.referral_ds.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            m.clear();
        }
        m.insert(
            lower(cut),
            (
                records,
                Instant::now() + Duration::from_secs(u64::from(ttl)),
            ),
        );
    }

    /// The final response of the zone that answers `name`/`qtype`, as its server sent it
    /// (signatures and proofs included): what the validator asks for.
    pub(super) async fn raw(&self, name: &Name, qtype: RecordType) -> Result<Message, String> {
        Box::pin(self.iterate(&mut Ctx::new(), name, qtype))
            .await
            .map_err(|f| f.message)
    }

    fn server(&self, ip: IpAddr) -> Server {
        self.infra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(Server {
                srtt: UNKNOWN_RTO.as_millis() as f64,
                rttvar: 0.0,
                timeouts: 0,
                dead_until: None,
                no_caps: false,
            })
    }

    fn update(&self, ip: IpAddr, f: impl FnOnce(&mut Server)) {
        let mut infra = self.infra.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = infra.get(&ip).copied().unwrap_or(Server {
            srtt: UNKNOWN_RTO.as_millis() as f64,
            rttvar: 0.0,
            timeouts: 0,
            dead_until: None,
            no_caps: false,
        });
        f(&mut s);
        if infra.len() > 100_000 {
            infra.clear(); // bounded: a flood of referrals to random servers cannot grow it
        }
        infra.insert(ip, s);
    }

    fn heard(&self, ip: IpAddr, rtt: Duration, first: bool) {
        let ms = rtt.as_secs_f64() * 1000.0;
        self.update(ip, |s| {
            if first {
                s.srtt = ms;
                s.rttvar = ms / 2.0;
            } else {
                // RFC 6298 smoothing.
                s.rttvar = 0.75 * s.rttvar + 0.25 * (s.srtt - ms).abs();
                s.srtt = 0.875 * s.srtt + 0.125 * ms;
            }
            s.timeouts = 0;
            s.dead_until = None;
        });
    }

    fn timed_out(&self, ip: IpAddr) {
        self.update(ip, |s| {
            s.timeouts += 1;
            if s.timeouts >= DEAD_AFTER {
                s.dead_until = Some(Instant::now() + DEAD_FOR);
            }
        });
    }

    /// The cached delegation closest to `name` (the root when none).
    fn closest(&self, name: &Name) -> Delegation {
        let now = Instant::now();
        let mut d = self.delegations.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = lower(name);
        loop {
            if let Some(del) = d.get(&n) {
                if del.expires > now {
                    return del.clone();
                }
                d.remove(&n);
            }
            if n.is_root() {
                break;
            }
            n = n.base_name();
        }
        Delegation {
            zone: Name::root(),
            ns: Vec::new(),
            addrs: self.roots.clone(),
            expires: now + Duration::from_secs(3600),
        }
    }

    fn remember(&self, d: &Delegation) {
        let mut map = self.delegations.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(lower(&d.zone), d.clone());
    }

    fn cached_addresses(&self, ns: &Name) -> Option<Vec<IpAddr>> {
        let a = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        a.get(&lower(ns))
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn remember_addresses(&self, ns: &Name, addrs: &[IpAddr], ttl: u32) {
        let mut a = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() > 100_000 {
            a.clear();
        }
        a.insert(
            lower(ns),
            (
                addrs.to_vec(),
                Instant::now() + Duration::from_secs(u64::from(ttl.clamp(5, MAX_DELEGATION_TTL))),
            ),
        );
    }

    /// The next server of `d` to ask: the fastest not yet tried and not dead (a dead one is
    /// probed once it is due, and asked anyway when nothing else is left).
    fn pick(&self, d: &Delegation, tried: &[IpAddr]) -> Option<IpAddr> {
        let now = Instant::now();
        let candidates = d
            .addrs
            .iter()
            .copied()
            .filter(|ip| !tried.contains(ip))
            .filter(|ip| self.allow_private || !private(*ip))
            .map(|ip| (ip, self.server(ip)));
        let mut alive: Vec<(IpAddr, Duration)> = Vec::new();
        let mut dead: Vec<(IpAddr, Instant)> = Vec::new();
        for (ip, s) in candidates {
            match s.dead_until {
                Some(until) if until > now => dead.push((ip, until)),
                _ => alive.push((ip, s.rto())),
            }
        }
        // Among servers never heard from, pick at random (spread the load); otherwise the
        // fastest.
        alive.sort_by_key(|(_, rto)| *rto);
        if let Some((_, best)) = alive.first() {
            let same: Vec<IpAddr> = alive
                .iter()
                .take_while(|(_, r)| r == best)
                .map(|(ip, _)| *ip)
                .collect();
            return Some(same[rand::random::<u32>() as usize % same.len()]);
        }
        let _ = dead; // left out until their time is up (then probed as unknown-fast)
        None
    }

    /// Resolves `name`/`qtype`, following CNAMEs across zones.
    /// With a validator, every step of the chain is validated: the answer is secure only if
    /// all are, and a bogus step fails the whole (EDE 6).
    async fn lookup(
        &self,
        ctx: &mut Ctx,
        name: &Name,
        qtype: RecordType,
        validator: Option<&Validator>,
    ) -> Result<Answer, Fail> {
        let mut chain: Vec<hickory_proto::rr::Record> = Vec::new();
        let mut current = lower(name);
        let mut secure = validator.is_some();
        for _ in 0..MAX_CNAMES {
            let msg = Box::pin(self.iterate(ctx, &current, qtype)).await?;
            let msg = match validator {
                None => msg,
                Some(v) => {
                    let verdict = v.check(&current, qtype, msg).await;
                    metrics::counter!(crate::metrics::DNSSEC, "result" => verdict.label())
                        .increment(1);
                    match verdict {
                        Verdict::Secure(m) => m,
                        Verdict::Insecure(m) => {
                            secure = false;
                            m
                        }
                        Verdict::Bogus(why) => {
                            return Err(fail(Failure::Bogus, format!("DNSSEC bogus: {why}")));
                        }
                    }
                }
            };
            let mut a = Answer::from_response(&current, qtype, msg);
            // Where the chain in this answer ended, and whether it ended in the data.
            let mut end = current.clone();
            for r in &a.answers {
                if let RData::CNAME(t) = &r.data
                    && r.name.eq_ignore_root(&end)
                {
                    end = lower(&t.0);
                }
            }
            // Done: no chain, the data at its end, NXDOMAIN, or a NODATA from the zone that
            // holds the end of the chain (its server followed the chain as far as it could).
            let done = end == current
                || a.rcode == ResponseCode::NXDomain
                || a.answers
                    .iter()
                    .any(|r| r.name.eq_ignore_root(&end) && r.record_type() == qtype)
                || a.authorities
                    .iter()
                    .any(|r| r.record_type() == RecordType::SOA && r.name.zone_of(&end));
            for r in a.answers.drain(..) {
                if !chain.contains(&r) {
                    chain.push(r);
                }
            }
            if done {
                return Ok(Answer {
                    rcode: a.rcode,
                    answers: chain,
                    authorities: a.authorities,
                    secure,
                });
            }
            if chain
                .iter()
                .filter(|r| r.record_type() == RecordType::CNAME)
                .count()
                > MAX_CNAMES
            {
                break;
            }
            current = end;
        }
        Err(fail(Failure::Other, "CNAME chain too long or looping"))
    }

    /// Asks the servers of the closest known zone, follows referrals down to the zone that
    /// answers for `name`, and returns its final response.
    async fn iterate(
        &self,
        ctx: &mut Ctx,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Message, Fail> {
        // DS lives in the parent zone.
        let start = if qtype == RecordType::DS && !name.is_root() {
            name.base_name()
        } else {
            name.clone()
        };
        let mut zone = self.closest(&start);
        let mut tried: Vec<IpAddr> = Vec::new();
        let mut ns_done: Vec<Name> = Vec::new();
        let mut lame_reasons: Vec<&'static str> = Vec::new();
        // Servers of this zone that timed out: asked once more (with a doubled timeout) before
        // giving up, since one lost packet must not fail a zone with a single server.
        let mut silent: Vec<IpAddr> = Vec::new();
        let mut second_round = false;
        ctx.timed_out = false;
        loop {
            let Some(ip) = self.pick(&zone, &tried) else {
                // No address left: look up a name server of the zone we have not tried yet.
                if self.more_addresses(ctx, &mut zone, &mut ns_done).await {
                    continue;
                }
                if !second_round && !silent.is_empty() {
                    second_round = true;
                    tried.retain(|ip| !silent.contains(ip));
                    silent.clear();
                    continue;
                }
                let now = Instant::now();
                let skipped_dead = zone
                    .addrs
                    .iter()
                    .any(|ip| self.server(*ip).dead_until.is_some_and(|u| u > now));
                let failure = if ctx.timed_out || skipped_dead {
                    Failure::Unreachable
                } else if ctx.network_error {
                    Failure::Network
                } else {
                    Failure::Other
                };
                return Err(fail(
                    failure,
                    format!(
                        "no server of {} answered for {name} {qtype} ({})",
                        zone.zone,
                        if lame_reasons.is_empty() {
                            "timeouts".to_owned()
                        } else {
                            lame_reasons.join(", ")
                        }
                    ),
                ));
            };
            tried.push(ip);
            ctx.queries += 1;
            if ctx.queries > MAX_QUERIES {
                return Err(fail(Failure::Other, "too many queries for one resolution"));
            }
            let timeouts = self.server(ip).timeouts;
            let reply = match self.ask(ctx, ip, name, qtype).await {
                Some(msg) => self.classify(&zone, name, qtype, msg),
                None => {
                    if self.server(ip).timeouts > timeouts {
                        silent.push(ip);
                    }
                    continue;
                }
            };
            match reply {
                Reply::Final(msg) => return Ok(msg),
                Reply::Lame(why) => lame_reasons.push(why),
                Reply::Referral(child) => {
                    self.remember(&child);
                    zone = child;
                    tried.clear();
                    ns_done.clear();
                    lame_reasons.clear();
                    silent.clear();
                    second_round = false;
                }
            }
        }
    }

    /// One question to one server over UDP (and TCP when truncated), recording its speed.
    async fn ask(
        &self,
        ctx: &mut Ctx,
        ip: IpAddr,
        name: &Name,
        qtype: RecordType,
    ) -> Option<Message> {
        let s = self.server(ip);
        let server = SocketAddr::new(ip, 53);
        let timeout = s.rto().min(self.max_timeout);
        let ask = Ask {
            server,
            name,
            qtype,
            rd: false,
            caps: !s.no_caps,
            timeout,
            dnssec: self.dnssec,
            cd: false,
        };
        let sent = Instant::now();
        let mut r = self.client.udp(ask).await;
        if let Err(ExchangeError::CaseMismatch { .. }) = r {
            self.update(ip, |s| s.no_caps = true);
            r = self.client.udp(Ask { caps: false, ..ask }).await;
        }
        match r {
            Ok(msg) => {
                self.heard(ip, sent.elapsed(), s.timeouts == 0 && s.rttvar == 0.0);
                if msg.metadata.truncation {
                    let tcp = Ask {
                        caps: false,
                        timeout: self.max_timeout,
                        ..ask
                    };
                    return match self.client.tcp(tcp).await {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::debug!(error = %e, "TCP retry failed");
                            None
                        }
                    };
                }
                Some(msg)
            }
            Err(e) => {
                match &e {
                    ExchangeError::Timeout { .. } => {
                        ctx.timed_out = true;
                        self.timed_out(ip);
                    }
                    ExchangeError::Io { .. } => {
                        ctx.network_error = true;
                        self.timed_out(ip);
                    }
                    _ => {}
                }
                metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "backend" => "recursive", "kind" => e.kind())
                    .increment(1);
                tracing::debug!(error = %e, "name server query failed");
                None
            }
        }
    }

    /// What a response from a server of `zone` means for `name`/`qtype`.
    fn classify(&self, zone: &Delegation, name: &Name, qtype: RecordType, msg: Message) -> Reply {
        match msg.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            _ => return Reply::Lame("error rcode"),
        }
        let answers_name = msg.answers.iter().any(|r| {
            r.name.eq_ignore_root(name)
                && (r.record_type() == qtype || r.record_type() == RecordType::CNAME)
        });
        if answers_name {
            return Reply::Final(msg);
        }
        let soa = msg
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA && r.name.zone_of(name));
        if msg.metadata.response_code == ResponseCode::NXDomain {
            // NXDOMAIN from the zone's server: final (with or without SOA; without, it is
            // passed on and not cached).
            return if soa || msg.metadata.authoritative {
                Reply::Final(msg)
            } else {
                Reply::Lame("NXDOMAIN without authority")
            };
        }
        // A referral: NS records for a zone below the current one, on the way to the name.
        let cut = msg
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::NS)
            .map(|r| r.name.clone())
            .find(|z| {
                z.zone_of(name) && zone.zone.zone_of(z) && z.num_labels() > zone.zone.num_labels()
            });
        if let Some(cut) = cut
            && !msg.metadata.authoritative
        {
            let ns: Vec<Name> = msg
                .authorities
                .iter()
                .filter(|r| r.record_type() == RecordType::NS && r.name.eq_ignore_root(&cut))
                .filter_map(|r| match &r.data {
                    RData::NS(n) => Some(lower(&n.0)),
                    _ => None,
                })
                .collect();
            let ttl = msg
                .authorities
                .iter()
                .filter(|r| r.record_type() == RecordType::NS)
                .map(|r| r.ttl)
                .min()
                .unwrap_or(3600)
                .min(MAX_DELEGATION_TTL);
            // Glue only for name servers inside the zone of the server that gave it.
            let mut addrs = Vec::new();
            for g in msg.additionals.iter() {
                let Some(ip) = g.data.ip_addr() else { continue };
                if ns.iter().any(|n| n.eq_ignore_root(&g.name)) && zone.zone.zone_of(&g.name) {
                    addrs.push(ip);
                    self.remember_addresses(&g.name, &[ip], g.ttl);
                }
            }
            if self.dnssec {
                self.remember_referral_ds(&cut, &msg.authorities);
            }
            return Reply::Referral(Delegation {
                zone: lower(&cut),
                ns,
                addrs,
                expires: Instant::now() + Duration::from_secs(u64::from(ttl)),
            });
        }
        if soa || msg.metadata.authoritative {
            return Reply::Final(msg); // NODATA
        }
        if msg
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::NS)
        {
            return Reply::Lame("referral upward or sideways");
        }
        Reply::Lame("no answer and no authority")
    }

    /// Adds the addresses of one more name server of `zone` (looked up if there is no glue).
    /// False when there is none left to look up.
    async fn more_addresses(
        &self,
        ctx: &mut Ctx,
        zone: &mut Delegation,
        done: &mut Vec<Name>,
    ) -> bool {
        while let Some(ns) = zone
            .ns
            .iter()
            .find(|n| !done.iter().any(|d| d == *n))
            .cloned()
        {
            done.push(ns.clone());
            let found = match self.cached_addresses(&ns) {
                Some(a) => a,
                None => {
                    if ctx.depth >= MAX_DEPTH || ctx.resolving.contains(&ns) {
                        continue; // too deep, or a cycle through this name server
                    }
                    ctx.depth += 1;
                    ctx.resolving.push(ns.clone());
                    let timed_out = ctx.timed_out;
                    let r = Box::pin(self.lookup(ctx, &ns, RecordType::A, None)).await;
                    ctx.timed_out = timed_out;
                    ctx.resolving.pop();
                    ctx.depth -= 1;
                    let Ok(a) = r else { continue };
                    let ips: Vec<IpAddr> =
                        a.answers.iter().filter_map(|r| r.data.ip_addr()).collect();
                    let ttl = a.answers.iter().map(|r| r.ttl).min().unwrap_or(300);
                    self.remember_addresses(&ns, &ips, ttl);
                    ips
                }
            };
            let new: Vec<IpAddr> = found
                .into_iter()
                .filter(|ip| !zone.addrs.contains(ip))
                .collect();
            if !new.is_empty() {
                zone.addrs.extend(new);
                self.remember(zone);
                return true;
            }
        }
        false
    }
}

#[async_trait]
impl Backend for RecursiveBackend {
    async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        checking_disabled: bool,
    ) -> Result<Answer, ResolveError> {
        let validator = self.validator.as_ref().filter(|_| !checking_disabled);
        self.core
            .lookup(&mut Ctx::new(), name, qtype, validator)
            .await
            .map_err(|f| ResolveError::Failed {
                name: name.to_string(),
                qtype,
                failure: f.failure,
                message: f.message,
            })
    }

    fn kind(&self) -> &'static str {
        "recursive"
    }

    fn validates(&self) -> bool {
        self.validator.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_back_off_and_fast_servers_get_short_ones() {
        let mut s = Server {
            srtt: 2.0,
            rttvar: 1.0,
            timeouts: 0,
            dead_until: None,
            no_caps: false,
        };
        assert_eq!(s.rto(), MIN_RTO, "a fast server still gets 50 ms");
        s.srtt = 100.0;
        s.rttvar = 25.0;
        assert_eq!(s.rto(), Duration::from_millis(200));
        s.timeouts = 2;
        assert_eq!(
            s.rto(),
            Duration::from_millis(800),
            "each timeout doubles it"
        );
    }

    #[test]
    fn private_ranges_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["192.0.2.53", "8.8.8.8", "2001:db8::53"] {
            assert!(!private(ip.parse().expect("ip")), "{ip}");
        }
    }
}
