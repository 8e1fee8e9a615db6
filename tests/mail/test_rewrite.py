"""What leaves the relay: allow-listed headers, scrubbed text, attachments byte for byte."""

from __future__ import annotations

import base64
import binascii
import difflib
import email
import html
import operator
import os
import re
import time
from dataclasses import replace
from email import policy
from email.header import Header, decode_header, make_header
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailveil.mail.mime import Entity, body_bytes, parse, payload, serialize
from mailveil.mail.rewrite import FORWARDED, MAX_FORWARD_DEPTH, SEALED, RewritePlan, rewrite
from tests.support.corpora import CORPORA, corpus_messages
from tests.support.long_lines import decoded_leaves, long_lines

GOLDEN = Path(__file__).parent / "golden"
SENDER_RELAY = "customer-12ab3456cd78@reply.example.com"
RECIPIENT_RELAY = "local-partner-0a1b2c3d4e5f@reply.example.com"
PLAN = RewritePlan(
    from_name="Ann L. via Tours Platform",
    from_address=SENDER_RELAY,
    to_name="Bob Supplier",
    to_address="bob@tours.example",
    message_id="<m-0001@reply.example.com>",
    in_reply_to=("<r-1@reply.example.com>",),
    references=("<r-0@reply.example.com>", "<r-1@reply.example.com>"),
    replacements={"ann@example.org": SENDER_RELAY, "bob@tours.example": RECIPIENT_RELAY},
    banner_text="Répondez au-dessus de cette ligne. / Reply above this line.",
    banner_html='<p style="color:#888">Reply above this line.</p>',
)
QUIET = replace(PLAN, banner_text=None, banner_html=None)


def plan_for(real: str) -> RewritePlan:
    return replace(QUIET, replacements={real.lower(): SENDER_RELAY})


def header_block(out: bytes) -> bytes:
    return out[: out.index(b"\r\n\r\n") + 2]


def walk_all(root: Entity) -> list[Entity]:
    """Every entity, forwarded messages opened as a mail program opens them."""
    found: list[Entity] = []
    for entity in root.walk():
        found.append(entity)
        if entity.content_type in FORWARDED:
            found.extend(walk_all(parse(payload(entity))))
    return found


def text_leaves(root: Entity) -> list[Entity]:
    return [e for e in walk_all(root) if not e.multipart and not e.is_attachment]


def attachment_payloads(root: Entity) -> list[bytes]:
    return [
        payload(e) for e in walk_all(root) if e.is_attachment and e.content_type not in FORWARDED
    ]


# --- headers -----------------------------------------------------------------------------

INCOMING = (
    b"Received: from mail.example.org ([198.51.100.7]) by mx; Tue, 3 Mar 2026\r\n"
    b"Return-Path: <ann@example.org>\r\nSender: ann@example.org\r\nReply-To: ann@example.org\r\n"
    b"X-Originating-IP: [198.51.100.7]\r\nDKIM-Signature: v=1; d=example.org; b=xx\r\n"
    b"ARC-Seal: i=1; cv=none\r\nList-Unsubscribe: <mailto:x@example.org>\r\nX-Mailer: Mutt\r\n"
    b"From: Ann <ann@example.org>\r\nTo: x@reply.example.com\r\nCc: c@example.org\r\n"
    b"Bcc: b@example.org\r\nMessage-ID: <1@example.org>\r\nIn-Reply-To: <0@example.org>\r\n"
    b"References: <0@example.org>\r\n"
    b"Subject: =?utf-8?Q?caf=C3=A9?=\r\n  folded as sent\r\nX-Priority: 1\r\n"
    b"Thread-Topic: Tour\r\nSubject: second subject is dropped\r\n"
    b"Date: Tue, 3 Mar 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n\r\nHello\r\n"
)


def test_headers_come_from_the_plan_and_the_allow_list() -> None:
    out = rewrite(INCOMING, QUIET)
    assert header_block(out) == (
        b'From: "Ann L. via Tours Platform" <customer-12ab3456cd78@reply.example.com>\r\n'
        b"To: Bob Supplier <bob@tours.example>\r\n"
        b"Message-ID: <m-0001@reply.example.com>\r\n"
        b"In-Reply-To: <r-1@reply.example.com>\r\n"
        b"References: <r-0@reply.example.com> <r-1@reply.example.com>\r\n"
        b"Subject: =?utf-8?Q?caf=C3=A9?=\r\n  folded as sent\r\n"
        b"X-Priority: 1\r\nThread-Topic: Tour\r\n"
        b"Date: Tue, 3 Mar 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
    )
    assert out.endswith(b"\r\n\r\nHello\r\n")


def test_kept_header_naming_a_real_address_is_reencoded() -> None:
    raw = b"Subject: =?utf-8?q?R=C3=A9servation?= for ANN@example.org\n\nx"
    subject = email.message_from_bytes(rewrite(raw, QUIET), policy=policy.default)["subject"]
    assert subject == f"Réservation for {SENDER_RELAY}"


def test_missing_date_and_mime_version_are_added_once() -> None:
    message = email.message_from_bytes(rewrite(b"\r\nbody", QUIET), policy=policy.default)
    assert len(message.get_all("date") or []) == 1 and message["date"].datetime is not None
    assert message.get_all("mime-version") == ["1.0"]


