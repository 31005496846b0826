"""Fake scope roots for package tests: an os-release, merged /usr, dpkg/apk databases."""

from __future__ import annotations

import os
from pathlib import Path

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
UBUNTU_2204 = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n'
ROCKY_94 = 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n'
ALPINE = 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\n'


def make_root(root: Path, os_release: str = DEBIAN_12, merged_usr: bool = True) -> Path:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(os_release)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    if merged_usr:
        for top in ("bin", "lib"):
            if not (root / top).exists():
                os.symlink(f"usr/{top}", root / top)
    return root


def stanza(name: str, version: str, arch: str = "amd64", status: str = "install ok installed",
           source: str | None = None, multi_arch: str | None = None) -> str:
    lines = [f"Package: {name}", f"Status: {status}", "Priority: optional", f"Architecture: {arch}"]
    if multi_arch:
        lines.append(f"Multi-Arch: {multi_arch}")
    if source:
        lines.append(f"Source: {source}")
    lines += [f"Version: {version}", "Description: a test package", " with a continuation line", " ."]
    return "\n".join(lines) + "\n"


def write_status(root: Path, stanzas: list[str]) -> Path:
    d = root / "var/lib/dpkg"
    (d / "info").mkdir(parents=True, exist_ok=True)
    (d / "updates").mkdir(exist_ok=True)
    path = d / "status"
    tmp = d / "status-new"
    tmp.write_text("\n".join(stanzas))
    os.replace(tmp, path)  # as dpkg does: a new inode
    return path


def write_list(root: Path, list_name: str, paths: list[str]) -> None:
    d = root / "var/lib/dpkg/info"
    d.mkdir(parents=True, exist_ok=True)
    entries = sorted({os.path.dirname(p) for p in paths} | set(paths))  # a directory before its files
    (d / f"{list_name}.list").write_text("\n".join(["/.", *entries]) + "\n")
