//! The state store of a single box: SQLite in WAL mode with synchronous writes.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open. Access goes
//! through one connection behind a mutex: admin changes are rare and small.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension, params};

use crate::policy::sources::{EnrolmentEntry, InfectedEntry, Mode, ModeFile, Prefix};
use crate::policy::{ModeOverride, Overrides};

use super::{AlertRow, Delivery, Detection, MissRow, OutboxRow, StateError, StateStore};

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError::Backend(e.to_string())
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: admin overrides and the audit log.
    "CREATE TABLE infected (prefix TEXT PRIMARY KEY, family TEXT NOT NULL, source TEXT NOT NULL,
        first_seen INTEGER NOT NULL, ticket TEXT);
     CREATE TABLE cleared (prefix TEXT PRIMARY KEY, cleared_at INTEGER NOT NULL);
     CREATE TABLE enrolments (prefix TEXT PRIMARY KEY, profile TEXT NOT NULL,
        enabled_by TEXT NOT NULL, enabled_at INTEGER NOT NULL);
     CREATE TABLE unenrolled (prefix TEXT PRIMARY KEY, at INTEGER NOT NULL);
     CREATE TABLE global_mode (id INTEGER PRIMARY KEY CHECK (id = 1), mode TEXT NOT NULL,
        set_by TEXT NOT NULL, reason TEXT NOT NULL, set_at INTEGER, expires INTEGER,
        exempt TEXT NOT NULL);
     CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
        actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);",
    // 2: self-releases from the cleanup page.
    "CREATE TABLE releases (id INTEGER PRIMARY KEY AUTOINCREMENT, prefix TEXT NOT NULL,
        ip TEXT NOT NULL, at INTEGER NOT NULL, until INTEGER NOT NULL);
     CREATE INDEX releases_prefix_at ON releases (prefix, at);
     CREATE INDEX releases_until ON releases (until);",
    // 3: evidence of botnet-feed lookups.
    "CREATE TABLE detections (id INTEGER PRIMARY KEY AUTOINCREMENT, prefix TEXT NOT NULL,
        ip TEXT NOT NULL, feed TEXT NOT NULL, family TEXT NOT NULL, qname TEXT NOT NULL,
        at INTEGER NOT NULL);
     CREATE INDEX detections_prefix ON detections (prefix, at);",
    // 4: organisation alerts, their delivery outbox, revocations.
    "CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, org TEXT NOT NULL,
        prefix TEXT NOT NULL, signature TEXT NOT NULL, source TEXT NOT NULL,
        first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, sightings INTEGER NOT NULL,
        deadline INTEGER NOT NULL, state TEXT NOT NULL, reminders_sent INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
     CREATE UNIQUE INDEX alerts_active ON alerts (org, prefix, signature)
        WHERE state IN ('open', 'acknowledged');
     CREATE INDEX alerts_state ON alerts (state, deadline);
     CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id INTEGER, event TEXT NOT NULL,
        url TEXT NOT NULL, secret TEXT, body TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL,
        delivered_at INTEGER, last_error TEXT);
     CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt);
     CREATE TABLE revocations (id INTEGER PRIMARY KEY AUTOINCREMENT, org TEXT NOT NULL,
        at INTEGER NOT NULL, alert_id INTEGER, reason TEXT NOT NULL,
        reinstated_at INTEGER, reinstated_by TEXT, reinstate_reason TEXT);",
    // 5: whether the operator's exemptions replace those of mode.yaml (default: added to them).
    "ALTER TABLE global_mode ADD COLUMN exempt_replaces INTEGER NOT NULL DEFAULT 0;",
    // 6: who flagged an infection: an operator (admin API, CLI) or botnet detection.
    "ALTER TABLE infected ADD COLUMN origin TEXT NOT NULL DEFAULT 'admin-api';
     CREATE INDEX detections_group ON detections (prefix, family, at);",
    // 7: prefixes shorter than policy.min_prefix_* accepted on purpose (--force).
    "ALTER TABLE infected ADD COLUMN forced INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE enrolments ADD COLUMN forced INTEGER NOT NULL DEFAULT 0;",
    // 8: households' own additions, removed services and schedule (JSON arrays, id);
    //    the admin token that made each change.
    "ALTER TABLE enrolments ADD COLUMN allow TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE enrolments ADD COLUMN remove TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE enrolments ADD COLUMN schedule TEXT;",
    // 9: names trusted-zone clients were denied, per hour and profile (no client addresses).
    "CREATE TABLE misses (hour INTEGER NOT NULL, profile TEXT NOT NULL, name TEXT NOT NULL,
        hint TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (hour, profile, name, hint));",
    // 10: when each delivery was queued (the age of the oldest undelivered one is a metric).
    "ALTER TABLE outbox ADD COLUMN created_at INTEGER;
     UPDATE outbox SET created_at = next_attempt WHERE created_at IS NULL;",
];