def test_non_ascii_names_are_encoded_and_cannot_inject_headers() -> None:
    plan = replace(QUIET, from_name="Änn ไทย\r\nBcc: evil@x.org", in_reply_to=(), references=())
    out = rewrite(b"Subject: x\r\n\r\nbody", plan)
    assert out.isascii() and b"\nBcc:" not in out
    assert b"In-Reply-To" not in out and b"References" not in out
    message = email.message_from_bytes(out, policy=policy.default)
    assert message["from"].addresses[0].display_name == "Änn ไทย Bcc: evil@x.org"


# --- bodies ------------------------------------------------------------------------------


def multipart(*parts: bytes, subtype: bytes = b"mixed", boundary: bytes = b"b") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    head = b"Content-Type: multipart/" + subtype + b"; boundary=" + boundary + b"\r\n\r\n"
    return head + body + b"--" + boundary + b"--\r\n"


def test_parts_without_address_or_banner_are_byte_identical() -> None:
    raw = multipart(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nw6k=",
        b"Content-Type: text/html; charset=windows-1252\r\n\r\n<p>caf\xe9</p>",
    )
    assert body_bytes(parse(rewrite(raw, QUIET))) == body_bytes(parse(raw))


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_base64_text_is_reencoded_alike(newline: bytes) -> None:
    text = ("Ann <ann@example.org> a écrit :\n" * 8).encode("utf-8")
    encoded = base64.encodebytes(text).replace(b"\n", newline)
    raw = (
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + encoded
    )
    part = parse(rewrite(raw, QUIET))
    assert part.body.endswith(b"=" + newline) or part.body.endswith(newline)
    assert all(len(line) <= 76 for line in part.body.split(newline))
    assert payload(part) == text.replace(b"ann@example.org", SENDER_RELAY.encode())


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("tis-620", "สวัสดีครับ คุณ ann@example.org เขียนว่า:"),
        ("iso-2022-jp", "こんにちは ann@example.org さん"),
        ("windows-1252", "Le 3 mars, Ann <ann@example.org> a écrit : « merci » €"),
        ("koi8-r", "Привет ann@example.org"),
    ],
)
@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
def test_odd_charsets_keep_their_charset(charset: str, text: str, cte: str) -> None:
    data = text.encode(charset)
    body = {
        "8bit": data,
        "base64": base64.encodebytes(data),
        "quoted-printable": binascii.b2a_qp(data),
    }
    head = f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: {cte}\n\n"
    part = parse(rewrite(head.encode() + body[cte], QUIET))
    assert part.param("charset") == charset and part.cte == cte
    assert payload(part).decode(charset) == text.replace("ann@example.org", SENDER_RELAY)


def test_unencodable_banner_switches_only_that_part_to_utf8() -> None:
    raw = multipart(
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncafe",
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nd\xe9j\xe0 vu",
    )
    plan = replace(QUIET, banner_text="ตอบเหนือบรรทัดนี้")
    first, second = (p.entity for p in parse(rewrite(raw, plan)).parts)
    assert first.param("charset") == "utf-8" and first.cte == "quoted-printable"
    assert payload(first).decode("utf-8") == "ตอบเหนือบรรทัดนี้\r\n\r\ncafe"
    assert serialize(second) == b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nd\xe9j\xe0 vu"


def test_unknown_charset_is_scrubbed_as_bytes() -> None:
    raw = b"Content-Type: text/plain; charset=x-klingon\n\n\x81\xfe ann@example.org \xff"
    assert parse(rewrite(raw, QUIET)).body == b"\x81\xfe " + SENDER_RELAY.encode() + b" \xff"


def test_banners_go_to_the_first_plain_and_html_parts_only() -> None:
    raw = multipart(
        multipart(
            b"Content-Type: text/plain\r\n\r\nplain one",
            b'Content-Type: text/html\r\n\r\n<html><BODY class="x">html one</BODY></html>',
            subtype=b"alternative",
        )
        .replace(b"boundary=b", b"boundary=inner")
        .replace(b"--b", b"--inner"),
        b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nattached",
        b"Content-Type: text/plain\r\n\r\nplain two",
        b"Content-Type: text/html\r\n\r\nno body tag",
    )
    leaves = [payload(e) for e in parse(rewrite(raw, PLAN)).walk() if not e.multipart]
    assert leaves == [
        "Répondez au-dessus de cette ligne. / Reply above this line.\r\n\r\nplain one".encode(),
        b'<html><BODY class="x"><p style="color:#888">Reply above this line.</p>'
        b"html one</BODY></html>",
        b"attached",
        b"plain two",
        b"no body tag",
    ]


SIGNED = multipart(
    b"Content-Type: text/plain\r\n\r\nfrom ann@example.org",
    b"Content-Type: application/pgp-signature\r\n\r\nsig",
    subtype=b'signed; protocol="application/pgp-signature"',
)


