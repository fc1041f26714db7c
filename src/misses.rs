//! "Service broken?": the names trusted-zone clients were denied, counted per profile, each with
//! the allowed service most often asked just before it (a hint that the denied name is one of
//! that service's dependencies). This is how the curators learn what the allowlists miss.
//!
//! Privacy: the report holds names, profiles and counts, never a client address. To find the
//! hint, the last allowed service of each client is kept in memory for [`HINT_SECS`] (bounded,
//! never written anywhere). Counts are flushed to the state database in hourly buckets every
//! minute, so `--since` works across restarts and every instance of a fleet adds to one report.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use crate::policy::{QName, Snapshot};
use crate::state::{MissRow, StateError, StateStore};

/// A denial this soon after an allowed service's name counts as a hint for that service.
pub const HINT_SECS: i64 = 10;
/// Distinct (profile, name) pairs kept per shard between flushes; beyond, denials are counted
/// under [`OTHER`].
const MAX_NAMES: usize = 4096;
/// Clients whose last allowed service is remembered, per shard.
const MAX_CLIENTS: usize = 8192;
/// The name under which denials beyond the table's bound are counted.
pub const OTHER: &str = "(other names, table full)";
const SHARDS: usize = 8;

/// Denials of one name by hint (`""`: no hint).
type Hints = FxHashMap<Box<str>, u64>;

#[derive(Default)]
struct Shard {
    /// Client → (name source of the last allowed service, when).
    last: FxHashMap<IpAddr, (u32, i64)>,
    /// (profile name, denied name) → denials by hint ("" = no hint).
    counts: FxHashMap<(Box<str>, Box<str>), Hints>,
}

