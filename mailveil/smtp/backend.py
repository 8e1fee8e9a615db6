"""The listener's two questions to the store, as blocking calls run off the event loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from mailveil.domain.addresses import AddressBook, Kind
from mailveil.smtp.commit import Accepted
from mailveil.smtp.gate import Lookup
from mailveil.store import repository as repo


class StoreBackend:
    def __init__(self, sessions: Callable[[], Session], book: AddressBook) -> None:
        self._sessions = sessions
        self._book = book

    def lookup(self, address: str) -> Lookup:
        parsed = self._book.parse(address)
        if parsed is None:
            return Lookup(None)
        with self._sessions() as s:
            if parsed.kind is Kind.BOUNCE:
                return Lookup(parsed, bounce_known=repo.outbound_by_bounce_token(
                    s, parsed.token) is not None)
            assert parsed.role is not None
            found = repo.booking_by_token(s, parsed.role, parsed.token)
            return Lookup(parsed, found.booking if found else None)

    def accept(self, messages: Sequence[Accepted]) -> list[int]:
        """Commit the messages in one transaction; only after this returns may the
        listener answer 250 to any of them."""
        now = datetime.now(UTC)
        with self._sessions() as s, s.begin():
            return repo.store_inbounds(s, messages, now)

