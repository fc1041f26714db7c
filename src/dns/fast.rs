//! The UDP fast path: answers the common case — a plain query whose decision is "resolve
//! normally" and whose answer is cached — straight from a ready wire-format response, without
//! decoding the request into owned structures, allocating or spawning a task. Everything else
//! (blocks, rewrites, alerts, misses, EDNS versions above 0, anything unusual) goes to the full
//! path ([`super::DnsHandler`]), which is the reference behaviour.
//!
//! The decision is always taken for the query at hand, before the cache is consulted, so a
//! cached answer can never bypass the policy: the cache holds resolution results only.
//!
//! Each serving thread owns its wire cache (no locking); entries are built from the shared
//! answer cache and expire with their shortest TTL; served TTLs are decremented by the entry's
//! age, and the query's ID, RD/CD bits and the case of its name are copied into the answer.

use std::net::SocketAddr;
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::MAX_UDP_PAYLOAD;
use crate::resolve::Answer;

/// The parts of a query the fast path needs.
#[derive(Debug)]
pub struct Parsed {
    /// End of the question name (offset of QTYPE).
    pub qname_end: usize,
    /// Query type.
    pub qtype: u16,
    /// `Some(payload)` when the query carried an OPT record (version 0).
    pub edns: Option<u16>,
}

/// Reads a plain query: QR=0, OPCODE=QUERY, one question of class IN with an uncompressed name,
/// no answer/authority records, at most an OPT record of version 0. `None` for anything else.
pub fn parse_query(p: &[u8]) -> Option<Parsed> {
    if p.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([p[2], p[3]]);
    let (qd, an, ns, ar) = (
        u16::from_be_bytes([p[4], p[5]]),
        u16::from_be_bytes([p[6], p[7]]),
        u16::from_be_bytes([p[8], p[9]]),
        u16::from_be_bytes([p[10], p[11]]),
    );
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut i = 12;
    let mut total = 0usize;
    loop {
        let len = *p.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return None; // compression or extended label types: full path
        }
        total += len + 1;
        if total > 255 {
            return None;
        }
        i += 1 + len;
    }
    let qname_end = i;
    let qtype = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*p.get(i + 2)?, *p.get(i + 3)?]);
    if qclass != 1 || matches!(qtype, 251 | 252 | 255) {
        return None; // not IN, or IXFR/AXFR/ANY: full path
    }
    i += 4;
    let edns = if ar == 1 {
        // OPT: root name, type 41, class = payload, TTL = ext-rcode, version, flags.
        if p.get(i)? != &0 || u16::from_be_bytes([*p.get(i + 1)?, *p.get(i + 2)?]) != 41 {
            return None;
        }
        let payload = u16::from_be_bytes([*p.get(i + 3)?, *p.get(i + 4)?]);
        let version = *p.get(i + 6)?;
        let rdlen = u16::from_be_bytes([*p.get(i + 9)?, *p.get(i + 10)?]) as usize;
        if version != 0 || i + 11 + rdlen != p.len() {
            return None;
        }
        Some(payload)
    } else {
        if i != p.len() {
            return None;
        }
        None
    };
    Some(Parsed {
        qname_end,
        qtype,
        edns,
    })
}

/// A ready answer.
#[derive(Debug)]
struct Entry {
    /// Lowercased question name (wire form), type, and whether the query used EDNS.
    name: Box<[u8]>,
    qtype: u16,
    edns: bool,
    bytes: Vec<u8>,
    /// `(offset, TTL when built)` of every record's TTL field.
    ttls: Vec<(usize, u32)>,
    built: Instant,
    /// Seconds the entry stays valid (the shortest TTL).
    life: u32,
}

/// One serving thread's wire-format answers, keyed by the lowercased question and whether the
/// query used EDNS. Looked up without allocating (the key is lowercased into a scratch buffer).
#[derive(Default)]
pub struct WireCache {
    table: hashbrown::HashTable<Entry>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for WireCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireCache({} entries)", self.table.len())
    }
}

fn hash(name: &[u8], qtype: u16, edns: bool) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(name);
    h.write_u16(qtype);
    h.write_u8(u8::from(edns));
    h.finish()
}

