"""Review requests through processing and the store, on SQLite and PostgreSQL: a supplier's
message asking for a review elsewhere is flagged (delivered) or held (kept in the outbox
for care), a held one is released as composed or refused and its sender told in their
language, and each flag is in care's queue and, with webhooks, a ``review.flagged`` event."""

from __future__ import annotations

import json
from datetime import timedelta
from email import message_from_bytes, policy

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailveil.domain.addresses import Role
from mailveil.domain.booking import Party
from mailveil.domain.review import ReviewAction, ReviewPolicy
from mailveil.domain.states import OutboxKind, OutboxState
from mailveil.domain.verdicts import Outcome
from mailveil.pipeline.process import Pipeline, Processor
from mailveil.store import care
from mailveil.store import repository as repo
from mailveil.store.models import ArchiveEntryRow, OutboundRow, ReviewFlagRow, WebhookEventRow
from tests.pipeline.test_process import BOOK, NOW, VOICE, poison_aware_sign

SUPPLIER = "desk@supplier.example"
CUSTOMER = "ann@customer.example"
ASKING = "Thank you! Please leave us a review on https://www.tripadvisor.com/x"


def processor(sessions: sessionmaker[Session], action: ReviewAction,
              webhooks: bool = True) -> Processor:
    return Processor(sessions, Pipeline(BOOK, VOICE, poison_aware_sign, batch=10,
                                        review=ReviewPolicy(action), webhooks=webhooks))


def booking(sessions: sessionmaker[Session]) -> tuple[int, str, str]:
    """(booking id, the customer's relay address, the supplier's relay address)."""
    with sessions() as s, s.begin():
        repo.upsert_supplier(s, id="sup", name="Sunset Tours", email=SUPPLIER, locale="fr",
                             now=NOW)
        row = repo.create_booking(s, reference="R1", supplier_id="sup",
                                  customer=Party("Ann Lee", CUSTOMER, "en"),
                                  activity_start=NOW, activity_end=NOW + timedelta(days=1),
                                  now=NOW)
        return (row.id, BOOK.relay_address(Role.CUSTOMER, row.customer_token),
                BOOK.relay_address(Role.SUPPLIER, row.supplier_token))


def accept(sessions: sessionmaker[Session], sender: str, rcpt: str, body: str) -> int:
    raw = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: After the tour\r\n"
           f"Message-ID: <{abs(hash(body))}@example.org>\r\n\r\n{body}\r\n").encode()
    with sessions() as s, s.begin():
        return repo.store_inbound(s, mail_from=sender, rcpt_to=[rcpt], raw=raw, scan="clean",
                                  now=NOW)


def copies(sessions: sessionmaker[Session]) -> list[OutboundRow]:
    with sessions() as s:
        return list(s.scalars(select(OutboundRow).order_by(OutboundRow.id)))


