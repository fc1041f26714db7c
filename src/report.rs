//! What the CLI prints for people: the admin API's JSON as aligned text (`--json` prints the
//! JSON itself). Pure functions of the JSON, so the layout is tested without a server.

use serde_json::Value;

/// Text of a JSON value: strings without quotes, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An aligned table: a header line, then one line per row; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `cleanpipe status`.
pub fn status(v: &Value) -> String {
    let mut out = String::new();
    let r = &v["reload"];
    out.push_str(&format!(
        "cleanpipe: policy generation {}, loaded {} (compiled in {} ms)\n",
        text(&v["generation"]),
        text(&r["loaded_at"]),
        text(&r["compile_ms"])
    ));
    let m = &v["mode"];
    let mode = if v["trusted_only_in_force"] == true {
        let mut s = format!(
            "TRUSTED-ONLY since {} by {}: {}",
            text(&m["set_at"]),
            text(&m["set_by"]),
            text(&m["reason"])
        );
        if !m["expires"].is_null() {
            s.push_str(&format!(" (ends {})", text(&m["expires"])));
        }
        s
    } else {
        "normal".into()
    };
    let mut rows = vec![("mode", mode)];
    if let Some(ex) = m["exempt"].as_array().filter(|e| !e.is_empty()) {
        rows.push(("exempt", ex.iter().map(text).collect::<Vec<_>>().join(", ")));
    }
    let errors = r["last_errors"].as_array().cloned().unwrap_or_default();
    rows.push((
        "reload",
        if errors.is_empty() {
            format!(
                "ok ({} reloads, {} failures since start)",
                text(&r["reloads"]),
                text(&r["failures"])
            )
        } else {
            format!(
                "FAILED at {} with {} errors; generation {} still serves",
                text(&r["last_error_at"]),
                errors.len(),
                text(&v["generation"])
            )
        },
    ));
    let c = &v["counts"];
    rows.push((
        "policy",
        format!(
            "{} infected, {} enrolments, {} organisations, {} profiles, {} services, {} allowlisted names, {} client networks, {} feed triggers",
            text(&c["infected"]),
            text(&c["enrolments"]),
            text(&c["organisations"]),
            text(&c["profiles"]),
            text(&c["services"]),
            text(&c["allowlisted_names"]),
            text(&c["client_networks"]),
            text(&c["feed_triggers"])
        ),
    ));
    rows.push(("allowlists", text(&v["allowlist_version"])));
    rows.push((
        "alert outbox",
        format!("{} deliveries waiting", text(&v["pending_deliveries"])),
    ));
    for (k, val) in rows {
        out.push_str(&format!("  {k:<14}{val}\n"));
    }
    for e in &errors {
        out.push_str(&format!("    ! {}\n", text(e)));
    }
    if let Some(feeds) = v["feeds"].as_array().filter(|f| !f.is_empty()) {
        out.push_str("\nthreat feeds\n");
        let rows: Vec<Vec<String>> = feeds
            .iter()
            .map(|f| {
                let age = f["age_secs"].as_i64().map_or("-".into(), duration);
                vec![
                    text(&f["name"]),
                    text(&f["serial"]),
                    text(&f["triggers"]),
                    if f["stale"] == true {
                        format!("{age} STALE")
                    } else {
                        age
                    },
                    text(&f["source"]),
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &["NAME", "SERIAL", "TRIGGERS", "AGE", "SOURCE"],
            &rows,
        )));
    }
    if let Some(orgs) = v["organisations"].as_array().filter(|o| !o.is_empty()) {
        out.push_str("\norganisations\n");
        let rows: Vec<Vec<String>> = orgs
            .iter()
            .map(|o| {
                vec![
                    text(&o["id"]),
                    text(&o["standing"]),
                    text(&o["strikes"]),
                    text(&o["grace_hours"]),
                    text(&o["name"]),
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &["ID", "STANDING", "STRIKES", "GRACE_H", "NAME"],
            &rows,
        )));
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// Seconds as `45 s`, `12 min`, `3 h`, `2 d`.
pub fn duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// A table of the objects in the array `v`, a row each made by `row`; `empty` when there are
/// none.
fn list(v: &Value, headers: &[&str], empty: &str, row: impl Fn(&Value) -> Vec<String>) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| a.iter().map(&row).collect())
        .unwrap_or_default();
    if rows.is_empty() {
        return format!("{empty}\n");
    }
    table(headers, &rows)
}

