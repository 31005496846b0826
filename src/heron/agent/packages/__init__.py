"""Installed packages: readers of package databases, and what they share.

One *scope* is a root file system (the host "/", or a container seen through /proc/PID/root).
Each database in it (dpkg status, rpmdb.sqlite, apk installed, a Python site-packages dir, an
npm node_modules tree) has a *reader*: ``read`` returns the packages and an index from file path
(inside the scope) to the owning package, or says why the database cannot be trusted right now.
``inventory.Scope`` keeps the last good read of each database and turns changes into diffs.

Shared here: the OS identity of a scope (/etc/os-release -> OSV ecosystem and purl qualifiers),
package URLs, the compact path index and merged-/usr path normalisation.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from heron.agent.packages.rootfs import RootFS
from heron.schema.events import Package

__all__ = [
    "DbRead",
    "OsInfo",
    "Owners",
    "PathIndex",
    "Reader",
    "ScopeEnv",
    "os_info",
    "purl",
    "usr_merge_normalizer",
]

# os-release ID -> (OSV ecosystem, purl namespace). Unknown IDs keep their NAME.
_OS = {
    "debian": ("Debian", "debian"),
    "ubuntu": ("Ubuntu", "ubuntu"),
    "alpine": ("Alpine", "alpine"),
    "rocky": ("Rocky Linux", "rocky"),
    "almalinux": ("AlmaLinux", "almalinux"),
    "rhel": ("Red Hat", "redhat"),
    "centos": ("CentOS", "centos"),
    "fedora": ("Fedora", "fedora"),
    "ol": ("Oracle Linux", "oracle"),
    "amzn": ("Amazon Linux", "amazon"),
    "opensuse-leap": ("openSUSE", "opensuse"),
    "opensuse-tumbleweed": ("openSUSE", "opensuse"),
    "sles": ("SUSE", "suse"),
    "wolfi": ("Wolfi", "wolfi"),
    "chainguard": ("Chainguard", "chainguard"),
    "mariner": ("Mariner", "mariner"),
    "azurelinux": ("Azure Linux", "azurelinux"),
    "photon": ("Photon OS", "photon"),
    "openeuler": ("openEuler", "openeuler"),
}
# Ecosystems whose advisories name only the major release ("Rocky Linux:9", not 9.4).
_MAJOR_ONLY = {"rocky", "almalinux", "rhel", "centos", "ol"}
# Rolling distributions: OSV keys their advisories without a release ("Wolfi", "openSUSE:Tumbleweed").
_ROLLING = {"wolfi": "", "chainguard": "", "opensuse-tumbleweed": "Tumbleweed"}


@dataclass(frozen=True)
class OsInfo:
    id: str = ""  # os-release ID: debian, ubuntu, alpine, rocky...
    version_id: str = ""  # os-release VERSION_ID: 12, 22.04, 3.20.3, 9.4
    ecosystem: str = ""  # OSV ecosystem of the OS packages: Debian, Ubuntu, Alpine...
    distro: str = ""  # OSV ecosystem suffix: "12", "22.04", "v3.20", "9"
    namespace: str = ""  # purl namespace: debian, ubuntu, alpine...

    @property
    def label(self) -> str:
        """The scope's distro as the host record names it: "debian:12"."""
        if not self.id:
            return ""
        return f"{self.id}:{self.version_id}" if self.version_id else self.id

    @property
    def purl_distro(self) -> str:
        return f"{self.namespace or self.id}-{self.version_id}" if self.version_id else ""


def _os_release_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key.strip()):
            fields[key.strip()] = value.strip().strip("\"'")
    return fields


def os_info(fs: RootFS) -> OsInfo:
    """The OS of a scope from its /etc/os-release (or /usr/lib/os-release) and /etc/alpine-release."""
    fields: dict[str, str] = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            fields = _os_release_fields(fs.read_text(path, max_bytes=64 << 10))
            break
        except OSError:
            continue
    os_id = fields.get("ID", "").lower()
    version = fields.get("VERSION_ID", "")
    if not os_id:
        try:
            fs.read(("/etc/alpine-release"), max_bytes=256)
            os_id = "alpine"
        except OSError:
            return OsInfo()
    ecosystem, namespace = _OS.get(os_id, (fields.get("NAME", os_id), os_id))
    distro = version
    if os_id == "alpine":
        try:
            release = fs.read_text("/etc/alpine-release", max_bytes=256).strip()
        except OSError:
            release = version
        version = version or release
        m = re.match(r"(\d+)\.(\d+)", release)
        distro = f"v{m.group(1)}.{m.group(2)}" if m else ""
    elif os_id in _MAJOR_ONLY:
        distro = version.split(".", 1)[0]
    elif os_id in _ROLLING:
        distro = _ROLLING[os_id]
    elif os_id == "debian" and not version:
        # testing/sid have no VERSION_ID: the codename ("trixie" keys as Debian:13; "sid" has no
        # advisories of its own and is reported as uncovered by the matcher, never as clean).
        distro = fields.get("VERSION_CODENAME", "").lower()
    elif os_id == "opensuse-leap":
        distro = f"Leap {version}" if version else ""  # OSV: "openSUSE:Leap 15.5"
    elif os_id == "sles":
        # OSV: "SUSE:Linux Enterprise Server 15 SP5" (limit: module ecosystems are not looked up)
        major, _, sp = version.partition(".")
        distro = f"Linux Enterprise Server {major}" + (f" SP{sp}" if sp and sp != "0" else "") if version else ""
    return OsInfo(id=os_id, version_id=version, ecosystem=ecosystem, distro=distro, namespace=namespace)


