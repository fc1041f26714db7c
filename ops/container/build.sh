#!/usr/bin/env bash
# Build and smoke-test the cleanpipe container image without a container registry.
#
#   (a) mmdebstrap: a Debian bookworm minbase root file system from the Debian mirror
#   (b) podman import  -> localhost/cleanpipe-base:bookworm
#   (c) podman build   -> localhost/cleanpipe:dev  (ops/container/Containerfile, prebuilt binary)
#   (d) podman run -d, DNS published on 127.0.0.1:15353 (UDP and TCP), admin API on 127.0.0.1:18053
#   (e) dig: a name of the image's demo threat feed must answer NXDOMAIN with EDE 15
#
# Needs root and Debian's podman, buildah (for podman build), mmdebstrap, uidmap, crun (or runc,
# see below), dig (bind9-dnsutils) and curl. It installs nothing itself. It never rebuilds the binary: run
# `cargo build --release --locked` first (or set CLEANPIPE_BIN).
#
# Environment:
#   CLEANPIPE_BIN   binary to package (default: target/release/cleanpipe)
#   MIRROR          Debian mirror (default: the first URIs: of /etc/apt/sources.list.d/debian.sources,
#                   else deb.debian.org); SECURITY_MIRROR likewise for debian-security
#   WORKDIR         scratch directory (default: a new one under /var/tmp, removed at the end)
#   REBUILD_BASE=1  make the root file system again even if the base image exists
#   PODMAN_GLOBAL   extra global podman options, e.g. "--cgroup-manager=cgroupfs --storage-driver=vfs"
#   BUILD_OPTS      extra `podman build` options, e.g. "--isolation=chroot"
#   RUN_OPTS        extra `podman run` options, e.g. "--network=host" (then dig port 53 directly)
#   DNS_PORT        host loopback port for DNS (default 15353); ADMIN_PORT (default 18053)
#   STRIP=0         package the binary as it is (default: a copy without debug information)
#   KEEP=1          leave the container running (name: cleanpipe-dev) after the checks
#   AUTO_WORKAROUNDS=0  do not probe for and apply the workarounds below
#
# Workarounds (applied automatically when a trial container fails with the matching error, and
# printed; see docs/operations.md "Container image"):
#   "crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2"
#       (a cgroup v1 host whose cgroup2 "unified" mount has a controller): use runc (`--runtime runc`;
#       Debian package runc), which supports hybrid hierarchies. --cgroups=disabled does not help
#       crun here, and runc refuses --cgroups=disabled.
#   "setrlimit `RLIMIT_NOFILE` / RLIMIT_NPROC: Operation not permitted" (root without
#       CAP_SYS_RESOURCE, so podman's default limits are above what may be set): pass limits at or
#       under the hard limits (`--ulimit nofile=$(ulimit -Hn):$(ulimit -Hn) --ulimit nproc=4096:4096`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${CLEANPIPE_BIN:-$repo/target/release/cleanpipe}"
base_image="localhost/cleanpipe-base:bookworm"
image="localhost/cleanpipe:dev"
name="cleanpipe-dev"
dns_port="${DNS_PORT:-15353}"
admin_port="${ADMIN_PORT:-18053}"
# shellcheck disable=SC2206
podman=(podman ${PODMAN_GLOBAL:-})

log() { printf '== %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap --mode=root and rootful podman)"
for tool in podman mmdebstrap dig curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y podman buildah mmdebstrap uidmap crun runc bind9-dnsutils curl)"
done
[ -x "$bin" ] || die "no binary at $bin: build it first (cargo build --release --locked)"

mirror_from_sources() {   # $1: path suffix to match (debian or debian-security)
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk -v want="$1" '$1 == "URIs:" { n = split($2, p, "/"); if (p[n] == want) { print $2; exit } }' "$f")"
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri="$(awk -v want="$1" '$1 == "deb" { n = split($2, p, "/"); if (p[n] == want) { print $2; exit } }' "$f")"
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
}
mirror="${MIRROR:-$(mirror_from_sources debian)}"
mirror="${mirror:-http://deb.debian.org/debian}"
security="${SECURITY_MIRROR:-$(mirror_from_sources debian-security)}"
security="${security:-http://deb.debian.org/debian-security}"

own_workdir=0
if [ -z "${WORKDIR:-}" ]; then
  WORKDIR="$(mktemp -d /var/tmp/cleanpipe-image.XXXXXX)"
  own_workdir=1
fi
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true; fi
  if [ "$own_workdir" = 1 ]; then rm -rf "$WORKDIR"; fi
}
trap cleanup EXIT

# (a) + (b): the base image.
if [ "${REBUILD_BASE:-0}" = 1 ] || ! "${podman[@]}" image exists "$base_image"; then
  log "mmdebstrap: bookworm minbase + ca-certificates, libcap2-bin from $mirror"
  # ldd target/release/cleanpipe: libgcc_s.so.1, libm.so.6, libc.so.6 -- all in minbase.
  # shellcheck disable=SC2016  # "$1" in the hook is expanded by mmdebstrap (the root file system)
  mmdebstrap --mode=root --variant=minbase --format=tar \
    --include=ca-certificates,libcap2-bin \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    bookworm "$WORKDIR/rootfs.tar" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"
  log "podman import -> $base_image ($(du -h "$WORKDIR/rootfs.tar" | cut -f1) tar)"
  "${podman[@]}" import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "Debian bookworm minbase (mmdebstrap) for cleanpipe" \
    "$WORKDIR/rootfs.tar" "$base_image"
else
  log "$base_image exists (REBUILD_BASE=1 to make it again)"
fi

