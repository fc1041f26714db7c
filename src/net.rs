//! Limits shared by every stream listener (DNS over TCP, the cleanup page, the admin API, and
//! later DoT and DoH): connections per client and in total, the idlest connection closed to
//! make room at the limit, and back-off when `accept` fails.
//!
//! A protective resolver is attacked by the very machines it quarantines, and the cleanup page
//! faces exactly those machines: no listener may let one host hold enough connections or file
//! descriptors to lock others out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Connection limits of one stream transport.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections in all.
    pub total: usize,
    /// Open connections per client address (IPv6: per /64).
    pub per_client: usize,
    /// Idle time before a connection with nothing in flight is closed.
    pub idle: Duration,
    /// Queries of one connection answered at once.
    pub pipeline: usize,
}

impl Limits {
    /// DNS over TCP as configured, with the total capped by the open-file limit (a quarter of
    /// it: the rest is for UDP, upstream queries, the web listeners and the state database).
    pub fn dns_tcp(c: &crate::config::ListenConfig) -> Self {
        Self {
            total: c.tcp_max_connections.min(open_file_limit() / 4).max(1),
            per_client: c.tcp_connections_per_client.max(1),
            idle: Duration::from_secs(c.tcp_idle_timeout_secs.max(1)),
            pipeline: c.tcp_pipeline.max(1),
        }
    }

    /// An HTTP listener: `total` and `per_client` connections, `idle` to send a request's
    /// headers (also between requests), the total capped by an eighth of the open-file limit.
    pub fn http(total: usize, per_client: usize, idle: Duration) -> Self {
        Self {
            total: total.min(open_file_limit() / 8).max(1),
            per_client: per_client.max(1),
            idle,
            pipeline: 1,
        }
    }
}

/// The soft open-file limit of the process, raised to the hard limit first (what a server
/// should have; the default soft limit of 1024 is too small for thousands of connections).
pub fn open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// What a client's connections are counted by: its address (IPv4) or its /64 (IPv6, where one
/// household has a whole prefix).
fn client_key(ip: IpAddr) -> IpAddr {
    match crate::policy::prefix::canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

struct Open {
    client: IpAddr,
    /// Asked to close (counted until it has, never asked twice).
    closing: bool,
    /// Milliseconds since the table's epoch of the last complete query or reply.
    active: Arc<AtomicU64>,
    busy: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Open>,
    per_client: HashMap<IpAddr, usize>,
    /// Connections asked to close that have not yet.
    closing: usize,
}

/// Every open connection of one transport, across serving threads.
pub struct Connections {
    limits: Limits,
    epoch: Instant,
    table: Mutex<Table>,
    transport: &'static str,
}

/// A connection's place in the table; dropping it frees the place.
pub struct Slot {
    id: u64,
    conns: Arc<Connections>,
    /// Bumped on every complete query and reply.
    pub active: Arc<AtomicU64>,
    /// Queries in flight.
    pub busy: Arc<AtomicUsize>,
    /// Notified when the connection must close (evicted for a newer one, or shutdown).
    pub close: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.conns.lock();
        if let Some(o) = t.open.remove(&self.id) {
            if o.closing {
                t.closing -= 1;
            }
            let left = t.per_client.get_mut(&o.client).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) {
                t.per_client.remove(&o.client);
            }
        }
        metrics::gauge!(crate::metrics::CONNECTIONS_OPEN, "transport" => self.conns.transport)
            .set(t.open.len() as f64);
    }
}

/// Marks a connection's activity from wherever its requests are handled.
#[derive(Clone)]
pub struct Activity {
    active: Arc<AtomicU64>,
    conns: Arc<Connections>,
}

impl Activity {
    /// Marks activity now.
    pub fn touch(&self) {
        self.active
            .store(self.conns.millis(Instant::now()), Ordering::Relaxed);
    }
}

impl Slot {
    /// A handle that marks this connection's activity.
    pub fn activity(&self) -> Activity {
        Activity {
            active: self.active.clone(),
            conns: self.conns.clone(),
        }
    }

    /// The limits of the listener it belongs to.
    pub fn limits(&self) -> Limits {
        self.conns.limits
    }

