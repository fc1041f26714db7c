#!/usr/bin/env bash
# Check the Prometheus alert rules: syntax (promtool check rules), behaviour (promtool test
# rules: every alert fires and stays quiet where it should) and that every runbook_url anchor
# is a heading of docs/operations.md. Exits non-zero on any failure.
# Needs promtool (Debian: apt-get install -y prometheus; the service need not run) and python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

if ! command -v promtool >/dev/null; then
  echo "check.sh: promtool not found (Debian: apt-get install -y prometheus)" >&2
  exit 1
fi

echo "== promtool check rules"
promtool check rules cleanpipe-rules.yml
echo "== promtool test rules"
promtool test rules cleanpipe-rules.test.yml
echo "== runbook anchors in docs/operations.md"
python3 - "$here/cleanpipe-rules.yml" "$repo/docs/operations.md" <<'EOF'
import re, sys
rules, doc = sys.argv[1], sys.argv[2]

def slug(heading):
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")

anchors = set()
in_code = False
for line in open(doc, encoding="utf-8"):
    if line.startswith("```"):
        in_code = not in_code
    m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
    if m and not in_code:
        anchors.add(slug(m.group(2)))

alerts = re.findall(r"^\s*- alert:\s*(\S+)", open(rules, encoding="utf-8").read(), re.M)
urls = re.findall(r'runbook_url:\s*"([^"]+)"', open(rules, encoding="utf-8").read())
bad = 0
if len(urls) != len(alerts):
    print(f"{len(alerts)} alerts but {len(urls)} runbook_url annotations")
    bad += 1
for url in urls:
    anchor = url.split("#", 1)[1] if "#" in url else ""
    if anchor not in anchors:
        print(f"missing heading for anchor #{anchor} ({url})")
        bad += 1
for alert in alerts:
    if slug(alert) not in anchors:
        print(f"no runbook section headed {alert} in docs/operations.md")
        bad += 1
if bad:
    sys.exit(1)
print(f"  SUCCESS: {len(urls)} runbook links resolve to headings of {doc.split('/')[-2]}/{doc.split('/')[-1]}")
EOF
echo "prometheus rules: OK"
