"""What a sender's mail program and the marketplace do in end-to-end tests."""

from __future__ import annotations

import smtplib
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import httpx

from tests.conftest import Mailveil

Entry = dict[str, Any]

CUSTOMER = "ann.lee@customer-mail.example"
SUPPLIER = "bookings@sunny-tours.example"


def register(mv: Mailveil, reference: str = "GYG-1001", *, days_from_now: float = 3,
             customer: str = CUSTOMER, supplier: str = SUPPLIER,
             supplier_id: str = "sup-1", locale: str = "en",
             customer_name: str = "Ann Lee") -> dict[str, str]:
    start = datetime.now(UTC) + timedelta(days=days_from_now)
    with httpx.Client(headers=mv.headers, timeout=10) as http:
        r = http.post(f"{mv.api}/suppliers", json={
            "id": supplier_id, "name": "Sunny Tours", "email": supplier, "locale": "fr"})
        assert r.status_code == 201, r.text
        r = http.post(f"{mv.api}/bookings", json={
            "reference": reference, "supplier_id": supplier_id,
            "customer": {"name": customer_name, "email": customer, "locale": locale},
            "activity_start": start.isoformat(),
            "activity_end": (start + timedelta(hours=3)).isoformat(),
        })
        assert r.status_code == 201, r.text
        body: dict[str, str] = r.json()
        return body


def send(mv: Mailveil, msg: EmailMessage, mail_from: str, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr=mail_from, to_addrs=rcpts)


def mail(frm: str, to: str, subject: str, body: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=frm.rpartition("@")[2].rstrip(">"))
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def archive(mv: Mailveil, reference: str, count: int, timeout: float = 20) -> list[Entry]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{mv.api}/bookings/{reference}/messages", headers=mv.headers)
        assert r.status_code == 200
        entries: list[Entry] = r.json()
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def archive_until_delivered(mv: Mailveil, reference: str, timeout: float = 20) -> list[Entry]:
    deadline = time.monotonic() + timeout
    while True:
        entries = archive(mv, reference, 1)
        if all(o["state"] != "queued" for e in entries for o in e["outbound"]):
            return entries
        if time.monotonic() > deadline:
            raise TimeoutError(entries)
        time.sleep(0.1)