def test_signed_and_encrypted_subtrees_are_untouched() -> None:
    inner = SIGNED[SIGNED.index(b"\r\n\r\n") + 4 :]
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nhi",
        SIGNED.replace(b"boundary=b", b"boundary=s").replace(b"--b", b"--s"),
    )
    assert inner.replace(b"--b", b"--s") in rewrite(raw, PLAN)
    assert rewrite(SIGNED, PLAN).endswith(inner)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\xff garbage ann@example.org", b"From: ann@example.org\nHello ann@example.org\n"],
)
def test_broken_input_goes_out_readable(raw: bytes) -> None:
    out = rewrite(raw, QUIET)
    message = email.message_from_bytes(out, policy=policy.default)
    assert message["from"].addresses[0].addr_spec == SENDER_RELAY
    assert not message.defects and b"ann@example.org" not in out


MIME_TOKENS = [
    b"--b", b"--b--", b"\r\n", b"\n", b" ", b"x", b"\x00", b"\xe9", b"<body>",
    b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: multipart/signed; boundary=b",
    b"Content-Type: text/html; charset=x-unknown", b"Content-Type: text/plain; charset=utf-16",
    b"Content-Type: text/plain; charset*=utf-8''%FF; name*=x''%E9", b"Content-Type: message/rfc822",
    b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Disposition: attachment", b"Subject: =?utf-8?q?a=0D=0ABcc:_x?=", b"ann@example.org",
    b"ann%40example.org", b"=?utf-8?b?YW5uQGV4YW1wbGUub3Jn?=", b"YW5uQGV4YW1wbGUub3Jn",
    b"=C3=A9=\r\n", b"Content-Type: multipart/digest; boundary=b",
    b"Content-Disposition: attachment; filename*=utf-8''ann%40example.org%FF.pdf",
    b"Content-Description: =?utf-8?q?=FF=0D=0Aann=40example.org?= \xe0\xb9\x84",
    b"Content-Type: image/png; name=\"ann@example.org\"; boundary=\"ann@example.org\"",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000) | st.lists(st.sampled_from(MIME_TOKENS), max_size=60).map(b"".join))
def test_never_raises_and_always_has_headers(raw: bytes) -> None:
    out = rewrite(raw, PLAN)
    head = header_block(out)
    assert head.startswith(b'From: "Ann L. via Tours Platform"')
    assert not re.search(rb"^(?:bcc|sender|reply-to|received):", head, re.I | re.M)


def test_encoded_line_breaks_in_a_rescrubbed_header_cannot_inject() -> None:
    raw = b"Subject: =?utf-8?q?ann=40example.org=0D=0ABcc:_x@evil.example?=\r\n\r\nx"
    assert b"\nBcc" not in header_block(rewrite(raw, QUIET))


def test_nine_megabyte_attachment_passes_fast_and_intact() -> None:
    attachment = base64.encodebytes(os.urandom(9 * 1024 * 1024)).replace(b"\n", b"\r\n")
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nsee attached, ann@example.org",
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=ticket.pdf\r\n\r\n" + attachment,
    )
    started = time.perf_counter()
    out = rewrite(raw, PLAN)
    elapsed = time.perf_counter() - started
    assert serialize(parse(out).parts[1].entity) == serialize(parse(raw).parts[1].entity)
    assert elapsed < 0.5, f"rewrite of a 9 MB message took {elapsed:.2f}s"


# --- long lines ----------------------------------------------------------------------------

LINE_PIECES = [b"a", b"x.y ", b"<p>", b"\t", b"\xe9", b"=", b"--b"]


@st.composite
def text_lines(draw: st.DrawFn, *, eight_bit: bool) -> bytes:
    """Lines of up to 2,500 characters, a few of them over the limit, mostly ending in CRLF
    (what the listener stores), at times in a bare LF or CR (what ``rewrite`` may be given)."""
    pieces = [p for p in LINE_PIECES if eight_bit or p.isascii()]
    line = st.builds(operator.mul, st.sampled_from(pieces), st.integers(0, 800))
    end = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])
    lines = draw(st.lists(st.builds(operator.add, line, end), min_size=1, max_size=4))
    return b"".join(lines)


@st.composite
def long_line_part(draw: st.DrawFn) -> bytes:
    """A leaf as real programs write it, often with a line over 998 characters."""
    kind = draw(st.sampled_from(["7bit", "8bit", "qp", "base64", "json", "binary64"]))
    if kind in ("7bit", "8bit"):
        body = draw(text_lines(eight_bit=kind == "8bit"))
        return b"Content-Type: text/html\r\nContent-Transfer-Encoding: %s\r\n\r\n%s" % (
            kind.encode(),
            body,
        )
    if kind == "qp":  # an encoder that never wraps
        body = re.sub(rb"=\r?\n", b"", binascii.b2a_qp(draw(text_lines(eight_bit=True))))
        head = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        return head + b"\r\n" + body
    if kind == "json":
        return b"Content-Type: application/json\r\n\r\n" + draw(text_lines(eight_bit=False))
    data = draw(st.binary(max_size=2000))
    width = draw(st.sampled_from([76, 998, 4464]))
    encoded = base64.b64encode(data)
    wrapped = b"\r\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))
    head = b"Content-Type: %s\r\nContent-Transfer-Encoding: base64\r\n" % (
        b"text/plain; charset=utf-8" if kind == "base64" else b"application/octet-stream"
    )
    return head + b"Content-Disposition: attachment\r\n\r\n" + wrapped + b"\r\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(long_line_part(), min_size=1, max_size=4),
    st.booleans(),
    st.builds(operator.mul, st.just(b"pre "), st.integers(0, 600)),
)
def test_long_lines_are_reencoded_and_decode_alike(
    parts: list[bytes], signed: bool, preamble: bytes
) -> None:
    raw = multipart(*parts, subtype=b"signed" if signed else b"mixed")
    raw = raw.replace(b"\r\n\r\n", b"\r\n\r\n" + preamble + b"\r\n", 1)
    out = rewrite(raw, QUIET)
    assert long_lines(out) == []
    assert decoded_leaves(out) == decoded_leaves(raw)
    before, after = parse(raw), parse(out)
    assert len(after.parts) == len(before.parts)
    for old, new in zip(before.parts, after.parts, strict=True):
        assert (serialize(new.entity) == serialize(old.entity)) == (not long_lines(old.entity.body))


