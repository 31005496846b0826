"""Which paths file integrity monitoring watches, and under which rule.

A policy is a list of rules, one per config watch (``FileWatch``): the user's watches first, then
the built-in default policy (``default_policy.DEFAULT_WATCHES``) unless ``file.default_policy`` is
off. A watch path is split into a literal ``root`` (no glob characters) and an optional ``glob``
below it, matched component by component (``*`` never crosses a '/'): ``/home/*/.ssh`` is root
``/home`` and glob ``*/.ssh``.

What a rule covers, with ``rel`` the path below its root:
- no glob: the root itself, and everything below it (recursive) or its direct entries only;
- a glob of N components: paths whose first N components match it, and below them (recursive) or
  their direct entries only. ``/etc/cron*`` (recursive) covers /etc/cron.d and /etc/cron.d/job.
- ``actions``: an empty list in the config means every change action. ``read`` (opening the file)
  is never implied: a rule asks for it, and such a rule only decides which reads are reported
  (``read_rules``/``match_read``/``read_paths``), never how changes are hashed or scanned.
- ``exclude``: shell globs on the full path where ``*`` does cross '/'; a pattern without '/' is
  matched against the last component (``*.swp``, ``known_hosts``); a pattern that matches a
  directory also excludes everything below it.

``match`` picks, among the rules that cover the path, accept the action and do not exclude it, the
one with the longest root; at an equal root a rule with a glob wins over one without, then the
earlier rule (user watches come before the defaults). An exclude in one rule therefore never hides
a path another rule covers: a custom watch cannot blind the default policy by accident.

Rules are indexed by root and ``match`` walks the path's ancestors (one dict lookup each), so the
per-event cost is the path's depth plus the few rules rooted on it, not the number of rules.
"""

from __future__ import annotations

import fnmatch
import glob as globmod
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from heron.agent.config import FileConfig, FileWatch
from heron.agent.fim.paths import config_path, is_below

ALL_ACTIONS = frozenset({"create", "modify", "delete", "rename", "attrib"})
READ = "read"  # an open of a sensitive file (fanotify only): credential theft leaves no change
KNOWN_ACTIONS = ALL_ACTIONS | {READ}
_GLOB_CHARS = frozenset("*?[")


