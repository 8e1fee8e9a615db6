"""The marketplace API through FastAPI's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from mailveil.domain.addresses import AddressBook
from mailveil.store.db import make_engine, migrate, session_factory
from mailveil.web.api import ApiContext, create_app

TOKEN = "secret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOOKING = {
    "reference": "GYG-77", "supplier_id": "sup-1",
    "customer": {"name": "Somchai", "email": "somchai@example.org", "locale": "th"},
    "activity_start": "2030-03-01T09:00:00+07:00", "activity_end": "2030-03-01T12:00:00+07:00",
}


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    migrate(database_url)
    engine = make_engine(database_url)
    app = create_app(ApiContext(session_factory(engine), AddressBook("reply.example.com"), TOKEN,
                                timedelta(days=7)))
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
    assert body["open_until"].startswith("2030-03-08T05:00:00")
    assert body["is_open"] is True
    again = client.post("/api/v1/bookings", headers=AUTH, json=BOOKING)
    assert again.status_code == 200
    assert again.json()["customer_relay_address"] == body["customer_relay_address"]
    assert client.get("/api/v1/bookings/GYG-77", headers=AUTH).json() == again.json()


def test_patch_moves_window_and_cancels(client: TestClient) -> None:
    client.post("/api/v1/bookings", headers=AUTH, json=BOOKING)
    r = client.patch("/api/v1/bookings/GYG-77", headers=AUTH, json={
        "activity_start": "2030-04-01T09:00:00Z", "activity_end": "2030-04-01T12:00:00Z"})
    assert r.status_code == 200, r.text
    assert r.json()["open_until"].startswith("2030-04-08T12:00:00")
    r = client.patch("/api/v1/bookings/GYG-77", headers=AUTH, json={"status": "cancelled"})
    assert r.json()["status"] == "cancelled"
    assert r.json()["is_open"] is True  # still open for the grace period after cancelling


@pytest.mark.parametrize(("change", "needle"), [
    ({"customer": {"name": "X", "email": "not-an-address", "locale": "en"}}, "email"),
    ({"customer": {"name": "X", "email": "x@example.org", "locale": "xx-nope"}}, "locale"),
    ({"activity_start": "2030-03-01T09:00:00"}, "timezone"),
    ({"activity_end": "2030-02-01T09:00:00Z"}, "before"),
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