# Find out whether this host runs containers as they are, or which workaround it needs.
runtime_opts=()   # for podman build (a global option of podman for everything else)
limit_opts=()     # for podman build and podman run
probe() { "${podman[@]}" run --rm "${limit_opts[@]}" "$base_image" /bin/true 2>&1; }
if [ "${AUTO_WORKAROUNDS:-1}" = 1 ]; then
  for _ in 1 2 3; do
    if err="$(probe)"; then break; fi
    printf 'trial container failed: %s\n' "$err"
    case "$err" in
      *"cgroups in hybrid mode not supported"*)
        [ ${#runtime_opts[@]} -eq 0 ] || die "still failing with runc"
        command -v runc >/dev/null || die "crun cannot use this host's hybrid cgroups; install runc (apt-get install -y runc)"
        log "workaround: --runtime runc (crun does not support hybrid cgroup hierarchies)"
        runtime_opts=(--runtime runc)
        podman+=(--runtime runc) ;;
      *RLIMIT*|*rlimit*)
        [ ${#limit_opts[@]} -eq 0 ] || die "still failing on resource limits"
        nofile="$(ulimit -Hn)"
        log "workaround: --ulimit nofile=$nofile:$nofile --ulimit nproc=4096:4096 (no CAP_SYS_RESOURCE to raise limits)"
        limit_opts=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=4096:4096") ;;
      *) die "cannot run a container on this host (see the error above)" ;;
    esac
  done
  probe >/dev/null || die "cannot run a container on this host even with the workarounds: $(probe)"
  log "containers run with: ${podman[*]} run ${limit_opts[*]:-}"
fi

# (c): the image, from a staged context (the repository's target/ is many GB).
ctx="$WORKDIR/context"
rm -rf "$ctx"
mkdir -p "$ctx/ops"
cp "$bin" "$ctx/cleanpipe"
if [ "${STRIP:-1}" = 1 ] && command -v strip >/dev/null; then
  # Debug information only (symbols stay, so backtraces keep function names): 115 -> 19 MB.
  strip --strip-debug "$ctx/cleanpipe"
fi
cp -r "$repo/allowlists" "$repo/examples" "$ctx/"
cp -r "$here" "$ctx/ops/container"
log "podman build -> $image (binary: $bin)"
# --format docker: OCI images have no HEALTHCHECK; the docker format keeps it.
# shellcheck disable=SC2086
"${podman[@]}" build --format docker "${runtime_opts[@]}" "${limit_opts[@]}" ${BUILD_OPTS:-} \
  -f "$ctx/ops/container/Containerfile" -t "$image" "$ctx"
"${podman[@]}" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^localhost/cleanpipe' || true

# (d): run it.
log "podman run -d --name $name -p 127.0.0.1:$dns_port:53/udp -p 127.0.0.1:$dns_port:53/tcp -p 127.0.0.1:$admin_port:8053/tcp ${RUN_OPTS:-}"
"${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true
publish=(-p "127.0.0.1:$dns_port:53/udp" -p "127.0.0.1:$dns_port:53/tcp" -p "127.0.0.1:$admin_port:8053/tcp")
case " ${RUN_OPTS:-} " in *" --network=host "*|*" --net=host "*) publish=(); dns_port=53; admin_port=8053 ;; esac
# shellcheck disable=SC2086
"${podman[@]}" run -d --name "$name" "${limit_opts[@]}" "${publish[@]}" ${RUN_OPTS:-} "$image"

ready=0
for _ in $(seq 1 60); do
  if "${podman[@]}" exec "$name" cleanpipe ready --config /etc/cleanpipe/cleanpipe.yaml >/dev/null 2>&1; then
    ready=1; break
  fi
  if [ "$("${podman[@]}" inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then break; fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  "${podman[@]}" logs "$name" 2>&1 | tail -30
  die "the container did not become ready"
fi
log "ready; container log:"
"${podman[@]}" logs "$name" 2>&1 | tail -5
failed=0
if "${podman[@]}" healthcheck run "$name"; then
  log "healthcheck: healthy"
else
  echo "FAIL: podman healthcheck run (HEALTHCHECK cleanpipe ready)"; failed=1
fi

# (e): ask it.
log "dig @127.0.0.1 -p $dns_port malware.demo.example (demo threat feed: NXDOMAIN, EDE 15)"
out="$(dig @127.0.0.1 -p "$dns_port" +tries=1 +time=3 malware.demo.example A)"
printf '%s\n' "$out"
grep -q 'status: NXDOMAIN' <<<"$out" || { echo "FAIL: expected NXDOMAIN"; failed=1; }
grep -q 'EDE: 15' <<<"$out" || { echo "FAIL: expected EDE 15"; failed=1; }
log "dig +tcp @127.0.0.1 -p $dns_port x.c2.demo.example (over TCP)"
out="$(dig +tcp @127.0.0.1 -p "$dns_port" +tries=1 +time=3 x.c2.demo.example A)"
printf '%s\n' "$out" | grep -E 'status:|EDE:'
grep -q 'status: NXDOMAIN' <<<"$out" || { echo "FAIL: expected NXDOMAIN over TCP"; failed=1; }
log "metrics: curl http://127.0.0.1:$admin_port/metrics"
curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -E '^cleanpipe_(queries_total|decisions_total|policy_generation)' || { echo "FAIL: /metrics"; failed=1; }

if [ "$failed" != 0 ]; then
  "${podman[@]}" logs "$name" 2>&1 | tail -30
  die "smoke test failed"
fi
log "OK: $image answers from its policy (container $name$([ "${KEEP:-0}" = 1 ] && echo ' left running' || echo ' removed'))"
