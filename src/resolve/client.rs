//! One DNS exchange with one server, for both backends: forwarding to upstream resolvers and
//! iterating from the root.
//!
//! A small client of our own rather than hickory's, which opens a new UDP socket for every query
//! (measured: 0.17× the upstream's own throughput on cache misses). Queries go out over a pool
//! of long-lived UDP sockets, each read by one task that hands answers to the waiting query by
//! ID. Spoofing resistance: a random ID, a random socket of the pool (each on its own ephemeral
//! port), optionally a random mix of upper and lower case in the query name (DNS 0x20) that the
//! answer must echo exactly, and answers accepted only from the server the query went to. The
//! answer's names are given back their canonical case ([`canonical_case`]): the 0x20 mix never
//! leaks into what clients see or what is cached.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Mutex, OnceCell, oneshot};

/// UDP sockets in the pool (each on its own source port).
const POOL: usize = 32;

/// A query waiting for its answer: the server, the exact question sent, the waiter.
struct Waiting {
    server: SocketAddr,
    name: Name,
    qtype: RecordType,
    /// The answer, or `Err` when it came back with the question's letter case changed.
    tx: oneshot::Sender<Result<Message, ()>>,
}

struct Sock {
    socket: UdpSocket,
    v6: bool,
    waiting: Mutex<FxHashMap<u16, Waiting>>,
}

/// Why one exchange with a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A socket operation failed.
    #[error("{server}: {source}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no {transport} answer from {server} within {ms} ms")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// `UDP` or `TCP`.
        transport: &'static str,
        /// Milliseconds waited.
        ms: u64,
    },
    /// The server's answer was not for our question (over TCP, where no other can come).
    #[error("{server}: the TCP answer does not match the question")]
    Mismatch {
        /// The server.
        server: SocketAddr,
    },
    /// The answer could not be read, or the query written.
    #[error("{server}: {message}")]
    Format {
        /// The server.
        server: SocketAddr,
        /// What hickory said.
        message: String,
    },
    /// No free query ID on the chosen socket (tens of thousands in flight).
    #[error("too many queries in flight")]
    Busy,
    /// No pool socket of the server's address family.
    #[error("no socket for the address family of {server}")]
    NoSocket {
        /// The server.
        server: SocketAddr,
    },
    /// The answer came back with the question's letter case changed: the server does not
    /// echo the DNS 0x20 mix.
    #[error("{server} does not echo the question's letter case (DNS 0x20)")]
    CaseMismatch {
        /// The server.
        server: SocketAddr,
    },
    /// The server answered with an error code.
    #[error("{server} answered {rcode}")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// What it answered.
        rcode: ResponseCode,
    },
}

impl ExchangeError {
    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ExchangeError::Io { .. } => "network",
            ExchangeError::Timeout { .. } => "timeout",
            ExchangeError::Mismatch { .. } => "mismatch",
            ExchangeError::Format { .. } => "malformed",
            ExchangeError::Busy => "busy",
            ExchangeError::NoSocket { .. } => "no_socket",
            ExchangeError::CaseMismatch { .. } => "no_0x20",
            ExchangeError::Rcode {
                rcode: ResponseCode::ServFail,
                ..
            } => "servfail",
            ExchangeError::Rcode {
                rcode: ResponseCode::Refused,
                ..
            } => "refused",
            ExchangeError::Rcode { .. } => "rcode",
        }
    }
}

/// One question to one server.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Where.
    pub server: SocketAddr,
    /// The name (sent in this case, or mixed when `caps`).
    pub name: &'a Name,
    /// The type.
    pub qtype: RecordType,
    /// Recursion desired (forwarding) or not (iterating).
    pub rd: bool,
    /// Mix the letter case (DNS 0x20); the answer must echo it.
    pub caps: bool,
    /// How long to wait.
    pub timeout: Duration,
    /// Set the DO bit (ask for signatures and denial proofs: validation is on).
    pub dnssec: bool,
    /// Set the CD bit (a trusted validator upstream is not to validate).
    pub cd: bool,
}

/// The pool of UDP sockets (opened on first use, on the runtime that resolves).
pub struct Client {
    pool: OnceCell<Vec<Arc<Sock>>>,
    next: AtomicUsize,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client; sockets of both families are opened on first use.
    pub fn new() -> Self {
        Self {
            pool: OnceCell::new(),
            next: AtomicUsize::new(0),
        }
    }

