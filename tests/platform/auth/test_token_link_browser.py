"""The console's "#token=" link in a real browser: silent when nobody is signed in (heron up), asked
about when a session is active (a crafted link must not swap the user's session for another
identity), and the token leaves the address bar either way."""

from __future__ import annotations

import pytest

from browser import Console, open_console  # the fixtures page and console: conftest.py

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/bootstrap.sh --test)")
from playwright.sync_api import Dialog, Page, expect


def _sign_in(page: Page, console: Console, username: str, password: str) -> None:
    console.add_user(username, password, "reader")
    page.goto(console.url + "/")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#whoami")).to_have_text(f"{username} (reader)")


def _open_link(page: Page, console: Console, accept: bool) -> list[str]:
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", answer)
    page.goto("about:blank")  # a new page load (the same page would only see a hash change)
    open_console(page, console)
    expect(page.locator("#main")).to_be_visible()
    return asked


def test_a_token_link_does_not_silently_replace_a_session(page: Page, console: Console) -> None:
    _sign_in(page, console, "ann", "correct horse battery")
    asked = _open_link(page, console, accept=False)
    expect(page.locator("#whoami")).to_have_text("ann (reader)")
    assert len(asked) == 1 and "ann (reader)" in asked[0]
    assert console.admin_token not in page.url
    assert page.evaluate("sessionStorage.getItem('heron.token')") is None


def test_a_token_link_replaces_a_session_when_accepted(page: Page, console: Console) -> None:
    _sign_in(page, console, "bob", "staple paper clip 42")
    asked = _open_link(page, console, accept=True)
    assert len(asked) == 1
    expect(page.locator("#whoami")).not_to_have_text("bob (reader)")
    assert console.admin_token not in page.url
    assert page.evaluate("sessionStorage.getItem('heron.token')") == console.admin_token


def test_a_token_link_without_a_session_asks_nothing(page: Page, console: Console) -> None:
    asked = _open_link(page, console, accept=False)
    expect(page.locator("#whoami")).to_have_text("API token (admin)")
    assert asked == [] and console.admin_token not in page.url
