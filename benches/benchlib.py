"""Helpers shared by the load benchmarks (benches/load.py, benches/rpz_load.py)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid):
    """Resident memory of a process, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def write_rpz(path, origin, names):
    """An RPZ zone of `names` QNAME triggers answering NXDOMAIN, as a CERT feed export looks."""
    with open(path, "w") as z:
        z.write(f"$ORIGIN {origin}\n$TTL 300\n@ SOA ns.rpz.example. hostmaster.rpz.example. 1 3600 600 86400 300\n"
                "@ NS ns.rpz.example.\n")
        for i in range(names):
            z.write(f"c2-{i}.botnet-{i % 997}.example CNAME .\n")
