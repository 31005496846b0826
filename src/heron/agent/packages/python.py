"""Python distributions: *.dist-info / *.egg-info in site-packages directories.

Where: the scope's own installations (/usr/lib/python3*/site-packages, /usr/lib/python3/
dist-packages, /usr/local/lib/python3*/{site,dist}-packages, lib64 variants) and those of running
Python processes: a virtualenv from argv[0] (a venv's bin/python is a symlink, so /proc/PID/exe
names the base interpreter, but argv[0] -- also the shebang path of an entry-point script --
names the venv; its pyvenv.cfg marks the prefix), the interpreter's own prefix from its exe
(pyenv, /opt builds), and any site-packages a process maps a file from. The environment of a
process (VIRTUAL_ENV) is never read: it holds secrets.

What: Name and Version from METADATA (PKG-INFO for eggs); ``name`` and the purl carry the PEP 503
normalised name. Distributions whose metadata an OS package owns (Debian's python3-*) are left
to the OS inventory: their advisories are the distribution's, and counting them twice would
match upstream advisories against patched builds.

Ownership: RECORD (installed-files.txt for eggs) lists every file, but a process can only be
*seen* using the native ones: extension modules (.so) and executables in bin/ appear in
/proc/PID/maps and /proc/PID/exe, pure .py files are read and closed at import. So only those are
indexed, and a pure-Python distribution is never reported active (documented limit).
"""

from __future__ import annotations

import csv
import io
import posixpath
import re

from heron.agent.packages import DbRead, DictIndex, ScopeEnv, purl
from heron.agent.packages.rootfs import RootFS
from heron.schema.events import Package
from heron.vuln.versions.pep440 import normalize_name  # one PEP 503 rule for inventory and matching

MAX_DISTS = 20_000
MAX_METADATA_BYTES = 4 << 20
MAX_RECORD_BYTES = 16 << 20
_NATIVE = re.compile(r"\.(?:so(?:\.\d+)*|pyd)$")
_PYTHON_EXE = re.compile(r"python\d*(?:\.\d+)*[dmu]?|pypy\d*(?:\.\d+)*")
_PYTHON_DIR = re.compile(r"python3(?:\.\d+)?")
_LIB_DIRS = ("/usr/lib", "/usr/local/lib", "/usr/lib64", "/usr/local/lib64")
_SITE_MARKERS = ("/site-packages/", "/dist-packages/")


def is_python(exe: str) -> bool:
    return _PYTHON_EXE.fullmatch(posixpath.basename(exe)) is not None


def parse_metadata(text: str) -> tuple[str, str]:
    """(Name, Version) from the header block of METADATA / PKG-INFO."""
    name = version = ""
    for line in text.split("\n"):
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "name" and not name:
            name = value.strip()
        elif key == "version" and not version:
            version = value.strip()
    return name, version


def _record_paths(text: str) -> list[str]:
    out: list[str] = []
    try:
        for row in csv.reader(io.StringIO(text)):
            if row and row[0]:
                out.append(row[0])
    except csv.Error:
        pass  # a damaged RECORD costs us ownership only
    return out


def _python_lib_dirs(fs: RootFS, lib: str) -> list[str]:
    try:
        names = fs.listdir(lib)
    except OSError:
        return []
    return [f"{lib}/{n}" for n in sorted(names) if _PYTHON_DIR.fullmatch(n)]


def standard_site_dirs(fs: RootFS) -> list[str]:
    """The scope's system-wide site directories that exist."""
    out: list[str] = []
    for lib in _LIB_DIRS:
        for pydir in _python_lib_dirs(fs, lib):
            for site in ("site-packages", "dist-packages"):
                if fs.is_dir(f"{pydir}/{site}"):
                    out.append(f"{pydir}/{site}")
    return out


def _prefix_site_dirs(fs: RootFS, prefix: str) -> list[str]:
    return [f"{d}/site-packages" for d in _python_lib_dirs(fs, f"{prefix}/lib")
            if fs.is_dir(f"{d}/site-packages")]


def process_site_dirs(fs: RootFS, exe: str, argv0: str, cwd: str, mapped: list[str]) -> list[str]:
    """Site directories a running Python process uses (see the module docstring), resolved."""
    found: list[str] = []
    if "/" in argv0:
        path = argv0 if argv0.startswith("/") else posixpath.join(cwd or "/", argv0)
        prefix = posixpath.dirname(posixpath.dirname(posixpath.normpath(path)))
        if fs.is_file(f"{prefix}/pyvenv.cfg"):
            found += _prefix_site_dirs(fs, prefix)
    if exe.startswith("/") and posixpath.basename(posixpath.dirname(exe)) == "bin":
        found += _prefix_site_dirs(fs, posixpath.dirname(posixpath.dirname(exe)))
    for path in mapped:
        for marker in _SITE_MARKERS:
            i = path.find(marker)
            if i > 0:
                found.append(path[: i + len(marker) - 1])
                break
    return fs.resolve_all(found)


class PythonSiteReader:
    manager = "python"

    def __init__(self, site_dir: str) -> None:
        self.site = site_dir.rstrip("/")
        self.key = f"python:{self.site}"

    def watch(self) -> list[str]:
        return [self.site]

    def read(self, env: ScopeEnv) -> DbRead:
        fs = env.fs
        try:
            names = sorted(fs.listdir(self.site))
        except FileNotFoundError:
            return DbRead(absent=True)
        except OSError as e:
            return DbRead(error=f"python: {self.site}: {e.strerror or e}")
        packages: list[Package] = []
        native: dict[str, int] = {}
        for entry in names[:MAX_DISTS]:
            found = self._dist(env, entry)
            if found is None:
                continue
            pkg, files = found
            packages.append(pkg)
            for f in files:
                native.setdefault(f, len(packages) - 1)
        error = f"python: {self.site}: more than {MAX_DISTS} entries, the rest skipped" \
            if len(names) > MAX_DISTS else ""
        return DbRead(packages=packages, owners=DictIndex(native), error=error)

    def _dist(self, env: ScopeEnv, entry: str) -> tuple[Package, list[str]] | None:
        fs = env.fs
        where = f"{self.site}/{entry}"
        if entry.endswith(".dist-info"):
            meta, record, base = f"{where}/METADATA", f"{where}/RECORD", self.site
        elif entry.endswith(".egg-info"):
            if fs.is_file(where):  # distutils: the egg-info is the PKG-INFO itself
                meta, record, base = where, "", self.site
            else:
                meta, record, base = f"{where}/PKG-INFO", f"{where}/installed-files.txt", where
        else:
            return None
        if env.os_owned(meta):
            return None
        try:
            name, version = parse_metadata(fs.read_text(meta, MAX_METADATA_BYTES))
        except OSError:
            return None
        if not name or not version:
            return None
        norm = normalize_name(name)
        pkg = Package(ecosystem="PyPI", name=norm, version=version, purl=purl("pypi", "", norm, version),
                      manager="python", location=where)
        files: list[str] = []
        if record:
            try:
                text = fs.read_text(record, MAX_RECORD_BYTES)
            except OSError:
                text = ""
            if entry.endswith(".egg-info"):
                rows = [ln.strip() for ln in text.split("\n") if ln.strip()]
            else:
                rows = _record_paths(text)
            for rel in rows:
                path = posixpath.normpath(posixpath.join(base, rel))
                if _NATIVE.search(path) or ("/bin/" in path and not path.endswith((".py", ".pyc"))):
                    files.append(path)
        return pkg, files

    def confirm_removed(self, env: ScopeEnv, names: set[tuple[str, str]]) -> str:
        return ""
