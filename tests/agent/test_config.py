from __future__ import annotations

from pathlib import Path

import pytest

from heron.agent.config import ConfigError, load_config


def test_defaults_and_valid_file(tmp_path: Path) -> None:
    assert load_config(None).dedupe.window_s == 2.0
    p = tmp_path / "agent.toml"
    p.write_text('collectors = {process = "procfs"}\n[dedupe]\nwindow_s = 0.5\n'
                 '[[filter.exclude]]\ncomm = "sleep"\n')
    cfg = load_config(p)
    assert cfg.collectors == {"process": "procfs"} and cfg.dedupe.window_s == 0.5
    assert cfg.filter.exclude[0].comm == "sleep"


@pytest.mark.parametrize(("text", "names"), [
    ("[dedupe]\nwindow_s = 'soon'\n", "$.dedupe.window_s"),
    ("[[filter.exclude]]\ncom = 'x'\n", "com"),
    ("[dedupe]\nwindow_s = -1\n", "dedupe.window_s"),
    ("[process\n", "invalid TOML"),
    ("bogus = 1\n", "bogus"),
    ("[[filter.exclude]]\ncomm = 're:('\n", "filter.exclude[0]: bad regular expression"),
    ("[[filter.exclude]]\n", "filter.exclude[0]: a filter rule needs at least one field"),
    ("[[filter.include]]\ncomm = 'a-sixteen-bytes!'\n", "longer than a kernel task name"),
    ("[dedupe]\nmax_entries = 0\n", "dedupe.max_entries"),
    ("[spool]\nsegment_mb = 0\n", "spool.segment_mb"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, names: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=names.replace("$", r"\$").replace("[", r"\[")):
        load_config(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_documented_example_config_is_valid() -> None:
    """docs/configuration.md's example must load as it is (it is what users copy)."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    block = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert block is not None
    import tomllib

    from heron.agent.config import parse_config

    cfg = parse_config(tomllib.loads(block.group(1)))
    assert cfg.collectors["network"] == "ebpf"
    assert cfg.file.watches[0].path == "/srv/www"
    assert len(cfg.filter.exclude) == 3
