"""Detections: a Falco-like rule language over heron's event fields, YAML rule files and a default pack.

``RuleSet(paths).evaluate(event_dict) -> list[Match]``; ``RuleSet.reload_if_changed()`` hot-reloads.
``heron.detect.lang`` holds the condition language, ``heron.detect.fields`` the field catalogue.
"""

from heron.detect.lang import Condition, ConditionError, compile_condition
from heron.detect.rules import DEFAULT_RULES, SEVERITIES, Match, Rule, RuleLoadError, RuleSet

__all__ = ["DEFAULT_RULES", "SEVERITIES", "Condition", "ConditionError", "Match", "Rule", "RuleLoadError", "RuleSet",
           "compile_condition"]
