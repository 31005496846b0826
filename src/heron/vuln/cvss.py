"""CVSS v3.0/v3.1 base scores computed from vector strings, and qualitative severity labels.

The base score follows the CVSS v3.1 specification (section 7.1 formulas, Appendix A Roundup);
v3.0 vectors use the same formulas (v3.1 only made Roundup exact in floating point). Temporal
and environmental metrics may be present and are ignored: a base score is what advisories
publish. A malformed vector (missing or repeated base metric, unknown value) gives None.
"""

from __future__ import annotations

import math

SEVERITY_LABELS = ("critical", "high", "medium", "low", "negligible", "unknown")

_WEIGHTS: dict[str, dict[str, float]] = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "PR": {"N": 0.85, "L": 0.62, "H": 0.27},
    "UI": {"N": 0.85, "R": 0.62},
    "S": {"U": 0.0, "C": 0.0},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}
_PR_CHANGED = {"N": 0.85, "L": 0.68, "H": 0.5}  # privileges weigh more when the scope changes
_OTHER_METRICS = {"E", "RL", "RC", "CR", "IR", "AR", "MAV", "MAC", "MPR", "MUI", "MS", "MC", "MI", "MA"}
_MAX_VECTOR = 256


def roundup(value: float) -> float:
    """The smallest number with one decimal >= value (CVSS v3.1 Appendix A, float-safe)."""
    scaled = round(value * 100_000)
    if scaled % 10_000 == 0:
        return scaled / 100_000.0
    return (math.floor(scaled / 10_000) + 1) / 10.0


def v3_base_score(vector: str) -> float | None:
    """Base score (0.0-10.0) of a ``CVSS:3.x/...`` vector, or None when it is not valid."""
    if not isinstance(vector, str) or len(vector) > _MAX_VECTOR:
        return None
    head, _, body = vector.partition("/")
    if head not in ("CVSS:3.0", "CVSS:3.1") or not body:
        return None
    metrics: dict[str, str] = {}
    for item in body.split("/"):
        name, sep, value = item.partition(":")
        if not sep or name in metrics:
            return None
        if name in _WEIGHTS:
            if value not in _WEIGHTS[name]:
                return None
        elif name not in _OTHER_METRICS:
            return None
        metrics[name] = value
    if not all(name in metrics for name in _WEIGHTS):
        return None
    changed = metrics["S"] == "C"
    iss = 1 - ((1 - _WEIGHTS["C"][metrics["C"]]) * (1 - _WEIGHTS["I"][metrics["I"]])
               * (1 - _WEIGHTS["A"][metrics["A"]]))
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if changed else 6.42 * iss
    pr = (_PR_CHANGED if changed else _WEIGHTS["PR"])[metrics["PR"]]
    exploitability = 8.22 * _WEIGHTS["AV"][metrics["AV"]] * _WEIGHTS["AC"][metrics["AC"]] * pr \
        * _WEIGHTS["UI"][metrics["UI"]]
    if impact <= 0:
        return 0.0
    total = 1.08 * (impact + exploitability) if changed else impact + exploitability
    return roundup(min(total, 10.0))


def label_for_score(score: float) -> str:
    """CVSS qualitative rating: 0 none (reported as negligible), low, medium, high, critical."""
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    if score > 0.0:
        return "low"
    return "negligible"
