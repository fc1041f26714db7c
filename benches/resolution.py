#!/usr/bin/env python3
"""Recursive resolution benchmark: cleanpipe beside Unbound, from the same private DNS
hierarchy, on the same machine, in the same run.

What it needs (Debian packages): knot (knotd, knotc), unbound. `cargo build --release` must have
been run. Runs as root (the authoritative servers listen on port 53). Loopback only, and only
addresses in 127.54.0.0/16; bounded (--budget, default 300 s; a run takes about 1-2 minutes).

The hierarchy, served by three knotd (a server answers from the deepest zone it has, so a
parent and its child must not share one):
  .               127.54.0.1     root (the hints of both resolvers: a.root. A 127.54.0.1)
  example.        127.54.1.1     the TLD: every zone below is a delegation with glue
  ok.example.     127.54.2.1     a normal zone (start-up check; primes root and TLD)
  hl0..hl9        ns1 silent (127.54.9.1..10), ns2 live (127.54.3.1..10): half-lame
  dead0..dead9    ns1 and ns2 silent (127.54.9.101..120): dead delegations
  z0..zM          one live server each (127.54.4.1..), 4 names each: cold recursion
Silent (--silent): `drop` (default) binds the addresses and swallows every packet, as a
firewalled or vanished host does; `closed` leaves nothing there, so the kernel answers ICMP
port unreachable (neither resolver was seen to act on it: both wait for their timeout).

The resolvers: cleanpipe (`resolver: mode: recursive`, the private root hints, its defaults
otherwise: query_timeout_secs 2, resolution_timeout_secs 5; DNSSEC validation is off with
private hints and no trust anchor) on 127.54.200.1:5301, and Unbound
(`module-config: iterator`: no validation, as cleanpipe does not here; its defaults
otherwise, QNAME minimisation and discard-timeout 1900 ms included - it drops the reply to a
query that took longer than that; --unbound-option changes them) on 127.54.200.2:5302. A small
Python UDP client asks them (EDNS, so EDE comes back); the time is time.perf_counter() around
one query, send to answer; a query without answer counts as the client timeout (--timeout).
Each query goes to both resolvers in turn (A B, then B A), so both see the same sequence:
  a. half-lame cold: the first query for www.hl{i}.example (zone and dead server new to the
     resolver; root and TLD known) - median and max of 10;
  b. half-lame warm: w2.hl{i}.example afterwards (infrastructure known, name not cached);
  c. after a restart of both (fresh caches, primed with ok.example): www.dead{i}.example cold,
     its rcode/EDE, then the same name again at once (warm: from the failure cache). The 10
     zones are asked in parallel, one thread each (a resolver may need minutes), for one
     resolver, then the other; cold waits up to --dead-timeout;
  d. after another restart (Unbound keeps retrying dead servers in the background): --names
     never-seen names n{k}.z{j}.example, one at a time, in a fixed shuffled order;
  e. the same names again: cache hits, the cost of the resolver's front end alone.
Upstream queries per resolution: knotd's mod-stats counters (`knotc stats`, request-protocol,
summed over the three servers) plus the packets the silent addresses swallowed from this
resolver (Unbound sends from its outgoing-interface 127.54.200.2, cleanpipe from 127.0.0.1;
--silent closed: not counted), read before each query and 20 ms after its answer, so that
queries sent right after answering still count. For c: the batch's total / 10, until the
answers or the client timeouts. The ideal for d: 1 query per name, plus 1 per new zone (the
TLD referral).

Usage: benches/resolution.py [--names 200] [--silent drop|closed] [--unbound-option 'discard-timeout: 0']
"""

import argparse
import os
import random
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import ROOT

CP = ("127.54.200.1", 5301)
UB = ("127.54.200.2", 5302)
HL, DEAD = 10, 10
RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


def qname_wire(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".") if l) + b"\0"


def skip_name(msg, i):
    while msg[i] and msg[i] & 0xC0 != 0xC0:
        i += msg[i] + 1
    return i + (2 if msg[i] else 1)


