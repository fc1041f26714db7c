//! Threat feeds kept current by zone transfer from a primary server.
//!
//! Each feed with a `primary` gets a task: a full transfer (AXFR) first, then incremental
//! transfers (IXFR, RFC 1995) when the SOA refresh timer fires or the primary sends a NOTIFY
//! (RFC 1996). Transfers are signed and verified with TSIG (RFC 8945) when a key is configured.
//! The zone is rebuilt and the policy recompiled in the background; queries keep using the old
//! snapshot until the new one is swapped in. A failed transfer keeps the last good copy and is
//! retried after the SOA retry interval.
//!
//! Like a BIND or Unbound secondary, cleanpipe keeps the last good copy of every transferred
//! zone on disk (`state.feeds_dir`, one zone file per feed, written atomically after each
//! transfer) and loads it at start-up before the first answer ([`load_saved`]), so a restart
//! while the primary is unreachable never answers listed names unfiltered. The first transfer
//! after start-up is incremental from the saved serial. A copy the primary has not confirmed
//! for `max_age_hours` is reported stale (log, status, `cleanpipe_feed_age_seconds`) and still
//! used: an old list blocks more than none.

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

use crate::config::{Config, FeedConfig, TsigConfig};
use crate::policy::rpz;
use crate::store::{PolicyStore, TransferredFeed};

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

