//! Query logs for operators: a JSON line per policy action (`log.actions`), and dnstap
//! (`log.dnstap`: Frame Streams over a Unix socket, the format BIND, Unbound, Knot and PowerDNS
//! write) for existing query-log pipelines.
//!
//! Only policy actions are logged unless `all_queries` is set: sinkholes, blocks (feeds, trusted
//! zones, canaries, bypass list), organisation alerts and log-only feed matches. Client
//! addresses are truncated (/24, /48) by default, or hashed with a key, or kept whole, as
//! configured. The request path never waits for a log: events go through a bounded queue to
//! one writer thread, and are dropped (and counted) when it is full or the collector is away.

use std::io::{BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{ActionLogConfig, ClientPrivacy, DnstapConfig};

/// Metric: events dropped, by `output` (queue, dnstap).
pub const DROPPED: &str = "cleanpipe_querylog_dropped_total";
const QUEUE: usize = 16_384;

/// What the policy did with a query, for the logs.
#[derive(Debug, Clone)]
pub struct Note {
    /// Decision action label (`sinkhole`, `nxdomain`...).
    pub action: &'static str,
    /// Decision reason label (`quarantined`, `threat_feed`...).
    pub reason: &'static str,
    /// The feed, family, organisation or profile involved.
    pub detail: String,
    /// Query name.
    pub qname: String,
    /// Query type.
    pub qtype: u16,
    /// A policy action (false: a normal query, logged only with `all_queries`).
    pub policy: bool,
}

/// One answered query.
#[derive(Debug)]
pub struct Event {
    /// When the answer was sent.
    pub at: SystemTime,
    /// The client.
    pub client: SocketAddr,
    /// Our address (for dnstap's response address; unspecified when unknown).
    pub server: SocketAddr,
    /// `udp`, `tcp`, `tls`, `https`.
    pub transport: &'static str,
    /// The query as received.
    pub query: Vec<u8>,
    /// The answer as sent.
    pub response: Vec<u8>,
    /// What the policy did.
    pub note: Note,
}

/// The logs' front end, shared by every serving thread.
pub struct QueryLog {
    tx: SyncSender<Event>,
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Normal queries wanted by some output.
    all: bool,
}

impl QueryLog {
    /// Starts the writer thread for the configured outputs; `None` when none is configured.
    pub fn start(actions: Option<&ActionLogConfig>, dnstap: Option<&DnstapConfig>) -> Option<Self> {
        if actions.is_none() && dnstap.is_none() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let json = actions.map(|a| JsonOut {
            path: a.path.clone(),
            privacy: Privacy::new(a.client, a.hash_key.as_deref()),
            all: a.all_queries,
            file: None,
            checked: Instant::now(),
        });
        let tap = dnstap.map(|d| TapOut {
            socket: d.socket.clone(),
            identity: d.identity.clone().unwrap_or_else(hostname),
            privacy: Privacy::new(d.client, d.hash_key.as_deref()),
            all: d.all_queries,
            conn: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(250),
        });
        let all = actions.is_some_and(|a| a.all_queries) || dnstap.is_some_and(|d| d.all_queries);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = std::thread::Builder::new()
            .name("querylog".into())
            .spawn(move || run(rx, &flag, json, tap))
            .ok()?;
        Some(Self {
            tx,
            stop,
            worker: Mutex::new(Some(worker)),
            all,
        })
    }

    /// True when normal queries are logged too (their notes are worth building).
    pub fn wants_all(&self) -> bool {
        self.all
    }

    /// Queues an event; never blocks.
    pub fn emit(&self, e: Event) {
        match self.tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::counter!(DROPPED, "output" => "queue").increment(1);
            }
        }
    }

    /// Writes what is queued, ends the dnstap stream properly, and stops the writer (at most
    /// about two seconds).
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

impl Drop for QueryLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "cleanpipe".into())
}

/// How client addresses are written.
struct Privacy {
    mode: ClientPrivacy,
    key: ring::hmac::Key,
}

impl Privacy {
    fn new(mode: ClientPrivacy, key: Option<&str>) -> Self {
        let key = match key {
            Some(k) => k.as_bytes().to_vec(),
            None => (0..32).map(|_| rand::random::<u8>()).collect(),
        };
        Self {
            mode,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        }
    }

