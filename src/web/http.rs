//! Serving an axum router connection by connection, with the limits every listener needs
//! ([`crate::net`]): connections per client and in total, a deadline for a request's headers
//! (also between requests on a kept-alive connection), a deadline for the whole request, and a
//! shutdown that ends within a bound whatever clients do.
//!
//! `axum::serve` has none of these: 50 half-sent requests stayed open for minutes, and a few
//! thousand exhausted the file descriptors DNS needed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::net::{Connections, accept};

/// How long a connection may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Limits of one HTTP listener.
#[derive(Clone)]
pub struct HttpLimits {
    /// Open connections, per client and in total.
    pub conns: Arc<Connections>,
    /// Time to answer one request (reading its body included).
    pub request_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` turns true; then closes every connection within
/// about a second.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((stream, peer, slot)) = accept(&listener, &limits.conns, &mut stop).await {
        let (app, request_timeout, stop) = (app.clone(), limits.request_timeout, stop.clone());
        tasks.spawn(connection(stream, peer, app, slot, request_timeout, stop));
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    limits.conns.close_all();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: crate::net::Slot,
    request_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let call = tower_service::Service::call(&mut app, req.map(Body::new));
            match tokio::time::timeout(request_timeout, call).await {
                Ok(r) => r,
                Err(_) => {
                    let mut r = Response::new(Body::from("request timed out\n"));
                    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
                    Ok(r)
                }
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(slot.limits().idle)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let finished = tokio::select! {
        _ = conn.as_mut() => true,
        _ = slot.close.notified() => false,
        _ = stopping => false,
    };
    if !finished {
        // Evicted or shutting down: let a request in progress finish, briefly.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
    }
    drop(slot);
}
