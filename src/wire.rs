//! DNS wire format: reading a query once and writing responses, with no intermediate message
//! structures on the common paths.
//!
//! [`Query::parse`] reads a request in one pass and says how to refuse it when it cannot be
//! answered ([`Malformed`]): nothing at all for packets that are too short or are responses (no
//! reflection), FORMERR, NOTIMP or BADVERS otherwise. [`Response`] writes a reply from the query
//! it answers: header, the question exactly as asked (so the 0x20 letter case comes back), records,
//! and last the OPT record with Extended DNS Errors ([`Response::finish`]), which also clamps the
//! reply to what the client can receive (TC=1 and no records when it does not fit).

use std::borrow::Cow;

/// The UDP payload size cleanpipe offers and accepts (DNS Flag Day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Bytes of a DNS header.
pub const HEADER: usize = 12;
/// EDNS option: DNS cookie (RFC 7873).
pub const OPT_COOKIE: u16 = 10;
/// EDNS option: Extended DNS Error (RFC 8914).
pub const OPT_EDE: u16 = 15;

/// Response codes cleanpipe writes.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Format error.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// Name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused.
    pub const REFUSED: u16 = 5;

    /// Response codes 0–5 as dig spells them, then `OTHER`.
    pub const NAMES: [&str; 7] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER",
    ];

    /// The name of the response code in a reply's header (`OTHER` above 5).
    pub fn name_of(reply: &[u8]) -> &'static str {
        NAMES[reply.get(3).map_or(6, |b| usize::from(b & 0x0f).min(6))]
    }
    /// Bad EDNS version (extended: needs an OPT record).
    pub const BADVERS: u16 = 16;
    /// Bad (server) cookie (extended: needs an OPT record).
    pub const BADCOOKIE: u16 = 23;
}

/// Operation codes.
pub mod opcode {
    /// Standard query.
    pub const QUERY: u8 = 0;
    /// Zone change notification (RFC 1996).
    pub const NOTIFY: u8 = 4;
}

/// The EDNS part of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// UDP payload the client can receive.
    pub payload: u16,
    /// DNSSEC OK.
    pub dnssec_ok: bool,
    /// The DNS cookie option: client cookie (8 bytes) and, when present, the server cookie
    /// (8 to 32 bytes), as offsets into the query.
    pub cookie: Option<CookieAt>,
}

/// Where a DNS cookie option sits in a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieAt {
    /// Offset of the option data (client cookie first).
    pub at: usize,
    /// Length of the option data (8, or 16 to 40 with a server cookie).
    pub len: usize,
}

/// Why a request gets no normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Too short for a header, or a response: never answered (a reply could be reflected).
    Ignore,
    /// The header is readable, the rest is not (or asks for several questions): FORMERR.
    FormErr,
    /// An operation other than QUERY and NOTIFY: NOTIMP.
    NotImp,
    /// EDNS version above 0: BADVERS (with our OPT, version 0).
    BadVers,
}

impl Malformed {
    /// A short, bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Ignore => "ignored",
            Malformed::FormErr => "malformed",
            Malformed::NotImp => "opcode",
            Malformed::BadVers => "edns_version",
        }
    }
}

/// A query as read from the wire: offsets into the packet, read once, never again downstream.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The whole packet.
    pub wire: &'a [u8],
    /// Operation code.
    pub opcode: u8,
    /// End of the question name (offset of QTYPE); the name is `wire[HEADER..qname_end]`.
    pub qname_end: usize,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// The OPT record, if the client sent one (version 0).
    pub edns: Option<Edns>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Offset after an owner name at `at` (labels, possibly ending in a compression pointer).
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *b.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                b.get(at + 1)?;
                return Some(at + 2);
            }
            l if l > 63 => return None,
            l => at += 1 + usize::from(l),
        }
    }
}

impl<'a> Query<'a> {
    /// The client set CD (checking disabled: it validates itself).
    pub fn checking_disabled(&self) -> bool {
        self.wire.get(3).is_some_and(|b| b & 0x10 != 0)
    }

    /// The client understands AD: it set DO or AD (RFC 6840 §5.8).
    pub fn wants_ad(&self) -> bool {
        self.wire.get(3).is_some_and(|b| b & 0x20 != 0)
            || self.edns.as_ref().is_some_and(|e| e.dnssec_ok)
    }

