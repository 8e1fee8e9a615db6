"""Load generators: C concurrent SMTP sessions sending M messages.

``python``: a lean asyncio SMTP client (no pipelining, like aiosmtplib) that spreads the
messages over many (sender, recipient) pairs, i.e. over many bookings, and timestamps each
``250``. ``smtp-source``: Postfix's generator, faster, but one sender and one recipient for
the whole run and no per-message token, so it gives throughput and no latencies.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.messages import Template, token

Envelope = tuple[str, str]  # (MAIL FROM, RCPT TO)


@dataclass
class Sent:
    """What the generator saw: token -> monotonic time of the 250, and the failures."""

    started: float = 0.0
    finished: float = 0.0
    accepted: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


class SmtpError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes,
                   expect: int) -> None:
    writer.write(line)
    code, text = await _reply(reader)
    if code != expect:
        raise SmtpError(f"{line[:4].decode()} -> {text.decode(errors='replace').strip()}")


@dataclass
class PythonGenerator:
    host: str
    port: int
    concurrency: int
    per_connection: int = 1
    timeout: float = 600.0
    rate: float = 0.0  # msg/s offered (open loop); 0: each session sends as fast as it can
    _next: int = field(default=0, init=False, repr=False)

    async def run(self, phase: int, envelopes: Sequence[Envelope], count: int,
                  template: Template) -> Sent:
        """Message i goes from/to envelope i mod len(envelopes), with token (phase, i)."""
        jobs = [(envelopes[i % len(envelopes)], token(phase, i)) for i in range(count)]
        sent = Sent(started=time.monotonic(), tokens=[t for _, t in jobs])
        self._next = 0
        queue = deque(jobs)
        workers = [self._worker(queue, template, sent)
                   for _ in range(min(self.concurrency, len(jobs)))]
        await asyncio.wait_for(asyncio.gather(*workers), self.timeout)
        sent.finished = time.monotonic()
        return sent

    async def _worker(self, queue: deque[tuple[Envelope, str]], template: Template,
                      sent: Sent) -> None:
        while queue:
            await self._pace(sent.started)
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port,
                                                               limit=1 << 20)
            except OSError as exc:
                _, tok = queue.popleft()
                sent.failures.append(f"{tok}: connect: {exc}")
                await asyncio.sleep(0.05)
                continue
            try:
                await self._session(reader, writer, queue, template, sent)
            finally:
                writer.close()

    async def _pace(self, started: float) -> None:
        """With a rate, message n may start at started + n / rate."""
        if self.rate > 0:
            n, self._next = self._next, self._next + 1
            await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       queue: deque[tuple[Envelope, str]], template: Template,
                       sent: Sent) -> None:
        tok = "-"
        try:
            code, text = await _reply(reader)
            if code != 220:
                raise SmtpError(f"banner {text!r}")
            await _command(reader, writer, b"EHLO bench.example\r\n", 250)
            for i in range(self.per_connection):
                if not queue:
                    break
                if i:
                    await self._pace(sent.started)
                (mail_from, rcpt), tok = queue.popleft()
                await _command(reader, writer, f"MAIL FROM:<{mail_from}>\r\n".encode(), 250)
                await _command(reader, writer, f"RCPT TO:<{rcpt}>\r\n".encode(), 250)
                await _command(reader, writer, b"DATA\r\n", 354)
                writer.write(template.message(mail_from, rcpt, tok))
                await _command(reader, writer, b".\r\n", 250)
                sent.accepted[tok] = time.monotonic()
                tok = "-"
            writer.write(b"QUIT\r\n")
            await _reply(reader)
        except (SmtpError, OSError, ValueError) as exc:
            if tok != "-":
                sent.failures.append(f"{tok}: {exc}")


SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


@dataclass
class SmtpSourceGenerator:
    """Postfix's smtp-source, one process per envelope (booking) for up to ``processes`` of
    them, the sessions and messages shared out; the Subject carries one token per phase."""

    host: str
    port: int
    concurrency: int
    per_connection: int = 1
    processes: int = 8

    async def run(self, phase: int, envelopes: Sequence[Envelope], count: int,
                  template: Template) -> Sent:
        tok = token(phase, 0)[:7] + "smtpsrc"
        k = max(1, min(self.processes, len(envelopes), self.concurrency, count))
        sent = Sent(started=time.monotonic(), tokens=[tok] * count)
        runs = [self._one(envelopes[i], tok, self.concurrency // k + (i < self.concurrency % k),
                          count // k + (i < count % k), template.size) for i in range(k)]
        for failure in await asyncio.gather(*runs):
            if failure:
                sent.failures.append(failure)
        sent.finished = time.monotonic()
        return sent

    async def _one(self, envelope: Envelope, tok: str, sessions: int, count: int,
                   size: int) -> str:
        mail_from, rcpt = envelope
        args = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(size),
                "-f", mail_from, "-t", rcpt, "-S", f"bench {tok}", "-M", "bench.example"]
        if self.per_connection > 1:
            args.append("-d")
        proc = await asyncio.create_subprocess_exec(*args, f"{self.host}:{self.port}",
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0 or out.strip():
            return f"smtp-source exit {proc.returncode}: {out.decode()[-500:]}"
        return ""
