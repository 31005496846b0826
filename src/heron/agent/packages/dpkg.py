"""Debian packages: /var/lib/dpkg/status (and its update journal), file lists from info/*.list.

Which packages count: those whose files are on disk, by the third word of ``Status:``
(installed, triggers-awaited/-pending, half-configured, unpacked, half-installed). Removed ones
that keep their conffiles (``config-files``) and purged ones (``not-installed``) do not.

Trust: dpkg replaces the status file by rename and keeps in-flight changes in updates/NNNN
(applied here as dpkg-query applies them). A read is an *error* (the last good inventory stays)
when the text is not what dpkg writes (a line that is neither a field nor a continuation, a
stanza without Package/Status/Version, no final newline: truncated) or when packages vanish
from it while dpkg still keeps their file lists (truncated at a stanza boundary). It is
*unsettled* while the journal holds entries or a package is half-installed, half-configured or
unpacked (an upgrade in progress).

Ownership: each package's info/NAME.list (NAME:ARCH.list for Multi-Arch: same), without
directories (an entry followed by one below it) and without documentation paths, which are
never executed or mapped. Distroless images have no status file but status.d/NAME stanzas and
status.d/NAME.md5sums file lists: read too.

Names: ``Package.name`` is the plain package name (advisories use it); ``qualified_name`` gives
the name as ``dpkg-query -W -f '${binary:Package}'`` prints it (NAME:ARCH for Multi-Arch: same
and foreign-architecture packages).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from heron.agent.packages import DbRead, PathIndex, ScopeEnv, purl
from heron.agent.packages.rootfs import RootFS
from heron.schema.events import Package

STATUS = "/var/lib/dpkg/status"
UPDATES = "/var/lib/dpkg/updates"
INFO = "/var/lib/dpkg/info"
STATUS_D = "/var/lib/dpkg/status.d"
MAX_STATUS_BYTES = 256 << 20
MAX_LIST_BYTES = 32 << 20
# All file lists of one database together (a real Debian host: ~10 MiB). Past it, ownership stops
# there: a hostile container cannot make the agent index gigabytes of paths.
MAX_TOTAL_LIST_BYTES = 512 << 20
MAX_JOURNAL_ENTRIES = 10_000

ON_DISK = frozenset({"installed", "triggers-awaited", "triggers-pending", "half-configured", "unpacked",
                     "half-installed"})
TRANSIENT = frozenset({"half-configured", "unpacked", "half-installed"})
# Never executed nor mapped: left out of the ownership index to keep it small.
_UNMAPPED_PREFIXES = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/lintian/",
                      "/usr/share/doc-base/", "/usr/include/")
_FIELD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*:")
_SOURCE = re.compile(r"(?P<name>[^\s(]+)(?:\s*\((?P<version>[^)\s]+)\))?\s*")


class Corrupt(ValueError):
    """The text is not a dpkg database as dpkg writes it."""


@dataclass(frozen=True)
class DpkgEntry:
    name: str
    version: str
    arch: str
    status: str  # third word of Status: installed, half-installed...
    multi_arch: str = ""
    source: str = ""
    source_version: str = ""

    def qualified_name(self, native_arch: str) -> str:
        """The name as dpkg-query's ${binary:Package} prints it."""
        if self.arch in ("", "all") or (self.multi_arch != "same" and self.arch == native_arch):
            return self.name
        return f"{self.name}:{self.arch}"


