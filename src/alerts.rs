//! Organisation alerting: whitelisted organisations get alerts, deadlines and escalation
//! instead of blocks.
//!
//! Lifecycle (README "Organisation alerts" has the table):
//! - **open**: an infected host inside an organisation in good standing (from a feed entry, an
//!   admin flag or a botnet lookup) opens one alert per (organisation, host, signature), with
//!   deadline = first seen + the organisation's grace period. Later reports and DNS sightings
//!   update last-seen and the counter.
//! - **acknowledged** / **resolved** / reopened: through the admin API and CLI.
//! - reminders at the configured percentages of the grace period;
//! - **overdue**: still open at the deadline → the organisation's whitelisting is **revoked**
//!   (recorded, alerted, a strike); its infected hosts are quarantined from the next reload on,
//!   until an operator reinstates it with a reason.
//!
//! Delivery is at-least-once through a durable outbox in the state database: the alert and its
//! deliveries are written in one transaction; a worker posts each to its webhook with an
//! `Idempotency-Key` (stable across retries and restarts) and an HMAC-SHA256 signature, retrying
//! with exponential backoff and jitter until the receiver answers 2xx.
//!
//! Time comes from a [`Clock`], so tests can move it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::config::AlertsConfig;
use crate::policy::sources::Contact;
use crate::policy::{Organisation, Standing};
use crate::state::{AlertRow, Delivery, StateError};
use crate::store::PolicyStore;

