"""Dead workers' leases are taken back at once, a live worker's never (issue 12.9).

The deciding function is tested on plain values; the store functions on SQLite and
PostgreSQL, with real processes for "alive" and "dead" on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailveil.domain.states import OutboxKind
from mailveil.store import repository as repo
from mailveil.store import workers
from mailveil.store.models import WorkerRow
from mailveil.store.workers import DEAD_AFTER, Holder, Lessee, is_dead

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
HERE = "boot-a pid:[1]"
LEASE = timedelta(minutes=5)  # the default: nothing here may wait for it to run out
RAW = b"Subject: hi\r\n\r\nbody\r\n"


# --- the deciding function ----------------------------------------------------------------


def holder(machine: str = HERE, pid: int = 4242, started: int = 1000) -> Holder:
    return Holder("w1", machine, pid, started)


def test_same_machine_is_judged_by_the_process_not_the_heartbeat() -> None:
    silent_for_an_hour = NOW - timedelta(hours=1)
    assert not is_dead(holder(), silent_for_an_hour, machine=HERE, running_since=1000, now=NOW)
    assert is_dead(holder(), NOW, machine=HERE, running_since=None, now=NOW)


def test_a_reused_pid_is_not_the_holder() -> None:
    assert is_dead(holder(started=1000), NOW, machine=HERE, running_since=2000, now=NOW)


@pytest.mark.parametrize("other", ["boot-b pid:[1]", "boot-a pid:[2]"])
def test_another_machine_or_pid_namespace_is_judged_by_its_heartbeat(other: str) -> None:
    """Containers on one kernel share the boot id, not pids: a pid that this worker cannot
    see says nothing about the holder."""
    h = holder(machine=other)
    assert not is_dead(h, NOW - DEAD_AFTER, machine=HERE, running_since=None, now=NOW)
    assert is_dead(h, NOW - DEAD_AFTER - timedelta(seconds=1), machine=HERE,
                   running_since=1000, now=NOW)


def test_a_lessee_stops_holding_before_others_may_call_it_dead() -> None:
    clock = [100.0]
    me = Lessee(holder(), clock=lambda: clock[0])
    assert me.holds(100.0)
    clock[0] += DEAD_AFTER.total_seconds() / 2 - 0.1
    assert me.holds(100.0)
    clock[0] += 0.2  # no heartbeat for half DEAD_AFTER
    assert not me.holds(100.0)
    me.beaten(enlisted_again=False)
    assert me.holds(100.0)
    me.beaten(enlisted_again=True)  # it had been called dead: older leases are gone
    assert not me.holds(100.0)
    assert me.holds(clock[0])


# --- this machine's processes -------------------------------------------------------------


def finished_process() -> tuple[int, int]:
    """The pid and start time of a process that ran and is gone (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    started = workers.running_since(proc.pid)
    assert started is not None
    proc.communicate(b"")
    return proc.pid, started


def test_running_since_tells_a_live_process_from_a_gone_one() -> None:
    assert workers.running_since(os.getpid()) == workers.this_process().pid_started
    pid, _ = finished_process()
    assert workers.running_since(pid) is None


def test_running_since_reads_a_command_name_with_spaces_and_parentheses(
        tmp_path: os.PathLike[str]) -> None:
    odd = os.path.join(tmp_path, "a) b (c")
    os.symlink(sys.executable, odd)
    proc = subprocess.Popen([odd, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        started = workers.running_since(proc.pid)
        assert started is not None and started >= workers.this_process().pid_started
    finally:
        proc.communicate(b"")


# --- the store ----------------------------------------------------------------------------


def leased_messages(sessions: sessionmaker[Session], owner: Holder) -> None:
    """An inbound message and an outbound copy, both leased to ``owner`` for 5 minutes."""
    with sessions() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=RAW,
                                        scan="clean", now=NOW)
        repo.queue_outbounds(s, [repo.NewOutbound(OutboxKind.NOTICE, inbound_id, None, None,
                                                  f"{inbound_id:024x}", "", "r@x",
                                                  f"<{inbound_id}@x>", RAW)], NOW)
        assert repo.claim_inbound(s, limit=5, now=NOW, lease=LEASE, holder=owner.id)
        assert repo.claim_outbound(s, limit=5, now=NOW, lease=LEASE, holder=owner.id)


def claimable(sessions: sessionmaker[Session], at: datetime) -> tuple[int, int]:
    """How many inbound and outbound messages another worker could take ``at`` then."""
    with sessions() as s, s.begin():
        return (len(repo.claim_inbound(s, limit=5, now=at, lease=LEASE, holder="other")),
                len(repo.claim_outbound(s, limit=5, now=at, lease=LEASE, holder="other")))


def reaped(sessions: sessionmaker[Session], me: Holder, at: datetime) -> list[str]:
    with sessions() as s, s.begin():
        return workers.reap(s, me, at)


def test_a_restart_takes_back_a_dead_predecessors_leases_at_once(
        sessions: sessionmaker[Session]) -> None:
    """The killed process ran on this machine and its pid is gone."""
    pid, started = finished_process()
    me = workers.this_process()
    dead = Holder("dead-one", me.machine, pid, started)
    with sessions() as s, s.begin():
        workers.enlist(s, dead, NOW)
    leased_messages(sessions, dead)
    assert claimable(sessions, NOW) == (0, 0)
    assert reaped(sessions, me, NOW) == ["dead-one"]
    assert claimable(sessions, NOW) == (1, 1)
    with sessions() as s:
        assert s.get(WorkerRow, "dead-one") is None


def test_a_live_holders_leases_are_never_taken(sessions: sessionmaker[Session]) -> None:
    """A process of this machine that runs keeps its leases however late its heartbeat; a
    worker elsewhere keeps them while its heartbeat is recent."""
    me = workers.this_process()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        started = workers.running_since(proc.pid)
        assert started is not None
        sibling = Holder("sibling", me.machine, proc.pid, started)
        remote = Holder("remote", "another-boot pid:[9]", 1, 1)
        with sessions() as s, s.begin():
            workers.enlist(s, sibling, NOW - timedelta(hours=1))
            workers.enlist(s, remote, NOW)
        leased_messages(sessions, sibling)
        leased_messages(sessions, remote)
        assert reaped(sessions, me, NOW + DEAD_AFTER) == []
        assert claimable(sessions, NOW + DEAD_AFTER) == (0, 0)
        assert reaped(sessions, me, NOW + DEAD_AFTER + timedelta(seconds=1)) == ["remote"]
        assert claimable(sessions, NOW + DEAD_AFTER) == (1, 1)  # the remote one's only
    finally:
        proc.communicate(b"")


def test_a_worker_that_beat_meanwhile_is_not_buried(
        sessions: sessionmaker[Session], database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reaper judged an old heartbeat; the worker beat before the reaper acted on it."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock, taken at BEGIN, keeps a beat from coming between "
                    "the reaper's read and its write")
    me = workers.this_process()
    remote = Holder("remote", "another-boot pid:[9]", 1, 1)
    with sessions() as s, s.begin():
        workers.enlist(s, remote, NOW)
    leased_messages(sessions, remote)
    late = NOW + DEAD_AFTER + timedelta(seconds=1)
    judge = workers.is_dead

    def beats_meanwhile(*args: Any, **kwargs: Any) -> bool:
        with sessions() as other, other.begin():
            assert not workers.beat(other, remote, late)
        return judge(*args, **kwargs)

    monkeypatch.setattr(workers, "is_dead", beats_meanwhile)
    assert reaped(sessions, me, late) == []
    assert claimable(sessions, late) == (0, 0)


def test_a_worker_called_dead_enlists_again(sessions: sessionmaker[Session]) -> None:
    remote = Holder("remote", "another-boot pid:[9]", 1, 1)
    with sessions() as s, s.begin():
        workers.enlist(s, remote, NOW)
        assert workers.reap(s, workers.this_process(), NOW + 2 * DEAD_AFTER) == ["remote"]
        assert workers.beat(s, remote, NOW + 2 * DEAD_AFTER)
        assert not workers.beat(s, remote, NOW + 2 * DEAD_AFTER)


def test_a_stopping_worker_gives_back_what_it_holds(sessions: sessionmaker[Session]) -> None:
    me, dead = workers.start(sessions, NOW)
    assert dead == []
    leased_messages(sessions, me.holder)
    workers.stop(sessions, me)
    assert claimable(sessions, NOW) == (1, 1)
    with sessions() as s:
        assert s.get(WorkerRow, me.holder.id) is None
