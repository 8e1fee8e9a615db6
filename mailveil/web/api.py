"""The marketplace API: suppliers and bookings in, relay addresses and archives out."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import (
    BookingStatus,
    Party,
    beyond_horizon,
    is_open,
    open_until,
)
from mailveil.store import care
from mailveil.store import repository as repo
from mailveil.store.models import (
    ArchiveEntryRow,
    AttemptRow,
    BookingRow,
    InboundRow,
    OutboundRow,
)
from mailveil.web.care.routes import CareContext, export_response
from mailveil.web.care.routes import mount as mount_care
from mailveil.web.deps import transaction
from mailveil.web.ops import ops_router
from mailveil.web.portal.routes import PortalContext, mint_link, mount
from mailveil.web.schemas import (
    ArchiveEntryOut,
    AttemptOut,
    BookingIn,
    BookingOut,
    BookingPatch,
    CustomerIn,
    OutboundOut,
    PortalLinkOut,
    SupplierIn,
    SupplierOut,
)

_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class ApiContext:
    sessions: Callable[[], Session]
    book: AddressBook
    api_token: str
    grace: timedelta
    horizon: timedelta


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def _authorized(request: Request,
                creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    token = _ctx(request).api_token
    if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


# scope="function": commit before the response is sent, so a 201 means stored.
DB = Annotated[Session, Depends(transaction(_ctx), scope="function")]
router = APIRouter(prefix="/api/v1", dependencies=[Depends(_authorized)])


def _booking_out(s: Session, ctx: ApiContext, row: BookingRow) -> BookingOut:
    booking = repo.to_domain(s, row)
    now = datetime.now(UTC)
    return BookingOut(
        reference=row.reference, supplier_id=row.supplier_id,
        customer=CustomerIn(name=row.customer_name, email=row.customer_email,
                            locale=row.customer_locale),
        activity_start=row.activity_start, activity_end=row.activity_end, status=row.status,
        customer_relay_address=ctx.book.relay_address(Role.CUSTOMER, row.customer_token),
        supplier_relay_address=ctx.book.relay_address(Role.SUPPLIER, row.supplier_token),
        open_until=open_until(booking, ctx.grace),
        is_open=is_open(booking, ctx.grace, now),
    )


def _check_mailbox(ctx: ApiContext, field: str, email: str) -> None:
    """A party's address on the relay domain would have the relay write to itself."""
    if ctx.book.is_ours(email):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{field} {email!r} is an address of the relay domain {ctx.book.domain}; "
            "give the party's own mailbox")


def _check_dates(ctx: ApiContext, **dates: datetime | None) -> None:
    now = datetime.now(UTC)
    for field, when in dates.items():
        if when is not None and beyond_horizon(when, now, ctx.horizon):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{field} {when.isoformat()} is more than {ctx.horizon.days} days from now "
                "(MAILVEIL_BOOKING_HORIZON_DAYS)")


def _existing(s: Session, reference: str) -> BookingRow:
    row = repo.booking_by_reference(s, reference)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no booking with reference {reference!r}")
    return row


@router.post("/suppliers", status_code=status.HTTP_201_CREATED)
def put_supplier(body: SupplierIn, s: DB, request: Request) -> SupplierOut:
    """Create or update a supplier (idempotent by id)."""
    _check_mailbox(_ctx(request), "email", body.email)
    repo.upsert_supplier(s, id=body.id, name=body.name, email=body.email, locale=body.locale,
                         now=datetime.now(UTC))
    return SupplierOut(**body.model_dump())


@router.post("/bookings", status_code=status.HTTP_201_CREATED)
def post_booking(body: BookingIn, s: DB, request: Request, response: Response) -> BookingOut:
    """Register a confirmed booking; re-posting a reference returns the same addresses."""
    ctx = _ctx(request)
    _check_mailbox(ctx, "customer.email", body.customer.email)
    _check_dates(ctx, activity_start=body.activity_start, activity_end=body.activity_end)
    existing = repo.booking_by_reference(s, body.reference)
    if existing is not None:
        if existing.supplier_id != body.supplier_id:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                "this reference belongs to another supplier")
        response.status_code = status.HTTP_200_OK
        return _booking_out(s, ctx, existing)
    if repo.get_supplier(s, body.supplier_id) is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"unknown supplier_id {body.supplier_id!r}; POST /api/v1/suppliers first")
    row = repo.create_booking(
        s, reference=body.reference, supplier_id=body.supplier_id,
        customer=Party(body.customer.name, body.customer.email, body.customer.locale),
        activity_start=body.activity_start, activity_end=body.activity_end,
        now=datetime.now(UTC))
    return _booking_out(s, ctx, row)


@router.get("/bookings/{reference}")
def get_booking(reference: str, s: DB, request: Request) -> BookingOut:
    return _booking_out(s, _ctx(request), _existing(s, reference))


