"""The care console's pages under ``/care``: one-time links from ``mailveil care add-agent``,
a signed cookie of its own (a supplier's portal cookie is not one), a CSRF token in every
form, and every agent action written to the audit log."""

from __future__ import annotations

import mailbox
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from mailveil.domain.addresses import AddressBook
from mailveil.store import care as store
from mailveil.store.models import BookingRow, CareAgentRow
from mailveil.web import pages
from mailveil.web.care import views
from mailveil.web.deps import transaction
from mailveil.web.sessions import Signer

HERE = Path(__file__).parent
COOKIE = "mailveil_care"
CAPTURED_SHOWN = 200
CARE_SALT = "mailveil-care"  # for the Signer of the console's cookies


@dataclass(frozen=True)
class CareContext:
    sessions: Callable[[], Session]
    book: AddressBook
    signer: Signer  # salted apart from the portal's
    base_url: str
    link_lifetime: timedelta
    platform_name: str
    captured: Path | None = None  # the capture maildir when no smarthost is configured


def mint_link(s: Session, base_url: str, agent_id: int, lifetime: timedelta,
              now: datetime) -> tuple[str, datetime]:
    """A one-time sign-in link for an agent, and when it expires."""
    return pages.mint_link(f"{base_url}/care", lifetime, now,
                           partial(store.add_link, s, agent_id=agent_id, now=now))


env = pages.templates(HERE / "templates")


def _ctx(request: Request) -> CareContext:
    ctx: CareContext = request.app.state.care
    return ctx


DB = Annotated[Session, Depends(transaction(_ctx), scope="function")]
Csrf = Annotated[str, Form()]


class Page(pages.Visitor[CareContext]):
    """One request's visitor of the console, and the agent once known to be signed in."""

    cookie, cookie_path, same_site = COOKIE, "/care", "strict"

    def __init__(self, request: Request) -> None:
        super().__init__(request, _ctx(request))
        self.agent: CareAgentRow | None = None

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        html = env.get_template(template).render(
            csrf=self.ctx.signer.csrf_token(self.visit), agent=self.agent,
            platform=self.ctx.platform_name, when=_when,
            captured=self.ctx.captured is not None, **values)
        return self.html(html, status)

    def audit(self, s: Session, action: str, subject: str) -> None:
        store.audit(s, self.agent.id if self.agent else None, action, subject,
                    datetime.now(UTC))


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(request: Request) -> Page:
    return Page(request)


def _agent_page(request: Request, s: DB) -> Page:
    """A page for a signed-in agent still on the list; anyone else gets 401."""
    page = Page(request)
    account = page.visit.supplier_id  # the console's cookie holds an agent's id there
    agent = (store.active_agent(s, int(account))
             if account is not None and account.isdigit() else None)
    if agent is None:
        raise HTTPException(401, "sign in with a link from `mailveil care add-agent`")
    page.agent = agent
    return page


PageDep = Annotated[Page, Depends(_page)]
AgentPage = Annotated[Page, Depends(_agent_page)]
router = APIRouter(prefix="/care", include_in_schema=False)


def _booking(s: Session, reference: str) -> BookingRow:
    row = store.booking(s, reference)
    if row is None:
        raise HTTPException(404, "no such booking")
    return row


@router.get("/link/{token}")
def link_page(token: str, page: PageDep, s: DB) -> Response:
    """A button, not an instant sign-in: a mail scanner opening the link must not spend it."""
    usable = store.link_usable(s, token, datetime.now(UTC))
    return page.render("link.html", token=token, usable=usable, status=200 if usable else 410)


@router.post("/link/{token}")
def link_use(token: str, page: PageDep, s: DB, csrf: Csrf = "") -> Response:
    page.check_csrf(csrf)
    agent = store.use_link(s, token, datetime.now(UTC))
    if agent is None:
        return page.render("link.html", token=token, usable=False, status=410)
    page.visit, page.agent = page.visit.signed_in_as(str(agent.id), None), agent
    page.audit(s, "sign-in", agent.email)
    return page.redirect("/care/")


@router.post("/sign-out")
def sign_out(page: AgentPage, s: DB, csrf: Csrf = "") -> Response:
    page.check_csrf(csrf)
    page.audit(s, "sign-out", page.agent.email if page.agent else "")
    page.visit, page.agent = page.visit.signed_out(), None
    return page.render("signed_out.html")


@router.get("/")
def search(page: AgentPage, s: DB, q: str = "") -> Response:
    found = store.search(s, page.ctx.book, q) if q.strip() else []
    if q.strip():
        page.audit(s, "search", q.strip()[:500])
    return page.render("search.html", q=q, found=found, searched=bool(q.strip()))


@router.get("/bookings/{reference}")
def conversation(reference: str, page: AgentPage, s: DB) -> Response:
    row = _booking(s, reference)
    page.audit(s, "open", reference)
    messages = store.record(s, row.id)
    return page.render("booking.html", booking=row, messages=messages, shown=views.shown)


@router.get("/bookings/{reference}/{side}/{message_id}/html")
def message_html(reference: str, side: str, message_id: int, page: AgentPage,
                 s: DB) -> Response:
    """The HTML part alone, for a sandboxed frame; the CSP keeps it inert even when opened
    directly in a tab."""
    return _html_response(views.html_of(_raw(s, _booking(s, reference), side, message_id)))


