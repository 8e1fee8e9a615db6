"""The supplier portal's pages: server-rendered, one signed cookie, a CSRF token in every
form, and a booking of another supplier answered exactly like one that does not exist."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import BookingStatus, is_open, open_until
from mailveil.store import portal as store
from mailveil.store import repository as repo
from mailveil.store import webhooks
from mailveil.store.models import BookingRow, CancellationRow, SupplierRow
from mailveil.web import pages
from mailveil.web.deps import transaction
from mailveil.web.portal import i18n, views
from mailveil.web.portal.mail import Letter, queue
from mailveil.web.sessions import COOKIE, Signer
from mailveil.web.webhooks import cancellation

HERE = Path(__file__).parent
PAGE_SIZE = 50
TZ_COOKIE = "mailveil_tz"
MAX_REASON = 1000
MAX_MESSAGE = 5000
MAILED_LINKS = 3  # the sign-in form mails at most this many links per link lifetime


@dataclass(frozen=True)
class PortalContext:
    sessions: Callable[[], Session]
    book: AddressBook
    signer: Signer
    base_url: str  # public http(s) origin the mailed links start with
    link_lifetime: timedelta
    grace: timedelta
    answer_within: timedelta  # a customer's cancellation links work this long
    platform_name: str
    sign: Callable[[bytes], bytes]  # DKIM, like every mail that leaves
    webhooks: bool = False  # MAILVEIL_WEBHOOK_URL is set: tell the marketplace every step


def mint_link(s: Session, base_url: str, supplier_id: str, lifetime: timedelta,
              now: datetime) -> tuple[str, datetime]:
    """A one-time sign-in link for a supplier, and when it expires."""
    return pages.mint_link(f"{base_url}/portal", lifetime, now,
                           partial(store.add_link, s, supplier_id=supplier_id, now=now))


_env = pages.templates(HERE / "templates")


def _ctx(request: Request) -> PortalContext:
    ctx: PortalContext = request.app.state.portal
    return ctx


DB = Annotated[Session, Depends(transaction(_ctx), scope="function")]


class Page(pages.Visitor[PortalContext]):
    """One request's visitor: their cookie, language and time zone, and how to answer."""

    cookie, cookie_path, same_site = COOKIE, "/portal", "lax"

    def __init__(self, request: Request) -> None:
        super().__init__(request, _ctx(request))
        self.tz = i18n.zone(request.cookies.get(TZ_COOKIE))
        self.account_locale: str | None = None

    @property
    def language(self) -> str:
        return i18n.negotiate(self.visit.language, self.account_locale,
                              self.request.headers.get("accept-language"))

    def when(self, moment: datetime) -> str:
        return i18n.when(moment, self.language, self.tz)

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        t = i18n.translations(self.language)
        html = _env.get_template(template).render(
            _=t.gettext, ngettext=t.ngettext, lang=self.language, languages=i18n.NAMES,
            csrf=self.ctx.signer.csrf_token(self.visit), signed_in=self.visit.supplier_id,
            when=self.when, tz=self.tz.key, path=self.request.url.path,
            platform=self.ctx.platform_name, **values)
        return self.html(html, status)


class SignInNeeded(Exception):
    """No valid session: every page but the public ones answers with the sign-in page."""


def _page(request: Request) -> Page:
    return Page(request)


PageDep = Annotated[Page, Depends(_page)]
Csrf = Annotated[str, Form()]


def _supplier(page: Page, s: Session) -> SupplierRow:
    if page.visit.supplier_id is None:
        raise SignInNeeded
    supplier = repo.get_supplier(s, page.visit.supplier_id)
    if supplier is None:
        raise SignInNeeded
    page.account_locale = supplier.locale
    return supplier


def _booking(page: Page, s: Session, reference: str) -> tuple[SupplierRow, BookingRow]:
    supplier = _supplier(page, s)
    row = store.supplier_booking(s, supplier.id, reference)
    if row is None:
        raise HTTPException(404, "booking")
    return supplier, row


router = APIRouter(prefix="/portal", include_in_schema=False)


@router.get("")
@router.get("/")
def home(page: PageDep) -> Response:
    return page.redirect("/portal/bookings" if page.visit.supplier_id else "/portal/sign-in")


@router.get("/sign-in")
def sign_in_form(page: PageDep) -> Response:
    return page.render("sign_in.html")


@router.post("/sign-in")
def sign_in_mail(page: PageDep, s: DB, csrf: Csrf = "",
                 email: Annotated[str, Form(max_length=320)] = "") -> Response:
    """Mail a link to every supplier account with this address; the answer is the same
    whether there is one or not, so the form tells nobody who has an account."""
    page.check_csrf(csrf)
    ctx, now = page.ctx, datetime.now(UTC)
    for supplier in store.suppliers_by_email(s, email):
        if store.links_since(s, supplier.id, now - ctx.link_lifetime) >= MAILED_LINKS:
            continue  # the form must not become a way to flood someone's mailbox
        url, expires_at = mint_link(s, ctx.base_url, supplier.id, ctx.link_lifetime, now)
        language = i18n.language_of(supplier.locale) or i18n.LANGUAGES[0]
        _mail(s, page, "mail/sign_in.txt", language, supplier.name, supplier.email,
              role=Role.SUPPLIER, booking_id=None, url=url,
              expires=i18n.when(expires_at, language, i18n.zone(None)),
              minutes=int(ctx.link_lifetime.total_seconds() // 60))
    return page.render("sign_in.html", sent=True,
                       minutes=int(ctx.link_lifetime.total_seconds() // 60))


def _mail(s: Session, page: Page, template: str, language: str, name: str, address: str, *,
          role: Role, booking_id: int | None, **values: Any) -> None:
    t = i18n.translations(language)
    text = _env.get_template(template).render(_=t.gettext, platform=page.ctx.platform_name,
                                              name=name, **values)
    subject, _, body = text.partition("\n\n")
    queue(s, Letter(name, address, subject, body), role=role, booking_id=booking_id,
          book=page.ctx.book, platform_name=page.ctx.platform_name, sign=page.ctx.sign,
          now=datetime.now(UTC))


@router.get("/link/{token}")
def link_page(token: str, page: PageDep, s: DB) -> Response:
    """Shows a button instead of signing in at once: mail scanners open links, and would
    spend a one-time link before its owner could."""
    usable = store.link_usable(s, token, datetime.now(UTC))
    return page.render("link.html", token=token, usable=usable, status=200 if usable else 410)


@router.post("/link/{token}")
def link_use(token: str, page: PageDep, s: DB, csrf: Csrf = "") -> Response:
    page.check_csrf(csrf)
    supplier_id = store.use_link(s, token, datetime.now(UTC))
    supplier = repo.get_supplier(s, supplier_id) if supplier_id is not None else None
    if supplier is None:
        return page.render("link.html", token=token, usable=False, status=410)
    page.visit = page.visit.signed_in_as(supplier.id, i18n.language_of(supplier.locale))
    return page.redirect("/portal/bookings")


@router.post("/sign-out")
def sign_out(page: PageDep, csrf: Csrf = "") -> Response:
    page.check_csrf(csrf)
    page.visit = page.visit.signed_out()
    return page.redirect("/portal/sign-in")


@router.post("/language")
def choose_language(page: PageDep, csrf: Csrf = "", language: Annotated[str, Form()] = "",
                    back: Annotated[str, Form()] = "/portal/") -> Response:
    page.check_csrf(csrf)
    if language in i18n.LANGUAGES:
        page.visit = page.visit.speaking(language)
    # Only back to a page of the portal: never an open redirect.
    return page.redirect(back if back.startswith("/portal/") and "//" not in back
                         and "\\" not in back else "/portal/")


@router.get("/bookings")
def bookings(page: PageDep, s: DB, q: str = "", after: str = "") -> Response:
    supplier = _supplier(page, s)
    search = q.strip()[:64]
    key = None
    if after:
        last = store.supplier_booking(s, supplier.id, after)
        key = (last.activity_start, last.id) if last is not None else None
    lines = store.bookings_page(s, supplier.id, search=search, after=key, limit=PAGE_SIZE + 1)
    now = datetime.now(UTC)
    rows = [_summary(s, page, line.row, line.messages, now) for line in lines[:PAGE_SIZE]]
    more = lines[PAGE_SIZE - 1].row.reference if len(lines) > PAGE_SIZE else None
    return page.render("bookings.html", supplier=supplier, rows=rows, q=search,
                       next_url=(f"/portal/bookings?q={quote(search)}&after={quote(more)}"
                                 if more else None), paged=bool(after))


def _summary(s: Session, page: Page, row: BookingRow, messages: int,
             now: datetime) -> dict[str, Any]:
    booking = repo.to_domain(s, row)
    return {"reference": row.reference, "activity": page.when(row.activity_start),
            "customer": row.customer_name, "open": is_open(booking, page.ctx.grace, now),
            "until": page.when(open_until(booking, page.ctx.grace)),
            "cancelled": row.status == BookingStatus.CANCELLED, "messages": messages}


@router.get("/bookings/{reference}")
def booking_page(reference: str, page: PageDep, s: DB) -> Response:
    supplier, row = _booking(page, s, reference)
    return page.render("booking.html", supplier=supplier, **_booking_values(s, page, row))


def _booking_values(s: Session, page: Page, row: BookingRow) -> dict[str, Any]:
    now = datetime.now(UTC)
    booking = repo.to_domain(s, row)
    booking_open = is_open(booking, page.ctx.grace, now)
    latest = store.latest_cancellation(s, row.id)
    request_state = views.request_state(latest.state if latest else None,
                                        latest.answer_by if latest else None, now)
    messages = []
    for item in store.thread(s, row.id):
        mine = item.entry.sender_role == Role.SUPPLIER
        shown = _visible(item, mine)
        purged = (item.copy.purged_at if item.copy is not None else None) or item.inbound.purged_at
        messages.append({
            "id": item.entry.id, "mine": mine, "at": page.when(item.inbound.received_at),
            "subject": item.entry.subject if shown is not None else "",
            "status": views.status(item.entry.outcome,
                                   item.copy.state if item.copy else None).value,
            "outcome": item.entry.outcome, "withheld": shown is None,
            "content": views.readable(shown) if shown and not purged else None})
    return {
        "row": row, "booking": booking, "open": booking_open,
        "until": page.when(open_until(booking, page.ctx.grace)),
        "activity_start": page.when(row.activity_start),
        "activity_end": page.when(row.activity_end),
        "grace_days": page.ctx.grace.days,
        "relay_address": page.ctx.book.relay_address(Role.CUSTOMER, row.customer_token),
        "cancelled": row.status == BookingStatus.CANCELLED,
        "request": request_state.value, "request_row": latest,
        "request_answer_by": page.when(latest.answer_by) if latest else None,
        "may_cancel": views.may_request_cancellation(
            booking_open, row.status == BookingStatus.CANCELLED, request_state),
        "messages": messages, "max_reason": MAX_REASON,
    }


@router.get("/bookings/{reference}/messages/{entry_id}/attachments/{index}")
def attachment(reference: str, entry_id: int, index: int, page: PageDep, s: DB) -> Response:
    _, row = _booking(page, s, reference)
    for item in store.thread(s, row.id):
        if item.entry.id != entry_id:
            continue
        raw = _visible(item, item.entry.sender_role == Role.SUPPLIER)
        found = views.attachment_bytes(raw, index) if raw else None
        if found is None:
            break
        filename, data = found
        # Always a download of opaque bytes: never rendered as a page of ours.
        return page.keep(Response(data, media_type="application/octet-stream", headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
            **pages.SECURITY_HEADERS}))
    raise HTTPException(404, "attachment")


def _visible(item: store.ThreadEntry, mine: bool) -> bytes | None:
    return views.visible(mine, item.copy.raw if item.copy is not None else None,
                         item.inbound.raw)


@router.post("/bookings/{reference}/cancellation")
def request_cancellation(reference: str, page: PageDep, s: DB, csrf: Csrf = "",
                         reason: Annotated[str, Form()] = "") -> Response:
    page.check_csrf(csrf)
    supplier, row = _booking(page, s, reference)
    values = _booking_values(s, page, row)
    reason = reason.strip()
    if not values["may_cancel"] or not reason or len(reason) > MAX_REASON:
        return page.render("booking.html", status=422, supplier=supplier, reason=reason,
                           reason_error=not reason or len(reason) > MAX_REASON, **values)
    now, token = datetime.now(UTC), secrets.token_urlsafe(32)
    answer_by = now + page.ctx.answer_within
    request = store.add_cancellation(s, booking_id=row.id, reason=reason, token=token,
                                     now=now, answer_by=answer_by)
    _event(page, s, "cancellation.requested", request, row, now, reason=reason,
           answer_by=answer_by.isoformat())
    language = i18n.language_of(row.customer_locale) or i18n.LANGUAGES[0]
    _mail(s, page, "mail/cancellation.txt", language, row.customer_name, row.customer_email,
          role=Role.CUSTOMER, booking_id=row.id, reference=row.reference,
          supplier=supplier.name, reason=reason,
          url=f"{page.ctx.base_url}/portal/cancellation/{token}",
          answer_by=i18n.when(answer_by, language, i18n.zone(None)))
    return page.redirect(f"/portal/bookings/{quote(row.reference)}#cancellation")


@router.get("/cancellation/{token}")
def cancellation_page(token: str, page: PageDep, s: DB) -> Response:
    """The customer's page, reached from the mailed link: their booking's own language."""
    found = store.cancellation_by_token(s, token)
    if found is None:
        raise HTTPException(404, "cancellation")
    request, row = found
    page.account_locale = row.customer_locale
    state = views.request_state(request.state, request.answer_by, datetime.now(UTC))
    return page.render("cancellation.html", token=token, request=request, row=row,
                       state=state.value, answer_by=page.when(request.answer_by))


@router.post("/cancellation/{token}")
def cancellation_answer(token: str, page: PageDep, s: DB, csrf: Csrf = "",
                        answer: Annotated[str, Form()] = "") -> Response:
    page.check_csrf(csrf)
    if answer not in ("confirm", "decline"):
        raise HTTPException(422, "answer")
    state = (store.CancellationState.CONFIRMED if answer == "confirm"
             else store.CancellationState.DECLINED)
    found = store.cancellation_by_token(s, token)
    if found is None:
        raise HTTPException(404, "cancellation")
    now = datetime.now(UTC)
    if store.answer_cancellation(s, token, state, now):
        _event(page, s, f"cancellation.{state.value}", *found, now)
    return page.redirect(f"/portal/cancellation/{token}")


@router.get("/contact/{token}")
def contact_form(token: str, page: PageDep, s: DB) -> Response:
    """The form a closed conversation's notice links to: the link names the booking."""
    row, _role = _contact(page, s, token)
    return page.render("contact.html", reference=row.reference, max_message=MAX_MESSAGE)


@router.post("/contact/{token}")
def contact_send(token: str, page: PageDep, s: DB, csrf: Csrf = "",
                 message: Annotated[str, Form()] = "") -> Response:
    page.check_csrf(csrf)
    row, role = _contact(page, s, token)
    message = message.strip()
    if not message or len(message) > MAX_MESSAGE:
        return page.render("contact.html", status=422, reference=row.reference, error=True,
                           message=message, max_message=MAX_MESSAGE)
    now = datetime.now(UTC)
    ticket = store.add_ticket(s, booking_id=row.id, role=role.value, message=message, now=now)
    if page.ctx.webhooks:
        webhooks.emit(s, "contact.ticket", {
            "ticket_id": ticket.id, "booking_reference": row.reference,
            "supplier_id": row.supplier_id, "from": role.value, "message": message}, now)
    return page.render("contact.html", reference=row.reference, sent=True)


def _contact(page: Page, s: Session, token: str) -> tuple[BookingRow, Role]:
    found = page.ctx.signer.contact_of(token)
    row = store.booking_by_reference(s, found[0]) if found is not None else None
    if found is None or row is None:
        raise HTTPException(404, "contact")
    page.account_locale = (row.customer_locale if found[1] is Role.CUSTOMER
                           else _supplier_locale(s, row))
    return row, found[1]


def _supplier_locale(s: Session, row: BookingRow) -> str | None:
    supplier = repo.get_supplier(s, row.supplier_id)
    return supplier.locale if supplier is not None else None


def _event(page: Page, s: Session, event: str, request: CancellationRow, row: BookingRow,
           now: datetime, **more: str) -> None:
    if page.ctx.webhooks:
        webhooks.emit(s, event, cancellation(request, row, **more), now)


def mount(app: FastAPI, ctx: PortalContext) -> None:
    """Add the portal's pages, its static files and its error pages to the app."""
    app.state.portal = ctx
    app.include_router(router)
    app.mount("/portal/static", StaticFiles(directory=HERE / "static"), name="portal-static")
    pages.add_security_headers(app, "/portal")

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded) -> Response:
        return Page(request).redirect("/portal/sign-in")

    @app.exception_handler(StarletteHTTPException)
    async def _error(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith("/portal"):
            return await http_exception_handler(request, exc)
        return Page(request).render("error.html", status=exc.status_code, code=exc.status_code)