def ask(server, name, qtype=1, timeout=12.0, rd=True):
    """One query; returns (ms, rcode text, EDE code or None, answer count). A timeout is
    ("timeout", timeout in ms)."""
    qid = random.getrandbits(16)
    pkt = (struct.pack(">HHHHHH", qid, 0x0100 if rd else 0, 1, 0, 0, 1) + qname_wire(name)
           + struct.pack(">HH", qtype, 1) + b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        t0 = time.perf_counter()
        s.sendto(pkt, server)
        try:
            while True:
                msg = s.recv(4096)
                if len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == qid:
                    break
        except socket.timeout:
            return timeout * 1000, "timeout", None, 0
        ms = (time.perf_counter() - t0) * 1000
    _, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", msg[:12])
    i, ede = 12, None
    for _ in range(qd):
        i = skip_name(msg, i) + 4
    for k in range(an + ns + ar):
        i = skip_name(msg, i)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        if rtype == 41 and k >= an + ns:  # OPT: look for option 15 (EDE)
            j = i
            while j + 4 <= i + rdlen:
                code, olen = struct.unpack(">HH", msg[j:j + 4])
                if code == 15 and olen >= 2:
                    ede = struct.unpack(">H", msg[j + 4:j + 6])[0]
                j += 4 + olen
        i += rdlen
    return ms, RCODES.get(flags & 15, str(flags & 15)), ede, an


class Silent(threading.Thread):
    """Binds the silent addresses on port 53 and swallows every packet, counting them by
    source address (Unbound sends from its outgoing-interface, cleanpipe from 127.0.0.1)."""

    def __init__(self, addrs):
        super().__init__(daemon=True)
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in addrs]
        for s, a in zip(self.socks, addrs):
            s.bind((a, 53))
        self.count, self.stop = {}, False

    def run(self):
        while not self.stop:
            ready, _, _ = select.select(self.socks, [], [], 0.2)
            for s in ready:
                src = s.recvfrom(4096)[1][0]
                self.count[src] = self.count.get(src, 0) + 1


def zone_text(origin, ns, body=""):
    """A zone: SOA, NS records (name, address) with their A records, and `body`."""
    t = f"$ORIGIN {origin}\n$TTL 3600\n@ SOA {ns[0][0]} hostmaster 1 3600 600 86400 300\n"
    t += "".join(f"@ NS {n}\n{n} A {a}\n" for n, a in ns)
    return t + body


