"""The SMTP dialogue: aiosmtpd's, hardened for a public MX.

aiosmtpd ends DATA only at ``<CRLF>.<CRLF>`` (1.4.5 fixed SMTP smuggling), answers commands
strictly in order and caps line lengths. This subclass adds what hostile clients need:

* an idle timeout that says ``421 4.4.2`` before hanging up, counted only while we wait
  for the client, so a slow but moving upload or a slow commit of ours is never cut;
* a cap on simultaneous sessions (``421 4.7.0``);
* refusal of data sent before our 354 (the pipelining form of smuggling);
* refusal of messages with a bare CR or LF or a NUL, and of control characters in
  addresses and host names;
* a ``421`` always closes the connection, whoever produced it;
* enhanced status codes on aiosmtpd's own replies to these cases.

Policy (who may write to whom, how many recipients) stays in :mod:`mailveil.smtp.listener`.
The overrides reach into aiosmtpd 1.4 internals (``_timeout_cb``, ``_call_handler_hook``,
``_getaddr``, the reader's buffer); tests/e2e/test_hostile_smtp.py pins their behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, syntax

from mailveil.smtp import replies

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# aiosmtpd's fixed texts for these cases carry no enhanced status code. After the end of
# DATA, RFC 5321 4.3.2 allows 554 (not aiosmtpd's 500) for a line that was too long.
_AIOSMTPD_REPLIES = {
    "500 Command line too long": replies.S500_LINE_TOO_LONG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": replies.S554_LINE_TOO_LONG,
    "552 Error: Too much mail data": replies.S552_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": replies.S552_TOO_BIG,
    "503 Error: need RCPT command": replies.S554_NO_VALID_RCPT,
}


class ConnectionLimit:
    """The sessions open on one listener, shared by all its protocol instances."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
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


def content_fault(raw: bytes) -> str | None:
    """The refusal for message data no SMTP client may send, or ``None``.

    Lines end with CRLF only (RFC 5321 2.3.8): a bare CR or LF is where smuggled commands
    hide, and the programs after us disagree on what it means, so such a message has no
    one meaning to relay. NUL is not mail text (RFC 5322, 8BITMIME), and PostgreSQL text
    columns cannot hold it.
    """
    if b"\0" in raw:
        return replies.S554_NUL
    line_ends = raw.count(b"\r\n")
    if raw.count(b"\r") != line_ends or raw.count(b"\n") != line_ends:
        return replies.S554_BARE_LINE_END
    return None


class RelaySMTP(SMTP):
    def __init__(self, handler: object, *, connections: ConnectionLimit, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._counted = False
        self._in_hook = False
        self._in_data = False
        self._shutting_down = False
        self._opened = time.monotonic()
        self._tally: Counter[str] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:
            if self._connections.active >= self._connections.limit:
                log.warning("connection refused: too many sessions",
                            extra={"peer": str(transport.get_extra_info("peername")),
                                   "sessions": self._connections.active})
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"{replies.S421_TOO_MANY_CONNECTIONS}\r\n".encode())
                transport.close()
                return
            self._connections.active += 1
            self._connections.sessions.add(self)
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._counted:
            return  # refused in connection_made: aiosmtpd never started this session
        self._connections.active -= 1
        self._connections.sessions.discard(self)
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

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command == "DATA":
            assert self.envelope is not None and self.envelope.original_content is not None
            fault = content_fault(self.envelope.original_content)
            if fault is not None:
                log.info("message data refused", extra={"peer": self._peer, "reply": fault})
                return fault
        self._in_hook = True
        try:
            reply = await super()._call_handler_hook(command, *args)
        finally:
            self._in_hook = False
        if command in ("RCPT", "DATA") and isinstance(reply, str):
            outcome = "accepted" if reply.startswith("250") else "refused"
            self._tally[f"{'rcpt' if command == 'RCPT' else 'messages'}_{outcome}"] += 1
        return reply

    async def push(self, status: AnyStr) -> None:
        """Send a reply; after a ``421`` hang up, and say nothing more."""
        if self.transport is None or self.transport.is_closing():
            return
        if isinstance(status, bytes):
            await super().push(status)
            return
        reply = _AIOSMTPD_REPLIES.get(status, status)
        await super().push(reply)
        if reply.startswith("421 "):
            self._hang_up()

    def _hang_up(self) -> None:
        """Close, dropping what the client sent that we have not read yet: aiosmtpd would
        otherwise go on running those commands until its next wait."""
        self._reader._buffer.clear()  # type: ignore[attr-defined]  # no public API
        assert self.transport is not None
        self.transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """No control character is valid in a path (RFC 5321 4.1.2); aiosmtpd lets them
        through, NUL included."""
        address, rest = super()._getaddr(arg)
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
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False
        if self._shutting_down:
            await self.push(replies.S421_SHUTTING_DOWN)

    def shut_down(self) -> None:
        """``421 4.3.2`` now if the client is between commands; a message being received
        is stored and answered first."""
        self._shutting_down = True
        if not self._in_data and self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"{replies.S421_SHUTTING_DOWN}\r\n".encode())
            self._hang_up()


def smtp_factory(handler: object, *, hostname: str, data_size_limit: int, timeout: float,
                 connections: ConnectionLimit) -> SMTP:
    return RelaySMTP(handler, connections=connections, hostname=hostname, ident="mailveil",
                     data_size_limit=data_size_limit, enable_SMTPUTF8=True, decode_data=False,
                     timeout=timeout)
