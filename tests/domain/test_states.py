"""The state model as data: every state is reachable, and every owed notice has a way out."""

from __future__ import annotations

from mailveil.domain.states import (
    INBOUND_MOVES,
    OUTBOX_AT_WORK,
    OUTBOX_MOVES,
    OUTBOX_STARTS,
    OWES_NOTICE,
    InboundState,
    OutboxState,
    sources,
)


def reachable(moves: dict[OutboxState, frozenset[OutboxState]], start: OutboxState
              ) -> set[OutboxState]:
    seen, todo = {start}, [start]
    while todo:
        for target in moves.get(todo.pop(), frozenset()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_outbox_state_is_reachable_from_a_start() -> None:
    assert set().union(*(reachable(dict(OUTBOX_MOVES), start)
                         for start in OUTBOX_STARTS)) == set(OutboxState)


def test_a_held_copy_is_released_to_the_queue_or_refused_and_explained() -> None:
    assert OUTBOX_MOVES[OutboxState.HELD] == {OutboxState.QUEUED, OutboxState.REFUSED}
    assert OWES_NOTICE[OutboxState.REFUSED] is OutboxState.WITHHELD


def test_every_inbound_state_is_reachable_from_received() -> None:
    assert {InboundState.RECEIVED, *INBOUND_MOVES[InboundState.RECEIVED]} == set(InboundState)


def test_an_owed_notice_ends_where_the_table_says_or_parked() -> None:
    for owing, done in OWES_NOTICE.items():
        assert done in OUTBOX_MOVES[owing]
        assert OutboxState.FAILED in OUTBOX_MOVES[owing]  # composing it may fail


def test_retention_leaves_alone_every_state_a_runner_still_moves_on_its_own() -> None:
    """Only a bounce from outside moves a delivered copy; nothing moves a finished one."""
    for state in OutboxState:
        moves_on_its_own = bool(OUTBOX_MOVES.get(state)) and state is not OutboxState.DELIVERED
        assert (state in OUTBOX_AT_WORK) is moves_on_its_own, state


def test_sources_reads_the_table_backwards() -> None:
    assert set(sources(OUTBOX_MOVES, OutboxState.RETURNED)) == {OutboxState.QUEUED,
                                                                 OutboxState.DELIVERED}
    assert sources(OUTBOX_MOVES, OutboxState.QUEUED) == (OutboxState.HELD,)
