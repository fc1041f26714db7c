//! Forwarding to upstream resolvers (`resolver.mode: forward`).
//!
//! Uses hickory's stub resolver with UDP and TCP to each upstream, hosts file never consulted.
//! Its own cache is kept small: cleanpipe's answer cache sits in front of it.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::Resolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::{Answer, Backend, ResolveError};
use crate::config::ResolverConfig;

/// The forwarding backend.
pub struct Forward {
    resolver: Resolver<TokioRuntimeProvider>,
    upstreams: Vec<SocketAddr>,
}

impl Forward {
    /// Builds the forwarder from configuration.
    pub fn new(c: &ResolverConfig) -> Result<Self, ResolveError> {
        let mut servers = Vec::new();
        let mut upstreams = Vec::new();
        for u in &c.forward {
            let mut udp = ConnectionConfig::udp();
            udp.port = u.port;
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = u.port;
            servers.push(NameServerConfig::new(u.address, true, vec![udp, tcp]));
            upstreams.push(SocketAddr::new(u.address, u.port));
        }
        let mut builder = Resolver::builder_with_config(
            HickoryConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = Duration::from_secs(c.query_timeout_secs.max(1));
        opts.attempts = 2;
        opts.cache_size = 1024;
        opts.ndots = 0;
        opts.preserve_intermediates = true;
        let resolver = builder
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        Ok(Self {
            resolver,
            upstreams,
        })
    }

    /// The upstreams, for status output.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }
}

#[async_trait]
impl Backend for Forward {
    async fn resolve(&self, name: &Name, qtype: RecordType) -> Result<Answer, ResolveError> {
        match self.resolver.lookup(name.clone(), qtype).await {
            Ok(lookup) => Ok(Answer {
                rcode: ResponseCode::NoError,
                answers: lookup.answers().to_vec(),
                authorities: Vec::new(),
            }),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                let rcode = if e.is_nx_domain() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                let authorities = e
                    .into_soa()
                    .map(|soa| {
                        let soa = *soa;
                        vec![Record::from_rdata(soa.name, soa.ttl, RData::SOA(soa.data))]
                    })
                    .unwrap_or_default();
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
        "forward"
    }
}