def events(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as s:
        return [json.loads(body) for body in s.scalars(select(WebhookEventRow.body))]


def test_flag_delivers_and_queues_for_care(sessions: sessionmaker[Session]) -> None:
    booking_id, customer_relay, _ = booking(sessions)
    inbound_id = accept(sessions, SUPPLIER, customer_relay, ASKING)
    assert processor(sessions, ReviewAction.FLAG).run_once(NOW) == 1
    [copy] = copies(sessions)
    assert copy.state == OutboxState.QUEUED and copy.rcpt_to == CUSTOMER
    with sessions() as s:
        [flag] = s.scalars(select(ReviewFlagRow)).all()
        [entry] = s.scalars(select(ArchiveEntryRow)).all()
        [item] = care.queue(s, NOW)
    assert (flag.inbound_id, flag.booking_id, flag.held) == (inbound_id, booking_id, False)
    assert flag.found == ["tripadvisor", "leave us a review"]
    assert entry.outcome == Outcome.RELAYED
    assert entry.detail == "flagged for care: review request (tripadvisor; leave us a review)"
    assert (item.kind, item.state, item.summary) == (care.QueueKind.REVIEW, "flagged",
                                                     "After the tour")
    [event] = events(sessions)
    assert event["type"] == "review.flagged"
    assert event["data"] == {"booking_reference": "R1", "message": inbound_id,
                             "action": "flag", "found": ["tripadvisor", "leave us a review"]}


def test_customers_and_ordinary_messages_are_not_flagged(
        sessions: sessionmaker[Session]) -> None:
    _, customer_relay, supplier_relay = booking(sessions)
    accept(sessions, CUSTOMER, supplier_relay, ASKING)  # the customer may mention any site
    accept(sessions, SUPPLIER, customer_relay, "See you at 9 at the pier.")
    assert processor(sessions, ReviewAction.HOLD).run_once(NOW) == 2
    assert {c.state for c in copies(sessions)} == {OutboxState.QUEUED}
    with sessions() as s:
        assert s.scalars(select(ReviewFlagRow)).all() == []
    assert events(sessions) == []


def test_held_copy_waits_and_is_released_as_composed(sessions: sessionmaker[Session]) -> None:
    booking_id, customer_relay, _ = booking(sessions)
    inbound_id = accept(sessions, SUPPLIER, customer_relay, ASKING)
    processor(sessions, ReviewAction.HOLD, webhooks=False).run_once(NOW)
    [held] = copies(sessions)
    assert held.state == OutboxState.HELD and held.kind == OutboxKind.RELAY
    assert events(sessions) == []  # no webhook URL, no event
    later = NOW + timedelta(hours=2)
    with sessions() as s, s.begin():
        assert repo.claim_outbound(s, limit=10, now=later, lease=timedelta(minutes=1)) == []
        agent = care.add_agent(s, "agent@care.example", NOW)
        [item] = care.queue(s, later)
        assert item.state == "held"
        # A held message is released or refused, not closed.
        assert not care.close(s, care.QueueKind.REVIEW, item.id, agent.id, "seen", later)
        flag = care.decide_held(s, item.id, True, agent.id, "a platform review", later)
        assert flag is not None and flag.inbound_id == inbound_id
    with sessions() as s, s.begin():
        # Decided once: a second agent's decision finds nothing to move.
        assert care.decide_held(s, item.id, False, agent.id, "too late", later) is None
        assert care.queue(s, later) == []
        [due] = repo.claim_outbound(s, limit=10, now=later, lease=timedelta(minutes=1))
    [released] = copies(sessions)
    assert released.state == OutboxState.QUEUED and due.raw == held.raw
    assert released.sha256 == held.sha256 and released.booking_id == booking_id


def test_refused_copy_is_withheld_and_its_sender_told_in_their_language(
        sessions: sessionmaker[Session]) -> None:
    _, customer_relay, _ = booking(sessions)
    accept(sessions, SUPPLIER, customer_relay, ASKING)
    runner = processor(sessions, ReviewAction.HOLD)
    runner.run_once(NOW)
    with sessions() as s, s.begin():
        agent = care.add_agent(s, "agent@care.example", NOW)
        [item] = care.queue(s, NOW)
        assert care.decide_held(s, item.id, False, agent.id, "Tripadvisor link", NOW)
    [refused] = copies(sessions)
    assert refused.state == OutboxState.REFUSED
    assert runner.run_once(NOW) == 1  # the notice is owed, composed by processing
    relay, notice = copies(sessions)
    assert relay.state == OutboxState.WITHHELD
    assert notice.kind == OutboxKind.NOTICE and notice.rcpt_to == SUPPLIER
    told = message_from_bytes(notice.raw, policy=policy.default)
    human = told.get_body(("plain",))
    assert human is not None and "Demande d\u2019avis sur un autre site" in human.get_content()
    assert "Diagnostic-Code: smtp; 550 5.7.1 Review request refused by policy" in (
        notice.raw.decode())
    with sessions() as s:
        outcomes = list(s.scalars(select(ArchiveEntryRow.outcome).order_by(ArchiveEntryRow.id)))
    assert outcomes == [Outcome.RELAYED, Outcome.REFUSED_REVIEW]
    assert [e["data"]["action"] for e in events(sessions)] == ["hold"]  # type: ignore[index]


def test_flagged_item_is_closed_with_a_note_and_cannot_be_released(
        sessions: sessionmaker[Session]) -> None:
    _, customer_relay, _ = booking(sessions)
    accept(sessions, SUPPLIER, customer_relay, "Merci ! Laissez-nous un avis.")
    processor(sessions, ReviewAction.FLAG).run_once(NOW)
    with sessions() as s, s.begin():
        agent = care.add_agent(s, "agent@care.example", NOW)
        [item] = care.queue(s, NOW)
        assert care.decide_held(s, item.id, True, agent.id, "no", NOW) is None
        assert care.close(s, care.QueueKind.REVIEW, item.id, agent.id, "told them", NOW)
        assert care.queue(s, NOW) == []