/// `cleanpipe alerts list`.
pub fn alerts(v: &Value) -> String {
    let headers = [
        "ALERT",
        "STATE",
        "ORGANISATION",
        "HOST",
        "SIGNATURE",
        "FIRST SEEN",
        "DEADLINE",
        "SIGHTINGS",
    ];
    list(v, &headers, "no alerts", |r| {
        vec![
            format!("#{}", text(&r["id"])),
            text(&r["state"]),
            text(&r["org"]),
            text(&r["prefix"]),
            text(&r["signature"]),
            text(&r["first_seen"]),
            text(&r["deadline"]),
            text(&r["sightings"]),
        ]
    })
}

/// `cleanpipe audit`.
pub fn audit(v: &Value) -> String {
    list(
        v,
        &["AT", "ACTOR", "ACTION", "DETAIL"],
        "no changes recorded",
        |r| {
            vec![
                text(&r["at"]),
                text(&r["actor"]),
                text(&r["action"]),
                text(&r["detail"]),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_every_column_but_the_last() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "short".into()],
                vec!["1234".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID    NAME\n1     short\n1234  x\n");
    }

    #[test]
    fn alerts_and_audit_read_as_tables() {
        let a = alerts(
            &json!([{"id": 3, "state": "open", "org": "hospital", "prefix": "192.0.2.7",
            "signature": "Qakbot", "first_seen": "2026-11-20T08:00:00Z",
            "deadline": "2026-11-22T08:00:00Z", "sightings": 4}]),
        );
        let lines: Vec<&str> = a.lines().collect();
        assert!(lines[0].starts_with("ALERT  STATE  ORGANISATION"), "{a}");
        assert!(lines[1].starts_with("#3     open   hospital"), "{a}");
        assert!(lines[1].contains("2026-11-22T08:00:00Z"), "{a}");
        assert_eq!(alerts(&json!([])), "no alerts\n");
        let t = audit(
            &json!([{"at": "2026-12-01T08:00:00Z", "actor": "alice", "action": "flag",
            "detail": "192.0.2.7 Mirai"}]),
        );
        assert_eq!(
            t,
            "AT                    ACTOR  ACTION  DETAIL\n2026-12-01T08:00:00Z  alice  flag    192.0.2.7 Mirai\n"
        );
    }

    #[test]
    fn a_failing_reload_and_trusted_only_mode_stand_out() {
        let v = json!({"generation": 4, "trusted_only_in_force": true,
            "mode": {"mode": "trusted-only", "set_by": "noc/alice", "reason": "worm",
                     "set_at": "2026-12-01T06:00:00Z", "expires": null, "exempt": ["198.51.100.0/28"]},
            "reload": {"loaded_at": "2026-12-01T06:00:00Z", "compile_ms": 12, "reloads": 4,
                       "failures": 1, "last_errors": ["policy/infected.yaml:3: bad prefix"],
                       "last_error_at": "2026-12-01T07:00:00Z"},
            "counts": {"infected": 1}, "pending_deliveries": 0, "feeds": [], "organisations": []});
        let s = status(&v);
        assert!(
            s.contains("TRUSTED-ONLY since 2026-12-01T06:00:00Z by noc/alice: worm"),
            "{s}"
        );
        assert!(s.contains("exempt        198.51.100.0/28"), "{s}");
        assert!(
            s.contains("FAILED at 2026-12-01T07:00:00Z with 1 errors; generation 4 still serves"),
            "{s}"
        );
        assert!(s.contains("! policy/infected.yaml:3: bad prefix"), "{s}");
    }
}
