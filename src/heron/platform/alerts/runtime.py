"""The alerts part of one platform process: the rule engine and the recorder (pipeline stages) and
the notifier's settings, built from PlatformConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from heron.platform.alerts.engine import RuleEngine
from heron.platform.alerts.notify import Notifier
from heron.platform.alerts.recorder import AlertRecorder
from heron.platform.storage.db import Database


class AlertsConfig(Protocol):
    @property
    def rule_paths(self) -> tuple[str, ...]: ...
    @property
    def rules_check_interval_s(self) -> float: ...
    @property
    def incident_window_s(self) -> float: ...
    @property
    def dedupe_window_s(self) -> float: ...
    @property
    def suppression_refresh_s(self) -> float: ...
    @property
    def notify_poll_s(self) -> float: ...
    @property
    def notify_max_attempts(self) -> int: ...
    @property
    def notify_backoff_s(self) -> float: ...
    @property
    def alert_max_detections_per_batch(self) -> int: ...
    @property
    def alert_max_new_per_agent_minute(self) -> int: ...
    @property
    def notify_max_per_channel_minute(self) -> int: ...
    @property
    def notify_deadline_s(self) -> float: ...


@dataclass
class AlertsRuntime:
    config: AlertsConfig
    engine: RuleEngine
    recorder: AlertRecorder

    @classmethod
    def create(cls, config: AlertsConfig) -> AlertsRuntime:
        engine = RuleEngine(config.rule_paths, check_interval_s=config.rules_check_interval_s)
        recorder = AlertRecorder(incident_window_s=config.incident_window_s, dedupe_window_s=config.dedupe_window_s,
                                 suppression_refresh_s=config.suppression_refresh_s,
                                 max_detections_per_batch=config.alert_max_detections_per_batch,
                                 max_new_alerts_per_agent_minute=config.alert_max_new_per_agent_minute,
                                 notify_max_per_channel_minute=config.notify_max_per_channel_minute)
        return cls(config, engine, recorder)

    def notifier(self, db: Database) -> Notifier:
        c = self.config
        return Notifier(db, poll_s=c.notify_poll_s, max_attempts=c.notify_max_attempts, backoff_s=c.notify_backoff_s,
                        deadline_s=c.notify_deadline_s)
