"""Message data as RelaySMTP reads it: in chunks, with aiosmtpd's outcome for every input.

:class:`DataReader` is checked against a line-by-line model of aiosmtpd's DATA loop for any
data cut anywhere; the protocol over real sockets, with the network splitting the data.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.smtp import replies
from mailveil.smtp.protocol import ConnectionLimit, DataReader, drain, smtp_factory
from tests.support.raw_smtp import RawSmtp

SIZE = 100_000  # data_size_limit of the test server
LINE = 1001  # aiosmtpd's line_length_limit, CRLF included
TIMEOUT = 1.0  # idle timeout of the test server, seconds
QUEUED = b"250 2.0.0 stored\r\n"
MAIL = b"MAIL FROM:<ann@customer.example>\r\nRCPT TO:<bob@reply.example.com>\r\nDATA\r\n"


def line(reply: str) -> bytes:
    return reply.encode() + b"\r\n"


def aiosmtpd_model(stream: bytes, line_limit: int,
                   size_limit: int) -> tuple[bytes | str, bytes] | None:
    """What aiosmtpd 1.4's DATA loop makes of ``stream``, one line at a time: the message or
    the refusal, and the bytes after the end; ``None`` while the end has not arrived."""
    kept: list[bytes] = []
    refusal: str | None = None
    size = start = 0
    while (crlf := stream.find(b"\r\n", start)) >= 0:
        text, start = stream[start:crlf + 2], crlf + 2
        if text == b".\r\n":
            return refusal or b"".join(kept), stream[start:]
        size += len(text)
        if refusal is None:
            # Its stream reader cannot take a line over line_limit + 2 bytes (CRLF included):
            # refused before it is counted. A shorter one is counted, then measured.
            if len(text) > line_limit + 2:
                refusal = replies.S554_LINE_TOO_LONG
            elif size > size_limit:
                refusal = replies.S552_TOO_BIG
            elif len(text) > line_limit:
                refusal = replies.S554_LINE_TOO_LONG
        kept.append(text[1:] if text.startswith(b".") else text)
    return None


def read(pieces: list[bytes], line_limit: int = LINE,
         size_limit: int = SIZE) -> tuple[bytes | str, bytes] | None:
    """:class:`DataReader` fed ``pieces`` as the protocol feeds it, up to the end marker: the
    message or the refusal, and all that follows the end; ``None`` if there was no end."""
    reader = DataReader(line_limit=line_limit, size_limit=size_limit)
    for n, piece in enumerate(pieces):
        if reader.feed(piece):
            return reader.refusal or reader.message(), reader.after + b"".join(pieces[n + 1:])
    return None


def data_of(size: int) -> bytes:
    """Lines of message data, ``size`` bytes with their CRLFs (``size`` >= 100)."""
    return b"b" * (size % 100 + 98) + b"\r\n" + (b"a" * 98 + b"\r\n") * (size // 100 - 1)


# Few distinct pieces, so that line ends, dots and end markers (real and fake) are frequent.
STREAMS = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"a", b"x" * 7, b"\r\n..",
                                    b"\r\n.\r\n", b"QUIT\r\n"]), max_size=60).map(b"".join)


@settings(max_examples=2000)
@given(STREAMS, st.lists(st.integers(min_value=1, max_value=400), max_size=8),
       st.integers(min_value=3, max_value=20), st.integers(min_value=1, max_value=60))
def test_reader_agrees_with_aiosmtpd_however_the_data_is_cut(
        stream: bytes, cuts: list[int], line_limit: int, size_limit: int) -> None:
    bounds = [0, *sorted({c for c in cuts if c < len(stream)}), len(stream)]
    pieces = [stream[a:b] for a, b in pairwise(bounds) if b > a]
    assert read(pieces, line_limit, size_limit) == aiosmtpd_model(stream, line_limit, size_limit)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_end_marker_split_at_every_position(size: int) -> None:
    data = b"..a\r\n.\r\r\n\r\n.b\r\n.\r\nNOOP\r\n"
    for at in range(1, len(data)):
        pieces = [data[:at]] + [data[n:n + size] for n in range(at, len(data), size)]
        assert read(pieces) == (b".a\r\n\r\r\n\r\nb\r\n", b"NOOP\r\n"), at


def test_limits_in_the_order_they_are_broken() -> None:
    longest = b"x" * (LINE - 2) + b"\r\n"
    assert read([longest + b".\r\n"]) == (longest, b"")
    assert read([b"x" + longest + b".\r\n"]) == (replies.S554_LINE_TOO_LONG, b"")
    # Counted before unstuffing, as aiosmtpd does.
    assert read([b"." + longest + b".\r\n"]) == (replies.S554_LINE_TOO_LONG, b"")
    assert read([b"..\r\n" + data_of(SIZE - 4) + b".\r\n"]) == (
        b".\r\n" + data_of(SIZE - 4), b"")
    assert read([data_of(SIZE + 1) + b".\r\n"]) == (replies.S552_TOO_BIG, b"")
    for too_long, refusal in ((LINE + 2, replies.S552_TOO_BIG),
                              (LINE + 3, replies.S554_LINE_TOO_LONG)):  # and over the size
        over = data_of(SIZE - 100) + b"z" * (too_long - 2) + b"\r\n"
        assert read([over + b".\r\n"]) == (refusal, b"")
    huge = b"y" * (SIZE * 3) + b"\r\n"
    assert read([huge, data_of(SIZE * 2), b".\r\n"]) == (replies.S554_LINE_TOO_LONG, b"")
    assert read([data_of(SIZE * 2), huge, b".\r\n"]) == (replies.S552_TOO_BIG, b"")


def test_refused_data_is_not_kept() -> None:
    reader = DataReader(line_limit=LINE, size_limit=SIZE)
    chunk = data_of(300_000)
    tracemalloc.start()
    try:
        for _ in range(50):
            assert not reader.feed(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.refusal == replies.S552_TOO_BIG
    assert peak < 3 * len(chunk), peak


@dataclass
class Recorder:
    """The DATA hook: keeps what each accepted message carried."""

    messages: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        assert envelope.content == envelope.original_content
        self.messages.append(envelope.original_content)
        return "250 2.0.0 stored"


@dataclass
class Server:
    port: int
    handler: Recorder
    connections: ConnectionLimit
    loop: asyncio.AbstractEventLoop

    def call(self, function: Callable[[], object]) -> None:
        """Run ``function`` in the server's event loop, and wait for it."""
        async def run() -> None:
            function()

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)


