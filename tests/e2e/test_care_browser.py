"""The care console in a real browser (Debian's chromium through Playwright) against
``mailveil serve``: an agent signs in, finds a conversation by the customer's real address,
opens both versions of a message whose HTML tries script, remote images and a form, and
exports the dispute; the zip's manifest is checked against its files and the archive. A
review request is flagged, held (``MAILVEIL_REVIEW_ACTION=hold``) and released.
SQLite only: the console's behaviour on both databases is covered in tests/web/test_care.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import Mailveil
from tests.support.browser import browser, open_page, save_screenshot
from tests.support.care import add_agent, check_export, send_hostile_html, unzip
from tests.support.client import (
    CUSTOMER,
    SUPPLIER,
    archive_until_delivered,
    mail,
    register,
    send,
)
from tests.support.portal import conversation, wait_for_mail
from tests.support.sink import Sink

__all__ = ["browser"]  # the module-scoped fixture


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'mailveil.sqlite3'}"


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"MAILVEIL_REVIEW_ACTION": "hold"}


class _Hits(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def remote() -> Iterator[ThreadingHTTPServer]:
    """A server the hostile HTML points its script, image and form at: it must hear nothing."""
    _Hits.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()


def test_sign_in_find_open_both_versions_and_export(
        mailveil: Mailveil, sink: Sink, browser: Browser, tmp_path: Path,
        remote: ThreadingHTTPServer) -> None:
    b = conversation(mailveil)
    send_hostile_html(mailveil, b, remote.server_address[1])
    entries = archive_until_delivered(mailveil, "GYG-1001")
    page = open_page(browser, mailveil, accept_downloads=True,
                     viewport={"width": 1280, "height": 900})
    page.goto(add_agent(mailveil))
    page.get_by_role("button", name="Continue to the console").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Find a conversation")

    page.get_by_label("Booking reference, relay address, real address or Message-ID"
                      ).fill(CUSTOMER)
    page.keyboard.press("Enter")
    expect(page.locator("table.bookings tbody tr")).to_have_count(1)
    save_screenshot(page, "care-search")
    page.get_by_role("link", name="GYG-1001", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Booking GYG-1001")

    hostile = page.locator("article.message").filter(has_text="Invoice attached")
    expect(hostile.locator("section.received pre.text")).to_contain_text(
        "Hello from the text part")
    expect(hostile.locator("section.delivered")).to_contain_text("As delivered to the supplier")
    expect(hostile.locator("section.delivered")).to_contain_text(b["customer_relay_address"])
    hostile.locator("section.received details.headers summary").click()
    expect(hostile.locator("section.received details.headers")).to_contain_text(CUSTOMER)
    for side in ("received", "delivered"):
        frame = hostile.locator(f"section.{side} iframe.html").content_frame
        expect(frame.locator("#hello")).to_have_text("Hello from the HTML part")
        assert frame.locator("html").evaluate("() => document.title") != "pwned"
        # The form does not go anywhere.
        frame.get_by_role("button", name="Pay").click()
    save_screenshot(hostile, "care-conversation")
    page.wait_for_load_state("networkidle")
    assert _Hits.hits == []

    with page.expect_download() as download:
        page.get_by_role("button", name="Export the dispute record (zip)").click()
    saved = tmp_path / "dispute.zip"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "dispute-GYG-1001.zip"
    check_export(unzip(saved.read_bytes()), entries)
    page.goto("/care/audit")
    expect(page.locator("table.audit tbody tr").first).to_contain_text("export")
    save_screenshot(page, "care-audit")
    assert _Hits.hits == []


def test_a_review_request_is_flagged_held_and_released(
        mailveil: Mailveil, sink: Sink, browser: Browser) -> None:
    b = register(mailveil)
    asking = mail(SUPPLIER, b["customer_relay_address"], "Thank you for sailing with us",
                  "It was a pleasure! Could you leave us a review on "
                  "https://www.tripadvisor.com/UserReviewEdit-g293916-d1234 ?\n")
    send(mailveil, asking, SUPPLIER, [b["customer_relay_address"]])
    page = open_page(browser, mailveil, viewport={"width": 1280, "height": 720})
    page.goto(add_agent(mailveil))
    page.get_by_role("button", name="Continue to the console").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Find a conversation")

    held = page.locator('article.queue-item[data-state="held"]')
    deadline = time.monotonic() + 20
    while True:  # processing holds it within a round or two
        page.goto("/care/queue")
        if held.count() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    expect(held).to_have_count(1)
    expect(held.get_by_role("heading", level=2)).to_contain_text(
        "Review request held, not delivered")
    expect(held).to_contain_text("Subject: Thank you for sailing with us")
    expect(held.locator("ul.found li")).to_have_text(["tripadvisor", "leave us a review"])
    assert sink.to(CUSTOMER) == []
    held.get_by_label("Note").fill("Called the supplier: he will ask for reviews on Tourly only")
    save_screenshot(page, "care-flagged")

    held.get_by_role("button", name="Release").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Queue")
    expect(page.locator("p.empty")).to_have_text("Nothing waits.")
    [delivered] = wait_for_mail(sink, CUSTOMER)
    assert delivered["Subject"] == "Thank you for sailing with us"
    page.goto("/care/audit")
    expect(page.locator("table.audit tbody tr").first).to_contain_text("release")
