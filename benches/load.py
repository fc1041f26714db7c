#!/usr/bin/env python3
"""Whole-server load benchmark: cleanpipe beside Unbound on the same machine, in the same run.

What it needs (Debian packages): dnsperf, unbound, knot (knotd, the local authoritative server
that both resolvers get the test names from). `cargo build --release` must have been run.

What it does (loopback only, bounded: about 2-4 minutes):
  1. writes a zone of N names (default 10,000) served by knotd on 127.0.77.1:5399;
  2. starts cleanpipe (forward mode to knotd, with a generated policy: --infected, --enrolments)
     and Unbound (2 threads, forward-zone to knotd) on 127.0.0.1:5301 / :5302;
  3. warms both caches with one pass over every name;
  4. runs dnsperf against each in alternation (A B A B ..., --rounds rounds, --seconds each) and
     reads each server's CPU time from /proc/PID/stat before and after;
  5. measures latency at a fixed offered load (--fixed-qps) with dnsperf -v;
  6. prints a table: queries/s, lost, server CPU µs per query, latency p50/p99, RSS, and ratios.

Usage: benches/load.sh [--names 10000] [--rounds 3] [--seconds 10] [--infected 0] [--enrolments 0] [--feed 0]
Full policy: benches/load.sh --infected 1000000 --enrolments 100000 --feed 1000000
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, rss_mib, write_rpz
CLK = os.sysconf("SC_CLK_TCK")
AUTH = ("127.0.77.1", 5399)


def need(tool):
    if shutil.which(tool) is None:
        sys.exit(f"load.py: `{tool}` is missing (apt-get install dnsperf unbound knot)")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def wait_udp(port, name, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, "+time=1", "+tries=1", "+short"],
                           capture_output=True, text=True)
        if r.stdout.strip():
            return
        time.sleep(0.2)
    sys.exit(f"server on port {port} did not answer {name} within {timeout}s")


def dnsperf(port, qfile, seconds, extra=()):
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(seconds),
           "-c", "8", "-T", "2", "-q", "500", "-t", "2", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = r.stdout
    def grab(label):
        for line in out.splitlines():
            if line.strip().startswith(label):
                return float(line.split(":", 1)[1].split()[0])
        return 0.0
    return out, grab("Queries completed"), grab("Queries lost"), grab("Queries per second")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))
    return values[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--fixed-qps", type=int, default=20_000)
    ap.add_argument("--infected", type=int, default=0)
    ap.add_argument("--enrolments", type=int, default=0)
    ap.add_argument("--feed", type=int, default=0, help="names in an RPZ threat feed loaded by both servers")
    ap.add_argument("--reload", action="store_true", help="also measure cleanpipe while its policy reloads every 2 s")
    ap.add_argument("--misses", type=int, default=0, help="also measure forwarding of N never-cached names per run (cleanpipe and Unbound) vs the upstream alone")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    args = ap.parse_args()
    for t in ("dnsperf", "unbound", "knotd", "dig"):
        need(t)
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")

    work = tempfile.mkdtemp(prefix="cleanpipe-load-")
    procs = []
    try:
        # 1. authoritative data
        zone = os.path.join(work, "bench.lab.zone")
        with open(zone, "w") as z:
            z.write("$ORIGIN bench.lab.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\nns A 127.0.77.1\n")
            for i in range(args.names):
                z.write(f"n{i} A 192.0.2.{i % 250 + 1}\n")
            # Never-cached names: a fresh set for each server in each round.
            for i in range(args.misses * 2 * max(args.rounds, 1)):
                z.write(f"m{i} A 198.51.100.{i % 250 + 1}\n")
        qfile = os.path.join(work, "queries.txt")
        with open(qfile, "w") as q:
            for i in range(args.names):
                q.write(f"n{i}.bench.lab A\n")
        knot_conf = os.path.join(work, "knot.conf")
        with open(knot_conf, "w") as k:
            k.write(f"server:\n  listen: {AUTH[0]}@{AUTH[1]}\n  rundir: {work}\n  user: root\n"
                    f"database:\n  storage: {work}\nlog:\n  - target: stderr\n    any: error\n"
                    f"zone:\n  - domain: bench.lab\n    file: {zone}\n")
        procs.append(subprocess.Popen(["knotd", "-c", knot_conf], stderr=subprocess.DEVNULL))

        # 2. policy and servers
        pol = os.path.join(work, "policy")
        os.makedirs(pol)
        if args.infected:
            with open(os.path.join(pol, "infected-feed.csv"), "w") as f:
                f.write("prefix,family,source,first_seen\n")
                for i in range(args.infected):
                    a = 0x0A000000 + i
                    f.write(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255},Mirai,feed,2026-11-20T08:00:00Z\n")
        if args.enrolments:
            with open(os.path.join(pol, "enrolments.yaml"), "w") as f:
                f.write("enrolments:\n")
                for i in range(args.enrolments):
                    a = 0x64400000 + i
                    f.write(f"  - {{prefix: {a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}, profile: kids, enabled_by: x, enabled_at: 2026-11-01T10:00:00Z}}\n")
        feed_yaml = ""
        ub_rpz = ""
        if args.feed:
            rpz = os.path.join(work, "feed.rpz")
            write_rpz(rpz, "feed.rpz.example.", args.feed)
            feed_yaml = f"feeds:\n  - name: load-feed\n    file: {rpz}\n"
            ub_rpz = f"rpz:\n  name: feed.rpz.example\n  zonefile: {rpz}\n"
        cp_conf = os.path.join(work, "cleanpipe.yaml")
        with open(cp_conf, "w") as c:
            c.write(f"listen:\n  dns: [\"127.0.0.1:5301\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                    f"resolver:\n  mode: forward\n  forward:\n    - address: {AUTH[0]}\n      port: {AUTH[1]}\n"
                    f"cache:\n  max_entries: 1000000\npolicy:\n  dir: {pol}\n  allowlists: {ROOT}/allowlists\n"
                    f"admin:\n  listen: null\nweb:\n  listen: []\nstate:\n  path: {work}/state.sqlite\nlog:\n  filter: warn\n"
                    # One load generator asks for every name: the per-client budget of new names
                    # (an abuse defence, on by default) would drop the warm-up. Unbound has none.
                    f"limits:\n  new_names_per_second: 0\n{feed_yaml}")
        ub_conf = os.path.join(work, "unbound.conf")
        with open(ub_conf, "w") as u:
            u.write(f"server:\n  interface: 127.0.0.1@5302\n  num-threads: 2\n  so-reuseport: yes\n"
                    f"  so-rcvbuf: 4m\n  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n"
                    f"  chroot: \"\"\n  username: \"\"\n  directory: \"{work}\"\n  pidfile: \"{work}/unbound.pid\"\n"
                    f"  use-syslog: no\n  verbosity: 0\n  msg-cache-size: 64m\n  rrset-cache-size: 128m\n"
                    f"  module-config: \"{'respip ' if args.feed else ''}iterator\"\n  qname-minimisation: no\n"
                    f"forward-zone:\n  name: \"bench.lab\"\n  forward-addr: {AUTH[0]}@{AUTH[1]}\n{ub_rpz}")
        t0 = time.time()
        cp = subprocess.Popen([args.binary, "serve", "--config", cp_conf], stderr=open(os.path.join(work, "cleanpipe.log"), "w"))
        procs.append(cp)
        ub = subprocess.Popen(["unbound", "-d", "-c", ub_conf], stderr=open(os.path.join(work, "unbound.log"), "w"))
        procs.append(ub)
        wait_udp(5302, "n0.bench.lab")
        wait_udp(5301, "n0.bench.lab")
        print(f"servers answering after {time.time() - t0:.1f}s (cleanpipe policy: {args.infected} infected, {args.enrolments} enrolments; feed of {args.feed} names in both)")

        # 3. warm caches
        servers = {"cleanpipe": (5301, cp.pid), "unbound": (5302, ub.pid)}
        for name, (port, _) in servers.items():
            subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-n", "1", "-q", "200"],
                           capture_output=True)

        # 4. alternating saturation rounds
        results = {n: [] for n in servers}
        for r in range(args.rounds):
            for name, (port, pid) in servers.items():
                before = cpu_seconds(pid)
                _, done, lost, qps = dnsperf(port, qfile, args.seconds)
                cpu = cpu_seconds(pid) - before
                results[name].append((qps, lost, cpu / max(done, 1) * 1e6))
                print(f"round {r + 1} {name:9}: {qps:9.0f} q/s  lost {lost:5.0f}  {cpu / max(done, 1) * 1e6:6.2f} µs CPU/query")

        rss = {name: rss_mib(pid) for name, (_, pid) in servers.items()}  # before misses fill caches

        # 5. latency at a fixed offered load
        lat = {}
        for name, (port, _) in servers.items():
            out, *_ = dnsperf(port, qfile, 5, ["-Q", str(args.fixed_qps), "-v"])
            ms = []
            for line in out.splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[0] == ">":
                    try:
                        ms.append(float(parts[-1]) * 1000)
                    except ValueError:
                        pass
            lat[name] = (percentile(ms, 50), percentile(ms, 99), len(ms))

        # 5b. hot reload under load: the same saturation run, once quiet, once while the policy
        # is rewritten every 2 s (each write recompiles the whole policy).
        reload_rows = []
        if args.reload:
            port, pid = servers["cleanpipe"]
            victims = [f for f in ("enrolments.yaml", "infected-feed.csv") if os.path.exists(os.path.join(pol, f))]
            if not victims:
                victims = ["mode.yaml"]
                with open(os.path.join(pol, "mode.yaml"), "w") as f:
                    f.write("mode: normal\n")
            runs = [("quiet", None)] + [(f"{v} rewritten every 2 s", v) for v in victims]
            import threading
            measured = {label: [] for label, _ in runs}
            for label, victim in runs * max(args.rounds, 1):
                stop = threading.Event()
                def toucher(path):
                    while not stop.wait(2):
                        with open(path, "a") as f:
                            f.write("\n")
                th = threading.Thread(target=toucher, args=(os.path.join(pol, victim),)) if victim else None
                if th:
                    th.start()
                _, done, lost, qps = dnsperf(port, qfile, args.seconds)
                stop.set()
                if th:
                    th.join()
                measured[label].append((qps, lost))
                time.sleep(3)  # let the last reload finish before the next run
            for label, _ in runs:
                reload_rows.append((label, statistics.median(q for q, _ in measured[label]), sum(l for _, l in measured[label])))

        # 5c. forwarding of names never seen before, against the upstream alone.
        miss_rows = []
        if args.misses:
            servers_m = (("upstream (Knot) alone", AUTH[0], AUTH[1]),
                         ("cleanpipe forwarding, cache misses", "127.0.0.1", 5301),
                         ("Unbound forwarding, cache misses", "127.0.0.1", 5302))
            got = {label: [] for label, _, _ in servers_m}
            for r in range(max(args.rounds, 1)):
                for k, (label, host, port) in enumerate(servers_m):
                    # cleanpipe and Unbound each get names neither has seen; Knot has no cache.
                    base = args.misses * (2 * r + (1 if k == 2 else 0))
                    mfile = os.path.join(work, f"misses-{r}-{k}.txt")
                    with open(mfile, "w") as q:
                        for i in range(base, base + args.misses):
                            q.write(f"m{i}.bench.lab A\n")
                    pid = {5301: cp.pid, 5302: ub.pid}.get(port)
                    before = cpu_seconds(pid) if pid else 0.0
                    cmd = ["dnsperf", "-s", host, "-p", str(port), "-d", mfile,
                           "-n", "1", "-c", "8", "-T", "2", "-q", "200", "-t", "3"]
                    out = subprocess.run(cmd, capture_output=True, text=True).stdout
                    grab = lambda key: next((float(l.split(":", 1)[1].split()[0]) for l in out.splitlines() if l.strip().startswith(key)), 0.0)
                    done = grab("Queries completed")
                    cpu = (cpu_seconds(pid) - before) / max(done, 1) * 1e6 if pid else 0.0
                    got[label].append((grab("Queries per second"), grab("Queries lost"), cpu))
            for label, _, _ in servers_m:
                rows = got[label]
                miss_rows.append((label, statistics.median(x[0] for x in rows), sum(x[1] for x in rows),
                                  statistics.median(x[2] for x in rows)))

        # 6. table
        print()
        print(f"machine: {os.cpu_count()} cores; dnsperf -c 8 -T 2 -q 500, {args.rounds} rounds x {args.seconds}s, {args.names} cached names")
        print(f"| server | queries/s (median) | lost (total) | server CPU µs/query (median) | p50 / p99 ms at {args.fixed_qps} q/s | RSS MiB after the rounds |")
        print("|---|---|---|---|---|---|")
        med = {}
        for name, (port, pid) in servers.items():
            qps = statistics.median(x[0] for x in results[name])
            lost = sum(x[1] for x in results[name])
            cpu = statistics.median(x[2] for x in results[name])
            med[name] = (qps, cpu)
            p50, p99, n = lat[name]
            print(f"| {name} | {qps:.0f} | {lost:.0f} | {cpu:.2f} | {p50:.2f} / {p99:.2f} (n={n}) | {rss[name]:.0f} (at the end: {rss_mib(pid):.0f}) |")
        print()
        print(f"ratios cleanpipe/unbound: queries/s {med['cleanpipe'][0] / med['unbound'][0]:.2f}, "
              f"CPU per query {med['cleanpipe'][1] / med['unbound'][1]:.2f}")
        if reload_rows:
            print()
            print(f"| cleanpipe under load ({args.rounds} interleaved runs each) | queries/s (median) | lost (total) |")
            print("|---|---|---|")
            for label, qps, lost in reload_rows:
                print(f"| {label} | {qps:.0f} | {lost:.0f} |")
            for label, qps, _ in reload_rows[1:]:
                print(f"throughput dip, {label}: {100 * (1 - qps / max(reload_rows[0][1], 1)):.1f} %")
        if miss_rows:
            print()
            print(f"| {args.misses} never-cached names per run, {args.rounds} rounds | queries/s (median) | lost (total) | forwarder CPU µs/query (median) |")
            print("|---|---|---|---|")
            for label, qps, lost, cpu in miss_rows:
                print(f"| {label} | {qps:.0f} | {lost:.0f} | {cpu:.2f} |" if cpu else f"| {label} | {qps:.0f} | {lost:.0f} | — |")
            up = max(miss_rows[0][1], 1)
            print(f"forwarding / upstream alone: cleanpipe {miss_rows[1][1] / up:.2f}, Unbound {miss_rows[2][1] / up:.2f}; "
                  f"cleanpipe / Unbound: queries/s {miss_rows[1][1] / max(miss_rows[2][1], 1):.2f}, CPU per miss {miss_rows[1][3] / max(miss_rows[2][3], 1e-9):.2f}")
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
