//! Sources → one validated [`Snapshot`]: the one place configuration becomes policy.
//!
//! Every error in every file is collected (with file and line) before giving up, so an operator
//! sees all problems at once. A snapshot is only produced when there are none: a broken file
//! never replaces a good policy.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use rustc_hash::FxHashMap;

use super::household::{self, Catalog, HouseholdDef};
use super::names::{NameMap, normalise};
use super::sources::{
    self, Allowlists, EnrolmentEntry, InfectedEntry, Located, ModeFile, OrganisationEntry,
    PolicyError, ProbeQuarantine, SourceSet, Standing,
};
use super::{
    BypassFlags, Enrolment, EnrolmentSet, InfectedSet, Infection, ModeState, NameFlags,
    Organisation, Origin, Profile, Sinkhole, Snapshot, flag,
};
use std::sync::Arc;

/// Runtime changes made through the admin API (kept in the state database), merged over the files.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Subscribers flagged infected by an operator. They replace a file entry for the same prefix.
    pub infected: Vec<InfectedEntry>,
    /// Subscribers flagged infected by botnet detection (a lookup of a botnet-feed name), like
    /// `infected` but shown with the origin "botnet detection".
    pub detected: Vec<InfectedEntry>,
    /// Evidence of botnet lookups (every signature per subscriber), attached to infections.
    pub evidence: Vec<super::Evidence>,
    /// Subscribers unflagged by an operator, with the time: file entries for that exact prefix
    /// first seen before then are dropped (a newer report quarantines again).
    pub cleared: Vec<(IpNet, i64)>,
    /// Enrolments made by an operator. They replace a file entry for the same prefix.
    pub enrolments: Vec<EnrolmentEntry>,
    /// Enrolments removed by an operator (exact prefix).
    pub unenrolled: Vec<IpNet>,
    /// Global mode set by an operator; overrides `mode.yaml` until cleared.
    pub mode: Option<ModeOverride>,
    /// Organisations whose whitelisting was revoked at runtime (missed deadline), by id.
    pub revoked: Vec<String>,
    /// Self-releases from the cleanup page: `(infection prefix, released at, until)`.
    pub released: Vec<(IpNet, i64, i64)>,
}

/// The global mode as an operator set it (admin API or CLI).
#[derive(Debug, Clone, PartialEq)]
pub struct ModeOverride {
    /// Mode, who, why, when; `exempt` holds the networks the operator named.
    pub mode: ModeFile,
    /// `true`: the operator's networks replace the exemptions of `mode.yaml`. `false` (the
    /// default): they are added to them, so infrastructure listed in the file is never cut off
    /// by an emergency switch that forgot it.
    pub replace_exempt: bool,
}

/// Settings from the service configuration that shape the snapshot.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Served client networks.
    pub clients: Vec<IpNet>,
    /// Sinkhole answers.
    pub sinkhole: Sinkhole,
    /// Profile for global trusted-only mode.
    pub global_profile: String,
    /// Extra remediation names (ISP support site).
    pub remediation_extra: Vec<String>,
    /// The allowlists directory (for messages); `None` when the operator runs without a trusted
    /// zone (`policy.trusted_zone: false`).
    pub allowlists: Option<String>,
    /// Shortest IPv4 and IPv6 prefixes flagged or enrolled without `force`.
    pub min_prefix: (u8, u8),
    /// Generation number of the snapshot.
    pub generation: u64,
    /// Most names one household may add to its enrolment.
    pub household_max_names: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            sinkhole: Sinkhole::default(),
            global_profile: "clean-pipe".into(),
            remediation_extra: Vec::new(),
            allowlists: Some("allowlists".into()),
            min_prefix: (16, 32),
            generation: 1,
            household_max_names: super::household::DEFAULT_MAX_NAMES,
        }
    }
}

const API: &str = "admin-api";
/// The origin of infections flagged by botnet detection.
pub const DETECTION: &str = "botnet detection";

struct Builder {
    snap: Snapshot,
    errors: Vec<PolicyError>,
    /// The names each service brings, for households' removals.
    catalog: Catalog,
}

