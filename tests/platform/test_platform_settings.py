"""The platform settings file (`heron server --config`, `heron up --platform-config`) and the rules
directory every data dir has: a rule dropped there while the platform runs raises alerts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from platform_helpers import Platform, batch_body, enroll, exec_event, ingest
from starlette.testclient import TestClient

from heron.platform import settings
from heron.platform.api.app import create_app
from heron.platform.server import open_data_dir

RULE = """
- rule: Backup tool run by hand
  desc: site rule
  condition: type = process.exec and process.name = heron-test-backup
  severity: medium
  tags: [T1005]
"""


def test_settings_file_sets_fields_and_refuses_typos_and_wrong_types(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('retention_days = 30\nbaseline_learning_s = 60\nrule_paths = ["/etc/heron/rules.d"]\n'
                    "cookie_secure = true\n")
    cfg = settings.load(good, tmp_path / "data")
    assert (cfg.retention_days, cfg.baseline_learning_s, cfg.cookie_secure) == (30.0, 60.0, True)
    assert cfg.rule_paths == ("/etc/heron/rules.d", str(tmp_path / "data" / "rules.d"))
    assert os.stat(tmp_path / "data").st_mode & 0o777 == 0o700  # made private, as the server would
    for text, reason in (("retention_dayz = 3", "unknown setting 'retention_dayz'"),
                         ('retention_days = "a week"', "retention_days: expected float, got str"),
                         ("ingest_workers = true", "ingest_workers: expected int, got bool"),
                         ('data_dir = "/x"', "unknown setting 'data_dir'"),
                         ("retention_days = ", "")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(settings.SettingsError, match=str(bad)) as err:
            settings.load(bad, tmp_path / "data")
        assert reason in str(err.value)
    with pytest.raises(settings.SettingsError, match="No such file"):
        settings.load(tmp_path / "missing.toml", tmp_path / "data")


def test_a_rule_dropped_into_the_rules_directory_is_picked_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "platform"
    cfg = settings.load(None, data_dir)
    storage, creds = open_data_dir(data_dir)
    try:
        with TestClient(create_app(storage, cfg)) as client:
            platform = Platform(client, storage, creds, data_dir)
            agent = enroll(platform)
            (data_dir / settings.RULES_DIR / "site.yaml").write_text(RULE)
            deadline = time.monotonic() + 10
            rules: list[str] = []
            while time.monotonic() < deadline:
                ev = exec_event(4242, "/usr/local/bin/heron-test-backup", ["heron-test-backup"])
                assert ingest(platform, agent, batch_body([ev]))[0] == 200
                alerts = client.get("/api/v1/alerts", headers=platform.admin).json()["alerts"]
                rules = [a["rule"] for a in alerts]
                if "Backup tool run by hand" in rules:
                    break
                time.sleep(0.5)
            assert "Backup tool run by hand" in rules
    finally:
        storage.close()
