//! The policy file formats, as operators write them, and their parsers.
//!
//! Policy directory (`policy.dir`), files recognised by name; others are ignored:
//! - `infected*.yaml` / `infected*.csv` — infected subscribers (abuse desk, abuse feed export)
//! - `enrolments*.yaml` — trusted-zone customers (provisioning system)
//! - `organisations*.yaml` — whitelisted organisations (account managers)
//! - `mode.yaml` — global mode (NOC)
//!
//! Allowlists directory (`policy.allowlists`): `categories.yaml`, `services/*.yaml`,
//! `profiles.yaml`, `safe-search.yaml`, `remediation.yaml`, `probes.yaml`, `essentials.yaml`,
//! `meta.yaml`.
//!
//! Parsing is pure (text in, typed entries or errors with file and line out); reading the
//! directories is [`SourceSet::read`].

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    /// The file.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// What is wrong, naming the key or value.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

/// Errors as people read them: the same message in the same file is said once, with its lines
/// (`feed.rpz:4, 5, 6 and 97 more lines: ...`), in the order first seen.
pub fn summarise(errors: &[PolicyError]) -> Vec<String> {
    let mut groups: Vec<(&str, &str, Vec<usize>)> = Vec::new();
    for e in errors {
        match groups
            .iter_mut()
            .find(|(f, m, _)| *f == e.file && *m == e.message)
        {
            Some((_, _, lines)) => lines.push(e.line),
            None => groups.push((&e.file, &e.message, vec![e.line])),
        }
    }
    groups
        .into_iter()
        .map(|(file, message, lines)| {
            let known: Vec<String> = lines
                .iter()
                .filter(|l| **l > 0)
                .map(|l| l.to_string())
                .collect();
            match known.len() {
                0 if lines.len() > 1 => format!("{file}: {message} ({} times)", lines.len()),
                0 => format!("{file}: {message}"),
                1..=3 => format!("{file}:{}: {message}", known.join(", ")),
                n => format!(
                    "{file}:{} and {} more lines ({n} in all): {message}",
                    known[..3].join(", "),
                    n - 3
                ),
            }
        })
        .collect()
}

impl PolicyError {
    /// An error at a line of a file.
    pub fn at(file: &str, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            message: message.into(),
        }
    }
}

/// A network written as `192.0.2.7`, `192.0.2.0/24`, `2001:db8:12:3400::/56`. A bare address is a
/// single host; host bits set under the mask are an error (they usually hide a typo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Prefix(pub IpNet);

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Prefix(IpNet::from(ip)));
        }
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or network"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        Ok(Prefix(net))
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        p.to_string()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.0 {
            IpNet::V4(n) => n.prefix_len() == 32,
            IpNet::V6(n) => n.prefix_len() == 128,
        };
        if host {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An infected subscriber: `infected.yaml` entry or `infected.csv` row.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InfectedEntry {
    /// The subscriber: an address, or the delegated prefix (e.g. an IPv6 /56).
    pub prefix: Prefix,
    /// Malware family or signature name, as the reporting source names it (e.g. `Mirai`).
    pub family: String,
    /// Who reported it (e.g. `shadowserver`, `cert.be`, `abuse-desk`, `botnet-lookup`).
    pub source: String,
    /// When the infection was first seen (RFC 3339, e.g. `2026-11-20T08:00:00Z`).
    pub first_seen: DateTime<Utc>,
    /// Optional ticket reference in the abuse desk's system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Accept a prefix shorter than `policy.min_prefix_v4`/`v6` (a whole network on purpose).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// A trusted-zone customer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentEntry {
    /// The customer's address or prefix.
    pub prefix: Prefix,
    /// A profile from `allowlists/profiles.yaml` (e.g. `clean-pipe`, `kids`).
    pub profile: String,
    /// Who enabled it (customer portal, helpdesk agent...).
    pub enabled_by: String,
    /// When it was enabled.
    pub enabled_at: DateTime<Utc>,
    /// Accept a prefix shorter than `policy.min_prefix_v4`/`v6` (a whole network on purpose).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// The household's own extra allowed names, each with its subtree (the school portal, a
    /// club's site); at most `policy.household_max_names`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Services (ids) or whole categories the household removed from its profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// A schedule from `schedules.yaml` for this enrolment (wins over its profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// `schedules.yaml`: weekly schedules that put another profile in force for a period.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulesFile {
    /// IANA time zone the times are written in (e.g. `Europe/Brussels`).
    pub time_zone: String,
    /// The schedules.
    #[serde(default)]
    pub schedules: Vec<ScheduleDef>,
    /// Profile → schedule every enrolment in that profile follows (unless it has its own).
    #[serde(default)]
    pub profiles: std::collections::BTreeMap<String, String>,
}

/// One weekly schedule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    /// Identifier, referenced by profiles and enrolments.
    pub id: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// Overrides the file's `time_zone` for this schedule.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Periods, first match wins; outside every period the enrolment's own profile applies.
    pub periods: Vec<PeriodDef>,
}

