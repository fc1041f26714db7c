//! A small authoritative DNS server for the test internet: real packets over real UDP and TCP
//! sockets on loopback, zones written in zone-file syntax and parsed by hickory's parser.
//!
//! It implements what the recursion tests need from an authoritative server: answers, CNAMEs,
//! referrals with glue (which hickory's in-memory authority omits), NXDOMAIN and NODATA with the
//! SOA, truncation over UDP when an answer exceeds the client's payload size (so resolvers retry
//! over TCP), a "lame" mode answering REFUSED, and a per-question query counter.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A zone served by a test server.
pub struct Zone {
    origin: Name,
    records: Vec<Record>,
}

impl Zone {
    /// Parses zone-file text for `origin`.
    pub fn parse(origin: &str, text: &str) -> Zone {
        let origin = Name::from_ascii(origin).expect("zone origin must be a valid name");
        let (_, sets) = Parser::new(text, None, Some(origin.clone()))
            .parse()
            .unwrap_or_else(|e| panic!("test zone {origin} must parse: {e}"));
        let records = sets
            .values()
            .flat_map(|s| s.records_without_rrsigs().cloned())
            .collect();
        Zone { origin, records }
    }
}

/// How a server behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves its zones.
    Authoritative,
    /// Answers REFUSED to everything (a lame delegation).
    Lame,
    /// Serves its zones, each UDP answer this many milliseconds late (a slow authority).
    Delayed(u64),
    /// Serves its zones but answers with the question in lowercase (no DNS 0x20 echo, as
    /// some middleboxes and old servers do).
    LowercaseEcho,
}

/// Counts of questions received, by (lowercase name, type); TCP ones also under `tcp:name`.
pub type Counter = Arc<Mutex<HashMap<(String, RecordType), usize>>>;

/// A scripted server: the response to a query (`true` when it came over UDP); `None` sends
/// nothing. For the conformance tests' odd authoritative servers.
pub type Script = Arc<dyn Fn(&Message, bool) -> Option<Message> + Send + Sync>;

/// A running test server.
pub struct AuthServer {
    /// Its address (port 53).
    pub addr: IpAddr,
    /// Questions it received.
    pub counter: Counter,
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl AuthServer {
    /// Questions received in all (UDP and TCP).
    pub fn total(&self) -> usize {
        self.counter
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| !n.starts_with("tcp:"))
                    .map(|(_, c)| *c)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Stops answering (a server that went away; it still counts questions).
    pub fn go_silent(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times `name`/`qtype` was asked.
    pub fn count(&self, name: &str, qtype: RecordType) -> usize {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), qtype);
        self.counter
            .lock()
            .map(|m| m.get(&key).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

struct Data {
    zones: Vec<Zone>,
    behaviour: Behaviour,
    counter: Counter,
    script: Option<Script>,
    silent: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts a server on `addr:port` (UDP and TCP) on the current tokio runtime.
pub async fn start(
    addr: IpAddr,
    port: u16,
    zones: Vec<Zone>,
    behaviour: Behaviour,
) -> std::io::Result<AuthServer> {
    start_with(addr, port, zones, behaviour, None).await
}

/// Starts a scripted server on `addr:port`.
pub async fn start_scripted(
    addr: IpAddr,
    port: u16,
    script: Script,
) -> std::io::Result<AuthServer> {
    start_with(
        addr,
        port,
        Vec::new(),
        Behaviour::Authoritative,
        Some(script),
    )
    .await
}

async fn start_with(
    addr: IpAddr,
    port: u16,
    zones: Vec<Zone>,
    behaviour: Behaviour,
    script: Option<Script>,
) -> std::io::Result<AuthServer> {
    let sa = SocketAddr::new(addr, port);
    let udp = tokio::net::UdpSocket::bind(sa).await?;
    let tcp = tokio::net::TcpListener::bind(sa).await?;
    let counter: Counter = Arc::default();
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let data = Arc::new(Data {
        zones,
        behaviour,
        counter: counter.clone(),
        script,
        silent: silent.clone(),
    });
    let d = data.clone();
    let udp = Arc::new(udp);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let Some(resp) = respond(&d, &buf[..n], true) else {
                continue;
            };
            match d.behaviour {
                Behaviour::Delayed(ms) => {
                    let udp = udp.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        let _ = udp.send_to(&resp, peer).await;
                    });
                }
                _ => {
                    let _ = udp.send_to(&resp, peer).await;
                }
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let d = data.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(len) = s.read_u16().await else { return };
                    let mut msg = vec![0u8; len as usize];
                    if s.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    let Some(resp) = respond(&d, &msg, false) else {
                        return;
                    };
                    if s.write_u16(resp.len() as u16).await.is_err()
                        || s.write_all(&resp).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(AuthServer {
        addr,
        counter,
        silent,
    })
}

fn respond(d: &Data, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(bytes).ok()?;
    let q = req.queries.first()?.clone();
    if let Ok(mut c) = d.counter.lock() {
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if !udp {
            *c.entry((format!("tcp:{name}"), q.query_type()))
                .or_default() += 1;
        }
        *c.entry((name, q.query_type())).or_default() += 1;
    }
    if d.silent.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    if let Some(script) = &d.script {
        let mut resp = script(&req, udp)?;
        resp.metadata.id = req.metadata.id;
        resp.metadata.message_type = MessageType::Response;
        if resp.queries.is_empty() {
            resp.add_query(q.clone());
        }
        return resp.to_vec().ok();
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.message_type = MessageType::Response;
    if d.behaviour == Behaviour::LowercaseEcho {
        let mut lower = q.clone();
        lower.set_name(q.name().to_lowercase());
        resp.add_query(lower);
    } else {
        resp.add_query(q.clone());
    }
    if d.behaviour == Behaviour::Lame {
        resp.metadata.response_code = ResponseCode::Refused;
    } else {
        lookup(d, q.name(), q.query_type(), &mut resp);
    }
    let max = if udp {
        req.edns.as_ref().map_or(512, |e| e.max_payload().max(512)) as usize
    } else {
        usize::MAX
    };
    if let Some(e) = &req.edns {
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(e.max_payload().max(512));
        resp.set_edns(edns);
    }
    let out = resp.to_vec().ok()?;
    if out.len() <= max {
        return Some(out);
    }
    resp.answers.clear();
    resp.authorities.clear();
    resp.additionals.clear();
    resp.metadata.truncation = true;
    resp.to_vec().ok()
}

fn lookup(d: &Data, qname: &Name, qtype: RecordType, resp: &mut Message) {
    let Some(zone) = d
        .zones
        .iter()
        .filter(|z| z.origin.zone_of(qname))
        .max_by_key(|z| z.origin.num_labels())
    else {
        resp.metadata.response_code = ResponseCode::Refused;
        return;
    };
    // Referral: NS below the apex on the way to the name.
    let cut = zone
        .records
        .iter()
        .filter(|r| {
            r.record_type() == RecordType::NS && r.name != zone.origin && r.name.zone_of(qname)
        })
        .max_by_key(|r| r.name.num_labels())
        .map(|r| r.name.clone());
    if let Some(cut) = cut {
        for ns in zone
            .records
            .iter()
            .filter(|r| r.record_type() == RecordType::NS && r.name == cut)
        {
            resp.add_authority(ns.clone());
            if let RData::NS(target) = &ns.data {
                for glue in zone.records.iter().filter(|r| {
                    r.name == target.0
                        && matches!(r.record_type(), RecordType::A | RecordType::AAAA)
                }) {
                    resp.add_additional(glue.clone());
                }
            }
        }
        return;
    }
    resp.metadata.authoritative = true;
    // Records owned by the asked name carry the question's case, as Knot and BIND answer (their
    // owner is a compression pointer to the question).
    let owned = |r: &Record| {
        let mut r = r.clone();
        if r.name == *qname {
            r.name = qname.clone();
        }
        r
    };
    let mut name = qname.clone();
    for _ in 0..8 {
        let at: Vec<&Record> = zone.records.iter().filter(|r| r.name == name).collect();
        let matching: Vec<&Record> = at
            .iter()
            .copied()
            .filter(|r| r.record_type() == qtype)
            .collect();
        if !matching.is_empty() {
            resp.add_answers(matching.into_iter().map(owned));
            return;
        }
        if let Some(cname) = at.iter().find(|r| r.record_type() == RecordType::CNAME) {
            resp.add_answer(owned(cname));
            let RData::CNAME(target) = &cname.data else {
                return;
            };
            if !zone.origin.zone_of(&target.0) {
                return; // the resolver follows the chain into the other zone
            }
            name = target.0.clone();
            continue;
        }
        let exists = zone.records.iter().any(|r| name.zone_of(&r.name));
        if !exists && resp.answers.is_empty() {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        if let Some(soa) = zone
            .records
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
        {
            resp.add_authority(soa.clone());
        }
        return;
    }
}
