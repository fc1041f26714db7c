//! The DNS request path, written once for every transport.
//!
//! ```text
//! transport (udp | tcp | ...)  ->  bytes + who sent them (Client)
//! parse      wire::Query::parse            once; FORMERR / NOTIMP / BADVERS / ignored
//! identify   Snapshot::classify            the client's policy facts
//! decide     policy::decide                the only place precedence lives
//! record     Pipeline::record              metrics, detections, alert sightings, log-only feeds
//! answer     cache hit | synthesis         in `start`, synchronously
//!            | backend (Pending)           in `finish`, on the serving thread's runtime
//! encode     wire::Response::finish        OPT, EDE, payload clamp and TC: once
//! ```
//!
//! [`Pipeline::start`] runs every stage that needs no waiting and answers most queries on the
//! spot: cached names, policy answers (sinkhole, NXDOMAIN, ...), refusals. What needs the
//! backend comes back as [`Step::Pending`], carrying the decision, and [`Pipeline::finish`]
//! completes it: the query is never parsed or decided twice, and the cache is probed once. The
//! UDP "fast path" is simply this: `start` answered. Transports only frame bytes and name the
//! client.
//!
//! Every request gets an answer where one is due: malformed ones FORMERR, unsupported ones
//! NOTIMP/REFUSED, EDNS versions above 0 BADVERS, backend failures SERVFAIL, each with a counter.
//! Blocks carry an Extended DNS Error (RFC 8914): 15 Blocked (quarantine, threat feeds, global
//! trusted-only mode), 17 Filtered (opted-in trusted zone), 18 Prohibited (client network not
//! served). A blocked or refused query never reaches a backend.

pub mod batch;
pub mod cookie;
pub mod doh;
pub mod limit;
pub mod listen;
pub mod tcp;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::policy::rpz::LocalRecord;
use crate::policy::{Action, ClientView, Decision, Page, QName, Question, Reason, decide};
use crate::resolve::Resolver;
use crate::resolve::cache::Key;
use crate::store::PolicyStore;
use crate::wire::{self, Malformed, OptOut, Owner, Query, Response, rcode};

/// How a query reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain UDP: the source address is not proven.
    Udp,
    /// Plain TCP: the handshake proved the source address.
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484).
    Https,
}

impl Transport {
    /// Every transport, in discriminant order.
    pub const ALL: [Transport; 4] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Https,
    ];

    /// The largest reply this transport carries for `q`.
    fn limit(self, q: &Query<'_>) -> usize {
        match self {
            Transport::Udp => q.udp_limit(),
            Transport::Tcp | Transport::Tls | Transport::Https => usize::from(u16::MAX),
        }
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Https => "https",
        }
    }
}

/// Who sent a query, as the transport knows it.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// Source address and port.
    pub addr: SocketAddr,
    /// How it came.
    pub transport: Transport,
}

/// Clock readings taken once per batch of packets, not per packet.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Unix seconds, for the policy.
    pub unix: i64,
    /// Monotonic time, for the cache.
    pub instant: Instant,
}

impl Now {
    /// The current time.
    pub fn read() -> Self {
        Self {
            unix: chrono::Utc::now().timestamp(),
            instant: Instant::now(),
        }
    }
}

/// What [`Pipeline::start`] did with a query.
#[derive(Debug)]
pub enum Step {
    /// The reply is in the output buffer.
    Answered,
    /// Nothing to send (unreadable, a response, RPZ DROP).
    Silent,
    /// The reply needs the backend: complete it with [`Pipeline::finish`].
    Pending(Box<Pending>),
}

/// A decided query waiting for the backend. It owns a copy of the packet and everything the
/// answer needs, so the snapshot it was decided on can go.
#[derive(Debug)]
pub struct Pending {
    wire: Vec<u8>,
    client: Client,
    work: Work,
    opt: OptOut<'static>,
    /// When the query arrived (for the answer-time histogram).
    started: Instant,
    /// What the policy did, when the query log wants it.
    note: Option<Box<crate::querylog::Note>>,
}

/// What [`Pipeline::start`] learns on the way, for metrics and the query log.
struct Meta {
    source: Source,
    note: Option<crate::querylog::Note>,
}

/// Where an answer came from, for the answer-time histogram.
#[derive(Debug, Clone, Copy)]
enum Source {
    Cache = 0,
    Synthesized = 1,
    Upstream = 2,
}

impl Source {
    const ALL: [Source; 3] = [Source::Cache, Source::Synthesized, Source::Upstream];

    fn label(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Synthesized => "synthesized",
            Source::Upstream => "upstream",
        }
    }
}