    /// The address bytes as logged (4 or 16 bytes).
    fn bytes(&self, ip: IpAddr) -> Vec<u8> {
        let ip = crate::policy::prefix::canonical_ip(ip);
        let mut b = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        match self.mode {
            ClientPrivacy::Full => {}
            ClientPrivacy::Truncate => {
                let keep = if b.len() == 4 { 3 } else { 6 };
                b[keep..].iter_mut().for_each(|x| *x = 0);
            }
            ClientPrivacy::Hash => {
                let tag = ring::hmac::sign(&self.key, &b);
                let n = b.len();
                b.copy_from_slice(&tag.as_ref()[..n]);
            }
        }
        b
    }

    /// The address as logged in text: `192.0.2.0/24`, `2001:db8:1::/48`, a hash, or whole.
    fn text(&self, ip: IpAddr) -> String {
        let ip = crate::policy::prefix::canonical_ip(ip);
        match self.mode {
            ClientPrivacy::Full => ip.to_string(),
            ClientPrivacy::Truncate => {
                let b = self.bytes(ip);
                match ip {
                    IpAddr::V4(_) => format!("{}.{}.{}.0/24", b[0], b[1], b[2]),
                    IpAddr::V6(_) => {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(&b);
                        format!("{}/48", std::net::Ipv6Addr::from(o))
                    }
                }
            }
            ClientPrivacy::Hash => {
                let tag = ring::hmac::sign(&self.key, &self.bytes_full(ip));
                tag.as_ref()[..8]
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect()
            }
        }
    }

