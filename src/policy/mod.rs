//! The pure policy core: no sockets, no clock reads, no I/O.
//!
//! - [`sources`]: the file formats operators write, and their parsers.
//! - [`compile`]: sources (+ runtime overrides) → one validated, immutable [`Snapshot`].
//! - [`decide`]: `(snapshot, client, question, now) → Decision`, the precedence of the product.
//! - [`prefix`], [`names`]: the lookup structures.

pub mod compile;
pub mod decide;
pub mod explain;
#[doc(hidden)]
pub mod fixture;
pub mod household;
pub mod names;
pub mod prefix;
pub mod rpz;
pub mod sources;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

pub use compile::{ModeOverride, Overrides, compile};
pub use decide::{Action, Decision, Page, Question, Reason, Who, decide, identify};
pub use names::{NameMap, QName};
pub use prefix::PrefixMap;
pub use sources::{Mode, PolicyError, SourceSet, Standing};

/// Where an entry came from: a file and line, or the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Index into the `files` of the table holding the entry ([`Snapshot::files`],
    /// [`InfectedSet::files`] or [`EnrolmentSet::files`]).
    pub file: u16,
    /// 1-based line, 0 when unknown.
    pub line: u32,
}

/// An infected subscriber, compiled.
#[derive(Debug, Clone)]
pub struct Infection {
    /// The subscriber's address or prefix.
    pub prefix: IpNet,
    /// Index into [`InfectedSet::strings`]: malware family or signature.
    pub family: u32,
    /// Index into [`InfectedSet::strings`]: who reported it.
    pub source: u32,
    /// Unix seconds.
    pub first_seen: i64,
    /// Where it was declared.
    pub origin: Origin,
}

/// Evidence of an infection: lookups of one botnet signature's names by one subscriber,
/// recorded by botnet detection in the state database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The prefix the detection was recorded for (IPv4 /32, IPv6 delegation).
    pub prefix: IpNet,
    /// Malware family (from the feed's `family=` TXT record, else the feed's configured family).
    pub family: String,
    /// The threat feed that listed the name.
    pub feed: String,
    /// The name looked up last.
    pub qname: String,
    /// Unix seconds of the first and the last lookup.
    pub first_at: i64,
    /// See `first_at`.
    pub last_at: i64,
    /// Lookups recorded (debounced: at most one per host and signature per
    /// `detection.debounce_secs`).
    pub count: u32,
}

/// A trusted-zone enrolment, compiled.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The customer's prefix.
    pub prefix: IpNet,
    /// Index into [`Snapshot::profiles`].
    pub profile: u16,
    /// Who enabled it.
    pub enabled_by: Box<str>,
    /// Unix seconds.
    pub enabled_at: i64,
    /// Where it was declared.
    pub origin: Origin,
    /// The household's own additions and removals (most enrolments have none).
    pub household: Option<Box<Household>>,
    /// Index into [`Snapshot::schedules`]: this enrolment's own schedule (it wins over its
    /// profile's).
    pub schedule: Option<u16>,
}

/// What one household changed in its profile: names it added, services it removed.
#[derive(Debug, Clone, Default)]
pub struct Household {
    /// Extra allowed names (each with its subtree), normalised.
    pub allow: Box<[Box<[u8]>]>,
    /// Removed services (indexes into [`Snapshot::services`]).
    pub removed: Box<[u32]>,
    /// The allowlisted names those services bring, each with the profiles (bit mask) in which
    /// no kept service lists it too.
    pub removed_names: Box<[(Box<[u8]>, u64)]>,
}

impl Household {
    /// The household's own addition that covers `q`, if any.
    pub fn allows(&self, q: &QName) -> Option<&[u8]> {
        q.suffixes()
            .find_map(|s| self.allow.iter().find(|a| ***a == *s).map(|a| &**a))
    }

    /// True when, in `profile`, the allowlisted name `name` came only from removed services.
    pub fn removes(&self, name: &[u8], profile: u16) -> bool {
        let bit = 1u64.checked_shl(u32::from(profile)).unwrap_or(0);
        self.removed_names
            .iter()
            .any(|(r, mask)| **r == *name && mask & bit != 0)
    }
}

impl Snapshot {
    /// `schedule/period` of a period reference, for `explain` and status.
    pub fn period_name(&self, p: PeriodRef) -> Option<String> {
        let s = self.schedules.get(p.schedule as usize)?;
        let period = s.periods.get(p.period as usize)?;
        Some(format!("{}/{}", s.id, period.name))
    }

