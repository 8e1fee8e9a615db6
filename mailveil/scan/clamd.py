"""Scan every attachment of a message with clamd, over TCP or a unix socket.

The protocol is written here (about 60 lines) rather than taken from PyPI: ``aioclamd``
speaks TCP only, passes 1 KiB chunks through a thread each and has a single overall
timeout; the other clients block. A message is never passed unscanned: every failure to
get a verdict raises :class:`ScannerUnavailable`, which the listener answers with 451.
"""

from __future__ import annotations

import asyncio
import binascii
import quopri
import re
import struct
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Protocol

CHUNK_BYTES = 256 * 1024  # far below any sane StreamMaxLength; fewer, larger writes


class ScannerUnavailable(Exception):
    """clamd gave no verdict: unreachable, too slow, or it answered an error."""


class Scanner(Protocol):
    async def instream(self, data: bytes) -> str | None:
        """The name of the signature found in ``data``, or None when it is clean."""
        ...


class Clamd:
    """clamd at ``address``, "host:port" or a unix socket path (anything with a "/").

    One connection per command, as clamd expects. ``connect_timeout`` bounds reaching
    clamd; ``timeout`` bounds sending the data and waiting for the verdict.
    """

    def __init__(self, address: str, timeout: float = 60.0, *,
                 connect_timeout: float = 5.0) -> None:
        host, sep, port = address.rpartition(":")
        if "/" not in address and not (sep and host and port.isdigit()):
            raise ValueError(f"clamd address must be host:port or a socket path: {address!r}")
        self.address = address
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    async def ping(self) -> None:
        """Raise :class:`ScannerUnavailable` unless clamd answers PONG."""
        reply = await self._exchange(b"zPING\0", None)
        if reply != "PONG":
            raise ScannerUnavailable(f"clamd at {self.address} answered {reply!r} to PING")

    async def version(self) -> str:
        """clamd's answer to VERSION: ``ClamAV 1.4.6/27473/Sat Nov 29 09:36:02 2026`` with
        the signature database's version and date, or only the engine's without one."""
        return await self._exchange(b"zVERSION\0", None)

    async def instream(self, data: bytes) -> str | None:
        reply = await self._exchange(b"zINSTREAM\0", data)
        if reply == "stream: OK":
            return None
        if reply.startswith("stream: ") and reply.endswith(" FOUND"):
            return reply.removeprefix("stream: ").removesuffix(" FOUND")
        # e.g. "INSTREAM size limit exceeded. ERROR": no verdict, so no pass either.
        raise ScannerUnavailable(f"clamd at {self.address}: {reply}")

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if "/" in self.address:
            return await asyncio.open_unix_connection(self.address)
        host, _, port = self.address.rpartition(":")
        return await asyncio.open_connection(host.strip("[]"), int(port))

    async def _exchange(self, command: bytes, payload: bytes | None) -> str:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await self._open()
        except (OSError, TimeoutError) as exc:
            raise ScannerUnavailable(f"cannot reach clamd at {self.address}: {exc!r}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(command)
                if payload is not None:
                    view = memoryview(payload)
                    for start in range(0, len(view), CHUNK_BYTES):
                        chunk = view[start:start + CHUNK_BYTES]
                        writer.write(struct.pack("!I", len(chunk)))
                        writer.write(chunk)
                        await writer.drain()
                    writer.write(struct.pack("!I", 0))
                await writer.drain()
                reply = await reader.readuntil(b"\0")
        except (OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            raise ScannerUnavailable(f"no verdict from clamd at {self.address}: {exc!r}") from exc
        finally:
            # abort, not close: close would wait for unsent data a stalled clamd never reads.
            writer.transport.abort()
        return reply[:-1].decode("utf-8", "replace")


@dataclass(frozen=True)
class Finding:
    """An infected piece: its part number in walk order (None: the whole message)."""

    signature: str
    part: int | None
    filename: str | None


@dataclass(frozen=True)
class ScanResult:
    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings


@dataclass(frozen=True)
class _Piece:
    part: int
    filename: str | None
    data: bytes


def _raw_payload(part: EmailMessage) -> bytes:
    payload = part.get_payload()
    text = payload if isinstance(payload, str) else ""
    return text.encode("ascii", "surrogateescape")  # the parser's own decoding, undone


def _piece(index: int, part: EmailMessage) -> _Piece | None:
    try:
        filename = part.get_filename()
        if (part.get_content_maintype() == "text" and filename is None
                and not part.is_attachment()):
            return None  # a body: the whole-message scan covers it
        decoded = part.get_payload(decode=True)
    except Exception:  # hostile headers have crashed the stdlib parser before
        return _Piece(index, None, _raw_payload(part))
    return _Piece(index, filename, decoded if isinstance(decoded, bytes) else _raw_payload(part))


_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")
MAX_DEPTH = 5


def _encoded_container(index: int, part: EmailMessage, depth: int) -> list[_Piece]:
    """A ``message/*`` or ``multipart/*`` part that is base64 or quoted-printable encoded.

    RFC 2046 5.2.1 forbids it, so neither the stdlib nor clamd decodes it, which is exactly
    why malware would hide there: decode it ourselves and scan what is inside.
    """
    body = part.as_bytes().replace(b"\r\n", b"\n").partition(b"\n\n")[2]
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    decoded = _lenient_base64(body) if cte == "base64" else quopri.decodestring(body)
    return [_Piece(index, None, decoded), *_pieces(decoded, depth + 1)]


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def _lenient_base64(body: bytes) -> bytes:
    """As much as a damaged base64 body holds, the way mail readers decode it: junk and
    padding ignored, a dangling last character dropped. Strict decoding raised on bad
    padding, and the sender got a 500 for a message any reader opens (issue 12)."""
    alphabet = _NOT_BASE64.sub(b"", body)
    if len(alphabet) % 4 == 1:  # six bits: not even one byte
        alphabet = alphabet[:-1]
    return binascii.a2b_base64(alphabet + b"=" * (-len(alphabet) % 4))


def _pieces(raw: bytes, depth: int = 0) -> list[_Piece]:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    found: list[_Piece] = []
    for i, part in enumerate(message.walk()):
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if part.is_multipart() or part.get_content_maintype() == "message":
            if cte not in _IDENTITY_ENCODINGS and depth < MAX_DEPTH:
                found.extend(_encoded_container(i, part, depth))
            continue
        piece = _piece(i, part)
        if piece is not None:
            found.append(piece)
    return found


async def scan_message(raw: bytes, scanner: Scanner) -> ScanResult:
    """Scan each attachment and non-text part decoded, then, if those are clean, the
    whole raw message, which catches what a broken MIME structure hid from the walk."""
    pieces = await asyncio.to_thread(_pieces, raw)  # parsing 10 MB is CPU work
    findings: list[Finding] = []
    for piece in pieces:
        signature = await scanner.instream(piece.data)
        if signature is not None:
            findings.append(Finding(signature, piece.part, piece.filename))
    if not findings:
        signature = await scanner.instream(raw)
        if signature is not None:
            findings.append(Finding(signature, None, None))
    return ScanResult(tuple(findings))
