"""The care console over HTTP, against ``mailveil serve`` on loopback (both databases):
agents and their links, the audit log, search, a conversation's two versions of each
message, HTML kept inert, the dispute export and its manifest, and who may see what."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mailveil.store import care as store
from mailveil.store import portal as portal_store
from mailveil.store.db import make_engine, session_factory
from mailveil.store.models import CareAuditRow
from mailveil.store.portal import CancellationState
from mailveil.web.care.views import HTML_POLICY
from tests.conftest import Mailveil, mailveil_env
from tests.support.care import (
    AGENT,
    add_agent,
    agent_client,
    care,
    check_export,
    send_hostile_html,
    unzip,
)
from tests.support.client import (
    CUSTOMER,
    SUPPLIER,
    archive_until_delivered,
    mail,
    register,
    send,
)
from tests.support.net import free_port
from tests.support.portal import base, conversation, csrf, sign_in, use_link


def _audit(mv: Mailveil, database_url: str) -> list[tuple[str, str, str]]:
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        lines = [(line.agent, line.action, line.subject) for line in store.audit_log(s)]
    engine.dispose()
    return lines


def test_agents_are_added_listed_and_removed(mailveil: Mailveil, database_url: str) -> None:
    with agent_client(mailveil) as client:
        assert client.get("/care/").status_code == 200
        listed = care(mailveil, "list-agents")
        assert listed.returncode == 0 and AGENT in listed.stdout
        spare = add_agent(mailveil)  # a second link for the same agent
        removed = care(mailveil, "remove-agent", AGENT.upper())
        assert removed.returncode == 0, removed.stderr
        # Removal ends the running session and the links not used yet.
        assert client.get("/care/").status_code == 401
        page = client.get(spare)
        assert page.status_code == 410
    assert AGENT not in care(mailveil, "list-agents").stdout
    assert care(mailveil, "remove-agent", AGENT).returncode == 1
    assert care(mailveil, "add-agent").returncode == 2
    actions = [(who, action) for who, action, _ in reversed(_audit(mailveil, database_url))]
    assert actions == [("(operator)", "add-agent"), (AGENT, "sign-in"),
                       ("(operator)", "add-agent"), ("(operator)", "remove-agent")]


def test_the_audit_log_cannot_be_changed(sessions: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    with sessions() as s, s.begin():
        agent = store.add_agent(s, AGENT, now)
        store.audit(s, agent.id, "export", "GYG-1", now)
    for change in (update(CareAuditRow).values(subject="nothing"), delete(CareAuditRow)):
        with sessions() as s, pytest.raises(DBAPIError, match="append-only"), s.begin():
            s.execute(change)
    with sessions() as s:
        assert [(a.action, a.subject) for a in store.audit_log(s)] == [("export", "GYG-1")]
        assert s.execute(text("SELECT count(*) FROM care_audit")).scalar() == 1


def _found(client: httpx.Client, q: str) -> list[str]:
    page = client.get("/care/", params={"q": q})
    assert page.status_code == 200
    return re.findall(r'<a href="/care/bookings/([^"]+)">', page.text)


def test_search_by_reference_relay_address_real_address_and_message_id(
        mailveil: Mailveil) -> None:
    b = conversation(mailveil)
    entries = archive_until_delivered(mailveil, "GYG-1001")
    delivered = next(o for e in entries for o in e["outbound"] if o["state"] == "delivered")
    with agent_client(mailveil) as client:
        assert _found(client, "GYG-1001") == ["GYG-1001"]
        assert _found(client, b["customer_relay_address"].upper()) == ["GYG-1001"]
        assert _found(client, b["supplier_relay_address"]) == ["GYG-1001"]
        assert sorted(_found(client, CUSTOMER)) == ["GYG-1001"]
        assert sorted(_found(client, SUPPLIER)) == ["GYG-1001", "OTHER-GYG-1001"]
        assert _found(client, "bob@example.org") == ["OTHER-GYG-1001"]
        assert _found(client, delivered["message_id"]) == ["GYG-1001"]
        assert _found(client, delivered["message_id"].strip("<>")) == ["GYG-1001"]
        assert _found(client, "GYG-10") == []
        assert _found(client, "nobody@example.org") == []
        assert client.get("/care/captured").status_code == 404  # a smarthost is set


def test_a_message_is_shown_as_received_and_as_delivered(mailveil: Mailveil) -> None:
    b = conversation(mailveil)
    with agent_client(mailveil) as client:
        page = client.get("/care/bookings/GYG-1001")
        assert page.status_code == 200
        html = unescape(page.text)
        received = html.index("As received")
        delivered = html.index("As delivered", received)
        # The original names the customer's real address; the copy the relay address.
        assert CUSTOMER in html[received:delivered]
        assert b["customer_relay_address"] in html[delivered:]
        assert "Hello, where do we meet?" in html
        assert "Delivery attempts" in html and "delivered" in html
        assert "refused" in html.lower()  # the supplier's message to two bookings
        assert client.get("/care/bookings/NOPE").status_code == 404


def test_an_html_message_stays_inert(mailveil: Mailveil) -> None:
    b = conversation(mailveil)
    send_hostile_html(mailveil, b, 9)
    archive_until_delivered(mailveil, "GYG-1001")
    with agent_client(mailveil) as client:
        page = client.get("/care/bookings/GYG-1001")
        assert "<script>document.title" not in page.text
        assert "<form action=\"http://127.0.0.1:9" not in page.text
        assert "img src=\"http://127.0.0.1:9" not in page.text
        frames = re.findall(r'<iframe class="html" sandbox="" [^>]*src="([^"]+)"', page.text)
        assert len(frames) == 2  # as received and as delivered
        assert "<iframe" not in page.text.replace('<iframe class="html" sandbox=""', "")
        for url in frames:
            part = client.get(unescape(url))
            assert part.status_code == 200
            assert part.headers["content-security-policy"] == HTML_POLICY
            assert "Hello from the HTML part" in part.text
        # The console itself allows no inline script and no remote source.
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_dispute_export_matches_the_archive(mailveil: Mailveil,
                                                database_url: str) -> None:
    conversation(mailveil)
    entries = archive_until_delivered(mailveil, "GYG-1001")
    with agent_client(mailveil) as client:
        page = client.get("/care/bookings/GYG-1001")
        r = client.post("/care/bookings/GYG-1001/export", data={"csrf": csrf(page.text)})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert 'filename="dispute-GYG-1001.zip"' in r.headers["content-disposition"]
    files = unzip(r.content)
    check_export(files, entries)
    transcript = unescape(files["transcript.html"].decode())
    assert "Hello, where do we meet?" in transcript and "sha256sum -c" in transcript
    api = httpx.get(f"{mailveil.api}/bookings/GYG-1001/export", headers=mailveil.headers)
    assert api.status_code == 200
    check_export(unzip(api.content), entries)
    for e in entries:
        raw = httpx.get(f"{mailveil.api}/bookings/GYG-1001/messages/{e['inbound_id']}/raw",
                        headers=mailveil.headers)
        assert raw.status_code == 200 and raw.headers["content-type"] == "message/rfc822"
        assert hashlib.sha256(raw.content).hexdigest() == e["sha256"]
    # The customer's first message was for GYG-1001 only: not reachable through another.
    assert httpx.get(f"{mailveil.api}/bookings/OTHER-GYG-1001/messages/"
                     f"{entries[0]['inbound_id']}/raw", headers=mailveil.headers
                     ).status_code == 404
    assert httpx.get(f"{mailveil.api}/bookings/GYG-1001/export").status_code == 401
    assert ("(operator)", "add-agent", AGENT) in _audit(mailveil, database_url)
    assert (AGENT, "export", "GYG-1001") in _audit(mailveil, database_url)


def _console_urls(entries: list[dict[str, object]]) -> list[tuple[str, str]]:
    inbound = entries[0]["inbound_id"]
    return [("GET", "/care/"), ("GET", "/care/?q=GYG-1001"), ("GET", "/care/audit"),
            ("GET", "/care/bookings/GYG-1001"),
            ("GET", f"/care/bookings/GYG-1001/received/{inbound}/html"),
            ("GET", "/care/queue"), ("POST", "/care/queue/ticket/1/close"),
            ("POST", "/care/queue/review/1/release"), ("POST", "/care/queue/review/1/refuse"),
            ("GET", "/care/captured"), ("GET", "/care/captured/x"),
            ("POST", "/care/bookings/GYG-1001/export"), ("POST", "/care/sign-out")]


def test_who_may_use_the_console(mailveil: Mailveil, database_url: str) -> None:
    conversation(mailveil)
    entries = archive_until_delivered(mailveil, "GYG-1001")
    urls = _console_urls(entries)
    with sign_in(mailveil) as supplier:
        portal_cookie = supplier.cookies.get("mailveil_portal")
        assert portal_cookie
    forged = portal_cookie.rsplit(".", 1)[0] + "." + secrets.token_urlsafe(27)
    strangers = {
        "no session": {},
        "a supplier's session": {"mailveil_care": portal_cookie, "mailveil_portal": portal_cookie},
        "a forged cookie": {"mailveil_care": forged},
        "garbage": {"mailveil_care": "x" * 40},
    }
    for who, cookies in strangers.items():
        with httpx.Client(base_url=base(mailveil), timeout=10, cookies=cookies) as client:
            for method, url in urls:
                r = client.request(method, url, data={"csrf": "0" * 64, "note": "x"}
                                   if method == "POST" else None)
                assert r.status_code == 401, (who, method, url, r.status_code)
    # An expired link and a replayed one sign nobody in.
    now = datetime.now(UTC)
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        agent = store.add_agent(s, "late@care.tourly.example", now)
        token = secrets.token_urlsafe(32)
        store.add_link(s, agent_id=agent.id, token=token, now=now - timedelta(minutes=20),
                       expires_at=now - timedelta(minutes=5))
    engine.dispose()
    link = add_agent(mailveil)
    with httpx.Client(base_url=base(mailveil), timeout=10) as first:
        assert use_link(first, link).status_code == 303
    for url in (f"/care/link/{token}", link):
        with httpx.Client(base_url=base(mailveil), timeout=10) as client:
            assert client.get(url).status_code == 410
            # This browser's CSRF token, from a page that shows one.
            token_page = client.get(add_agent(mailveil, "other@care.tourly.example"))
            assert client.post(url, data={"csrf": csrf(token_page.text)}).status_code == 410
            assert client.get("/care/").status_code == 401
    # A signed-in agent without the CSRF token changes nothing.
    with agent_client(mailveil) as client:
        for method, url in urls:
            if method == "POST":
                assert client.post(url).status_code == 403
                assert client.post(url, data={"csrf": "0" * 64, "note": "x"}).status_code == 403
        assert client.get("/care/").status_code == 200  # still signed in
    # A console cookie is no portal session either.
    with agent_client(mailveil) as client:
        care_cookie = client.cookies.get("mailveil_care")
    with httpx.Client(base_url=base(mailveil), timeout=10,
                      cookies={"mailveil_portal": care_cookie or ""}) as client:
        assert client.get("/portal/bookings").status_code == 303


def _open_items(client: httpx.Client) -> list[str]:
    page = client.get("/care/queue")
    assert page.status_code == 200
    return re.findall(r'<article class="queue-item" id="([a-z]+-\d+)"', page.text)


def test_queue_items_are_closed_with_a_note(mailveil: Mailveil, database_url: str) -> None:
    conversation(mailveil)
    now = datetime.now(UTC)
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        booking = portal_store.booking_by_reference(s, "GYG-1001")
        assert booking is not None
        ticket = portal_store.add_ticket(s, booking_id=booking.id, role="customer",
                                         message="The guide never came", now=now)
        requests = {}
        for name, answer_by in (("declined", now + timedelta(days=1)),
                                ("late", now - timedelta(minutes=1)),
                                ("waiting", now + timedelta(days=1)),
                                ("confirmed", now + timedelta(days=1))):
            requests[name] = portal_store.add_cancellation(
                s, booking_id=booking.id, reason=f"reason {name}", token=name, now=now,
                answer_by=answer_by).id
        assert portal_store.answer_cancellation(s, "declined", CancellationState.DECLINED, now)
        assert portal_store.answer_cancellation(s, "confirmed", CancellationState.CONFIRMED,
                                                now)
    engine.dispose()
    with agent_client(mailveil) as client:
        assert _open_items(client) == [f"ticket-{ticket.id}",
                                       f"cancellation-{requests['declined']}",
                                       f"cancellation-{requests['late']}"]
        page = client.get("/care/queue")
        assert "The guide never came" in page.text and "unanswered" in page.text
        token = csrf(page.text)
        url = f"/care/queue/ticket/{ticket.id}/close"
        assert client.post(url, data={"csrf": token, "note": "  "}).status_code == 422
        assert client.post(url, data={"csrf": token, "note": "Refunded, guide warned"}
                           ).status_code == 303
        assert client.post(url, data={"csrf": token, "note": "again"}).status_code == 404
        waiting = f"/care/queue/cancellation/{requests['waiting']}/close"
        assert client.post(waiting, data={"csrf": token, "note": "x"}).status_code == 404
        assert client.post("/care/queue/other/1/close", data={"csrf": token, "note": "x"}
                           ).status_code == 422
        assert _open_items(client) == [f"cancellation-{requests['declined']}",
                                       f"cancellation-{requests['late']}"]
    assert (AGENT, "close", f"ticket {ticket.id}: Refunded, guide warned") in _audit(
        mailveil, database_url)


@pytest.fixture
def capturing(database_url: str, tmp_path: Path) -> Iterator[Mailveil]:
    """``mailveil serve`` without a smarthost: it captures what it sends."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    smtp_port, http_port = free_port(), free_port()
    token = "test-token-" + secrets.token_hex(8)
    mv = Mailveil(mailveil_env(database_url, data_dir, smtp_port, http_port, token, None),
                  data_dir, smtp_port, http_port, token)
    mv.start()
    try:
        yield mv
    finally:
        mv.stop()
        print(mv.log.read_text(errors="replace")[-8000:])


def test_captured_mail_is_browsable_without_a_smarthost(capturing: Mailveil) -> None:
    b = register(capturing)
    send(capturing, mail(CUSTOMER, b["supplier_relay_address"], "Pick-up time?",
                         "When do you pick us up?\n"), CUSTOMER, [b["supplier_relay_address"]])
    with agent_client(capturing) as client:
        deadline = time.monotonic() + 30
        while "Pick-up time?" not in (listing := client.get("/care/captured")).text:
            assert time.monotonic() < deadline, listing.text
            time.sleep(0.1)
        assert f"to=&lt;{SUPPLIER}&gt;" in listing.text
        [key] = re.findall(r'<a href="/care/captured/([^"]+)">Pick-up time\?</a>', listing.text)
        one = client.get(f"/care/captured/{key}")
        assert one.status_code == 200
        assert "When do you pick us up?" in one.text
        assert b["customer_relay_address"] in unescape(one.text)
        assert client.get("/care/captured/nope").status_code == 404
        assert client.get("/care/captured/..%2F..%2Fportal-secret").status_code == 404
