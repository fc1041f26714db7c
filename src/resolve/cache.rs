//! The answer cache: one cache for every transport and serving thread, bounded by
//! `cache.max_entries`, holding ready wire-format answers.
//!
//! An entry is a whole reply without its OPT record: header, question (lowercase) and records,
//! as built once from the backend's answer ([`CachedAnswer::build`]). Serving it copies the
//! bytes, puts in the query's ID, flags and question name (same length, the client's letter
//! case), ages every TTL in place, and lets the request path add the OPT record
//! ([`CachedAnswer::reply`]): no decoding, no allocation beyond the output buffer.
//!
//! Entries expire when their shortest TTL runs out (clamped to `cache.min_ttl`..`cache.max_ttl`;
//! negative answers to the SOA's negative TTL, at most `cache.negative_max_ttl`; SERVFAIL for
//! `cache.servfail_ttl`). TTLs of 2^31 seconds and above count as 0 (RFC 2181 §8).
//!
//! The table is split into shards, each a small hash table behind its own mutex, so the serving
//! threads rarely meet. A full shard evicts the least recently used of a few entries sampled at
//! random (as Redis does): close to LRU at a fraction of its bookkeeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::Answer;
use crate::config::CacheConfig;
use crate::wire;

/// The longest key: a 255-byte wire name, the type and a flags byte.
const KEY_MAX: usize = 255 + 3;

/// Key flag: the client set CD and validation is on (answers resolved without validation).
pub const FLAG_CD: u8 = 0x01;

