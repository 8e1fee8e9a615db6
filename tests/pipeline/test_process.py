"""The processor on SQLite and PostgreSQL: a batch is decided and recorded together, and a
message that breaks (or breaks the batch's transaction) is parked without holding back the
others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import Party
from mailveil.domain.states import InboundState, OutboxKind, OutboxState
from mailveil.domain.verdicts import Outcome
from mailveil.mail.inspect import facts
from mailveil.mail.notices import UndeliverableCause
from mailveil.metrics import QueueCollector
from mailveil.pipeline import compose, process
from mailveil.pipeline.compose import Voice
from mailveil.pipeline.process import Pipeline, Processor
from mailveil.smtp.limits import Rate
from mailveil.store import repository as repo
from mailveil.store.models import ArchiveEntryRow, InboundRow, MessageIdRow, OutboundRow

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
BOOK = AddressBook("reply.example.com", "customer", "local-partner", "bounce", "no-reply")
VOICE = Voice("Marketplace", "{name} via {platform}", True, timedelta(days=7), "")


def poison_aware_sign(raw: bytes) -> bytes:
    if b"poison" in raw:
        raise ValueError("cannot sign this one")
    return b"DKIM-Signature: test\r\n" + raw


def processor(sessions: sessionmaker[Session]) -> Processor:
    return Processor(sessions, Pipeline(BOOK, VOICE, poison_aware_sign, batch=10))


def setup_bookings(sessions: sessionmaker[Session], count: int) -> list[tuple[str, str]]:
    """(customer's address, supplier's relay address) of ``count`` open bookings."""
    with sessions() as s, s.begin():
        repo.upsert_supplier(s, id="sup", name="Sunset Tours", email="desk@supplier.example",
                             locale="fr", now=NOW)
        rows = [repo.create_booking(s, reference=f"B{i}", supplier_id="sup",
                                    customer=Party("Ann Lee", f"ann{i}@customer.example", "en"),
                                    activity_start=NOW, activity_end=NOW + timedelta(days=1),
                                    now=NOW) for i in range(count)]
        return [(f"ann{i}@customer.example", BOOK.relay_address(Role.SUPPLIER, r.supplier_token))
                for i, r in enumerate(rows)]


def accept(sessions: sessionmaker[Session], sender: str, rcpt: str, subject: str,
           extra: str = "") -> int:
    raw = (f"From: Ann Lee <{sender}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '-')}@customer.example>\r\n{extra}\r\n"
           f"Hello, write to me at {sender}.\r\n").encode()
    with sessions() as s, s.begin():
        return repo.store_inbound(s, mail_from=sender, rcpt_to=[rcpt], raw=raw, scan="clean",
                                  now=NOW)


def states(sessions: sessionmaker[Session]) -> dict[int, str]:
    with sessions() as s:
        return dict(s.execute(select(InboundRow.id, InboundRow.state)).all())


def test_batch_is_relayed_and_recorded_in_one_round(sessions: sessionmaker[Session]) -> None:
    envelopes = setup_bookings(sessions, 4)
    ids = [accept(sessions, sender, rcpt, f"hello {i}") for i, (sender, rcpt)
           in enumerate(envelopes * 2)]
    assert processor(sessions).run_once(NOW) == 8
    assert processor(sessions).run_once(NOW) == 0
    assert set(states(sessions).values()) == {"processed"}
    with sessions() as s:
        copies = s.scalars(select(OutboundRow).order_by(OutboundRow.inbound_id)).all()
        outcomes = s.scalars(select(ArchiveEntryRow.outcome)).all()
    assert [c.inbound_id for c in copies] == ids and set(outcomes) == {Outcome.RELAYED}
    for copy, (sender, _) in zip(copies, envelopes * 2, strict=True):
        assert copy.rcpt_to == "desk@supplier.example" and copy.state == "queued"
        assert copy.raw.startswith(b"DKIM-Signature: test\r\n")
        assert sender.encode() not in copy.raw
        assert copy.sha256 == repo.sha256_of(copy.raw)


def test_reference_to_a_message_of_the_same_batch_is_translated(
        sessions: sessionmaker[Session]) -> None:
    [(sender, rcpt)] = setup_bookings(sessions, 1)
    accept(sessions, sender, rcpt, "first")
    accept(sessions, sender, rcpt, "second",
           extra="References: <first@customer.example>\r\n")
    processor(sessions).run_once(NOW)
    with sessions() as s:
        first_copy, second_copy = s.scalars(select(OutboundRow).order_by(OutboundRow.id)).all()
        pairs = s.scalars(select(MessageIdRow)).all()
    assert {p.original_id for p in pairs} == {"<first@customer.example>",
                                              "<second@customer.example>"}
    assert f"References: {first_copy.message_id}\r\n".encode() in second_copy.raw
    assert b"first@customer.example" not in second_copy.raw


def test_a_message_that_fails_is_parked_and_the_batch_goes_on(
        sessions: sessionmaker[Session]) -> None:
    [(sender, rcpt)] = setup_bookings(sessions, 1)
    good = accept(sessions, sender, rcpt, "fine")
    bad = accept(sessions, sender, rcpt, "poison")
    processor(sessions).run_once(NOW)
    assert states(sessions) == {good: "processed", bad: "failed"}
    with sessions() as s:
        failed = s.scalars(select(ArchiveEntryRow).where(ArchiveEntryRow.inbound_id == bad)).one()
        error = s.get(InboundRow, bad)
        copies = s.scalars(select(OutboundRow.inbound_id)).all()
    assert failed.outcome == Outcome.FAILED and "cannot sign" in failed.detail
    assert error is not None and "cannot sign" in (error.error or "")
    assert copies == [good]


def test_a_batch_that_cannot_be_recorded_is_recorded_one_by_one(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every copy gets the same bounce token (unique in the outbox): the batch's transaction
    fails, then the first message is recorded alone and the others are parked as failed."""
    monkeypatch.setattr(process, "new_bounce_token", lambda: "f" * 20)
    envelopes = setup_bookings(sessions, 3)
    ids = [accept(sessions, sender, rcpt, f"hello {i}") for i, (sender, rcpt)
           in enumerate(envelopes)]
    assert processor(sessions).run_once(NOW) == 3
    assert states(sessions) == {ids[0]: "processed", ids[1]: "failed", ids[2]: "failed"}
    with sessions() as s:
        outcomes = dict(s.execute(select(ArchiveEntryRow.inbound_id,
                                         ArchiveEntryRow.outcome)).all())
    assert outcomes == {ids[0]: Outcome.RELAYED, ids[1]: Outcome.FAILED,
                        ids[2]: Outcome.FAILED}


