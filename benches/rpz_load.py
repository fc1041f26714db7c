#!/usr/bin/env python3
"""Load time and memory of a large RPZ feed: cleanpipe beside Unbound, same zone, same machine.

Needs: unbound, dig; `cargo build --release`. Loopback only; about a minute for 1M names.
Usage: benches/rpz_load.py [--names 1000000]

Measures, for each server: seconds from process start until it answers a listed name with
NXDOMAIN, and resident memory (VmRSS) then, minus the same server's RSS without the feed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, rss_mib, write_rpz


def answers_nx(port, name):
    r = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, "+time=1", "+tries=1"], capture_output=True, text=True)
    return "status: NXDOMAIN" in r.stdout


def answers(port, name):
    r = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, "+time=1", "+tries=1"], capture_output=True, text=True)
    return "status:" in r.stdout


def wait(pred, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return time.time() - t0
        time.sleep(0.05)
    return None


def run(cmd, log):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    args = ap.parse_args()
    for t in ("unbound", "dig"):
        if shutil.which(t) is None:
            sys.exit(f"{t} is missing")
    work = tempfile.mkdtemp(prefix="cleanpipe-rpz-")
    try:
        zone = os.path.join(work, "big.rpz")
        write_rpz(zone, "big.rpz.example.", args.names)
        probe = f"c2-{args.names - 1}.botnet-{(args.names - 1) % 997}.example"
        print(f"zone: {args.names} names, {os.path.getsize(zone) / 1e6:.0f} MB")

        results = {}
        for with_feed in (False, True):
            conf = os.path.join(work, f"cp-{with_feed}.yaml")
            feed = f"feeds:\n  - name: big\n    file: {zone}\n" if with_feed else ""
            with open(conf, "w") as c:
                c.write(f"listen:\n  dns: [\"127.0.0.1:5311\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                        f"resolver:\n  mode: forward\n  forward:\n    - address: 127.0.0.1\n      port: 9\n"
                        f"policy:\n  allowlists: {ROOT}/allowlists\nadmin:\n  listen: null\nweb:\n  listen: []\n"
                        f"state:\n  path: {work}/state-{with_feed}.sqlite\nlog:\n  filter: warn\n{feed}")
            t0 = time.time()
            p = run([args.binary, "serve", "--config", conf], os.path.join(work, "cp.log"))
            took = wait(lambda: answers_nx(5311, probe)) if with_feed else wait(lambda: answers(5311, "x.example"))
            results[("cleanpipe", with_feed)] = (took, rss_mib(p.pid))
            p.terminate(); p.wait(timeout=20)

            uconf = os.path.join(work, f"ub-{with_feed}.conf")
            rpz = f"rpz:\n  name: big.rpz.example\n  zonefile: {zone}\n" if with_feed else ""
            with open(uconf, "w") as u:
                u.write(f"server:\n  interface: 127.0.0.1@5312\n  num-threads: 2\n  access-control: 127.0.0.0/8 allow\n"
                        f"  chroot: \"\"\n  username: \"\"\n  directory: \"{work}\"\n  pidfile: \"{work}/ub.pid\"\n  use-syslog: no\n"
                        f"  module-config: \"respip iterator\"\n  do-not-query-localhost: no\n"
                        f"forward-zone:\n  name: \".\"\n  forward-addr: 127.0.0.1@9\n{rpz}")
            p = run(["unbound", "-d", "-c", uconf], os.path.join(work, "ub.log"))
            took = wait(lambda: answers_nx(5312, probe)) if with_feed else wait(lambda: answers(5312, "x.example"))
            results[("unbound", with_feed)] = (took, rss_mib(p.pid))
            p.terminate(); p.wait(timeout=20)

        print(f"| server | time to answer from the {args.names}-name feed | RSS with feed | RSS without | bytes per name |")
        print("|---|---|---|---|---|")
        for s in ("cleanpipe", "unbound"):
            t, rss = results[(s, True)]
            _, base = results[(s, False)]
            per = (rss - base) * 1024 * 1024 / args.names
            print(f"| {s} | {t:.1f} s | {rss:.0f} MiB | {base:.0f} MiB | {per:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
