"""The console is served at / with strict headers; its scripts never write data as HTML.
(The pages themselves are tested in a browser: test_console_browser.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from platform_helpers import Platform

from heron.platform.api.app import CONSOLE_DIR

SCRIPTS = sorted(str(p.relative_to(CONSOLE_DIR)) for p in CONSOLE_DIR.rglob("*.js"))


def test_index_and_assets_are_served(platform: Platform) -> None:
    r = platform.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js"></script>' in r.text and 'href="style.css"' in r.text
    for element_id in ("login-form", "token-form", "main", "nav"):
        assert f'id="{element_id}"' in r.text
    for module in SCRIPTS:
        js = platform.client.get("/" + module)
        # Module scripts need a JavaScript MIME type, or the browser refuses them.
        assert js.status_code == 200 and "javascript" in js.headers["content-type"], module
    assert "after_id" in platform.client.get("/pages/events.js").text
    assert "sessionStorage" in platform.client.get("/api.js").text
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
    assert len(SCRIPTS) >= 10, SCRIPTS
    for module in SCRIPTS:
        js = (CONSOLE_DIR / module).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                     "setAttribute(\"on", "DOMParser", "createContextualFragment"):
            assert sink not in js, (module, sink)
    html = (CONSOLE_DIR / "index.html").read_text()
    assert not re.search(r"<script>|\son\w+=", html)  # no inline script or handlers (CSP forbids them)


def test_token_fragment_is_removed_from_the_address_bar() -> None:
    js = (CONSOLE_DIR / "api.js").read_text()
    assert 'params.get("token")' in js and "history.replaceState" in js


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_modules_parse() -> None:
    for module in SCRIPTS:
        source = (CONSOLE_DIR / module).read_text()
        result = subprocess.run(["node", "--check", "--input-type=module"], input=source, capture_output=True,
                                text=True)
        assert result.returncode == 0, (module, result.stderr)
