//! The DNS front end: identify the client → decide → resolve or synthesize → respond.
//!
//! Every request gets an answer: malformed ones FORMERR, unsupported ones NOTIMP/REFUSED, EDNS
//! versions above 0 BADVERS, backend failures SERVFAIL, each with a counter. Blocks carry an
//! Extended DNS Error (RFC 8914) so operators and curious users can see why with `dig`:
//! 15 Blocked (quarantine, global trusted-only mode), 17 Filtered (opted-in trusted zone),
//! 18 Prohibited (client network not served). A blocked or refused query never reaches a backend.

pub mod batch;
pub mod fast;
pub mod listen;

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::policy::rpz::LocalRecord;
use crate::policy::{Action, Page, QName, Question, Reason, decide};
use crate::resolve::{Answer, Resolver};
use crate::store::PolicyStore;

/// The UDP payload size cleanpipe offers (the DNS Flag Day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// EDNS option code of Extended DNS Errors.
const EDE_OPTION: u16 = 15;

/// Handles every DNS request of every listener.
pub struct DnsHandler {
    store: Arc<PolicyStore>,
    resolver: Arc<Resolver>,
    inflight: Arc<AtomicUsize>,
    detector: Option<crate::detect::Detector>,
    notifier: Option<crate::xfr::Notifier>,
    alerts: Option<Arc<crate::alerts::AlertEngine>>,
    counters: FastCounters,
}

/// Counters of the fast path, registered once (a labelled `counter!` per query costs a
/// registry lookup).
struct FastCounters {
    cache_hits: metrics::Counter,
    by_reason: Vec<(&'static str, metrics::Counter)>,
}

impl FastCounters {
    fn new() -> Self {
        let by_reason = [
            "normal",
            "remediation",
            "trusted_allowed",
            "global_trusted_allowed",
            "self_released",
        ]
        .into_iter()
        .map(|r| {
            (
                r,
                metrics::counter!(crate::metrics::DECISIONS, "action" => "resolve", "reason" => r),
            )
        })
        .collect();
        Self {
            cache_hits: metrics::counter!(crate::metrics::CACHE_HITS),
            by_reason,
        }
    }

    fn hit(&self, reason: Reason) {
        self.cache_hits.increment(1);
        let label = reason.label();
        match self.by_reason.iter().find(|(l, _)| std::ptr::eq(*l, label) || *l == label) {
            Some((_, c)) => c.increment(1),
            None => metrics::counter!(crate::metrics::DECISIONS, "action" => "resolve", "reason" => label).increment(1),
        }
    }
}

/// A response before encoding.
struct Reply {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    ede: Option<(u16, Cow<'static, str>)>,
    /// Send nothing (RPZ DROP).
    drop: bool,
    /// Set TC (RPZ TCP-only over UDP).
    truncated: bool,
}

impl Reply {
    fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            ede: None,
            drop: false,
            truncated: false,
        }
    }

    fn records(rcode: ResponseCode, answers: Vec<Record>) -> Self {
        Self {
            answers,
            ..Self::error(rcode)
        }
    }

