"""The console in a real headless browser (Debian's chromium through Playwright) against the real
platform: token handling, the agents, events and vulnerabilities pages, follow mode, and a screenshot
that must show the rendered rows. Skips, saying why, without playwright or chromium."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from browser import Console, decode_png, exec_event, ink, ink_rows, open_console

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/bootstrap.sh --test)")
from playwright.sync_api import Page, expect

ROWS_JS = "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
EVENT_TYPES = ["agent.health", "file.change", "process.exit", "net.flow", "net.dns", "process.exec", "net.listen",
               "package.activity", "package.inventory"]  # newest first, as the explorer lists them
COLUMNS = ["time", "host", "type", "pid", "user", "exe", "argv", "container", "exit"]


def _opened(page: Page, console: Console) -> None:
    open_console(page, console)
    expect(page.locator("#main")).to_be_visible()
    expect(page.locator("#events tbody tr")).to_have_count(len(EVENT_TYPES))


def _event_rows(page: Page) -> list[dict[str, str]]:
    rows: list[list[str]] = page.eval_on_selector_all("#events tbody tr", ROWS_JS)
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def test_token_in_fragment_opens_the_console_and_leaves_the_address_bar(page: Page, console: Console) -> None:
    open_console(page, console)
    expect(page.locator("#main")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()
    assert "token" not in page.url and console.admin_token not in page.evaluate("location.href")
    assert page.url.rstrip("/") == console.url
    assert page.evaluate("sessionStorage.getItem('heron.token')") == console.admin_token
    # A reload keeps the session (sessionStorage), with a clean address bar.
    page.reload()
    expect(page.locator("#agents tbody tr")).to_have_count(1)


def test_agents_page_lists_the_agent_and_its_collectors(page: Page, console: Console) -> None:
    open_console(page, console)
    expect(page.locator("#agents tbody tr")).to_have_count(1)
    expect(page.locator("#agents-empty")).to_be_hidden()
    [cells] = page.eval_on_selector_all("#agents tbody tr", ROWS_JS)
    host, version, seen, collectors, losses, kernel, agent_id = cells
    assert (host, version, kernel, agent_id) == ("web-1", "0.1.0", "6.18.0", console.agent_id)
    assert collectors == "process=ebpf network=ebpf file=fanotify package=procfs"
    assert losses == "none" and seen.endswith(")") and "s ago" in seen


def test_events_explorer_renders_each_event_type(page: Page, console: Console) -> None:
    _opened(page, console)
    rows = _event_rows(page)
    assert [r["type"] for r in rows] == EVENT_TYPES
    assert {r["host"] for r in rows} == {"web-1"}
    by_type = {r["type"]: r for r in rows}
    flow = by_type["net.flow"]
    assert (flow["pid"], flow["user"], flow["exe"]) == ("4242", "deploy", "/usr/bin/curl")
    assert flow["argv"] == ("tcp 10.0.0.5:51234 → updates.example.org 93.184.215.14:443 [public]"
                            "  1 conn, ↑2.0 KB ↓1.5 MB")
    listen = by_type["net.listen"]
    assert (listen["exe"], listen["user"], listen["argv"]) == ("/usr/sbin/nginx", "www-data", "tcp 0.0.0.0:443 open")
    dns = by_type["net.dns"]
    assert (dns["exe"], dns["argv"]) == ("/usr/bin/curl", "A updates.example.org → 93.184.215.14  (\u00d72)")
    change = by_type["file.change"]
    assert (change["exe"], change["user"], change["argv"]) == ("/usr/bin/vim.basic", "root",
                                                                "modify /etc/cron.d/backup")
    run = by_type["process.exec"]
    assert (run["pid"], run["exe"], run["argv"]) == ("4242", "/usr/bin/curl",
                                                     "curl -fsS https://updates.example.org/feed.json")
    assert (by_type["process.exit"]["exe"], by_type["process.exit"]["exit"]) == ("/usr/bin/curl", "22")
    assert (by_type["agent.health"]["exe"], by_type["agent.health"]["argv"]) == ("agent 0.1.0", "no losses")
    assert all(r["time"].startswith(time.strftime("%Y-")) for r in rows)


def test_type_filter_narrows_the_list(page: Page, console: Console) -> None:
    _opened(page, console)
    for event_type in ("net.flow", "file.change", "net.dns"):
        page.select_option("#f-type", event_type)
        # Exactly one row, of this type (the previous type's single row must not pass for it).
        expect(page.locator("#events tbody tr td:nth-child(3)")).to_have_text([event_type])
    page.select_option("#f-type", "")
    expect(page.locator("#events tbody tr")).to_have_count(len(EVENT_TYPES))


def test_follow_shows_a_new_event_within_seconds(page: Page, console: Console) -> None:
    _opened(page, console)
    page.check("#f-follow")
    start = time.monotonic()
    console.ingest([exec_event(31337, "/usr/local/bin/follow-marker", ["follow-marker", "--once"])])
    fresh = page.locator("#events tbody tr.new")
    expect(fresh).to_have_count(1, timeout=5000)
    elapsed = time.monotonic() - start
    assert "follow-marker --once" in (fresh.text_content() or "")
    assert _event_rows(page)[0]["exe"] == "/usr/local/bin/follow-marker"
    assert elapsed < 5, elapsed
    expect(page.locator("#events tbody tr")).to_have_count(len(EVENT_TYPES) + 1)


def test_vulnerabilities_table_shows_findings_after_import(page: Page, console: Console, tmp_path: Path) -> None:
    open_console(page, console)
    expect(page.locator("#vulns-empty")).to_be_visible()
    expect(page.locator("#vulns-summary")).to_contain_text("0 of 0 findings")
    console.import_advisories(tmp_path)
    page.click("#refresh-vulns")
    expect(page.locator("#vulns-empty")).to_be_hidden()
    expect(page.locator("#vulns-summary")).to_contain_text("6 of 6 findings, 11 advisories")
    rows = page.eval_on_selector_all("#vulns tbody tr", ROWS_JS)
    assert len(rows) == 6
    _score, severity, advisory, package, version, fixed, where, use = rows[0]
    assert advisory == "DSA-NEW (CVE-DSA-NEW)" and severity == "high 7.5"
    assert (package, version, fixed, where) == ("libssl3", "3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "web-1 / host")
    assert use == "active, exposed 0.0.0.0:443/tcp"
    assert {r[2].split(" ")[0] for r in rows} == {"DSA-NEW", "CURL-LAST", "BASH-VERS", "WEIRD-RANGE", "GHSA-JINJA",
                                                   "GHSA-LODASH"}


def test_screenshot_of_the_events_page_shows_the_data(page: Page, console: Console) -> None:
    _opened(page, console)
    table = page.locator("#events")
    filled = decode_png(table.screenshot())
    # The same table with no rows: the check must tell the two apart.
    page.fill("#f-text", "matches-nothing")
    page.click("#filters button[type=submit]")
    expect(page.locator("#events-empty")).to_be_visible()
    empty = decode_png(table.screenshot())
    assert filled.height > 2 * empty.height
    assert ink_rows(filled) > 4 * ink_rows(empty), (ink_rows(filled), ink_rows(empty))
    assert ink(filled) > 0.02, ink(filled)
    # The pixels come from the data, not from an error page: the DOM holds the rendered rows too.
    page.fill("#f-text", "")
    page.click("#filters button[type=submit]")
    expect(page.locator("#events tbody tr")).to_have_count(len(EVENT_TYPES))
    text = page.locator("#events").inner_text()
    for needle in ("updates.example.org", "/etc/cron.d/backup", "/usr/sbin/nginx", "1.5 MB"):
        assert needle in text
    whole = decode_png(page.screenshot(full_page=True))
    assert whole.width == 1400 and ink(whole) > 0.02


def test_a_blank_render_is_recognised_as_blank(page: Page) -> None:
    page.set_content("<html><body style='background:#fff'></body></html>")
    blank = decode_png(page.screenshot())
    assert ink(blank) == 0 and ink_rows(blank) == 0


def test_wrong_token_shows_the_login_form_with_an_error(page: Page, console: Console) -> None:
    open_console(page, console, token="not-a-valid-token")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login-error")).to_have_text("token refused (401)")
    expect(page.locator("#main")).to_be_hidden()
    assert "not-a-valid-token" not in page.url
    assert page.evaluate("sessionStorage.getItem('heron.token')") is None
    # The right token typed into the form opens the console.
    page.fill("#token", console.admin_token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#agents tbody tr")).to_have_count(1)
    expect(page.locator("#login")).to_be_hidden()
