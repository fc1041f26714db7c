//! DNS over HTTPS (RFC 8484): `/dns-query`, GET (`?dns=` base64url) and POST
//! (`application/dns-message`), HTTP/2 and HTTP/1.1 over TLS. The HTTP layer only frames the
//! message and names the client (the TLS peer's address); the [`Pipeline`] answers it, so
//! quarantine, trusted zones, feeds and detection apply as on every other transport.
//!
//! Limits: connections per client and in total (the idlest closed at the limit), the TLS
//! handshake within `tls.handshake_timeout_secs`, headers within the idle time, at most
//! `tls.max_streams` concurrent HTTP/2 streams per connection, a connection idle for
//! `tls.idle_timeout_secs` closed. Replies carry `Cache-Control: max-age` of their shortest TTL.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::tls::{Tls, handshake};
use super::{Client, Pipeline, Transport};
use crate::net::{Slot, accept};
use crate::wire;

/// The largest DNS message.
const MAX_MESSAGE: usize = 65_535;

/// Accepts DNS-over-HTTPS connections until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Tls,
    pipeline: Arc<Pipeline>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, peer, slot)) = accept(&listener, &tls.doh_conns, &mut stop).await {
        let (acceptor, timeout, pipeline, stop) = (
            tls.doh.clone(),
            tls.handshake_timeout,
            pipeline.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let Some(s) = handshake(&acceptor, stream, timeout, Transport::Https).await else {
                return;
            };
            connection(s, peer, pipeline, slot, stop).await;
        });
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    pipeline: Arc<Pipeline>,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let limits = slot.limits();
    let (active, busy, activity) = (slot.active.clone(), slot.busy.clone(), slot.activity());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (pipeline, busy, activity) = (pipeline.clone(), busy.clone(), activity.clone());
        async move {
            busy.fetch_add(1, Ordering::AcqRel);
            activity.touch();
            let r = answer(req, peer, &pipeline).await;
            busy.fetch_sub(1, Ordering::AcqRel);
            activity.touch();
            Ok::<_, Infallible>(r)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(limits.pipeline).unwrap_or(100));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let mut idle_check = tokio::time::interval(limits.idle.min(Duration::from_secs(5)));
    let mut last = active.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = slot.close.notified() => break,
            _ = &mut stopping => break,
            _ = idle_check.tick() => {
                // HTTP/2 has no idle timeout of its own: close a connection with nothing in
                // flight and no request for `idle`.
                let now = active.load(Ordering::Relaxed);
                if now != last || slot.busy.load(Ordering::Acquire) > 0 {
                    last = now;
                    quiet = Duration::ZERO;
                } else {
                    quiet += limits.idle.min(Duration::from_secs(5));
                    if quiet >= limits.idle {
                        break;
                    }
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The DNS message of a request, or the HTTP error to answer.
async fn message(req: Request<Incoming>) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    if req.uri().path() != "/dns-query" {
        return Err(plain(
            StatusCode::NOT_FOUND,
            "DNS queries go to /dns-query\n",
        ));
    }
    match *req.method() {
        Method::GET => {
            let dns = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("dns="))
                .ok_or_else(|| plain(StatusCode::BAD_REQUEST, "missing ?dns=\n"))?;
            if dns.len() > MAX_MESSAGE * 4 / 3 + 4 {
                return Err(plain(StatusCode::URI_TOO_LONG, "query too long\n"));
            }
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::URL_SAFE,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            engine
                .decode(dns)
                .map_err(|_| plain(StatusCode::BAD_REQUEST, "?dns= is not base64url\n"))
        }
        Method::POST => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/dns-message") {
                return Err(plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Content-Type must be application/dns-message\n",
                ));
            }
            let body = Limited::new(req.into_body(), MAX_MESSAGE)
                .collect()
                .await
                .map_err(|_| plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"))?;
            Ok(body.to_bytes().to_vec())
        }
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, POST"));
            Err(r)
        }
    }
}

/// Answers one DoH request through the pipeline.
async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    pipeline: &Pipeline,
) -> Response<Full<Bytes>> {
    let wire_in = match message(req).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let client = Client {
        addr: peer,
        transport: Transport::Https,
    };
    let mut out = Vec::with_capacity(512);
    if !pipeline.handle(&wire_in, client, &mut out).await {
        // No DNS reply (unreadable, or a feed's DROP): HTTP still needs an answer.
        match wire::Query::parse(&wire_in) {
            Ok(q) => {
                wire::Response::new(&mut out, &q, wire::rcode::SERVFAIL).finish(
                    &q,
                    MAX_MESSAGE,
                    &wire::OptOut::default(),
                );
            }
            Err(_) => return plain(StatusCode::BAD_REQUEST, "not a DNS query\n"),
        }
    }
    let max_age = wire::ttl_offsets(&out)
        .and_then(|ttls| ttls.iter().map(|(_, t)| *t).min())
        .unwrap_or(0);
    let mut r = Response::new(Full::new(Bytes::from(out)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/dns-message"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&format!("max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}
