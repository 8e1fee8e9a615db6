"""The limits' decisions from plain counts: every edge without a socket."""

from __future__ import annotations

import ipaddress
import re

import pytest

from mailveil.smtp import replies
from mailveil.smtp.limits import (
    BUCKETS_PER_WINDOW,
    Limits,
    Rate,
    client_key,
    connect_refusal,
    cooldown_until,
    extended_deadline,
    is_exempt,
    parse_networks,
    parse_rate,
    sender_reply,
    window,
)

LIMITS = Limits(max_per_client=3, connect_rate=Rate(5, 60), harvest=Rate(4, 600),
                cooldown_seconds=300, sender=Rate(2, 100))
NOW = 1_000_000.0


@pytest.mark.parametrize(("peer", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another client
    ("fe80::1%eth0", "fe80::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4 on a dual-stack socket is the IPv4 client
    ("/run/mailveil.sock", "/run/mailveil.sock"),
])
def test_clients_are_counted_per_ipv4_address_and_per_ipv6_64(peer: str, key: str) -> None:
    assert client_key(peer) == key


@pytest.mark.parametrize(("text", "rate"), [
    ("20/600", Rate(20, 600)), (" 1/1 ", Rate(1, 1)),
    ("0/60", None), ("20/0", None), ("20", None), ("20 per 600", None), ("-1/60", None),
])
def test_rates_are_count_slash_seconds(text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate


def test_exempt_networks() -> None:
    assert parse_networks("192.0.2.1, 2001:db8::/32 10.0.0.0/8") == (
        "192.0.2.1/32", "2001:db8::/32", "10.0.0.0/8")
    assert parse_networks("none") == ()
    assert parse_networks("192.0.2.300") is None
    networks = [ipaddress.ip_network(n) for n in Limits().exempt]
    assert is_exempt("127.0.0.5", networks) and is_exempt("::1", networks)
    assert not is_exempt("192.0.2.1", networks) and not is_exempt("/run/x.sock", networks)


def test_a_client_is_served_below_every_limit() -> None:
    assert connect_refusal(active=2, recent=4, cooled_until=None, now=NOW, limits=LIMITS) is None
    assert connect_refusal(active=0, recent=0, cooled_until=NOW - 1, now=NOW,
                           limits=LIMITS) is None  # a cool-down that ended


def test_simultaneous_sessions_are_capped() -> None:
    refusal = connect_refusal(active=3, recent=0, cooled_until=None, now=NOW, limits=LIMITS)
    assert refusal is not None and refusal.limit == "client_sessions"
    assert refusal.reply == replies.S421_CLIENT_SESSIONS.format(limit=3)
    assert refusal.reply.startswith("421 4.7.0 ") and "(at most 3)" in refusal.reply


def test_new_sessions_are_rate_limited() -> None:
    refusal = connect_refusal(active=0, recent=5, cooled_until=None, now=NOW, limits=LIMITS)
    assert refusal is not None and refusal.limit == "client_rate"
    assert refusal.reply.startswith("421 4.7.0 ") and "5 in 60 seconds" in refusal.reply


def test_a_cooled_down_client_is_told_how_long() -> None:
    refusal = connect_refusal(active=0, recent=0, cooled_until=NOW + 125, now=NOW,
                              limits=LIMITS)
    assert refusal is not None and refusal.limit == "harvest"
    assert refusal.reply == replies.S421_COOLDOWN.format(minutes=3)


def test_harvesting_starts_a_cool_down_at_the_limit() -> None:
    assert cooldown_until(unknown=3, now=NOW, limits=LIMITS) is None
    assert cooldown_until(unknown=4, now=NOW, limits=LIMITS) == NOW + 300


def test_windows_are_ten_buckets() -> None:
    rate = Rate(2, 100)
    first, current = window(NOW, rate)
    assert current == NOW // 10 and current - first == BUCKETS_PER_WINDOW - 1
    assert window(NOW, Rate(1, 5)) == (int(NOW) - 9, int(NOW))  # buckets of a second at least


def test_the_sender_rate_says_when_to_try_again() -> None:
    rate = Rate(2, 100)
    assert sender_reply(sent=1, oldest_bucket=None, now=NOW, rate=rate) is None
    first, current = window(NOW + 3, rate)
    reply = sender_reply(sent=2, oldest_bucket=current, now=NOW + 3, rate=rate)
    assert reply is not None and reply.startswith("451 4.7.1 ")
    # The oldest message is in the current bucket: room opens when it leaves the window.
    retry = int(re.search(r"try again in (\d+) seconds", reply)[1])  # type: ignore[index]
    assert retry == (current + BUCKETS_PER_WINDOW) * 10 - (NOW + 3)
    older = sender_reply(sent=2, oldest_bucket=first, now=NOW + 3, rate=rate)
    assert older is not None and "try again in 7 seconds" in older


def test_message_data_extends_the_session_deadline() -> None:
    assert extended_deadline(600.0, 0, 500) == 600.0
    assert extended_deadline(600.0, 1000, 500) == 602.0
    # One byte every 2 s earns 2 ms per byte: a trickle cannot hold the session.
    assert extended_deadline(600.0, 1, 500) < 600.01
