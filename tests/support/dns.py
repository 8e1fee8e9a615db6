"""The DNS server every mailveil process under test asks for SPF, DKIM and DMARC.

One per test run, started on first use: the test domains publish nothing (so their mail
is neither authenticated nor refused, as most small domains), except:

* ``spoofed.example``, whose owner says that no host may send its mail and that failing
  mail must be refused;
* ``<spf>-<policy>.example`` for every SPF result of a client on loopback (:data:`SPF`)
  and every DMARC policy (:data:`POLICIES`, ``nodmarc`` for no record), for tables of
  From shapes x policy x SPF result;
* ``signed.example``, which allows no host by SPF, asks for ``p=reject`` and publishes a
  DKIM key (:func:`dkim_key`): only a valid signature gets its mail through.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.message
import dns.name
import dns.query
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.dns_server import running_dns
from mailveil.mail.dkim import dns_txt_record

SPOOFED_DOMAIN = "spoofed.example"
SIGNED_DOMAIN = "signed.example"
RELAY_DOMAIN = "reply.example.com"  # every mailveil under test (tests/conftest.py)
DKIM_SELECTOR = "sel"
# The SPF result of a client on 127.0.0.0/8 (every test client) for each record.
SPF: dict[str, str | None] = {
    "pass": "v=spf1 ip4:127.0.0.0/8 -all",
    "softfail": "v=spf1 ip4:192.0.2.0/24 ~all",
    "fail": "v=spf1 ip4:192.0.2.0/24 -all",
    "none": None,
}
POLICIES = ("none", "quarantine", "reject", "nodmarc")


def policy_domain(spf: str, policy: str) -> str:
    """The domain whose SPF gives ``spf`` on loopback and whose DMARC policy is ``policy``."""
    return f"{spf}-{policy}.example"


@functools.cache
def dkim_key() -> bytes:
    """The private key of ``signed.example`` (PEM), made once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def dkim_key_name() -> str:
    return f"{DKIM_SELECTOR}._domainkey.{SIGNED_DOMAIN}."


def records() -> dict[tuple[str, str], list[str]]:
    zone = {
        (f"{SPOOFED_DOMAIN}.", "TXT"): ["v=spf1 -all"],
        (f"_dmarc.{SPOOFED_DOMAIN}.", "TXT"): ["v=DMARC1; p=reject"],
        (f"{SIGNED_DOMAIN}.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        (f"_dmarc.{SIGNED_DOMAIN}.", "TXT"): ["v=DMARC1; p=reject"],
        (dkim_key_name(), "TXT"): [dns_txt_record(dkim_key(), DKIM_SELECTOR, SIGNED_DOMAIN)[1]],
        # The relay domain's key, for a mailveil given dkim_key() (MAILVEIL_DKIM_KEY) and
        # selector "sel": its signatures verify against this server.
        (f"{DKIM_SELECTOR}._domainkey.{RELAY_DOMAIN}.", "TXT"):
            [dns_txt_record(dkim_key(), DKIM_SELECTOR, RELAY_DOMAIN)[1]],
    }
    for spf, record in SPF.items():
        for policy in POLICIES:
            domain = policy_domain(spf, policy)
            if record is not None:
                zone[(f"{domain}.", "TXT")] = [record]
            if policy != "nodmarc":
                zone[(f"_dmarc.{domain}.", "TXT")] = [f"v=DMARC1; p={policy}"]
    return zone


@functools.cache
def test_dns() -> str:
    """host:port of the running server, for ``MAILVEIL_DNS``."""
    stack = contextlib.ExitStack()
    host, port = stack.enter_context(running_dns(records()))
    atexit.register(stack.close)
    return f"{host}:{port}"


@dataclass
class Held:
    """A DNS server in front of :func:`test_dns` that keeps the answer for one name until
    the test releases it: a way to hold a message in the middle of its authenticity check."""

    address: str
    asked: threading.Event = field(default_factory=threading.Event)  # the name was asked
    release: threading.Event = field(default_factory=threading.Event)


class _Forward(socketserver.BaseRequestHandler):
    server: _HoldingServer

    def handle(self) -> None:
        data, sock = self.request
        query = dns.message.from_wire(data)
        if query.question and query.question[0].name == self.server.held_name:
            self.server.held.asked.set()
            self.server.held.release.wait(60)
        host, port = self.server.upstream
        answer = dns.query.udp(query, host, port=port, timeout=5)
        sock.sendto(answer.to_wire(), self.client_address)


class _HoldingServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, upstream: str, held_name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.held_name = dns.name.from_text(held_name)
        self.held = Held(f"127.0.0.1:{self.server_address[1]}")


@contextlib.contextmanager
def holding_dns(name: str) -> Iterator[Held]:
    """Answers as :func:`test_dns` does, but the answer for ``name`` only once released
    (the resolver of mailveil gives up after its 5 s lifetime: release before that)."""
    server = _HoldingServer(test_dns(), name)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.held
    finally:
        server.held.release.set()
        server.shutdown()
        server.server_close()
        thread.join()
