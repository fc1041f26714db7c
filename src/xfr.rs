//! Threat feeds kept current by zone transfer from a primary server.
//!
//! Each feed with a `primary` gets a task: a full transfer (AXFR) first, then incremental
//! transfers (IXFR, RFC 1995) when the SOA refresh timer fires or the primary sends a NOTIFY
//! (RFC 1996). Transfers are signed and verified with TSIG (RFC 8945) when a key is configured.
//! The zone is rebuilt and the policy recompiled in the background; queries keep using the old
//! snapshot until the new one is swapped in. A failed transfer keeps the last good copy and is
//! retried after the SOA retry interval.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use hickory_net::DnsHandle;
use hickory_net::DnsMultiplexer;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message, Query};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, RData, Record, RecordType, TSigner};
use tokio::sync::Notify;

use crate::config::{FeedConfig, TsigConfig};
use crate::policy::rpz;
use crate::store::PolicyStore;

/// A transfer that failed.
#[derive(Debug, thiserror::Error)]
pub enum XfrError {
    /// The TSIG key is unusable.
    #[error("feed {feed}: TSIG key: {message}")]
    Key {
        /// Feed.
        feed: String,
        /// Why.
        message: String,
    },
    /// Network or protocol failure.
    #[error("feed {feed}: transfer from {primary}: {message}")]
    Transfer {
        /// Feed.
        feed: String,
        /// Primary.
        primary: SocketAddr,
        /// Why.
        message: String,
    },
}

/// Routes NOTIFY messages to the feed tasks.
#[derive(Clone, Default)]
pub struct Notifier {
    feeds: Arc<HashMap<String, (IpAddr, Arc<Notify>)>>,
}

impl Notifier {
    /// Wakes the feed for `zone` if `source` is its primary; returns whether it was accepted.
    pub fn notify(&self, zone: &str, source: IpAddr) -> bool {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        match self.feeds.get(&zone) {
            Some((primary, n)) if crate::policy::prefix::canonical_ip(source) == *primary => {
                n.notify_one();
                true
            }
            _ => false,
        }
    }

    /// True when no feed is transferred.
    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }
}

fn signer(feed: &str, t: &TsigConfig) -> Result<TSigner, XfrError> {
    let key = |message: String| XfrError::Key {
        feed: feed.to_owned(),
        message,
    };
    let secret = base64::engine::general_purpose::STANDARD
        .decode(t.secret.trim())
        .map_err(|e| key(format!("secret is not base64: {e}")))?;
    let algorithm = match t.algorithm.as_str() {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        other => return Err(key(format!("unsupported algorithm {other}"))),
    };
    let name = Name::from_ascii(&t.name).map_err(|e| key(format!("bad key name: {e}")))?;
    TSigner::new(secret, algorithm, name, 300).map_err(|e| key(e.to_string()))
}

/// Starts one task per transferred feed on the current runtime.
pub fn spawn(store: Arc<PolicyStore>) -> Result<Notifier, XfrError> {
    let mut feeds = HashMap::new();
    for f in store.feed_configs().iter().filter(|f| f.primary.is_some()) {
        let (Some(primary), Some(zone)) = (f.primary, f.zone.clone()) else {
            continue;
        };
        let tsig = f.tsig.as_ref().map(|t| signer(&f.name, t)).transpose()?;
        let wake = Arc::new(Notify::new());
        feeds.insert(
            zone.trim_end_matches('.').to_ascii_lowercase(),
            (primary.ip(), wake.clone()),
        );
        tokio::spawn(run(store.clone(), f.clone(), primary, zone, tsig, wake));
    }
    Ok(Notifier {
        feeds: Arc::new(feeds),
    })
}

/// The zone's content as presentation lines (owner, type, data; no TTL), the unit IXFR adds
/// and deletes.
#[derive(Default)]
struct ZoneCopy {
    soa: Option<(Record, SOA)>,
    lines: HashSet<String>,
}

fn line(r: &Record) -> Option<String> {
    let data = match &r.data {
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s).replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(" "),
        RData::SOA(_) => return None,
        d => d.to_string(),
    };
    Some(format!(
        "{} {} {}",
        r.name.to_ascii(),
        r.record_type(),
        data
    ))
}

fn soa_of(r: &Record) -> Option<SOA> {
    match &r.data {
        RData::SOA(s) => Some(s.clone()),
        _ => None,
    }
}

