"""Alpine (apk) version ordering.

An Alpine version is ``digits{.digits}[letter]{_suffix[number]}[-rN]``; suffixes are
``alpha < beta < pre < rc`` (before the release: 1.0_rc1 < 1.0) and ``cvs < svn < git < hg < p``
(after it: 1.0 < 1.0_p1). A version is read as a sequence of tokens, each of a kind (number
after a dot, number, letter, suffix, suffix number, revision) and a value, and two versions
compare token by token as apk-tools does:

- equal kinds: the values decide (numbers numerically; a number after a dot that starts with
  zeros counts those zeros first, so ``1.05 < 1.5`` as in a decimal fraction);
- at the first difference in kind, the version that goes on is newer, unless what follows is a
  pre-release suffix (then it is older); otherwise the token of the "later" kind (letter after
  number, suffix after letter, revision last, end of string after all) means older.

Versions that do not follow the grammar raise InvalidVersion (apk itself falls back to a string
comparison for them; a vulnerability match must not). One deliberate difference from apk-tools
2.x: there a component made of zeros only is followed by a phantom number token, so it orders
``1.0_rc1`` after ``1.0``; here a pre-release stays before its release (``1.0_rc1 < 1.0``), as
Alpine's version rules say.
"""

from __future__ import annotations

import functools
import re

from heron.vuln.versions.errors import InvalidVersion

DOT_DIGITS, DIGITS, LETTER, SUFFIX, SUFFIX_NO, REVISION, END = range(7)
_PRE = ("alpha", "beta", "pre", "rc")
_POST = ("cvs", "svn", "git", "hg", "p")
_SHAPE = re.compile(r"[0-9][0-9a-z._-]*")  # the tokenizer checks the rest
_MAX_LENGTH = 256


def _suffix(text: str, pos: int) -> tuple[int, int]:
    """(value, length) of the suffix name at ``pos``: pre-releases negative."""
    for index, name in enumerate(_PRE):
        if text.startswith(name, pos):
            return index - len(_PRE), len(name)
    for index, name in enumerate(_POST):
        if text.startswith(name, pos):
            return index, len(name)
    raise InvalidVersion(f"unknown apk suffix in {text!r}")


def _next_kind(kind: int, text: str, pos: int) -> tuple[int, int]:
    """Kind of the token starting at ``pos`` after a token of ``kind``, and where it starts."""
    if pos >= len(text):
        return END, pos
    c = text[pos]
    if kind in (DIGITS, DOT_DIGITS) and "a" <= c <= "z":
        return LETTER, pos
    if kind == LETTER and c.isdigit():
        return DIGITS, pos
    if kind == SUFFIX and c.isdigit():
        return SUFFIX_NO, pos
    if c == ".":
        new, pos = DOT_DIGITS, pos + 1
    elif c == "_":
        new, pos = SUFFIX, pos + 1
    elif c == "-" and text.startswith("r", pos + 1):
        new, pos = REVISION, pos + 2
    else:
        raise InvalidVersion(f"bad apk version: {text!r}")
    # Kinds only move forward, except: a dot after digits, a suffix after a suffix number.
    if new < kind and not ((new == DOT_DIGITS and kind == DIGITS) or (new == SUFFIX and kind == SUFFIX_NO)):
        raise InvalidVersion(f"bad apk version: {text!r}")
    return new, pos


def _digits(text: str, pos: int) -> tuple[int, int]:
    end = pos
    while end < len(text) and text[end].isdigit():
        end += 1
    return (int(text[pos:end]) if end > pos else 0), end


@functools.lru_cache(maxsize=65_536)
def tokens(version: str) -> tuple[tuple[int, int], ...]:
    """(value, kind of the next token) for each token, in order; the last kind is END."""
    if not version or len(version) > _MAX_LENGTH or not version.isascii() or not _SHAPE.fullmatch(version):
        raise InvalidVersion(f"bad apk version: {version[:64]!r}")
    out: list[tuple[int, int]] = []
    kind, pos = DIGITS, 0
    while kind != END:
        forced: int | None = None
        if kind == DOT_DIGITS and version.startswith("0", pos):
            end = pos
            while end < len(version) and version[end] == "0":
                end += 1
            value = -(end - pos)  # leading zeros count first...
            pos = end
            if pos < len(version) and version[pos].isdigit():
                forced = DIGITS  # ...then the rest of the number
            else:
                kind = DIGITS  # a component of zeros only: what follows is read as after digits
        elif kind in (DOT_DIGITS, DIGITS, SUFFIX_NO, REVISION):
            value, pos = _digits(version, pos)
        elif kind == LETTER:
            value, pos = ord(version[pos]), pos + 1
        else:  # SUFFIX
            value, length = _suffix(version, pos)
            pos += length
        if pos >= len(version):
            kind = END
        elif forced is not None:
            kind = forced
        else:
            kind, pos = _next_kind(kind, version, pos)
        out.append((value, kind))
    return tuple(out)


def compare(a: str, b: str) -> int:
    ta, tb = tokens(a), tokens(b)
    index = 0
    while True:
        av, akind = ta[index]
        bv, bkind = tb[index]
        if av != bv:
            return -1 if av < bv else 1
        if akind != bkind or akind == END:
            break
        index += 1
    if akind == bkind:
        return 0
    # One goes on: a pre-release suffix makes it older; else the later kind of token is older.
    if akind == SUFFIX and ta[index + 1][0] < 0:
        return -1
    if bkind == SUFFIX and tb[index + 1][0] < 0:
        return 1
    return -1 if akind > bkind else 1
