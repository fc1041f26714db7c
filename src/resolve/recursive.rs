//! Iterative resolution from root hints, with hickory's recursor.
//!
//! The IANA root hints are built in (`zones/root.hints`); `resolver.root_hints` points at another
//! file, which is how tests and labs use a private root. Name servers on loopback and private
//! addresses are refused unless `resolver.allow_private_servers` is set (rebinding protection).

use std::net::IpAddr;
use std::time::Instant;

use async_trait::async_trait;
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::recursor::{Recursor, RecursorOptions};

use super::{Answer, Backend, ResolveError};
use crate::config::ResolverConfig;

/// The IANA root hints, as shipped in `zones/root.hints`.
pub const IANA_ROOT_HINTS: &str = include_str!("../../zones/root.hints");

/// The recursive backend.
pub struct Recursive {
    recursor: Recursor<TokioRuntimeProvider>,
}

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

impl Recursive {
    /// Builds the recursor from configuration.
    pub fn new(c: &ResolverConfig) -> Result<Self, ResolveError> {
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
        let mut options = RecursorOptions::default();
        if c.allow_private_servers {
            options.deny_server.clear();
        }
        options.case_randomization = false;
        let recursor = Recursor::with_options(&roots, options, TokioRuntimeProvider::default())
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        Ok(Self { recursor })
    }
}

#[async_trait]
impl Backend for Recursive {
    async fn resolve(&self, name: &Name, qtype: RecordType) -> Result<Answer, ResolveError> {
        let query = Query::query(name.clone(), qtype);
        match self.recursor.resolve(query, Instant::now(), false).await {
            Ok(msg) => {
                let rcode = match msg.metadata.response_code {
                    ResponseCode::NXDomain => ResponseCode::NXDomain,
                    _ => ResponseCode::NoError,
                };
                Ok(Answer::from_message(rcode, msg))
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                let rcode = if e.is_nx_domain() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                // A real negative answer carries the zone's SOA. hickory's recursor also reports
                // "no records" when every server of a parent zone timed out; passing that on as
                // NXDOMAIN would tell clients a name does not exist when the network is down.
                let Some(soa) = e.into_soa() else {
                    return Err(ResolveError::Failed {
                        name: name.to_string(),
                        qtype,
                        message: "negative answer without SOA (servers unreachable?)".into(),
                    });
                };
                let soa = *soa;
                let authorities = vec![Record::from_rdata(soa.name, soa.ttl, RData::SOA(soa.data))];
                Ok(Answer {
                    rcode,
                    answers: Vec::new(),
                    authorities,
                })
            }
            Err(e) => Err(ResolveError::Failed {
                name: name.to_string(),
                qtype,
                message: e.to_string(),
            }),
        }
    }

    fn kind(&self) -> &'static str {
        "recursive"
    }
}
