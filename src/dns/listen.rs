//! DNS listeners: one serving thread per core, each with a current-thread runtime and its own
//! SO_REUSEPORT UDP socket and TCP listener per configured address. UDP is read by our own loop
//! (fast path first, see [`super::fast`]); TCP is served by hickory-server.
//!
//! Why: measured on our 2-core machines (shared/PEERS.md), hickory-server on one multi-thread
//! runtime with one socket cost ~1.65× the CPU per query of a bare UDP loop, while one
//! current-thread runtime per core with its own socket was at parity. The kernel spreads
//! clients over the sockets; each thread never synchronises with the others on the answer path.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::MessageType;
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol as DnsProtocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use super::DnsHandler;
use crate::config::ListenConfig;

/// A failure to start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A socket could not be bound.
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A thread or runtime could not be started.
    #[error("cannot start serving thread: {0}")]
    Thread(io::Error),
}

/// Running serving threads.
pub struct Listeners {
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// The bound addresses (with real ports when port 0 was asked).
    pub addrs: Vec<SocketAddr>,
}

/// A socket for `addr` of the given kind (IPv6 sockets serve IPv6 only).
fn plain_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = plain_socket(addr, ty, proto)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Fails if anyone already holds `addr`. SO_REUSEPORT, which the serving threads need, would
/// otherwise let a second instance (or another DNS server of the same user) bind the same
/// address and silently take a share of the queries. The probe binds without SO_REUSEPORT and
/// is closed again before the real sockets are bound.
fn ensure_free(addr: SocketAddr) -> Result<(), ListenError> {
    if addr.port() == 0 {
        return Ok(());
    }
    for (ty, proto, name) in [
        (Type::DGRAM, Protocol::UDP, "udp"),
        (Type::STREAM, Protocol::TCP, "tcp"),
    ] {
        let err = |source: io::Error| ListenError::Bind {
            addr,
            proto: name,
            source: if source.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(
                    source.kind(),
                    format!("{source}: another cleanpipe or DNS server is serving it"),
                )
            } else {
                source
            },
        };
        let s = plain_socket(addr, ty, proto).map_err(err)?;
        if name == "tcp" {
            // Connections of an earlier run still in TIME_WAIT do not make the port taken.
            s.set_reuse_address(true).map_err(err)?;
        }
        s.bind(&addr.into()).map_err(err)?;
    }
    Ok(())
}

fn bind_udp(addr: SocketAddr, rcvbuf: usize) -> Result<std::net::UdpSocket, ListenError> {
    let err = |source| ListenError::Bind {
        addr,
        proto: "udp",
        source,
    };
    let s = socket(addr, Type::DGRAM, Protocol::UDP).map_err(err)?;
    if rcvbuf > 0 {
        // The kernel caps SO_RCVBUF at net.core.rmem_max (often 208 KiB): too small to absorb a
        // burst at saturation. With CAP_NET_ADMIN (root, or the capability in the service
        // unit) SO_RCVBUFFORCE gets the configured size, as Unbound does.
        let _ = s.set_recv_buffer_size(rcvbuf);
        if s.recv_buffer_size().is_ok_and(|got| got < rcvbuf) {
            force_recv_buffer(&s, rcvbuf);
        }
    }
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}

fn force_recv_buffer(s: &Socket, size: usize) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the stated length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "SO_RCVBUFFORCE refused; the receive buffer stays at net.core.rmem_max");
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    let err = |source| ListenError::Bind {
        addr,
        proto: "tcp",
        source,
    };
    let s = socket(addr, Type::STREAM, Protocol::TCP).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(1024).map_err(err)?;
    Ok(s.into())
}

