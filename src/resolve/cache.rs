//! The answer cache: bounded by entry count, honouring TTLs, with negative caching.
//!
//! Entries expire when their shortest TTL runs out (clamped to `cache.min_ttl`..`cache.max_ttl`;
//! negative answers to the SOA's negative TTL, at most `cache.negative_max_ttl`; SERVFAIL for
//! `cache.servfail_ttl`). A hit returns the records with their TTLs reduced by the time spent
//! in the cache, so downstream caches never hold a record longer than its owner allowed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use moka::Expiry;

use super::Answer;
use crate::config::CacheConfig;

/// Cache key: lowercased name and type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    name: Name,
    qtype: RecordType,
}

impl CacheKey {
    /// Key for a question.
    pub fn new(name: &Name, qtype: RecordType) -> Self {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Self { name, qtype }
    }
}

#[derive(Debug)]
struct Entry {
    answer: Answer,
    stored: Instant,
    ttl: u32,
}

struct ByTtl;

impl Expiry<CacheKey, Arc<Entry>> for ByTtl {
    fn expire_after_create(
        &self,
        _k: &CacheKey,
        v: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(u64::from(v.ttl)))
    }
}

/// The shared answer cache.
pub struct AnswerCache {
    inner: Option<moka::sync::Cache<CacheKey, Arc<Entry>>>,
    min_ttl: u32,
    max_ttl: u32,
    negative_max_ttl: u32,
    servfail_ttl: u32,
}

impl AnswerCache {
    /// A cache sized and clamped by configuration; `max_entries: 0` disables caching.
    pub fn new(c: &CacheConfig) -> Self {
        let inner = (c.max_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(c.max_entries)
                .expire_after(ByTtl)
                .build()
        });
        Self {
            inner,
            min_ttl: c.min_ttl,
            max_ttl: c.max_ttl,
            negative_max_ttl: c.negative_max_ttl,
            servfail_ttl: c.servfail_ttl,
        }
    }

    /// A cached answer with TTLs reduced by its age.
    pub fn get(&self, key: &CacheKey) -> Option<Answer> {
        let e = self.inner.as_ref()?.get(key)?;
        let age = e.stored.elapsed().as_secs().min(u64::from(u32::MAX)) as u32;
        if age >= e.ttl {
            return None;
        }
        let mut a = e.answer.clone();
        for r in a.answers.iter_mut().chain(a.authorities.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age).max(1);
        }
        Some(a)
    }

    /// Caches an answer for as long as its records allow.
    pub fn insert(&self, key: CacheKey, answer: &Answer) {
        let Some(cache) = &self.inner else { return };
        let ttl = self.ttl_for(answer);
        if ttl == 0 {
            return;
        }
        cache.insert(
            key,
            Arc::new(Entry {
                answer: answer.clone(),
                stored: Instant::now(),
                ttl,
            }),
        );
    }

    /// Entries currently cached (approximate).
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| c.entry_count())
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ttl_for(&self, a: &Answer) -> u32 {
        match a.rcode {
            ResponseCode::NoError if !a.answers.is_empty() => a
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .clamp(self.min_ttl, self.max_ttl),
            ResponseCode::NoError | ResponseCode::NXDomain => {
                // RFC 2308: the negative TTL is min(SOA TTL, SOA MINIMUM).
                let soa_ttl = a.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
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
}
