//! Human-readable explanations of decisions, for `cleanpipe explain` and the admin API.

use std::net::IpAddr;

use serde::Serialize;

use super::{Question, Reason, Snapshot, Who, decide, identify};

/// A decision with the facts that led to it.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// What cleanpipe answers (`resolve`, `sinkhole to the cleanup page`...).
    pub action: String,
    /// The reason label (as in metrics).
    pub reason: String,
    /// Extended DNS Error attached, if any.
    pub ede: Option<String>,
    /// The facts, one per line, naming files and entries.
    pub details: Vec<String>,
    /// Snapshot generation used.
    pub generation: u64,
}

fn when(t: i64) -> String {
    crate::timefmt::rfc3339(t)
}

/// Seconds after midnight as `HH:MM` (`HH:MM:SS` when not on a minute).
fn clock(s: u32) -> String {
    if s.is_multiple_of(60) {
        format!("{:02}:{:02}", s / 3600, s / 60 % 60)
    } else {
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

/// Decides and explains one query.
pub fn explain(snap: &Snapshot, ip: IpAddr, q: &Question, now: i64) -> Explanation {
    let client = snap.classify(ip);
    let d = decide(snap, &client, q, now);
    let mut details = Vec::new();
    let action = d.action.describe(snap);
    if !client.served {
        details.push(format!("client {ip} is not in clients.allow"));
    }
    if let Some((idx, i)) = client
        .infection
        .and_then(|i| snap.infection(i).map(|inf| (i, inf)))
    {
        details.push(format!(
            "infected: {} family {} reported by {} first seen {}{} ({})",
            i.prefix,
            snap.string(i.family),
            snap.string(i.source),
            when(i.first_seen),
            snap.ticket(idx)
                .map(|t| format!(" ticket {t}"))
                .unwrap_or_default(),
            snap.infected.origin_text(i.origin)
        ));
        for ev in snap.evidence(idx) {
            details.push(format!(
                "botnet detection: looked up {} (threat feed `{}`, family {}) {}{}",
                ev.qname,
                ev.feed,
                ev.family,
                when(ev.last_at),
                if ev.count > 1 {
                    format!(
                        "; {} lookups recorded since {}",
                        ev.count,
                        when(ev.first_at)
                    )
                } else {
                    String::new()
                }
            ));
        }
    }
    if let Some(o) = client
        .organisation
        .and_then(|o| snap.organisations.get(o as usize))
    {
        details.push(format!(
            "inside organisation `{}` ({}), standing {:?}, grace {} h ({})",
            o.id,
            o.name,
            o.standing,
            o.grace_hours,
            snap.organisation_origin_text(o.origin)
        ));
    }
    if let Some(e) = client.enrolment.and_then(|e| snap.enrolment(e)) {
        let p = snap
            .profiles
            .get(e.profile as usize)
            .map_or("?", |p| p.name.as_str());
        details.push(format!(
            "enrolled: {} in profile `{p}` by {} at {} ({})",
            e.prefix,
            e.enabled_by,
            when(e.enabled_at),
            snap.enrolled.origin_text(e.origin)
        ));
        let entry = snap.enrolment_entry(e);
        if !entry.allow.is_empty() {
            details.push(format!("household adds: {}", entry.allow.join(", ")));
        }
        if !entry.remove.is_empty() {
            details.push(format!("household removed: {}", entry.remove.join(", ")));
        }
        if let Who::Trusted {
            profile,
            period: Some(period),
            ..
        } = identify(snap, &client, now)
            && let Some(s) = snap.schedules.get(period.schedule as usize)
            && let Some(pd) = s.periods.get(period.period as usize)
        {
            details.push(format!(
                "schedule `{}`: period `{}` ({} to {} {}) is in force, so profile `{}` applies",
                s.id,
                pd.name,
                clock(pd.from),
                clock(pd.to),
                s.time_zone,
                snap.profiles
                    .get(profile as usize)
                    .map_or("?", |p| p.name.as_str())
            ));
        } else if let Some(s) = e
            .schedule
            .or_else(|| {
                snap.profiles
                    .get(e.profile as usize)
                    .and_then(|p| p.schedule)
            })
            .and_then(|i| snap.schedules.get(i as usize))
        {
            details.push(format!(
                "schedule `{}`: no period in force now ({}), so profile `{p}` applies",
                s.id, s.time_zone
            ));
        }
    }
    if snap.mode.trusted_only_at(now) {
        details.push(format!(
            "global trusted-only mode set by {} ({}), source {}{}",
            snap.mode.set_by,
            snap.mode.reason,
            snap.mode.source,
            if client.exempt {
                format!(
                    "; this client is exempt (exempt networks: {})",
                    snap.mode.exempt.join(", ")
                )
            } else {
                String::new()
            }
        ));
    }
    if let Some(f) = d.logged.and_then(|i| snap.feeds.get(i as usize)) {
        details.push(format!(
            "log-only feed `{}` also matched (answer unchanged)",
            f.name
        ));
    }
    match d.reason {
        Reason::ThreatFeed {
            feed,
            trigger,
            rule,
        } => {
            if let Some(f) = snap.feeds.get(feed as usize) {
                details.push(format!(
                    "threat feed `{}` (zone {}, {}), {} trigger{}{}",
                    f.name,
                    f.zone.origin,
                    f.source,
                    match trigger {
                        super::rpz::Trigger::Qname => "QNAME",
                        super::rpz::Trigger::ClientIp => "rpz-client-ip",
                    },
                    if rule.line > 0 {
                        format!(" at line {}", rule.line)
                    } else {
                        String::new()
                    },
                    if f.botnet {
                        format!(
                            "; botnet signature {}: the client will be flagged infected",
                            f.family_of(&rule)
                        )
                    } else {
                        String::new()
                    },
                ));
            }
        }
        Reason::Remediation { source, .. } | Reason::TrustedAllowed { source, .. } => {
            details.push(format!(
                "{} is listed by {}",
                q.name.to_text(),
                snap.name_sources
                    .get(source as usize)
                    .map_or("?", |s| s.as_str())
            ));
        }
        Reason::Bypass { source, profile } => details.push(format!(
            "{} is a way around the trusted zone ({}), NXDOMAIN in profile `{}`",
            q.name.to_text(),
            snap.name_sources
                .get(source as usize)
                .map_or("?", |s| s.as_str()),
            snap.profiles
                .get(profile as usize)
                .map_or("?", |p| p.name.as_str())
        )),
        Reason::HouseholdAllowed { .. } => {
            let added = client
                .enrolment
                .and_then(|e| snap.enrolment(e))
                .and_then(|e| e.household.as_deref())
                .and_then(|h| h.allows(&q.name))
                .map(|a| String::from_utf8_lossy(a).into_owned());
            details.push(format!(
                "{} is allowed by the household's own addition `{}`",
                q.name.to_text(),
                added.unwrap_or_default()
            ));
        }
        Reason::TrustedBlocked { profile, .. } => {
            details.push(format!(
                "{} is not in profile `{}`",
                q.name.to_text(),
                snap.profiles
                    .get(profile as usize)
                    .map_or("(missing)", |p| p.name.as_str())
            ));
            let household = client
                .enrolment
                .and_then(|e| snap.enrolment(e))
                .and_then(|e| e.household.as_deref());
            let removed = household.and_then(|h| {
                snap.names.ancestors(&q.name).find(|(n, f)| {
                    f.profiles & (1u64 << (profile % 64)) != 0 && h.removes(n, profile)
                })
            });
            if let Some((_, f)) = removed {
                details.push(format!(
                    "the profile has it ({}), but the household removed that service",
                    snap.name_sources
                        .get(f.source as usize)
                        .map_or("?", |s| s.as_str())
                ));
            }
        }
        _ => {}
    }
    Explanation {
        action,
        reason: d.reason.label().to_owned(),
        ede: d.reason.ede_for(snap).map(|(c, t)| format!("{c}: {t}")),
        details,
        generation: snap.generation,
    }
}
