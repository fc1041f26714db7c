//! DNS cookies (RFC 7873, server cookies as RFC 9018 specifies them): how a UDP query proves
//! that its source address is real.
//!
//! A client sends an 8-byte client cookie; cleanpipe answers with a 16-byte server cookie bound
//! to that client cookie and the client's address: version 1, three reserved bytes, a
//! timestamp, and SipHash-2-4 over the lot keyed with a server secret. A later query carrying
//! a valid server cookie can only come from a host that received our answer at that address,
//! so it is as proven as a TCP handshake. Cookies are accepted for an hour (and up to five
//! minutes from the future, for clock skew between instances sharing a secret) and renewed
//! after half an hour.
//!
//! Why it matters here: detection flags a subscriber who looks up a botnet name. A bare UDP
//! source address can be forged, so a lookup that would flag someone is answered over UDP with
//! TC=1 (the client asks again over TCP, which proves its address) unless it carries a valid
//! cookie. A forged packet can then never quarantine anyone.

use std::net::IpAddr;

/// How long a server cookie is accepted, and when it is renewed (seconds).
const MAX_AGE: u32 = 3600;
const RENEW_AFTER: u32 = 1800;
/// Accepted from the future (clock skew between instances sharing a secret).
const SKEW: u32 = 300;

/// The server side of DNS cookies.
#[derive(Clone)]
pub struct Cookies {
    key: [u8; 16],
}

impl std::fmt::Debug for Cookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookies(<secret>)")
    }
}

/// What a query's cookie option says, and the option to put in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The query carried a valid server cookie for its source address.
    pub proven: bool,
    /// Client cookie and server cookie for the reply.
    pub reply: [u8; 24],
}

impl Cookies {
    /// Cookies keyed with `secret` (instances of a fleet share one), or a random key.
    pub fn new(secret: Option<[u8; 16]>) -> Self {
        Self {
            key: secret.unwrap_or_else(rand::random),
        }
    }

    /// The server cookie for `client` cookie from `ip` at `now` (unix seconds).
    pub fn server_cookie(&self, client: &[u8], ip: IpAddr, now: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 1; // version
        c[4..8].copy_from_slice(&now.to_be_bytes());
        let mut input = Vec::with_capacity(8 + 8 + 16);
        input.extend_from_slice(&client[..8.min(client.len())]);
        input.extend_from_slice(&c[..8]);
        match crate::policy::prefix::canonical_ip(ip) {
            IpAddr::V4(a) => input.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => input.extend_from_slice(&a.octets()),
        }
        c[8..].copy_from_slice(&siphash24(&self.key, &input).to_le_bytes());
        c
    }

    /// Checks the cookie option of a query (`option`: client cookie, then the server cookie
    /// if any) from `ip` at `now`.
    pub fn check(&self, option: &[u8], ip: IpAddr, now: u32) -> Checked {
        let client = &option[..8.min(option.len())];
        let mut reply = [0u8; 24];
        reply[..client.len()].copy_from_slice(client);
        if option.len() == 24 && option[8] == 1 {
            let stamp = u32::from_be_bytes([option[12], option[13], option[14], option[15]]);
            let expected = self.server_cookie(client, ip, stamp);
            let fresh = now.wrapping_sub(stamp) <= MAX_AGE || stamp.wrapping_sub(now) <= SKEW;
            if fresh && constant_time_eq(&expected, &option[8..]) {
                let keep = now.wrapping_sub(stamp) < RENEW_AFTER || stamp > now;
                let server = if keep {
                    expected
                } else {
                    self.server_cookie(client, ip, now)
                };
                reply[8..].copy_from_slice(&server);
                return Checked {
                    proven: true,
                    reply,
                };
            }
        }
        reply[8..].copy_from_slice(&self.server_cookie(client, ip, now));
        Checked {
            proven: false,
            reply,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SipHash-2-4 (Aumasson and Bernstein), as RFC 9018 specifies for server cookies.
fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes(key[..8].try_into().unwrap_or([0; 8]));
    let k1 = u64::from_le_bytes(key[8..].try_into().unwrap_or([0; 8]));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let m = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // From the SipHash paper (Appendix A) and its reference implementation's vectors.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
    }

    #[test]
    fn a_server_cookie_proves_the_address_it_was_given_to() {
        let c = Cookies::new(Some([7; 16]));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let now = 1_800_000_000;
        let first = c.check(&[1, 2, 3, 4, 5, 6, 7, 8], ip, now);
        assert!(!first.proven, "a client cookie alone proves nothing");
        let again = c.check(&first.reply, ip, now + 10);
        assert!(again.proven, "our cookie back from the same address");
        assert_eq!(again.reply, first.reply, "not renewed yet");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(
            !c.check(&first.reply, other, now + 10).proven,
            "another address"
        );
        assert!(!c.check(&first.reply, ip, now + 3601).proven, "too old");
        let renewed = c.check(&first.reply, ip, now + 2000);
        assert!(renewed.proven);
        assert_ne!(renewed.reply, first.reply, "renewed after half an hour");
        let mut forged = first.reply;
        forged[20] ^= 1;
        assert!(!c.check(&forged, ip, now).proven, "a guessed cookie");
        assert!(
            !Cookies::new(Some([8; 16]))
                .check(&first.reply, ip, now)
                .proven,
            "another secret"
        );
    }
}
