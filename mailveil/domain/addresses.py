"""Relay addresses: ``customer-<12 hex>@domain`` and ``local-partner-<12 hex>@domain``.

The 12 hex digits (48 bits) come from the operating system's CSPRNG so that nobody can
guess another booking's address; uniqueness is enforced by the store's unique index.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_HEX_DIGITS = 12
BOUNCE_TOKEN_HEX_DIGITS = 20  # one per outgoing message: 80 bits keep clashes out of reach
_TOKEN_RE = re.compile(r"^[0-9a-f]{12}$")
_BOUNCE_TOKEN_RE = re.compile(r"^[0-9a-f]{20}$")


class Role(StrEnum):
    """Which party of a booking an address stands for."""

    CUSTOMER = "customer"
    SUPPLIER = "supplier"

    @property
    def other(self) -> Role:
        return Role.SUPPLIER if self is Role.CUSTOMER else Role.CUSTOMER


class Kind(StrEnum):
    """What a local part on the relay domain means to the listener."""

    PARTY = "party"
    BOUNCE = "bounce"


@dataclass(frozen=True)
class AddressBook:
    """The operator's naming scheme for addresses on the relay domain."""

    domain: str
    customer_prefix: str = "customer-"
    supplier_prefix: str = "local-partner-"
    bounce_prefix: str = "bounce-"
    noreply_local: str = "no-reply"

    def relay_address(self, role: Role, token: str) -> str:
        prefix = self.customer_prefix if role is Role.CUSTOMER else self.supplier_prefix
        return f"{prefix}{token}@{self.domain}"

    def bounce_address(self, token: str) -> str:
        return f"{self.bounce_prefix}{token}@{self.domain}"

    @property
    def noreply_address(self) -> str:
        return f"{self.noreply_local}@{self.domain}"

    def is_ours(self, address: str) -> bool:
        """True for any address on the relay domain (relay, bounce or no-reply)."""
        return address.rpartition("@")[2].lower() == self.domain

    def parse(self, address: str) -> ParsedAddress | None:
        """Classify an envelope recipient; ``None`` when it cannot be one of ours."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower() != self.domain:
            return None
        local = local.lower()
        for prefix, role in ((self.customer_prefix, Role.CUSTOMER),
                             (self.supplier_prefix, Role.SUPPLIER)):
            if local.startswith(prefix) and _TOKEN_RE.match(local[len(prefix):]):
                return ParsedAddress(Kind.PARTY, local[len(prefix):], role)
        if (local.startswith(self.bounce_prefix)
                and _BOUNCE_TOKEN_RE.match(local[len(self.bounce_prefix):])):
            return ParsedAddress(Kind.BOUNCE, local[len(self.bounce_prefix):], None)
        return None


@dataclass(frozen=True)
class ParsedAddress:
    kind: Kind
    token: str
    role: Role | None


def new_token() -> str:
    """A fresh 48-bit random token in lower-case hex."""
    return secrets.token_hex(TOKEN_HEX_DIGITS // 2)


def new_bounce_token() -> str:
    return secrets.token_hex(BOUNCE_TOKEN_HEX_DIGITS // 2)


def same_mailbox(a: str, b: str) -> bool:
    """Compare two addresses the way mail providers do in practice: case-insensitively."""
    return a.strip().strip("<>").lower() == b.strip().strip("<>").lower()
