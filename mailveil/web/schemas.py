"""The marketplace API's request and response bodies (OpenAPI at ``/docs``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from babel import Locale, UnknownLocaleError
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, model_validator


def _email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc


def _locale(value: str) -> str:
    try:
        return str(Locale.parse(value.replace("-", "_")))
    except (ValueError, UnknownLocaleError) as exc:
        raise ValueError(
            f"unknown locale {value!r}; use a code such as en, fr, th or fr-CH") from exc


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 is before the first UTC instant
        raise ValueError("time out of range once converted to UTC") from exc


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
LocaleCode = Annotated[str, Field(max_length=35), AfterValidator(_locale)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]


class SupplierIn(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
    name: Name
    email: Email
    locale: LocaleCode = "en"


class SupplierOut(SupplierIn):
    pass


class CustomerIn(BaseModel):
    name: Name
    email: Email
    locale: LocaleCode = "en"


class BookingIn(BaseModel):
    reference: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
    supplier_id: str
    customer: CustomerIn
    activity_start: UtcTime
    activity_end: UtcTime

    @model_validator(mode="after")
    def _ordered(self) -> BookingIn:
        if self.activity_end < self.activity_start:
            raise ValueError("activity_end is before activity_start")
        return self


class BookingPatch(BaseModel):
    activity_start: UtcTime | None = None
    activity_end: UtcTime | None = None
    status: Literal["cancelled"] | None = None


class BookingOut(BaseModel):
    reference: str
    supplier_id: str
    customer: CustomerIn
    activity_start: datetime
    activity_end: datetime
    status: str
    customer_relay_address: str
    supplier_relay_address: str
    open_until: datetime
    is_open: bool


class AttemptOut(BaseModel):
    attempted_at: datetime
    code: int | None
    response: str
    outcome: str
    encrypted: bool  # the attempt's connection to the smarthost used TLS
    tls_version: str | None  # e.g. "TLSv1.3"


class OutboundOut(BaseModel):
    id: int
    kind: str
    to: str  # "customer" | "supplier": never the real address in the archive listing
    message_id: str
    state: str
    sha256: str
    steps: list[str] | None  # a relayed copy: the steps that changed it, in order
    attempts: list[AttemptOut]


class ArchiveEntryOut(BaseModel):
    inbound_id: int
    received_at: datetime
    sender: str | None  # "customer" | "supplier" | None (bounce)
    subject: str
    outcome: str
    detail: str
    size: int
    sha256: str
    scan: str
    sender_check: str  # "verified" | "unverified" (the recipient was warned) | "not checked"
    encrypted: bool  # received over TLS (STARTTLS)
    tls_version: str | None
    # The client the message came from (as Postfix saw it, when Postfix forwarded it);
    # None once retention removed it with the body, or for messages older than the record.
    client_address: str | None
    client_helo: str | None
    outbound: list[OutboundOut]


class PortalLinkOut(BaseModel):
    url: str  # one-time: the first sign-in through it spends it
    expires_at: datetime
