"""The supplier portal over HTTP, against ``mailveil serve`` on loopback (both databases):
one-time links, sessions, CSRF, the bookings list, a booking's thread, cancellation."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from html import unescape

import httpx
import pytest

from mailveil.store import portal as store
from mailveil.store.db import make_engine, session_factory
from tests.conftest import Mailveil
from tests.support.client import CUSTOMER, SUPPLIER, mail, register, send
from tests.support.portal import (
    ATTACHMENT,
    base,
    conversation,
    csrf,
    link_in,
    mint,
    sign_in,
    text_of,
    use_link,
    wait_for_mail,
)
from tests.support.sink import Sink


def test_a_minted_link_signs_in_once(mailveil: Mailveil) -> None:
    register(mailveil)
    before = datetime.now(UTC)
    link = mint(mailveil)
    expires = datetime.fromisoformat(link["expires_at"])
    assert timedelta(minutes=14) < expires - before <= timedelta(minutes=15, seconds=5)
    assert link["url"].startswith(f"{base(mailveil)}/portal/link/")
    with httpx.Client(timeout=10) as first:
        signed = use_link(first, link["url"])
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/portal" in cookie
        assert first.get(f"{base(mailveil)}/portal/bookings").status_code == 200
        # Replayed, from the same browser or another: spent.
        assert first.get(link["url"]).status_code == 410
    with httpx.Client(timeout=10) as second:
        page = second.get(link["url"])
        assert page.status_code == 410
        replay = second.post(link["url"], data={"csrf": csrf(page.text)})
        assert replay.status_code == 410
        assert second.get(f"{base(mailveil)}/portal/bookings").status_code == 303


def test_the_api_mints_links_only_for_known_suppliers_with_the_token(
        mailveil: Mailveil) -> None:
    assert httpx.post(f"{mailveil.api}/suppliers/nobody/portal-link",
                      headers=mailveil.headers).status_code == 404
    assert httpx.post(f"{mailveil.api}/suppliers/sup-1/portal-link").status_code == 401


def test_an_expired_link_does_not_sign_in(mailveil: Mailveil, database_url: str) -> None:
    register(mailveil)
    token, now = secrets.token_urlsafe(32), datetime.now(UTC)
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        store.add_link(s, supplier_id="sup-1", token=token, now=now - timedelta(minutes=20),
                       expires_at=now - timedelta(minutes=5))
    engine.dispose()
    url = f"{base(mailveil)}/portal/link/{token}"
    with httpx.Client(timeout=10) as client:
        page = client.get(url)
        assert page.status_code == 410
        assert client.post(url, data={"csrf": csrf(page.text)}).status_code == 410
        assert client.get(f"{base(mailveil)}/portal/bookings").status_code == 303


def test_the_sign_in_form_mails_a_link_through_the_outbox(mailveil: Mailveil,
                                                          sink: Sink) -> None:
    register(mailveil)
    with httpx.Client(base_url=base(mailveil), timeout=10) as client:
        form = client.get("/portal/sign-in")
        unknown = client.post("/portal/sign-in", data={"csrf": csrf(form.text),
                                                       "email": "nobody@example.org"})
        known = client.post("/portal/sign-in", data={"csrf": csrf(form.text),
                                                     "email": SUPPLIER.upper()})
        # The same answer either way: the form tells nobody who has an account.
        assert unknown.status_code == known.status_code == 200
        assert unknown.text == known.text
    [letter] = wait_for_mail(sink, SUPPLIER)
    assert letter["From"].addresses[0].addr_spec == "no-reply@reply.example.com"
    assert "DKIM-Signature" in letter
    assert letter["Subject"] == "Votre lien de connexion à Tourly"  # the supplier's French
    assert [m for m in sink.messages if m.mail_from] == []  # null sender: nothing bounces back
    assert sink.to("nobody@example.org") == []
    with httpx.Client(timeout=10) as client:
        assert use_link(client, link_in(letter)).status_code == 303
        assert client.get(f"{base(mailveil)}/portal/bookings").status_code == 200


def test_the_sign_in_form_mails_few_links(mailveil: Mailveil, sink: Sink,
                                          database_url: str) -> None:
    register(mailveil)
    with httpx.Client(base_url=base(mailveil), timeout=10) as client:
        token = csrf(client.get("/portal/sign-in").text)
        for _ in range(5):
            r = client.post("/portal/sign-in", data={"csrf": token, "email": SUPPLIER})
            assert r.status_code == 200
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        assert store.links_since(s, "sup-1", datetime.now(UTC) - timedelta(hours=1)) == 3
    engine.dispose()
    assert len(wait_for_mail(sink, SUPPLIER, 3)) == 3


def speak(client: httpx.Client, language: str) -> None:
    token = csrf(client.get("/portal/bookings").text)
    assert client.post("/portal/language", data={"csrf": token, "language": language}
                       ).status_code == 303


def _references(page: str) -> list[str]:
    return re.findall(r'<a href="/portal/bookings/([^"?]+)">', page)


def test_bookings_are_listed_searched_and_paged(mailveil: Mailveil) -> None:
    for i in range(120):
        register(mailveil, f"GYG-{i:03d}", days_from_now=1 + i / 10)
    register(mailveil, "OTHER-1", supplier_id="sup-2", supplier="ops@other.example")
    seen: list[str] = []
    with sign_in(mailveil) as client:
        url: str | None = "/portal/bookings"
        while url is not None:
            page = client.get(unescape(url))
            assert page.status_code == 200
            seen += _references(page.text)
            found = re.search(r'<a href="([^"]+)" rel="next">', page.text)
            url = found.group(1) if found else None
        assert seen == [f"GYG-{i:03d}" for i in reversed(range(120))]  # latest activity first
        page = client.get("/portal/bookings", params={"q": "GYG-05"})
        assert _references(page.text) == [f"GYG-05{i}" for i in reversed(range(10))]
        assert _references(client.get("/portal/bookings", params={"q": "OTHER"}).text) == []
        assert _references(client.get("/portal/bookings", params={"q": "%"}).text) == []
        row = page.text[page.text.index("GYG-059"):]
        assert "Ann Lee" in row[:1500] and "Ouverte" in row[:1500]  # the supplier's French


def test_a_booking_shows_the_thread_as_the_other_side_saw_it(mailveil: Mailveil,
                                                              sink: Sink) -> None:
    b = conversation(mailveil)
    with sign_in(mailveil) as client:
        speak(client, "en")
        listing = client.get("/portal/bookings").text
        row = listing[listing.index(">GYG-1001<"):]
        assert re.search(r'data-label="Messages">3<', row[:2000])
        page = client.get("/portal/bookings/GYG-1001")
        assert page.status_code == 200
        html = page.text
        assert b["customer_relay_address"] in html
        assert CUSTOMER not in html  # never the customer's real address
        assert html.index("Where do we meet?") < html.index("Reminder") < html.index("Your map")
        assert "Refused" in html and "it was addressed to several customers" in html
        assert html.count("state-delivered") == 2 and html.count("state-refused") == 1
        link = re.search(r'href="(/portal/bookings/GYG-1001/messages/\d+/attachments/\d+)"',
                         html)
        assert link is not None
        download = client.get(link.group(1))
        assert download.status_code == 200
        assert download.content == ATTACHMENT
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["content-disposition"].startswith("attachment;")


def test_a_refused_message_of_the_customer_shows_nothing_of_it(mailveil: Mailveil,
                                                                 sink: Sink) -> None:
    b = register(mailveil, days_from_now=-30)  # closed: the customer's mail is refused
    send(mailveil, mail(CUSTOMER, b["supplier_relay_address"], f"From {CUSTOMER}",
                        f"Write to me at {CUSTOMER}\n"), CUSTOMER, [b["supplier_relay_address"]])
    wait_for_mail(sink, CUSTOMER)  # the customer's notice: the message is decided
    with sign_in(mailveil) as client:
        speak(client, "en")
        html = client.get("/portal/bookings/GYG-1001").text
    assert "the conversation was closed" in html and "did not reach you" in html
    assert CUSTOMER not in html


PAGES = ["/portal/bookings", "/portal/bookings/GYG-1001",
         "/portal/bookings/GYG-1001/messages/1/attachments/1"]
FORMS = [("/portal/sign-out", {}), ("/portal/language", {"language": "th"}),
         ("/portal/bookings/GYG-1001/cancellation", {"reason": "Ill"}),
         ("/portal/sign-in", {"email": SUPPLIER})]


def test_every_page_needs_a_session_and_a_forged_cookie_is_none(mailveil: Mailveil) -> None:
    register(mailveil)
    with httpx.Client(base_url=base(mailveil), timeout=10) as anonymous:
        for path in PAGES:
            r = anonymous.get(path)
            assert (r.status_code, r.headers["location"]) == (303, "/portal/sign-in"), path
    with sign_in(mailveil) as client:
        cookie = client.cookies["mailveil_portal"]
        payload, _, signature = cookie.rpartition(".")
        forged = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
        with httpx.Client(base_url=base(mailveil), timeout=10,
                          cookies={"mailveil_portal": forged}) as forger:
            for path in PAGES:
                assert forger.get(path).status_code == 303, path


def test_another_suppliers_booking_is_a_404_like_a_missing_one(mailveil: Mailveil,
                                                               sink: Sink) -> None:
    conversation(mailveil)
    register(mailveil, "OTHER-1", supplier_id="sup-2", supplier="ops@other.example")
    with sign_in(mailveil, "sup-2") as intruder:
        for path in PAGES[1:]:
            theirs = intruder.get(path)
            missing = intruder.get(path.replace("GYG-1001", "NOPE-1"))
            assert theirs.status_code == missing.status_code == 404, path
            assert theirs.text.replace("GYG-1001", "NOPE-1") == missing.text
        token = csrf(intruder.get("/portal/bookings").text)
        r = intruder.post("/portal/bookings/GYG-1001/cancellation",
                          data={"csrf": token, "reason": "Ill"})
        assert r.status_code == 404


@pytest.mark.parametrize(("path", "fields"), FORMS)
def test_every_form_needs_its_csrf_token(mailveil: Mailveil, path: str,
                                         fields: dict[str, str]) -> None:
    register(mailveil)
    with sign_in(mailveil) as client:
        assert client.post(path, data=fields).status_code == 403
        assert client.post(path, data={**fields, "csrf": "0" * 64}).status_code == 403
        # A token of another browser's session is worth nothing here either.
        with sign_in(mailveil) as other:
            stolen = csrf(other.get("/portal/bookings").text)
        assert client.post(path, data={**fields, "csrf": stolen}).status_code == 403
        assert client.get("/portal/bookings").status_code == 200  # still signed in


def test_sign_out_ends_the_session(mailveil: Mailveil) -> None:
    register(mailveil)
    with sign_in(mailveil) as client:
        old = client.cookies["mailveil_portal"]
        token = csrf(client.get("/portal/bookings").text)
        assert client.post("/portal/sign-out", data={"csrf": token}).status_code == 303
        assert client.get("/portal/bookings").status_code == 303
    with httpx.Client(base_url=base(mailveil), timeout=10,
                      cookies={"mailveil_portal": old}) as replay:
        # A stateless cookie copied before sign-out still works until it expires: the
        # browser that signed out has dropped it. (Documented in README.)
        assert replay.get("/portal/bookings").status_code == 200


def test_the_language_switcher_and_the_time_zone(mailveil: Mailveil) -> None:
    register(mailveil)
    with sign_in(mailveil) as client:
        page = client.get("/portal/bookings")
        assert '<html lang="fr"' in page.text  # the supplier's account locale
        r = client.post("/portal/language", data={"csrf": csrf(page.text), "language": "th",
                                                  "back": "/portal/bookings"})
        assert (r.status_code, r.headers["location"]) == (303, "/portal/bookings")
        client.cookies.set("mailveil_tz", "Asia/Bangkok", path="/portal")
        thai = client.get("/portal/bookings").text
        assert '<html lang="th"' in thai and "การจอง" in thai and "Asia/Bangkok" in thai
        r = client.post("/portal/language", data={"csrf": csrf(thai), "language": "en",
                                                  "back": "//evil.example/"})
        assert r.headers["location"] == "/portal/"  # never an open redirect


@pytest.mark.parametrize(("language", "heading"), [
    ("en", "Booking GYG-1001"), ("fr", "R\u00e9servation GYG-1001"), ("th", "การจอง GYG-1001")])
def test_every_page_renders_in_each_language(mailveil: Mailveil, language: str,
                                             heading: str) -> None:
    register(mailveil)
    with sign_in(mailveil) as client:
        speak(client, language)
        for path in ("/portal/sign-in", "/portal/bookings", "/portal/bookings/GYG-1001",
                     "/portal/bookings/NOPE"):
            page = client.get(path)
            assert page.status_code in (200, 404) and f'<html lang="{language}"' in page.text
        assert f"<h1>{heading}</h1>" in client.get("/portal/bookings/GYG-1001").text


def test_a_cancellation_is_asked_and_only_a_confirmation_cancels(mailveil: Mailveil,
                                                                 sink: Sink) -> None:
    register(mailveil, locale="th")
    with sign_in(mailveil) as client:
        page = client.get("/portal/bookings/GYG-1001")
        r = client.post("/portal/bookings/GYG-1001/cancellation",
                        data={"csrf": csrf(page.text), "reason": "   "})
        assert r.status_code == 422
        r = client.post("/portal/bookings/GYG-1001/cancellation",
                        data={"csrf": csrf(page.text), "reason": "Family emergency"})
        assert r.status_code == 303
        waiting = client.get("/portal/bookings/GYG-1001").text
        assert 'name="reason"' not in waiting  # one request at a time
        again = client.post("/portal/bookings/GYG-1001/cancellation",
                            data={"csrf": csrf(waiting), "reason": "Again"})
        assert again.status_code == 422
    [letter] = wait_for_mail(sink, CUSTOMER)
    assert "GYG-1001" in letter["Subject"] and "ยกเลิก" in letter["Subject"]  # Thai
    assert "Family emergency" in text_of(letter)
    booking = httpx.get(f"{mailveil.api}/bookings/GYG-1001", headers=mailveil.headers).json()
    assert booking["status"] == "confirmed"  # the request alone cancels nothing
    url = link_in(letter)
    with httpx.Client(timeout=10) as customer:
        question = customer.get(url)
        assert question.status_code == 200 and '<html lang="th"' in question.text
        r = customer.post(url, data={"csrf": csrf(question.text), "answer": "confirm"})
        assert r.status_code == 303
        # Answered once: a second answer changes nothing.
        customer.post(url, data={"csrf": csrf(question.text), "answer": "decline"})
    booking = httpx.get(f"{mailveil.api}/bookings/GYG-1001", headers=mailveil.headers).json()
    assert booking["status"] == "cancelled"
    with sign_in(mailveil) as client:  # the supplier's French
        page = client.get("/portal/bookings/GYG-1001")
        assert "Le client a confirm\u00e9 l\u2019annulation." in page.text


def test_a_declined_cancellation_keeps_the_booking(mailveil: Mailveil, sink: Sink) -> None:
    register(mailveil)
    with sign_in(mailveil) as client:
        page = client.get("/portal/bookings/GYG-1001")
        client.post("/portal/bookings/GYG-1001/cancellation",
                    data={"csrf": csrf(page.text), "reason": "Changed plans"})
    url = link_in(wait_for_mail(sink, CUSTOMER)[0])
    with httpx.Client(timeout=10) as customer:
        question = customer.get(url)
        assert customer.post(url, data={"answer": "decline"}).status_code == 403  # no CSRF
        customer.post(url, data={"csrf": csrf(question.text), "answer": "decline"})
        customer.post(url, data={"csrf": csrf(question.text), "answer": "confirm"})
    booking = httpx.get(f"{mailveil.api}/bookings/GYG-1001", headers=mailveil.headers).json()
    assert booking["status"] == "confirmed"
    assert httpx.get(url.rsplit("/", 1)[0] + "/nope").status_code == 404
