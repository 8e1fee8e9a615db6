"""Which charsets are read as text (mailveil/mail/charsets.py), and what that means for a
relayed part: a part or an encoded word in any other charset goes out as it came."""

from __future__ import annotations

import base64
import email
from dataclasses import replace
from email import policy

import pytest

from bench.expensive import idna_part, not_base64, punycode_part
from mailveil.mail import charsets
from mailveil.mail.mime import body_bytes, header_block, parse, payload
from mailveil.mail.rewrite import RewritePlan, rewrite

SENDER = "ann.lee@customer-mail.example"
SENDER_RELAY = "customer-12ab3456cd78@reply.example.com"
PLAN = RewritePlan(
    from_name="Ann via Tourly", from_address=SENDER_RELAY, to_name="Sunny Tours",
    to_address="bookings@sunny-tours.example", message_id="<m-1@reply.example.com>",
    in_reply_to=(), references=(), replacements={SENDER: SENDER_RELAY},
    banner_text="Sent through Tourly", banner_html="<p>Sent through Tourly</p>",
)
QUIET = replace(PLAN, banner_text=None, banner_html=None)


@pytest.mark.parametrize(("label", "codec"), [
    ("utf-8", "utf-8"), ("UTF8", "utf-8"), ("unicode-1-1-utf-8", "utf-8"),
    ("us-ascii", "ascii"), ("iso-8859-1", "iso8859-1"), ("windows-1252", "cp1252"),
    ("iso-8859-8-i", "iso8859-8"), ("windows-874", "cp874"), ("x-mac-cyrillic", "mac-cyrillic"),
    ("macintosh", "mac-roman"), ("koi8-u", "koi8-u"), ("shift_jis", "shift_jis"),
    ("x-sjis", "shift_jis"), ("windows-31j", "cp932"), ("iso-2022-jp", "iso2022_jp"),
    ("euc-kr", "euc_kr"), ("ks_c_5601-1987", "euc_kr"), ("gb2312", "gb2312"),
    ("gb18030", "gb18030"), ("big5", "big5"), ("utf-16le", "utf-16-le"), ("utf-7", "utf-7"),
    (" UTF-8 ", "utf-8"),
])
def test_mail_charsets_are_read(label: str, codec: str) -> None:
    assert charsets.codec(label) == codec


@pytest.mark.parametrize("label", [
    "punycode", "idna", "rot13", "rot_13", "utf-32", "hz-gb-2312", "iso-2022-kr", "base64",
    "hex", "zlib", "x-unknown", "unknown-8bit", "", "utf-8\x00", "u" * 300, "x-user-defined",
])
def test_other_charsets_are_not(label: str) -> None:
    assert charsets.codec(label) is None


def test_every_codec_read_is_a_text_encoding() -> None:
    """None of them is a bytes-to-bytes transform or Python's own invention."""
    for name in charsets.MAIL_CODECS:
        assert charsets.codec(name) == name
        assert "é€".encode(name, "replace").decode(name)


# --- encoded words -----------------------------------------------------------------------


def test_adjacent_words_are_joined_and_a_character_may_span_them() -> None:
    assert charsets.decode_words("=?utf-8?q?caf=C3?=  \r\n =?utf-8?q?=A9?= ok") == "café ok"
    assert charsets.decode_words("a =?utf-8?b?w6k=?= b =?iso-8859-1?q?=E9?=") == "a é b é"


def test_a_refused_charset_reads_as_ascii_without_running_its_codec() -> None:
    """The stdlib shows an unknown charset's bytes as ASCII: so does the relay, and a long
    punycode word costs no more than its length (its codec is quadratic)."""
    assert charsets.decode_words("=?punycode?q?ann=40x.example?=") == "ann@x.example"
    word = base64.b64encode(b"a" * 600_000).decode()
    assert charsets.decode_words(f"=?punycode?b?{word}?=") == "a" * 600_000
    assert charsets.decode_words("=?idna?q?x?= =?rot13?q?y?=") == "xy"


