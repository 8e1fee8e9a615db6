"""Run a mailveil role counting its SQL statements and transactions (``--count-sql``).

    python -m bench.sqlcount <role>      (environment as for ``python -m mailveil``)

On SIGUSR1 the counts so far are written as JSON to $BENCH_SQLCOUNT_FILE; the harness
signals at the start and the end of a phase and takes the difference.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

counts: Counter[str] = Counter()


@event.listens_for(Engine, "before_cursor_execute")
def _statement(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
    counts[statement.split(None, 1)[0].upper() if statement.strip() else "?"] += 1


@event.listens_for(Engine, "commit")
def _commit(conn: Any) -> None:
    counts["(commit)"] += 1


@event.listens_for(Engine, "rollback")
def _rollback(conn: Any) -> None:
    counts["(rollback)"] += 1


def _dump(signum: int, frame: FrameType | None) -> None:
    path = Path(os.environ["BENCH_SQLCOUNT_FILE"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts))
    tmp.replace(path)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _dump)
    from mailveil.cli import main

    sys.exit(main(sys.argv[1:]))
