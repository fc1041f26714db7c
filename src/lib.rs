//! cleanpipe: a protective DNS resolver for ISPs.
//!
//! Infected subscribers are quarantined to a cleanup page, trusted-zone customers get only a
//! curated list of services, whitelisted organisations get alerts instead of blocks, and
//! everyone else is resolved normally.
//!
//! # Layout
//! - [`config`]: the service configuration file (`cleanpipe.yaml`).
//! - [`policy`]: the pure decision core: sources → snapshot → `decide()`.
//! - [`store`]: the current snapshot, reloads (read → compile → swap, or keep the old one).
//! - [`watch`]: file watcher that triggers reloads.
//! - [`state`]: durable runtime state (admin changes, self-releases, detections) in SQLite.
//! - [`alerts`]: organisation alerts, deadlines, revocation, webhook delivery (durable outbox).
//! - [`detect`]: flags subscribers who look up botnet-feed names.
//! - [`misses`]: names trusted-zone clients were denied, per profile ("service broken?").
//! - [`querylog`]: the policy-action log and dnstap.
//! - [`report`]: the CLI's text output.
//! - [`resolve`]: resolution backends (recursive, forward) behind one trait, and the answer cache.
//! - [`notify`]: systemd readiness notification.
//! - [`net`]: connection limits shared by every stream listener (DNS over TCP, HTTP).
//! - [`wire`]: DNS wire format: a query read once, replies written with OPT, EDE and TC.
//! - [`dns`]: the one request path (parse → identify → decide → answer → encode) and the
//!   UDP and TCP transports that feed it.
//! - [`web`]: the admin HTTP API.
//! - [`mail`]: alert e-mails through the ISP's SMTP relay.
//! - [`metrics`]: metric names and their descriptions.
//! - [`xfr`]: threat feeds kept current by AXFR/IXFR with TSIG and NOTIFY.
//! - [`timefmt`]: RFC 3339 times.
//! - [`server`]: wires everything together for `cleanpipe serve`.

pub mod alerts;
pub mod config;
pub mod detect;
pub mod dns;
pub mod mail;
pub mod metrics;
pub mod misses;
pub mod net;
pub mod notify;
pub mod policy;
pub mod querylog;
pub mod report;
pub mod resolve;
pub mod server;
pub mod state;
pub mod store;
pub mod timefmt;
pub mod watch;
pub mod web;
pub mod wire;
pub mod xfr;