use crate::wire::rcode::NAMES as RCODES;

#[derive(Debug)]
enum Work {
    /// Resolve the question itself (cache miss).
    Resolve {
        key: Box<Key>,
        name: Name,
        qtype: RecordType,
        /// The source is proven (for a botnet name found in the CNAME chain).
        proven: bool,
    },
    /// `name CNAME target` (safe search, feed local data), then the target resolved.
    Alias {
        target: Name,
        qtype: RecordType,
        ttl: u32,
    },
}

/// The request path shared by every transport and serving thread.
pub struct Pipeline {
    store: Arc<PolicyStore>,
    resolver: Arc<Resolver>,
    inflight: Arc<AtomicUsize>,
    detector: Option<crate::detect::Detector>,
    misses: Option<Arc<crate::misses::Misses>>,
    querylog: Option<Arc<crate::querylog::QueryLog>>,
    notifier: Option<crate::xfr::Notifier>,
    alerts: Option<Arc<crate::alerts::AlertEngine>>,
    cookies: cookie::Cookies,
    limits: Limits,
    counters: Counters,
}

/// The rate limits of the request path (see [`limit`]).
#[derive(Default)]
struct Limits {
    client: Option<limit::Buckets>,
    new_names: Option<limit::Buckets>,
    refused: Option<limit::Buckets>,
    client_outstanding: Option<limit::InFlight>,
    zone_outstanding: Option<limit::InFlight>,
}

impl Limits {
    fn from_config(c: &crate::config::LimitsConfig) -> Self {
        use limit::{Buckets, InFlight, Limit};
        Self {
            client: Buckets::new(Limit::Client, c.client_qps, c.client_qps.saturating_mul(2)),
            new_names: Buckets::new(Limit::NewNames, c.new_names_per_second, c.new_names_burst),
            refused: Buckets::new(
                Limit::Refused,
                c.refused_per_second,
                c.refused_per_second.saturating_mul(2),
            ),
            client_outstanding: InFlight::new(Limit::ClientOutstanding, c.client_outstanding),
            zone_outstanding: InFlight::new(Limit::ZoneOutstanding, c.zone_outstanding),
        }
    }
}

/// The EDE of an answer refused by a rate limit (RFC 8914 has no code for it: 0, Other).
fn limited(what: &'static str) -> Option<(u16, std::borrow::Cow<'static, str>)> {
    Some((0, std::borrow::Cow::Borrowed(what)))
}

/// Decision counters, registered once each (a labelled `counter!` per query costs a registry
/// lookup), indexed by action and reason.
struct Counters {
    decisions: Box<[OnceLock<metrics::Counter>]>,
    cache_hits: metrics::Counter,
    /// Queries by transport (udp, tcp, tls, https).
    queries: [metrics::Counter; 4],
    /// Answers by rcode ([`RCODES`]).
    responses: [metrics::Counter; 7],
    /// Answer times by transport and [`Source`].
    latency: [[metrics::Histogram; 3]; 4],
}

impl Counters {
    fn new() -> Self {
        Self {
            decisions: (0..Action::KINDS * Reason::KINDS)
                .map(|_| OnceLock::new())
                .collect(),
            cache_hits: metrics::counter!(crate::metrics::CACHE_HITS),
            queries: [
                Transport::Udp,
                Transport::Tcp,
                Transport::Tls,
                Transport::Https,
            ]
            .map(|t| metrics::counter!(crate::metrics::QUERIES, "transport" => t.label())),
            responses: RCODES.map(|r| metrics::counter!(crate::metrics::RESPONSES, "rcode" => r)),
            latency: Transport::ALL.map(|t| {
                Source::ALL.map(|s| {
                    metrics::histogram!(
                        crate::metrics::RESPONSE_SECONDS,
                        "transport" => t.label(),
                        "source" => s.label()
                    )
                })
            }),
        }
    }

    /// An answer was written to `out`: count its rcode and how long it took.
    fn answered(&self, transport: Transport, source: Source, started: Instant, out: &[u8]) {
        let rcode = out.get(3).map_or(6, |b| usize::from(b & 0x0f).min(6));
        self.responses[rcode].increment(1);
        self.latency[transport as usize][source as usize].record(started.elapsed().as_secs_f64());
    }

    fn decision(&self, d: &Decision) {
        let i = d.action.index() * Reason::KINDS + d.reason.index();
        if let Some(c) = self.decisions.get(i) {
            c.get_or_init(|| {
                metrics::counter!(
                    crate::metrics::DECISIONS,
                    "action" => d.action.label(),
                    "reason" => d.reason.label()
                )
            })
            .increment(1);
        }
    }
}