/// Index of `name` in a table of file names, added if new.
fn file_index(files: &mut Vec<String>, name: &str) -> u16 {
    if let Some(i) = files.iter().position(|f| f == name) {
        return i as u16;
    }
    files.push(name.to_owned());
    (files.len() - 1) as u16
}

impl Builder {
    fn file(&mut self, name: &str) -> u16 {
        file_index(&mut self.snap.files, name)
    }

    fn err(&mut self, file: &str, line: u32, message: impl Into<String>) {
        self.errors
            .push(PolicyError::at(file, line as usize, message));
    }
}

/// Compiles sources and overrides into a snapshot, or every error found.
pub fn compile(
    sources: &SourceSet,
    overrides: &Overrides,
    options: &CompileOptions,
) -> Result<Snapshot, Vec<PolicyError>> {
    let mut b = Builder {
        snap: Snapshot {
            generation: options.generation,
            sinkhole: options.sinkhole.clone(),
            ..Snapshot::default()
        },
        errors: Vec::new(),
        catalog: Catalog::default(),
    };
    for net in &options.clients {
        b.snap.acl.insert(*net, ());
    }

    // Parse every policy file first, collecting syntax errors.
    let mut infected: Vec<Located<InfectedEntry>> = Vec::new();
    let mut enrolments: Vec<Located<EnrolmentEntry>> = Vec::new();
    let mut organisations: Vec<Located<OrganisationEntry>> = Vec::new();
    let mut mode_file: Option<(String, ModeFile)> = None;
    let mut schedules_file: Option<(String, sources::SchedulesFile)> = None;
    for (path, text) in &sources.policy_files {
        let name = path.rsplit('/').next().unwrap_or(path);
        let reused = (name.starts_with("infected") && sources.reuse_infected.is_some())
            || (name.starts_with("enrolments") && sources.reuse_enrolled.is_some());
        let result = if reused {
            Ok(())
        } else if name.starts_with("infected") && name.ends_with(".csv") {
            match sources::parse_infected_csv(path, text) {
                Ok(l) => {
                    infected.push(l);
                    Ok(())
                }
                Err(errs) => {
                    b.errors.extend(errs);
                    Ok(())
                }
            }
        } else if name.starts_with("infected") {
            sources::parse_infected_yaml(path, text).map(|l| infected.push(l))
        } else if name.starts_with("enrolments") {
            sources::parse_enrolments(path, text).map(|l| enrolments.push(l))
        } else if name.starts_with("organisations") {
            sources::parse_organisations(path, text).map(|l| organisations.push(l))
        } else if name == "mode.yaml" {
            sources::parse_mode(path, text).map(|m| mode_file = Some((path.clone(), m)))
        } else if name == "schedules.yaml" {
            sources::parse_schedules(path, text).map(|f| schedules_file = Some((path.clone(), f)))
        } else {
            Ok(())
        };
        if let Err(e) = result {
            b.errors.push(e);
        }
    }

    if let Some(dir) = &options.allowlists
        && !sources
            .allowlist_files
            .iter()
            .any(|(rel, _, _)| rel == "profiles.yaml")
    {
        // Without profiles every enrolment fails as "unknown profile" and trusted-only mode
        // would answer NXDOMAIN for everything: say what is missing instead.
        b.err(dir, 0, "no allowlists here (the directory is missing, empty or has no profiles.yaml): set policy.allowlists to the curated allowlists, or `policy.trusted_zone: false` to run without a trusted zone");
    }
    let mut lists = Allowlists::default();
    for (rel, display, text) in &sources.allowlist_files {
        if let Err(e) = lists.add_file(rel, display, text) {
            b.errors.push(e);
        }
    }
    compile_allowlists(&mut b, &lists, options);
    if let Some((path, f)) = &schedules_file {
        for e in household::compile_schedules(&mut b.snap, f) {
            b.err(path, 0, e);
        }
    }
    compile_organisations(&mut b, &organisations, overrides);
    b.snap.enrolled = match &sources.reuse_enrolled {
        Some(set) => set.clone(),
        None => Arc::new(compile_enrolments(&mut b, &enrolments, overrides, options)),
    };
    b.snap.infected = match &sources.reuse_infected {
        Some(set) => set.clone(),
        None => Arc::new(compile_infected(
            &mut b.errors,
            &infected,
            overrides,
            options.min_prefix,
        )),
    };
    compile_mode(&mut b, mode_file, overrides, options);
    b.snap.feeds = sources.feeds.clone();
    for (net, at, until) in &overrides.released {
        // Keep the latest release of a prefix.
        let newer = b.snap.released.get_exact(*net).is_none_or(|(a, _)| at > a);
        if newer {
            b.snap.released.insert(*net, (*at, *until));
        }
    }

    if b.errors.is_empty() {
        Ok(b.snap)
    } else {
        Err(b.errors)
    }
}