/// One period: on `days`, from `from` to `to` (local `HH:MM` or `HH:MM:SS`; `to` before
/// `from` runs past midnight into the next day), `profile` applies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodDef {
    /// Shown by `explain` (`school`, `night`).
    pub name: String,
    /// `mon` … `sun`, `weekdays`, `weekend` or `daily`: the days the period starts on.
    pub days: Vec<String>,
    /// Start, local time.
    pub from: String,
    /// End (exclusive), local time.
    pub to: String,
    /// The profile in force during the period.
    pub profile: String,
}

/// Parses `schedules.yaml`.
pub fn parse_schedules(file: &str, text: &str) -> Result<SchedulesFile, PolicyError> {
    parse_yaml(file, text)
}

/// How an organisation stands with the ISP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// Whitelisted: infections raise alerts, hosts are not quarantined.
    Good,
    /// Whitelisting lost (missed a cleanup deadline): infected hosts are quarantined.
    Revoked,
}

/// Someone to alert in an organisation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Person or desk.
    pub name: String,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number for urgent cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Webhook URL that receives alerts (https in production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Shared secret for the webhook's `X-Cleanpipe-Signature` HMAC-SHA256 header.
    #[serde(default, skip_serializing)]
    pub webhook_secret: Option<String>,
}

/// A whitelisted organisation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationEntry {
    /// Short stable identifier (`[a-z0-9-]`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Its networks.
    pub networks: Vec<Prefix>,
    /// Who receives alerts.
    #[serde(default)]
    pub contacts: Vec<Contact>,
    /// Hours it has to clean an infected host before losing its whitelisting (fractions allowed,
    /// e.g. for drills). Default: 72.
    #[serde(default = "default_grace_hours")]
    pub grace_hours: f64,
    /// `good` (default) or `revoked`.
    #[serde(default = "default_standing")]
    pub standing: Standing,
    /// Language of its alert e-mails (`en`, `nl`, `fr`, `de`). Default: `alerts.language`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Languages alert e-mails can be written in.
pub const MAIL_LANGUAGES: [&str; 4] = ["en", "nl", "fr", "de"];

fn default_grace_hours() -> f64 {
    72.0
}
fn default_standing() -> Standing {
    Standing::Good
}

/// The global mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Everyone is served by their own policy.
    #[default]
    Normal,
    /// Everyone not exempt gets only the trusted zone (massive attack).
    TrustedOnly,
}

/// `mode.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModeFile {
    /// `normal` or `trusted-only`.
    pub mode: Mode,
    /// Who set it.
    #[serde(default)]
    pub set_by: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// When it was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_at: Option<DateTime<Utc>>,
    /// When trusted-only ends by itself (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// Networks never put in trusted-only mode (ISP infrastructure, NOC).
    #[serde(default)]
    pub exempt: Vec<Prefix>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfectedFile {
    infected: Vec<InfectedEntry>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolmentsFile {
    enrolments: Vec<EnrolmentEntry>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrganisationsFile {
    organisations: Vec<OrganisationEntry>,
}

/// Entries of one file with the line each starts on.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// File they came from.
    pub file: String,
    /// `(line, entry)` pairs.
    pub entries: Vec<(u32, T)>,
}

/// Lines on which the items of the first block sequence start (`- ` at one indentation).
/// Used to point semantic errors (unknown profile, duplicate) at a line; 0 where not found.
fn item_lines(text: &str) -> Vec<u32> {
    let mut indent = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if !(trimmed.starts_with("- ") || trimmed == "-") {
            continue;
        }
        let ind = line.len() - trimmed.len();
        match indent {
            None => {
                indent = Some(ind);
                out.push(i as u32 + 1);
            }
            Some(x) if x == ind => out.push(i as u32 + 1),
            _ => {}
        }
    }
    out
}

fn parse_yaml<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<T, PolicyError> {
    serde_norway::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        let mut message = e.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        PolicyError::at(file, line, message)
    })
}

