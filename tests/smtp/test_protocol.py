import string

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.smtp import replies
from mailveil.smtp.protocol import ConnectionLimit, RelaySMTP, content_fault


@pytest.mark.parametrize("raw", [
    b"",
    b"Subject: hi\r\n\r\nHello\r\n",
    b"Subject: hi\r\n\r\n" + b"A" * 998 + b"\r\n\xc3\xa9t\xc3\xa9\r\n",
])
def test_clean_data(raw: bytes) -> None:
    assert content_fault(raw) is None


@pytest.mark.parametrize(("raw", "reply"), [
    (b"Subject: hi\r\n\r\nhello\n.\nMAIL FROM:<x@y>\r\n", replies.S554_BARE_LINE_END),
    (b"Subject: hi\r\n\r\nhello\r.\rMAIL FROM:<x@y>\r\n", replies.S554_BARE_LINE_END),
    (b"Subject: hi\nBcc: x@y\r\n\r\nhello\r\n", replies.S554_BARE_LINE_END),
    (b"Subject: hi\r\n\r\nline\r\r\n", replies.S554_BARE_LINE_END),
    (b"Subject: a\x00b\r\n\r\nhello\r\n", replies.S554_NUL),
])
def test_bare_line_ends_and_nul_are_refused(raw: bytes, reply: str) -> None:
    assert content_fault(raw) == reply


ATOM = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-.\"@",
               min_size=1, max_size=12)
HOST = st.text(alphabet=string.ascii_letters + string.digits + "-.[]", min_size=1, max_size=12)
REST = st.text(alphabet=string.ascii_letters + string.digits + " \t=()<>-", max_size=16)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["", " ", "\t", "  "]), ATOM, HOST, REST)
def test_plain_paths_read_as_aiosmtpd_reads_them(lead: str, local: str, host: str,
                                                 rest: str) -> None:
    assert_read_as_aiosmtpd_reads(f"{lead}<{local}@{host}>{rest}")


@pytest.mark.parametrize("arg", ["<ann@example.org>", "<ann.lee+x@mx.example.org> SIZE=9",
                                 "<a@b>(comment) SIZE=1", "<a@b> (c)", "<a..b@c>",
                                 "<ann@example.org>\tBODY=8BITMIME  "])
def test_plain_path_examples(arg: str) -> None:
    assert_read_as_aiosmtpd_reads(arg)


def test_a_path_that_breaks_the_stdlib_parser_is_a_syntax_error() -> None:
    session = RelaySMTP(object(), connections=ConnectionLimit(1), hostname="mx.example")
    with pytest.raises(AttributeError):
        SMTP._getaddr(session, "<0@[>")
    assert session._getaddr("<0@[>") == (None, None)


def assert_read_as_aiosmtpd_reads(arg: str) -> None:
    """Same address and parameters; where aiosmtpd's parser raises or its address holds a
    control character, a syntax error."""
    session = RelaySMTP(object(), connections=ConnectionLimit(1), hostname="mx.example")
    try:
        expected = SMTP._getaddr(session, arg)
    except Exception:
        expected = (None, None)
    if expected[0] and any(ord(c) < 32 or ord(c) == 127 for c in expected[0]):
        expected = (None, None)
    assert session._getaddr(arg) == expected
