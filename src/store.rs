//! The current policy snapshot and how it is replaced.
//!
//! A reload reads every source, merges the admin overrides from the state database, compiles a
//! whole new snapshot and swaps one `Arc`. If anything fails, the old snapshot keeps serving and
//! the errors go to the log, the admin status and a metric. Queries never wait for a reload: they
//! load the current `Arc` (lock-free) and keep using it until they are answered.
//!
//! Anything cached per snapshot lives in [`Current`], next to the snapshot it was computed from,
//! and is replaced with it, so nothing cached can outlive its policy. There is deliberately no
//! per-client cache in front of [`Snapshot::classify`]: measured with 1,000,000 infected
//! prefixes (`cargo bench --bench policy`), classify costs ~17 ns while a moka cache hit costs
//! ~110 ns, so such a cache would make every query slower.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;

use std::collections::HashMap;

use crate::config::{Config, FeedAction, FeedConfig};
use crate::policy::compile::CompileOptions;
use crate::policy::rpz::{self, RpzZone};
use crate::policy::sources::ReadError;
use crate::policy::sources::{EnrolmentEntry, InfectedEntry};
use crate::policy::{ClientView, Counts, PolicyError, Snapshot, SourceSet, compile};
use crate::policy::{EnrolmentSet, Feed, FeedPolicy, InfectedSet};
use crate::state::StateStore;

/// Why a reload did not produce a new snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A source could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The state database could not be read.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A compile thread panicked (a bug; the previous policy stays).
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    /// The sources are invalid; every problem is listed.
    #[error("{} error(s) in the policy; the first: {}", .0.len(), .0.first().map(|e| clip(&e.to_string())).unwrap_or_default())]
    Invalid(Vec<PolicyError>),
}

/// Errors logged one per line on a failed load; the rest are counted (`check` lists them all).
const LOGGED_ERRORS: usize = 10;

/// Longest error text kept in the log and the status: a 20 MB line in a policy file must not
/// be copied whole into either.
const MAX_ERROR_TEXT: usize = 300;

/// `text`, cut at [`MAX_ERROR_TEXT`] bytes (on a character boundary) with a note of the rest.
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

impl ReloadError {
    /// Every problem as one line of text each (clipped).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errs) => crate::policy::sources::summarise(errs)
                .iter()
                .map(|e| clip(e))
                .collect(),
            other => vec![clip(&other.to_string())],
        }
    }
}

/// The serving snapshot. Anything ever cached per snapshot belongs here, next to it.
pub struct Current {
    /// The policy.
    pub snapshot: Arc<Snapshot>,
}

impl Current {
    fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: Arc::new(snapshot),
        }
    }

    /// What the policy knows about `ip` (computed: cheaper than any cache, see the module doc).
    pub fn client(&self, ip: IpAddr) -> ClientView {
        self.snapshot.classify(ip)
    }
}

/// The last good copy of a transferred feed, and how fresh it is.
#[derive(Debug, Clone)]
pub struct TransferredFeed {
    /// The compiled zone.
    pub zone: Arc<RpzZone>,
    /// Unix seconds at which the primary last transferred or confirmed (SOA unchanged) it.
    pub confirmed_at: i64,
    /// Where the copy in use came from: `transfer`, or `saved copy` (loaded from disk at
    /// start-up, not yet confirmed by the primary).
    pub origin: &'static str,
}

/// The last reload's outcome, for the admin status.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    /// Generation currently serving.
    pub generation: u64,
    /// Unix seconds of the last successful reload (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::timefmt::ser")]
    pub loaded_at: i64,
    /// Milliseconds the last successful compile took.
    pub compile_ms: u64,
    /// Loaded counts.
    pub counts: Option<Counts>,
    /// Errors of the last failed reload (cleared by the next success).
    pub last_errors: Vec<String>,
    /// Unix seconds of the last failed reload (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::timefmt::ser_opt")]
    pub last_error_at: Option<i64>,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Failed reloads since start.
    pub failures: u64,
}

