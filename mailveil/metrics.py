"""Prometheus metrics. Counters live in each process; queue depths are read from the
database at scrape time, so every role's ``/metrics`` tells the same story about the outbox."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailveil.domain.states import OWES_NOTICE, InboundState, OutboxState
from mailveil.store.models import InboundRow, OutboundRow

ACCEPTED = Counter("mailveil_messages_accepted", "Messages answered 250 and stored")
RCPT_REFUSED = Counter("mailveil_rcpt_refused", "Recipients refused during SMTP", ["code"])
DEFERRED = Counter("mailveil_messages_deferred", "DATA answered 4xx", ["reason"])
DECIDED = Counter("mailveil_messages_decided", "Per-recipient outcomes after processing",
                  ["outcome"])
ERRORS = Counter("mailveil_unexpected_errors",
                 "Exceptions nobody expected, by stage; each parked one message or deferred it",
                 ["stage"])
ATTEMPTS = Counter("mailveil_delivery_attempts", "Delivery attempts", ["outcome"])
SCAN_SECONDS = Histogram("mailveil_scan_seconds", "Virus scan time per message")
DNS_SECONDS = Histogram("mailveil_dns_check_seconds", "SPF/DKIM/DMARC check time per message")
LIMIT = Gauge("mailveil_limit", "The configured limits per client address and per sender "
              "(counts, seconds, bytes per second; see the README)", ["name"])
LIMIT_REFUSED = Counter("mailveil_limit_refusals",
                        "Sessions, recipients and messages refused by a limit", ["limit"])
COOLDOWNS = Counter("mailveil_harvest_cooldowns",
                    "Client addresses put in cool-down for trying unknown relay addresses")


class QueueCollector(Collector):
    """Outbox depth and age, messages waiting for (or failed in) processing, and notices
    owed to senders."""

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as s:
            depth, oldest = s.execute(
                select(func.count(), func.min(OutboundRow.created_at))
                .where(OutboundRow.state == OutboxState.QUEUED)).one()
            pending = dict(s.execute(
                select(InboundRow.state, func.count())
                .where(InboundRow.state.in_((InboundState.RECEIVED, InboundState.FAILED)))
                .group_by(InboundRow.state)).all())
            owed = s.scalar(select(func.count()).where(OutboundRow.state.in_(tuple(OWES_NOTICE))))
        yield GaugeMetricFamily("mailveil_outbox_depth", "Messages waiting to be delivered",
                                value=depth)
        age = 0.0
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            age = (datetime.now(UTC) - oldest).total_seconds()
        yield GaugeMetricFamily("mailveil_outbox_oldest_age_seconds",
                                "Age of the oldest message waiting to be delivered", value=age)
        yield GaugeMetricFamily("mailveil_inbound_pending", "Accepted, not yet processed",
                                value=pending.get(InboundState.RECEIVED, 0))
        yield GaugeMetricFamily("mailveil_inbound_failed",
                                "Processing failed; waiting for a human",
                                value=pending.get(InboundState.FAILED, 0))
        yield GaugeMetricFamily("mailveil_notices_owed",
                                "Copies that did not arrive whose senders are not told yet",
                                value=owed or 0)
