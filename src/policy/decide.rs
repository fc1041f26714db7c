//! The decision: who is asking, what may they get.
//!
//! Precedence (first row that applies wins; README "How a query is decided" mirrors this):
//!
//! | # | client | answer |
//! |---|--------|--------|
//! | 1 | outside `clients.allow` | REFUSED (EDE 18 Prohibited) |
//! | 1b | anyone, when a threat feed (RPZ) matches the name or the client | the feed's action (NXDOMAIN, NODATA, DROP, TCP-only, local data), EDE 15 with the feed's name; PASSTHRU ends feed processing |
//! | 2 | infected, not inside an organisation in good standing | quarantine (unless self-released after the report, until the release ends): remediation names and `resolve` probes resolve; everything else → cleanup page (EDE 15 Blocked) |
//! | 3 | infected, inside an organisation in good standing | resolve normally, raise an alert |
//! | 4 | enrolled in a profile (the one its schedule puts in force now), or global trusted-only mode and not exempt (exempt: resolve, reason `exempt`) | canaries and the profile's bypass services → NXDOMAIN; safe-search names → CNAME; profile names (minus the household's removed services), essential and probe names, the household's additions → resolve; everything else blocked (NXDOMAIN, EDE 17 Filtered when opted in / EDE 15 Blocked in global mode, or the information page) |
//! | 5 | everyone else | resolve normally |
//!
//! Quarantine is checked before trusted zones on purpose: an infected host must see the cleanup
//! page even if its owner also enrolled in a kids profile. Organisations are checked only for
//! infected hosts: whitelisting changes how an infection is handled, nothing else.

use hickory_proto::rr::RecordType;

use std::borrow::Cow;

use super::rpz::{RpzAction, Trigger};
use super::{
    Blocked, ClientView, FeedPolicy, Household, PeriodRef, QName, Snapshot, Standing, flag,
};

/// The question being decided.
#[derive(Debug, Clone)]
pub struct Question {
    /// Normalised query name.
    pub name: QName,
    /// Query type.
    pub qtype: RecordType,
}

impl Question {
    /// A question from presentation text (tests, `explain`).
    pub fn new(name: &str, qtype: RecordType) -> Option<Self> {
        Some(Self {
            name: QName::new(name)?,
            qtype,
        })
    }
}

/// Which page a sinkhole answer points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The cleanup page for quarantined subscribers.
    Cleanup,
    /// The "not in your trusted zone" information page.
    Info,
}

/// What to do with the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer REFUSED.
    Refuse,
    /// Resolve normally.
    Resolve,
    /// Resolve normally and raise an alert for the organisation.
    Alert,
    /// Answer A/AAAA with the page's addresses; other types get an empty answer.
    Sinkhole(Page),
    /// Answer NXDOMAIN.
    NxDomain,
    /// Answer a CNAME to `Snapshot::rewrite_targets[i]` and resolve the target.
    Rewrite(u16),
    /// Answer NOERROR with no records.
    NoData,
    /// Send no answer at all.
    Drop,
    /// Over UDP, answer with TC=1 (the client retries over TCP); over TCP, resolve normally.
    TcpOnly,
    /// Answer with a feed's local data.
    LocalData {
        /// Feed index.
        feed: u16,
        /// Index into the feed zone's local data.
        data: u32,
    },
}

