"""The shared counters on both databases: increments add up across writers, old buckets and
silent listeners are forgotten, a cool-down is never shortened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from mailveil.store import limits as store

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_counts_of_several_writers_add_up(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        store.add(s, "unknown", {("192.0.2.1", 10): 2, ("192.0.2.1", 11): 1, ("192.0.2.2", 11): 1})
    with sessions() as s, s.begin():  # another listener, the same buckets
        store.add(s, "unknown", {("192.0.2.1", 11): 3})
        store.add(s, "connect", {("192.0.2.1", 11): 7})
    with sessions() as s:
        assert store.totals(s, "unknown", 10) == {"192.0.2.1": (6, 10), "192.0.2.2": (1, 11)}
        assert store.totals(s, "unknown", 11) == {"192.0.2.1": (4, 11), "192.0.2.2": (1, 11)}
        assert store.totals(s, "connect", 0) == {"192.0.2.1": (7, 11)}
    with sessions() as s, s.begin():
        store.forget(s, "unknown", 11)
    with sessions() as s:
        assert store.totals(s, "unknown", 0) == {"192.0.2.1": (4, 11), "192.0.2.2": (1, 11)}
        assert store.totals(s, "connect", 0) == {"192.0.2.1": (7, 11)}  # other kinds kept


def test_sessions_of_other_live_listeners(sessions: sessionmaker[Session]) -> None:
    alive_since = NOW - timedelta(seconds=10)
    with sessions() as s, s.begin():
        store.publish_sessions(s, "a", {"192.0.2.1": 2, "192.0.2.2": 1}, NOW)
        store.publish_sessions(s, "b", {"192.0.2.1": 3}, NOW)
        store.publish_sessions(s, "dead", {"192.0.2.1": 9}, NOW - timedelta(minutes=1))
    with sessions() as s:
        assert store.other_sessions(s, "a", alive_since) == {"192.0.2.1": 3}
        assert store.other_sessions(s, "b", alive_since) == {"192.0.2.1": 2, "192.0.2.2": 1}
    with sessions() as s, s.begin():
        store.publish_sessions(s, "a", {"192.0.2.2": 4}, NOW)  # replaces a's rows
        store.publish_sessions(s, "b", None, NOW + timedelta(seconds=20))  # alive, unchanged
        store.forget_listeners(s, NOW + timedelta(seconds=5))
    with sessions() as s:
        assert store.other_sessions(s, "a", alive_since) == {"192.0.2.1": 3}
        assert store.other_sessions(s, "b", alive_since) == {}  # a's rows were forgotten


def test_a_cool_down_is_never_shortened_and_ends(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        store.cool_down(s, {"192.0.2.1": NOW + timedelta(minutes=10)})
        store.cool_down(s, {"192.0.2.1": NOW + timedelta(minutes=5),
                            "192.0.2.2": NOW + timedelta(minutes=1)})
    with sessions() as s, s.begin():
        assert store.cooldowns(s, NOW) == {"192.0.2.1": NOW + timedelta(minutes=10),
                                           "192.0.2.2": NOW + timedelta(minutes=1)}
    with sessions() as s, s.begin():
        assert store.cooldowns(s, NOW + timedelta(minutes=2)) == {
            "192.0.2.1": NOW + timedelta(minutes=10)}
