//! Durable runtime state: changes made through the admin API, self-releases, botnet-lookup
//! evidence, organisation alerts with their delivery outbox, and an audit log of every change.
//! Policy files stay the operator's source of truth; this store holds what was changed at
//! runtime so it survives a restart and is merged into every snapshot.
//!
//! Everything goes through the [`StateStore`] trait, so that one box keeps its state in SQLite
//! ([`sqlite::SqliteStore`]) and a fleet can share it in PostgreSQL with a second
//! implementation, without touching DNS, the policy core or the web pages. Implementations
//! must make each call atomic (one transaction) and durable before returning.

pub mod sqlite;

use ipnet::IpNet;

use crate::policy::sources::{EnrolmentEntry, InfectedEntry};
use crate::policy::{ModeOverride, Overrides};

pub use sqlite::SqliteStore;

/// A state database failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database reported an error.
    #[error("state database: {0}")]
    Backend(String),
    /// A stored value could not be read back.
    #[error("state database: bad stored value: {0}")]
    Corrupt(String),
}

/// An organisation alert as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertRow {
    /// Identifier.
    pub id: i64,
    /// Organisation id.
    pub org: String,
    /// Infected host (prefix).
    pub prefix: String,
    /// Malware family / signature.
    pub signature: String,
    /// Who reported it.
    pub source: String,
    /// Unix seconds (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::timefmt::ser")]
    pub first_seen: i64,
    /// Unix seconds (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::timefmt::ser")]
    pub last_seen: i64,
    /// DNS sightings and repeated reports.
    pub sightings: i64,
    /// Unix seconds: cleanup deadline (RFC 3339 in JSON).
    #[serde(serialize_with = "crate::timefmt::ser")]
    pub deadline: i64,
    /// `open`, `acknowledged`, `resolved`, `overdue`.
    pub state: String,
    /// Bit i set: reminder i sent.
    pub reminders_sent: i64,
}

/// A webhook delivery waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Identifier.
    pub id: i64,
    /// Event name.
    pub event: String,
    /// Target URL.
    pub url: String,
    /// HMAC secret.
    pub secret: Option<String>,
    /// JSON body.
    pub body: String,
    /// Stable idempotency key.
    pub idempotency_key: String,
    /// Attempts so far.
    pub attempts: i64,
}

/// A delivery to enqueue with an alert change.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Event name.
    pub event: String,
    /// Target URL.
    pub url: String,
    /// HMAC secret.
    pub secret: Option<String>,
}

/// One botnet-feed lookup to record.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The subscriber's prefix (IPv4 /32, IPv6 delegation).
    pub prefix: IpNet,
    /// The client address seen.
    pub ip: std::net::IpAddr,
    /// Feed name.
    pub feed: String,
    /// Malware family.
    pub family: String,
    /// The name looked up.
    pub qname: String,
    /// Unix seconds.
    pub at: i64,
    /// Flag the prefix infected (it was not, or only self-released); otherwise only evidence.
    pub flag: bool,
}

/// The durable state, whatever keeps it.
pub trait StateStore: Send + Sync {
    /// Flags a subscriber infected.
    fn flag(&self, e: &InfectedEntry, actor: &str) -> Result<(), StateError>;

    /// Unflags a subscriber: drops an admin flag and hides file entries reported before now.
    fn unflag(&self, net: IpNet, now: i64, actor: &str, reason: &str) -> Result<(), StateError>;

    /// Enrols a customer in a profile.
    fn enrol(&self, e: &EnrolmentEntry, actor: &str) -> Result<(), StateError>;

    /// Removes a customer's enrolment.
    fn unenrol(&self, net: IpNet, now: i64, actor: &str) -> Result<(), StateError>;

    /// Sets the global mode (overrides `mode.yaml`). The audit entry says what happens to the
    /// exemptions of `mode.yaml`: kept (the operator's are added) or replaced.
    fn set_mode(&self, o: &ModeOverride, actor: &str) -> Result<(), StateError>;

    /// Clears the admin mode: `mode.yaml` (or normal) applies again.
    fn clear_mode(&self, actor: &str, reason: &str) -> Result<(), StateError>;

    /// Records a self-release of the infection `prefix`, requested from `ip`, if fewer than `max`
    /// were made since `window_start`. Returns the number made in the window before this one, or
    /// `None` when the limit is reached (nothing recorded). Check and insert are one transaction.
    fn record_release(
        &self,
        prefix: IpNet,
        ip: std::net::IpAddr,
        at: i64,
        until: i64,
        window_start: i64,
        max: u32,
    ) -> Result<Option<u32>, StateError>;