fn locate<T>(file: &str, text: &str, entries: Vec<T>) -> Located<T> {
    let lines = item_lines(text);
    Located {
        file: file.to_owned(),
        entries: entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| (lines.get(i).copied().unwrap_or(0), e))
            .collect(),
    }
}

/// Parses `infected*.yaml`.
pub fn parse_infected_yaml(file: &str, text: &str) -> Result<Located<InfectedEntry>, PolicyError> {
    let f: InfectedFile = parse_yaml(file, text)?;
    Ok(locate(file, text, f.infected))
}

/// Parses `enrolments*.yaml`.
pub fn parse_enrolments(file: &str, text: &str) -> Result<Located<EnrolmentEntry>, PolicyError> {
    let f: EnrolmentsFile = parse_yaml(file, text)?;
    Ok(locate(file, text, f.enrolments))
}

/// Parses `organisations*.yaml`.
pub fn parse_organisations(
    file: &str,
    text: &str,
) -> Result<Located<OrganisationEntry>, PolicyError> {
    let f: OrganisationsFile = parse_yaml(file, text)?;
    Ok(locate(file, text, f.organisations))
}

/// Parses `mode.yaml`.
pub fn parse_mode(file: &str, text: &str) -> Result<ModeFile, PolicyError> {
    parse_yaml(file, text)
}

/// Parses `infected*.csv`: the bulk format for abuse-feed exports, one subscriber per line:
/// `prefix,family,source,first_seen[,ticket]`. A first line starting with `prefix` is a header;
/// blank lines and lines starting with `#` are skipped. Every bad line is reported.
pub fn parse_infected_csv(
    file: &str,
    text: &str,
) -> Result<Located<InfectedEntry>, Vec<PolicyError>> {
    let mut entries = Vec::with_capacity(text.len() / 48);
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("prefix")) {
            continue;
        }
        match parse_csv_row(line) {
            Ok(e) => entries.push((line_no as u32, e)),
            Err(m) => {
                errors.push(PolicyError::at(file, line_no, m));
                if errors.len() >= 100 {
                    errors.push(PolicyError::at(file, 0, "too many errors; stopped"));
                    break;
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Located {
            file: file.to_owned(),
            entries,
        })
    } else {
        Err(errors)
    }
}

fn parse_csv_row(line: &str) -> Result<InfectedEntry, String> {
    let mut f = line.split(',').map(str::trim);
    let (Some(prefix), Some(family), Some(source), Some(first_seen)) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return Err("expected `prefix,family,source,first_seen[,ticket]`".into());
    };
    let ticket = f.next().filter(|t| !t.is_empty()).map(str::to_owned);
    if f.next().is_some() {
        return Err("too many fields (commas are not allowed inside values)".into());
    }
    if family.is_empty() || source.is_empty() {
        return Err("family and source must not be empty".into());
    }
    let first_seen = DateTime::parse_from_rfc3339(first_seen)
        .map_err(|e| {
            format!("first_seen `{first_seen}`: {e} (use RFC 3339, e.g. 2026-11-20T08:00:00Z)")
        })?
        .with_timezone(&Utc);
    Ok(InfectedEntry {
        prefix: prefix.parse()?,
        family: family.to_owned(),
        source: source.to_owned(),
        first_seen,
        ticket,
        force: false,
    })
}

// ---------------------------------------------------------------------------------------------
// Allowlists

/// `meta.yaml`: the release of the curated data.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Release identifier, e.g. `2026.11.25`.
    pub version: String,
    /// What changed, newest first.
    #[serde(default)]
    pub changelog: Vec<ChangelogEntry>,
}

/// One release in `meta.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangelogEntry {
    /// Release identifier.
    pub version: String,
    /// Release date.
    pub date: String,
    /// Human-readable changes.
    pub changes: Vec<String>,
}

/// A category of services.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// Identifier used by services and profiles.
    pub id: String,
    /// Display name.
    pub name: String,
    /// One line.
    pub description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoriesFile {
    categories: Vec<Category>,
}

/// A trusted service and every name it needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Category id.
    pub category: String,
    /// One line.
    pub description: String,
    /// Names it owns (each covers its subtree); the first is its main domain.
    pub domains: Vec<String>,
    /// Names it needs that other services need too (CDNs, single sign-on, captcha).
    #[serde(default)]
    pub shared: Vec<String>,
    /// Where the vendor documents the names the service needs, and when curators read it.
    #[serde(default)]
    pub sources: Vec<ServiceSource>,
}

