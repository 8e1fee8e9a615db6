"""Expensive input (issue 16, item 7) against a real ``mailveil serve``, on SQLite and
PostgreSQL: each shape of bench/expensive.py is relayed or explained to its sender, the
content of an undecodable part arrives unchanged, and while copies of it are being
processed another client's whole SMTP transaction completes.

"While" is checked by order, not by time: a copy is seen claimed by the worker and not
finished before the other client starts and still unfinished after its ``250``. In
``serve`` the worker shares the process with the listener; had processing held the event
loop, no transaction could complete inside that window.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from bench import expensive
from mailveil.domain.states import InboundState
from mailveil.mail.mime import Entity, parse
from mailveil.store.models import ArchiveEntryRow, InboundRow, OutboundRow
from tests.conftest import RELAY_DOMAIN, Mailveil
from tests.support.client import CUSTOMER, SUPPLIER, mail, register, send
from tests.support.sink import Sink

DEADLINE = 120.0  # seconds for any one wait below; the test waits for conditions
PROCESSING_DEADLINE = 900.0  # a copy over its CPU budget takes that budget and more, each
MB = 1_000_000
FLOOD_BYTES = 2 * MB  # the size of the copies sent until one is caught being processed

SHAPES = {  # the sizes measured in the issue
    "punycode part": 2 * MB, "punycode subject": 818_000, "folded subject": 2 * MB,
    "folded cc": 2 * MB, "tiny parts": 2_100_000, "idna part": 212, "not base64": 2_000,
}
UNDECODABLE = ("punycode part", "idna part", "not base64")  # relayed part for part as sent


@pytest.fixture
def extra_env() -> dict[str, str]:
    """A budget a few seconds long, so that a shape over it is parked within the test; the
    copies sent until the order holds are far more than one sender's rate limits allow."""
    return {"MAILVEIL_CPU_BUDGET_SECONDS": "2", "MAILVEIL_RATE_SENDER": "10000/3600",
            "MAILVEIL_SMTP_CONNECT_RATE": "10000/60", "MAILVEIL_RATE_NOTICES": "10000/3600"}


@dataclass
class Relay:
    mv: Mailveil
    sink: Sink
    engine: Engine
    relay: str  # the supplier's relay address

    def submit(self, raw: bytes, mail_from: str, rcpt: str) -> int:
        """The inbound id of ``raw``, once answered 250."""
        with smtplib.SMTP("127.0.0.1", self.mv.smtp_port, timeout=DEADLINE) as smtp:
            smtp.ehlo("client.example")
            smtp.mail(mail_from)
            smtp.rcpt(rcpt)
            code, reply = smtp.data(raw)
        assert code == 250, reply
        return int(reply.rsplit(b" ", 1)[1])

    def states(self, ids: list[int]) -> dict[int, tuple[str, str | None]]:
        with self.engine.connect() as c:
            rows = c.execute(select(InboundRow.id, InboundRow.state, InboundRow.lease_holder)
                             .where(InboundRow.id.in_(ids))).all()
        return {row.id: (row.state, row.lease_holder) for row in rows}

    def being_processed(self, ids: list[int]) -> set[int]:
        return {i for i, (state, holder) in self.states(ids).items()
                if state == InboundState.RECEIVED and holder is not None}

    def finished(self, ids: list[int]) -> bool:
        return all(state != InboundState.RECEIVED for state, _ in self.states(ids).values())

    def outcome(self, inbound_id: int) -> tuple[list[str], list[OutboundRow]]:
        with Session(self.engine) as s:
            outcomes = s.scalars(select(ArchiveEntryRow.outcome)
                                 .where(ArchiveEntryRow.inbound_id == inbound_id)).all()
            copies = s.scalars(select(OutboundRow).where(OutboundRow.inbound_id == inbound_id)
                               ).all()
            s.expunge_all()
        return list(outcomes), list(copies)


@pytest.fixture
def relay(mailveil: Mailveil, sink: Sink, database_url: str) -> Iterator[Relay]:
    addresses = register(mailveil, "GYG-EXPENSIVE")
    engine = create_engine(database_url)
    try:
        yield Relay(mailveil, sink, engine, addresses["supplier_relay_address"])
    finally:
        engine.dispose()