fn unix(t: &DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn compile_allowlists(b: &mut Builder, lists: &Allowlists, options: &CompileOptions) {
    b.snap.allowlist_version = lists.meta.version.clone();
    let categories: HashSet<&str> = lists.categories.iter().map(|c| c.id.as_str()).collect();
    let service_index = compile_services(b, lists, &categories);
    compile_profiles(b, lists, &categories, &service_index);
    b.catalog = Catalog::new(lists);
    mark_groups(b, lists, options);
    mark_bypass(b, lists);
    compile_rewrites(b, lists);
}

/// Services: ids unique, categories known, names valid, an owned name in one service only.
fn compile_services<'a>(
    b: &mut Builder,
    lists: &'a Allowlists,
    categories: &HashSet<&str>,
) -> HashMap<&'a str, u32> {
    let mut service_index: HashMap<&str, u32> = HashMap::new();
    let mut owner: HashMap<String, &str> = HashMap::new();
    let mut shared_names: HashSet<String> = HashSet::new();
    for (file, s) in &lists.services {
        if service_index.contains_key(s.id.as_str()) {
            b.err(file, 0, format!("service `{}` is defined twice", s.id));
            continue;
        }
        if !categories.contains(s.category.as_str()) {
            b.err(
                file,
                0,
                format!("service `{}`: unknown category `{}`", s.id, s.category),
            );
        }
        if s.domains.is_empty() {
            b.err(file, 0, format!("service `{}` lists no domains", s.id));
        }
        for d in &s.domains {
            match normalise(d) {
                Ok(n) => {
                    if let Some(prev) = owner.insert(n.clone(), &s.id) {
                        b.err(file, 0, format!(
                            "`{n}` is listed by services `{prev}` and `{}`: a name several services need belongs in `shared:`",
                            s.id
                        ));
                    }
                }
                Err(e) => b.err(file, 0, format!("service `{}`: {e}", s.id)),
            }
        }
        for d in &s.shared {
            match normalise(d) {
                Ok(n) => {
                    shared_names.insert(n);
                }
                Err(e) => b.err(file, 0, format!("service `{}`: {e}", s.id)),
            }
        }
        service_index.insert(&s.id, b.snap.services.len() as u32);
        b.snap
            .services
            .push((s.id.clone(), s.name.clone(), s.category.clone()));
    }
    for n in &shared_names {
        if let Some(o) = owner.get(n) {
            b.err("allowlists/services", 0, format!(
                "`{n}` is owned by service `{o}` and shared by others: list it only under `shared:`"
            ));
        }
    }
    service_index
}

/// Profiles: the services of their categories and their own, minus their exclusions.
fn compile_profiles(
    b: &mut Builder,
    lists: &Allowlists,
    categories: &HashSet<&str>,
    service_index: &HashMap<&str, u32>,
) {
    if lists.profiles.len() > 64 {
        b.err(
            "allowlists/profiles.yaml",
            0,
            "at most 64 profiles are supported",
        );
    }
    for (pi, (name, def)) in lists.profiles.iter().enumerate().take(64) {
        let mut members: Vec<u32> = Vec::new();
        for c in &def.categories {
            if !categories.contains(c.as_str()) {
                b.err(
                    "allowlists/profiles.yaml",
                    0,
                    format!("profile `{name}`: unknown category `{c}`"),
                );
            }
        }
        for (i, (_, s)) in lists.services.iter().enumerate() {
            if def.categories.contains(&s.category) && !def.exclude_services.contains(&s.id) {
                members.push(i as u32);
            }
        }
        for id in def.services.iter().chain(&def.exclude_services) {
            if !service_index.contains_key(id.as_str()) {
                b.err(
                    "allowlists/profiles.yaml",
                    0,
                    format!("profile `{name}`: unknown service `{id}`"),
                );
            }
        }
        for id in &def.services {
            if let Some(i) = service_index.get(id.as_str())
                && !members.contains(i)
            {
                members.push(*i);
            }
        }
        let bit = 1u64 << pi;
        for &si in &members {
            let Some((_, s)) = lists.services.get(si as usize) else {
                continue;
            };
            let src = b.snap.name_sources.len() as u32;
            b.snap
                .name_sources
                .push(format!("service {} ({})", s.id, s.name));
            for d in s.domains.iter().chain(&s.shared) {
                if let Ok(n) = normalise(d) {
                    let e = b.snap.names.entry_or(&n, || NameFlags {
                        source: src,
                        ..Default::default()
                    });
                    e.profiles |= bit;
                }
            }
        }
        b.snap.profiles.push(Profile {
            name: name.clone(),
            description: def.description.clone(),
            blocked: def.blocked,
            safe_search: def.safe_search,
            services: members,
            schedule: None,
        });
    }
}

