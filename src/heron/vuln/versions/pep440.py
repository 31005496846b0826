"""PEP 440 version ordering (Python packages), written here rather than taken from ``packaging``
(docs/dependencies.md says why).

Accepts what PEP 440 accepts, its normalisations included: case, a leading ``v``, surrounding
whitespace, ``-``/``_``/``.`` separators, spelled-out pre-release names (alpha, beta, c, pre,
preview), implicit numbers (``1.0a`` is ``1.0a0``), ``1.0-1`` for ``1.0.post1``, ``rev``/``r``
for post. Ordering: epoch, release (trailing zeros ignored: 1.0 == 1.0.0), then
``.devN < aN < bN < rcN < (release) < .postN``, a dev release of a pre/post release just before
it, and a local version label (``+ubuntu1``) after the same public version, its segments
compared numerically when both are numbers and numbers after letters.
"""

from __future__ import annotations

import functools
import re

from heron.vuln.versions.errors import InvalidVersion

_VERSION = re.compile(
    r"""
    v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?P<pre>[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?P<post>-(?P<post_n1>[0-9]+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
    (?P<dev>[-_.]?dev[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}
_MAX_LENGTH = 256

Pep440Key = tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...],
                  tuple[tuple[int, int, str], ...]]


@functools.lru_cache(maxsize=65_536)
def parse(version: str) -> Pep440Key:
    """Sort key of ``version``; raises InvalidVersion."""
    if len(version) > _MAX_LENGTH:
        raise InvalidVersion(f"PEP 440 version too long: {version[:64]!r}")
    m = _VERSION.fullmatch(version.strip())
    if m is None or not version.isascii():
        raise InvalidVersion(f"not a PEP 440 version: {version[:64]!r}")
    release = [int(p) for p in m["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    has_post = m["post"] is not None
    has_dev = m["dev"] is not None
    # Missing parts are placed with sentinel first elements: -1 sorts before, 1 after, 0 present.
    if m["pre"] is not None:
        pre: tuple[int, ...] = (0, _PRE_RANK[m["pre_l"].lower()], int(m["pre_n"] or 0))
    elif has_dev and not has_post:
        pre = (-1,)  # 1.0.dev0 comes before 1.0a0
    else:
        pre = (1,)
    post = (0, int(m["post_n1"] or m["post_n2"] or 0)) if has_post else (-1,)
    dev = (0, int(m["dev_n"] or 0)) if has_dev else (1,)
    local: tuple[tuple[int, int, str], ...] = ()
    if m["local"]:
        local = tuple((1, int(s), "") if s.isdigit() else (0, 0, s.lower())
                      for s in re.split(r"[-_.]", m["local"]))
    return int(m["epoch"] or 0), tuple(release), pre, post, dev, local


def compare(a: str, b: str) -> int:
    ka, kb = parse(a), parse(b)
    return (ka > kb) - (ka < kb)


def normalize_name(name: str) -> str:
    """PEP 503 normalised project name: runs of -, _ and . become one -, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()