impl Action {
    /// Kinds of action, for tables indexed by [`Action::index`].
    pub const KINDS: usize = 11;

    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Refuse => "refuse",
            Action::Resolve => "resolve",
            Action::Alert => "alert",
            Action::Sinkhole(Page::Cleanup) => "sinkhole",
            Action::Sinkhole(Page::Info) => "info_page",
            Action::NxDomain => "nxdomain",
            Action::Rewrite(_) => "rewrite",
            Action::NoData => "nodata",
            Action::Drop => "drop",
            Action::TcpOnly => "tcp_only",
            Action::LocalData { .. } => "local_data",
        }
    }

    /// A dense index per kind (0..[`Action::KINDS`]).
    pub fn index(&self) -> usize {
        match self {
            Action::Refuse => 0,
            Action::Resolve => 1,
            Action::Alert => 2,
            Action::Sinkhole(Page::Cleanup) => 3,
            Action::Sinkhole(Page::Info) => 4,
            Action::NxDomain => 5,
            Action::Rewrite(_) => 6,
            Action::NoData => 7,
            Action::Drop => 8,
            Action::TcpOnly => 9,
            Action::LocalData { .. } => 10,
        }
    }

    /// What cleanpipe answers, in words (for `explain`).
    pub fn describe(&self, snap: &Snapshot) -> String {
        match self {
            Action::Refuse => "refuse (REFUSED)".to_owned(),
            Action::Resolve => "resolve normally".to_owned(),
            Action::Alert => "resolve normally and alert the organisation".to_owned(),
            Action::Sinkhole(Page::Cleanup) => "sinkhole to the cleanup page".to_owned(),
            Action::Sinkhole(Page::Info) => "sinkhole to the information page".to_owned(),
            Action::NxDomain => "NXDOMAIN".to_owned(),
            Action::Rewrite(i) => format!(
                "CNAME to {} (safe search)",
                snap.rewrite_targets
                    .get(*i as usize)
                    .map_or("?", |t| t.1.as_str())
            ),
            Action::NoData => "NODATA (no records)".to_owned(),
            Action::Drop => "drop (no answer)".to_owned(),
            Action::TcpOnly => "TCP only (truncated over UDP)".to_owned(),
            Action::LocalData { .. } => "answer with the feed's local data".to_owned(),
        }
    }
}

/// Why: the rule that applied, with indexes into the snapshot for `explain` and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Row 1: client not in `clients.allow`.
    NotServed,
    /// Row 1b: a threat feed matched.
    ThreatFeed {
        /// Feed index.
        feed: u16,
        /// What matched.
        trigger: Trigger,
        /// The rule (line, family).
        rule: super::rpz::Rule,
    },
    /// Row 2: quarantined; the name is not reachable.
    Quarantined {
        /// Infection index.
        infection: u32,
        /// Organisation index when the host's organisation lost its whitelisting.
        revoked_org: Option<u32>,
    },
    /// Row 2: infected, but the subscriber released themselves from the cleanup page after
    /// the report (a newer report quarantines again).
    SelfReleased {
        /// Infection index.
        infection: u32,
        /// Unix seconds at which the release ends.
        until: i64,
    },
    /// Row 2: quarantined, but the name is on the remediation list (or a `resolve` probe).
    Remediation {
        /// Infection index.
        infection: u32,
        /// Name-source index of the matching entry.
        source: u32,
    },
    /// Row 3: infected host inside a whitelisted organisation.
    OrganisationAlert {
        /// Infection index.
        infection: u32,
        /// Organisation index.
        organisation: u32,
    },
    /// Row 4: a canary name inside a trusted zone.
    Canary {
        /// Profile index.
        profile: u16,
    },
    /// Row 4: a resolver, VPN or proxy service listed in `allowlists/bypass.yaml` for the profile.
    Bypass {
        /// Profile index.
        profile: u16,
        /// Name-source index of the bypass group.
        source: u32,
    },
    /// Row 4: the household added this name to its enrolment.
    HouseholdAllowed {
        /// Profile index.
        profile: u16,
    },
    /// Row 4: safe-search rewrite.
    SafeSearch {
        /// Profile index.
        profile: u16,
    },
    /// Row 4: the name is in the trusted zone.
    TrustedAllowed {
        /// Profile index.
        profile: u16,
        /// Because of global trusted-only mode.
        global: bool,
        /// Name-source index of the matching entry.
        source: u32,
    },
    /// Row 4: the name is outside the trusted zone.
    TrustedBlocked {
        /// Profile index (`u16::MAX` when the global profile is missing).
        profile: u16,
        /// Because of global trusted-only mode.
        global: bool,
    },
    /// Row 4: global trusted-only mode is on, and the client's network is exempt from it.
    Exempt,
    /// Row 5: no policy applies.
    Normal,
}

