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
    let state_path = config.state.path.clone();
    let state = Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(&state_path))
            .await
            .map_err(|e| ServeError::Task(e.to_string()))??,
    );
    let cfg = config.clone();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || {
            let saved = crate::xfr::load_saved(&cfg);
            PolicyStore::open(&cfg, state, saved)
        })
        .await
        .map_err(|e| ServeError::Task(e.to_string()))??,
    );
    let resolver = Arc::new(Resolver::from_config(
        &config,
        tokio::runtime::Handle::current(),
    )?);
    let mut handler = Pipeline::new(store.clone(), resolver.clone());
    if let Some(key) = config.listen.cookie_key() {
        handler = handler.with_cookie_secret(key);
    }
    if config.feeds.iter().any(|f| f.botnet) {
        handler = handler.with_detector(crate::detect::Detector::spawn(
            store.clone(),
            &config.detection,
        ));
    }
    let engine = Arc::new(
        crate::alerts::AlertEngine::new(
            store.clone(),
            config.alerts.clone(),
            Arc::new(crate::alerts::SystemClock),
        )
        .map_err(|e| ServeError::Task(format!("alert delivery client: {e}")))?,
    );
    let alert_task = tokio::spawn(engine.clone().run());
    handler = handler.with_alerts(engine.clone());
    let notifier = crate::xfr::spawn(store.clone(), config.state.feeds_dir())
        .map_err(|e| ServeError::Task(e.to_string()))?;
    if !notifier.is_empty() {
        handler = handler.with_notifier(notifier);
    }
    let inflight = handler.inflight();
    let listeners = Listeners::start(&config.listen, handler)?;

    let ready = Arc::new(AtomicBool::new(false));
    let (admin_stop, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = match config.admin.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Admin { addr, source })?;
            let token = config.admin_token().map(Arc::from);
            if token.is_none() {
                tracing::warn!("no admin token configured: every admin API call will be refused");
            }
            let app = router(AdminState {
                store: store.clone(),
                token,
                ready: ready.clone(),
                metrics,
                alerts: Some(engine.clone()),
            });
            Some(tokio::spawn(async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = admin_stop_rx.await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "admin API stopped");
                }
            }))
        }
        None => None,
    };

    let content = match &config.web.content_dir {
        Some(dir) => crate::web::content::Content::from_dir(dir)?,
        None => crate::web::content::Content::builtin()?,
    };
    let pages = crate::web::page::PageState::new(store.clone(), content, config.web.clone());
    let (web_stop, _) = tokio::sync::watch::channel(false);
    let mut web_tasks = Vec::new();
    for &addr in &config.web.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Web { addr, source })?;
        let app = crate::web::page::router(pages.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let mut stop = web_stop.subscribe();
        web_tasks.push(tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "cleanup page stopped");
            }
        }));
    }

    let watcher = crate::watch::watch(
        store.clone(),
        crate::watch::WatchSet::from_config(&config),
        Duration::from_millis(config.policy.reload_debounce_ms.max(10)),
    )?;

    ready.store(true, Ordering::Release);
    tracing::info!(
        dns = ?listeners.addrs,
        admin = ?config.admin.listen,
        web = ?config.web.listen,
        backend = resolver.kind(),
        generation = store.snapshot().generation,
        "ready"
    );

    shutdown.await;
    tracing::info!("shutting down: answering in-flight queries");
    ready.store(false, Ordering::Release);
    drop(watcher);
    let started = Instant::now();
    while inflight.load(Ordering::Acquire) > 0 && started.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(move || listeners.stop())
        .await
        .map_err(|e| ServeError::Task(e.to_string()))?;
    let _ = admin_stop.send(());
    let _ = web_stop.send(true);
    for t in web_tasks {
        let _ = t.await;
    }
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    alert_task.abort();
    tracing::info!("stopped");
    Ok(())
}
