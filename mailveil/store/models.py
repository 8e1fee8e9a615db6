"""Tables. The outbox is the ``outbound_messages`` table itself: queueing a message and
archiving it are one row written in one transaction, so neither can exist without the other.

Raw messages are stored as received and as sent, with their SHA-256, so ``mailveil archive
verify`` can prove the archive is what was received and sent. They are not compressed here:
most of mail's bytes are base64 of already-compressed files, and PostgreSQL compresses
large values itself (TOAST).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class SupplierRow(Base):
    __tablename__ = "suppliers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    locale: Mapped[str] = mapped_column(String(35))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class BookingRow(Base):
    __tablename__ = "bookings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    supplier_id: Mapped[str] = mapped_column(ForeignKey("suppliers.id"), index=True)
    customer_name: Mapped[str] = mapped_column(String(200))
    customer_email: Mapped[str] = mapped_column(String(320))
    customer_locale: Mapped[str] = mapped_column(String(35))
    activity_start: Mapped[datetime]
    activity_end: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    cancelled_at: Mapped[datetime | None]
    customer_token: Mapped[str] = mapped_column(String(12), unique=True)
    supplier_token: Mapped[str] = mapped_column(String(12), unique=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    # The portal lists a supplier's bookings by activity date, a page after a (date, id) key.
    __table_args__ = (Index("ix_bookings_supplier_start", "supplier_id", "activity_start", "id"),)


class InboundRow(Base):
    """A message exactly as accepted with 250, before anything was decided about it."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime]
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[list[str]] = mapped_column(JSON)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))  # an InboundState (domain/states.py)
    lease_until: Mapped[datetime | None]
    lease_holder: Mapped[str | None] = mapped_column(String(32))  # a WorkerRow.id
    processed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    scan: Mapped[str] = mapped_column(String(64), default="not scanned")
    sender_check: Mapped[str] = mapped_column(String(16), server_default="not checked")
    tls_version: Mapped[str | None] = mapped_column(String(16))  # None: received in clear
    # The client Postfix (or whoever connected) received it from; personal data, removed
    # with the raw bytes. The HELO name is the client's to choose, hence unbounded text.
    client_address: Mapped[str | None] = mapped_column(String(64))
    client_helo: Mapped[str | None] = mapped_column(Text)
    purged_at: Mapped[datetime | None]  # raw bytes removed by retention; metadata kept

    __table_args__ = (
        Index("ix_inbound_state_id", "state", "id"),
        Index("ix_inbound_received_at", "received_at"),
    )


class QuarantineRow(Base):
    """Infected messages, kept apart from the archive: the inbound row holds only headers."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    findings: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class ArchiveEntryRow(Base):
    """What was decided about one inbound message for one booking (BCC makes several)."""

    __tablename__ = "archive_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    sender_role: Mapped[str | None] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class OutboundRow(Base):
    """One message to one recipient: a relayed copy or a notice. Also the outbox."""

    __tablename__ = "outbound_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # relay | notice
    recipient_role: Mapped[str | None] = mapped_column(String(16))
    bounce_token: Mapped[str] = mapped_column(String(24), unique=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str] = mapped_column(String(255))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    # A relayed copy: the names of the steps that changed it (mail/rewrite.STEPS); else NULL.
    steps: Mapped[list[str] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # an OutboxState (domain/states.py)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    lease_holder: Mapped[str | None] = mapped_column(String(32))  # a WorkerRow.id
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_outbound_state_next", "state", "next_attempt_at"),
        Index("ix_outbound_created_at", "created_at"),
    )


class AttemptRow(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    outbound_id: Mapped[int] = mapped_column(ForeignKey("outbound_messages.id"), index=True)
    attempted_at: Mapped[datetime]
    code: Mapped[int | None]
    response: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | temporary | permanent
    tls_version: Mapped[str | None] = mapped_column(String(16))  # None: in clear, or no connection


class MessageIdRow(Base):
    """Original Message-ID of a relayed message and the one we gave its copy."""

    __tablename__ = "message_ids"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"))
    sender_role: Mapped[str] = mapped_column(String(16))
    original_id: Mapped[str] = mapped_column(String(255))
    relayed_id: Mapped[str] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_message_ids_relayed", "booking_id", "relayed_id"),
        Index("ix_message_ids_original", "booking_id", "original_id"),
    )


class WorkerRow(Base):
    """A running worker process, so that the leases of one that died are taken back at once
    instead of when they run out (mailveil/store/workers.py)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    machine: Mapped[str] = mapped_column(String(128))  # boot id and pid namespace
    pid: Mapped[int]
    pid_started: Mapped[int] = mapped_column(BigInteger)  # clock ticks after boot
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class LimitCountRow(Base):
    """Events that limits count (new sessions, unknown recipients, messages of a sender),
    per key and time bucket, summed over every listener (mailveil/store/limits.py)."""

    __tablename__ = "limit_counts"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int]

    __table_args__ = (Index("ix_limit_counts_bucket", "kind", "bucket"),)