/// Remediation, essential, probe and canary names, with their flags.
fn mark_groups(b: &mut Builder, lists: &Allowlists, options: &CompileOptions) {
    let mark = |b: &mut Builder, names: &mut dyn Iterator<Item = &String>, what: String, f: u8| {
        let src = b.snap.name_sources.len() as u32;
        b.snap.name_sources.push(what.clone());
        for d in names {
            match normalise(d) {
                Ok(n) => {
                    b.snap
                        .names
                        .entry_or(&n, || NameFlags {
                            source: src,
                            ..Default::default()
                        })
                        .flags |= f;
                }
                Err(e) => b.err("allowlists", 0, format!("{what}: {e}")),
            }
        }
    };
    for g in &lists.remediation {
        mark(
            b,
            &mut g.domains.iter(),
            format!("remediation {}", g.id),
            flag::REMEDIATION,
        );
    }
    mark(
        b,
        &mut options.remediation_extra.iter(),
        "remediation (policy.remediation_extra)".into(),
        flag::REMEDIATION,
    );
    for g in &lists.essentials {
        mark(
            b,
            &mut g.domains.iter(),
            format!("essential {}", g.id),
            flag::ESSENTIAL,
        );
    }
    for p in &lists.probes {
        let f = flag::ESSENTIAL
            | match p.quarantine {
                ProbeQuarantine::Sinkhole => flag::PROBE_SINKHOLE,
                ProbeQuarantine::Resolve => flag::PROBE_RESOLVE,
            };
        mark(
            b,
            &mut std::iter::once(&p.name),
            format!("probe {} ({})", p.name, p.vendor),
            f,
        );
    }
    for c in &lists.canaries {
        mark(
            b,
            &mut std::iter::once(&c.name),
            format!("canary {}", c.name),
            flag::CANARY,
        );
    }
}

/// Bypass services (`bypass.yaml`): NXDOMAIN in the profiles each group names.
fn mark_bypass(b: &mut Builder, lists: &Allowlists) {
    for g in &lists.bypass {
        let mut bits = 0u64;
        for p in &g.profiles {
            match b.snap.profile_index(p) {
                Some(i) => bits |= 1 << i,
                None => b.err(
                    "allowlists/bypass.yaml",
                    0,
                    format!("group `{}`: unknown profile `{p}`", g.id),
                ),
            }
        }
        let source = b.snap.name_sources.len() as u32;
        b.snap.name_sources.push(format!("bypass {}", g.id));
        for d in &g.domains {
            match normalise(d) {
                Ok(n) => {
                    b.snap
                        .bypass
                        .entry_or(&n, || BypassFlags {
                            profiles: 0,
                            source,
                        })
                        .profiles |= bits;
                }
                Err(e) => b.err(
                    "allowlists/bypass.yaml",
                    0,
                    format!("group `{}`: {e}", g.id),
                ),
            }
        }
    }
}

