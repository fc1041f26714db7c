//! The service configuration: a serde mirror of `cleanpipe.yaml`.
//!
//! Every key has a default (documented on the field and in README), unknown keys are rejected,
//! and errors name the file, line and key. Parsing is split from I/O ([`Config::from_path`] reads,
//! [`Config::from_str`] parses) so tests can load configuration from a string.
//!
//! Relative paths in the file are resolved against the directory that holds the file, so a
//! configuration works the same wherever `cleanpipe` is started from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// The configuration that `cleanpipe serve` uses when no `--config` is given: the quick start.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/quickstart.yaml");

/// A configuration that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a bad value.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// The file (or `<embedded>`).
        file: String,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("{file}: {message}")]
    Invalid {
        /// The file (or `<embedded>`).
        file: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where DNS is served. Default: UDP and TCP on 127.0.0.1:5300.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Who may use the resolver. Default: loopback and private ranges only.
    #[serde(default)]
    pub clients: ClientsConfig,
    /// How names are resolved for allowed queries. Default: recursion from the IANA root.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// The answer cache. Default: 100,000 entries.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Where the policy (infected subscribers, enrolments, organisations, mode) and allowlists live.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Addresses that blocked names are pointed at (the cleanup page).
    #[serde(default)]
    pub sinkhole: SinkholeConfig,
    /// The admin HTTP API. Default: 127.0.0.1:8053, token required.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Durable runtime state (admin changes, alerts). Default: `cleanpipe-state.sqlite`.
    #[serde(default)]
    pub state: StateConfig,
    /// Logging. Default: `info` for cleanpipe, warnings for hickory, human-readable text.
    #[serde(default)]
    pub log: LogConfig,
    /// The cleanup page (walled garden). Default: 127.0.0.1:8080.
    #[serde(default)]
    pub web: WebConfig,
    /// Threat feeds (Response Policy Zones), evaluated in this order; the first match wins.
    /// Default: none.
    #[serde(default)]
    pub feeds: Vec<FeedConfig>,
    /// Automatic detection of infected subscribers from botnet feeds.
    #[serde(default)]
    pub detection: DetectionConfig,
    /// Alerts to whitelisted organisations and the CERT.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// What one host may make cleanpipe do.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// DNS over TLS and DNS over HTTPS.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// `tls:` — DNS over TLS (RFC 7858) and DNS over HTTPS (RFC 8484), with the same policy as
/// plain DNS.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first, for the name clients are configured with (Android's
    /// Private DNS and Apple's profiles check it). Required with `dot` or `doh`. Reloaded when
    /// the file changes; open connections keep theirs.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// DNS-over-TLS addresses (production: port 853). Default: none.
    #[serde(default)]
    pub dot: Vec<SocketAddr>,
    /// DNS-over-HTTPS addresses (production: port 443), path `/dns-query`, GET and POST,
    /// HTTP/2 and HTTP/1.1. Default: none.
    #[serde(default)]
    pub doh: Vec<SocketAddr>,
    /// Seconds a client has to complete the TLS handshake. Default: 5.
    #[serde(default = "default_handshake")]
    pub handshake_timeout_secs: u64,
    /// Seconds a DoT or DoH connection may stay idle. Default: 30.
    #[serde(default = "default_tls_idle")]
    pub idle_timeout_secs: u64,
    /// Open DoT and DoH connections each, in all (also capped at a quarter of the open-file
    /// limit). Default: 4096.
    #[serde(default = "default_tcp_max")]
    pub max_connections: usize,
    /// Open DoT and DoH connections per client address (IPv6: per /64). Default: 32.
    #[serde(default = "default_tls_per_client")]
    pub connections_per_client: usize,
    /// Concurrent HTTP/2 streams (queries) per DoH connection; queries pipelined on one DoT
    /// connection answered at once. Default: 100.
    #[serde(default = "default_streams")]
    pub max_streams: usize,
    /// Seconds between checks of the certificate files for a new version. Default: 10.
    #[serde(default = "default_cert_check")]
    pub reload_check_secs: u64,
}

fn default_handshake() -> u64 {
    5
}
fn default_tls_idle() -> u64 {
    30
}
fn default_tls_per_client() -> usize {
    32
}
fn default_streams() -> usize {
    100
}
fn default_cert_check() -> u64 {
    10
}

/// `limits:` — rate limits per client, per domain and for refusals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Queries per second per client (IPv6: per /64), bursts of twice that; over UDP the excess
    /// is dropped, over TCP refused. 0 = no limit. Default: 0.
    #[serde(default)]
    pub client_qps: u32,
    /// Never-cached names per second per client (random-subdomain floods); beyond it such
    /// queries never reach an upstream: dropped over UDP, SERVFAIL over TCP. 0 = no limit.
    /// Default: 100.
    #[serde(default = "default_new_names")]
    pub new_names_per_second: u32,
    /// Never-cached names a client may ask at once before the rate applies. Default: 500.
    #[serde(default = "default_new_names_burst")]
    pub new_names_burst: u32,
    /// Upstream queries in flight per client at most; more get SERVFAIL. 0 = no bound.
    /// Default: 64.
    #[serde(default = "default_client_outstanding")]
    pub client_outstanding: usize,
    /// Upstream queries in flight per domain (the last two labels of the name) at most.
    /// 0 = no bound. Default: 256.
    #[serde(default = "default_zone_outstanding")]
    pub zone_outstanding: usize,
    /// REFUSED answers per second to each unserved source network (/24, IPv6 /56); more are
    /// dropped, so cleanpipe cannot be used as a reflector. 0 = no limit. Default: 5.
    #[serde(default = "default_refused_rate")]
    pub refused_per_second: u32,
}