impl ZoneCopy {
    /// Applies an AXFR or IXFR answer (all records of every message, in order). Returns
    /// `(kind, deleted, added)`.
    fn apply(&mut self, records: &[Record]) -> Result<(&'static str, usize, usize), String> {
        let first = records.first().ok_or("empty transfer")?;
        let new_soa = soa_of(first).ok_or("transfer does not start with an SOA")?;
        if records.len() == 1 {
            return Ok(("up-to-date", 0, 0));
        }
        let incremental = records
            .get(1)
            .is_some_and(|r| r.record_type() == RecordType::SOA)
            && records.len() > 2;
        let last = records
            .last()
            .and_then(soa_of)
            .ok_or("transfer does not end with an SOA")?;
        if last.serial != new_soa.serial {
            return Err("incomplete transfer (final SOA missing)".into());
        }
        let (mut deleted, mut added) = (0, 0);
        if incremental {
            // SOA(new) [SOA(old) deletions... SOA(next) additions...]+ SOA(new)
            let mut deleting = false;
            for r in &records[1..records.len() - 1] {
                if r.record_type() == RecordType::SOA {
                    deleting = !deleting;
                    continue;
                }
                let Some(l) = line(r) else { continue };
                if deleting {
                    deleted += usize::from(self.lines.remove(&l));
                } else {
                    added += usize::from(self.lines.insert(l));
                }
            }
        } else {
            self.lines = records[1..records.len() - 1]
                .iter()
                .filter_map(line)
                .collect();
            added = self.lines.len();
        }
        self.soa = Some((first.clone(), new_soa));
        Ok((if incremental { "IXFR" } else { "AXFR" }, deleted, added))
    }

    fn zone_text(&self) -> String {
        let mut text = String::with_capacity(self.lines.len() * 40 + 128);
        if let Some((r, soa)) = &self.soa {
            text.push_str(&format!(
                "{} SOA {} {} {} {} {} {} {}\n",
                r.name.to_ascii(),
                soa.mname.to_ascii(),
                soa.rname.to_ascii(),
                soa.serial,
                soa.refresh,
                soa.retry,
                soa.expire,
                soa.minimum
            ));
        }
        for l in &self.lines {
            text.push_str(l);
            text.push('\n');
        }
        text
    }
}

async fn transfer(
    primary: SocketAddr,
    zone: &Name,
    last: Option<SOA>,
    tsig: Option<&TSigner>,
) -> Result<Vec<Record>, String> {
    let (connect, handle) = TcpClientStream::new(
        primary,
        None,
        Some(Duration::from_secs(10)),
        TokioRuntimeProvider::default(),
    );
    let stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut mux = DnsMultiplexer::new(stream, handle).with_timeout(Duration::from_secs(30));
    if let Some(s) = tsig {
        mux = mux.with_signer(s.clone());
    }
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(mux);
    let bg = tokio::spawn(bg);
    // Built here rather than with hickory's `zone_transfer`, which asserts that the zone name
    // equals the SOA's MNAME (a panic on ordinary zones) and names the IXFR authority record
    // after the MNAME instead of the zone.
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = false;
    let ixfr = last.is_some();
    m.add_query(Query::query(
        zone.clone(),
        if ixfr {
            RecordType::IXFR
        } else {
            RecordType::AXFR
        },
    ));
    if let Some(soa) = last {
        m.add_authority(Record::from_rdata(zone.clone(), 0, RData::SOA(soa)));
    }
    let mut options = DnsRequestOptions::default();
    options.recursion_desired = false;
    let mut responses = client.send(DnsRequest::new(m, options));
    let mut records: Vec<Record> = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(r) = responses.next().await {
            let r = r.map_err(|e| explain_error(&e.to_string(), tsig.is_some()))?;
            if r.metadata.response_code != hickory_proto::op::ResponseCode::NoError {
                return Err(format!("primary answered {}", r.metadata.response_code));
            }
            records.extend(r.answers.iter().cloned());
            // IXFR: a lone SOA in the first message means "no change".
            if ixfr && records.len() == 1 && r.answers.len() == 1 {
                return Ok(());
            }
            if transfer_complete(&records) {
                return Ok(());
            }
        }
        Err("connection closed before the transfer completed".to_owned())
    })
    .await;
    bg.abort();
    result.map_err(|_| "transfer timed out".to_owned())??;
    Ok(records)
}

