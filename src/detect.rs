//! Automatic detection: a subscriber who looks up a name from a botnet feed is flagged infected.
//!
//! The DNS path only does a cache check and a non-blocking channel send. A background task
//! writes the evidence and the infection flag to the state database in one transaction
//! (durable before the policy changes), then rebuilds the policy once per batch, so a burst of
//! detections costs one reload. A lookup is recorded at most once per host and signature per
//! `detection.debounce_secs`. A host already flagged (quarantined, or inside a whitelisted
//! organisation with an open alert) keeps its flag: the lookup of another botnet's name is
//! recorded as evidence of that signature, shown by `explain` and the cleanup page, and inside a
//! whitelisted organisation opens an alert of its own (see `alerts::AlertEngine::sync`). Inside
//! an organisation in good standing the flag makes the decision `alert` instead of quarantine
//! (see `policy::decide`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::config::DetectionConfig;
use crate::policy::ClientView;
use crate::policy::prefix::canonical_ip;
use crate::state::Detection;
use crate::store::PolicyStore;

/// Handle used by the DNS path.
#[derive(Clone)]
pub struct Detector {
    tx: mpsc::Sender<Detection>,
    /// Recently recorded `(host, signature)` pairs (the debounce).
    recent: moka::sync::Cache<(IpAddr, Box<str>), ()>,
    v6_len: u8,
}

impl Detector {
    /// Starts the recording task on the current runtime.
    pub fn spawn(store: Arc<PolicyStore>, config: &DetectionConfig) -> Self {
        let (tx, rx) = mpsc::channel(10_000);
        tokio::spawn(record(store, rx));
        Self {
            tx,
            recent: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(config.debounce_secs.max(1)))
                .build(),
            v6_len: config.ipv6_prefix_len,
        }
    }

    /// Reports a botnet-feed lookup by `ip`. Never blocks; drops (and counts) when overloaded.
    pub fn report(&self, ip: IpAddr, client: &ClientView, feed: &str, family: &str, qname: &str) {
        let ip = canonical_ip(ip);
        let key = (ip, Box::<str>::from(family));
        if self.recent.contains_key(&key) {
            return;
        }
        self.recent.insert(key, ());
        let prefix = match ip {
            IpAddr::V4(_) => IpNet::from(ip),
            IpAddr::V6(_) => IpNet::new(ip, self.v6_len)
                .map(|n| n.trunc())
                .unwrap_or_else(|_| IpNet::from(ip)),
        };
        let d = Detection {
            prefix,
            ip,
            feed: feed.to_owned(),
            family: family.to_owned(),
            qname: qname.to_owned(),
            at: chrono::Utc::now().timestamp(),
            // A self-released host is flagged again: the new report ends its release.
            flag: client.infection.is_none() || client.released.is_some(),
        };
        if self.tx.try_send(d).is_err() {
            metrics::counter!(crate::metrics::BAD_REQUESTS, "kind" => "detection_dropped")
                .increment(1);
        }
    }
}

async fn record(store: Arc<PolicyStore>, mut rx: mpsc::Receiver<Detection>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            for d in &batch {
                if let Err(e) = s.state().record_detection(d) {
                    tracing::error!(error = %e, prefix = %d.prefix, "recording a detection failed");
                    continue;
                }
                let outcome = if d.flag { "flagged" } else { "evidence" };
                metrics::counter!(crate::metrics::DETECTIONS, "outcome" => outcome).increment(1);
                if d.flag {
                    tracing::warn!(prefix = %d.prefix, feed = %d.feed, family = %d.family, name = %d.qname, "botnet lookup: subscriber flagged infected");
                } else {
                    tracing::warn!(prefix = %d.prefix, feed = %d.feed, family = %d.family, name = %d.qname, "botnet lookup by a subscriber already flagged: evidence recorded");
                }
            }
            s.reload()
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "policy reload after detections failed");
        }
    }
}