    /// Records a botnet-feed lookup as evidence and, when `d.flag`, flags the prefix infected
    /// (one transaction). A host already flagged keeps its flag; the lookup is evidence of one
    /// more signature.
    fn record_detection(&self, d: &Detection) -> Result<(), StateError>;

    /// Opens an alert for an infected host of a whitelisted organisation, or updates the open
    /// one (one per organisation, host and signature). A report already covered by a resolved
    /// alert is not reopened. The deliveries of a new alert are queued in the same transaction,
    /// so an accepted alert is never lost. Returns the alert and whether it is new.
    #[allow(clippy::too_many_arguments)]
    fn upsert_alert(
        &self,
        org: &str,
        prefix: IpNet,
        signature: &str,
        source: &str,
        first_seen: i64,
        grace_secs: i64,
        now: i64,
        deliveries: &dyn Fn(&AlertRow) -> Vec<(Delivery, String)>,
    ) -> Result<Option<(AlertRow, bool)>, StateError>;

    /// Queues deliveries not tied to a new alert (reminders, revocations), with an audit entry.
    fn enqueue_all(
        &self,
        alert: Option<i64>,
        items: &[(Delivery, String)],
        now: i64,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError>;

    /// Records a DNS sighting of an alerted host: last seen and the counter of the active alert.
    fn touch_alert(&self, org: &str, prefix: IpNet, now: i64) -> Result<(), StateError>;

    /// Alerts, newest first, optionally filtered by organisation and state.
    fn alerts(&self, org: Option<&str>, state: Option<&str>) -> Result<Vec<AlertRow>, StateError>;

    /// One alert.
    fn alert(&self, id: i64) -> Result<Option<AlertRow>, StateError>;

    /// Moves an alert to `to` if it is in one of `from`; returns whether it moved.
    fn transition(
        &self,
        id: i64,
        from: &[&str],
        to: &str,
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StateError>;

    /// Marks reminder `bit` as sent.
    fn mark_reminder(&self, id: i64, bit: u32) -> Result<(), StateError>;

    /// Revokes an organisation's whitelisting (if not already revoked).
    fn revoke(
        &self,
        org: &str,
        alert: Option<i64>,
        reason: &str,
        now: i64,
    ) -> Result<bool, StateError>;

    /// Reinstates a revoked organisation; returns whether it was revoked.
    fn reinstate(&self, org: &str, actor: &str, reason: &str, now: i64)
    -> Result<bool, StateError>;

    /// Missed deadlines per organisation since `since`.
    fn strikes(&self, since: i64) -> Result<Vec<(String, i64)>, StateError>;

    /// Deliveries due at `now`.
    fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<OutboxRow>, StateError>;

    /// Records a delivery attempt: delivered, or failed with the next attempt time.
    fn delivery_result(
        &self,
        id: i64,
        now: i64,
        error: Option<&str>,
        next_attempt: i64,
    ) -> Result<(), StateError>;

    /// Deliveries still waiting (for status and metrics).
    fn pending_deliveries(&self) -> Result<i64, StateError>;

    /// Deliveries still waiting and when the oldest of them was queued (unix seconds).
    fn outbox_depth(&self) -> Result<(i64, Option<i64>), StateError>;

    /// Self-releases of `prefix` made since `window_start`.
    fn releases_since(&self, prefix: IpNet, window_start: i64) -> Result<u32, StateError>;

    /// Every override, for merging into a snapshot.
    fn overrides(&self) -> Result<Overrides, StateError>;

    /// The latest audit entries, newest first: `(at, actor, action, detail)`.
    fn audit_log(&self, limit: usize) -> Result<Vec<(i64, String, String, String)>, StateError>;

    /// Adds denial counts of trusted-zone clients (summed with rows of the same hour, profile,
    /// name and hint); deletes hours before `prune_before`.
    fn record_misses(&self, rows: &[MissRow], prune_before: i64) -> Result<(), StateError>;

    /// Stored denial counts from the hour containing `since` on, of one profile or all.
    fn misses(&self, profile: Option<&str>, since: i64) -> Result<Vec<MissRow>, StateError>;
}

/// Denials of one name to trusted-zone clients of one profile in one hour, with one hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissRow {
    /// Unix seconds of the start of the hour.
    pub hour: i64,
    /// Profile name.
    pub profile: String,
    /// Denied name.
    pub name: String,
    /// The allowed service asked just before (`""`: none).
    pub hint: String,
    /// Denials.
    pub count: u64,
}