/// An error of the transfer client in words an operator can act on. A primary that rejects our
/// TSIG key answers with an unsigned (or empty-MAC) error message, which hickory 0.26 reports
/// as "support truncated HMACs": that is a key mismatch, not a bug to file.
fn explain_error(e: &str, signed: bool) -> String {
    if signed && e.contains("truncated HMAC") {
        "the primary rejected our TSIG signature (wrong key secret, name or algorithm?)".into()
    } else {
        e.to_owned()
    }
}

/// True when the records received so far form a whole AXFR or IXFR answer: a single SOA (zone
/// unchanged), or the opening SOA repeated at the end (twice more for an incremental answer,
/// where it also opens the last set of additions).
fn transfer_complete(records: &[Record]) -> bool {
    let Some(new) = records.first().and_then(soa_of) else {
        return !records.is_empty(); // not a transfer: let apply() report it
    };
    if records.len() == 1 {
        return false; // one SOA so far: wait for the message to end (see below)
    }
    let incremental = records
        .get(1)
        .and_then(soa_of)
        .is_some_and(|s| s.serial != new.serial);
    let closing = records
        .iter()
        .skip(1)
        .filter(|r| soa_of(r).is_some_and(|s| s.serial == new.serial))
        .count();
    let last_is_new = records
        .last()
        .and_then(soa_of)
        .is_some_and(|s| s.serial == new.serial);
    last_is_new && closing >= if incremental { 2 } else { 1 }
}

async fn run(
    store: Arc<PolicyStore>,
    feed: FeedConfig,
    primary: SocketAddr,
    zone: String,
    tsig: Option<TSigner>,
    wake: Arc<Notify>,
) {
    let name = match Name::from_ascii(format!("{}.", zone.trim_end_matches('.'))) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(feed = %feed.name, error = %e, "bad zone name");
            return;
        }
    };
    let mut copy = ZoneCopy::default();
    loop {
        let last = copy.soa.as_ref().map(|(_, s)| s.clone());
        let outcome = match transfer(primary, &name, last, tsig.as_ref()).await {
            Ok(records) => copy.apply(&records),
            Err(e) => Err(e),
        };
        let wait = match outcome {
            Ok((kind, deleted, added)) => {
                if kind != "up-to-date" {
                    let text = copy.zone_text();
                    let display = format!("{} (transferred from {primary})", feed.name);
                    let z = zone.clone();
                    let parsed =
                        tokio::task::spawn_blocking(move || rpz::parse(&display, &text, Some(&z)))
                            .await;
                    match parsed {
                        Ok(Ok(compiled)) => {
                            tracing::info!(feed = %feed.name, kind, deleted, added, serial = compiled.serial, triggers = compiled.len(), "feed transferred");
                            metrics::counter!(crate::metrics::FEED_TRANSFERS, "kind" => kind)
                                .increment(1);
                            store.set_transferred(&feed.name, Arc::new(compiled));
                            let s = store.clone();
                            let _ = tokio::task::spawn_blocking(move || s.reload()).await;
                        }
                        Ok(Err(errs)) => {
                            metrics::counter!(crate::metrics::FEED_TRANSFER_FAILURES).increment(1);
                            tracing::error!(feed = %feed.name, first = %errs.first().map(|e| e.to_string()).unwrap_or_default(), errors = errs.len(), "transferred feed is invalid; keeping the last good copy");
                            copy = ZoneCopy::default(); // start again with a full transfer
                        }
                        Err(e) => {
                            tracing::error!(feed = %feed.name, error = %e, "feed parse task failed")
                        }
                    }
                }
                let refresh = copy
                    .soa
                    .as_ref()
                    .map_or(300, |(_, s)| s.refresh.max(1) as u64);
                Duration::from_secs(feed.refresh_secs.unwrap_or(refresh.min(3600)))
            }
            Err(e) => {
                metrics::counter!(crate::metrics::FEED_TRANSFER_FAILURES).increment(1);
                tracing::warn!(feed = %feed.name, %primary, error = %e, "feed transfer failed; keeping the last good copy");
                let retry = copy.soa.as_ref().map_or(30, |(_, s)| s.retry.max(1) as u64);
                Duration::from_secs(retry.min(feed.refresh_secs.unwrap_or(3600)).min(300))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => tracing::debug!(feed = %feed.name, "NOTIFY received"),
        }
    }
}