/// Decrements the in-flight counter when a request is done, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn bad_request(kind: &'static str) {
    metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => kind).increment(1);
}

impl Pipeline {
    /// A pipeline over the policy store and resolver.
    pub fn new(store: Arc<PolicyStore>, resolver: Arc<Resolver>) -> Self {
        Self {
            store,
            resolver,
            inflight: Arc::new(AtomicUsize::new(0)),
            detector: None,
            misses: None,
            querylog: None,
            notifier: None,
            alerts: None,
            cookies: cookie::Cookies::new(None),
            limits: Limits::from_config(&crate::config::LimitsConfig::default()),
            counters: Counters::new(),
        }
    }

    /// Rate limits as configured (default: [`crate::config::LimitsConfig::default`]).
    pub fn with_limits(mut self, c: &crate::config::LimitsConfig) -> Self {
        self.limits = Limits::from_config(c);
        self
    }

    /// Keys DNS cookies with a shared secret (instances of a fleet answering the same clients).
    pub fn with_cookie_secret(mut self, secret: [u8; 16]) -> Self {
        self.cookies = cookie::Cookies::new(Some(secret));
        self
    }

    /// Records DNS sightings of hosts with an open organisation alert.
    pub fn with_alerts(mut self, a: Arc<crate::alerts::AlertEngine>) -> Self {
        self.alerts = Some(a);
        self
    }

    /// Accepts NOTIFY for transferred feeds from their primaries.
    pub fn with_notifier(mut self, n: crate::xfr::Notifier) -> Self {
        self.notifier = Some(n);
        self
    }

    /// Logs policy actions (JSON lines, dnstap).
    pub fn with_querylog(mut self, q: Arc<crate::querylog::QueryLog>) -> Self {
        self.querylog = Some(q);
        self
    }

    /// Counts the names trusted-zone clients are denied (the misses report).
    pub fn with_misses(mut self, m: Arc<crate::misses::Misses>) -> Self {
        self.misses = Some(m);
        self
    }

    /// Flags subscribers who look up botnet-feed names.
    pub fn with_detector(mut self, d: crate::detect::Detector) -> Self {
        self.detector = Some(d);
        self
    }

    /// Queries waiting for the backend right now (graceful shutdown waits for 0).
    pub fn inflight(&self) -> Arc<AtomicUsize> {
        self.inflight.clone()
    }

    /// Answers a query completely: [`Pipeline::start`], then [`Pipeline::finish`] when needed.
    /// `true` when `out` holds a reply to send.
    pub async fn handle(&self, wire: &[u8], client: Client, out: &mut Vec<u8>) -> bool {
        match self.start(wire, client, Now::read(), out) {
            Step::Answered => true,
            Step::Silent => false,
            Step::Pending(p) => self.finish(p, out).await,
        }
    }

    /// Every stage that needs no waiting: parse, identify, decide, record, and the answer when
    /// it comes from the cache or from the policy itself.
    pub fn start(&self, wire: &[u8], client: Client, now: Now, out: &mut Vec<u8>) -> Step {
        let mut meta = Meta {
            source: Source::Synthesized,
            note: None,
        };
        let mut step = self.start_inner(wire, client, now, out, &mut meta);
        match &mut step {
            Step::Answered => {
                self.counters
                    .answered(client.transport, meta.source, now.instant, out);
                if let Some(note) = meta.note {
                    self.log(client, wire.to_vec(), out, note);
                }
            }
            Step::Pending(p) => {
                p.started = now.instant;
                p.note = meta.note.map(Box::new);
            }
            Step::Silent => {}
        }
        step
    }

