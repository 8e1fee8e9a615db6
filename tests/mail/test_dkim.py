import base64
import subprocess
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path

import dkim
import dns.resolver
import pytest
from dkim.util import parse_tag_value

from bench.dns_server import running_dns
from mailveil.mail.dkim import dns_txt_record, load_or_create_key, sign

DOMAIN = "reply.example.com"
SELECTOR = "mailveil"
MESSAGE = (
    b"From: Ann via mailveil <customer-0123456789ab@reply.example.com>\r\n"
    b"To: ops@supplier.example\r\n"
    b"Subject: Pickup time for booking BK-1234\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <m1@reply.example.com>\r\n"
    b"In-Reply-To: <m0@reply.example.com>\r\n"
    b"References: <m0@reply.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"X-Mailer: not signed\r\n"
    b"\r\n"
    b"See you at 8:00 at the harbour.\r\n"
)
DnsFunc = Callable[..., bytes | None]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return load_or_create_key(tmp_path_factory.mktemp("dkim") / "dkim.pem")


@pytest.fixture(scope="module")
def dnsfunc(key: bytes) -> DnsFunc:
    name, value = dns_txt_record(key, SELECTOR, DOMAIN)

    def lookup(qname: bytes, timeout: float = 5) -> bytes | None:
        return value.encode() if qname == f"{name}.".encode() else None

    return lookup


def _signed(key: bytes, raw: bytes = MESSAGE) -> bytes:
    return sign(raw, domain=DOMAIN, selector=SELECTOR, private_key=key)


def _tags(signed: bytes) -> dict[bytes, bytes]:
    value = message_from_bytes(signed)["DKIM-Signature"]
    tags: dict[bytes, bytes] = parse_tag_value(value.encode())
    return tags


def _signed_headers(signed: bytes) -> list[bytes]:
    return [name.strip() for name in _tags(signed)[b"h"].split(b":")]


def test_signed_message_verifies(key: bytes, dnsfunc: DnsFunc) -> None:
    signed = _signed(key)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def test_signature_parameters_and_headers(key: bytes) -> None:
    tags = _tags(_signed(key))
    assert tags[b"a"] == b"rsa-sha256"
    assert tags[b"c"] == b"relaxed/simple"
    assert (tags[b"d"], tags[b"s"]) == (DOMAIN.encode(), SELECTOR.encode())
    assert _signed_headers(_signed(key)) == [
        b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
        b"mime-version", b"content-type", b"content-transfer-encoding", b"auto-submitted",
        b"from",  # oversigned
    ]


def test_absent_headers_are_not_listed(key: bytes) -> None:
    raw = b"From: a@reply.example.com\r\nTo: b@x.example\r\n\r\nhi\r\n"
    assert _signed_headers(_signed(key, raw)) == [b"from", b"to", b"from"]


def test_altered_body_fails(key: bytes, dnsfunc: DnsFunc) -> None:
    signed = _signed(key).replace(b"8:00", b"9:00")
    assert not dkim.verify(signed, dnsfunc=dnsfunc)


def test_added_second_from_fails(key: bytes, dnsfunc: DnsFunc) -> None:
    signed = _signed(key).replace(b"X-Mailer:", b"From: boss@evil.example\r\nX-Mailer:")
    assert not dkim.verify(signed, dnsfunc=dnsfunc)


def test_header_whitespace_changes_on_the_way_survive(key: bytes, dnsfunc: DnsFunc) -> None:
    signed = _signed(key).replace(b"Subject: Pickup", b"Subject:   Pickup")
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def test_body_is_signed_as_sent(key: bytes, dnsfunc: DnsFunc) -> None:
    signed = _signed(key).replace(b"harbour.\r\n", b"harbour.   \r\n")
    assert not dkim.verify(signed, dnsfunc=dnsfunc)


def test_bare_lf_is_signed_as_it_will_be_sent(key: bytes, dnsfunc: DnsFunc) -> None:
    raw = MESSAGE.replace(b"\r\n", b"\n")
    signed = _signed(key, raw)
    assert signed.count(b"\n") == signed.count(b"\r\n")
    assert signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def _resolver_dnsfunc(host: str, port: int) -> DnsFunc:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port

    def lookup(qname: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(qname.decode(), "TXT", lifetime=timeout)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return lookup


def test_verifies_through_a_real_dns_server(key: bytes) -> None:
    name, value = dns_txt_record(key, SELECTOR, DOMAIN)
    with running_dns({(f"{name}.", "TXT"): [value]}) as (host, port):
        lookup = _resolver_dnsfunc(host, port)
        assert lookup(b"nobody._domainkey.reply.example.com.") is None
        assert dkim.verify(_signed(key), dnsfunc=lookup)
        assert not dkim.verify(_signed(key).replace(b"8:00", b"9:00"), dnsfunc=lookup)


def test_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "dkim" / "mailveil.pem"
    key = load_or_create_key(path)
    assert key.startswith(b"-----BEGIN")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["mailveil.pem"]  # no leftovers


def test_unreadable_key_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "dkim.pem"
    path.write_text("not a key")
    with pytest.raises(ValueError):
        load_or_create_key(path)


def test_txt_record_publishes_the_public_key(key: bytes) -> None:
    name, value = dns_txt_record(key, SELECTOR, DOMAIN)
    assert name == "mailveil._domainkey.reply.example.com"
    der = subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=key,
                         capture_output=True, check=True).stdout
    assert value == f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
