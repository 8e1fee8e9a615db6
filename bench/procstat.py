"""CPU time and memory of a group of processes, read from /proc (Linux only).

A *group* is the process trees under some root pids plus a few extra pids (database server
backends). CPU is counted per process as user+sys of itself and of the children it reaped,
so short-lived helpers (Postfix's smtpd, cleanup, smtp) are not lost when they exit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

Key = tuple[int, int]  # (pid, start time in ticks): survives pid reuse


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: fields start after the last ')'
    return text[text.rindex(")") + 2:].split()


def parents() -> dict[int, int]:
    """pid -> ppid of every process on the machine."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))) is not None:
            out[int(name)] = int(fields[1])
    return out


def tree(roots: Iterable[int], ppids: dict[int, int] | None = None) -> set[int]:
    """The roots and all their descendants that are alive."""
    ppids = parents() if ppids is None else ppids
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [r for r in roots if r in ppids]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pid: int) -> tuple[Key, float] | None:
    """user + sys of the process and of its reaped children."""
    fields = _stat(pid)
    if fields is None:
        return None
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return (pid, int(fields[19])), ticks / TICKS


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes; PSS shares each shared page among the processes mapping it."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        return 0, 0
    return rss, pss


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle by the whole machine since boot (all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


@dataclass
class Group:
    """Processes of one system under test; sample() tracks peak memory and CPU."""

    roots: Callable[[], list[int]]
    extra: Callable[[], list[int]] = lambda: []
    start_tree: dict[Key, float] = field(default_factory=dict)
    start_extra: dict[Key, float] = field(default_factory=dict)
    last_extra: dict[Key, float] = field(default_factory=dict)
    peak_rss: int = 0
    peak_pss: int = 0
    peak_procs: int = 0

    @staticmethod
    def _cpu(pids: Iterable[int]) -> dict[Key, float]:
        return dict(c for pid in pids if (c := cpu_seconds(pid)) is not None)

    def begin(self) -> None:
        self.start_tree = self._cpu(tree(self.roots()))
        self.start_extra = self._cpu(self.extra())
        self.last_extra = dict(self.start_extra)
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.sample()

    def sample(self) -> None:
        pids = tree(self.roots())
        extra = set(self.extra()) - pids
        rss = pss = 0
        for pid in pids:  # memory of the trees only: a database server's is shared
            r, p = memory(pid)
            rss, pss = rss + r, pss + p
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        self.last_extra.update(self._cpu(extra))

    def cpu_used(self) -> tuple[float, float]:
        """CPU seconds since begin(): (process trees, extra pids).

        In the trees, a process that exited was reaped by its parent, whose children's time
        now holds the exited one's whole life: what it had used before begin() is taken off.
        Extra pids (database backends) are counted as last seen.
        """
        self.sample()
        now = self._cpu(tree(self.roots()))
        own = sum(v - self.start_tree.get(k, 0.0) for k, v in now.items())
        own -= sum(v for k, v in self.start_tree.items() if k not in now)
        extra = sum(v - self.start_extra.get(k, 0.0) for k, v in self.last_extra.items())
        return own, extra
