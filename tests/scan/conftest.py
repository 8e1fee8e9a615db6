"""Real clamd instances for the scan tests, skipped only where clamd is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scan.clamd_fixture import CLAMD, ClamdInfo, running_clamd


def _require_clamd() -> None:
    if not CLAMD.exists():
        pytest.skip(f"{CLAMD} is missing (apt-get install clamav-daemon)")


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdInfo]:
    """One clamd shared by the session: it starts in about 20 ms with the tiny database."""
    _require_clamd()
    with running_clamd(tmp_path_factory.mktemp("clamd")) as info:
        yield info


@pytest.fixture
def own_clamd(tmp_path: Path) -> Iterator[ClamdInfo]:
    """A clamd of the test's own, for tests that stop or kill it."""
    _require_clamd()
    with running_clamd(tmp_path) as info:
        yield info
