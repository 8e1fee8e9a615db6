"""Which workers still run, so that the leases of one that died are taken back at once.

A lease runs out after ``MAILVEIL_LEASE_SECONDS`` (5 minutes by default): alone, it made
every message a killed worker held wait that long after a restart. So each worker has a
row in ``workers``, its leases name it, and a worker that starts, and then every
:data:`HEARTBEAT`, takes back the leases of the workers that are dead:

* on the same machine (same boot id and pid namespace) death is certain: the holder's pid
  runs no more, or runs a process started at another time (the pid was reused);
* on another machine only silence tells: no heartbeat for :data:`DEAD_AFTER`. A worker
  that could not beat for half that long stops sending (:meth:`Lessee.holds`), so that by
  the time others may call it dead it sends nothing they could send too.

A live worker on the same machine is never called dead, whatever its heartbeat: a database
outage makes every heartbeat late, not any process dead.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailveil.store import repository as repo
from mailveil.store.models import WorkerRow

HEARTBEAT = timedelta(seconds=5)
DEAD_AFTER = timedelta(seconds=30)


@dataclass(frozen=True)
class Holder:
    """A worker process as leases name it, with what tells whether it still runs."""

    id: str
    machine: str  # equal for processes that see each other's pids
    pid: int
    pid_started: int  # clock ticks after boot: tells a reused pid apart


def is_dead(holder: Holder, heartbeat_at: datetime, *, machine: str,
            running_since: int | None, now: datetime,
            dead_after: timedelta = DEAD_AFTER) -> bool:
    """Whether ``holder``'s leases may be taken now, seen from a worker on ``machine``.

    ``running_since`` is when the process that has the holder's pid on ``machine`` started
    (None: there is none); it is only read when the holder is on ``machine``.
    """
    if holder.machine == machine:
        return running_since != holder.pid_started
    return now - heartbeat_at > dead_after


def running_since(pid: int) -> int | None:
    """When process ``pid`` of this machine started, or None if it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command (field 2) is in parentheses and may hold spaces and parentheses itself.
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22, starttime


def this_machine() -> str:
    """Boot id and pid namespace: containers on one kernel share the boot id but not pids.
    Without /proc, a value no other process has: only heartbeats tell then."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return f"unknown {uuid.uuid4().hex}"


def this_process() -> Holder:
    pid = os.getpid()
    return Holder(uuid.uuid4().hex, this_machine(), pid, running_since(pid) or 0)


class Lessee:
    """This process as a holder of leases, and whether what it leased is still its own."""

    def __init__(self, holder: Holder, clock: Callable[[], float] = time.monotonic) -> None:
        self.holder = holder
        self._clock = clock
        self._enlisted = self._beaten = clock()

    def beaten(self, enlisted_again: bool) -> None:
        self._beaten = self._clock()
        if enlisted_again:
            self._enlisted = self._beaten

    def holds(self, leased_at: float) -> bool:
        """Whether leases taken at ``leased_at`` (this clock) are still ours: we were not
        called dead since, and our last heartbeat is too recent for anyone to call us so."""
        now = self._clock()
        return (leased_at >= self._enlisted
                and now - self._beaten < DEAD_AFTER.total_seconds() / 2)


_BEAT = (update(WorkerRow).where(WorkerRow.id == bindparam("worker"))
         .values(heartbeat_at=bindparam("now")).returning(WorkerRow.id))
_OTHERS = select(WorkerRow.id, WorkerRow.machine, WorkerRow.pid, WorkerRow.pid_started,
                 WorkerRow.heartbeat_at).where(WorkerRow.id != bindparam("worker"))
# Only if its heartbeat is still the one judged: a worker that beat meanwhile is alive.
_BURY = (delete(WorkerRow).where(WorkerRow.id == bindparam("worker"),
                                 WorkerRow.heartbeat_at == bindparam("heartbeat_at"))
         .returning(WorkerRow.id))


def enlist(s: Session, me: Holder, now: datetime) -> None:
    s.execute(insert(WorkerRow).values(id=me.id, machine=me.machine, pid=me.pid,
                                       pid_started=me.pid_started, started_at=now,
                                       heartbeat_at=now))


def beat(s: Session, me: Holder, now: datetime) -> bool:
    """Say this worker is alive; True when it had been called dead and enlisted again (its
    leases were taken back meanwhile)."""
    if s.execute(_BEAT, {"worker": me.id, "now": now}).first() is not None:
        return False
    enlist(s, me, now)
    return True


def reap(s: Session, me: Holder, now: datetime,
         since: Callable[[int], int | None] = running_since) -> list[str]:
    """Take back the leases of the workers that are dead; returns their ids."""
    dead = []
    for worker, machine, pid, pid_started, heartbeat_at in s.execute(_OTHERS, {"worker": me.id}):
        holder = Holder(worker, machine, pid, pid_started)
        local = since(pid) if machine == me.machine else None
        if (is_dead(holder, heartbeat_at, machine=me.machine, running_since=local, now=now)
                and s.execute(_BURY, {"worker": worker, "heartbeat_at": heartbeat_at}).first()):
            dead.append(worker)
    repo.release_leases(s, dead)
    return dead


def leave(s: Session, me: Holder) -> None:
    """A worker that stops: what it still holds is due again at once."""
    repo.release_leases(s, [me.id])
    s.execute(delete(WorkerRow).where(WorkerRow.id == me.id))


def start(sessions: sessionmaker[Session], now: datetime) -> tuple[Lessee, list[str]]:
    """Enlist this process and take back at once what dead workers held (a restart after a
    crash finds its predecessor dead); returns their ids too."""
    me = Lessee(this_process())
    with sessions() as s, s.begin():
        enlist(s, me.holder, now)
        return me, reap(s, me.holder, now)


def heartbeat(sessions: sessionmaker[Session], me: Lessee, now: datetime) -> list[str]:
    """One beat: say this worker is alive and reap the dead; returns their ids."""
    with sessions() as s, s.begin():
        again = beat(s, me.holder, now)
        dead = reap(s, me.holder, now)
    me.beaten(enlisted_again=again)
    return dead


def stop(sessions: sessionmaker[Session], me: Lessee) -> None:
    with sessions() as s, s.begin():
        leave(s, me.holder)