def test_scrubbing_works_inside_a_long_line() -> None:
    line = b"<td>" + b"x" * 700 + b" ann@example.org " + b"y" * 800 + b"</td>"
    raw = b"Content-Type: text/html; charset=us-ascii\r\n\r\n" + line + b"\r\n"
    out = rewrite(raw, QUIET)
    part = parse(out)
    assert long_lines(out) == [] and part.cte == "quoted-printable"
    assert payload(part) == line.replace(b"ann@example.org", SENDER_RELAY.encode()) + b"\r\n"


def test_a_banner_that_lengthens_a_line_reencodes_the_part() -> None:
    raw = b"Content-Type: text/html\r\n\r\n<html><body>" + b"z" * 960 + b"</body></html>\r\n"
    part = parse(rewrite(raw, PLAN))
    assert long_lines(serialize(part)) == [] and part.cte == "quoted-printable"
    assert payload(part).startswith(b'<html><body><p style="color:#888">Reply above')


def test_a_long_preamble_line_is_broken_without_making_a_delimiter() -> None:
    raw = multipart(b"Content-Type: text/plain\r\n\r\nhi")
    raw = raw.replace(b"\r\n\r\n", b"\r\n\r\n" + b"p" * 997 + b"--b--" + b"q" * 2000 + b"\r\n", 1)
    out = rewrite(raw, QUIET)
    assert long_lines(out) == []
    assert b"\r\n --b--qqq" in out
    assert [payload(p.entity) for p in parse(out).parts] == [b"hi"]


def test_a_soft_line_break_never_makes_a_delimiter() -> None:
    """Quoted-printable breaks a long line every 75 characters: the piece after the last
    break here is ``--b``, the boundary of the enclosing multipart, unless it is escaped."""
    line = b"x" * 75 * 14 + b"--b\r\n"
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\n" + line, b"Content-Type: text/plain\r\n\r\n2"
    )
    out = rewrite(raw, QUIET)
    assert long_lines(out) == [] and len(parse(out).parts) == 2
    assert decoded_leaves(out) == decoded_leaves(raw)


def test_a_long_signature_is_rewrapped_and_the_signed_content_kept() -> None:
    signature = base64.b64encode(os.urandom(3000))
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nsigned by ann@example.org",
        b"Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + signature,
        subtype=b'signed; protocol="application/pkcs7-signature"',
    )
    content, sig = (p.entity for p in parse(rewrite(raw, QUIET)).parts)
    assert serialize(content) == b"Content-Type: text/plain\r\n\r\nsigned by ann@example.org"
    assert long_lines(serialize(sig)) == [] and payload(sig) == base64.b64decode(signature)


def test_a_long_header_line_of_a_forwarded_message_is_folded() -> None:
    value = b"0 (Mail was not recognized as spam); Detail=" + b"V3;" * 400
    forwarded = b"X-GMX-Antispam: " + value + b"\r\nSubject: fwd\r\n\r\nbody\r\n"
    raw = multipart(b"Content-Type: message/rfc822\r\n\r\n" + forwarded)
    out = rewrite(raw, QUIET)
    assert long_lines(out) == [] and parse(out).parts[0].entity.cte == "7bit"
    inner = email.message_from_bytes(payload(parse(out).parts[0].entity), policy=policy.default)
    assert inner["X-GMX-Antispam"].replace(" ", "") == value.decode().replace(" ", "")
    assert inner.get_payload() == "body\r\n"


# --- forwarded messages and part headers --------------------------------------------------

PDF = base64.encodebytes(b"%PDF-1.4 ann@example.org " + bytes(range(256))).replace(b"\n", b"\r\n")
FORWARDED_MAIL = (
    b"Return-Path: <ann@example.org>\r\n"
    b"Received: from mx.agency.example by mail.example.org\r\n"
    b"\tfor <ANN@example.org>; Mon, 2 Mar 2026 18:00:00 +0100\r\n"
    b"From: Agency <noreply@agency.example>\r\n"
    b"To: =?utf-8?q?Ann_L=C3=A9e?= <ann@example.org>, Bob (bob@tours.example) <b@tours.example>\r\n"
    b"Cc: bob@tours.example\r\nReply-To: ann@example.org\r\nSender: ann@example.org\r\n"
    b"X-Mailer: Agency CRM 2.1\r\nMessage-ID: <77.ann@example.org>\r\nSubject: Your booking\r\n"
    b"Content-Type: multipart/mixed; boundary=in\r\n\r\n"
    b"--in\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Dear Ann <ann@example.org>, =E0 bient=F4t.\r\n"
    b'--in\r\nContent-Type: application/pdf; name="ann@example.org.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n" + PDF + b"--in--\r\n"
)