/// Days of botnet-lookup evidence merged into the policy (older evidence stays in the database).
const EVIDENCE_DAYS: i64 = 90;

const ALERT_COLUMNS: &str = "id, org, prefix, signature, source, first_seen, last_seen, sightings, deadline, state, reminders_sent";

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: r.get(0)?,
        org: r.get(1)?,
        prefix: r.get(2)?,
        signature: r.get(3)?,
        source: r.get(4)?,
        first_seen: r.get(5)?,
        last_seen: r.get(6)?,
        sightings: r.get(7)?,
        deadline: r.get(8)?,
        state: r.get(9)?,
        reminders_sent: r.get(10)?,
    })
}

/// The state database.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn ts(t: i64) -> Result<DateTime<Utc>, StateError> {
    DateTime::from_timestamp(t, 0).ok_or_else(|| StateError::Corrupt(format!("timestamp {t}")))
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn parse_list(s: &str) -> Result<Vec<String>, StateError> {
    serde_json::from_str(s).map_err(|e| StateError::Corrupt(format!("list {s}: {e}")))
}

fn prefix(s: &str) -> Result<Prefix, StateError> {
    s.parse().map_err(StateError::Corrupt)
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database file.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let conn = Connection::open(path)?;
        Self::refuse_newer(&conn, path)?;
        Self::init(conn)
    }

    /// A private in-memory copy of the database file, migrated in memory: for `check` and
    /// `explain`, which must never write to (or migrate) the database a running service uses.
    pub fn open_copy(path: &Path) -> Result<Self, StateError> {
        let src = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::refuse_newer(&src, path)?;
        let mut dst = Connection::open_in_memory()?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            backup.run_to_completion(256, std::time::Duration::ZERO, None)?;
        }
        Self::init(dst)
    }

    /// Copies the database to `to` while it is in use (SQLite's online backup: a consistent
    /// snapshot, whatever the service writes meanwhile).
    pub fn backup(path: &Path, to: &Path) -> Result<(), StateError> {
        let src = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::refuse_newer(&src, path)?;
        src.busy_timeout(std::time::Duration::from_secs(5))?;
        src.backup(rusqlite::MAIN_DB, to, None)?;
        Ok(())
    }

    /// A database written by a newer release cannot be used: its schema is unknown here.
    fn refuse_newer(conn: &Connection, path: &Path) -> Result<(), StateError> {
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StateError::Backend(format!(
                "{} has schema version {version}, newer than this cleanpipe's {}: it was written by a newer release; run that release, or restore a backup made with this one (docs/operations.md, upgrades)",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        Ok(())
    }

    /// The schema version this release writes.
    pub fn schema_version() -> usize {
        MIGRATIONS.len()
    }

    /// An in-memory database (tests, `check`).
    pub fn in_memory() -> Result<Self, StateError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StateError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    fn audit(
        tx: &rusqlite::Transaction<'_>,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError> {
        tx.execute(
            "INSERT INTO audit (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            params![Utc::now().timestamp(), actor, action, detail],
        )?;
        Ok(())
    }

    fn enqueue(
        tx: &rusqlite::Transaction<'_>,
        alert: Option<i64>,
        d: &Delivery,
        body: &str,
        now: i64,
    ) -> Result<(), StateError> {
        // The idempotency key names the event, not the attempt: retries and restarts reuse it.
        let key = format!(
            "{}-{}-{:032x}",
            d.event,
            alert.unwrap_or(0),
            rand::random::<u128>()
        );
        tx.execute(
            "INSERT INTO outbox (alert_id, event, url, secret, body, idempotency_key, next_attempt, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![alert, d.event, d.url, d.secret, body.replace("{idempotency_key}", &key), key, now],
        )?;
        Ok(())
    }
}

impl StateStore for SqliteStore {
    fn flag(&self, e: &InfectedEntry, actor: &str) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let p = e.prefix.to_string();
            tx.execute(
                "INSERT OR REPLACE INTO infected (prefix, family, source, first_seen, ticket, forced) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![p, e.family, e.source, e.first_seen.timestamp(), e.ticket, e.force],
            )?;
            tx.execute("DELETE FROM cleared WHERE prefix = ?1", params![p])?;
            let forced = if e.force { " FORCED: a whole network" } else { "" };
            Self::audit(&tx, actor, "flag", &format!("{p} {} ({}){forced}", e.family, e.source))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn unflag(&self, net: IpNet, now: i64, actor: &str, reason: &str) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let p = Prefix(net).to_string();
            tx.execute("DELETE FROM infected WHERE prefix = ?1", params![p])?;
            tx.execute(
                "INSERT OR REPLACE INTO cleared (prefix, cleared_at) VALUES (?1, ?2)",
                params![p, now],
            )?;
            Self::audit(&tx, actor, "unflag", &format!("{p}: {reason}"))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn enrol(&self, e: &EnrolmentEntry, actor: &str) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let p = e.prefix.to_string();
            tx.execute(
                "INSERT OR REPLACE INTO enrolments (prefix, profile, enabled_by, enabled_at, forced, allow, remove, schedule) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    p,
                    e.profile,
                    e.enabled_by,
                    e.enabled_at.timestamp(),
                    e.force,
                    json_list(&e.allow),
                    json_list(&e.remove),
                    e.schedule
                ],
            )?;
            tx.execute("DELETE FROM unenrolled WHERE prefix = ?1", params![p])?;
            let forced = if e.force { " FORCED: a whole network" } else { "" };
            let mut detail = format!("{p} {}{forced}", e.profile);
            if !e.allow.is_empty() {
                detail += &format!("; adds {}", e.allow.join(", "));
            }
            if !e.remove.is_empty() {
                detail += &format!("; removes {}", e.remove.join(", "));
            }
            if let Some(s) = &e.schedule {
                detail += &format!("; schedule {s}");
            }
            Self::audit(&tx, actor, "enrol", &detail)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn unenrol(&self, net: IpNet, now: i64, actor: &str) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let p = Prefix(net).to_string();
            tx.execute("DELETE FROM enrolments WHERE prefix = ?1", params![p])?;
            tx.execute(
                "INSERT OR REPLACE INTO unenrolled (prefix, at) VALUES (?1, ?2)",
                params![p, now],
            )?;
            Self::audit(&tx, actor, "unenrol", &p)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn set_mode(&self, o: &ModeOverride, actor: &str) -> Result<(), StateError> {
        let m = &o.mode;
        self.with(|c| {
            let tx = c.transaction()?;
            let mode = match m.mode {
                Mode::Normal => "normal",
                Mode::TrustedOnly => "trusted-only",
            };
            let exempt: Vec<String> = m.exempt.iter().map(|p| p.to_string()).collect();
            tx.execute(
                "INSERT OR REPLACE INTO global_mode (id, mode, set_by, reason, set_at, expires, exempt, exempt_replaces) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    mode,
                    m.set_by,
                    m.reason,
                    m.set_at.map(|t| t.timestamp()),
                    m.expires.map(|t| t.timestamp()),
                    exempt.join(","),
                    o.replace_exempt
                ],
            )?;
            let exemptions = match (o.replace_exempt, exempt.is_empty()) {
                (true, true) => "exemptions of mode.yaml REPLACED by none: no network is exempt".to_owned(),
                (true, false) => format!("exemptions of mode.yaml REPLACED by {}", exempt.join(", ")),
                (false, true) => "exemptions of mode.yaml kept".to_owned(),
                (false, false) => format!("exemptions of mode.yaml kept, plus {}", exempt.join(", ")),
            };
            Self::audit(&tx, actor, "set-mode", &format!("{mode}: {}; {exemptions}", m.reason))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn clear_mode(&self, actor: &str, reason: &str) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM global_mode", [])?;
            Self::audit(&tx, actor, "clear-mode", reason)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn record_release(
        &self,
        prefix: IpNet,
        ip: std::net::IpAddr,
        at: i64,
        until: i64,
        window_start: i64,
        max: u32,
    ) -> Result<Option<u32>, StateError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let p = Prefix(prefix).to_string();
            let used: u32 = tx.query_row(
                "SELECT COUNT(*) FROM releases WHERE prefix = ?1 AND at >= ?2",
                params![p, window_start],
                |r| r.get(0),
            )?;
            if used >= max {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO releases (prefix, ip, at, until) VALUES (?1, ?2, ?3, ?4)",
                params![p, ip.to_string(), at, until],
            )?;
            Self::audit(
                &tx,
                &format!("subscriber {ip}"),
                "self-release",
                &format!("{p} until {until}"),
            )?;
            tx.commit()?;
            Ok(Some(used))
        })
    }

    fn record_detection(&self, d: &Detection) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let p = Prefix(d.prefix).to_string();
            tx.execute(
                "INSERT INTO detections (prefix, ip, feed, family, qname, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![p, d.ip.to_string(), d.feed, d.family, d.qname, d.at],
            )?;
            if d.flag {
                tx.execute(
                    "INSERT OR REPLACE INTO infected (prefix, family, source, first_seen, ticket, origin) VALUES (?1, ?2, ?3, ?4, NULL, 'botnet-detection')",
                    params![p, d.family, crate::policy::compile::DETECTION, d.at],
                )?;
                tx.execute("DELETE FROM cleared WHERE prefix = ?1", params![p])?;
            }
            let outcome = if d.flag { "flagged infected" } else { "already flagged: evidence recorded" };
            Self::audit(&tx, &format!("feed {}", d.feed), "detect", &format!("{p} looked up {} (feed {}, family {}); {outcome}", d.qname, d.feed, d.family))?;
            tx.commit()?;
            Ok(())
        })
    }

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
    ) -> Result<Option<(AlertRow, bool)>, StateError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let p = Prefix(prefix).to_string();
            let active = tx
                .query_row(
                    &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE org = ?1 AND prefix = ?2 AND signature = ?3 AND state IN ('open','acknowledged')"),
                    params![org, p, signature],
                    alert_row,
                )
                .optional()?;
            if let Some(a) = active {
                if first_seen > a.last_seen {
                    tx.execute(
                        "UPDATE alerts SET last_seen = ?1, sightings = sightings + 1, updated_at = ?2 WHERE id = ?3",
                        params![first_seen, now, a.id],
                    )?;
                }
                tx.commit()?;
                return Ok(Some((a, false)));
            }
            let handled: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM alerts WHERE org = ?1 AND prefix = ?2 AND signature = ?3 AND first_seen >= ?4)",
                params![org, p, signature, first_seen],
                |r| r.get(0),
            )?;
            if handled {
                tx.commit()?;
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO alerts (org, prefix, signature, source, first_seen, last_seen, sightings, deadline, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1, ?6, 'open', ?7, ?7)",
                params![org, p, signature, source, first_seen, first_seen + grace_secs, now],
            )?;
            let id = tx.last_insert_rowid();
            let row = tx.query_row(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"), params![id], alert_row)?;
            for (d, body) in deliveries(&row) {
                Self::enqueue(&tx, Some(id), &d, &body, now)?;
            }
            Self::audit(&tx, "alerting", "alert-open", &format!("#{id} {org} {p} {signature}"))?;
            tx.commit()?;
            Ok(Some((row, true)))
        })
    }

    fn enqueue_all(
        &self,
        alert: Option<i64>,
        items: &[(Delivery, String)],
        now: i64,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (d, body) in items {
                Self::enqueue(&tx, alert, d, body, now)?;
            }
            Self::audit(&tx, "alerting", action, detail)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn touch_alert(&self, org: &str, prefix: IpNet, now: i64) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE alerts SET last_seen = MAX(last_seen, ?1), sightings = sightings + 1, updated_at = ?1
                 WHERE org = ?2 AND prefix = ?3 AND state IN ('open','acknowledged')",
                params![now, org, Prefix(prefix).to_string()],
            )?;
            Ok(())
        })
    }

    fn alerts(&self, org: Option<&str>, state: Option<&str>) -> Result<Vec<AlertRow>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 IS NULL OR org = ?1) AND (?2 IS NULL OR state = ?2) ORDER BY id DESC LIMIT 10000"
            ))?;
            let rows = st.query_map(params![org, state], alert_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn alert(&self, id: i64) -> Result<Option<AlertRow>, StateError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"),
                params![id],
                alert_row,
            )
            .optional()?)
        })
    }

    fn transition(
        &self,
        id: i64,
        from: &[&str],
        to: &str,
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let state: Option<String> = tx
                .query_row("SELECT state FROM alerts WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(state) = state.filter(|s| from.contains(&s.as_str())) else {
                return Ok(false);
            };
            tx.execute(
                "UPDATE alerts SET state = ?1, updated_at = ?2 WHERE id = ?3",
                params![to, now, id],
            )?;
            Self::audit(
                &tx,
                actor,
                &format!("alert-{to}"),
                &format!("#{id} {state} -> {to}: {reason}"),
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn mark_reminder(&self, id: i64, bit: u32) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE alerts SET reminders_sent = reminders_sent | ?1 WHERE id = ?2",
                params![1i64 << bit, id],
            )?;
            Ok(())
        })
    }

    fn revoke(
        &self,
        org: &str,
        alert: Option<i64>,
        reason: &str,
        now: i64,
    ) -> Result<bool, StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let already: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM revocations WHERE org = ?1 AND reinstated_at IS NULL)",
                params![org],
                |r| r.get(0),
            )?;
            if already {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO revocations (org, at, alert_id, reason) VALUES (?1, ?2, ?3, ?4)",
                params![org, now, alert, reason],
            )?;
            Self::audit(&tx, "alerting", "revoke", &format!("{org}: {reason}"))?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn reinstate(
        &self,
        org: &str,
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE revocations SET reinstated_at = ?1, reinstated_by = ?2, reinstate_reason = ?3 WHERE org = ?4 AND reinstated_at IS NULL",
                params![now, actor, reason, org],
            )?;
            if n > 0 {
                Self::audit(&tx, actor, "reinstate", &format!("{org}: {reason}"))?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    fn strikes(&self, since: i64) -> Result<Vec<(String, i64)>, StateError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT org, COUNT(*) FROM revocations WHERE at >= ?1 GROUP BY org")?;
            let rows = st.query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<OutboxRow>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, event, url, secret, body, idempotency_key, attempts FROM outbox
                 WHERE delivered_at IS NULL AND next_attempt <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(params![now, limit as i64], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    event: r.get(1)?,
                    url: r.get(2)?,
                    secret: r.get(3)?,
                    body: r.get(4)?,
                    idempotency_key: r.get(5)?,
                    attempts: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn delivery_result(
        &self,
        id: i64,
        now: i64,
        error: Option<&str>,
        next_attempt: i64,
    ) -> Result<(), StateError> {
        self.with(|c| {
            match error {
                None => c.execute("UPDATE outbox SET delivered_at = ?1, attempts = attempts + 1, last_error = NULL WHERE id = ?2", params![now, id])?,
                Some(e) => c.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?1, next_attempt = ?2 WHERE id = ?3",
                    params![e, next_attempt, id],
                )?,
            };
            Ok(())
        })
    }

    fn pending_deliveries(&self) -> Result<i64, StateError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
                [],
                |r| r.get(0),
            )?)
        })
    }

    fn outbox_depth(&self) -> Result<(i64, Option<i64>), StateError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
    }

    fn releases_since(&self, prefix: IpNet, window_start: i64) -> Result<u32, StateError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM releases WHERE prefix = ?1 AND at >= ?2",
                params![Prefix(prefix).to_string(), window_start],
                |r| r.get(0),
            )?)
        })
    }

    fn overrides(&self) -> Result<Overrides, StateError> {
        self.with(|c| {
            let mut o = Overrides::default();
            let mut st = c.prepare("SELECT prefix, family, source, first_seen, ticket, origin, forced FROM infected ORDER BY prefix")?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?, r.get(4)?, r.get::<_, String>(5)?, r.get::<_, bool>(6)?))
            })?;
            for row in rows {
                let (p, family, source, first_seen, ticket, origin, force) = row?;
                let e = InfectedEntry {
                    prefix: prefix(&p)?,
                    family,
                    source,
                    first_seen: ts(first_seen)?,
                    ticket,
                    force,
                };
                if origin == "botnet-detection" {
                    o.detected.push(e);
                } else {
                    o.infected.push(e);
                }
            }
            // Evidence: per subscriber and signature, the latest lookup with the first time and
            // the count, over the last EVIDENCE_DAYS.
            let since = Utc::now().timestamp() - EVIDENCE_DAYS * 86_400;
            let mut st = c.prepare(
                "SELECT d.prefix, d.family, d.feed, d.qname, d.at, g.first, g.n FROM detections d
                 JOIN (SELECT MAX(id) AS last, MIN(at) AS first, COUNT(*) AS n FROM detections
                       WHERE at >= ?1 GROUP BY prefix, family) g ON d.id = g.last
                 ORDER BY d.prefix, g.first",
            )?;
            let rows = st.query_map(params![since], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?;
            for row in rows {
                let (p, family, feed, qname, last_at, first_at, n) = row?;
                o.evidence.push(crate::policy::Evidence {
                    prefix: prefix(&p)?.0,
                    family,
                    feed,
                    qname,
                    first_at,
                    last_at,
                    count: u32::try_from(n).unwrap_or(u32::MAX),
                });
            }
            let mut st = c.prepare("SELECT prefix, cleared_at FROM cleared ORDER BY prefix")?;
            for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (p, at) = row?;
                o.cleared.push((prefix(&p)?.0, at));
            }
            let mut st = c.prepare("SELECT prefix, profile, enabled_by, enabled_at, forced, allow, remove, schedule FROM enrolments ORDER BY prefix")?;
            let rows = st.query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?),
                    (r.get::<_, bool>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?, r.get(7)?),
                ))
            })?;
            for row in rows {
                let ((p, profile, enabled_by, at), (force, allow, remove, schedule)) = row?;
                o.enrolments.push(EnrolmentEntry {
                    prefix: prefix(&p)?,
                    profile,
                    enabled_by,
                    enabled_at: ts(at)?,
                    force,
                    allow: parse_list(&allow)?,
                    remove: parse_list(&remove)?,
                    schedule,
                });
            }
            let mut st = c.prepare("SELECT prefix FROM unenrolled ORDER BY prefix")?;
            for row in st.query_map([], |r| r.get::<_, String>(0))? {
                o.unenrolled.push(prefix(&row?)?.0);
            }
            let mut st = c.prepare("SELECT DISTINCT org FROM revocations WHERE reinstated_at IS NULL")?;
            for row in st.query_map([], |r| r.get::<_, String>(0))? {
                o.revoked.push(row?);
            }
            let now = Utc::now().timestamp();
            let mut st = c.prepare("SELECT prefix, at, until FROM releases WHERE until > ?1 ORDER BY at")?;
            for row in st.query_map(params![now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))? {
                let (p, at, until) = row?;
                o.released.push((prefix(&p)?.0, at, until));
            }
            let mode = c
                .query_row(
                    "SELECT mode, set_by, reason, set_at, expires, exempt, exempt_replaces FROM global_mode WHERE id = 1",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, bool>(6)?,
                        ))
                    },
                )
                .optional()?;
            if let Some((mode, set_by, reason, set_at, expires, exempt, replace_exempt)) = mode {
                o.mode = Some(ModeOverride { replace_exempt, mode: ModeFile {
                    mode: match mode.as_str() {
                        "trusted-only" => Mode::TrustedOnly,
                        "normal" => Mode::Normal,
                        other => return Err(StateError::Corrupt(format!("mode {other}"))),
                    },
                    set_by,
                    reason,
                    set_at: set_at.map(ts).transpose()?,
                    expires: expires.map(ts).transpose()?,
                    exempt: exempt
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(prefix)
                        .collect::<Result<_, _>>()?,
                }});
            }
            Ok(o)
        })
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<(i64, String, String, String)>, StateError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?1")?;
            let rows = st.query_map(params![limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn record_misses(&self, rows: &[MissRow], prune_before: i64) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO misses (hour, profile, name, hint, count) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (hour, profile, name, hint) DO UPDATE SET count = count + excluded.count",
                )?;
                for r in rows {
                    st.execute(params![
                        r.hour,
                        r.profile,
                        r.name,
                        r.hint,
                        i64::try_from(r.count).unwrap_or(i64::MAX)
                    ])?;
                }
            }
            tx.execute("DELETE FROM misses WHERE hour < ?1", params![prune_before])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn misses(&self, profile: Option<&str>, since: i64) -> Result<Vec<MissRow>, StateError> {
        self.with(|c| {
            let hour = since - since.rem_euclid(3600);
            let mut st = c.prepare(
                "SELECT hour, profile, name, hint, count FROM misses
                 WHERE hour >= ?1 AND (?2 IS NULL OR profile = ?2)",
            )?;
            let rows = st.query_map(params![hour, profile], |r| {
                Ok(MissRow {
                    hour: r.get(0)?,
                    profile: r.get(1)?,
                    name: r.get(2)?,
                    hint: r.get(3)?,
                    count: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_from_a_newer_release_is_refused_and_copies_never_touch_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.sqlite");
        // A database as release 3 of the schema wrote it: open_copy migrates its private
        // copy, never the file.
        {
            let c = Connection::open(&path).expect("raw");
            for sql in &MIGRATIONS[..3] {
                c.execute_batch(sql).expect("old schema");
            }
            c.pragma_update(None, "user_version", 3).expect("version");
        }
        let copy = SqliteStore::open_copy(&path).expect("copy");
        assert!(copy.overrides().is_ok());
        let c = Connection::open(&path).expect("raw");
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, 3, "the file was migrated by a read-only command");
        c.pragma_update(None, "user_version", 999).expect("newer");
        drop(c);
        for e in [
            SqliteStore::open(&path).err(),
            SqliteStore::open_copy(&path).err(),
        ] {
            let e = e.expect("a newer schema must be refused").to_string();
            assert!(e.contains("newer release") && e.contains("999"), "{e}");
        }
    }

    #[test]
    fn overrides_survive_reopen_and_audit_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.sqlite");
        {
            let db = SqliteStore::open(&path).expect("open");
            db.flag(
                &InfectedEntry {
                    prefix: "2001:db8:1:100::/56".parse().expect("prefix"),
                    family: "Mirai".into(),
                    source: "abuse-desk".into(),
                    first_seen: ts(1_700_000_000).expect("ts"),
                    ticket: Some("T-1".into()),
                    force: false,
                },
                "alice",
            )
            .expect("flag");
            db.unflag(
                "192.0.2.1/32".parse().expect("net"),
                1_700_000_100,
                "bob",
                "cleaned",
            )
            .expect("unflag");
            db.set_mode(
                &ModeOverride {
                    replace_exempt: false,
                    mode: ModeFile {
                        mode: Mode::TrustedOnly,
                        set_by: "noc".into(),
                        reason: "worm".into(),
                        set_at: None,
                        expires: None,
                        exempt: vec!["192.0.2.0/24".parse().expect("prefix")],
                    },
                },
                "noc",
            )
            .expect("mode");
        }
        let db = SqliteStore::open(&path).expect("reopen");
        let o = db.overrides().expect("read");
        assert_eq!(o.infected.len(), 1);
        assert_eq!(o.infected[0].ticket.as_deref(), Some("T-1"));
        assert_eq!(
            o.cleared,
            vec![("192.0.2.1/32".parse().expect("net"), 1_700_000_100)]
        );
        let m = o.mode.expect("mode persisted");
        assert_eq!(m.mode.mode, Mode::TrustedOnly);
        assert_eq!(m.mode.exempt.len(), 1);
        assert!(!m.replace_exempt);
        let log = db.audit_log(10).expect("audit");
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].2, "set-mode");
        db.clear_mode("noc", "over").expect("clear");
        // Self-releases: at most 2 in the window, the third is refused and not recorded.
        let net: IpNet = "192.0.2.9/32".parse().expect("net");
        let ip = "192.0.2.9".parse().expect("ip");
        let now = Utc::now().timestamp();
        assert_eq!(
            db.record_release(net, ip, now, now + 3600, now - 100, 2)
                .expect("1"),
            Some(0)
        );
        assert_eq!(
            db.record_release(net, ip, now, now + 3600, now - 100, 2)
                .expect("2"),
            Some(1)
        );
        assert_eq!(
            db.record_release(net, ip, now, now + 3600, now - 100, 2)
                .expect("3"),
            None
        );
        assert_eq!(db.releases_since(net, now - 100).expect("count"), 2);
        assert_eq!(db.overrides().expect("read").released.len(), 2);
        assert!(db.overrides().expect("read").mode.is_none());
    }
}
