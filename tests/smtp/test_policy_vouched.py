"""What the policy service leaves for the listener (:mod:`mailveil.smtp.vouched`): for the
same envelope however it is spelt, never after its few seconds, never more than its bound.
The clock is injected: no waiting."""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import Envelope, Session

from mailveil.domain.addresses import AddressBook
from mailveil.smtp import replies
from mailveil.smtp.gate import Lookup
from mailveil.smtp.listener import RelayHandler
from mailveil.smtp.protocol import RelayEnvelope
from mailveil.smtp.vouched import Vouched
from tests.smtp.test_listener import SERVER, NoScanner, Store, bounce, not_asked

BOOK = AddressBook("reply.example.com")
RELAY = "supplier-0123456789ab@reply.example.com"
FOUND = Lookup(BOOK.parse(RELAY))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_serves_the_same_envelope_however_spelt() -> None:
    vouched = Vouched()
    vouched.put("Ann@Customer.example", RELAY, FOUND)
    assert vouched.get("someone@else.example", RELAY) is None  # another sender: not vouched
    assert vouched.get("ann@customer.example", "customer-0123456789ab@reply.example.com") is None
    assert vouched.get("<ann@customer.example>", RELAY.upper()) is FOUND
    assert vouched.get(" ann@customer.example", RELAY) is FOUND  # and again, while fresh


def test_the_null_sender_is_its_own_key() -> None:
    vouched = Vouched()
    vouched.put("", RELAY, FOUND)
    assert vouched.get("ann@customer.example", RELAY) is None
    assert vouched.get("<>", RELAY) is FOUND


def test_entries_expire() -> None:
    clock = Clock()
    vouched = Vouched(ttl=5.0, clock=clock)
    vouched.put("ann@customer.example", RELAY, FOUND)
    vouched.put("bob@customer.example", RELAY, FOUND)
    clock.now += 4.9
    assert vouched.get("ann@customer.example", RELAY) is FOUND
    clock.now += 0.1
    assert vouched.get("bob@customer.example", RELAY) is None
    assert len(vouched) == 0


def test_a_renewed_entry_lives_from_its_renewal() -> None:
    clock = Clock()
    vouched = Vouched(ttl=5.0, clock=clock)
    vouched.put("ann@customer.example", RELAY, FOUND)
    clock.now += 3
    vouched.put("bob@customer.example", RELAY, FOUND)
    vouched.put("ann@customer.example", RELAY, FOUND)
    clock.now += 3
    assert vouched.get("ann@customer.example", RELAY) is FOUND
    assert vouched.get("bob@customer.example", RELAY) is FOUND


def test_the_oldest_go_past_the_bound() -> None:
    vouched = Vouched(size=3)
    for n in range(10):
        vouched.put(f"s{n}@customer.example", RELAY, FOUND)
    assert len(vouched) == 3
    assert vouched.get("s6@customer.example", RELAY) is None
    assert all(vouched.get(f"s{n}@customer.example", RELAY) is FOUND for n in (7, 8, 9))


def test_the_listener_uses_an_entry_for_a_trusted_peers_relay_only() -> None:
    """A trusted peer (it said XFORWARD) relays what the policy service accepted; any other
    client's RCPT is looked up in the store, whatever was vouched."""
    store, vouched = Store(), Vouched()
    vouched.put("", bounce(1), Lookup(BOOK.parse(bounce(1)), bounce_known=True))
    handler = RelayHandler(store, NoScanner(), not_asked, vouched=vouched)

    async def rcpt(envelope: Envelope) -> str:
        envelope.mail_from = "<>"
        return await handler.handle_RCPT(SERVER, Session(asyncio.get_running_loop()), envelope,
                                         bounce(1), [])

    relayed = RelayEnvelope()
    relayed.client_address = "192.0.2.7"
    assert asyncio.run(rcpt(relayed)) == replies.S250_RCPT_OK
    assert store.lookups == 0
    assert asyncio.run(rcpt(Envelope())) == replies.S250_RCPT_OK
    assert store.lookups == 1