fn default_new_names() -> u32 {
    100
}
fn default_new_names_burst() -> u32 {
    500
}
fn default_client_outstanding() -> usize {
    64
}
fn default_zone_outstanding() -> usize {
    256
}
fn default_refused_rate() -> u32 {
    5
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            client_qps: 0,
            new_names_per_second: default_new_names(),
            new_names_burst: default_new_names_burst(),
            client_outstanding: default_client_outstanding(),
            zone_outstanding: default_zone_outstanding(),
            refused_per_second: default_refused_rate(),
        }
    }
}

/// `alerts:` — organisation alerting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// The CERT's webhook, which receives every alert event. Default: none.
    #[serde(default)]
    pub cert_webhook: Option<String>,
    /// HMAC secret for the CERT webhook. Default: `CLEANPIPE_CERT_SECRET` from the environment.
    #[serde(default)]
    pub cert_secret: Option<String>,
    /// Reminders, in percent of the grace period elapsed. Default: `[50, 90]`.
    #[serde(default = "default_reminders")]
    pub reminders: Vec<u8>,
    /// Missed deadlines are counted as strikes over this many days. Default: 365.
    #[serde(default = "default_strike_days")]
    pub strike_window_days: u32,
    /// Seconds between checks of deadlines and the delivery outbox. Default: 5.
    #[serde(default = "default_tick")]
    pub tick_secs: u64,
    /// Seconds a webhook call may take. Default: 10.
    #[serde(default = "default_webhook_timeout")]
    pub webhook_timeout_secs: u64,
    /// Longest wait between delivery retries, in seconds. Default: 3600.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// The SMTP relay alert e-mails go through. Without it, alerts go by webhook only.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// The CERT's e-mail addresses, which receive every alert event (needs `smtp`).
    #[serde(default)]
    pub cert_email: Vec<String>,
    /// Language of e-mails to the CERT and to organisations that name none (`en`, `nl`, `fr`,
    /// `de`). Default: `en`.
    #[serde(default = "default_language")]
    pub language: String,
}

fn default_language() -> String {
    "en".into()
}

/// How the connection to the SMTP relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host.
    None,
}

/// `alerts.smtp:` — the relay alert e-mails are sent through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Relay host name (also the name its TLS certificate must carry).
    pub server: String,
    /// Port. Default: 587 (starttls), 465 (tls), 25 (none).
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login, if the relay needs one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, inline.
    #[serde(default)]
    pub password: Option<String>,
    /// Password, from a file (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Sender, e.g. `cleanpipe <abuse@isp.example>`.
    pub from: String,
    /// Extra CA certificate (PEM) to trust for the relay, e.g. an internal PKI.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds a delivery may take. Default: 30.
    #[serde(default = "default_smtp_timeout")]
    pub timeout_secs: u64,
}

fn default_smtp_timeout() -> u64 {
    30
}

fn default_reminders() -> Vec<u8> {
    vec![50, 90]
}
fn default_strike_days() -> u32 {
    365
}
fn default_tick() -> u64 {
    5
}
fn default_webhook_timeout() -> u64 {
    10
}
fn default_max_backoff() -> u64 {
    3600
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            cert_webhook: None,
            cert_secret: None,
            reminders: default_reminders(),
            strike_window_days: default_strike_days(),
            tick_secs: default_tick(),
            webhook_timeout_secs: default_webhook_timeout(),
            max_backoff_secs: default_max_backoff(),
            smtp: None,
            cert_email: Vec::new(),
            language: default_language(),
        }
    }
}

/// What a feed's matches do, overriding the zone's own actions (as BIND's `policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FeedAction {
    /// The action written in the zone (default).
    #[default]
    Given,
    /// NXDOMAIN for every trigger.
    Nxdomain,
    /// NODATA for every trigger.
    Nodata,
    /// No rewriting (the feed only exempts names from later feeds).
    Passthru,
    /// No answer.
    Drop,
    /// TC=1 over UDP.
    TcpOnly,
    /// The cleanup page's addresses.
    CleanupPage,
}

/// A TSIG key for zone transfers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigConfig {
    /// Key name, as the primary knows it.
    pub name: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: String,
    /// Base64 secret.
    pub secret: String,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".to_owned()
}

/// One threat feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Short name, shown in the Extended DNS Error, `explain` and metrics.
    pub name: String,
    /// An RPZ zone file (e.g. in `zones/`). Reloaded when it changes.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Or: the primary server to transfer the zone from (AXFR, then IXFR on refresh and NOTIFY).
    #[serde(default)]
    pub primary: Option<SocketAddr>,
    /// The zone's name. Required with `primary`; for files, default: the file's `$ORIGIN`/SOA.
    #[serde(default)]
    pub zone: Option<String>,
    /// TSIG key for transfers.
    #[serde(default)]
    pub tsig: Option<TsigConfig>,
    /// Override of the zone's actions. Default: `given`.
    #[serde(default)]
    pub action: FeedAction,
    /// Log and count matches but change no answer. Default: false.
    #[serde(default)]
    pub log_only: bool,
    /// The feed lists botnet signatures: a subscriber who looks one up is flagged infected
    /// (or, inside a whitelisted organisation, raises an alert). Default: false.
    #[serde(default)]
    pub botnet: bool,
    /// Family recorded for botnet detections when the zone names none. Default: the feed name.
    #[serde(default)]
    pub family: Option<String>,
    /// Seconds between SOA checks of a transferred zone. Default: the SOA's refresh, at most 3600.
    #[serde(default)]
    pub refresh_secs: Option<u64>,
    /// A transferred feed not confirmed by its primary for this many hours is reported stale
    /// (log warning, `/v1/status`, metric); its last good copy stays in use. Default: 24.
    #[serde(default = "default_feed_max_age")]
    pub max_age_hours: f64,
}

fn default_feed_max_age() -> f64 {
    24.0
}

/// `detection:` — flagging subscribers from botnet-feed lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    /// A host is flagged at most once per this many seconds (evidence is still counted). Default: 3600.
    #[serde(default = "default_debounce_secs")]
    pub debounce_secs: u64,
    /// Prefix length flagged for an IPv6 client (its delegation). Default: 56.
    #[serde(default = "default_v6_len")]
    pub ipv6_prefix_len: u8,
}