impl Reason {
    /// Kinds of reason, for tables indexed by [`Reason::index`].
    pub const KINDS: usize = 16;

    /// A dense index per label (0..[`Reason::KINDS`]).
    pub fn index(&self) -> usize {
        match self {
            Reason::NotServed => 0,
            Reason::ThreatFeed { .. } => 1,
            Reason::Quarantined { .. } => 2,
            Reason::SelfReleased { .. } => 3,
            Reason::Remediation { .. } => 4,
            Reason::OrganisationAlert { .. } => 5,
            Reason::Canary { .. } => 6,
            Reason::SafeSearch { .. } => 7,
            Reason::TrustedAllowed { global: false, .. } => 8,
            Reason::TrustedAllowed { global: true, .. } => 9,
            Reason::TrustedBlocked { global: false, .. } => 10,
            Reason::TrustedBlocked { global: true, .. } => 11,
            Reason::Exempt => 12,
            Reason::Normal => 13,
            Reason::Bypass { .. } => 14,
            Reason::HouseholdAllowed { .. } => 15,
        }
    }

    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::NotServed => "not_served",
            Reason::ThreatFeed { .. } => "threat_feed",
            Reason::Quarantined { .. } => "quarantined",
            Reason::SelfReleased { .. } => "self_released",
            Reason::Remediation { .. } => "remediation",
            Reason::OrganisationAlert { .. } => "organisation_alert",
            Reason::Canary { .. } => "canary",
            Reason::SafeSearch { .. } => "safe_search",
            Reason::TrustedAllowed { global: false, .. } => "trusted_allowed",
            Reason::TrustedAllowed { global: true, .. } => "global_trusted_allowed",
            Reason::TrustedBlocked { global: false, .. } => "trusted_blocked",
            Reason::TrustedBlocked { global: true, .. } => "global_trusted_blocked",
            Reason::Exempt => "exempt",
            Reason::Normal => "normal",
            Reason::Bypass { .. } => "bypass",
            Reason::HouseholdAllowed { .. } => "household_allowed",
        }
    }

    /// The Extended DNS Error (RFC 8914) to attach: info code and a short text.
    pub fn ede(&self) -> Option<(u16, &'static str)> {
        match self {
            Reason::NotServed => Some((18, "cleanpipe: client network not served")),
            Reason::ThreatFeed { .. } => Some((15, "cleanpipe: blocked by a threat feed")),
            Reason::Quarantined { .. } => Some((
                15,
                "cleanpipe: infection detected on this connection, see the cleanup page",
            )),
            Reason::TrustedBlocked { global: false, .. } => {
                Some((17, "cleanpipe: not in your trusted zone"))
            }
            Reason::TrustedBlocked { global: true, .. } => {
                Some((15, "cleanpipe: trusted-only mode is active on this network"))
            }
            Reason::Canary { .. } => Some((17, "cleanpipe: not available in a trusted zone")),
            Reason::Bypass { .. } => Some((
                17,
                "cleanpipe: resolver, VPN and proxy services are not available in this profile",
            )),
            _ => None,
        }
    }
}

