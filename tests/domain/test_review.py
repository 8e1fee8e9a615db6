"""Review requests: the pure matcher over the text a reader sees (mail/reading.py), in the
five languages of the notices and through the spellings that hide words from a plain
search (entities, percent escapes, fullwidth letters, invisible characters, transfer
encodings, encoded words, HTML tags)."""

from __future__ import annotations

import base64
import quopri
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailveil.domain.addresses import Role
from mailveil.domain.review import (
    DEFAULT,
    MAX_FOUND,
    MAX_SHOWN,
    Flag,
    ReviewAction,
    ReviewPatterns,
    ReviewPolicy,
    checked,
    findings,
    flag,
)
from mailveil.mail.reading import MAX_SEEN, seen_text
from mailveil.mail.scrub import unveiled


def message(body: bytes, *, subject: str = "Thanks", content_type: str = "text/plain",
            charset: str = "utf-8", cte: str = "8bit", disposition: str = "") -> bytes:
    extra = f"Content-Disposition: {disposition}\r\n" if disposition else ""
    return (f"From: desk@supplier.example\r\nTo: c@reply.example.com\r\nSubject: {subject}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: {content_type}; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n{extra}\r\n").encode() + body


def found(raw: bytes) -> tuple[str, ...]:
    return findings(seen_text(raw), DEFAULT)


@pytest.mark.parametrize(("language", "text"), [
    ("en", "Thank you for coming! Could you leave us a review on our page?"),
    ("en", "If you liked it, please write a quick review."),
    ("fr", "Merci ! Laissez-nous un avis, cela nous aide beaucoup."),
    ("fr", "N\u2019hésitez pas à donner votre avis sur notre page."),
    ("th", "ขอบคุณที่มาร่วมทริป ช่วยรีวิวให้เราหน่อยนะคะ"),
    ("th", "รบกวนให้คะแนนเราด้วยครับ"),
    ("de", "Bitte hinterlassen Sie uns eine Bewertung!"),
    ("de", "Bewerten Sie uns gern."),
    ("es", "¡Déjanos una reseña, por favor!"),
    ("es", "Escriba su opinión en nuestra página."),
])
def test_each_language_asking_for_a_review(language: str, text: str) -> None:
    assert found(message(text.encode())), language


@pytest.mark.parametrize("link", [
    "https://www.tripadvisor.fr/UserReviewEdit-g187147-d123.html",
    "https://g.page/r/CbX12ab/review",
    "https://search.google.com/local/writereview?placeid=ChIJ",
    "https://www.trustpilot.com/evaluate/sunny-tours.example",
    "https://www.yelp.com/writeareview/biz/abc",
    "Find us on Trip Advisor",
])
def test_links_and_names_of_review_sites(link: str) -> None:
    assert found(message(f"Thanks for the day!\n{link}\n".encode()))


@pytest.mark.parametrize("text", [
    "See you tomorrow at 9 at the pier. Bring a hat.",
    "I will review the itinerary tonight and send you the map.",
    "Votre avis de passage est arrivé ? Le bateau part à 9 h.",
    "Die Bewertung des Wetters: sonnig.",
    "Preview of the tour: the old town, then the river.",
])
def test_ordinary_messages_are_not_flagged(text: str) -> None:
    assert found(message(text.encode())) == ()


@pytest.mark.parametrize("body", [
    b"Please visit &#116;rip&#x61;dvisor.com",  # entities
    b"https://www.%74ripadvisor.com/x",  # a percent escape
    "Please visit \uff54\uff52\uff49\uff50advisor".encode(),  # fullwidth letters (NFKC)
    "trip\u200badvisor and trust\u00adpilot".encode(),  # zero width space, soft hyphen
    b"leave us\n  a\treview",  # a phrase over lines
])
def test_obfuscated_spellings_are_unveiled(body: bytes) -> None:
    assert found(message(body))


def test_transfer_encodings_charsets_and_encoded_words_are_decoded() -> None:
    qp = quopri.encodestring("Laissez-nous un avis sur Tripadvisor é".encode())
    assert found(message(qp, cte="quoted-printable")) == ("tripadvisor", "laissez-nous un avis")
    b64 = base64.encodebytes("รีวิว".encode("tis-620"))
    assert found(message(b64, charset="tis-620", cte="base64")) == ("รีวิว",)
    subject = "=?utf-8?b?" + base64.b64encode(b"leave a review").decode() + "?="
    assert found(message(b"Hello", subject=subject)) == ("leave a review",)