/// A vendor page a service's names were taken from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSource {
    /// The page.
    pub url: String,
    /// When it was read (`YYYY-MM-DD`), or `not-fetched` when the names come from the
    /// curator's knowledge of the published list.
    pub read: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    services: Vec<Service>,
}

/// What a trusted-zone customer gets for a name outside the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Blocked {
    /// NXDOMAIN with an Extended DNS Error.
    Nxdomain,
    /// The information page's address ("this site is not in your trusted zone").
    InfoPage,
}

/// A trusted-zone profile.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDef {
    /// One line for operators and customers.
    pub description: String,
    /// Categories included.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Extra services outside those categories.
    #[serde(default)]
    pub services: Vec<String>,
    /// Services removed from those categories.
    #[serde(default)]
    pub exclude_services: Vec<String>,
    /// `nxdomain` or `info-page`.
    pub blocked: Blocked,
    /// Rewrite search engines to their safe-search addresses.
    #[serde(default)]
    pub safe_search: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfilesFile {
    profiles: std::collections::BTreeMap<String, ProfileDef>,
}

/// A safe-search rewrite.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Search engine.
    pub engine: String,
    /// CNAME target.
    pub target: String,
    /// Exact names rewritten.
    pub names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SafeSearchFile {
    rewrites: Vec<Rewrite>,
}

/// A named group of names (remediation, essentials).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Identifier.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// Names (subtrees).
    pub domains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemediationFile {
    groups: Vec<Group>,
}

/// What a quarantined subscriber gets for a probe name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeQuarantine {
    /// The cleanup page's address: the OS detects a captive portal and shows it.
    Sinkhole,
    /// The real answer.
    Resolve,
}

/// A captive-portal / connectivity probe name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Exact name probed.
    pub name: String,
    /// Who probes it.
    pub vendor: String,
    /// `http` or `dns`.
    pub kind: String,
    /// What the OS expects.
    pub expects: String,
    /// What a quarantined subscriber gets.
    pub quarantine: ProbeQuarantine,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbesFile {
    probes: Vec<Probe>,
}

/// A name that answers NXDOMAIN in every trusted-zone profile.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Exact name (and subtree).
    pub name: String,
    /// Why.
    pub why: String,
}

