#!/usr/bin/env python3
"""A one-client random-subdomain flood: what the other clients lose, cleanpipe beside Unbound.

Needs: dnsperf, unbound, knot (knotd); `cargo build --release`. Loopback only, ~2 minutes.
Usage: benches/flood.py [--seconds 10] [--victim-qps 50] [--rounds 2]

Both resolvers forward to one local Knot serving `flood.lab` (a wildcard: every random name
exists) and `victim.lab`. For each server, at the same time:
  - the flooder (source 127.0.0.50) asks random never-cached names `<n>.flood.lab` as fast as
    dnsperf can (-c 8 -q 500);
  - the victim (source 127.0.0.60) asks never-cached names `v<n>.victim.lab` at a fixed rate.
Reported: the victim's lost queries and latency (p50/p99), and how many queries reached Knot.
cleanpipe runs with its defaults (limits.new_names_per_second: 100); Unbound with
`ip-ratelimit: 100` (queries per second per client) and `ratelimit: 1000` (per zone upstream).
A baseline round without the flood shows each server's victim latency alone.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT

AUTH = ("127.0.79.1", 5399)


def knot_queries(work):
    """Queries Knot answered so far (from its statistics)."""
    r = subprocess.run(["knotc", "-c", os.path.join(work, "knot.conf"), "stats"],
                       capture_output=True, text=True)
    total = 0
    for line in r.stdout.splitlines():
        if line.startswith("mod-stats.request-protocol["):
            total += int(line.split("=")[1])
    return total


def dnsperf(args, capture_latency=False):
    r = subprocess.run(["dnsperf", *args] + (["-v"] if capture_latency else []), capture_output=True, text=True)
    lat = []
    sent = lost = 0
    for line in r.stdout.splitlines():
        s = line.strip()
        if s.startswith("Queries sent:"):
            sent = int(s.split(":")[1].split()[0])
        if s.startswith("Queries lost:"):
            lost = int(s.split(":")[1].split()[0])
        if capture_latency and line.startswith("> "):
            # "> NOERROR name A 0.000123" (verbose): the last field is the latency in seconds
            try:
                lat.append(float(line.split()[-1]) * 1000)
            except ValueError:
                pass
    return sent, lost, lat


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--victim-qps", type=int, default=50,
                    help="the victim's rate: a household's, below both servers' per-client limits")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    args = ap.parse_args()
    for t in ("dnsperf", "unbound", "knotd", "knotc"):
        if shutil.which(t) is None:
            sys.exit(f"flood.py: `{t}` is missing (apt-get install dnsperf unbound knot)")
    work = tempfile.mkdtemp(prefix="cleanpipe-flood-")
    with open(os.path.join(work, "flood.lab.zone"), "w") as z:
        z.write("$ORIGIN flood.lab.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\nns A 127.0.79.1\n* A 192.0.2.7\n")
    with open(os.path.join(work, "victim.lab.zone"), "w") as z:
        z.write("$ORIGIN victim.lab.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\nns A 127.0.79.1\n* A 192.0.2.8\n")
    with open(os.path.join(work, "knot.conf"), "w") as k:
        k.write(f"server:\n  listen: {AUTH[0]}@{AUTH[1]}\n  rundir: {work}\n  user: root\n"
                f"control:\n  listen: {work}/knot.sock\n"
                f"database:\n  storage: {work}\nlog:\n  - target: stderr\n    any: error\n"
                f"mod-stats:\n  - id: counters\n    request-protocol: on\n"
                f"template:\n  - id: default\n    global-module: mod-stats/counters\n"
                f"zone:\n  - domain: flood.lab\n    file: {work}/flood.lab.zone\n"
                f"  - domain: victim.lab\n    file: {work}/victim.lab.zone\n")
    knot = subprocess.Popen(["knotd", "-c", os.path.join(work, "knot.conf")], stderr=subprocess.DEVNULL)
    time.sleep(2)
    cp_conf = os.path.join(work, "cleanpipe.yaml")
    with open(cp_conf, "w") as c:
        c.write(f"listen:\n  dns: [\"127.0.0.1:5331\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                f"resolver:\n  mode: forward\n  forward:\n    - address: {AUTH[0]}\n      port: {AUTH[1]}\n"
                f"policy:\n  allowlists: {ROOT}/allowlists\nadmin:\n  listen: null\nweb:\n  listen: []\n"
                f"state:\n  path: {work}/state.sqlite\nlog:\n  filter: error\n")
    ub_conf = os.path.join(work, "unbound.conf")
    with open(ub_conf, "w") as u:
        u.write(f"server:\n  interface: 127.0.0.1@5332\n  num-threads: 2\n  so-reuseport: yes\n"
                f"  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  chroot: \"\"\n"
                f"  username: \"\"\n  directory: \"{work}\"\n  pidfile: \"{work}/unbound.pid\"\n  use-syslog: no\n"
                f"  verbosity: 0\n  ip-ratelimit: 100\n  ratelimit: 1000\n"
                f"forward-zone:\n  name: \"flood.lab\"\n  forward-addr: {AUTH[0]}@{AUTH[1]}\n"
                f"forward-zone:\n  name: \"victim.lab\"\n  forward-addr: {AUTH[0]}@{AUTH[1]}\n")
    servers = [("cleanpipe", [args.binary, "serve", "--config", cp_conf], 5331),
               ("unbound", ["unbound", "-d", "-c", ub_conf], 5332)]
    rows = []
    counter = [0]

    def names(prefix, n, suffix):
        counter[0] += 1
        path = os.path.join(work, f"{prefix}-{counter[0]}.txt")
        with open(path, "w") as f:
            for i in range(n):
                f.write(f"{prefix}{counter[0]}x{i}.{suffix} A\n")
        return path

    try:
        for r in range(args.rounds):
            for name, cmd, port in servers:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.5)
                for flood in (False, True):
                    vfile = names("v", args.victim_qps * args.seconds * 2, "victim.lab")
                    before = knot_queries(work)
                    flooder = None
                    if flood:
                        ffile = names("f", 2_000_000, "flood.lab")
                        flooder = subprocess.Popen(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-a", "127.0.0.50",
                                                    "-d", ffile, "-l", str(args.seconds), "-c", "8", "-q", "500", "-t", "2"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(0.5)
                    sent, lost, lat = dnsperf(["-s", "127.0.0.1", "-p", str(port), "-a", "127.0.0.60", "-d", vfile,
                                               "-l", str(args.seconds - 1), "-Q", str(args.victim_qps), "-t", "2"],
                                              capture_latency=True)
                    if flooder:
                        flooder.wait()
                    reached = knot_queries(work) - before
                    rows.append((r, name, flood, sent, lost, pct(lat, 50), pct(lat, 99), reached))
                    print(f"round {r + 1} {name:9} {'flood' if flood else 'quiet'}: victim lost {lost}/{sent}, "
                          f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms; queries reaching Knot {reached}", flush=True)
                proc.terminate()
                proc.wait()
    finally:
        knot.terminate()
        knot.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("\n| server | flood | victim lost (median) | victim p50 / p99 ms (median) | queries reaching the upstream (median) |")
    print("|---|---|---|---|---|")
    for name, _, _ in servers:
        for flood in (False, True):
            sel = [x for x in rows if x[1] == name and x[2] == flood]
            lost = statistics.median(x[4] / max(x[3], 1) * 100 for x in sel)
            print(f"| {name} | {'yes' if flood else 'no'} | {lost:.2f} % | "
                  f"{statistics.median(x[5] for x in sel):.2f} / {statistics.median(x[6] for x in sel):.2f} | "
                  f"{statistics.median(x[7] for x in sel):.0f} |")


if __name__ == "__main__":
    main()