fn default_debounce_secs() -> u64 {
    3600
}
fn default_v6_len() -> u8 {
    56
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            debounce_secs: default_debounce_secs(),
            ipv6_prefix_len: default_v6_len(),
        }
    }
}

/// `web:` — the cleanup page that sinkholed names lead to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// HTTP listen addresses: the sinkhole addresses, port 80 in production.
    /// Default: `["127.0.0.1:8080"]`. An empty list disables the page.
    #[serde(default = "default_web_listen")]
    pub listen: Vec<SocketAddr>,
    /// The ISP's name as shown on the pages. Default: `your internet provider`.
    #[serde(default = "default_isp_name")]
    pub isp_name: String,
    /// Support web site shown on the pages (add its name to `policy.remediation_extra`).
    #[serde(default)]
    pub support_url: Option<String>,
    /// Support phone number.
    #[serde(default)]
    pub support_phone: Option<String>,
    /// Support e-mail address.
    #[serde(default)]
    pub support_email: Option<String>,
    /// Absolute URL of the cleanup page, announced by the captive-portal API (RFC 8908).
    /// Default: `http://<first listen address>/`.
    #[serde(default)]
    pub portal_url: Option<String>,
    /// Hours a self-release ("I have cleaned my computer") lifts the quarantine. Default: 24.
    #[serde(default = "default_release_hours")]
    pub self_release_hours: u32,
    /// Self-releases allowed per subscriber in 30 days; 0 disables the button. Default: 3.
    #[serde(default = "default_release_max")]
    pub self_release_max: u32,
    /// Directory with `i18n/*.yaml`, `malware.yaml` and `antivirus.yaml` replacing the built-in
    /// texts (copy `web/` from the repository to start). Default: the built-in texts.
    #[serde(default)]
    pub content_dir: Option<PathBuf>,
    /// Open connections to the page in all (also capped at an eighth of the open-file limit).
    /// Default: 1024.
    #[serde(default = "default_web_max_conns")]
    pub max_connections: usize,
    /// Open connections to the page per client address (IPv6: per /64). Default: 16.
    #[serde(default = "default_web_per_client")]
    pub connections_per_client: usize,
    /// Seconds a client has to send a request's headers (also the idle time allowed between
    /// requests on one connection). Default: 10.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
}

fn default_web_max_conns() -> usize {
    1024
}
fn default_web_per_client() -> usize {
    16
}
fn default_header_timeout() -> u64 {
    10
}

fn default_web_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
}
fn default_isp_name() -> String {
    "your internet provider".to_owned()
}
fn default_release_hours() -> u32 {
    24
}
fn default_release_max() -> u32 {
    3
}

impl WebConfig {
    /// True when the cleanup page can tell subscribers whom to contact.
    pub fn has_support_contact(&self) -> bool {
        [&self.support_url, &self.support_phone, &self.support_email]
            .iter()
            .any(|c| c.as_deref().is_some_and(|s| !s.trim().is_empty()))
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_web_listen(),
            isp_name: default_isp_name(),
            support_url: None,
            support_phone: None,
            support_email: None,
            portal_url: None,
            self_release_hours: default_release_hours(),
            self_release_max: default_release_max(),
            max_connections: default_web_max_conns(),
            connections_per_client: default_web_per_client(),
            header_timeout_secs: default_header_timeout(),
            content_dir: None,
        }
    }
}

/// `listen:` — the DNS sockets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Addresses served over both UDP and TCP. Default: `["127.0.0.1:5300"]`.
    #[serde(default = "default_dns_listen")]
    pub dns: Vec<SocketAddr>,
    /// Serving threads, each with its own SO_REUSEPORT sockets. Default: 0 = one per CPU core.
    #[serde(default)]
    pub threads: usize,
    /// Seconds an idle TCP connection is kept open. Default: 10.
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_secs: u64,
    /// UDP receive buffer asked of the kernel per socket, in bytes. Default: 4 MiB.
    #[serde(default = "default_udp_buffer")]
    pub udp_receive_buffer: usize,
    /// Open DNS-over-TCP connections at most, over all threads; at the limit the connection
    /// idle the longest is closed for a new one. Also capped by the open-file limit (a quarter
    /// of it). Default: 4096.
    #[serde(default = "default_tcp_max")]
    pub tcp_max_connections: usize,
    /// Open DNS-over-TCP connections per client address at most (IPv6: per /64). Default: 64.
    #[serde(default = "default_tcp_per_client")]
    pub tcp_connections_per_client: usize,
    /// Queries answered at once on one TCP connection (pipelining); more wait. Default: 32.
    #[serde(default = "default_tcp_pipeline")]
    pub tcp_pipeline: usize,
    /// Secret keying DNS cookies (32 hex digits). Instances answering the same clients (a
    /// fleet behind anycast or a load balancer) must share it; else a random one per start.
    /// Default: random.
    #[serde(default)]
    pub cookie_secret: Option<String>,
}

impl ListenConfig {
    /// The cookie secret as bytes, if one is configured (validated at load).
    pub fn cookie_key(&self) -> Option<[u8; 16]> {
        let hex = self.cookie_secret.as_deref()?.trim();
        if hex.len() != 32 {
            return None;
        }
        let mut key = [0u8; 16];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(key)
    }
}

fn default_tcp_max() -> usize {
    4096
}
fn default_tcp_per_client() -> usize {
    64
}
fn default_tcp_pipeline() -> usize {
    32
}

/// `clients:` — access control. cleanpipe is never an open resolver by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// Networks whose queries are answered; everyone else gets REFUSED.
    /// Default: loopback, RFC 1918, 100.64.0.0/10 (CGNAT), fc00::/7 (ULA) and link-local.
    #[serde(default = "default_allowed_clients")]
    pub allow: Vec<IpNet>,
}