/// Entries a thread keeps before starting over (bounded memory).
const MAX_ENTRIES: usize = 200_000;

/// Offsets of the TTL fields of every record after the question (OPT excluded).
fn ttl_offsets(b: &[u8]) -> Option<Vec<(usize, u32)>> {
    let count =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])) };
    let records = count(6)? as usize + count(8)? as usize + count(10)? as usize;
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let l = *b.get(i)?;
            if l == 0 {
                return Some(i + 1);
            }
            if l & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + l as usize;
        }
    };
    let mut i = skip_name(12)? + 4;
    let mut out = Vec::with_capacity(records);
    for _ in 0..records {
        i = skip_name(i)?;
        let rtype = count(i)?;
        let ttl_at = i + 4;
        let ttl = u32::from_be_bytes([
            *b.get(ttl_at)?,
            *b.get(ttl_at + 1)?,
            *b.get(ttl_at + 2)?,
            *b.get(ttl_at + 3)?,
        ]);
        if rtype != 41 {
            out.push((ttl_at, ttl));
        }
        let rdlen = count(i + 8)? as usize;
        i += 10 + rdlen;
    }
    (i == b.len()).then_some(out)
}

impl WireCache {
    /// Writes the cached answer for this query into `out`. `false` when there is none (or it
    /// expired, or it would not fit the client's UDP payload).
    pub fn answer(&mut self, p: &[u8], parsed: &Parsed, now: Instant, out: &mut Vec<u8>) -> bool {
        self.scratch.clear();
        self.scratch.extend(
            p[12..parsed.qname_end]
                .iter()
                .map(|b| b.to_ascii_lowercase()),
        );
        let (qtype, edns) = (parsed.qtype, parsed.edns.is_some());
        let h = hash(&self.scratch, qtype, edns);
        let name = &self.scratch;
        let Ok(found) = self.table.find_entry(h, |e| {
            e.qtype == qtype && e.edns == edns && *e.name == **name
        }) else {
            return false;
        };
        let e = found.get();
        let age = now
            .saturating_duration_since(e.built)
            .as_secs()
            .min(u64::from(u32::MAX)) as u32;
        if age >= e.life {
            found.remove();
            return false;
        }
        let limit = match parsed.edns {
            Some(payload) => usize::from(payload.clamp(512, MAX_UDP_PAYLOAD)),
            None => 512,
        };
        if e.bytes.len() > limit {
            return false;
        }
        out.clear();
        out.extend_from_slice(&e.bytes);
        // ID, RD and CD from the query; the name exactly as asked (0x20 case).
        out[0] = p[0];
        out[1] = p[1];
        out[2] = (out[2] & !0x01) | (p[2] & 0x01);
        out[3] = (out[3] & !0x10) | (p[3] & 0x10);
        out[12..parsed.qname_end].copy_from_slice(&p[12..parsed.qname_end]);
        for (at, ttl) in &e.ttls {
            out[*at..*at + 4].copy_from_slice(&ttl.saturating_sub(age).max(1).to_be_bytes());
        }
        true
    }

