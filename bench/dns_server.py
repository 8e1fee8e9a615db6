"""A tiny authoritative DNS server on loopback UDP, for the tests and the benchmark, which must
resolve for real without leaving the machine.

Only what tests need: one question per query, answers from a fixed table, NXDOMAIN for
names it does not know, no TCP (answers too big for the query's UDP size come back
truncated, with the TC flag).
"""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 60
Records = Mapping[tuple[str, str], Sequence[str]]


def _txt(value: str) -> str:
    """Zone-file text of one TXT record: 255-byte strings at most, quoted."""
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class _Server(socketserver.UDPServer):
    def __init__(self, records: Records, ttl: int, asked: Counter[tuple[str, str]]) -> None:
        self.asked = asked
        self.rrsets = {
            (dns.name.from_text(name), dns.rdatatype.from_text(rdtype)): dns.rrset.from_text(
                name, ttl, dns.rdataclass.IN, rdtype,
                *(_txt(v) if rdtype.upper() == "TXT" else v for v in values))
            for (name, rdtype), values in records.items()
        }
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        data, sock = self.request
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not DNS: say nothing, as real servers do
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        self.server.asked[(question.name.to_text(), dns.rdatatype.to_text(question.rdtype))] += 1
        rrset = self.server.rrsets.get((question.name, question.rdtype))
        if rrset is not None:
            response.answer.append(rrset)
        elif not any(name == question.name for name, _ in self.server.rrsets):
            response.set_rcode(dns.rcode.NXDOMAIN)
        limit = query.payload if query.edns >= 0 else 512
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        sock.sendto(wire, self.client_address)


@contextlib.contextmanager
def running_dns(records: Records, *, ttl: int = TTL,
                asked: Counter[tuple[str, str]] | None = None) -> Iterator[tuple[str, int]]:
    """Serve ``records`` {(absolute name, type): [zone-file values]} on 127.0.0.1.

    TXT values are given unquoted and split into 255-byte strings here. Yields
    (host, port) for a resolver's ``nameservers`` and ``port``. ``asked`` counts the
    queries per (absolute name, type), for tests of a resolver's cache.
    """
    server = _Server(records, ttl, Counter() if asked is None else asked)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
