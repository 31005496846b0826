"""The console is served at / with strict headers; its script never writes data as HTML.
(Browser tests come later.)"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from platform_helpers import Platform

from heron.platform.api.app import CONSOLE_DIR


def test_index_and_assets_are_served(platform: Platform) -> None:
    r = platform.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="app.js" defer></script>' in r.text and 'href="style.css"' in r.text
    for element_id in ("login-form", "agents", "events", "f-type", "f-host", "f-text", "f-follow"):
        assert f'id="{element_id}"' in r.text
    js = platform.client.get("/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "after_id" in js.text and "sessionStorage" in js.text
    css = platform.client.get("/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_security_headers(platform: Platform) -> None:
    for path in ("/", "/app.js", "/api/v1/health"):
        headers = platform.client.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


def test_console_never_renders_data_as_html() -> None:
    js = (CONSOLE_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink
    html = (CONSOLE_DIR / "index.html").read_text()
    assert not re.search(r"<script>|\son\w+=", html)  # no inline script or handlers (CSP forbids them)


def test_token_fragment_is_removed_from_the_address_bar() -> None:
    js = (CONSOLE_DIR / "app.js").read_text()
    assert 'params.get("token")' in js and "history.replaceState" in js


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_app_js_parses() -> None:
    result = subprocess.run(["node", "--check", str(CONSOLE_DIR / "app.js")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
