"""Hostile requests to the alerts API: 400s instead of 500s, webhook secrets hidden from readers, and the
console's "Suppress similar" glob that matches its own host only."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from alert_events import Api

import heron.platform.console as console

ALERT_JS = Path(console.__file__).parent / "static" / "pages" / "alert.js"


@pytest.mark.parametrize("body", [b"[" * 60_000, b'{"note": ' + b"[" * 25_000 + b"]" * 25_000 + b"}",
                                  b'{"a":' * 10_000 + b"1" + b"}" * 10_000])
def test_deeply_nested_bodies_are_400(api: Api, body: bytes) -> None:
    for url in ("/api/v1/suppressions", "/api/v1/channels", "/api/v1/alerts/1/state"):
        r = api.client.post(url, content=body, headers={**api.admin, "Content-Type": "application/json"})
        assert r.status_code == 400, (url, r.status_code, r.text[:200])
        assert "error" in r.json()


@pytest.mark.parametrize("since", ["--5", "-", "1-2", "5-", "١٢", "99999999999999999999", " 5", "+5"])
def test_bad_integers_are_400(api: Api, since: str) -> None:
    r = api.client.get("/api/v1/alerts", params={"since": since}, headers=api.reader)
    assert r.status_code == 400, r.text
    assert "since" in r.json()["error"]


def test_since_in_and_out_of_range(api: Api) -> None:
    r = api.client.get("/api/v1/alerts", params={"since": "-5"}, headers=api.reader)
    assert r.status_code == 400 and "between 0 and" in r.json()["error"]
    r = api.client.get("/api/v1/alerts", params={"since": "5"}, headers=api.reader)
    assert (r.status_code, r.json()) == (200, {"alerts": []})


def test_readers_see_webhook_urls_masked(api: Api) -> None:
    secret = "https://hooks.slack.example/services/T000/B000/XXXXsecretXXXX?token=abc"
    for body in ({"name": "slack", "kind": "webhook", "config": {"url": secret}},
                 {"name": "basic", "kind": "webhook", "config": {"url": "http://user:pw@[::1]:8080/"}},
                 {"name": "siem", "kind": "syslog", "config": {"url": "udp://127.0.0.1:514"}}):
        assert api.client.post("/api/v1/channels", json=body, headers=api.admin).status_code == 201
    read = api.client.get("/api/v1/channels", headers=api.reader)
    assert "secret" not in read.text and "token" not in read.text and "pw" not in read.text
    urls = {c["name"]: c["config"]["url"] for c in read.json()["channels"]}
    assert urls == {"slack": "https://hooks.slack.example/…", "basic": "http://[::1]:8080/…",
                    "siem": "udp://127.0.0.1:514"}
    admin = {c["name"]: c["config"]["url"] for c in api.client.get("/api/v1/channels", headers=api.admin)
             .json()["channels"]}
    assert admin["slack"] == secret


def _exact_glob(names: list[str]) -> list[str]:
    source = ALERT_JS.read_text()
    m = re.search(r"export function exactGlob\(name\) \{.*?\n\}", source, re.S)
    assert m is not None, "alert.js lost exactGlob"
    program = m.group(0).removeprefix("export ") + f"\nconsole.log(JSON.stringify({json.dumps(names)}.map(exactGlob)));"
    done = subprocess.run(["node", "--input-type=module"], input=program, capture_output=True, text=True, timeout=30,
                          check=True)
    out: list[str] = json.loads(done.stdout)
    return out


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_suppress_similar_matches_its_own_host_only() -> None:
    hosts = ["web-1", "web*", "db?", "[ab]x", "a[*]b"]
    globs = _exact_glob(hosts)
    for host, glob in zip(hosts, globs, strict=True):
        assert fnmatch.fnmatchcase(host, glob), (host, glob)
    assert globs[0] == "web-1"
    assert not fnmatch.fnmatchcase("web-1", globs[1])  # "web*" no longer suppresses every web host
    assert not fnmatch.fnmatchcase("dbx", globs[2]) and not fnmatch.fnmatchcase("ax", globs[3])
    source = ALERT_JS.read_text()
    assert "hostname: exactGlob(a.host" in source  # the button sends the escaped form