def wait_until(condition: object, what: str, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def flooding(relay: Relay, raw: bytes, mail_from: str, rcpt: str) -> Iterator[list[int]]:
    """Copies of ``raw`` sent one after the other until the block ends; their ids."""
    sent: list[int] = []
    stop = threading.Event()

    def send_copies() -> None:
        # Bounded below the test's sender rate.
        while not stop.is_set() and len(sent) < 5000:
            sent.append(relay.submit(raw, mail_from, rcpt))

    sender = threading.Thread(target=send_copies)
    sender.start()
    try:
        yield sent
    finally:
        stop.set()
        sender.join()


def transaction_completes_while_processing(relay: Relay, raw: bytes, mail_from: str,
                                           rcpt: str) -> list[int]:
    """Send copies of ``raw`` until another client's transaction is seen to complete while
    one of them is being processed; the ids of the copies sent."""
    other = mail(CUSTOMER, relay.relay, "meanwhile", "A short one.").as_bytes()
    deadline = time.monotonic() + DEADLINE
    with flooding(relay, raw, mail_from, rcpt) as sent:
        while True:
            assert time.monotonic() < deadline, "no transaction completed during processing"
            busy = relay.being_processed(list(sent))
            if not busy:
                time.sleep(0.005)
                continue
            relay.submit(other, CUSTOMER, relay.relay)
            if relay.being_processed(list(busy)):
                break
    wait_until(lambda: relay.finished(sent), "the copies to be processed", PROCESSING_DEADLINE)
    return sent


def leaves(entity: Entity) -> list[bytes]:
    return [e.body for e in entity.walk() if not e.multipart]


@pytest.mark.parametrize("name", list(SHAPES))
def test_expensive_shape_is_relayed_or_explained(relay: Relay, name: str) -> None:
    shape = expensive.SHAPES[name]
    # Copies large enough to be caught in flight: the 212-byte idna probe is processed in
    # microseconds, too fast for any number of copies to be seen being processed.
    flooded = shape(CUSTOMER, relay.relay, max(SHAPES[name], FLOOD_BYTES))
    sent = transaction_completes_while_processing(relay, flooded, CUSTOMER, relay.relay)
    assert_relayed_or_explained(relay, name, flooded, sent[0])
    probe = shape(CUSTOMER, relay.relay, SHAPES[name])
    if probe != flooded:  # the size measured in the issue, too
        inbound = relay.submit(probe, CUSTOMER, relay.relay)
        wait_until(lambda: relay.finished([inbound]), "the probe to be processed",
                   PROCESSING_DEADLINE)
        assert_relayed_or_explained(relay, name, probe, inbound)


def assert_relayed_or_explained(relay: Relay, name: str, raw: bytes, inbound: int) -> None:
    outcomes, copies = relay.outcome(inbound)
    kinds = sorted(str(copy.kind) for copy in copies)
    if "relayed" in outcomes:
        assert kinds == ["relay"]
        assert copies[0].rcpt_to == SUPPLIER
        if name in UNDECODABLE:
            assert leaves(parse(raw))[0] in leaves(parse(copies[0].raw))
    else:
        assert name not in UNDECODABLE
        assert "refused_too_complex" in outcomes, outcomes
        assert kinds == ["notice"] and copies[0].rcpt_to == CUSTOMER
        assert b"too complex" in copies[0].raw
    wait_until(lambda: relay.sink.to(copies[0].rcpt_to), "the copy to arrive")


def test_delivery_report_to_a_verp_address(relay: Relay) -> None:
    """40,000 recipient groups (4.9 MB) to the bounce address of a relayed copy."""
    send(relay.mv, mail(CUSTOMER, relay.relay, "first", "Hello"), CUSTOMER, [relay.relay])
    relay.sink.wait_for(1, timeout=DEADLINE)
    verp = relay.sink.messages[0].mail_from
    assert verp.endswith("@" + RELAY_DOMAIN)
    raw = expensive.delivery_report(CUSTOMER, verp, 4_900_000)
    sent = transaction_completes_while_processing(relay, raw, "", verp)
    outcomes, _ = relay.outcome(sent[0])
    assert outcomes == ["bounce_recorded"]
