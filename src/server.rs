//! `cleanpipe serve`: wires the store, resolver, DNS listeners, admin API and watcher together.
//!
//! Start-up order is deliberate: the state database and the first policy snapshot are loaded
//! before any DNS socket is bound, so cleanpipe never answers unfiltered while policy loads. The
//! readiness flag (`GET /ready`, and the `ready` log line) is set once every socket is bound.
//!
//! Shutdown: on the signal, cleanpipe keeps answering until no query is in flight (at most
//! `DRAIN`), then closes the sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::dns::Pipeline;
use crate::dns::listen::{ListenError, Listeners};
use crate::resolve::{ResolveError, Resolver};
use crate::state::{SqliteStore, StateError};
use crate::store::{PolicyStore, ReloadError};
use crate::web::admin::{AdminState, router};

/// Longest wait for in-flight queries at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// The first policy is invalid.
    #[error("start-up failed: {0} (`cleanpipe check` lists the errors)")]
    Policy(#[from] ReloadError),
    /// The resolver.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// DNS sockets.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The admin API socket.
    #[error("admin API on {addr}: {source}")]
    Admin {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The cleanup page.
    #[error("cleanup page on {addr}: {source}")]
    Web {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The page texts.
    #[error(transparent)]
    Content(#[from] crate::web::content::ContentError),
    /// The TLS certificate.
    #[error("tls: {0}")]
    Tls(#[from] crate::dns::tls::TlsError),
    /// The policy watcher.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// A start-up task failed.
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// Everything worth a warning in a valid configuration (printed by `check`, logged at start).
pub fn warnings(config: &Config) -> Vec<String> {
    let mut w = config.warnings();
    w.extend(crate::watch::warnings(config));
    w
}

/// Runs the service until `shutdown` completes. Must run inside a multi-thread tokio runtime
/// (the control runtime: backends, admin API, watcher).
pub async fn serve(
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    crate::metrics::describe();
    for w in warnings(&config) {
        tracing::warn!("{w}");
    }
    let store = open_policy(&config).await?;
    let resolver = Arc::new(Resolver::from_config(
        &config,
        tokio::runtime::Handle::current(),
    )?);
    crate::metrics::register_zero(resolver.kind());
    let engine = Arc::new(
        crate::alerts::AlertEngine::new(
            store.clone(),
            config.alerts.clone(),
            Arc::new(crate::alerts::SystemClock),
        )
        .map_err(|e| ServeError::Task(format!("alert delivery client: {e}")))?,
    );
    let alert_task = tokio::spawn(engine.clone().run());
    let misses = Arc::new(crate::misses::Misses::default());
    let misses_task = tokio::spawn(flush_misses(store.clone(), misses.clone()));
    let gauges_task = tokio::spawn(gauges(
        store.clone(),
        resolver.clone(),
        config.clone(),
        metrics.clone(),
    ));
    let mut pipeline = pipeline(&config, &store, &resolver, &engine)?.with_misses(misses.clone());
    let querylog =
        crate::querylog::QueryLog::start(config.log.actions.as_ref(), config.log.dnstap.as_ref())
            .map(Arc::new);
    if let Some(q) = &querylog {
        pipeline = pipeline.with_querylog(q.clone());
    }
    let inflight = pipeline.inflight();
    let tls = if config.tls.dot.is_empty() && config.tls.doh.is_empty() {
        None
    } else {
        let (Some(cert), Some(key)) = (&config.tls.certificate, &config.tls.key) else {
            return Err(ServeError::Task(
                "tls: certificate and key are needed".into(),
            ));
        };
        let store = crate::dns::tls::CertStore::open(cert, key)?;
        tokio::spawn(
            store
                .clone()
                .watch(Duration::from_secs(config.tls.reload_check_secs.max(1))),
        );
        Some((crate::dns::tls::Tls::new(&config.tls, &store), &config.tls))
    };
    let listeners = Listeners::start(&config.listen, tls, pipeline)?;

    let ready = Arc::new(AtomicBool::new(false));
    let (http_stop, _) = tokio::sync::watch::channel(false);
    let mut http_tasks = Vec::new();
    if let Some(addr) = config.admin.listen {
        let app = router(AdminState {
            store: store.clone(),
            tokens: config.api_tokens().unwrap_or_default().into(),
            ready: ready.clone(),
            metrics,
            alerts: Some(engine.clone()),
            misses: Some(misses.clone()),
        });
        if config.api_tokens().unwrap_or_default().is_empty() {
            tracing::warn!("no admin token configured: every admin API call will be refused");
        }
        let limits = http_limits(config.admin.max_connections, &config, "admin", 30);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Admin { addr, source })?;
        http_tasks.push(tokio::spawn(crate::web::http::serve(
            listener,
            app,
            limits,
            http_stop.subscribe(),
        )));
    }
    let content = match &config.web.content_dir {
        Some(dir) => crate::web::content::Content::from_dir(dir)?,
        None => crate::web::content::Content::builtin()?,
    };
    let pages = crate::web::page::PageState::new(store.clone(), content, config.web.clone());
    let limits = http_limits(config.web.max_connections, &config, "page", 10);
    for &addr in &config.web.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Web { addr, source })?;
        http_tasks.push(tokio::spawn(crate::web::http::serve(
            listener,
            crate::web::page::router(pages.clone()),
            limits.clone(),
            http_stop.subscribe(),
        )));
    }

    let watcher = crate::watch::watch(
        store.clone(),
        crate::watch::WatchSet::from_config(&config),
        Duration::from_millis(config.policy.reload_debounce_ms.max(10)),
    )?;

    ready.store(true, Ordering::Release);
    metrics::gauge!(crate::metrics::READY).set(1.0);
    crate::notify::ready();
    tracing::info!(
        dns = ?listeners.addrs,
        tls = ?listeners.tls_addrs,
        admin = ?config.admin.listen,
        web = ?config.web.listen,
        backend = resolver.kind(),
        generation = store.snapshot().generation,
        "ready"
    );

    shutdown.await;
    // Everything stops at once and within DRAIN, whatever clients do: the HTTP listeners close
    // their connections (at most about 2 s) while DNS answers the queries in flight.
    tracing::info!("shutting down: answering in-flight queries");
    crate::notify::stopping();
    ready.store(false, Ordering::Release);
    metrics::gauge!(crate::metrics::READY).set(0.0);
    gauges_task.abort();
    let _ = http_stop.send(true);
    drop(watcher);
    let started = Instant::now();
    while inflight.load(Ordering::Acquire) > 0 && started.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(move || listeners.stop())
        .await
        .map_err(|e| ServeError::Task(e.to_string()))?;
    for t in http_tasks {
        let _ = t.await;
    }
    alert_task.abort();
    misses_task.abort();
    if let Some(q) = querylog {
        let _ = tokio::task::spawn_blocking(move || q.close()).await;
    }
    let st = store.state().clone();
    let _ = tokio::task::spawn_blocking(move || misses.flush(&*st, chrono::Utc::now().timestamp()))
        .await;
    tracing::info!("stopped");
    Ok(())
}

/// The state database and the first policy snapshot (with the saved copies of transferred
/// feeds), loaded before anything is served.
async fn open_policy(config: &Config) -> Result<Arc<PolicyStore>, ServeError> {
    let state_path = config.state.path.clone();
    let state: Arc<dyn crate::state::StateStore> = Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(&state_path))
            .await
            .map_err(|e| ServeError::Task(e.to_string()))??,
    );
    let cfg = config.clone();
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || {
            let saved = crate::xfr::load_saved(&cfg);
            PolicyStore::open(&cfg, state, saved)
        })
        .await
        .map_err(|e| ServeError::Task(e.to_string()))??,
    ))
}

