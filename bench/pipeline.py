"""The pipeline without sockets: store N messages as the listener would, process them, and
hand them to a transport that answers 250 at once, timing each stage in CPU ms/message.

It isolates what mailveil itself costs per message (store, rules, rewrite, DKIM, outbox)
from SMTP and from the machine's other load, which `bench.relay` cannot; use it to see
what a change to the pipeline gains before running the full benchmark.

    python -m bench.pipeline --messages 2000 --size 2k [--database postgresql] [--profile]

On PostgreSQL it works in a database of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import psycopg

from bench.mailveil_sut import PG_ADMIN
from bench.messages import Template, size_bytes, token
from bench.systems import free_port, wait_for_port
from mailveil.delivery.transport import Result, SmarthostTransport, Status, Transport
from mailveil.delivery.worker import Deliverer, Policy
from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import Party
from mailveil.mail import dkim
from mailveil.pipeline.compose import Voice
from mailveil.pipeline.process import Pipeline, Processor
from mailveil.smtp.backend import StoreBackend
from mailveil.smtp.commit import Accepted
from mailveil.store import repository as repo
from mailveil.store.db import make_engine, migrate, session_factory

T = TypeVar("T")


class NullTransport:
    """A receiving server that costs nothing: every message is delivered."""

    async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result:
        return Result(Status.DELIVERED, 250, "ok")

    async def close(self) -> None:
        return None


def cpu_ms(step: Callable[[], T]) -> tuple[T, float]:
    start = time.process_time()
    result = step()
    return result, (time.process_time() - start) * 1000


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/bench.db"
        return
    name = f"mailveil_bench_{secrets.token_hex(5)}"
    with psycopg.connect(**PG_ADMIN, autocommit=True) as admin:  # type: ignore[arg-type]
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", default="2k")
    parser.add_argument("--bookings", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50,
                        help="messages per listener group commit and per worker batch "
                        "(1-2 is what a lightly loaded relay sees)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--profile", action="store_true", help="cProfile the whole run")
    parser.add_argument("--sink", action="store_true",
                        help="deliver over SMTP to bench.sink (else to a no-op transport)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, database(args.database, Path(tmp)) as url:
        migrate(url)
        sessions = session_factory(make_engine(url))
        book = AddressBook("reply.example.com", "customer", "local-partner", "bounce",
                           "no-reply")
        now = datetime.now(UTC)
        envelopes = []
        with sessions() as s, s.begin():
            repo.upsert_supplier(s, id="sup", name="Sunset Tours", email="desk@supplier.example",
                                 locale="fr", now=now)
            for i in range(args.bookings):
                row = repo.create_booking(
                    s, reference=f"B{i:06d}", supplier_id="sup",
                    customer=Party("Ann Lee", f"ann{i}@customer.example", "en"),
                    activity_start=now + timedelta(days=3), activity_end=now + timedelta(days=4),
                    now=now)
                envelopes.append((f"ann{i}@customer.example",
                                  book.relay_address(Role.SUPPLIER, row.supplier_token)))
        template = Template.of_size(size_bytes(args.size))
        messages = [Accepted(sender, (rcpt,), template.message(sender, rcpt, token(1, i)),
                             "clean")
                    for i, (sender, rcpt) in
                    ((i, envelopes[i % len(envelopes)]) for i in range(args.messages))]

        backend = StoreBackend(sessions, book)
        key = dkim.load_or_create_key(Path(tmp) / "dkim.pem")
        voice = Voice("Marketplace", "{name} via {platform}", True, timedelta(days=7), "")
        processor = Processor(sessions, Pipeline(
            book, voice, lambda raw: dkim.sign(raw, domain=book.domain, selector="mv",
                                               private_key=key), batch=args.batch))
        transports: list[Transport] = [NullTransport()]
        if args.sink:
            port = free_port()
            sink = subprocess.Popen([sys.executable, "-m", "bench.sink", str(port)],
                                    stdout=subprocess.DEVNULL)
            wait_for_port(port)
            transports = [SmarthostTransport("127.0.0.1", port) for _ in range(4)]
        deliverer = Deliverer(sessions, transports, Policy(
            timedelta(minutes=1), timedelta(hours=1), timedelta(days=5), batch=args.batch))

        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()

        def lookups() -> None:
            for _, rcpt in envelopes[: min(len(envelopes), args.messages)]:
                backend.lookup(rcpt)

        def store() -> None:
            for i in range(0, len(messages), args.batch):
                backend.accept(messages[i: i + args.batch])

        def process() -> None:
            while processor.run_once(datetime.now(UTC)):
                pass

        def deliver() -> None:
            async def all_of_them() -> None:
                while await deliverer.run_once(lambda: datetime.now(UTC)):
                    pass
                for t in transports:
                    await t.close()

            asyncio.run(all_of_them())

        n = args.messages
        _, lookup_ms = cpu_ms(lookups)
        _, store_ms = cpu_ms(store)
        _, process_ms = cpu_ms(process)
        _, deliver_ms = cpu_ms(deliver)
        if profiler:
            profiler.disable()
        if args.sink:
            sink.terminate()
        looked_up = min(len(envelopes), n)
        print(f"{n} x {args.size} on {url.split(':')[0]}: CPU ms per message")
        print(f"  RCPT lookup {lookup_ms / looked_up:6.2f}")
        print(f"  store       {store_ms / n:6.2f}   (group commits of {args.batch})")
        print(f"  process     {process_ms / n:6.2f}")
        print(f"  deliver     {deliver_ms / n:6.2f}   "
              f"({'to bench.sink over SMTP' if args.sink else 'transport costs nothing'})")
        total = lookup_ms / looked_up + (store_ms + process_ms + deliver_ms) / n
        print(f"  total       {total:6.2f}")
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
