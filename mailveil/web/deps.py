"""FastAPI dependencies the API, the portal and the care console share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from fastapi import Request
from sqlalchemy.orm import Session


class HasSessions(Protocol):
    @property
    def sessions(self) -> Callable[[], Session]: ...


def transaction(ctx_of: Callable[[Request], HasSessions]) -> Callable[[Request],
                                                                      Iterator[Session]]:
    """A dependency giving a route one database transaction, committed when the route
    returns (with ``scope="function"``: before the response is sent, so a 2xx means
    stored) and rolled back when it raises."""

    def db(request: Request) -> Iterator[Session]:
        with ctx_of(request).sessions() as s, s.begin():
            yield s

    return db
