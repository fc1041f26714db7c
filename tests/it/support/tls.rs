//! TLS test material: a private CA and server certificates made with `openssl`, and small DoT
//! and DoH clients on rustls, so answers over TLS can be compared byte for byte.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The name the test certificates are for.
pub const HOST: &str = "dns.test";

/// A private CA in `dir` (`ca.pem`, `ca.key`).
pub fn make_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("ca.pem");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=cleanpipe test CA",
        ])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&ca));
    ca
}

/// A server certificate for [`HOST`] signed by the CA in `dir`, written to `cert` and `key`
/// (serial `serial`, so two versions can be told apart).
pub fn make_server_cert(dir: &Path, cert: &Path, key: &Path, serial: u32) {
    make_cert_for(dir, cert, key, serial, &format!("DNS:{HOST}"));
}

/// A server certificate for `san` (`DNS:name` or `IP:address`) signed by the CA in `dir`.
pub fn make_cert_for(dir: &Path, cert: &Path, key: &Path, serial: u32, san: &str) {
    let csr = dir.join("server.csr");
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={HOST}"),
        ])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
    )
    .expect("ext");
    run(Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-days",
            "2",
            "-set_serial",
            &serial.to_string(),
        ])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(cert));
}

fn run(c: &mut Command) {
    let out = c.output().expect("openssl runs (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client configuration trusting the CA.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca").flatten() {
        roots.add(c).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// An open DoT connection from `source`.
pub struct Dot {
    s: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl Dot {
    /// Connects and completes the handshake.
    pub fn connect(server: SocketAddr, source: IpAddr, ca: &Path) -> std::io::Result<Dot> {
        let tcp = super::tcp_connect(server, source)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let conn = rustls::ClientConnection::new(
            client_config(ca, &[b"dot"]),
            ServerName::try_from(HOST).expect("name"),
        )
        .map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Dot { s })
    }

    /// The serial number of the certificate the server presented (hex, from its DER).
    pub fn peer_certificate(&self) -> Vec<u8> {
        self.s
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// One query, one answer.
    pub fn exchange(&mut self, query: &[u8]) -> Option<Vec<u8>> {
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        self.s.write_all(&framed).ok()?;
        self.s.flush().ok()?;
        let mut len = [0u8; 2];
        self.s.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.s.read_exact(&mut buf).ok()?;
        Some(buf)
    }
}

/// One DoH POST over HTTP/1.1 from `source`; the DNS reply, or `None`.
pub fn doh_post(server: SocketAddr, source: IpAddr, ca: &Path, query: &[u8]) -> Option<Vec<u8>> {
    let tcp = super::tcp_connect(server, source).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let conn = rustls::ClientConnection::new(
        client_config(ca, &[b"http/1.1"]),
        ServerName::try_from(HOST).ok()?,
    )
    .ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST /dns-query HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/dns-message\r\nAccept: application/dns-message\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        query.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(query).ok()?;
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") || !head.contains("content-type: application/dns-message")
    {
        return None;
    }
    Some(all[split + 4..].to_vec())
}