    /// Reads a request. `Err` says how to refuse it.
    pub fn parse(wire: &'a [u8]) -> Result<Self, Malformed> {
        if wire.len() < HEADER || wire[2] & 0x80 != 0 {
            return Err(Malformed::Ignore);
        }
        let opcode = (wire[2] >> 3) & 0x0f;
        if opcode != opcode::QUERY && opcode != opcode::NOTIFY {
            return Err(Malformed::NotImp);
        }
        let count = |at| u16_at(wire, at).ok_or(Malformed::FormErr);
        let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
        if qd != 1 {
            return Err(Malformed::FormErr);
        }
        // The question name: plain labels only (nothing precedes it to point at), 255 bytes.
        let mut at = HEADER;
        loop {
            let len = usize::from(*wire.get(at).ok_or(Malformed::FormErr)?);
            if len == 0 {
                at += 1;
                break;
            }
            if len > 63 {
                return Err(Malformed::FormErr);
            }
            at += 1 + len;
            if at - HEADER > 254 {
                return Err(Malformed::FormErr);
            }
        }
        let qname_end = at;
        let qtype = u16_at(wire, at).ok_or(Malformed::FormErr)?;
        let qclass = u16_at(wire, at + 2).ok_or(Malformed::FormErr)?;
        at += 4;
        // Answer and authority records are not expected in a query (a NOTIFY may carry the SOA):
        // walk past them. Then the additional section: at most one OPT (RFC 6891).
        for _ in 0..(u32::from(an) + u32::from(ns)) {
            at = skip_record(wire, at).ok_or(Malformed::FormErr)?;
        }
        let mut edns = None;
        for _ in 0..ar {
            let owner_end = skip_name(wire, at).ok_or(Malformed::FormErr)?;
            let rtype = u16_at(wire, owner_end).ok_or(Malformed::FormErr)?;
            let next = skip_record(wire, at).ok_or(Malformed::FormErr)?;
            if rtype == 41 {
                if edns.is_some() || owner_end != at + 1 {
                    return Err(Malformed::FormErr); // two OPT records, or not at the root
                }
                let payload = u16_at(wire, owner_end + 2).ok_or(Malformed::FormErr)?;
                let version = *wire.get(owner_end + 5).ok_or(Malformed::FormErr)?;
                let flags = u16_at(wire, owner_end + 6).ok_or(Malformed::FormErr)?;
                if version != 0 {
                    return Err(Malformed::BadVers);
                }
                let cookie = read_options(wire, owner_end + 10, next)?;
                edns = Some(Edns {
                    payload,
                    dnssec_ok: flags & 0x8000 != 0,
                    cookie,
                });
            }
            at = next;
        }
        Ok(Self {
            wire,
            opcode,
            qname_end,
            qtype,
            qclass,
            edns,
        })
    }

    /// The query ID.
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.wire[0], self.wire[1]])
    }

    /// Recursion desired.
    pub fn rd(&self) -> bool {
        self.wire[2] & 0x01 != 0
    }

    /// Checking disabled (RFC 4035).
    pub fn cd(&self) -> bool {
        self.wire[3] & 0x10 != 0
    }

    /// Authentic data asked for (RFC 6840: the client understands AD without DO).
    pub fn ad(&self) -> bool {
        self.wire[3] & 0x20 != 0
    }

    /// The question name in wire form, as asked (case preserved).
    pub fn qname(&self) -> &'a [u8] {
        &self.wire[HEADER..self.qname_end]
    }

    /// The question section as asked (name, type, class).
    pub fn question(&self) -> &'a [u8] {
        &self.wire[HEADER..self.qname_end + 4]
    }

    /// The labels of the question name.
    pub fn labels(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        labels(self.qname())
    }

    /// The largest reply the client takes over UDP: its EDNS payload (at least 512, at most
    /// ours), or 512 without EDNS.
    pub fn udp_limit(&self) -> usize {
        usize::from(
            self.edns
                .map_or(512, |e| e.payload.clamp(512, MAX_UDP_PAYLOAD)),
        )
    }
}

/// The labels of an uncompressed wire-format name.
pub fn labels(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let len = usize::from(*name.get(i)?);
        if len == 0 {
            return None;
        }
        let label = name.get(i + 1..i + 1 + len)?;
        i += 1 + len;
        Some(label)
    })
}

