"""Container identity from cgroup paths, and what the host offers in cgroups and runtimes.

``container_of`` takes the text of /proc/PID/cgroup (v1, v2 or hybrid), a single cgroup path, or
the "parent/leaf" pair of cgroup directory names that the eBPF collector sends, and names the
container the process runs in. It is on the hot path, so results are cached by input string.

How a path is read: its components are walked from the leaf towards the root and the first one
that names a container wins, so nested containers (docker-in-docker, a pod inside kind) resolve to
the innermost one and sub-cgroups a container makes for itself (``.../libpod-<id>.scope/container``)
still resolve to it. Runtime helpers that live beside their container (conmon, the lxc monitor) are
not the container: their component is skipped and the walk goes on upwards, so a conmon inside a
docker container belongs to that docker container and a conmon on the host belongs to none.

A process in a Kubernetes pod's cgroup but in no container's (rare: the pod cgroup normally only
holds container cgroups) yields None, since a ContainerRef always has an id.

Nothing at or below a ``user@<uid>.service`` component counts (the walk goes on above it). That is
systemd's per-user manager, and systemd delegates its whole subtree to that user: any user can
``systemd-run --user --scope --unit docker-<64 hex>`` or mkdir there, so a name below it proves
nothing about who made it. Rootless docker and podman live there too and are reported as the host
(None): their containers run as that user, who could fake them just as easily, so a container id
from there would be the user's claim rather than a fact. (The eBPF collector sends only the
"parent/leaf" pair, so it can see the boundary only when it is the leaf's parent.)
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

__all__ = [
    "ContainerRef",
    "cache_clear",
    "cache_info",
    "cgroup_version",
    "container_of",
    "container_of_uncached",
    "container_runtimes_present",
    "runtime_presence",
]

# Inputs longer than this are parsed but not cached, so hostile giant paths cannot grow the cache
# past CACHE_SIZE * CACHE_MAX_INPUT characters (16 MiB). A real /proc/PID/cgroup is well under 4 KiB.
CACHE_SIZE = 2048
CACHE_MAX_INPUT = 8192
# Longer inputs are not cgroup text (13 v1 lines of PATH_MAX each fit well below this).
MAX_INPUT = 1 << 16


@dataclass(frozen=True, slots=True)
class ContainerRef:
    runtime: str  # docker, containerd, cri-o, podman, kubernetes, lxc, systemd-nspawn, unknown
    id: str  # 64 hex digits for OCI runtimes; the container name for lxc and nspawn
    pod_uid: str | None
    path: str  # the cgroup path it was read from


_HEX64 = "[0-9a-f]{64}"

# One component (a cgroup directory name) that names a container: the named group tells the runtime.
_LEAF = re.compile(
    rf"docker-(?P<docker>{_HEX64})\.scope"
    rf"|cri-containerd-(?P<containerd>{_HEX64})\.scope"
    rf"|nerdctl-(?P<nerdctl>{_HEX64})\.scope"
    # cri-o and podman use ".scope" with the systemd cgroup manager and no suffix with cgroupfs.
    rf"|crio-(?P<crio>{_HEX64})(?:\.scope)?"
    rf"|libpod-(?P<libpod>{_HEX64})(?:\.scope)?"
    r"|lxc\.payload\.(?P<lxc>[^/]+)"
    r"|systemd-nspawn@(?P<nspawn>[^/]+)\.service"
    rf"|(?P<bare>{_HEX64})"
)
_GROUP_RUNTIME = {
    "docker": "docker",
    "containerd": "containerd",
    "nerdctl": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
    "lxc": "lxc",
    "nspawn": "systemd-nspawn",
}
# Components of runtime helpers that sit beside a container but are not in it.
_HELPER = re.compile(rf"(?:crio-conmon-|libpod-conmon-){_HEX64}(?:\.scope)?|lxc\.monitor\.[^/]*")

# Pod uid: a UUID (with '_' for '-' under the systemd driver) or, for static pods, 32 hex digits.
_UID = "[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# The systemd-driver slice may carry a prefix ("kubelet-kubepods-besteffort-pod<uid>.slice" in kind).
_POD = re.compile(rf"pod(?P<uid>{_UID})|[a-z-]*-pod(?P<suid>{_UID})\.slice")

# Parents under which a bare 64-hex directory is a container of a known runtime (cgroupfs driver).
_BARE_PARENT_RUNTIME = {"docker": "docker", "k8s.io": "containerd", "default": "containerd", "moby": "docker"}
# A line of /proc/PID/cgroup: "hierarchy-id:controllers:path" (the path itself may contain ':').
_PROC_LINE = re.compile(r"\d+:[^:\n]*:(.*)")
# systemd's per-user manager: the subtree below it is delegated to an unprivileged user.
_USER_MANAGER = re.compile(r"user@\d+\.service")


def _pod_uid(parts: list[str], below: int) -> str | None:
    for i in range(below - 1, -1, -1):
        m = _POD.fullmatch(parts[i])
        if m:
            return (m.group("uid") or m.group("suid")).replace("_", "-")
    return None


def _from_path(path: str) -> ContainerRef | None:
    parts = [p for p in path.split("/") if p]
    # Components from ``trusted`` on are in a user-delegated subtree: names there are not evidence.
    trusted = next((i for i, p in enumerate(parts) if _USER_MANAGER.fullmatch(p)), len(parts))
    for i in range(trusted - 1, -1, -1):
        comp = parts[i]
        if _HELPER.fullmatch(comp):
            continue
        m = _LEAF.fullmatch(comp)
        if m is None:
            # /lxc/<name> (lxc before 4.0, cgroupfs): the name is arbitrary, the parent tells.
            if i > 0 and parts[i - 1] == "lxc":
                return ContainerRef("lxc", comp, None, path)
            continue
        group = m.lastgroup
        if group is None:  # pragma: no cover - every alternative has a named group
            continue
        cid = m.group(group)
        pod = _pod_uid(parts, i)
        if group != "bare":
            return ContainerRef(_GROUP_RUNTIME[group], cid, pod, path)
        parent = parts[i - 1] if i > 0 else ""
        if pod is not None and _POD.fullmatch(parent):
            runtime = "kubernetes"  # cgroupfs driver: the path does not say which runtime
        elif parent in _BARE_PARENT_RUNTIME:
            runtime = _BARE_PARENT_RUNTIME[parent]
        elif i > 1 and parts[i - 2] == "ecs":
            runtime = "docker"  # /ecs/<task>/<id>: the ECS agent drives docker
        else:
            runtime = "unknown"  # a 64-hex cgroup under a custom --cgroup-parent
        return ContainerRef(runtime, cid, pod, path)
    return None


def container_of_uncached(cgroup: str) -> ContainerRef | None:
    """``container_of`` without the cache (for tests and one-off callers)."""
    if not cgroup or len(cgroup) > MAX_INPUT:
        return None
    seen: set[str] = set()
    for line in cgroup.splitlines():
        line = line.strip()
        m = _PROC_LINE.fullmatch(line)
        path = m.group(1) if m else line
        if path in seen or path in ("", "/"):
            continue
        seen.add(path)
        ref = _from_path(path)
        if ref is not None:
            return ref
    return None


_cached = lru_cache(maxsize=CACHE_SIZE)(container_of_uncached)


def container_of(cgroup: str) -> ContainerRef | None:
    """The container a cgroup text or path names, or None for the host. Never raises on str input."""
    if len(cgroup) > CACHE_MAX_INPUT:
        return container_of_uncached(cgroup)
    return _cached(cgroup)


cache_info = _cached.cache_info
cache_clear = _cached.cache_clear


CgroupVersion = Literal["v1", "v2", "hybrid", "none"]


def cgroup_version(root: str = "/sys/fs/cgroup") -> CgroupVersion:
    """v2 when root is a cgroup2 mount, hybrid when v1 controllers sit beside a v2 "unified"
    mount, v1 when only v1 hierarchies exist, none when nothing is mounted at root."""
    # cgroup.controllers exists only at the root of a cgroup2 hierarchy.
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "v2"
    has_v2 = os.path.exists(os.path.join(root, "unified", "cgroup.controllers"))
    try:
        names = os.listdir(root)
    except OSError:
        return "none"
    # v1 hierarchies have a "tasks" file at their root; v2 has none.
    has_v1 = any(os.path.exists(os.path.join(root, n, "tasks")) for n in names if n != "unified")
    if has_v1:
        return "hybrid" if has_v2 else "v1"
    return "v2" if has_v2 else "none"


# Where each runtime's API socket and binaries usually are.
_RUNTIMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "docker": (("/run/docker.sock", "/var/run/docker.sock"), ("dockerd",)),
    "containerd": (("/run/containerd/containerd.sock",), ("containerd",)),
    "cri-o": (("/run/crio/crio.sock", "/var/run/crio/crio.sock"), ("crio",)),
    "podman": (("/run/podman/podman.sock",), ("podman",)),
}


def runtime_presence() -> dict[str, dict[str, str | None]]:
    """For each known runtime: the API socket found (a sign it runs) and the binary found."""
    out: dict[str, dict[str, str | None]] = {}
    for name, (sockets, binaries) in _RUNTIMES.items():
        sock = next((s for s in sockets if _is_socket(s)), None)
        binary = next((b for b in (shutil.which(x) for x in binaries) if b), None)
        out[name] = {"socket": sock, "binary": binary}
    return out


def container_runtimes_present() -> list[str]:
    """Runtimes whose socket or binary is on this host, e.g. ["docker", "containerd"]."""
    return [name for name, p in runtime_presence().items() if p["socket"] or p["binary"]]


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