    /// An enrolment as it would be written in a file (or sent to the admin API): profile,
    /// additions, removed services (ids) and schedule by name.
    pub fn enrolment_entry(&self, e: &Enrolment) -> sources::EnrolmentEntry {
        let h = e.household.as_deref();
        sources::EnrolmentEntry {
            prefix: sources::Prefix(e.prefix),
            profile: self
                .profiles
                .get(e.profile as usize)
                .map_or_else(String::new, |p| p.name.clone()),
            enabled_by: e.enabled_by.to_string(),
            enabled_at: chrono::DateTime::from_timestamp(e.enabled_at, 0).unwrap_or_default(),
            force: false,
            allow: h.map_or_else(Vec::new, |h| {
                h.allow
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            }),
            remove: h.map_or_else(Vec::new, |h| {
                h.removed
                    .iter()
                    .filter_map(|i| self.services.get(*i as usize).map(|s| s.0.clone()))
                    .collect()
            }),
            schedule: e
                .schedule
                .and_then(|i| self.schedules.get(i as usize))
                .map(|s| s.id.clone()),
        }
    }
}

/// A weekly schedule: periods during which a different profile applies.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Identifier (`schedules.yaml`).
    pub id: String,
    /// The time zone its times are written in (IANA name, e.g. `Europe/Brussels`).
    pub time_zone: String,
    pub(crate) tz: jiff::tz::TimeZone,
    /// Periods, first match wins.
    pub periods: Vec<Period>,
}

/// One period of a schedule: on these weekdays, from `from` to `to` (seconds after local
/// midnight; `to < from` runs past midnight into the next day), `profile` applies.
#[derive(Debug, Clone)]
pub struct Period {
    /// Name shown by `explain` (`school`, `night`).
    pub name: String,
    /// Bit 0 Monday … bit 6 Sunday: the days the period starts on.
    pub days: u8,
    /// Start, seconds after local midnight.
    pub from: u32,
    /// End (exclusive), seconds after local midnight.
    pub to: u32,
    /// Index into [`Snapshot::profiles`].
    pub profile: u16,
}

impl Schedule {
    /// The period in force at `now` (unix seconds), if any. Pure: the clock is an argument.
    pub fn period_at(&self, now: i64) -> Option<u16> {
        let offset = jiff::Timestamp::from_second(now)
            .map(|t| i64::from(self.tz.to_offset(t).seconds()))
            .unwrap_or(0);
        let local = now + offset;
        let day = local.div_euclid(86_400);
        let second = local.rem_euclid(86_400) as u32;
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let weekday = (day + 3).rem_euclid(7) as u8;
        let yesterday = (weekday + 6) % 7;
        self.periods
            .iter()
            .position(|p| {
                let on = |d: u8| p.days & (1 << d) != 0;
                if p.from <= p.to {
                    on(weekday) && p.from <= second && second < p.to
                } else {
                    (on(weekday) && second >= p.from) || (on(yesterday) && second < p.to)
                }
            })
            .map(|i| i as u16)
    }
}

/// A period of a schedule, as [`identify`] found it in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodRef {
    /// Index into [`Snapshot::schedules`].
    pub schedule: u16,
    /// Index into that schedule's periods.
    pub period: u16,
}

/// A whitelisted organisation, compiled.
#[derive(Debug, Clone, Serialize)]
pub struct Organisation {
    /// Identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Networks.
    pub networks: Vec<IpNet>,
    /// Contacts.
    pub contacts: Vec<sources::Contact>,
    /// Grace period in hours.
    pub grace_hours: f64,
    /// Standing (a revocation recorded at runtime overrides the file).
    pub standing: Standing,
    /// Language of its alert e-mails, when it names one.
    pub language: Option<String>,
    /// Where it was declared.
    #[serde(skip)]
    pub origin: Origin,
}

/// The global mode in force.
#[derive(Debug, Clone, Serialize)]
pub struct ModeState {
    /// `normal` or `trusted-only`.
    pub mode: Mode,
    /// Who set it.
    pub set_by: String,
    /// Why.
    pub reason: String,
    /// Unix seconds, when set (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::timefmt::ser_opt")]
    pub set_at: Option<i64>,
    /// Unix seconds after which trusted-only no longer applies (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::timefmt::ser_opt")]
    pub expires: Option<i64>,
    /// `file` or `admin-api`.
    pub source: String,
    /// Networks exempt from trusted-only mode (from `mode.yaml` and the operator's override).
    pub exempt: Vec<String>,
}