impl Listeners {
    /// Binds every socket (so errors surface before anything serves), then starts the threads.
    pub fn start(config: &ListenConfig, handler: DnsHandler) -> Result<Self, ListenError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Resolve port 0 once so every thread's socket shares the same port.
        let mut addrs = Vec::new();
        let mut per_thread: Vec<Vec<(std::net::UdpSocket, std::net::TcpListener)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for &want in &config.dns {
            ensure_free(want)?;
            let mut addr = want;
            for sockets in per_thread.iter_mut() {
                let udp = bind_udp(addr, config.udp_receive_buffer)?;
                if addr.port() == 0 {
                    addr = udp.local_addr().map_err(|source| ListenError::Bind {
                        addr,
                        proto: "udp",
                        source,
                    })?;
                }
                let tcp = bind_tcp(addr)?;
                sockets.push((udp, tcp));
            }
            addrs.push(addr);
        }
        let (stop, stop_rx) = watch::channel(false);
        let idle = Duration::from_secs(config.tcp_idle_timeout_secs.max(1));
        let handler = Arc::new(handler);
        let mut handles = Vec::new();
        for (i, sockets) in per_thread.into_iter().enumerate() {
            let handler = handler.clone();
            let mut stop_rx = stop_rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("dns-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot build serving runtime");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let mut server = Server::new(SharedHandler(handler.clone()));
                        let mut udp_tasks = Vec::new();
                        for (udp, tcp) in sockets {
                            match (
                                tokio::net::UdpSocket::from_std(udp),
                                tokio::net::TcpListener::from_std(tcp),
                            ) {
                                (Ok(u), Ok(t)) => {
                                    udp_tasks.push(tokio::spawn(udp_loop(
                                        Arc::new(u),
                                        handler.clone(),
                                        stop_rx.clone(),
                                    )));
                                    server.register_listener(t, idle, 64 * 1024);
                                }
                                (Err(e), _) | (_, Err(e)) => {
                                    tracing::error!(error = %e, "cannot register socket");
                                }
                            }
                        }
                        let _ = stop_rx.wait_for(|s| *s).await;
                        for t in udp_tasks {
                            let _ = t.await;
                        }
                        if let Err(e) = server.shutdown_gracefully().await {
                            tracing::debug!(error = %e, "listener shutdown");
                        }
                    });
                })
                .map_err(ListenError::Thread)?;
            handles.push(h);
        }
        Ok(Self {
            threads: handles,
            stop,
            addrs,
        })
    }

    /// Stops accepting and joins the threads.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One UDP socket's loop: reads every waiting packet, answers the fast path inline and hands
/// the rest to a task running the full handler. Stops when `stop` turns true.
async fn udp_loop(
    socket: Arc<tokio::net::UdpSocket>,
    handler: Arc<DnsHandler>,
    mut stop: watch::Receiver<bool>,
) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut rx = super::batch::RecvBatch::default();
    let mut tx = super::batch::SendBatch::default();
    let mut cache = super::fast::WireCache::default();
    loop {
        tokio::select! {
            r = socket.readable() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "UDP socket failed");
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        loop {
            let n = match socket.try_io(tokio::io::Interest::READABLE, || rx.recv(fd)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive");
                    break;
                }
            };
            // One clock read per batch of packets, not per packet.
            let now = (chrono::Utc::now().timestamp(), std::time::Instant::now());
            for i in 0..n {
                let (packet, src) = rx.get(i);
                let Some(src) = src.filter(|s| s.port() != 0) else {
                    continue;
                };
                if handler.try_fast(packet, src, now, &mut cache, tx.next_buf()) {
                    tx.push(src);
                    continue;
                }
                full_path(&socket, &handler, packet, src);
            }
            if !tx.is_empty() {
                let sent = socket
                    .try_io(tokio::io::Interest::WRITABLE, || tx.send(fd))
                    .unwrap_or(0);
                for (bytes, dst) in tx.rest(sent) {
                    let _ = socket.send_to(bytes, dst).await;
                }
                tx.clear();
            }
            if n < super::batch::BATCH {
                break;
            }
        }
    }
}

/// Hands a packet the fast path did not answer to the full handler, on its own task.
fn full_path(
    socket: &Arc<tokio::net::UdpSocket>,
    handler: &Arc<DnsHandler>,
    packet: &[u8],
    src: SocketAddr,
) {
    match Request::from_bytes(packet.to_vec(), src, DnsProtocol::Udp) {
        Ok(request) if request.metadata.message_type == MessageType::Query => {
            let (handler, responder) = (
                handler.clone(),
                UdpResponder {
                    socket: socket.clone(),
                    dst: src,
                },
            );
            tokio::spawn(async move {
                handler
                    .handle_request::<UdpResponder, TokioTime>(&request, responder)
                    .await;
            });
        }
        Ok(_) => {} // a response: never answered (reflection)
        Err(_) => {
            metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => "malformed").increment(1);
            if let Some(f) = super::fast::formerr(packet) {
                let _ = socket.try_send_to(&f, src);
            }
        }
    }
}

/// Sends full-path answers back on the UDP socket the query came in on, truncated to what the
/// client can take (its EDNS payload, or 512 bytes).
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<tokio::net::UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(e.to_string()))?;
        self.socket
            .send_to(&bytes, self.dst)
            .await
            .map_err(|e| NetError::from(e.to_string()))?;
        Ok(info)
    }
}

/// The handler shared by every serving thread.
struct SharedHandler(Arc<DnsHandler>);

#[async_trait::async_trait]
impl hickory_server::server::RequestHandler for SharedHandler {
    async fn handle_request<
        R: hickory_server::server::ResponseHandler,
        T: hickory_server::net::runtime::Time,
    >(
        &self,
        request: &hickory_server::server::Request,
        response_handle: R,
    ) -> hickory_server::server::ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}