def purl(kind: str, namespace: str, name: str, version: str, qualifiers: dict[str, str] | None = None) -> str:
    """A package URL (github.com/package-url/purl-spec): components percent-encoded, ':' in
    versions kept (epochs), qualifiers sorted by key, empty ones left out."""
    out = f"pkg:{kind}/"
    if namespace:
        out += quote(namespace, safe="") + "/"
    out += quote(name, safe="")
    if version:
        out += "@" + quote(version, safe=":")
    quals = sorted((k, v) for k, v in (qualifiers or {}).items() if v)
    if quals:
        out += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in quals)
    return out


class Owners(Protocol):
    def owner(self, path: str) -> int | None:
        """Index (into the read's packages) of the package owning ``path``, else None."""
        ...


class PathIndex:
    """Path -> owner number for large file lists (dpkg: ~100k paths), about 12 bytes a path.

    Paths are kept as their 64-bit ``hash()`` (sorted) beside the owner number, not as strings.
    ``hash`` is salted per process, so an index lives only in the process that built it. Two
    different paths with one hash would share an owner: about n/2**64 per lookup, accepted."""

    def __init__(self, pairs: Iterable[tuple[str, int]]) -> None:
        items = sorted({hash(p): o for p, o in pairs}.items())
        self._hashes = array("q", [h for h, _ in items])
        self._owners = array("I", [o for _, o in items])

    def __len__(self) -> int:
        return len(self._hashes)

    def owner(self, path: str) -> int | None:
        h = hash(path)
        i = bisect.bisect_left(self._hashes, h)
        if i < len(self._hashes) and self._hashes[i] == h:
            return self._owners[i]
        return None


class DictIndex:
    """Path -> owner number for small lists (a venv's native files)."""

    def __init__(self, paths: dict[str, int] | None = None) -> None:
        self.paths = paths or {}

    def owner(self, path: str) -> int | None:
        return self.paths.get(path)


@dataclass
class DbRead:
    """One read of one package database."""

    packages: list[Package] = field(default_factory=list)
    owners: Owners | None = None
    error: str = ""  # the read cannot be trusted (corrupt, truncated, unsupported): keep the last good one
    unsettled: str = ""  # readable, but a transaction is in progress: prefer the last good read for a while
    absent: bool = False  # the database does not exist here (no packages, not an error)


Normalizer = Callable[[str], str]


@dataclass
class ScopeEnv:
    """What a reader needs to know about the scope it reads."""

    fs: RootFS
    os: OsInfo
    norm: Normalizer  # maps a path as a package manager lists it to the path the kernel reports
    # True when an OS package owns the path (language readers skip what the OS packaged).
    os_owned: Callable[[str], bool] = lambda _path: False


class Reader(Protocol):
    manager: str  # dpkg, rpm, apk, python, npm
    key: str  # unique within a scope: "dpkg:/var/lib/dpkg/status"

    def watch(self) -> list[str]:
        """Files and directories whose stat (inode, size, mtime, ctime) changes when the database does."""
        ...

    def read(self, env: ScopeEnv) -> DbRead: ...

    def confirm_removed(self, env: ScopeEnv, names: set[tuple[str, str]]) -> str:
        """Why the disappearance of these (name, arch) packages cannot be true (e.g. the package
        manager still keeps their file lists: a truncated database), else ""."""
        ...


_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def usr_merge_normalizer(fs: RootFS) -> Normalizer:
    """Merged /usr (/lib -> usr/lib): package lists name /lib/..., the kernel names the file
    /usr/lib/... ; this rewrites the former to the latter for the directories linked so."""
    aliases: list[tuple[str, str]] = []
    for top in _MERGED:
        target = fs.readlink(f"/{top}")
        if target is not None and target.strip("/") == f"usr/{top}":
            aliases.append((f"/{top}/", f"/usr/{top}/"))
    if not aliases:
        return lambda p: p

    def norm(path: str) -> str:
        for old, new in aliases:
            if path.startswith(old):
                return new + path[len(old):]
        return path

    return norm
