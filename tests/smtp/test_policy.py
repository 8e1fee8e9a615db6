"""The Postfix policy service over a real socket and a real store (SQLite and PostgreSQL):
it refuses at RCPT exactly what the listener's gate refuses, and answers many requests on
one connection, as Postfix sends them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session, sessionmaker

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import Party
from mailveil.smtp import policy, replies
from mailveil.smtp.backend import StoreBackend
from mailveil.smtp.gate import Lookup
from mailveil.smtp.vouched import Vouched
from mailveil.store import repository as repo

BOOK = AddressBook("reply.example.com")
CUSTOMER, SUPPLIER = "ann@customer.example", "ops@sunny.example"


def request(recipient: str, sender: str, state: str = "RCPT") -> bytes:
    """A request as Postfix 3.7 sends it (abridged: it sends some thirty attributes)."""
    attributes = {"request": "smtpd_access_policy", "protocol_state": state,
                  "protocol_name": "ESMTP", "client_address": "192.0.2.7",
                  "client_name": "mx.customer.example", "helo_name": "mx.customer.example",
                  "sender": sender, "recipient": recipient, "recipient_count": "0",
                  "queue_id": "", "instance": "123.456.7", "size": "0"}
    return b"".join(f"{k}={v}\n".encode() for k, v in attributes.items()) + b"\n"


def booking(sessions: sessionmaker[Session]) -> str:
    """A booking open now; returns its supplier relay address."""
    now = datetime.now(UTC)
    with sessions() as s, s.begin():
        repo.upsert_supplier(s, id="sup", name="Sunny", email=SUPPLIER, locale="fr", now=now)
        row = repo.create_booking(s, reference="R1", supplier_id="sup",
                                  customer=Party("Ann", CUSTOMER, "en"),
                                  activity_start=now + timedelta(days=1),
                                  activity_end=now + timedelta(days=1, hours=3), now=now)
        return BOOK.relay_address(Role.SUPPLIER, row.supplier_token)


async def ask(lookup: Callable[[str], Lookup], *requests: bytes, vouched: Vouched | None = None
              ) -> list[bytes]:
    """The answers of a running service to ``requests``, sent on one connection."""
    server = await policy.start("127.0.0.1", 0, lookup,
                                Vouched() if vouched is None else vouched)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for r in requests:
            writer.write(r)
            answers.append(await asyncio.wait_for(reader.readuntil(b"\n\n"), 10))
        writer.close()
        return answers
    finally:
        server.close()


def test_the_gates_verdicts_reach_postfix(sessions: sessionmaker[Session]) -> None:
    relay = booking(sessions)
    backend = StoreBackend(sessions, BOOK)
    unknown_before = refused("550 5.1.1")
    vouched = Vouched()
    answers = asyncio.run(ask(
        backend.lookup,
        request(relay, CUSTOMER),
        request(relay, "mallory@elsewhere.example"),
        request("customer-000000000000@reply.example.com", CUSTOMER),
        request(relay, ""),
        request(relay, CUSTOMER, state="END-OF-MESSAGE"), vouched=vouched))
    assert answers == [b"action=DUNNO\n\n",
                       f"action={replies.S550_NOT_PARTY}\n\n".encode(),
                       f"action={replies.S550_UNKNOWN}\n\n".encode(),
                       f"action={replies.S550_NULL_SENDER}\n\n".encode(),
                       b"action=DUNNO\n\n"]
    assert refused("550 5.1.1") == unknown_before + 1  # counted as the listener counts
    # Only the accepted recipient's lookup is left for the listener, under its envelope.
    assert len(vouched) == 1
    kept = vouched.get(CUSTOMER, relay)
    assert kept is not None and kept.booking is not None and kept.booking.reference == "R1"


def refused(code: str) -> float:
    return REGISTRY.get_sample_value("mailveil_rcpt_refused_total", {"code": code}) or 0.0


def test_a_store_that_cannot_answer_defers() -> None:
    def down(address: str) -> Lookup:
        raise OSError("database unavailable")

    [answer] = asyncio.run(ask(down, request("customer-1@reply.example.com", CUSTOMER)))
    assert answer == f"action={replies.S451_STORE_DOWN}\n\n".encode()


@pytest.mark.parametrize("garbage", [b"hello\n\n", b"request=smtpd_access_policy\nx\n\n",
                                     b"request=other\n\n", b"a=" + b"x" * 9000 + b"\n\n"])
def test_a_client_that_is_not_postfix_is_hung_up_on(garbage: bytes) -> None:
    async def run() -> bytes:
        server = await policy.start("127.0.0.1", 0, lambda a: Lookup(None), Vouched())
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            server.close()

    assert asyncio.run(run()) == b""


def test_parse_request_keeps_equals_signs_in_values() -> None:
    assert policy.parse_request([b"request=smtpd_access_policy", b"sender=a=b@x.example"]) == {
        "request": "smtpd_access_policy", "sender": "a=b@x.example"}


def test_cost_per_rcpt(sessions: sessionmaker[Session]) -> None:
    """Prints the time per request on one connection (a store lookup each); the figure in
    docs/architecture.md comes from here. No assertion on speed: machines differ."""
    relay = booking(sessions)
    backend = StoreBackend(sessions, BOOK)
    count = 500
    started = time.perf_counter()
    answers = asyncio.run(ask(backend.lookup, *[request(relay, CUSTOMER)] * count))
    elapsed = time.perf_counter() - started
    assert set(answers) == {b"action=DUNNO\n\n"}
    print(f"policy: {elapsed / count * 1e3:.2f} ms per RCPT ({sessions.kw['bind'].dialect.name})")
