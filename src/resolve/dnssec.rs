//! DNSSEC validation for the recursive backend.
//!
//! The cryptography and the proofs are hickory's (`hickory_net::dnssec::DnssecDnsHandle`): it
//! verifies every RRset's signatures up a chain of DS and DNSKEY records to the trust anchor,
//! checks NSEC and NSEC3 denial proofs (with RFC 9276 iteration limits) and wildcard
//! expansions, and caches what it proved. Writing that again would add risk, not value. What
//! cleanpipe adds around it: the messages it validates come from cleanpipe's own iterative
//! resolver (through [`Inner`], a `DnsHandle` that answers from the resolution just made, and
//! asks the authoritative servers for the DS and DNSKEY records the chain needs, keeping them
//! for their TTL), negative trust anchors, and the verdict the request path needs: secure (AD),
//! insecure, or bogus (SERVFAIL with EDE 6).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt, stream};
use hickory_net::dnssec::DnssecDnsHandle;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::{DnsError, DnsHandle, NetError};
use hickory_proto::dnssec::{Proof, TrustAnchors};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, DnsResponse, Message, Query};
use hickory_proto::rr::{Name, RecordType};

use super::Answer;
use super::recursive::Recursive;
use crate::config::{DnssecConfig, ResolverConfig};

/// The IANA root trust anchors, as shipped in `zones/root.key`.
pub const IANA_ROOT_KEYS: &str = include_str!("../../zones/root.key");

/// Key records (DS, DNSKEY) kept at most this long, and at least this long.
const KEY_TTL_MAX: Duration = Duration::from_secs(3600);
const KEY_TTL_MIN: Duration = Duration::from_secs(5);
/// Bound of the key records and handed-over responses held.
const STASH_MAX: usize = 10_000;

/// What validation concluded about one response.
#[derive(Debug)]
pub enum Verdict {
    /// Every record that answers the question is proven from the trust anchor (AD).
    Secure(Message),
    /// Proven unsigned (an insecure delegation), or below a negative trust anchor.
    Insecure(Message),
    /// Signatures missing, wrong or expired where the chain says there must be some.
    Bogus(String),
}

impl Verdict {
    /// The `result` label of the validation metric.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Secure(_) => "secure",
            Verdict::Insecure(_) => "insecure",
            Verdict::Bogus(_) => "bogus",
        }
    }
}

/// The validator of one recursive backend.
pub struct Validator {
    handle: DnssecDnsHandle<Inner>,
    inner: Inner,
    negative: Vec<Name>,
}

