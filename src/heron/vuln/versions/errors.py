"""The one error every version ordering raises."""

from __future__ import annotations


class InvalidVersion(ValueError):
    """A version string the ordering does not accept (the match is then reported as unknown)."""
