#!/usr/bin/env python3
"""DNSSEC validation benchmark: cleanpipe validating, cleanpipe not validating, Unbound
validating and Unbound iterator-only, from the same signed private hierarchy, on the same
machine, in the same run.

What it needs (Debian packages): knot (knotd, knotc), unbound, bind9-utils (dnssec-keygen,
dnssec-signzone, dnssec-dsfromkey), dnsperf, dig. `cargo build --release` must have been run.
Runs as root (the authoritative servers listen on port 53). Loopback only, only addresses in
127.54.0.0/16; bounded (--budget, default 900 s; a run takes about 5-7 minutes).

The hierarchy is resolution.py's (helpers imported from it), signed as tests/it/dnssec.rs
signs its own: one ECDSAP256SHA256 key per zone (KSK flag, signing everything; published and
active since three days), `dnssec-signzone -S -z` (NSEC), each dsset-* file put into the
parent, the root's K.+013+*.key file the trust anchor of both validating resolvers.
  .               127.54.0.1     root
  example.        127.54.1.1     the TLD: DS for every zone below
  ok.example.     127.54.2.1     www (start-up check: primes root, TLD and their keys)
  bad.example.    127.54.2.1     signed, but the TLD's DS names another key: bogus
  z0..z{Z-1}      127.54.4.1..   one live server each: n0..n3 (cold), c0..c{C-1} (cached)

The resolvers (all four run at once, each with 2 threads):
  cleanpipe validating      127.54.200.1:5301  resolver.dnssec.trust_anchor: the root key
  Unbound validating        127.54.200.2:5302  module-config "validator iterator", trust-anchor-file
  cleanpipe not validating  127.54.200.3:5303  resolver.dnssec.validate: false
  Unbound iterator          127.54.200.4:5304  module-config "iterator"
cleanpipe as in resolution.py (plus `limits: new_names_per_second: 0`, as load.py: one client
asks every name); Unbound as in resolution.py (its defaults, QNAME minimisation included) plus
load.py's so-rcvbuf.

What it measures:
  1. correctness (dig +dnssec, i.e. DO): rcode, AD flag and EDE of www.ok.example (secure),
     nope.ok.example (NSEC-proven NXDOMAIN) and www.bad.example (bogus: SERVFAIL expected from
     the validating resolvers, EDE 6 from cleanpipe);
  2. cold recursion: --names never-seen names n{k}.z{j}.example (4 per zone; root, TLD and
     their keys known), one at a time, each asked of the four resolvers in turn (the order
     rotates). Time: resolution.py's ask() (perf_counter around one UDP query, EDNS, no DO).
     Upstream queries: knotd mod-stats counters (query-type, by server) summed over the three
     servers, read 20 ms after each answer. Ideal: 1 query per name plus, per new zone, 1 (TLD
     referral) without validation or 2 (referral, which carries the DS, then the zone's DNSKEY)
     with it;
  3. CPU per cached query: --cached names c{k}.z{j}.example (C per zone) asked once of each
     resolver by dnsperf -q 20 (then once more, with DO; more outstanding queries would pass
     cleanpipe's limits.client_outstanding, 64, whose excess gets SERVFAIL), then dnsperf
     (load.py's dnsperf(): -c 8 -T 2 -q 500) over them for --seconds, the four resolvers in
     turn, --rounds rounds, once without DO and once with -D (DO on every query; dnsperf sets
     DO on all queries or none). Queries/s and server CPU (utime+stime from /proc/PID/stat,
     load.py's cpu_seconds()) per completed query; medians over the rounds. cleanpipe passes no
     RRSIG to clients (README), so its replies to DO queries are smaller than Unbound's.

Usage: benches/dnssec.py [--names 200] [--cached 1000] [--seconds 10] [--rounds 3]
"""

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

sys.dont_write_bytecode = True  # no benches/__pycache__ from the imports below
from benchlib import ROOT  # noqa: E402
from load import cpu_seconds, dnsperf  # noqa: E402
from resolution import ask, knot, zone_text  # noqa: E402

RESOLVERS = {  # name -> (address, port)
    "cleanpipe validating": ("127.54.200.1", 5301),
    "cleanpipe not validating": ("127.54.200.3", 5303),
    "Unbound validating": ("127.54.200.2", 5302),
    "Unbound iterator": ("127.54.200.4", 5304),
}
VALIDATING = ("cleanpipe validating", "Unbound validating")