impl Reason {
    /// The Extended DNS Error with the feed's name where one matched.
    pub fn ede_for(&self, snap: &Snapshot) -> Option<(u16, Cow<'static, str>)> {
        match self {
            Reason::ThreatFeed { feed, .. } => snap.feeds.get(*feed as usize).map(|f| {
                (
                    15,
                    Cow::Owned(format!("cleanpipe: blocked by threat feed {}", f.name)),
                )
            }),
            other => other.ede().map(|(c, t)| (c, Cow::Borrowed(t))),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// A log-only feed that matched on the way (index), for counting.
    pub logged: Option<u16>,
}

impl Decision {
    fn new(action: Action, reason: Reason) -> Self {
        Self {
            action,
            reason,
            logged: None,
        }
    }
}

/// Row 1b: the first feed (in configured order) whose client-IP or QNAME trigger matches.
/// PASSTHRU stops feed processing; log-only feeds are noted and skipped.
fn decide_feeds(
    snap: &Snapshot,
    client: &ClientView,
    q: &Question,
) -> (Option<Decision>, Option<u16>) {
    let mut logged = None;
    for (i, f) in snap.feeds.iter().enumerate() {
        let i = i as u16;
        let hit = match client.feed_client {
            Some((fi, r)) if fi == i => Some((r, Trigger::ClientIp)),
            _ => f.zone.match_qname(&q.name).map(|r| (r, Trigger::Qname)),
        };
        let Some((rule, trigger)) = hit else { continue };
        if f.log_only {
            logged.get_or_insert(i);
            continue;
        }
        let action = match (f.policy, rule.action) {
            (FeedPolicy::Given, RpzAction::NxDomain) | (FeedPolicy::NxDomain, _) => {
                Action::NxDomain
            }
            (FeedPolicy::Given, RpzAction::NoData) | (FeedPolicy::NoData, _) => Action::NoData,
            (FeedPolicy::Given, RpzAction::Passthru) | (FeedPolicy::Passthru, _) => {
                return (None, logged);
            }
            (FeedPolicy::Given, RpzAction::Drop) | (FeedPolicy::Drop, _) => Action::Drop,
            (FeedPolicy::Given, RpzAction::TcpOnly) | (FeedPolicy::TcpOnly, _) => Action::TcpOnly,
            (FeedPolicy::Given, RpzAction::LocalData(data)) => Action::LocalData { feed: i, data },
            (FeedPolicy::CleanupPage, _) => Action::Sinkhole(Page::Cleanup),
        };
        let d = Decision {
            action,
            reason: Reason::ThreatFeed {
                feed: i,
                trigger,
                rule,
            },
            logged,
        };
        return (Some(d), logged);
    }
    (None, logged)
}

/// Threat feeds applied to a name a resolved CNAME chain leads to (the asked name was allowed):
/// the feed's decision, as if the name had been asked, or `None` (no feed lists it, or PASSTHRU).
/// Quarantine and trusted zones apply to the asked name only: a trusted service behind a CDN
/// stays reachable.
pub fn decide_chain(snap: &Snapshot, client: &ClientView, q: &Question) -> Option<Decision> {
    let no_client_trigger = ClientView {
        feed_client: None, // client triggers were applied to the asked name already
        ..*client
    };
    decide_feeds(snap, &no_client_trigger, q).0
}

/// Decides one query. Pure: the same inputs always give the same decision; `now` is unix seconds.
pub fn decide(snap: &Snapshot, client: &ClientView, q: &Question, now: i64) -> Decision {
    // Row 1: never an open resolver.
    if !client.served {
        return Decision::new(Action::Refuse, Reason::NotServed);
    }

    // Row 1b: threat feeds protect everyone, before any other rule.
    let (hit, logged) = decide_feeds(snap, client, q);
    if let Some(d) = hit {
        return d;
    }
    let mut d = decide_subscriber(snap, client, q, now);
    d.logged = logged;
    d
}

/// Who a client is to the policy at `now`, whatever it asks: the rows of the precedence table
/// that depend on the client alone. DNS ([`decide`]), the cleanup page and `explain` all ask
/// this one function, so they cannot disagree about a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Row 1: outside `clients.allow`.
    NotServed,
    /// Row 2: infected and not whitelisted (or its organisation's whitelisting was revoked).
    Quarantined {
        /// Infection index.
        infection: u32,
        /// Organisation index when the host's organisation lost its whitelisting.
        revoked_org: Option<u32>,
    },
    /// Row 2: infected, but released by the subscriber after the report, until `until`.
    SelfReleased {
        /// Infection index.
        infection: u32,
        /// Unix seconds at which the release ends.
        until: i64,
    },
    /// Row 3: infected inside a whitelisted organisation in good standing.
    Whitelisted {
        /// Infection index.
        infection: u32,
        /// Organisation index.
        organisation: u32,
    },
    /// Row 4: in a trusted zone (its own enrolment, or global trusted-only mode).
    Trusted {
        /// Profile index (`u16::MAX` when the global profile is missing): the one in force now,
        /// after the schedule.
        profile: u16,
        /// Because of global trusted-only mode.
        global: bool,
        /// The schedule period that chose `profile`, if one is in force.
        period: Option<PeriodRef>,
    },
    /// Row 4: global trusted-only mode is on and the client's network is exempt.
    Exempt,
    /// Row 5: no policy applies.
    Normal,
}

/// Who `client` is at `now` (see [`Who`]).
pub fn identify(snap: &Snapshot, client: &ClientView, now: i64) -> Who {
    if !client.served {
        return Who::NotServed;
    }
    // Rows 2 and 3: infected subscribers.
    if let Some(infection) = client.infection {
        let org = client.organisation.and_then(|o| {
            snap.organisations
                .get(o as usize)
                .map(|org| (o, org.standing))
        });
        return match org {
            Some((organisation, Standing::Good)) => Who::Whitelisted {
                infection,
                organisation,
            },
            revoked => match active_release(snap, client, infection, now) {
                Some(until) => Who::SelfReleased { infection, until },
                None => Who::Quarantined {
                    infection,
                    revoked_org: revoked.map(|(o, _)| o),
                },
            },
        };
    }
    // Row 4: trusted zones. An enrolment's own profile wins over the global one; a schedule
    // (the enrolment's own, else its profile's) can put another profile in force for a period.
    if let Some(en) = client.enrolment.and_then(|e| snap.enrolment(e)) {
        let schedule = en.schedule.or_else(|| {
            snap.profiles
                .get(en.profile as usize)
                .and_then(|p| p.schedule)
        });
        let in_force = schedule.and_then(|si| {
            let s = snap.schedules.get(si as usize)?;
            let pi = s.period_at(now)?;
            Some((
                s.periods.get(pi as usize)?.profile,
                PeriodRef {
                    schedule: si,
                    period: pi,
                },
            ))
        });
        return match in_force {
            Some((profile, period)) => Who::Trusted {
                profile,
                global: false,
                period: Some(period),
            },
            None => Who::Trusted {
                profile: en.profile,
                global: false,
                period: None,
            },
        };
    }
    if snap.mode.trusted_only_at(now) {
        return if client.exempt {
            Who::Exempt
        } else {
            Who::Trusted {
                profile: snap.global_profile,
                global: true,
                period: None,
            }
        };
    }
    Who::Normal
}

/// Rows 2 to 5: what the client is, then what that means for this question.
fn decide_subscriber(snap: &Snapshot, client: &ClientView, q: &Question, now: i64) -> Decision {
    match identify(snap, client, now) {
        Who::NotServed => Decision::new(Action::Refuse, Reason::NotServed),
        Who::Whitelisted {
            infection,
            organisation,
        } => Decision::new(
            Action::Alert,
            Reason::OrganisationAlert {
                infection,
                organisation,
            },
        ),
        Who::SelfReleased { infection, until } => {
            Decision::new(Action::Resolve, Reason::SelfReleased { infection, until })
        }
        Who::Quarantined {
            infection,
            revoked_org,
        } => decide_quarantined(snap, infection, revoked_org, q),
        Who::Trusted {
            profile, global, ..
        } => {
            let household = client
                .enrolment
                .filter(|_| !global)
                .and_then(|e| snap.enrolment(e))
                .and_then(|e| e.household.as_deref());
            decide_trusted(snap, profile, global, household, q)
        }
        Who::Exempt => Decision::new(Action::Resolve, Reason::Exempt),
        Who::Normal => Decision::new(Action::Resolve, Reason::Normal),
    }
}

/// Row 2: remediation names and `resolve` probes resolve; everything else goes to the page.
fn decide_quarantined(
    snap: &Snapshot,
    infection: u32,
    revoked_org: Option<u32>,
    q: &Question,
) -> Decision {
    let quarantined = Decision::new(
        Action::Sinkhole(Page::Cleanup),
        Reason::Quarantined {
            infection,
            revoked_org,
        },
    );
    let matched = snap.names.ancestors(&q.name).find(|(_, f)| {
        f.flags & (flag::REMEDIATION | flag::PROBE_RESOLVE | flag::PROBE_SINKHOLE) != 0
    });
    match matched {
        // A sinkholed probe makes the OS pop up the cleanup page.
        Some((_, f)) if f.flags & flag::PROBE_SINKHOLE != 0 && f.flags & flag::REMEDIATION == 0 => {
            quarantined
        }
        Some((_, f)) => Decision::new(
            Action::Resolve,
            Reason::Remediation {
                infection,
                source: f.source,
            },
        ),
        None => quarantined,
    }
}

/// The end of a self-release that covers this infection at `now`: made after the infection was
/// first seen, not yet expired.
pub fn active_release(
    snap: &Snapshot,
    client: &ClientView,
    infection: u32,
    now: i64,
) -> Option<i64> {
    let (at, until) = client.released?;
    let first_seen = snap.infection(infection)?.first_seen;
    (at >= first_seen && now < until).then_some(until)
}

/// Row 4, in this order: canaries, bypass services, safe search, the profile's names (minus the
/// household's removed services) and essentials, the household's own additions, else blocked.
fn decide_trusted(
    snap: &Snapshot,
    profile: u16,
    global: bool,
    household: Option<&Household>,
    q: &Question,
) -> Decision {
    let p = snap.profiles.get(profile as usize);
    let bit = if p.is_some() { 1u64 << profile } else { 0 };

    // Canaries and bypass services first: they must be NXDOMAIN even if a service's subtree
    // (or a household's addition) covers them.
    if snap
        .names
        .ancestors(&q.name)
        .any(|(_, f)| f.flags & flag::CANARY != 0)
    {
        return Decision::new(Action::NxDomain, Reason::Canary { profile });
    }
    if let Some((_, b)) = snap
        .bypass
        .ancestors(&q.name)
        .find(|(_, b)| b.profiles & bit != 0)
    {
        return Decision::new(
            Action::NxDomain,
            Reason::Bypass {
                profile,
                source: b.source,
            },
        );
    }
    let removed = |name: &[u8]| household.is_some_and(|h| h.removes(name, profile));
    // A household that removed search gets no safe-search alias for it either.
    if p.is_some_and(|p| p.safe_search)
        && let Some(t) = snap.rewrites.get_exact(&q.name)
        && !(household.is_some()
            && snap
                .names
                .ancestors(&q.name)
                .any(|(name, f)| f.profiles & bit != 0 && removed(name)))
    {
        return Decision::new(Action::Rewrite(*t), Reason::SafeSearch { profile });
    }
    let allowed = snap.names.ancestors(&q.name).find(|(name, f)| {
        f.flags & flag::ESSENTIAL != 0 || (f.profiles & bit != 0 && !removed(name))
    });
    if allowed.is_none() && household.is_some_and(|h| h.allows(&q.name).is_some()) {
        return Decision::new(Action::Resolve, Reason::HouseholdAllowed { profile });
    }
    if let Some((_, f)) = allowed {
        return Decision::new(
            Action::Resolve,
            Reason::TrustedAllowed {
                profile,
                global,
                source: f.source,
            },
        );
    }
    let action = match p.map(|p| p.blocked) {
        Some(Blocked::InfoPage) => Action::Sinkhole(Page::Info),
        _ => Action::NxDomain,
    };
    Decision::new(action, Reason::TrustedBlocked { profile, global })
}

#[cfg(test)]
mod tests;
