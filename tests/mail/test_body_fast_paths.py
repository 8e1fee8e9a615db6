"""The body fast paths give exactly what the slow way gives: an attachment's size counted
from its base64 (``mime.payload_size``) is the length of its decoded payload, and the
line-length pre-check of ``rewrite._has_long_line`` agrees with the regex alone."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.mail import rewrite
from mailveil.mail.mime import MAX_LINE, parse, payload, payload_size

_SOME = b"ABCab+/09=\r\n \t*-"
BASE64ISH = st.binary(max_size=40).map(lambda b: bytes(_SOME[x % len(_SOME)] for x in b))
WELL_FORMED = st.tuples(st.binary(max_size=400), st.booleans(), st.integers(0, 3),
                        st.integers(0, 2), st.integers(0, 400)).map(
    lambda t: _cut(base64.encodebytes(t[0]), *t[1:]))


def _cut(encoded: bytes, crlf: bool, pads: int, breaks: int, keep: int) -> bytes:
    """Encoded bytes, cut short anywhere and padded with 0-3 '=', as senders get it wrong."""
    body = encoded.rstrip(b"\n=")[:keep] + b"=" * pads + b"\n" * breaks
    return body.replace(b"\n", b"\r\n") if crlf else body


@settings(max_examples=800, deadline=None)
@given(st.one_of(WELL_FORMED, BASE64ISH))
def test_payload_size_is_the_decoded_length(body: bytes) -> None:
    entity = parse(b"Content-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                   + body)
    assert payload_size(entity) == len(payload(entity))


def test_payload_size_of_other_encodings() -> None:
    qp = parse(b"Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db=\r\nc")
    plain = parse(b"Content-Type: text/plain\r\n\r\n=3D")
    assert (payload_size(qp), payload_size(plain)) == (4, 3)


def _regex(data: bytes) -> bool:
    return bool(rewrite._LONG_LINE.search(data)
                or rewrite._LONG_LINE.match(b"\n" + data[: MAX_LINE + 2]))


LINES = st.lists(st.tuples(
    st.sampled_from([0, 1, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2, 2500]),
    st.sampled_from([b"a", b"\r", b"a\r"]), st.sampled_from([b"\n", b"\r\n"])), max_size=5)


@settings(max_examples=500, deadline=None)
@given(LINES, st.booleans())
def test_long_line_precheck_agrees_with_the_regex(lines: list[tuple[int, bytes, bytes]],
                                                  ended: bool) -> None:
    data = b"".join((fill * length)[:length] + end for length, fill, end in lines)
    data = data if ended else data.rstrip(b"\r\n")
    assert rewrite._has_long_line(data) == _regex(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, MAX_LINE + 3), st.integers(1, 40), st.integers(0, 40),
       st.integers(0, 2 * MAX_LINE), st.sampled_from([b"\n", b"\r\n"]))
def test_long_line_precheck_of_even_lines(width: int, count: int, at: int, other: int,
                                          end: bytes) -> None:
    """Lines as wide as the first (base64) but one, of any width, anywhere."""
    lines = [b"x" * width] * count
    lines[min(at, count - 1)] = b"y" * other
    data = end.join(lines)
    assert rewrite._has_long_line(data) == _regex(data)