    async fn pool(&self) -> Result<&Vec<Arc<Sock>>, std::io::Error> {
        self.pool
            .get_or_try_init(|| async {
                let mut socks = Vec::with_capacity(POOL);
                for i in 0..POOL {
                    let want_v6 = i % 4 == 3; // a quarter of the pool for IPv6 servers
                    let bind: SocketAddr = if want_v6 {
                        (IpAddr::from([0u16; 8]), 0).into()
                    } else {
                        (IpAddr::from([0u8; 4]), 0).into()
                    };
                    // A host without IPv6 still serves IPv4 servers.
                    let Ok(socket) = UdpSocket::bind(bind).await else {
                        continue;
                    };
                    let sock = Arc::new(Sock {
                        socket,
                        v6: want_v6,
                        waiting: Mutex::new(FxHashMap::default()),
                    });
                    tokio::spawn(read_loop(sock.clone()));
                    socks.push(sock);
                }
                if socks.is_empty() {
                    return Err(std::io::Error::other("no UDP socket could be opened"));
                }
                Ok(socks)
            })
            .await
    }

    /// One exchange over UDP. The answer's names carry their canonical case.
    pub async fn udp(&self, a: Ask<'_>) -> Result<Message, ExchangeError> {
        let server = a.server;
        let io = |source| ExchangeError::Io { server, source };
        let pool = self.pool().await.map_err(io)?;
        let family: Vec<&Arc<Sock>> = pool.iter().filter(|s| s.v6 == server.is_ipv6()).collect();
        if family.is_empty() {
            return Err(ExchangeError::NoSocket { server });
        }
        let pick = (self.next.fetch_add(1, Ordering::Relaxed) ^ rand::random::<u32>() as usize)
            % family.len();
        let sock = family[pick];
        let asked = if a.caps {
            let mut n = a.name.clone();
            n.randomize_label_case();
            n
        } else {
            a.name.clone()
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut waiting = sock.waiting.lock().await;
            let mut id: u16 = rand::random();
            for _ in 0..16 {
                if !waiting.contains_key(&id) {
                    break;
                }
                id = rand::random();
            }
            if waiting.contains_key(&id) {
                return Err(ExchangeError::Busy);
            }
            waiting.insert(
                id,
                Waiting {
                    server,
                    name: asked.clone(),
                    qtype: a.qtype,
                    tx,
                },
            );
            id
        };
        let bytes = query_bytes(id, &asked, a.qtype, a.rd, a.dnssec, a.cd)
            .map_err(|message| ExchangeError::Format { server, message })?;
        if let Err(e) = sock.socket.send_to(&bytes, server).await {
            sock.waiting.lock().await.remove(&id);
            return Err(io(e));
        }
        match tokio::time::timeout(a.timeout, rx).await {
            Ok(Ok(Err(()))) => Err(ExchangeError::CaseMismatch { server }),
            Ok(Ok(Ok(mut msg))) => {
                canonical_case(&mut msg, &asked, a.name);
                Ok(msg)
            }
            _ => {
                sock.waiting.lock().await.remove(&id);
                Err(ExchangeError::Timeout {
                    server,
                    transport: "UDP",
                    ms: a.timeout.as_millis() as u64,
                })
            }
        }
    }

    /// One exchange over TCP (after a truncated UDP answer), in the name's own case.
    pub async fn tcp(&self, a: Ask<'_>) -> Result<Message, ExchangeError> {
        let server = a.server;
        let id: u16 = rand::random();
        let format = |message: String| ExchangeError::Format { server, message };
        let io = |source| ExchangeError::Io { server, source };
        let bytes = query_bytes(id, a.name, a.qtype, a.rd, a.dnssec, a.cd).map_err(format)?;
        let exchange = async {
            let mut s = TcpStream::connect(server).await.map_err(io)?;
            let len = u16::try_from(bytes.len()).map_err(|_| format("query too long".into()))?;
            s.write_all(&len.to_be_bytes()).await.map_err(io)?;
            s.write_all(&bytes).await.map_err(io)?;
            let len = s.read_u16().await.map_err(io)?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.map_err(io)?;
            Message::from_vec(&buf).map_err(|e| format(e.to_string()))
        };
        let mut msg = tokio::time::timeout(a.timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Timeout {
                server,
                transport: "TCP",
                ms: a.timeout.as_millis() as u64,
            })??;
        let ok = msg.metadata.id == id
            && msg
                .queries
                .first()
                .is_some_and(|q| q.query_type() == a.qtype && q.name().eq_ignore_root(a.name));
        if ok {
            canonical_case(&mut msg, a.name, a.name);
            Ok(msg)
        } else {
            Err(ExchangeError::Mismatch { server })
        }
    }
}