def forward(message: bytes, head: bytes = b"Content-Type: message/rfc822\r\n") -> bytes:
    return multipart(b"Content-Type: text/plain\r\n\r\nsee below", head + b"\r\n" + message)


def test_forwarded_message_is_scrubbed_but_keeps_its_headers_and_attachments() -> None:
    out = rewrite(forward(FORWARDED_MAIL), PLAN)
    inner = parse(parse(out).parts[1].entity.body)
    values = {f.key: f.decoded for f in inner.fields}
    assert values["return-path"] == f"<{SENDER_RELAY}>"
    assert values["received"].endswith(f"for <{SENDER_RELAY}>; Mon, 2 Mar 2026 18:00:00 +0100")
    assert values["to"] == f"Ann Lée <{SENDER_RELAY}>, Bob <b@tours.example>"
    assert values["cc"] == RECIPIENT_RELAY
    assert values["reply-to"] == values["sender"] == SENDER_RELAY
    # Not allow-listed (the party forwarded them), and ids are a known limit.
    assert b"From: Agency <noreply@agency.example>\r\n" in out
    assert b"X-Mailer: Agency CRM 2.1\r\nMessage-ID: <77.ann@example.org>\r\n" in out
    text, pdf = (p.entity for p in inner.parts)
    assert text.param("charset") == "iso-8859-1" and text.cte == "quoted-printable"
    assert payload(text) == f"Dear Ann <{SENDER_RELAY}>, à bientôt.".encode("latin-1")
    assert pdf.body + b"\r\n" == PDF and pdf.param("name") == f"{SENDER_RELAY}.pdf"
    assert out.count(b"Reply above this line") == 1  # no banner inside


def test_forwarded_message_without_address_goes_out_byte_for_byte() -> None:
    raw = forward(b"From: agency@x.example\r\nSubject: hi\r\n\r\nhello\r\n")
    assert body_bytes(parse(rewrite(raw, QUIET))) == body_bytes(parse(raw))


def test_base64_forwarded_message_is_decoded_scrubbed_and_reencoded() -> None:
    message = base64.encodebytes(FORWARDED_MAIL).replace(b"\n", b"\r\n")
    head = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n"
    part = parse(rewrite(forward(message, head), QUIET)).parts[1].entity
    assert part.cte == "base64" and all(len(line) <= 76 for line in part.body.split(b"\r\n"))
    assert parse(payload(part)).get("reply-to").decoded == SENDER_RELAY  # type: ignore[union-attr]


def test_digest_children_are_forwarded_messages() -> None:
    raw = multipart(b"\r\nFrom: ann@example.org\r\n\r\nhi", subtype=b"digest")
    assert b"\r\n\r\nFrom: " + SENDER_RELAY.encode() + b"\r\n\r\nhi" in rewrite(raw, QUIET)


def test_nested_forwards_are_opened_to_the_depth_limit_then_scrubbed_as_bytes() -> None:
    note = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    note += base64.encodebytes(b"from ann@example.org").replace(b"\n", b"\r\n")
    message = b"From: ann@example.org\r\n\r\nhi"
    for level in range(MAX_FORWARD_DEPTH + 2):
        inner = b"Content-Type: message/rfc822\r\n\r\n" + message
        message = b"From: ann@example.org\r\n" + multipart(note, inner, boundary=b"%d" % level)
    out = rewrite(message, QUIET)
    notes = [payload(e) for e in walk_all(parse(out)) if e.cte == "base64"]
    opened = [SENDER_RELAY.encode() in note for note in notes]
    assert opened == [True] * (MAX_FORWARD_DEPTH + 1) + [False]  # the top level, then 5 more
    assert b"From: ann@example.org" not in out


@pytest.mark.parametrize(
    "field",
    [
        b'Content-Type: application/pdf; name="ann@example.org.pdf"',
        b'Content-Disposition: attachment; filename="Booking for ANN@example.org.pdf"',
        b"Content-Disposition: attachment;\r\n filename*=utf-8''ann%40example.org%20%C3%A9.pdf",
        b'Content-Type: image/png; name="=?utf-8?b?YW5uQGV4YW1wbGUub3Jn?="',
        b"Content-Description: photo from =?utf-8?q?Ann_=3Cann=40example.org=3E?=",
        b"Content-Description: photo from ann@example.org",
    ],
)
def test_attachment_part_headers_are_scrubbed_and_its_bytes_kept(field: bytes) -> None:
    blob = base64.encodebytes(os.urandom(300)).replace(b"\n", b"\r\n")
    head = b"Content-Type: image/png\r\n" if field.startswith(b"Content-D") else b""
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nhi",
        head + field + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + blob,
    )
    part = parse(rewrite(raw, QUIET)).parts[1].entity
    shown = " ".join([*(f.decoded for f in part.fields), part.filename or ""]).lower()
    assert part.body == blob and part.is_attachment
    assert "ann@example.org" not in shown and SENDER_RELAY in shown
    assert b"ann@example.org" not in part.header.lower()