def test_a_message_another_worker_finished_is_not_recorded_twice(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """Our lease ran out while we worked and another worker processed the message."""
    [(sender, rcpt)] = setup_bookings(sessions, 1)
    inbound_id = accept(sessions, sender, rcpt, "slow")

    def facts_meanwhile_done_elsewhere(raw: bytes) -> object:
        with sessions() as s, s.begin():
            row = s.get(InboundRow, inbound_id)
            assert row is not None
            row.state = "processed"
        return facts(raw)

    monkeypatch.setattr(process, "facts", facts_meanwhile_done_elsewhere)
    assert processor(sessions).run_once(NOW) == 1
    with sessions() as s:
        assert s.scalars(select(OutboundRow)).all() == []
        assert s.scalars(select(ArchiveEntryRow)).all() == []


def relay_copies(sessions: sessionmaker[Session]) -> list[OutboundRow]:
    with sessions() as s:
        return list(s.scalars(select(OutboundRow).where(OutboundRow.kind == OutboxKind.RELAY)
                              .order_by(OutboundRow.id)))


def report_undeliverable(sessions: sessionmaker[Session], outbound_id: int) -> None:
    """What delivery does when the recipient's server refuses a copy for good."""
    with sessions() as s, s.begin():
        assert repo.move_outbound(s, outbound_id, OutboxState.UNDELIVERABLE, NOW,
                                  why=UndeliverableCause.ADDRESS_INVALID, tried=True)


def owed(sessions: sessionmaker[Session]) -> float:
    """The ``mailveil_notices_owed`` gauge, as /metrics shows it."""
    [gauge] = [m for m in QueueCollector(sessions).collect() if m.name == "mailveil_notices_owed"]
    return gauge.samples[0].value


def test_the_sender_of_an_undeliverable_copy_is_told_after_delivery(
        sessions: sessionmaker[Session]) -> None:
    [(sender, rcpt)] = setup_bookings(sessions, 1)
    inbound_id = accept(sessions, sender, rcpt, "lunch")
    processor(sessions).run_once(NOW)
    [copy] = relay_copies(sessions)
    report_undeliverable(sessions, copy.id)
    assert owed(sessions) == 1
    assert processor(sessions).run_once(NOW) == 1
    assert processor(sessions).run_once(NOW) == 0  # told once
    assert owed(sessions) == 0
    with sessions() as s:
        relay = s.get(OutboundRow, copy.id)
        [notice] = s.scalars(select(OutboundRow).where(OutboundRow.kind == OutboxKind.NOTICE))
        entries = s.execute(select(ArchiveEntryRow.outcome, ArchiveEntryRow.detail)
                            .where(ArchiveEntryRow.inbound_id == inbound_id)).all()
    assert relay is not None and relay.state == OutboxState.FAILED
    assert (notice.rcpt_to, notice.mail_from, notice.state) == (sender, "", OutboxState.QUEUED)
    assert b"lunch" in notice.raw and notice.inbound_id == inbound_id
    assert set(entries) == {(Outcome.RELAYED, ""),
                            (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.ADDRESS_INVALID)}


def test_a_permanent_bounce_returns_the_copy_and_its_sender_is_told(
        sessions: sessionmaker[Session]) -> None:
    [(sender, rcpt)] = setup_bookings(sessions, 1)
    accept(sessions, sender, rcpt, "dinner")
    processor(sessions).run_once(NOW)
    [copy] = relay_copies(sessions)
    dsn = bounce_for(copy.mail_from)
    with sessions() as s, s.begin():
        repo.store_inbound(s, mail_from="", rcpt_to=[copy.mail_from], raw=dsn, scan="clean",
                           now=NOW)
    processor(sessions).run_once(NOW)
    with sessions() as s:
        relay = s.get(OutboundRow, copy.id)
        notices = s.scalars(select(OutboundRow.rcpt_to)
                            .where(OutboundRow.kind == OutboxKind.NOTICE)).all()
        outcomes = s.scalars(select(ArchiveEntryRow.outcome)).all()
    assert relay is not None and relay.state == OutboxState.BOUNCED
    assert relay.last_error == UndeliverableCause.MAILBOX_FULL
    assert notices == [sender]
    assert sorted(outcomes) == sorted([Outcome.RELAYED, Outcome.BOUNCE_RECORDED,
                                       Outcome.REFUSED_UNDELIVERABLE])


def bounce_for(verp: str) -> bytes:
    return (f"From: MAILER-DAEMON@mx.supplier.example\r\nTo: {verp}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nMailbox full.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.supplier.example\r\n\r\n"
            "Final-Recipient: rfc822; desk@supplier.example\r\nAction: failed\r\n"
            "Status: 5.2.2\r\n--B--\r\n").encode()


def test_a_bounce_that_breaks_the_parser_parks_only_itself(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    [(sender, rcpt)] = setup_bookings(sessions, 1)
    accept(sessions, sender, rcpt, "first")
    processor(sessions).run_once(NOW)
    [copy] = relay_copies(sessions)

    def parse_report(raw: bytes) -> None:
        raise ValueError("the bounce parser broke")

    monkeypatch.setattr(process, "parse_report", parse_report)
    with sessions() as s, s.begin():
        bounce = repo.store_inbound(s, mail_from="", rcpt_to=[copy.mail_from],
                                    raw=bounce_for(copy.mail_from), scan="clean", now=NOW)
    good = accept(sessions, sender, rcpt, "second")
    processor(sessions).run_once(NOW)
    assert {i: st for i, st in states(sessions).items() if i in (bounce, good)} == {
        bounce: InboundState.FAILED, good: InboundState.PROCESSED}
    with sessions() as s:
        row = s.get(InboundRow, bounce)
    assert row is not None and "the bounce parser broke" in (row.error or "")
    assert [c.state for c in relay_copies(sessions)] == [OutboxState.QUEUED] * 2


def test_a_notice_that_cannot_be_composed_parks_its_copy(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    envelopes = setup_bookings(sessions, 2)
    for i, (sender, rcpt) in enumerate(envelopes):
        accept(sessions, sender, rcpt, f"poison {i}" if i == 0 else f"fine {i}")
    processor_ = Processor(sessions, Pipeline(BOOK, VOICE, lambda raw: raw, batch=10))
    processor_.run_once(NOW)
    bad, good = relay_copies(sessions)
    real_notice = compose.notice

    def notice(**kw: Any) -> tuple[bytes, str]:
        if b"poison" in kw["original"]:
            raise RuntimeError("composing broke")
        return real_notice(**kw)

    monkeypatch.setattr(compose, "notice", notice)
    for copy in (bad, good):
        report_undeliverable(sessions, copy.id)
    assert processor_.run_once(NOW) == 2
    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(OutboundRow))}
        failed = s.scalars(select(ArchiveEntryRow.detail)
                           .where(ArchiveEntryRow.outcome == Outcome.FAILED)).all()
    assert rows[bad.id].state == OutboxState.FAILED
    assert "composing broke" in (rows[bad.id].last_error or "")
    assert len(failed) == 1 and "composing broke" in failed[0]
    assert rows[good.id].state == OutboxState.FAILED  # explained
    assert [r.rcpt_to for r in rows.values() if r.kind == OutboxKind.NOTICE] == [
        envelopes[1][0]]


def test_notices_to_one_party_have_a_loop_guard_of_their_own(
        sessions: sessionmaker[Session]) -> None:
    """Someone (or an auto-responder) writing on to a closed conversation gets at most
    ``notice_rate`` notices in its window, counted from the outbox across batches."""
    [(sender, rcpt)] = setup_bookings(sessions, 1)
    guarded = Processor(sessions, Pipeline(BOOK, VOICE, poison_aware_sign, batch=10,
                                           notice_rate=Rate(2, 3600)))
    closed = NOW + timedelta(days=30)

    def notices() -> int:
        with sessions() as s:
            return len(s.scalars(select(OutboundRow.id).where(
                OutboundRow.kind == OutboxKind.NOTICE)).all())

    for i in range(3):
        accept(sessions, sender, rcpt, f"too late {i}")
    guarded.run_once(closed)
    assert notices() == 2
    accept(sessions, sender, rcpt, "too late again")
    guarded.run_once(closed + timedelta(minutes=59))  # the next batch counts the outbox
    assert notices() == 2
    accept(sessions, sender, rcpt, "an hour on")
    guarded.run_once(closed + timedelta(minutes=61))
    assert notices() == 3
    with sessions() as s:
        outcomes = s.scalars(select(ArchiveEntryRow.outcome)).all()
    assert outcomes == [Outcome.REFUSED_EXPIRED] * 5  # every refusal is archived all the same
