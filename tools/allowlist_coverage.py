#!/usr/bin/env python3
"""Coverage of vendor host lists by the curated allowlists, plus lint and bypass checks.

Usage:
    python3 tools/allowlist_coverage.py                 # coverage table for every reference list
    python3 tools/allowlist_coverage.py --json          # the same as JSON
    python3 tools/allowlist_coverage.py --lint          # structural checks of allowlists/ (exit 1 on error)
    python3 tools/allowlist_coverage.py --bypass        # overlap of bypass.yaml with allowlisted names
    python3 tools/allowlist_coverage.py --min 90        # exit 1 if a list or the total is below 90 %

Reference lists live in tests/data/vendor-hosts/*.txt: `#` starts a comment (whole line or after a
host), one host per line. A host `a.b.c` is covered when the allowlists contain `a.b.c` or an
ancestor (`b.c`, `c`) in any service's `domains`/`shared`, in essentials.yaml, probes.yaml or
remediation.yaml. A pattern such as `*.b.c`, `x*.b.c` or `a.*.b.c` is covered when the part after
its last wildcard label (`b.c`) or an ancestor of it is listed. A host at or under a canary
(essentials.yaml `canaries:`) is never covered: it is answered NXDOMAIN whatever the services say.

Only the standard library is needed; PyYAML is used when present, else a small reader for the
simple YAML these files use.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ALLOWLISTS = ROOT / "allowlists"
DEFAULT_REFS = ROOT / "tests" / "data" / "vendor-hosts"

# Parents that would open a whole platform (third-party content, every product of a vendor) if
# listed as a subtree. They must never be added; the report counts names covered only through
# one of them, because such coverage says little about whether the vendor's names were curated.
BROAD_PARENTS = {
    "microsoft.com",
    "google.com",
    "apple.com",
    "googleapis.com",
    "amazonaws.com",
    "cloudfront.net",
    "akamaiedge.net",
    "akamaized.net",
    "akamaihd.net",
    "azureedge.net",
    "windows.net",
    "blob.core.windows.net",
    "edgesuite.net",
    "edgekey.net",
    "trafficmanager.net",
    "cloudapp.net",
    "azurewebsites.net",
    "appspot.com",
    "herokuapp.com",
    "github.io",
    "fastly.net",
}

LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


# ------------------------------------------------------------------------------------------------
# YAML loading


def _load_yaml_text(text: str):
    try:
        import yaml  # type: ignore
    except ImportError:  # pragma: no cover - exercised only without PyYAML
        return _mini_yaml(text)
    return yaml.safe_load(text)


def _mini_yaml(text: str):
    """A reader for the subset of YAML used in allowlists/: nested maps, lists of scalars, lists
    of maps, inline `[a, b]` lists, quoted strings, `#` comments. Not a general YAML parser."""

    def strip_comment(line: str) -> str:
        out, quote = [], None
        for i, ch in enumerate(line):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
                break
            out.append(ch)
        return "".join(out).rstrip()

    def scalar(s: str):
        s = s.strip()
        if s.startswith("[") and s.endswith("]"):
            inner = s[1:-1].strip()
            return [scalar(x) for x in inner.split(",")] if inner else []
        if s.startswith("{") and s.endswith("}"):
            d = {}
            for part in s[1:-1].split(","):
                if ":" in part:
                    k, v = part.split(":", 1)
                    d[k.strip()] = scalar(v)
            return d
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            return s[1:-1]
        if s in ("true", "false"):
            return s == "true"
        return s

    lines = []
    for raw in text.splitlines():
        line = strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))

    def parse(i: int, indent: int):
        if i >= len(lines):
            return None, i
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                body = lines[i][1][2:].strip()
                if re.match(r"^[A-Za-z_][\w-]*:(\s|$)", body) and not body.startswith("{"):
                    # a map item: first key on the dash line, the rest indented below
                    sub = [(indent + 2, body)]
                    j = i + 1
                    while j < len(lines) and lines[j][0] > indent:
                        sub.append(lines[j])
                        j += 1
                    saved = lines[i:j]
                    lines[i:j] = sub
                    val, _ = parse(i, indent + 2)
                    lines[i : i + len(sub)] = saved
                    items.append(val)
                    i = j
                else:
                    items.append(scalar(body))
                    i += 1
            return items, i
        d = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            key, _, rest = lines[i][1].partition(":")
            rest = rest.strip()
            if rest:
                d[key.strip()] = scalar(rest)
                i += 1
            else:
                if i + 1 < len(lines) and lines[i + 1][0] > indent:
                    val, i = parse(i + 1, lines[i + 1][0])
                elif i + 1 < len(lines) and lines[i + 1][0] == indent and lines[i + 1][1].startswith("- "):
                    val, i = parse(i + 1, indent)
                else:
                    val, i = None, i + 1
                d[key.strip()] = val
        return d, i

    value, _ = parse(0, lines[0][0] if lines else 0)
    return value


def load_yaml(path: Path):
    return _load_yaml_text(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Allowlists


class Entry:
    """One allowlisted name and where it comes from."""

    def __init__(self, name: str, kind: str, owner: str, file: str):
        self.name = name
        self.kind = kind  # domains | shared | essential | probe | remediation | canary | bypass
        self.owner = owner  # service id or group id
        self.file = file

    def where(self) -> str:
        return f"{self.kind}:{self.owner}"


class Allowlists:
    def __init__(self, root: Path):
        self.root = root
        self.services: list[dict] = []  # each with "_file"
        self.entries: list[Entry] = []
        self.canaries: list[str] = []
        self.profiles: dict = {}
        self.bypass_groups: list[dict] = []
        self.errors: list[str] = []
        self._load()
        self.index: dict[str, list[Entry]] = {}
        for e in self.entries:
            self.index.setdefault(e.name, []).append(e)

    def _load(self) -> None:
        sdir = self.root / "services"
        for path in sorted(sdir.glob("*.yaml")):
            data = load_yaml(path) or {}
            for svc in data.get("services") or []:
                svc = dict(svc)
                svc["_file"] = f"services/{path.name}"
                self.services.append(svc)
                for d in svc.get("domains") or []:
                    self.entries.append(Entry(norm(d), "domains", svc.get("id", "?"), svc["_file"]))
                for d in svc.get("shared") or []:
                    self.entries.append(Entry(norm(d), "shared", svc.get("id", "?"), svc["_file"]))
        ess = self.root / "essentials.yaml"
        if ess.exists():
            data = load_yaml(ess) or {}
            for g in data.get("groups") or []:
                for d in g.get("domains") or []:
                    self.entries.append(Entry(norm(d), "essential", g.get("id", "?"), "essentials.yaml"))
            for c in data.get("canaries") or []:
                self.canaries.append(norm(c.get("name", "")))
        probes = self.root / "probes.yaml"
        if probes.exists():
            data = load_yaml(probes) or {}
            for p in data.get("probes") or []:
                self.entries.append(Entry(norm(p.get("name", "")), "probe", p.get("vendor", "?"), "probes.yaml"))
        rem = self.root / "remediation.yaml"
        if rem.exists():
            data = load_yaml(rem) or {}
            for g in data.get("groups") or []:
                for d in g.get("domains") or []:
                    self.entries.append(Entry(norm(d), "remediation", g.get("id", "?"), "remediation.yaml"))
        prof = self.root / "profiles.yaml"
        if prof.exists():
            self.profiles = (load_yaml(prof) or {}).get("profiles") or {}
        byp = self.root / "bypass.yaml"
        if byp.exists():
            self.bypass_groups = (load_yaml(byp) or {}).get("groups") or []

    def covering(self, name: str) -> list[Entry]:
        """Entries equal to `name` or one of its ancestors, nearest first."""
        out = []
        for suffix in ancestors(name):
            out.extend(self.index.get(suffix, []))
        return out

    def canary_for(self, name: str) -> str | None:
        for suffix in ancestors(name):
            if suffix in self.canaries:
                return suffix
        return None

    def profile_services(self, profile: str) -> set[str]:
        p = self.profiles.get(profile) or {}
        cats = set(p.get("categories") or [])
        excl = set(p.get("exclude_services") or [])
        ids = {s["id"] for s in self.services if s.get("category") in cats and s["id"] not in excl}
        ids |= set(p.get("services") or [])
        return ids


def norm(name) -> str:
    s = str(name).strip().lower()
    return s[:-1] if s.endswith(".") else s


def ancestors(name: str):
    labels = name.split(".")
    for i in range(len(labels)):
        yield ".".join(labels[i:])


def valid_name(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    return all(LABEL_RE.match(label) for label in name.split("."))


# ------------------------------------------------------------------------------------------------
# Reference lists


def read_reference(path: Path) -> dict:
    hosts, meta = [], {"source": [], "read": []}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            m = re.match(r"#\s*(source|read):\s*(.+)$", line)
            if m:
                meta[m.group(1)].append(m.group(2).strip())
            continue
        host = line.split("#", 1)[0].strip().lower()
        if host:
            hosts.append(host)
    seen, unique = set(), []
    for h in hosts:
        if h not in seen:
            seen.add(h)
            unique.append(h)
    return {"file": path.name, "hosts": unique, "meta": meta}


def requirement(host: str) -> tuple[str, bool]:
    """The name whose subtree must be allowlisted for `host`, and whether `host` is a pattern."""
    labels = host.split(".")
    last_wild = max((i for i, l in enumerate(labels) if "*" in l), default=-1)
    if last_wild < 0:
        return host, False
    return ".".join(labels[last_wild + 1 :]), True


def coverage(lists: Allowlists, ref: dict) -> dict:
    rows = []
    for host in ref["hosts"]:
        need, pattern = requirement(host)
        canary = lists.canary_for(need)
        cov = lists.covering(need) if need and not canary else []
        specific = [e for e in cov if e.name not in BROAD_PARENTS]
        rows.append(
            {
                "host": host,
                "needs": need,
                "pattern": pattern,
                "covered": bool(cov),
                "covered_by": sorted({f"{e.name} ({e.where()})" for e in cov}),
                "broad_only": bool(cov) and not specific,
                "canary": canary,
            }
        )
    n = len(rows)
    c = sum(r["covered"] for r in rows)
    return {
        "file": ref["file"],
        "source": ref["meta"]["source"],
        "read": ref["meta"]["read"],
        "names": n,
        "covered": c,
        "percent": round(100.0 * c / n, 1) if n else 100.0,
        "covered_only_via_broad_parent": sorted(r["host"] for r in rows if r["broad_only"]),
        "uncovered": [r["host"] for r in rows if not r["covered"]],
        "blocked_by_canary": [r["host"] for r in rows if r["canary"]],
        "rows": rows,
    }


def run_coverage(lists: Allowlists, refs_dir: Path) -> dict:
    reports = [coverage(lists, read_reference(p)) for p in sorted(refs_dir.glob("*.txt"))]
    n = sum(r["names"] for r in reports)
    c = sum(r["covered"] for r in reports)
    broad = sum(len(r["covered_only_via_broad_parent"]) for r in reports)
    return {
        "allowlists": str(lists.root),
        "references": str(refs_dir),
        "lists": reports,
        "overall": {
            "names": n,
            "covered": c,
            "percent": round(100.0 * c / n, 1) if n else 100.0,
            "covered_only_via_broad_parent": broad,
        },
    }


def print_coverage(result: dict, verbose: bool) -> None:
    print(f"{'reference list':<22} {'names':>5} {'covered':>7} {'%':>6} {'broad-only':>10}")
    for r in result["lists"]:
        print(
            f"{r['file']:<22} {r['names']:>5} {r['covered']:>7} {r['percent']:>6.1f} "
            f"{len(r['covered_only_via_broad_parent']):>10}"
        )
    o = result["overall"]
    print(f"{'OVERALL':<22} {o['names']:>5} {o['covered']:>7} {o['percent']:>6.1f} {o['covered_only_via_broad_parent']:>10}")
    print("(broad-only: covered only through a parent such as microsoft.com, google.com, apple.com or googleapis.com)")
    for r in result["lists"]:
        print(f"\n== {r['file']}: {r['covered']}/{r['names']} covered ({r['percent']:.1f} %)")
        for s in r["source"]:
            print(f"   source: {s}")
        for s in r["read"]:
            print(f"   read:   {s}")
        if r["uncovered"]:
            print("   uncovered:")
            for h in r["uncovered"]:
                extra = ""
                row = next(x for x in r["rows"] if x["host"] == h)
                if row["canary"]:
                    extra = f"  (canary {row['canary']}: NXDOMAIN on purpose)"
                print(f"     - {h}{extra}")
        else:
            print("   uncovered: none")
        if verbose and r["covered_only_via_broad_parent"]:
            print("   covered only via a broad parent:")
            for h in r["covered_only_via_broad_parent"]:
                print(f"     - {h}")


# ------------------------------------------------------------------------------------------------
# Lint


def lint(lists: Allowlists, refs_dir: Path) -> tuple[list[str], list[str]]:
    errors, warnings = [], []
    owner: dict[str, str] = {}
    shared: dict[str, set[str]] = {}
    ids: set[str] = set()
    date_re = re.compile(r"^\d{4}-\d{2}-\d{2}$")
    for svc in lists.services:
        sid, f = svc.get("id", "?"), svc["_file"]
        if sid in ids:
            errors.append(f"{f}: service `{sid}` defined twice")
        ids.add(sid)
        for key in ("domains", "shared"):
            for raw in svc.get(key) or []:
                s = str(raw)
                n = norm(s)
                if s != s.strip() or s.strip() != s.strip().lower() or s.strip().endswith("."):
                    errors.append(f"{f}: {sid}: `{s}` must be lowercase without a trailing dot")
                if not valid_name(n):
                    errors.append(f"{f}: {sid}: `{s}` is not a valid DNS name")
                if n in BROAD_PARENTS:
                    warnings.append(f"{f}: {sid}: `{n}` is an over-broad parent ({key})")
                if key == "domains":
                    if n in owner:
                        errors.append(f"{f}: `{n}` is in the domains of `{owner[n]}` and `{sid}`")
                    owner[n] = sid
                else:
                    shared.setdefault(n, set()).add(sid)
        srcs = svc.get("sources")
        if not isinstance(srcs, list) or not srcs:
            errors.append(f"{f}: {sid}: missing `sources:` (list of {{url, read}})")
        else:
            for s in srcs:
                if not isinstance(s, dict) or set(s) != {"url", "read"}:
                    errors.append(f"{f}: {sid}: a source must be {{url, read}}, got {s!r}")
                    continue
                if not str(s["url"]).startswith("https://"):
                    errors.append(f"{f}: {sid}: source url `{s['url']}` is not https://")
                r = str(s["read"])
                if r != "not-fetched" and not date_re.match(r):
                    errors.append(f"{f}: {sid}: source read `{r}` must be YYYY-MM-DD or not-fetched")
                elif r != "not-fetched":
                    try:
                        _dt.date.fromisoformat(r)
                    except ValueError:
                        errors.append(f"{f}: {sid}: source read `{r}` is not a real date")
    for n, users in sorted(shared.items()):
        if n in owner:
            errors.append(
                f"`{n}` is shared by {', '.join(sorted(users))} but owned (domains) by `{owner[n]}`: list it only under `shared:`"
            )
        if len(users) == 1:
            warnings.append(f"`{n}` is shared by one service only ({next(iter(users))})")
    # names covered twice inside one service (harmless, reported as information)
    for svc in lists.services:
        names = [norm(x) for x in (svc.get("domains") or []) + (svc.get("shared") or [])]
        if len(names) != len(set(names)):
            dups = sorted({x for x in names if names.count(x) > 1})
            errors.append(f"{svc['_file']}: {svc.get('id')}: listed twice: {', '.join(dups)}")
    for e in lists.entries:
        if e.kind in ("essential", "probe", "remediation") and not valid_name(e.name):
            errors.append(f"{e.file}: {e.owner}: `{e.name}` is not a valid DNS name")
    for c in lists.canaries:
        if not valid_name(c):
            errors.append(f"essentials.yaml: canary `{c}` is not a valid DNS name")
    # bypass.yaml
    for g in lists.bypass_groups:
        gid = g.get("id", "?")
        if not g.get("description"):
            errors.append(f"bypass.yaml: group `{gid}` has no description")
        for p in g.get("profiles") or []:
            if p not in lists.profiles:
                errors.append(f"bypass.yaml: group `{gid}`: unknown profile `{p}`")
        seen = set()
        for d in g.get("domains") or []:
            n = norm(d)
            if str(d) != n:
                errors.append(f"bypass.yaml: `{d}` must be lowercase without a trailing dot")
            if not valid_name(n):
                errors.append(f"bypass.yaml: `{d}` is not a valid DNS name")
            if n in seen:
                errors.append(f"bypass.yaml: `{n}` listed twice in `{gid}`")
            seen.add(n)
    # reference lists
    for p in sorted(refs_dir.glob("*.txt")):
        ref = read_reference(p)
        if not ref["meta"]["source"]:
            errors.append(f"{p.name}: no `# source:` header")
        if not ref["meta"]["read"]:
            errors.append(f"{p.name}: no `# read:` header")
        for h in ref["hosts"]:
            need, _ = requirement(h)
            if not valid_name(need) or not valid_name(h.replace("*", "x")):
                errors.append(f"{p.name}: `{h}` is not a valid host or pattern")
    return errors, warnings


# ------------------------------------------------------------------------------------------------
# Bypass overlap


def bypass_overlap(lists: Allowlists) -> dict:
    """For every bypass name: allowlisted names equal to it, above it (it would be carved out of an
    allowed subtree) or below it (blocking it would block allowlisted names)."""
    out = {"groups": [], "errors": [], "carve_outs": [], "info": []}
    all_names = {}
    for e in lists.entries:
        all_names.setdefault(e.name, []).append(e)
    for g in lists.bypass_groups:
        gid = g.get("id", "?")
        profiles = g.get("profiles") or []
        in_profile: set[str] = set()
        for p in profiles:
            in_profile |= lists.profile_services(p)
        names = [norm(d) for d in g.get("domains") or []]
        out["groups"].append({"id": gid, "profiles": profiles, "names": len(names)})
        for n in names:
            for suffix in ancestors(n):
                for e in all_names.get(suffix, []):
                    relevant = (e.kind in ("domains", "shared") and e.owner in in_profile) or e.kind in (
                        "essential",
                        "probe",
                    )
                    rel = "exact" if suffix == n else "inside"
                    msg = {
                        "bypass": n,
                        "group": gid,
                        "relation": rel,
                        "allowlisted": e.name,
                        "where": e.where(),
                        "file": e.file,
                        "in_profile": relevant,
                    }
                    if relevant and rel == "exact":
                        out["errors"].append(msg)
                    elif relevant:
                        out["carve_outs"].append(msg)
                    else:
                        out["info"].append(msg)
            prefix = "." + n
            for name, es in all_names.items():
                if name.endswith(prefix):
                    for e in es:
                        relevant = (e.kind in ("domains", "shared") and e.owner in in_profile) or e.kind in (
                            "essential",
                            "probe",
                        )
                        msg = {
                            "bypass": n,
                            "group": gid,
                            "relation": "above",
                            "allowlisted": e.name,
                            "where": e.where(),
                            "file": e.file,
                            "in_profile": relevant,
                        }
                        (out["errors"] if relevant else out["info"]).append(msg)
        for n in names:
            for c in lists.canaries:
                if n == c or n.endswith("." + c) or c.endswith("." + n):
                    rel = "canary" if n == c or n.endswith("." + c) else "contains-canary"
                    out["info"].append(
                        {"bypass": n, "group": gid, "relation": rel, "allowlisted": c, "where": "canary", "file": "essentials.yaml", "in_profile": True}
                    )
    return out


def print_bypass(res: dict) -> None:
    for g in res["groups"]:
        print(f"bypass group {g['id']}: {g['names']} names, profiles {', '.join(g['profiles'])}")

    def show(title, rows):
        print(f"\n{title}: {len(rows)}")
        for m in rows:
            print(f"  - {m['bypass']} [{m['group']}] {m['relation']} {m['allowlisted']} ({m['where']}, {m['file']})")

    show("ERRORS (bypass name equal to, or a parent of, a name allowlisted in its profiles)", res["errors"])
    show("carve-outs (bypass name inside a subtree allowlisted in its profiles; bypass must take precedence)", res["carve_outs"])
    show("information (overlaps outside the group's profiles, or with canaries)", res["info"])


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allowlists", type=Path, default=DEFAULT_ALLOWLISTS)
    ap.add_argument("--refs", type=Path, default=DEFAULT_REFS, help="directory of reference host lists")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--lint", action="store_true", help="structural checks of the allowlists")
    ap.add_argument("--bypass", action="store_true", help="overlap of bypass.yaml with allowlisted names")
    ap.add_argument("--verbose", "-v", action="store_true", help="also list names covered only via a broad parent")
    ap.add_argument("--min", type=float, default=None, help="fail when a list or the total is below this percentage")
    args = ap.parse_args(argv)

    lists = Allowlists(args.allowlists)
    status = 0
    out: dict = {}

    if args.lint:
        errors, warnings = lint(lists, args.refs)
        out["lint"] = {"errors": errors, "warnings": warnings}
        if not args.json:
            for w in warnings:
                print(f"warning: {w}")
            for e in errors:
                print(f"error: {e}")
            print(f"lint: {len(errors)} error(s), {len(warnings)} warning(s)")
        if errors:
            status = 1
    if args.bypass:
        res = bypass_overlap(lists)
        out["bypass"] = res
        if not args.json:
            print_bypass(res)
        if res["errors"]:
            status = 1
    if not args.lint and not args.bypass or args.min is not None:
        result = run_coverage(lists, args.refs)
        out["coverage"] = result
        if not args.json:
            print_coverage(result, args.verbose)
        if args.min is not None:
            low = [r["file"] for r in result["lists"] if r["percent"] < args.min]
            if result["overall"]["percent"] < args.min:
                low.append("OVERALL")
            if low:
                if not args.json:
                    print(f"\nbelow {args.min:g} %: {', '.join(low)}")
                status = 1
    if args.json:
        if "coverage" in out:
            for r in out["coverage"]["lists"]:
                r.pop("rows", None) if not args.verbose else None
        json.dump(out if len(out) > 1 else next(iter(out.values())), sys.stdout, indent=2)
        print()
    return status


if __name__ == "__main__":
    sys.exit(main())
