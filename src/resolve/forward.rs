//! Forwarding to upstream resolvers (`resolver.mode: forward`).
//!
//! Every exchange goes through the shared [`Client`] (a pool of long-lived UDP sockets, random
//! IDs and ports, DNS 0x20 that the answer must echo, answers only from the upstream asked,
//! canonical case restored). Truncated answers are retried over TCP. SERVFAIL, REFUSED and
//! timeouts move on to the next upstream; every upstream gets two tries.
//!
//! The forwarder does not validate DNSSEC. Upstreams marked `validator: true` (trusted
//! validating resolvers) are asked with DO, get the client's CD bit, and their AD bit is passed
//! on; AD from any other upstream is ignored.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};

use super::client::{Ask, Client, ExchangeError};
use super::{Answer, Backend, Failure, ResolveError};
use crate::config::ResolverConfig;

/// The forwarding backend.
pub struct Forward {
    upstreams: Vec<SocketAddr>,
    /// Per upstream: a trusted validator.
    validators: Vec<bool>,
    timeout: Duration,
    client: Client,
    /// Upstreams that do not echo the question's letter case, until when they are asked
    /// without the 0x20 mix.
    no_caps: std::sync::Mutex<std::collections::HashMap<SocketAddr, std::time::Instant>>,
}

/// How long an upstream that broke the 0x20 case is asked in plain lowercase.
const NO_CAPS_FOR: Duration = Duration::from_secs(600);

/// Counts an error against its upstream (a configured address: a bounded label).
fn count(e: &ExchangeError, upstream: SocketAddr) {
    metrics::counter!(
        crate::metrics::UPSTREAM_ERRORS,
        "backend" => "forward",
        "kind" => e.kind(),
        "upstream" => upstream.to_string()
    )
    .increment(1);
}

impl Forward {
    /// Builds the forwarder from configuration. Sockets are opened on first use, on the
    /// runtime that resolves.
    pub fn new(c: &ResolverConfig) -> Result<Self, ResolveError> {
        if c.forward.is_empty() {
            return Err(ResolveError::Setup(
                "no upstream in resolver.forward".into(),
            ));
        }
        Ok(Self {
            upstreams: c
                .forward
                .iter()
                .map(|u| SocketAddr::new(u.address, u.port))
                .collect(),
            validators: c.forward.iter().map(|u| u.validator).collect(),
            timeout: Duration::from_secs(c.query_timeout_secs.max(1)),
            client: Client::new(),
            no_caps: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The upstreams, for status output.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// True while `upstream` is asked without the 0x20 mix.
    fn caps_off(&self, upstream: SocketAddr) -> bool {
        self.no_caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&upstream)
            .is_some_and(|until| std::time::Instant::now() < *until)
    }

    fn turn_caps_off(&self, upstream: SocketAddr) {
        let mut m = self.no_caps.lock().unwrap_or_else(|p| p.into_inner());
        if m.insert(upstream, std::time::Instant::now() + NO_CAPS_FOR)
            .is_none_or(|until| std::time::Instant::now() >= until)
        {
            tracing::warn!(%upstream, "upstream does not echo the question's letter case (DNS 0x20): asking it in lowercase for 10 minutes (random IDs and ports still protect the answers)");
        }
    }

    fn ask<'a>(
        &self,
        upstream: SocketAddr,
        name: &'a Name,
        qtype: RecordType,
        caps: bool,
        validator: Option<bool>,
    ) -> Ask<'a> {
        Ask {
            server: upstream,
            name,
            qtype,
            rd: true,
            caps,
            timeout: self.timeout,
            dnssec: validator.is_some(),
            cd: validator == Some(true),
        }
    }
}

#[async_trait]
impl Backend for Forward {
    async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        checking_disabled: bool,
    ) -> Result<Answer, ResolveError> {
        let mut last: Option<ExchangeError> = None;
        for _ in 0..2 {
            for (&upstream, &trusted) in self.upstreams.iter().zip(&self.validators) {
                // A trusted validator: DO (so that it says AD), and the client's CD.
                let v = trusted.then_some(checking_disabled);
                let caps = !self.caps_off(upstream);
                let mut msg = self
                    .client
                    .udp(self.ask(upstream, name, qtype, caps, v))
                    .await;
                if let Err(ExchangeError::CaseMismatch { .. }) = msg {
                    // No 0x20 there: ask again at once in plain lowercase.
                    self.turn_caps_off(upstream);
                    msg = self
                        .client
                        .udp(self.ask(upstream, name, qtype, false, v))
                        .await;
                }
                let msg = match msg {
                    Ok(m) if m.metadata.truncation => {
                        self.client
                            .tcp(self.ask(upstream, name, qtype, false, v))
                            .await
                    }
                    other => other,
                };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        count(&e, upstream);
                        last = Some(e);
                        continue;
                    }
                };
                match msg.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => {
                        let secure = v == Some(false) && msg.metadata.authentic_data;
                        let mut a = Answer::from_response(name, qtype, msg);
                        a.secure = secure;
                        return Ok(a);
                    }
                    rcode => {
                        let e = ExchangeError::Rcode {
                            server: upstream,
                            rcode,
                        };
                        count(&e, upstream);
                        last = Some(e);
                    }
                }
            }
        }
        let failure = match &last {
            Some(ExchangeError::Timeout { .. }) | None => Failure::Unreachable,
            Some(ExchangeError::Io { .. }) => Failure::Network,
            Some(_) => Failure::Other,
        };
        Err(ResolveError::Failed {
            name: name.to_string(),
            qtype,
            failure,
            message: last.map_or_else(|| "no upstream answered".to_owned(), |e| e.to_string()),
        })
    }

    fn kind(&self) -> &'static str {
        "forward"
    }

    fn validates(&self) -> bool {
        self.validators.iter().any(|v| *v)
    }
}
