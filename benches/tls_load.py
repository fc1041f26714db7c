#!/usr/bin/env python3
"""DNS over TLS and over HTTPS under load: cleanpipe beside Unbound's DoT and DoH listeners.

Needs: dnsperf (2.10, -m dot), h2load (nghttp2-client), unbound (built with libnghttp2, as
Debian's is), knot, openssl; `cargo build --release`. Loopback only; about 3 minutes.
Usage: benches/tls_load.py [--names 10000] [--seconds 10] [--rounds 3]

Both resolvers forward to one local Knot serving N names, with the same self-signed
certificate. Caches are warmed over UDP; then, in alternation (A B A B ...), cached queries go
over persistent connections and each server's CPU time is read from /proc before and after:
queries/s and server CPU per query. DoT: dnsperf -m dot (-c 8). DoH: h2load (8 connections,
10 streams each, POST of a cached query): dnsperf 2.10's DoH client loses every answer but one
when a server sends several in one TLS record (hyper does), which would measure dnsperf. Handshakes per
second: `openssl s_time -new` opens a new TLS connection for every exchange against each DoT
port, with the server CPU per handshake.
"""

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT

AUTH = ("127.0.76.1", 5399)
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def dnsperf(mode, port, qfile, seconds):
    cmd = ["dnsperf", "-m", mode, "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(seconds),
           "-c", "8", "-T", "2", "-q", "200", "-t", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    def grab(label):
        for line in out.splitlines():
            if line.strip().startswith(label):
                return float(line.split(":", 1)[1].split()[0])
        return 0.0
    return grab("Queries completed"), grab("Queries lost"), grab("Queries per second")


def h2load(port, body, seconds):
    """DoH POSTs over HTTP/2 for `seconds`: (requests done, failed)."""
    cmd = ["h2load", "-D", str(seconds), "-c", "8", "-m", "10", "-t", "2",
           "-H", "content-type: application/dns-message", "-d", body,
           f"https://127.0.0.1:{port}/dns-query"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    done = failed = 0
    for line in out.splitlines():
        # "requests: 123 total, 123 started, 123 done, 120 succeeded, 3 failed, ..."
        if line.startswith("requests:"):
            f = line.replace(",", "").split()
            done = int(f[f.index("succeeded") - 1])
            failed = int(f[f.index("failed") - 1])
    return done, failed


def s_time(port, seconds):
    """New TLS connections per second (openssl s_time -new)."""
    r = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds)],
                       capture_output=True, text=True)
    for line in r.stdout.splitlines():
        # "1234 connections in 5.00s; 246.80 connections/user sec, bytes read 0"
        if "connections in" in line and "real seconds" not in line:
            parts = line.split()
            return int(parts[0])
        if "connections in" in line:
            return int(line.split()[0])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    args = ap.parse_args()
    for t in ("dnsperf", "unbound", "knotd", "openssl"):
        if shutil.which(t) is None:
            sys.exit(f"tls_load.py: `{t}` is missing")
    work = tempfile.mkdtemp(prefix="cleanpipe-tls-")
    procs = []
    try:
        zone = os.path.join(work, "tls.lab.zone")
        with open(zone, "w") as z:
            z.write("$ORIGIN tls.lab.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\nns A 127.0.76.1\n")
            for i in range(args.names):
                z.write(f"n{i} A 192.0.2.{i % 250 + 1}\n")
        qfile = os.path.join(work, "q.txt")
        with open(qfile, "w") as q:
            for i in range(args.names):
                q.write(f"n{i}.tls.lab A\n")
        with open(os.path.join(work, "knot.conf"), "w") as k:
            k.write(f"server:\n  listen: {AUTH[0]}@{AUTH[1]}\n  rundir: {work}\n  user: root\n"
                    f"database:\n  storage: {work}\nlog:\n  - target: stderr\n    any: error\n"
                    f"zone:\n  - domain: tls.lab\n    file: {zone}\n")
        procs.append(subprocess.Popen(["knotd", "-c", os.path.join(work, "knot.conf")], stderr=subprocess.DEVNULL))
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=dns.test", "-keyout", key, "-out", cert], check=True, capture_output=True)
        body = os.path.join(work, "query.bin")
        with open(body, "wb") as b:
            # n1.tls.lab A with EDNS (1232): a cached name
            b.write(struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 1) + b"\x02n1\x03tls\x03lab\x00"
                    + struct.pack(">HH", 1, 1) + b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0))
        cp_conf = os.path.join(work, "cleanpipe.yaml")
        with open(cp_conf, "w") as c:
            c.write(f"listen:\n  dns: [\"127.0.0.1:5351\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                    f"resolver:\n  mode: forward\n  forward:\n    - address: {AUTH[0]}\n      port: {AUTH[1]}\n"
                    f"policy:\n  allowlists: {ROOT}/allowlists\nadmin:\n  listen: null\nweb:\n  listen: []\n"
                    f"state:\n  path: {work}/state.sqlite\nlog:\n  filter: error\n"
                    f"tls:\n  certificate: {cert}\n  key: {key}\n  dot: [\"127.0.0.1:5353\"]\n  doh: [\"127.0.0.1:5354\"]\n")
        ub_conf = os.path.join(work, "unbound.conf")
        with open(ub_conf, "w") as u:
            u.write(f"server:\n  interface: 127.0.0.1@5361\n  interface: 127.0.0.1@5363\n  interface: 127.0.0.1@5364\n"
                    f"  tls-port: 5363\n  https-port: 5364\n  tls-service-key: \"{key}\"\n  tls-service-pem: \"{cert}\"\n"
                    f"  num-threads: 2\n  so-reuseport: yes\n  access-control: 127.0.0.0/8 allow\n"
                    f"  do-not-query-localhost: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{work}\"\n"
                    f"  pidfile: \"{work}/unbound.pid\"\n  use-syslog: no\n  verbosity: 0\n"
                    f"  incoming-num-tcp: 100\n  msg-cache-size: 64m\n  rrset-cache-size: 128m\n"
                    f"forward-zone:\n  name: \"tls.lab\"\n  forward-addr: {AUTH[0]}@{AUTH[1]}\n")
        cp = subprocess.Popen([args.binary, "serve", "--config", cp_conf], stderr=open(os.path.join(work, "cp.log"), "w"))
        ub = subprocess.Popen(["unbound", "-d", "-c", ub_conf], stderr=open(os.path.join(work, "ub.log"), "w"))
        procs += [cp, ub]
        time.sleep(3)
        servers = {"cleanpipe": (cp.pid, 5351, 5353, 5354), "unbound": (ub.pid, 5361, 5363, 5364)}
        for name, (_, udp, _, _) in servers.items():
            subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(udp), "-d", qfile, "-n", "1", "-q", "200"], capture_output=True)
        results = {}
        for r in range(args.rounds):
            for mode in ("dot", "doh"):
                for name, (pid, _, dot, doh) in servers.items():
                    port = dot if mode == "dot" else doh
                    before = cpu_seconds(pid)
                    if mode == "dot":
                        done, lost, qps = dnsperf(mode, port, qfile, args.seconds)
                    else:
                        done, lost = h2load(port, body, args.seconds)
                        qps = done / args.seconds
                    cpu = cpu_seconds(pid) - before
                    us = cpu / done * 1e6 if done else float("nan")
                    results.setdefault((mode, name), []).append((qps, lost, us))
                    print(f"round {r + 1} {mode} {name:9}: {qps:9.0f} q/s  lost {lost:5.0f}  {us:6.2f} µs CPU/query", flush=True)
            for name, (pid, _, dot, _) in servers.items():
                before = cpu_seconds(pid)
                n = s_time(dot, 5)
                cpu = cpu_seconds(pid) - before
                results.setdefault(("handshakes", name), []).append((n / 5, 0, cpu / n * 1e6 if n else float("nan")))
                print(f"round {r + 1} handshakes {name:9}: {n / 5:7.0f} new TLS connections/s, {cpu / max(n, 1) * 1e6:7.0f} µs CPU each", flush=True)
        print("\n| transport | server | queries/s (median) | lost | server CPU µs per query (median) |")
        print("|---|---|---|---|---|")
        for (mode, name), v in sorted(results.items()):
            if mode == "handshakes":
                continue
            print(f"| {mode} | {name} | {statistics.median(x[0] for x in v):.0f} | {sum(x[1] for x in v):.0f} | {statistics.median(x[2] for x in v):.2f} |")
        print("\n| server | new TLS connections/s (median) | server CPU µs per handshake (median) |")
        print("|---|---|---|")
        for name in servers:
            v = results[("handshakes", name)]
            print(f"| {name} | {statistics.median(x[0] for x in v):.0f} | {statistics.median(x[2] for x in v):.0f} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
