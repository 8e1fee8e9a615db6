"""Limits per client address and per sender: pure decisions from counts and settings.

The counts come from :mod:`mailveil.smtp.anvil` (this process's own, plus what the other
listeners of the deployment wrote to the database); what to answer is decided here, so every
edge is tested without a socket. Postfix's ``anvil`` and ``postscreen`` are the models.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mailveil.smtp import replies

BUCKETS_PER_WINDOW = 10
"""A window is counted in this many buckets: a sliding window with a tenth's precision,
without keeping one row per event."""


@dataclass(frozen=True)
class Rate:
    """At most ``count`` events per ``seconds``."""

    count: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds}"

    @property
    def bucket_seconds(self) -> int:
        return max(1, self.seconds // BUCKETS_PER_WINDOW)


_RATE = re.compile(r"^(\d+)/(\d+)$")


def parse_rate(text: str) -> Rate | None:
    """``"count/seconds"`` with both positive, else ``None``."""
    m = _RATE.match(text.strip())
    if not m or int(m[1]) <= 0 or int(m[2]) <= 0:
        return None
    return Rate(int(m[1]), int(m[2]))


@dataclass(frozen=True)
class Limits:
    max_per_client: int = 20  # simultaneous sessions of one client address
    connect_rate: Rate = Rate(60, 60)  # new sessions of one client address
    session_seconds: int = 600  # a session's deadline...
    min_data_rate: int = 500  # ...which each byte of message data extends by 1/rate s
    harvest: Rate = Rate(20, 600)  # unknown relay addresses of one client address
    cooldown_seconds: int = 600  # refused after that many, for this long
    # Messages per sender and conversation: about one a minute for an hour, which someone
    # writing by hand does not reach; an auto-responder loop or a script does.
    sender: Rate = Rate(60, 3600)
    # Notices the relay itself sends one party of one conversation: a loop guard of their
    # own (an auto-responder that keeps writing to a closed conversation gets ten an hour).
    notices: Rate = Rate(10, 3600)
    # Client networks no limit per client address applies to (Postfix's
    # smtpd_client_event_limit_exceptions): an edge MTA that forwards all the relay
    # domain's mail is one client address. The session deadline and the sender rate apply.
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


def client_key(address: str) -> str:
    """The address limits count under: an IPv4 address as it is, an IPv6 address as its
    /64 (one customer's network: an attacker has 2**64 addresses in it)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # a UNIX socket's peer, or no peer: one key for all of them
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def parse_networks(text: str) -> tuple[str, ...] | None:
    """Networks separated by commas or spaces (``none`` for none), else ``None``."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(str(ipaddress.ip_network(n, strict=False))
                     for n in re.split(r"[,\s]+", text.strip()) if n)
    except ValueError:
        return None


def is_exempt(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
              ) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in n for n in networks)


def window(now: float, rate: Rate) -> tuple[int, int]:
    """The first and the current bucket numbers of the window ending at ``now``."""
    current = int(now // rate.bucket_seconds)
    return current - BUCKETS_PER_WINDOW + 1, current


class Refusal(NamedTuple):
    limit: str  # its name in logs and in /metrics
    reply: str


def connect_refusal(*, active: int, recent: int, cooled_until: float | None, now: float,
                    limits: Limits) -> Refusal | None:
    """Why a new session of a client is refused, or ``None`` to serve it.

    ``active`` are its sessions open now, ``recent`` those opened in the connect window,
    both without this one."""
    if cooled_until is not None and cooled_until > now:
        return Refusal("harvest", cooldown_reply(cooled_until, now))
    if active >= limits.max_per_client:
        return Refusal("client_sessions",
                       replies.S421_CLIENT_SESSIONS.format(limit=limits.max_per_client))
    if recent >= limits.connect_rate.count:
        return Refusal("client_rate", replies.S421_CLIENT_RATE.format(
            count=limits.connect_rate.count, seconds=limits.connect_rate.seconds))
    return None


def cooldown_reply(cooled_until: float, now: float) -> str:
    return replies.S421_COOLDOWN.format(minutes=max(1, math.ceil((cooled_until - now) / 60)))


def cooldown_until(*, unknown: int, now: float, limits: Limits) -> float | None:
    """When a client that tried ``unknown`` unknown relay addresses in the window may come
    back, or ``None`` if it may go on."""
    if unknown >= limits.harvest.count:
        return now + limits.cooldown_seconds
    return None


def sender_reply(*, sent: int, oldest_bucket: int | None, now: float, rate: Rate) -> str | None:
    """The ``451`` for one more message of a sender to a conversation, or ``None``.

    ``sent`` is what the window holds and ``oldest_bucket`` the first of its buckets that
    holds any: once that bucket leaves the window, room opens, so that is when to retry."""
    if sent < rate.count:
        return None
    first, _ = window(now, rate)
    leaves = ((oldest_bucket if oldest_bucket is not None else first) + BUCKETS_PER_WINDOW
              ) * rate.bucket_seconds
    return replies.S451_SENDER_RATE.format(count=rate.count, seconds=rate.seconds,
                                           retry=max(1, math.ceil(leaves - now)))


def extended_deadline(deadline: float, data_bytes: int, min_data_rate: int) -> float:
    """The session's deadline after ``data_bytes`` of message data arrived: each byte buys
    ``1/min_data_rate`` seconds (Postfix's ``smtpd_min_data_rate``), so a large message on a
    slow but honest line finishes, and one byte every few seconds does not hold a slot."""
    return deadline + data_bytes / min_data_rate
