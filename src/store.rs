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
use crate::policy::{ClientView, Counts, PolicyError, Snapshot, SourceSet, compile};
use crate::policy::{Feed, FeedPolicy};
use crate::state::StateDb;

/// Why a reload did not produce a new snapshot.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
pub enum ReloadError {
    /// A source could not be read.
    #[error("{0}")]
    Read(String),
    /// The state database could not be read.
    #[error("{0}")]
    State(String),
    /// The sources are invalid; every problem is listed.
    #[error("{} error(s) in policy; first: {}", .0.len(), .0.first().map(|e| e.to_string()).unwrap_or_default())]
    Invalid(Vec<PolicyError>),
}

/// A snapshot with its client cache.
pub struct Current {
    /// The policy.
    pub snapshot: Arc<Snapshot>,
    clients: moka::sync::Cache<IpAddr, ClientView>,
}

impl Current {
    fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: Arc::new(snapshot),
            clients: moka::sync::Cache::builder()
                .max_capacity(CLIENT_CACHE)
                .build(),
        }
    }

    /// What the policy knows about `ip`, cached for this snapshot.
    pub fn client(&self, ip: IpAddr) -> ClientView {
        if let Some(v) = self.clients.get(&ip) {
            return v;
        }
        let v = self.snapshot.classify(ip);
        self.clients.insert(ip, v);
        v
    }
}

/// Clients whose views are cached per snapshot.
const CLIENT_CACHE: u64 = 200_000;

/// The last reload's outcome, for the admin status.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    /// Generation currently serving.
    pub generation: u64,
    /// Unix seconds of the last successful reload.
    pub loaded_at: i64,
    /// Milliseconds the last successful compile took.
    pub compile_ms: u64,
    /// Loaded counts.
    pub counts: Option<Counts>,
    /// Errors of the last failed reload (cleared by the next success).
    pub last_errors: Vec<String>,
    /// Unix seconds of the last failed reload.
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
    allowlists: PathBuf,
    options: CompileOptions,
    state: Arc<StateDb>,
    status: Mutex<ReloadStatus>,
    reload_lock: Mutex<()>,
    feeds: Vec<FeedConfig>,
    strike_window_days: u32,
    /// Compiled file feeds by name, with the file's identity when parsed: a reload reparses
    /// only feeds whose file changed.
    feed_cache: Mutex<HashMap<String, (FileStamp, Arc<RpzZone>)>>,
    /// Latest good copy of each transferred feed.
    transferred: Mutex<HashMap<String, Arc<RpzZone>>>,
}

/// Identity of a file's content as far as the file system tells: size, mtime, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(u64, i64, i64, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp(m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
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
    /// never starts serving without its policy.
    pub fn open(config: &Config, state: Arc<StateDb>) -> Result<Self, ReloadError> {
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
            remediation_extra: config.policy.remediation_extra.clone(),
            generation: 1,
        };
        let store = Self {
            current: ArcSwap::from_pointee(Current::new(Snapshot::default())),
            policy_dir: config.policy.dir.clone(),
            allowlists: config.policy.allowlists.clone(),
            options,
            state,
            status: Mutex::new(ReloadStatus::default()),
            reload_lock: Mutex::new(()),
            feeds: config.feeds.clone(),
            strike_window_days: config.alerts.strike_window_days,
            feed_cache: Mutex::new(HashMap::new()),
            transferred: Mutex::new(HashMap::new()),
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
    pub fn state(&self) -> &Arc<StateDb> {
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
        let mut sources = SourceSet::read(self.policy_dir.as_deref(), &self.allowlists)
            .map_err(|e| ReloadError::Read(e.to_string()))?;
        sources.feeds = self.load_feeds()?;
        let overrides = self
            .state
            .overrides()
            .map_err(|e| ReloadError::State(e.to_string()))?;
        let options = CompileOptions {
            generation,
            ..self.options.clone()
        };
        compile(&sources, &overrides, &options).map_err(ReloadError::Invalid)
    }

    /// Stores a freshly transferred copy of a feed (the caller then reloads).
    pub fn set_transferred(&self, feed: &str, zone: Arc<RpzZone>) {
        self.transferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(feed.to_owned(), zone);
    }

    /// The transferred copy of a feed, if any.
    pub fn transferred(&self, feed: &str) -> Option<Arc<RpzZone>> {
        self.transferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(feed)
            .cloned()
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
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| ReloadError::Read(format!("{display}: {e}")))?;
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
                                errors.extend(errs);
                                continue;
                            }
                        }
                    }
                };
                (zone, display)
            } else {
                let zone = self.transferred(&f.name).unwrap_or_else(|| {
                    Arc::new(RpzZone::empty(f.zone.as_deref().unwrap_or_default()))
                });
                let primary = f.primary.map(|p| p.to_string()).unwrap_or_default();
                (zone, format!("transfer from {primary}"))
            };
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
        match self.build(generation) {
            Ok(snapshot) => {
                let counts = snapshot.counts();
                let old = self.current.swap(Arc::new(Current::new(snapshot)));
                // The old snapshot goes when its last query is answered; give the memory of
                // the compile (source text, scratch maps) back to the system now.
                drop(old);
                release_free_memory();
                let ms = started.elapsed().as_millis() as u64;
                crate::metrics::record_snapshot(&counts, generation, ms);
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
                let lines: Vec<String> = match &e {
                    ReloadError::Invalid(errs) => errs.iter().map(|e| e.to_string()).collect(),
                    other => vec![other.to_string()],
                };
                for l in &lines {
                    tracing::error!(error = %l, "policy reload failed; the previous policy stays in force");
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
