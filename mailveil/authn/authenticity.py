"""Is a message really from the domain of its sender's registered address? SPF, DKIM, DMARC.

The RCPT gate only compares MAIL FROM with the party's registered address, and anyone can
forge MAIL FROM; this is the DATA-time check that refuses spoofed senders (PRODUCT.md,
"Relaying"). One DNS resolver, asynchronous, serves all three checks, which run at once.

* SPF (RFC 7208) is evaluated in :mod:`mailveil.authn.spf`.
* DKIM keys are fetched here, concurrently, then dkimpy verifies in a worker thread from
  those answers: no second, blocking resolver to configure, and the RSA arithmetic (pure
  Python) stays off the event loop.
* DMARC (RFC 7489) finds the policy at the From domain, then at its organizational domain
  from the Public Suffix List (the ``publicsuffixlist`` package, which ships the list).
  ``pct`` is ignored: a failing message is refused every time, the relay has no spam
  folder to put a sampled share in.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from enum import StrEnum
from typing import Final, Literal

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value
from dns.asyncresolver import Resolver
from publicsuffixlist import PublicSuffixList

from mailveil.authn.lookup import DNS_TIMEOUT, TempError, domain_of, normalized, query
from mailveil.authn.spf import SpfResult, check_spf
from mailveil.mail.mime import header_block

DkimResult = Literal["pass", "fail", "temperror"]
DmarcResult = Literal["pass", "fail", "none", "temperror"]
Policy = Literal["none", "quarantine", "reject"]

MAX_DKIM_SIGNATURES: Final = 5  # more is no sender's need, only a way to make us do work

# Reasons, with the enhanced status code (RFC 3463, RFC 7372): the listener answers
# "550 <reason>" on REJECT and "451 <reason>" on TEMPFAIL. None names an address.
AUTHENTICATED: Final = "2.7.0 Sender authenticated"
NOT_REFUSED: Final = "2.7.0 No authentication failure"
FROM_MISMATCH: Final = ("5.7.1 The From header must show one address, at the domain of the "
                        "sender address registered for this booking")
DMARC_FAIL: Final = ("5.7.26 Message fails DMARC authentication and the sender's domain asks "
                     "receivers to refuse such mail")
SPF_FAIL: Final = ("5.7.23 The sending server is not allowed by the SPF record of the sender's "
                   "domain, and no valid DKIM signature of that domain covers the message")
DNS_TEMPFAIL: Final = ("4.4.3 The sender's SPF, DKIM or DMARC records cannot be looked up now, "
                       "please try again later")


class Verdict(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"  # answered 550
    TEMPFAIL = "tempfail"  # answered 451: the sender's server tries again later


@dataclass(frozen=True)
class Authenticity:
    """What the checks found, kept with the message; ``verdict`` and ``reason`` follow."""

    spf: SpfResult
    dkim: tuple[tuple[str, DkimResult], ...]  # (d= domain, result), in header order
    dmarc: DmarcResult
    policy: Policy  # of the From domain; "none" when it publishes no DMARC record
    from_domain: str  # "" when the From header does not name exactly one address
    mail_from_domain: str  # "" for the null sender

    @property
    def verdict(self) -> Verdict:
        return self._decision()[0]

    @property
    def reason(self) -> str:
        return self._decision()[1]

    def _decision(self) -> tuple[Verdict, str]:
        # A party may not show someone else's domain in From. The null sender (a bounce)
        # has no registered address to compare with: DMARC alone judges its From. With no
        # usable From (none, or several addresses) only SPF can judge, and nobody will see
        # it: the relay writes its own From.
        if (self.mail_from_domain and self.from_domain
                and self.from_domain != self.mail_from_domain):
            return Verdict.REJECT, FROM_MISMATCH
        if self.dmarc == "pass":
            return Verdict.ACCEPT, AUTHENTICATED
        if self.dmarc == "temperror":
            return Verdict.TEMPFAIL, DNS_TEMPFAIL
        if self.dmarc == "fail" and self.policy != "none":
            return Verdict.REJECT, DMARC_FAIL
        # No DMARC record, or p=none (monitoring): the domain's SPF hard fail still counts.
        if self.spf == "fail":
            return Verdict.REJECT, SPF_FAIL
        return Verdict.ACCEPT, NOT_REFUSED


async def check(raw: bytes, *, client_ip: str, helo: str, mail_from: str,
                resolver: Resolver) -> Authenticity:
    """SPF, DKIM and DMARC for a message received from ``client_ip``.

    ``mail_from`` is the envelope sender, "" for the null sender (then SPF checks the HELO
    name, RFC 7208 2.4). DNS failures come back as temperror results, never as exceptions.
    """
    from_domain = _from_domain(header_block(raw))
    mail_from_domain = domain_of(mail_from)
    spf_domain = mail_from_domain or normalized(helo)
    spf, signatures, record = await asyncio.gather(
        check_spf(resolver, client_ip, spf_domain), verify_dkim(raw, resolver),
        _find_dmarc(resolver, from_domain))
    return Authenticity(
        spf=spf, dkim=signatures,
        dmarc=_dmarc_result(spf, spf_domain, signatures, from_domain, record),
        policy=record.policy if isinstance(record, _Dmarc) else "none",
        from_domain=from_domain, mail_from_domain=mail_from_domain)


def _from_domain(raw: bytes) -> str:
    """The domain of the one address of the one From header; "" when there is not exactly
    one, as RFC 7489 6.6.1 allows refusing such a message."""
    values = BytesHeaderParser(policy=compat32).parsebytes(raw).get_all("From") or []
    addresses = getaddresses([str(value) for value in values])
    if len(values) != 1 or len(addresses) != 1:
        return ""
    return domain_of(addresses[0][1])


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # parses the bundled list once: about 0.1 s


def _organizational(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (a public suffix is its own)."""
    return _public_suffixes().privatesuffix(domain) or domain


