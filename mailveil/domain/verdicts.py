"""Every way a message can end, as one closed set stored with it and logged as data."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    RELAYED = "relayed"  # rewritten and queued for the other party
    REFUSED_UNDELIVERABLE = "refused_undeliverable"  # permanent failure, expiry or bounce
    REFUSED_VIRUS = "refused_virus"  # an attachment was found infected
    REFUSED_SEVERAL_CUSTOMERS = "refused_several_customers"  # privacy: >1 customer in To/Cc
    REFUSED_EXPIRED = "refused_expired"  # conversation window closed
    REFUSED_TOO_LARGE = "refused_too_large"  # attachments above the limit
    REFUSED_TOO_COMPLEX = "refused_too_complex"  # over its CPU budget: parked, sender told
    REFUSED_REVIEW = "refused_review"  # a held review request care refused (domain/review.py)
    BOUNCE_RECORDED = "bounce_recorded"  # a DSN for one of our outgoing messages
    FAILED = "failed"  # processing crashed; set aside for a human, never dropped


class Rejection(StrEnum):
    """Refusals given during the SMTP dialogue, never answered by mail (no backscatter)."""

    UNKNOWN_ADDRESS = "unknown_address"
    NOT_A_PARTY = "not_a_party"


class SenderCheck(StrEnum):
    """What the DATA-time SPF, DKIM and DMARC check proved of a message's sender; kept in
    the archive and shown to the recipient when nothing was proved."""

    VERIFIED = "verified"  # an aligned SPF or DKIM pass
    UNVERIFIED = "unverified"  # nothing refused it, nothing proved it
    NOT_CHECKED = "not checked"  # the null sender (a bounce, proved by its VERP token)
