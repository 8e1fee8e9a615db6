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
            self._smtp = smtp
        return self._smtp

    async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result:
        try:
            smtp = await self._connection()
            errors, response = await smtp.sendmail(mail_from, [rcpt_to], raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            await self._reset()
            return Result(_status_of(refusal.code), refusal.code, refusal.message)
        except aiosmtplib.SMTPResponseException as exc:
            await self._drop()
            return Result(_status_of(exc.code), exc.code, exc.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self._drop()
            return Result(Status.TEMPORARY, None, f"{type(exc).__name__}: {exc}")
        if errors:
            failed = next(iter(errors.values()))
            return Result(_status_of(failed.code), failed.code, failed.message)
        return Result(Status.DELIVERED, 250, response)

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
