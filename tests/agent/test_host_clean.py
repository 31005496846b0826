"""The agent sends a host name the platform accepts whatever the kernel's hostname holds."""

from __future__ import annotations

import re

from heron.agent.host import clean_hostname


def test_clean_hostname_keeps_normal_names_and_replaces_the_rest() -> None:
    assert clean_hostname("web-01.example.com") == "web-01.example.com"
    assert clean_hostname("my host\n*evil") == "my-host--evil"
    assert clean_hostname("") == "unknown"
    odd = clean_hostname("ü" * 300)
    assert len(odd) == 253 and re.fullmatch(r"[A-Za-z0-9._-]{1,253}", odd)
