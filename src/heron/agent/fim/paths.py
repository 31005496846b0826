"""File paths as the kernel gives them (bytes) and as events show them (text).

Linux file names are arbitrary bytes except NUL and '/': they need not be UTF-8 and may hold
newlines. The agent keeps them as bytes end to end and converts only for display: valid UTF-8 is
shown as is, anything else with the invalid bytes escaped as ``\\xNN`` and ``escaped`` set, so a
reader can tell a real backslash sequence in a name from an escape.
"""

from __future__ import annotations

import os


def display_path(raw: bytes) -> tuple[str, bool]:
    """(text, escaped): UTF-8 text of a path, invalid bytes escaped as ``\\xNN`` when escaped."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), True


def config_path(text: str) -> bytes:
    """A path from the (text) config as the bytes the kernel uses: normalised, absolute, no trailing
    slash. Non-UTF-8 bytes in a config arrive as surrogate escapes and round-trip through fsencode."""
    raw = os.path.normpath(os.fsencode(text))
    if raw.startswith(b"//"):  # normpath keeps a leading "//" (POSIX allows it a meaning; Linux gives none)
        raw = b"/" + raw.lstrip(b"/")
    return raw


def parent_of(path: bytes) -> bytes:
    """The directory holding ``path`` ("/" for top-level entries and for "/" itself)."""
    i = path.rfind(b"/")
    return path[:i] if i > 0 else b"/"


def join(directory: bytes, name: bytes) -> bytes:
    return directory + name if directory.endswith(b"/") else directory + b"/" + name


def is_below(path: bytes, root: bytes) -> bool:
    """path is root or inside it (component-wise: /etc/x is below /etc, /etcx is not)."""
    if root == b"/":
        return path.startswith(b"/")
    return path == root or path.startswith(root + b"/")
