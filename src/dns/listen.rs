//! DNS listeners: one serving thread per core, each with a current-thread runtime and its own
//! SO_REUSEPORT UDP socket and TCP listener per configured address. Both only frame bytes and
//! name the client; the [`Pipeline`] does the rest. UDP packets are read and answered in
//! batches (`recvmmsg`/`sendmmsg`); a query the pipeline cannot answer at once continues on a
//! task of the same thread.
//!
//! Why: measured on our 2-core machines (shared/PEERS.md), hickory-server on one multi-thread
//! runtime with one socket cost ~1.65× the CPU per query of a bare UDP loop, while one
//! current-thread runtime per core with its own socket was at parity. The kernel spreads
//! clients over the sockets; each thread never synchronises with the others on the answer path.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use super::{Client, Now, Pipeline, Step, Transport};
use crate::config::ListenConfig;
use crate::net::{Connections, Limits};

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
    /// The DoT and DoH addresses: `("dot" | "doh", address)`.
    pub tls_addrs: Vec<(&'static str, SocketAddr)>,
    conns: Arc<Connections>,
    tls: Option<super::tls::Tls>,
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

/// The sockets of one serving thread.
#[derive(Default)]
struct ThreadSockets {
    plain: Vec<(std::net::UdpSocket, std::net::TcpListener)>,
    dot: Vec<std::net::TcpListener>,
    doh: Vec<std::net::TcpListener>,
}

/// Binds `addr` once per thread for a stream transport (port 0 resolved on the first bind).
fn bind_streams(
    mut addr: SocketAddr,
    threads: usize,
    proto: &'static str,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ListenError> {
    ensure_free(addr)?;
    let mut out = Vec::with_capacity(threads);
    for _ in 0..threads {
        let l = bind_tcp(addr)?;
        if addr.port() == 0 {
            addr = l.local_addr().map_err(|source| ListenError::Bind {
                addr,
                proto,
                source,
            })?;
        }
        out.push(l);
    }
    Ok((addr, out))
}

impl Listeners {
    /// Binds every socket (so errors surface before anything serves), then starts the threads.
    /// `tls`: the DoT and DoH set-up and their addresses, when configured.
    pub fn start(
        config: &ListenConfig,
        tls: Option<(super::tls::Tls, &crate::config::TlsConfig)>,
        pipeline: Pipeline,
    ) -> Result<Self, ListenError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Resolve port 0 once so every thread's socket shares the same port.
        let mut addrs = Vec::new();
        let mut per_thread: Vec<ThreadSockets> =
            (0..threads).map(|_| ThreadSockets::default()).collect();
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
                sockets.plain.push((udp, tcp));
            }
            addrs.push(addr);
        }
        let mut tls_addrs = Vec::new();
        if let Some((_, c)) = &tls {
            for &want in &c.dot {
                let (addr, listeners) = bind_streams(want, threads, "tcp (DoT)")?;
                for (t, l) in per_thread.iter_mut().zip(listeners) {
                    t.dot.push(l);
                }
                tls_addrs.push(("dot", addr));
            }
            for &want in &c.doh {
                let (addr, listeners) = bind_streams(want, threads, "tcp (DoH)")?;
                for (t, l) in per_thread.iter_mut().zip(listeners) {
                    t.doh.push(l);
                }
                tls_addrs.push(("doh", addr));
            }
        }
        let tls = tls.map(|(t, _)| t);
        let (stop, stop_rx) = watch::channel(false);
        let pipeline = Arc::new(pipeline);
        let conns = Connections::new(Limits::dns_tcp(config), "tcp");
        let mut handles = Vec::new();
        for (i, sockets) in per_thread.into_iter().enumerate() {
            let (pipeline, conns, tls, stop_rx) = (
                pipeline.clone(),
                conns.clone(),
                tls.clone(),
                stop_rx.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("dns-{i}"))
                .spawn(move || serve_thread(sockets, pipeline, conns, tls, stop_rx))
                .map_err(ListenError::Thread)?;
            handles.push(h);
        }
        Ok(Self {
            threads: handles,
            stop,
            addrs,
            tls_addrs,
            conns,
            tls,
        })
    }

    /// Open DNS-over-TCP connections.
    pub fn tcp_connections(&self) -> usize {
        self.conns.len()
    }

    /// Stops accepting, closes connections and joins the threads.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.conns.close_all();
        if let Some(t) = &self.tls {
            t.dot_conns.close_all();
            t.doh_conns.close_all();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One serving thread: a current-thread runtime running the UDP loop and the TCP, DoT and DoH
/// listeners of each address until `stop`.
fn serve_thread(
    sockets: ThreadSockets,
    pipeline: Arc<Pipeline>,
    conns: Arc<Connections>,
    tls: Option<super::tls::Tls>,
    stop: watch::Receiver<bool>,
) {
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
        let mut tasks = Vec::new();
        for (udp, tcp) in sockets.plain {
            match (
                tokio::net::UdpSocket::from_std(udp),
                tokio::net::TcpListener::from_std(tcp),
            ) {
                (Ok(u), Ok(t)) => {
                    tasks.push(tokio::spawn(udp_loop(
                        Arc::new(u),
                        pipeline.clone(),
                        stop.clone(),
                    )));
                    tasks.push(tokio::spawn(super::tcp::serve(
                        t,
                        pipeline.clone(),
                        conns.clone(),
                        stop.clone(),
                    )));
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot register socket");
                }
            }
        }
        if let Some(tls) = tls {
            for l in sockets.dot {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => tasks.push(tokio::spawn(super::tls::serve_dot(
                        l,
                        tls.clone(),
                        pipeline.clone(),
                        stop.clone(),
                    ))),
                    Err(e) => tracing::error!(error = %e, "cannot register DoT socket"),
                }
            }
            for l in sockets.doh {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => tasks.push(tokio::spawn(super::doh::serve(
                        l,
                        tls.clone(),
                        pipeline.clone(),
                        stop.clone(),
                    ))),
                    Err(e) => tracing::error!(error = %e, "cannot register DoH socket"),
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    // Dropping the runtime ends the connection tasks still running.
}

/// One UDP socket's loop: reads every waiting packet, runs the pipeline's synchronous stages
/// on each and sends the replies of the batch together; a query that needs the backend
/// continues on a task. Stops when `stop` turns true.
async fn udp_loop(
    socket: Arc<tokio::net::UdpSocket>,
    pipeline: Arc<Pipeline>,
    mut stop: watch::Receiver<bool>,
) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut rx = super::batch::RecvBatch::default();
    let mut tx = super::batch::SendBatch::default();
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
            let now = Now::read();
            for i in 0..n {
                let (packet, src) = rx.get(i);
                let Some(src) = src.filter(|s| s.port() != 0) else {
                    continue;
                };
                let client = Client {
                    addr: src,
                    transport: Transport::Udp,
                };
                match pipeline.start(packet, client, now, tx.next_buf()) {
                    Step::Answered => tx.push(src),
                    Step::Silent => {}
                    Step::Pending(p) => {
                        let (pipeline, socket) = (pipeline.clone(), socket.clone());
                        tokio::spawn(async move {
                            let mut out = Vec::with_capacity(512);
                            if pipeline.finish(p, &mut out).await {
                                let _ = socket.send_to(&out, src).await;
                            }
                        });
                    }
                }
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
