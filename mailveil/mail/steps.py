"""Running a message through an ordered tuple of named steps, and noting which changed it.

Mailman's pipelines are the model (``pipelines/builtin.py``): the order of the changes is
data, each step has a name and a one-line description, and which steps touched a message
is kept with it (the relay copy's ``steps`` in the archive). The relay copy's steps are
:data:`mailveil.mail.rewrite.STEPS`.

A step works on the MIME tree of :mod:`mailveil.mail.mime` or on the message's bytes. The
tree is parsed before the first tree step and serialised before the first bytes step, so
with the tree steps first (as ``STEPS`` lists them) a message is parsed once and written
once, however many steps there are. A step that changes nothing returns what it was given;
"changed" is equality, which for an untouched tree is a walk of identical objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mailveil.mail.mime import Entity, parse, serialize

Plan = TypeVar("Plan")


@dataclass(frozen=True)
class Step(Generic[Plan]):
    """One change to a message; exactly one of ``tree`` and ``raw`` is given."""

    name: str
    description: str
    tree: Callable[[Entity, Plan], Entity] | None = None
    raw: Callable[[bytes, Plan], bytes] | None = None


@dataclass(frozen=True)
class Done:
    raw: bytes
    changed: tuple[str, ...]  # the names of the steps that changed the message, in order


def run(steps: Sequence[Step[Plan]], raw: bytes, plan: Plan) -> Done:
    """``raw`` through ``steps`` in order."""
    tree: Entity | None = None
    changed: list[str] = []
    for step in steps:
        if step.tree is not None:
            before = parse(raw) if tree is None else tree
            tree = step.tree(before, plan)
            if tree != before:
                changed.append(step.name)
        elif step.raw is not None:
            if tree is not None:
                raw, tree = serialize(tree), None
            after = step.raw(raw, plan)
            if after != raw:
                changed.append(step.name)
            raw = after
    return Done(raw if tree is None else serialize(tree), tuple(changed))
