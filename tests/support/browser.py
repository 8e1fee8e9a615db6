"""Debian's chromium, headless, driven by Playwright: one browser per test module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, sync_playwright

from tests.conftest import Mailveil

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists() or shutil.which("fc-list") is None:
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-system-packages as root")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def open_page(browser: Browser, mv: Mailveil, **options: object) -> Page:
    context = browser.new_context(base_url=f"http://127.0.0.1:{mv.http_port}",
                                  **options)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    return context.new_page()


def save_screenshot(target: Page | Locator, name: str) -> None:
    """The README shows the pages as the tests last saw them: ``docs/screenshots/`` is committed,
    so a change in how a page looks shows up in review. The visible part only (a page's
    viewport, a locator's box) keeps each file small."""
    target.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