def run(*cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def keygen(keydir, origin):
    """A new ECDSAP256SHA256 key (KSK flag), published and active since three days; its file stem."""
    os.makedirs(keydir, exist_ok=True)
    return run("dnssec-keygen", "-q", "-K", keydir, "-a", "ECDSAP256SHA256", "-f", "KSK", "-n", "ZONE",
               "-P", "-3d", "-A", "-3d", origin)


def sign(work, origin, text):
    """Signs a zone (text from resolution.zone_text) with a new key; returns (signed zone text,
    the zone's DS records for its parent)."""
    d = os.path.join(work, "sign", origin.rstrip(".") or "root")
    keygen(d, origin)
    with open(os.path.join(d, "zone"), "w") as f:
        f.write(text)
    run("dnssec-signzone", "-q", "-K", d, "-d", d, "-S", "-z", "-o", origin, "-f", "signed", "zone", cwd=d)
    with open(os.path.join(d, "signed")) as s, open(os.path.join(d, f"dsset-{origin}")) as ds:
        return s.read(), ds.read()


def dig(server, name):
    """`name` A asked with DO (dig +dnssec): "rcode [AD] [EDE n] [RRSIG xn]"."""
    out = subprocess.run(["dig", f"@{server[0]}", "-p", str(server[1]), "+dnssec", "+time=8", "+tries=1", name, "A"],
                         capture_output=True, text=True, timeout=15).stdout
    rcode = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags:([^;]*);", out)
    ede = re.search(r"EDE: (\d+)", out)
    sigs = len(re.findall(r"\sRRSIG\s", out))
    return " ".join(filter(None, (rcode.group(1) if rcode else "timeout", "AD" if flags and " ad " in flags.group(1) + " " else "",
                                  ede and f"EDE {ede.group(1)}", sigs and f"RRSIG x{sigs}")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=200, help="never-seen names for cold recursion (4 per zone)")
    ap.add_argument("--cached", type=int, default=1000, help="cached names for the dnsperf runs (spread over the zones)")
    ap.add_argument("--seconds", type=int, default=10, help="each dnsperf run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=5.0, help="client timeout per cold query, seconds")
    ap.add_argument("--budget", type=int, default=900, help="whole run, seconds")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    args = ap.parse_args()
    for t in ("knotd", "knotc", "unbound", "dnssec-keygen", "dnssec-signzone", "dnssec-dsfromkey", "dnsperf", "dig"):
        if shutil.which(t) is None:
            sys.exit(f"dnssec.py: `{t}` is missing (apt-get install knot unbound bind9-utils dnsperf bind9-dnsutils)")
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")
    nzones = max(1, (args.names + 3) // 4)
    per_zone = max(1, -(-args.cached // nzones))  # cached names per zone, rounded up
    if nzones > 250:
        sys.exit("--names at most 1000")

    def bail(*_):
        raise SystemExit(f"dnssec.py: stopped (signal or --budget {args.budget}s)")
    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGALRM, bail)
    signal.alarm(args.budget)

    work = tempfile.mkdtemp(prefix="cleanpipe-dnssec-")
    procs = {}
    try:
        binary = shutil.copy(args.binary, os.path.join(work, "cleanpipe"))  # a rebuild cannot change it mid-run
        # 1. the signed hierarchy, leaves first (their DS go into the parent)
        t0 = time.time()
        zaddr = [f"127.54.4.{j + 1}" for j in range(nzones)]
        leaves, tld = {}, "ok NS ns.ok\nns.ok A 127.54.2.1\nbad NS ns.bad\nns.bad A 127.54.2.1\n"
        for j in range(nzones):
            body = "".join(f"n{k} A 198.51.100.{k + 1}\n" for k in range(4))
            body += "".join(f"c{k} A 203.0.113.{k % 250 + 1}\n" for k in range(per_zone))
            leaves[f"z{j}.example."], ds = sign(work, f"z{j}.example.", zone_text(f"z{j}.example.", [("ns", zaddr[j])], body))
            tld += f"z{j} NS ns.z{j}\nns.z{j} A {zaddr[j]}\n" + ds
        leaves["ok.example."], ds = sign(work, "ok.example.", zone_text("ok.example.", [("ns", "127.54.2.1")], "www A 192.0.2.1\n"))
        tld += ds
        leaves["bad.example."], _ = sign(work, "bad.example.", zone_text("bad.example.", [("ns", "127.54.2.1")], "www A 192.0.2.9\n"))
        other = keygen(os.path.join(work, "sign", "other"), "bad.example.")  # bad.example.: the DS of another key
        tld += run("dnssec-dsfromkey", "-2", os.path.join(work, "sign", "other", other + ".key")) + "\n"
        tld_signed, ds = sign(work, "example.", zone_text("example.", [("ns1.nic", "127.54.1.1")], tld))
        root_signed, _ = sign(work, ".", zone_text(".", [("a.root.", "127.54.0.1")],
                                                   "example. NS ns1.nic.example.\nns1.nic.example. A 127.54.1.1\n" + ds))
        anchor = os.path.join(work, "root.key")  # the root's key file, as dnssec-keygen wrote it
        keys = os.path.join(work, "sign", "root")
        shutil.copy(os.path.join(keys, next(f for f in os.listdir(keys) if f.endswith(".key"))), anchor)
        print(f"signed {nzones + 4} zones in {time.time() - t0:.1f}s")

        types = "    query-type: on\n"  # upstream queries counted by type
        knots = {"root": knot(work, "root", ["127.54.0.1"], {".": root_signed}, types),
                 "tld": knot(work, "tld", ["127.54.1.1"], {"example.": tld_signed}, types),
                 "leaf": knot(work, "leaf", ["127.54.2.1"] + zaddr, leaves, types)}
        for tag, (conf, _) in knots.items():
            procs[f"knotd {tag}"] = subprocess.Popen(["knotd", "-c", conf], stderr=open(conf + ".log", "w"))
        deadline = time.time() + 20
        for addr, name in (("127.54.0.1", "."), ("127.54.1.1", "example."), ("127.54.2.1", "bad.example."), (zaddr[-1], f"z{nzones - 1}.example.")):
            while ask((addr, 53), name, 48, 0.5, rd=False)[3] == 0:  # DNSKEY: served signed
                if time.time() > deadline:
                    sys.exit(f"knotd does not serve {name} on {addr}; logs in {work}")
                time.sleep(0.1)

        def upstream():
            """Queries received so far by the authoritative servers (knotd mod-stats), by
            server and type: Counter {"leaf DNSKEY": n, ...}."""
            n = Counter()
            for tag, (_, sock) in knots.items():
                out = subprocess.run(["knotc", "-s", sock, "stats", "mod-stats.query-type"],
                                     capture_output=True, text=True, timeout=10).stdout
                for m in re.finditer(r"query-type\[(\w+)\] = (\d+)", out):
                    n[f"{tag} {m.group(1)}"] += int(m.group(2))
            return n

        # 2. the resolvers
        hints = os.path.join(work, "root.hints")
        with open(hints, "w") as f:
            f.write(". 3600000 NS a.root.\na.root. 3600000 A 127.54.0.1\n")
        for who, (addr, port) in RESOLVERS.items():
            d = os.path.join(work, f"r{port}")
            os.makedirs(os.path.join(d, "policy"))
            path = os.path.join(d, "cleanpipe.yaml" if who.startswith("cleanpipe") else "unbound.conf")
            if who.startswith("cleanpipe"):
                dnssec = f"trust_anchor: {anchor}" if who in VALIDATING else "validate: false"
                conf = (f"listen:\n  dns: [\"{addr}:{port}\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                        f"resolver:\n  mode: recursive\n  root_hints: {hints}\n  allow_private_servers: true\n"
                        f"  dnssec:\n    {dnssec}\n"
                        f"policy:\n  dir: {d}/policy\n  allowlists: {ROOT}/allowlists\n"
                        f"admin:\n  listen: null\nweb:\n  listen: []\nstate:\n  path: {d}/state.sqlite\nlog:\n  filter: warn\n"
                        "limits:\n  new_names_per_second: 0\n")
                cmd = [binary, "serve", "--config", path]
            else:
                dnssec = (f"  module-config: \"validator iterator\"\n  trust-anchor-file: \"{anchor}\"\n"
                          if who in VALIDATING else "  module-config: \"iterator\"\n")
                conf = (f"server:\n  interface: {addr}@{port}\n  num-threads: 2\n  access-control: 127.0.0.0/8 allow\n"
                        f"  outgoing-interface: {addr}\n  do-not-query-localhost: no\n  root-hints: \"{hints}\"\n"
                        f"{dnssec}  so-rcvbuf: 4m\n"
                        f"  chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n"
                        "  use-syslog: no\n  verbosity: 0\n  ede: yes\n")
                cmd = ["unbound", "-d", "-c", path]
            with open(path, "w") as f:
                f.write(conf)
            procs[who] = subprocess.Popen(cmd, stderr=open(os.path.join(d, "stderr.log"), "w"))
        for who, server in RESOLVERS.items():  # answering, and root, TLD and their keys known
            deadline = time.time() + 30
            while ask(server, "www.ok.example", 1, 1.0)[3] == 0:
                if time.time() > deadline or procs[who].poll() is not None:
                    sys.exit(f"{who} does not resolve www.ok.example; logs in {work}")
                time.sleep(0.2)

        # 3. correctness
        print("\n1. correctness (dig +dnssec): rcode, AD, EDE, RRSIG records in the reply")
        print("| name | " + " | ".join(RESOLVERS) + " |\n|---|" + "---|" * len(RESOLVERS))
        for name in ("www.ok.example", "nope.ok.example", "www.bad.example"):
            print(f"| {name} | " + " | ".join(dig(s, name) for s in RESOLVERS.values()) + " |")

        # 4. cold recursion, one name at a time, each asked of every resolver in turn
        names = [f"n{k}.z{j}.example" for j in range(nzones) for k in range(4)][:args.names]
        random.Random(7).shuffle(names)
        order, cold = list(RESOLVERS), {who: [] for who in RESOLVERS}  # who -> [(ms, rcode, Counter of upstream queries)]
        t0, seen = time.time(), upstream()
        for i, name in enumerate(names):
            for who in order[i % 4:] + order[:i % 4]:
                ms, rcode, _, _ = ask(RESOLVERS[who], name, 1, args.timeout)
                time.sleep(0.02)
                now = upstream()
                cold[who].append((ms, rcode, now - seen))  # Counter subtraction keeps the positive counts
                seen = now
        cold_s = time.time() - t0

        # 5. cached names: warm (once without DO, once with), then alternating dnsperf runs
        qfile = os.path.join(work, "cached.txt")
        cached = [f"c{k}.z{j}.example" for k in range(per_zone) for j in range(nzones)][:args.cached]
        with open(qfile, "w") as f:
            f.writelines(f"{n} A\n" for n in cached)
        warm = {}
        for who, (addr, port) in RESOLVERS.items():
            # -q 20: cleanpipe answers SERVFAIL (EDE 0, "too many queries in flight") beyond
            # limits.client_outstanding (64) upstream queries for one client.
            for extra in ([], ["-D"]):
                out, done, lost, _ = dnsperf(port, qfile, 60, ["-s", addr, "-n", "1", "-q", "20", *extra])
            warm[who] = re.search(r"Response codes:\s*(.*)", out).group(1) + f", lost {lost:.0f}"
        hot = {}  # (DO?, who) -> [(q/s, lost, CPU µs/query, answers not NOERROR, mean response bytes)]
        t0 = time.time()
        for extra in ([], ["-D"]):
            for r in range(args.rounds):
                for who, (addr, port) in RESOLVERS.items():
                    pid = procs[who].pid
                    before = cpu_seconds(pid)
                    out, done, lost, qps = dnsperf(port, qfile, args.seconds, ["-s", addr, *extra])
                    cpu_us = (cpu_seconds(pid) - before) / max(done, 1) * 1e6
                    rcodes = re.search(r"Response codes:\s*(.*)", out)
                    noerror = re.search(r"NOERROR (\d+)", rcodes.group(1) if rcodes else "")
                    size = re.search(r"response (\d+)", out)
                    hot.setdefault((bool(extra), who), []).append((qps, lost, cpu_us, done - int(noerror.group(1) if noerror else 0),
                                                                   int(size.group(1)) if size else 0))
                    print(f"{'DO' if extra else 'no DO'} round {r + 1} {who:25}: {qps:8.0f} q/s  lost {lost:4.0f}  "
                          f"{cpu_us:6.2f} µs CPU/query  ({rcodes.group(1) if rcodes else 'no answers'}; {size and size.group(0)} bytes)")
        hot_s = time.time() - t0

        # 6. report
        def med(xs):
            return statistics.median(xs)
        rows = []  # (label, {who: value}, format)
        rows.append(("cold: mean ms", {w: statistics.mean(r[0] for r in v) for w, v in cold.items()}, "{:.2f}"))
        rows.append(("cold: median ms", {w: med([r[0] for r in v]) for w, v in cold.items()}, "{:.2f}"))
        rows.append(("cold: p90 ms", {w: sorted(r[0] for r in v)[int(0.9 * (len(v) - 1))] for w, v in cold.items()}, "{:.2f}"))
        rows.append(("cold: upstream queries/resolution", {w: statistics.mean(r[2].total() for r in v) for w, v in cold.items()}, "{:.3f}"))
        by_type = {w: sum((r[2] for r in v), Counter()) for w, v in cold.items()}
        rows.append(("cold: the same by server and type", {w: ", ".join(f"{k} {c / len(cold[w]):.2f}" for k, c in sorted(by_type[w].items()))
                                                           for w in cold}, "{}"))
        rows.append(("cold: outcome", {w: ", ".join(f"{k} x{[r[1] for r in v].count(k)}" for k in dict.fromkeys(r[1] for r in v))
                                       for w, v in cold.items()}, "{}"))
        for do in (False, True):
            tag = "cached, DO on every query (-D)" if do else "cached, no DO"
            rows.append((f"{tag}: queries/s", {w: med([x[0] for x in hot[(do, w)]]) for w in RESOLVERS}, "{:.0f}"))
            rows.append((f"{tag}: server CPU µs/query", {w: med([x[2] for x in hot[(do, w)]]) for w in RESOLVERS}, "{:.2f}"))
            rows.append((f"{tag}: response bytes (dnsperf's mean)", {w: med([x[4] for x in hot[(do, w)]]) for w in RESOLVERS}, "{:.0f}"))
            rows.append((f"{tag}: lost / not NOERROR (total)", {w: f"{sum(x[1] for x in hot[(do, w)]):.0f} / {sum(x[3] for x in hot[(do, w)]):.0f}"
                                                                  for w in RESOLVERS}, "{}"))

        print(f"\ndnssec.py: {os.cpu_count()} cores; cold: {len(names)} names in {nzones} zones, measured in {cold_s:.0f}s, "
              f"ideal {(len(names) + nzones) / len(names):.3f} (not validating) / {(len(names) + 2 * nzones) / len(names):.3f} "
              f"(validating) upstream queries/resolution; cached: {len(cached)} names, dnsperf -c 8 -T 2 -q 500, "
              f"{args.rounds} rounds x {args.seconds}s per resolver and DO setting ({hot_s:.0f}s)")
        print("warm-up (dnsperf, second pass, with DO): " + "; ".join(f"{w}: {v}" for w, v in warm.items()))
        print("| measure | " + " | ".join(RESOLVERS) + " | cleanpipe validating / Unbound validating |")
        print("|---|" + "---|" * (len(RESOLVERS) + 1))
        for label, vals, fmt in rows:
            a, b = vals["cleanpipe validating"], vals["Unbound validating"]
            ratio = f"{a / b:.2f}" if fmt != "{}" and b else "-"
            print(f"| {label} | " + " | ".join(fmt.format(vals[w]) for w in RESOLVERS) + f" | {ratio} |")
        for label, vals, fmt in rows:
            if "CPU" in label:
                print(f"validation's CPU cost, {label.split(':')[0]}: cleanpipe "
                      f"{vals['cleanpipe validating'] - vals['cleanpipe not validating']:+.2f} µs/query "
                      f"(x{vals['cleanpipe validating'] / vals['cleanpipe not validating']:.2f}), Unbound "
                      f"{vals['Unbound validating'] - vals['Unbound iterator']:+.2f} µs/query "
                      f"(x{vals['Unbound validating'] / vals['Unbound iterator']:.2f})")
    finally:
        signal.alarm(0)
        for p in procs.values():
            try:
                p.terminate()
                p.wait(timeout=10)
            except Exception:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