class LimitSessionRow(Base):
    """The sessions one listener process holds open per client address, as of ``seen_at``."""

    __tablename__ = "limit_sessions"

    listener: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    active: Mapped[int]
    seen_at: Mapped[datetime]


class LimitCooldownRow(Base):
    """A client address refused until ``until`` (address harvesting)."""

    __tablename__ = "limit_cooldowns"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    until: Mapped[datetime]


class PortalLinkRow(Base):
    """A one-time sign-in link to the supplier portal; only the SHA-256 of its token is kept,
    so the table's contents sign nobody in."""

    __tablename__ = "portal_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    supplier_id: Mapped[str] = mapped_column(ForeignKey("suppliers.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class CancellationRow(Base):
    """A supplier's "the customer asked to cancel", waiting for the customer's answer through
    the mailed link (the SHA-256 of its token is kept)."""

    __tablename__ = "cancellation_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # requested | confirmed | declined
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    answer_by: Mapped[datetime]  # after this, unanswered: recorded for care
    answered_at: Mapped[datetime | None]


class WebhookEventRow(Base):
    """An event for the marketplace, queued in the transaction of the change it reports and
    delivered at least once to MAILVEIL_WEBHOOK_URL (mailveil/web/webhooks.py)."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent and signed
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]  # None: delivered
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_webhook_events_due", "next_attempt_at"),)


class ContactTicketRow(Base):
    """A message left on the contact form a closed conversation's notice links to, for care."""

    __tablename__ = "contact_tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # who wrote: customer | supplier
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class CareAgentRow(Base):
    """A care agent of the console; removing one keeps the row, for the audit log."""

    __tablename__ = "care_agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]


class CareLinkRow(Base):
    """A one-time sign-in link of an agent, stored as its SHA-256 like the portal's."""

    __tablename__ = "care_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("care_agents.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class CareAuditRow(Base):
    """What an agent did, append-only: the database refuses UPDATE and DELETE (0012)."""

    __tablename__ = "care_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("care_agents.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)


class CareClosureRow(Base):
    """An item of a care queue closed by an agent, with their note; closed once."""

    __tablename__ = "care_closures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # ticket | cancellation | review
    item_id: Mapped[int]
    agent_id: Mapped[int] = mapped_column(ForeignKey("care_agents.id"))
    note: Mapped[str] = mapped_column(Text)
    closed_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("kind", "item_id"),)


class ReviewFlagRow(Base):
    """A supplier's message to one booking's customer that asks for a review elsewhere
    (mailveil/domain/review.py), in care's queue until an agent closes it (care_closures,
    kind ``review``); ``held``: its copies wait in the outbox as ``held`` meanwhile."""

    __tablename__ = "review_flags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    held: Mapped[bool]
    found: Mapped[list[str]] = mapped_column(JSON)  # the pieces of text that matched
    created_at: Mapped[datetime]
