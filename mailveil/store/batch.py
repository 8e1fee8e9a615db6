"""Writing a runner's batch so that one bad item parks only itself.

A batch is written in one transaction. If that fails for another reason than the database
being away (a constraint, a bug), its items are written one by one, and an item that still
fails is written parked instead, with its error, for a human.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.orm import Session

from mailveil.metrics import ERRORS
from mailveil.store.db import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

T = TypeVar("T")
Record = Callable[[Session, Sequence[T]], None]


def write_batch(sessions: Callable[[], Session], items: Sequence[T], record: Record[T],
          park: Callable[[T, Exception], T], stage: str) -> None:
    """``record`` the items in one transaction, or else each alone, or else ``park`` it."""
    if not items:
        return
    try:
        with sessions() as s, s.begin():
            record(s, items)
    except DATABASE_UNAVAILABLE:
        raise  # not the items' fault: they stay leased and are taken again
    except Exception:
        log.exception("%s: writing a batch failed; writing its items one by one", stage)
        for item in items:
            _write_alone(sessions, item, record, park, stage)


def _write_alone(sessions: Callable[[], Session], item: T, record: Record[T],
                 park: Callable[[T, Exception], T], stage: str) -> None:
    try:
        with sessions() as s, s.begin():
            record(s, [item])
    except DATABASE_UNAVAILABLE:
        raise
    except Exception as exc:
        log.exception("%s: writing an item failed; it is parked", stage)
        ERRORS.labels(stage=stage).inc()
        with sessions() as s, s.begin():
            record(s, [park(item, exc)])
