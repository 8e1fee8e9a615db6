"""Is a message really from the party whose address it claims? SPF, DKIM, DMARC.

The RCPT gate only compares MAIL FROM with the party's registered address, and anyone can
forge MAIL FROM; this is the DATA-time check that refuses spoofed senders (PRODUCT.md,
"Relaying"). One DNS resolver, asynchronous, serves all three checks, which run at once.

* The From header must hold exactly one mailbox, and it must be the envelope sender, which
  the gate has already found to be the booking's party: the rest of the relay (gate,
  rules, composing) knows the sender by the envelope alone, so a From that shows anyone
  else would be authenticated for the wrong person. RFC 5322 3.6 wants exactly one From
  field with a mailbox list; RFC 7489 6.6.1 lets a receiver refuse any other shape, or
  evaluate DMARC for every domain and apply the strictest. The relay refuses every other
  shape outright (:class:`FromShape`): a missing or empty From, several From fields,
  several addresses, a group (``undisclosed-recipients:;``) or an address that cannot be
  read. None of them can be the one party the relay speaks for, whatever the DNS says,
  so they are refused before DNS errors are considered (550, never 451), and no policy
  of any domain can let them through. Evaluating every domain would only matter for a
  shape the relay does not accept anyway.
* SPF (RFC 7208) is evaluated in :mod:`mailveil.authn.spf`.
* DKIM keys are fetched here, concurrently, then dkimpy verifies in a worker process
  from those answers: no second, blocking resolver to configure, and neither the body
  canonicalisation of a 13 MiB message (regular expressions that hold the GIL for 0.2 s
  and more) nor the RSA arithmetic (pure Python) runs where it would stall every other
  SMTP session. Reading the headers (From, the signatures) runs in a thread.
* DMARC (RFC 7489) finds the policy at the From domain, then at its organizational domain
  from the Public Suffix List (the ``publicsuffixlist`` package, which ships the list).
  ``pct`` is ignored: a failing message is refused every time, the relay has no spam
  folder to put a sampled share in.
* A message that nothing refuses but nothing proves either (no aligned SPF or DKIM pass:
  the domain publishes nothing, or only ``~all``/``?all``, or ``p=none``) is *unverified*:
  accepted, marked so in the archive and in the recipient's banner, or refused when the
  operator sets ``MAILVEIL_UNVERIFIED_SENDERS=refuse``.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from email.policy import default as default_policy
from email.utils import getaddresses
from enum import StrEnum
from typing import Final, Literal

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value
from dns.asyncresolver import Resolver
from publicsuffixlist import PublicSuffixList

from mailveil.authn.lookup import DNS_TIMEOUT, TempError, domain_of, normalized, query
from mailveil.authn.spf import SpfResult, check_spf
from mailveil.domain.addresses import same_mailbox
from mailveil.mail.dkim import crlf
from mailveil.mail.mime import Entity, header_block

DkimResult = Literal["pass", "fail", "temperror"]
DmarcResult = Literal["pass", "fail", "none", "temperror"]
Policy = Literal["none", "quarantine", "reject"]

MAX_DKIM_SIGNATURES: Final = 5  # more is no sender's need, only a way to make us do work


class FromShape(StrEnum):
    """What the From header holds; only ``ONE`` is evaluated, the rest are refused."""

    ONE = "one mailbox"
    MISSING = "missing"
    SEVERAL_FIELDS = "several From fields"
    SEVERAL_ADDRESSES = "several addresses"
    GROUP = "group"
    NO_ADDRESS = "no address"  # empty, "<>", or nothing that reads as local@domain


class Refusal(StrEnum):
    """Why a message is refused: a fact of the check, worded by the listener as the reply of
    the same name in :mod:`mailveil.smtp.replies`, which speaks SMTP; this module only
    decides (the RCPT gate's :class:`~mailveil.domain.verdicts.Rejection` works the same)."""

    FROM_SHAPE = "from shape"  # see from_shape: not exactly one mailbox
    FROM_MISMATCH = "from mismatch"  # From is not the envelope sender
    DMARC_FAIL = "dmarc fail"  # and the domain's policy is quarantine or reject
    SPF_FAIL = "spf fail"  # no DMARC policy to apply, and SPF fails hard
    UNVERIFIED = "unverified"  # nothing proved it, and MAILVEIL_UNVERIFIED_SENDERS=refuse
    DNS_TEMPFAIL = "dns tempfail"  # the records cannot be looked up now: try again later


class Verdict(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"  # answered 550
    TEMPFAIL = "tempfail"  # answered 451: the sender's server tries again later


def verdict_of(refusal: Refusal | None) -> Verdict:
    """Only a DNS failure is temporary: everything else is a fact of the message."""
    if refusal is None:
        return Verdict.ACCEPT
    return Verdict.TEMPFAIL if refusal is Refusal.DNS_TEMPFAIL else Verdict.REJECT


@dataclass(frozen=True)
class Authenticity:
    """What the checks found, kept with the message; ``refusal`` and ``verdict`` follow."""

    spf: SpfResult
    dkim: tuple[tuple[str, DkimResult], ...]  # (d= domain, result), in header order
    dmarc: DmarcResult
    policy: Policy  # of the From domain; "none" when it publishes no DMARC record
    from_shape: FromShape
    from_address: str  # the one From mailbox; "" unless from_shape is ONE
    mail_from: str  # "" for the null sender
    refuse_unverified: bool = False  # MAILVEIL_UNVERIFIED_SENDERS=refuse

    @property
    def from_domain(self) -> str:
        return domain_of(self.from_address)

    @property
    def verified(self) -> bool:
        """An aligned SPF or DKIM pass proves that the From domain sent the message."""
        return self.dmarc == "pass"

    @property
    def verdict(self) -> Verdict:
        return verdict_of(self.refusal)

    @property
    def refusal(self) -> Refusal | None:
        """Why the message is refused, or None when it is accepted."""
        # The From shape and the From mailbox are facts of the message alone: refused
        # before anything the DNS said. The null sender (a bounce) has no registered
        # address to compare with: DMARC alone judges its From.
        if self.from_shape is not FromShape.ONE:
            return Refusal.FROM_SHAPE
        if self.mail_from and not same_mailbox(self.from_address, self.mail_from):
            return Refusal.FROM_MISMATCH
        if self.verified:
            return None
        if self.dmarc == "temperror":
            return Refusal.DNS_TEMPFAIL
        if self.dmarc == "fail" and self.policy != "none":
            return Refusal.DMARC_FAIL
        # No DMARC record, or p=none (monitoring): the domain's SPF hard fail still counts.
        if self.spf == "fail":
            return Refusal.SPF_FAIL
        return Refusal.UNVERIFIED if self.refuse_unverified else None


async def check(raw: bytes, *, client_ip: str, helo: str, mail_from: str,
                resolver: Resolver, refuse_unverified: bool = False) -> Authenticity:
    """SPF, DKIM and DMARC for a message received from ``client_ip``.

    ``mail_from`` is the envelope sender, "" for the null sender (then SPF checks the HELO
    name, RFC 7208 2.4). DNS failures come back as temperror results, never as exceptions.
    """
    shape, from_address, signatures = await asyncio.to_thread(_read_headers, raw)
    from_domain = domain_of(from_address)
    mail_from_domain = domain_of(mail_from)
    spf_domain = mail_from_domain or normalized(helo)
    spf, dkim_results, record = await asyncio.gather(
        check_spf(resolver, client_ip, spf_domain), _verify_dkim(raw, signatures, resolver),
        _find_dmarc(resolver, from_domain))
    return Authenticity(
        spf=spf, dkim=dkim_results,
        dmarc=_dmarc_result(spf, spf_domain, dkim_results, from_domain, record),
        policy=record.policy if isinstance(record, _Dmarc) else "none",
        from_shape=shape, from_address=from_address, mail_from=mail_from,
        refuse_unverified=refuse_unverified)


_Signature = dict[bytes, bytes] | None  # a DKIM-Signature's tags; None when malformed


def _read_headers(raw: bytes) -> tuple[FromShape, str, list[_Signature]]:
    """The From shape, its one mailbox, and the DKIM signatures (at most
    :data:`MAX_DKIM_SIGNATURES`; none when dkimpy cannot parse the header block).

    Runs in a worker thread: a header block may be megabytes of an attacker's text."""
    head = header_block(raw)
    shape, address = from_shape(head)
    try:
        headers, _ = dkim.rfc822_parse(head)
    except (dkim.DKIMException, IndexError):  # IndexError: a block led by a continuation line
        return shape, address, []
    signatures = [_tags(value) for name, value in headers if name.lower() == b"dkim-signature"]
    return shape, address, signatures[:MAX_DKIM_SIGNATURES]


def from_shape(head: bytes) -> tuple[FromShape, str]:
    """The shape of the From header in ``head`` and, for ``ONE``, its mailbox.

    The fields are read by the relay's own MIME reader, as everywhere else: a second
    parser could see another From (and missed one after a byte-order mark)."""
    values = [found.text for found in Entity(head).fields if found.key == "from"]
    if not values:
        return FromShape.MISSING, ""
    if len(values) > 1:
        return FromShape.SEVERAL_FIELDS, ""
    value = values[0]
    if _is_group(value):
        return FromShape.GROUP, ""
    addresses = [address for _, address in getaddresses([value])]
    readable = [a for a in addresses if re.fullmatch(r"[^@\s]+@[^@\s]+", a)]
    if len(addresses) > 1 and len(readable) > 1:
        return FromShape.SEVERAL_ADDRESSES, ""
    if len(addresses) != 1 or len(readable) != 1:
        return FromShape.NO_ADDRESS, ""
    return FromShape.ONE, readable[0]


def _is_group(value: str) -> bool:
    """RFC 5322 group syntax (``name: members;``), which the stdlib's address-list parser
    recognises; a value it cannot parse at all is no group (and no readable address)."""
    try:
        groups = default_policy.header_factory("From", value).groups
    except Exception:  # the stdlib parser fails on some hostile values
        return False
    return any(group.display_name is not None for group in groups)


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


async def _verify_dkim(raw: bytes, signatures: list[_Signature], resolver: Resolver
                       ) -> tuple[tuple[str, DkimResult], ...]:
    """(d= domain, result) for each signature, top first: keys fetched here, on the loop
    (DNS waits, it does not compute), then checked in a worker process.

    A process, not a thread: dkimpy's body canonicalisation is regular-expression calls
    over the whole body, which hold the GIL throughout ("relaxed", what most senders use:
    0.2 s for 13 MiB on a quiet machine, 2 s on a busy one), so from a thread they would
    still stop every other SMTP session. A pool that broke (a worker was killed) raises
    here, so the sender is asked to try again, and the next message gets a new pool.
    """
    if not signatures:
        return ()
    names = sorted({_key_name(tags) for tags in signatures if tags is not None})
    keys = dict(zip(names, await asyncio.gather(*(_fetch_key(resolver, n) for n in names)),
                    strict=True))
    known = [_without_arithmetic(tags, keys[_key_name(tags)] if tags else "none")
             for tags in signatures]
    if all(result is not None for result in known):
        return tuple(result for result in known if result is not None)  # no process needed
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_dkim_processes(), _verify_all, raw, signatures, keys)
    except BrokenProcessPool:
        _dkim_processes.cache_clear()
        raise


@functools.cache
def _dkim_processes() -> ProcessPoolExecutor:
    """Started on the first signed message; workers are spawned as needed, one per core at
    most ("spawn": forking a process that runs threads is unsafe)."""
    return ProcessPoolExecutor(max_workers=os.cpu_count() or 1,
                               mp_context=multiprocessing.get_context("spawn"))


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


def _verify_all(raw: bytes, signatures: list[_Signature], keys: dict[bytes, _Key]
                ) -> tuple[tuple[str, DkimResult], ...]:
    """Runs in a worker process: canonicalising and hashing the body, and RSA in pure
    Python.

    dkimpy is given the header block alone, and the body as its own parser would make it
    (every line ending CRLF): that parser splits the whole message into lines with one
    regular-expression call (over 100 ms for 13 MiB), for nothing. A message it cannot
    parse has no signature it could verify.
    """
    head = header_block(raw)
    try:
        verifier = dkim.DKIM(head)
    except dkim.DKIMException:
        return ()
    verifier.body = crlf(raw[len(head):])
    return tuple(_verify_one(verifier, index, tags, keys[_key_name(tags)] if tags else "none")
                 for index, tags in enumerate(signatures))


def _verify_one(verifier: dkim.DKIM, index: int, tags: _Signature, key: _Key
                ) -> tuple[str, DkimResult]:
    known = _without_arithmetic(tags, key)
    if known is not None:
        return known
    assert tags is not None and isinstance(key, bytes)

    def answer(name: bytes, timeout: float = DNS_TIMEOUT) -> bytes:
        return key  # dkimpy asks for this key only

    try:
        verified = verifier.verify(idx=index, dnsfunc=answer)
    except dkim.DKIMException:  # a body hash mismatch, an expired signature, a missing tag
        verified = False
    return normalized(tags[b"d"].decode("latin-1")), "pass" if verified else "fail"


def _without_arithmetic(tags: _Signature, key: _Key) -> tuple[str, DkimResult] | None:
    """The result of a signature that cannot pass whatever the message holds (malformed,
    or its key absent or not found now); ``None`` when it must be verified."""
    if tags is None:
        return "", "fail"
    if isinstance(key, bytes):
        return None
    return normalized(tags[b"d"].decode("latin-1")), "temperror" if key == "temperror" else "fail"


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