impl Validator {
    /// The validator for `core` (see [`enabled`]).
    pub fn new(core: Arc<Recursive>, c: &DnssecConfig) -> Result<Self, String> {
        let anchors = match &c.trust_anchor {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                parse_anchors(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => parse_anchors(IANA_ROOT_KEYS)?,
        };
        let negative = c
            .negative_trust_anchors
            .iter()
            .map(|d| {
                Name::from_ascii(d)
                    .map(|mut n| {
                        n.set_fqdn(true);
                        n.to_lowercase()
                    })
                    .map_err(|e| format!("resolver.dnssec.negative_trust_anchors: {d}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let inner = Inner {
            core,
            stash: Arc::new(Mutex::new(Stash::default())),
        };
        Ok(Self {
            handle: DnssecDnsHandle::with_trust_anchor(inner.clone(), Arc::new(anchors)),
            inner,
            negative,
        })
    }

    /// Validates `msg`, the response of the zone that answers `name`/`qtype`.
    pub async fn check(&self, name: &Name, qtype: RecordType, msg: Message) -> Verdict {
        if self.negative.iter().any(|n| n.zone_of(name)) {
            return Verdict::Insecure(msg);
        }
        self.inner.hand_over(name, qtype, msg);
        let mut options = DnsRequestOptions::default();
        options.use_edns = true;
        options.edns_set_dnssec_ok = true;
        let first = self
            .handle
            .lookup(Query::query(name.clone(), qtype), options)
            .next()
            .await;
        match first {
            Some(Ok(response)) => judge(name, qtype, response.into_message()),
            Some(Err(NetError::Dns(DnsError::Nsec {
                response, proof, ..
            }))) => match proof {
                Proof::Bogus if wildcard_one_label_below(name, qtype, &response) => {
                    judge(name, qtype, response.into_message())
                }
                Proof::Bogus => Verdict::Bogus(format!("denial of existence of {name} {qtype}")),
                _ => Verdict::Insecure(response.into_message()),
            },
            Some(Err(e)) => Verdict::Bogus(e.to_string()),
            None => Verdict::Bogus("no response to validate".into()),
        }
    }
}

/// A wildcard expansion one label below the wildcard's parent (`a.example.` from
/// `*.example.`), with its proof: hickory 0.26.3 wants an NSEC covering `*.example.` itself
/// there - the very wildcard that answered - and calls the answer bogus. RFC 4035 §5.3.4 asks
/// for the signed data (RRSIG labels one less than the name's) and a signed NSEC proving that
/// the name itself does not exist; that is checked here. (NSEC zones; NSEC3 goes by hickory.)
fn wildcard_one_label_below(name: &Name, qtype: RecordType, msg: &Message) -> bool {
    use hickory_proto::dnssec::rdata::DNSSECRData;
    use hickory_proto::rr::RData;
    let labels = name.num_labels();
    let data: Vec<_> = msg
        .answers
        .iter()
        .filter(|r| r.name.eq_ignore_root(name) && r.record_type() == qtype)
        .collect();
    let expanded = msg.answers.iter().any(|r| {
        r.proof == Proof::Secure
            && r.name.eq_ignore_root(name)
            && matches!(&r.data, RData::DNSSEC(DNSSECRData::RRSIG(sig))
                if sig.input().type_covered == qtype && sig.input().num_labels + 1 == labels)
    });
    let denied = msg.authorities.iter().any(|r| match &r.data {
        RData::DNSSEC(DNSSECRData::NSEC(nsec)) => {
            let next = nsec.next_domain_name();
            r.proof == Proof::Secure
                && !nsec.is_ancestor_delegation()
                && *name > r.name
                && (*name < *next || (*next <= r.name && next.zone_of(name)))
        }
        _ => false,
    });
    !data.is_empty() && data.iter().all(|r| r.proof == Proof::Secure) && expanded && denied
}

/// Whether answers are validated: `resolver.dnssec.validate`, except with private root hints
/// and no trust anchor of their own (a private root is not signed with the IANA keys).
pub fn enabled(c: &ResolverConfig) -> bool {
    c.dnssec.validate && (c.root_hints.is_none() || c.dnssec.trust_anchor.is_some())
}

/// Trust anchors from DNSKEY records in zone-file text.
fn parse_anchors(text: &str) -> Result<TrustAnchors, String> {
    let anchors: TrustAnchors = text.parse().map_err(|e| format!("trust anchor: {e}"))?;
    if anchors.is_empty() {
        return Err("trust anchor: no DNSKEY record for the root".into());
    }
    Ok(anchors)
}

/// The verdict on a validated response: judged on the records that answer the question (the
/// CNAME chain and the data, or the SOA of a negative answer), the ones a client gets.
fn judge(name: &Name, qtype: RecordType, msg: Message) -> Verdict {
    let kept = Answer::from_response(name, qtype, msg.clone());
    let proofs: Vec<Proof> = kept
        .answers
        .iter()
        .chain(kept.authorities.iter())
        .map(|r| r.proof)
        .collect();
    if let Some(i) = proofs.iter().position(|p| *p == Proof::Bogus) {
        let r = kept.answers.iter().chain(kept.authorities.iter()).nth(i);
        let what = r.map_or_else(String::new, |r| format!("{} {}", r.name, r.record_type()));
        return Verdict::Bogus(format!("bad or missing signature on {what}"));
    }
    if !proofs.is_empty() && proofs.iter().all(|p| *p == Proof::Secure) {
        Verdict::Secure(msg)
    } else {
        Verdict::Insecure(msg)
    }
}

#[derive(Default)]
struct Stash {
    /// The response just resolved, handed to the validator's first query (taken once).
    handover: HashMap<(Name, RecordType), Message>,
    /// DS and DNSKEY responses, until they expire.
    keys: HashMap<(Name, RecordType), (Message, Instant)>,
}

/// The validator's view of the network: answers from the resolution just made, key records
/// from a small cache, anything else resolved by cleanpipe's resolver (with DO set).
#[derive(Clone)]
struct Inner {
    core: Arc<Recursive>,
    stash: Arc<Mutex<Stash>>,
}

fn key(name: &Name, qtype: RecordType) -> (Name, RecordType) {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    (n, qtype)
}

impl Inner {
    fn stash(&self) -> std::sync::MutexGuard<'_, Stash> {
        self.stash.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand_over(&self, name: &Name, qtype: RecordType, msg: Message) {
        let mut s = self.stash();
        if s.handover.len() >= STASH_MAX {
            s.handover.clear();
        }
        s.handover.insert(key(name, qtype), msg);
    }

    fn cached(&self, k: &(Name, RecordType)) -> Option<Message> {
        let mut s = self.stash();
        if let Some(m) = s.handover.remove(k) {
            return Some(m);
        }
        match s.keys.get(k) {
            Some((m, until)) if *until > Instant::now() => Some(m.clone()),
            Some(_) => {
                s.keys.remove(k);
                None
            }
            None => None,
        }
    }

    fn keep(&self, k: (Name, RecordType), msg: &Message) {
        let ttl = msg
            .answers
            .iter()
            .chain(msg.authorities.iter())
            .map(|r| r.ttl)
            .min()
            .map_or(KEY_TTL_MIN, |t| Duration::from_secs(u64::from(t)))
            .clamp(KEY_TTL_MIN, KEY_TTL_MAX);
        let mut s = self.stash();
        if s.keys.len() >= STASH_MAX {
            let now = Instant::now();
            s.keys.retain(|_, (_, until)| *until > now);
            if s.keys.len() >= STASH_MAX {
                s.keys.clear();
            }
        }
        s.keys.insert(k, (msg.clone(), Instant::now() + ttl));
    }

    async fn answer(self, request: DnsRequest) -> Result<DnsResponse, NetError> {
        let q = request
            .queries
            .first()
            .cloned()
            .ok_or_else(|| NetError::from("no question"))?;
        let k = key(q.name(), q.query_type());
        let from_referral = || match k.1 {
            RecordType::DS => self.core.referral_ds(&k.0),
            _ => None,
        };
        let msg = match self.cached(&k).or_else(from_referral) {
            Some(m) => m,
            None => {
                let m = self.core.raw(&k.0, k.1).await.map_err(NetError::from)?;
                if matches!(k.1, RecordType::DS | RecordType::DNSKEY) {
                    self.keep(k, &m);
                }
                m
            }
        };
        DnsResponse::from_message(msg).map_err(|e| NetError::from(e.to_string()))
    }
}

impl DnsHandle for Inner {
    type Response = Pin<Box<dyn Stream<Item = Result<DnsResponse, NetError>> + Send>>;
    type Runtime = TokioRuntimeProvider;

    fn send(&self, request: DnsRequest) -> Self::Response {
        Box::pin(stream::once(self.clone().answer(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_root_keys_are_the_iana_keys_hickory_builds_in() {
        use hickory_proto::dnssec::PublicKey;
        let shipped = parse_anchors(IANA_ROOT_KEYS).expect("zones/root.key parses");
        let builtin = TrustAnchors::default();
        assert_eq!(shipped.len(), 2);
        assert_eq!(builtin.len(), 2);
        for i in 0..shipped.len() {
            let k = shipped.get(i).expect("key");
            assert!(
                builtin.contains(k),
                "key {i} of zones/root.key is not an IANA root key"
            );
            assert_eq!(k.algorithm(), hickory_proto::dnssec::Algorithm::RSASHA256);
        }
    }

    /// `a.example. A` from `*.example.`: the data, its wildcard signature (one label), and an
    /// NSEC from `*.example.` to `next` - each with the proof hickory gave it.
    fn wildcard_answer(sig_labels: u8, next: &str, nsec_proof: Proof) -> Message {
        use hickory_proto::dnssec::Algorithm;
        use hickory_proto::dnssec::rdata::{DNSSECRData, NSEC, RRSIG, SigInput};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record, SerialNumber};
        let n = |s: &str| Name::from_ascii(s).expect("name");
        let mut m = Message::query();
        let mut data = Record::from_rdata(n("a.example."), 300, RData::A(A::new(192, 0, 2, 1)));
        data.proof = Proof::Secure;
        let input = SigInput {
            type_covered: RecordType::A,
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: sig_labels,
            original_ttl: 300,
            sig_expiration: SerialNumber::new(0),
            sig_inception: SerialNumber::new(0),
            key_tag: 1,
            signer_name: n("example."),
        };
        let mut sig = Record::from_rdata(
            n("a.example."),
            300,
            RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, vec![]))),
        );
        sig.proof = Proof::Secure;
        let mut nsec = Record::from_rdata(
            n("*.example."),
            300,
            RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(
                n(next),
                [RecordType::A, RecordType::RRSIG, RecordType::NSEC],
            ))),
        );
        nsec.proof = nsec_proof;
        m.add_answer(data);
        m.add_answer(sig);
        m.add_authority(nsec);
        m
    }

    #[test]
    fn a_wildcard_expansion_one_label_below_is_accepted_only_with_its_proof() {
        let name = Name::from_ascii("a.example.").expect("name");
        let ok = |m: Message| wildcard_one_label_below(&name, RecordType::A, &m);
        assert!(ok(wildcard_answer(1, "b.example.", Proof::Secure)));
        // The NSEC did not validate, or does not cover the name, or the signature is not a
        // wildcard's: not accepted.
        assert!(!ok(wildcard_answer(1, "b.example.", Proof::Bogus)));
        assert!(!ok(wildcard_answer(1, "a.example.", Proof::Secure)));
        assert!(!ok(wildcard_answer(2, "b.example.", Proof::Secure)));
        assert!(!wildcard_one_label_below(
            &name,
            RecordType::AAAA,
            &wildcard_answer(1, "b.example.", Proof::Secure)
        ));
    }

    #[test]
    fn a_trust_anchor_file_without_keys_is_refused() {
        assert!(parse_anchors("; nothing here\n").is_err());
        assert!(parse_anchors(". IN DNSKEY 257 3 8 not-base64!\n").is_err());
    }
}
