"""What a supplier does in the portal tests: get a one-time link from the marketplace API,
sign in through it, read the CSRF token a page carries; and a conversation to look at."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage

import httpx

from tests.conftest import Mailveil
from tests.support.client import CUSTOMER, SUPPLIER, archive_until_delivered, mail, register, send
from tests.support.sink import Received, Sink

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
ATTACHMENT = bytes(range(256)) * 4


def base(mv: Mailveil) -> str:
    return f"http://127.0.0.1:{mv.http_port}"


def mint(mv: Mailveil, supplier_id: str = "sup-1") -> dict[str, str]:
    r = httpx.post(f"{mv.api}/suppliers/{supplier_id}/portal-link", headers=mv.headers)
    assert r.status_code == 201, r.text
    body: dict[str, str] = r.json()
    return body


def csrf(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


def use_link(client: httpx.Client, url: str) -> httpx.Response:
    page = client.get(url)
    assert page.status_code == 200, page.text
    return client.post(url, data={"csrf": csrf(page.text)})


@contextmanager
def sign_in(mv: Mailveil, supplier_id: str = "sup-1") -> Iterator[httpx.Client]:
    """A browser signed in as the supplier through a freshly minted link."""
    with httpx.Client(base_url=base(mv), timeout=10) as client:
        r = use_link(client, mint(mv, supplier_id)["url"])
        assert r.status_code == 303 and r.headers["location"] == "/portal/bookings", r.text
        yield client


def conversation(mv: Mailveil, reference: str = "GYG-1001", *,
                 locale: str = "en") -> dict[str, str]:
    """A booking whose thread holds a delivered message of the customer, a refused one of
    the supplier (written to two customers at once) and a delivered one with an attachment."""
    b = register(mv, reference, locale=locale)
    other = register(mv, "OTHER-" + reference, customer="bob@example.org")
    send(mv, mail(CUSTOMER, b["supplier_relay_address"], "Where do we meet?",
                  "Hello, where do we meet?\n"), CUSTOMER, [b["supplier_relay_address"]])
    refused = mail(SUPPLIER, b["customer_relay_address"], "Reminder", "See you at 9.\n",
                   Cc=other["customer_relay_address"])
    send(mv, refused, SUPPLIER, [b["customer_relay_address"], other["customer_relay_address"]])
    with_file = mail(SUPPLIER, b["customer_relay_address"], "Your map", "The map.\n")
    with_file.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream",
                             filename="map.bin")
    send(mv, with_file, SUPPLIER, [b["customer_relay_address"]])
    archive_until_delivered(mv, reference)
    return b


def parsed(received: list[Received]) -> list[EmailMessage]:
    found = []
    for m in received:
        message = message_from_bytes(m.data, policy=policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert isinstance(content, str)
    return content


def wait_for_mail(sink: Sink, address: str, count: int = 1,
                  timeout: float = 30) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    while len(sink.to(address)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(sink.to(address))} of {count} mails to {address}")
        time.sleep(0.05)
    return parsed(sink.to(address))


LINK = re.compile(r"http://127\.0\.0\.1:\d+/portal/(?:link|cancellation|contact)/[A-Za-z0-9_.-]+")


def link_in(message: EmailMessage) -> str:
    found = LINK.search(text_of(message))
    assert found, text_of(message)
    return found.group(0)
