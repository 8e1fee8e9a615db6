"""The relay copy's steps: an ordered tuple, run on one parse, and a record of what changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailveil.mail import dkim, steps
from mailveil.mail.rewrite import STEPS, RewritePlan, rewrite

SENDER_RELAY = "customer-12ab3456cd78@reply.example.com"
RECIPIENT_RELAY = "local-partner-0a1b2c3d4e5f@reply.example.com"
QUIET = RewritePlan(
    from_name="Ann L. via Tours Platform", from_address=SENDER_RELAY,
    to_name="Bob Supplier", to_address="bob@tours.example",
    message_id="<m-0001@reply.example.com>", in_reply_to=(), references=(),
    replacements={"ann@example.org": SENDER_RELAY, "bob@tours.example": RECIPIENT_RELAY},
)
BANNERED = replace(QUIET, banner_text="Reply above this line.",
                   banner_html="<p>Reply above this line.</p>")
HEAD = b"From: Ann <ann@example.org>\r\nTo: " + RECIPIENT_RELAY.encode() + b"\r\nSubject: Hi\r\n"
CALENDAR = (b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:1@example.org\r\n"
            b"ORGANIZER:mailto:ann@example.org\r\nATTENDEE:mailto:" + RECIPIENT_RELAY.encode()
            + b"\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


def text(body: bytes, cte: bytes = b"7bit") -> bytes:
    return (HEAD + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
            + cte + b"\r\n\r\n" + body)


def test_every_step_is_named_described_and_works_on_one_form() -> None:
    names = [step.name for step in STEPS]
    assert len(set(names)) == len(names)
    for step in STEPS:
        assert step.description and "\n" not in step.description, step.name
        assert (step.tree is None) != (step.raw is None), step.name


def test_tree_steps_come_first_so_a_message_is_parsed_and_written_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = ["tree" if step.tree is not None else "raw" for step in STEPS]
    assert kinds == sorted(kinds, key=lambda kind: kind != "tree")
    calls: list[str] = []

    def counted(name: str) -> Callable[[Any], Any]:
        real = getattr(steps, name)

        def call(value: Any) -> Any:
            calls.append(name)
            return real(value)
        return call

    for name in ("parse", "serialize"):
        monkeypatch.setattr(steps, name, counted(name))
    steps.run(STEPS, text(b"Write to ann@example.org\r\n"), replace(BANNERED, sign=bytes))
    assert calls == ["parse", "serialize"]


@pytest.mark.parametrize(("raw", "plan", "changed"), [
    (text(b"See you at nine.\r\n"), QUIET, ("headers",)),
    (text(b"Write to ann@example.org\r\n"), QUIET, ("scrub", "headers")),
    (text(b"See you at nine.\r\n"), BANNERED, ("banner", "headers")),
    (text(b"x" * 2000 + b"\r\n", b"8bit"), QUIET, ("line-length", "headers")),
    # The invitation goes to the cards step alone: scrubbing it would undo what cards does.
    (HEAD + b"Content-Type: text/calendar; method=REQUEST\r\n\r\n" + CALENDAR, QUIET,
     ("cards", "headers")),
    # An attachment goes out byte for byte.
    (HEAD + b"Content-Type: application/pdf\r\n\r\n%PDF-1.4 ann@example.org\r\n", QUIET,
     ("headers",)),
])
def test_the_steps_that_changed_a_message_are_recorded_in_order(
        raw: bytes, plan: RewritePlan, changed: tuple[str, ...]) -> None:
    done = steps.run(STEPS, raw, plan)
    assert done.changed == changed
    assert done.raw == rewrite(raw, plan)


def test_signing_runs_last_over_the_final_bytes(tmp_path: Path) -> None:
    key = dkim.load_or_create_key(tmp_path / "relay.pem")

    def sign(raw: bytes) -> bytes:
        return dkim.sign(raw, domain="reply.example.com", selector="s", private_key=key)

    raw = text(b"Write to ann@example.org\r\n")
    done = steps.run(STEPS, raw, replace(BANNERED, sign=sign))
    assert done.changed == ("scrub", "banner", "headers", "dkim-sign")
    unsigned = rewrite(raw, BANNERED)
    assert done.raw.startswith(b"DKIM-Signature: ") and done.raw.endswith(unsigned)
    assert done.raw == sign(unsigned)