def test_html_links_and_words_split_by_tags() -> None:
    html = (b'<p>Please <b>leave</b> us a <i>re</i>view</p>'
            b'<a href="https://www.trustpilot.com/review/x">here</a>')
    assert found(message(html, content_type="text/html")) == ("trustpilot", "leave us a review")


def test_only_the_beginning_of_a_long_text_is_read() -> None:
    """The cost stays bounded (see mail/reading.py): a request sixty pages down is not seen."""
    filler = b"Day one: the old town. " * (MAX_SEEN // 23)
    assert found(message(b"Leave us a review! " + filler)) == ("leave us a review",)
    assert found(message(filler + b"Leave us a review!")) == ()
    assert len(seen_text(message(filler * 2, content_type="text/html"))) == MAX_SEEN


def test_attachments_are_not_read() -> None:
    raw = message(b"leave us a review", disposition='attachment; filename="notes.txt"')
    assert found(raw) == ()


def test_policy_decides_flag_or_hold_and_only_suppliers_are_checked() -> None:
    text = "laissez-nous un avis"
    assert flag(text, ReviewPolicy()) == Flag(False, ("laissez-nous un avis",))
    assert flag(text, ReviewPolicy(ReviewAction.HOLD)) == Flag(True, ("laissez-nous un avis",))
    assert flag("see you", ReviewPolicy(ReviewAction.HOLD)) is None
    assert checked(Role.CUSTOMER) and not checked(Role.SUPPLIER)


def test_a_patterns_file_replaces_the_defaults() -> None:
    patterns = ReviewPatterns.parse("# ours\n\n  \\bkudos\\.example\\b  \nrate us\n")
    assert patterns.sources == (r"\bkudos\.example\b", "rate us")
    assert findings("Rate   US on KUDOS.example", patterns) == ("kudos.example", "rate us")
    assert findings("leave us a review", patterns) == ()
    with pytest.raises(re.error):
        ReviewPatterns.parse("broken(")
    # The text is lowered, so a capital could never match; escapes such as \S are fine.
    with pytest.raises(ValueError, match="lower case"):
        ReviewPatterns.parse("TripAdvisor")
    assert findings("see x.example/Reviews", ReviewPatterns.of([r"x\.example/\S+"])) == (
        "x.example/reviews",)


def test_what_care_sees_is_printable_short_and_few() -> None:
    patterns = ReviewPatterns.of([r"a\S*", *(f"{i}" for i in range(10))])
    pieces = findings("a" + "x" * 500 + "\x07 0 1 2 3 4 5 6", patterns)
    assert len(pieces) == MAX_FOUND and len(pieces[0]) == MAX_SHOWN
    assert all(p.isprintable() for p in pieces)


_INVISIBLE = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"])


@given(st.lists(st.tuples(st.booleans(), st.lists(_INVISIBLE, max_size=2)), min_size=11,
                max_size=11))
def test_fullwidth_and_invisible_characters_anywhere_still_flag(
        veils: list[tuple[bool, list[str]]]) -> None:
    """Each letter of a site's name fullwidth or not, with invisible characters after it."""
    word = "tripadvisor"
    spelled = "".join((chr(ord(ch) + 0xFEE0) if wide else ch) + "".join(hidden)
                      for ch, (wide, hidden) in zip(word, veils, strict=True))
    assert findings(unveiled(f"Visit {spelled} today"), DEFAULT) == ("tripadvisor",)


@given(st.text(max_size=300))
def test_any_text_is_matched_without_error_within_bounds(text: str) -> None:
    pieces = findings(unveiled(text), DEFAULT)
    assert len(pieces) <= MAX_FOUND and all(len(p) <= MAX_SHOWN for p in pieces)


@given(st.binary(max_size=2000), st.sampled_from(["utf-8", "utf-16", "utf-7", "x-unknown",
                                                 "iso-2022-jp", "tis-620"]),
       st.sampled_from(["8bit", "base64", "quoted-printable", "x-token"]),
       st.sampled_from(["text/plain", "text/html"]))
def test_any_body_is_read_without_error(body: bytes, charset: str, cte: str,
                                        content_type: str) -> None:
    """Reading runs on every supplier's message: an error would park it for a human."""
    text = seen_text(message(body, charset=charset, cte=cte, content_type=content_type))
    assert len(text) <= MAX_SEEN
    seen_text(body)  # not even a message
