"""SPF (RFC 7208), evaluated on the shared asynchronous resolver.

Not pyspf (last release 2020): it asks dnspython's process-wide default resolver (no
per-call nameserver, so tests and ``MAILVEIL_DNS`` could only redirect it by patching a
global), and it blocks. Not implemented: the ``ptr`` mechanism (RFC 7208 says not to
publish it) and macros (``%{i}`` …); a record that needs either, once evaluation reaches
it, gives ``neutral`` (no opinion), so DMARC alone decides for such a domain.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from dns.asyncresolver import Resolver

from mailveil.authn.lookup import TempError, normalized, query

SpfResult = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_SPF_LOOKUPS: Final = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS: Final = 2  # RFC 7208 4.6.4
MAX_MX_NAMES: Final = 10  # RFC 7208 4.6.4


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
            found = await query(self.resolver, name, rdtype)
        except TempError:
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
    domain = normalized(domain)
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


