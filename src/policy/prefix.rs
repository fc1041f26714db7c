//! Longest-prefix match over IPv4 and IPv6 networks.
//!
//! One hash map per prefix length that is actually present, searched from the longest length to
//! the shortest. Real policy uses few distinct lengths (/32 and /24 for IPv4 subscribers, /56 and
//! /64 for IPv6 delegations, a handful for organisations), so a lookup is a few hash probes.
//! Memory is one `(key, value)` slot per entry (about 18 bytes for IPv4 with the table's spare
//! capacity), far below a pointer-based trie.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

/// A map from networks to values with longest-prefix lookup.
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    v4: Vec<(u8, FxHashMap<u32, V>)>,
    /// IPv6 prefixes up to /64 (subscriber delegations): keyed by the upper 64 bits, half the
    /// memory of a 128-bit key.
    v6: Vec<(u8, FxHashMap<u64, V>)>,
    /// IPv6 prefixes longer than /64.
    v6_long: Vec<(u8, FxHashMap<u128, V>)>,
    len: usize,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
            v6_long: Vec::new(),
            len: 0,
        }
    }
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

/// Upper 64 bits of a masked IPv6 prefix of length ≤ 64.
fn key6(addr: u128, len: u8) -> u64 {
    (mask6(addr, len) >> 64) as u64
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, seen on dual-stack sockets) is the IPv4 client.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl<V> PrefixMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of networks in the map.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the map holds no network.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts a network (host bits are ignored); returns the value it replaces, if any.
    pub fn insert(&mut self, net: IpNet, value: V) -> Option<V> {
        let len = net.prefix_len();
        let old = match net {
            IpNet::V4(n) => {
                let key = mask4(u32::from(n.addr()), len);
                slot(&mut self.v4, len).insert(key, value)
            }
            IpNet::V6(n) if len <= 64 => {
                slot(&mut self.v6, len).insert(key6(u128::from(n.addr()), len), value)
            }
            IpNet::V6(n) => {
                let key = mask6(u128::from(n.addr()), len);
                slot(&mut self.v6_long, len).insert(key, value)
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes exactly this network; returns its value.
    pub fn remove(&mut self, net: IpNet) -> Option<V> {
        let len = net.prefix_len();
        let old = match net {
            IpNet::V4(n) => self
                .v4
                .iter_mut()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.remove(&mask4(u32::from(n.addr()), len))),
            IpNet::V6(n) if len <= 64 => self
                .v6
                .iter_mut()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.remove(&key6(u128::from(n.addr()), len))),
            IpNet::V6(n) => self
                .v6_long
                .iter_mut()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.remove(&mask6(u128::from(n.addr()), len))),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value of exactly this network.
    pub fn get_exact(&self, net: IpNet) -> Option<&V> {
        let len = net.prefix_len();
        match net {
            IpNet::V4(n) => self
                .v4
                .iter()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.get(&mask4(u32::from(n.addr()), len))),
            IpNet::V6(n) if len <= 64 => self
                .v6
                .iter()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.get(&key6(u128::from(n.addr()), len))),
            IpNet::V6(n) => self
                .v6_long
                .iter()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.get(&mask6(u128::from(n.addr()), len))),
        }
    }

    /// The value of the longest network containing `ip`, with that network's prefix length.
    pub fn longest_match(&self, ip: IpAddr) -> Option<(u8, &V)> {
        match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, m)| m.get(&mask4(a, *len)).map(|v| (*len, v)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6_long
                    .iter()
                    .find_map(|(len, m)| m.get(&mask6(a, *len)).map(|v| (*len, v)))
                    .or_else(|| {
                        self.v6
                            .iter()
                            .find_map(|(len, m)| m.get(&key6(a, *len)).map(|v| (*len, v)))
                    })
            }
        }
    }

    /// True when some network in the map contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.longest_match(ip).is_some()
    }

    /// Reserves room for `additional` more IPv4 networks of length `len` (bulk loads).
    pub fn reserve_v4(&mut self, len: u8, additional: usize) {
        slot(&mut self.v4, len).reserve(additional);
    }

    /// Every network and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> {
        let v4 = self.v4.iter().flat_map(|(len, m)| {
            m.iter().filter_map(move |(k, v)| {
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(*k), *len)
                    .ok()
                    .map(|n| (IpNet::V4(n), v))
            })
        });
        let v6 = self.v6.iter().flat_map(|(len, m)| {
            m.iter().filter_map(move |(k, v)| {
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(u128::from(*k) << 64), *len)
                    .ok()
                    .map(|n| (IpNet::V6(n), v))
            })
        });
        let v6_long = self.v6_long.iter().flat_map(|(len, m)| {
            m.iter().filter_map(move |(k, v)| {
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(*k), *len)
                    .ok()
                    .map(|n| (IpNet::V6(n), v))
            })
        });
        v4.chain(v6).chain(v6_long)
    }

    /// Releases spare capacity after a bulk load.
    pub fn shrink_to_fit(&mut self) {
        self.v4.iter_mut().for_each(|(_, m)| m.shrink_to_fit());
        self.v6.iter_mut().for_each(|(_, m)| m.shrink_to_fit());
        self.v6_long.iter_mut().for_each(|(_, m)| m.shrink_to_fit());
    }
}