@router.patch("/bookings/{reference}")
def patch_booking(reference: str, body: BookingPatch, s: DB, request: Request) -> BookingOut:
    """Move the activity (the conversation window moves with it) or cancel the booking."""
    row = _existing(s, reference)
    _check_dates(_ctx(request), activity_start=body.activity_start,
                 activity_end=body.activity_end)
    now = datetime.now(UTC)
    start = body.activity_start or row.activity_start
    end = body.activity_end or row.activity_end
    if end < start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "activity_end is before activity_start")
    row.activity_start, row.activity_end, row.updated_at = start, end, now
    if body.status == "cancelled" and row.status != BookingStatus.CANCELLED:
        row.status, row.cancelled_at = BookingStatus.CANCELLED.value, now
    s.flush()
    return _booking_out(s, _ctx(request), row)


@router.get("/bookings/{reference}/messages")
def get_archive(reference: str, s: DB) -> list[ArchiveEntryOut]:
    """Every message of the conversation: what came in, what went out, every attempt."""
    booking = _existing(s, reference)
    entries = s.scalars(select(ArchiveEntryRow).where(ArchiveEntryRow.booking_id == booking.id)
                        .order_by(ArchiveEntryRow.id)).all()
    out = []
    for e in entries:
        inbound = s.get(InboundRow, e.inbound_id)
        assert inbound is not None
        copies = s.scalars(select(OutboundRow).where(OutboundRow.inbound_id == inbound.id,
                                                     OutboundRow.booking_id == booking.id)
                           .order_by(OutboundRow.id)).all()
        out.append(ArchiveEntryOut(
            inbound_id=inbound.id, received_at=inbound.received_at, sender=e.sender_role,
            subject=e.subject, outcome=e.outcome, detail=e.detail, size=inbound.size,
            sha256=inbound.sha256, scan=inbound.scan, sender_check=inbound.sender_check,
            encrypted=inbound.tls_version is not None, tls_version=inbound.tls_version,
            client_address=inbound.client_address, client_helo=inbound.client_helo,
            outbound=[_outbound_out(s, o) for o in copies],
        ))
    return out


@router.get("/bookings/{reference}/export")
def get_export(reference: str, s: DB) -> Response:
    """The dispute record: every .eml as received and as delivered, a transcript and a
    SHA-256 manifest (the console's export button gives the same zip)."""
    return export_response(s, _existing(s, reference))


@router.get("/bookings/{reference}/messages/{inbound_id}/raw")
def get_raw(reference: str, inbound_id: int, s: DB) -> Response:
    """A message exactly as received (``inbound_id`` as in the archive listing)."""
    inbound = care.inbound_of(s, _existing(s, reference).id, inbound_id)
    if inbound is None or inbound.purged_at is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such message, or its body was purged")
    return Response(inbound.raw, media_type="message/rfc822",
                    headers={"Content-Disposition": f'attachment; filename="{inbound.id}.eml"'})


def _outbound_out(s: Session, o: OutboundRow) -> OutboundOut:
    attempts = s.scalars(select(AttemptRow).where(AttemptRow.outbound_id == o.id)
                         .order_by(AttemptRow.id)).all()
    return OutboundOut(
        id=o.id, kind=o.kind, to=o.recipient_role or "", message_id=o.message_id, state=o.state,
        sha256=o.sha256, steps=o.steps,
        attempts=[AttemptOut(attempted_at=a.attempted_at, code=a.code, response=a.response,
                             outcome=a.outcome, encrypted=a.tls_version is not None,
                             tls_version=a.tls_version) for a in attempts],
    )


# Mounted with the portal (create_app), whose settings the links take.
portal_api = APIRouter(prefix="/api/v1", dependencies=[Depends(_authorized)])


@portal_api.post("/suppliers/{supplier_id}/portal-link", status_code=status.HTTP_201_CREATED)
def post_portal_link(supplier_id: str, s: DB, request: Request) -> PortalLinkOut:
    """A one-time link signing the supplier in to the portal, for a button in the
    marketplace's back office; it expires after MAILVEIL_PORTAL_LINK_MINUTES."""
    portal: PortalContext = request.app.state.portal
    if repo.get_supplier(s, supplier_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no supplier with id {supplier_id!r}")
    url, expires_at = mint_link(s, portal.base_url, supplier_id, portal.link_lifetime,
                                datetime.now(UTC))
    return PortalLinkOut(url=url, expires_at=expires_at)


def create_app(ctx: ApiContext, portal: PortalContext | None = None,
               care_ctx: CareContext | None = None) -> FastAPI:
    """The API, and with ``portal`` the supplier portal and its link-minting call, with
    ``care_ctx`` the care console."""
    app = FastAPI(title="mailveil", summary="Masked e-mail relay for marketplaces",
                  version="0.1.0")
    app.state.ctx = ctx
    app.include_router(router)
    app.include_router(ops_router(ctx.sessions))
    if portal is not None:
        app.include_router(portal_api)
        mount(app, portal)
    if care_ctx is not None:
        mount_care(app, care_ctx)
    return app
