"""py-spy attached to the system's processes during a phase, and where the time went.

Sampling is non-blocking and of running threads only (idle threads are skipped), so the
counts approximate CPU time; C code running without the GIL (zlib, hashlib, sqlite3) is
charged to the Python line that called it.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

PY_SPY = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv/bin/py-spy")
RATE = 200
# where a running thread waits rather than computes (I/O, fsync in SQLite's commit, a
# poll): counted apart, and left out of the shares below
WAITS = ("psycopg:Connection.wait", "selectors:EpollSelector.select", "threading:",
         "ssl:", "socket:", "sqlalchemy:DefaultDialect.do_commit")
# stacks through these wait as a whole: SQLite's BEGIN IMMEDIATE sleeps in its busy handler
WAITING_CALLERS = ("mailveil.store.db:make_engine.<locals>._sqlite_begin",)
_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


class Profiler:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Path] = []

    def start(self, pids: list[int], label: str, names: list[str] | None = None) -> None:
        """One py-spy per pid; ``names`` (roles) end up in the file names."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.procs, self.files = [], []
        for i, pid in enumerate(pids):
            name = names[i] if names and i < len(names) else "p"
            out = self.out_dir / f"{label}-{name}-{pid}.txt"
            self.files.append(out)
            self.procs.append(subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE),
                 "--nonblocking", "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> list[Path]:
        for p in self.procs:
            p.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        return [f for f in self.files if f.exists()]


def _where(path: str) -> str:
    """A readable owner of a source file: mailveil.x.y, else its package or module.

    py-spy shortens paths to what follows sys.path (``dkim/crypto.py``, ``selectors.py``).
    """
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].partition("/")[2]
    if path.startswith("mailveil/") or "/mailveil/" in path:
        module = path.rsplit("mailveil/", 1)[1].removesuffix(".py").replace("/", ".")
        return "mailveil." + module
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    if not m:
        return frame, "?"
    where = _where(m["path"])
    return f"{where}:{m['name']}", where


def summarize(files: list[Path], messages: int, cpu_ms_per_msg: float,
              top: int = 25) -> dict[str, Any]:
    """Shares of the computing samples (waits left out): by leaf function (self), by owner
    of the leaf frame (self), and inclusive for every mailveil function on the stack; each
    with an estimate in ms per message = share x the CPU measured from /proc.

    Shares, not sample counts, because on a busy machine a thread that is runnable but
    not scheduled is sampled too.
    """
    own: Counter[str] = Counter()
    process: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = waiting = 0
    for f in files:
        for line in f.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_parse(x) for x in stack.split(";")]
            leaf, leaf_owner = frames[-1]
            if leaf.startswith(WAITS) or any(n in WAITING_CALLERS for n, _ in frames):
                waiting += count
                continue
            own[leaf] += count
            process[f.stem.rsplit("-", 2)[-2]] += count
            owners[leaf_owner] += count
            for name in {n for n, w in frames if w.startswith("mailveil")}:
                inclusive[name] += count
    computing = max(total - waiting, 1)

    def share(items: list[tuple[str, int]]) -> list[tuple[str, float, float]]:
        return [(k, round(100 * v / computing, 1), round(cpu_ms_per_msg * v / computing, 3))
                for k, v in items]

    return {
        "samples": total, "waiting_samples": waiting, "rate_hz": RATE, "messages": messages,
        "cpu_ms_per_msg": round(cpu_ms_per_msg, 3),
        "by_process": share(process.most_common(top)),
        "self_by_owner": share(owners.most_common(top)),
        "self_by_function": share(own.most_common(top)),
        "inclusive_mailveil": share(inclusive.most_common(top)),
    }


def render(summary: dict[str, Any], top: int = 12) -> str:
    lines = [f"  py-spy: {summary['samples']} samples, {summary['waiting_samples']} of them "
             f"waiting (I/O, fsync); shares of the rest x {summary['cpu_ms_per_msg']} CPU ms/msg"]
    for key, title in (("by_process", "by process (role)"),
                       ("inclusive_mailveil", "inclusive, mailveil functions"),
                       ("self_by_owner", "self, by module/package"),
                       ("self_by_function", "self, by function")):
        lines.append(f"  {title} (% of computing samples, ~ms per message):")
        lines += [f"    {pct:5.1f}%  {ms:7.2f}  {k}" for k, pct, ms in summary[key][:top]]
    return "\n".join(lines)