    /// Builds and stores the wire answer for this query from a cached resolution result.
    pub fn fill(&mut self, p: &[u8], parsed: &Parsed, name: &Name, answer: &Answer) {
        if answer.rcode != ResponseCode::NoError && answer.rcode != ResponseCode::NXDomain {
            return;
        }
        let life = answer
            .answers
            .iter()
            .chain(&answer.authorities)
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
        if life == 0 {
            return;
        }
        let mut m = Message::response(0, OpCode::Query);
        m.metadata.message_type = MessageType::Response;
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.metadata.response_code = answer.rcode;
        let mut lower = name.to_lowercase();
        lower.set_fqdn(true);
        m.add_query(Query::query(lower, RecordType::from(parsed.qtype)));
        m.add_answers(answer.answers.iter().cloned());
        m.add_authorities(answer.authorities.iter().cloned());
        if parsed.edns.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(MAX_UDP_PAYLOAD);
            m.set_edns(e);
        }
        let Ok(bytes) = m.to_vec() else { return };
        // The question must come out byte for byte like the query's (lowercased).
        if bytes.len() < parsed.qname_end
            || !bytes[12..parsed.qname_end].eq_ignore_ascii_case(&p[12..parsed.qname_end])
        {
            return;
        }
        let Some(ttls) = ttl_offsets(&bytes) else {
            return;
        };
        if self.table.len() >= MAX_ENTRIES {
            self.table.clear();
        }
        let name: Box<[u8]> = p[12..parsed.qname_end]
            .iter()
            .map(|b| b.to_ascii_lowercase())
            .collect();
        let (qtype, edns) = (parsed.qtype, parsed.edns.is_some());
        let h = hash(&name, qtype, edns);
        if let Ok(old) = self
            .table
            .find_entry(h, |e| e.qtype == qtype && e.edns == edns && e.name == name)
        {
            old.remove();
        }
        let entry = Entry {
            name,
            qtype,
            edns,
            bytes,
            ttls,
            built: Instant::now(),
            life,
        };
        self.table
            .insert_unique(h, entry, |e| hash(&e.name, e.qtype, e.edns));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// A minimal FORMERR for a request whose header is readable but whose body is not.
pub fn formerr(p: &[u8]) -> Option<Vec<u8>> {
    if p.len() < 12 || p[2] & 0x80 != 0 {
        return None; // too short, or a response: never answer (reflection)
    }
    let mut out = vec![0u8; 12];
    out[0] = p[0];
    out[1] = p[1];
    out[2] = 0x80 | (p[2] & 0x79); // QR, opcode, RD
    out[3] = 0x80 | 1; // RA, FORMERR
    Some(out)
}

/// The client address as the policy sees it.
pub fn client(src: SocketAddr) -> std::net::IpAddr {
    crate::policy::prefix::canonical_ip(src.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{RData, Record, rdata::A};

    fn query(name: &str, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().expect("encodes")
    }

    #[test]
    fn random_and_mutated_packets_never_panic() {
        // A deterministic generator: the same packets on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = query("www.example.org.", true);
        let mut cache = WireCache::default();
        let mut out = Vec::new();
        for i in 0..20_000 {
            let mut p = if i % 2 == 0 {
                let len = (next() % 80) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                let mut p = base.clone();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % p.len();
                    p[at] = next() as u8;
                }
                p
            };
            if i % 7 == 0 {
                p.truncate((next() as usize) % (p.len() + 1));
            }
            let _ = formerr(&p);
            let _ = ttl_offsets(&p);
            if let Some(parsed) = parse_query(&p) {
                let _ = cache.answer(&p, &parsed, Instant::now(), &mut out);
            }
        }
    }

    #[test]
    fn parses_plain_queries_only() {
        let q = query("WwW.Example.ORG.", true);
        let p = parse_query(&q).expect("plain query");
        assert_eq!(p.qtype, 1);
        assert_eq!(p.edns, Some(4096));
        assert!(parse_query(&query("example.org.", false)).is_some_and(|p| p.edns.is_none()));
        assert!(parse_query(&q[..20]).is_none(), "truncated");
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(
            parse_query(&resp).is_none(),
            "responses are never answered here"
        );
        assert!(formerr(&resp).is_none());
        assert!(parse_query(&[0u8; 5]).is_none());
    }

    #[test]
    fn cached_answer_keeps_id_case_and_ages_ttls() {
        let name = Name::from_ascii("www.example.org.").expect("name");
        let answer = Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                name.clone(),
                300,
                RData::A(A::new(192, 0, 2, 1)),
            )],
            authorities: vec![],
        };
        let mut cache = WireCache::default();
        let q = query("WwW.Example.ORG.", true);
        let p = parse_query(&q).expect("query");
        let mut out = Vec::new();
        assert!(
            !cache.answer(&q, &p, Instant::now(), &mut out),
            "empty cache"
        );
        cache.fill(&q, &p, &name, &answer);
        assert!(cache.answer(&q, &p, Instant::now(), &mut out));
        let m = Message::from_vec(&out).expect("valid response");
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "WwW.Example.ORG.",
            "the question as asked"
        );
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, 300);
        assert!(m.edns.is_some());
        // Without EDNS it is another entry.
        let q2 = query("www.example.org.", false);
        assert!(!cache.answer(&q2, &parse_query(&q2).expect("q"), Instant::now(), &mut out));
    }
}