/// Safe-search rewrites (exact names).
fn compile_rewrites(b: &mut Builder, lists: &Allowlists) {
    let mut rewrites = NameMap::new();
    for r in &lists.rewrites {
        let target = match normalise(&r.target) {
            Ok(t) => t,
            Err(e) => {
                b.err(
                    "allowlists/safe-search.yaml",
                    0,
                    format!("{}: {e}", r.engine),
                );
                continue;
            }
        };
        let idx = b.snap.rewrite_targets.len() as u16;
        b.snap.rewrite_targets.push((r.engine.clone(), target));
        for n in &r.names {
            match normalise(n) {
                Ok(n) => {
                    rewrites.insert(&n, idx);
                }
                Err(e) => b.err(
                    "allowlists/safe-search.yaml",
                    0,
                    format!("{}: {e}", r.engine),
                ),
            }
        }
    }
    b.snap.rewrites = rewrites;
}

fn compile_organisations(b: &mut Builder, files: &[Located<OrganisationEntry>], o: &Overrides) {
    let mut ids: HashSet<String> = HashSet::new();
    for l in files {
        let fi = b.file(&l.file);
        for (line, e) in &l.entries {
            if !(e.grace_hours > 0.0 && e.grace_hours.is_finite()) {
                b.err(
                    &l.file,
                    *line,
                    format!("organisation `{}`: grace_hours must be above 0", e.id),
                );
            }
            if !ids.insert(e.id.clone()) {
                b.err(
                    &l.file,
                    *line,
                    format!("organisation `{}` is defined twice", e.id),
                );
                continue;
            }
            let idx = b.snap.organisations.len() as u32;
            for n in &e.networks {
                if let Some(prev) = b.snap.org_nets.insert(n.0, idx) {
                    let other = b
                        .snap
                        .organisations
                        .get(prev as usize)
                        .map_or("?", |o| o.id.as_str())
                        .to_owned();
                    b.err(
                        &l.file,
                        *line,
                        format!(
                            "organisation `{}`: network {} is also claimed by `{other}`",
                            e.id, n
                        ),
                    );
                }
            }
            if let Some(lang) = &e.language
                && !sources::MAIL_LANGUAGES.contains(&lang.as_str())
            {
                b.err(
                    &l.file,
                    *line,
                    format!(
                        "organisation `{}`: language `{lang}` (alert e-mails are written in {})",
                        e.id,
                        sources::MAIL_LANGUAGES.join(", ")
                    ),
                );
            }
            for c in &e.contacts {
                if let Some(m) = &c.email
                    && !plausible_email(m)
                {
                    b.err(
                        &l.file,
                        *line,
                        format!(
                            "organisation `{}`: contact e-mail `{m}` is not an address",
                            e.id
                        ),
                    );
                }
            }
            let standing = if o.revoked.contains(&e.id) {
                Standing::Revoked
            } else {
                e.standing
            };
            b.snap.organisations.push(Organisation {
                id: e.id.clone(),
                name: e.name.clone(),
                networks: e.networks.iter().map(|p| p.0).collect(),
                contacts: e.contacts.clone(),
                grace_hours: e.grace_hours,
                standing,
                language: e.language.clone(),
                origin: Origin {
                    file: fi,
                    line: *line,
                },
            });
        }
    }
}

/// Enrolments from files and the operator's changes. Profiles must be compiled first.
/// `local@domain.tld`, no spaces or angle brackets: what an alert e-mail can be sent to.
fn plausible_email(m: &str) -> bool {
    let Some((local, domain)) = m.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && normalise(domain).is_ok()
        && !m
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',')
}

