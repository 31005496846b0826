"""Identity and facts of the host the agent runs on, read once at start-up."""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from heron.schema.events import HostInfo


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _distro(os_release: str = "/etc/os-release") -> str:
    fields: dict[str, str] = {}
    for line in _read(os_release).splitlines():
        k, sep, v = line.partition("=")
        if sep:
            fields[k] = v.strip().strip('"')
    name = fields.get("ID", "linux")
    version = fields.get("VERSION_ID", "")
    return f"{name}:{version}" if version else name


def _boot_time_ns() -> int:
    """Wall-clock time of boot, ns: converts ticks/monotonic-boot times to wall time."""
    for line in _read("/proc/stat").splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) * 1_000_000_000
    return 0


@dataclass(frozen=True)
class Host:
    info: HostInfo
    clk_tck: int = 100
    boot_time_ns: int = 0
    proc_root: str = "/proc"
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def boot_id(self) -> str:
        return self.info.boot_id

    def ticks_to_wall_ns(self, ticks: int) -> int:
        return self.boot_time_ns + ticks * 1_000_000_000 // self.clk_tck


_HOSTNAME_BAD = re.compile(r"[^A-Za-z0-9._-]")


def clean_hostname(name: str) -> str:
    """The host name as the platform accepts it (docs/wire.md): Linux lets root set any bytes, the
    platform takes letters, digits, '.', '_' and '-' only, so anything else becomes '-'."""
    return _HOSTNAME_BAD.sub("-", name)[:253] or "unknown"


def detect_host(proc_root: str = "/proc") -> Host:
    machine_id = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")
    boot_id = _read(f"{proc_root}/sys/kernel/random/boot_id").replace("-", "")
    info = HostInfo(
        hostname=clean_hostname(socket.gethostname()),
        machine_id=machine_id,
        boot_id=boot_id or "0" * 32,
        kernel=platform.release(),
        distro=_distro(),
        arch=platform.machine(),
    )
    return Host(
        info=info,
        clk_tck=os.sysconf("SC_CLK_TCK"),
        boot_time_ns=_boot_time_ns(),
        proc_root=proc_root,
    )
