"""Webhook events: signed as README says, retried after a failure, each step of a
cancellation told, against ``mailveil serve`` and a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mailveil.store import portal as store
from mailveil.store.db import make_engine, session_factory
from mailveil.web.webhooks import FIRST_RETRY, MAX_RETRY, backoff, signature
from tests.conftest import Mailveil
from tests.support.client import CUSTOMER, mail, register, send
from tests.support.portal import csrf, link_in, sign_in, wait_for_mail
from tests.support.sink import Sink
from tests.support.webhooks import Receiver, receiving, verify

SECRET = "webhook-secret-" + "x" * 32


def test_signature_and_backoff() -> None:
    header = signature(SECRET, 1_800_000_000, b'{"a":1}')
    assert verify(SECRET, header, b'{"a":1}', 1_800_000_010)
    assert not verify(SECRET, header, b'{"a":2}', 1_800_000_010)
    assert not verify("other" + SECRET, header, b'{"a":1}', 1_800_000_010)
    assert not verify(SECRET, header, b'{"a":1}', 1_800_001_000)  # replayed later
    assert [backoff(n) for n in range(3)] == [FIRST_RETRY, FIRST_RETRY * 2, FIRST_RETRY * 4]
    assert backoff(50) == MAX_RETRY


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving(refuse=1) as r:
        yield r


@pytest.fixture
def extra_env(receiver: Receiver) -> dict[str, str]:
    # No MAILVEIL_CONTACT_FORM_URL: notices link to the portal's own contact form.
    return {"MAILVEIL_WEBHOOK_URL": receiver.url, "MAILVEIL_WEBHOOK_SECRET": SECRET,
            "MAILVEIL_CONTACT_FORM_URL": ""}


def test_every_step_of_a_cancellation_reaches_the_marketplace_signed(
        mailveil: Mailveil, sink: Sink, receiver: Receiver, database_url: str) -> None:
    register(mailveil)
    register(mailveil, "GYG-OLD")
    with sign_in(mailveil) as client:
        page = client.get("/portal/bookings/GYG-1001")
        client.post("/portal/bookings/GYG-1001/cancellation",
                    data={"csrf": csrf(page.text), "reason": "Sick"})
    url = link_in(wait_for_mail(sink, CUSTOMER)[0])
    with httpx.Client(timeout=10) as customer:
        question = customer.get(url)
        customer.post(url, data={"csrf": csrf(question.text), "answer": "confirm"})
    # A request nobody answered in time.
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        old = store.supplier_booking(s, "sup-1", "GYG-OLD")
        assert old is not None
        now = datetime.now(UTC)
        store.add_cancellation(s, booking_id=old.id, reason="Rain", now=now - timedelta(days=20),
                               token=secrets.token_urlsafe(32), answer_by=now)
    engine.dispose()

    got = receiver.wait_for(3)
    assert receiver.refused == 1  # the first try failed and was retried
    events = []
    for headers, body in got:
        assert verify(SECRET, headers["Mailveil-Signature"], body, time.time())
        events.append(json.loads(body))
    # In any order: the refused first one came back later.
    assert sorted((e["type"], e["data"]["booking_reference"]) for e in events) == [
        ("cancellation.confirmed", "GYG-1001"), ("cancellation.requested", "GYG-1001"),
        ("cancellation.unanswered", "GYG-OLD")]
    [requested] = [e for e in events if e["type"] == "cancellation.requested"]
    assert requested["data"]["reason"] == "Sick"
    assert len({e["id"] for e in events}) == 3


def test_a_closed_conversations_notice_links_to_a_contact_form_that_files_a_ticket(
        mailveil: Mailveil, sink: Sink, receiver: Receiver) -> None:
    b = register(mailveil, days_from_now=-30)  # its conversation closed weeks ago
    send(mailveil, mail(CUSTOMER, b["supplier_relay_address"], "Lost my hat", "Hi\n"),
         CUSTOMER, [b["supplier_relay_address"]])
    [notice] = wait_for_mail(sink, CUSTOMER)
    url = link_in(notice)
    assert "/portal/contact/" in url
    with httpx.Client(timeout=10) as customer:
        form = customer.get(url)
        assert form.status_code == 200 and "GYG-1001" in form.text
        token = csrf(form.text)
        assert customer.post(url, data={"csrf": token, "message": " "}).status_code == 422
        assert customer.post(url, data={"message": "My hat"}).status_code == 403
        assert customer.get(url[:-3] + "abc").status_code == 404  # a forged link
        done = customer.post(url, data={"csrf": token, "message": "I left my hat on the bus"})
        assert done.status_code == 200 and 'role="status"' in done.text
    [(headers, body)] = receiver.wait_for(1)
    assert verify(SECRET, headers["Mailveil-Signature"], body, time.time())
    event = json.loads(body)
    assert event["type"] == "contact.ticket"
    assert event["data"]["booking_reference"] == "GYG-1001"
    assert (event["data"]["from"], event["data"]["message"]) == (
        "customer", "I left my hat on the bus")
