#!/usr/bin/env python3
"""Start-up time with a big policy: cleanpipe beside Unbound, same data, same machine.

Needs: unbound (Debian package); `cargo build --release`. Loopback only; a few minutes.
Usage: benches/startup.py [--entries 1000000] [--rounds 3]

For each scenario and server, the time from process start until the first *correctly filtered*
answer, polled with a raw UDP query every 2 ms (so the figure includes binding the sockets and
loading the policy; neither server answers before its policy is loaded), and the resident
memory then. Scenarios:
  infected  1M infected subscribers (cleanpipe: infected*.csv; Unbound: 1M rpz-client-ip
            triggers, the nearest thing it has), queried from one of those addresses;
  feed      a 1M-name RPZ feed (both), a listed name queried;
  both      the two together (cleanpipe only).
Also the time of `cleanpipe check` on the same files. Medians of --rounds runs.
"""

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, rss_mib, write_rpz

BASE = 0x7F400000  # 127.64.0.0/10: generated subscribers are loopback addresses we can query from


def subscriber(i):
    """The i-th generated subscriber: spread over 127.64.0.0/10 in no particular order, as an
    abuse feed's export is (a sorted list would flatter the index build)."""
    return BASE + (i * 2654435761) % (1 << 22)


PROBE = subscriber(123_457)
SINK = "192.0.2.1"


def ip(a):
    return f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"


def query(name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def answer(resp):
    """(rcode, first A address or None) of a response to `query`."""
    rcode = resp[3] & 0x0F
    ancount = struct.unpack(">H", resp[6:8])[0]
    i = 12
    while resp[i] != 0:
        i += 1 + resp[i]
    i += 5
    for _ in range(ancount):
        if resp[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while resp[i] != 0:
                i += 1 + resp[i]
            i += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", resp[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            return rcode, socket.inet_ntoa(resp[i:i + 4])
        i += rdlen
    return rcode, None


def first_good_answer(proc, port, source, name, good, limit=120):
    """Seconds from now until `good(rcode, address)` holds for an answer from the server."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.settimeout(0.002)
    q = query(name)
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} before answering")
        try:
            s.sendto(q, ("127.0.0.1", port))
            resp, _ = s.recvfrom(4096)
            if good(*answer(resp)):
                return time.time()
            sys.exit(f"unfiltered or wrong answer before the policy was in force: {answer(resp)}")
        except (socket.timeout, ConnectionRefusedError):
            pass
    sys.exit(f"no answer within {limit}s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    ap.add_argument("--no-unbound", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")
    if not args.no_unbound and shutil.which("unbound") is None:
        sys.exit("startup.py: unbound is missing (apt-get install unbound), or pass --no-unbound")
    work = tempfile.mkdtemp(prefix="cleanpipe-startup-")
    n = args.entries
    csv = os.path.join(work, "infected-feed.csv")
    with open(csv, "w") as f:
        f.write("prefix,family,source,first_seen\n")
        for i in range(n):
            f.write(f"{ip(subscriber(i))},Mirai,feed,2026-11-20T08:00:00Z\n")
    rpz = os.path.join(work, "feed.rpz")
    write_rpz(rpz, "feed.rpz.example.", n)
    listed = "c2-777.botnet-777.example"
    client_rpz = os.path.join(work, "clients.rpz")
    with open(client_rpz, "w") as z:
        z.write("$ORIGIN clients.rpz.example.\n$TTL 300\n@ SOA ns.rpz.example. hostmaster.rpz.example. 1 3600 600 86400 300\n@ NS ns.rpz.example.\n")
        for i in range(n):
            a = subscriber(i)
            z.write(f"32.{a & 255}.{(a >> 8) & 255}.{(a >> 16) & 255}.{a >> 24}.rpz-client-ip CNAME .\n")

    def cleanpipe_conf(scenario):
        d = os.path.join(work, f"cp-{scenario}")
        pol = os.path.join(d, "policy")
        os.makedirs(pol, exist_ok=True)
        if scenario in ("infected", "both"):
            dst = os.path.join(pol, "infected-feed.csv")
            if not os.path.exists(dst):
                os.link(csv, dst)
        feeds = f"feeds:\n  - name: big\n    file: {rpz}\n" if scenario in ("feed", "both") else ""
        conf = os.path.join(d, "cleanpipe.yaml")
        with open(conf, "w") as c:
            c.write(f"listen:\n  dns: [\"127.0.0.1:5311\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                    f"resolver:\n  mode: forward\n  forward:\n    - address: 127.0.0.1\n      port: 9\n"
                    f"policy:\n  dir: {pol}\n  allowlists: {ROOT}/allowlists\nsinkhole:\n  ipv4: [{SINK}]\n"
                    f"admin:\n  listen: null\nweb:\n  listen: []\nstate:\n  path: {d}/state.sqlite\n"
                    f"log:\n  filter: warn\n{feeds}")
        return conf

    def unbound_conf(scenario):
        zone, origin = (client_rpz, "clients.rpz.example") if scenario == "infected" else (rpz, "feed.rpz.example")
        conf = os.path.join(work, f"unbound-{scenario}.conf")
        with open(conf, "w") as u:
            u.write(f"server:\n  interface: 127.0.0.1@5312\n  num-threads: 2\n  access-control: 127.0.0.0/8 allow\n"
                    f"  chroot: \"\"\n  username: \"\"\n  directory: \"{work}\"\n  pidfile: \"{work}/unbound.pid\"\n"
                    f"  use-syslog: no\n  verbosity: 0\n  module-config: \"respip iterator\"\n"
                    f"rpz:\n  name: {origin}\n  zonefile: {zone}\n")
        return conf

    checks = {
        "infected": (ip(PROBE), "www.example.com", lambda rc, a: a == SINK),
        "feed": ("127.0.0.1", listed, lambda rc, a: rc == 3),
        "both": (ip(PROBE), listed, lambda rc, a: rc == 3),
    }
    rows = []
    for scenario in ("infected", "feed", "both"):
        source, name, good = checks[scenario]
        servers = [("cleanpipe", [args.binary, "serve", "--config", cleanpipe_conf(scenario)], 5311)]
        if not args.no_unbound and scenario != "both":
            ub_good = (lambda rc, a: rc == 3)  # rpz-client-ip or QNAME trigger: NXDOMAIN
            servers.append(("unbound", ["unbound", "-d", "-c", unbound_conf(scenario)], 5312))
        for server, cmd, port in servers:
            times, rss = [], []
            for _ in range(args.rounds):
                t0 = time.time()
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{server}.log"), "w"))
                try:
                    check = good if server == "cleanpipe" else ub_good
                    t1 = first_good_answer(p, port, source, name, check)
                    times.append(t1 - t0)
                    rss.append(rss_mib(p.pid))
                finally:
                    p.terminate()
                    p.wait()
            rows.append((scenario, server, statistics.median(times), min(times), max(times), statistics.median(rss)))
            print(f"{scenario:9} {server:9} first filtered answer {statistics.median(times):6.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}), RSS {statistics.median(rss):7.1f} MiB", flush=True)
        if True:
            times = []
            for _ in range(args.rounds):
                t0 = time.time()
                r = subprocess.run([args.binary, "check", "--config", cleanpipe_conf(scenario)], capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(r.stderr)
                times.append(time.time() - t0)
            print(f"{scenario:9} cleanpipe check                  {statistics.median(times):6.2f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
