"""A PostgreSQL server of the test's own, for tests that stop and start the database.

The shared server at 127.0.0.1:5432 must never be restarted, so a test that takes the
database away runs Debian's binaries on a free port in a temporary directory. PostgreSQL
refuses to run as root: as root the directory is given to the ``postgres`` user and every
command runs through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.support.net import free_port

BIN = Path(os.environ.get("MAILVEIL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_CTL, INITDB = BIN / "pg_ctl", BIN / "initdb"


class PrivatePostgres:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.data = directory / "data"
        self.log = directory / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mailveil"

    def _run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*as_postgres, *args], capture_output=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.decode(errors='replace')}")

    def init(self) -> None:
        self._run(str(INITDB), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        self.start()
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mailveil")

    def start(self) -> None:
        # fsync off: the server is killed, never the machine, so the page cache survives
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
                   "-c fsync=off -c max_connections=50")
        self._run(str(PG_CTL), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "30", "-o", options, "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` drops every connection at once, like a crashed server."""
        self._run(str(PG_CTL), "-D", str(self.data), "-m", mode, "-w", "stop")

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[PrivatePostgres]:
        # Not under pytest's tmp_path: its parents are private to root.
        directory = Path(tempfile.mkdtemp(prefix="mailveil-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
        server = cls(directory, free_port())
        try:
            server.init()
            yield server
        finally:
            if (server.data / "postmaster.pid").exists():
                server.stop()
            shutil.rmtree(directory, ignore_errors=True)
