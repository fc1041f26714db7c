#!/usr/bin/env python3
"""Memory of the answer cache: resident memory after N distinct names, for several
`cache.max_entries`, and from that the memory to budget per cached answer.

Needs: dnsperf, knot (knotd), dig; `cargo build --release`. Loopback only; a few minutes.
Usage: benches/cache_memory.py [--names 400000] [--sizes 1000,100000,200000] [--repeat 2]

For each size: a fresh cleanpipe forwarding to a local Knot that serves N names; every name is
asked once (dnsperf, one pass); then its RSS. The bound must hold whatever the traffic: with
`max_entries: 1000`, 400,000 distinct names must leave the process about as small as it started.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, rss_mib

AUTH = ("127.0.78.1", 5399)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=400_000)
    ap.add_argument("--sizes", default="1000,100000,200000")
    ap.add_argument("--repeat", type=int, default=2,
                    help="each name asked this many times in a row (repeats hit the cache)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="cleanpipe-cachemem-")
    zone = os.path.join(work, "mem.lab.zone")
    with open(zone, "w") as z:
        z.write("$ORIGIN mem.lab.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\nns A 127.0.78.1\n")
        for i in range(args.names):
            z.write(f"n{i} A 192.0.2.{i % 250 + 1}\n")
    qfile = os.path.join(work, "queries.txt")
    with open(qfile, "w") as q:
        for i in range(args.names):
            q.write(f"n{i}.mem.lab A\n" * args.repeat)
    knot_conf = os.path.join(work, "knot.conf")
    with open(knot_conf, "w") as k:
        k.write(f"server:\n  listen: {AUTH[0]}@{AUTH[1]}\n  rundir: {work}\n  user: root\n"
                f"database:\n  storage: {work}\nlog:\n  - target: stderr\n    any: error\n"
                f"zone:\n  - domain: mem.lab\n    file: {zone}\n")
    knot = subprocess.Popen(["knotd", "-c", knot_conf], stderr=subprocess.DEVNULL)
    time.sleep(2)
    rows = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            conf = os.path.join(work, f"cp-{size}.yaml")
            with open(conf, "w") as c:
                c.write(f"listen:\n  dns: [\"127.0.0.1:5321\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                        f"resolver:\n  mode: forward\n  forward:\n    - address: {AUTH[0]}\n      port: {AUTH[1]}\n"
                        f"cache:\n  max_entries: {size}\npolicy:\n  allowlists: {ROOT}/allowlists\n"
                        f"admin:\n  listen: null\nweb:\n  listen: []\nstate:\n  path: {work}/state-{size}.sqlite\nlog:\n  filter: warn\n")
            cp = subprocess.Popen([args.binary, "serve", "--config", conf], stderr=subprocess.DEVNULL)
            for _ in range(100):
                r = subprocess.run(["dig", "@127.0.0.1", "-p", "5321", "n0.mem.lab", "+short", "+time=1", "+tries=1"],
                                   capture_output=True, text=True)
                if r.stdout.strip():
                    break
                time.sleep(0.1)
            before = rss_mib(cp.pid)
            r = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", "5321", "-d", qfile, "-n", "1", "-q", "200",
                                "-Q", "20000", "-t", "5"], capture_output=True, text=True)
            lost = next((l.split(":")[1].split()[0] for l in r.stdout.splitlines() if "Queries lost" in l), "?")
            time.sleep(1)
            after = rss_mib(cp.pid)
            cp.terminate()
            cp.wait()
            rows.append((size, before, after, lost))
            print(f"max_entries {size:>7}: RSS {before:6.1f} MiB at start, {after:6.1f} MiB after {args.names} distinct names, each asked {args.repeat}x (lost {lost})", flush=True)
    finally:
        knot.terminate()
        knot.wait()
    if len(rows) >= 3:
        (s1, _, a1, _), (s2, _, a2, _) = rows[-2], rows[-1]
        per = (a2 - a1) * 1024 * 1024 / (s2 - s1)
        print(f"memory per cached answer (from the two largest sizes): {per:.0f} bytes")


if __name__ == "__main__":
    main()
