"""The event loop of the roles: uvloop by default, asyncio's own a setting away, and mail
goes through either, STARTTLS included (uvloop has its own TLS transport)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl

import pytest
import uvloop

from mailveil.config import ConfigError, from_env
from mailveil.service import loop_factory
from tests.conftest import Mailveil
from tests.support.client import CUSTOMER, SUPPLIER, mail, register
from tests.support.sink import Sink


def test_uvloop_unless_told_otherwise() -> None:
    assert from_env({}).event_loop == "uvloop"
    assert from_env({"MAILVEIL_EVENT_LOOP": "AsyncIO"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="EVENT_LOOP"):
        from_env({"MAILVEIL_EVENT_LOOP": "trio"})


@pytest.mark.parametrize(("name", "kind"), [("uvloop", uvloop.Loop),
                                            ("asyncio", asyncio.SelectorEventLoop)])
def test_loop_factory_makes_the_chosen_loop(name: str, kind: type) -> None:
    loop = loop_factory(from_env({"MAILVEIL_EVENT_LOOP": name}))()
    try:
        assert type(loop) is kind
    finally:
        loop.close()


@pytest.mark.parametrize("extra_env", [{}, {"MAILVEIL_EVENT_LOOP": "asyncio"}],
                         ids=["uvloop", "asyncio"])
def test_mail_over_starttls_on_either_loop(mailveil: Mailveil, sink: Sink,
                                           extra_env: dict[str, str]) -> None:
    expected = "asyncio.unix_events" if extra_env else "uvloop"
    assert f"event loop: {expected}." in mailveil.log.read_text()
    relay = register(mailveil)["supplier_relay_address"]
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as client:
        client.starttls(context=context)
        assert isinstance(client.sock, ssl.SSLSocket) and client.sock.version() == "TLSv1.3"
        client.send_message(mail(CUSTOMER, relay, "over TLS", "Hello\n"),
                            from_addr=CUSTOMER, to_addrs=[relay])
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == (SUPPLIER,)
