//! DNS over TCP: framing (a two-byte length before each message), pipelined queries answered
//! concurrently and in whatever order they finish (RFC 7766), and limits that keep one host
//! from using up the server.
//!
//! Limits, all enforced at accept time by one [`Connections`] table shared by every serving
//! thread:
//! - at most `listen.tcp_connections_per_client` open connections per client address (IPv6:
//!   per /64); more are closed at once;
//! - at most `listen.tcp_max_connections` in all (and never more than a quarter of the
//!   open-file limit): at the limit the connection idle the longest is closed to make room,
//!   so idle connections can never lock out a client with queries to ask (as Unbound and BIND
//!   do under pressure);
//! - a connection with nothing in flight is closed after `listen.tcp_idle_timeout_secs`
//!   without a complete query, and a query must arrive whole within that time (no slowloris);
//! - at most `listen.tcp_pipeline` queries of one connection are answered at once; further
//!   frames wait, which stops reading (back-pressure instead of unbounded work).
//!
//! When `accept` fails for lack of file descriptors the listener closes the oldest idle
//! connection and backs off (10 ms doubling to 1 s) instead of spinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::{Client, Pipeline, Step, Transport};
use crate::net::{Connections, Slot, accept};

/// Accepts DNS-over-TCP connections until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    conns: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, peer, slot)) = accept(&listener, &conns, &mut stop).await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            Transport::Tcp,
            pipeline.clone(),
            slot,
            stop.clone(),
        ));
    }
}

/// One connection of DNS messages framed by their length (TCP, and DoT once TLS is set up):
/// frames in, replies out as they finish.
pub async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    pipeline: Arc<Pipeline>,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let limits = slot.limits();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(limits.pipeline);
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let Ok(len) = u16::try_from(reply.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&reply);
            if wr.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let permits = Arc::new(Semaphore::new(limits.pipeline));
    let client = Client {
        addr: peer,
        transport,
    };
    let mut buf = vec![0u8; 512];
    loop {
        // Wait for the next query: idle time only counts while nothing is in flight.
        let len = tokio::select! {
            r = read_frame_len(&mut rd, &slot, limits.idle) => r,
            _ = slot.close.notified() => None,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(len) = len else { break };
        buf.resize(usize::from(len), 0);
        let body = tokio::select! {
            r = tokio::time::timeout(limits.idle, rd.read_exact(&mut buf)) => matches!(r, Ok(Ok(_))),
            _ = slot.close.notified() => false,
        };
        if !body {
            break;
        }
        slot.touch();
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let mut out = Vec::with_capacity(512);
        match pipeline.start(&buf, client, super::Now::read(), &mut out) {
            Step::Answered => {
                drop(permit);
                if tx.send(out).await.is_err() {
                    break;
                }
            }
            Step::Silent => drop(permit),
            Step::Pending(p) => {
                let (pipeline, tx, busy) = (pipeline.clone(), tx.clone(), slot.busy.clone());
                busy.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    if pipeline.finish(p, &mut out).await {
                        let _ = tx.send(out).await;
                    }
                    busy.fetch_sub(1, Ordering::AcqRel);
                    drop(permit);
                });
            }
        }
    }
    // Let replies in flight go out (bounded by the resolution timeout), then close.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    drop(slot);
}

/// The length prefix of the next frame; `None` at EOF, on error, or after `idle` with nothing
/// in flight.
async fn read_frame_len<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    slot: &Slot,
    idle: Duration,
) -> Option<u16> {
    let mut len = [0u8; 2];
    loop {
        match tokio::time::timeout(idle, rd.read_exact(&mut len)).await {
            Ok(Ok(_)) => {
                let n = u16::from_be_bytes(len);
                return (n >= 12).then_some(n);
            }
            Ok(Err(_)) => return None,
            // Idle: close unless answers are still being worked on.
            Err(_) if slot.busy.load(Ordering::Acquire) == 0 => return None,
            Err(_) => continue,
        }
    }
}
