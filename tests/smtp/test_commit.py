"""Group commit: concurrent messages share commits, each gets its own id or error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from mailveil.smtp.commit import Accepted, GroupCommit


def message(n: int) -> Accepted:
    return Accepted(f"s{n}@example.org", ("r@x",), b"x" * n, "clean")


class SlowStore:
    """Commits take 20 ms, like an fsync on a busy disk; ids count up."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    def __call__(self, messages: Sequence[Accepted]) -> list[int]:
        threading.Event().wait(0.02)
        with self._lock:
            self.batches.append(len(messages))
            first, self._next = self._next, self._next + len(messages)
        return list(range(first, first + len(messages)))


async def run_all(group: GroupCommit, count: int) -> list[int]:
    return list(await asyncio.gather(*(group(message(n)) for n in range(count))))


def test_concurrent_messages_share_commits_and_get_distinct_ids() -> None:
    store = SlowStore()
    ids = asyncio.run(run_all(GroupCommit(store), 200))
    assert sorted(ids) == list(range(200))
    assert sum(store.batches) == 200
    assert len(store.batches) < 20  # one commit per message would be 200
    assert max(store.batches) <= 64


def test_a_lone_message_is_committed_at_once() -> None:
    store = SlowStore()
    assert asyncio.run(run_all(GroupCommit(store), 1)) == [0]
    assert store.batches == [1]


def test_a_failed_commit_fails_its_whole_batch_only() -> None:
    calls = []

    def flaky(messages: Sequence[Accepted]) -> list[int]:
        calls.append(len(messages))
        if len(calls) == 1:
            raise OSError("disk full")
        return list(range(len(messages)))

    async def scenario() -> None:
        group = GroupCommit(flaky)
        with pytest.raises(OSError):
            await group(message(1))
        assert await group(message(2)) == 0

    asyncio.run(scenario())
