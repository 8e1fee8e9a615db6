"""The DNS server every mailveil process under test asks for SPF, DKIM and DMARC.

One per test run, started on first use: the test domains publish nothing (so their mail
is neither authenticated nor refused, as most small domains), except ``spoofed.example``,
whose owner says that no host may send its mail and that failing mail must be refused.
"""

from __future__ import annotations

import atexit
import contextlib
import functools

from bench.dns_server import running_dns

SPOOFED_DOMAIN = "spoofed.example"
RECORDS = {
    (f"{SPOOFED_DOMAIN}.", "TXT"): ["v=spf1 -all"],
    (f"_dmarc.{SPOOFED_DOMAIN}.", "TXT"): ["v=DMARC1; p=reject"],
}


@functools.cache
def test_dns() -> str:
    """host:port of the running server, for ``MAILVEIL_DNS``."""
    stack = contextlib.ExitStack()
    host, port = stack.enter_context(running_dns(RECORDS))
    atexit.register(stack.close)
    return f"{host}:{port}"