def _component_regex(pattern: str) -> str:
    """Regex source for one glob component: like fnmatch, but '*' and '?' never match '/'."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1 if i < n and pattern[i] == "!" else i
            j = pattern.find("]", j + 1 if j < n and pattern[j] == "]" else j)  # a leading ']' is literal
            if j < 0:
                out.append(re.escape(c))
                continue
            body, i = pattern[i:j], j + 1
            negate = body.startswith("!")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("[", "\\[").replace("^", "\\^")
            out.append(("[^" if negate else "[") + body + "]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _bytes_regex(source: str) -> re.Pattern[bytes]:
    return re.compile(source.encode("utf-8", "surrogateescape"), re.DOTALL)


def _compile_excludes(patterns: Iterable[str]) -> re.Pattern[bytes] | None:
    alternatives: list[str] = []
    for p in patterns:
        if "/" not in p:
            p = "*/" + p
        p = p.rstrip("/") or "/"
        alternatives += [fnmatch.translate(p), fnmatch.translate(p + "/*")]
    if not alternatives:
        return None
    return re.compile("|".join(f"(?:{a})" for a in alternatives).encode("utf-8", "surrogateescape"))


def split_watch_path(path: str) -> tuple[bytes, str | None]:
    """("/home/*/.ssh") -> (b"/home", "*/.ssh"): the literal root and the glob below it (or None)."""
    raw = config_path(path)
    parts = raw.split(b"/")[1:] if raw != b"/" else []
    for i, part in enumerate(parts):
        if any(c in _GLOB_CHARS for c in part.decode("utf-8", "surrogateescape")):
            root = b"/" + b"/".join(parts[:i])
            return root, b"/".join(parts[i:]).decode("utf-8", "surrogateescape")
    return raw, None


@dataclass(frozen=True)
class Rule:
    name: str
    root: bytes  # absolute, normalised, no glob characters
    recursive: bool
    glob: str | None  # below root, '/'-separated components
    actions: frozenset[str]
    exclude: tuple[str, ...]
    hash: bool
    hash_max_bytes: int
    _glob_parts: tuple[re.Pattern[bytes], ...] = field(init=False, repr=False, compare=False)
    _glob_re: re.Pattern[bytes] | None = field(init=False, repr=False, compare=False)
    _exclude_re: re.Pattern[bytes] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sources = [_component_regex(p) for p in self.glob.split("/")] if self.glob else []
        object.__setattr__(self, "_glob_parts", tuple(_bytes_regex(s + r"\Z") for s in sources))
        object.__setattr__(self, "_glob_re", _bytes_regex(self.glob_source()) if sources else None)
        object.__setattr__(self, "_exclude_re", _compile_excludes(self.exclude))

    def glob_source(self) -> str:
        """Regex source matching the paths below root this glob rule covers (excludes aside)."""
        assert self.glob is not None
        body = "/".join(_component_regex(p) for p in self.glob.split("/"))
        return body + ("(?:/.*)?" if self.recursive else "(?:/[^/]*)?") + r"\Z"

    @classmethod
    def from_watch(cls, watch: FileWatch) -> Rule:
        if not watch.path.startswith("/"):
            raise ValueError(f"file watch path {watch.path!r} must be absolute")
        root, glob = split_watch_path(watch.path)
        unknown = set(watch.actions) - KNOWN_ACTIONS
        if unknown:
            raise ValueError(f"file watch {watch.path!r}: unknown actions {', '.join(sorted(unknown))}")
        return cls(name=watch.name or watch.path, root=root, recursive=watch.recursive, glob=glob,
                   actions=frozenset(watch.actions) or ALL_ACTIONS, exclude=tuple(watch.exclude),
                   hash=watch.hash, hash_max_bytes=watch.hash_max_bytes)

    def excluded(self, path: bytes) -> bool:
        return self._exclude_re is not None and self._exclude_re.match(path) is not None

    def covers_rel(self, rel: bytes) -> bool:
        """Does this rule cover root/rel (rel b"" is the root itself)? Excludes not applied."""
        if self._glob_re is None:
            return not rel or self.recursive or b"/" not in rel
        return self._glob_re.match(rel) is not None

    def may_cover_below(self, rel: bytes) -> bool:
        """Could an entry below the directory root/rel be covered? Excludes not applied."""
        globs = self._glob_parts
        if not globs:
            return not rel or self.recursive
        parts = rel.split(b"/") if rel else []
        if len(parts) > len(globs) and not self.recursive:
            return False
        return all(g.match(p) for g, p in zip(globs, parts, strict=False))


def _rel(path: bytes, root: bytes) -> bytes:
    if path == root:
        return b""
    return path[1:] if root == b"/" else path[len(root) + 1:]


class Policy:
    def __init__(self, rules: Iterable[Rule]) -> None:
        given = list(rules)
        # Reads are matched apart: a read-only rule must not become the "covering" rule of a path
        # whose changes another rule hashes and scans.
        self.read_rules: list[Rule] = [r for r in given if READ in r.actions]
        self.rules: list[Rule] = [r for r in given if r.actions - {READ}]
        by_root: dict[bytes, list[Rule]] = {}
        for r in self.rules:
            by_root.setdefault(r.root, []).append(r)
        # At an equal root a glob rule is the more specific one (sorted() is stable: config order next).
        self._by_root = {root: sorted(rs, key=lambda r: r.glob is None) for root, rs in by_root.items()}
        # One regex per root for all its glob rules: a path none of them covers costs one match, not
        # one per rule (/home has a dozen: keys, profiles, units... and most paths there are none).
        self._glob_filter: dict[bytes, re.Pattern[bytes]] = {}
        for root, rs in by_root.items():
            sources = [r.glob_source() for r in rs if r.glob is not None]
            if sources:
                self._glob_filter[root] = _bytes_regex("|".join(f"(?:{src})" for src in sources))
        self._root_ancestors: set[bytes] = set()
        for root in by_root:
            p = root
            while p != b"/":
                i = p.rfind(b"/")
                p = p[:i] if i > 0 else b"/"
                self._root_ancestors.add(p)

    @staticmethod
    def from_config(cfg: FileConfig) -> Policy:
        from heron.agent.fim.default_policy import DEFAULT_WATCHES

        watches = list(cfg.watches) + (DEFAULT_WATCHES if cfg.default_policy else [])
        return Policy(Rule.from_watch(w) for w in watches)

    def match(self, path: bytes, action: str | None = None) -> Rule | None:
        """The most specific rule covering ``path`` for ``action`` (None: any action), or None."""
        if not path.startswith(b"/"):
            return None
        by_root = self._by_root
        p = path
        while True:
            rules = by_root.get(p)
            if rules is not None:
                rel = _rel(path, p)
                globbed = self._glob_filter.get(p)
                skip_globs = globbed is not None and globbed.match(rel) is None
                for r in rules:
                    if skip_globs and r.glob is not None:
                        continue
                    if (action is None or action in r.actions) and r.covers_rel(rel) and not r.excluded(path):
                        return r
            if p == b"/":
                return None
            i = p.rfind(b"/")
            p = p[:i] if i > 0 else b"/"

    def match_read(self, path: bytes) -> Rule | None:
        """The first rule asking for reads of ``path`` (few rules: a linear walk)."""
        for r in self.read_rules:
            if (path == r.root or path.startswith(r.root.rstrip(b"/") + b"/")) \
                    and r.covers_rel(_rel(path, r.root)) and not r.excluded(path):
                return r
        return None

    def read_paths(self) -> list[bytes]:
        """The existing regular files whose reads are wanted: each gets its own mark (a directory
        mark would report every open in /etc). Files created later are marked at the next start."""
        out: dict[bytes, None] = {}
        for r in self.read_rules:
            pattern = r.root if r.glob is None else r.root.rstrip(b"/") + b"/" + r.glob.encode()
            candidates = globmod.glob(pattern) if r.glob is not None else [r.root]
            for c in candidates:
                try:
                    st = os.lstat(c)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and self.match_read(c) is not None:
                    out[c] = None
        return list(out)

    def covers_dir(self, path: bytes) -> bool:
        """Should the directory ``path`` be watched (and a scan descend into it): can an entry below
        it match a rule, or does it lead to a rule's root?"""
        if path in self._root_ancestors:
            return True
        if not path.startswith(b"/"):
            return False
        p = path
        while True:
            rules = self._by_root.get(p)
            if rules is not None:
                rel = _rel(path, p)
                for r in rules:
                    if r.may_cover_below(rel) and not r.excluded(path):
                        return True
            if p == b"/":
                return False
            i = p.rfind(b"/")
            p = p[:i] if i > 0 else b"/"

    def roots(self) -> list[tuple[bytes, bool]]:
        """(path, recursive) to mark, shortest first. recursive means "descend into subdirectories for
        which covers_dir() is true" (glob rules are recursive in that sense: their root is where the
        glob is matched). A root inside a recursive one is left out: the walk below the outer root
        reaches it, as covers_dir() is true on the way to every root. A root may be a file (mark it,
        or rather its directory to see it re-created) or missing (the caller skips it)."""
        flags: dict[bytes, bool] = {}
        for r in self.rules:
            flags[r.root] = flags.get(r.root, False) or r.recursive or r.glob is not None
        out: list[tuple[bytes, bool]] = []
        for root, recursive in sorted(flags.items(), key=lambda kv: (len(kv[0]), kv[0])):
            if not any(rec and is_below(root, outer) for outer, rec in out):
                out.append((root, recursive))
        return out
