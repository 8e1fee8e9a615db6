"""Every header the relay writes is one field, whatever the names and subjects hold.

Names and subjects are attacker-controlled, and so is what their RFC 2047 encoded words
decode to, at any depth: ``=?utf-8?b?QW5uDQpCY2M6IHZAby5leGFtcGxl?=`` is
``Ann<CR><LF>Bcc: v@o.example``. Each property builds a value holding CR, LF, NUL and ``:``,
hides it in encoded words nested up to four deep, and passes it where the relay takes it
(display names from the API and from the template, a party's Subject, a file name, a
notice's subject and name). The output must parse back (``policy.default``) to the same
names and values, control characters replaced, with exactly the fields it should have.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import unquote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailveil.domain.verdicts import Outcome
from mailveil.mail.mime import MAX_LINE, fold, header_block, header_text
from mailveil.mail.notices import Notice, build_notice
from mailveil.mail.rewrite import KEPT_HEADERS, RewritePlan, rewrite

REAL = "ann@customer.example"
RELAY = "customer-12ab3456cd78@reply.example.com"
PLAN = RewritePlan(
    from_name="Ann Lee via mailveil",
    from_address=RELAY,
    to_name="Sunny Tours",
    to_address="ops@sunny.example",
    message_id="<m-1@reply.example.com>",
    in_reply_to=(),
    references=(),
    replacements={REAL: RELAY},
)
GENERATED = {"from", "to", "date", "message-id", "mime-version"}
INJECTED_NAME = "=?utf-8?b?QW5uDQpCY2M6IHZAby5leGFtcGxl?="  # Ann<CR><LF>Bcc: v@o.example
INJECTED_TAIL = (
    "x\r\nReply-To: attacker@evil.example\r\nX-Injected: yes\r\n\r\n<injected body>"
)

# --- values and their disguises -------------------------------------------------------------

TEXT = st.lists(
    st.one_of(
        st.sampled_from(["\r", "\n", "\r\n", "\x00", ":", " ", "\t", "Bcc: v.o.example", "é"]),
        st.characters(exclude_categories=["Cs"], exclude_characters="=?@"),
    ),
    max_size=40,
).map("".join)
"""Without ``=?`` (which would itself read as an encoded word) and without ``@`` (scrubbing
would rightly change the text)."""
LAYER = st.tuples(st.sampled_from(["utf-8", "UTF-8", "utf-8*en"]), st.sampled_from("bBqQ"))
LAYERS = st.lists(LAYER, max_size=4)
IN_MAIL = st.lists(LAYER, min_size=1, max_size=4)
"""In mail at least one layer: raw control characters are refused by the listener."""


def encoded(text: str, charset: str, encoding: str) -> str:
    data = text.encode("utf-8")
    if encoding in "bB":
        payload = base64.b64encode(data).decode("ascii")
    else:
        payload = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"={b:02X}"
                          for b in data)  # fmt: skip
    return f"=?{charset}?{encoding}?{payload}?="


def nested(text: str, layers: list[tuple[str, str]]) -> str:
    for charset, encoding in layers:
        text = encoded(text, charset, encoding)
    return text


def shown(text: str) -> str:
    """What a reader must see of ``text``: control characters replaced, spaces collapsed."""
    return " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", " ", text).split())


def same_name(read: str, expected: str) -> bool:
    """Display names compare without their spaces: the stdlib's folder splits a long name
    into several encoded words, and its parser keeps the folding space between two of them
    inside a phrase (RFC 2047 6.2 says to drop it; mail programs do)."""
    return "".join(read.split()) == "".join(shown(expected).split())


def reread(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_one_field_per_line(head: bytes) -> None:
    """Each line of the header block starts a field or folds one, and none is too long."""
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""], "the block ends with its blank line"
    for line in lines[:-2]:
        assert 0 < len(line) <= MAX_LINE
        assert re.fullmatch(rb"[!-9;-~]+:.*|[ \t].*\S.*", line), line
        assert re.fullmatch(rb"[\t -~]*", line), line


def assert_relayed_headers(out: bytes, extra: set[str]) -> EmailMessage:
    head = header_block(out)
    assert_one_field_per_line(head)
    message = reread(out)
    names = [k.lower() for k in message]
    assert sorted(names) == sorted(GENERATED | extra)
    assert set(names) <= GENERATED | KEPT_HEADERS
    assert names.count("from") == 1 and names.count("to") == 1
    return message


# --- examples from the issue ----------------------------------------------------------------


def test_an_api_name_hiding_a_bcc_header_stays_a_display_name() -> None:
    plan = dataclasses.replace(PLAN, from_name=f"{INJECTED_NAME} via mailveil")
    out = rewrite(b"Subject: hi\r\n\r\nhello\r\n", plan)
    message = assert_relayed_headers(out, {"subject"})
    assert b"\r\nBcc:" not in out and "bcc" not in message
    assert message["From"].addresses[0].display_name == "Ann Bcc: v@o.example via mailveil"
    assert message["From"].addresses[0].addr_spec == RELAY


def test_a_subject_hiding_headers_and_a_body_in_its_second_word() -> None:
    first = encoded(f"Write to {REAL} please", "utf-8", "q")
    second = encoded(INJECTED_TAIL, "utf-8", "b")
    raw = f"Subject: {first} {second}\r\n\r\nhello\r\n".encode()
    out = rewrite(raw, PLAN)
    message = assert_relayed_headers(out, {"subject"})
    assert "reply-to" not in message and "x-injected" not in message
    assert message["Subject"] == shown(f"Write to {RELAY} please{INJECTED_TAIL}")
    assert out.endswith(b"\r\n\r\nhello\r\n")


def test_a_subject_naming_nobody_but_hiding_a_line_break_is_written_decoded() -> None:
    raw = f"Subject: {encoded(INJECTED_TAIL, 'utf-8', 'b')}\r\n\r\nhello\r\n".encode()
    message = assert_relayed_headers(rewrite(raw, PLAN), {"subject"})
    assert message["Subject"] == shown(INJECTED_TAIL)


def test_a_notice_to_a_name_hiding_a_bcc_header() -> None:
    raw = build_notice(notice(to_name=INJECTED_NAME, original_subject=nested(INJECTED_TAIL, [
        ("utf-8", "b"), ("utf-8", "q")])))  # fmt: skip
    message = reread(raw)
    assert_one_field_per_line(header_block(raw))
    assert "bcc" not in message and "reply-to" not in message
    assert message["To"].addresses[0].display_name == "Ann Bcc: v@o.example"
    assert message["Subject"] == f"Undelivered: {shown(INJECTED_TAIL)}"


def test_a_long_kept_subject_is_folded_and_reads_the_same() -> None:
    words = " ".join(f"word{i}" for i in range(400))
    out = rewrite(f"Subject: {words}\r\nThread-Topic: {'x' * 1500}\r\n\r\nhi\r\n".encode(), PLAN)
    message = assert_relayed_headers(out, {"subject", "thread-topic"})
    assert message["Subject"] == words
    assert message["Thread-Topic"] == "x" * 1500


def test_the_top_level_content_id_is_dropped_and_a_part_s_kept() -> None:
    """Issue 16.5: ``<cid.ann@…>`` names the sender; nothing refers to the whole message by
    it, while a part's Content-ID is what an HTML part's ``cid:`` links point to."""
    raw = (
        f"Content-ID: <cid.{REAL}>\r\nContent-Type: multipart/related; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/html\r\n\r\n<img src=cid:p1@x>\r\n"
        "--b\r\nContent-Type: image/png\r\nContent-ID: <p1@x>\r\n\r\nAAAA\r\n--b--\r\n"
    ).encode()
    out = rewrite(raw, PLAN)
    message = assert_relayed_headers(out, {"content-type"})
    assert REAL.encode() not in out
    assert [p["Content-ID"] for p in message.iter_parts()] == [None, "<p1@x>"]


def test_a_part_s_long_mime_field_is_folded_and_keeps_its_meaning() -> None:
    name = "Angebot " * 150 + "final.pdf"
    raw = (
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        f'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="{name}"'
        "\r\n\r\nAAAA\r\n--b--\r\n"
    ).encode()
    out = rewrite(raw, PLAN)
    assert_one_field_per_line(header_block(out.split(b"--b\r\n")[1]))
    attachment = next(iter(assert_relayed_headers(out, {"content-type"}).iter_attachments()))
    assert attachment.get_filename() == name
    assert out.endswith(b"\r\n\r\nAAAA\r\n--b--\r\n")


def test_an_rfc_2231_file_name_hiding_a_line_break_is_written_decoded() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''a%0D%0ABcc%3A%20v%40o.example.pdf"
        b"\r\n\r\nAAAA\r\n--b--\r\n"
    )
    out = rewrite(raw, PLAN)
    part = out.split(b"--b\r\n")[1]
    assert_one_field_per_line(header_block(part))
    attachment = next(iter(assert_relayed_headers(out, {"content-type"}).iter_attachments()))
    assert attachment.get_filename() == "a Bcc: v@o.example.pdf"


def test_fold_writes_a_value_too_long_for_any_line_as_nothing() -> None:
    assert fold("To", f"{'x' * 1200}@example.org") == b""
    assert fold("X" * 1000, "1") == b""


def test_decoding_stops_at_a_depth_and_defuses_what_is_left() -> None:
    deep = nested("a\r\nb", [("utf-8", "q")] * 12)
    text = header_text(deep)
    assert "\r" not in text and "\n" not in text and "=?" not in text
    assert header_text(nested("a\r\nb", [("utf-8", "b")] * 5)) == "a b"


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(TEXT, LAYERS, TEXT, LAYERS)
def test_display_names_from_the_api_and_the_template(
    name: str, layers: list[tuple[str, str]], to_name: str, to_layers: list[tuple[str, str]]
) -> None:
    template = "{name} via {platform}"
    plan = dataclasses.replace(
        PLAN,
        from_name=template.format(name=nested(name, layers), platform="mailveil"),
        to_name=nested(to_name, to_layers),
    )
    message = assert_relayed_headers(rewrite(b"\r\nhello\r\n", plan), set())
    assert same_name(message["From"].addresses[0].display_name, f"{name} via mailveil")
    assert message["From"].addresses[0].addr_spec == RELAY
    assert same_name(message["To"].addresses[0].display_name, to_name)
    assert message["To"].addresses[0].addr_spec == "ops@sunny.example"


@settings(max_examples=150, deadline=None)
@given(TEXT, IN_MAIL, st.booleans(), TEXT, IN_MAIL)
def test_subjects_and_file_names_from_mail(
    subject: str,
    layers: list[tuple[str, str]],
    naming: bool,
    filename: str,
    file_layers: list[tuple[str, str]],
) -> None:
    prefix = encoded(REAL, "utf-8", "q") + " re:" if naming else "re:"
    raw = (
        f"From: {REAL}\r\nTo: {RELAY}\r\nSubject: {prefix} {nested(subject, layers)}\r\n"
        "X-Other: dropped\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="{nested(filename, file_layers)}"\r\n'
        "\r\nAAAA\r\n--b--\r\n"
    ).encode()
    out = rewrite(raw, PLAN)
    message = assert_relayed_headers(out, {"subject", "content-type"})
    expected = f"{RELAY} re: {subject}" if naming else f"re: {subject}"
    assert shown(message["Subject"]) == shown(expected)
    attachment = next(iter(message.iter_attachments()))
    assert_one_field_per_line(header_block(out.split(b"--b\r\n")[2]))
    # get_filename() unquotes what it decoded: a name '"x"' reads as 'x'.
    assert shown(attachment.get_filename() or "") == unquote(shown(filename))


def notice(**changes: object) -> Notice:
    base = Notice(
        reason=Outcome.REFUSED_EXPIRED, cause=None, locale="en", to_name="Ann",
        to_address=REAL, relay_domain="reply.example.com",
        noreply_address="no-reply@reply.example.com", platform_name="mailveil",
        booking_reference="GYG-1", original_subject="Pick-up", original_message_id=None,
        original_headers=b"Subject: Pick-up\r\n\r\n", final_recipient=RELAY,
        contact_form_url="https://example.com/contact", max_attachment_mb=10,
        message_id="<n-1@reply.example.com>", date=datetime(2030, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(TEXT, LAYERS, TEXT, LAYERS)
def test_notice_subjects_and_names(
    subject: str, layers: list[tuple[str, str]], name: str, name_layers: list[tuple[str, str]]
) -> None:
    raw = build_notice(notice(original_subject=header_text(nested(subject, layers)),
                              to_name=nested(name, name_layers)))  # fmt: skip
    assert_one_field_per_line(header_block(raw))
    message = reread(raw)
    names = [k.lower() for k in message]
    assert names.count("from") == 1 and names.count("to") == 1
    assert set(names) == {"from", "to", "subject", "date", "message-id", "auto-submitted",
                          "x-auto-response-suppress", "mime-version", "content-type"}  # fmt: skip
    assert shown(message["Subject"]) == shown(f"Undelivered: {subject}" if shown(subject)
                                              else "Undelivered: (no subject)")  # fmt: skip
    assert same_name(message["To"].addresses[0].display_name, name)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["Subject", "From", "To", "Content-Type", "Content-Disposition",
                     "Message-ID", "References", "Date", "X-Anything"]),
    st.one_of(st.text(max_size=200), st.builds(nested, TEXT, LAYERS),
              st.builds("{} <a@b.example>".format, st.builds(nested, TEXT, LAYERS)),
              st.builds('attachment; filename="{}"'.format, st.builds(nested, TEXT, LAYERS)),
              st.text("ab é\r\n:", min_size=990, max_size=1500)),
)  # fmt: skip
@example("From", "<")  # the stdlib's reader raises IndexError on ``From: <``
def test_fold_writes_one_field_or_nothing(name: str, value: str) -> None:
    """Whatever the value, hidden or raw control characters included: one field whose
    lines are all folds within the limit, and whose text holds no control character."""
    out = fold(name, value)
    if out:
        assert_one_field_per_line(out + b"\r\n")
        field = reread(out + b"\r\n")[name]
        assert field is not None
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", str(field))
