"""Severities: their order and the score a rule detection gets from its severity."""

from __future__ import annotations

from heron.detect import SEVERITIES

SCORES = {"info": 10.0, "low": 25.0, "medium": 50.0, "high": 75.0, "critical": 95.0}


def rank(severity: str) -> int:
    """Position in SEVERITIES (unknown severities rank below info)."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        return -1


def score_for(severity: str) -> float:
    return SCORES.get(severity, 0.0)


def at_least(severity: str, minimum: str) -> bool:
    return rank(severity) >= rank(minimum)


def highest(a: str, b: str) -> str:
    return a if rank(a) >= rank(b) else b
