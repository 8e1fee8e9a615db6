"""The From rule, DKIM and DMARC against a real DNS server on loopback (bench/dns_server.py).

Client addresses are documentation ranges (RFC 5737, RFC 3849): data for SPF, never
contacted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dkim
import pytest

from bench.dns_server import running_dns
from mailveil.authn import authenticity
from mailveil.authn.authenticity import Authenticity, FromShape, Refusal, Verdict, check
from mailveil.authn.lookup import make_resolver, query
from mailveil.mail.dkim import dns_txt_record, load_or_create_key, sign

GOOD_IP = "192.0.2.10"  # in shop.example's SPF record
BAD_IP = "203.0.113.9"  # in nobody's
SELECTOR = "sel"
SIGNING_DOMAINS = ("shop.example", "mail.shop.example", "mail.strict.example", "esp.example")


def _mail_zone(key: bytes) -> dict[tuple[str, str], list[str]]:
    zone = {
        ("shop.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("_dmarc.shop.example.", "TXT"): ["v=DMARC1; p=reject; rua=mailto:d@shop.example"],
        ("strict.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("_dmarc.strict.example.", "TXT"): ["v=DMARC1; p=reject; adkim=s"],
        ("quarantine.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("_dmarc.quarantine.example.", "TXT"): ["v=DMARC1; p=quarantine"],
        ("monitor.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("_dmarc.monitor.example.", "TXT"): ["v=DMARC1; p=none"],
        ("soft.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 ~all"],
        ("nodmarc.example.", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("sub.org.example.", "TXT"): ["v=spf1 -all"],
        ("_dmarc.org.example.", "TXT"): ["v=DMARC1; p=none; sp=reject"],
    }
    for domain in SIGNING_DOMAINS:
        name, value = dns_txt_record(key, SELECTOR, domain)
        zone[(f"{name}.", "TXT")] = [value]
    return zone


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return load_or_create_key(tmp_path_factory.mktemp("dkim") / "dkim.pem")


@pytest.fixture(scope="module")
def nameserver(key: bytes) -> Iterator[str]:
    with running_dns(_mail_zone(key)) as (host, port):
        yield f"{host}:{port}"


def _message(sender: str = "Ann <ann@shop.example>", body: bytes = b"See you at 8:00.") -> bytes:
    return (f"From: {sender}\r\n"
            "To: local-partner-0123456789ab@reply.example.com\r\n"
            "Subject: Pickup\r\n"
            "Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
            "Message-ID: <m1@shop.example>\r\n"
            "\r\n").encode() + body + b"\r\n"


def _signed(key: bytes, domain: str, raw: bytes | None = None) -> bytes:
    return sign(raw or _message(), domain=domain, selector=SELECTOR, private_key=key)


def _check(nameserver: str, raw: bytes, *, ip: str = GOOD_IP,
           mail_from: str = "ann@shop.example", helo: str = "mx.shop.example",
           timeout: float = 5.0) -> Authenticity:
    resolver = make_resolver(nameserver, timeout=timeout)
    return asyncio.run(check(raw, client_ip=ip, helo=helo, mail_from=mail_from,
                             resolver=resolver))


# --- The answer cache -------------------------------------------------------------------

def test_a_second_message_of_a_domain_asks_the_dns_nothing(key: bytes) -> None:
    """Real senders repeat their domains: SPF, DKIM and DMARC answers are kept for their
    TTL (60 s here), so a second message of the same domain costs no query."""
    asked: Counter[tuple[str, str]] = Counter()
    raw = _signed(key, "shop.example")

    async def twice(nameserver: str) -> list[tuple[Counter[tuple[str, str]], str]]:
        resolver = make_resolver(nameserver)
        seen = []
        for _ in range(2):
            result = await check(raw, client_ip=GOOD_IP, helo="mx.shop.example",
                                 mail_from="ann@shop.example", resolver=resolver)
            seen.append((Counter(asked), f"{result.spf} {result.dkim} {result.dmarc}"))
        return seen

    with running_dns(_mail_zone(key), asked=asked) as (host, port):
        first, second = asyncio.run(twice(f"{host}:{port}"))
    assert first[0] == Counter({("shop.example.", "TXT"): 1, ("_dmarc.shop.example.", "TXT"): 1,
                                (f"{SELECTOR}._domainkey.shop.example.", "TXT"): 1})
    assert second[0] == first[0]
    assert first[1] == second[1] == "pass (('shop.example', 'pass'),) pass"


def test_an_answer_is_asked_again_once_its_ttl_has_passed(key: bytes) -> None:
    """The answers the checks look up (SPF, DKIM key, DMARC), each kept for its TTL only:
    a record the sender changed counts once the TTL has run out."""
    ttl = 2
    names = ["shop.example", f"{SELECTOR}._domainkey.shop.example", "_dmarc.shop.example"]
    asked: Counter[tuple[str, str]] = Counter()

    async def around_the_ttl(nameserver: str) -> list[Counter[tuple[str, str]]]:
        resolver = make_resolver(nameserver)
        seen = []

        async def ask_all() -> None:
            for name in names:
                assert await query(resolver, name, "TXT")
            seen.append(Counter(asked))

        await ask_all()
        answered = time.time()
        await ask_all()
        while time.time() <= answered + ttl:  # until every answer of the first has run out
            await asyncio.sleep(0.05)
        await ask_all()
        return seen

    with running_dns(_mail_zone(key), ttl=ttl, asked=asked) as (host, port):
        first, within, after = asyncio.run(around_the_ttl(f"{host}:{port}"))
    assert first == Counter({(f"{name}.", "TXT"): 1 for name in names})
    assert within == first
    assert after == first + first


# --- DKIM -------------------------------------------------------------------------------

def test_dkim_signature_verifies(nameserver: str, key: bytes) -> None:
    result = _check(nameserver, _signed(key, "shop.example"))
    assert result.dkim == (("shop.example", "pass"),)
    assert (result.spf, result.dmarc, result.verdict) == ("pass", "pass", Verdict.ACCEPT)


def test_dkim_fails_after_tampering(nameserver: str, key: bytes) -> None:
    tampered = _signed(key, "shop.example").replace(b"8:00", b"9:00")
    assert _check(nameserver, tampered).dkim == (("shop.example", "fail"),)


def test_every_signature_is_verified(nameserver: str, key: bytes) -> None:
    raw = _signed(key, "esp.example", _signed(key, "shop.example"))
    raw = _signed(key, "other.example", b"DKIM-Signature: v=1; nonsense\r\n" + raw)
    assert _check(nameserver, raw).dkim == (
        ("other.example", "fail"), ("", "fail"), ("esp.example", "pass"),
        ("shop.example", "pass"))


def test_a_signature_whose_key_is_not_published_fails(nameserver: str, key: bytes) -> None:
    raw = _signed(key, "other.example", _message("ann@other.example"))
    result = _check(nameserver, raw, mail_from="ann@other.example")
    assert result.dkim == (("other.example", "fail"),)


def test_a_message_dkimpy_cannot_parse_has_no_signature(nameserver: str, key: bytes) -> None:
    raw = _signed(key, "shop.example").replace(b"\r\n\r\n", b"\r\nno colon here\r\n\r\n", 1)
    result = _check(nameserver, raw, ip=BAD_IP)
    assert (result.dkim, result.verdict) == ((), Verdict.REJECT)


def test_signatures_beyond_the_limit_are_not_verified(nameserver: str, key: bytes) -> None:
    raw = _message()
    for _ in range(authenticity.MAX_DKIM_SIGNATURES + 1):
        raw = _signed(key, "shop.example", raw)
    assert _check(nameserver, raw).dkim == (
        ("shop.example", "pass"),) * authenticity.MAX_DKIM_SIGNATURES


# --- DMARC ------------------------------------------------------------------------------

def test_dmarc_reject_with_spf_fail_and_no_dkim(nameserver: str) -> None:
    result = _check(nameserver, _message(), ip=BAD_IP)
    assert (result.spf, result.dkim, result.dmarc, result.policy) == (
        "fail", (), "fail", "reject")
    assert (result.verdict, result.refusal) == (Verdict.REJECT, Refusal.DMARC_FAIL)


def test_aligned_dkim_pass_outweighs_spf_fail(nameserver: str, key: bytes) -> None:
    result = _check(nameserver, _signed(key, "shop.example"), ip=BAD_IP)
    assert (result.spf, result.dmarc, result.verdict) == ("fail", "pass", Verdict.ACCEPT)


def test_unaligned_dkim_pass_does_not_count(nameserver: str, key: bytes) -> None:
    result = _check(nameserver, _signed(key, "esp.example"), ip=BAD_IP)
    assert result.dkim == (("esp.example", "pass"),)
    assert (result.dmarc, result.verdict) == ("fail", Verdict.REJECT)


def test_subdomain_signature_aligns_relaxed_but_not_strict(nameserver: str, key: bytes) -> None:
    relaxed = _check(nameserver, _signed(key, "mail.shop.example"), ip=BAD_IP)
    assert (relaxed.dmarc, relaxed.verdict) == ("pass", Verdict.ACCEPT)
    strict = _check(nameserver, _signed(key, "mail.strict.example", _message(
        "Ann <ann@strict.example>")), ip=BAD_IP, mail_from="ann@strict.example")
    assert strict.dkim == (("mail.strict.example", "pass"),)
    assert (strict.dmarc, strict.verdict) == ("fail", Verdict.REJECT)


def test_quarantine_is_refused_too(nameserver: str) -> None:
    result = _check(nameserver, _message("ann@quarantine.example"), ip=BAD_IP,
                    mail_from="ann@quarantine.example")
    assert (result.policy, result.verdict) == ("quarantine", Verdict.REJECT)


def test_subdomain_takes_the_organizational_sp_policy(nameserver: str) -> None:
    sub = _check(nameserver, _message("ann@sub.org.example"), mail_from="ann@sub.org.example")
    assert (sub.spf, sub.dmarc, sub.policy, sub.verdict) == (
        "fail", "fail", "reject", Verdict.REJECT)
    assert sub.refusal is Refusal.DMARC_FAIL


@pytest.mark.parametrize(("domain", "ip", "spf", "dmarc", "verdict", "refusal"), [
    ("nodmarc.example", BAD_IP, "fail", "none", Verdict.REJECT, Refusal.SPF_FAIL),
    ("nodmarc.example", GOOD_IP, "pass", "pass", Verdict.ACCEPT, None),
    ("monitor.example", BAD_IP, "fail", "fail", Verdict.REJECT, Refusal.SPF_FAIL),
    ("soft.example", BAD_IP, "softfail", "none", Verdict.ACCEPT, None),
    ("bare.example", BAD_IP, "none", "none", Verdict.ACCEPT, None),
])
def test_without_a_refusing_policy_spf_hard_fail_decides(
        nameserver: str, domain: str, ip: str, spf: str, dmarc: str, verdict: Verdict,
        refusal: Refusal | None) -> None:
    result = _check(nameserver, _message(f"ann@{domain}"), ip=ip, mail_from=f"ann@{domain}")
    assert (result.spf, result.dmarc, result.policy) == (spf, dmarc, "none")
    assert (result.verdict, result.refusal) == (verdict, refusal)


def test_dns_down_is_a_temporary_failure(dead_nameserver: str, key: bytes) -> None:
    result = _check(dead_nameserver, _signed(key, "shop.example"), timeout=0.3)
    assert (result.spf, result.dkim, result.dmarc) == (
        "temperror", (("shop.example", "temperror"),), "temperror")
    assert (result.verdict, result.refusal) == (Verdict.TEMPFAIL, Refusal.DNS_TEMPFAIL)


# --- From against the envelope ----------------------------------------------------------

@pytest.mark.parametrize("sender", [
    "The CEO <ceo@bank.example>",
    "ann@mail.shop.example",  # a subdomain is another domain here
    "Bob <bob@shop.example>",  # the right domain, but not the party the gate let in
])
def test_from_must_show_the_envelope_sender(nameserver: str, sender: str) -> None:
    result = _check(nameserver, _message(sender))
    assert result.spf == "pass"
    assert (result.verdict, result.refusal) == (Verdict.REJECT, Refusal.FROM_MISMATCH)


def _from_shapes() -> list[tuple[bytes, FromShape]]:
    without_from = _message().replace(b"From: Ann <ann@shop.example>\r\n", b"")
    return [
        (without_from, FromShape.MISSING),
        (b"From: ann@shop.example\r\n" + _message(), FromShape.SEVERAL_FIELDS),
        (_message("ann@shop.example, bob@shop.example"), FromShape.SEVERAL_ADDRESSES),
        (_message("ann@shop.example, ann@shop.example"), FromShape.SEVERAL_ADDRESSES),
        (_message("undisclosed-recipients:;"), FromShape.GROUP),
        (_message("Shop: ann@shop.example;"), FromShape.GROUP),
        (_message(""), FromShape.NO_ADDRESS),
        (_message("<>"), FromShape.NO_ADDRESS),
        (_message("ann"), FromShape.NO_ADDRESS),
        (_message("ann@shop.example ann@shop.example"), FromShape.NO_ADDRESS),
    ]


@pytest.mark.parametrize(("raw", "shape"), _from_shapes())
def test_a_from_without_exactly_one_mailbox_is_refused(
        nameserver: str, dead_nameserver: str, key: bytes, raw: bytes, shape: FromShape
) -> None:
    """RFC 7489 6.6.1: refused outright, even with SPF and DKIM passing for the domain,
    and permanently even when the DNS is down."""
    for result in (_check(nameserver, raw), _check(nameserver, _signed(key, "shop.example", raw)),
                   _check(dead_nameserver, raw, timeout=0.3)):
        assert result.from_shape is shape
        assert (result.verdict, result.refusal) == (
            Verdict.REJECT, Refusal.FROM_SHAPE)
    assert _check(nameserver, raw).spf == "pass"


def test_one_mailbox_in_any_spelling_is_evaluated(nameserver: str) -> None:
    for sender in ('"Ann: the boss" <ann@shop.example>', "=?utf-8?q?Ann?= <ann@shop.example>",
                   "ann@shop.example,", "Ann\r\n <ann@shop.example>"):
        result = _check(nameserver, _message(sender))
        assert (result.from_shape, result.from_address) == (FromShape.ONE, "ann@shop.example")
        assert (result.verdict, result.refusal) == (Verdict.ACCEPT, None)


def test_a_from_after_a_byte_order_mark_is_the_one_the_relay_reads(nameserver: str) -> None:
    """Some mailers start a message with a UTF-8 byte-order mark; the relay's MIME reader
    skips it, so the sender check must see the same From (it once found none: 550)."""
    result = _check(nameserver, b"\xef\xbb\xbf" + _message())
    assert (result.from_shape, result.from_address) == (FromShape.ONE, "ann@shop.example")
    assert (result.verdict, result.refusal) == (Verdict.ACCEPT, None)


def test_from_mailbox_compares_without_case(nameserver: str) -> None:
    result = _check(nameserver, _message("Ann <Ann@SHOP.Example>"), mail_from="ann@Shop.EXAMPLE")
    assert (result.from_address, result.from_domain) == ("Ann@SHOP.Example", "shop.example")
    assert result.verdict == Verdict.ACCEPT


def test_null_sender_is_checked_by_helo_and_dmarc(nameserver: str) -> None:
    result = _check(nameserver, _message("postmaster@shop.example"), mail_from="",
                    helo="shop.example")
    assert (result.spf, result.dmarc, result.verdict) == ("pass", "pass", Verdict.ACCEPT)
    spoofed = _check(nameserver, _message("postmaster@shop.example"), ip=BAD_IP,
                     mail_from="", helo="shop.example")
    assert spoofed.verdict == Verdict.REJECT


# --- Unverified senders -----------------------------------------------------------------

@pytest.mark.parametrize(("domain", "ip", "verified"), [
    ("bare.example", BAD_IP, False),  # publishes nothing
    ("soft.example", BAD_IP, False),  # ~all, no DMARC
    ("monitor.example", GOOD_IP, True),
    ("nodmarc.example", GOOD_IP, True),  # aligned SPF pass without a DMARC record
])
def test_unverified_is_accepted_unless_the_operator_refuses_it(
        nameserver: str, domain: str, ip: str, verified: bool) -> None:
    sender = f"ann@{domain}"
    accepted = _check(nameserver, _message(sender), ip=ip, mail_from=sender)
    assert (accepted.verified, accepted.verdict) == (verified, Verdict.ACCEPT)
    assert accepted.refusal is None
    strict = asyncio.run(check(_message(sender), client_ip=ip, helo="mx", mail_from=sender,
                               resolver=make_resolver(nameserver), refuse_unverified=True))
    assert (strict.verdict, strict.refusal) == (
        (Verdict.ACCEPT, None) if verified else (Verdict.REJECT, Refusal.UNVERIFIED))


def test_a_signature_of_the_domain_verifies_where_spf_cannot(nameserver: str, key: bytes) -> None:
    result = _check(nameserver, _signed(key, "esp.example", _message("ann@esp.example")),
                    ip=BAD_IP, mail_from="ann@esp.example")
    assert (result.spf, result.dmarc, result.verified) == ("none", "pass", True)


# --- Off the event loop -----------------------------------------------------------------

def test_dkimpy_works_off_the_event_loop(
        nameserver: str, key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """dkimpy's body canonicalisation holds the GIL (0.2 s and more for 13 MiB): it runs in
    another process, and reading the headers in a thread. Recorded: where each dkimpy call
    of this process ran; the verification itself leaves no trace here."""
    raw = _signed(key, "shop.example")
    calls: list[tuple[str, str]] = []
    for owner, name in ((dkim.DKIM, "__init__"), (dkim.DKIM, "verify"), (dkim, "rfc822_parse")):
        real = getattr(owner, name)

        def spy(*args: object, _real: Any = real, _name: str = name, **kwargs: object) -> Any:
            calls.append((_name, threading.current_thread().name))
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)

    async def run() -> tuple[Authenticity, str]:
        resolver = make_resolver(nameserver)
        result = await check(raw, client_ip=GOOD_IP, helo="mx",
                             mail_from="ann@shop.example", resolver=resolver)
        return result, threading.current_thread().name

    result, loop_thread = asyncio.run(run())
    assert result.dkim == (("shop.example", "pass"),)
    assert [name for name, _ in calls] == ["rfc822_parse"]  # the header block, for signatures
    assert calls[0][1] != loop_thread


def test_a_header_block_led_by_a_continuation_line_is_read_not_crashed_on() -> None:
    """dkimpy raises IndexError on it (flanker's iphone.eml starts with a line of spaces):
    that was a 451 for ever, so the message never got through."""
    head = b"    \r\nFrom: Ann <ann@shop.example>\r\nSubject: hi\r\n\r\n"
    assert authenticity._read_headers(head) == (FromShape.ONE, "ann@shop.example", [])
