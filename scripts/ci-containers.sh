#!/usr/bin/env bash
# Installs and starts what the real-container tests need (tests/containers.py) on Debian 12, as root:
# docker.io (dockerd + containerd + runc), podman, and busybox-static (the test image is made from it).
# Idempotent, quiet (details in $LOG), time-bounded. Exits 0 even when docker cannot start here:
# the container tests then skip and say why.
set -uo pipefail

LOG=${LOG:-/tmp/heron-ci-containers.log}
OWN_ROOT=/run/heron-test-docker
OWN_SOCKET=unix://$OWN_ROOT/docker.sock
OWN_DATA=/var/lib/heron-test-docker
t0=$(date +%s%N)
: >"$LOG"

say() { echo "ci-containers: $*" >&2; }
elapsed() { local ms=$((($(date +%s%N) - t0) / 1000000)); printf '%d.%03ds' $((ms / 1000)) $((ms % 1000)); }

if [ "$(id -u)" != 0 ]; then say "not root, skipping"; exit 0; fi

# 1. Packages (no-op when present). Only refresh the package lists if the install needs it.
if ! command -v dockerd >/dev/null || ! command -v containerd >/dev/null || ! command -v podman >/dev/null \
        || ! dpkg -s busybox-static >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(docker.io podman busybox-static)
    if ! timeout 300 apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$LOG" 2>&1; then
        timeout 180 apt-get update -q >>"$LOG" 2>&1
        if ! timeout 300 apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$LOG" 2>&1; then
            say "apt-get install ${pkgs[*]} failed (see $LOG); container tests will skip"
            exit 0
        fi
    fi
    say "installed ${pkgs[*]} in $(elapsed)"
fi

# 2. A daemon: reuse one that answers, else start ours. The flags must match dockerd_flags() in
#    tests/containers.py (a test checks): no bridge, no firewall or sysctl changes, our own state dirs.
responds() { DOCKER_HOST=$1 timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if responds unix:///run/docker.sock; then
    say "docker already running on /run/docker.sock"; exit 0
fi
if ! responds "$OWN_SOCKET"; then
    mkdir -p "$OWN_ROOT" "$OWN_DATA"
    setsid dockerd \
        --host="$OWN_SOCKET" \
        --exec-root="$OWN_ROOT/exec" \
        --data-root="$OWN_DATA" \
        --pidfile="$OWN_ROOT/docker.pid" \
        --bridge=none \
        --iptables=false \
        --ip6tables=false \
        --ip-masq=false \
        --ip-forward=false \
        --userland-proxy=false \
        </dev/null >>"$OWN_ROOT/dockerd.log" 2>&1 &
    for _ in $(seq 1 300); do
        responds "$OWN_SOCKET" && break
        sleep 0.1
    done
fi
if responds "$OWN_SOCKET"; then
    say "dockerd answering on $OWN_SOCKET after $(elapsed)"
else
    say "dockerd did not start (see $OWN_ROOT/dockerd.log); container tests will skip"
    tail -n 5 "$OWN_ROOT/dockerd.log" >&2 2>/dev/null || true
fi
exit 0
