"""A real clamd on loopback with a tiny test signature database, for tests.

No signature downloads are possible here, so the database is written by hand: it knows
only the EICAR test file. Standalone on purpose (no pytest, no conftest) so a top-level
conftest or a benchmark can import it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port

CLAMD = Path("/usr/sbin/clamd")
STARTUP_TIMEOUT = 30.0


def eicar() -> bytes:
    """The 68-byte EICAR test file, assembled so this source file is not itself flagged."""
    return b"".join((b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$", b"EICAR-STANDARD-ANTIVIRUS-",
                     b"TEST-FILE!$H+H*"))


def forwarded_with_bad_padding(inner: bytes) -> bytes:
    """A top-level ``message/rfc822`` part in base64 whose padding is cut off: the scan step
    once raised on it and the listener answered ``500`` (issue 12)."""
    if len(inner) % 3 == 0:  # a whole number of base64 groups: nothing to pad
        inner += b"\r\n"
    encoded = base64.encodebytes(inner).replace(b"\n", b"\r\n").replace(b"=", b"")
    return (b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded)


@dataclass(frozen=True)
class ClamdInfo:
    host: str
    port: int
    socket_path: Path
    process: subprocess.Popen[bytes]

    @property
    def tcp_address(self) -> str:
        return f"{self.host}:{self.port}"


def _write_database(folder: Path) -> None:
    sample = eicar()
    folder.mkdir()
    # .hdb: whole-file MD5 (finds EICAR as an attachment or a file inside an archive).
    (folder / "test.hdb").write_text(
        f"{hashlib.md5(sample).hexdigest()}:{len(sample)}:Test.EICAR\n")
    # .ndb: byte pattern in any file type at any offset (finds it in broken structures).
    (folder / "test.ndb").write_text(f"Test.EICAR.Pattern:0:*:{sample.hex()}\n")


def _write_config(tmp_path: Path, port: int, socket_path: Path) -> Path:
    lines = [
        f"DatabaseDirectory {tmp_path / 'db'}",
        f"TemporaryDirectory {tmp_path}",
        f"LogFile {tmp_path / 'clamd.log'}",
        "LogTime yes",
        f"TCPSocket {port}",
        "TCPAddr 127.0.0.1",
        f"LocalSocket {socket_path}",
        "Foreground yes",
        "StreamMaxLength 25M",
        "MaxFileSize 30M",
        "MaxScanSize 100M",
    ]
    if os.geteuid() == 0:
        lines.append("User root")  # clamd otherwise drops to the clamav user
    config = tmp_path / "clamd.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"zPING\0")
            return s.recv(16) == b"PONG\0"
    except OSError:
        return False


@contextlib.contextmanager
def running_clamd(tmp_path: Path) -> Iterator[ClamdInfo]:
    """Start clamd on a free loopback port and a unix socket; stop it on exit.

    The socket lives in its own short temporary folder because unix socket paths are
    limited to 107 bytes and pytest's tmp_path can be longer.
    """
    if not CLAMD.exists():
        raise FileNotFoundError(f"{CLAMD} is not installed (apt-get install clamav-daemon)")
    _write_database(tmp_path / "db")
    with tempfile.TemporaryDirectory(prefix="clamd-") as socket_dir:
        socket_path = Path(socket_dir) / "clamd.sock"
        port = free_port()  # racy by nature, fine on a test machine
        config = _write_config(tmp_path, port, socket_path)
        process = subprocess.Popen([str(CLAMD), f"--config-file={config}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not _answers_ping("127.0.0.1", port):
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (tmp_path / "clamd.log")
                    tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                    raise RuntimeError(f"clamd did not start:\n{tail}")
                time.sleep(0.01)
            yield ClamdInfo("127.0.0.1", port, socket_path, process)
        finally:
            process.kill()
            process.wait()
