#!/usr/bin/env python3
"""Generate the cleanpipe Grafana dashboard (cleanpipe.json) and metrics.txt.

    python3 ops/grafana/build_dashboard.py            # writes ops/grafana/cleanpipe.json and metrics.txt
    python3 ops/grafana/build_dashboard.py --out DIR  # writes them into DIR instead (check.sh)

The dashboard is written by this script so that every panel has a description, every query
filters on $instance and uses the ${DS_PROMETHEUS} data source, and metrics.txt lists exactly
the metric names used by the dashboard and by ops/prometheus/cleanpipe-rules.yml. Edit the
panels here, run it, and commit both outputs (ops/grafana/check.sh fails when they differ).
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "..", "prometheus", "cleanpipe-rules.yml")

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
I = 'instance=~"$instance"'  # every selector is filtered by the instance variable
RI = "$__rate_interval"


def sel(metric, extra=""):
    """A selector with the instance filter: sel('m', 'rcode="SERVFAIL"')."""
    labels = I + ("," + extra if extra else "")
    return f"{metric}{{{labels}}}"


class Layout:
    """Places panels left to right in a 24-column grid, rows on their own line."""

    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append({
            "type": "row", "id": self._id(), "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.y += 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


def targets(queries):
    out = []
    for n, (expr, legend) in enumerate(queries):
        out.append({
            "datasource": DS, "refId": chr(ord("A") + n), "expr": expr,
            "legendFormat": legend, "range": True, "editorMode": "code",
        })
    return out


def timeseries(title, description, queries, unit="short", stack=False, thresholds=None,
               min0=True, log=False):
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 30,
            "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "axisSoftMin": 0 if min0 else None,
            "scaleDistribution": {"type": "log", "log": 10} if log else {"type": "linear"},
            "thresholdsStyle": {"mode": "line" if thresholds else "off"},
        },
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}]
            + [{"color": c, "value": v} for v, c in (thresholds or [])],
        },
    }
    if not min0:
        del defaults["custom"]["axisSoftMin"]
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title, description, expr, legend="{{instance}}", unit="short", steps=None,
         mappings=None, decimals=None):
    defaults = {
        "unit": unit,
        "thresholds": {"mode": "absolute",
                       "steps": steps or [{"color": "green", "value": None}]},
        "mappings": mappings or [],
        "color": {"mode": "thresholds"},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "targets": targets([(expr, legend)]),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background", "graphMode": "none", "textMode": "auto",
            "justifyMode": "auto", "orientation": "auto",
        },
    }


def value_map(pairs):
    """[(value, text, color)] -> a Grafana value mapping."""
    return [{
        "type": "value",
        "options": {str(v): {"text": t, "color": c, "index": i} for i, (v, t, c) in enumerate(pairs)},
    }]


def dashboard():
    L = Layout()
    SERVFAIL = sel("cleanpipe_responses_total", 'rcode="SERVFAIL"')

    # ------------------------------------------------------------------ Overview
    L.row("Overview")
    L.add(stat("Ready", "Each instance should show READY; NOT READY means it is starting, stopping or stuck (alert CleanpipeNotReady).",
               sel("cleanpipe_ready"),
               mappings=value_map([(1, "READY", "green"), (0, "NOT READY", "red")]),
               steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}]), 4, 4)
    L.add(stat("Queries/s", "Total queries per second over all transports; a sudden drop to zero on a busy instance means subscribers no longer reach it.",
               f"sum by (instance) (rate({sel('cleanpipe_queries_total')}[{RI}]))", unit="reqps"), 4, 4)
    L.add(stat("SERVFAIL share", "Share of answers that are SERVFAIL; above 5 % for 10 minutes pages (CleanpipeServfailRatioHigh).",
               f"sum by (instance) (rate({SERVFAIL}[{RI}])) / "
               f"sum by (instance) (rate({sel('cleanpipe_responses_total')}[{RI}]))",
               unit="percentunit", decimals=2,
               steps=[{"color": "green", "value": None}, {"color": "orange", "value": 0.02},
                      {"color": "red", "value": 0.05}]), 4, 4)
    L.add(stat("Last policy reload", "FAILING means policy file changes are not applied and the previous policy still serves (CleanpipePolicyReloadFailing).",
               sel("cleanpipe_policy_last_reload_ok"),
               mappings=value_map([(1, "OK", "green"), (0, "FAILING", "red")]),
               steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}]), 4, 4)
    L.add(stat("Global mode", "TRUSTED-ONLY means every subscriber who is not exempt reaches only the trusted zone; it should be on only during a declared emergency.",
               sel("cleanpipe_global_trusted_only"),
               mappings=value_map([(0, "normal", "green"), (1, "TRUSTED-ONLY", "red")]),
               steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}]), 4, 4)
    L.add(stat("Infected subscribers", "Subscribers quarantined right now; a jump of more than 20 % in an hour is either an outbreak or a bad abuse-feed import.",
               sel("cleanpipe_policy_entries", 'kind="infected"')), 4, 4)

    # ------------------------------------------------------------------ Traffic
    L.row("Traffic")
    L.add(timeseries("Queries/s by transport",
                     "Queries received per second by transport (udp, tcp, tls = DoT, https = DoH); compare with the same time last week to spot outages and floods.",
                     [(f"sum by (transport) (rate({sel('cleanpipe_queries_total')}[{RI}]))", "{{transport}}")],
                     unit="reqps", stack=True), 8, 8)
    L.add(timeseries("Answers by rcode",
                     "Answers per second by response code; SERVFAIL should stay a small fraction, and a rise in REFUSED means clients outside clients.allow are asking.",
                     [(f"sum by (rcode) (rate({sel('cleanpipe_responses_total')}[{RI}]))", "{{rcode}}")],
                     unit="reqps", stack=True), 8, 8)
    L.add(timeseries("Decisions by action",
                     "What the policy decided per second (resolve, sinkhole, nxdomain, refused, alert, ...); a change in the mix without a policy change needs explaining.",
                     [(f"sum by (action) (rate({sel('cleanpipe_decisions_total')}[{RI}]))", "{{action}}")],
                     unit="reqps", stack=True), 8, 8)
    L.add(timeseries("Decisions by action and reason",
                     "The same decisions split by reason (quarantined, threat_feed, trusted_zone, exempt, ...), to see which rule is behind a change.",
                     [(f"sum by (action, reason) (rate({sel('cleanpipe_decisions_total')}[{RI}]))", "{{action}} / {{reason}}")],
                     unit="reqps"), 24, 8)

    # ------------------------------------------------------------------ Latency
    L.row("Latency")
    resp = f"rate({sel('cleanpipe_response_seconds_bucket')}[{RI}])"
    L.add(timeseries("Response time p50 / p90 / p99",
                     "Time from receiving a query to sending the answer, all sources together; p99 should stay well under a second, cache hits far under a millisecond.",
                     [(f"histogram_quantile({q}, sum by (le) ({resp}))", f"p{int(q * 100)}")
                      for q in (0.5, 0.9, 0.99)], unit="s"), 8, 8)
    L.add(timeseries("p99 by source",
                     "p99 response time by where the answer came from (cache, synthesized by policy, upstream); only upstream should be slow.",
                     [(f"histogram_quantile(0.99, sum by (le, source) ({resp}))", "{{source}}")],
                     unit="s"), 8, 8)
    L.add(timeseries("p99 by transport",
                     "p99 response time by transport; DoT and DoH add the TLS work, so a gap that grows over UDP points at TLS overload.",
                     [(f"histogram_quantile(0.99, sum by (le, transport) ({resp}))", "{{transport}}")],
                     unit="s"), 8, 8)
    rtt = f"rate({sel('cleanpipe_upstream_rtt_seconds_bucket')}[{RI}])"
    L.add(timeseries("Upstream round trip p50 / p99 by backend",
                     "Round-trip time of queries to upstream servers; a rising p99 here explains slow uncached answers and usually precedes SERVFAILs.",
                     [(f"histogram_quantile(0.5, sum by (le, backend) ({rtt}))", "p50 {{backend}}"),
                      (f"histogram_quantile(0.99, sum by (le, backend) ({rtt}))", "p99 {{backend}}")],
                     unit="s"), 24, 8)

    # ------------------------------------------------------------------ Cache
    L.row("Cache")
    hits = f"sum by (instance) (rate({sel('cleanpipe_cache_hits_total')}[{RI}]))"
    misses = f"sum by (instance) (rate({sel('cleanpipe_cache_misses_total')}[{RI}]))"
    L.add(timeseries("Cache hit ratio",
                     "Share of cache lookups answered from the cache; a sudden fall means a restart, a flush or a random-subdomain flood.",
                     [(f"{hits} / ({hits} + {misses})", "{{instance}}")],
                     unit="percentunit"), 8, 8)
    L.add(timeseries("Cached answers",
                     "Answers held in the cache; it should level off at cache.max_entries, never grow past it.",
                     [(f"sum by (instance) ({sel('cleanpipe_cache_entries')})", "{{instance}}")]), 8, 8)
    L.add(timeseries("Cache memory",
                     "Memory the cache holds; budget about 700 bytes per entry (docs/performance.md) and watch that it stays within the host's memory.",
                     [(f"sum by (instance) ({sel('cleanpipe_cache_bytes')})", "{{instance}}")],
                     unit="bytes"), 8, 8)

    # ------------------------------------------------------------------ Upstream
    L.row("Upstream")
    L.add(timeseries("Upstream failures by backend",
                     "Resolutions that failed upstream and became SERVFAIL to the client; should be near zero outside upstream outages.",
                     [(f"sum by (backend) (rate({sel('cleanpipe_upstream_failures_total')}[{RI}]))", "{{backend}}")],
                     unit="reqps"), 8, 8)
    L.add(timeseries("Upstream errors by kind",
                     "Individual upstream query errors by backend and kind (timeouts, refused, malformed, ...); the kind tells whether the network or the servers are at fault.",
                     [(f"sum by (backend, kind) (rate({sel('cleanpipe_upstream_errors_total')}[{RI}]))", "{{backend}} / {{kind}}")],
                     unit="reqps"), 8, 8)
    L.add(timeseries("Misses joined to a query in flight",
                     "Cache misses that waited for an identical question already on its way upstream; a high rate is normal under popular-name bursts and protects the upstream.",
                     [(f"sum by (instance) (rate({sel('cleanpipe_upstream_joined_total')}[{RI}]))", "{{instance}}")],
                     unit="reqps"), 8, 8)
    L.add(timeseries("DNSSEC validations by result",
                     "Upstream answers validated in recursive mode: secure (AD), insecure (unsigned zones) and bogus (SERVFAIL, EDE 6); bogus should stay a thin line, a jump is a wrong clock or a broken domain.",
                     [(f"sum by (result) (rate({sel('cleanpipe_dnssec_validations_total')}[{RI}]))", "{{result}}")],
                     unit="reqps"), 8, 8)

    # ------------------------------------------------------------------ Policy
    L.row("Policy")
    L.add(timeseries("Policy generation",
                     "Generation of the policy in force, one step per successful reload; instances fed the same files should step together.",
                     [(sel("cleanpipe_policy_generation"), "{{instance}}")], min0=False), 6, 8)
    L.add(timeseries("Policy entries by kind",
                     "Entries of the serving policy (infected, enrolments, organisations, services, allowlisted names), log scale; watch infected for sudden jumps.",
                     [(sel("cleanpipe_policy_entries"), "{{kind}} {{instance}}")], log=True), 6, 8)
    reload_b = f"rate({sel('cleanpipe_policy_reload_seconds_bucket')}[30m])"
    L.add(timeseries("Reload duration p50 / p99 (30 min)",
                     "How long a policy reload takes from file change to the new policy serving; a million-entry recompile takes 0.4 s idle and 1-3 s under full load (README).",
                     [(f"histogram_quantile(0.5, sum by (le) ({reload_b}))", "p50"),
                      (f"histogram_quantile(0.99, sum by (le) ({reload_b}))", "p99"),
                      (f"sum by (instance) (increase({sel('cleanpipe_policy_reload_seconds_count')}[30m]))", "reloads per 30 min {{instance}}")],
                     unit="s"), 6, 8)
    L.add(timeseries("Reload failures",
                     "Failed reloads (the previous policy stays in force); any failure needs `cleanpipe status` to see the file and line.",
                     [(f"sum by (instance) (increase({sel('cleanpipe_policy_reload_failures_total')}[{RI}]))", "failures {{instance}}"),
                      (sel("cleanpipe_policy_last_reload_ok"), "last reload ok {{instance}}")],
                     thresholds=[(1, "red")]), 6, 8)
    L.add(timeseries("Global trusted-only mode",
                     "1 while global trusted-only mode is in force; it should be 0 except during a declared emergency.",
                     [(sel("cleanpipe_global_trusted_only"), "{{instance}}")],
                     thresholds=[(1, "red")]), 24, 5)

    # ------------------------------------------------------------------ Protection
    L.row("Protection")
    L.add(timeseries("Botnet detections by outcome",
                     "Botnet-feed lookups recorded: flagged = a subscriber newly quarantined, evidence = one more sighting of an already flagged host; a burst of flagged is an outbreak.",
                     [(f"sum by (outcome) (increase({sel('cleanpipe_botnet_detections_total')}[{RI}]))", "{{outcome}}")]), 6, 8)
    L.add(timeseries("Unproven botnet lookups",
                     "Botnet-feed lookups over UDP without a valid DNS cookie, answered TC=1 and flagging nobody; a high rate suggests forged packets trying to get others quarantined.",
                     [(f"sum by (instance) (rate({sel('cleanpipe_botnet_lookups_unproven_total')}[{RI}]))", "{{instance}}")],
                     unit="reqps"), 6, 8)
    L.add(timeseries("Rate-limited queries by limit",
                     "Queries dropped or refused by each rate limit; sustained >100/s on one limit raises CleanpipeRateLimitingHeavy and the log names the offenders.",
                     [(f"sum by (limit) (rate({sel('cleanpipe_rate_limited_total')}[{RI}]))", "{{limit}}")],
                     unit="reqps", thresholds=[(100, "orange")]), 6, 8)
    L.add(timeseries("Self-releases",
                     "Quarantined subscribers who pressed \"I have cleaned my devices\" on the cleanup page; a surge right after an import hints at false positives.",
                     [(f"sum by (instance) (increase({sel('cleanpipe_self_releases_total')}[1h]))", "per hour {{instance}}")]), 6, 8)

    # ------------------------------------------------------------------ Feeds
    L.row("Threat feeds")
    L.add(timeseries("Feed age",
                     "Time since each feed's primary last transferred or confirmed the copy in use; it should saw-tooth well below the 24 h line (CleanpipeFeedStale).",
                     [(f"max by (feed) ({sel('cleanpipe_feed_age_seconds')})", "{{feed}}")],
                     unit="s", thresholds=[(86400, "red")]), 6, 8)
    L.add(timeseries("Feed serial",
                     "SOA serial of the copy in use per feed; it should step up as the publisher updates, and a flat line with a growing age means transfers stopped.",
                     [(f"max by (feed) ({sel('cleanpipe_feed_serial')})", "{{feed}}")], min0=False), 6, 8)
    L.add(timeseries("Feed transfers by kind",
                     "Zone transfers applied (AXFR full, IXFR incremental); repeated AXFRs where IXFR is expected mean the primary lost the history.",
                     [(f"sum by (kind) (increase({sel('cleanpipe_feed_transfers_total')}[{RI}]))", "{{kind}}")]), 6, 8)
    L.add(timeseries("Feed transfer failures",
                     "Failed or invalid transfers (the last good copy is kept); any steady count points at the primary, the network path or the TSIG key.",
                     [(f"sum by (instance) (increase({sel('cleanpipe_feed_transfer_failures_total')}[{RI}]))", "{{instance}}")],
                     thresholds=[(1, "red")]), 6, 8)

    # ------------------------------------------------------------------ Alerts
    L.row("Organisation alerts")
    L.add(timeseries("Alerts opened, overdue, revocations (per hour)",
                     "Organisation alerts opened, alerts that passed their deadline, and organisations that lost their whitelisting; every revocation deserves a phone call to the organisation.",
                     [(f"sum by (instance) (increase({sel('cleanpipe_alerts_opened_total')}[1h]))", "opened {{instance}}"),
                      (f"sum by (instance) (increase({sel('cleanpipe_alerts_overdue_total')}[1h]))", "overdue {{instance}}"),
                      (f"sum by (instance) (increase({sel('cleanpipe_organisation_revocations_total')}[1h]))", "revocations {{instance}}")]), 6, 8)
    L.add(timeseries("Deliveries waiting",
                     "Webhook deliveries in the outbox not yet accepted by their receiver; it should return to zero within minutes.",
                     [(sel("cleanpipe_alert_outbox_pending"), "{{instance}}")]), 6, 8)
    L.add(timeseries("Oldest delivery waiting",
                     "Age of the oldest undelivered webhook; above one hour for 15 minutes raises CleanpipeAlertOutboxStuck.",
                     [(sel("cleanpipe_alert_outbox_oldest_seconds"), "{{instance}}")],
                     unit="s", thresholds=[(3600, "red")]), 6, 8)
    L.add(timeseries("Delivery attempts by result",
                     "Webhook delivery attempts per result; failed attempts are retried with backoff, so only a steady failed rate with no ok needs action.",
                     [(f"sum by (result) (increase({sel('cleanpipe_alert_deliveries_total')}[{RI}]))", "{{result}}")]), 6, 8)

    # ------------------------------------------------------------------ Connections
    L.row("Connections")
    L.add(timeseries("Open connections by transport",
                     "Open TCP, DoT, DoH, page and admin connections; a line pinned at its limit (listen.tcp_max_connections, tls.max_connections) means clients are being evicted.",
                     [(f"sum by (transport) ({sel('cleanpipe_connections_open')})", "{{transport}}")]), 6, 8)
    L.add(timeseries("Refused connections",
                     "Connections refused at accept by transport and why (per_client = one client over its limit, full = the transport at its limit).",
                     [(f"sum by (transport, why) (rate({sel('cleanpipe_connections_refused_total')}[{RI}]))", "{{transport}} / {{why}}")],
                     unit="cps"), 6, 8)
    L.add(timeseries("Evicted idle connections",
                     "Idle connections closed to make room for new ones; steady eviction means the connection limits or the open-file limit are too low for the load.",
                     [(f"sum by (transport) (rate({sel('cleanpipe_connections_evicted_total')}[{RI}]))", "{{transport}}")],
                     unit="cps"), 6, 8)
    L.add(timeseries("TLS handshakes by result",
                     "DoT/DoH handshakes per second by result; failed + timeout above 20 % raises CleanpipeTlsHandshakeFailures (check the certificate first).",
                     [(f"sum by (transport, result) (rate({sel('cleanpipe_tls_handshakes_total')}[{RI}]))", "{{transport}} / {{result}}")],
                     unit="cps"), 6, 8)

    return {
        "title": "cleanpipe",
        "uid": "cleanpipe",
        "description": "cleanpipe protective DNS resolver: traffic, latency, cache, upstream, policy, protection, feeds, alerts, connections. Runbooks: docs/operations.md.",
        "tags": ["cleanpipe", "dns"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": {"list": [
            {
                "type": "datasource", "name": "DS_PROMETHEUS", "label": "Data source",
                "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
                "regex": "", "includeAll": False, "multi": False, "options": [],
            },
            {
                "type": "query", "name": "instance", "label": "Instance", "datasource": DS,
                "definition": "label_values(cleanpipe_policy_generation, instance)",
                "query": {"query": "label_values(cleanpipe_policy_generation, instance)",
                          "refId": "PrometheusVariableQueryEditor-VariableQuery",
                          "qryType": 1},
                "current": {}, "hide": 0, "refresh": 2, "regex": "", "sort": 1,
                "includeAll": True, "allValue": ".*", "multi": True, "options": [],
            },
        ]},
        "panels": L.panels,
    }


BASE_SUFFIXES = ("_bucket", "_sum", "_count")
# `up` (used by CleanpipeDown) is made by Prometheus for each scrape and is not on /metrics.


def metric_names(exprs):
    names = set()
    for expr in exprs:
        names.update(re.findall(r"\bcleanpipe_[a-z0-9_]+", expr))
    out = set()
    for n in names:
        for s in BASE_SUFFIXES:
            # Histogram series; every cleanpipe counter ends in _total, so _count/_sum/_bucket
            # only occur on histograms.
            if n.endswith(s):
                n = n[: -len(s)]
                break
        out.add(n)
    return sorted(out)


def rule_exprs(path):
    """The expr: of every rule (plain or block scalar), without a YAML library."""
    exprs, cur, indent = [], None, None
    for line in open(path, encoding="utf-8"):
        stripped = line.strip()
        if cur is not None:
            ind = len(line) - len(line.lstrip())
            if stripped and ind <= indent:
                exprs.append(" ".join(cur))
                cur = None
            else:
                if stripped and not stripped.startswith("#"):
                    cur.append(stripped)
                continue
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if m:
            if m.group(2) in ("|", ">", "|-", ">-"):
                cur, indent = [], len(m.group(1))
            else:
                exprs.append(m.group(2))
    if cur:
        exprs.append(" ".join(cur))
    return exprs


def dashboard_exprs(d):
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append(t["expr"])
    for v in d["templating"]["list"]:
        if v.get("definition"):
            out.append(v["definition"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    d = dashboard()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cleanpipe.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2, ensure_ascii=False)
        f.write("\n")
    names = metric_names(dashboard_exprs(d) + rule_exprs(RULES))
    with open(os.path.join(args.out, "metrics.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(names) + "\n")
    print(f"wrote {args.out}/cleanpipe.json ({sum(1 for p in d['panels'] if p['type'] != 'row')} panels) "
          f"and metrics.txt ({len(names)} metrics)")


if __name__ == "__main__":
    main()