impl Default for ModeState {
    fn default() -> Self {
        Self {
            mode: Mode::Normal,
            set_by: String::new(),
            reason: String::new(),
            set_at: None,
            expires: None,
            source: "default".into(),
            exempt: Vec::new(),
        }
    }
}

impl ModeState {
    /// True when trusted-only applies at `now`.
    pub fn trusted_only_at(&self, now: i64) -> bool {
        self.mode == Mode::TrustedOnly && self.expires.is_none_or(|e| now < e)
    }
}

/// How blocked names are answered for a profile.
pub use sources::Blocked;

/// A compiled trusted-zone profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Name (`clean-pipe`, `kids`).
    pub name: String,
    /// One line.
    pub description: String,
    /// Answer for names outside the zone.
    pub blocked: Blocked,
    /// Safe-search rewrites apply.
    pub safe_search: bool,
    /// Service indexes included.
    pub services: Vec<u32>,
    /// Index into [`Snapshot::schedules`]: the schedule every enrolment in this profile follows
    /// (unless the enrolment has its own).
    pub schedule: Option<u16>,
}

/// Flags on an allowlisted name.
pub mod flag {
    /// Allowed in every trusted-zone profile (time, revocation, probes).
    pub const ESSENTIAL: u8 = 1;
    /// Reachable by quarantined subscribers.
    pub const REMEDIATION: u8 = 2;
    /// Probe that quarantined subscribers get sinkholed (captive-portal detection).
    pub const PROBE_SINKHOLE: u8 = 4;
    /// Probe that quarantined subscribers get resolved (e.g. Windows' DNS probe).
    pub const PROBE_RESOLVE: u8 = 8;
    /// NXDOMAIN in every trusted-zone profile (DoH canary, private relay).
    pub const CANARY: u8 = 16;
}

/// What the allowlists say about one name (and its subtree).
#[derive(Debug, Clone, Copy, Default)]
pub struct NameFlags {
    /// Bit `i` set: profile `i` allows the name.
    pub profiles: u64,
    /// [`flag`] bits.
    pub flags: u8,
    /// Index into [`Snapshot::name_sources`]: the first service or group that listed it.
    pub source: u32,
}

/// Bypass services listed in `allowlists/bypass.yaml`: NXDOMAIN in the profiles named.
#[derive(Debug, Clone, Copy, Default)]
pub struct BypassFlags {
    /// Bit `i` set: NXDOMAIN in profile `i`.
    pub profiles: u64,
    /// Index into [`Snapshot::name_sources`]: the group that listed it.
    pub source: u32,
}

/// The sinkhole and information-page answers.
#[derive(Debug, Clone, Serialize)]
pub struct Sinkhole {
    /// Cleanup page IPv4.
    pub v4: Vec<Ipv4Addr>,
    /// Cleanup page IPv6.
    pub v6: Vec<Ipv6Addr>,
    /// Information page IPv4.
    pub info_v4: Vec<Ipv4Addr>,
    /// Information page IPv6.
    pub info_v6: Vec<Ipv6Addr>,
    /// TTL of synthesized answers.
    pub ttl: u32,
}

impl Default for Sinkhole {
    fn default() -> Self {
        Self {
            v4: vec![Ipv4Addr::LOCALHOST],
            v6: vec![Ipv6Addr::LOCALHOST],
            info_v4: vec![Ipv4Addr::LOCALHOST],
            info_v6: vec![Ipv6Addr::LOCALHOST],
            ttl: 60,
        }
    }
}

/// How a feed's matches are answered, overriding the zone's actions (as BIND's `policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedPolicy {
    /// As written in the zone.
    #[default]
    Given,
    /// NXDOMAIN.
    NxDomain,
    /// NODATA.
    NoData,
    /// No rewriting.
    Passthru,
    /// No answer.
    Drop,
    /// TC=1 over UDP.
    TcpOnly,
    /// The cleanup page's addresses.
    CleanupPage,
}

/// A threat feed (compiled RPZ zone) and how it is applied.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Configured name.
    pub name: String,
    /// Where it comes from (file path or primary), for `explain`.
    pub source: String,
    /// The compiled zone (shared between snapshots while unchanged).
    pub zone: Arc<rpz::RpzZone>,
    /// Action override.
    pub policy: FeedPolicy,
    /// Count and log matches, change nothing.
    pub log_only: bool,
    /// Lookups flag the subscriber infected.
    pub botnet: bool,
    /// Family used when the zone names none.
    pub family: String,
}