    fn start_inner(
        &self,
        wire: &[u8],
        client: Client,
        now: Now,
        out: &mut Vec<u8>,
        meta: &mut Meta,
    ) -> Step {
        self.counters.queries[client.transport as usize].increment(1);
        let q = match Query::parse(wire) {
            Ok(q) => q,
            Err(m) => return self.refuse_malformed(wire, m, out),
        };
        if q.opcode == wire::opcode::NOTIFY {
            return self.notify(&q, client, out);
        }
        let limit = client.transport.limit(&q);
        // DNS cookies: over UDP a valid server cookie proves the source address, as the
        // handshake does over TCP.
        let cookie = q.edns.and_then(|e| e.cookie).map(|c| {
            self.cookies.check(
                &q.wire[c.at..c.at + c.len],
                client.addr.ip(),
                now.unix as u32,
            )
        });
        let proven = client.transport != Transport::Udp || cookie.is_some_and(|c| c.proven);
        let mut o = OptOut {
            ede: None,
            cookie: cookie.map(|c| c.reply),
        };
        if let Some(b) = &self.limits.client
            && !b.take(limit::client_key(client.addr.ip()), now.instant)
        {
            if client.transport == Transport::Udp {
                return Step::Silent;
            }
            o.ede = limited("cleanpipe: too many queries from this client");
            return answer_rcode(&q, limit, rcode::REFUSED, &o, out);
        }
        if q.qclass != 1 {
            bad_request("class");
            return answer_rcode(&q, limit, rcode::REFUSED, &o, out);
        }
        if matches!(q.qtype, 251 | 252) {
            bad_request("transfer"); // IXFR, AXFR: cleanpipe serves no zones
            return answer_rcode(&q, limit, rcode::REFUSED, &o, out);
        }
        let Some(qname) = QName::from_labels(q.labels()) else {
            bad_request("malformed");
            return answer_rcode(&q, limit, rcode::FORMERR, &o, out);
        };
        let qtype = RecordType::from(q.qtype);
        let question = Question { name: qname, qtype };

        let current = self.store.current();
        let snap = &current.snapshot;
        let view = current.client(client.addr.ip());
        let decision = decide(snap, &view, &question, now.unix);
        o.ede = decision.reason.ede_for(snap);
        if decision.reason == Reason::NotServed
            && client.transport == Transport::Udp
            && let Some(b) = &self.limits.refused
            && !b.take(limit::network_key(client.addr.ip()), now.instant)
        {
            // A refusal is larger than its query: never a reflector for forged sources.
            self.counters.decision(&decision);
            return Step::Silent;
        }
        // A lookup that flags the client (a botnet feed's name) needs a proven source: over
        // UDP without a valid cookie, TC=1 sends the client to TCP, and nobody is flagged on
        // the word of a packet whose source may be forged.
        if !proven && flags_client(snap, &decision) {
            self.counters.decision(&decision);
            metrics::counter!(crate::metrics::UNPROVEN_LOOKUPS).increment(1);
            let mut r = Response::new(out, &q, rcode::NOERROR);
            r.bytes_mut()[2] |= 0x02;
            r.finish(&q, limit, &o);
            return Step::Answered;
        }
        self.record(snap, &decision, &view, &question, client, now.unix);
        if let Some(log) = &self.querylog {
            meta.note = note(snap, &decision, &question, log.wants_all());
        }

        if let Some(step) = self.policy_answer(&q, client, snap, &decision, limit, &o, out) {
            return step;
        }
        if q.qtype == 255 {
            // ANY: a minimal answer (RFC 8482), never a large one fetched upstream.
            let mut r = Response::new(out, &q, rcode::NOERROR);
            r.answer(Owner::Question, 13, 3600, b"\x07RFC8482\x00");
            r.finish(&q, limit, &o);
            return Step::Answered;
        }

        // Resolve: the one cache probe. A cached answer whose CNAME chain leads to a name a
        // threat feed lists is answered as if that name had been asked.
        let flags = if q.checking_disabled() && self.resolver.validates() {
            crate::resolve::cache::FLAG_CD
        } else {
            0
        };
        let Some(key) = Key::from_wire(q.qname(), q.qtype, flags) else {
            return answer_rcode(&q, limit, rcode::FORMERR, &o, out);
        };
        if let Some(hit) = self.resolver.cache().get(&key, now.instant) {
            self.counters.cache_hits.increment(1);
            meta.source = Source::Cache;
            if !hit.chain().is_empty()
                && let Some(step) =
                    self.chain_answer(&q, client, proven, snap, &view, hit.chain(), &mut o, out)
            {
                return step;
            }
            if self.resolver.prefetches()
                && hit.wants_prefetch(now.instant)
                && let Ok(name) = Name::from_labels(q.labels())
            {
                Resolver::prefetch(&self.resolver, &key, &name, qtype);
            }
            if o.ede.is_none() {
                o.ede = hit.ede().map(|(c, t)| (c, std::borrow::Cow::Borrowed(t)));
            }
            let mut r = hit.reply(out, &q, now.instant);
            r.set_authentic(hit.secure() && q.wants_ad());
            r.finish(&q, limit, &o);
            return Step::Answered;
        }
        drop(current);
        if let Some(b) = &self.limits.new_names
            && !b.take(limit::client_key(client.addr.ip()), now.instant)
        {
            // Over UDP the excess is dropped, as response rate limiting does: a flood is
            // cheapest to ignore, and a stub that retries gets its answer once under budget.
            if client.transport == Transport::Udp {
                return Step::Silent;
            }
            o.ede = limited("cleanpipe: too many names not in the cache from this client");
            return answer_rcode(&q, limit, rcode::SERVFAIL, &o, out);
        }
        let Ok(name) = Name::from_labels(q.labels()) else {
            return answer_rcode(&q, limit, rcode::FORMERR, &o, out);
        };
        let key = Box::new(key);
        let work = Work::Resolve {
            key,
            name,
            qtype,
            proven,
        };
        self.pending(&q, client, work, o)
    }

