"""Loopback ports for the servers tests start."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A port free now, from below the kernel's ephemeral range: the thousands of client
    connections the tests make take their local ports from that range, and one of them could
    take a port picked there before the server it was picked for binds it."""
    low = _ephemeral_low()
    while True:
        port = random.randrange(10_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, 10_001)


def wait_for_port(port: int, timeout: float = 20.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
