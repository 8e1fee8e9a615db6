"""The life of a stored message, as data: every state and every move allowed between them.

The database keeps the values (plain strings, unchanged since the first schema); the
store's state-changing statements take their allowed starting states from the tables
below, so a move not written down here cannot happen (a row elsewhere simply does not
match). :mod:`mailveil.store.repository` is the only module that changes a state.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar


class InboundState(StrEnum):
    RECEIVED = "received"  # answered 250 and stored; waiting for processing
    PROCESSED = "processed"  # decided: archive entries and outgoing copies written
    FAILED = "failed"  # processing raised: parked for a human, never dropped


class OutboxState(StrEnum):
    QUEUED = "queued"  # waiting for (another) delivery attempt
    DELIVERED = "delivered"  # the next server took it
    UNDELIVERABLE = "undeliverable"  # delivery gave up; processing owes the sender a notice
    RETURNED = "returned"  # a bounce came back; processing owes the sender a notice
    FAILED = "failed"  # given up and explained, or parked after an unexpected error
    BOUNCED = "bounced"  # returned and explained
    HELD = "held"  # a review request kept for care (domain/review.py): released or refused
    REFUSED = "refused"  # care refused a held copy; processing owes the sender a notice
    WITHHELD = "withheld"  # refused and explained: never sent


class OutboxKind(StrEnum):
    RELAY = "relay"  # a relayed copy for the other party
    NOTICE = "notice"  # a refusal notice for the sender (never explained by another one)


OUTBOX_STARTS: frozenset[OutboxState] = frozenset({OutboxState.QUEUED, OutboxState.HELD})
"""The states a new outbox row may be written in."""

INBOUND_MOVES: Mapping[InboundState, frozenset[InboundState]] = {
    InboundState.RECEIVED: frozenset({InboundState.PROCESSED, InboundState.FAILED}),
}

OUTBOX_MOVES: Mapping[OutboxState, frozenset[OutboxState]] = {
    # Delivery's verdicts, or a crash while sending (parked as failed).
    OutboxState.QUEUED: frozenset({OutboxState.DELIVERED, OutboxState.UNDELIVERABLE,
                                   OutboxState.FAILED, OutboxState.RETURNED}),
    # Most bounces come back after the next server took the message.
    OutboxState.DELIVERED: frozenset({OutboxState.RETURNED}),
    # The notice is written (or nobody may be told, or composing it failed).
    OutboxState.UNDELIVERABLE: frozenset({OutboxState.FAILED}),
    OutboxState.RETURNED: frozenset({OutboxState.BOUNCED, OutboxState.FAILED}),
    # Care's decision on a held copy: released as composed, or refused.
    OutboxState.HELD: frozenset({OutboxState.QUEUED, OutboxState.REFUSED}),
    OutboxState.REFUSED: frozenset({OutboxState.WITHHELD, OutboxState.FAILED}),
}

OWES_NOTICE: Mapping[OutboxState, OutboxState] = {
    OutboxState.UNDELIVERABLE: OutboxState.FAILED,
    OutboxState.RETURNED: OutboxState.BOUNCED,
    OutboxState.REFUSED: OutboxState.WITHHELD,
}
"""The states in which the sender is owed a notice, and where each goes once it is written."""


OUTBOX_AT_WORK: frozenset[OutboxState] = frozenset({
    OutboxState.QUEUED, OutboxState.HELD, *OWES_NOTICE})
"""The states a runner (or care, for a held copy) still acts on: retention leaves these rows
alone."""

S = TypeVar("S", InboundState, OutboxState)


def sources(moves: Mapping[S, frozenset[S]], target: S) -> tuple[S, ...]:
    """The states a row may be in to move to ``target``."""
    return tuple(state for state, targets in moves.items() if target in targets)
