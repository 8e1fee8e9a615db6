"""The handler's recipient policy against a fake store: every limit without a socket."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import cast

from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import REGISTRY

from mailveil.authn.authenticity import Authenticity
from mailveil.domain.addresses import AddressBook
from mailveil.smtp import replies
from mailveil.smtp.commit import Accepted
from mailveil.smtp.gate import Lookup
from mailveil.smtp.listener import MAX_RECIPIENTS, MAX_REFUSED_RCPTS, RelayHandler

BOOK = AddressBook("reply.example.com")
SERVER = cast(SMTP, None)  # the handler never looks at the server


class Store:
    """Knows every bounce address (null sender) and nothing else; counts its lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    def lookup(self, address: str) -> Lookup:
        self.lookups += 1
        parsed = BOOK.parse(address)
        return Lookup(parsed, bounce_known=parsed is not None)

    def accept(self, messages: Sequence[Accepted]) -> list[int]:
        raise AssertionError("not used")


async def not_asked(raw: bytes, *, client_ip: str, helo: str, mail_from: str,
                    upstream: bool) -> Authenticity:
    raise AssertionError("recipient policy needs no authenticity check")


class NoScanner:
    async def verdict(self, raw: bytes) -> str:
        return "not scanned"


def bounce(n: int) -> str:
    return f"bounce-{n:020x}@reply.example.com"


def rcpts(addresses: list[str], store: Store | None = None) -> list[str]:
    """The handler's replies to ``RCPT TO`` each address, in one session."""
    handler = RelayHandler(store or Store(), NoScanner(), not_asked)

    async def session() -> list[str]:
        s, envelope = Session(asyncio.get_running_loop()), Envelope()
        envelope.mail_from = "<>"
        return [await handler.handle_RCPT(SERVER, s, envelope, a, []) for a in addresses]

    return asyncio.run(session())


def test_a_repeated_recipient_is_accepted_once_without_another_lookup() -> None:
    store = Store()
    assert rcpts([bounce(1), bounce(1).upper(), bounce(1)], store) == [replies.S250_RCPT_OK] * 3
    assert store.lookups == 1


def test_recipients_beyond_the_cap_are_deferred_without_a_lookup() -> None:
    store = Store()
    got = rcpts([bounce(n) for n in range(MAX_RECIPIENTS + 50)], store)
    assert got == [replies.S250_RCPT_OK] * MAX_RECIPIENTS + [replies.S452_TOO_MANY_RCPTS] * 50
    assert store.lookups == MAX_RECIPIENTS


def test_a_dictionary_attack_is_cut_off() -> None:
    store = Store()
    unknown = [f"customer-{n:012x}@elsewhere.example" for n in range(MAX_REFUSED_RCPTS + 5)]
    got = rcpts(unknown, store)
    assert got[:MAX_REFUSED_RCPTS] == [replies.S550_UNKNOWN] * MAX_REFUSED_RCPTS
    assert set(got[MAX_REFUSED_RCPTS:]) == {replies.S421_TOO_MANY_REFUSED}
    assert store.lookups == MAX_REFUSED_RCPTS


def test_ehlo_offers_pipelining() -> None:
    handler = RelayHandler(Store(), NoScanner(), not_asked)

    async def ehlo() -> tuple[list[str], str | None]:
        s = Session(asyncio.get_running_loop())
        got = await handler.handle_EHLO(SERVER, s, Envelope(), "client.example",
                                        ["250-reply.example.com", "250 HELP"])
        return got, s.host_name

    assert asyncio.run(ehlo()) == (
        ["250-reply.example.com", "250-PIPELINING", "250 HELP"], "client.example")


class BrokenScanner:
    async def verdict(self, raw: bytes) -> str:
        raise ValueError("Incorrect padding")


def test_an_unexpected_error_at_data_is_a_451_with_a_trace_counted_in_metrics() -> None:
    """A 5xx would make the sender's server bounce the message for a bug of ours."""
    handler = RelayHandler(Store(), BrokenScanner(), not_asked)
    before = REGISTRY.get_sample_value("mailveil_unexpected_errors_total",
                                       {"stage": "data"}) or 0

    async def data() -> str:
        envelope = Envelope()
        envelope.mail_from, envelope.rcpt_tos = "<>", [bounce(1)]
        envelope.original_content = b"Subject: s\r\n\r\nbody\r\n"
        return await handler.handle_DATA(SERVER, Session(asyncio.get_running_loop()), envelope)

    reply = asyncio.run(data())
    assert re.fullmatch(r"451 4\.3\.0 .*\(trace [0-9a-f]{12}\)", reply), reply
    assert REGISTRY.get_sample_value("mailveil_unexpected_errors_total",
                                     {"stage": "data"}) == before + 1


def test_an_unexpected_error_at_rcpt_is_a_451() -> None:
    class BrokenStore(Store):
        def lookup(self, address: str) -> Lookup:
            return cast(Lookup, None)  # the gate then fails on it

    assert rcpts([bounce(1)], BrokenStore())[0].startswith("451 4.3.0 ")
