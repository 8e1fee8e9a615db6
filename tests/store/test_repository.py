"""Repository functions on SQLite and PostgreSQL: claims, leases, quarantine, state moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mailveil.domain.booking import Party
from mailveil.domain.states import (
    INBOUND_MOVES,
    OUTBOX_MOVES,
    InboundState,
    OutboxKind,
    OutboxState,
)
from mailveil.domain.verdicts import Outcome
from mailveil.store import repository as repo
from mailveil.store.models import ArchiveEntryRow, InboundRow, OutboundRow, QuarantineRow

NOW = datetime(2026, 5, 1, tzinfo=UTC)
RAW = b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody with EICAR-like payload\r\n"


def test_booking_tokens_are_unique_and_found(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        repo.upsert_supplier(s, id="s", name="S", email="s@example.org", locale="fr", now=NOW)
        rows = [repo.create_booking(s, reference=f"R{i}", supplier_id="s",
                                    customer=Party("C", f"c{i}@example.org", "en"),
                                    activity_start=NOW, activity_end=NOW, now=NOW)
                for i in range(50)]
        tokens = {r.customer_token for r in rows} | {r.supplier_token for r in rows}
        assert len(tokens) == 100
    with sessions() as s:
        from mailveil.domain.addresses import Role

        found = repo.booking_by_token(s, Role.SUPPLIER, rows[7].supplier_token)
        assert found is not None and found.booking.reference == "R7"
        assert repo.booking_by_token(s, Role.CUSTOMER, rows[7].supplier_token) is None


def test_inbound_claim_leases_and_expires(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        ids = [repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW, scan="clean",
                                  now=NOW) for _ in range(3)]
    with sessions() as s, s.begin():
        first = repo.claim_inbound(s, limit=2, now=NOW, lease=timedelta(minutes=5))
    with sessions() as s, s.begin():
        second = repo.claim_inbound(s, limit=5, now=NOW, lease=timedelta(minutes=5))
    assert [c.id for c in first] == ids[:2]
    assert [c.id for c in second] == ids[2:]
    with sessions() as s, s.begin():
        later = repo.claim_inbound(s, limit=5, now=NOW + timedelta(minutes=6),
                                   lease=timedelta(minutes=5))
    assert sorted(c.id for c in later) == ids
    assert later[0].raw == RAW and later[0].rcpt_to == ["b@y"] and later[0].scan == "clean"


def test_infected_message_goes_to_quarantine(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                        scan="infected: Test.EICAR", now=NOW)
    with sessions() as s:
        row = s.get(InboundRow, inbound_id)
        assert row is not None
        assert row.raw == b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\n"
        [q] = s.query(QuarantineRow).all()
        assert q.raw == RAW and q.findings == "infected: Test.EICAR"


def test_archive_subject_keeps_only_printable_text(sessions: sessionmaker[Session]) -> None:
    from mailveil.store.models import ArchiveEntryRow

    with sessions() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                        scan="clean", now=NOW)
        repo.add_archive_entry(s, repo.ArchiveEntry(inbound_id, None, None, "a\0b\r\nc",
                                                    "relayed", ""), NOW)
    with sessions() as s:
        assert s.query(ArchiveEntryRow).one().subject == "a b  c"


def test_claims_stop_at_the_batch_byte_budget(sessions: sessionmaker[Session],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repo, "BATCH_BYTES", 2 * len(RAW))
    with sessions() as s, s.begin():
        ids = [repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW, scan="clean",
                                  now=NOW) for _ in range(5)]
        repo.queue_outbounds(s, [repo.NewOutbound(OutboxKind.NOTICE, i, None, None, f"{i:020x}",
                                                  "", "r@x", f"<{i}@x>", RAW) for i in ids], NOW)
    lease = timedelta(minutes=5)
    with sessions() as s, s.begin():
        assert [c.id for c in repo.claim_inbound(s, limit=5, now=NOW, lease=lease)] == ids[:2]
        assert len(repo.claim_outbound(s, limit=5, now=NOW, lease=lease)) == 2
    monkeypatch.setattr(repo, "BATCH_BYTES", 1)  # a message above the budget still goes alone
    with sessions() as s, s.begin():
        assert [c.id for c in repo.claim_inbound(s, limit=5, now=NOW, lease=lease)] == ids[2:3]


def test_outbox_states_change_only_as_the_state_model_allows(
        sessions: sessionmaker[Session]) -> None:
    """Every (from, to) pair: the store's move happens exactly when OUTBOX_MOVES lists it."""
    pairs = [(start, target) for start in OutboxState for target in OutboxState]
    with sessions() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                        scan="clean", now=NOW)
        ids = repo.queue_outbounds(s, [repo.NewOutbound(
            kind=OutboxKind.RELAY, inbound_id=inbound_id, booking_id=None, recipient_role=None,
            bounce_token=f"{i:020x}", mail_from="", rcpt_to="r@example.org",
            message_id=f"<{i}@x>", raw=b"s\r\n") for i in range(len(pairs))], NOW)
        for outbound_id, (start, _) in zip(ids, pairs, strict=True):
            s.execute(update(OutboundRow).where(OutboundRow.id == outbound_id)
                      .values(state=start))
    with sessions() as s, s.begin():
        moved = {pair: repo.move_outbound(s, outbound_id, pair[1], NOW, why="why") is not None
                 for outbound_id, pair in zip(ids, pairs, strict=True)}
    with sessions() as s:
        states = dict(s.execute(select(OutboundRow.id, OutboundRow.state)).all())
    for outbound_id, (start, target) in zip(ids, pairs, strict=True):
        allowed = target in OUTBOX_MOVES.get(start, ())
        assert moved[(start, target)] is allowed, (start, target)
        assert states[outbound_id] == (target if allowed else start)


def test_inbound_states_change_only_as_the_state_model_allows(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        ids = {start: repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                         scan="clean", now=NOW) for start in InboundState}
        for start, inbound_id in ids.items():
            s.execute(update(InboundRow).where(InboundRow.id == inbound_id).values(state=start))
    with sessions() as s, s.begin():
        processed = repo.mark_processed(s, ids.values(), NOW)
        failed = {i for i in ids.values() if repo.mark_failed(s, i, "error", NOW)}
    may = INBOUND_MOVES[InboundState.RECEIVED]
    assert InboundState.PROCESSED in may and InboundState.FAILED in may
    assert processed == {ids[start] for start in INBOUND_MOVES}
    assert failed == set()  # processed just before: a finished message stays finished


def test_a_parked_copy_leaves_its_error_in_the_archive(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                        scan="clean", now=NOW)
        [outbound_id] = repo.queue_outbounds(s, [repo.NewOutbound(
            kind=OutboxKind.RELAY, inbound_id=inbound_id, booking_id=None, recipient_role=None,
            bounce_token="0" * 20, mail_from="", rcpt_to="r@example.org", message_id="<1@x>",
            raw=b"s\r\n")], NOW)
    with sessions() as s, s.begin():
        assert repo.park_outbound(s, outbound_id, "RuntimeError('boom')", NOW)
        assert not repo.park_outbound(s, outbound_id, "again", NOW)  # parked once
    with sessions() as s:
        row = s.get(OutboundRow, outbound_id)
        [entry] = s.scalars(select(ArchiveEntryRow)).all()
    assert row is not None and row.state == OutboxState.FAILED and row.lease_until is None
    assert row.last_error == "RuntimeError('boom')"
    assert (entry.inbound_id, entry.outcome) == (inbound_id, Outcome.FAILED)
    assert "boom" in entry.detail