    fn bytes_full(&self, ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

/// The JSON-lines file.
struct JsonOut {
    path: PathBuf,
    privacy: Privacy,
    all: bool,
    file: Option<(BufWriter<std::fs::File>, u64)>,
    checked: Instant,
}

impl JsonOut {
    fn write(&mut self, e: &Event) {
        if !(e.note.policy || self.all) {
            return;
        }
        // logrotate moves the file away: open the new one (checked every few seconds).
        if self.checked.elapsed() > Duration::from_secs(5) {
            self.checked = Instant::now();
            let current = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
            if self.file.as_ref().map(|(_, ino)| *ino) != current {
                self.file = None;
            }
        }
        if self.file.is_none() {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|f| f.metadata().map(|m| (f, m.ino())));
            match opened {
                Ok((f, ino)) => self.file = Some((BufWriter::new(f), ino)),
                Err(err) => {
                    metrics::counter!(DROPPED, "output" => "actions").increment(1);
                    tracing::warn!(path = %self.path.display(), error = %err, "cannot open the action log");
                    return;
                }
            }
        }
        let ms = e.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let time = chrono::DateTime::from_timestamp(ms.as_secs() as i64, ms.subsec_nanos())
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let line = serde_json::json!({
            "time": time,
            "client": self.privacy.text(e.client.ip()),
            "transport": e.transport,
            "qname": e.note.qname,
            "qtype": hickory_proto::rr::RecordType::from(e.note.qtype).to_string(),
            "action": e.note.action,
            "reason": e.note.reason,
            "detail": e.note.detail,
            "rcode": crate::wire::rcode::name_of(&e.response),
        });
        if let Some((f, _)) = &mut self.file
            && writeln!(f, "{line}").is_err()
        {
            self.file = None;
            metrics::counter!(DROPPED, "output" => "actions").increment(1);
        }
    }

    fn flush(&mut self) {
        if let Some((f, _)) = &mut self.file {
            let _ = f.flush();
        }
    }
}

/// The dnstap collector connection.
struct TapOut {
    socket: PathBuf,
    identity: String,
    privacy: Privacy,
    all: bool,
    conn: Option<BufWriter<UnixStream>>,
    retry_at: Instant,
    backoff: Duration,
}

const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";
const CONTROL_ACCEPT: u32 = 0x01;
const CONTROL_START: u32 = 0x02;
const CONTROL_STOP: u32 = 0x03;
const CONTROL_READY: u32 = 0x04;
const CONTROL_FINISH: u32 = 0x05;
const FIELD_CONTENT_TYPE: u32 = 0x01;

/// A Frame Streams control frame with the dnstap content type (READY, START) or none.
fn control(kind: u32, with_type: bool) -> Vec<u8> {
    let mut body = kind.to_be_bytes().to_vec();
    if with_type {
        body.extend_from_slice(&FIELD_CONTENT_TYPE.to_be_bytes());
        body.extend_from_slice(&(CONTENT_TYPE.len() as u32).to_be_bytes());
        body.extend_from_slice(CONTENT_TYPE);
    }
    let mut f = 0u32.to_be_bytes().to_vec(); // escape: a control frame follows
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// Reads one control frame; its type.
fn read_control(s: &mut UnixStream) -> std::io::Result<u32> {
    let mut word = [0u8; 4];
    s.read_exact(&mut word)?;
    if u32::from_be_bytes(word) != 0 {
        return Err(std::io::Error::other("expected a control frame"));
    }
    s.read_exact(&mut word)?;
    let len = u32::from_be_bytes(word) as usize;
    if !(4..=512).contains(&len) {
        return Err(std::io::Error::other("control frame of a bad size"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

impl TapOut {
    fn connect(&mut self) -> std::io::Result<()> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(&control(CONTROL_READY, true))?;
        if read_control(&mut s)? != CONTROL_ACCEPT {
            return Err(std::io::Error::other("the collector did not accept dnstap"));
        }
        s.write_all(&control(CONTROL_START, true))?;
        self.conn = Some(BufWriter::new(s));
        self.backoff = Duration::from_millis(250);
        tracing::info!(socket = %self.socket.display(), "dnstap connected");
        Ok(())
    }

    fn write(&mut self, e: &Event) {
        if !(e.note.policy || self.all) {
            return;
        }
        if self.conn.is_none() {
            if Instant::now() < self.retry_at {
                metrics::counter!(DROPPED, "output" => "dnstap").increment(1);
                return;
            }
            if let Err(err) = self.connect() {
                tracing::debug!(socket = %self.socket.display(), error = %err, "dnstap collector unreachable");
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
                metrics::counter!(DROPPED, "output" => "dnstap").increment(1);
                return;
            }
        }
        let frames = [
            self.message(e, MessageType::ClientQuery),
            self.message(e, MessageType::ClientResponse),
        ];
        let Some(w) = &mut self.conn else { return };
        for f in frames {
            let ok = w
                .write_all(&(f.len() as u32).to_be_bytes())
                .and_then(|()| w.write_all(&f));
            if ok.is_err() {
                self.conn = None;
                metrics::counter!(DROPPED, "output" => "dnstap").increment(1);
                return;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(w) = &mut self.conn
            && w.flush().is_err()
        {
            self.conn = None;
        }
    }

    /// Ends the stream: STOP, then wait (briefly) for the collector's FINISH.
    fn stop(&mut self) {
        if let Some(mut w) = self.conn.take() {
            let _ = w.write_all(&control(CONTROL_STOP, false));
            let _ = w.flush();
            if let Ok(mut s) = w.into_inner() {
                let _ = read_control(&mut s).map(|t| t == CONTROL_FINISH);
            }
        }
    }

    /// One dnstap protobuf message (Dnstap { identity, version, type MESSAGE, message }).
    fn message(&self, e: &Event, kind: MessageType) -> Vec<u8> {
        let since = e.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let client = self.privacy.bytes(e.client.ip());
        let mut m = Vec::with_capacity(e.query.len() + e.response.len() + 96);
        pb::varint_field(&mut m, 1, kind as u64);
        pb::varint_field(&mut m, 2, if client.len() == 4 { 1 } else { 2 });
        let proto = match e.transport {
            "udp" => 1,
            "tcp" => 2,
            "tls" => 3,
            _ => 4,
        };
        pb::varint_field(&mut m, 3, proto);
        pb::bytes_field(&mut m, 4, &client);
        let server = match crate::policy::prefix::canonical_ip(e.server.ip()) {
            IpAddr::V4(a) if client.len() == 4 => a.octets().to_vec(),
            IpAddr::V6(a) if client.len() == 16 => a.octets().to_vec(),
            _ => vec![0; client.len()],
        };
        pb::bytes_field(&mut m, 5, &server);
        pb::varint_field(&mut m, 6, u64::from(e.client.port()));
        pb::varint_field(&mut m, 7, u64::from(e.server.port()));
        pb::varint_field(&mut m, 8, since.as_secs());
        pb::fixed32_field(&mut m, 9, since.subsec_nanos());
        pb::bytes_field(&mut m, 10, &e.query);
        if kind == MessageType::ClientResponse {
            pb::varint_field(&mut m, 12, since.as_secs());
            pb::fixed32_field(&mut m, 13, since.subsec_nanos());
            pb::bytes_field(&mut m, 14, &e.response);
        }
        if e.note.policy {
            // Policy { type "cleanpipe", rule "reason: detail", action, match QNAME }.
            let mut p = Vec::new();
            pb::bytes_field(&mut p, 1, b"cleanpipe");
            pb::bytes_field(
                &mut p,
                2,
                format!("{}: {}", e.note.reason, e.note.detail).as_bytes(),
            );
            let action = match e.note.action {
                "nxdomain" => 1,
                "nodata" => 2,
                "drop" => 4,
                "tcp_only" => 5,
                "sinkhole" | "info_page" | "local_data" => 6,
                _ => 3, // alert, log-only: passed
            };
            pb::varint_field(&mut p, 3, action);
            pb::varint_field(&mut p, 4, 1);
            pb::bytes_field(&mut m, 15, &p);
        }
        let mut d = Vec::with_capacity(m.len() + self.identity.len() + 32);
        pb::bytes_field(&mut d, 1, self.identity.as_bytes());
        pb::bytes_field(
            &mut d,
            2,
            concat!("cleanpipe ", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        pb::bytes_field(&mut d, 14, &m);
        pb::varint_field(&mut d, 15, 1); // Dnstap.Type MESSAGE
        d
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    ClientQuery = 5,
    ClientResponse = 6,
}

/// The few protobuf encodings dnstap needs.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        varint(out, u64::from(field) << 3);
        varint(out, v);
    }

    pub fn fixed32_field(out: &mut Vec<u8>, field: u32, v: u32) {
        varint(out, (u64::from(field) << 3) | 5);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        varint(out, (u64::from(field) << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

fn run(rx: Receiver<Event>, stop: &AtomicBool, mut json: Option<JsonOut>, mut tap: Option<TapOut>) {
    loop {
        if stop.load(Ordering::Acquire) {
            // Write what is queued, then end.
            while let Ok(e) = rx.try_recv() {
                if let Some(j) = &mut json {
                    j.write(&e);
                }
                if let Some(t) = &mut tap {
                    t.write(&e);
                }
            }
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(e) => {
                if let Some(j) = &mut json {
                    j.write(&e);
                }
                if let Some(t) = &mut tap {
                    t.write(&e);
                }
                // Write in batches: flush when the queue is drained.
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(j) = &mut json {
            j.flush();
        }
        if let Some(t) = &mut tap {
            t.flush();
        }
    }
    if let Some(j) = &mut json {
        j.flush();
    }
    if let Some(t) = &mut tap {
        t.flush();
        t.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_truncated_or_hashed_as_configured() {
        let v4: IpAddr = "192.0.2.77".parse().expect("ip");
        let v6: IpAddr = "2001:db8:1:2:3::9".parse().expect("ip");
        let t = Privacy::new(ClientPrivacy::Truncate, None);
        assert_eq!(t.text(v4), "192.0.2.0/24");
        assert_eq!(t.text(v6), "2001:db8:1::/48");
        assert_eq!(t.bytes(v4), vec![192, 0, 2, 0]);
        let h = Privacy::new(ClientPrivacy::Hash, Some("key"));
        let h2 = Privacy::new(ClientPrivacy::Hash, Some("key"));
        assert_eq!(h.text(v4), h2.text(v4), "same key, same hash");
        assert_ne!(h.text(v4), h.text("192.0.2.78".parse().expect("ip")));
        assert!(!h.text(v4).contains("192"));
        assert_eq!(
            Privacy::new(ClientPrivacy::Full, None).text(v4),
            "192.0.2.77"
        );
    }

    #[test]
    fn protobuf_fields_encode_as_the_spec_says() {
        let mut b = Vec::new();
        pb::varint_field(&mut b, 1, 300);
        assert_eq!(b, [0x08, 0xac, 0x02]);
        let mut b = Vec::new();
        pb::bytes_field(&mut b, 14, b"ab");
        assert_eq!(b, [0x72, 2, b'a', b'b']);
        let mut b = Vec::new();
        pb::fixed32_field(&mut b, 9, 1);
        assert_eq!(b, [0x4d, 1, 0, 0, 0]);
        let ready = control(CONTROL_READY, true);
        assert_eq!(&ready[..4], &[0, 0, 0, 0]);
        assert_eq!(
            u32::from_be_bytes([ready[4], ready[5], ready[6], ready[7]]) as usize,
            ready.len() - 8
        );
    }
}