    fn from_answer(a: Answer) -> Self {
        Self {
            authorities: a.authorities,
            ..Self::records(a.rcode, a.answers)
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

impl DnsHandler {
    /// A handler over the policy store and resolver.
    pub fn new(store: Arc<PolicyStore>, resolver: Arc<Resolver>) -> Self {
        Self {
            store,
            resolver,
            inflight: Arc::new(AtomicUsize::new(0)),
            detector: None,
            notifier: None,
            alerts: None,
            counters: FastCounters::new(),
        }
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

    /// Flags subscribers who look up botnet-feed names.
    pub fn with_detector(mut self, d: crate::detect::Detector) -> Self {
        self.detector = Some(d);
        self
    }

    /// Requests being answered right now (graceful shutdown waits for 0).
    pub fn inflight(&self) -> Arc<AtomicUsize> {
        self.inflight.clone()
    }

    async fn answer(&self, request: &Request) -> Reply {
        if request.metadata.op_code == OpCode::Notify {
            // RFC 1996: a primary tells us a feed changed. Only configured primaries, for
            // their zones; everyone else is refused.
            let accepted = match (&self.notifier, request.request_info()) {
                (Some(n), Ok(info)) => n.notify(&info.query.name().to_string(), request.src().ip()),
                _ => false,
            };
            return Reply::error(if accepted {
                ResponseCode::NoError
            } else {
                ResponseCode::Refused
            });
        }
        if request.metadata.op_code != OpCode::Query {
            metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => "opcode").increment(1);
            return Reply::error(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => "query_count").increment(1);
            return Reply::error(ResponseCode::FormErr);
        };
        let query = info.query;
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN {
            metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => "class").increment(1);
            return Reply::error(ResponseCode::Refused);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => "transfer").increment(1);
            return Reply::error(ResponseCode::Refused);
        }
        let name: Name = query.name().into();
        let Some(qname) = QName::from_labels(name.iter()) else {
            return Reply::error(ResponseCode::FormErr);
        };

        let current = self.store.current();
        let snap = &current.snapshot;
        let client = current.client(request.src().ip());
        let question = Question { name: qname, qtype };
        let now = chrono::Utc::now().timestamp();
        let decision = decide(snap, &client, &question, now);
        metrics::counter!(
            crate::metrics::DECISIONS,
            "action" => action_label(decision.action),
            "reason" => decision.reason.label()
        )
        .increment(1);
        let ede = decision.reason.ede_for(snap);
        if let Some(i) = decision.logged
            && let Some(f) = snap.feeds.get(i as usize)
        {
            metrics::counter!(crate::metrics::FEED_LOG_ONLY).increment(1);
            tracing::info!(feed = %f.name, client = %request.src().ip(), name = %question.name.to_text(), "log-only feed matched");
        }
        if let (Reason::OrganisationAlert { organisation, .. }, Some(a)) =
            (decision.reason, &self.alerts)
        {
            a.sighting(organisation, request.src().ip());
        }
        if let Reason::ThreatFeed { feed, rule, .. } = decision.reason
            && let (Some(f), Some(detector)) = (snap.feeds.get(feed as usize), &self.detector)
            && f.botnet
        {
            detector.report(
                request.src().ip(),
                &client,
                &f.name,
                f.family_of(&rule),
                &question.name.to_text(),
            );
        }

        let mut reply = match decision.action {
            Action::Refuse => Reply::error(ResponseCode::Refused),
            Action::NxDomain => Reply::error(ResponseCode::NXDomain),
            Action::NoData => Reply::error(ResponseCode::NoError),
            Action::Drop => Reply {
                drop: true,
                ..Reply::error(ResponseCode::NoError)
            },
            Action::TcpOnly if request.protocol() == hickory_server::net::xfer::Protocol::Udp => {
                Reply {
                    truncated: true,
                    ..Reply::error(ResponseCode::NoError)
                }
            }
            Action::TcpOnly => {
                drop(current);
                Reply::from_answer(self.resolver.resolve(&name, qtype).await)
            }
            Action::LocalData { feed, data } => {
                let local = snap
                    .feeds
                    .get(feed as usize)
                    .and_then(|f| f.zone.local.get(data as usize))
                    .cloned()
                    .unwrap_or_default();
                let ttl = snap.sinkhole.ttl;
                drop(current);
                self.local_data(&name, qtype, &local, ttl).await
            }
            Action::Sinkhole(page) => {
                let sh = &snap.sinkhole;
                let (v4, v6) = match page {
                    Page::Cleanup => (&sh.v4, &sh.v6),
                    Page::Info => (&sh.info_v4, &sh.info_v6),
                };
                Reply::records(
                    ResponseCode::NoError,
                    synthesize(&name, qtype, v4, v6, sh.ttl),
                )
            }
            Action::Rewrite(i) => {
                let target = snap
                    .rewrite_targets
                    .get(i as usize)
                    .and_then(|(_, t)| Name::from_ascii(format!("{t}.")).ok());
                match target {
                    Some(target) => {
                        let ttl = snap.sinkhole.ttl;
                        drop(current);
                        self.alias(&name, target, qtype, ttl).await
                    }
                    None => Reply::error(ResponseCode::ServFail),
                }
            }
            Action::Resolve | Action::Alert => {
                drop(current);
                Reply::from_answer(self.resolver.resolve(&name, qtype).await)
            }
        };
        reply.ede = ede;
        reply
    }
}

/// The labels of an uncompressed wire-format name.
fn wire_labels(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let len = *name.get(i)? as usize;
        if len == 0 {
            return None;
        }
        let label = name.get(i + 1..i + 1 + len)?;
        i += 1 + len;
        Some(label)
    })
}

impl DnsHandler {
    /// The UDP fast path for one packet (see [`fast`]): `true` when `out` holds the answer.
    /// Only plain queries whose decision is "resolve normally" and whose answer is cached are
    /// answered here; everything else returns `false` for the full path.
    pub fn try_fast(
        &self,
        p: &[u8],
        src: std::net::SocketAddr,
        now: (i64, std::time::Instant),
        cache: &mut fast::WireCache,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(parsed) = fast::parse_query(p) else {
            return false;
        };
        let wire_name = &p[12..parsed.qname_end];
        let Some(qname) = QName::from_labels(wire_labels(wire_name)) else {
            return false;
        };
        let qtype = RecordType::from(parsed.qtype);
        let current = self.store.current();
        let client = current.client(fast::client(src));
        let question = Question { name: qname, qtype };
        let decision = decide(&current.snapshot, &client, &question, now.0);
        if decision.action != Action::Resolve || decision.logged.is_some() {
            return false;
        }
        if !cache.answer(p, &parsed, now.1, out) {
            let Ok(name) = Name::from_labels(wire_labels(wire_name)) else {
                return false;
            };
            let Some(answer) = self
                .resolver
                .cache()
                .get(&crate::resolve::cache::CacheKey::new(&name, qtype))
            else {
                return false;
            };
            cache.fill(p, &parsed, &name, &answer);
            if !cache.answer(p, &parsed, now.1, out) {
                return false;
            }
        }
        self.counters.hit(decision.reason);
        true
    }

