"""The doorbell over real sockets: every worker of a data directory hears it, and only them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from mailveil import doorbell
from mailveil.doorbell import Doorbell


def test_every_worker_of_the_directory_hears_a_ring(tmp_path: Path) -> None:
    async def run() -> None:
        bell, elsewhere = Doorbell(tmp_path / "a"), Doorbell(tmp_path / "b")
        first, second, other = asyncio.Event(), asyncio.Event(), asyncio.Event()
        with bell.listening(first) as a, bell.listening(second) as b, \
                elsewhere.listening(other) as c:
            assert a and b and c
            bell.ring()
            await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), 2)
            await asyncio.sleep(0.05)
            assert not other.is_set()
            first.clear()
            bell.ring()
            bell.ring()  # rings pile up into one wake
            await asyncio.wait_for(first.wait(), 2)
        bell.ring()  # nobody listens any more: nothing happens
        bell.close()
        elsewhere.close()

    asyncio.run(run())


def test_a_worker_past_the_slots_is_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doorbell, "SLOTS", 2)

    async def run() -> None:
        bell = Doorbell(tmp_path)
        with contextlib.ExitStack() as stack:
            heard = [stack.enter_context(bell.listening(asyncio.Event())) for _ in range(3)]
        assert heard == [True, True, False]
        bell.close()

    asyncio.run(run())


def test_a_vacant_slot_is_tried_again_after_a_while(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doorbell, "RECHECK_SECONDS", 0.2)

    async def run() -> None:
        bell = Doorbell(tmp_path)
        bell.ring()  # nobody listens: every slot is skipped for a while
        heard = asyncio.Event()
        with bell.listening(heard):
            bell.ring()
            await asyncio.sleep(0.05)
            assert not heard.is_set()
            await asyncio.sleep(0.2)
            bell.ring()
            await asyncio.wait_for(heard.wait(), 2)
        bell.close()

    asyncio.run(run())
