"""Repository functions on SQLite and PostgreSQL: claims, leases, quarantine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from mailveil.domain.booking import Party
from mailveil.store import repository as repo
from mailveil.store.models import InboundRow, QuarantineRow

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
        assert found is not None and found.reference == "R7"
        assert repo.booking_by_token(s, Role.CUSTOMER, rows[7].supplier_token) is None


def test_inbound_claim_leases_and_expires(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        ids = [repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW, scan="clean",
                                  now=NOW) for _ in range(3)]
    with sessions() as s, s.begin():
        first = repo.claim_inbound(s, limit=2, now=NOW, lease=timedelta(minutes=5))
    with sessions() as s, s.begin():
        second = repo.claim_inbound(s, limit=5, now=NOW, lease=timedelta(minutes=5))
    assert first == ids[:2]
    assert second == ids[2:]
    with sessions() as s, s.begin():
        later = repo.claim_inbound(s, limit=5, now=NOW + timedelta(minutes=6),
                                   lease=timedelta(minutes=5))
    assert sorted(later) == ids
    with sessions() as s:
        row = s.get(InboundRow, later[0])
        assert row is not None and repo.unpack(row.raw) == RAW


def test_infected_message_goes_to_quarantine(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                        scan="infected: Test.EICAR", now=NOW)
    with sessions() as s:
        row = s.get(InboundRow, inbound_id)
        assert row is not None
        assert repo.unpack(row.raw) == b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\n"
        [q] = s.query(QuarantineRow).all()
        assert repo.unpack(q.raw) == RAW and q.findings == "infected: Test.EICAR"


def test_archive_subject_keeps_only_printable_text(sessions: sessionmaker[Session]) -> None:
    from mailveil.store.models import ArchiveEntryRow

    with sessions() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                        scan="clean", now=NOW)
        repo.add_archive_entry(s, inbound_id=inbound_id, booking_id=None, sender_role=None,
                               subject="a\0b\r\nc", outcome="relayed", detail="", now=NOW)
    with sessions() as s:
        assert s.query(ArchiveEntryRow).one().subject == "a b  c"
