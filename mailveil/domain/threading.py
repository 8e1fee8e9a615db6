"""Threads that hold in both mail programs.

Each relayed message has two Message-IDs: the *original* one its sender's program gave it
(known only to the sender) and the *relayed* one we gave the copy (known only to the
recipient). A reference in a message about to reach party P is rewritten into the form P
knows; an id P cannot know (from outside the conversation) is dropped, because it names
the other party's mail host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailveil.domain.addresses import Role


@dataclass(frozen=True)
class IdPair:
    sender_role: Role
    original_id: str
    relayed_id: str


def translate_ids(ids: Iterable[str], pairs: Iterable[IdPair], recipient: Role) -> tuple[str, ...]:
    """Map each reference to the id ``recipient`` has in their mailbox, keeping order."""
    known: dict[str, str] = {}
    for pair in pairs:
        if pair.sender_role is recipient:
            # The recipient sent the original; the other party replies to our copy.
            known[pair.relayed_id] = pair.original_id
            known[pair.original_id] = pair.original_id
        else:
            known[pair.original_id] = pair.relayed_id
            known[pair.relayed_id] = pair.relayed_id
    out: list[str] = []
    for msg_id in ids:
        mapped = known.get(msg_id)
        if mapped is not None and mapped not in out:
            out.append(mapped)
    return tuple(out)
