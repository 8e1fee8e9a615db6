"""Events for the marketplace, POSTed as JSON to MAILVEIL_WEBHOOK_URL and signed so the
receiver can tell they are ours and fresh.

Each request carries ``Mailveil-Signature: t=<unix time>,v1=<hex>``, where ``v1`` is
HMAC-SHA256 with the shared secret over ``<t>.`` followed by the exact body bytes. A
receiver recomputes it, compares in constant time, and refuses a ``t`` too far from its
clock (README shows the check). Delivery is at least once: an event leaves the table only
when the receiver answered 2xx; the body's ``id`` lets it drop a duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session

from mailveil.store import webhooks as store
from mailveil.store.models import BookingRow, CancellationRow

log = logging.getLogger(__name__)

BATCH = 20
LEASE = timedelta(minutes=2)  # longer than a request may take
TIMEOUT_SECONDS = 10.0
FIRST_RETRY = timedelta(seconds=10)
MAX_RETRY = timedelta(hours=1)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def cancellation(request: CancellationRow, booking: BookingRow,
                 **more: str) -> dict[str, Any]:
    """The data of every cancellation event."""
    return {"cancellation_id": request.id, "booking_reference": booking.reference,
            "supplier_id": booking.supplier_id, **more}


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failure: doubling from 10 s, at most an hour."""
    return min(FIRST_RETRY * (1 << min(attempts, 20)), MAX_RETRY)


class Sender:
    """One round: report unanswered cancellation requests, then send what is due."""

    def __init__(self, sessions: Callable[[], Session], url: str, secret: str) -> None:
        self._sessions, self._url, self._secret = sessions, url, secret
        self._client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)

    def _claim(self, now: datetime) -> list[store.Due]:
        with self._sessions() as s, s.begin():
            for request, booking in store.unanswered(s, now):
                store.emit(s, "cancellation.unanswered", cancellation(request, booking), now)
            return store.claim(s, limit=BATCH, now=now, lease=LEASE)

    async def run_once(self, now: Callable[[], datetime]) -> int:
        due = await asyncio.to_thread(self._claim, now())
        for event in due:
            error = await self._post(event, now())
            await asyncio.to_thread(self._record, event, error, now())
        return len(due)

    async def _post(self, event: store.Due, at: datetime) -> str | None:
        body = event.body.encode()
        headers = {"Content-Type": "application/json",
                   "Mailveil-Signature": signature(self._secret, int(at.timestamp()), body)}
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if response.is_success else f"HTTP {response.status_code}"

    def _record(self, event: store.Due, error: str | None, now: datetime) -> None:
        with self._sessions() as s, s.begin():
            if error is None:
                store.delivered(s, event.id, now)
            else:
                log.warning("webhook not delivered, retrying",
                            extra={"event": event.id, "error": error})
                store.retry(s, event.id, error, now + backoff(event.attempts))

    async def close(self) -> None:
        await self._client.aclose()
