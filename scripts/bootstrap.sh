#!/usr/bin/env bash
# Bring a fresh Debian 12 machine (as root) to where heron runs: system packages, a venv with
# heron installed, and the eBPF objects built for this kernel. Idempotent and quiet when done.
# Usage: scripts/bootstrap.sh [--test]     (--test also installs the test tools)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_pkgs=(clang llvm libbpf-dev bpftool libelf1 python3-venv)
# The network tests make namespaces with `ip netns`; the console tests drive Debian's chromium (Playwright).
[ "$want_test" = 1 ] && apt_pkgs+=(iproute2 chromium)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "heron: installing ${missing[*]} (apt)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "heron: missing ${missing[*]}: eBPF collectors will be unavailable (heron doctor says why)" >&2
    fi
fi

py=${HERON_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
fi
stamp=.venv/.heron-installed
extras=platform
[ $want_test = 1 ] && extras=platform,test
# The test extras include the plain ones: a venv installed for tests serves `heron up` too.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! grep -qx -e "$extras" -e "platform,test" "$stamp"; then
    echo "heron: installing python packages ($extras)" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
    echo "$extras" > "$stamp"
fi
# Put `heron` on PATH (as root): a link to this checkout's wrapper, unless another heron is there.
link=/usr/local/bin/heron
if [ "$(id -u)" = 0 ] && [ -d /usr/local/bin ]; then
    if [ ! -e "$link" ] || { [ -L "$link" ] && [ "$(basename "$(readlink "$link")")" = heron ]; }; then
        [ "$(readlink "$link" 2>/dev/null)" = "$here/heron" ] || ln -sfn "$here/heron" "$link"
    fi
fi
# Build the eBPF objects against this kernel's BTF (skipped, with the reason, when not possible).
.venv/bin/python -m heron.agent.ebpf.build || echo "heron: eBPF build failed: heron falls back to user-mode collectors" >&2
# The platform's PostgreSQL tests need a server: install and start Debian's (idempotent; as root only).
if [ "$want_test" = 1 ] && [ "$(id -u)" = 0 ]; then
    timeout 900 scripts/ci-postgres.sh || echo "heron: PostgreSQL unavailable: its tests will skip (fail under CI=true)" >&2
fi
