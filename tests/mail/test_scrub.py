"""Every spelling of a real address a reader could follow is replaced, and nothing else."""

from __future__ import annotations

import pytest

from mailveil.mail.scrub import may_name_address, scrub_bytes, scrub_filename, scrub_text

RELAY = "customer-12ab3456cd78@reply.example.com"
REPLACEMENTS = {"ann.l+x@example.org": RELAY}
RELAY_IN_HTML = RELAY.replace("@", "&#64;")


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


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ann.l+x@example.org.pdf", f"{RELAY}.pdf"),
        ("Booking ann.l+x@example.org.tar.gz", f"Booking {RELAY}.tar.gz"),
        ("ann.l+x@example.org.uk.pdf", f"{RELAY}.uk.pdf"),  # another address: the safe side
        ("ann.l+x@example.org", RELAY),
        ("for ann.l+x@example.org (1).pdf", f"for {RELAY} (1).pdf"),
        ("voucher-ann.l+x@example.org_2.pdf", f"voucher-{RELAY}_2.pdf"),
        ("joann.l+x@example.org.pdf", "joann.l+x@example.org.pdf"),
        ("ann.l+x@example.organic.pdf", "ann.l+x@example.organic.pdf"),
    ],
)
def test_in_file_names_only_letters_and_digits_extend_an_address(name: str, expected: str) -> None:
    assert scrub_filename(name, REPLACEMENTS) == expected


@pytest.mark.parametrize(
    ("text", "may"),
    [
        ("text/plain; charset=us-ascii", False),
        ("attachment; filename=a%40b.pdf", True),
        ("=?utf-8?b?YW5uQGV4YW1wbGUub3Jn?=", True),
        ("a &#64; b", True),
        ("<1.a@b>", True),
    ],
)
def test_may_name_address_is_false_only_without_any_at_spelling(text: str, may: bool) -> None:
    assert may_name_address(text) is may


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write &#97;nn.l+x@example.org now", f"Write {RELAY} now"),
        ("ann.l+x@example&#46;org.", f"{RELAY}."),
        ('<a href="mailto:%61nn.l%2Bx%40example.org">Ann</a>', f'<a href="mailto:{RELAY}">Ann</a>'),
        ("ann.l+x\uff20example.org", RELAY),
        ("\uff41\uff4e\uff4e.l+x\uff20example.org!", f"{RELAY}!"),
        ("ann.l+x\u200b@example.org", RELAY),
        ("ann.l\u00ad+x@exam\u200bple.org", RELAY),
        ("50%25 &amp; ann.l+x&#64;example.org ไทย", f"50%25 &amp; {RELAY_IN_HTML} ไทย"),
        ("ann.l+x@example\uff0eorg", RELAY),
        ("joann.l+x&#64;example&#46;org", "joann.l+x&#64;example&#46;org"),
        ("ann.l+x\uff20example.org.uk", "ann.l+x\uff20example.org.uk"),
    ],
)
def test_veiled_spellings_are_found_once_normalised(text: str, expected: str) -> None:
    """Entities, percent escapes, compatible and invisible characters (issue 16.5): what
    spells an address is replaced, the text around it is left as it was."""
    assert scrub_text(text, REPLACEMENTS) == expected


def test_long_texts_are_scrubbed_veiled_or_not() -> None:
    """Every occurrence is found, with and without normalising, and the pieces between
    matches are mapped back to their own spelling (``%41`` and ``\uff20`` stay)."""
    plain = "ไทย ann.l+x@example.org " * 5_000
    assert scrub_text(plain, REPLACEMENTS) == f"ไทย {RELAY} " * 5_000
    veiled = "&#97;nn.l+x@example.org %41 \uff20 " * 5_000
    assert scrub_text(veiled, REPLACEMENTS) == f"{RELAY} %41 \uff20 " * 5_000