impl Feed {
    /// The family a match of `rule` reports.
    pub fn family_of(&self, rule: &rpz::Rule) -> &str {
        self.zone.family(rule).unwrap_or(&self.family)
    }
}

/// What the policy knows about a client address: computed once per client (and cached until the
/// snapshot changes), then used for every question.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientView {
    /// Inside `clients.allow`.
    pub served: bool,
    /// Index into [`Snapshot::infections`].
    pub infection: Option<u32>,
    /// Index into [`Snapshot::organisations`].
    pub organisation: Option<u32>,
    /// Index into [`Snapshot::enrolments`].
    pub enrolment: Option<u32>,
    /// Exempt from global trusted-only mode.
    pub exempt: bool,
    /// Latest self-release covering the client: `(released at, until)`, unix seconds.
    pub released: Option<(i64, i64)>,
    /// First feed with an `rpz-client-ip` trigger for this client, and the rule.
    pub feed_client: Option<(u16, rpz::Rule)>,
}

/// `file:line` of an origin in a table of file names.
fn origin_text(files: &[String], o: Origin) -> String {
    let file = files.get(o.file as usize).map_or("?", |s| s.as_str());
    if o.line > 0 {
        format!("{file}:{}", o.line)
    } else {
        file.to_owned()
    }
}

/// Infected subscribers compiled from the `infected*` files and the operator's flags, clears
/// and self-releases' inputs. A part of the snapshot of its own, so that a reload that changes
/// something else (a mode flip, one enrolment) reuses it instead of rebuilding a million entries.
#[derive(Debug, Default)]
pub struct InfectedSet {
    pub(crate) map: PrefixMap<u32>,
    /// Infected subscribers (kept small: a million of them is normal).
    pub entries: Vec<Infection>,
    /// Ticket references by infection index (most feed entries have none).
    pub tickets: rustc_hash::FxHashMap<u32, Box<str>>,
    /// Interned strings (families, sources).
    pub strings: Vec<Box<str>>,
    /// Files the entries came from (`Origin::file` indexes this).
    pub files: Vec<String>,
    /// Botnet-lookup evidence by infection index, every signature seen (most entries have none).
    pub evidence: rustc_hash::FxHashMap<u32, Vec<Evidence>>,
}

impl InfectedSet {
    /// `file:line` where an infection was declared.
    pub fn origin_text(&self, o: Origin) -> String {
        origin_text(&self.files, o)
    }
}

/// Trusted-zone enrolments compiled from the `enrolments*` files and the operator's changes;
/// shared between snapshots like [`InfectedSet`].
#[derive(Debug, Default)]
pub struct EnrolmentSet {
    pub(crate) map: PrefixMap<u32>,
    /// Enrolments.
    pub entries: Vec<Enrolment>,
    /// Files the entries came from (`Origin::file` indexes this).
    pub files: Vec<String>,
}

impl EnrolmentSet {
    /// `file:line` where an enrolment was declared.
    pub fn origin_text(&self, o: Origin) -> String {
        origin_text(&self.files, o)
    }

    /// The enrolment of exactly this prefix.
    pub fn exact(&self, net: IpNet) -> Option<&Enrolment> {
        self.map
            .get_exact(net)
            .and_then(|i| self.entries.get(*i as usize))
    }
}

/// One immutable, validated version of the whole policy. Built by [`compile`], swapped whole.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every successful reload.
    pub generation: u64,
    /// Files the entries came from (`Origin::file` indexes this).
    pub files: Vec<String>,
    pub(crate) acl: PrefixMap<()>,
    /// Infected subscribers (shared with the previous snapshot while their sources are unchanged).
    pub infected: Arc<InfectedSet>,
    /// Trusted-zone enrolments (shared with the previous snapshot while their sources are unchanged).
    pub enrolled: Arc<EnrolmentSet>,
    pub(crate) org_nets: PrefixMap<u32>,
    /// Whitelisted organisations.
    pub organisations: Vec<Organisation>,
    /// Global mode.
    pub mode: ModeState,
    pub(crate) exempt: PrefixMap<()>,
    pub(crate) released: PrefixMap<(i64, i64)>,
    /// Profile used for global trusted-only mode.
    pub global_profile: u16,
    /// Trusted-zone profiles (at most 64).
    pub profiles: Vec<Profile>,
    /// Curated services: `(id, display name, category)`.
    pub services: Vec<(String, String, String)>,
    pub(crate) names: NameMap<NameFlags>,
    pub(crate) bypass: NameMap<BypassFlags>,
    /// Weekly schedules (`schedules.yaml`).
    pub schedules: Vec<Schedule>,
    /// Human-readable origin of allowlisted names (`service kbc`, `remediation antivirus`...).
    pub name_sources: Vec<String>,
    pub(crate) rewrites: NameMap<u16>,
    /// Safe-search targets: `(engine, target name)`.
    pub rewrite_targets: Vec<(String, String)>,
    /// Synthesized answers.
    pub sinkhole: Sinkhole,
    /// Release of the curated allowlists.
    pub allowlist_version: String,
    /// Threat feeds in evaluation order.
    pub feeds: Vec<Feed>,
}