    /// The answer of a decision that needs no resolution of the asked name (blocks, synthesis,
    /// aliases); `None` when the name is to be resolved.
    #[allow(clippy::too_many_arguments)]
    fn policy_answer(
        &self,
        q: &Query<'_>,
        client: Client,
        snap: &crate::policy::Snapshot,
        decision: &Decision,
        limit: usize,
        o: &OptOut<'static>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let qtype = RecordType::from(q.qtype);
        match decision.action {
            Action::Resolve | Action::Alert => None,
            Action::TcpOnly if client.transport != Transport::Udp => None,
            Action::TcpOnly => {
                // RPZ TCP-only: an empty reply with TC=1; the client asks again over TCP.
                let mut r = Response::new(out, q, rcode::NOERROR);
                r.bytes_mut()[2] |= 0x02;
                r.finish(q, limit, o);
                Some(Step::Answered)
            }
            Action::Refuse => Some(answer_rcode(q, limit, rcode::REFUSED, o, out)),
            Action::NxDomain => Some(answer_rcode(q, limit, rcode::NXDOMAIN, o, out)),
            Action::NoData => Some(answer_rcode(q, limit, rcode::NOERROR, o, out)),
            Action::Drop => Some(Step::Silent),
            Action::Sinkhole(page) => {
                let sh = &snap.sinkhole;
                let (v4, v6) = match page {
                    Page::Cleanup => (&sh.v4, &sh.v6),
                    Page::Info => (&sh.info_v4, &sh.info_v6),
                };
                let mut r = Response::new(out, q, rcode::NOERROR);
                match qtype {
                    RecordType::A => v4
                        .iter()
                        .for_each(|a| r.answer(Owner::Question, 1, sh.ttl, &a.octets())),
                    RecordType::AAAA => v6
                        .iter()
                        .for_each(|a| r.answer(Owner::Question, 28, sh.ttl, &a.octets())),
                    _ => {}
                }
                r.finish(q, limit, o);
                Some(Step::Answered)
            }
            Action::LocalData { feed, data } => {
                let local = snap
                    .feeds
                    .get(feed as usize)
                    .and_then(|f| f.zone.local.get(data as usize))
                    .map_or(&[][..], |v| v.as_slice());
                let ttl = snap.sinkhole.ttl;
                Some(match local_answer(q, qtype, local, ttl, limit, o, out) {
                    Some(target) => {
                        self.pending(q, client, Work::Alias { target, qtype, ttl }, o.clone())
                    }
                    None => Step::Answered,
                })
            }
            Action::Rewrite(i) => {
                let target = snap
                    .rewrite_targets
                    .get(i as usize)
                    .and_then(|(_, t)| Name::from_ascii(format!("{t}.")).ok());
                Some(match target {
                    Some(target) => {
                        let ttl = snap.sinkhole.ttl;
                        self.pending(q, client, Work::Alias { target, qtype, ttl }, o.clone())
                    }
                    None => answer_rcode(q, limit, rcode::SERVFAIL, o, out),
                })
            }
        }
    }

    /// Threat feeds applied to every name of a resolved CNAME chain (as BIND, Unbound and Knot
    /// apply RPZ QNAME triggers): the first listed name decides the answer, as if it had been
    /// asked, and a botnet feed flags the (proven) client.
    #[allow(clippy::too_many_arguments)]
    fn chain_answer(
        &self,
        q: &Query<'_>,
        client: Client,
        proven: bool,
        snap: &crate::policy::Snapshot,
        view: &ClientView,
        chain: &[Box<str>],
        o: &mut OptOut<'static>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let limit = client.transport.limit(q);
        for name in chain {
            let Some(qname) = QName::new(name) else {
                continue;
            };
            let question = Question {
                name: qname,
                qtype: RecordType::from(q.qtype),
            };
            let Some(d) = crate::policy::decide::decide_chain(snap, view, &question) else {
                continue;
            };
            o.ede = d.reason.ede_for(snap);
            if !proven && flags_client(snap, &d) {
                self.counters.decision(&d);
                metrics::counter!(crate::metrics::UNPROVEN_LOOKUPS).increment(1);
                let mut r = Response::new(out, q, rcode::NOERROR);
                r.bytes_mut()[2] |= 0x02;
                r.finish(q, limit, o);
                return Some(Step::Answered);
            }
            self.record(snap, &d, view, &question, client, Now::read().unix);
            return self.policy_answer(q, client, snap, &d, limit, o, out);
        }
        None
    }