/// Which resolution backend answers allowed queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolverMode {
    /// Iterative resolution from the root hints.
    Recursive,
    /// Forward to the `forward:` upstreams.
    Forward,
}

/// `resolver:` — the resolution backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// `recursive` (default) or `forward`.
    #[serde(default = "default_mode")]
    pub mode: ResolverMode,
    /// Root hints zone file for `recursive`. Default: the IANA hints built into the binary
    /// (also shipped as `zones/root.hints`). Point it at a private root for tests or labs.
    #[serde(default)]
    pub root_hints: Option<PathBuf>,
    /// Upstream resolvers for `forward` mode: `- address: 192.0.2.53` with optional `port:` (53).
    #[serde(default)]
    pub forward: Vec<Upstream>,
    /// Seconds before one upstream query is abandoned. Default: 2.
    #[serde(default = "default_query_timeout")]
    pub query_timeout_secs: u64,
    /// Seconds before a whole resolution is abandoned and the client gets SERVFAIL. Default: 5.
    #[serde(default = "default_resolution_timeout")]
    pub resolution_timeout_secs: u64,
    /// Allow the recursor to query name servers on loopback and private addresses. Default:
    /// false (they are refused, as a protection against rebinding); set true for a private root.
    #[serde(default)]
    pub allow_private_servers: bool,
    /// DNSSEC validation in recursive mode.
    #[serde(default)]
    pub dnssec: DnssecConfig,
}

/// `resolver.dnssec:` — DNSSEC validation (recursive mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnssecConfig {
    /// Validate answers: AD on validated answers for clients that set DO or AD, SERVFAIL with
    /// EDE 6 (DNSSEC Bogus) on bogus data, unless the client sets CD. Default: true.
    #[serde(default = "default_true")]
    pub validate: bool,
    /// File of DNSKEY records trusted for the root (zone-file lines, `;` comments). Default:
    /// the IANA root keys (KSK-2017 and KSK-2024, shipped as `zones/root.key`). With private
    /// `root_hints` and no trust anchor, validation is off (a private root is not signed by the
    /// IANA keys).
    #[serde(default)]
    pub trust_anchor: Option<PathBuf>,
    /// Domains whose DNSSEC is known to be broken: answers at or below them are not validated
    /// (negative trust anchors, RFC 7646). Remove each once the domain is fixed.
    #[serde(default)]
    pub negative_trust_anchors: Vec<String>,
}

impl Default for DnssecConfig {
    fn default() -> Self {
        Self {
            validate: true,
            trust_anchor: None,
            negative_trust_anchors: Vec::new(),
        }
    }
}

/// One upstream resolver for forward mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Its IPv4 or IPv6 address.
    pub address: IpAddr,
    /// Its port. Default: 53.
    #[serde(default = "default_dns_port")]
    pub port: u16,
    /// A trusted DNSSEC validator (your own validating resolver, reached over a path you
    /// trust): cleanpipe asks it with DO, passes on its AD bit to clients that set DO or AD, and
    /// passes a client's CD bit to it. Default: false (AD from it is ignored).
    #[serde(default)]
    pub validator: bool,
}

/// `cache:` — the answer cache in front of both backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Maximum number of cached answers (positive and negative). Default: 100,000. 0 disables.
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
    /// Answers are cached at least this many seconds. Default: 0.
    #[serde(default)]
    pub min_ttl: u32,
    /// Answers are cached at most this many seconds. Default: 86,400 (one day).
    #[serde(default = "default_max_ttl")]
    pub max_ttl: u32,
    /// NXDOMAIN/NODATA answers are cached at most this many seconds. Default: 3,600.
    #[serde(default = "default_negative_ttl")]
    pub negative_max_ttl: u32,
    /// Seconds a SERVFAIL is remembered, to protect upstreams from retry storms. Default: 5.
    #[serde(default = "default_servfail_ttl")]
    pub servfail_ttl: u32,
    /// Serve-stale (RFC 8767): when refreshing an expired answer fails, the expired answer is
    /// served (TTL 30, EDE 3) for at most this many seconds after it expired. Default: 86,400
    /// (one day); 0 disables.
    #[serde(default = "default_serve_stale")]
    pub serve_stale_secs: u32,
    /// Refresh an answer in the background when it is asked for in the last tenth of its TTL,
    /// so that popular names never make a subscriber wait for the upstream. Default: true.
    #[serde(default = "default_true")]
    pub prefetch: bool,
}

fn default_serve_stale() -> u32 {
    86_400
}

/// `policy:` — where policy comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of policy files (`infected*.yaml|csv`, `enrolments*.yaml`,
    /// `organisations*.yaml`, `mode.yaml`). Default: none (no policy: everyone resolves normally).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Directory of curated allowlists (services, profiles, remediation, probes).
    /// Default: `allowlists` next to the configuration file. A missing or empty directory is
    /// an error unless `trusted_zone` is `false`.
    #[serde(default = "default_allowlists")]
    pub allowlists: PathBuf,
    /// Shortest IPv4 prefix that may be flagged infected or enrolled without `force`: a `/0`
    /// would quarantine everyone. Default: 16.
    #[serde(default = "default_min_v4")]
    pub min_prefix_v4: u8,
    /// The same for IPv6. Default: 32.
    #[serde(default = "default_min_v6")]
    pub min_prefix_v6: u8,
    /// `false` runs without any trusted zone: no allowlists are read, enrolments and global
    /// trusted-only mode are refused, and quarantined subscribers reach only
    /// `remediation_extra`. Default: `true`.
    #[serde(default = "default_true")]
    pub trusted_zone: bool,
    /// Milliseconds to wait for a burst of file changes to settle before reloading. Default: 200.
    #[serde(default = "default_debounce")]
    pub reload_debounce_ms: u64,
    /// Scheduling niceness (0–19) of the thread that recompiles the policy after the first
    /// load, so a big recompile yields the CPU to the serving threads. 0 keeps normal
    /// priority. Default: 19.
    #[serde(default = "default_reload_nice")]
    pub reload_nice: u8,
    /// Profile used for everyone during global trusted-only mode. Default: `clean-pipe`.
    #[serde(default = "default_global_profile")]
    pub global_profile: String,
    /// Most names one household may add to its enrolment (`allow:`). Default: 50.
    #[serde(default = "default_household_max_names")]
    pub household_max_names: usize,
    /// Extra remediation names (e.g. the ISP's own support site) that quarantined subscribers
    /// may still reach. Default: none.
    #[serde(default)]
    pub remediation_extra: Vec<String>,
}