    /// Marks activity now.
    pub fn touch(&self) {
        self.active
            .store(self.conns.millis(Instant::now()), Ordering::Relaxed);
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client has its share of connections open.
    PerClient,
    /// Every place is taken and none is idle.
    Full,
}

impl Connections {
    /// An empty table with these limits; `transport` labels metrics (`tcp`, `tls`, `https`).
    pub fn new(limits: Limits, transport: &'static str) -> Arc<Self> {
        Arc::new(Self {
            limits,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            transport,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Asks the connection idle the longest (nothing in flight) to close; `true` if there was
    /// one.
    pub fn evict_idlest(&self) -> bool {
        let mut t = self.lock();
        let victim = t
            .open
            .values_mut()
            .filter(|o| !o.closing && o.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|o| o.active.load(Ordering::Relaxed));
        match victim {
            Some(o) => {
                o.closing = true;
                o.close.notify_one();
                t.closing += 1;
                metrics::counter!(crate::metrics::CONNECTIONS_EVICTED, "transport" => self.transport)
                    .increment(1);
                true
            }
            None => false,
        }
    }

    /// A place for a new connection from `peer`, or why not. At the total limit the idlest
    /// connection is asked to close and the new one admitted.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let client = client_key(peer);
        let full = {
            let t = self.lock();
            if t.per_client.get(&client).copied().unwrap_or(0) >= self.limits.per_client {
                drop(t);
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "transport" => self.transport, "why" => "per_client").increment(1);
                return Err(Refusal::PerClient);
            }
            t.open.len() - t.closing >= self.limits.total
        };
        if full && !self.evict_idlest() {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "transport" => self.transport, "why" => "full").increment(1);
            return Err(Refusal::Full);
        }
        let mut t = self.lock();
        let id = t.next;
        t.next += 1;
        let slot = Slot {
            id,
            conns: self.clone(),
            active: Arc::new(AtomicU64::new(self.millis(Instant::now()))),
            busy: Arc::new(AtomicUsize::new(0)),
            close: Arc::new(Notify::new()),
        };
        t.open.insert(
            id,
            Open {
                client,
                closing: false,
                active: slot.active.clone(),
                busy: slot.busy.clone(),
                close: slot.close.clone(),
            },
        );
        *t.per_client.entry(client).or_insert(0) += 1;
        metrics::gauge!(crate::metrics::CONNECTIONS_OPEN, "transport" => self.transport)
            .set(t.open.len() as f64);
        Ok(slot)
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every connection to close (shutdown).
    pub fn close_all(&self) {
        for o in self.lock().open.values_mut() {
            o.closing = true;
            o.close.notify_one();
        }
    }
}

/// The next connection that `conns` admits, `None` once `stop` turns true: the accept loop of
/// every TCP listener (DNS over TCP, TLS and HTTPS, the page and the admin API). Refused
/// connections are closed at once; failed accepts back off (see [`accept_backoff`]).
pub async fn accept(
    listener: &tokio::net::TcpListener,
    conns: &Arc<Connections>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr, Slot)> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                if let Ok(slot) = conns.admit(peer.ip()) {
                    return Some((stream, peer, slot));
                }
                drop(stream); // refused: closed at once
            }
            Err(e) => accept_backoff(conns, &e, &mut backoff).await,
        }
    }
}

/// Waits out an `accept` failure without spinning: out of file descriptors, the idlest
/// connection is closed first.
pub async fn accept_backoff(conns: &Connections, e: &std::io::Error, backoff: &mut Duration) {
    let no_fds = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
    if no_fds {
        conns.evict_idlest();
        tracing::warn!(transport = conns.transport, error = %e, "out of file descriptors: closing the idlest connection and backing off (raise LimitNOFILE)");
    } else {
        tracing::debug!(transport = conns.transport, error = %e, "accept failed");
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn limits(total: usize, per_client: usize) -> Limits {
        Limits {
            total,
            per_client,
            idle: Duration::from_secs(10),
            pipeline: 4,
        }
    }

    #[test]
    fn per_client_and_total_limits_and_idlest_eviction() {
        let c = Connections::new(limits(3, 2), "tcp");
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let s1 = c.admit(a).expect("first");
        let s2 = c.admit(a).expect("second");
        assert_eq!(c.admit(a).err(), Some(Refusal::PerClient));
        // An IPv6 household is one client: its /64.
        let v6a: IpAddr = "2001:db8:1:2::10".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:1:2::20".parse().expect("ip");
        let s3 = c.admit(v6a).expect("third");
        // Full: the idlest (s1, oldest activity) is asked to close; the newcomer gets in.
        s1.active.store(0, Ordering::Relaxed);
        s2.active.store(100, Ordering::Relaxed);
        s3.active.store(100, Ordering::Relaxed);
        let evicted = s1.close.notified();
        let s4 = c.admit(b).expect("admitted by evicting the idlest");
        futures_util::FutureExt::now_or_never(evicted).expect("s1 was told to close");
        drop(s1);
        drop(s4);
        assert_eq!(c.len(), 2);
        let _s5 = c.admit(v6b).expect("the household's second connection");
        assert_eq!(c.admit(v6b).err(), Some(Refusal::PerClient));
    }

    #[test]
    fn busy_connections_are_never_evicted() {
        let c = Connections::new(limits(1, 5), "tcp");
        let s = c.admit("192.0.2.1".parse().expect("ip")).expect("first");
        s.busy.store(1, Ordering::Relaxed);
        assert_eq!(
            c.admit("192.0.2.2".parse().expect("ip")).err(),
            Some(Refusal::Full)
        );
    }
}