def parse_stanzas(text: str, where: str = "status") -> list[dict[str, str]]:
    """Stanzas of a deb822 file as {field: first-line value}; continuation lines are skipped.
    Raises Corrupt on text dpkg would not write."""
    if text and not text.endswith("\n"):
        raise Corrupt(f"{where}: does not end with a newline (truncated?)")
    if "\0" in text:
        raise Corrupt(f"{where}: contains NUL bytes")
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            if cur:
                stanzas.append(cur)
                cur = {}
            continue
        if line[0] in " \t":
            if not cur:
                raise Corrupt(f"{where}: line {lineno}: continuation without a field")
            continue
        m = _FIELD.match(line)
        if m is None:
            raise Corrupt(f"{where}: line {lineno}: not a field")
        name = line[: m.end() - 1]
        if name in cur:
            raise Corrupt(f"{where}: line {lineno}: a second {name} field in one stanza")
        cur[name] = line[m.end():].strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def entry_of(st: dict[str, str], where: str, need_status: bool = True) -> DpkgEntry:
    name = st.get("Package", "")
    if not name:
        raise Corrupt(f"{where}: a stanza has no Package field")
    words = st.get("Status", "").split()
    if len(words) != 3:
        if need_status:
            raise Corrupt(f"{where}: {name}: bad Status {st.get('Status', '')!r}")
        words = ["install", "ok", "installed"]  # status.d stanzas (distroless) carry no Status
    version = st.get("Version", "")
    if words[2] in ON_DISK and not version:
        raise Corrupt(f"{where}: {name}: installed without a Version")
    src_name, src_version = name, version
    if st.get("Source"):
        m = _SOURCE.fullmatch(st["Source"])
        if m is None:
            raise Corrupt(f"{where}: {name}: bad Source {st['Source']!r}")
        src_name, src_version = m.group("name"), m.group("version") or version
    return DpkgEntry(name=name, version=version, arch=st.get("Architecture", ""), status=words[2],
                     multi_arch=st.get("Multi-Arch", ""), source=src_name, source_version=src_version)


def parse_status(text: str, where: str = "status") -> list[DpkgEntry]:
    return [entry_of(st, where) for st in parse_stanzas(text, where)]


def native_arch(entries: list[DpkgEntry]) -> str:
    """dpkg is always of the native architecture; else the most common one that is not "all"."""
    for e in entries:
        if e.name == "dpkg" and e.arch not in ("", "all"):
            return e.arch
    counts: dict[str, int] = {}
    for e in entries:
        if e.arch not in ("", "all"):
            counts[e.arch] = counts.get(e.arch, 0) + 1
    return max(counts, key=lambda a: counts[a]) if counts else ""


def list_names(e: DpkgEntry) -> list[str]:
    """info/ file names dpkg uses for the package's file list, most likely first."""
    plain, qualified = f"{e.name}.list", f"{e.name}:{e.arch}.list"
    return [qualified, plain] if e.multi_arch == "same" else [plain, qualified]


def file_paths(text: str) -> list[str]:
    """Files of a .list (directories left out: an entry followed by one below it)."""
    lines = [ln for ln in text.split("\n") if ln.startswith("/") and ln != "/."]
    out: list[str] = []
    for i, path in enumerate(lines):
        if i + 1 < len(lines) and lines[i + 1].startswith(path.rstrip("/") + "/"):
            continue
        if path.startswith(_UNMAPPED_PREFIXES):
            continue
        out.append(path)
    return out


