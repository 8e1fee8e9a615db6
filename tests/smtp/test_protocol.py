import pytest

from mailveil.smtp import replies
from mailveil.smtp.protocol import content_fault


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