/// A cache key: the lowercased question name in wire form, the type and flags, on the stack.
#[derive(Clone, Copy)]
pub struct Key {
    bytes: [u8; KEY_MAX],
    len: u16,
    hash: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Key {
    /// The key of a question whose name is in wire form (labels and the root byte). `None`
    /// for a name longer than DNS allows.
    pub fn from_wire(qname: &[u8], qtype: u16, flags: u8) -> Option<Self> {
        if qname.len() > 255 {
            return None;
        }
        let mut k = Key {
            bytes: [0; KEY_MAX],
            len: (qname.len() + 3) as u16,
            hash: 0,
        };
        for (d, s) in k.bytes.iter_mut().zip(qname) {
            *d = s.to_ascii_lowercase();
        }
        k.bytes[qname.len()..qname.len() + 2].copy_from_slice(&qtype.to_be_bytes());
        k.bytes[qname.len() + 2] = flags;
        k.hash = {
            use std::hash::Hasher;
            let mut h = rustc_hash::FxHasher::default();
            h.write(k.as_bytes());
            h.finish()
        };
        Some(k)
    }

    /// The key of a question given as a name.
    pub fn from_name(name: &Name, qtype: RecordType, flags: u8) -> Option<Self> {
        let mut wire = Vec::with_capacity(name.len() + 2);
        for label in name.iter() {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label);
        }
        wire.push(0);
        Self::from_wire(&wire, u16::from(qtype), flags)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The client set CD (checking disabled) and the answer is kept apart from validated ones.
    pub fn checking_disabled(&self) -> bool {
        self.len > 0 && self.bytes[usize::from(self.len) - 1] & FLAG_CD != 0
    }

    /// The key's bytes (lowercase wire name, type, flags).
    pub fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A ready reply (no OPT record) and what is needed to serve it later.
#[derive(Debug)]
pub struct CachedAnswer {
    /// Header, question (lowercase name) and records.
    bytes: Box<[u8]>,
    /// Offset and stored value of every record's TTL field.
    ttls: Box<[(u32, u32)]>,
    /// When it was built.
    stored: Instant,
    /// Seconds it stays fresh.
    ttl: u32,
    /// The names a CNAME chain in the answer leads to (lowercase, no trailing dot): threat
    /// feeds are applied to them too.
    chain: Box<[Box<str>]>,
    /// Extended DNS Error of the reply (a SERVFAIL's cause, a stale answer).
    ede: Option<(u16, &'static str)>,
    /// For a stale copy: when the data itself expired (serve-stale is bounded from there).
    data_expired: Option<Instant>,
    /// A background refresh was started (prefetch), so hits do not start another.
    prefetched: std::sync::atomic::AtomicBool,
    /// Validated by DNSSEC: AD is set for clients that ask with DO or AD.
    secure: bool,
}

/// TTL of answers served stale (RFC 8767 recommends 30 s).
pub const STALE_TTL: u32 = 30;

/// TTLs of 2^31 seconds and above are read as 0 (RFC 2181 §8).
fn sane_ttl(ttl: u32) -> u32 {
    if ttl >= 1 << 31 { 0 } else { ttl }
}

impl CachedAnswer {
    /// Builds the reply for `name`/`qtype` from a backend's answer, fresh for `ttl` seconds.
    /// `None` if it cannot be encoded.
    pub fn build(name: &Name, qtype: RecordType, answer: &Answer, ttl: u32) -> Option<Self> {
        let mut m = Message::response(0, OpCode::Query);
        m.metadata.message_type = MessageType::Response;
        m.metadata.recursion_available = true;
        m.metadata.response_code = answer.rcode;
        let mut lower = name.to_lowercase();
        lower.set_fqdn(true);
        m.add_query(Query::query(lower, qtype));
        let fix = |r: &hickory_proto::rr::Record| {
            let mut r = r.clone();
            r.ttl = sane_ttl(r.ttl);
            r
        };
        m.add_answers(answer.answers.iter().map(fix));
        m.add_authorities(answer.authorities.iter().map(fix));
        let bytes = m.to_vec().ok()?;
        let ttls = wire::ttl_offsets(&bytes)?;
        let chain = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::CNAME(t) => {
                    let t = t.0.to_ascii().to_ascii_lowercase();
                    Some(t.trim_end_matches('.').into())
                }
                _ => None,
            })
            .collect();
        Some(Self {
            bytes: bytes.into_boxed_slice(),
            ttls: ttls.into_boxed_slice(),
            stored: Instant::now(),
            ttl,
            chain,
            ede: None,
            data_expired: None,
            prefetched: std::sync::atomic::AtomicBool::new(false),
            secure: answer.secure,
        })
    }

    /// The same reply with an Extended DNS Error.
    pub fn with_ede(mut self, ede: Option<(u16, &'static str)>) -> Self {
        self.ede = ede;
        self
    }

    /// The Extended DNS Error the reply carries, if any.
    pub fn ede(&self) -> Option<(u16, &'static str)> {
        self.ede
    }

    /// When the data expired (a stale copy remembers its original's).
    fn expired_at(&self) -> Instant {
        self.data_expired
            .unwrap_or(self.stored + Duration::from_secs(u64::from(self.ttl)))
    }

    /// The same data served stale: every TTL 30 s from `now`, EDE 3 (Stale Answer).
    pub fn stale_copy(&self, now: Instant) -> Self {
        Self {
            bytes: self.bytes.clone(),
            ttls: self.ttls.iter().map(|(at, _)| (*at, STALE_TTL)).collect(),
            stored: now,
            ttl: STALE_TTL,
            chain: self.chain.clone(),
            ede: Some((
                3,
                "cleanpipe: stale answer, the authoritative servers did not answer",
            )),
            data_expired: Some(self.expired_at()),
            prefetched: std::sync::atomic::AtomicBool::new(true),
            // Its signatures may have expired with it: served, never as validated.
            secure: false,
        }
    }

    /// True (once) when a hit in the last tenth of the TTL should refresh the entry in the
    /// background. Short-lived answers (under 10 s) and stale copies are never prefetched.
    pub fn wants_prefetch(&self, now: Instant) -> bool {
        self.ttl >= 10
            && self.data_expired.is_none()
            && self.rcode() != 2
            && u64::from(self.age(now)) * 10 >= u64::from(self.ttl) * 9
            && !self
                .prefetched
                .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// A SERVFAIL reply for `name`/`qtype`.
    pub fn servfail(name: &Name, qtype: RecordType, ttl: u32) -> Option<Self> {
        Self::build(name, qtype, &Answer::servfail(), ttl)
    }

    /// Seconds since it was built.
    pub fn age(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.stored)
            .as_secs()
            .min(u64::from(u32::MAX)) as u32
    }

    /// True while its TTL runs.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.ttl
    }

    /// Seconds it stays fresh from when it was built.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The names the answer's CNAME chain leads to.
    pub fn chain(&self) -> &[Box<str>] {
        &self.chain
    }

    /// True when the data was validated by DNSSEC.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The RCODE of the reply.
    pub fn rcode(&self) -> u16 {
        u16::from(self.bytes.get(3).map_or(2, |b| b & 0x0f))
    }

    /// Starts the reply to `q` from this answer: the query's ID, flags and name case, every
    /// TTL reduced by the entry's age (at least 1).
    pub fn reply<'o>(
        &self,
        out: &'o mut Vec<u8>,
        q: &wire::Query<'_>,
        now: Instant,
    ) -> wire::Response<'o> {
        let age = self.age(now);
        let mut r = wire::Response::from_message(out, q, &self.bytes);
        let b = r.bytes_mut();
        for (at, ttl) in self.ttls.iter() {
            let at = *at as usize;
            if let Some(field) = b.get_mut(at..at + 4) {
                field.copy_from_slice(&ttl.saturating_sub(age).max(1).to_be_bytes());
            }
        }
        r
    }

    /// The records again, TTLs aged (for answers cleanpipe composes, e.g. a safe-search CNAME
    /// followed by its target's records).
    pub fn answer(&self, now: Instant) -> Option<Answer> {
        let age = self.age(now);
        let m = Message::from_vec(&self.bytes).ok()?;
        let aged = |mut r: hickory_proto::rr::Record| {
            r.ttl = r.ttl.saturating_sub(age).max(1);
            r
        };
        Some(Answer {
            rcode: m.metadata.response_code,
            answers: m.answers.into_iter().map(aged).collect(),
            authorities: m.authorities.into_iter().map(aged).collect(),
            secure: self.secure,
        })
    }

    /// Memory it holds, for the size estimate.
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.bytes.len()
            + self.ttls.len() * 8
            + self.chain.iter().map(|n| n.len() + 16).sum::<usize>()
    }
}