/// `sinkhole:` — the walled garden.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkholeConfig {
    /// IPv4 address(es) of the cleanup page returned for A queries. Default: 127.0.0.1.
    #[serde(default = "default_sinkhole_v4")]
    pub ipv4: Vec<Ipv4Addr>,
    /// IPv6 address(es) of the cleanup page returned for AAAA queries. Default: ::1.
    #[serde(default = "default_sinkhole_v6")]
    pub ipv6: Vec<Ipv6Addr>,
    /// TTL of sinkhole answers in seconds: short, so a cleaned host recovers fast. Default: 60.
    #[serde(default = "default_sinkhole_ttl")]
    pub ttl: u32,
    /// Information page for trusted-zone profiles with `blocked: info-page`. Default: the same
    /// addresses as the cleanup page.
    #[serde(default)]
    pub info_ipv4: Option<Vec<Ipv4Addr>>,
    /// IPv6 of the information page. Default: the same as `ipv6`.
    #[serde(default)]
    pub info_ipv6: Option<Vec<Ipv6Addr>>,
}

/// `admin:` — the admin HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address. Default: 127.0.0.1:8053 (loopback only). `null` disables the API.
    #[serde(default = "default_admin_listen")]
    pub listen: Option<SocketAddr>,
    /// Bearer token. Default: none, in which case `CLEANPIPE_ADMIN_TOKEN` from the environment is
    /// used; with neither, every call is refused with 401.
    #[serde(default)]
    pub token: Option<String>,
    /// More tokens, each with a name (recorded in the audit log) and the scopes it may use:
    /// e.g. the customer portal's token with `provisioning` only. `admin.token` is the token
    /// named `admin` with every scope.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Open connections to the API in all; per client at most 16, headers within
    /// `web.header_timeout_secs`. Default: 64.
    #[serde(default = "default_admin_max_conns")]
    pub max_connections: usize,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Everything.
    Admin,
    /// Trusted-zone enrolments and households' additions, removals and schedules (the
    /// customer portal).
    Provisioning,
    /// Infection flags, organisation alerts, reinstatements, `explain`.
    AbuseDesk,
    /// Global mode, reloads, `explain`, the trusted zone's misses report.
    Noc,
    /// Every `GET`: status, enrolments, explain, audit, alerts, misses.
    ReadOnly,
}

impl Scope {
    /// The name in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Provisioning => "provisioning",
            Scope::AbuseDesk => "abuse-desk",
            Scope::Noc => "noc",
            Scope::ReadOnly => "read-only",
        }
    }
}

/// One entry of `admin.tokens`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name recorded in the audit log with every change made with this token.
    pub name: String,
    /// The secret, inline.
    #[serde(default)]
    pub token: Option<String>,
    /// The secret, read from a file (first line; better than inline for a file kept in git).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// What the token may do.
    pub scopes: Vec<Scope>,
}

/// A usable admin token: name, secret, scopes.
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// Name recorded in the audit log.
    pub name: String,
    /// The secret.
    pub secret: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
}

fn default_admin_max_conns() -> usize {
    64
}

/// `state:` — durable runtime state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// SQLite database file (created if missing). Default: `cleanpipe-state.sqlite` next to the
    /// configuration file.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// Directory holding the last good copy of every transferred feed (one zone file each,
    /// written atomically after each transfer and loaded at start-up before the first answer).
    /// Default: `cleanpipe-feeds` next to the state database.
    #[serde(default)]
    pub feeds_dir: Option<PathBuf>,
}

impl StateConfig {
    /// Where transferred feeds are kept.
    pub fn feeds_dir(&self) -> PathBuf {
        self.feeds_dir.clone().unwrap_or_else(|| {
            self.path
                .parent()
                .unwrap_or(Path::new("."))
                .join("cleanpipe-feeds")
        })
    }
}

/// `log:` — logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter. Default: `info,hickory_net=error,hickory_proto=error`.
    /// `RUST_LOG` overrides it.
    #[serde(default = "default_log_filter")]
    pub filter: String,
    /// `text` (default) or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A JSON line per policy action (sinkhole, block, alert, feed match). Default: off.
    #[serde(default)]
    pub actions: Option<ActionLogConfig>,
    /// dnstap output (Frame Streams over a Unix socket). Default: off.
    #[serde(default)]
    pub dnstap: Option<DnstapConfig>,
}

/// How client addresses appear in the action log and dnstap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientPrivacy {
    /// IPv4 /24, IPv6 /48 (the default: enough for the NOC, not a subscriber).
    #[default]
    Truncate,
    /// A keyed hash (HMAC-SHA256 with `hash_key`): the same client gives the same value, and
    /// nobody without the key can tell which.
    Hash,
    /// The full address.
    Full,
}

/// `log.actions:` — the policy-action log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionLogConfig {
    /// File the JSON lines are appended to (reopened when logrotate moves it).
    pub path: PathBuf,
    /// `truncate` (default), `hash` or `full`.
    #[serde(default)]
    pub client: ClientPrivacy,
    /// Key of `client: hash` (hex or text). Default: random at each start (hashes then do not
    /// link across restarts).
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Also log queries resolved normally. Default: false.
    #[serde(default)]
    pub all_queries: bool,
}

