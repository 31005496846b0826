"""What this host offers, and what the agent would pick: ``heron doctor``."""

from __future__ import annotations

import ctypes.util
import os
import shutil
from typing import Any

from heron.agent.host import Host, detect_host
from heron.agent.linux import cgroups
from heron.agent.linux.caps import effective_caps
from heron.agent.sources import ladder
from heron.agent.sources.registry import LADDERS


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def host_facts(host: Host) -> dict[str, Any]:
    lockdown = _read("/sys/kernel/security/lockdown")
    return {
        "hostname": host.info.hostname,
        "kernel": host.info.kernel,
        "distro": host.info.distro,
        "arch": host.info.arch,
        "machine_id": host.info.machine_id,
        "boot_id": host.info.boot_id,
        "root": os.geteuid() == 0,
        "capabilities": effective_caps(),
        "btf": os.path.exists("/sys/kernel/btf/vmlinux"),
        "lockdown": lockdown.split("[")[1].split("]")[0] if "[" in lockdown
        else (lockdown or "unknown (securityfs not mounted)"),
        "tracefs": os.path.exists("/sys/kernel/tracing/trace_pipe")
        or os.path.exists("/sys/kernel/debug/tracing/trace_pipe"),
        "cgroup": cgroups.cgroup_version(),
        "container_runtimes": cgroups.container_runtimes_present(),
        "tools": {
            "clang": shutil.which("clang") is not None,
            "bpftool": shutil.which("bpftool") is not None,
            "libbpf": ctypes.util.find_library("bpf") is not None,
        },
    }


def report(host: Host | None = None, pinned: dict[str, str] | None = None) -> dict[str, Any]:
    host = host or detect_host()
    collectors: dict[str, Any] = {}
    for cap in LADDERS:
        try:
            collectors[cap] = ladder.choose(cap, host, (pinned or {}).get(cap)).as_dict()
        except (ladder.PinnedMechanismUnavailable, ladder.UnknownMechanism) as e:
            collectors[cap] = {"selected": None, "error": str(e)}
    return {"host": host_facts(host), "collectors": collectors}


def render(rep: dict[str, Any]) -> str:
    h = rep["host"]
    lines = [
        f"host        {h['hostname']}  {h['distro']}  kernel {h['kernel']} ({h['arch']})",
        f"privileges  root={h['root']}  "
        + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in h["capabilities"].items()),
        f"kernel      BTF={'yes' if h['btf'] else 'no'}  lockdown={h['lockdown']}  "
        f"tracefs={'mounted' if h['tracefs'] else 'not mounted'}  cgroup={h['cgroup']}",
        "tools       " + "  ".join(f"{k}={'yes' if v else 'no'}" for k, v in h["tools"].items()),
        f"containers  {', '.join(h['container_runtimes']) or 'no runtime found'}",
        "",
    ]
    for cap, c in rep["collectors"].items():
        sel = c.get("selected")
        err = f"  ({c['error']})" if "error" in c else ""
        state = "uses " + sel if sel else ("off (configuration)" if c.get("pinned") else "NO COLLECTOR")
        lines.append(f"{cap}: {state}{err}")
        for mech, m in c.get("mechanisms", {}).items():
            mark = "ok " if m["available"] else "no "
            arrow = "->" if mech == sel else "  "
            lines.append(f"  {arrow} {mark} {cap}={mech:<15} {m['reason']}")
    return "\n".join(lines)
