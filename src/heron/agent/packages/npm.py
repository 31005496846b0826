"""npm packages: package.json files in the node_modules trees of running Node.js applications.

Where: for each running ``node``/``nodejs`` process, its working directory and the directory of
its script (the first argument that is not an option), and every parent of those up to the
scope's root, are searched for a ``node_modules`` directory (Node's own module resolution); also
any node_modules a process maps a file from (native addons), and the global trees
/usr/lib/node_modules and /usr/local/lib/node_modules.

What: every ``name/package.json`` and ``@scope/name/package.json`` below node_modules, nested
node_modules included, and pnpm's ``.pnpm/*/node_modules`` store. Symlinks are not followed
(no loops; pnpm's top-level links point into the store, which is walked). Bounds: 16 levels,
20,000 packages, 1 MiB per package.json.

Ownership: a file belongs to the package whose directory is the nearest ancestor. Only native
addons (``.node`` files, shared libraries) can be seen mapped; JavaScript is read, not mapped,
so a pure-JavaScript package is never reported active (documented limit). Change detection
watches the tree's directory and npm's ``node_modules/.package-lock.json``, which npm rewrites
on every install.
"""

from __future__ import annotations

import json
import posixpath

from heron.agent.packages import DbRead, ScopeEnv, purl
from heron.agent.packages.rootfs import RootFS
from heron.schema.events import Package

MAX_DEPTH = 16
MAX_PACKAGES = 20_000
MAX_PACKAGE_JSON = 1 << 20
MAX_PARENT_LEVELS = 32
GLOBAL_TREES = ("/usr/lib/node_modules", "/usr/local/lib/node_modules")
_NODE_EXES = {"node", "nodejs"}


def is_node(exe: str) -> bool:
    return posixpath.basename(exe) in _NODE_EXES


def _script_dir(argv: list[str], cwd: str) -> str:
    for arg in argv[1:]:
        if arg.startswith("-"):
            continue
        path = arg if arg.startswith("/") else posixpath.join(cwd or "/", arg)
        return posixpath.dirname(posixpath.normpath(path))
    return ""


def process_trees(fs: RootFS, argv: list[str], cwd: str, mapped: list[str]) -> list[str]:
    """node_modules directories a running Node.js process resolves modules from, resolved."""
    found: list[str] = []
    for start in (cwd, _script_dir(argv, cwd)):
        d = start
        for _ in range(MAX_PARENT_LEVELS):
            if not d or not d.startswith("/"):
                break
            if posixpath.basename(d) != "node_modules":
                candidate = posixpath.join(d, "node_modules")
                if fs.is_dir(candidate):
                    found.append(candidate)
            if d == "/":
                break
            d = posixpath.dirname(d)
    for path in mapped:
        i = path.find("/node_modules/")
        if i >= 0:
            found.append(path[: i + len("/node_modules")])
    return fs.resolve_all(found)


def global_trees(fs: RootFS) -> list[str]:
    return [d for d in GLOBAL_TREES if fs.is_dir(d)]


class PrefixIndex:
    """A file belongs to the package whose directory is its nearest ancestor."""

    def __init__(self, dirs: dict[str, int]) -> None:
        self.dirs = dirs

    def owner(self, path: str) -> int | None:
        if "/node_modules/" not in path:
            return None
        d = posixpath.dirname(path)
        while "/node_modules/" in d + "/":
            hit = self.dirs.get(d)
            if hit is not None:
                return hit
            d = posixpath.dirname(d)
        return None


def _package_json(fs: RootFS, pkg_dir: str) -> tuple[str, str] | None:
    try:
        doc = json.loads(fs.read(f"{pkg_dir}/package.json", MAX_PACKAGE_JSON))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return None
    return name, version


def npm_purl(name: str, version: str) -> str:
    scope, _, bare = name.rpartition("/")
    return purl("npm", scope, bare, version)


class NpmReader:
    manager = "npm"

    def __init__(self, node_modules: str) -> None:
        self.tree = node_modules.rstrip("/")
        self.key = f"npm:{self.tree}"

    def watch(self) -> list[str]:
        return [self.tree, f"{self.tree}/.package-lock.json"]

    def read(self, env: ScopeEnv) -> DbRead:
        fs = env.fs
        if not fs.is_dir(self.tree):
            return DbRead(absent=True)
        packages: list[Package] = []
        dirs: dict[str, int] = {}
        truncated = False
        stack: list[tuple[str, int]] = [(self.tree, 0)]
        while stack:
            tree, depth = stack.pop()
            for pkg_dir in self._package_dirs(fs, tree):
                if len(packages) >= MAX_PACKAGES:
                    truncated = True
                    break
                if env.os_owned(f"{pkg_dir}/package.json"):
                    continue
                found = _package_json(fs, pkg_dir)
                if found is not None:
                    name, version = found
                    packages.append(Package(ecosystem="npm", name=name, version=version,
                                            purl=npm_purl(name, version), manager="npm", location=pkg_dir))
                    dirs[pkg_dir] = len(packages) - 1
                if depth + 1 < MAX_DEPTH and fs.is_dir(f"{pkg_dir}/node_modules"):
                    stack.append((f"{pkg_dir}/node_modules", depth + 1))
        error = f"npm: {self.tree}: more than {MAX_PACKAGES} packages, the rest skipped" if truncated else ""
        return DbRead(packages=packages, owners=PrefixIndex(dirs), error=error)

    @staticmethod
    def _package_dirs(fs: RootFS, tree: str) -> list[str]:
        """Package directories directly in one node_modules (scoped ones and the pnpm store too)."""
        out: list[str] = []
        try:
            entries = sorted(fs.scandir(tree))
        except OSError:
            return out
        for name, is_dir, is_link in entries:
            if not is_dir or is_link:
                continue
            path = f"{tree}/{name}"
            if name == ".pnpm":
                try:
                    store = sorted(fs.scandir(path))
                except OSError:
                    continue
                out += [f"{path}/{n}/node_modules/{pkg}" for n, d, lnk in store if d and not lnk
                        for pkg in NpmReader._store_entry(fs, f"{path}/{n}/node_modules")]
            elif name.startswith("@"):
                try:
                    scoped = sorted(fs.scandir(path))
                except OSError:
                    continue
                out += [f"{path}/{n}" for n, d, lnk in scoped if d and not lnk]
            elif not name.startswith("."):
                out.append(path)
        return out

    @staticmethod
    def _store_entry(fs: RootFS, tree: str) -> list[str]:
        """Names of the real (not linked) packages in one pnpm store entry's node_modules."""
        out: list[str] = []
        try:
            entries = sorted(fs.scandir(tree))
        except OSError:
            return out
        for name, is_dir, is_link in entries:
            if not is_dir or is_link:
                continue
            if name.startswith("@"):
                try:
                    out += [f"{name}/{n}" for n, d, lnk in sorted(fs.scandir(f"{tree}/{name}")) if d and not lnk]
                except OSError:
                    continue
            else:
                out.append(name)
        return out

    def confirm_removed(self, env: ScopeEnv, names: set[tuple[str, str]]) -> str:
        return ""