fn compile_enrolments(
    b: &mut Builder,
    files: &[Located<EnrolmentEntry>],
    o: &Overrides,
    options: &CompileOptions,
) -> EnrolmentSet {
    let min_prefix = options.min_prefix;
    let mut set = EnrolmentSet::default();
    let api = file_index(&mut set.files, API);
    let api_prefixes: HashSet<IpNet> = o.enrolments.iter().map(|e| e.prefix.0).collect();
    let removed: HashSet<IpNet> = o.unenrolled.iter().copied().collect();
    let from_files = files.iter().flat_map(|l| {
        l.entries
            .iter()
            .map(move |(line, e)| (l.file.as_str(), *line, e))
    });
    let from_api = o.enrolments.iter().map(|e| (API, 0u32, e));
    let all: Vec<_> = from_files.chain(from_api).collect();
    for (file, line, e) in all {
        let from_api = file == API;
        if !from_api && (api_prefixes.contains(&e.prefix.0) || removed.contains(&e.prefix.0)) {
            continue; // the operator's later change wins over the file
        }
        if let Some(m) = too_short(e.prefix.0, e.force, min_prefix, "enrolment") {
            b.err(file, line, m);
            continue;
        }
        let Some(profile) = b.snap.profile_index(&e.profile) else {
            if b.snap.profiles.is_empty() {
                b.err(
                    file,
                    line,
                    format!(
                        "enrolment {}: there is no trusted zone to enrol in (no profiles loaded)",
                        e.prefix
                    ),
                );
                continue;
            }
            let known: Vec<_> = b.snap.profiles.iter().map(|p| p.name.as_str()).collect();
            b.err(
                file,
                line,
                format!(
                    "enrolment {}: unknown profile `{}` (known: {})",
                    e.prefix,
                    e.profile,
                    known.join(", ")
                ),
            );
            continue;
        };
        let def = HouseholdDef {
            allow: &e.allow,
            remove: &e.remove,
            schedule: e.schedule.as_deref(),
        };
        let (household, schedule) =
            match household::build(&b.snap, &b.catalog, def, options.household_max_names) {
                Ok(h) => h,
                Err(errs) => {
                    for m in errs {
                        b.err(file, line, format!("enrolment {}: {m}", e.prefix));
                    }
                    continue;
                }
            };
        let fi = if from_api {
            api
        } else {
            file_index(&mut set.files, file)
        };
        let idx = set.entries.len() as u32;
        if set.map.insert(e.prefix.0, idx).is_some() {
            b.err(
                file,
                line,
                format!("enrolment {} is listed twice", e.prefix),
            );
            continue;
        }
        set.entries.push(Enrolment {
            prefix: e.prefix.0,
            profile,
            enabled_by: e.enabled_by.as_str().into(),
            enabled_at: unix(&e.enabled_at),
            origin: Origin { file: fi, line },
            household,
            schedule,
        });
    }
    set
}

/// The error for a prefix shorter than the configured minimum (a `/0` flag would quarantine
/// everyone), unless the entry says `force`.
pub fn too_short(net: IpNet, force: bool, (v4, v6): (u8, u8), what: &str) -> Option<String> {
    let (min, key) = match net {
        IpNet::V4(_) => (v4, "policy.min_prefix_v4"),
        IpNet::V6(_) => (v6, "policy.min_prefix_v6"),
    };
    (!force && net.prefix_len() < min).then(|| {
        format!(
            "{what} {net} covers more than a /{min} ({key}): refused; if you mean a whole network, add `force: true` (API and CLI: --force)"
        )
    })
}

/// Infected subscribers from files and the operator's flags and clears.
fn compile_infected(
    errors: &mut Vec<PolicyError>,
    files: &[Located<InfectedEntry>],
    o: &Overrides,
    min_prefix: (u8, u8),
) -> InfectedSet {
    let mut set = InfectedSet::default();
    let mut interned: FxHashMap<Box<str>, u32> = FxHashMap::default();
    let api = file_index(&mut set.files, API);
    let detection = file_index(&mut set.files, DETECTION);
    let api_prefixes: HashSet<IpNet> = o
        .infected
        .iter()
        .chain(&o.detected)
        .map(|e| e.prefix.0)
        .collect();
    let cleared: HashMap<IpNet, i64> = o.cleared.iter().copied().collect();
    let total: usize =
        files.iter().map(|l| l.entries.len()).sum::<usize>() + o.infected.len() + o.detected.len();
    set.entries.reserve_exact(total);
    set.map.reserve_v4(32, total);
    let mut push = |set: &mut InfectedSet, fi: u16, file: &str, line: u32, e: &InfectedEntry| {
        if let Some(m) = too_short(e.prefix.0, e.force, min_prefix, "infected subscriber") {
            errors.push(PolicyError::at(file, line as usize, m));
            return;
        }
        let idx = set.entries.len() as u32;
        if set.map.insert(e.prefix.0, idx).is_some() {
            errors.push(PolicyError::at(
                file,
                line as usize,
                format!("infected subscriber {} is listed twice", e.prefix),
            ));
            return;
        }
        if let Some(t) = &e.ticket {
            set.tickets.insert(idx, t.as_str().into());
        }
        let mut intern = |s: &str| {
            if let Some(i) = interned.get(s) {
                return *i;
            }
            let i = set.strings.len() as u32;
            set.strings.push(s.into());
            interned.insert(s.into(), i);
            i
        };
        let family = intern(&e.family);
        let source = intern(&e.source);
        set.entries.push(Infection {
            prefix: e.prefix.0,
            family,
            source,
            first_seen: unix(&e.first_seen),
            origin: Origin { file: fi, line },
        });
    };
    for l in files {
        let fi = file_index(&mut set.files, &l.file);
        for (line, e) in &l.entries {
            if api_prefixes.contains(&e.prefix.0) {
                continue;
            }
            if cleared
                .get(&e.prefix.0)
                .is_some_and(|t| unix(&e.first_seen) <= *t)
            {
                continue;
            }
            push(&mut set, fi, &l.file, *line, e);
        }
    }
    for e in &o.infected {
        push(&mut set, api, API, 0, e);
    }
    let operator: HashSet<IpNet> = o.infected.iter().map(|e| e.prefix.0).collect();
    for e in o
        .detected
        .iter()
        .filter(|e| !operator.contains(&e.prefix.0))
    {
        push(&mut set, detection, DETECTION, 0, e);
    }
    attach_evidence(&mut set, &o.evidence, &cleared);
    set.map.shrink_to_fit();
    set
}

