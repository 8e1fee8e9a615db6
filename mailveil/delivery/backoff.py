"""When to try again after a temporary failure: doubling waits, capped."""

from __future__ import annotations

from datetime import timedelta


def retry_delay(attempts: int, first: timedelta, cap: timedelta) -> timedelta:
    """Wait after the ``attempts``-th failed attempt (1-based): first, 2*first, 4*first..."""
    if attempts < 1:
        raise ValueError("attempts counts failed attempts, starting at 1")
    factor: int = 2 ** min(attempts - 1, 32)
    return min(cap, first * factor)