def test_part_headers_keep_their_line_endings_and_their_boundaries() -> None:
    nested = b'Content-Type: multipart/mixed; boundary="ann=40example.org"\n\n' + (
        b"--ann=40example.org\nContent-Type: text/plain\n\nann@example.org\n--ann=40example.org--\n"
    )
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n"
        b'Content-Type: text/plain; name="ann@example.org.txt"\n\nhi\n--b\n' + nested + b"--b--\n"
    )
    first, second = (p.entity for p in parse(rewrite(raw, QUIET)).parts)
    assert first.header == f'Content-Type: text/plain; name="{SENDER_RELAY}.txt"\n\n'.encode()
    for multi in (second, parse(rewrite(nested, QUIET))):
        assert multi.param("boundary") == "ann=40example.org" and len(multi.parts) == 1
        assert payload(multi.parts[0].entity) == SENDER_RELAY.encode()


def test_encoded_line_breaks_in_scrubbed_part_headers_cannot_inject() -> None:
    evil = b"=?utf-8?q?ann=40example.org=0D=0ABcc:_x@evil.example?="
    raw = forward(
        b"Subject: " + evil + b"\r\n\r\nx",
        b"Content-Type: message/rfc822\r\nContent-Description: " + evil + b"\r\n",
    )
    assert not re.search(rb"\nBcc", rewrite(raw, QUIET), re.IGNORECASE)


def test_ids_and_addresses_split_by_markup_are_known_limits() -> None:
    html = (
        b'Content-Type: text/html\r\n\r\n<img src="cid:1.ann@example.org"> <b>ann</b>@example.org'
    )
    image = b"Content-Type: image/png\r\nContent-ID: <1.ann@example.org>\r\n\r\nPNG"
    out = rewrite(multipart(html, image, subtype=b"related"), QUIET)
    assert b'src="cid:1.ann@example.org"' in out and b"Content-ID: <1.ann@example.org>" in out
    assert b"<b>ann</b>@example.org" in out


# --- no real address survives (generated messages) -----------------------------------------

ENCODED_RUN = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=(?:\s+=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)*")
CHARSETS = [
    ("utf-8", "Réservation ไทย ✓"),
    ("iso-8859-1", "Réservation à 8h"),
    ("windows-1252", "Merci \u2013 5 € «ok»"),
    ("tis-620", "สวัสดีครับ ทัวร์"),
    ("iso-2022-jp", "こんにちは、予約"),
    ("us-ascii", "Hello there"),
]
PLAIN_SHAPES = [
    "On Tue, 3 Mar 2026 at 10:02, Ann <{a}> wrote:",
    "Le mar. 3 mars 2026 à 10:02, Ann <{a}> a écrit :",
    "De : Ann <{a}>",
    "From: Ann [mailto:{a}]",
    "> > write to {a}.",
    "{ew}",
]
HTML_SHAPES = [
    '<a href="mailto:{a}">{a}</a>',
    '<a href="https://x.example/r?u={pct}">link</a>',
    "{local}&#64;{domain} or {local}&#x40;{domain}",
    "&lt;{a}&gt; {ew}",
]
HEADER_SHAPES = [
    "From: Ann <{a}>",
    "Reply-To: {a}",
    "Sender: {a}",
    "Return-Path: <{a}>",
    "Received: from h (h [192.0.2.1]) (envelope-from <{a}>) by mx",
    "Cc: {a}",
    "Message-ID: <1.{a}>",
    "Subject: {ew}",
    "Subject: Re: booking for {a}",
    "Thread-Topic: {a}",
    "List-Post: <mailto:{a}>",
]
INNER_HEADER_SHAPES = [
    *(shape for shape in HEADER_SHAPES if not shape.startswith("Message-ID")),  # a known limit
    "From: Ann ({a}) <ann.lee@x.example>",
    "To: Bob <b@x.example>, Ann <{a}>",
    "Delivered-To: {a}",
]
PART_HEADER_SHAPES = [
    'Content-Disposition: attachment; filename="voucher-{a}.png"',
    "Content-Disposition: attachment; filename*=utf-8''{pct}.png",
    'Content-Type: image/png; name="{ew}"',
    "Content-Description: {ew}",
    "Content-Description: photo of {a}",
]


@st.composite
def cased(draw: st.DrawFn, address: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(address), max_size=len(address)))
    return "".join(c.upper() if flip else c for c, flip in zip(address, flips, strict=True))


@st.composite
def spelled(draw: st.DrawFn, shapes: list[str], address: str) -> str:
    a = draw(cased(address))
    local, _, domain = a.rpartition("@")
    ew = Header(f"Ann <{a}>", draw(st.sampled_from(["utf-8", "iso-8859-1"]))).encode()
    shape = draw(st.sampled_from(shapes))
    return shape.format(a=a, local=local, domain=domain, pct=a.replace("@", "%40"), ew=ew)


