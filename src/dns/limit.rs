//! Rate limits on the request path: what one host may make cleanpipe do.
//!
//! - **Queries per client** (`limits.client_qps`, off by default): a token bucket per client
//!   (IPv6: per /64); over UDP the excess is dropped, over TCP refused.
//! - **Never-cached names per client** (`limits.new_names_per_second`, on by default): a
//!   random-subdomain flood (`x7f3q.victim.example`, `k2p9z.victim.example`, ...) misses the
//!   cache every time and would pass straight to the upstream or the authorities; beyond the
//!   budget such queries are dropped over UDP (the cheapest answer to a flood) and get SERVFAIL
//!   over TCP. Cached names are not counted.
//! - **Upstream queries in flight** per client and per domain (the last two labels of the
//!   name): bounded, so neither one host nor one attacked domain can tie up the resolver.
//! - **REFUSED to unserved sources** (`limits.refused_per_second` per /24 or /56): refusals
//!   are larger than the queries that cause them, so a forged source could turn cleanpipe
//!   into a reflector; beyond the budget they are dropped (response rate limiting, as BIND and
//!   Knot do).
//!
//! Buckets live in a sharded table bounded in size; a client over a limit is logged at most
//! once a minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Shards of a bucket table.
const SHARDS: usize = 16;
/// Buckets kept per shard (the oldest half is dropped when full).
const PER_SHARD: usize = 16_384;

/// Which limit a query ran into (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Queries per client.
    Client,
    /// Never-cached names per client.
    NewNames,
    /// Upstream queries in flight for the client.
    ClientOutstanding,
    /// Upstream queries in flight for the domain.
    ZoneOutstanding,
    /// REFUSED answers to an unserved source network.
    Refused,
}

impl Limit {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Client => "client",
            Limit::NewNames => "new_names",
            Limit::ClientOutstanding => "client_outstanding",
            Limit::ZoneOutstanding => "zone_outstanding",
            Limit::Refused => "refused",
        }
    }
}

struct Bucket {
    tokens: f32,
    /// Milliseconds since the table's epoch at the last refill.
    at: u32,
    /// Minute (since the epoch) of the last log line about this key.
    logged: u32,
}

/// Token buckets by key: `rate` per second, at most `burst` saved up.
pub struct Buckets {
    rate: f32,
    burst: f32,
    epoch: Instant,
    shards: Box<[Mutex<HashMap<IpAddr, Bucket>>]>,
    limit: Limit,
}

fn shard_of(key: IpAddr) -> usize {
    let h = match key {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let o = a.octets();
            u64::from_le_bytes(o[..8].try_into().unwrap_or([0; 8]))
                ^ u64::from_le_bytes(o[8..].try_into().unwrap_or([0; 8]))
        }
    };
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS
}

impl Buckets {
    /// Buckets for `limit`; `rate` 0 disables it.
    pub fn new(limit: Limit, rate: u32, burst: u32) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: rate as f32,
            burst: burst.max(rate) as f32,
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limit,
        })
    }

    /// Takes a token for `key` at `now`; `false` when none is left (counted, logged once a
    /// minute per key).
    pub fn take(&self, key: IpAddr, now: Instant) -> bool {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let mut shard = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= PER_SHARD && !shard.contains_key(&key) {
            // Full: forget the buckets idle the longest (they would be full again anyway).
            let mut ages: Vec<u32> = shard.values().map(|b| b.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            shard.retain(|_, b| b.at > cut);
        }
        let b = shard.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: ms,
            logged: u32::MAX,
        });
        let elapsed = ms.saturating_sub(b.at) as f32 / 1000.0;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        metrics::counter!(crate::metrics::RATE_LIMITED, "limit" => self.limit.label()).increment(1);
        let minute = ms / 60_000;
        if b.logged != minute {
            b.logged = minute;
            tracing::warn!(client = %key, limit = self.limit.label(), rate = self.rate, "rate limit reached: excess queries are not answered normally (logged once a minute per client)");
        }
        false
    }
}

/// Counts of work in flight by key, each bounded.
pub struct InFlight {
    max: usize,
    counts: Mutex<HashMap<Box<str>, usize>>,
    limit: Limit,
}

/// A place in an [`InFlight`] count, given back on drop.
pub struct Ticket<'a> {
    table: &'a InFlight,
    key: Box<str>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut c = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

impl InFlight {
    /// At most `max` per key; 0 disables the bound.
    pub fn new(limit: Limit, max: usize) -> Option<Self> {
        (max > 0).then(|| Self {
            max,
            counts: Mutex::new(HashMap::new()),
            limit,
        })
    }

    /// A place for `key`, or `None` (counted) when it has `max` already.
    pub fn enter(&self, key: &str) -> Option<Ticket<'_>> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(key.into()).or_insert(0);
        if *n >= self.max {
            metrics::counter!(crate::metrics::RATE_LIMITED, "limit" => self.limit.label())
                .increment(1);
            return None;
        }
        *n += 1;
        Some(Ticket {
            table: self,
            key: key.into(),
        })
    }
}

/// The key a client is limited by: its address (IPv4) or its /64 (IPv6).
pub fn client_key(ip: IpAddr) -> IpAddr {
    mask(ip, 32, 64)
}

/// The key of a source network for refusals: its /24 or /56.
pub fn network_key(ip: IpAddr) -> IpAddr {
    mask(ip, 24, 56)
}

fn mask(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    match crate::policy::prefix::canonical_ip(ip) {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// The domain a name is counted under for upstream queries in flight: its last two labels
/// (`x7f3q.victim.example` → `victim.example`), lowercase.
pub fn zone_key(qname: &[u8]) -> String {
    let labels: Vec<&[u8]> = crate::wire::labels(qname).collect();
    let start = labels.len().saturating_sub(2);
    labels[start..]
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let b = Buckets::new(Limit::Client, 10, 20).expect("on");
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let t0 = Instant::now();
        assert_eq!((0..30).filter(|_| b.take(ip, t0)).count(), 20, "the burst");
        assert!(!b.take(ip, t0));
        assert_eq!(
            (0..30)
                .filter(|_| b.take(ip, t0 + Duration::from_millis(500)))
                .count(),
            5,
            "half a second at 10/s"
        );
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(b.take(other, t0), "another client has its own bucket");
        assert!(Buckets::new(Limit::Client, 0, 0).is_none(), "0 disables");
    }

    #[test]
    fn keys_group_households_and_networks() {
        let ip: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        assert_eq!(client_key(ip).to_string(), "2001:db8:1:2::");
        assert_eq!(network_key(ip).to_string(), "2001:db8:1::");
        assert_eq!(
            network_key("192.0.2.77".parse().expect("ip")).to_string(),
            "192.0.2.0"
        );
        let mut n = vec![1, b'x'];
        n.extend_from_slice(b"\x06Victim\x07example\x00");
        assert_eq!(zone_key(&n), "victim.example");
    }

    #[test]
    fn in_flight_places_are_bounded_and_given_back() {
        let f = InFlight::new(Limit::ZoneOutstanding, 2).expect("on");
        let a = f.enter("victim.example").expect("1");
        let _b = f.enter("victim.example").expect("2");
        assert!(f.enter("victim.example").is_none());
        assert!(f.enter("other.example").is_some());
        drop(a);
        assert!(f.enter("victim.example").is_some());
    }
}