@pytest.fixture
def server() -> Iterator[Server]:
    """RelaySMTP on a loopback port, its event loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    handler, connections = Recorder(), ConnectionLimit(10)
    listening = loop.run_until_complete(loop.create_server(
        lambda: smtp_factory(handler, hostname="mx.example", data_size_limit=SIZE,
                             timeout=TIMEOUT, connections=connections),
        "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = Server(listening.sockets[0].getsockname()[1], handler, connections, loop)

    async def stop() -> None:
        listening.close()
        await drain(connections, grace=0)
        sessions = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.gather(*sessions, return_exceptions=True)

    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class Client(RawSmtp):
    """A raw client past EHLO."""

    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=10)
        assert self.greeting.startswith(b"220 ")
        self.send(b"EHLO client.example\r\n")
        assert self.reply().startswith(b"250-")

    def send_slowly(self, data: bytes, size: int) -> None:
        """``size`` bytes at a time, each read by the server before the next arrives."""
        for n in range(0, len(data), size):
            self.send(data[n:n + size])
            time.sleep(0.002)

    def start_data(self) -> None:
        self.send(MAIL)
        assert self.replies(3) == [b"250 OK\r\n", b"250 OK\r\n",
                                   b"354 End data with <CR><LF>.<CR><LF>\r\n"]


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client(server.port)
    try:
        yield c
    finally:
        c.close()


MESSAGE = b"Subject: hi\r\n\r\n..first\r\nsecond\r\n"
RECEIVED = b"Subject: hi\r\n\r\n.first\r\nsecond\r\n"


@pytest.mark.parametrize("size", [1, 2])
def test_data_in_tiny_writes(server: Server, client: Client, size: int) -> None:
    """Every byte of the end marker (and of the rest) a read of its own, or two at a time
    at both alignments."""
    for shift in (b"", b"X: 12\r\n"):  # an odd length: the other alignment
        client.start_data()
        client.send_slowly(shift + MESSAGE + b".\r\n", size)
        assert client.reply() == QUEUED
    assert server.handler.messages == [RECEIVED, b"X: 12\r\n" + RECEIVED]


def test_end_marker_split_between_two_writes(server: Server, client: Client) -> None:
    data = MESSAGE + b".\r\nNOOP\r\n"
    cuts = range(len(MESSAGE) - 4, len(data))  # from before the marker's CRLF to the NOOP
    for at in cuts:
        client.start_data()
        client.send(data[:at])
        time.sleep(0.01)
        client.send(data[at:])
        assert client.replies(2) == [QUEUED, b"250 OK\r\n"], at
    assert server.handler.messages == [RECEIVED] * len(cuts)


@pytest.mark.parametrize(("data", "received"), [
    (b"", b""),
    (b"\r\n", b"\r\n"),
    (b"..\r\n", b".\r\n"),
    (b"...\r\n", b"..\r\n"),
    (b"..lead\r\nmid\r\n..\r\n.x\r\n...dots\r\nend\r\n",
     b".lead\r\nmid\r\n.\r\nx\r\n..dots\r\nend\r\n"),
])
def test_empty_and_dot_stuffed_data(server: Server, client: Client, data: bytes,
                                    received: bytes) -> None:
    client.start_data()
    client.send(data + b".\r\n")
    assert client.reply() == QUEUED
    assert server.handler.messages == [received]


def test_limits_and_the_session_goes_on(server: Server, client: Client) -> None:
    longest = b"x" * (LINE - 2) + b"\r\n"
    for data, reply in ((data_of(SIZE), QUEUED),
                        (data_of(SIZE + 1), line(replies.S552_TOO_BIG)),
                        (data_of(SIZE * 30), line(replies.S552_TOO_BIG)),
                        (longest, QUEUED),
                        (b"x" + longest, line(replies.S554_LINE_TOO_LONG)),
                        (b"y" * (SIZE * 30) + b"\r\n", line(replies.S554_LINE_TOO_LONG))):
        client.start_data()
        client.send(data + b".\r\nNOOP\r\n")
        assert client.replies(2) == [reply, b"250 OK\r\n"]
    assert server.handler.messages == [data_of(SIZE), longest]


def test_commands_right_after_the_end_marker(server: Server, client: Client) -> None:
    client.start_data()
    client.send(MESSAGE + b".\r\n" + MAIL)
    assert client.replies(4) == [QUEUED, b"250 OK\r\n", b"250 OK\r\n",
                                 b"354 End data with <CR><LF>.<CR><LF>\r\n"]
    client.send(b".\r\nNOOP\r\nQUIT\r\n")
    assert client.replies(4) == [QUEUED, b"250 OK\r\n", b"221 Bye\r\n", b""]
    assert server.handler.messages == [RECEIVED, b""]


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n",
                                      b"\n.\r", b"\r\n.\r"])
def test_only_crlf_dot_crlf_ends_data(server: Server, client: Client, fake_end: bytes) -> None:
    """The commands behind a fake end are message data: never run, and the message with its
    bare CR or LF is refused; the session stays in step."""
    client.start_data()
    client.send(b"Hello" + fake_end + MAIL + b"smuggled\r\n.\r\nNOOP\r\n")
    assert client.replies(2) == [line(replies.S554_BARE_LINE_END), b"250 OK\r\n"]
    assert server.handler.messages == []


def test_data_refused_before_354(server: Server, client: Client) -> None:
    client.send(b"DATA\r\n")
    assert client.reply() == line(replies.S554_NO_VALID_RCPT)
    client.send(MAIL.replace(b"DATA", b"DATA now"))
    assert client.replies(3) == [b"250 OK\r\n", b"250 OK\r\n", b"501 Syntax: DATA\r\n"]


def test_a_client_stalled_mid_data_is_cut(server: Server, client: Client) -> None:
    client.start_data()
    client.send_slowly(b"half a mess", 1)
    start = time.monotonic()
    assert client.replies(2) == [line(replies.S421_TIMEOUT), b""]
    assert TIMEOUT - 0.3 < time.monotonic() - start < TIMEOUT + 2
    assert server.handler.messages == []


def test_a_slow_upload_is_not_cut(server: Server, client: Client) -> None:
    client.start_data()
    for piece in (MESSAGE + b".\r\n").splitlines(keepends=True):
        client.send(piece)
        time.sleep(TIMEOUT / 2.5)
    assert client.reply() == QUEUED


def test_a_client_gone_mid_data_ends_the_session(server: Server, client: Client) -> None:
    client.start_data()
    client.send(b"half a mess")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.reply() == b""
    deadline = time.monotonic() + 2
    while server.connections.active:
        assert time.monotonic() < deadline, "the session was not closed"
        time.sleep(0.01)
    assert server.handler.messages == []


def test_shutting_down_mid_data_answers_the_message_first(server: Server,
                                                          client: Client) -> None:
    client.start_data()
    client.send(MESSAGE)
    server.call(lambda: [session.shut_down() for session in server.connections.sessions])
    client.send(b".\r\nNOOP\r\n")
    assert client.replies(3) == [QUEUED, line(replies.S421_SHUTTING_DOWN), b""]
    assert server.handler.messages == [RECEIVED]


def test_a_multiline_reply_is_one_write(server: Server, client: Client) -> None:
    writes: list[bytes] = []

    def count_writes() -> None:
        [session] = server.connections.sessions
        writer = session._writer
        original = writer.write
        writer.write = lambda data: (writes.append(data), original(data))[1]  # type: ignore[method-assign]

    server.call(count_writes)
    client.send(b"EHLO again.example\r\n")
    reply = client.reply()
    assert reply.startswith(b"250-mx.example\r\n") and reply.endswith(b"\r\n250 HELP\r\n")
    assert writes == [reply]
