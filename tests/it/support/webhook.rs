//! A real webhook receiver on loopback: records every POST (headers and body) and can be told
//! to fail the next requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One request received (including failed ones).
#[derive(Debug, Clone)]
pub struct Received {
    /// Path.
    pub path: String,
    /// Lowercased header names.
    pub headers: HashMap<String, String>,
    /// Body text.
    pub body: String,
    /// Whether the receiver answered 2xx.
    pub accepted: bool,
}

#[derive(Clone, Default)]
struct Shared {
    got: Arc<Mutex<Vec<Received>>>,
    fail: Arc<AtomicUsize>,
}

/// A running receiver.
pub struct Receiver {
    shared: Shared,
}

async fn hook(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let fail = s
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let r = Received {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        accepted: !fail,
    };
    if let Ok(mut g) = s.got.lock() {
        g.push(r);
    }
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    /// Starts on `addr` (the background test runtime).
    pub fn start(addr: SocketAddr) -> Receiver {
        let shared = Shared::default();
        let app = Router::new()
            .route("/{*path}", post(hook))
            .with_state(shared.clone());
        let listener = super::background()
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("webhook receiver on {addr}: {e}"));
        super::background().spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { shared }
    }

    /// Fails the next `n` requests with 500.
    pub fn fail_next(&self, n: usize) {
        self.shared.fail.store(n, Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .got
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Accepted requests for `path` carrying event `event`.
    pub fn accepted(&self, path: &str, event: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| {
                r.accepted
                    && r.path == path
                    && r.headers
                        .get("x-cleanpipe-event")
                        .is_some_and(|e| e == event)
            })
            .collect()
    }
}
