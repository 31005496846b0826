"""Detections → alerts: the rule stage, incidents, suppressions, states and notifications.

- ``RuleEngine`` (engine.py): the pipeline's ``rules`` stage; hot-reloads rule files.
- ``AlertRecorder`` (recorder.py): the ``alerts`` stage; suppressions, de-duplication, grouping into
  incidents, alert_log, the notification outbox.
- ``set_state`` / ``mark_expected`` (state.py); ``Notifier`` (notify.py) sends the outbox.
- ``queries.py`` reads for the API (api/alerts.py); docs/alerts.md explains it all.
"""

from heron.platform.alerts.engine import RuleEngine
from heron.platform.alerts.recorder import AlertRecorder
from heron.platform.alerts.state import STATES, StateError, mark_expected, set_state

__all__ = ["STATES", "AlertRecorder", "RuleEngine", "StateError", "mark_expected", "set_state"]
