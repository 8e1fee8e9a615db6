"""Portal cookies: what a signed cookie carries, and what a forged, altered or old one is."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from mailveil.web.sessions import Signer, Visit, stored_secret

SECRET = "s" * 48


def test_a_visit_survives_the_round_trip() -> None:
    signer = Signer(SECRET, timedelta(hours=1))
    visit = Visit("browser-1", "sup-1", "th")
    assert signer.load(signer.dump(visit)) == visit


def test_forged_altered_and_foreign_cookies_are_nothing() -> None:
    signer = Signer(SECRET, timedelta(hours=1))
    cookie = signer.dump(Visit("browser-1", "sup-1", None))
    payload, _, signature = cookie.rpartition(".")
    assert signer.load(payload + "." + signature[::-1]) is None
    assert signer.load(cookie.replace(payload[:4], "AAAA", 1)) is None
    assert Signer("t" * 48, timedelta(hours=1)).load(cookie) is None  # another secret
    assert signer.load("") is None and signer.load(None) is None
    assert signer.load("not.a.cookie") is None


def test_an_old_cookie_has_expired() -> None:
    signer = Signer(SECRET, timedelta(seconds=1))
    cookie = signer.dump(Visit("browser-1", "sup-1", None))
    deadline = time.monotonic() + 10
    while signer.load(cookie) is not None:  # itsdangerous counts whole seconds
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_signing_in_and_out_change_the_browser_id_and_so_the_csrf_token() -> None:
    signer = Signer(SECRET, timedelta(hours=1))
    anonymous = Visit("planted-by-someone-else")
    signed = anonymous.signed_in_as("sup-1", "fr")
    assert signed.browser != anonymous.browser and signed.supplier_id == "sup-1"
    assert signed.language == "fr"
    assert not signer.csrf_ok(signed, signer.csrf_token(anonymous))
    assert signer.csrf_ok(signed, signer.csrf_token(signed))
    assert not signer.csrf_ok(signed, None) and not signer.csrf_ok(signed, "")
    out = signed.speaking("th").signed_out()
    assert out.supplier_id is None and out.language == "th" and out.browser != signed.browser


def test_the_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "portal-secret"
    first = stored_secret(None, path)
    assert len(first) >= 48
    assert stored_secret(None, path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert stored_secret("configured" * 4, path) == "configured" * 4
