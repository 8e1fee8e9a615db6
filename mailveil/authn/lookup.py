"""DNS lookups for the authenticity checks: one asynchronous resolver, answers as text,
and failures split into "no such name" (an answer) and "no answer" (try again later)."""

from __future__ import annotations

import contextlib
from typing import Final, Literal

import dns.exception
import dns.name
import dns.rdata
import dns.resolver
from dns.asyncresolver import Resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT

DNS_TIMEOUT: Final = 5.0  # seconds for one lookup, all tries included
MAX_DOMAIN: Final = 253  # RFC 1035 2.3.4, in octets; an A-label is never shorter


def make_resolver(nameserver: str | None, *, timeout: float = DNS_TIMEOUT) -> Resolver:
    """A resolver for :func:`check`: the system's (``None``) or one server, "host:port".

    The short lifetime bounds how long an SMTP session waits on a dead DNS server before
    it is answered 451. dnspython's LRU cache keeps each answer for its TTL (a denial for
    its SOA's negative TTL, RFC 2308): real senders repeat their domains, and a message of
    a domain seen within the TTL costs no query (0.58 -> 0.38 ms of CPU per check on
    uvloop; docs/perf-round2-steps.md).
    """
    if nameserver is None:
        resolver = Resolver()
    else:
        host, port = _host_port(nameserver)
        resolver = Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.cache = dns.resolver.LRUCache()
    return resolver


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"DNS server must be given as host:port, got {value!r}")
    return host.strip("[]"), int(port)





class TempError(Exception):
    """No answer could be had (timeout, SERVFAIL, no server reachable): try again later."""


async def query(resolver: Resolver, name: str, rdtype: Literal["TXT", "A", "AAAA", "MX"]
                 ) -> list[str] | None:
    """The records of ``name`` as text ([] if none of that type), ``None`` if no such name.

    TXT strings are joined and decoded as Latin-1, which maps every byte, so DKIM keys can
    be encoded back exactly. A name that cannot exist (empty or over-long label) is absent.
    """
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException:
        return None
    try:
        answer = await resolver.resolve(qname, rdtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None
    except dns.exception.DNSException as error:
        raise TempError(str(error)) from error
    return [text(rdata) for rdata in answer.rrset or ()]


def text(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, TXT):
        return b"".join(rdata.strings).decode("latin-1")
    if isinstance(rdata, MX):
        return rdata.exchange.to_text()
    return rdata.to_text()





def normalized(domain: str) -> str:
    """Lower case, no final dot, A-labels: how two spellings of one domain compare equal.

    A name longer than any domain is left as written: the IDNA codec is pure Python, and
    a From header can hold megabytes.
    """
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii() and len(domain) <= MAX_DOMAIN:
        # Not a valid IDN: compared as written, and found nowhere in the DNS.
        with contextlib.suppress(UnicodeError):
            domain = domain.encode("idna").decode("ascii")
    return domain


def domain_of(address: str) -> str:
    return normalized(address.rpartition("@")[2]) if "@" in address else ""


