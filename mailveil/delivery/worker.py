"""The delivery runner: lease a batch from the outbox, send it over a few reused
connections, then record every attempt and verdict of the batch in one transaction (the
delivered ones, nearly all of them, with one statement).

Delivery only reports: a copy that will not arrive becomes ``undeliverable`` with its cause,
and processing tells the sender later, outside this transaction. Every verdict is decided
before the transaction opens, so it holds the write lock for a few statements only.

A send that raises parks exactly that copy (``failed``, the error in its message's archive)
and the batch goes on. A crash between sending and recording leaves the lease to expire and
the message is sent again: delivery is at-least-once, and duplicates are bounded by what was
in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailveil.delivery.backoff import retry_delay
from mailveil.delivery.transport import Result, Status, Transport
from mailveil.domain.states import OutboxState
from mailveil.mail.bounces import classify
from mailveil.metrics import ATTEMPTS, ERRORS
from mailveil.store import repository as repo
from mailveil.store.batch import write_batch
from mailveil.store.workers import Lessee

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    retry_first: timedelta
    retry_cap: timedelta
    retry_for: timedelta
    batch: int = 50
    connections: int = 4
    lease: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class Verdict:
    """What one attempt means for its copy: delivered, due again ``retry_at``, or moved to
    ``to`` with ``why`` (the cause, or the error of a send that raised)."""

    job: repo.Due
    result: Result | None  # None: sending raised
    to: OutboxState | None = None  # None with retry_at: stays queued
    why: str = ""
    retry_at: datetime | None = None


def verdict(job: repo.Due, result: Result, policy: Policy, now: datetime) -> Verdict:
    """Retry a temporary failure until the retry period is over; then, or at once for a
    permanent one, report the copy undeliverable with the cause its sender will read."""
    if result.status is Status.DELIVERED:
        return Verdict(job, result, OutboxState.DELIVERED)
    if result.status is Status.TEMPORARY and now - job.created_at < policy.retry_for:
        return Verdict(job, result, None, result.text, now + retry_delay(
            job.attempts + 1, policy.retry_first, policy.retry_cap))
    _, cause = classify(result.code, None, result.text)
    return Verdict(job, result, OutboxState.UNDELIVERABLE, cause.value)


class Deliverer:
    def __init__(self, sessions: Callable[[], Session], transports: list[Transport],
                 policy: Policy, lessee: Lessee | None = None) -> None:
        self._sessions = sessions
        self._transports = transports
        self._policy = policy
        self._lessee = lessee  # None: leases name no worker and only run out

    async def run_once(self, now: Callable[[], datetime]) -> int:
        """Deliver one batch; returns how many messages were attempted."""
        leased_at = time.monotonic()
        jobs = await asyncio.to_thread(self._claim, now())
        if not jobs:
            return 0
        queue: asyncio.Queue[repo.Due] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        verdicts: list[Verdict] = []
        sent: list[tuple[repo.Due, Result]] = []

        async def drain(transport: Transport) -> None:
            while not queue.empty() and self._holds(leased_at):
                job = queue.get_nowait()
                try:
                    result = await transport.send(job.mail_from, job.rcpt_to, job.raw)
                except Exception as exc:
                    verdicts.append(_crashed(job, exc))
                else:
                    sent.append((job, result))

        await asyncio.gather(*(drain(t) for t in self._transports))
        # One time for the batch: its attempts are recorded at it and retries count from it,
        # so the archive never shows a retry sooner than the policy's wait.
        at = now()
        verdicts += [verdict(job, result, self._policy, at) for job, result in sent]
        tried = {v.job.id for v in verdicts}
        untried = [job.id for job in jobs if job.id not in tried]
        await asyncio.to_thread(self._write, verdicts, untried, at)
        return len(jobs)

    def _holds(self, leased_at: float) -> bool:
        """Whether the batch is still ours to send: a worker that another one may have
        found dead sends nothing more; the rest of its batch stays leased until released."""
        return self._lessee is None or self._lessee.holds(leased_at)

    def _claim(self, now: datetime) -> list[repo.Due]:
        holder = None if self._lessee is None else self._lessee.holder.id
        with self._sessions() as s, s.begin():
            return repo.claim_outbound(s, limit=self._policy.batch, now=now,
                                       lease=self._policy.lease, holder=holder)

    def _write(self, verdicts: list[Verdict], untried: list[int], now: datetime) -> None:
        if untried:
            with self._sessions() as s, s.begin():
                repo.unlease_outbound(s, untried)
        write_batch(self._sessions, verdicts, lambda s, done: _record(s, done, now),
                    lambda v, exc: Verdict(v.job, None, OutboxState.FAILED, repr(exc)),
                    "delivery")


def _record(s: Session, verdicts: Sequence[Verdict], now: datetime) -> None:
    repo.record_attempts(s, [repo.Attempt(v.job.id, v.result.code, v.result.text,
                                          v.result.status.value, v.result.tls)
                             for v in verdicts if v.result is not None], now)
    delivered = repo.mark_delivered(
        s, [v.job.id for v in verdicts if v.to is OutboxState.DELIVERED], now)
    for v in verdicts:
        if v.result is not None:
            ATTEMPTS.labels(outcome=v.result.status.value).inc()
        if v.to is OutboxState.DELIVERED:
            done = v.job.id in delivered
        elif v.result is None:
            done = repo.park_outbound(s, v.job.id, v.why, now)
        elif v.retry_at is not None:
            done = repo.retry_outbound(s, v.job.id, v.why, v.retry_at)
        else:
            assert v.to is not None
            done = repo.move_outbound(s, v.job.id, v.to, now, why=v.why,
                                      tried=True) is not None
        # Not done: our lease ran out and another worker finished it meanwhile; the
        # attempt is history all the same.
        if done:
            log.info("delivery", extra={
                "outbound_id": v.job.id, "attempt": v.job.attempts + 1,
                "status": v.to or OutboxState.QUEUED,
                "code": None if v.result is None else v.result.code})


def _crashed(job: repo.Due, exc: Exception) -> Verdict:
    log.exception("delivery raised; the copy is parked", extra={"outbound_id": job.id})
    ERRORS.labels(stage="delivery").inc()
    return Verdict(job, None, OutboxState.FAILED, repr(exc))
