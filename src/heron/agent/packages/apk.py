"""Alpine (and Wolfi/Chainguard) packages from /lib/apk/db/installed.

Stanzas of ``X:value`` lines separated by blank lines: P name, V version, A arch, o origin (the
source package advisories are filed under; it shares the version), F a directory and R a file
in the last F (paths relative to the root). apk replaces the file by rename; a read is an error
(the last good inventory stays) when a line is not ``X:value``, a stanza lacks P or V, or the
text does not end with a newline (truncated).
"""

from __future__ import annotations

from heron.agent.packages import DbRead, PathIndex, ScopeEnv, purl
from heron.schema.events import Package

INSTALLED = "/lib/apk/db/installed"
MAX_BYTES = 256 << 20


class Corrupt(ValueError):
    pass


def parse_installed(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """[(fields, files)] per package; raises Corrupt."""
    if text and not text.endswith("\n"):
        raise Corrupt("does not end with a newline (truncated?)")
    out: list[tuple[dict[str, str], list[str]]] = []
    fields: dict[str, str] = {}
    files: list[str] = []
    directory = ""

    def close() -> None:
        if fields or files:
            if not fields.get("P") or not fields.get("V"):
                raise Corrupt(f"a package stanza without P: or V: (near {fields.get('P', '?')!r})")
            out.append((fields, files))

    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            close()
            fields, files, directory = {}, [], ""
            continue
        if len(line) < 2 or line[1] != ":":
            raise Corrupt(f"line {lineno}: not a KEY:value line")
        key, value = line[0], line[2:]
        if key == "F":
            directory = value.strip("/")
        elif key == "R":
            files.append(f"/{directory}/{value}" if directory else f"/{value}")
        elif key not in fields:
            fields[key] = value
    close()
    return out


class ApkReader:
    manager = "apk"
    key = f"apk:{INSTALLED}"

    def __init__(self, path: str = INSTALLED) -> None:
        self.path = path
        self.key = f"apk:{path}"

    def watch(self) -> list[str]:
        return [self.path]

    def read(self, env: ScopeEnv) -> DbRead:
        try:
            text = env.fs.read_text(self.path, MAX_BYTES)
        except FileNotFoundError:
            return DbRead(absent=True)
        except OSError as e:
            return DbRead(error=f"apk: {self.path}: {e.strerror or e}")
        try:
            stanzas = parse_installed(text)
        except Corrupt as e:
            return DbRead(error=f"apk: {self.path}: {e}")
        o = env.os
        packages: list[Package] = []
        owned: list[tuple[str, int]] = []
        for fields, files in stanzas:
            name, version, arch = fields["P"], fields["V"], fields.get("A", "")
            packages.append(Package(
                ecosystem=o.ecosystem or "Alpine", name=name, version=version,
                purl=purl("apk", o.namespace or "alpine", name, version, {"arch": arch, "distro": o.purl_distro}),
                manager="apk", arch=arch, source_name=fields.get("o", name), source_version=version,
                distro=o.distro))
            owned.extend((env.norm(f), len(packages) - 1) for f in files)
        return DbRead(packages=packages, owners=PathIndex(owned))

    def confirm_removed(self, env: ScopeEnv, names: set[tuple[str, str]]) -> str:
        return ""
