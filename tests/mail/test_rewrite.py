"""What leaves the relay: allow-listed headers, scrubbed text, attachments byte for byte."""

from __future__ import annotations

import base64
import binascii
import difflib
import email
import html
import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from email import policy
from email.header import Header, decode_header, make_header
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailveil.mail.mime import Entity, body_bytes, parse, payload, serialize
from mailveil.mail.rewrite import SEALED, RewritePlan, rewrite

CORPORA = Path(__file__).parents[2].parent / "shared" / "corpora"
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


def text_leaves(root: Entity) -> list[Entity]:
    return [e for e in root.walk() if not e.multipart and not e.is_attachment]


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


def multipart(*parts: bytes, subtype: bytes = b"mixed") -> bytes:
    body = b"".join(b"--b\r\n" + p + b"\r\n" for p in parts)
    return b"Content-Type: multipart/" + subtype + b"; boundary=b\r\n\r\n" + body + b"--b--\r\n"


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


def test_signed_and_encrypted_subtrees_and_messages_are_untouched() -> None:
    signed = multipart(
        b"Content-Type: text/plain\r\n\r\nfrom ann@example.org",
        b"Content-Type: application/pgp-signature\r\n\r\nsig",
        subtype=b'signed; protocol="application/pgp-signature"',
    )
    inner = signed[signed.index(b"\r\n\r\n") + 4 :]
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nhi",
        signed.replace(b"boundary=b", b"boundary=s").replace(b"--b", b"--s"),
        b"Content-Type: message/rfc822\r\n\r\nFrom: ann@example.org\r\n\r\nold",
    )
    out = rewrite(raw, PLAN)
    assert inner.replace(b"--b", b"--s") in out
    assert b"From: ann@example.org\r\n\r\nold" in out
    assert rewrite(signed, PLAN).endswith(inner)


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
    b"=C3=A9=\r\n",
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


def assemble(subtype: str, parts: list[bytes], nl: str) -> bytes:
    boundary = f"=_{subtype}_{len(parts)}"
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"{nl}{nl}'.encode()
    body = b"".join(f"--{boundary}{nl}".encode() + p + nl.encode() for p in parts)
    return head + body + f"--{boundary}--{nl}".encode()


@st.composite
def leaky_message(draw: st.DrawFn) -> tuple[bytes, str]:
    local = draw(st.from_regex(r"[a-z][a-z0-9]{1,7}(?:[._+-][a-z0-9]{1,4})?", fullmatch=True))
    domain = draw(st.from_regex(r"[a-z]{2,9}\.(?:org|com|co\.th|fr)", fullmatch=True))
    address = f"{local}@{domain}"
    nl = draw(st.sampled_from(["\r\n", "\n"]))
    plain, page = draw(text_part(address, "plain", nl)), draw(text_part(address, "html", nl))
    blob = base64.encodebytes(draw(st.binary(min_size=1, max_size=300))).replace(b"\n", nl.encode())
    attachment = f"Content-Type: image/png{nl}Content-Transfer-Encoding: base64{nl}{nl}".encode()
    alternative = assemble("alternative", [plain, page], nl)
    body = draw(
        st.sampled_from(
            [
                plain,
                page,
                alternative,
                assemble("mixed", [alternative, attachment + blob], nl),
                assemble("related", [page, attachment + blob], nl),
                assemble("mixed", [plain, assemble("mixed", [page, plain], nl)], nl),
            ]
        )
    )
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
    for leaf in text_leaves(parse(out)):
        assert address not in readable_text(leaf).lower()


# --- corpus ------------------------------------------------------------------------------

MBOX_SEPARATOR = re.compile(rb"(?:^|\n)From [^\n]*\n")
NOT_MESSAGES = {"LICENSE", "SOURCE.txt"}


def wrapped(blob: bytes, filename: str) -> bytes:
    """Raw TNEF streams are what Outlook attaches as winmail.dat; carry them that way."""
    message = email.message.EmailMessage()
    message["From"] = "Corpus Sender <corpus.sender@example.net>"
    message["Subject"] = f"{filename} attached"
    message.set_content("See the attachment, or write to corpus.sender@example.net.\n")
    message.add_attachment(blob, maintype="application", subtype="ms-tnef", filename="winmail.dat")
    return message.as_bytes(policy=policy.SMTP)


def corpus_messages() -> Iterator[tuple[str, bytes]]:
    """One message per file; mbox files (and files with an mbox envelope line) are split."""
    for path in sorted(CORPORA.rglob("*")) if CORPORA.is_dir() else []:
        if not path.is_file() or path.name in NOT_MESSAGES:
            continue
        name, raw = str(path.relative_to(CORPORA)), path.read_bytes()
        if path.suffix == ".tnef":
            yield name, wrapped(raw, path.name)
        elif raw.startswith(b"From "):
            for index, chunk in enumerate(MBOX_SEPARATOR.split(raw)[1:]):
                yield f"{name}#{index}", chunk
        else:
            yield name, raw


CORPUS = [pytest.param(raw, id=name) for name, raw in corpus_messages()] or [
    pytest.param(b"", marks=pytest.mark.skip(reason=f"corpus folder {CORPORA} not present"))
]


def carried(entity: Entity) -> list[Entity]:
    """The subtrees rewrite must pass on byte for byte."""
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
    before = parse(raw)
    senders = from_addresses(before)
    out = rewrite(raw, replace(PLAN, replacements=dict.fromkeys(senders, SENDER_RELAY)))
    after = parse(out)
    kept, sent = carried(before), carried(after)
    outer = [body_bytes(e) if e is before else serialize(e) for e in kept]
    assert outer == [body_bytes(e) if e is after else serialize(e) for e in sent]
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
