"""Risk score and ranking of findings: what is running and reachable comes first.

    score = base x activity x (exposed ? 1.5 : 1) x (fixable ? 1.2 : 1) x (unknown ? 0.8 : 1)

- base (0-10): the CVSS base score when the advisory has a v3 vector, else its label
  (critical 9.5, high 8, medium 5.5, low 3, negligible 1, unknown 5: an unrated advisory is
  not assumed harmless). When the distribution rates the issue negligible for its build
  (Debian "unimportant", Ubuntu "negligible") the base is capped at 1.
- activity: 2 when a running process executes or maps the package's files (active), 1.5 when
  one did within ``recent_days`` (default 7: a batch job, a restarted service), 1 otherwise.
- exposed: a process using the package listens on a non-loopback address (net.listen).
- fixable: the advisory names a fixed version above the installed one (the fix is an upgrade).
- unknown: the installed version could not be ordered against the advisory; kept visible, a
  little lower than a certain match of the same severity.

The score goes from 0 to 36. Ranking is by activity tier first (active, then recently active,
then dormant), then score: an active medium outranks a dormant critical, which is the point of
watching what runs. Ties break on base score, then advisory id and package name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from heron.vuln.osv import Severity

Activity = Literal["active", "recent", "dormant"]
ACTIVITY_TIER: dict[Activity, int] = {"active": 2, "recent": 1, "dormant": 0}
LABEL_BASE = {"critical": 9.5, "high": 8.0, "medium": 5.5, "low": 3.0, "negligible": 1.0, "unknown": 5.0}
LABEL_ORDER = ("critical", "high", "medium", "low", "negligible", "unknown")


@dataclass(frozen=True)
class RiskPolicy:
    recent_days: float = 7.0
    active_factor: float = 2.0
    recent_factor: float = 1.5
    exposed_factor: float = 1.5
    fixable_factor: float = 1.2
    unknown_factor: float = 0.8

    def activity(self, active: bool, last_used_ts: int, now_ns: int) -> Activity:
        if active:
            return "active"
        if last_used_ts and now_ns - last_used_ts <= self.recent_days * 86_400e9:
            return "recent"
        return "dormant"


def base_score(severity: Severity) -> float:
    base = severity.score if severity.score is not None else LABEL_BASE.get(severity.label, LABEL_BASE["unknown"])
    if severity.distro_label == "negligible":
        base = min(base, LABEL_BASE["negligible"])
    return base


def risk_score(severity: Severity, activity: Activity, exposed: bool, fixable: bool, unknown: bool,
               policy: RiskPolicy | None = None) -> float:
    p = policy or RiskPolicy()
    factor = {"active": p.active_factor, "recent": p.recent_factor, "dormant": 1.0}[activity]
    if exposed:
        factor *= p.exposed_factor
    if fixable:
        factor *= p.fixable_factor
    if unknown:
        factor *= p.unknown_factor
    return round(base_score(severity) * factor, 2)


def rank_key(activity: Activity, score: float, base: float, advisory_id: str, package: str) -> tuple[object, ...]:
    """Sort key, ascending = most urgent first."""
    return (-ACTIVITY_TIER[activity], -score, -base, advisory_id, package)
