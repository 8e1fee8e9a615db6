"""What every system under test offers the harness, and the naive relay as the first one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.loadgen import Envelope

REPO = Path(__file__).resolve().parents[1]
RELAY_DOMAIN = "reply.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0,
                  procs: tuple[subprocess.Popen[bytes], ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited with {p.returncode} before "
                                   f"127.0.0.1:{port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def fake_envelopes(count: int) -> list[Envelope]:
    """Customer -> supplier relay address pairs shaped like mailveil's, for the others."""
    return [(f"customer{i:06d}@customer.example",
             f"local-partner-{i:012x}@{RELAY_DOMAIN}") for i in range(count)]


class System(ABC):
    """A relay that listens on ``port`` and delivers to the sink at ``sink_port``."""

    name: str = ""

    def __init__(self, sink_port: int, workdir: Path, bookings: int) -> None:
        self.sink_port = sink_port
        self.workdir = workdir
        self.bookings = bookings
        self.port = free_port()

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def roots(self) -> list[int]:
        """Pids whose process trees make up the system."""

    def extra(self) -> list[int]:
        """Other pids working for the system (database backends)."""
        return []

    def envelopes(self) -> list[Envelope]:
        return fake_envelopes(self.bookings)

    def sql_counts(self) -> dict[str, int] | None:
        """SQL statements by verb so far, when the system counts them."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class NaiveRelay(System):
    name = "naive"

    def start(self) -> None:
        log = open(self.workdir / "naive.log", "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.naive_relay", str(self.port), str(self.sink_port)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, procs=(self.proc,))

    def stop(self) -> None:
        stop_process(self.proc)

    def roots(self) -> list[int]:
        return [self.proc.pid]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "what": "aiosmtpd -> aiosmtplib, forwards during DATA"}
