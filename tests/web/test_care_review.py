"""Held review requests in the console, against ``mailveil serve`` with
``MAILVEIL_REVIEW_ACTION=hold`` on both databases: only a signed-in agent with the form's
CSRF token and a note may release or refuse one, once; a released message reaches the
customer as composed, a refused one never does and its sender is told in French (the
supplier's language); both decisions are in the audit log."""

from __future__ import annotations

import re
import secrets
import time

import httpx
import pytest

from mailveil.store import care as store
from mailveil.store.db import make_engine, session_factory
from tests.conftest import Mailveil
from tests.support.care import AGENT, agent_client
from tests.support.client import CUSTOMER, SUPPLIER, mail, register, send
from tests.support.portal import base, csrf, sign_in, text_of, wait_for_mail
from tests.support.sink import Sink


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"MAILVEIL_REVIEW_ACTION": "hold"}


def held_items(client: httpx.Client, count: int, timeout: float = 20) -> dict[str, int]:
    """The queue's held review requests by subject, once ``count`` are there."""
    deadline = time.monotonic() + timeout
    while True:
        page = client.get("/care/queue")
        assert page.status_code == 200
        found = dict(re.findall(r'id="review-(\d+)" data-state="held">.*?<p>Subject: ([^<]*)</p>',
                                page.text, re.DOTALL))
        if len(found) >= count:
            return {subject: int(item) for item, subject in found.items()}
        assert time.monotonic() < deadline, page.text
        time.sleep(0.1)


def test_a_held_review_request_is_released_or_refused_by_an_agent_only(
        mailveil: Mailveil, sink: Sink, database_url: str) -> None:
    b = register(mailveil)
    to_customer = b["customer_relay_address"]
    for subject, body in (("Thanks A", "Please leave us a review on Tripadvisor!\n"),
                          ("Thanks B", "Merci ! Laissez-nous un avis.\n")):
        send(mailveil, mail(SUPPLIER, to_customer, subject, body), SUPPLIER, [to_customer])
    with agent_client(mailveil) as agent:
        items = held_items(agent, 2)
        token = csrf(agent.get("/care/queue").text)
    release = f"/care/queue/review/{items['Thanks A']}/release"
    refuse = f"/care/queue/review/{items['Thanks B']}/refuse"

    with sign_in(mailveil) as supplier:
        portal_cookie = supplier.cookies.get("mailveil_portal") or ""
    strangers = {"no session": {}, "a supplier's session": {"mailveil_care": portal_cookie},
                 "a forged cookie": {"mailveil_care": portal_cookie.rsplit(".", 1)[0] + "."
                                     + secrets.token_urlsafe(27)}}
    for who, cookies in strangers.items():
        with httpx.Client(base_url=base(mailveil), timeout=10, cookies=cookies) as client:
            for url in (release, refuse):
                r = client.post(url, data={"csrf": token, "note": "x"})
                assert r.status_code == 401, (who, url, r.status_code)

    with agent_client(mailveil) as agent:
        token = csrf(agent.get("/care/queue").text)
        for url in (release, refuse):
            assert agent.post(url, data={"note": "x"}).status_code == 403
            assert agent.post(url, data={"csrf": "0" * 64, "note": "x"}).status_code == 403
            assert agent.post(url, data={"csrf": token, "note": " "}).status_code == 422
        # A held message is decided, not closed.
        close = f"/care/queue/review/{items['Thanks A']}/close"
        assert agent.post(close, data={"csrf": token, "note": "x"}).status_code == 404
        assert agent.post(f"/care/queue/review/{items['Thanks A']}/delete",
                          data={"csrf": token, "note": "x"}).status_code == 422
        assert sink.to(CUSTOMER) == []  # nothing left while held

        assert agent.post(release, data={"csrf": token, "note": "asks for a platform review"}
                          ).status_code == 303
        assert agent.post(refuse, data={"csrf": token, "note": "Laissez-nous un avis"}
                          ).status_code == 303
        for url in (release, refuse):  # decided once
            assert agent.post(url, data={"csrf": token, "note": "again"}).status_code == 404
        assert held_items(agent, 0) == {}

    [delivered] = wait_for_mail(sink, CUSTOMER)
    assert delivered["Subject"] == "Thanks A" and SUPPLIER not in delivered.as_string()
    [notice] = wait_for_mail(sink, SUPPLIER)
    assert "Thanks B" in notice["Subject"]
    assert "Demande d\u2019avis sur un autre site" in text_of(notice)
    assert len(sink.to(CUSTOMER)) == 1  # the refused one never went

    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        audit = [(line.agent, line.action, line.subject) for line in store.audit_log(s)]
    engine.dispose()
    actions = {action: subject for who, action, subject in audit if who == AGENT}
    assert actions["release"].endswith(": asks for a platform review")
    assert actions["refuse"].startswith(f"review {items['Thanks B']} ")
