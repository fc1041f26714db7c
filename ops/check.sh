#!/usr/bin/env bash
# Run every check of ops/: Prometheus rules (needs promtool: apt-get install -y prometheus),
# the Grafana dashboard (python3; promtool optional) and the systemd unit (systemd-analyze,
# SKIPPED without it). Installs nothing; exits non-zero if any check fails.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
failed=()
for check in prometheus grafana systemd; do
  echo "=== ops/$check/check.sh"
  bash "$here/$check/check.sh" || failed+=("$check")
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "ops checks FAILED: ${failed[*]}"
  exit 1
fi
echo "ops checks: OK"
