"""Waking the workers of this host when the listener has committed new mail.

In one process (``serve``) the worker could be woken by an in-memory event; as separate
processes (``smtp`` + ``worker``, to use every core) it would otherwise find new mail only by
polling the database, which either costs queries or adds latency. The listener rings after
each commit with a datagram to each worker of the same data directory; a worker that hears
it looks at once. A ring nobody hears costs nothing, and a missed one only delays the
message to the worker's next poll, so the database stays the only source of truth.

The sockets live in Linux's abstract namespace (no files to clean up after ``kill -9``),
named after the data directory, one per worker: up to :data:`SLOTS` workers per host and
data directory hear the bell; more still work, by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

SLOTS = 16
RECHECK_SECONDS = 1.0
"""How long a slot nobody listened on is skipped: a ring costs a system call per slot tried,
and a worker that starts meanwhile polls anyway."""


def _name(directory: Path, slot: int) -> bytes:
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return f"\0mailveil-doorbell-{digest}-{slot}".encode()


class Doorbell:
    def __init__(self, directory: Path) -> None:
        self._names = [_name(directory, slot) for slot in range(SLOTS)]
        self._vacant_until = [0.0] * SLOTS
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def ring(self) -> None:
        """Tell every listening worker; never blocks and never fails."""
        now = time.monotonic()
        for slot, name in enumerate(self._names):
            if self._vacant_until[slot] > now:
                continue
            try:
                self._sock.sendto(b"!", name)
            except BlockingIOError:
                pass  # the worker has not read its last ring yet: it will look anyway
            except OSError:
                self._vacant_until[slot] = now + RECHECK_SECONDS

    @contextlib.contextmanager
    def listening(self, heard: asyncio.Event) -> Iterator[bool]:
        """Set ``heard`` on each ring while in the block; yields whether a slot was free."""
        for name in self._names:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(name)
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            loop.add_reader(sock.fileno(), _drain, sock, heard)
            try:
                yield True
            finally:
                loop.remove_reader(sock.fileno())
                sock.close()
            return
        yield False

    def close(self) -> None:
        self._sock.close()


def _drain(sock: socket.socket, heard: asyncio.Event) -> None:
    with contextlib.suppress(BlockingIOError):
        while sock.recv(64):
            pass
    heard.set()
