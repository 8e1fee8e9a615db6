"""The counts behind the limits of :mod:`mailveil.smtp.limits`, shared by every listener.

Each process counts in memory what its own sessions do, and decides from that plus the
sums the other listeners wrote to the database (:mod:`mailveil.store.limits`). A background
round, once a second, writes this process's new counts in one transaction and reads the
sums back: a well-behaved client costs no database round trip at all, a flood costs one
transaction a second whatever its size, and the other listeners learn of an abuser within
a second or two. A cool-down starts a round at once. Without a database (tests of the
handler alone) the counts stay in the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from mailveil.metrics import COOLDOWNS, ERRORS, LIMIT, LIMIT_REFUSED
from mailveil.smtp import limits, replies
from mailveil.smtp.limits import Limits
from mailveil.store import limits as store
from mailveil.store.db import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

SYNC_SECONDS = 1.0
LISTENER_ALIVE = timedelta(seconds=10)  # a listener silent this long holds no sessions

CONNECT, UNKNOWN, SENDER = "connect", "unknown", "sender"
Counts = dict[str, Counter[int]]  # events per key and time bucket


def sender_key(sender: str, relay_address: str) -> str:
    """A sender and the conversation it writes to (a relay address belongs to one booking
    and one party), as a hash: the counters hold no address."""
    pair = f"{sender.lower()}\0{relay_address.lower()}".encode()
    return hashlib.sha256(pair).hexdigest()[:32]


def _epoch(when: datetime) -> float:
    return when.timestamp()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class Anvil:
    def __init__(self, config: Limits, sessions: Callable[[], Session] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.limits = config
        self._sessions = sessions
        self._clock = clock
        self._listener = secrets.token_hex(16)
        self._rates = {CONNECT: config.connect_rate, UNKNOWN: config.harvest,
                       SENDER: config.sender}
        self._active: Counter[str] = Counter()
        self._active_changed = True
        self._others: dict[str, int] = {}
        # Per kind, {key: {bucket: events}}: not yet written, being written, and the sums
        # of every listener as last read (this one's written events included).
        self._pending: dict[str, Counts] = {k: {} for k in self._rates}
        self._writing: dict[str, Counts] = {k: {} for k in self._rates}
        self._shared: dict[str, dict[str, tuple[int, int]]] = {k: {} for k in self._rates}
        self._cooled: dict[str, float] = {}
        self._new_cooldowns: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._exempt_networks = tuple(ipaddress.ip_network(n) for n in config.exempt)
        for name, value in (
                ("max_per_client", config.max_per_client),
                ("connect_rate_count", config.connect_rate.count),
                ("connect_rate_seconds", config.connect_rate.seconds),
                ("session_seconds", config.session_seconds),
                ("min_data_rate", config.min_data_rate),
                ("unknown_rcpt_count", config.harvest.count),
                ("unknown_rcpt_seconds", config.harvest.seconds),
                ("cooldown_seconds", config.cooldown_seconds),
                ("sender_rate_count", config.sender.count),
                ("sender_rate_seconds", config.sender.seconds),
                ("notice_rate_count", config.notices.count),
                ("notice_rate_seconds", config.notices.seconds)):
            LIMIT.labels(name=name).set(value)

    def _exempt(self, peer: str) -> bool:
        return limits.is_exempt(peer, self._exempt_networks)

    def _count(self, kind: str, key: str) -> tuple[int, int | None]:
        """Events of ``key`` in its window, all listeners, and the first bucket holding any."""
        first, _ = limits.window(self._clock(), self._rates[kind])
        total, oldest = 0, None
        shared = self._shared[kind].get(key)
        if shared is not None:
            total, oldest = shared
        for local in (self._pending[kind], self._writing[kind]):
            for bucket, n in local.get(key, {}).items():
                if bucket >= first:
                    total += n
                    oldest = bucket if oldest is None else min(oldest, bucket)
        return total, oldest

    def _add(self, kind: str, key: str) -> None:
        _, current = limits.window(self._clock(), self._rates[kind])
        self._pending[kind].setdefault(key, Counter())[current] += 1

    def _refused(self, limit: str, key: str, reply: str) -> str:
        LIMIT_REFUSED.labels(limit=limit).inc()
        log.warning("limit reached", extra={"limit": limit, "client": key, "reply": reply})
        return reply

    def open(self, peer: str) -> tuple[str, str | None]:
        """A new session from ``peer``: its key, and the ``421`` that refuses it or ``None``
        (then :meth:`close` must follow)."""
        key = limits.client_key(peer)
        if not self._exempt(peer):
            recent, _ = self._count(CONNECT, key)
            self._add(CONNECT, key)  # refused attempts count: hammering keeps a client out
            refusal = limits.connect_refusal(
                active=self._active[key] + self._others.get(key, 0), recent=recent,
                cooled_until=self._cooled.get(key), now=self._clock(), limits=self.limits)
            if refusal is not None:
                return key, self._refused(refusal.limit, key, refusal.reply)
        self._active[key] += 1
        self._active_changed = True
        return key, None

    def close(self, key: str) -> None:
        self._active[key] -= 1
        if self._active[key] <= 0:
            del self._active[key]
        self._active_changed = True

    def expired(self, key: str) -> str:
        """The ``421`` for a session past its deadline."""
        return self._refused("session_time", key, replies.S421_SESSION_TOO_LONG)

    def cooled(self, peer: str) -> str | None:
        """The ``421`` for a client in cool-down, or ``None``."""
        until = self._cooled.get(limits.client_key(peer))
        now = self._clock()
        return limits.cooldown_reply(until, now) if until is not None and until > now else None

    def unknown_recipient(self, peer: str) -> None:
        """Count an unknown relay address tried by ``peer``, and put it in cool-down once it
        has tried too many: its next command or session gets the ``421``."""
        if self._exempt(peer):
            return
        key = limits.client_key(peer)
        self._add(UNKNOWN, key)
        unknown, _ = self._count(UNKNOWN, key)
        until = limits.cooldown_until(unknown=unknown, now=self._clock(), limits=self.limits)
        if until is None or self._cooled.get(key, 0) >= until:
            return
        self._cooled[key] = self._new_cooldowns[key] = until
        COOLDOWNS.inc()
        log.warning("address harvesting: client cooled down",
                    extra={"client": key, "unknown_rcpts": unknown,
                           "seconds": self.limits.cooldown_seconds})
        self._wake.set()  # the other listeners should know now, not in a second

    def sender_reply(self, sender: str, relay_addresses: list[str]) -> str | None:
        """The ``451`` if one more message of ``sender`` to one of these would be too many."""
        for address in relay_addresses:
            key = sender_key(sender, address)
            sent, oldest = self._count(SENDER, key)
            reply = limits.sender_reply(sent=sent, oldest_bucket=oldest, now=self._clock(),
                                        rate=self.limits.sender)
            if reply is not None:
                return self._refused("sender_rate", key, reply)
        return None

    def sent(self, sender: str, relay_addresses: list[str]) -> None:
        for address in relay_addresses:
            self._add(SENDER, sender_key(sender, address))

    async def run(self, stopping: asyncio.Event) -> None:
        """Share the counts with the other listeners until ``stopping`` is set."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_SECONDS)
            self._wake.clear()
            try:
                await self.sync()
            except DATABASE_UNAVAILABLE:
                log.warning("limits: database unavailable; deciding from this process's "
                            "counts until it is back")
            except Exception:  # a round lost, never the sharing: the counts are kept
                log.exception("limits: a sharing round raised")
                ERRORS.labels(stage="limits").inc()

    async def sync(self) -> None:
        """One round: write what this process counted, read back what all counted."""
        # Still counted, as being written, until the sums that include them are in.
        writing = self._writing = self._pending
        self._pending = {k: {} for k in self._rates}
        active = dict(self._active) if self._active_changed else None
        self._active_changed = False
        cooldowns, self._new_cooldowns = self._new_cooldowns, {}
        now = self._clock()
        firsts = {kind: limits.window(now, rate)[0] for kind, rate in self._rates.items()}
        others: dict[str, int] = {}
        cooled: dict[str, float] = {}
        try:
            if self._sessions is None:
                shared = self._local(writing, firsts)
            else:
                shared, others, cooled = await asyncio.to_thread(
                    self._exchange, writing, active, cooldowns, now, firsts)
        except BaseException:
            for kind, counts in writing.items():  # written next round
                for key, buckets in counts.items():
                    self._pending[kind].setdefault(key, Counter()).update(buckets)
            self._new_cooldowns.update(cooldowns)
            self._active_changed = self._active_changed or active is not None
            raise
        finally:
            self._writing = {k: {} for k in self._rates}
        self._shared, self._others = shared, others
        for key, until in self._cooled.items():  # this process's own may not be written yet
            cooled[key] = max(until, cooled.get(key, until))
        self._cooled = {key: until for key, until in cooled.items() if until > now}

    def _local(self, writing: dict[str, Counts], firsts: dict[str, int]
               ) -> dict[str, dict[str, tuple[int, int]]]:
        """Without a database: the sums of this process alone (a key's total is dropped
        once its oldest bucket leaves the window: this mode serves tests, not deployments)."""
        shared: dict[str, dict[str, tuple[int, int]]] = {}
        for kind, counts in writing.items():
            merged = {key: (total, oldest) for key, (total, oldest) in self._shared[kind].items()
                      if oldest >= firsts[kind]}
            for key, buckets in counts.items():
                for bucket, n in buckets.items():
                    if bucket >= firsts[kind]:
                        total, oldest = merged.get(key, (0, bucket))
                        merged[key] = (total + n, min(oldest, bucket))
            shared[kind] = merged
        return shared

    def _exchange(self, writing: dict[str, Counts],
                  active: dict[str, int] | None, cooldowns: dict[str, float], now: float,
                  firsts: dict[str, int]
                  ) -> tuple[dict[str, dict[str, tuple[int, int]]], dict[str, int],
                             dict[str, float]]:
        """The round's database work, in one transaction (in a worker thread)."""
        assert self._sessions is not None
        alive_since = _at(now) - LISTENER_ALIVE
        with self._sessions() as s, s.begin():
            for kind, counts in writing.items():
                store.add(s, kind, {(key, bucket): n for key, buckets in counts.items()
                                    for bucket, n in buckets.items()})
                store.forget(s, kind, firsts[kind])
            store.publish_sessions(s, self._listener, active, _at(now))
            store.forget_listeners(s, alive_since)
            store.cool_down(s, {key: _at(until) for key, until in cooldowns.items()})
            shared = {kind: store.totals(s, kind, firsts[kind]) for kind in writing}
            others = store.other_sessions(s, self._listener, alive_since)
            cooled = {key: _epoch(until) for key, until in store.cooldowns(s, _at(now)).items()}
        return shared, others, cooled

    async def stop(self) -> None:
        """Withdraw this listener's sessions from the shared counts."""
        self._active.clear()
        self._active_changed = True
        with contextlib.suppress(*DATABASE_UNAVAILABLE):
            await self.sync()

