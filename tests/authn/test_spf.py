"""SPF (RFC 7208) against a real DNS server on loopback (bench/dns_server.py).

Client addresses are documentation ranges (RFC 5737, RFC 3849): data for SPF, never
contacted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.dns_server import running_dns
from mailveil.authn.lookup import make_resolver
from mailveil.authn.spf import check_spf

GOOD_IP = "192.0.2.10"  # in pass.example's SPF record
BAD_IP = "203.0.113.9"  # in nobody's


def _spf_zone() -> dict[tuple[str, str], list[str]]:
    ten = "a " * 10
    return {
        ("pass.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("soft.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 ~all"],
        ("open.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24"],
        ("include.example.", "TXT"): ["v=spf1 include:pass.example -all"],
        ("include-none.example.", "TXT"): ["v=spf1 include:absent.example ip4:203.0.113.0/24"],
        ("redirect.example.", "TXT"): ["v=spf1 redirect=soft.example"],
        ("a.example.", "TXT"): ["v=spf1 a/24 -all"],
        ("a.example.", "A"): ["192.0.2.200"],
        ("mx.example.", "TXT"): ["v=spf1 mx -all"],
        ("mx.example.", "MX"): ["10 in.mx.example."],
        ("in.mx.example.", "A"): ["198.51.100.25"],
        ("manymx.example.", "TXT"): ["v=spf1 mx -all"],
        ("manymx.example.", "MX"): [f"{i} in.mx.example." for i in range(11)],
        ("v6.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 a//64 -all"],
        ("v6.example.", "AAAA"): ["2001:db8::1"],
        ("loop.example.", "TXT"): ["v=spf1 include:loop.example -all"],
        ("ten.example.", "TXT"): [f"v=spf1 {ten}ip4:192.0.2.0/24 -all"],
        ("eleven.example.", "TXT"): [f"v=spf1 {ten}a ip4:192.0.2.0/24 -all"],
        ("ten.example.", "A"): ["198.51.100.1"],
        ("eleven.example.", "A"): ["198.51.100.1"],
        ("void2.example.", "TXT"): ["v=spf1 a:x.absent.example a:y.absent.example "
                                    "ip4:192.0.2.0/24 -all"],
        ("void3.example.", "TXT"): ["v=spf1 a:x.absent.example a:y.absent.example "
                                    "a:z.absent.example ip4:192.0.2.0/24 -all"],
        ("two.example.", "TXT"): ["v=spf1 -all", "v=spf1 +all"],
        ("badip.example.", "TXT"): ["v=spf1 ip4:300.1.1.1 -all"],
        ("late-error.example.", "TXT"): ["v=spf1 +all bogus"],
        ("empty-redirect.example.", "TXT"): ["v=spf1 redirect="],
        ("ptr.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 ptr -all"],
        ("macro.example.", "TXT"): ["v=spf1 exists:%{i}.spf.macro.example -all"],
        ("exists.example.", "TXT"): ["v=spf1 exists:ok.exists.example -all"],
        ("ok.exists.example.", "A"): ["127.0.0.2"],
        ("nospf.example.", "TXT"): ["google-site-verification=abc"],
    }


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    with running_dns(_spf_zone()) as (host, port):
        yield f"{host}:{port}"


def _spf(nameserver: str, domain: str, ip: str = GOOD_IP) -> str:
    return asyncio.run(check_spf(make_resolver(nameserver), ip, domain))


@pytest.mark.parametrize(("domain", "ip", "expected"), [
    ("pass.example", GOOD_IP, "pass"),
    ("pass.example", BAD_IP, "fail"),
    ("soft.example", BAD_IP, "softfail"),
    ("open.example", BAD_IP, "neutral"),
    ("include.example", GOOD_IP, "pass"),
    ("include.example", BAD_IP, "fail"),
    ("include-none.example", BAD_IP, "permerror"),
    ("redirect.example", GOOD_IP, "pass"),
    ("redirect.example", BAD_IP, "softfail"),
    ("a.example", "192.0.2.77", "pass"),
    ("a.example", "192.0.3.77", "fail"),
    ("mx.example", "198.51.100.25", "pass"),
    ("mx.example", "198.51.100.26", "fail"),
    ("manymx.example", "198.51.100.25", "permerror"),
    ("v6.example", "2001:db8::ffff", "pass"),
    ("v6.example", "2001:db9::1", "fail"),
    ("pass.example", "::ffff:192.0.2.10", "pass"),
    ("exists.example", BAD_IP, "pass"),
])
def test_spf_mechanisms(nameserver: str, domain: str, ip: str, expected: str) -> None:
    assert _spf(nameserver, domain, ip) == expected


@pytest.mark.parametrize(("domain", "expected"), [
    ("ten.example", "pass"),
    ("eleven.example", "permerror"),
    ("loop.example", "permerror"),
    ("void2.example", "pass"),
    ("void3.example", "permerror"),
])
def test_spf_lookup_limits(nameserver: str, domain: str, expected: str) -> None:
    assert _spf(nameserver, domain) == expected


@pytest.mark.parametrize(("domain", "expected"), [
    ("absent.example", "none"),
    ("nospf.example", "none"),
    ("localhost", "none"),  # not a multi-label name
    ("two.example", "permerror"),
    ("badip.example", "permerror"),
    ("late-error.example", "permerror"),  # checked before the +all that would match
    ("empty-redirect.example", "permerror"),
    ("Pass.Example.", "pass"),
])
def test_spf_records(nameserver: str, domain: str, expected: str) -> None:
    assert _spf(nameserver, domain) == expected


def test_spf_terms_not_implemented_give_neutral(nameserver: str) -> None:
    assert _spf(nameserver, "ptr.example") == "pass"  # ip4 matched before ptr
    assert _spf(nameserver, "ptr.example", BAD_IP) == "neutral"
    assert _spf(nameserver, "macro.example", BAD_IP) == "neutral"


def test_spf_temperror_when_dns_is_down(dead_nameserver: str) -> None:
    resolver = make_resolver(dead_nameserver, timeout=0.3)
    assert asyncio.run(check_spf(resolver, GOOD_IP, "pass.example")) == "temperror"
