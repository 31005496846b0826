from __future__ import annotations

import os

import pytest

from heron.agent.host import Host, detect_host


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root and the real kernel")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def host() -> Host:
    return detect_host()