async fn read_loop(sock: Arc<Sock>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((len, src)) = sock.socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let Ok(msg) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if msg.metadata.message_type != MessageType::Response {
            continue;
        }
        let mut waiting = sock.waiting.lock().await;
        let matches = waiting.get(&msg.metadata.id).and_then(|w| {
            let q = msg.queries.first()?;
            let same = w.server == src && q.query_type() == w.qtype;
            if same && q.name().eq_case(&w.name) {
                Some(true)
            } else if same && q.name().eq_ignore_root(&w.name) {
                Some(false) // the right question in the wrong case
            } else {
                None
            }
        });
        if let Some(exact) = matches
            && let Some(w) = waiting.remove(&msg.metadata.id)
        {
            let _ = w.tx.send(if exact { Ok(msg) } else { Err(()) });
        }
        // Anything else (wrong source, ID or question) is ignored: the real answer may still
        // come, or the query times out.
    }
}

fn query_bytes(
    id: u16,
    name: &Name,
    qtype: RecordType,
    rd: bool,
    dnssec: bool,
    cd: bool,
) -> Result<Vec<u8>, String> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = rd;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(name.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(crate::wire::MAX_UDP_PAYLOAD);
    edns.set_dnssec_ok(dnssec);
    m.set_edns(edns);
    m.to_vec().map_err(|e| e.to_string())
}

/// Gives the answer's names their canonical case. Servers echo the question as asked and
/// compress later names against it, so the case of the 0x20 mix spreads into every name that
/// shares a suffix with the question (`mail.bANk.Be.` in answer to `bANk.Be. MX`). The labels a
/// name shares with `asked`, byte for byte, are replaced by those of `original`; names that
/// share nothing with the question keep the case the server gave them.
pub fn canonical_case(msg: &mut Message, asked: &Name, original: &Name) {
    let asked_labels: Vec<&[u8]> = asked.iter().collect();
    let orig_labels: Vec<&[u8]> = original.iter().collect();
    if asked_labels.len() != orig_labels.len() {
        return;
    }
    let fix = |n: &mut Name| {
        let labels: Vec<&[u8]> = n.iter().collect();
        let shared = labels
            .iter()
            .rev()
            .zip(asked_labels.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        if shared == 0 {
            return;
        }
        let keep = labels.len() - shared;
        let rebuilt = labels[..keep]
            .iter()
            .copied()
            .chain(orig_labels[orig_labels.len() - shared..].iter().copied());
        if let Ok(mut fixed) = Name::from_labels(rebuilt) {
            fixed.set_fqdn(n.is_fqdn());
            *n = fixed;
        }
    };
    for q in msg.queries.iter_mut() {
        let mut n = q.name().clone();
        fix(&mut n);
        q.set_name(n);
    }
    let records = msg
        .answers
        .iter_mut()
        .chain(msg.authorities.iter_mut())
        .chain(msg.additionals.iter_mut());
    for r in records {
        fix(&mut r.name);
        match &mut r.data {
            RData::CNAME(t) => fix(&mut t.0),
            RData::NS(t) => fix(&mut t.0),
            RData::PTR(t) => fix(&mut t.0),
            RData::ANAME(t) => fix(&mut t.0),
            RData::MX(mx) => fix(&mut mx.exchange),
            RData::SRV(srv) => fix(&mut srv.target),
            RData::SOA(soa) => {
                fix(&mut soa.mname);
                fix(&mut soa.rname);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{CNAME, MX};

    fn n(s: &str) -> Name {
        Name::from_ascii(s).expect("name") // from_str would lowercase (IDNA)
    }

    #[test]
    fn the_0x20_mix_is_taken_out_of_every_name_that_shares_the_question_suffix() {
        let asked = n("bANk.Be.");
        let original = n("bank.be.");
        let mut m = Message::query();
        m.add_query(Query::query(asked.clone(), RecordType::MX));
        m.add_answer(Record::from_rdata(
            asked.clone(),
            300,
            RData::MX(MX::new(10, n("mail.bANk.Be."))),
        ));
        m.add_answer(Record::from_rdata(
            n("login.bANk.Be."),
            300,
            RData::CNAME(CNAME(n("www.bANk.Be."))),
        ));
        // A name that shares only the TLD, and one from another zone, in the server's case.
        m.add_answer(Record::from_rdata(
            n("Other.Be."),
            300,
            RData::CNAME(CNAME(n("CDN.Example.NET."))),
        ));
        canonical_case(&mut m, &asked, &original);
        let texts: Vec<String> = m.answers.iter().map(|r| r.to_string()).collect();
        assert!(
            texts[0].starts_with("bank.be. 300 IN MX 10 mail.bank.be."),
            "{texts:?}"
        );
        assert!(
            texts[1].starts_with("login.bank.be. 300 IN CNAME www.bank.be."),
            "{texts:?}"
        );
        // `.Be.` matched our mix only if its case happened to equal ours: here it is `Be`, as
        // asked, so it becomes `be`; `Other` and the CDN name keep their case.
        assert!(
            texts[2].starts_with("Other.be. 300 IN CNAME CDN.Example.NET."),
            "{texts:?}"
        );
        assert_eq!(m.queries[0].name().to_string(), "bank.be.");
    }
}
