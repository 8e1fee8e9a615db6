"""A CPU budget per message: processing that costs far more than any real mail is stopped,
and the message is parked and its sender told (issue 16, item 7).

Python cannot interrupt a computation from outside, so the budget is checked cooperatively:
:func:`spend` is called between steps (each MIME entity split, each text part decoded, each
copy composed) and raises :class:`TooExpensive` once the thread has used its seconds. Every
step is linear in its input, so the overrun past the budget is one step's cost at most.
The clock is the thread's own CPU time: in ``serve`` other threads (the listener, the web
API) share the process, and time spent waiting for the GIL is not the message's fault.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

CPU_SECONDS: Final = 10.0
"""Default budget: a 14 MB message of ordinary mail costs about 1 s of CPU."""

_deadline: ContextVar[float | None] = ContextVar("cpu_deadline", default=None)


class TooExpensive(Exception):
    """A message cost more than its budget, or is built to (a header too long to rewrite)."""


@contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Within this block, :func:`spend` raises once this thread has used ``seconds`` of CPU."""
    token = _deadline.set(time.thread_time() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def spend() -> None:
    """Raise :class:`TooExpensive` when the current budget is used up; outside a budget,
    nothing (tests, benchmarks and the listener call the same code unbudgeted)."""
    deadline = _deadline.get()
    if deadline is not None and time.thread_time() > deadline:
        raise TooExpensive("processing used up its CPU budget")