def test_a_word_with_broken_base64_is_kept_as_written() -> None:
    assert charsets.decode_words("x =?utf-8?b?a?= y") == "x =?utf-8?b?a?= y"


def test_a_refused_charset_in_a_parameter_does_not_hide_the_others() -> None:
    """The stdlib's parser raises on ``filename*=idna''…``: every parameter was lost, and a
    UTF-16 part was then read as ASCII, its addresses unseen."""
    text = "Hello ann.lee@customer-mail.example".encode("utf-16")
    raw = (b"Content-Type: text/plain; charset=utf-16; filename*=idna''x.txt\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(text))
    assert parse(raw).param("charset") == "utf-16"
    assert payload(parse(rewrite(raw, QUIET))).decode("utf-16") == f"Hello {SENDER_RELAY}"


# --- parts -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [punycode_part, idna_part])
def test_a_part_in_a_refused_charset_goes_out_as_it_came(shape: object) -> None:
    """No banner (it cannot be written in that charset), no decoding, no error."""
    raw = shape("bob@elsewhere.example", "relay@reply.example.com", 20_000)  # type: ignore[operator]
    out = rewrite(raw, PLAN)
    assert body_bytes(parse(out)) == body_bytes(parse(raw))


def test_an_address_in_ascii_in_a_refused_charset_is_still_replaced() -> None:
    data = f"aaa {SENDER} bbb".encode()
    raw = (b"Content-Type: text/plain; charset=punycode\r\nContent-Transfer-Encoding: base64"
           b"\r\n\r\n" + base64.encodebytes(data))
    out = parse(rewrite(raw, QUIET))
    assert payload(out) == f"aaa {SENDER_RELAY} bbb".encode()
    assert out.param("charset") == "punycode"


def test_a_part_that_is_not_its_base64_goes_out_byte_for_byte() -> None:
    """It went out as the banner alone: the lenient decoder made garbage of the text."""
    raw = not_base64("bob@elsewhere.example", "relay@reply.example.com", 2_000)
    out = rewrite(raw, PLAN)
    assert body_bytes(parse(out)) == body_bytes(parse(raw))


def test_broken_base64_that_a_lenient_reader_would_show_an_address_in_is_scrubbed() -> None:
    encoded = base64.b64encode(f"write to {SENDER} now".encode()).decode()
    raw = ("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           f"{encoded[:12]}*{encoded[12:]}\r\n").encode()
    out = rewrite(raw, QUIET)
    shown = email.message_from_bytes(out, policy=policy.default).get_payload(decode=True)
    assert shown == f"write to {SENDER_RELAY} now".encode()


def test_broken_utf16_is_read_with_replacement_characters() -> None:
    data = f"write to {SENDER}".encode("utf-16") + b"\xff"
    raw = (b"Content-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64"
           b"\r\n\r\n" + base64.encodebytes(data))
    out = payload(parse(rewrite(raw, QUIET)))
    assert out.decode("utf-16") == f"write to {SENDER_RELAY}\ufffd"


def test_a_subject_in_a_refused_charset_is_kept_as_written() -> None:
    words = "\r\n ".join(f"=?punycode?b?{base64.b64encode(b'a' * 45).decode()}?="
                          for _ in range(100))
    raw = f"Subject: {words}\r\n\r\nx".encode()
    assert header_block(raw) in rewrite(raw, PLAN)


def test_an_address_nested_in_encoded_words_is_replaced_at_every_depth() -> None:
    inner = f"=?utf-8?q?{SENDER.replace('@', '=40')}?="
    middle = "=?utf-8?b?" + base64.b64encode(inner.encode()).decode() + "?="
    outer = "=?iso-8859-1?b?" + base64.b64encode(middle.encode()).decode() + "?="
    out = rewrite(f"Subject: see {outer}\r\n\r\nx".encode(), QUIET)
    text = header_block(out).decode()
    for _ in range(4):
        text = charsets.decode_words(text)
        assert SENDER not in text.lower()
    assert SENDER_RELAY in text
