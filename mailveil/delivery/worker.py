"""The delivery runner: lease a batch from the outbox, send it over a few reused
connections, then record every attempt and verdict of the batch in one transaction (the
delivered ones, nearly all of them, with one statement).

A crash between sending and recording leaves the lease to expire and the message is sent
again: delivery is at-least-once, and duplicates are bounded by what was in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailveil.delivery.backoff import retry_delay
from mailveil.delivery.transport import Result, Status, Transport
from mailveil.mail.bounces import classify
from mailveil.mail.notices import UndeliverableCause
from mailveil.metrics import ATTEMPTS
from mailveil.store import repository as repo
from mailveil.store.models import OutboundRow

log = logging.getLogger(__name__)

GiveUp = Callable[[Session, OutboundRow, UndeliverableCause, datetime], None]


@dataclass(frozen=True)
class Policy:
    retry_first: timedelta
    retry_cap: timedelta
    retry_for: timedelta
    batch: int = 50
    connections: int = 4
    lease: timedelta = timedelta(minutes=10)


class Deliverer:
    def __init__(self, sessions: Callable[[], Session], transports: list[Transport],
                 policy: Policy, give_up: GiveUp) -> None:
        self._sessions = sessions
        self._transports = transports
        self._policy = policy
        self._give_up = give_up

    async def run_once(self, now: Callable[[], datetime]) -> int:
        """Deliver one batch; returns how many messages were attempted."""
        jobs = await asyncio.to_thread(self._claim, now())
        if not jobs:
            return 0
        queue: asyncio.Queue[repo.Due] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        results: dict[int, Result] = {}

        async def drain(transport: Transport) -> None:
            while not queue.empty():
                job = queue.get_nowait()
                results[job.id] = await transport.send(job.mail_from, job.rcpt_to, job.raw)

        await asyncio.gather(*(drain(t) for t in self._transports))
        await asyncio.to_thread(self._record, results, now())
        return len(jobs)

    def _claim(self, now: datetime) -> list[repo.Due]:
        with self._sessions() as s, s.begin():
            return repo.claim_outbound(s, limit=self._policy.batch, now=now,
                                       lease=self._policy.lease)

    def _record(self, results: dict[int, Result], now: datetime) -> None:
        with self._sessions() as s, s.begin():
            repo.record_attempts(s, [repo.Attempt(outbound_id, r.code, r.text, r.status.value)
                                     for outbound_id, r in results.items()], now)
            delivered = repo.mark_delivered(
                s, [i for i, r in results.items() if r.status is Status.DELIVERED], now)
            for outbound_id, result in results.items():
                ATTEMPTS.labels(outcome=result.status.value).inc()
                if outbound_id in delivered:
                    log.info("delivery", extra={"outbound_id": outbound_id, "status": "delivered",
                                                "code": result.code})
                elif result.status is not Status.DELIVERED:
                    row = s.get(OutboundRow, outbound_id, with_for_update=True)
                    assert row is not None
                    self._failed_attempt(s, row, result, now)

    def _failed_attempt(self, s: Session, row: OutboundRow, result: Result,
                        now: datetime) -> None:
        if row.state != "queued":
            return  # our lease ran out and another worker finished it: the attempt is history
        row.attempts += 1
        log.info("delivery", extra={"outbound_id": row.id, "status": result.status.value,
                                    "code": result.code, "attempt": row.attempts})
        _, cause = classify(result.code, None, result.text)
        if result.status is Status.PERMANENT or now - row.created_at >= self._policy.retry_for:
            self._give_up(s, row, cause, now)
            return
        row.last_error = result.text[:2000]
        row.next_attempt_at = now + retry_delay(row.attempts, self._policy.retry_first,
                                                self._policy.retry_cap)
        row.lease_until = None