/// `log.dnstap:` — dnstap to a collector (fstrm_capture, a SIEM's dnstap input).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnstapConfig {
    /// The collector's Unix socket.
    pub socket: PathBuf,
    /// `identity` field of every message. Default: the host name.
    #[serde(default)]
    pub identity: Option<String>,
    /// Also send queries resolved normally (as every other resolver's dnstap does). Default:
    /// false: only policy actions.
    #[serde(default)]
    pub all_queries: bool,
    /// How client addresses are written (`full` is what dnstap tools expect). Default:
    /// `truncate`.
    #[serde(default)]
    pub client: ClientPrivacy,
    /// Key of `client: hash`.
    #[serde(default)]
    pub hash_key: Option<String>,
}

fn default_dns_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 5300))]
}
fn default_tcp_idle() -> u64 {
    10
}
fn default_udp_buffer() -> usize {
    4 << 20
}
fn default_allowed_clients() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}
fn default_mode() -> ResolverMode {
    ResolverMode::Recursive
}
fn default_query_timeout() -> u64 {
    2
}
fn default_resolution_timeout() -> u64 {
    5
}
fn default_dns_port() -> u16 {
    53
}
fn default_cache_entries() -> u64 {
    100_000
}
fn default_max_ttl() -> u32 {
    86_400
}
fn default_negative_ttl() -> u32 {
    3_600
}
fn default_servfail_ttl() -> u32 {
    5
}
fn default_min_v4() -> u8 {
    16
}
fn default_min_v6() -> u8 {
    32
}

fn default_true() -> bool {
    true
}

fn default_allowlists() -> PathBuf {
    PathBuf::from("allowlists")
}
fn default_debounce() -> u64 {
    200
}
fn default_reload_nice() -> u8 {
    19
}
fn default_household_max_names() -> usize {
    crate::policy::household::DEFAULT_MAX_NAMES
}

fn default_global_profile() -> String {
    "clean-pipe".to_owned()
}
fn default_sinkhole_v4() -> Vec<Ipv4Addr> {
    vec![Ipv4Addr::LOCALHOST]
}
fn default_sinkhole_v6() -> Vec<Ipv6Addr> {
    vec![Ipv6Addr::LOCALHOST]
}
fn default_sinkhole_ttl() -> u32 {
    60
}
fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 8053)))
}
fn default_state_path() -> PathBuf {
    PathBuf::from("cleanpipe-state.sqlite")
}
fn default_log_filter() -> String {
    "info,hickory_net=error,hickory_proto=error".to_owned()
}
fn default_log_format() -> String {
    "text".to_owned()
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            dns: default_dns_listen(),
            threads: 0,
            tcp_idle_timeout_secs: default_tcp_idle(),
            udp_receive_buffer: default_udp_buffer(),
            tcp_max_connections: default_tcp_max(),
            tcp_connections_per_client: default_tcp_per_client(),
            tcp_pipeline: default_tcp_pipeline(),
            cookie_secret: None,
        }
    }
}
impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            allow: default_allowed_clients(),
        }
    }
}
impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            root_hints: None,
            forward: Vec::new(),
            query_timeout_secs: default_query_timeout(),
            resolution_timeout_secs: default_resolution_timeout(),
            allow_private_servers: false,
            dnssec: DnssecConfig::default(),
        }
    }
}
impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            min_ttl: 0,
            max_ttl: default_max_ttl(),
            negative_max_ttl: default_negative_ttl(),
            servfail_ttl: default_servfail_ttl(),
            serve_stale_secs: default_serve_stale(),
            prefetch: true,
        }
    }
}
impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: None,
            allowlists: default_allowlists(),
            trusted_zone: true,
            min_prefix_v4: default_min_v4(),
            min_prefix_v6: default_min_v6(),
            reload_debounce_ms: default_debounce(),
            reload_nice: default_reload_nice(),
            global_profile: default_global_profile(),
            household_max_names: default_household_max_names(),
            remediation_extra: Vec::new(),
        }
    }
}
impl Default for SinkholeConfig {
    fn default() -> Self {
        Self {
            ipv4: default_sinkhole_v4(),
            ipv6: default_sinkhole_v6(),
            ttl: default_sinkhole_ttl(),
            info_ipv4: None,
            info_ipv6: None,
        }
    }
}
impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            tokens: Vec::new(),
            max_connections: default_admin_max_conns(),
        }
    }
}
impl Default for StateConfig {
    fn default() -> Self {
        Self {
            path: default_state_path(),
            feeds_dir: None,
        }
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: default_log_filter(),
            format: default_log_format(),
            actions: None,
            dnstap: None,
        }
    }
}

