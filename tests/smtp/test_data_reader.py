"""Message data as RelaySMTP reads it: in chunks, with the outcome of the rule for any input.

:class:`DataReader` is checked against a line-by-line model of the rule (only
``<CRLF>.<CRLF>`` ends the data, a bare LF or CR ends a line) for any data cut anywhere; the
protocol over real sockets, with the network splitting the data.
"""

from __future__ import annotations

import asyncio
import re
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
TIMEOUT = 1.0  # idle timeout of the test server, seconds
QUEUED = b"250 2.0.0 stored\r\n"
MAIL = b"MAIL FROM:<ann@customer.example>\r\nRCPT TO:<bob@reply.example.com>\r\nDATA\r\n"
# The ways a line may end, CRLF first: a CR right before an LF is never a bare one.
LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")
# Every smuggled end of data there is: a dot line with a bare LF or CR before or after it.
FAKE_ENDS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r",
             b"\r\n.\r"]


def line(reply: str) -> bytes:
    return reply.encode() + b"\r\n"


def model(stream: bytes, size_limit: int) -> tuple[bytes | str, bytes] | None:
    """The rule, one line at a time: what the data of ``stream`` is (the message or the
    refusal) and the bytes after its end; ``None`` while the end has not arrived."""
    kept: list[bytes] = []
    size = 0
    after_crlf = True  # the DATA command's CRLF
    for found in LINE.finditer(stream):
        text, ending = found[1], found[2]
        if text == b"." and ending == b"\r\n" and after_crlf:
            message = b"".join(kept)
            refusal = (replies.S552_TOO_BIG if size > size_limit
                       else replies.S554_NUL if b"\0" in message else None)
            return refusal or message, stream[found.end():]
        size += len(text) + 2  # counted as if it ended with CRLF, before unstuffing
        kept.append((text[1:] if text[:1] == b"." and text != b"." else text) + b"\r\n")
        after_crlf = ending == b"\r\n"
    return None


def read(pieces: list[bytes], size_limit: int = SIZE) -> tuple[bytes | str, bytes] | None:
    """:class:`DataReader` fed ``pieces`` as the protocol feeds it, up to the end marker: the
    message or the refusal, and all that follows the end; ``None`` if there was no end."""
    reader = DataReader(size_limit=size_limit)
    for n, piece in enumerate(pieces):
        if reader.feed(piece):
            return reader.refusal or reader.message(), reader.after + b"".join(pieces[n + 1:])
    return None


def data_of(size: int) -> bytes:
    """Lines of message data, ``size`` bytes with their CRLFs (``size`` >= 100)."""
    return b"b" * (size % 100 + 98) + b"\r\n" + (b"a" * 98 + b"\r\n") * (size // 100 - 1)


# Few distinct pieces, so that line ends, dots and end markers (real and fake) are frequent.
STREAMS = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"a", b"x" * 7, b"\0",
                                    b"\r\n..", b"\r\n.\r\n", b"QUIT\r\n", *FAKE_ENDS]),
                   max_size=60).map(b"".join)


@settings(max_examples=3000)
@given(STREAMS, st.lists(st.integers(min_value=1, max_value=400), max_size=8),
       st.integers(min_value=1, max_value=80))
def test_reader_follows_the_rule_however_the_data_is_cut(
        stream: bytes, cuts: list[int], size_limit: int) -> None:
    bounds = [0, *sorted({c for c in cuts if c < len(stream)}), len(stream)]
    pieces = [stream[a:b] for a, b in pairwise(bounds) if b > a]
    assert read(pieces, size_limit) == model(stream, size_limit)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_end_marker_split_at_every_position(size: int) -> None:
    data = b"..a\r\n.\r\r\n\r\n.b\r\n.\r\nNOOP\r\n"
    for at in range(1, len(data)):
        pieces = [data[:at]] + [data[n:n + size] for n in range(at, len(data), size)]
        assert read(pieces) == (b".a\r\n.\r\n\r\n\r\nb\r\n", b"NOOP\r\n"), at


@pytest.mark.parametrize("fake_end", FAKE_ENDS)
def test_a_smuggled_end_is_a_line_of_text(fake_end: bytes) -> None:
    """The lone dot stays text (RFC 5321 4.5.2 unstuffs only a dot with more after it;
    Postfix 3.9 drops the line), and what follows is data."""
    smuggled = MAIL + b"Subject: smuggled\r\n\r\n..hi\r\n"
    text = fake_end.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert read([b"Hello" + fake_end + smuggled + b".\r\nNOOP\r\n"]) == (
        b"Hello" + text + MAIL + b"Subject: smuggled\r\n\r\n.hi\r\n", b"NOOP\r\n")


def test_bare_line_ends_are_crlf_and_stuffed_dots_go() -> None:
    """What ``smtplib.sendmail(msg.as_bytes())`` sends: LF line ends, a dot doubled after an
    LF as after a CRLF, and CRLF . CRLF after a final CRLF of its own."""
    assert read([b"To: b\n\n..dots\n...\n.\rx\n\r\n.\r\n"]) == (
        b"To: b\r\n\r\n.dots\r\n..\r\n.\r\nx\r\n\r\n", b"")
    assert read([b"..\n\r\n.\r\n"]) == (b".\r\n\r\n", b"")


def test_lines_of_any_length_up_to_the_size_limit() -> None:
    one_line = b"y" * (SIZE - 2) + b"\r\n"
    assert read([one_line, b".\r\n"]) == (one_line, b"")
    assert read([b"y" + one_line + b".\r\n"]) == (replies.S552_TOO_BIG, b"")
    # Counted with CRLF line ends and before unstuffing.
    assert read([b"..\r\n" + data_of(SIZE - 4) + b".\r\n"]) == (
        b".\r\n" + data_of(SIZE - 4), b"")
    assert read([b"..\r\n" + data_of(SIZE - 3) + b".\r\n"]) == (replies.S552_TOO_BIG, b"")
    bare = (b"a" * 98 + b"\n") * (SIZE // 100)  # SIZE bytes once its line ends are CRLF
    assert read([bare + b"\r\n.\r\n"]) == (replies.S552_TOO_BIG, b"")
    assert read([bare[99:] + b"\r\n.\r\n"]) == (
        bare[99:].replace(b"\n", b"\r\n") + b"\r\n", b"")
    huge = b"y" * (SIZE * 3)
    assert read([huge, data_of(SIZE * 2), b"\0\r\n.\r\n"]) == (replies.S552_TOO_BIG, b"")
    assert read([b"\0" + huge[:SIZE - 100] + b"\r\n.\r\n"]) == (replies.S554_NUL, b"")


def test_refused_data_is_not_kept() -> None:
    reader = DataReader(size_limit=SIZE)
    chunks = (data_of(300_000), b"z" * 300_000) * 25  # lines, and one endless line
    tracemalloc.start()
    try:
        for chunk in chunks:
            assert not reader.feed(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.refusal == replies.S552_TOO_BIG
    assert peak < 3 * 300_000, peak


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
    one_line = b"x" * (SIZE - 2) + b"\r\n"
    for data, reply in ((data_of(SIZE), QUEUED),
                        (data_of(SIZE + 1), line(replies.S552_TOO_BIG)),
                        (data_of(SIZE * 30), line(replies.S552_TOO_BIG)),
                        (one_line, QUEUED),
                        (b"x" + one_line, line(replies.S552_TOO_BIG)),
                        (b"y" * (SIZE * 30) + b"\r\n", line(replies.S552_TOO_BIG)),
                        (b"Subject: a\0b\r\n", line(replies.S554_NUL)),
                        (b"Subject: bare LF\n\nbody\r\n", QUEUED)):
        client.start_data()
        client.send(data + b".\r\nNOOP\r\n")
        assert client.replies(2) == [reply, b"250 OK\r\n"]
    assert server.handler.messages == [data_of(SIZE), one_line,
                                       b"Subject: bare LF\r\n\r\nbody\r\n"]


def test_commands_right_after_the_end_marker(server: Server, client: Client) -> None:
    client.start_data()
    client.send(MESSAGE + b".\r\n" + MAIL)
    assert client.replies(4) == [QUEUED, b"250 OK\r\n", b"250 OK\r\n",
                                 b"354 End data with <CR><LF>.<CR><LF>\r\n"]
    client.send(b".\r\nNOOP\r\nQUIT\r\n")
    assert client.replies(4) == [QUEUED, b"250 OK\r\n", b"221 Bye\r\n", b""]
    assert server.handler.messages == [RECEIVED, b""]


@pytest.mark.parametrize("fake_end", FAKE_ENDS)
def test_only_crlf_dot_crlf_ends_data(server: Server, client: Client, fake_end: bytes) -> None:
    """The commands behind a fake end are message data, never run: one message, one reply,
    and the session stays in step."""
    client.start_data()
    client.send(b"Hello" + fake_end + MAIL + b"smuggled\r\n.\r\nNOOP\r\n")
    assert client.replies(2) == [QUEUED, b"250 OK\r\n"]
    [message] = server.handler.messages
    assert message.startswith(b"Hello\r\n") and message.endswith(MAIL + b"smuggled\r\n")
    assert message.count(b"\r") == message.count(b"\n") == message.count(b"\r\n")


def test_data_refused_before_354(server: Server, client: Client) -> None:
    client.send(b"DATA\r\n")
    assert client.reply() == line(replies.S554_NO_VALID_RCPT)
    client.send(MAIL.replace(b"DATA", b"DATA now"))
    assert client.replies(3) == [b"250 OK\r\n", b"250 OK\r\n", b"501 Syntax: DATA\r\n"]


def test_a_client_stalled_mid_data_is_cut(server: Server, client: Client) -> None:
    client.start_data()
    start = time.monotonic()  # before the last byte: the server's timer starts after it
    client.send_slowly(b"half a mess", 1)
    assert client.replies(2) == [line(replies.S421_TIMEOUT), b""]
    assert time.monotonic() - start > TIMEOUT - 0.05  # never cut early; late only if hung
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

    def shut_down_all() -> None:
        for session in server.connections.sessions:
            session.shut_down()

    server.call(shut_down_all)
    client.send(b".\r\nNOOP\r\n")
    assert client.replies(3) == [QUEUED, line(replies.S421_SHUTTING_DOWN), b""]
    assert server.handler.messages == [RECEIVED]


def test_a_multiline_reply_is_one_write(server: Server, client: Client) -> None:
    writes: list[bytes] = []

    def count_writes() -> None:
        [session] = server.connections.sessions
        writer = session._writer
        original = writer.write

        def write(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            original(data)

        writer.write = write  # type: ignore[method-assign]

    server.call(count_writes)
    client.send(b"EHLO again.example\r\n")
    reply = client.reply()
    assert reply.startswith(b"250-mx.example\r\n") and reply.endswith(b"\r\n250 HELP\r\n")
    assert writes == [reply]