def knot(work, tag, listen, zones, stats=""):
    """Config for one knotd serving `zones` {origin: text} on `listen` addresses (port 53);
    `stats`: more mod-stats options (lines, e.g. "    query-type: on\n")."""
    d = os.path.join(work, tag)
    os.makedirs(d)
    conf = (f"server:\n  listen: [{', '.join(a + '@53' for a in listen)}]\n  rundir: {d}\n  user: root:root\n"
            f"control:\n  listen: {d}/knot.sock\ndatabase:\n  storage: {d}\n"
            "log:\n  - target: stderr\n    any: error\nmod-stats:\n  - id: s\n" + stats +
            "template:\n  - id: default\n    global-module: mod-stats/s\nzone:\n")
    for origin, text in zones.items():
        path = os.path.join(d, (origin.rstrip(".") or "root") + ".zone")
        with open(path, "w") as f:
            f.write(text)
        conf += f"  - domain: \"{origin}\"\n    file: {path}\n"
    with open(os.path.join(d, "knot.conf"), "w") as f:
        f.write(conf)
    return os.path.join(d, "knot.conf"), os.path.join(d, "knot.sock")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=200, help="never-seen names for measure d (4 per zone)")
    ap.add_argument("--silent", choices=("drop", "closed"), default="drop")
    ap.add_argument("--timeout", type=float, default=5.0, help="client timeout per query, seconds")
    ap.add_argument("--dead-timeout", type=float, default=30.0, help="client timeout of the cold dead-zone queries")
    ap.add_argument("--unbound-option", action="append", default=[], metavar="'KEY: VALUE'",
                    help="an extra line for Unbound's server: section (repeatable), e.g. 'discard-timeout: 0'")
    ap.add_argument("--budget", type=int, default=300, help="whole run, seconds")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/cleanpipe"))
    args = ap.parse_args()
    for t in ("knotd", "knotc", "unbound"):
        if shutil.which(t) is None:
            sys.exit(f"resolution.py: `{t}` is missing (apt-get install knot unbound)")
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")
    nzones = max(1, (args.names + 3) // 4)
    if nzones > 250:
        sys.exit("--names at most 1000")

    def bail(*_):
        raise SystemExit(f"resolution.py: stopped (signal or --budget {args.budget}s)")
    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGALRM, bail)
    signal.alarm(args.budget)

    work = tempfile.mkdtemp(prefix="cleanpipe-resolution-")
    procs, silent = {}, None
    try:
        binary = shutil.copy(args.binary, os.path.join(work, "cleanpipe"))  # a rebuild cannot change it mid-run
        # 1. the hierarchy
        hl_dead = [f"127.54.9.{i + 1}" for i in range(HL)]
        hl_live = [f"127.54.3.{i + 1}" for i in range(HL)]
        dead = [f"127.54.9.{101 + i}" for i in range(2 * DEAD)]
        zaddr = [f"127.54.4.{j + 1}" for j in range(nzones)]
        tld = "ok NS ns.ok\nns.ok A 127.54.2.1\n"
        tld += "".join(f"hl{i} NS ns1.hl{i}\nhl{i} NS ns2.hl{i}\nns1.hl{i} A {hl_dead[i]}\nns2.hl{i} A {hl_live[i]}\n" for i in range(HL))
        tld += "".join(f"dead{i} NS ns1.dead{i}\ndead{i} NS ns2.dead{i}\nns1.dead{i} A {dead[2 * i]}\nns2.dead{i} A {dead[2 * i + 1]}\n" for i in range(DEAD))
        tld += "".join(f"z{j} NS ns.z{j}\nns.z{j} A {zaddr[j]}\n" for j in range(nzones))
        leaves = {"ok.example.": zone_text("ok.example.", [("ns", "127.54.2.1")], "www A 192.0.2.1\n")}
        leaves.update({f"hl{i}.example.": zone_text(f"hl{i}.example.", [("ns1", hl_dead[i]), ("ns2", hl_live[i])],
                                                    "www A 192.0.2.2\nw2 A 192.0.2.3\n") for i in range(HL)})
        zbody = "".join(f"n{k} A 198.51.100.{k + 1}\n" for k in range(4))
        leaves.update({f"z{j}.example.": zone_text(f"z{j}.example.", [("ns", zaddr[j])], zbody) for j in range(nzones)})
        knots = [knot(work, "root", ["127.54.0.1"], {".": zone_text(".", [("a.root.", "127.54.0.1")],
                                                    "example. NS ns1.nic.example.\nns1.nic.example. A 127.54.1.1\n")}),
                 knot(work, "tld", ["127.54.1.1"], {"example.": zone_text("example.", [("ns1.nic", "127.54.1.1")], tld)}),
                 knot(work, "leaf", ["127.54.2.1"] + hl_live + zaddr, leaves)]
        for k, (conf, _) in enumerate(knots):
            procs[f"knotd{k}"] = subprocess.Popen(["knotd", "-c", conf], stderr=open(conf + ".log", "w"))
        if args.silent == "drop":
            silent = Silent(hl_dead + dead)
            silent.start()
        deadline = time.time() + 20
        for addr, name in (("127.54.0.1", "."), ("127.54.1.1", "example."), ("127.54.2.1", "ok.example."), (zaddr[-1], f"z{nzones - 1}.example.")):
            while ask((addr, 53), name, 6, 0.5, rd=False)[1] != "NOERROR":
                if time.time() > deadline:
                    sys.exit(f"knotd does not serve {name} on {addr}")
                time.sleep(0.1)

        def upstream(who):
            """Queries received so far by the authoritative servers, and by the silent
            addresses from `who`."""
            n = sum(v for src, v in silent.count.items() if (src == UB[0]) == (who == "Unbound")) if silent else 0
            for _, sock in knots:
                out = subprocess.run(["knotc", "-s", sock, "stats", "mod-stats.request-protocol"],
                                     capture_output=True, text=True, timeout=10).stdout
                n += sum(int(l.rsplit("=", 1)[1]) for l in out.splitlines() if "=" in l)
            return n

        # 2-3. the resolvers
        hints = os.path.join(work, "root.hints")
        open(hints, "w").write(". 3600000 NS a.root.\na.root. 3600000 A 127.54.0.1\n")
        os.makedirs(os.path.join(work, "policy"))
        cp_conf = os.path.join(work, "cleanpipe.yaml")
        with open(cp_conf, "w") as c:
            c.write(f"listen:\n  dns: [\"{CP[0]}:{CP[1]}\"]\n  threads: 2\nclients:\n  allow: [127.0.0.0/8]\n"
                    f"resolver:\n  mode: recursive\n  root_hints: {hints}\n  allow_private_servers: true\n"
                    f"policy:\n  dir: {work}/policy\n  allowlists: {ROOT}/allowlists\n"
                    f"admin:\n  listen: null\nweb:\n  listen: []\nstate:\n  path: {work}/state.sqlite\nlog:\n  filter: warn\n"
                    # One client asks every name: the per-client budget of new names would drop some.
                    "limits:\n  new_names_per_second: 0\n")
        ub_conf = os.path.join(work, "unbound.conf")
        with open(ub_conf, "w") as u:
            u.write(f"server:\n  interface: {UB[0]}@{UB[1]}\n  num-threads: 2\n  access-control: 127.0.0.0/8 allow\n"
                    f"  outgoing-interface: {UB[0]}\n  do-not-query-localhost: no\n  root-hints: \"{hints}\"\n  module-config: \"iterator\"\n"
                    f"  chroot: \"\"\n  username: \"\"\n  directory: \"{work}\"\n  pidfile: \"{work}/unbound.pid\"\n"
                    "  use-syslog: no\n  verbosity: 0\n  ede: yes\n" + "".join(f"  {o}\n" for o in args.unbound_option))

        def start():
            for key in ("cleanpipe", "unbound"):
                if key in procs:
                    procs[key].terminate()
                    procs.pop(key).wait(timeout=10)
            log = lambda n: open(os.path.join(work, n + ".log"), "a")
            procs["cleanpipe"] = subprocess.Popen([binary, "serve", "--config", cp_conf], stderr=log("cleanpipe"))
            procs["unbound"] = subprocess.Popen(["unbound", "-d", "-c", ub_conf], stderr=log("unbound"))
            for server in (CP, UB):  # answering, and root and TLD known
                deadline = time.time() + 30
                while ask(server, "www.ok.example", 1, 1.0)[3] == 0:
                    if time.time() > deadline:
                        sys.exit(f"resolver on {server} does not resolve www.ok.example; logs in {work}")
                    time.sleep(0.2)

        servers = {"cleanpipe": CP, "Unbound": UB}
        raw = {}  # (measure, resolver) -> [(ms, rcode, ede, upstream queries)]

        def measure(label, name, i):
            """Asks both resolvers for `name`, one after the other (the order alternates with i)."""
            for who in (list(servers) if i % 2 == 0 else list(servers)[::-1]):
                before = upstream(who)
                ms, rcode, ede, _ = ask(servers[who], name, 1, args.timeout)
                time.sleep(0.02)
                raw.setdefault((label, who), []).append((ms, rcode, ede, upstream(who) - before))

        def dead_batch(who):
            """All dead zones at once (a resolver may take minutes on one): each thread asks
            www.dead{i} cold, then at once again (warm). Upstream queries: the batch's / 10."""
            out, before = [None] * DEAD, upstream(who)
            def one(i):
                name = f"www.dead{i}.example"
                out[i] = (ask(servers[who], name, 1, args.dead_timeout), ask(servers[who], name, 1, args.timeout))
            threads = [threading.Thread(target=one, args=(i,)) for i in range(DEAD)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.02)
            q = (upstream(who) - before) / DEAD
            raw[("c", who)] = [(ms, rc, ede, q) for (ms, rc, ede, _), _ in out]
            raw[("c2", who)] = [(ms, rc, ede, 0) for _, (ms, rc, ede, _) in out]

        t0 = time.time()
        start()
        for i in range(HL):
            measure("a", f"www.hl{i}.example", i)
        for i in range(HL):
            measure("b", f"w2.hl{i}.example", i)
        start()  # fresh caches for the dead delegations
        for who in servers:
            dead_batch(who)
        start()  # fresh again: Unbound may still be retrying the dead servers
        names = [f"n{k}.z{j}.example" for j in range(nzones) for k in range(4)][:args.names]
        random.Random(7).shuffle(names)
        for i, name in enumerate(names):
            measure("d", name, i)
        for i, name in enumerate(names):  # the same names again: the answer cache alone
            measure("e", name, i)
        elapsed = time.time() - t0

        # 5. report (a query that got no answer counts as the client timeout)
        def stat(m, who, how):
            rs = raw[(m, who)]
            ms = sorted(r[0] for r in rs)
            if how == "outcome":
                seen = [r[1] + (f" EDE {r[2]}" if r[2] is not None else "") for r in rs]
                return ", ".join(f"{k} x{seen.count(k)}" for k in dict.fromkeys(seen))
            return {"median": statistics.median(ms), "max": ms[-1], "mean": statistics.mean(ms),
                    "p90": ms[int(0.9 * (len(ms) - 1))], "queries": statistics.mean(r[3] for r in rs)}[how]

        rows = [("a", "half-lame cold", ("median", "mean", "max", "queries", "outcome")),
                ("b", "half-lame warm", ("median", "queries", "outcome")),
                ("c", "dead cold", ("median", "max", "queries", "outcome")),
                ("c2", "dead warm", ("median", "outcome")),
                ("d", "cold recursion", ("mean", "median", "p90", "queries", "outcome")),
                ("e", "cache hit (d's names again)", ("mean", "median", "queries"))]
        print(f"\nresolution.py: {os.cpu_count()} cores, silent servers: {args.silent}, measured in {elapsed:.0f}s; "
              f"client timeout {args.timeout:g}s ({args.dead_timeout:g}s for dead cold); "
              f"Unbound extra options: {args.unbound_option or 'none'}; d: {len(names)} names in {nzones} zones, "
              f"ideal {(len(names) + nzones) / len(names):.3f} upstream queries/resolution")
        print("| measure | cleanpipe | Unbound | ratio cleanpipe/Unbound |")
        print("|---|---|---|---|")
        for m, label, hows in rows:
            for how in hows:
                x, y = stat(m, "cleanpipe", how), stat(m, "Unbound", how)
                unit = {"queries": "upstream queries/resolution", "outcome": "outcome"}.get(how, f"{how} ms")
                cells = f"{x} | {y} | " if how == "outcome" else f"{x:.2f} | {y:.2f} | {f'{x / y:.2f}' if y else '-'}"
                print(f"| {m[0]}. {label}: {unit} | {cells} |")
        print("\nraw (ms/rcode[/EDE]/upstream queries):")
        for (m, who), rs in raw.items():
            print(f"  {m:2} {who:9}: " + " ".join(f"{ms:.2f}/{rc}{'/' + str(e) if e is not None else ''}/{q:g}" for ms, rc, e, q in rs))
    finally:
        signal.alarm(0)
        for p in procs.values():
            try:
                p.terminate()
                p.wait(timeout=10)
            except Exception:
                p.kill()
        if silent:
            silent.stop = True
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