/// Gauges sampled every few seconds: cache size, alert outbox, file feeds' age, the global
/// mode (it can expire by itself); and the exporter's upkeep (histogram samples are folded
/// into their buckets even when nobody scrapes).
async fn gauges(
    store: Arc<PolicyStore>,
    resolver: Arc<Resolver>,
    config: Config,
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(h) = &handle {
            h.run_upkeep();
        }
        let cache = resolver.cache();
        metrics::gauge!(crate::metrics::CACHE_ENTRIES).set(cache.len() as f64);
        metrics::gauge!(crate::metrics::CACHE_BYTES).set(cache.footprint() as f64);
        let now = chrono::Utc::now().timestamp();
        metrics::gauge!(crate::metrics::TRUSTED_ONLY).set(f64::from(u8::from(
            store.snapshot().mode.trusted_only_at(now),
        )));
        for f in &store.snapshot().feeds {
            metrics::gauge!(crate::metrics::FEED_SERIAL, "feed" => f.name.clone())
                .set(f64::from(f.zone.serial));
        }
        for f in config.feeds.iter() {
            if let Some(file) = &f.file
                && let Ok(modified) = std::fs::metadata(file).and_then(|m| m.modified())
                && let Ok(age) = modified.elapsed()
            {
                metrics::gauge!(crate::metrics::FEED_AGE, "feed" => f.name.clone())
                    .set(age.as_secs_f64());
            }
        }
        let st = store.state().clone();
        if let Ok(Ok((pending, oldest))) =
            tokio::task::spawn_blocking(move || st.outbox_depth()).await
        {
            metrics::gauge!(crate::metrics::OUTBOX_PENDING).set(pending as f64);
            metrics::gauge!(crate::metrics::OUTBOX_OLDEST)
                .set(oldest.map_or(0.0, |t| (now - t).max(0) as f64));
        }
    }
}

