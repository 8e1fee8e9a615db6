"""Is a message really from the domain of its sender's registered address? SPF, DKIM, DMARC.

The RCPT gate only compares MAIL FROM with the party's registered address, and anyone can
forge MAIL FROM; this is the DATA-time check that refuses spoofed senders (PRODUCT.md,
"Relaying"). One DNS resolver, asynchronous, serves all three checks, which run at once.

* SPF (RFC 7208) is evaluated here, not by pyspf (last release 2020): pyspf asks
  dnspython's process-wide default resolver (no per-call nameserver, so tests and
  ``MAILVEIL_DNS`` could only redirect it by patching a global), and it blocks.
  Not implemented: the ``ptr`` mechanism (RFC 7208 says not to publish it) and macros
  (``%{i}`` …); a record that needs either, once evaluation reaches it, gives ``neutral``
  (no opinion), so DMARC alone decides for such a domain.
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
import contextlib
import functools
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from enum import StrEnum
from typing import Final, Literal

import dkim
import dns.exception
import dns.name
import dns.rdata
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value
from dns.asyncresolver import Resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT
from publicsuffixlist import PublicSuffixList

SpfResult = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
DkimResult = Literal["pass", "fail", "temperror"]
DmarcResult = Literal["pass", "fail", "none", "temperror"]
Policy = Literal["none", "quarantine", "reject"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_TIMEOUT: Final = 5.0  # seconds for one lookup, all tries included
MAX_SPF_LOOKUPS: Final = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS: Final = 2  # RFC 7208 4.6.4
MAX_MX_NAMES: Final = 10  # RFC 7208 4.6.4
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
        # has no registered address to compare with: DMARC alone judges its From.
        if self.mail_from_domain and self.from_domain != self.mail_from_domain:
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
    from_domain = _from_domain(raw)
    mail_from_domain = _domain_of(mail_from)
    spf_domain = mail_from_domain or _normalized(helo)
    spf, signatures, record = await asyncio.gather(
        check_spf(resolver, client_ip, spf_domain), verify_dkim(raw, resolver),
        _find_dmarc(resolver, from_domain))
    return Authenticity(
        spf=spf, dkim=signatures,
        dmarc=_dmarc_result(spf, spf_domain, signatures, from_domain, record),
        policy=record.policy if isinstance(record, _Dmarc) else "none",
        from_domain=from_domain, mail_from_domain=mail_from_domain)


def make_resolver(nameserver: str | None, *, timeout: float = DNS_TIMEOUT) -> Resolver:
    """A resolver for :func:`check`: the system's (``None``) or one server, "host:port".

    The short lifetime bounds how long an SMTP session waits on a dead DNS server before
    it is answered 451. A small cache spares the parties' domains a lookup per message.
    """
    if nameserver is None:
        resolver = Resolver()
    else:
        host, port = _host_port(nameserver)
        resolver = Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.cache = dns.resolver.LRUCache()
    return resolver


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"DNS server must be given as host:port, got {value!r}")
    return host.strip("[]"), int(port)


# --- DNS --------------------------------------------------------------------------------


class _TempError(Exception):
    """No answer could be had (timeout, SERVFAIL, no server reachable): try again later."""


async def _query(resolver: Resolver, name: str, rdtype: Literal["TXT", "A", "AAAA", "MX"]
                 ) -> list[str] | None:
    """The records of ``name`` as text ([] if none of that type), ``None`` if no such name.

    TXT strings are joined and decoded as Latin-1, which maps every byte, so DKIM keys can
    be encoded back exactly. A name that cannot exist (empty or over-long label) is absent.
    """
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException:
        return None
    try:
        answer = await resolver.resolve(qname, rdtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None
    except dns.exception.DNSException as error:
        raise _TempError(str(error)) from error
    return [_text(rdata) for rdata in answer.rrset or ()]


def _text(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, TXT):
        return b"".join(rdata.strings).decode("latin-1")
    if isinstance(rdata, MX):
        return rdata.exchange.to_text()
    return rdata.to_text()


# --- Domains ----------------------------------------------------------------------------


def _normalized(domain: str) -> str:
    """Lower case, no final dot, A-labels: how two spellings of one domain compare equal."""
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        # Not a valid IDN: compared as written, and found nowhere in the DNS.
        with contextlib.suppress(UnicodeError):
            domain = domain.encode("idna").decode("ascii")
    return domain


def _domain_of(address: str) -> str:
    return _normalized(address.rpartition("@")[2]) if "@" in address else ""


def _from_domain(raw: bytes) -> str:
    """The domain of the one address of the one From header; "" when there is not exactly
    one, as RFC 7489 6.6.1 allows refusing such a message."""
    values = BytesHeaderParser(policy=compat32).parsebytes(raw).get_all("From") or []
    addresses = getaddresses([str(value) for value in values])
    if len(values) != 1 or len(addresses) != 1:
        return ""
    return _domain_of(addresses[0][1])


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


# --- SPF (RFC 7208) ---------------------------------------------------------------------

_QUALIFIERS: Final[dict[str, SpfResult]] = {
    "": "pass", "+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_TERM = re.compile(r"(?P<qualifier>[+\-~?]?)(?P<mechanism>all|include|exists|ptr|a|mx|ip4|ip6)"
                   r"(?P<argument>[:/].*)?", re.IGNORECASE)
_MODIFIER = re.compile(r"(?P<name>[a-z][a-z0-9_.\-]*)=(?P<value>.*)", re.IGNORECASE)
_DOMAIN = r"(?::(?P<domain>[^/]+))"
_CIDRS = r"(?:/(?P<cidr4>\d{1,2}))?(?://(?P<cidr6>\d{1,3}))?"
_ARGUMENTS: Final = {
    "all": re.compile(""),
    "include": re.compile(_DOMAIN),
    "exists": re.compile(_DOMAIN),
    "ptr": re.compile(_DOMAIN + "?"),
    "a": re.compile(_DOMAIN + "?" + _CIDRS),
    "mx": re.compile(_DOMAIN + "?" + _CIDRS),
    "ip4": re.compile(r":(?P<network>[0-9.]+(?:/\d{1,2})?)"),
    "ip6": re.compile(r":(?P<network>[0-9a-f:.]+(?:/\d{1,3})?)", re.IGNORECASE),
}


class _SpfStop(Exception):
    """Ends the whole evaluation with ``result``: temperror, permerror, or neutral when a
    term this evaluator does not implement is reached."""

    def __init__(self, result: SpfResult) -> None:
        super().__init__(result)
        self.result: SpfResult = result


@dataclass(frozen=True)
class _Directive:
    result: SpfResult  # when it matches
    mechanism: str
    domain: str | None = None  # None: the domain being checked
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass
class _SpfRun:
    """One check_host() evaluation: the client, and the lookups it has spent so far."""

    resolver: Resolver
    ip: IPAddress
    lookups: int = 0
    voids: int = 0

    def spend_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_SPF_LOOKUPS:
            raise _SpfStop("permerror")

    async def query(self, name: str, rdtype: Literal["TXT", "A", "AAAA", "MX"]) -> list[str]:
        if "%" in name:
            raise _SpfStop("neutral")  # a macro: not implemented, see the module docstring
        try:
            found = await _query(self.resolver, name, rdtype)
        except _TempError:
            raise _SpfStop("temperror") from None
        if not found:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _SpfStop("permerror")
        return found or []

    async def addresses(self, name: str) -> list[str]:
        return await self.query(name, "A" if self.ip.version == 4 else "AAAA")


async def check_spf(resolver: Resolver, client_ip: str, domain: str) -> SpfResult:
    """RFC 7208 check_host() for mail from ``domain`` sent by ``client_ip``.

    Raises ValueError when ``client_ip`` is not an IP address: the caller's mistake.
    """
    domain = _normalized(domain)
    labels = domain.split(".")
    if len(labels) < 2 or len(domain) > 253 or not all(0 < len(x) < 64 for x in labels):
        return "none"  # RFC 7208 4.3: malformed, or not a multi-label name
    ip = ipaddress.ip_address(client_ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    try:
        return await _check_host(_SpfRun(resolver, ip), domain)
    except _SpfStop as stop:
        return stop.result


async def _check_host(run: _SpfRun, domain: str) -> SpfResult:
    record = await _spf_record(run, domain)
    if record is None:
        return "none"
    directives, redirect = _parse_spf(record)
    for directive in directives:
        if await _matches(run, directive, domain):
            return directive.result
    if redirect is None:
        return "neutral"
    run.spend_lookup()
    result = await _check_host(run, redirect)
    if result == "none":
        raise _SpfStop("permerror")  # RFC 7208 6.1: a redirect to no record
    return result


async def _spf_record(run: _SpfRun, domain: str) -> str | None:
    records = [text for text in await run.query(domain, "TXT")
               if re.fullmatch(r"v=spf1(?: .*)?", text, re.IGNORECASE | re.DOTALL)]
    if len(records) > 1:
        raise _SpfStop("permerror")
    return records[0] if records else None


def _parse_spf(record: str) -> tuple[list[_Directive], str | None]:
    """Directives in order and the redirect target; a syntax error anywhere is permerror
    before anything is evaluated (RFC 7208 4.6)."""
    directives: list[_Directive] = []
    modifiers: dict[str, str] = {}
    for term in record.split()[1:]:
        if modifier := _MODIFIER.fullmatch(term):
            name = modifier["name"].lower()
            if name in ("redirect", "exp") and (name in modifiers or not modifier["value"]):
                raise _SpfStop("permerror")  # given twice, or without a domain
            modifiers[name] = modifier["value"]
        else:
            directives.append(_directive(term))
    return directives, modifiers.get("redirect")


def _directive(term: str) -> _Directive:
    parts = _TERM.fullmatch(term)
    if parts is None:
        raise _SpfStop("permerror")
    mechanism = parts["mechanism"].lower()
    argument = _ARGUMENTS[mechanism].fullmatch(parts["argument"] or "")
    if argument is None:
        raise _SpfStop("permerror")
    fields = argument.groupdict()
    cidr4, cidr6 = int(fields.get("cidr4") or 32), int(fields.get("cidr6") or 128)
    if cidr4 > 32 or cidr6 > 128:
        raise _SpfStop("permerror")
    return _Directive(_QUALIFIERS[parts["qualifier"]], mechanism, fields.get("domain"),
                      cidr4, cidr6, _network(fields.get("network"), mechanism))


def _network(text: str | None, mechanism: str
             ) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if text is None:
        return None
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _SpfStop("permerror") from None
    if network.version != (4 if mechanism == "ip4" else 6):
        raise _SpfStop("permerror")
    return network


async def _matches(run: _SpfRun, directive: _Directive, domain: str) -> bool:
    target = directive.domain or domain
    if directive.mechanism == "all":
        return True
    if directive.network is not None:
        return run.ip in directive.network
    if directive.mechanism == "ptr":
        raise _SpfStop("neutral")  # not implemented, see the module docstring
    run.spend_lookup()
    if directive.mechanism == "include":
        return await _include(run, target)
    if directive.mechanism == "exists":
        return bool(await run.query(target, "A"))
    if directive.mechanism == "a":
        return _any_within(run.ip, await run.addresses(target), directive)
    return await _mx_matches(run, target, directive)


async def _include(run: _SpfRun, domain: str) -> bool:
    result = await _check_host(run, domain)
    if result == "none":
        raise _SpfStop("permerror")  # RFC 7208 5.2
    return result == "pass"


async def _mx_matches(run: _SpfRun, domain: str, directive: _Directive) -> bool:
    exchanges = await run.query(domain, "MX")
    if len(exchanges) > MAX_MX_NAMES:
        raise _SpfStop("permerror")
    for exchange in exchanges:
        if _any_within(run.ip, await run.addresses(exchange), directive):
            return True
    return False


def _any_within(ip: IPAddress, addresses: Sequence[str], directive: _Directive) -> bool:
    prefix = directive.cidr4 if ip.version == 4 else directive.cidr6
    return any(ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False)
               for address in addresses)


# --- DKIM (RFC 6376) --------------------------------------------------------------------

_Key = bytes | Literal["none", "temperror"]


async def verify_dkim(raw: bytes, resolver: Resolver) -> tuple[tuple[str, DkimResult], ...]:
    """(d= domain, result) for each DKIM-Signature, top first, at most
    :data:`MAX_DKIM_SIGNATURES`; a message dkimpy cannot parse has none."""
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
        found = await _query(resolver, name.decode("latin-1"), "TXT")
    except _TempError:
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
    domain = _normalized(tags[b"d"].decode("latin-1"))
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
            records = [text for text in await _query(resolver, f"_dmarc.{domain}", "TXT") or ()
                       if _DMARC_VERSION.match(text)]
            if records:  # several records: DMARC does not apply to this domain
                return _parse_dmarc(records[0], inherited) if len(records) == 1 else "none"
    except _TempError:
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
