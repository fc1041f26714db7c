#!/usr/bin/env bash
# Check the Grafana dashboard: valid JSON, in sync with build_dashboard.py, every panel with a
# one-sentence description and the ${DS_PROMETHEUS} data source, every query filtered by
# $instance, only the agreed metric names, and every PromQL expression accepted by promtool
# (when installed). Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== regenerate and compare"
python3 "$here/build_dashboard.py" --out "$tmp"
for f in cleanpipe.json metrics.txt; do
  if ! cmp -s "$tmp/$f" "$here/$f"; then
    diff -u "$here/$f" "$tmp/$f" | head -40
    echo "ops/grafana/$f is not what build_dashboard.py makes: run python3 ops/grafana/build_dashboard.py"
    exit 1
  fi
done

echo "== dashboard contents"
python3 - "$here/cleanpipe.json" "$here/metrics.txt" "$tmp/exprs.yml" <<'EOF'
import json, re, sys
dash_path, metrics_path, rules_out = sys.argv[1:4]
d = json.load(open(dash_path, encoding="utf-8"))   # fails on invalid JSON

# The metric names the engineer implements (the dashboard's list and the alert rules' list).
AGREED = set("""
cleanpipe_queries_total cleanpipe_responses_total cleanpipe_decisions_total
cleanpipe_response_seconds cleanpipe_upstream_rtt_seconds
cleanpipe_cache_hits_total cleanpipe_cache_misses_total cleanpipe_cache_entries cleanpipe_cache_bytes
cleanpipe_upstream_failures_total cleanpipe_upstream_errors_total cleanpipe_upstream_joined_total
cleanpipe_policy_generation cleanpipe_policy_entries cleanpipe_policy_reload_seconds
cleanpipe_policy_reload_failures_total cleanpipe_policy_last_reload_ok cleanpipe_global_trusted_only
cleanpipe_botnet_detections_total cleanpipe_botnet_lookups_unproven_total cleanpipe_rate_limited_total
cleanpipe_self_releases_total
cleanpipe_feed_age_seconds cleanpipe_feed_serial cleanpipe_feed_transfers_total
cleanpipe_feed_transfer_failures_total
cleanpipe_alerts_opened_total cleanpipe_alerts_overdue_total cleanpipe_organisation_revocations_total
cleanpipe_alert_outbox_pending cleanpipe_alert_outbox_oldest_seconds cleanpipe_alert_deliveries_total
cleanpipe_connections_open cleanpipe_connections_refused_total cleanpipe_connections_evicted_total
cleanpipe_tls_handshakes_total cleanpipe_dnssec_validations_total
cleanpipe_ready cleanpipe_global_mode_set_timestamp_seconds
""".split())

errors = []
assert d["schemaVersion"] == 39, "schemaVersion must be 39"
variables = {v["name"]: v for v in d["templating"]["list"]}
ds = variables.get("DS_PROMETHEUS")
if not ds or ds["type"] != "datasource" or ds["query"] != "prometheus":
    errors.append("no datasource variable DS_PROMETHEUS of type prometheus")
inst = variables.get("instance")
if not inst or inst.get("definition") != "label_values(cleanpipe_policy_generation, instance)":
    errors.append("no instance variable from label_values(cleanpipe_policy_generation, instance)")

ids, exprs, rows = set(), [], []
for p in d["panels"]:
    if p["id"] in ids:
        errors.append(f"duplicate panel id {p['id']}")
    ids.add(p["id"])
    if p["type"] == "row":
        rows.append(p["title"])
        continue
    title = p.get("title", "?")
    desc = p.get("description", "").strip()
    if not desc or not desc.endswith(".") or desc.count(". ") > 0:
        errors.append(f"panel {title!r}: description must be one sentence ending in a period")
    if p.get("datasource") != {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}:
        errors.append(f"panel {title!r}: data source is not ${{DS_PROMETHEUS}}")
    if not p.get("targets"):
        errors.append(f"panel {title!r}: no query")
    for t in p.get("targets", []):
        e = t["expr"]
        exprs.append((title, e))
        for m in re.finditer(r"(cleanpipe_[a-z0-9_]+)(\{[^}]*\})?", e):
            if not m.group(2) or 'instance=~"$instance"' not in m.group(2):
                errors.append(f"panel {title!r}: {m.group(1)} is not filtered by $instance")
        if t.get("datasource") != {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}:
            errors.append(f"panel {title!r}: a query's data source is not ${{DS_PROMETHEUS}}")

listed = [l.strip() for l in open(metrics_path, encoding="utf-8") if l.strip()]
if listed != sorted(set(listed)):
    errors.append("metrics.txt is not sorted and unique")
for name in listed:
    if name not in AGREED:
        errors.append(f"metrics.txt: {name} is not an agreed metric name")
missing = AGREED - set(listed)
if missing:
    errors.append(f"agreed metrics used nowhere: {sorted(missing)}")

# A rules file with every dashboard query as a recording rule, for promtool's parser.
with open(rules_out, "w", encoding="utf-8") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for n, (title, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$instance", ".*")
        f.write(f"      - record: dashboard_query_{n}\n        expr: {json.dumps(e)}\n")

if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"  SUCCESS: {len(ids) - len(rows)} panels in {len(rows)} rows ({', '.join(rows)}), "
      f"{len(exprs)} queries, {len(listed)} metrics in metrics.txt")
EOF

if command -v promtool >/dev/null; then
  echo "== promtool parses every dashboard query"
  promtool check rules "$tmp/exprs.yml" | sed 's#'"$tmp"'/##'
else
  echo "SKIPPED: promtool not found, dashboard queries not parsed (apt-get install -y prometheus)"
fi
echo "grafana dashboard: OK"