/// A source of unix time.
pub trait Clock: Send + Sync {
    /// Unix seconds now.
    fn now(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock at `t`.
    pub fn at(t: i64) -> Self {
        Self(AtomicI64::new(t))
    }
    /// Moves the clock forward.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The alerting engine.
pub struct AlertEngine {
    store: Arc<PolicyStore>,
    cfg: AlertsConfig,
    cert_secret: Option<String>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    mailer: Option<crate::mail::Mailer>,
    recent: moka::sync::Cache<(u32, IpAddr), ()>,
}

/// The alerting engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The webhook client.
    #[error("alert webhook client: {0}")]
    Http(#[from] reqwest::Error),
    /// The e-mail relay settings.
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
}

/// What one check of deadlines did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// Alerts opened.
    pub opened: usize,
    /// Reminders queued.
    pub reminders: usize,
    /// Organisations revoked.
    pub revoked: usize,
}

use crate::timefmt::rfc3339;

/// Hex HMAC-SHA256 of `body` with `secret`, as sent in `X-Cleanpipe-Signature: sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl AlertEngine {
    /// An engine over the store's policy and state.
    pub fn new(
        store: Arc<PolicyStore>,
        cfg: AlertsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SetupError> {
        // reqwest is built without a default crypto provider: use ring, as the rest of cleanpipe.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.webhook_timeout_secs.max(1)))
            .user_agent(concat!("cleanpipe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let cert_secret = cfg
            .cert_secret
            .clone()
            .or_else(|| std::env::var("CLEANPIPE_CERT_SECRET").ok());
        let mailer = cfg
            .smtp
            .as_ref()
            .map(crate::mail::Mailer::from_config)
            .transpose()?;
        Ok(Self {
            store,
            cfg,
            cert_secret,
            clock,
            http,
            mailer,
            recent: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    /// The engine's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    fn targets(&self, org: Option<&Organisation>, event: &str) -> Vec<Delivery> {
        let contacts: &[Contact] = org.map_or(&[], |o| &o.contacts);
        let mut out: Vec<Delivery> = contacts
            .iter()
            .filter_map(|c| {
                c.webhook.as_ref().map(|url| Delivery {
                    event: event.to_owned(),
                    url: url.clone(),
                    secret: c.webhook_secret.clone(),
                })
            })
            .collect();
        if let Some(url) = &self.cfg.cert_webhook {
            out.push(Delivery {
                event: event.to_owned(),
                url: url.clone(),
                secret: self.cert_secret.clone(),
            });
        }
        // E-mail: every contact with an address, and the CERT's, when a relay is configured.
        if self.mailer.is_some() {
            let mails = contacts
                .iter()
                .filter_map(|c| c.email.as_deref())
                .chain(self.cfg.cert_email.iter().map(String::as_str));
            for m in mails {
                out.push(Delivery {
                    event: event.to_owned(),
                    url: format!("mailto:{m}"),
                    secret: None,
                });
            }
        }
        out
    }

    /// Sends one e-mail delivery, in the language of the alert's organisation.
    async fn mail(&self, to: &str, body: &str, key: &str) -> Option<String> {
        let Some(mailer) = &self.mailer else {
            return Some("no alerts.smtp relay configured (the delivery waits for one)".into());
        };
        let org_id = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["alert"]["organisation"]["id"].as_str().map(str::to_owned));
        let snap = self.store.snapshot();
        let is_cert = self.cfg.cert_email.iter().any(|c| c == to);
        let lang = org_id
            .and_then(|id| snap.organisations.iter().find(|o| o.id == id))
            .and_then(|o| o.language.clone())
            .filter(|_| !is_cert)
            .unwrap_or_else(|| self.cfg.language.clone());
        mailer.send(to, &lang, body, key).await.err()
    }

    fn body(
        event: &str,
        a: &AlertRow,
        org: Option<&Organisation>,
        extra: serde_json::Value,
        message: String,
    ) -> String {
        json!({
            "event": event,
            "idempotency_key": "{idempotency_key}",
            "sent_by": "cleanpipe",
            "message": message,
            "alert": {
                "id": a.id,
                "organisation": { "id": a.org, "name": org.map(|o| o.name.as_str()) },
                "host": a.prefix,
                "signature": a.signature,
                "source": a.source,
                "first_seen": rfc3339(a.first_seen),
                "last_seen": rfc3339(a.last_seen),
                "sightings": a.sightings,
                "deadline": rfc3339(a.deadline),
                "state": a.state,
            },
            "details": extra,
        })
        .to_string()
    }

    /// Opens (or updates) alerts for every infected host inside an organisation in good
    /// standing: one per signature, the infection's own and every other botnet signature the
    /// host was seen looking up. Blocking (SQLite).
    pub fn sync(&self) -> Result<usize, StateError> {
        let snap = self.store.snapshot();
        let now = self.now();
        let mut opened = 0;
        for (idx, inf) in snap.infections().iter().enumerate() {
            let Some(oi) = snap.organisation_of(inf.prefix.addr()) else {
                continue;
            };
            let Some(org) = snap.organisations.get(oi as usize) else {
                continue;
            };
            if org.standing != Standing::Good {
                continue;
            }
            let grace = (org.grace_hours * 3600.0).round() as i64;
            let deliveries = |a: &AlertRow| {
                let msg = format!(
                    "Host {} in {} is infected ({}). Clean it up before {} or {} loses its whitelisting.",
                    a.prefix,
                    org.name,
                    a.signature,
                    rfc3339(a.deadline),
                    org.name
                );
                self.targets(Some(org), "alert.opened")
                    .into_iter()
                    .map(|d| {
                        (
                            d,
                            Self::body("alert.opened", a, Some(org), json!({}), msg.clone()),
                        )
                    })
                    .collect()
            };
            let family = snap.string(inf.family);
            let mut signatures = vec![(
                family.to_owned(),
                snap.string(inf.source).to_owned(),
                inf.first_seen,
            )];
            for ev in snap.evidence(idx as u32) {
                if !signatures.iter().any(|(s, _, _)| *s == ev.family) {
                    signatures.push((
                        ev.family.clone(),
                        format!(
                            "botnet detection: looked up {} (feed {})",
                            ev.qname, ev.feed
                        ),
                        ev.first_at,
                    ));
                }
            }
            for (signature, source, first_seen) in signatures {
                let r = self.store.state().upsert_alert(
                    &org.id,
                    inf.prefix,
                    &signature,
                    &source,
                    first_seen,
                    grace,
                    now,
                    &deliveries,
                )?;
                if let Some((a, true)) = r {
                    opened += 1;
                    metrics::counter!(crate::metrics::ALERTS_OPENED).increment(1);
                    tracing::warn!(alert = a.id, org = %a.org, host = %a.prefix, signature = %a.signature, deadline = %rfc3339(a.deadline), "organisation alert opened");
                }
            }
        }
        Ok(opened)
    }

    /// A DNS query from an alerted host (debounced to once a minute per host).
    pub fn sighting(&self, org: u32, ip: IpAddr) {
        let key = (org, crate::policy::prefix::canonical_ip(ip));
        if self.recent.contains_key(&key) {
            return;
        }
        self.recent.insert(key, ());
        let snap = self.store.snapshot();
        let client = snap.classify(ip);
        let (Some(o), Some(i)) = (
            snap.organisations.get(org as usize),
            client.infection.and_then(|i| snap.infection(i)),
        ) else {
            return;
        };
        let (state, org_id, prefix, now) = (
            self.store.state().clone(),
            o.id.clone(),
            i.prefix,
            self.now(),
        );
        tokio::task::spawn_blocking(move || {
            if let Err(e) = state.touch_alert(&org_id, prefix, now) {
                tracing::error!(error = %e, "recording an alert sighting failed");
            }
        });
    }

    /// Sends due reminders and revokes organisations past a deadline. Blocking (SQLite).
    pub fn tick(&self) -> Result<TickReport, StateError> {
        let snap = self.store.snapshot();
        let now = self.now();
        let state = self.store.state();
        let mut report = TickReport::default();
        let mut active = state.alerts(None, Some("open"))?;
        active.extend(state.alerts(None, Some("acknowledged"))?);
        for a in active {
            let org = snap.organisations.iter().find(|o| o.id == a.org);
            let grace = (a.deadline - a.first_seen).max(1);
            if now >= a.deadline {
                state.transition(
                    a.id,
                    &["open", "acknowledged"],
                    "overdue",
                    "alerting",
                    "deadline passed",
                    now,
                )?;
                metrics::counter!(crate::metrics::ALERTS_OVERDUE).increment(1);
                if state.revoke(
                    &a.org,
                    Some(a.id),
                    &format!("alert #{} not resolved by {}", a.id, rfc3339(a.deadline)),
                    now,
                )? {
                    report.revoked += 1;
                    metrics::counter!(crate::metrics::REVOCATIONS).increment(1);
                    tracing::warn!(org = %a.org, alert = a.id, "deadline missed: organisation whitelisting revoked");
                    let msg = format!(
                        "{} missed the cleanup deadline of alert #{} ({} on {}): its whitelisting is revoked and infected hosts are now quarantined.",
                        org.map_or(a.org.as_str(), |o| o.name.as_str()),
                        a.id,
                        a.signature,
                        a.prefix
                    );
                    let items: Vec<_> = self
                        .targets(org, "organisation.revoked")
                        .into_iter()
                        .map(|d| {
                            (
                                d,
                                Self::body("organisation.revoked", &a, org, json!({}), msg.clone()),
                            )
                        })
                        .collect();
                    state.enqueue_all(Some(a.id), &items, now, "revoke-notice", &a.org)?;
                }
                continue;
            }
            for (bit, pct) in self.cfg.reminders.iter().enumerate() {
                let due = a.first_seen + grace * i64::from(*pct) / 100;
                if a.reminders_sent & (1 << bit) == 0 && now >= due {
                    let msg = format!(
                        "Reminder: host {} ({}) is still reported infected; {}% of the grace period has passed. Deadline: {}.",
                        a.prefix,
                        a.signature,
                        pct,
                        rfc3339(a.deadline)
                    );
                    let items: Vec<_> = self
                        .targets(org, "alert.reminder")
                        .into_iter()
                        .map(|d| {
                            (
                                d,
                                Self::body(
                                    "alert.reminder",
                                    &a,
                                    org,
                                    json!({ "percent": pct }),
                                    msg.clone(),
                                ),
                            )
                        })
                        .collect();
                    state.enqueue_all(
                        Some(a.id),
                        &items,
                        now,
                        "alert-reminder",
                        &format!("#{} {pct}%", a.id),
                    )?;
                    state.mark_reminder(a.id, bit as u32)?;
                    report.reminders += 1;
                }
            }
        }
        Ok(report)
    }

    /// Posts every due delivery once; failures are rescheduled with backoff. Returns how many
    /// were delivered.
    pub async fn deliver(&self) -> usize {
        let now = self.now();
        let st = self.store.state().clone();
        let due = match tokio::task::spawn_blocking(move || st.due_deliveries(now, 100)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return 0;
            }
            Err(_) => return 0,
        };
        let mut delivered = 0;
        for d in due {
            let outcome = match d.url.strip_prefix("mailto:") {
                Some(to) => self.mail(to, &d.body, &d.idempotency_key).await,
                None => self.post(&d).await,
            };
            metrics::counter!(crate::metrics::DELIVERIES, "result" => if outcome.is_none() { "ok" } else { "failed" }).increment(1);
            let now = self.now();
            let backoff = {
                let base = 5u64
                    .saturating_mul(1u64 << d.attempts.clamp(0, 20))
                    .min(self.cfg.max_backoff_secs.max(1));
                let jitter = 0.8 + rand::random::<f64>() * 0.4;
                (base as f64 * jitter) as i64
            };
            if outcome.is_none() {
                delivered += 1;
            } else {
                tracing::warn!(to = %d.url, attempt = d.attempts + 1, error = ?outcome, retry_in = backoff, "alert delivery failed");
            }
            let st = self.store.state().clone();
            let err = outcome.clone();
            let _ = tokio::task::spawn_blocking(move || {
                st.delivery_result(d.id, now, err.as_deref(), now + backoff)
            })
            .await;
        }
        delivered
    }

    /// One webhook call: `None` when accepted, else why not.
    async fn post(&self, d: &crate::state::OutboxRow) -> Option<String> {
        {
            let mut req = self
                .http
                .post(&d.url)
                .header("content-type", "application/json")
                .header("idempotency-key", &d.idempotency_key)
                .header("x-cleanpipe-event", &d.event)
                .body(d.body.clone());
            if let Some(secret) = &d.secret {
                req = req.header(
                    "x-cleanpipe-signature",
                    format!("sha256={}", signature(secret, d.body.as_bytes())),
                );
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("HTTP {}", r.status())),
                Err(e) => Some(e.to_string()),
            }
        }
    }

    /// Runs forever: open alerts, check deadlines, reload after revocations, deliver.
    pub async fn run(self: Arc<Self>) {
        let tick = Duration::from_secs(self.cfg.tick_secs.max(1));
        loop {
            let me = self.clone();
            let r = tokio::task::spawn_blocking(move || {
                let opened = me.sync()?;
                let mut t = me.tick()?;
                t.opened = opened;
                if t.revoked > 0 {
                    let _ = me.store.reload();
                }
                Ok::<_, StateError>(t)
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "alert check failed");
            }
            self.deliver().await;
            tokio::time::sleep(tick).await;
        }
    }
}