def _aligned(domain: str, from_domain: str, *, strict: bool) -> bool:
    if not domain or not from_domain:
        return False
    return domain == from_domain if strict else (
        _organizational(domain) == _organizational(from_domain))



# --- DKIM (RFC 6376) --------------------------------------------------------------------

_Key = bytes | Literal["none", "temperror"]


async def verify_dkim(raw: bytes, resolver: Resolver) -> tuple[tuple[str, DkimResult], ...]:
    """(d= domain, result) for each DKIM-Signature, top first, at most
    :data:`MAX_DKIM_SIGNATURES`; a message dkimpy cannot parse has none."""
    if not re.search(rb"(?im)^dkim-signature\s*:", header_block(raw)):
        return ()  # dkimpy would split the whole body into lines to find nothing
    try:
        verifier = dkim.DKIM(raw)
    except dkim.DKIMException:
        return ()
    signatures = [_tags(value) for name, value in verifier.headers
                  if name.lower() == b"dkim-signature"][:MAX_DKIM_SIGNATURES]
    names = sorted({_key_name(tags) for tags in signatures if tags is not None})
    keys = dict(zip(names, await asyncio.gather(*(_fetch_key(resolver, n) for n in names)),
                    strict=True))
    return await asyncio.to_thread(_verify_all, verifier, signatures, keys)


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    """The signature's tags, ``None`` when they are malformed or lack the key's name."""
    try:
        tags: dict[bytes, bytes] = parse_tag_value(value)
    except InvalidTagValueList:
        return None
    return tags if tags.get(b"d") and tags.get(b"s") else None


def _key_name(tags: dict[bytes, bytes]) -> bytes:
    return tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."  # as dkimpy asks for it


async def _fetch_key(resolver: Resolver, name: bytes) -> _Key:
    try:
        found = await query(resolver, name.decode("latin-1"), "TXT")
    except TempError:
        return "temperror"
    return found[0].encode("latin-1") if found else "none"


