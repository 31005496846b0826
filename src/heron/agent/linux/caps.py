"""The calling process's effective capabilities, from /proc/self/status."""

from __future__ import annotations

# Bit numbers from linux/capability.h for the capabilities collectors depend on.
CAPS = {
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


def effective_mask(status_path: str = "/proc/self/status") -> int:
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def has_cap(name: str) -> bool:
    return bool(effective_mask() >> CAPS[name] & 1)


def effective_caps() -> dict[str, bool]:
    mask = effective_mask()
    return {name: bool(mask >> bit & 1) for name, bit in CAPS.items()}