impl Config {
    /// Reads and parses a configuration file; relative paths resolve against its directory.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_str_in(&text, &path.display().to_string(), base)
    }

    /// The embedded quick-start configuration; relative paths resolve against `base` (usually
    /// the current directory).
    pub fn embedded(base: &Path) -> Result<Self, ConfigError> {
        Self::from_str_in(EMBEDDED_DEFAULT, "<embedded quickstart.yaml>", base)
    }

    /// Parses configuration text. `file` names it in errors; relative paths resolve against `base`.
    pub fn from_str_in(text: &str, file: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = if text.trim().is_empty() {
            serde_norway::from_str("{}")
        } else {
            serde_norway::from_str(text)
        }
        .map_err(|e| yaml_error(file, &e))?;
        config.resolve_paths(base);
        config.validate(file)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.resolver.root_hints.as_mut() {
            join(p);
        }
        if let Some(p) = self.resolver.dnssec.trust_anchor.as_mut() {
            join(p);
        }
        if let Some(p) = self.policy.dir.as_mut() {
            join(p);
        }
        join(&mut self.policy.allowlists);
        join(&mut self.state.path);
        if let Some(p) = self.state.feeds_dir.as_mut() {
            join(p);
        }
        if let Some(p) = self.tls.certificate.as_mut() {
            join(p);
        }
        if let Some(p) = self.tls.key.as_mut() {
            join(p);
        }
        if let Some(p) = self.web.content_dir.as_mut() {
            join(p);
        }
        for f in &mut self.feeds {
            if let Some(p) = f.file.as_mut() {
                join(p);
            }
        }
        for t in &mut self.admin.tokens {
            if let Some(p) = t.token_file.as_mut() {
                join(p);
            }
        }
        if let Some(a) = self.log.actions.as_mut() {
            join(&mut a.path);
        }
        if let Some(d) = self.log.dnstap.as_mut() {
            join(&mut d.socket);
        }
        if let Some(smtp) = self.alerts.smtp.as_mut() {
            for p in [smtp.ca_file.as_mut(), smtp.password_file.as_mut()]
                .into_iter()
                .flatten()
            {
                join(p);
            }
        }
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        if self.listen.dns.is_empty() {
            return Err(invalid("listen.dns: at least one address is needed".into()));
        }
        self.api_tokens().map_err(invalid)?;
        if !crate::policy::sources::MAIL_LANGUAGES.contains(&self.alerts.language.as_str()) {
            return Err(invalid(format!(
                "alerts.language `{}`: alert e-mails are written in {}",
                self.alerts.language,
                crate::policy::sources::MAIL_LANGUAGES.join(", ")
            )));
        }
        if !self.alerts.cert_email.is_empty() && self.alerts.smtp.is_none() {
            return Err(invalid(
                "alerts.cert_email needs alerts.smtp: the relay the e-mails are sent through"
                    .into(),
            ));
        }
        if (!self.tls.dot.is_empty() || !self.tls.doh.is_empty())
            && (self.tls.certificate.is_none() || self.tls.key.is_none())
        {
            return Err(invalid(
                "tls: `certificate` and `key` are needed to serve DNS over TLS or HTTPS".into(),
            ));
        }
        if self.listen.cookie_secret.is_some() && self.listen.cookie_key().is_none() {
            return Err(invalid(
                "listen.cookie_secret: 32 hexadecimal digits (16 bytes) are needed".into(),
            ));
        }
        if self.resolver.mode == ResolverMode::Forward && self.resolver.forward.is_empty() {
            return Err(invalid(
                "resolver.forward: mode is `forward` but no upstream is listed".into(),
            ));
        }
        if self.sinkhole.ipv4.is_empty() && self.sinkhole.ipv6.is_empty() {
            return Err(invalid(
                "sinkhole: at least one ipv4 or ipv6 address is needed".into(),
            ));
        }
        if self.cache.min_ttl > self.cache.max_ttl {
            return Err(invalid(format!(
                "cache.min_ttl ({}) is above cache.max_ttl ({})",
                self.cache.min_ttl, self.cache.max_ttl
            )));
        }
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.feeds.iter().enumerate() {
            if !names.insert(f.name.as_str()) {
                return Err(invalid(format!(
                    "feeds[{i}].name: `{}` is used twice",
                    f.name
                )));
            }
            match (&f.file, &f.primary) {
                (Some(_), None) => {}
                (None, Some(_)) if f.zone.is_some() => {}
                (None, Some(_)) => {
                    return Err(invalid(format!(
                        "feeds[{i}] `{}`: `zone` is required with `primary`",
                        f.name
                    )));
                }
                _ => {
                    return Err(invalid(format!(
                        "feeds[{i}] `{}`: give exactly one of `file` or `primary`",
                        f.name
                    )));
                }
            }
            if !(f.max_age_hours > 0.0 && f.max_age_hours.is_finite()) {
                return Err(invalid(format!(
                    "feeds[{i}].max_age_hours: must be above 0 (got {})",
                    f.max_age_hours
                )));
            }
            if let Some(t) = &f.tsig
                && !matches!(
                    t.algorithm.as_str(),
                    "hmac-sha256" | "hmac-sha384" | "hmac-sha512"
                )
            {
                return Err(invalid(format!(
                    "feeds[{i}].tsig.algorithm: `{}` is not supported",
                    t.algorithm
                )));
            }
        }
        if self.policy.reload_nice > 19 {
            return Err(invalid(format!(
                "policy.reload_nice: {} is above 19 (the lowest priority)",
                self.policy.reload_nice
            )));
        }
        if self.detection.ipv6_prefix_len > 128 {
            return Err(invalid("detection.ipv6_prefix_len: at most 128".into()));
        }
        if self.detection.ipv6_prefix_len < self.policy.min_prefix_v6 {
            return Err(invalid(format!(
                "detection.ipv6_prefix_len: /{} is shorter than policy.min_prefix_v6 (/{}); detections would be refused",
                self.detection.ipv6_prefix_len, self.policy.min_prefix_v6
            )));
        }
        if self.policy.min_prefix_v4 > 32 || self.policy.min_prefix_v6 > 128 {
            return Err(invalid(
                "policy.min_prefix_v4 is at most 32 and policy.min_prefix_v6 at most 128".into(),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(format!(
                "log.format: `{}` is not `text` or `json`",
                self.log.format
            )));
        }
        Ok(())
    }

    /// Settings that are valid but probably not what the operator wants, one sentence each
    /// (printed by `cleanpipe check` and logged at start-up).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.clients.allow.iter().any(|n| n.prefix_len() == 0) {
            w.push(
                "clients.allow contains 0.0.0.0/0 or ::/0: cleanpipe is an open resolver, usable for amplification attacks by anyone on the internet; list the subscriber networks instead"
                    .to_owned(),
            );
        }
        if let Some(addr) = self.admin.listen
            && !addr.ip().is_loopback()
        {
            let token = self.admin_token().unwrap_or_default();
            if token.len() < 32 {
                w.push(format!(
                    "admin.listen {addr} is not on loopback and the admin token is {} characters long: use a random token of at least 32 characters (e.g. `openssl rand -hex 32`) or bind the API to loopback",
                    token.len()
                ));
            }
        }
        if let Some(smtp) = &self.alerts.smtp
            && smtp.security == SmtpSecurity::None
            && !matches!(smtp.server.as_str(), "localhost" | "127.0.0.1" | "::1")
        {
            w.push(format!(
                "alerts.smtp.security is none for {}: alert e-mails (and the relay password) cross the network in clear; use starttls or tls",
                smtp.server
            ));
        }
        if !self.policy.trusted_zone {
            w.push(
                "policy.trusted_zone is false: no trusted zone; quarantined subscribers reach only policy.remediation_extra (no antivirus or update sites)"
                    .to_owned(),
            );
        }
        if !self.web.listen.is_empty() && !self.web.has_support_contact() {
            w.push(
                "web: no support contact (support_url, support_phone or support_email): the cleanup page cannot tell quarantined subscribers whom to call"
                    .to_owned(),
            );
        }
        w
    }

    /// Every admin token: `admin.token` (or `CLEANPIPE_ADMIN_TOKEN`) as `admin` with every scope,
    /// then `admin.tokens`. Errors: a token file that cannot be read, a token without a secret
    /// or scopes, a name or secret used twice.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>, String> {
        let mut out: Vec<ApiToken> = Vec::new();
        if let Some(secret) = self.admin_token() {
            out.push(ApiToken {
                name: "admin".into(),
                secret,
                scopes: vec![Scope::Admin],
            });
        }
        for t in &self.admin.tokens {
            let secret = match (&t.token, &t.token_file) {
                (Some(s), None) => s.trim().to_owned(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| format!("admin.tokens `{}`: {}: {e}", t.name, f.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
                _ => {
                    return Err(format!(
                        "admin.tokens `{}`: give exactly one of `token` and `token_file`",
                        t.name
                    ));
                }
            };
            if secret.len() < 16 {
                return Err(format!(
                    "admin.tokens `{}`: the token is {} characters long, at least 16 are needed (e.g. `openssl rand -hex 32`)",
                    t.name,
                    secret.len()
                ));
            }
            if t.scopes.is_empty() {
                return Err(format!("admin.tokens `{}`: no scopes", t.name));
            }
            if out.iter().any(|o| o.name == t.name) {
                return Err(format!("admin.tokens: the name `{}` is used twice", t.name));
            }
            if out.iter().any(|o| o.secret == secret) {
                return Err(format!(
                    "admin.tokens `{}`: the same secret as another token (each needs its own)",
                    t.name
                ));
            }
            out.push(ApiToken {
                name: t.name.clone(),
                secret,
                scopes: t.scopes.clone(),
            });
        }
        Ok(out)
    }

    /// The admin token: from the file, else `CLEANPIPE_ADMIN_TOKEN`. Empty tokens count as none.
    pub fn admin_token(&self) -> Option<String> {
        self.admin
            .token
            .clone()
            .or_else(|| std::env::var("CLEANPIPE_ADMIN_TOKEN").ok())
            .filter(|t| !t.trim().is_empty())
    }
}