/// Writes the trusted zone's denial counts to the state database every minute.
async fn flush_misses(store: Arc<PolicyStore>, misses: Arc<crate::misses::Misses>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (st, m) = (store.state().clone(), misses.clone());
        let done =
            tokio::task::spawn_blocking(move || m.flush(&*st, chrono::Utc::now().timestamp()))
                .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "cannot save the trusted zone's misses (kept for the next try)");
        }
    }
}

/// The request path with what it records into: detection, alert sightings, NOTIFY.
fn pipeline(
    config: &Config,
    store: &Arc<PolicyStore>,
    resolver: &Arc<Resolver>,
    engine: &Arc<crate::alerts::AlertEngine>,
) -> Result<Pipeline, ServeError> {
    let mut p = Pipeline::new(store.clone(), resolver.clone())
        .with_alerts(engine.clone())
        .with_limits(&config.limits);
    if let Some(key) = config.listen.cookie_key() {
        p = p.with_cookie_secret(key);
    }
    if config.feeds.iter().any(|f| f.botnet) {
        p = p.with_detector(crate::detect::Detector::spawn(
            store.clone(),
            &config.detection,
        ));
    }
    let notifier = crate::xfr::spawn(store.clone(), config.state.feeds_dir())
        .map_err(|e| ServeError::Task(e.to_string()))?;
    if !notifier.is_empty() {
        p = p.with_notifier(notifier);
    }
    Ok(p)
}

/// The limits of an HTTP listener (`label` names it in metrics).
fn http_limits(
    total: usize,
    config: &Config,
    label: &'static str,
    request_secs: u64,
) -> crate::web::http::HttpLimits {
    let idle = Duration::from_secs(config.web.header_timeout_secs.max(1));
    crate::web::http::HttpLimits {
        conns: crate::net::Connections::new(
            crate::net::Limits::http(total, config.web.connections_per_client, idle),
            label,
        ),
        request_timeout: Duration::from_secs(request_secs),
    }
}
