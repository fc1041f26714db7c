//! Resolution backends behind one trait, and the answer cache in front of them.
//!
//! - [`recursive`]: iterative resolution from root hints (cleanpipe's own resolver), with
//!   DNSSEC validation ([`dnssec`]).
//! - [`forward`]: forwarding to configured upstream resolvers.
//! - [`cache`]: TTL-honouring, size-bounded answer cache shared by both.
//!
//! Backends run on the control runtime (a small multi-thread runtime); the serving threads only
//! touch the cache on a hit, so a slow upstream never stalls the answer path of cached names.
//! Every failure becomes SERVFAIL for the client, never a panic.
//!
//! The request path probes the cache itself (once per query) and calls [`Resolver::fetch`] on a
//! miss: the backend's answer is built into a ready reply once, cached, and served from there.

pub mod cache;
pub mod client;
pub mod dnssec;
pub mod forward;
pub mod recursive;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use async_trait::async_trait;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::{Config, ResolverMode};
use cache::{AnswerCache, CachedAnswer, Key};

/// A resolved answer, ready to be put in a response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// NOERROR, NXDOMAIN or SERVFAIL.
    pub rcode: ResponseCode,
    /// Answer section (the CNAME chain and the records of the asked type).
    pub answers: Vec<Record>,
    /// Authority section (the SOA of negative answers).
    pub authorities: Vec<Record>,
    /// Validated by DNSSEC (every part of it, from the trust anchor down): clients that set DO
    /// or AD get AD=1.
    pub secure: bool,
}

impl Answer {
    /// A server's response to `qname`/`qtype` as an answer, cleaned: only the records that
    /// answer the question are kept - the CNAME chain from `qname` (each link once, even when
    /// the server repeated it) and the records of the asked type at its end - so nothing the
    /// question did not ask for reaches a client or the cache. A chain that ends in NXDOMAIN or
    /// NODATA keeps its CNAMEs (RFC 6604). The authority section keeps the SOA only (negative
    /// caching needs it; NS and glue are not passed on).
    pub fn from_response(qname: &Name, qtype: RecordType, msg: hickory_proto::op::Message) -> Self {
        let rcode = match msg.metadata.response_code {
            ResponseCode::NXDomain => ResponseCode::NXDomain,
            _ => ResponseCode::NoError,
        };
        let mut answers: Vec<Record> = Vec::new();
        let mut current = qname.clone();
        let mut seen: Vec<Name> = vec![current.clone()];
        let push = |answers: &mut Vec<Record>, r: &Record| {
            if !answers.iter().any(|a| a == r) {
                answers.push(r.clone());
            }
        };
        for _ in 0..16 {
            let at = |r: &&Record| r.name.eq_ignore_root(&current);
            let wanted: Vec<&Record> = msg
                .answers
                .iter()
                .filter(at)
                .filter(|r| r.record_type() == qtype || qtype == RecordType::ANY)
                .collect();
            if !wanted.is_empty() {
                for r in wanted {
                    push(&mut answers, r);
                }
                break;
            }
            let cname = msg.answers.iter().filter(at).find_map(|r| match &r.data {
                RData::CNAME(t) if qtype != RecordType::CNAME => Some((r, t.0.clone())),
                _ => None,
            });
            let Some((r, target)) = cname else { break };
            push(&mut answers, r);
            if seen.iter().any(|s| s.eq_ignore_root(&target)) {
                break; // a CNAME loop: the chain ends here
            }
            seen.push(target.clone());
            current = target;
        }
        Self {
            rcode,
            answers,
            authorities: msg
                .authorities
                .into_iter()
                .filter(|r| r.record_type() == RecordType::SOA)
                .take(1)
                .collect(),
            secure: false,
        }
    }

    /// A SERVFAIL with no records.
    pub fn servfail() -> Self {
        Self {
            rcode: ResponseCode::ServFail,
            answers: Vec::new(),
            authorities: Vec::new(),
            secure: false,
        }
    }
}

/// What kind of failure a resolution ended in, for the Extended DNS Error of the SERVFAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No server of the zone answered (EDE 22, No Reachable Authority).
    Unreachable,
    /// Sending or receiving failed (EDE 23, Network Error).
    Network,
    /// DNSSEC validation failed (EDE 6, DNSSEC Bogus).
    Bogus,
    /// Anything else (lame servers, refusals, loops): no EDE.
    Other,
}