@st.composite
def text_part(draw: st.DrawFn, address: str, subtype: str, nl: str) -> bytes:
    charset, filler = draw(st.sampled_from(CHARSETS))
    shapes = PLAIN_SHAPES if subtype == "plain" else HTML_SHAPES
    lines = draw(st.lists(spelled(shapes, address), min_size=1, max_size=4))
    data = nl.join([filler, *lines, filler]).encode(charset, "replace")
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]))
    cte = "8bit" if cte == "7bit" and not data.isascii() else cte
    body = {"base64": base64.encodebytes(data), "quoted-printable": binascii.b2a_qp(data)}
    head = f"Content-Type: text/{subtype}; charset={charset}{nl}Content-Transfer-Encoding: {cte}"
    return (head + nl + nl).encode() + body.get(cte, data).replace(b"\n", nl.encode())


@st.composite
def attachment(draw: st.DrawFn, address: str, nl: str) -> bytes:
    """Random bytes, maybe with a file name or description naming the address."""
    blob = base64.encodebytes(draw(st.binary(min_size=1, max_size=300))).replace(b"\n", nl.encode())
    named = draw(st.lists(spelled(PART_HEADER_SHAPES, address), max_size=2))
    head = nl.join(["Content-Type: image/png", "Content-Transfer-Encoding: base64", *named])
    return (head + nl + nl).encode() + blob


def assemble(subtype: str, parts: list[bytes], nl: str, tag: str = "") -> bytes:
    boundary = f"=_{tag}{subtype}_{len(parts)}"
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"{nl}{nl}'.encode()
    body = b"".join(f"--{boundary}{nl}".encode() + p + nl.encode() for p in parts)
    return head + body + f"--{boundary}--{nl}".encode()


@st.composite
def leaky_body(draw: st.DrawFn, address: str, nl: str, tag: str) -> bytes:
    """A message body with its MIME headers; ``tag`` keeps nested boundaries apart."""
    plain, page = draw(text_part(address, "plain", nl)), draw(text_part(address, "html", nl))
    alternative = assemble("alternative", [plain, page], nl, tag)
    return draw(
        st.sampled_from(
            [
                plain,
                page,
                alternative,
                assemble("mixed", [alternative, draw(attachment(address, nl))], nl, tag),
                assemble("related", [page, draw(attachment(address, nl))], nl, tag),
                assemble(
                    "mixed", [plain, assemble("mixed", [page, plain], nl, tag + "in")], nl, tag
                ),
            ]
        )
    )


@st.composite
def forwarded(draw: st.DrawFn, address: str, nl: str) -> bytes:
    """A message/rfc822 part: an earlier mail, attached as it was received."""
    headers = draw(st.lists(spelled(INNER_HEADER_SHAPES, address), min_size=1, max_size=6))
    message = (nl.join(headers) + nl).encode() + draw(leaky_body(address, nl, "fwd"))
    head = [
        "Content-Type: message/rfc822",
        *draw(st.lists(spelled(PART_HEADER_SHAPES[:2], address), max_size=1)),
    ]
    if draw(st.booleans()):  # forbidden by RFC 2046, written by some mailers all the same
        head.append("Content-Transfer-Encoding: base64")
        message = base64.encodebytes(message).replace(b"\n", nl.encode())
    return (nl.join(head) + nl + nl).encode() + message


@st.composite
def leaky_message(draw: st.DrawFn) -> tuple[bytes, str]:
    local = draw(st.from_regex(r"[a-z][a-z0-9]{1,7}(?:[._+-][a-z0-9]{1,4})?", fullmatch=True))
    domain = draw(st.from_regex(r"[a-z]{2,9}\.(?:org|com|co\.th|fr)", fullmatch=True))
    address = f"{local}@{domain}"
    nl = draw(st.sampled_from(["\r\n", "\n"]))
    body = draw(leaky_body(address, nl, ""))
    if draw(st.booleans()):
        body = assemble("mixed", [body, draw(forwarded(address, nl))], nl, "top")
    headers = draw(st.lists(spelled(HEADER_SHAPES, address), min_size=1, max_size=6))
    return nl.join(headers).encode() + nl.encode() + body, address