impl Snapshot {
    /// Everything the policy knows about `ip`. Pure; callers may cache it per snapshot.
    pub fn classify(&self, ip: IpAddr) -> ClientView {
        let ip = prefix::canonical_ip(ip);
        ClientView {
            served: self.acl.contains(ip),
            infection: self.infected.map.longest_match(ip).map(|(_, i)| *i),
            organisation: self.org_nets.longest_match(ip).map(|(_, i)| *i),
            enrolment: self.enrolled.map.longest_match(ip).map(|(_, i)| *i),
            exempt: self.exempt.contains(ip),
            released: self.released.longest_match(ip).map(|(_, r)| *r),
            feed_client: self
                .feeds
                .iter()
                .enumerate()
                .find_map(|(i, f)| f.zone.match_client(ip).map(|r| (i as u16, r))),
        }
    }

    /// The whitelisted organisation whose networks contain `ip`.
    pub fn organisation_of(&self, ip: IpAddr) -> Option<u32> {
        self.org_nets.longest_match(ip).map(|(_, i)| *i)
    }

    /// Infection `i` (an index from [`ClientView::infection`]).
    pub fn infection(&self, i: u32) -> Option<&Infection> {
        self.infected.entries.get(i as usize)
    }

    /// Every infected subscriber.
    pub fn infections(&self) -> &[Infection] {
        &self.infected.entries
    }

    /// Enrolment `i` (an index from [`ClientView::enrolment`]).
    pub fn enrolment(&self, i: u32) -> Option<&Enrolment> {
        self.enrolled.entries.get(i as usize)
    }

    /// Botnet lookups recorded for an infection, one entry per signature, oldest first.
    pub fn evidence(&self, infection: u32) -> &[Evidence] {
        self.infected
            .evidence
            .get(&infection)
            .map_or(&[], |v| v.as_slice())
    }

    /// The ticket reference of an infection.
    pub fn ticket(&self, infection: u32) -> Option<&str> {
        self.infected.tickets.get(&infection).map(|t| &**t)
    }

    /// An interned infection string (family, source).
    pub fn string(&self, i: u32) -> &str {
        self.infected.strings.get(i as usize).map_or("", |s| s)
    }

    /// `file:line` of an organisation's origin (infections and enrolments: ask their part).
    pub fn organisation_origin_text(&self, o: Origin) -> String {
        origin_text(&self.files, o)
    }

    /// Index of a profile by name.
    pub fn profile_index(&self, name: &str) -> Option<u16> {
        self.profiles
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as u16)
    }

    /// Number of names in the allowlists index.
    pub fn allowlisted_names(&self) -> usize {
        self.names.len()
    }

    /// Loaded counts, for status and metrics.
    pub fn counts(&self) -> Counts {
        Counts {
            infected: self.infected.entries.len(),
            enrolments: self.enrolled.entries.len(),
            organisations: self.organisations.len(),
            profiles: self.profiles.len(),
            services: self.services.len(),
            allowlisted_names: self.names.len(),
            client_networks: self.acl.len(),
            feed_triggers: self.feeds.iter().map(|f| f.zone.len()).sum(),
        }
    }
}

/// Sizes of a snapshot.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Infected subscribers.
    pub infected: usize,
    /// Trusted-zone enrolments.
    pub enrolments: usize,
    /// Whitelisted organisations.
    pub organisations: usize,
    /// Profiles.
    pub profiles: usize,
    /// Curated services.
    pub services: usize,
    /// Distinct allowlisted names.
    pub allowlisted_names: usize,
    /// Served client networks.
    pub client_networks: usize,
    /// Triggers in all threat feeds.
    pub feed_triggers: usize,
}