    fn pending(&self, q: &Query<'_>, client: Client, work: Work, opt: OptOut<'static>) -> Step {
        Step::Pending(Box::new(Pending {
            wire: q.wire.to_vec(),
            client,
            work,
            opt,
            started: Instant::now(),
            note: None,
        }))
    }

    /// Completes a query that needs the backend. `true` when `out` holds a reply.
    pub async fn finish(&self, mut p: Box<Pending>, out: &mut Vec<u8>) -> bool {
        let (client, started) = (p.client, p.started);
        let logged = p.note.take().map(|n| (n, p.wire.clone()));
        let sent = self.finish_inner(p, out).await;
        if sent {
            self.counters
                .answered(client.transport, Source::Upstream, started, out);
            if let Some((note, wire)) = logged {
                self.log(client, wire, out, *note);
            }
        }
        sent
    }

    /// Hands an answered query to the query log.
    fn log(&self, client: Client, query: Vec<u8>, out: &[u8], note: crate::querylog::Note) {
        if let Some(log) = &self.querylog {
            log.emit(crate::querylog::Event {
                at: std::time::SystemTime::now(),
                client: client.addr,
                server: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                transport: client.transport.label(),
                query,
                response: out.to_vec(),
                note,
            });
        }
    }

    async fn finish_inner(&self, p: Box<Pending>, out: &mut Vec<u8>) -> bool {
        let p = *p;
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let _done = InFlight(self.inflight.clone());
        let Ok(q) = Query::parse(&p.wire) else {
            return false; // parsed once already; cannot fail
        };
        let limit = p.client.transport.limit(&q);
        let mut opt = p.opt;
        match p.work {
            Work::Resolve {
                key,
                name,
                qtype,
                proven,
            } => match self.fetch(&key, &name, qtype, &q, p.client).await {
                Err(()) => {
                    opt.ede = limited("cleanpipe: too many queries in flight");
                    Response::new(out, &q, rcode::SERVFAIL).finish(&q, limit, &opt);
                }
                Ok(Some(a)) => {
                    if !a.chain().is_empty() {
                        let current = self.store.current();
                        let view = current.client(p.client.addr.ip());
                        let step = self.chain_answer(
                            &q,
                            p.client,
                            proven,
                            &current.snapshot,
                            &view,
                            a.chain(),
                            &mut opt,
                            out,
                        );
                        drop(current);
                        match step {
                            Some(Step::Answered) => return true,
                            Some(Step::Silent) => return false,
                            Some(Step::Pending(next)) => {
                                return Box::pin(self.finish_inner(next, out)).await;
                            }
                            None => {}
                        }
                    }
                    if opt.ede.is_none() {
                        opt.ede = a.ede().map(|(c, t)| (c, std::borrow::Cow::Borrowed(t)));
                    }
                    let mut r = a.reply(out, &q, Instant::now());
                    r.set_authentic(a.secure() && q.wants_ad());
                    r.finish(&q, limit, &opt);
                }
                Ok(None) => {
                    Response::new(out, &q, rcode::SERVFAIL).finish(&q, limit, &opt);
                }
            },
            Work::Alias { target, qtype, ttl } => {
                let resolved = self.resolver.resolve(&target, qtype).await;
                let mut answers = vec![Record::from_rdata(
                    Name::root(), // replaced by the question name below
                    ttl,
                    RData::CNAME(CNAME(target)),
                )];
                answers.extend(resolved.answers);
                compose(out, &q, resolved.rcode, &answers, &resolved.authorities)
                    .finish(&q, limit, &opt);
            }
        }
        true
    }

    /// The backend's answer, with upstream work in flight bounded per client and per domain:
    /// `Err` when a bound is reached (nothing sent upstream).
    async fn fetch(
        &self,
        key: &Key,
        name: &Name,
        qtype: RecordType,
        q: &Query<'_>,
        client: Client,
    ) -> Result<Option<Arc<crate::resolve::cache::CachedAnswer>>, ()> {
        let client_key = limit::client_key(client.addr.ip()).to_string();
        let zone_key = limit::zone_key(q.qname());
        let per_client = match &self.limits.client_outstanding {
            Some(f) => Some(f.enter(&client_key).ok_or(())?),
            None => None,
        };
        let per_zone = match &self.limits.zone_outstanding {
            Some(f) => Some(f.enter(&zone_key).ok_or(())?),
            None => None,
        };
        let fetched = self.resolver.fetch(key, name, qtype).await;
        drop((per_client, per_zone));
        Ok(fetched)
    }