struct Slot {
    hash: u64,
    key: Box<[u8]>,
    answer: Arc<CachedAnswer>,
    /// Seconds since the cache was created at the last use (for eviction).
    used: u32,
}

#[derive(Default)]
struct Shard {
    index: hashbrown::HashTable<u32>,
    slots: Vec<Slot>,
    rng: u64,
}

impl Shard {
    fn find(&self, key: &Key) -> Option<usize> {
        let k = key.as_bytes();
        self.index
            .find(key.hash, |&i| *self.slots[i as usize].key == *k)
            .map(|&i| i as usize)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: cheap, good enough to sample eviction candidates.
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn remove(&mut self, i: usize) {
        let hash = self.slots[i].hash;
        if let Ok(e) = self.index.find_entry(hash, |&j| j as usize == i) {
            e.remove();
        }
        let last = self.slots.len() - 1;
        self.slots.swap_remove(i);
        if i != last {
            // The last slot moved to `i`: point its index entry there.
            let moved = self.slots[i].hash;
            if let Some(j) = self.index.find_mut(moved, |&j| j as usize == last) {
                *j = i as u32;
            }
        }
    }

    /// The least recently used of a few slots sampled at random.
    fn victim(&mut self) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let picks: [usize; 5] = std::array::from_fn(|_| (self.next_random() % n as u64) as usize);
        picks.into_iter().min_by_key(|&i| self.slots[i].used)
    }
}

/// The shared answer cache.
pub struct AnswerCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    epoch: Instant,
    min_ttl: u32,
    max_ttl: u32,
    negative_max_ttl: u32,
    servfail_ttl: u32,
    /// How long after expiry an answer may still be served stale.
    stale: Duration,
}

