"""The naive relay: aiosmtpd in, aiosmtplib out, and nothing else.

No store, no queue, no lookup, no rewriting: each message is forwarded during its DATA
phase and the sender gets the downstream server's verdict, so a ``250`` means it already
arrived. Outgoing connections are kept in a pool and reused, as mailveil's worker does.

    python -m bench.naive_relay LISTEN_PORT SMARTHOST_PORT
"""

from __future__ import annotations

import asyncio
import sys

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session


class Pool:
    """Idle connections to the smarthost; grows to the number of concurrent senders."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[aiosmtplib.SMTP] = []

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname=self._host, port=self._port, start_tls=False,
                                 local_hostname="naive.example", timeout=60)
        await client.connect()
        return client

    async def send(self, mail_from: str, rcpts: list[str], raw: bytes) -> str:
        for attempt in (1, 2):  # an idle connection may have been closed by the server
            client = self._idle.pop() if self._idle else await self._connect()
            try:
                await client.sendmail(mail_from, rcpts, raw)
            except aiosmtplib.SMTPResponseException as exc:
                client.close()
                return f"{exc.code} {exc.message}"
            except aiosmtplib.SMTPServerDisconnected:
                client.close()
                if attempt == 2:
                    raise
                continue
            self._idle.append(client)
            return "250 2.0.0 Ok: relayed"
        raise AssertionError("unreachable")


class Handler:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        try:
            return await self._pool.send(envelope.mail_from or "", envelope.rcpt_tos, raw)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"451 4.4.1 downstream: {exc}"


async def serve(listen_port: int, smarthost_port: int) -> None:
    handler = Handler(Pool("127.0.0.1", smarthost_port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="naive.example", decode_data=False),
        "127.0.0.1", listen_port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))  # until SIGTERM
