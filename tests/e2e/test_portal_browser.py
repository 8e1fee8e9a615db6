"""The supplier portal in a real browser: Debian's chromium, headless, driven by Playwright,
against ``mailveil serve`` with a receiving SMTP server for the mail the portal sends.

These tests are about pages, keyboards and screens; the portal's behaviour on both
databases is covered over HTTP in tests/web/test_portal.py, so they run on SQLite only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Mailveil
from tests.support.browser import browser, open_page, save_screenshot
from tests.support.client import CUSTOMER
from tests.support.portal import conversation, link_in, mint, wait_for_mail
from tests.support.sink import Sink
from tests.support.webhooks import Receiver, receiving, verify

BANGKOK = "Asia/Bangkok"
WEBHOOK_SECRET = "browser-test-webhooks-" + "s" * 32
__all__ = ["browser"]  # the module-scoped fixture


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'mailveil.sqlite3'}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture
def extra_env(receiver: Receiver) -> dict[str, str]:
    return {"MAILVEIL_WEBHOOK_URL": receiver.url, "MAILVEIL_WEBHOOK_SECRET": WEBHOOK_SECRET}


def _page(browser: Browser, mv: Mailveil, **options: object) -> Page:
    return open_page(browser, mv, timezone_id=BANGKOK, **options)


def test_sign_in_find_copy_switch_to_thai_and_ask_to_cancel(
        mailveil: Mailveil, sink: Sink, browser: Browser, receiver: Receiver) -> None:
    b = conversation(mailveil, locale="th")
    page = _page(browser, mailveil, permissions=["clipboard-read", "clipboard-write"],
                 viewport={"width": 1280, "height": 900})
    page.goto(mint(mailveil)["url"])
    page.locator("form[action^='/portal/link/'] button").click()
    expect(page).to_have_url(f"http://127.0.0.1:{mailveil.http_port}/portal/bookings")
    expect(page.locator("html")).to_have_attribute("lang", "fr")  # the supplier's locale
    expect(page.locator("footer")).to_contain_text(BANGKOK)  # the browser's time zone

    page.get_by_label("Référence de réservation").fill("GYG-1001")
    page.keyboard.press("Enter")
    expect(page.locator("table.bookings tbody tr")).to_have_count(1)
    save_screenshot(page, "portal-bookings")
    page.get_by_role("link", name="GYG-1001", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Réservation GYG-1001")

    page.get_by_role("button", name="Copier l\u2019adresse").click()
    expect(page.locator(".copied")).to_have_text("Copiée")
    assert page.evaluate("navigator.clipboard.readText()") == b["customer_relay_address"]

    # The thread: the customer's message and the attachment delivered, the reminder refused.
    expect(page.locator(".message")).to_have_count(3)
    expect(page.locator(".state-delivered")).to_have_count(2)
    expect(page.locator(".state-refused")).to_contain_text("plusieurs clients")
    expect(page.get_by_role("link", name="map.bin")).to_be_visible()
    save_screenshot(page.locator("section[aria-labelledby=thread-title]"), "portal-booking-thread")

    page.get_by_label("Langue").select_option("th")
    page.get_by_role("button", name="Changer").click()
    expect(page.locator("html")).to_have_attribute("lang", "th")
    expect(page.get_by_role("heading", level=1)).to_have_text("การจอง GYG-1001")
    save_screenshot(page, "portal-booking-th")

    page.get_by_label("สิ่งที่ลูกค้าแจ้ง").fill("ลูกค้าป่วย")
    page.get_by_role("button", name="ลูกค้าขอยกเลิก").click()
    expect(page.locator("#cancellation [role=status]")).to_contain_text("ลูกค้าตอบได้จนถึง")

    # The customer answers through the mailed link, in their Thai.
    [letter] = [m for m in wait_for_mail(sink, CUSTOMER, 2)
                if m["Auto-Submitted"] == "auto-generated"]  # not the relayed map
    customer = _page(browser, mailveil)
    customer.goto(link_in(letter))
    expect(customer.locator("blockquote")).to_have_text("ลูกค้าป่วย")
    customer.get_by_role("button", name="ใช่ ยกเลิกการจองของฉัน").click()
    expect(customer.get_by_role("status")).to_have_text("การจองของคุณถูกยกเลิกแล้ว")
    booking = httpx.get(f"{mailveil.api}/bookings/GYG-1001", headers=mailveil.headers).json()
    assert booking["status"] == "cancelled"
    # The marketplace heard of both steps, signed.
    events = receiver.wait_for(2)
    assert all(verify(WEBHOOK_SECRET, h["Mailveil-Signature"], body, time.time())
               for h, body in events)
    assert sorted(json.loads(body)["type"] for _, body in events) == [
        "cancellation.confirmed", "cancellation.requested"]


def _tab_to(page: Page, selector: str, limit: int = 40) -> None:
    """Press Tab until ``selector`` has the focus, as a keyboard user would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} never got the focus in {limit} tabs")


def test_keyboard_only(mailveil: Mailveil, sink: Sink, browser: Browser) -> None:
    b = conversation(mailveil)
    page = _page(browser, mailveil, permissions=["clipboard-read", "clipboard-write"])
    page.goto(mint(mailveil)["url"])
    # The first page reloads once for the browser's time zone, which resets the focus.
    expect(page.locator("footer")).to_contain_text(BANGKOK)
    page.keyboard.press("Enter")  # the sign-in button has the focus
    expect(page).to_have_url(f"http://127.0.0.1:{mailveil.http_port}/portal/bookings")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    _tab_to(page, "#q")
    page.keyboard.type("GYG-1001")
    page.keyboard.press("Enter")
    expect(page.locator("table.bookings tbody tr")).to_have_count(1)
    _tab_to(page, "a[href='/portal/bookings/GYG-1001']")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("GYG-1001")
    _tab_to(page, "button[data-copy]")
    page.keyboard.press("Enter")
    assert page.evaluate("navigator.clipboard.readText()") == b["customer_relay_address"]
    # Every focused control shows where the focus is.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"


def test_phone_width(mailveil: Mailveil, sink: Sink, browser: Browser) -> None:
    conversation(mailveil)
    page = _page(browser, mailveil, viewport={"width": 390, "height": 844}, is_mobile=True,
                 has_touch=True, device_scale_factor=2)
    page.goto(mint(mailveil)["url"])
    page.locator("form[action^='/portal/link/'] button").tap()
    expect(page.locator("footer")).to_contain_text(BANGKOK)  # after the time zone's reload
    for path in ("/portal/bookings", "/portal/bookings/GYG-1001"):
        page.goto(path)
        # Nothing wider than the screen: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    expect(page.locator("button[data-copy]")).to_be_visible()
    box = page.locator("button[data-copy]").bounding_box()
    assert box is not None and box["height"] >= 44  # a finger's target
    save_screenshot(page, "portal-booking-phone")