def _html_response(html: str | None) -> Response:
    if html is None:
        raise HTTPException(404, "no HTML part")
    return HTMLResponse(html, headers={"Content-Security-Policy": views.HTML_POLICY,
                                       "X-Content-Type-Options": "nosniff",
                                       "Cache-Control": "no-store"})


def _raw(s: Session, booking: BookingRow, side: str, message_id: int) -> bytes:
    if side == "received":
        inbound = store.inbound_of(s, booking.id, message_id)
        raw = inbound.raw if inbound is not None and inbound.purged_at is None else None
    elif side == "delivered":
        outbound = store.outbound_of(s, booking.id, message_id)
        raw = outbound.raw if outbound is not None and outbound.purged_at is None else None
    else:
        raw = None
    if raw is None:
        raise HTTPException(404, "no such message")
    return raw


def export(s: Session, booking: BookingRow) -> bytes:
    """The dispute export of a booking, for the console and the API alike."""
    messages = store.record(s, booking.id)
    entries = views.files(messages)
    transcript = env.get_template("transcript.html").render(
        booking=booking, messages=messages, shown=views.shown, when=_when)
    return views.dispute_zip(entries, transcript)


def export_response(s: Session, booking: BookingRow) -> Response:
    return Response(export(s, booking), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="dispute-{_safe(booking.reference)}.zip"'})


def _safe(reference: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in reference)


@router.post("/bookings/{reference}/export")
def export_page(reference: str, page: AgentPage, s: DB, csrf: Csrf = "") -> Response:
    page.check_csrf(csrf)
    row = _booking(s, reference)
    page.audit(s, "export", reference)
    return page.keep(export_response(s, row))


MAX_NOTE = 2000


@router.get("/queue")
def queue_page(page: AgentPage, s: DB) -> Response:
    return page.render("queue.html", items=store.queue(s, datetime.now(UTC)))


@router.post("/queue/{kind}/{item_id}/close")
def close_item(kind: store.QueueKind, item_id: int, page: AgentPage, s: DB, csrf: Csrf = "",
               note: Annotated[str, Form(max_length=MAX_NOTE)] = "") -> Response:
    agent, text = _decision(page, csrf, note, "close an item")
    if not store.close(s, kind, item_id, agent, text, datetime.now(UTC)):
        raise HTTPException(404, "no such open item")
    page.audit(s, "close", f"{kind.value} {item_id}: {text}"[:500])
    return page.redirect("/care/queue")


def _decision(page: Page, csrf: str, note: str, what: str) -> tuple[int, str]:
    """The agent deciding and their note, once the form proved it came from the console: a
    queue item is never decided without a reason a later agent can read."""
    page.check_csrf(csrf)
    if not note.strip():
        raise HTTPException(422, f"a note is needed to {what}")
    assert page.agent is not None
    return page.agent.id, note.strip()


@router.post("/queue/review/{item_id}/{decision}")
def decide_held(item_id: int, decision: Literal["release", "refuse"], page: AgentPage, s: DB,
                csrf: Csrf = "",
                note: Annotated[str, Form(max_length=MAX_NOTE)] = "") -> Response:
    """A held review request: released (its copies leave as composed) or refused (the
    next processing round tells its sender why), with a note, once."""
    agent, text = _decision(page, csrf, note, "decide on a held message")
    flag = store.decide_held(s, item_id, decision == "release", agent, text, datetime.now(UTC))
    if flag is None:
        raise HTTPException(404, "no such held message")
    page.audit(s, decision, f"review {item_id} (message {flag.inbound_id}): {text}"[:500])
    return page.redirect("/care/queue")


def _captured(page: Page) -> mailbox.Maildir:
    if page.ctx.captured is None:
        raise HTTPException(404, "a smarthost is configured: nothing is captured")
    return mailbox.Maildir(page.ctx.captured, create=True)


def _captured_raw(box: mailbox.Maildir, key: str) -> bytes:
    try:
        return box.get_bytes(key)  # a key of the maildir's own table, never a path
    except KeyError:
        raise HTTPException(404, "no such captured message") from None


@router.get("/captured")
def captured_list(page: AgentPage) -> Response:
    """What mailveil sent while no smarthost is configured, newest first."""
    box = _captured(page)
    found = sorted(((key, views.shown(box.get_bytes(key)), box.get_message(key).get_date())
                    for key in box.iterkeys()), key=lambda m: m[2], reverse=True)
    return page.render("captured.html", found=found[:CAPTURED_SHOWN], total=len(found))


@router.get("/captured/{key}")
def captured_one(key: str, page: AgentPage) -> Response:
    raw = _captured_raw(_captured(page), key)
    return page.render("captured_one.html", key=key, raw=raw, shown=views.shown)


@router.get("/captured/{key}/html")
def captured_html(key: str, page: AgentPage) -> Response:
    return _html_response(views.html_of(_captured_raw(_captured(page), key)))


@router.get("/audit")
def audit_page(page: AgentPage, s: DB) -> Response:
    return page.render("audit.html", lines=store.audit_log(s))


def mount(app: FastAPI, ctx: CareContext) -> None:
    app.state.care = ctx
    app.include_router(router)
    app.mount("/care/static", StaticFiles(directory=HERE / "static"), name="care-static")
    pages.add_security_headers(app, "/care")