/// Names answered NXDOMAIN in some profiles: public DoH/DoT resolvers, VPN and proxy services a
/// child could use to get around the trusted zone (`allowlists/bypass.yaml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BypassGroup {
    /// Identifier.
    pub id: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// Profiles in which these names answer NXDOMAIN.
    pub profiles: Vec<String>,
    /// Names (subtrees).
    pub domains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BypassFile {
    groups: Vec<BypassGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EssentialsFile {
    groups: Vec<Group>,
    #[serde(default)]
    canaries: Vec<Canary>,
}

/// The whole curated allowlist data set, parsed.
#[derive(Debug, Clone, Default)]
pub struct Allowlists {
    /// Release.
    pub meta: Meta,
    /// Categories.
    pub categories: Vec<Category>,
    /// Services with the file each came from.
    pub services: Vec<(String, Service)>,
    /// Profiles by name.
    pub profiles: Vec<(String, ProfileDef)>,
    /// Safe-search rewrites.
    pub rewrites: Vec<Rewrite>,
    /// Remediation groups.
    pub remediation: Vec<Group>,
    /// Probes.
    pub probes: Vec<Probe>,
    /// Essentials (time, revocation).
    pub essentials: Vec<Group>,
    /// Canaries.
    pub canaries: Vec<Canary>,
    /// Bypass services (NXDOMAIN in the profiles each group names).
    pub bypass: Vec<BypassGroup>,
}

impl Allowlists {
    /// Parses one allowlist file by its path relative to the allowlists directory.
    pub fn add_file(&mut self, rel: &str, display: &str, text: &str) -> Result<(), PolicyError> {
        match rel {
            "meta.yaml" => self.meta = parse_yaml(display, text)?,
            "categories.yaml" => self
                .categories
                .extend(parse_yaml::<CategoriesFile>(display, text)?.categories),
            "profiles.yaml" => self
                .profiles
                .extend(parse_yaml::<ProfilesFile>(display, text)?.profiles),
            "safe-search.yaml" => self
                .rewrites
                .extend(parse_yaml::<SafeSearchFile>(display, text)?.rewrites),
            "remediation.yaml" => self
                .remediation
                .extend(parse_yaml::<RemediationFile>(display, text)?.groups),
            "bypass.yaml" => self
                .bypass
                .extend(parse_yaml::<BypassFile>(display, text)?.groups),
            "probes.yaml" => self
                .probes
                .extend(parse_yaml::<ProbesFile>(display, text)?.probes),
            "essentials.yaml" => {
                let f: EssentialsFile = parse_yaml(display, text)?;
                self.essentials.extend(f.groups);
                self.canaries.extend(f.canaries);
            }
            r if r.starts_with("services/") && r.ends_with(".yaml") => {
                let f: ServicesFile = parse_yaml(display, text)?;
                self.services
                    .extend(f.services.into_iter().map(|s| (display.to_owned(), s)));
            }
            _ => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the directories

/// Every policy source read from disk (or built in a test), before compilation.
#[derive(Debug, Clone, Default)]
pub struct SourceSet {
    /// `(display path, text)` of policy files, sorted by path.
    pub policy_files: Vec<(String, String)>,
    /// `(path relative to the allowlists dir, display path, text)`, sorted.
    pub allowlist_files: Vec<(String, String, String)>,
    /// Threat feeds, already compiled (see `store`), in evaluation order.
    pub feeds: Vec<super::Feed>,
    /// Infected subscribers compiled earlier from the same files and overrides: used as they
    /// are, and `infected*` files are not parsed (the store decides when this is safe).
    pub reuse_infected: Option<std::sync::Arc<super::InfectedSet>>,
    /// Enrolments compiled earlier from the same files, overrides and profiles.
    pub reuse_enrolled: Option<std::sync::Arc<super::EnrolmentSet>>,
}

/// A file or directory that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ReadError {
    /// What could not be read.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// True for policy file names cleanpipe reads; editor backups and hidden files are skipped.
pub fn is_policy_file(name: &str) -> bool {
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
    (name.starts_with("infected") && (yaml || name.ends_with(".csv")))
        || (name.starts_with("enrolments") && yaml)
        || (name.starts_with("organisations") && yaml)
        || name == "mode.yaml"
        || name == "schedules.yaml"
}

fn read_text(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.to_owned(),
        source,
    })
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ReadError {
        path: dir.to_owned(),
        source,
    })?;
    let mut out: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

impl SourceSet {
    /// Reads the policy directory (if any) and the allowlists directory.
    pub fn read(policy_dir: Option<&Path>, allowlists: &Path) -> Result<Self, ReadError> {
        Self::read_except(policy_dir, Some(allowlists), |_| false)
    }

    /// The policy files in `dir` (sorted), without reading them. A name recognised as a
    /// policy file that is not a readable regular file — a symlink whose target is gone, a
    /// symlink loop, a FIFO, a directory — is an error, never skipped: skipping it would
    /// silently release every subscriber it lists.
    pub fn policy_paths(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
        let mut out = Vec::new();
        for p in read_dir_sorted(dir)? {
            if !is_policy_file(p.file_name().and_then(|n| n.to_str()).unwrap_or("")) {
                continue;
            }
            let problem = match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => None,
                Ok(m) if m.is_dir() => Some("is a directory, not a policy file".to_owned()),
                Ok(_) => Some(
                    "is not a regular file (a FIFO, socket or device): it is not read".to_owned(),
                ),
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    Some("is a symlink loop".to_owned())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                    "is a symlink to {} which does not exist",
                    std::fs::read_link(&p).map_or_else(|_| "?".into(), |t| t.display().to_string())
                )),
                Err(e) => Some(e.to_string()),
            };
            if let Some(message) = problem {
                return Err(ReadError {
                    source: std::io::Error::other(message),
                    path: p,
                });
            }
            out.push(p);
        }
        Ok(out)
    }

    /// As [`SourceSet::read`], leaving out the policy files whose name `skip` accepts (their
    /// compiled form is reused). `allowlists: None`: no trusted zone, nothing read.
    pub fn read_except(
        policy_dir: Option<&Path>,
        allowlists: Option<&Path>,
        skip: impl Fn(&str) -> bool,
    ) -> Result<Self, ReadError> {
        let mut set = SourceSet::default();
        if let Some(dir) = policy_dir {
            for path in Self::policy_paths(dir)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if !skip(name) {
                    set.policy_files
                        .push((path.display().to_string(), read_text(&path)?));
                }
            }
        }
        if let Some(allowlists) = allowlists.filter(|a| a.is_dir()) {
            for path in read_dir_sorted(allowlists)? {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_owned();
                if path.is_dir() && name == "services" {
                    for p in read_dir_sorted(&path)? {
                        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        if p.is_file() && n.ends_with(".yaml") && !n.starts_with('.') {
                            set.allowlist_files.push((
                                format!("services/{n}"),
                                p.display().to_string(),
                                read_text(&p)?,
                            ));
                        }
                    }
                } else if path.is_file() && name.ends_with(".yaml") && !name.starts_with('.') {
                    set.allowlist_files
                        .push((name, path.display().to_string(), read_text(&path)?));
                }
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_accepts_hosts_and_networks_and_rejects_host_bits() {
        assert_eq!(
            "192.0.2.7".parse::<Prefix>().map(|p| p.0.prefix_len()),
            Ok(32)
        );
        assert_eq!(
            "2001:db8:12:3400::/56"
                .parse::<Prefix>()
                .map(|p| p.0.prefix_len()),
            Ok(56)
        );
        let e = "192.0.2.7/24"
            .parse::<Prefix>()
            .expect_err("host bits must be rejected");
        assert!(e.contains("192.0.2.0/24"), "{e}");
        assert!("192.0.2.300".parse::<Prefix>().is_err());
    }

    #[test]
    fn infected_yaml_errors_name_line() {
        let text = "infected:\n  - prefix: 192.0.2.1\n    family: Mirai\n    source: feed\n    first_seen: 2026-11-20T08:00:00Z\n  - prefix: 192.0.2.999\n    family: X\n    source: y\n    first_seen: 2026-11-20T08:00:00Z\n";
        let e = parse_infected_yaml("infected.yaml", text).expect_err("bad address");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("192.0.2.999"), "{e}");
    }

    #[test]
    fn infected_yaml_entries_know_their_lines() {
        let text = "infected:\n  - prefix: 192.0.2.1\n    family: Mirai\n    source: feed\n    first_seen: 2026-11-20T08:00:00Z\n  - prefix: 192.0.2.2\n    family: Emotet\n    source: feed\n    first_seen: 2026-11-20T08:00:00Z\n    ticket: T-1\n";
        let l = parse_infected_yaml("infected.yaml", text).expect("valid");
        assert_eq!(
            l.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![2, 6]
        );
        assert_eq!(l.entries[1].1.ticket.as_deref(), Some("T-1"));
    }

    #[test]
    fn csv_reports_every_bad_line() {
        let text = "prefix,family,source,first_seen,ticket\n192.0.2.1,Mirai,feed,2026-11-20T08:00:00Z\n\n# comment\n192.0.2.x,Mirai,feed,2026-11-20T08:00:00Z\n192.0.2.3,Mirai,feed,yesterday\n2001:db8:1:100::/56,Qakbot,cert,2026-11-20T08:00:00Z,T-9\n";
        let errs = parse_infected_csv("infected.csv", text).expect_err("two bad lines");
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![5, 6]);
        let ok = parse_infected_csv(
            "infected.csv",
            "192.0.2.1,Mirai,feed,2026-11-20T08:00:00Z,T-1\n",
        )
        .expect("valid");
        assert_eq!(ok.entries[0].1.ticket.as_deref(), Some("T-1"));
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let text = "enrolments:\n  - prefix: 192.0.2.1\n    profile: kids\n    enabled_by: x\n    enabled_at: 2026-11-20T08:00:00Z\n    colour: blue\n";
        let e = parse_enrolments("enrolments.yaml", text).expect_err("unknown key");
        assert!(e.message.contains("colour"), "{e}");
        assert!(e.line >= 2, "{e}");
    }

    #[test]
    fn the_same_error_on_many_lines_is_said_once() {
        let mut errs: Vec<PolicyError> = (4..104)
            .map(|l| PolicyError::at("feed.rpz", l, "CNAME target: bad"))
            .collect();
        errs.push(PolicyError::at("feed.rpz", 200, "another problem"));
        errs.push(PolicyError::at("infected.yaml", 3, "CNAME target: bad"));
        assert_eq!(
            summarise(&errs),
            vec![
                "feed.rpz:4, 5, 6 and 97 more lines (100 in all): CNAME target: bad".to_owned(),
                "feed.rpz:200: another problem".to_owned(),
                "infected.yaml:3: CNAME target: bad".to_owned(),
            ]
        );
    }

    #[test]
    fn policy_file_names() {
        assert!(is_policy_file("infected.yaml"));
        assert!(is_policy_file("infected-shadowserver.csv"));
        assert!(is_policy_file("mode.yaml"));
        assert!(!is_policy_file(".infected.yaml.swp"));
        assert!(!is_policy_file("infected.yaml~"));
        assert!(!is_policy_file("README.md"));
    }
}
