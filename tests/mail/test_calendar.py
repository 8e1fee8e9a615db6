"""Calendar invitations and vCards: real addresses swapped line by line, the rest kept."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailveil.mail.calendar import (
    FOLD_OCTETS,
    card_replacements,
    fold_line,
    rewrite_lines,
)
from mailveil.mail.mime import Entity, parse, payload
from mailveil.mail.rewrite import RewritePlan, rewrite

ANN = "ann@example.org"  # the sender
BOB = "bob@tours.example"  # the recipient
ANN_RELAY = "customer-12ab3456cd78@reply.example.com"
BOB_RELAY = "local-partner-0a1b2c3d4e5f@reply.example.com"
PLAN = RewritePlan(
    from_name="Ann via mailveil", from_address=ANN_RELAY, to_name="Bob", to_address=BOB,
    message_id="<m-1@reply.example.com>", in_reply_to=(), references=(),
    replacements={ANN: ANN_RELAY, BOB: BOB_RELAY},
)
CARDS = card_replacements(PLAN.replacements, BOB)

INVITE = (
    b"BEGIN:VCALENDAR\r\n"
    b"PRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN\r\n"
    b"VERSION:2.0\r\n"
    b"METHOD:REQUEST\r\n"
    b"X-WR-CALNAME:Pick-up \xc3\xa0 l'h\xc3\xb4tel\r\n"
    b"BEGIN:VEVENT\r\n"
    b"ORGANIZER;CN=Ann Lee:mailto:ann@example.org\r\n"
    b"ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=local-partner-0a1b\r\n"
    b" 2c3d4e5f@reply.example.com:mailto:local-partner-0a1b2c3d4e5f@reply.example.com\r\n"
    b"ATTENDEE;CN=\"Ann Lee (ann@example.org)\";PARTSTAT=ACCEPTED:MAILTO:ANN@EXAMPLE\r\n"
    b" .ORG\r\n"
    b"DESCRIPTION:Meet at the fountain.\\nQuestions? ann@example.org or +66 2 123 4\r\n"
    b"\t567\\, any time\r\n"
    b"UID:040000008200E00074C5B7101A82E00800000000\r\n"
    b"SUMMARY;LANGUAGE=fr:Rendez-vous \xc3\xa0 l'h\xc3\xb4tel \xe2\x80\x94 "
    b"pr\xc3\xa9voir 15 minu\r\n tes\r\n"
    b"DTSTART;TZID=Asia/Bangkok:20300601T090000\r\n"
    b"END:VEVENT\r\n"
    b"END:VCALENDAR\r\n"
)


def unfold(data: bytes) -> bytes:
    return data.replace(b"\r\n ", b"").replace(b"\r\n\t", b"")


def content_lines(data: bytes) -> list[bytes]:
    """Each content line with its folds, as bytes."""
    return re.findall(rb"[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", data)


def test_the_recipient_sees_the_sender_by_relay_address_and_itself_by_its_own() -> None:
    assert CARDS == {ANN: ANN_RELAY, BOB_RELAY: BOB}
    out = rewrite_lines(INVITE, CARDS)
    flat = unfold(out).decode()
    assert "ann@example.org" not in flat.lower()
    assert "ORGANIZER;CN=Ann Lee:mailto:customer-12ab3456cd78@reply.example.com\r\n" in flat
    assert (f"ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN={BOB}"
            f":mailto:{BOB}\r\n") in flat
    assert f'CN="Ann Lee ({ANN_RELAY})";PARTSTAT=ACCEPTED:MAILTO:{ANN_RELAY}' in flat
    assert f"Meet at the fountain.\\nQuestions? {ANN_RELAY} or +66 2 123 4567\\, any time" in flat
    assert BOB_RELAY not in flat


def test_lines_without_an_address_keep_their_bytes_and_changed_ones_are_folded() -> None:
    out = rewrite_lines(INVITE, CARDS)
    assert b"".join(content_lines(out)) == out  # still CRLF throughout
    before, after = content_lines(INVITE), content_lines(out)
    assert len(before) == len(after)
    changed = 0
    for old, new in zip(before, after, strict=True):
        if b"example.org" in old.lower() or b"reply.example.com" in unfold(old):
            changed += 1
            assert all(len(line) <= FOLD_OCTETS for line in new.split(b"\r\n"))
        else:  # the French summary, folded by its sender, keeps its fold too
            assert new == old
    assert changed == 4


def test_a_card_without_an_address_is_returned_as_it_came() -> None:
    plain = re.sub(rb"(?i)ann@example", b"ann@elsewhere", INVITE).replace(
        b"local-partner-0a1b", b"guest").replace(b"2c3d4e5f@reply.example.com", b"@x.example")
    assert rewrite_lines(plain, CARDS) == plain


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_vcard_email_lines_are_swapped(newline: bytes) -> None:
    card = newline.join([b"BEGIN:VCARD", b"VERSION:3.0", b"FN:Ann Lee",
                         b"EMAIL;TYPE=INTERNET,pref:ann@example.org",
                         b"item1.EMAIL:Ann@Example.org", b"TEL:+66 2 123 4567",
                         b"END:VCARD", b""])
    out = rewrite_lines(card, CARDS)
    assert out == card.replace(b"ann@example.org", ANN_RELAY.encode()).replace(
        b"Ann@Example.org", ANN_RELAY.encode())


@given(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"),
               max_size=400))
def test_folding_keeps_lines_short_and_utf8_sequences_whole(text: str) -> None:
    line = text.encode()
    folded = fold_line(line)
    pieces = folded.split(b"\r\n")
    assert all(len(piece) <= FOLD_OCTETS for piece in pieces)
    assert all(piece.startswith(b" ") for piece in pieces[1:])
    for piece in pieces:
        piece.decode("utf-8")  # no sequence split between two lines
    assert b"".join([pieces[0], *(p[1:] for p in pieces[1:])]) == line


# --- through the relay's rewrite ---------------------------------------------------------

def message(*parts: bytes) -> bytes:
    body = b"".join(b"--b\r\n" + part + b"\r\n" for part in parts)
    return (b"From: Ann <ann@example.org>\r\nTo: x@reply.example.com\r\nSubject: Pick-up\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            + body + b"--b--\r\n")


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nSee the invitation.\r\n"
B64 = base64.encodebytes(INVITE).replace(b"\n", b"\r\n")
SHAPES = {
    "inline text/calendar": b"Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n"
                            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + INVITE,
    "base64 text/calendar": b"Content-Type: text/calendar; method=REQUEST\r\n"
                            b"Content-Transfer-Encoding: base64\r\n\r\n" + B64,
    "application/ics": b"Content-Type: application/ics; name=invite.ics\r\n"
                       b"Content-Disposition: attachment; filename=invite.ics\r\n"
                       b"Content-Transfer-Encoding: base64\r\n\r\n" + B64,
    "named .ics": b"Content-Type: application/octet-stream\r\n"
                  b"Content-Disposition: attachment; filename=\"Invite.ICS\"\r\n"
                  b"Content-Transfer-Encoding: base64\r\n\r\n" + B64,
    "quoted-printable": b"Content-Type: text/calendar; charset=utf-8\r\n"
                        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                        + INVITE.replace(b"\xc3\xa0", b"=C3=A0").replace(b"\xc3\xb4", b"=C3=B4")
                        .replace(b"\xc3\xa9", b"=C3=A9").replace(b"\xe2\x80\x94", b"=E2=80=94"),
}


def leaves(raw: bytes) -> list[Entity]:
    return [e for e in parse(raw).walk() if not e.multipart]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_of_invitation_is_rewritten(shape: str) -> None:
    raw = message(TEXT, SHAPES[shape])
    out = rewrite(raw, PLAN)
    text, card = leaves(out)
    assert payload(card) == rewrite_lines(payload(leaves(raw)[1]), CARDS)
    assert payload(card) != payload(leaves(raw)[1])
    assert card.header == leaves(raw)[1].header  # type, name, encoding as they came
    assert text.body == leaves(raw)[0].body


def test_vcard_attachments_are_rewritten_and_other_files_named_ics_are_not() -> None:
    vcard = (b"BEGIN:VCARD\r\nVERSION:2.1\r\nN:Lee;Ann\r\nEMAIL;INTERNET:ann@example.org\r\n"
             b"END:VCARD\r\n")
    not_a_card = b"\x89PNG\r\n\x1a\nann@example.org\r\n" + bytes(range(256))
    raw = message(b"Content-Type: text/x-vcard; name=ann.vcf\r\n\r\n" + vcard,
                  b"Content-Type: text/vcard\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                  + base64.encodebytes(vcard).replace(b"\n", b"\r\n"),
                  b"Content-Type: application/octet-stream; name=photo.ics\r\n"
                  b"Content-Transfer-Encoding: base64\r\n\r\n"
                  + base64.encodebytes(not_a_card).replace(b"\n", b"\r\n"))
    first, second, other = leaves(rewrite(raw, PLAN))
    swapped = vcard.replace(ANN.encode(), ANN_RELAY.encode())
    assert payload(first) == payload(second) == swapped
    assert payload(other) == not_a_card  # not a calendar: an opaque attachment, byte for byte


def test_an_invitation_inside_a_forwarded_message_is_rewritten() -> None:
    inner = (b"From: Ann <ann@example.org>\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n"
             + SHAPES["base64 text/calendar"] + b"\r\n--in--\r\n")
    raw = message(b"Content-Type: message/rfc822\r\n\r\n" + inner)
    forwarded = parse(payload(leaves(rewrite(raw, PLAN))[0]))
    card = next(e for e in forwarded.walk() if e.content_type == "text/calendar")
    assert payload(card) == rewrite_lines(INVITE, CARDS)


def test_text_attachments_are_scrubbed_like_text_without_a_banner() -> None:
    notes = b"Guest: Ann Lee <ann@example.org>\r\nPick-up 9:00\r\n"
    page = b"<p>Write to <a href=\"mailto:ann@example.org\">Ann</a></p>\r\n"
    clean = b"Nothing personal here.\r\n"
    raw = message(TEXT,
                  b"Content-Type: text/plain; name=notes.txt\r\n"
                  b"Content-Disposition: attachment; filename=notes.txt\r\n\r\n" + notes,
                  b"Content-Type: text/html; charset=utf-8\r\n"
                  b"Content-Disposition: attachment; filename=page.html\r\n"
                  b"Content-Transfer-Encoding: base64\r\n\r\n"
                  + base64.encodebytes(page).replace(b"\n", b"\r\n"),
                  b"Content-Type: text/plain; name=clean.txt\r\n\r\n" + clean)
    banner = replace(PLAN, banner_text="Reply above this line.", banner_html="<p>Reply</p>")
    _text, txt, html, untouched = leaves(rewrite(raw, banner))
    assert payload(txt) == notes.replace(ANN.encode(), ANN_RELAY.encode())
    assert payload(html) == page.replace(ANN.encode(), ANN_RELAY.encode())
    assert untouched.body == clean


WORDS = st.text(st.sampled_from("abnAN \u00e9\u0e01;:=,\""), max_size=30)


@st.composite
def calendars(draw: st.DrawFn) -> tuple[bytes, int]:
    """Content lines of words and real addresses, folded anywhere (readers unfold octets)."""
    lines, addresses = [], 0
    for _ in range(draw(st.integers(1, 8))):
        words = draw(st.lists(st.one_of(WORDS, st.sampled_from(
            [" ann@example.org ", ":mailto:ANN@EXAMPLE.ORG;", "\\nann@example.org\\,"])),
            min_size=1, max_size=6))
        addresses += sum("@" in word for word in words)
        line = ("X-LINE:" + "".join(words)).encode()
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(line) - 1)), max_size=4)))
        pieces = [line[i:j] for i, j in zip([0, *cuts], [*cuts, len(line)], strict=True)]
        lines.append(b"\r\n ".join(piece for piece in pieces if piece) + b"\r\n")
    return b"BEGIN:VCALENDAR\r\n" + b"".join(lines) + b"END:VCALENDAR\r\n", addresses


@given(calendars())
def test_every_real_address_is_replaced_wherever_the_lines_are_folded(
        calendar: tuple[bytes, int]) -> None:
    data, addresses = calendar
    out = rewrite_lines(data, CARDS)
    flat = unfold(out).decode("utf-8", "surrogateescape")
    assert "ann@example.org" not in flat.lower()
    assert flat.count(ANN_RELAY) == addresses
    before, after = content_lines(data), content_lines(out)
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        if new != old:
            assert b"ann@example.org" in unfold(old).lower()
            assert all(len(line) <= FOLD_OCTETS for line in new.split(b"\r\n"))
            assert unfold(new).decode("utf-8")  # valid UTF-8 once folded again