/// Offset after a resource record at `at`.
fn skip_record(b: &[u8], at: usize) -> Option<usize> {
    let fixed = skip_name(b, at)?;
    let rdlen = usize::from(u16_at(b, fixed + 8)?);
    let end = fixed + 10 + rdlen;
    (end <= b.len()).then_some(end)
}

/// The cookie option among the OPT options in `wire[from..to]`.
fn read_options(wire: &[u8], mut at: usize, end: usize) -> Result<Option<CookieAt>, Malformed> {
    let mut cookie = None;
    while at < end {
        let code = u16_at(wire, at).ok_or(Malformed::FormErr)?;
        let len = usize::from(u16_at(wire, at + 2).ok_or(Malformed::FormErr)?);
        if at + 4 + len > end {
            return Err(Malformed::FormErr);
        }
        if code == OPT_COOKIE {
            // RFC 7873: a client cookie alone (8) or with a server cookie (16 to 40).
            if cookie.is_some() || !(len == 8 || (16..=40).contains(&len)) {
                return Err(Malformed::FormErr);
            }
            cookie = Some(CookieAt { at: at + 4, len });
        }
        at += 4 + len;
    }
    Ok(cookie)
}

/// A response being written. The header and question come from the query; records are
/// appended; [`Response::finish`] adds the OPT record and fits the reply to the transport.
pub struct Response<'o> {
    out: &'o mut Vec<u8>,
    /// Upper bits of an extended RCODE (BADVERS, BADCOOKIE), written into the OPT record.
    rcode_high: u8,
}

/// A record owner: the question name (a compression pointer to it) or another name.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'n> {
    /// The question name.
    Question,
    /// A name in uncompressed wire form.
    Name(&'n [u8]),
}

/// What goes into the OPT record of a reply, besides the payload size.
#[derive(Debug, Default, Clone)]
pub struct OptOut<'t> {
    /// Extended DNS Error: info code and text.
    pub ede: Option<(u16, Cow<'t, str>)>,
    /// The cookie option to return: client cookie and server cookie.
    pub cookie: Option<[u8; 24]>,
}

impl<'o> Response<'o> {
    /// Starts a reply to `q` with `rcode` (an extended code's upper bits go into the OPT record
    /// at [`Response::finish`]; only queries with EDNS get one). Flags: QR, the query's
    /// opcode, RD and CD, and RA.
    pub fn new(out: &'o mut Vec<u8>, q: &Query<'_>, rcode: u16) -> Self {
        out.clear();
        out.extend_from_slice(&q.wire[..2]);
        out.push(0x80 | (q.opcode << 3) | (q.wire[2] & 0x01));
        out.push(0x80 | (q.wire[3] & 0x10) | (rcode & 0x0f) as u8);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(q.question());
        Self {
            out,
            rcode_high: (rcode >> 4) as u8,
        }
    }

    /// A reply with only a header (and the question when the query has one readable): for
    /// FORMERR, NOTIMP and the like, where the question may be the problem.
    pub fn header_only(out: &'o mut Vec<u8>, wire: &[u8], rcode: u16) -> Option<usize> {
        if wire.len() < HEADER || wire[2] & 0x80 != 0 {
            return None; // too short, or a response: never answered (reflection)
        }
        out.clear();
        out.extend_from_slice(&wire[..2]);
        out.push(0x80 | (wire[2] & 0x79)); // QR, opcode, RD
        out.push(0x80 | (rcode & 0x0f) as u8); // RA, RCODE
        out.extend_from_slice(&[0; 8]);
        Some(out.len())
    }

    /// Starts a reply from a ready message (header, question and records, no OPT) such as a
    /// cached answer: the query's ID, opcode, RD and CD are copied in, and its question name
    /// (same length, any letter case) over the message's.
    pub fn from_message(out: &'o mut Vec<u8>, q: &Query<'_>, message: &[u8]) -> Self {
        out.clear();
        out.extend_from_slice(message);
        if out.len() >= q.qname_end + 4 {
            out[..2].copy_from_slice(&q.wire[..2]);
            out[2] = (out[2] & !0x79) | (q.opcode << 3) | (q.wire[2] & 0x01);
            out[3] = (out[3] & !0x10) | (q.wire[3] & 0x10);
            out[HEADER..q.qname_end].copy_from_slice(q.qname());
        }
        Self { out, rcode_high: 0 }
    }