/// The in-memory counts between two flushes.
pub struct Misses {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Misses {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Misses {
    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, Shard> {
        let i = (rustc_hash::FxBuildHasher.hash_one(ip) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A trusted-zone client was allowed a name listed by name source `source`. Only services
    /// count as hints (not essentials such as time or certificate checks).
    pub fn allowed(&self, snap: &Snapshot, ip: IpAddr, source: u32, now: i64) {
        let is_service = snap
            .name_sources
            .get(source as usize)
            .is_some_and(|s| s.starts_with("service "));
        if !is_service {
            return;
        }
        let mut s = self.shard(ip);
        if s.last.len() >= MAX_CLIENTS && !s.last.contains_key(&ip) {
            s.last.retain(|_, (_, at)| now - *at <= HINT_SECS);
            if s.last.len() >= MAX_CLIENTS {
                s.last.clear();
            }
        }
        s.last.insert(ip, (source, now));
    }

    /// A trusted-zone client in `profile` was denied `name`.
    pub fn denied(&self, snap: &Snapshot, ip: IpAddr, profile: u16, name: &QName, now: i64) {
        let Some(p) = snap.profiles.get(profile as usize) else {
            return;
        };
        metrics::counter!(crate::metrics::TRUSTED_DENIED, "profile" => p.name.clone()).increment(1);
        let mut s = self.shard(ip);
        let hint: Box<str> = match s.last.get(&ip) {
            Some((source, at)) if now - at <= HINT_SECS => snap
                .name_sources
                .get(*source as usize)
                .map_or("", |n| n.strip_prefix("service ").unwrap_or(n))
                .into(),
            _ => "".into(),
        };
        let mut key = (Box::<str>::from(p.name.as_str()), name.to_text().into());
        if !s.counts.contains_key(&key) && s.counts.len() >= MAX_NAMES {
            key.1 = OTHER.into();
        }
        *s.counts.entry(key).or_default().entry(hint).or_default() += 1;
    }

    /// Takes the counts gathered since the last call, as rows of the hour `now` falls in.
    pub fn drain(&self, now: i64) -> Vec<MissRow> {
        let hour = now - now.rem_euclid(3600);
        let mut rows = Vec::new();
        for shard in &self.shards {
            let counts =
                std::mem::take(&mut shard.lock().unwrap_or_else(|p| p.into_inner()).counts);
            for ((profile, name), hints) in counts {
                for (hint, count) in hints {
                    rows.push(MissRow {
                        hour,
                        profile: profile.to_string(),
                        name: name.to_string(),
                        hint: hint.to_string(),
                        count,
                    });
                }
            }
        }
        rows
    }

    /// Writes the counts gathered so far to the state database. On failure they are kept for
    /// the next flush.
    pub fn flush(&self, state: &dyn StateStore, now: i64) -> Result<usize, StateError> {
        let rows = self.drain(now);
        if rows.is_empty() {
            return Ok(0);
        }
        match state.record_misses(&rows, now - RETENTION_SECS) {
            Ok(()) => Ok(rows.len()),
            Err(e) => {
                self.restore(rows);
                Err(e)
            }
        }
    }

    fn restore(&self, rows: Vec<MissRow>) {
        let mut s = self.shards[0].lock().unwrap_or_else(|p| p.into_inner());
        for r in rows {
            *s.counts
                .entry((r.profile.into(), r.name.into()))
                .or_default()
                .entry(r.hint.into())
                .or_default() += r.count;
        }
    }
}

/// Hourly buckets older than this are deleted at each flush.
pub const RETENTION_SECS: i64 = 30 * 86_400;

/// One line of the misses report.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Miss {
    /// Profile the clients were in.
    pub profile: String,
    /// The denied name.
    pub name: String,
    /// Denials.
    pub count: u64,
    /// The allowed service most often asked just before (id and display name), if any.
    pub hint: Option<String>,
    /// Denials that followed that service within [`HINT_SECS`].
    pub hint_count: u64,
}

/// The report from stored rows: one line per (profile, name), most denied first.
pub fn report(rows: &[MissRow], limit: usize) -> Vec<Miss> {
    type Totals<'a> = (u64, FxHashMap<&'a str, u64>);
    let mut by: FxHashMap<(&str, &str), Totals<'_>> = FxHashMap::default();
    for r in rows {
        let e = by.entry((&r.profile, &r.name)).or_default();
        e.0 += r.count;
        if !r.hint.is_empty() {
            *e.1.entry(&r.hint).or_default() += r.count;
        }
    }
    let mut out: Vec<Miss> = by
        .into_iter()
        .map(|((profile, name), (count, hints))| {
            let best = hints
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)));
            Miss {
                profile: profile.to_owned(),
                name: name.to_owned(),
                count,
                hint: best.map(|(h, _)| h.to_owned()),
                hint_count: best.map_or(0, |(_, n)| n),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.profile.cmp(&b.profile))
            .then_with(|| a.name.cmp(&b.name))
    });
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(profile: &str, name: &str, hint: &str, count: u64) -> MissRow {
        MissRow {
            hour: 0,
            profile: profile.into(),
            name: name.into(),
            hint: hint.into(),
            count,
        }
    }

    #[test]
    fn the_report_sums_hours_and_names_the_most_frequent_hint() {
        let rows = [
            row("kids", "cdn.video.example", "video-svc (Video)", 3),
            row("kids", "cdn.video.example", "", 2),
            row("kids", "cdn.video.example", "maps (Maps)", 1),
            row("kids", "cdn.video.example", "video-svc (Video)", 4),
            row("kids", "tracker.example", "", 1),
            row("clean-pipe", "cdn.video.example", "", 9),
        ];
        let r = report(&rows, 10);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].profile.as_str(), r[0].count), ("kids", 10));
        assert_eq!(r[0].hint.as_deref(), Some("video-svc (Video)"));
        assert_eq!(r[0].hint_count, 7);
        assert_eq!((r[1].profile.as_str(), r[1].count), ("clean-pipe", 9));
        assert_eq!(r[1].hint, None);
        assert_eq!((r[2].name.as_str(), r[2].count), ("tracker.example", 1));
        assert_eq!(report(&rows, 1).len(), 1);
    }
}