/// Holds the serving snapshot and rebuilds it on demand.
pub struct PolicyStore {
    current: ArcSwap<Current>,
    policy_dir: Option<PathBuf>,
    /// `None` without a trusted zone (`policy.trusted_zone: false`).
    allowlists: Option<PathBuf>,
    options: CompileOptions,
    state: Arc<dyn StateStore>,
    status: Mutex<ReloadStatus>,
    reload_lock: Mutex<()>,
    feeds: Vec<FeedConfig>,
    strike_window_days: u32,
    /// Compiled file feeds by name, with the file's identity when parsed: a reload reparses
    /// only feeds whose file changed.
    feed_cache: Mutex<HashMap<String, (FileStamp, Arc<RpzZone>)>>,
    /// Latest good copy of each transferred feed.
    transferred: Mutex<HashMap<String, TransferredFeed>>,
    /// The big parts of the serving snapshot with what they were compiled from, reused by the
    /// next reload when those inputs have not changed.
    parts: Mutex<Parts>,
    /// Content digests of policy files by path, with the stamp they were read at: a settled,
    /// unchanged file is neither read nor hashed again.
    digests: Mutex<HashMap<PathBuf, (FileStamp, Digest)>>,
    /// Niceness of recompiles after the first load (0: normal priority).
    reload_nice: u8,
}

/// What the infected part was compiled from: the files' contents (SHA-256) and the operator's
/// flags and clears. Contents, not timestamps, decide; a settled file's stamp only saves
/// reading and hashing it again.
#[derive(PartialEq)]
struct InfectedKey {
    files: Vec<(String, Digest)>,
    flagged: Vec<InfectedEntry>,
    detected: Vec<InfectedEntry>,
    evidence: Vec<crate::policy::Evidence>,
    cleared: Vec<(ipnet::IpNet, i64)>,
}

/// What the enrolment part was compiled from (profiles come from the allowlists).
#[derive(PartialEq)]
struct EnrolKey {
    files: Vec<(String, Digest)>,
    enrolled: Vec<EnrolmentEntry>,
    unenrolled: Vec<ipnet::IpNet>,
    allowlists: Digest,
}

/// A SHA-256 digest.
type Digest = [u8; 32];

fn digest(parts: &[&[u8]]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Compiled parts kept for reuse.
#[derive(Default)]
struct Parts {
    infected: Option<(InfectedKey, Arc<InfectedSet>)>,
    enrolled: Option<(EnrolKey, Arc<EnrolmentSet>)>,
}

/// A policy file with the digest of its content and, if it was read, its text.
struct DigestedFile {
    path: PathBuf,
    display: String,
    digest: Digest,
    text: Option<String>,
}

/// `(display path, digest)` of the texts read for the policy files whose name starts with
/// `prefix`.
fn text_digests(sources: &SourceSet, prefix: &str) -> Vec<(String, Digest)> {
    sources
        .policy_files
        .iter()
        .filter(|(path, _)| {
            path.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .map(|(path, text)| (path.clone(), digest(&[text.as_bytes()])))
        .collect()
}

/// The cached part if it was compiled from exactly `key`.
fn reusable<K: PartialEq, V>(cached: &Option<(K, Arc<V>)>, key: &K) -> Option<Arc<V>> {
    match cached {
        Some((k, part)) if k == key => Some(part.clone()),
        _ => None,
    }
}

/// Lowers the calling thread's scheduling priority (Linux: niceness is per thread).
fn lower_thread_priority(nice: u8) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority have no memory-safety preconditions.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, i32::from(nice)) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the compile thread's priority");
        }
    }
}

