"""Portal sessions in one signed cookie, and CSRF tokens bound to it.

The cookie holds a random browser id, the signed-in supplier (if any) and the chosen
language, signed with itsdangerous (HMAC-SHA256) and timestamped: it cannot be forged
without the secret and stops working after the session lifetime. Signing in issues a new
browser id, so a cookie planted before sign-in is worth nothing after it. A form's CSRF
token is an HMAC of the browser id: a page of another site can neither read it nor
compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer

from mailveil.domain.addresses import Role

log = logging.getLogger(__name__)

COOKIE = "mailveil_portal"
PORTAL_SALT = "mailveil-portal"


@dataclass(frozen=True)
class Visit:
    browser: str  # random id of this browser's session
    supplier_id: str | None = None  # the signed-in account: a supplier, or an agent in /care
    language: str | None = None  # chosen with the switcher

    def signed_in_as(self, supplier_id: str, language: str | None) -> Visit:
        return Visit(new_browser_id(), supplier_id, self.language or language)

    def signed_out(self) -> Visit:
        return Visit(new_browser_id(), None, self.language)

    def speaking(self, language: str) -> Visit:
        return replace(self, language=language)


def new_browser_id() -> str:
    return secrets.token_urlsafe(18)


class Signer:
    def __init__(self, secret: str, lifetime: timedelta, base_url: str = "",
                 salt: str = PORTAL_SALT) -> None:
        # The care console signs with its own salt: a portal cookie is no console cookie.
        self._serializer = URLSafeTimedSerializer(secret, salt=salt,
                                                  signer_kwargs={"digest_method": hashlib.sha256})
        self._contact = URLSafeSerializer(secret, salt="mailveil-contact",
                                          signer_kwargs={"digest_method": hashlib.sha256})
        self._secret = secret.encode()
        self.lifetime = lifetime
        self._base_url = base_url

    def contact_url(self, reference: str, role: Role) -> str:
        """The contact form's link in a notice: the booking and its reader, signed, so the
        form needs no sign-in and cannot be pointed at another booking."""
        return f"{self._base_url}/portal/contact/{self._contact.dumps([reference, role.value])}"

    def contact_of(self, token: str) -> tuple[str, Role] | None:
        try:
            value = self._contact.loads(token)
        except BadSignature:
            return None
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, str) for v in value)
                or value[1] not in {r.value for r in Role}):
            return None
        return value[0], Role(value[1])

    def dump(self, visit: Visit) -> str:
        return self._serializer.dumps([visit.browser, visit.supplier_id, visit.language])

    def load(self, cookie: str | None) -> Visit | None:
        """The visit a cookie carries; ``None`` when missing, forged, malformed or too old."""
        if not cookie:
            return None
        try:
            value = self._serializer.loads(cookie, max_age=int(self.lifetime.total_seconds()))
        except BadSignature:
            return None
        if (not isinstance(value, list) or len(value) != 3
                or not all(v is None or isinstance(v, str) for v in value)
                or not isinstance(value[0], str)):
            return None
        return Visit(value[0], value[1], value[2])

    def csrf_token(self, visit: Visit) -> str:
        return hmac.new(self._secret, b"csrf:" + visit.browser.encode(), "sha256").hexdigest()

    def csrf_ok(self, visit: Visit, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(visit), token)


def stored_secret(configured: str | None, path: Path) -> str:
    """The configured secret, or one generated once into ``path`` (in the data directory),
    so every process sharing that directory, and a restart, use the same one."""
    if configured:
        return configured
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        log.warning("no secret configured: generated one in %s", path)
    return path.read_text().strip()
