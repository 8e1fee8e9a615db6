"""Where outgoing mail goes: a smarthost over SMTP, or a local maildir for demos.

Every send returns a :class:`Result` instead of raising, so the worker records one attempt
per message whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import mailbox
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import aiosmtplib


class Status(StrEnum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Result:
    status: Status
    code: int | None
    text: str


class Transport(Protocol):
    async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result: ...

    async def close(self) -> None: ...


class CaptureTransport:
    """Writes each message as a file in a maildir, so a new operator can see what would
    have been sent (``var/captured/new/``)."""

    def __init__(self, directory: Path) -> None:
        self._box = mailbox.Maildir(directory, create=True)

    async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result:
        envelope = f"X-Mailveil-Envelope: from=<{mail_from}> to=<{rcpt_to}>\r\n".encode()
        key = await asyncio.to_thread(self._box.add, envelope + raw)
        return Result(Status.DELIVERED, None, f"captured as {key}")

    async def close(self) -> None:
        return None


def _status_of(code: int | None) -> Status:
    if code is not None and 500 <= code < 600:
        return Status.PERMANENT
    return Status.TEMPORARY


class SmarthostTransport:
    """One SMTP connection reused across messages; reconnects after any failure."""

    def __init__(self, host: str, port: int, *, timeout: float = 60.0,
                 local_hostname: str | None = None) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._local_hostname = local_hostname
        self._smtp: aiosmtplib.SMTP | None = None

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is None or not self._smtp.is_connected:
            smtp = aiosmtplib.SMTP(hostname=self._host, port=self._port, timeout=self._timeout,
                                   local_hostname=self._local_hostname, start_tls=False)
            await smtp.connect()
            await smtp.ehlo()
            self._smtp = smtp
        return self._smtp

    async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result:
        """MAIL, RCPT and DATA by hand rather than ``sendmail()``, which runs a regular
        expression over the whole message one more time only to compute SIZE: every line
        of ours already ends in CRLF (DKIM signing sees to that)."""
        try:
            smtp = await self._connection()
            size = len(raw) if raw.endswith(b"\r\n") else len(raw) + 2  # as transmitted
            options = [f"SIZE={size}"] if smtp.supports_extension("size") else []
            encoding = "ascii"
            if not (mail_from.isascii() and rcpt_to.isascii()):
                if not smtp.supports_extension("smtputf8"):
                    return Result(Status.PERMANENT, None, "the address is not ASCII and the "
                                  "smarthost does not offer SMTPUTF8 (RFC 6531)")
                options.append("SMTPUTF8")
                encoding = "utf-8"
            await smtp.mail(mail_from, options=options, encoding=encoding)
            await smtp.rcpt(rcpt_to, encoding=encoding)
            response = await smtp.data(raw)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            return Result(_status_of(exc.code), exc.code, exc.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self._drop()
            return Result(Status.TEMPORARY, None, f"{type(exc).__name__}: {exc}")
        return Result(Status.DELIVERED, response.code, response.message)

    async def _reset(self) -> None:
        if self._smtp is not None and self._smtp.is_connected:
            try:
                await self._smtp.rset()
            except aiosmtplib.SMTPException:
                await self._drop()

    async def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def close(self) -> None:
        if self._smtp is not None and self._smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await self._smtp.quit()
        await self._drop()
