from datetime import timedelta

import pytest

from mailveil.delivery.backoff import retry_delay

MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def test_waits_double_then_cap() -> None:
    waits = [retry_delay(n, MIN, HOUR) for n in range(1, 9)]
    assert waits[:4] == [MIN, 2 * MIN, 4 * MIN, 8 * MIN]
    assert waits[-1] == HOUR
    assert waits == sorted(waits)


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert retry_delay(10_000, MIN, HOUR) == HOUR


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, MIN, HOUR)