    /// Replies to what cannot be parsed, where a reply is due.
    fn refuse_malformed(&self, wire: &[u8], m: Malformed, out: &mut Vec<u8>) -> Step {
        bad_request(m.label());
        let code = match m {
            Malformed::Ignore => return Step::Silent,
            Malformed::FormErr => rcode::FORMERR,
            Malformed::NotImp => rcode::NOTIMP,
            Malformed::BadVers => rcode::BADVERS,
        };
        if code == rcode::BADVERS {
            // The header and question are readable: answer with our OPT record (version 0) and
            // the upper bits of BADVERS in it.
            let mut copy = wire.to_vec();
            if let Some(opt_version) = opt_version_offset(&copy) {
                copy[opt_version] = 0;
                if let Ok(q) = Query::parse(&copy) {
                    Response::new(out, &q, rcode::BADVERS).finish(&q, 512, &OptOut::default());
                    return Step::Answered;
                }
            }
        }
        match Response::header_only(out, wire, code) {
            Some(_) => Step::Answered,
            None => Step::Silent,
        }
    }

    /// RFC 1996: a primary tells us a feed changed. Only configured primaries, for their
    /// zones; everyone else is refused.
    fn notify(&self, q: &Query<'_>, client: Client, out: &mut Vec<u8>) -> Step {
        let zone = Name::from_labels(q.labels())
            .map(|n| n.to_string())
            .unwrap_or_default();
        let accepted = self
            .notifier
            .as_ref()
            .is_some_and(|n| n.notify(&zone, client.addr.ip()));
        let mut r = Response::new(
            out,
            q,
            if accepted {
                rcode::NOERROR
            } else {
                rcode::REFUSED
            },
        );
        r.set_authoritative(accepted);
        r.finish(q, client.transport.limit(q), &OptOut::default());
        Step::Answered
    }

    /// Everything a decision leaves behind besides the answer: counters, the log line of a
    /// log-only feed, the sighting of an alerted host, the detection of a botnet lookup.
    fn record(
        &self,
        snap: &crate::policy::Snapshot,
        d: &Decision,
        view: &ClientView,
        q: &Question,
        client: Client,
        now: i64,
    ) {
        self.counters.decision(d);
        let ip: IpAddr = client.addr.ip();
        if let Some(m) = &self.misses {
            match d.reason {
                Reason::TrustedAllowed { source, .. } => m.allowed(snap, ip, source, now),
                Reason::TrustedBlocked { profile, .. } => m.denied(snap, ip, profile, &q.name, now),
                _ => {}
            }
        }
        if let Some(i) = d.logged
            && let Some(f) = snap.feeds.get(i as usize)
        {
            metrics::counter!(crate::metrics::FEED_LOG_ONLY).increment(1);
            tracing::info!(feed = %f.name, client = %ip, name = %q.name.to_text(), "log-only feed matched");
        }
        if let (Reason::OrganisationAlert { organisation, .. }, Some(a)) = (d.reason, &self.alerts)
        {
            a.sighting(organisation, ip);
        }
        if let Reason::ThreatFeed { feed, rule, .. } = d.reason
            && let (Some(f), Some(detector)) = (snap.feeds.get(feed as usize), &self.detector)
            && f.botnet
        {
            detector.report(ip, view, &f.name, f.family_of(&rule), &q.name.to_text());
        }
    }
}

/// The query log's note of a decision: policy actions (sinkholes, blocks, alerts, feed
/// matches) always, other decisions only when `all` queries are logged.
fn note(
    snap: &crate::policy::Snapshot,
    d: &Decision,
    q: &Question,
    all: bool,
) -> Option<crate::querylog::Note> {
    let profile = |p: u16| {
        snap.profiles
            .get(p as usize)
            .map_or_else(String::new, |p| format!("profile {}", p.name))
    };
    let (policy, detail) = match d.reason {
        Reason::ThreatFeed { feed, rule, .. } => (
            true,
            snap.feeds.get(feed as usize).map_or_else(String::new, |f| {
                format!("feed {} ({})", f.name, f.family_of(&rule))
            }),
        ),
        Reason::Quarantined { infection, .. } => (
            true,
            snap.infection(infection).map_or_else(String::new, |i| {
                format!("infected: {}", snap.string(i.family))
            }),
        ),
        Reason::OrganisationAlert { organisation, .. } => (
            true,
            snap.organisations
                .get(organisation as usize)
                .map_or_else(String::new, |o| format!("organisation {}", o.id)),
        ),
        Reason::TrustedBlocked { profile: p, .. }
        | Reason::Canary { profile: p }
        | Reason::Bypass { profile: p, .. } => (true, profile(p)),
        _ if d.logged.is_some() => (
            true,
            d.logged
                .and_then(|i| snap.feeds.get(i as usize))
                .map_or_else(String::new, |f| format!("log-only feed {}", f.name)),
        ),
        _ => (false, String::new()),
    };
    (policy || all).then(|| crate::querylog::Note {
        action: d.action.label(),
        reason: d.reason.label(),
        detail,
        qname: q.name.to_text(),
        qtype: u16::from(q.qtype),
        policy,
    })
}