/// Turns a YAML error into a [`ConfigError::Parse`] with file and line.
pub fn yaml_error(file: &str, e: &serde_norway::Error) -> ConfigError {
    let line = e.location().map(|l| l.line()).unwrap_or(0);
    // serde_norway appends " at line X column Y" to its message; keep the message clean.
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    ConfigError::Parse {
        file: file.to_owned(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_safe_defaults() {
        let c =
            Config::from_str_in("", "t.yaml", Path::new("/etc/cleanpipe")).expect("empty is valid");
        assert_eq!(c.listen.dns, default_dns_listen());
        assert_eq!(c.resolver.mode, ResolverMode::Recursive);
        assert!(
            !c.clients.allow.iter().any(|n| n.prefix_len() == 0),
            "never open by default"
        );
        assert_eq!(
            c.state.path,
            Path::new("/etc/cleanpipe/cleanpipe-state.sqlite")
        );
        assert_eq!(c.sinkhole.ttl, 60);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "listen:\n  dns: [\"127.0.0.1:53\"]\n  treads: 2\n";
        let err =
            Config::from_str_in(text, "c.yaml", Path::new(".")).expect_err("typo must be rejected");
        let msg = err.to_string();
        assert!(msg.starts_with("c.yaml:3:"), "{msg}");
        assert!(msg.contains("treads"), "{msg}");
    }

    #[test]
    fn bad_value_names_line() {
        let text = "clients:\n  allow:\n    - 10.0.0.0/8\n    - 10.0.0.300/8\n";
        let err = Config::from_str_in(text, "c.yaml", Path::new(".")).expect_err("bad CIDR");
        assert!(err.to_string().starts_with("c.yaml:4:"), "{err}");
    }

    #[test]
    fn forward_without_upstreams_is_invalid() {
        let err = Config::from_str_in("resolver:\n  mode: forward\n", "c.yaml", Path::new("."))
            .expect_err("forward needs upstreams");
        assert!(err.to_string().contains("resolver.forward"), "{err}");
    }

    #[test]
    fn reload_nice_defaults_low_and_rejects_out_of_range() {
        let c = Config::from_str_in("", "c.yaml", Path::new(".")).expect("empty is valid");
        assert_eq!(c.policy.reload_nice, 19);
        let err = Config::from_str_in("policy:\n  reload_nice: 20\n", "c.yaml", Path::new("."))
            .expect_err("20 is not a niceness");
        assert!(err.to_string().contains("policy.reload_nice"), "{err}");
    }

    #[test]
    fn shipped_production_example_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/production.yaml");
        let c = Config::from_path(&p).expect("examples/production.yaml must stay valid");
        assert_eq!(c.listen.dns[0].port(), 53);
        assert!(
            c.admin.listen.is_some_and(|a| a.ip().is_loopback()),
            "admin stays on loopback"
        );
    }

    #[test]
    fn embedded_quickstart_parses() {
        let c = Config::embedded(Path::new(".")).expect("the shipped default must parse");
        assert_eq!(c.listen.dns[0].port(), 5300);
    }
}