class DpkgReader:
    manager = "dpkg"
    key = f"dpkg:{STATUS}"

    def __init__(self, status: str = STATUS, info: str = INFO, updates: str = UPDATES,
                 status_d: str = STATUS_D) -> None:
        self.status, self.info, self.updates, self.status_d = status, info, updates, status_d
        self.key = f"dpkg:{status}"
        self.last_native_arch = ""
        self._listed: set[tuple[str, str]] = set()  # every (name, arch) of the last read, any status
        self.entries: list[DpkgEntry] = []  # the packages of the last read, in Package order
        self._list_bytes = 0

    def watch(self) -> list[str]:
        return [self.status, self.updates, self.status_d]

    # -- reading ---------------------------------------------------------------------------
    def _journal(self, fs: RootFS) -> list[DpkgEntry]:
        try:
            names = sorted((n for n in fs.listdir(self.updates) if n.isdigit()), key=int)
        except OSError:
            return []
        out: list[DpkgEntry] = []
        for n in names[:MAX_JOURNAL_ENTRIES]:
            where = f"{self.updates}/{n}"
            try:
                text = fs.read_text(where, max_bytes=1 << 20)
            except FileNotFoundError:
                continue  # dpkg folded it into status meanwhile
            out.extend(parse_status(text, where))
        return out

    def _entries(self, env: ScopeEnv) -> tuple[list[DpkgEntry], bool, bool]:
        """(entries, from status.d, journal pending); raises FileNotFoundError when neither exists."""
        fs = env.fs
        try:
            text = fs.read_text(self.status, max_bytes=MAX_STATUS_BYTES)
        except FileNotFoundError:
            return self._status_d(fs), True, False
        entries = parse_status(text, self.status)
        journal = self._journal(fs)
        if journal:
            by_id = {(e.name, e.arch): e for e in entries}
            for j in journal:
                by_id[(j.name, j.arch)] = j
            entries = list(by_id.values())
        return entries, False, bool(journal)

    def _status_d(self, fs: RootFS) -> list[DpkgEntry]:
        names = fs.listdir(self.status_d)  # FileNotFoundError: no dpkg database at all
        out: list[DpkgEntry] = []
        for n in sorted(names):
            if n.endswith(".md5sums") or n.startswith("."):
                continue
            where = f"{self.status_d}/{n}"
            text = fs.read_text(where, max_bytes=1 << 20)
            out.extend(entry_of(st, where, need_status=False) for st in parse_stanzas(text, where))
        return out

    def read(self, env: ScopeEnv) -> DbRead:
        try:
            entries, distroless, journal = self._entries(env)
        except FileNotFoundError:
            return DbRead(absent=True)
        except Corrupt as e:
            return DbRead(error=f"dpkg: {e}")
        except OSError as e:
            return DbRead(error=f"dpkg: {e.filename or self.status}: {e.strerror or e}")
        self._listed = {(e.name, e.arch) for e in entries}
        entries = [e for e in entries if e.status in ON_DISK]
        entries.sort(key=lambda e: (e.name, e.arch))
        self.last_native_arch = native_arch(entries)
        self.entries = entries
        o = env.os
        packages = [
            Package(ecosystem=o.ecosystem or "Debian", name=e.name, version=e.version,
                    purl=purl("deb", o.namespace or "debian", e.name, e.version,
                              {"arch": e.arch, "distro": o.purl_distro}),
                    manager="dpkg", arch=e.arch, source_name=e.source, source_version=e.source_version,
                    distro=o.distro)
            for e in entries
        ]
        self._list_bytes = 0
        owners = PathIndex(self._owned_paths(env, entries, distroless))
        if self._list_bytes > MAX_TOTAL_LIST_BYTES:
            return DbRead(packages=packages, owners=owners,
                          error=f"dpkg: file lists larger than {MAX_TOTAL_LIST_BYTES >> 20} MiB: ownership incomplete")
        transient = [e.name for e in entries if e.status in TRANSIENT]
        unsettled = ""
        if journal:
            unsettled = "dpkg: a transaction is in progress (update journal not empty)"
        elif transient:
            unsettled = f"dpkg: {len(transient)} packages half installed ({', '.join(transient[:5])})"
        return DbRead(packages=packages, owners=owners, unsettled=unsettled)

    def _owned_paths(self, env: ScopeEnv, entries: list[DpkgEntry], distroless: bool) -> Iterator[tuple[str, int]]:
        norm = env.norm
        for i, e in enumerate(entries):
            if self._list_bytes > MAX_TOTAL_LIST_BYTES:
                return
            if distroless:
                try:
                    text = env.fs.read_text(f"{self.status_d}/{e.name}.md5sums", max_bytes=MAX_LIST_BYTES)
                except OSError:
                    continue
                self._list_bytes += len(text)
                for line in text.split("\n"):
                    _, _, rel = line.partition("  ")
                    if rel:
                        yield norm("/" + rel.lstrip("/")), i
                continue
            for name in list_names(e):
                try:
                    text = env.fs.read_text(f"{self.info}/{name}", max_bytes=MAX_LIST_BYTES)
                except OSError:
                    continue
                self._list_bytes += len(text)
                for path in file_paths(text):
                    yield norm(path), i
                break

    def confirm_removed(self, env: ScopeEnv, names: set[tuple[str, str]]) -> str:
        """dpkg deletes a package's file list when it removes the package: a package gone from
        the status file whose list is still there means the status file was cut short."""
        kept = []
        for name, arch in sorted(names - self._listed):  # removed but still listed (config-files): fine
            probe = DpkgEntry(name=name, version="", arch=arch, status="", multi_arch="same")
            if any(env.fs.is_file(f"{self.info}/{n}") for n in list_names(probe)):
                kept.append(name)
        if kept:
            return (f"dpkg: {len(kept)} packages missing from {self.status} still have file lists "
                    f"({', '.join(kept[:5])}): truncated status file?")
        return ""


def qualified_names(reader: DpkgReader) -> list[tuple[str, str]]:
    """(name as dpkg-query's ${binary:Package} prints it, version) of every package of the
    reader's last read: to compare an inventory with dpkg-query."""
    return sorted((e.qualified_name(reader.last_native_arch), e.version) for e in reader.entries)
