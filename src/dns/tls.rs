//! TLS for DNS over TLS (RFC 7858) and DNS over HTTPS (RFC 8484): the certificate, reloaded
//! when its files change, and the DoT listener.
//!
//! rustls with TLS 1.2 and 1.3 only. The certificate chain and key come from PEM files; a
//! background check notices a renewed certificate (certbot, an ACME client, a config-management
//! push) and new handshakes use it, while open connections keep the one they started with. A
//! broken new file keeps the old certificate (logged). A client has
//! `tls.handshake_timeout_secs` to complete its handshake, and connections are limited per
//! client and in total like DNS over TCP ([`crate::net`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::{Pipeline, Transport};
use crate::net::{Connections, accept};

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key does not suit TLS (or the certificate).
    #[error("{path}: unusable private key: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// The certificate in use, swapped whole when its files change.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    certificate: PathBuf,
    key: PathBuf,
}

fn load(certificate: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file = |path: &Path, message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| file(certificate, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file(certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(file(certificate, "no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, e.to_string()))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            message: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| TlsError::Key {
        path: key.to_owned(),
        message: format!("it does not belong to the certificate: {e}"),
    })?;
    Ok(ck)
}

/// Size and modification time of a file, to notice a new version.
fn stamp(p: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl CertStore {
    /// Loads the certificate (fails at start-up when it cannot be used).
    pub fn open(certificate: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(load(certificate, key)?),
            certificate: certificate.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// Checks the files every `period` and swaps in a new certificate when they changed; a
    /// broken new version is logged and the old certificate kept. Runs until dropped.
    pub async fn watch(self: Arc<Self>, period: Duration) {
        let mut seen = (stamp(&self.certificate), stamp(&self.key));
        loop {
            tokio::time::sleep(period).await;
            let now = (stamp(&self.certificate), stamp(&self.key));
            if now == seen {
                continue;
            }
            seen = now;
            match load(&self.certificate, &self.key) {
                Ok(ck) => {
                    self.current.store(Arc::new(ck));
                    metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "ok").increment(1);
                    tracing::info!(certificate = %self.certificate.display(), "TLS certificate reloaded: new connections use it");
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "failed")
                        .increment(1);
                    tracing::error!(error = %e, "new TLS certificate unusable; the previous one stays in use");
                }
            }
        }
    }

    /// A server configuration using this certificate, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap_or_else(|_| {
                // ring supports both versions; this cannot fail, but never panic on it.
                rustls::ServerConfig::builder()
            })
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The TLS set-up shared by the serving threads.
#[derive(Clone)]
pub struct Tls {
    /// DoT handshakes (ALPN `dot`).
    pub dot: TlsAcceptor,
    /// DoH handshakes (ALPN `h2`, `http/1.1`).
    pub doh: TlsAcceptor,
    /// Time to complete a handshake.
    pub handshake_timeout: Duration,
    /// DoT connections.
    pub dot_conns: Arc<Connections>,
    /// DoH connections.
    pub doh_conns: Arc<Connections>,
}

impl Tls {
    /// The set-up for a configuration (its certificate already loaded into `store`).
    pub fn new(c: &crate::config::TlsConfig, store: &Arc<CertStore>) -> Self {
        let limits = crate::net::Limits {
            total: c
                .max_connections
                .min(crate::net::open_file_limit() / 4)
                .max(1),
            per_client: c.connections_per_client.max(1),
            idle: Duration::from_secs(c.idle_timeout_secs.max(1)),
            pipeline: c.max_streams.max(1),
        };
        Self {
            dot: TlsAcceptor::from(store.server_config(&[b"dot"])),
            doh: TlsAcceptor::from(store.server_config(&[b"h2", b"http/1.1"])),
            handshake_timeout: Duration::from_secs(c.handshake_timeout_secs.max(1)),
            dot_conns: Connections::new(limits, "tls"),
            doh_conns: Connections::new(limits, "https"),
        }
    }
}

/// The handshake of an admitted connection, bounded in time and counted.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
    transport: Transport,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let _ = stream.set_nodelay(true);
    let label = transport.label();
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            metrics::counter!(crate::metrics::TLS_HANDSHAKES, "transport" => label, "result" => "ok")
                .increment(1);
            Some(s)
        }
        Ok(Err(e)) => {
            metrics::counter!(crate::metrics::TLS_HANDSHAKES, "transport" => label, "result" => "failed")
                .increment(1);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!(crate::metrics::TLS_HANDSHAKES, "transport" => label, "result" => "timeout")
                .increment(1);
            None
        }
    }
}

/// Accepts DNS-over-TLS connections until `stop` turns true.
pub async fn serve_dot(
    listener: TcpListener,
    tls: Tls,
    pipeline: Arc<Pipeline>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, peer, slot)) = accept(&listener, &tls.dot_conns, &mut stop).await {
        let (acceptor, timeout, pipeline, stop) = (
            tls.dot.clone(),
            tls.handshake_timeout,
            pipeline.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let Some(tls_stream) = handshake(&acceptor, stream, timeout, Transport::Tls).await
            else {
                return;
            };
            super::tcp::connection(tls_stream, peer, Transport::Tls, pipeline, slot, stop).await;
        });
    }
}
