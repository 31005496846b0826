"""Fixtures of the console tests: the browser ones live in tests/browser.py, shared with later pages."""

from browser import chromium, console, page  # noqa: F401