impl Failure {
    /// The Extended DNS Error info code and text of the SERVFAIL.
    pub fn ede(self) -> Option<(u16, &'static str)> {
        match self {
            Failure::Unreachable => Some((22, "cleanpipe: no authoritative server answered")),
            Failure::Network => Some((23, "cleanpipe: network error reaching the servers")),
            Failure::Bogus => Some((6, "cleanpipe: DNSSEC validation failed")),
            Failure::Other => None,
        }
    }
}

/// Why a backend could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The backend failed (timeout, unreachable servers, lame delegation...).
    #[error("resolution of {name} {qtype} failed: {message}")]
    Failed {
        /// Name asked.
        name: String,
        /// Type asked.
        qtype: RecordType,
        /// What kind of failure.
        failure: Failure,
        /// What happened.
        message: String,
    },
    /// The backend could not be built.
    #[error("resolver setup: {0}")]
    Setup(String),
}

/// A resolution backend: returns NOERROR/NXDOMAIN answers, or an error for everything else.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Resolves one question. `name` is fully qualified.
    /// Resolves one question. `name` is fully qualified; `checking_disabled` (the client's CD
    /// bit) skips DNSSEC validation.
    async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        checking_disabled: bool,
    ) -> Result<Answer, ResolveError>;
    /// A label for logs and metrics (`recursive`, `forward`).
    fn kind(&self) -> &'static str;
    /// True when answers are DNSSEC-validated (CD then makes a difference).
    fn validates(&self) -> bool {
        false
    }
}

/// The configured backend with the answer cache in front of it.
pub struct Resolver {
    backend: Arc<dyn Backend>,
    cache: Arc<AnswerCache>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    /// `cache.prefetch`.
    prefetch: bool,
    /// The backend validates DNSSEC.
    validates: bool,
    /// Questions on their way upstream, by cache key: joined, not asked twice.
    inflight: Arc<Mutex<HashMap<Box<[u8]>, Fetch>>>,
}

/// A fetch that several requests can wait for.
type Fetch = Shared<BoxFuture<'static, Option<Arc<CachedAnswer>>>>;

impl Resolver {
    /// Builds the backend named by the configuration. Backend work is spawned on `runtime`.
    pub fn from_config(
        config: &Config,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, ResolveError> {
        let backend: Arc<dyn Backend> = match config.resolver.mode {
            ResolverMode::Recursive => {
                Arc::new(recursive::RecursiveBackend::new(&config.resolver)?)
            }
            ResolverMode::Forward => Arc::new(forward::Forward::new(&config.resolver)?),
        };
        Ok(Self::new(
            backend,
            AnswerCache::new(&config.cache),
            runtime,
            config,
        ))
    }

    /// Assembles a resolver from parts (tests use their own backend).
    pub fn new(
        backend: Arc<dyn Backend>,
        cache: AnswerCache,
        runtime: tokio::runtime::Handle,
        config: &Config,
    ) -> Self {
        Self {
            validates: backend.validates(),
            backend,
            cache: Arc::new(cache),
            runtime,
            timeout: Duration::from_secs(config.resolver.resolution_timeout_secs.max(1)),
            prefetch: config.cache.prefetch,
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// True when popular entries are refreshed before they expire (`cache.prefetch`).
    pub fn prefetches(&self) -> bool {
        self.prefetch
    }

    /// True when answers are DNSSEC-validated (a client's CD bit then selects unvalidated
    /// answers, cached apart).
    pub fn validates(&self) -> bool {
        self.validates
    }

    /// The backend kind.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// The answer cache.
    pub fn cache(&self) -> &AnswerCache {
        &self.cache
    }

    /// Resolves a question the cache did not hold (bounded by the resolution timeout), builds
    /// the reply once, caches it and returns it. Failures become a SERVFAIL reply, remembered
    /// for `cache.servfail_ttl`. `None` only when not even that could be encoded (the caller
    /// answers SERVFAIL itself).
    ///
    /// Identical questions already on their way upstream are not asked again: the newcomer
    /// waits for the same answer (100 clients asking one name cost one upstream query).
    pub async fn fetch(
        &self,
        key: &Key,
        name: &Name,
        qtype: RecordType,
    ) -> Option<Arc<CachedAnswer>> {
        metrics::counter!(crate::metrics::CACHE_MISSES).increment(1);
        let k: Box<[u8]> = key.bytes().into();
        let shared = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&k) {
                Some(f) => {
                    metrics::counter!(crate::metrics::UPSTREAM_JOINED).increment(1);
                    f.clone()
                }
                None => {
                    let (inflight_map, k2) = (self.inflight.clone(), k.clone());
                    let work = Self::fetch_once(
                        self.backend.clone(),
                        self.cache.clone(),
                        self.runtime.clone(),
                        self.timeout,
                        *key,
                        name.clone(),
                        qtype,
                    );
                    let f = async move {
                        let r = work.await;
                        // Done: later questions start a fetch of their own.
                        inflight_map
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&k2);
                        r
                    }
                    .boxed()
                    .shared();
                    inflight.insert(k, f.clone());
                    f
                }
            }
        };
        shared.await
    }