def _verify_all(verifier: dkim.DKIM, signatures: list[dict[bytes, bytes] | None],
                keys: dict[bytes, _Key]) -> tuple[tuple[str, DkimResult], ...]:
    """Runs in a worker thread: RSA in pure Python holds the CPU for milliseconds."""
    return tuple(_verify_one(verifier, index, tags, keys[_key_name(tags)] if tags else "none")
                 for index, tags in enumerate(signatures))


def _verify_one(verifier: dkim.DKIM, index: int, tags: dict[bytes, bytes] | None,
                key: _Key) -> tuple[str, DkimResult]:
    if tags is None:
        return "", "fail"
    domain = normalized(tags[b"d"].decode("latin-1"))
    if key == "temperror":
        return domain, "temperror"

    def answer(name: bytes, timeout: float = DNS_TIMEOUT) -> bytes | None:
        return key if isinstance(key, bytes) else None  # dkimpy asks for this key only

    try:
        verified = verifier.verify(idx=index, dnsfunc=answer)
    except dkim.DKIMException:  # a body hash mismatch, an expired signature, a missing tag
        verified = False
    return domain, "pass" if verified else "fail"


# --- DMARC (RFC 7489) -------------------------------------------------------------------

_DMARC_VERSION = re.compile(r"v\s*=\s*DMARC1\s*(?:;|$)")
_POLICIES: Final[dict[str, Policy]] = {
    "none": "none", "quarantine": "quarantine", "reject": "reject"}


@dataclass(frozen=True)
class _Dmarc:
    policy: Policy
    strict_dkim: bool
    strict_spf: bool


async def _find_dmarc(resolver: Resolver, from_domain: str
                      ) -> _Dmarc | Literal["none", "temperror"]:
    """The policy for ``from_domain``, found at it or at its organizational domain (whose
    ``sp=`` then applies), RFC 7489 6.6.3."""
    try:
        for domain, inherited in _policy_domains(from_domain):
            records = [text for text in await query(resolver, f"_dmarc.{domain}", "TXT") or ()
                       if _DMARC_VERSION.match(text)]
            if records:  # several records: DMARC does not apply to this domain
                return _parse_dmarc(records[0], inherited) if len(records) == 1 else "none"
    except TempError:
        return "temperror"
    return "none"


def _policy_domains(from_domain: str) -> Iterator[tuple[str, bool]]:
    if from_domain:
        yield from_domain, False
        organizational = _organizational(from_domain)
        if organizational != from_domain:
            yield organizational, True


def _parse_dmarc(record: str, inherited: bool) -> _Dmarc:
    """A missing or unknown policy counts as "none", a domain that only monitors."""
    tags = {key.strip().lower(): value.strip().lower()
            for key, _, value in (part.partition("=") for part in record.split(";"))}
    requested = tags.get("sp", tags.get("p")) if inherited else tags.get("p")
    return _Dmarc(_POLICIES.get(requested or "", "none"),
                  strict_dkim=tags.get("adkim") == "s", strict_spf=tags.get("aspf") == "s")


def _dmarc_result(spf: SpfResult, spf_domain: str, signatures: Sequence[tuple[str, DkimResult]],
                  from_domain: str, record: _Dmarc | Literal["none", "temperror"]
                  ) -> DmarcResult:
    """pass when SPF or a DKIM signature passes for a domain aligned with From; temperror
    when one that might have passed could not be checked (RFC 7489 4.2, 6.6.2)."""
    found = record if isinstance(record, _Dmarc) else None
    strict_spf = found is not None and found.strict_spf
    strict_dkim = found is not None and found.strict_dkim
    aligned = [result for domain, result in signatures
               if _aligned(domain, from_domain, strict=strict_dkim)]
    if "pass" in aligned or (
            spf == "pass" and _aligned(spf_domain, from_domain, strict=strict_spf)):
        return "pass"
    if record == "temperror" or spf == "temperror" or "temperror" in aligned:
        return "temperror"
    return "fail" if found else "none"