    /// The bytes written so far.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.out
    }

    /// Sets or clears AA.
    pub fn set_authoritative(&mut self, aa: bool) {
        self.out[2] = (self.out[2] & !0x04) | if aa { 0x04 } else { 0 };
    }

    /// Sets AD (answers cleanpipe validated; never on policy answers).
    pub fn set_authentic(&mut self, ad: bool) {
        self.out[3] = (self.out[3] & !0x20) | if ad { 0x20 } else { 0 };
    }

    fn bump(&mut self, at: usize) {
        let n = u16::from_be_bytes([self.out[at], self.out[at + 1]]).saturating_add(1);
        self.out[at..at + 2].copy_from_slice(&n.to_be_bytes());
    }

    /// Appends an answer record.
    pub fn answer(&mut self, owner: Owner<'_>, rtype: u16, ttl: u32, rdata: &[u8]) {
        match owner {
            Owner::Question => self.out.extend_from_slice(&[0xc0, HEADER as u8]),
            Owner::Name(n) => self.out.extend_from_slice(n),
        }
        self.out.extend_from_slice(&rtype.to_be_bytes());
        self.out.extend_from_slice(&1u16.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        let len = u16::try_from(rdata.len()).unwrap_or(u16::MAX);
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out
            .extend_from_slice(&rdata[..usize::from(len).min(rdata.len())]);
        self.bump(6);
    }

    /// Appends the OPT record when the client sent one and fits the reply into `limit` bytes:
    /// a reply that does not fit loses its records and gets TC=1 (the client retries over
    /// TCP). Returns the finished length.
    pub fn finish(mut self, q: &Query<'_>, limit: usize, opt: &OptOut<'_>) -> usize {
        let opt_bytes = q.edns.map(|e| opt_record(e, self.rcode_high, opt));
        let opt_len = opt_bytes.as_ref().map_or(0, Vec::len);
        if self.out.len() + opt_len > limit.max(512) {
            // Too big: header and question only, TC set.
            let question_end = q.qname_end + 4;
            self.out.truncate(question_end.min(self.out.len()));
            self.out[2] |= 0x02;
            self.out[6..12].fill(0);
        }
        if let Some(b) = opt_bytes {
            self.out.extend_from_slice(&b);
            self.bump(10);
        }
        self.out.len()
    }
}