/// The map for one prefix length, kept sorted longest first.
fn slot<K, V>(levels: &mut Vec<(u8, FxHashMap<K, V>)>, len: u8) -> &mut FxHashMap<K, V> {
    let i = match levels.iter().position(|(l, _)| *l <= len) {
        Some(i) if levels[i].0 == len => i,
        Some(i) => {
            levels.insert(i, (len, FxHashMap::default()));
            i
        }
        None => {
            levels.push((len, FxHashMap::default()));
            levels.len() - 1
        }
    };
    &mut levels[i].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network must parse")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address must parse")
    }

    #[test]
    fn longest_prefix_wins_v4() {
        let mut m = PrefixMap::new();
        m.insert(net("192.0.2.0/24"), "org");
        m.insert(net("192.0.2.128/25"), "subnet");
        m.insert(net("192.0.2.200/32"), "host");
        assert_eq!(m.longest_match(ip("192.0.2.200")), Some((32, &"host")));
        assert_eq!(m.longest_match(ip("192.0.2.201")), Some((25, &"subnet")));
        assert_eq!(m.longest_match(ip("192.0.2.1")), Some((24, &"org")));
        assert_eq!(m.longest_match(ip("198.51.100.1")), None);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn longest_prefix_wins_v6_and_host_bits_ignored() {
        let mut m = PrefixMap::new();
        m.insert(net("2001:db8:1200::/40"), 1);
        m.insert(net("2001:db8:1234:5600::1/56"), 2);
        assert_eq!(m.longest_match(ip("2001:db8:1234:56ff::9")), Some((56, &2)));
        assert_eq!(m.longest_match(ip("2001:db8:1234:5700::9")), Some((40, &1)));
        assert_eq!(m.longest_match(ip("2001:db9::1")), None);
    }

    #[test]
    fn short_and_long_ipv6_prefixes_nest() {
        let mut m = PrefixMap::new();
        m.insert(net("2001:db8:1:100::/56"), "delegation");
        m.insert(net("2001:db8:1:100::/64"), "lan");
        m.insert(net("2001:db8:1:100::7/128"), "host");
        m.insert(net("::/0"), "all");
        assert_eq!(
            m.longest_match(ip("2001:db8:1:100::7")),
            Some((128, &"host"))
        );
        assert_eq!(m.longest_match(ip("2001:db8:1:100::8")), Some((64, &"lan")));
        assert_eq!(
            m.longest_match(ip("2001:db8:1:1ff::8")),
            Some((56, &"delegation"))
        );
        assert_eq!(m.longest_match(ip("2001:db9::1")), Some((0, &"all")));
        let mut nets: Vec<String> = m.iter().map(|(n, _)| n.to_string()).collect();
        nets.sort();
        assert_eq!(
            nets,
            vec![
                "2001:db8:1:100::/56",
                "2001:db8:1:100::/64",
                "2001:db8:1:100::7/128",
                "::/0"
            ]
        );
        assert_eq!(m.remove(net("2001:db8:1:100::/64")), Some("lan"));
        assert_eq!(m.get_exact(net("2001:db8:1:100::/56")), Some(&"delegation"));
    }

    #[test]
    fn v4_mapped_v6_matches_v4_networks() {
        let mut m = PrefixMap::new();
        m.insert(net("192.0.2.0/24"), ());
        assert!(m.contains(ip("::ffff:192.0.2.9")));
    }

    #[test]
    fn insert_reports_duplicates_and_remove_works() {
        let mut m = PrefixMap::new();
        assert_eq!(m.insert(net("10.0.0.0/8"), 1), None);
        assert_eq!(
            m.insert(net("10.1.0.0/8"), 2),
            Some(1),
            "same network after masking"
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(net("10.0.0.0/8")), Some(2));
        assert!(m.is_empty());
        assert_eq!(m.iter().count(), 0);
    }

    #[test]
    fn default_route_matches_everything() {
        let mut m = PrefixMap::new();
        m.insert(net("0.0.0.0/0"), ());
        assert!(m.contains(ip("203.0.113.5")));
        assert!(!m.contains(ip("2001:db8::1")));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The naive reference: every network that contains the address, the longest wins.
    fn naive(nets: &[(IpNet, u32)], ip: IpAddr) -> Option<(u8, u32)> {
        nets.iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(n, v)| (n.prefix_len(), *v))
    }

    fn v4_net() -> impl Strategy<Value = IpNet> {
        // Few distinct high bits, so that networks overlap and addresses fall inside them.
        (0u32..8, any::<u32>(), 0u8..=32).prop_map(|(hi, lo, len)| {
            let addr = std::net::Ipv4Addr::from((hi << 29) | (lo >> 3));
            IpNet::new(IpAddr::V4(addr), len).expect("valid").trunc()
        })
    }

    fn v6_net() -> impl Strategy<Value = IpNet> {
        (0u128..8, any::<u128>(), 0u8..=128).prop_map(|(hi, lo, len)| {
            let addr = std::net::Ipv6Addr::from((hi << 125) | (lo >> 3));
            IpNet::new(IpAddr::V6(addr), len).expect("valid").trunc()
        })
    }

    proptest! {
        #[test]
        fn longest_match_agrees_with_a_naive_scan(
            nets in proptest::collection::vec(prop_oneof![v4_net(), v6_net()], 0..40),
            probes in proptest::collection::vec(prop_oneof![v4_net(), v6_net()], 1..40),
        ) {
            let mut map = PrefixMap::new();
            let mut reference: Vec<(IpNet, u32)> = Vec::new();
            for (i, n) in nets.iter().enumerate() {
                // Later inserts of the same network replace earlier ones, in both.
                map.insert(*n, i as u32);
                reference.retain(|(r, _)| r != n);
                reference.push((*n, i as u32));
            }
            prop_assert_eq!(map.len(), reference.len());
            for p in &probes {
                for ip in [p.addr(), p.broadcast()] {
                    let got = map.longest_match(ip).map(|(l, v)| (l, *v));
                    prop_assert_eq!(got, naive(&reference, ip), "address {}", ip);
                }
            }
        }
    }
}
