"""The marketplace API through FastAPI's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from mailveil.config import Settings
from mailveil.domain.addresses import AddressBook
from mailveil.store.db import make_engine, migrate, session_factory
from mailveil.web.api import ApiContext, create_app

TOKEN = "secret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HORIZON = Settings().booking_horizon
BANGKOK = timezone(timedelta(hours=7))
START = (datetime.now(BANGKOK) + timedelta(days=90)).replace(hour=9, minute=0, second=0,
                                                             microsecond=0)
END = START + timedelta(hours=3)
BOOKING = {
    "reference": "GYG-77", "supplier_id": "sup-1",
    "customer": {"name": "Somchai", "email": "somchai@example.org", "locale": "th"},
    "activity_start": START.isoformat(), "activity_end": END.isoformat(),
}


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    migrate(database_url)
    engine = make_engine(database_url)
    app = create_app(ApiContext(session_factory(engine), AddressBook("reply.example.com"), TOKEN,
                                timedelta(days=7), HORIZON))
    with TestClient(app) as c:
        r = c.post("/api/v1/suppliers", headers=AUTH, json={
            "id": "sup-1", "name": "Sunny Tours", "email": "ops@sunny.example", "locale": "fr"})
        assert r.status_code == 201, r.text
        yield c
    engine.dispose()


def test_booking_gets_two_relay_addresses(client: TestClient) -> None:
    r = client.post("/api/v1/bookings", headers=AUTH, json=BOOKING)
    assert r.status_code == 201, r.text
    body = r.json()
    assert re.fullmatch(r"customer-[0-9a-f]{12}@reply\.example\.com",
                        body["customer_relay_address"])
    assert re.fullmatch(r"local-partner-[0-9a-f]{12}@reply\.example\.com",
                        body["supplier_relay_address"])
    assert datetime.fromisoformat(body["open_until"]) == END + timedelta(days=7)
    assert body["is_open"] is True
    again = client.post("/api/v1/bookings", headers=AUTH, json=BOOKING)
    assert again.status_code == 200
    assert again.json()["customer_relay_address"] == body["customer_relay_address"]
    assert client.get("/api/v1/bookings/GYG-77", headers=AUTH).json() == again.json()


def test_patch_moves_window_and_cancels(client: TestClient) -> None:
    client.post("/api/v1/bookings", headers=AUTH, json=BOOKING)
    later = END + timedelta(days=31)
    r = client.patch("/api/v1/bookings/GYG-77", headers=AUTH, json={
        "activity_start": (later - timedelta(hours=3)).isoformat(),
        "activity_end": later.isoformat()})
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["open_until"]) == later + timedelta(days=7)
    r = client.patch("/api/v1/bookings/GYG-77", headers=AUTH, json={"status": "cancelled"})
    assert r.json()["status"] == "cancelled"
    assert r.json()["is_open"] is True  # still open for the grace period after cancelling


@pytest.mark.parametrize(("change", "needle"), [
    ({"customer": {"name": "X", "email": "not-an-address", "locale": "en"}}, "email"),
    ({"customer": {"name": "X", "email": "x@example.org", "locale": "xx-nope"}}, "locale"),
    ({"activity_start": START.replace(tzinfo=None).isoformat()}, "timezone"),
    ({"activity_end": (START - timedelta(days=1)).isoformat()}, "before"),
    ({"reference": "has spaces"}, "reference"),
    ({"supplier_id": "nobody"}, "supplier"),
])
def test_invalid_input_is_422_with_a_readable_error(client: TestClient, change: dict[str, object],
                                                     needle: str) -> None:
    r = client.post("/api/v1/bookings", headers=AUTH, json={**BOOKING, **change})
    assert r.status_code == 422
    assert needle in r.text.lower()


def test_unknown_reference_is_404(client: TestClient) -> None:
    assert client.get("/api/v1/bookings/NOPE", headers=AUTH).status_code == 404
    assert client.get("/api/v1/bookings/NOPE/messages", headers=AUTH).status_code == 404
    assert client.patch("/api/v1/bookings/NOPE", headers=AUTH, json={}).status_code == 404


def test_token_is_required(client: TestClient) -> None:
    assert client.get("/api/v1/bookings/GYG-77").status_code == 401
    assert client.get("/api/v1/bookings/GYG-77",
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/api/v1/suppliers", json={}).status_code == 401


def test_openapi_is_published(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/bookings" in spec["paths"]


def test_health_readiness_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    body = client.get("/metrics").text
    assert "mailveil_outbox_depth 0.0" in body
    assert "mailveil_inbound_pending 0.0" in body
    assert "mailveil_messages_accepted_total" in body


def _far(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@pytest.mark.parametrize(("change", "needle"), [
    ({"activity_end": "9999-12-31T23:59:59+00:00"}, "days from now"),  # was a 500
    ({"activity_start": "9999-12-31T20:00:00-05:00",  # past the last UTC instant
      "activity_end": "9999-12-31T21:00:00-05:00"}, "out of range"),
    ({"activity_start": "0001-01-01T00:00:00+01:00"}, "out of range"),
    ({"activity_start": "0001-01-01T00:00:00+00:00"}, "days from now"),
    ({"activity_end": _far(HORIZON.days + 1)}, "days from now"),
    ({"activity_start": _far(-HORIZON.days - 1)}, "days from now"),
])
def test_dates_beyond_the_horizon_are_422(client: TestClient, change: dict[str, object],
                                           needle: str) -> None:
    r = client.post("/api/v1/bookings", headers=AUTH, json={**BOOKING, **change})
    assert r.status_code == 422, r.text
    assert needle in r.text
    assert client.get("/api/v1/bookings/GYG-77", headers=AUTH).status_code == 404


def test_dates_within_the_horizon_either_way_are_accepted(client: TestClient) -> None:
    r = client.post("/api/v1/bookings", headers=AUTH, json={
        **BOOKING, "activity_start": _far(-HORIZON.days + 1), "activity_end": _far(-30)})
    assert r.status_code == 201, r.text
    assert r.json()["is_open"] is False  # entered late: its window already closed
    r = client.patch("/api/v1/bookings/GYG-77", headers=AUTH,
                     json={"activity_end": _far(HORIZON.days - 1)})
    assert r.status_code == 200, r.text
    assert r.json()["is_open"] is True


@pytest.mark.parametrize("end", ["9999-12-31T23:59:59+00:00", _far(HORIZON.days + 1)])
def test_a_patch_beyond_the_horizon_is_422_and_changes_nothing(client: TestClient,
                                                                end: str) -> None:
    before = client.post("/api/v1/bookings", headers=AUTH, json=BOOKING).json()
    r = client.patch("/api/v1/bookings/GYG-77", headers=AUTH, json={"activity_end": end})
    assert r.status_code == 422, r.text
    assert "activity_end" in r.text and "days from now" in r.text
    assert client.get("/api/v1/bookings/GYG-77", headers=AUTH).json() == before


RELAY_MAILBOXES = ["customer-0123456789ab@reply.example.com",
                   "local-partner-0123456789ab@Reply.Example.COM",
                   "bounce-0123456789abcdef0123@reply.example.com",
                   "no-reply@reply.example.com", "anyone@reply.example.com"]


@pytest.mark.parametrize("email", RELAY_MAILBOXES)
def test_a_party_address_on_the_relay_domain_is_422(client: TestClient, email: str) -> None:
    r = client.post("/api/v1/bookings", headers=AUTH, json={
        **BOOKING, "customer": {"name": "X", "email": email, "locale": "en"}})
    assert r.status_code == 422, r.text
    assert "customer.email" in r.text and "relay domain" in r.text
    r = client.post("/api/v1/suppliers", headers=AUTH, json={
        "id": "sup-2", "name": "Loop Tours", "email": email, "locale": "en"})
    assert r.status_code == 422, r.text
    assert "relay domain" in r.text
    r = client.post("/api/v1/bookings", headers=AUTH, json={**BOOKING, "supplier_id": "sup-2"})
    assert r.status_code == 422 and "unknown supplier_id" in r.text  # it was not stored


def test_a_subdomain_of_the_relay_domain_is_another_domain(client: TestClient) -> None:
    r = client.post("/api/v1/bookings", headers=AUTH, json={
        **BOOKING, "customer": {"name": "X", "email": "ann@mail.reply.example.com"}})
    assert r.status_code == 201, r.text
