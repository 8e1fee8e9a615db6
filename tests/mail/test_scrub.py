"""Every spelling of a real address a reader could follow is replaced, and nothing else."""

from __future__ import annotations

import pytest

from mailveil.mail.scrub import scrub_bytes, scrub_text

RELAY = "customer-12ab3456cd78@reply.example.com"
REPLACEMENTS = {"ann.l+x@example.org": RELAY}


CONTEXTS = [
    "On Tue, 3 Mar 2026, Ann <{}> wrote:",
    "Le mar. 3 mars 2026 à 10:00, Ann <{}> a écrit :",
    "De : Ann <{}>",
    '<a href="mailto:{}">',
    "?to={}&x",
    "mailto%3A{}",
    "end of sentence {}.",
]
SPELLINGS = [
    ("Ann.L+x@EXAMPLE.org", "@"),
    ("ann.l+x%40example.org", "%40"),
    ("ann.l+x&#64;example.org", "&#64;"),
    ("ann.l+x&#x40;Example.org", "&#x40;"),
    ("ann.l+x&commat;example.org", "&commat;"),
]


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize(("spelling", "at"), SPELLINGS)
def test_spellings_are_replaced_in_kind(context: str, spelling: str, at: str) -> None:
    relay = RELAY.replace("@", at)
    assert scrub_text(context.format(spelling), REPLACEMENTS) == context.format(relay)


@pytest.mark.parametrize(
    "text",
    ["joann.l+x@example.org", "ann.l+x@example.org.uk", "ann.l+x@example.organic", "nothing"],
)
def test_other_addresses_are_left_alone(text: str) -> None:
    assert scrub_text(text, REPLACEMENTS) == text


def test_encoded_words_in_body_text_are_decoded_scrubbed_and_reencoded() -> None:
    text = "x =?utf-8?Q?Ann_=3Cann.l+x=40exa?=\r\n =?utf-8?B?bXBsZS5vcmc+?= y =?utf-8?q?keep?="
    scrubbed = scrub_text(text, REPLACEMENTS)
    assert scrubbed.startswith("x =?utf-8?") and scrubbed.endswith(" y =?utf-8?q?keep?=")
    assert "ann.l+x" not in scrubbed.lower()
    assert "customer-12ab3456cd78" in scrubbed


def test_bytes_of_unknown_charset_keep_every_other_byte() -> None:
    data = b"\x00\xff\xe9 <ANN.L+X@example.org> \x80"
    assert scrub_bytes(data, REPLACEMENTS) == b"\x00\xff\xe9 <" + RELAY.encode() + b"> \x80"


def test_no_usable_replacements_is_identity() -> None:
    assert scrub_text("ann.l+x@example.org", {}) == "ann.l+x@example.org"
    assert scrub_text("ann", {"ann": RELAY}) == "ann"
