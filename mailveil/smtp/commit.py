"""Group commit: messages whose DATA ends while a commit is running share the next one.

Every accepted message must be durable before its ``250``, and a durable commit costs an
fsync (about 0.5 ms here, far more on network storage). Committing one message at a time
would make that the ceiling of the whole listener; batching whatever arrived meanwhile adds
no latency at low load and divides the cost by the batch at high load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from mailveil.store.repository import NewInbound

MAX_BATCH = 64
# A batch is written in one statement: the driver holds a copy of all of it (libpq's send
# buffer on PostgreSQL, the bound blobs on SQLite) beside the messages. Past a few MiB the
# fsync a batch shares is small beside writing the bytes, so a large message goes alone.
MAX_BATCH_BYTES = 4 * 1024 * 1024

Accepted = NewInbound
"""A message waiting for its 250: exactly what the store keeps of it."""


Commit = Callable[[Sequence[Accepted]], list[int]]


class GroupCommit:
    """``await group(message)`` returns the message's id once it is committed."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._pending: list[tuple[Accepted, asyncio.Future[int]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, message: Accepted) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((message, done))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._pending:
            batch = self._take()
            try:
                ids = await asyncio.to_thread(self._commit, [m for m, _ in batch])
            except Exception as exc:  # the whole batch failed: every sender gets a 451
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                # A session that went away meanwhile has a cancelled future: its message is
                # stored all the same, as with any MTA whose client drops after DATA.
                for (_, done), inbound_id in zip(batch, ids, strict=True):
                    if not done.done():
                        done.set_result(inbound_id)

    def _take(self) -> list[tuple[Accepted, asyncio.Future[int]]]:
        size = count = 0
        for count, (message, _) in enumerate(self._pending, start=1):
            size += len(message.raw)
            if count >= MAX_BATCH or size >= MAX_BATCH_BYTES:
                break
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch
