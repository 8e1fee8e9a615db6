"""The SMTP dialogue: aiosmtpd's, hardened for a public MX.

aiosmtpd answers commands strictly in order and caps their length. This subclass reads
message data itself (:class:`DataReader`): aiosmtpd's DATA loop runs Python for every line,
tens of thousands of times for a large message, and refuses lines over 1,000 bytes that real
mail programs send, where this one takes what the socket delivered in chunks of up to
256 KiB and does the per-byte work (finding the end, the size limit, dot-unstuffing) with
:class:`bytes` methods. Only ``<CRLF>.<CRLF>`` ends the data (no SMTP smuggling), a bare LF
or CR inside it is a line end, and commands pipelined right behind it are run next. The
subclass also adds what hostile clients need:

* an idle timeout that says ``421 4.4.2`` before hanging up, counted only while we wait
  for the client, so a slow but moving upload or a slow commit of ours is never cut;
* a cap on simultaneous sessions (``421 4.7.0``), and the limits per client address of
  :mod:`mailveil.smtp.anvil`: sessions at once, new sessions, and a deadline per session
  that message data extends at the minimum data rate;
* refusal of data sent before our 354 (the pipelining form of smuggling);
* refusal of messages with a NUL, and of control characters in addresses and host names;
* a ``421`` always closes the connection, whoever produced it;
* enhanced status codes on aiosmtpd's own replies to these cases;
* XFORWARD (Postfix's XFORWARD_README) from the trusted peers only (a Postfix in front):
  the address and HELO name of the client it received the mail from, for the limits and
  SPF, kept on the transaction's envelope (:func:`client_of`).

Policy (who may write to whom, how many recipients) stays in :mod:`mailveil.smtp.listener`.
The overrides reach into aiosmtpd 1.4 internals (``_timeout_cb``, ``_call_handler_hook``,
``_set_post_data_state``, ``_getaddr``, the reader's buffer);
tests/e2e/test_hostile_smtp.py and tests/smtp/test_data_reader.py pin their behaviour.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import sys
import time
from collections import Counter
from typing import Any, AnyStr, NamedTuple

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, TLSSetupException, syntax

from mailveil.smtp import replies
from mailveil.smtp.anvil import Anvil
from mailveil.smtp.limits import Limits, extended_deadline, is_exempt
from mailveil.smtp.tls import ServerCertificate

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# <dot-atom@host>, then the parameters; a comment after ">" is left to the stdlib parser.
_PLAIN_PATH = re.compile(
    rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*+(?!\()(.*)")

# aiosmtpd's fixed texts for these cases carry no enhanced status code.
_AIOSMTPD_REPLIES = {
    "500 Command line too long": replies.S500_COMMAND_TOO_LONG,
    "552 Error: message size exceeds fixed maximum message size": replies.S552_TOO_BIG,
}

_CRLF = b"\r\n"
_END_OF_DATA = b"\r\n.\r\n"
# Where every line ends with LF: a dot that stuffs a line, that is with more after it.
_STUFFING = re.compile(rb"\n\.(?!\n)")
# The most asked of the stream reader at once. It never holds much more: one socket read
# gives at most 256 KiB, and it pauses the transport beyond twice its line limit.
_CHUNK = 256 * 1024


_XFORWARD_NAMES = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"})
_XTEXT = re.compile(r"\+([0-9A-F]{2})")


class RelayEnvelope(Envelope):
    """An envelope that knows the client a trusted peer forwarded it from (XFORWARD)."""

    def __init__(self) -> None:
        super().__init__()
        self.client_address: str | None = None
        self.client_helo: str | None = None


def parse_xforward(arg: str) -> dict[str, str] | None:
    """XFORWARD's attributes, xtext decoded, without the unknown ones (``[UNAVAILABLE]``);
    ``None`` for a syntax error or an ADDR that is not an IP address."""
    attributes: dict[str, str] = {}
    for item in arg.split():
        name, sep, value = item.partition("=")
        name = name.upper()
        if not sep or name not in _XFORWARD_NAMES:
            return None
        value = _XTEXT.sub(lambda m: chr(int(m[1], 16)), value)
        if value not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
            attributes[name] = value
    if not attributes and not arg.strip():
        return None
    if "ADDR" in attributes:
        address = attributes["ADDR"].removeprefix("IPV6:").removeprefix("IPv6:")
        try:
            attributes["ADDR"] = str(ipaddress.ip_address(address))
        except ValueError:
            return None
    if "HELO" in attributes and _CONTROL.search(attributes["HELO"]):
        return None
    return attributes


class Client(NamedTuple):
    address: str
    helo: str
    forwarded: bool  # by a trusted peer (XFORWARD): its checks' results may be trusted too


def client_of(session: Session, envelope: Envelope) -> Client:
    """The client that sent this mail: what a trusted peer forwarded, else the session's."""
    peer = str(session.peer[0]) if isinstance(session.peer, tuple) else str(session.peer)
    helo = session.host_name or ""
    if isinstance(envelope, RelayEnvelope) and envelope.client_address is not None:
        # Postfix forwards no HELO when its client sent none: then there is none, not ours.
        return Client(envelope.client_address, envelope.client_helo or "", True)
    return Client(peer, helo, False)


class ConnectionLimit:
    """The sessions open on one listener, shared by all its protocol instances, and the
    limits per client address (shared with the other listeners through ``anvil``)."""

    def __init__(self, limit: int, anvil: Anvil | None = None) -> None:
        self.limit = limit
        self.anvil = anvil or Anvil(Limits())
        self.active = 0
        self.sessions: set[RelaySMTP] = set()


async def drain(connections: ConnectionLimit, grace: float) -> None:
    """Shut every session down (see :meth:`RelaySMTP.shut_down`), wait up to ``grace``
    seconds for the messages being received, then cut what is left."""
    for session in list(connections.sessions):
        session.shut_down()
    deadline = asyncio.get_running_loop().time() + grace
    while connections.sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    for session in list(connections.sessions):
        if isinstance(session.transport, asyncio.WriteTransport):
            session.transport.abort()


class DataReader:
    """Message data as it arrives, up to the ``<CR><LF>.<CR><LF>`` that ends it.

    Only that sequence ends the data, as RFC 5321 4.1.1.4 says (no SMTP smuggling), and
    commands right behind it are the client's next ones. A line may also end with a bare LF
    (``smtplib.sendmail(msg.as_bytes())`` sends them) or a bare CR: it is stored as CRLF,
    so the programs after us, which disagree on bare line ends, all read the message alike.
    A line of one dot next to one is a line of text, never an end, as with Postfix 3.9's
    ``smtpd_forbid_bare_newline = normalize`` (which drops the line, where RFC 5321 4.5.2
    keeps it: only a dot with more after it is stuffing, and goes). Lines have no length
    limit of their own (what leaves the relay is re-encoded, see :mod:`mailveil.mail`); the
    data may have ``size_limit`` bytes, counted with CRLF line ends and before
    dot-unstuffing. Data over it, or with a NUL, is refused (:attr:`refusal`), but still
    read to its end so the session stays in step.

    Each chunk costs a few :class:`bytes` calls, not Python per line; only the bytes that
    may end up in the message are kept.
    """

    def __init__(self, *, size_limit: int | None) -> None:
        # The CRLF that ended the DATA command heads the buffer: the end marker right at the
        # start (an empty message) and a dot opening the first line are then found as any other.
        self._buffer = bytearray(_CRLF)
        self._size_limit = size_limit or sys.maxsize  # aiosmtpd: a size limit of 0 is none
        self._bare_line_ends = 0
        self.refusal: str | None = None
        self.after = b""  # what the client sent after the end marker: its next commands

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes; ``True`` once the end marker has arrived."""
        buffer = self._buffer
        search_from = max(0, len(buffer) - len(_END_OF_DATA) + 1)  # it may straddle chunks
        buffer += chunk
        end = buffer.find(_END_OF_DATA, search_from)
        if end >= 0:
            self.after = bytes(buffer[end + len(_END_OF_DATA):])
            del buffer[end + len(_CRLF):]  # the message keeps the CRLF ending its last line
            if self.refusal is None:
                self.refusal = self._fault()
        # Without the end, the data has all but the last bytes, which may start the marker.
        elif len(buffer) - len(_END_OF_DATA) + 1 > self._size_limit + len(_CRLF):
            self.refusal = replies.S552_TOO_BIG
        if self.refusal is not None:  # nothing more to keep but a possible start of the marker
            del buffer[:-(len(_END_OF_DATA) - 1)]
        return end >= 0

    def _fault(self) -> str | None:
        """The refusal for the whole data, or ``None``."""
        buffer = self._buffer
        crlfs = buffer.count(_CRLF)
        self._bare_line_ends = buffer.count(b"\r") + buffer.count(b"\n") - 2 * crlfs
        if len(buffer) - len(_CRLF) + self._bare_line_ends > self._size_limit:
            return replies.S552_TOO_BIG
        # NUL is not mail text (RFC 5322, 8BITMIME), and PostgreSQL text columns cannot hold it.
        if b"\0" in buffer:
            return replies.S554_NUL
        return None

    def message(self) -> bytes:
        """The data with CRLF line ends and without its dot-stuffing. Empties the reader, so
        a message of tens of megabytes is not held twice for long."""
        buffer = self._buffer
        if not self._bare_line_ends:  # then a line of one dot would have been the end
            del buffer[:3 if buffer.startswith(b"\r\n.") else 2]  # the heading CRLF, a first dot
            data = bytes(buffer)
            buffer.clear()
            return data.replace(b"\r\n.", _CRLF)
        # One LF for each line end, the heading CRLF's included, so each line start is seen once.
        data = bytes(buffer).replace(_CRLF, b"\n").replace(b"\r", b"\n")
        buffer.clear()
        # A line of one dot keeps it; it is rare, and bytes.replace is faster than the regex.
        data = _STUFFING.sub(b"\n", data) if b"\n.\n" in data else data.replace(b"\n.", b"\n")
        return data[1:].replace(b"\n", _CRLF)


class RelaySMTP(SMTP):
    def __init__(self, handler: object, *, connections: ConnectionLimit,
                 trusted_peers: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._trusted_networks = tuple(ipaddress.ip_network(n) for n in trusted_peers)
        self._trusted = False  # the peer may say XFORWARD
        self._counted = False
        self._in_hook = False
        self._in_data = False
        self._shutting_down = False
        self._opened = time.monotonic()
        self._client = ""  # the key the limits count this session's client under
        self._deadline = 0.0
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._tally: Counter[str] = Counter()
        self._multiline: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:
            peer = transport.get_extra_info("peername")
            self._trusted = isinstance(peer, tuple) and is_exempt(str(peer[0]),
                                                                  self._trusted_networks)
            refusal = self._admit(peer)
            if refusal is not None:
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"{refusal}\r\n".encode())
                transport.close()
                return
            self._connections.active += 1
            self._connections.sessions.add(self)
            self._counted = True
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + self._connections.anvil.limits.session_seconds
            self._deadline_timer = loop.call_at(self._deadline, self._deadline_cb)
        super().connection_made(transport)

    def _admit(self, peer: object) -> str | None:
        """The ``421`` refusing a new session, or ``None``: the listener's cap, then the
        limits of the client's address."""
        if self._connections.active >= self._connections.limit:
            log.warning("connection refused: too many sessions",
                        extra={"peer": str(peer), "sessions": self._connections.active})
            return replies.S421_TOO_MANY_CONNECTIONS
        self._client, refusal = self._connections.anvil.open(
            str(peer[0]) if isinstance(peer, tuple) else str(peer))
        return refusal

    def connection_lost(self, error: Exception | None) -> None:
        if not self._counted:
            return  # refused in connection_made: aiosmtpd never started this session
        self._connections.active -= 1
        self._connections.sessions.discard(self)
        self._connections.anvil.close(self._client)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._counted = False
        # One line per session, with no address in it: operators count, they do not read mail.
        log.info("smtp session", extra={
            "peer": self._peer, "seconds": round(time.monotonic() - self._opened, 3),
            "helo": self.session.host_name if self.session else None, **self._tally})
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        """Every read restarts the idle timer: RFC 5321 4.5.3.2 times each read of DATA,
        not the whole upload, which aiosmtpd's per-command timer would cut."""
        self._reset_timeout()
        if self._in_data:
            self._deadline = extended_deadline(self._deadline, len(data),
                                               self._connections.anvil.limits.min_data_rate)
        super().data_received(data)

    @property
    def _peer(self) -> str:
        return str(self.session.peer) if self.session else "?"

    def _timeout_cb(self) -> None:
        if self.transport is None:
            return
        if self._in_hook:  # we are the slow one (scan, commit): the client is waiting
            self._reset_timeout()
            return
        log.info("idle timeout", extra={"peer": self._peer})
        self._writer.write(f"{replies.S421_TIMEOUT}\r\n".encode())
        self._hang_up()

    def _deadline_cb(self) -> None:
        """Hang up on a session past its deadline (``MAILVEIL_SMTP_SESSION_SECONDS``, plus
        what its message data earned), unless it waits for us (scan, commit)."""
        if self.transport is None or self.transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        if self._in_hook or loop.time() < self._deadline:
            self._deadline_timer = loop.call_at(max(self._deadline, loop.time() + 1),
                                                self._deadline_cb)
            return
        reply = self._connections.anvil.expired(self._client)
        self._writer.write(f"{reply}\r\n".encode())
        self._hang_up()

    def _create_envelope(self) -> Envelope:
        return RelayEnvelope()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self._in_hook = True
        try:
            reply = await super()._call_handler_hook(command, *args)
        finally:
            self._in_hook = False
        if command == "EHLO" and self._trusted and isinstance(reply, list):
            reply = [*reply[:-1], "250-XFORWARD NAME ADDR PROTO HELO", reply[-1]]
        if command in ("RCPT", "DATA") and isinstance(reply, str):
            outcome = "accepted" if reply.startswith("250") else "refused"
            self._tally[f"{'rcpt' if command == 'RCPT' else 'messages'}_{outcome}"] += 1
        return reply

    async def push(self, status: AnyStr) -> None:
        """Send a reply; after a ``421`` hang up, and say nothing more.

        The lines of a multiline reply (``250-``, EHLO's six) wait for its last line and go
        in one write: a write is a system call, and a session has a dozen of them.
        """
        if self.transport is None or self.transport.is_closing():
            return
        if isinstance(status, bytes):
            await super().push(status)
            return
        reply = _AIOSMTPD_REPLIES.get(status, status)
        if reply[3:4] == "-":
            self._multiline.append(reply)
            return
        if self._multiline:
            reply, self._multiline = "\r\n".join([*self._multiline, reply]), []
        await super().push(reply)
        if reply.startswith("421 "):
            self._hang_up()

    async def handle_exception(self, error: Exception) -> str:
        """A failed STARTTLS handshake is a log line, not a traceback: scanners and old
        clients fail them all day. No reply can follow it (the stream is neither clear nor
        encrypted), so aiosmtpd closes the connection and ignores what this returns."""
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake failed", extra={"peer": self._peer,
                                                    "error": str(error.__cause__ or error)})
            return ""
        return await super().handle_exception(error)

    def _hang_up(self) -> None:
        """Close, dropping what the client sent that we have not read yet: aiosmtpd would
        otherwise go on running those commands until its next wait."""
        self._reader._buffer.clear()  # type: ignore[attr-defined]  # no public API
        assert self.transport is not None
        self.transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """No control character is valid in a path (RFC 5321 4.1.2); aiosmtpd lets them
        through, NUL included.

        aiosmtpd reads every path with the stdlib's header parser, a tenth of a millisecond
        per command; the plain ``<local@domain>`` nearly every client sends is read here
        with the same result (tests/smtp/test_protocol.py compares them). A path that makes
        the stdlib parser raise is a syntax error, not a 500 with a Python traceback's words.
        """
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain and not (self.local_part_limit
                          and len(plain[1].rpartition("@")[0]) > self.local_part_limit):
            return plain[1], plain[2]
        try:
            address, rest = super()._getaddr(arg)
        except Exception:  # the stdlib parser trips on some junk (``<0@[>``: AttributeError)
            return None, None
        if address and _CONTROL.search(address):
            return None, None
        return address, rest

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and _CONTROL.search(hostname):
            await self.push(replies.S501_CONTROL_IN_HOSTNAME)
            return
        await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and _CONTROL.search(hostname):
            await self.push(replies.S501_CONTROL_IN_HOSTNAME)
            return
        await super().smtp_EHLO(hostname)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        """Offered to and taken from the trusted peers only; to anyone else it is unknown,
        as it is to any server that does not offer it."""
        if not self._trusted:
            await self.push('500 Error: command "XFORWARD" not recognized')
            return
        envelope = self.envelope
        if not isinstance(envelope, RelayEnvelope) or envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: XFORWARD not allowed in a mail transaction")
            return
        attributes = parse_xforward(arg)
        if attributes is None:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value ...")
            return
        envelope.client_address = attributes.get("ADDR", envelope.client_address)
        envelope.client_helo = attributes.get("HELO", envelope.client_helo)
        await self.push("250 2.0.0 Ok")

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's, once per connection, and a handshake we cut short (idle timeout,
        shutdown) ends the session.

        aiosmtpd would start TLS inside TLS as often as asked, each time with a new session
        (and a new count of refused recipients). asyncio reports a handshake cut short as
        done, without calling ``connection_made`` or ever ``connection_lost``: the session
        would wait for ever on a dead stream, holding its slot."""
        if self._tls_protocol is not None:
            await self.push(replies.S554_TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)
        session = self.session
        if self._tls_protocol is not None and session is not None and session.ssl is None:
            raise TLSSetupException("the handshake was cut short")

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """Hang up on a client that sent data before our 354 (RFC 2920 3.1: DATA ends a
        pipelined group). Those bytes would be read as commands if DATA is refused: the
        pipelining form of smuggling. Exim and Postfix hang up too."""
        if self._reader._buffer:  # type: ignore[attr-defined]  # StreamReader cannot peek
            log.info("data sent before 354", extra={"peer": self._peer})
            await self.push(replies.S554_EARLY_DATA)
            self._hang_up()
            return
        self._in_data = True
        try:
            await self._transaction(arg)
        finally:
            self._in_data = False
        if self._shutting_down:
            await self.push(replies.S421_SHUTTING_DOWN)

    async def _transaction(self, arg: str) -> None:
        """aiosmtpd 1.4's ``smtp_DATA`` (bytes only: ``decode_data=False``, as
        :func:`smtp_factory` sets) with :class:`DataReader` in place of its line loop."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.S554_NO_VALID_RCPT)
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = DataReader(size_limit=self.data_size_limit)
        while not data.feed(await self._read_data()):
            pass
        # Commands may follow the end marker at once (RFC 2920), for aiosmtpd's command loop
        # to read next. StreamReader cannot take bytes back, so they go back in front of its
        # buffer: all it holds arrived after them.
        self._reader._buffer[:0] = data.after  # type: ignore[attr-defined]
        reply = data.refusal
        if reply is not None:
            log.info("message data refused", extra={"peer": self._peer, "reply": reply})
        else:
            self.envelope.content = self.envelope.original_content = data.message()
            status = await self._call_handler_hook("DATA")
            reply = "250 OK" if status is MISSING else status
        self._set_post_data_state()  # type: ignore[no-untyped-call]  # a new envelope
        await self.push(reply)

    async def _read_data(self) -> bytes:
        """What the client sent, up to :data:`_CHUNK` bytes, waiting for it if need be."""
        chunk = await self._reader.read(_CHUNK)
        if not chunk:
            # The stream ended: aiosmtpd (eof_received, connection_lost) has cancelled this
            # task, but the cancellation lands only when it next waits, and reading at the
            # end of the stream no longer waits.
            raise asyncio.CancelledError
        return chunk

    def shut_down(self) -> None:
        """``421 4.3.2`` now if the client is between commands; a message being received
        is stored and answered first."""
        self._shutting_down = True
        if not self._in_data and self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"{replies.S421_SHUTTING_DOWN}\r\n".encode())
            self._hang_up()


def smtp_factory(handler: object, *, hostname: str, data_size_limit: int, timeout: float,
                 connections: ConnectionLimit, certificate: ServerCertificate | None = None,
                 trusted_peers: tuple[str, ...] = ()) -> SMTP:
    """A session; STARTTLS is offered with ``certificate`` as its files are now.

    aiosmtpd does what RFC 3207 asks after the handshake: a new session, and whatever the
    client pipelined behind STARTTLS in clear is dropped (CVE-2011-0411's class, fixed in
    aiosmtpd 1.4.6). The stream reader stays the same object on the TLS transport, so
    :class:`DataReader` reads decrypted data as it read clear data."""
    return RelaySMTP(handler, connections=connections, trusted_peers=trusted_peers,
                     hostname=hostname, ident="mailveil",
                     data_size_limit=data_size_limit, enable_SMTPUTF8=True, decode_data=False,
                     timeout=timeout,
                     tls_context=None if certificate is None else certificate.context())
