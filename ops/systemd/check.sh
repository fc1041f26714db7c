#!/usr/bin/env bash
# Verify the systemd unit with `systemd-analyze verify` (and print its security exposure).
# Installs nothing. Without systemd-analyze it prints SKIPPED and exits 0.
#
# verify fails when ExecStart's binary does not exist. When /usr/local/bin/cleanpipe is not
# installed, the check runs on a temporary copy of the unit whose ExecStart points at the
# repository's binary (target/release, else target/debug), or at /bin/true when none is built:
# everything else in the unit is verified as written.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
unit="$here/cleanpipe.service"
installed=/usr/local/bin/cleanpipe

if ! command -v systemd-analyze >/dev/null; then
  echo "SKIPPED: systemd-analyze not found (Debian package systemd); the unit was not verified"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The copy keeps the unit's name: verify reads the name (cleanpipe.service) from the file name.
if [ -x "$installed" ]; then
  target="$installed"
  cp "$unit" "$tmp/cleanpipe.service"
else
  target=""
  for candidate in "$repo/target/release/cleanpipe" "$repo/target/debug/cleanpipe" /bin/true; do
    if [ -x "$candidate" ]; then target="$candidate"; break; fi
  done
  sed "s#^ExecStart=$installed #ExecStart=$target #" "$unit" > "$tmp/cleanpipe.service"
  grep -q "^ExecStart=$target " "$tmp/cleanpipe.service" || { echo "check.sh: ExecStart not found in $unit" >&2; exit 1; }
fi
echo "== systemd-analyze verify cleanpipe.service (ExecStart binary: $target)"

# verify prints problems on stderr and may still exit 0 for some of them: fail on any output.
out="$(cd "$tmp" && systemd-analyze verify ./cleanpipe.service 2>&1)" && rc=0 || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
  printf '%s\n' "$out"
  echo "systemd unit: FAILED (systemd-analyze verify exit $rc)"
  exit 1
fi
echo "  SUCCESS: no findings"

# The exposure score (informational; --offline needs systemd 252 or newer).
if (cd "$tmp" && systemd-analyze security --offline=true ./cleanpipe.service) > "$tmp/security.txt" 2>&1; then
  echo "== systemd-analyze security --offline=true: $(grep -o 'Overall exposure level.*' "$tmp/security.txt")"
fi
echo "systemd unit: OK"
