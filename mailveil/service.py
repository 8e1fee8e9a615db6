"""Wires settings into running roles: the SMTP listener, the worker and the web app.

``serve`` runs all three on one event loop; ``smtp``, ``worker`` and ``web`` run one each so
an operator can scale them apart on one PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from mailveil.authn.lookup import make_resolver
from mailveil.authn.upstream import check_or_trust
from mailveil.config import Settings
from mailveil.delivery.transport import CaptureTransport, SmarthostTransport, Transport
from mailveil.delivery.worker import Deliverer, Policy
from mailveil.domain.addresses import AddressBook
from mailveil.doorbell import Doorbell
from mailveil.mail import dkim
from mailveil.mail.banner import BOX_STYLE
from mailveil.memory import return_large_blocks
from mailveil.metrics import ERRORS
from mailveil.pipeline.compose import Voice
from mailveil.pipeline.process import Pipeline, Processor
from mailveil.scan.clamd import Clamd, scan_message
from mailveil.smtp import anvil, listener, policy, protocol, tls
from mailveil.smtp.backend import StoreBackend
from mailveil.smtp.vouched import Vouched
from mailveil.store import workers
from mailveil.store.db import DATABASE_UNAVAILABLE, make_engine, migrate, session_factory
from mailveil.store.retention import Retention, purge
from mailveil.web.api import ApiContext, create_app
from mailveil.web.care.routes import CARE_SALT, CareContext
from mailveil.web.portal.routes import PortalContext
from mailveil.web.sessions import PORTAL_SALT, Signer, stored_secret
from mailveil.web.webhooks import Sender

log = logging.getLogger(__name__)

# New mail rings the doorbell; polling finds what comes due (retries, expired leases) and
# what a listener on another host accepted.
IDLE_POLL_SECONDS = 0.5
SMTP_DRAIN_SECONDS = 10.0  # for the messages being received when asked to stop
DATABASE_RETRY_SECONDS = 1.0
PURGE_EVERY = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(UTC)


def address_book(settings: Settings) -> AddressBook:
    return AddressBook(settings.relay_domain, settings.customer_prefix,
                       settings.supplier_prefix, settings.bounce_prefix, settings.noreply_local)


def api_token(settings: Settings) -> str:
    """The configured token, or one generated once and kept in the data directory."""
    if settings.api_token:
        return settings.api_token
    path = settings.data_dir / "api-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
        log.warning("MAILVEIL_API_TOKEN is not set: generated one in %s", path)
    return path.read_text().strip()


class NoScanner:
    """The embedded demo: nothing scans, and every archive entry says so."""

    async def verdict(self, raw: bytes) -> str:
        return "not scanned"


class ClamdScanner:
    def __init__(self, address: str) -> None:
        self._clamd = Clamd(address)

    async def verdict(self, raw: bytes) -> str:
        """Raises :class:`ScannerUnavailable`, which the listener turns into a 451."""
        result = await scan_message(raw, self._clamd)
        if result.clean:
            return "clean"
        return "infected: " + ", ".join(f.signature for f in result.findings)


def scanner(settings: Settings) -> listener.Scanner:
    if settings.clamd:
        return ClamdScanner(settings.clamd)
    log.warning("MAILVEIL_CLAMD is not set: ATTACHMENTS ARE NOT SCANNED FOR VIRUSES; "
                "every archive entry records 'not scanned'")
    return NoScanner()


def signer(settings: Settings) -> Callable[[bytes], bytes]:
    path = settings.dkim_key_path or settings.data_dir / "dkim" / f"{settings.dkim_selector}.pem"
    key = dkim.load_or_create_key(Path(path))
    name, value = dkim.dns_txt_record(key, settings.dkim_selector, settings.relay_domain)
    log.info("DKIM: publish TXT %s \"%s\"", name, value)

    def sign(raw: bytes) -> bytes:
        return dkim.sign(raw, domain=settings.relay_domain, selector=settings.dkim_selector,
                         private_key=key)

    return sign


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    stopping: asyncio.Event
    doorbell: Doorbell


def open_runtime(settings: Settings) -> Runtime:
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    return Runtime(settings, session_factory(engine), asyncio.Event(),
                   Doorbell(settings.data_dir))


async def run_smtp(rt: Runtime) -> None:
    s = rt.settings
    backend = StoreBackend(rt.sessions, address_book(s))
    authenticate = functools.partial(check_or_trust, resolver=make_resolver(s.dns),
                                     authserv_id=s.trusted_authserv_id,
                                     refuse_unverified=s.refuse_unverified)
    limits = anvil.Anvil(s.limits, rt.sessions)
    # The policy service's lookups, for Postfix's relay of the message it let in.
    vouched = Vouched(s.policy_trust_seconds)
    handler = listener.RelayHandler(backend, scanner(s), authenticate, on_accept=rt.doorbell.ring,
                                    anvil=limits, vouched=vouched)
    connections = protocol.ConnectionLimit(s.smtp_max_connections, limits)
    sharing = asyncio.create_task(limits.run(rt.stopping))
    certificate = tls.ServerCertificate(
        tls.KeyPair(s.tls_cert, s.tls_key or s.tls_cert) if s.tls_cert is not None
        else tls.generated_pair(s.data_dir, s.relay_domain, now()))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol.smtp_factory(handler, hostname=s.relay_domain,
                                      data_size_limit=s.max_message_bytes,
                                      timeout=s.smtp_timeout.total_seconds(),
                                      connections=connections, certificate=certificate,
                                      trusted_peers=s.trusted_peers),
        host=s.smtp_listen.host, port=s.smtp_listen.port)
    log.info("SMTP listening on %s", s.smtp_listen)
    policy_server = None
    if s.policy_listen is not None:
        policy_server = await policy.start(s.policy_listen.host, s.policy_listen.port,
                                           backend.lookup, vouched)
        log.info("Postfix policy service listening on %s", s.policy_listen)
    await rt.stopping.wait()
    if policy_server is not None:
        policy_server.close()
    server.close()
    await protocol.drain(connections, SMTP_DRAIN_SECONDS)
    await server.wait_closed()
    await sharing
    await limits.stop()


def _transports(settings: Settings, count: int) -> list[Transport]:
    if settings.smarthost is None:
        log.warning("MAILVEIL_SMARTHOST is not set: outgoing mail is captured in %s",
                    settings.capture_dir / "new")
        return [CaptureTransport(settings.capture_dir)]
    host = settings.smarthost
    return [SmarthostTransport(host.host, host.port, local_hostname=settings.relay_domain,
                               tls=settings.smarthost_tls,
                               implicit_tls=settings.smarthost_implicit_tls,
                               ca=settings.smarthost_ca)
            for _ in range(count)]


async def run_worker(rt: Runtime) -> None:
    s = rt.settings
    book = address_book(s)
    voice = Voice(platform_name=s.platform_name, display_name_template=s.display_name_template,
                  banner=s.banner, grace=s.grace_period, contact_form_url=s.contact_form_url or "",
                  banner_style=s.banner_style or BOX_STYLE,
                  contact_link=None if s.contact_form_url else portal_signer(s).contact_url)
    me, dead = await asyncio.to_thread(workers.start, rt.sessions, now())
    _reaped(dead)
    processor = Processor(rt.sessions, Pipeline(book, voice, signer(s), batch=s.worker_batch,
                                                lease=s.lease, holder=me.holder.id,
                                                cpu_budget=s.cpu_budget_seconds,
                                                notice_rate=s.limits.notices,
                                                review=s.review,
                                                webhooks=s.webhook_url is not None))
    policy = Policy(retry_first=s.retry_first, retry_cap=s.retry_max_interval,
                    retry_for=s.retry_for, batch=s.worker_batch, lease=s.lease)
    transports = _transports(s, policy.connections)
    deliverer = Deliverer(rt.sessions, transports, policy, me)
    retention = Retention(s.retention_body, s.retention_metadata)
    delivery_due = asyncio.Event()

    next_purge = now()
    new_mail = asyncio.Event()

    async def process() -> int:
        nonlocal next_purge
        if now() >= next_purge:
            await asyncio.to_thread(_purge, rt.sessions, retention)
            next_purge = now() + PURGE_EVERY
        done = await asyncio.to_thread(processor.run_once, now())
        if done:
            delivery_due.set()
        return done

    try:
        with rt.doorbell.listening(new_mail) as hearing:
            if not hearing:
                log.warning("worker: every doorbell slot is taken; new mail is found by "
                            "polling every %s s", IDLE_POLL_SECONDS)
            # Processing and delivery overlap: one waits on the database or a socket while
            # the other computes, and a slow smarthost never holds back new mail.
            await asyncio.gather(_loop(rt, "processing", process, new_mail),
                                 _loop(rt, "delivery", lambda: deliverer.run_once(now),
                                       delivery_due),
                                 _heartbeat(rt, me, (new_mail, delivery_due)))
    finally:
        for t in transports:
            await t.close()
        with contextlib.suppress(*DATABASE_UNAVAILABLE):
            await asyncio.to_thread(workers.stop, rt.sessions, me)


async def _heartbeat(rt: Runtime, me: workers.Lessee, wake: tuple[asyncio.Event, ...]) -> None:
    """Say this worker is alive, and take back what dead ones held, every few seconds."""
    while not rt.stopping.is_set():
        await _sleep_until(rt.stopping, workers.HEARTBEAT.total_seconds())
        try:
            dead = await asyncio.to_thread(workers.heartbeat, rt.sessions, me, now())
        except DATABASE_UNAVAILABLE:
            log.warning("worker: database unavailable for the heartbeat")
            continue
        except Exception:  # a missed beat, never the process (see _loop)
            log.exception("worker: the heartbeat raised")
            ERRORS.labels(stage="heartbeat").inc()
            continue
        if dead:
            _reaped(dead)
            for event in wake:
                event.set()


def _reaped(dead: list[str]) -> None:
    if dead:
        log.warning("worker: took back the leases of dead workers", extra={"workers": dead})


async def _loop(rt: Runtime, name: str, step: Callable[[], Awaitable[int]],
                wake: asyncio.Event) -> None:
    """Run ``step`` until stopped; when it found nothing to do, sleep until woken or polled.

    Each runner parks a message that raises and goes on; an error that escapes a round
    anyway (a bug outside any one message's work) costs that round, never the process: in
    ``serve`` the listener and the API run on the same loop."""
    while not rt.stopping.is_set():
        wake.clear()
        try:
            busy = await step()
        except DATABASE_UNAVAILABLE:
            # What this round had leased comes back when the lease runs out.
            log.exception("worker: database unavailable, retrying in %s s",
                          DATABASE_RETRY_SECONDS)
            await _sleep_until(rt.stopping, DATABASE_RETRY_SECONDS)
            continue
        except Exception:
            log.exception("worker: a %s round raised, retrying in %s s", name,
                          DATABASE_RETRY_SECONDS)
            ERRORS.labels(stage=name).inc()
            await _sleep_until(rt.stopping, DATABASE_RETRY_SECONDS)
            continue
        if not busy:
            await _sleep_until(wake, IDLE_POLL_SECONDS)


def _purge(sessions: sessionmaker[Session], retention: Retention) -> None:
    """Apply the retention settings; several workers may run it at once harmlessly."""
    with sessions() as s, s.begin():
        purged = purge(s, retention, now())
    if purged.bodies or purged.records:
        log.info("retention", extra={"bodies": purged.bodies, "records": purged.records})


async def _sleep_until(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def portal_signer(s: Settings, salt: str = PORTAL_SALT) -> Signer:
    return Signer(stored_secret(s.portal_secret, s.data_dir / "portal-secret"),
                  s.portal_session_lifetime, portal_url(s), salt)


def portal_url(s: Settings) -> str:
    return s.portal_url or f"http://{s.http_listen}"


def portal_context(rt: Runtime) -> PortalContext:
    s = rt.settings
    return PortalContext(
        sessions=rt.sessions, book=address_book(s), signer=portal_signer(s),
        base_url=portal_url(s), link_lifetime=s.portal_link_lifetime,
        grace=s.grace_period, answer_within=timedelta(days=s.cancellation_answer_days),
        platform_name=s.platform_name, sign=signer(s), webhooks=s.webhook_url is not None)


def care_context(rt: Runtime) -> CareContext:
    s = rt.settings
    return CareContext(sessions=rt.sessions, book=address_book(s),
                       signer=portal_signer(s, CARE_SALT),
                       base_url=portal_url(s), link_lifetime=s.portal_link_lifetime,
                       platform_name=s.platform_name,
                       captured=s.capture_dir if s.smarthost is None else None)


async def run_web(rt: Runtime) -> None:
    s = rt.settings
    app = create_app(ApiContext(rt.sessions, address_book(s), api_token(s), s.grace_period,
                                s.booking_horizon), portal_context(rt), care_context(rt))
    server = uvicorn.Server(uvicorn.Config(app, host=s.http_listen.host, port=s.http_listen.port,
                                           log_level="warning", lifespan="off"))
    # uvicorn captures SIGTERM/SIGINT while it serves and raises them again once it has
    # stopped, which then reaches run()'s handler and stops the other roles.
    task = asyncio.create_task(server.serve())
    log.info("HTTP listening on %s", s.http_listen)
    await rt.stopping.wait()
    server.should_exit = True
    await task


async def run_webhooks(rt: Runtime) -> None:
    """Send the marketplace its events, with the worker (nothing to do without a URL)."""
    s = rt.settings
    if s.webhook_url is None:
        return
    sender = Sender(rt.sessions, s.webhook_url,
                    stored_secret(s.webhook_secret, s.data_dir / "webhook-secret"))
    try:
        await _loop(rt, "webhooks", lambda: sender.run_once(now), asyncio.Event())
    finally:
        await sender.close()


ROLES: dict[str, tuple[Callable[[Runtime], Awaitable[None]], ...]] = {
    "serve": (run_smtp, run_worker, run_web, run_webhooks),
    "smtp": (run_smtp,),
    "worker": (run_worker, run_webhooks),
    "web": (run_web,),
}


async def run(settings: Settings, role: str) -> None:
    return_large_blocks()
    rt = open_runtime(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.stopping.set)
    await asyncio.gather(*(part(rt) for part in ROLES[role]))
