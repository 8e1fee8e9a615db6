"""The recipients the policy service just let Postfix accept, for Postfix's relay of them.

Behind a Postfix that asks the policy service at RCPT, every accepted recipient reaches
the listener a moment later, relayed by Postfix, and the listener's RCPT would look the
booking up again. The policy service leaves the lookup it answered with here, and the
listener's RCPT takes it instead of asking the store, for a relay from a trusted peer only.

Safe for a few seconds: the lookup only says who may write to the address; whether the
conversation is still open is decided again from the store by the pipeline, which refuses
and explains a message to a booking closed meanwhile (:mod:`mailveil.pipeline.rules`).
An entry serves every relayed RCPT of its envelope for ``ttl`` seconds from the last answer
that kept it (a sender's messages in a row to one address share it: Postfix may accept the
next before it relays the first); the oldest go first past ``size``. Only accepted
recipients are kept, so refused guesses cost no memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from mailveil.smtp.gate import Lookup

TTL_SECONDS = 5.0  # Postfix relays an accepted message to mailveil within a second or so
SIZE = 4096  # recipients in flight between Postfix's RCPT and its relay to mailveil


def key(sender: str, recipient: str) -> tuple[str, str]:
    """The envelope as both ends see it: addresses compare without case or angle brackets
    (:func:`mailveil.domain.addresses.same_mailbox`); the null sender is ``""``."""
    return sender.strip().strip("<>").lower(), recipient.strip().strip("<>").lower()


class Vouched:
    """Lookups by (sender, recipient), for ``ttl`` seconds.

    Used from the event loop only (the policy service and the listener share it)."""

    def __init__(self, ttl: float = TTL_SECONDS, size: int = SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._size, self._clock = ttl, size, clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, Lookup]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, sender: str, recipient: str, lookup: Lookup) -> None:
        """Keep ``lookup``, which let ``sender`` write to ``recipient`` just now."""
        k = key(sender, recipient)
        self._entries.pop(k, None)
        self._entries[k] = (self._clock() + self._ttl, lookup)
        self._prune()

    def get(self, sender: str, recipient: str) -> Lookup | None:
        """The lookup kept for this envelope, or ``None`` if none is fresh."""
        self._prune()
        entry = self._entries.get(key(sender, recipient))
        return None if entry is None else entry[1]

    def _prune(self) -> None:
        """Drop the expired entries (the oldest are first) and those past the bound."""
        now = self._clock()
        while self._entries and (len(self._entries) > self._size
                                 or next(iter(self._entries.values()))[0] <= now):
            self._entries.popitem(last=False)
