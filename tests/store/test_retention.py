"""Retention purges bodies first and metadata later; verify finds tampered archives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailveil.domain.addresses import Role
from mailveil.domain.booking import Party
from mailveil.domain.states import InboundState, OutboxKind, OutboxState
from mailveil.store import care
from mailveil.store import repository as repo
from mailveil.store.models import (
    ArchiveEntryRow,
    InboundRow,
    OutboundRow,
    QuarantineRow,
    ReviewFlagRow,
)
from mailveil.store.retention import Mismatch, Retention, purge, verify

DAY = timedelta(days=1)
NOW = datetime(2027, 1, 1, tzinfo=UTC)
POLICY = Retention(body=30 * DAY, metadata=365 * DAY)


def message(s: Session, when: datetime, *, state: OutboxState = OutboxState.DELIVERED,
            scan: str = "clean") -> int:
    inbound_id = repo.store_inbound(s, mail_from="a@example.org", rcpt_to=["r@x"],
                                    raw=b"Subject: s\r\n\r\nbody\r\n", scan=scan, now=when)
    s.execute(update(InboundRow).where(InboundRow.id == inbound_id)
              .values(state=InboundState.PROCESSED))
    repo.add_archive_entry(s, repo.ArchiveEntry(inbound_id, None, Role.CUSTOMER, "s", "relayed",
                                                ""), when)
    [outbound_id] = repo.queue_outbounds(s, [repo.NewOutbound(
        kind=OutboxKind.RELAY, inbound_id=inbound_id, booking_id=None, recipient_role=Role.SUPPLIER,
        bounce_token=f"{inbound_id:020x}", mail_from="b@x", rcpt_to="s@example.org",
        message_id="<m@x>", raw=b"To: s\r\n\r\nbody\r\n")], when)
    s.execute(update(OutboundRow).where(OutboundRow.id == outbound_id).values(state=state))
    repo.record_attempts(s, [repo.Attempt(outbound_id, 250, "ok", "delivered")], when)
    return inbound_id


def count(s: Session, table: type) -> int:
    return s.scalar(select(func.count()).select_from(table)) or 0


def test_bodies_go_first_then_metadata(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        recent = message(s, NOW - 10 * DAY)
        old = message(s, NOW - 40 * DAY)
        ancient = message(s, NOW - 400 * DAY)
        waiting = message(s, NOW - 400 * DAY, state=OutboxState.QUEUED)
        message(s, NOW - 40 * DAY, scan="infected: Test.EICAR")
    with sessions() as s, s.begin():
        result = purge(s, POLICY, NOW)
    with sessions() as s:
        by_id = {r.id: r for r in s.scalars(select(InboundRow))}
        assert recent in by_id and by_id[recent].purged_at is None
        assert by_id[old].purged_at == NOW and by_id[old].raw == b""
        assert ancient not in by_id
        assert waiting in by_id  # its copy is still queued
        assert count(s, QuarantineRow) == 0
        assert count(s, ArchiveEntryRow) == 4
        queued = s.scalars(select(OutboundRow).where(OutboundRow.state == OutboxState.QUEUED)).one()
        assert queued.purged_at is None
    assert result.records == 2  # the ancient inbound row and its outbound copy
    with sessions() as s:
        assert list(verify(s)) == []


def test_verify_reports_tampered_rows(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        inbound_id = message(s, NOW)
        s.execute(update(InboundRow).where(InboundRow.id == inbound_id)
                  .values(raw=b"Subject: forged\r\n\r\n"))
    with sessions() as s:
        assert list(verify(s)) == [Mismatch("inbound_messages", inbound_id)]


def test_the_client_address_goes_with_the_body(sessions: sessionmaker[Session]) -> None:
    """A client's IP address is personal data kept only as long as the body it came with."""
    with sessions() as s, s.begin():
        recent, old = (repo.store_inbounds(s, [repo.NewInbound(
            "a@example.org", ["r@x"], b"Subject: s\r\n\r\nbody\r\n", "clean",
            client_address="192.0.2.7", client_helo="mx.example.org")], when)[0]
            for when in (NOW - 10 * DAY, NOW - 40 * DAY))
        s.execute(update(InboundRow).values(state=InboundState.PROCESSED))
    with sessions() as s, s.begin():
        purge(s, POLICY, NOW)
    with sessions() as s:
        clients = {r.id: (r.client_address, r.client_helo) for r in s.scalars(select(InboundRow))}
    assert clients == {recent: ("192.0.2.7", "mx.example.org"), old: (None, None)}


def test_a_flagged_message_goes_with_its_flag_and_a_held_one_stays(
        sessions: sessionmaker[Session]) -> None:
    """A review request's flag is metadata of its message; a held copy waits for care."""
    with sessions() as s, s.begin():
        repo.upsert_supplier(s, id="sup", name="Sunset Tours", email="desk@supplier.example",
                             locale="fr", now=NOW - 400 * DAY)
        booking = repo.create_booking(
            s, reference="R1", supplier_id="sup", customer=Party("Ann", "ann@x.example", "en"),
            activity_start=NOW - 400 * DAY, activity_end=NOW - 399 * DAY, now=NOW - 400 * DAY)
        flagged = message(s, NOW - 400 * DAY)
        held = message(s, NOW - 400 * DAY, state=OutboxState.HELD)
        care.add_flags(s, [care.NewFlag(flagged, booking.id, False, ("tripadvisor",)),
                           care.NewFlag(held, booking.id, True, ("tripadvisor",))],
                       NOW - 400 * DAY)
    with sessions() as s, s.begin():
        purge(s, POLICY, NOW)
    with sessions() as s:
        assert set(s.scalars(select(InboundRow.id))) == {held}
        assert list(s.scalars(select(ReviewFlagRow.inbound_id))) == [held]
        assert s.scalars(select(OutboundRow.purged_at)).one() is None
