"""Run a mailveil role writing each SQL statement it executes to a file, one a line.

    python -m tests.support.sqllog <role>      (environment as for ``python -m mailveil``,
                                                 plus TESTS_SQL_LOG: the file to append to)

For tests that count one kind of statement (say, the RCPT's booking lookup) in a real
process: counting every SELECT would count the worker's and the limits' rounds too, whose
number depends on the time a test takes.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

ENV = "TESTS_SQL_LOG"


def log_to(path: Path) -> None:
    """Append every statement any engine of this process executes to ``path``."""
    lock = threading.Lock()
    log = path.open("a", encoding="utf-8", buffering=1)

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                   executemany: bool) -> None:
        with lock:
            log.write(" ".join(statement.split()) + "\n")


def statements(path: Path) -> list[str]:
    """The statements logged so far (none before the process ran one)."""
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


if __name__ == "__main__":
    log_to(Path(os.environ[ENV]))
    from mailveil.cli import main

    sys.exit(main(sys.argv[1:]))