/// Our OPT record for a reply to a query with EDNS: our payload size, the upper bits of the
/// RCODE, version 0, DO echoed (RFC 3225), EDE and cookie options.
fn opt_record(e: Edns, rcode_high: u8, opt: &OptOut<'_>) -> Vec<u8> {
    let mut o = Vec::with_capacity(11 + 64);
    o.push(0); // root
    o.extend_from_slice(&41u16.to_be_bytes());
    o.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    o.push(rcode_high);
    o.push(0); // version
    o.extend_from_slice(&(if e.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    let mut data = Vec::new();
    if let Some(c) = &opt.cookie {
        data.extend_from_slice(&OPT_COOKIE.to_be_bytes());
        data.extend_from_slice(&(c.len() as u16).to_be_bytes());
        data.extend_from_slice(c);
    }
    if let Some((code, text)) = &opt.ede {
        // Keep the whole OPT record well inside a 512-byte reply.
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let t = &text.as_bytes()[..end];
        data.extend_from_slice(&OPT_EDE.to_be_bytes());
        data.extend_from_slice(&((t.len() + 2) as u16).to_be_bytes());
        data.extend_from_slice(&code.to_be_bytes());
        data.extend_from_slice(t);
    }
    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
    o.extend_from_slice(&data);
    o
}

/// Offsets and values of the TTL field of every record after the question (OPT excluded), or
/// `None` when the message cannot be walked. Used to age cached answers in place.
pub fn ttl_offsets(b: &[u8]) -> Option<Vec<(u32, u32)>> {
    let count = |at: usize| -> Option<usize> { u16_at(b, at).map(usize::from) };
    let records = count(6)? + count(8)? + count(10)?;
    let mut i = skip_name(b, HEADER)? + 4;
    let mut out = Vec::with_capacity(records);
    for _ in 0..records {
        let fixed = skip_name(b, i)?;
        let rtype = u16_at(b, fixed)?;
        let ttl_at = fixed + 4;
        let ttl = u32::from_be_bytes([
            *b.get(ttl_at)?,
            *b.get(ttl_at + 1)?,
            *b.get(ttl_at + 2)?,
            *b.get(ttl_at + 3)?,
        ]);
        if rtype != 41 {
            out.push((u32::try_from(ttl_at).ok()?, ttl));
        }
        i = skip_record(b, i)?;
    }
    (i == b.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns as HEdns, Message, Query as HQuery};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        if let Some(p) = edns {
            let mut e = HEdns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().expect("encodes")
    }

    #[test]
    fn reads_a_query_once_and_writes_a_reply_hickory_can_read() {
        let w = query("WwW.Example.ORG.", Some(4096));
        let q = Query::parse(&w).expect("plain query");
        assert_eq!((q.qtype, q.qclass, q.opcode), (1, 1, opcode::QUERY));
        assert_eq!(q.edns.map(|e| e.payload), Some(4096));
        assert_eq!(q.udp_limit(), usize::from(MAX_UDP_PAYLOAD));
        assert_eq!(q.labels().count(), 3);
        let mut out = Vec::new();
        let mut r = Response::new(&mut out, &q, rcode::NOERROR);
        r.answer(Owner::Question, 1, 60, &[192, 0, 2, 1]);
        let ede = OptOut {
            ede: Some((15, "blocked".into())),
            cookie: None,
        };
        r.finish(&q, q.udp_limit(), &ede);
        let m = Message::from_vec(&out).expect("hickory reads our reply");
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.queries[0].name().to_ascii(), "WwW.Example.ORG.");
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].name.to_ascii(), "WwW.Example.ORG.");
        let e = m.edns.expect("OPT");
        assert_eq!(e.max_payload(), MAX_UDP_PAYLOAD);
    }

    #[test]
    fn a_reply_that_does_not_fit_is_truncated_with_its_opt_record_kept() {
        let w = query("big.example.", None);
        let q = Query::parse(&w).expect("query");
        assert_eq!(q.udp_limit(), 512);
        let mut out = Vec::new();
        let mut r = Response::new(&mut out, &q, rcode::NOERROR);
        for _ in 0..40 {
            r.answer(Owner::Question, 16, 60, &[20; 21]);
        }
        let n = r.finish(&q, q.udp_limit(), &OptOut::default());
        assert_eq!(n, q.qname_end + 4, "header and question only");
        let m = Message::from_vec(&out).expect("valid");
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn refusals_are_classified() {
        assert_eq!(Query::parse(&[0; 5]).err(), Some(Malformed::Ignore));
        let mut resp = query("a.example.", None);
        resp[2] |= 0x80;
        assert_eq!(Query::parse(&resp).err(), Some(Malformed::Ignore));
        let mut update = query("a.example.", None);
        update[2] |= 5 << 3;
        assert_eq!(Query::parse(&update).err(), Some(Malformed::NotImp));
        let mut two = query("a.example.", None);
        two[5] = 2;
        assert_eq!(Query::parse(&two).err(), Some(Malformed::FormErr));
        let mut v1 = query("a.example.", Some(1232));
        let n = v1.len();
        v1[n - 5] = 1; // OPT version (then flags and RDLENGTH)
        assert_eq!(Query::parse(&v1).err(), Some(Malformed::BadVers));
        let short = query("a.example.", None);
        assert_eq!(
            Query::parse(&short[..short.len() - 2]).err(),
            Some(Malformed::FormErr)
        );
    }

    #[test]
    fn badvers_carries_the_upper_bits_in_the_opt_record() {
        let w = query("a.example.", Some(1232));
        let q = Query::parse(&w).expect("query");
        let mut out = Vec::new();
        Response::new(&mut out, &q, rcode::BADVERS).finish(&q, 512, &OptOut::default());
        let m = Message::from_vec(&out).expect("valid");
        // 16 is BADVERS here (hickory names the shared code BADSIG, its TSIG meaning).
        assert_eq!(u16::from(m.metadata.response_code), 16);
        assert_eq!(m.edns.map(|e| e.version()), Some(0));
    }

    #[test]
    fn random_and_mutated_packets_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = query("www.example.org.", Some(1232));
        let mut out = Vec::new();
        for i in 0..50_000 {
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
            let _ = ttl_offsets(&p);
            if let Ok(q) = Query::parse(&p) {
                let mut r = Response::new(&mut out, &q, rcode::NOERROR);
                r.answer(Owner::Question, 1, 1, &[1, 2, 3, 4]);
                r.finish(&q, q.udp_limit(), &OptOut::default());
                Message::from_vec(&out).expect("what we write is valid");
            }
        }
    }
}