/// Starts one task per transferred feed on the current runtime; copies are saved in
/// `feeds_dir`.
pub fn spawn(store: Arc<PolicyStore>, feeds_dir: std::path::PathBuf) -> Result<Notifier, XfrError> {
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
        tokio::spawn(run(
            store.clone(),
            f.clone(),
            primary,
            zone,
            tsig,
            wake,
            feeds_dir.clone(),
        ));
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
    /// A copy read back from its saved zone text ([`ZoneCopy::zone_text`]): the SOA line, then
    /// one record per line in the form [`line`] writes.
    fn from_saved(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let soa_line = lines.next()?;
        let f: Vec<&str> = soa_line.split_whitespace().collect();
        let [
            owner,
            "SOA",
            mname,
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        ] = f[..]
        else {
            return None;
        };
        let name = |s: &str| Name::from_ascii(s).ok();
        let num = |s: &str| s.parse::<u32>().ok();
        let soa = SOA::new(
            name(mname)?,
            name(rname)?,
            num(serial)?,
            i32::try_from(num(refresh)?).ok()?,
            i32::try_from(num(retry)?).ok()?,
            i32::try_from(num(expire)?).ok()?,
            num(minimum)?,
        );
        let record = Record::from_rdata(name(owner)?, 0, RData::SOA(soa.clone()));
        Some(Self {
            soa: Some((record, soa)),
            lines: lines
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

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

/// The file holding the last good copy of a feed.
pub fn saved_path(dir: &std::path::Path, feed: &str) -> std::path::PathBuf {
    let safe: String = feed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.rpz"))
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, synced, renamed
/// over the old copy, directory synced. A crash leaves the old copy or the new one, never half.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Loads the saved copy of every transferred feed (missing ones are skipped; an unreadable or
/// invalid copy is logged and skipped). Called before the first policy is compiled.
pub fn load_saved(config: &Config) -> HashMap<String, TransferredFeed> {
    let dir = config.state.feeds_dir();
    let mut out = HashMap::new();
    for f in config.feeds.iter().filter(|f| f.primary.is_some()) {
        let path = saved_path(&dir, &f.name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::error!(feed = %f.name, path = %path.display(), error = %e, "cannot read the saved copy of a transferred feed");
                continue;
            }
        };
        let confirmed_at = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        match rpz::parse(&path.display().to_string(), &text, f.zone.as_deref()) {
            Ok(zone) => {
                let age = unix_now() - confirmed_at;
                tracing::info!(feed = %f.name, serial = zone.serial, triggers = zone.len(), age_secs = age, "loaded the saved copy of a transferred feed");
                warn_if_stale(f, confirmed_at, unix_now());
                out.insert(
                    f.name.clone(),
                    TransferredFeed {
                        zone: Arc::new(zone),
                        confirmed_at,
                        origin: "saved copy",
                    },
                );
            }
            Err(errs) => {
                tracing::error!(feed = %f.name, path = %path.display(), errors = errs.len(), first = %errs.first().map(|e| e.to_string()).unwrap_or_default(), "the saved copy of a transferred feed is invalid; waiting for a transfer");
            }
        }
    }
    out
}

/// Seconds past which a feed's copy is stale.
fn max_age_secs(feed: &FeedConfig) -> i64 {
    (feed.max_age_hours * 3600.0) as i64
}

/// Warns (and returns true) when the copy confirmed at `confirmed_at` is stale at `now`.
fn warn_if_stale(feed: &FeedConfig, confirmed_at: i64, now: i64) -> bool {
    let age = now - confirmed_at;
    metrics::gauge!(crate::metrics::FEED_AGE, "feed" => feed.name.clone()).set(age as f64);
    if age > max_age_secs(feed) {
        tracing::warn!(feed = %feed.name, age_hours = age / 3600, max_age_hours = feed.max_age_hours, "threat feed copy is stale: its primary has not confirmed it within max_age_hours; the copy stays in use");
        return true;
    }
    false
}

/// Keeps a feed's age metric current and warns when its copy turns stale: at once, then at
/// most hourly while it stays stale.
async fn watch_age(store: Arc<PolicyStore>, feed: FeedConfig) {
    let period = Duration::from_secs((max_age_secs(&feed) / 4).clamp(1, 60) as u64);
    let mut warned_at: Option<i64> = None;
    loop {
        tokio::time::sleep(period).await;
        let Some(t) = store.transferred(&feed.name) else {
            continue;
        };
        let now = unix_now();
        if now - t.confirmed_at <= max_age_secs(&feed) {
            warned_at = None;
        }
        if warned_at.is_none_or(|w| now - w >= 3600) {
            if warn_if_stale(&feed, t.confirmed_at, now) {
                warned_at = Some(now);
            }
        } else {
            metrics::gauge!(crate::metrics::FEED_AGE, "feed" => feed.name.clone())
                .set((now - t.confirmed_at) as f64);
        }
    }
}

async fn run(
    store: Arc<PolicyStore>,
    feed: FeedConfig,
    primary: SocketAddr,
    zone: String,
    tsig: Option<TSigner>,
    wake: Arc<Notify>,
    feeds_dir: std::path::PathBuf,
) {
    let name = match Name::from_ascii(format!("{}.", zone.trim_end_matches('.'))) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(feed = %feed.name, error = %e, "bad zone name");
            return;
        }
    };
    let saved = saved_path(&feeds_dir, &feed.name);
    // Continue from the saved copy (IXFR from its serial) when it is the one in force.
    let mut copy = match store.transferred(&feed.name) {
        Some(t) => std::fs::read_to_string(&saved)
            .ok()
            .and_then(|text| ZoneCopy::from_saved(&text))
            .filter(|c| c.soa.as_ref().map(|(_, s)| s.serial) == Some(t.zone.serial))
            .unwrap_or_default(),
        None => ZoneCopy::default(),
    };
    tokio::spawn(watch_age(store.clone(), feed.clone()));
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
                            metrics::gauge!(crate::metrics::FEED_SERIAL, "feed" => feed.name.clone())
                                .set(f64::from(compiled.serial));
                            store.set_transferred(&feed.name, Arc::new(compiled), unix_now());
                            let (s, path, text) = (store.clone(), saved.clone(), copy.zone_text());
                            let _ = tokio::task::spawn_blocking(move || {
                                if let Err(e) = write_atomically(&path, &text) {
                                    tracing::error!(path = %path.display(), error = %e, "cannot save the transferred feed (it is in force, but a restart would wait for the primary)");
                                }
                                s.reload()
                            })
                            .await;
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
                if kind == "up-to-date" {
                    store.confirm_transferred(&feed.name, unix_now());
                    // The saved copy's age is its modification time: confirmed means fresh.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&saved)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                }
                metrics::gauge!(crate::metrics::FEED_AGE, "feed" => feed.name.clone()).set(0.0);
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
