import string

import pytest
from aiosmtpd.smtp import SMTP, Session
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.smtp.protocol import (
    Client,
    ConnectionLimit,
    RelayEnvelope,
    RelaySMTP,
    client_of,
    parse_xforward,
)

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


def test_xforward_as_postfix_sends_it() -> None:
    assert parse_xforward("NAME=mx.customer.example ADDR=192.0.2.7 PROTO=ESMTP "
                          "HELO=mx.customer.example") == {
        "NAME": "mx.customer.example", "ADDR": "192.0.2.7", "PROTO": "ESMTP",
        "HELO": "mx.customer.example"}
    assert parse_xforward("ADDR=IPV6:2001:DB8::7 NAME=[UNAVAILABLE]") == {"ADDR": "2001:db8::7"}
    assert parse_xforward("HELO=a+2Bb+3Dc") == {"HELO": "a+b=c"}  # xtext


@pytest.mark.parametrize("arg", ["", "ADDR", "ADDR=not-an-address", "COLOUR=blue",
                                 "HELO=a+0Db"])
def test_xforward_that_cannot_be_read_is_a_syntax_error(arg: str) -> None:
    assert parse_xforward(arg) is None


def test_the_client_is_the_forwarded_one_with_its_own_helo_or_none() -> None:
    """A client that never said HELO to Postfix has no HELO: Postfix's own name is not its."""
    session = Session(loop=None)  # type: ignore[arg-type]
    # aiosmtpd annotates peer as a str; it holds the transport's peername, a tuple.
    session.peer = ("127.0.0.1", 40000)  # type: ignore[assignment]
    session.host_name = "postfix.relay.example"
    envelope = RelayEnvelope()
    assert client_of(session, envelope) == Client("127.0.0.1", "postfix.relay.example", False)
    envelope.client_address = "192.0.2.7"
    assert client_of(session, envelope) == Client("192.0.2.7", "", True)
    envelope.client_helo = "mx.customer.example"
    assert client_of(session, envelope) == Client("192.0.2.7", "mx.customer.example", True)