/// True when the decision would flag the client infected (a botnet feed's name or client
/// trigger): such a decision needs a proven source address.
fn flags_client(snap: &crate::policy::Snapshot, d: &Decision) -> bool {
    matches!(d.reason, Reason::ThreatFeed { feed, .. } if snap.feeds.get(feed as usize).is_some_and(|f| f.botnet))
}

/// A reply with no records and `code`.
fn answer_rcode(
    q: &Query<'_>,
    limit: usize,
    code: u16,
    opt: &OptOut<'_>,
    out: &mut Vec<u8>,
) -> Step {
    Response::new(out, q, code).finish(q, limit, opt);
    Step::Answered
}

/// RPZ local data: records of the asked type written into `out`, or, when the data is a CNAME,
/// the target to alias to (nothing written).
fn local_answer(
    q: &Query<'_>,
    qtype: RecordType,
    local: &[LocalRecord],
    ttl: u32,
    limit: usize,
    opt: &OptOut<'_>,
    out: &mut Vec<u8>,
) -> Option<Name> {
    let mut r = Response::new(out, q, rcode::NOERROR);
    let mut any = false;
    for rec in local {
        match (rec, qtype) {
            (LocalRecord::A(a), RecordType::A) => {
                r.answer(Owner::Question, 1, ttl, &a.octets());
            }
            (LocalRecord::Aaaa(a), RecordType::AAAA) => {
                r.answer(Owner::Question, 28, ttl, &a.octets());
            }
            (LocalRecord::Txt(t), RecordType::TXT) => {
                r.answer(Owner::Question, 16, ttl, &txt_rdata(t));
            }
            _ => continue,
        }
        any = true;
    }
    if !any {
        let cname = local.iter().find_map(|rec| match rec {
            LocalRecord::Cname(t) => Name::from_ascii(format!("{t}.")).ok(),
            _ => None,
        });
        if cname.is_some() {
            return cname;
        }
    }
    r.finish(q, limit, opt);
    None
}

/// TXT RDATA: the text as character strings of at most 255 bytes.
fn txt_rdata(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    let b = text.as_bytes();
    if b.is_empty() {
        out.push(0);
    }
    for chunk in b.chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// A composed reply (a CNAME followed by its target's records): encoded by hickory, then the
/// query's ID, flags and name case put in. The first record's owner becomes the question name.
fn compose<'o>(
    out: &'o mut Vec<u8>,
    q: &Query<'_>,
    rcode: ResponseCode,
    answers: &[Record],
    authorities: &[Record],
) -> Response<'o> {
    let qname = Name::from_labels(q.labels()).unwrap_or_else(|_| Name::root());
    let mut m = Message::response(0, OpCode::Query);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    let mut lower = qname.to_lowercase();
    lower.set_fqdn(true);
    m.add_query(HQuery::query(lower.clone(), RecordType::from(q.qtype)));
    m.add_answers(answers.iter().enumerate().map(|(i, r)| {
        let mut r = r.clone();
        if i == 0 {
            r.name = lower.clone();
        }
        r
    }));
    m.add_authorities(authorities.iter().cloned());
    match m.to_vec() {
        Ok(bytes) => Response::from_message(out, q, &bytes),
        Err(_) => Response::new(out, q, rcode::SERVFAIL),
    }
}

/// Offset of the version byte of the OPT record in a query, if it has one.
fn opt_version_offset(wire: &[u8]) -> Option<usize> {
    let q_end = {
        let mut at = wire::HEADER;
        loop {
            let len = usize::from(*wire.get(at)?);
            if len == 0 {
                break at + 5;
            }
            if len > 63 {
                return None;
            }
            at += 1 + len;
        }
    };
    // Only the simple shape: the OPT record right after the question.
    if wire.get(q_end) == Some(&0) && wire.get(q_end + 1..q_end + 3) == Some(&[0, 41]) {
        Some(q_end + 6)
    } else {
        None
    }
}
