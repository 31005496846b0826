"""The console tests' browser fixtures come from tests/platform/conftest.py (tests/browser.py), defined
once so that one chromium (one Playwright instance) serves every directory's browser tests."""