    /// `name CNAME target` (synthesized, `ttl`) followed by the resolved target: safe-search
    /// rewrites and RPZ local-data aliases.
    async fn alias(&self, name: &Name, target: Name, qtype: RecordType, ttl: u32) -> Reply {
        let resolved = self.resolver.resolve(&target, qtype).await;
        let mut answers = vec![Record::from_rdata(
            name.clone(),
            ttl,
            RData::CNAME(CNAME(target)),
        )];
        answers.extend(resolved.answers);
        Reply {
            authorities: resolved.authorities,
            ..Reply::records(resolved.rcode, answers)
        }
    }

    /// An answer from RPZ local data: records of the asked type, or a CNAME (followed).
    async fn local_data(
        &self,
        name: &Name,
        qtype: RecordType,
        local: &[LocalRecord],
        ttl: u32,
    ) -> Reply {
        let mut answers = Vec::new();
        for r in local {
            let rdata = match (r, qtype) {
                (LocalRecord::A(a), RecordType::A) => RData::A(A(*a)),
                (LocalRecord::Aaaa(a), RecordType::AAAA) => RData::AAAA(AAAA(*a)),
                (LocalRecord::Txt(t), RecordType::TXT) => RData::TXT(TXT::new(vec![t.to_string()])),
                _ => continue,
            };
            answers.push(Record::from_rdata(name.clone(), ttl, rdata));
        }
        if !answers.is_empty() {
            return Reply::records(ResponseCode::NoError, answers);
        }
        let cname = local.iter().find_map(|r| match r {
            LocalRecord::Cname(t) => Name::from_ascii(format!("{t}.")).ok(),
            _ => None,
        });
        match cname {
            Some(target) => self.alias(name, target, qtype, ttl).await,
            None => Reply::error(ResponseCode::NoError),
        }
    }
}

fn action_label(a: Action) -> &'static str {
    match a {
        Action::NoData => "nodata",
        Action::Drop => "drop",
        Action::TcpOnly => "tcp_only",
        Action::LocalData { .. } => "local_data",
        Action::Refuse => "refuse",
        Action::Resolve => "resolve",
        Action::Alert => "alert",
        Action::Sinkhole(Page::Cleanup) => "sinkhole",
        Action::Sinkhole(Page::Info) => "info_page",
        Action::NxDomain => "nxdomain",
        Action::Rewrite(_) => "rewrite",
    }
}

/// A/AAAA answers pointing at a page; other types get an empty (NODATA) answer.
fn synthesize(
    name: &Name,
    qtype: RecordType,
    v4: &[Ipv4Addr],
    v6: &[Ipv6Addr],
    ttl: u32,
) -> Vec<Record> {
    match qtype {
        RecordType::A => v4
            .iter()
            .map(|a| Record::from_rdata(name.clone(), ttl, RData::A(A(*a))))
            .collect(),
        RecordType::AAAA => v6
            .iter()
            .map(|a| Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(*a))))
            .collect(),
        _ => Vec::new(),
    }
}

/// The client address as the policy sees it.
pub fn client_ip(request: &Request) -> IpAddr {
    crate::policy::prefix::canonical_ip(request.src().ip())
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let _done = InFlight(self.inflight.clone());

        // EDNS: answer with our own OPT only if the client sent one, never offering more than
        // the client can take (else answers are truncated unexpectedly).
        let mut edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e.set_version(0);
            e
        });
        let bad_version = request.edns.as_ref().is_some_and(|e| e.version() > 0);
        let reply = if bad_version {
            metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => "edns_version").increment(1);
            if let Some(e) = edns.as_mut() {
                e.set_rcode_high(ResponseCode::BADVERS.high());
            }
            Reply::error(ResponseCode::BADVERS)
        } else {
            self.answer(request).await
        };

        if reply.drop {
            // RPZ DROP: no answer at all; the client times out.
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::NoError;
            return hickory_proto::op::Header {
                metadata,
                counts: hickory_proto::op::HeaderCounts::default(),
            }
            .into();
        }
        if let (Some(e), Some((code, text))) = (edns.as_mut(), reply.ede.as_ref()) {
            let mut data = code.to_be_bytes().to_vec();
            data.extend_from_slice(text.as_bytes());
            e.options_mut()
                .insert(EdnsOption::Unknown(EDE_OPTION, data));
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        metadata.response_code = reply.rcode;
        metadata.truncation = reply.truncated;
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = edns.as_ref() {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "failed to send response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                hickory_proto::op::Header {
                    metadata,
                    counts: hickory_proto::op::HeaderCounts::default(),
                }
                .into()
            }
        }
    }
}