def readable_text(entity: Entity) -> str:
    """What a reader of the part sees: charset, encoded words, URL and HTML escapes undone."""
    text = payload(entity).decode(entity.param("charset") or "ascii", "replace")
    text = ENCODED_RUN.sub(lambda m: str(make_header(decode_header(m.group(0)))), text)
    return html.unescape(unquote(text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaky_message())
def test_real_address_survives_nowhere(message: tuple[bytes, str]) -> None:
    raw, address = message
    out = rewrite(raw, plan_for(address))
    assert address.encode() not in out.lower()
    for name, value in email.message_from_bytes(out, policy=policy.default).items():
        assert address not in str(value).lower(), name
    after = parse(out)
    for entity in walk_all(after):  # part headers and forwarded headers, decoded
        for value in [*(f.decoded for f in entity.fields), entity.filename or ""]:
            assert address not in value.lower()
    for leaf in text_leaves(after):
        assert address not in readable_text(leaf).lower()
    assert attachment_payloads(parse(raw)) == attachment_payloads(after)


# --- corpus ------------------------------------------------------------------------------

CORPUS = [pytest.param(raw, id=name) for name, raw in corpus_messages()] or [
    pytest.param(b"", marks=pytest.mark.skip(reason=f"corpus folder {CORPORA} not present"))
]


def carried(entity: Entity) -> list[Entity]:
    """The subtrees whose bodies rewrite must pass on byte for byte (their headers may be
    scrubbed); forwarded messages are opened, their attachments are carried too."""
    if entity.content_type in FORWARDED:
        return carried(parse(payload(entity)))
    if entity.content_type in SEALED or entity.is_attachment:
        return [entity]
    return [found for part in entity.parts for found in carried(part.entity)]


def stdlib_attachments(raw: bytes) -> list[bytes]:
    """An independent reading of the non-text payloads, by the stdlib's own parser."""
    found: list[bytes] = []
    for part in email.message_from_bytes(raw).walk():
        if part.is_multipart() or part.get_content_maintype() == "message":
            continue
        named = part.get_filename() is not None or part.get_content_disposition() == "attachment"
        if part.get_content_maintype() != "text" or named:
            decoded = part.get_payload(decode=True)
            found.append(decoded if isinstance(decoded, bytes) else b"")
    return sorted(found)


def from_addresses(root: Entity) -> list[str]:
    sender = root.get("from")
    addresses = getattr(sender.parsed, "addresses", ()) if sender else ()
    return [a.addr_spec.lower() for a in addresses if "@" in a.addr_spec]


def as_address(address: str) -> re.Pattern[bytes]:
    """An occurrence a reader would take for the address (not ``cid:1.ann@x`` or ``joann@x``)."""
    return re.compile(rb"(?<![\w.+-])%s(?![\w-]|\.[\w-])" % re.escape(address.encode()), re.I)


@pytest.mark.parametrize("raw", CORPUS)
def test_corpus_message(raw: bytes) -> None:
    """Carried parts go out byte for byte, or re-encoded when they have a long line (two
    corpus messages have one); their decoded bytes always stay."""
    before = parse(raw)
    senders = from_addresses(before)
    out = rewrite(raw, replace(PLAN, replacements=dict.fromkeys(senders, SENDER_RELAY)))
    after = parse(out)
    assert long_lines(out) == []
    kept, sent = carried(before), carried(after)
    outer = [body_bytes(e) for e in kept]
    pairs = list(zip(outer, (body_bytes(e) for e in sent), strict=True))
    assert [old == new for old, new in pairs] == [not long_lines(old) for old, _ in pairs]
    assert [payload(e) for e in kept] == [payload(e) for e in sent]
    assert stdlib_attachments(raw) == stdlib_attachments(out)
    visible = out
    for region in outer:
        visible = visible.replace(region, b"")
    for address in senders:
        assert not as_address(address).search(visible)
        for leaf in text_leaves(after):
            assert not as_address(address).search(readable_text(leaf).encode("utf-8"))


# --- golden files ------------------------------------------------------------------------

GENERATED_DATE = re.compile(rb"^Date: [^\r\n]*\r\n", re.MULTILINE)
GOLDEN_CASES = sorted(p.name.removesuffix("_incoming.eml") for p in GOLDEN.glob("*_incoming.eml"))


def readable_lines(data: bytes) -> list[str]:
    """Lines for the diff, carriage returns made visible."""
    text = data.decode("utf-8", "backslashreplace")
    return [line.replace("\r", "\\r") for line in text.splitlines(keepends=True)]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden(case: str) -> None:
    incoming = (GOLDEN / f"{case}_incoming.eml").read_bytes()
    actual = rewrite(incoming, PLAN)
    if parse(incoming).get("date") is None:
        actual = GENERATED_DATE.sub(b"Date: <generated>\r\n", actual, count=1)
    expected_path, actual_path = GOLDEN / f"{case}_expected.eml", GOLDEN / f"{case}_actual.eml"
    expected = expected_path.read_bytes() if expected_path.exists() else b""
    if actual == expected:
        actual_path.unlink(missing_ok=True)
        return
    actual_path.write_bytes(actual)
    diff = difflib.unified_diff(
        readable_lines(expected), readable_lines(actual), str(expected_path), str(actual_path)
    )
    pytest.fail("rewrite output differs from the golden file:\n" + "".join(diff), pytrace=False)


LONGEST_LINE = {
    "outlook_long_line": 1523,  # 7bit HTML with the sender's address in the long line
    "gmx_long_header": 1242,  # a provider's header, which is not on the allow-list
    "one_line_base64": 4464,
    "json_long_lines": 1035,  # in the text body and in a 7bit application/json attachment
    "smtplib_bare_lf": None,  # msg.as_bytes(): LF line ends, the listener read one long line
}


@pytest.mark.parametrize("case", sorted(LONGEST_LINE))
def test_golden_long_lines_decode_alike_and_are_scrubbed(case: str) -> None:
    incoming = (GOLDEN / f"{case}_incoming.eml").read_bytes()
    assert max(long_lines(incoming), default=None) == LONGEST_LINE[case]
    out = rewrite(incoming, QUIET)
    assert long_lines(out) == []
    real, relay = b"ann@example.org", SENDER_RELAY.encode()
    expected = [
        leaf._replace(data=leaf.data.replace(real, relay))
        if leaf.kind.startswith("text/")
        else leaf
        for leaf in decoded_leaves(incoming)
    ]
    assert decoded_leaves(out) == expected
    assert all(real not in leaf.data for leaf in expected if leaf.kind.startswith("text/"))