impl AnswerCache {
    /// A cache sized and clamped by configuration; `max_entries: 0` disables caching.
    pub fn new(c: &CacheConfig) -> Self {
        let max = usize::try_from(c.max_entries).unwrap_or(usize::MAX);
        // Enough shards that two serving threads rarely meet, few enough that small caches
        // still hold their configured size.
        let shards = (max / 64).clamp(1, 64).next_power_of_two().min(64);
        let per_shard = max / shards;
        Self {
            shards: (0..shards)
                .map(|i| {
                    Mutex::new(Shard {
                        rng: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
                        ..Shard::default()
                    })
                })
                .collect(),
            per_shard,
            epoch: Instant::now(),
            min_ttl: c.min_ttl,
            max_ttl: c.max_ttl,
            negative_max_ttl: c.negative_max_ttl,
            servfail_ttl: c.servfail_ttl,
            stale: Duration::from_secs(u64::from(c.serve_stale_secs)),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        // The top bits pick the shard; the table uses the low bits.
        let i = (key.hash >> 58) as usize % self.shards.len();
        &self.shards[i]
    }

    fn tick(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    /// The fresh answer for `key`, if any. An expired one is dropped, unless it may still be
    /// served stale.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<CachedAnswer>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut s = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let i = s.find(key)?;
        if !s.slots[i].answer.is_fresh(now) {
            if !self.may_serve_stale(&s.slots[i].answer, now) {
                s.remove(i);
            }
            return None;
        }
        s.slots[i].used = self.tick(now);
        Some(s.slots[i].answer.clone())
    }

    fn may_serve_stale(&self, a: &CachedAnswer, now: Instant) -> bool {
        !self.stale.is_zero() && a.rcode() != 2 && now < a.expired_at() + self.stale
    }

    /// An expired answer that may still be served stale (RFC 8767), if any.
    pub fn get_stale(&self, key: &Key, now: Instant) -> Option<Arc<CachedAnswer>> {
        if self.per_shard == 0 || self.stale.is_zero() {
            return None;
        }
        let s = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let i = s.find(key)?;
        let a = &s.slots[i].answer;
        (!a.is_fresh(now) && self.may_serve_stale(a, now)).then(|| a.clone())
    }

    /// Stores an answer (replacing any for the same key); a full shard evicts first.
    pub fn insert(&self, key: &Key, answer: Arc<CachedAnswer>) {
        if self.per_shard == 0 || answer.ttl == 0 {
            return;
        }
        let used = self.tick(Instant::now());
        let mut s = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = s.find(key) {
            s.slots[i].answer = answer;
            s.slots[i].used = used;
            return;
        }
        while s.slots.len() >= self.per_shard {
            match s.victim() {
                Some(v) => s.remove(v),
                None => break,
            }
        }
        let i = s.slots.len() as u32;
        s.slots.push(Slot {
            hash: key.hash,
            key: key.as_bytes().into(),
            answer,
            used,
        });
        let Shard { index, slots, .. } = &mut *s;
        index.insert_unique(key.hash, i, |&j| slots[j as usize].hash);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).slots.len())
            .sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by entries (answers, keys, table), an estimate for status and metrics.
    pub fn footprint(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.slots
                    .iter()
                    .map(|slot| {
                        std::mem::size_of::<Slot>() + slot.key.len() + slot.answer.footprint()
                    })
                    .sum::<usize>()
                    + s.index.capacity() * 5
            })
            .sum()
    }

    /// Builds the reply for an answer with every record's TTL clamped to `cache.max_ttl` (so
    /// clients never keep a record longer than the cache would).
    pub fn build(
        &self,
        name: &Name,
        qtype: RecordType,
        answer: &Answer,
        ttl: u32,
    ) -> Option<CachedAnswer> {
        let clamp = |r: &hickory_proto::rr::Record| {
            let mut r = r.clone();
            r.ttl = sane_ttl(r.ttl).min(self.max_ttl);
            r
        };
        let clamped = Answer {
            rcode: answer.rcode,
            answers: answer.answers.iter().map(clamp).collect(),
            authorities: answer.authorities.iter().map(clamp).collect(),
            secure: answer.secure,
        };
        CachedAnswer::build(name, qtype, &clamped, ttl)
    }

    /// How long an answer may be cached: its shortest TTL, clamped by configuration.
    pub fn ttl_for(&self, a: &Answer) -> u32 {
        match a.rcode {
            ResponseCode::NoError if !a.answers.is_empty() => a
                .answers
                .iter()
                .map(|r| sane_ttl(r.ttl))
                .min()
                .unwrap_or(0)
                .clamp(self.min_ttl, self.max_ttl),
            ResponseCode::NoError | ResponseCode::NXDomain => {
                // RFC 2308: the negative TTL is min(SOA TTL, SOA MINIMUM).
                let soa_ttl = a.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(sane_ttl(r.ttl).min(soa.minimum)),
                    _ => None,
                });
                soa_ttl
                    .unwrap_or(0)
                    .clamp(self.min_ttl, self.max_ttl)
                    .min(self.negative_max_ttl)
            }
            _ => self.servfail_ttl,
        }
    }

    /// Seconds a SERVFAIL is remembered.
    pub fn servfail_ttl(&self) -> u32 {
        self.servfail_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).expect("name")
    }

    fn cache() -> AnswerCache {
        AnswerCache::new(&CacheConfig::default())
    }

    fn key(s: &str, t: RecordType) -> Key {
        Key::from_name(&name(s), t, 0).expect("key")
    }

    fn put(c: &AnswerCache, s: &str, t: RecordType, a: &Answer) {
        let ttl = c.ttl_for(a);
        let e = CachedAnswer::build(&name(s), t, a, ttl).expect("builds");
        c.insert(&key(s, t), Arc::new(e));
    }

    #[test]
    fn answers_come_back_whole_with_sections_and_case_insensitive_keys() {
        let c = cache();
        let chain = Answer {
            rcode: ResponseCode::NoError,
            answers: vec![
                Record::from_rdata(
                    name("www.example.org."),
                    300,
                    RData::CNAME(CNAME(name("cdn.example.net."))),
                ),
                Record::from_rdata(name("cdn.example.net."), 60, RData::A(A::new(192, 0, 2, 1))),
                Record::from_rdata(name("cdn.example.net."), 60, RData::A(A::new(192, 0, 2, 2))),
            ],
            authorities: Vec::new(),
            secure: false,
        };
        put(&c, "www.example.org.", RecordType::A, &chain);
        let now = Instant::now();
        let hit = c
            .get(&key("WWW.Example.ORG.", RecordType::A), now)
            .expect("a hit whatever the case");
        let back = hit.answer(now).expect("decodes");
        assert_eq!(back.rcode, ResponseCode::NoError);
        assert_eq!(back.answers, chain.answers);
        assert!(back.authorities.is_empty());
        assert!(
            c.get(&key("www.example.org.", RecordType::AAAA), now)
                .is_none(),
            "the type is part of the key"
        );
        assert_eq!(hit.ttl(), 60, "the shortest TTL");
    }

    #[test]
    fn negative_answers_keep_their_soa_and_ttls_past_2_to_the_31_count_as_zero() {
        let c = cache();
        let soa = SOA::new(
            name("ns.example.org."),
            name("hostmaster.example.org."),
            1,
            3600,
            600,
            86400,
            300,
        );
        let nx = Answer {
            rcode: ResponseCode::NXDomain,
            answers: Vec::new(),
            authorities: vec![Record::from_rdata(
                name("example.org."),
                3600,
                RData::SOA(soa),
            )],
            secure: false,
        };
        put(&c, "nope.example.org.", RecordType::A, &nx);
        let hit = c
            .get(&key("nope.example.org.", RecordType::A), Instant::now())
            .expect("negative answers are cached");
        assert_eq!(hit.ttl(), 300, "min(SOA TTL, SOA MINIMUM)");
        let back = hit.answer(Instant::now()).expect("decodes");
        assert_eq!(back.rcode, ResponseCode::NXDomain);
        assert_eq!(back.authorities, nx.authorities);
        let huge = Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                name("huge.example.org."),
                1 << 31,
                RData::A(A::new(192, 0, 2, 9)),
            )],
            authorities: Vec::new(),
            secure: false,
        };
        assert_eq!(c.ttl_for(&huge), 0, "RFC 2181: 2^31 and above mean 0");
    }

    #[test]
    fn served_ttls_never_exceed_max_ttl_and_huge_ones_count_as_zero() {
        let c = cache();
        let a = Answer {
            rcode: ResponseCode::NoError,
            answers: vec![
                Record::from_rdata(name("a.example."), 864_000, RData::A(A::new(192, 0, 2, 1))),
                Record::from_rdata(name("a.example."), 1 << 31, RData::A(A::new(192, 0, 2, 2))),
            ],
            authorities: Vec::new(),
            secure: false,
        };
        let e = c
            .build(&name("a.example."), RecordType::A, &a, 60)
            .expect("builds");
        let back = e.answer(Instant::now()).expect("decodes");
        assert_eq!(back.answers[0].ttl, 86_400, "clamped to cache.max_ttl");
        assert_eq!(
            back.answers[1].ttl, 1,
            "2^31 read as 0, served as the minimum"
        );
    }

    #[test]
    fn a_small_cache_holds_its_size_and_evicts() {
        let c = AnswerCache::new(&CacheConfig {
            max_entries: 1000,
            ..CacheConfig::default()
        });
        let a = |i: u32| Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                name(&format!("n{i}.example.")),
                300,
                RData::A(A::from(std::net::Ipv4Addr::from(i))),
            )],
            authorities: Vec::new(),
            secure: false,
        };
        for i in 0..10_000 {
            put(&c, &format!("n{i}.example."), RecordType::A, &a(i));
        }
        assert!(c.len() <= 1000, "{} entries", c.len());
        assert!(c.len() >= 900, "{} entries", c.len());
        // Whatever is still there answers correctly.
        let now = Instant::now();
        let found = (0..10_000)
            .filter(|i| {
                c.get(&key(&format!("n{i}.example."), RecordType::A), now)
                    .and_then(|h| h.answer(now))
                    .is_some_and(|b| b.answers == a(*i).answers)
            })
            .count();
        assert_eq!(found, c.len());
    }
}
