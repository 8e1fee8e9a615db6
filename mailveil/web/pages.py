"""What the supplier portal and the care console share as server-rendered sites: one-time
sign-in links, the Jinja set-up, the security headers, and a visitor whose signed cookie
is read once per request, checked against the form's CSRF token and set on every answer.
Each site keeps its own cookie name, path and salt, so one site's cookie is no other's."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from mailveil.web.sessions import Signer, Visit, new_browser_id

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the one-time links are in the URL
    "Cache-Control": "no-store",
}


class LinkStore(Protocol):
    """Stores a one-time link's token (the store keeps only its hash) for one account."""

    def __call__(self, *, token: str, expires_at: datetime) -> None: ...


def mint_link(site_url: str, lifetime: timedelta, now: datetime,
              store: LinkStore) -> tuple[str, datetime]:
    """A one-time sign-in link under ``site_url`` (e.g. ``https://host/portal``), and when
    it expires; ``store`` records it for the account it signs in."""
    token = secrets.token_urlsafe(32)
    expires_at = now + lifetime
    store(token=token, expires_at=expires_at)
    return f"{site_url}/link/{token}", expires_at


def templates(folder: Path) -> Environment:
    """A site's templates: HTML autoescaped, and block tags leave no blank lines."""
    return Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(["html"]),
                       trim_blocks=True, lstrip_blocks=True)


def add_security_headers(app: FastAPI, prefix: str) -> None:
    """Every answer under ``prefix`` gets SECURITY_HEADERS unless a route set its own."""

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        if request.url.path.startswith(prefix):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response


class Site(Protocol):
    """What a visitor needs of its site's context."""

    @property
    def signer(self) -> Signer: ...

    @property
    def base_url(self) -> str: ...


C = TypeVar("C", bound=Site)


class Visitor(Generic[C]):
    """One request's visitor of a site: the visit its cookie carries (a fresh one when the
    cookie is missing, forged or too old) and how to answer them."""

    cookie: ClassVar[str]  # each site its own cookie,
    cookie_path: ClassVar[str]  # sent only below the site's path
    same_site: ClassVar[Literal["lax", "strict"]]

    def __init__(self, request: Request, ctx: C) -> None:
        self.request = request
        self.ctx = ctx
        self.visit = (ctx.signer.load(request.cookies.get(self.cookie))
                      or Visit(new_browser_id()))

    @property
    def secure_cookies(self) -> bool:
        """Only over HTTPS when the site is served over HTTPS (plain HTTP in development)."""
        return self.ctx.base_url.startswith("https://")

    def check_csrf(self, token: str) -> None:
        if not self.ctx.signer.csrf_ok(self.visit, token):
            raise HTTPException(403, "missing or wrong CSRF token")

    def html(self, html: str, status: int = 200) -> Response:
        return self.keep(HTMLResponse(html, status_code=status))

    def redirect(self, to: str) -> Response:
        return self.keep(RedirectResponse(to, status_code=303))

    def keep(self, response: Response) -> Response:
        """Set the (possibly changed) visit's cookie on ``response``, renewing its age."""
        response.set_cookie(self.cookie, self.ctx.signer.dump(self.visit),
                            max_age=int(self.ctx.signer.lifetime.total_seconds()),
                            path=self.cookie_path, httponly=True, samesite=self.same_site,
                            secure=self.secure_cookies)
        return response