/// Identity of a file's content as far as the file system tells: size, inode, mtime and ctime.
/// ctime matters: tools that preserve modification times (`rsync -t --inplace`, `touch -d`)
/// cannot set it, and every write or rename moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Files changed more recently than this are never trusted by their stamp alone: within the
/// file system's timestamp granularity a second write of the same size would keep the same
/// stamp (git calls such files "racy"). They are read again until they settle.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// The stamp of a settled file; `None` if it cannot be read or changed within [`RACY`].
fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(m.ctime()).ok()?,
            u32::try_from(m.ctime_nsec()).ok()?,
        );
    let age = std::time::SystemTime::now().duration_since(changed);
    if age.map_or(true, |a| a < RACY) {
        return None;
    }
    Some(FileStamp {
        len: m.len(),
        ino: m.ino(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Returns freed heap memory to the system (glibc keeps it otherwise: a million-entry compile
/// would leave hundreds of MiB resident).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn feed_policy(a: FeedAction) -> FeedPolicy {
    match a {
        FeedAction::Given => FeedPolicy::Given,
        FeedAction::Nxdomain => FeedPolicy::NxDomain,
        FeedAction::Nodata => FeedPolicy::NoData,
        FeedAction::Passthru => FeedPolicy::Passthru,
        FeedAction::Drop => FeedPolicy::Drop,
        FeedAction::TcpOnly => FeedPolicy::TcpOnly,
        FeedAction::CleanupPage => FeedPolicy::CleanupPage,
    }
}

impl PolicyStore {
    /// Loads the first snapshot. Fails (with every error) if the policy is invalid: cleanpipe
    /// never starts serving without its policy. `transferred`: the saved copies of transferred
    /// feeds, in force from the first answer on.
    pub fn open(
        config: &Config,
        state: Arc<dyn StateStore>,
        transferred: HashMap<String, TransferredFeed>,
    ) -> Result<Self, ReloadError> {
        let options = CompileOptions {
            clients: config.clients.allow.clone(),
            sinkhole: crate::policy::Sinkhole {
                v4: config.sinkhole.ipv4.clone(),
                v6: config.sinkhole.ipv6.clone(),
                info_v4: config
                    .sinkhole
                    .info_ipv4
                    .clone()
                    .unwrap_or_else(|| config.sinkhole.ipv4.clone()),
                info_v6: config
                    .sinkhole
                    .info_ipv6
                    .clone()
                    .unwrap_or_else(|| config.sinkhole.ipv6.clone()),
                ttl: config.sinkhole.ttl,
            },
            global_profile: config.policy.global_profile.clone(),
            household_max_names: config.policy.household_max_names,
            remediation_extra: config.policy.remediation_extra.clone(),
            allowlists: config
                .policy
                .trusted_zone
                .then(|| config.policy.allowlists.display().to_string()),
            min_prefix: (config.policy.min_prefix_v4, config.policy.min_prefix_v6),
            generation: 1,
        };
        let store = Self {
            current: ArcSwap::from_pointee(Current::new(Snapshot::default())),
            policy_dir: config.policy.dir.clone(),
            allowlists: config
                .policy
                .trusted_zone
                .then(|| config.policy.allowlists.clone()),
            options,
            state,
            status: Mutex::new(ReloadStatus::default()),
            reload_lock: Mutex::new(()),
            feeds: config.feeds.clone(),
            strike_window_days: config.alerts.strike_window_days,
            feed_cache: Mutex::new(HashMap::new()),
            transferred: Mutex::new(transferred),
            parts: Mutex::new(Parts::default()),
            digests: Mutex::new(HashMap::new()),
            reload_nice: config.policy.reload_nice,
        };
        store.reload()?;
        Ok(store)
    }

    /// The serving snapshot and client cache.
    pub fn current(&self) -> arc_swap::Guard<Arc<Current>> {
        self.current.load()
    }

    /// The serving snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load().snapshot.clone()
    }

    /// The state database.
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.state
    }

    /// Status of reloads.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Compiles the sources without swapping (for `check`).
    pub fn build(&self, generation: u64) -> Result<Snapshot, ReloadError> {
        self.build_with(generation, false)
    }

    /// Compiles the sources; with `reuse`, parts whose inputs have not changed since the last
    /// successful reload are taken from it instead of being parsed and compiled again.
    ///
    /// The threat feeds are parsed on a second thread while the rest of the policy is read and
    /// compiled: a million-name feed and a million infected subscribers take about as long each,
    /// and at start-up nothing is served until both are done. Errors of both are reported.
    fn build_with(&self, generation: u64, reuse: bool) -> Result<Snapshot, ReloadError> {
        std::thread::scope(|s| {
            let feeds = std::thread::Builder::new()
                .name("feed-parse".into())
                .spawn_scoped(s, || self.load_feeds());
            let policy = self.build_policy(generation, reuse);
            let feeds = match feeds {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|_| Err(ReloadError::Panicked("feed parsing"))),
                Err(_) => self.load_feeds(), // no thread to spare: parse here
            };
            match (policy, feeds) {
                (Ok(mut snapshot), Ok(feeds)) => {
                    snapshot.feeds = feeds;
                    Ok(snapshot)
                }
                (Err(ReloadError::Invalid(mut a)), Err(ReloadError::Invalid(b))) => {
                    a.extend(b);
                    Err(ReloadError::Invalid(a))
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        })
    }

    /// Everything but the feeds (see [`PolicyStore::build_with`]).
    fn build_policy(&self, generation: u64, reuse: bool) -> Result<Snapshot, ReloadError> {
        let overrides = self.state.overrides()?;
        let paths = match &self.policy_dir {
            Some(dir) => SourceSet::policy_paths(dir)?,
            None => Vec::new(),
        };
        // Infected lists are the big files: each is read at most once per reload, and not at
        // all when its settled stamp vouches for its digest and the part is reused.
        let mut infected = self.digested_files(&paths, "infected")?;
        let candidate = InfectedKey {
            files: infected
                .iter()
                .map(|f| (f.display.clone(), f.digest))
                .collect(),
            flagged: overrides.infected.clone(),
            detected: overrides.detected.clone(),
            evidence: overrides.evidence.clone(),
            cleared: overrides.cleared.clone(),
        };
        let reuse_infected = reuse
            .then(|| reusable(&self.lock_parts().infected, &candidate))
            .flatten();
        if reuse_infected.is_none() {
            // Compiled after all: read what the stamps spared. The key is then the digest of
            // exactly the text compiled.
            for f in infected.iter_mut().filter(|f| f.text.is_none()) {
                let text = std::fs::read_to_string(&f.path).map_err(|source| ReadError {
                    path: f.path.clone(),
                    source,
                })?;
                f.digest = digest(&[text.as_bytes()]);
                f.text = Some(text);
            }
        }
        let infected_key = InfectedKey {
            files: infected
                .iter()
                .map(|f| (f.display.clone(), f.digest))
                .collect(),
            ..candidate
        };
        let mut sources = SourceSet::read_except(
            self.policy_dir.as_deref(),
            self.allowlists.as_deref(),
            |n| n.starts_with("infected"),
        )?;
        if reuse_infected.is_none() {
            sources.policy_files.extend(
                infected
                    .into_iter()
                    .filter_map(|f| f.text.map(|t| (f.display, t))),
            );
            sources.policy_files.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let allowlists: Vec<&[u8]> = sources
            .allowlist_files
            .iter()
            .flat_map(|(rel, _, text)| [rel.as_bytes(), text.as_bytes()])
            .collect();
        let enrol_key = EnrolKey {
            // Enrolments name schedules by index: a changed schedules.yaml rebuilds them.
            files: [
                text_digests(&sources, "enrolments"),
                text_digests(&sources, "schedules"),
            ]
            .concat(),
            enrolled: overrides.enrolments.clone(),
            unenrolled: overrides.unenrolled.clone(),
            allowlists: digest(&allowlists),
        };
        sources.reuse_enrolled = reuse
            .then(|| reusable(&self.lock_parts().enrolled, &enrol_key))
            .flatten();
        sources.reuse_infected = reuse_infected;
        let options = CompileOptions {
            generation,
            ..self.options.clone()
        };
        let snapshot = compile(&sources, &overrides, &options).map_err(ReloadError::Invalid)?;
        self.digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p, _| paths.contains(p));
        let mut parts = self.lock_parts();
        parts.infected = Some((infected_key, snapshot.infected.clone()));
        parts.enrolled = Some((enrol_key, snapshot.enrolled.clone()));
        Ok(snapshot)
    }

    /// The policy files whose name starts with `prefix`, each with the digest of its content,
    /// and its text when it had to be read for that: a file whose settled stamp is unchanged
    /// since it was last hashed is not read.
    fn digested_files(
        &self,
        paths: &[PathBuf],
        prefix: &str,
    ) -> Result<Vec<DigestedFile>, ReloadError> {
        let mut out = Vec::new();
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with(prefix) {
                continue;
            }
            let display = path.display().to_string();
            // The stamp is taken before reading: a write after it changes the ctime.
            let st = stamp(path);
            let known = self
                .digests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(path)
                .filter(|(s, _)| Some(*s) == st)
                .map(|(_, d)| *d);
            let (digest, text) = match known {
                Some(d) => (d, None),
                None => {
                    let text = std::fs::read_to_string(path).map_err(|source| ReadError {
                        path: path.clone(),
                        source,
                    })?;
                    let d = digest(&[text.as_bytes()]);
                    if let Some(st) = st {
                        self.digests
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(path.clone(), (st, d));
                    }
                    (d, Some(text))
                }
            };
            out.push(DigestedFile {
                path: path.clone(),
                display,
                digest,
                text,
            });
        }
        Ok(out)
    }

    fn lock_parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds a later snapshot on a thread of its own at lowered priority, so that a big
    /// recompile takes CPU the serving threads leave rather than theirs.
    fn build_in_background(&self, generation: u64) -> Result<Snapshot, ReloadError> {
        if self.reload_nice == 0 {
            return self.build_with(generation, true);
        }
        std::thread::scope(|s| {
            let t = std::thread::Builder::new()
                .name("policy-compile".into())
                .spawn_scoped(s, || {
                    lower_thread_priority(self.reload_nice);
                    self.build_with(generation, true)
                });
            match t {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|_| Err(ReloadError::Panicked("policy compile"))),
                // No thread to spare: compile here, at normal priority.
                Err(_) => self.build_with(generation, true),
            }
        })
    }

    /// Stores a freshly transferred copy of a feed (the caller then reloads).
    pub fn set_transferred(&self, feed: &str, zone: Arc<RpzZone>, now: i64) {
        self.transferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                feed.to_owned(),
                TransferredFeed {
                    zone,
                    confirmed_at: now,
                    origin: "transfer",
                },
            );
    }

    /// Records that the primary confirmed the copy in use (its SOA serial is unchanged).
    pub fn confirm_transferred(&self, feed: &str, now: i64) {
        if let Some(t) = self
            .transferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(feed)
        {
            t.confirmed_at = now;
            t.origin = "transfer";
        }
    }

    /// The transferred copy of a feed, if any.
    pub fn transferred(&self, feed: &str) -> Option<TransferredFeed> {
        self.transferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(feed)
            .cloned()
    }

    /// Shortest IPv4 and IPv6 prefixes flagged or enrolled without `force`.
    pub fn min_prefix(&self) -> (u8, u8) {
        self.options.min_prefix
    }

    /// `policy.household_max_names`.
    pub fn household_max_names(&self) -> usize {
        self.options.household_max_names
    }

    /// Days over which missed deadlines count as strikes.
    pub fn strike_window_days(&self) -> u32 {
        self.strike_window_days
    }

    /// The configured feeds.
    pub fn feed_configs(&self) -> &[FeedConfig] {
        &self.feeds
    }

    /// Every feed, compiled: file feeds reparsed only when their file changed.
    fn load_feeds(&self) -> Result<Vec<Feed>, ReloadError> {
        let mut out = Vec::with_capacity(self.feeds.len());
        let mut errors = Vec::new();
        for f in &self.feeds {
            let (zone, source) = if let Some(path) = &f.file {
                let display = path.display().to_string();
                let st = stamp(path);
                let cached = self
                    .feed_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&f.name)
                    .filter(|(s, _)| Some(*s) == st)
                    .map(|(_, z)| z.clone());
                let zone = match cached {
                    Some(z) => z,
                    None => {
                        let text = std::fs::read_to_string(path).map_err(|source| ReadError {
                            path: path.clone(),
                            source,
                        })?;
                        match rpz::parse(&display, &text, f.zone.as_deref()) {
                            Ok(z) => {
                                let z = Arc::new(z);
                                if let Some(st) = st {
                                    self.feed_cache
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .insert(f.name.clone(), (st, z.clone()));
                                }
                                z
                            }
                            Err(errs) => {
                                let this_feed = format!("for feed `{}`", f.name);
                                errors.extend(errs.into_iter().map(|mut e| {
                                    e.message = e.message.replace("for this feed", &this_feed);
                                    e
                                }));
                                continue;
                            }
                        }
                    }
                };
                (zone, display)
            } else {
                let zone = self.transferred(&f.name).map_or_else(
                    || Arc::new(RpzZone::empty(f.zone.as_deref().unwrap_or_default())),
                    |t| t.zone,
                );
                let primary = f.primary.map(|p| p.to_string()).unwrap_or_default();
                (zone, format!("transfer from {primary}"))
            };
            // A client trigger covering a whole network (0/0) would apply the feed's action to
            // every subscriber, and flag them all for a botnet feed.
            let (v4, v6) = self.options.min_prefix;
            for (net, rule) in zone.client_triggers() {
                if crate::policy::compile::too_short(net, false, (v4, v6), "rpz-client-ip trigger")
                    .is_some()
                {
                    errors.push(PolicyError::at(
                        &source,
                        rule.line as usize,
                        format!(
                            "feed `{}`: rpz-client-ip trigger {net} covers more than a /{} and would apply to every subscriber in it: refused",
                            f.name,
                            if net.addr().is_ipv4() { v4 } else { v6 }
                        ),
                    ));
                }
            }
            out.push(Feed {
                name: f.name.clone(),
                source,
                zone,
                policy: feed_policy(f.action),
                log_only: f.log_only,
                botnet: f.botnet,
                family: f.family.clone().unwrap_or_else(|| f.name.clone()),
            });
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ReloadError::Invalid(errors))
        }
    }

    /// Reads, compiles and swaps; on failure keeps the serving snapshot. Blocking: call from a
    /// blocking thread. Concurrent reloads are serialised.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let generation = self.current.load().snapshot.generation + 1;
        let now = chrono::Utc::now().timestamp();
        let built = if generation == 1 {
            // The first load: nothing serves yet, so it runs at full speed.
            self.build_with(generation, false)
        } else {
            self.build_in_background(generation)
        };
        match built {
            Ok(snapshot) => {
                let counts = snapshot.counts();
                metrics::gauge!(crate::metrics::MODE_SET_AT)
                    .set(snapshot.mode.set_at.unwrap_or(0) as f64);
                metrics::gauge!(crate::metrics::TRUSTED_ONLY)
                    .set(f64::from(u8::from(snapshot.mode.trusted_only_at(now))));
                let old = self.current.swap(Arc::new(Current::new(snapshot)));
                // The old snapshot goes when its last query is answered; give the memory of
                // the compile (source text, scratch maps) back to the system now.
                drop(old);
                release_free_memory();
                let ms = started.elapsed().as_millis() as u64;
                crate::metrics::record_snapshot(&counts, generation, ms);
                metrics::histogram!(crate::metrics::RELOAD_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!(crate::metrics::LAST_RELOAD_OK).set(1.0);
                let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                st.generation = generation;
                st.loaded_at = now;
                st.compile_ms = ms;
                st.counts = Some(counts);
                st.last_errors.clear();
                st.reloads += 1;
                tracing::info!(
                    generation,
                    ms,
                    infected = counts.infected,
                    enrolments = counts.enrolments,
                    "policy loaded"
                );
                Ok(generation)
            }
            Err(e) => {
                metrics::counter!(crate::metrics::RELOAD_FAILURES).increment(1);
                metrics::histogram!(crate::metrics::RELOAD_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!(crate::metrics::LAST_RELOAD_OK).set(0.0);
                let lines = e.lines();
                let total = lines.len();
                if generation == 1 {
                    tracing::error!(
                        errors = total,
                        "start-up failed: the policy does not load, so nothing is served"
                    );
                } else {
                    tracing::error!(
                        errors = total,
                        serving = generation - 1,
                        "policy reload failed; the previous policy stays in force"
                    );
                }
                for l in lines.iter().take(LOGGED_ERRORS) {
                    tracing::error!("  {l}");
                }
                if total > LOGGED_ERRORS {
                    tracing::error!(
                        "  ... and {} more (`cleanpipe check` lists them)",
                        total - LOGGED_ERRORS
                    );
                }
                let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                st.last_errors = lines;
                st.last_error_at = Some(now);
                st.failures += 1;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INFECTED: &str =
        "prefix,family,source,first_seen\n192.0.2.1,Mirai,feed,2026-11-20T08:00:00Z\n";
    const ENROLMENTS: &str = "enrolments:\n  - {prefix: 198.51.100.7, profile: kids, enabled_by: x, enabled_at: 2026-11-01T10:00:00Z}\n";

    fn store(dir: &Path) -> PolicyStore {
        let text = format!(
            "policy:\n  dir: {}\n  allowlists: {}/allowlists\n",
            dir.display(),
            env!("CARGO_MANIFEST_DIR")
        );
        let config = Config::from_str_in(&text, "t.yaml", dir).expect("config");
        let state = Arc::new(crate::state::SqliteStore::in_memory().expect("state"));
        PolicyStore::open(&config, state, HashMap::new()).expect("first load")
    }

    fn infected_of(s: &PolicyStore, ip: &str) -> Option<String> {
        let snap = s.snapshot();
        let view = snap.classify(ip.parse().expect("ip"));
        view.infection
            .and_then(|i| snap.infection(i))
            .map(|i| snap.string(i.family).to_owned())
    }

    #[test]
    fn a_reload_reuses_unchanged_parts_and_rebuilds_changed_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let infected = dir.path().join("infected-feed.csv");
        let enrolments = dir.path().join("enrolments.yaml");
        std::fs::write(&infected, INFECTED).expect("write");
        std::fs::write(&enrolments, ENROLMENTS).expect("write");
        let s = store(dir.path());
        let first = s.snapshot();
        assert_eq!(infected_of(&s, "192.0.2.1").as_deref(), Some("Mirai"));

        // Only the mode changes: both big parts are the very same allocation.
        std::fs::write(dir.path().join("mode.yaml"), "mode: trusted-only\n").expect("write");
        s.reload().expect("reload");
        let second = s.snapshot();
        assert!(second.mode.trusted_only_at(0));
        assert!(Arc::ptr_eq(&first.infected, &second.infected));
        assert!(Arc::ptr_eq(&first.enrolled, &second.enrolled));

        // The infected file changes: that part is rebuilt, enrolments still shared.
        let changed = format!("{INFECTED}192.0.2.2,Emotet,feed,2026-11-21T08:00:00Z\n");
        std::fs::write(&infected, &changed).expect("write");
        s.reload().expect("reload");
        let third = s.snapshot();
        assert!(!Arc::ptr_eq(&second.infected, &third.infected));
        assert!(Arc::ptr_eq(&second.enrolled, &third.enrolled));
        assert_eq!(infected_of(&s, "192.0.2.2").as_deref(), Some("Emotet"));

        // Rewriting the same content reuses the part; a same-size change at once does not
        // (contents are compared, not timestamps).
        std::fs::write(&infected, &changed).expect("write");
        s.reload().expect("reload");
        let same = s.snapshot();
        assert!(Arc::ptr_eq(&third.infected, &same.infected));
        std::fs::write(&infected, changed.replace("Emotet", "Emotex")).expect("write");
        s.reload().expect("reload");
        assert_eq!(infected_of(&s, "192.0.2.2").as_deref(), Some("Emotex"));
        let third = s.snapshot();

        // An operator's flag (state database, no file touched) also rebuilds it.
        let flagged: InfectedEntry = serde_norway::from_str(
            "{prefix: 192.0.2.3, family: Qakbot, source: abuse-desk, first_seen: 2026-11-22T08:00:00Z}",
        )
        .expect("entry");
        s.state().flag(&flagged, "test").expect("flag");
        s.reload().expect("reload");
        assert_eq!(infected_of(&s, "192.0.2.3").as_deref(), Some("Qakbot"));
        let fourth = s.snapshot();
        assert!(!Arc::ptr_eq(&third.infected, &fourth.infected));

        // An enrolment removed by the operator rebuilds the enrolment part.
        s.state()
            .unenrol("198.51.100.7/32".parse().expect("net"), 0, "test")
            .expect("unenrol");
        s.reload().expect("reload");
        let fifth = s.snapshot();
        assert!(!Arc::ptr_eq(&fourth.enrolled, &fifth.enrolled));
        assert!(
            fifth
                .classify("198.51.100.7".parse().expect("ip"))
                .enrolment
                .is_none()
        );
        assert!(Arc::ptr_eq(&fourth.infected, &fifth.infected));
    }

    #[test]
    fn a_broken_file_after_reuse_keeps_the_old_policy_and_the_next_fix_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let infected = dir.path().join("infected-feed.csv");
        std::fs::write(&infected, INFECTED).expect("write");
        let s = store(dir.path());
        std::fs::write(
            &infected,
            format!("{INFECTED}192.0.2.999,X,feed,2026-11-21T08:00:00Z\n"),
        )
        .expect("write");
        let err = s.reload().expect_err("broken file");
        assert!(err.to_string().contains("infected-feed.csv:3"), "{err}");
        assert_eq!(infected_of(&s, "192.0.2.1").as_deref(), Some("Mirai"));
        std::fs::write(
            &infected,
            format!("{INFECTED}192.0.2.9,X,feed,2026-11-21T08:00:00Z\n"),
        )
        .expect("write");
        s.reload().expect("fixed");
        assert_eq!(infected_of(&s, "192.0.2.9").as_deref(), Some("X"));
    }

    /// `rsync -t --inplace` or `touch -d` can rewrite a file with the same size and the old
    /// modification time; the change time still moves, and the content is what counts.
    #[test]
    fn a_same_size_rewrite_with_the_old_mtime_is_not_mistaken_for_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let infected = dir.path().join("infected-feed.csv");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let write = |text: &str| {
            std::fs::write(&infected, text).expect("write");
            std::fs::File::options()
                .write(true)
                .open(&infected)
                .and_then(|f| f.set_modified(old))
                .expect("mtime");
        };
        write("prefix,family,source,first_seen\n192.0.2.1,Mirai,feed,2026-11-20T08:00:00Z\n");
        let s = store(dir.path());
        // Let the change time settle, reload so the stamp is remembered, then rewrite.
        std::thread::sleep(RACY + std::time::Duration::from_millis(200));
        s.reload().expect("reload");
        assert!(stamp(&infected).is_some(), "settled");
        write("prefix,family,source,first_seen\n192.0.2.1,Emotx,feed,2026-11-20T08:00:00Z\n");
        std::thread::sleep(RACY + std::time::Duration::from_millis(200));
        s.reload().expect("reload");
        assert_eq!(infected_of(&s, "192.0.2.1").as_deref(), Some("Emotx"));
    }
}