/// Attaches each signature's evidence to the infection covering its prefix, leaving out
/// lookups from before an operator cleared that infection (an earlier episode).
fn attach_evidence(
    set: &mut InfectedSet,
    evidence: &[super::Evidence],
    cleared: &HashMap<IpNet, i64>,
) {
    for ev in evidence {
        let Some(idx) = set.map.longest_match(ev.prefix.addr()).map(|(_, i)| *i) else {
            continue;
        };
        let Some(net) = set.entries.get(idx as usize).map(|i| i.prefix) else {
            continue;
        };
        let cleared_at = [cleared.get(&net), cleared.get(&ev.prefix)]
            .into_iter()
            .flatten()
            .max()
            .copied();
        if cleared_at.is_some_and(|c| ev.last_at <= c) {
            continue;
        }
        let list = set.evidence.entry(idx).or_default();
        list.push(ev.clone());
        list.sort_by_key(|e| e.first_at);
    }
}

fn compile_mode(
    b: &mut Builder,
    file: Option<(String, ModeFile)>,
    o: &Overrides,
    options: &CompileOptions,
) {
    let file_exempt: Vec<IpNet> = file
        .as_ref()
        .map(|(_, m)| m.exempt.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    let (source, m, exempt) = match (&o.mode, file) {
        (Some(ov), _) => {
            let mut exempt: Vec<IpNet> = if ov.replace_exempt {
                Vec::new()
            } else {
                file_exempt
            };
            exempt.extend(ov.mode.exempt.iter().map(|p| p.0));
            (API.to_owned(), Some(ov.mode.clone()), exempt)
        }
        (None, Some((path, m))) => (path, Some(m), file_exempt),
        (None, None) => ("default".to_owned(), None, Vec::new()),
    };
    for net in &exempt {
        b.snap.exempt.insert(*net, ());
    }
    if let Some(m) = m {
        b.snap.mode = ModeState {
            mode: m.mode,
            set_by: m.set_by.clone(),
            reason: m.reason.clone(),
            set_at: m.set_at.as_ref().map(unix),
            expires: m.expires.as_ref().map(unix),
            source,
            exempt: exempt
                .iter()
                .map(|n| sources::Prefix(*n).to_string())
                .collect(),
        };
    }
    match b.snap.profile_index(&options.global_profile) {
        Some(i) => b.snap.global_profile = i,
        None => {
            b.snap.global_profile = u16::MAX;
            if b.snap.mode.mode == sources::Mode::TrustedOnly {
                let src = b.snap.mode.source.clone();
                b.err(&src, 0, format!(
                    "trusted-only mode needs profile `{}` (policy.global_profile) in allowlists/profiles.yaml",
                    options.global_profile
                ));
            }
        }
    }
}