    /// One upstream resolution, its reply built and cached.
    async fn fetch_once(
        backend: Arc<dyn Backend>,
        cache: Arc<AnswerCache>,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
        key: Key,
        name: Name,
        qtype: RecordType,
    ) -> Option<Arc<CachedAnswer>> {
        let kind = backend.kind();
        let fqdn = {
            let mut n = name.to_lowercase();
            n.set_fqdn(true);
            n
        };
        let asked = fqdn.clone();
        let task = runtime.spawn(async move {
            let started = Instant::now();
            let cd = key.checking_disabled();
            let r = match tokio::time::timeout(timeout, backend.resolve(&asked, qtype, cd)).await {
                Ok(r) => r,
                Err(_) => {
                    metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "backend" => kind, "kind" => "timeout")
                        .increment(1);
                    Err(ResolveError::Failed {
                        name: asked.to_string(),
                        qtype,
                        failure: Failure::Unreachable,
                        message: format!("no answer within {} s", timeout.as_secs()),
                    })
                }
            };
            metrics::histogram!(crate::metrics::UPSTREAM_RTT, "backend" => kind)
                .record(started.elapsed().as_secs_f64());
            r
        });
        let (answer, ede) = match task.await {
            Ok(Ok(answer)) => (answer, None),
            Ok(Err(e)) => {
                metrics::counter!(crate::metrics::UPSTREAM_FAILURES, "backend" => kind)
                    .increment(1);
                tracing::debug!(error = %e, "resolution failed");
                // Serve-stale (RFC 8767): the expired answer, rather than a failure.
                if let Some(old) = cache.get_stale(&key, Instant::now()) {
                    metrics::counter!(crate::metrics::STALE_ANSWERS).increment(1);
                    let a = Arc::new(old.stale_copy(Instant::now()));
                    cache.insert(&key, a.clone());
                    return Some(a);
                }
                let ede = match &e {
                    ResolveError::Failed { failure, .. } => failure.ede(),
                    ResolveError::Setup(_) => None,
                };
                (Answer::servfail(), ede)
            }
            Err(e) => {
                tracing::error!(error = %e, "resolution task failed");
                (Answer::servfail(), None)
            }
        };
        let ttl = cache.ttl_for(&answer);
        let built = cache.build(&fqdn, qtype, &answer, ttl).or_else(|| {
            tracing::debug!(name = %fqdn, %qtype, "answer could not be encoded");
            CachedAnswer::servfail(&fqdn, qtype, cache.servfail_ttl())
        });
        let a = Arc::new(built?.with_ede(ede));
        cache.insert(&key, a.clone());
        Some(a)
    }

    /// Refreshes an entry in the background (prefetch): the cached answer keeps serving until
    /// the new one replaces it.
    pub fn prefetch(self: &Arc<Self>, key: &Key, name: &Name, qtype: RecordType) {
        metrics::counter!(crate::metrics::PREFETCHES).increment(1);
        let (me, key, name) = (self.clone(), *key, name.clone());
        self.runtime.spawn(async move {
            let _ = me.fetch(&key, &name, qtype).await;
        });
    }

    /// The records for a question, from the cache or resolved: for answers cleanpipe composes
    /// (a safe-search CNAME followed by its target).
    pub async fn resolve(&self, name: &Name, qtype: RecordType) -> Answer {
        let Some(key) = Key::from_name(name, qtype, 0) else {
            return Answer::servfail();
        };
        let now = Instant::now();
        let hit = match self.cache.get(&key, now) {
            Some(hit) => {
                metrics::counter!(crate::metrics::CACHE_HITS).increment(1);
                Some(hit)
            }
            None => self.fetch(&key, name, qtype).await,
        };
        hit.and_then(|h| h.answer(now))
            .unwrap_or_else(Answer::servfail)
    }
}
