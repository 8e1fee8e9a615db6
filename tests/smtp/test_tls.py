"""The listener's certificate: generation, loading, and reloading when its files change.
Which certificate a context serves is read from a real TLS handshake (in memory)."""

from __future__ import annotations

import logging
import os
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailveil.smtp.tls import (
    GENERATED_VALIDITY,
    KeyPair,
    ServerCertificate,
    generated_pair,
    negotiated,
    self_signed,
)
from tests.support.certs import Authority, der

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def served(server: ssl.SSLContext) -> tuple[bytes, str]:
    """The certificate (DER) a server with this context presents, and the TLS version
    agreed, from a handshake between two in-memory TLS objects."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # a handshake takes two or three flights
        done = 0
        for side, outgoing, peer_in in ((client, c_out, s_in), (srv, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_in.write(outgoing.read())
        if done == 2:
            cert, version = client.getpeercert(binary_form=True), client.version()
            assert cert is not None and version is not None
            return cert, version
    raise AssertionError("no handshake")


def test_a_self_signed_pair_names_the_host_and_serves_tls_1_3(tmp_path: Path) -> None:
    pem = self_signed("reply.example.com", NOW)
    path = tmp_path / "pair.pem"
    path.write_bytes(pem)
    cert = x509.load_pem_x509_certificate(pem)
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["reply.example.com"]
    assert cert.not_valid_after_utc == NOW + GENERATED_VALIDITY
    assert cert.not_valid_before_utc <= NOW
    context = ServerCertificate(KeyPair(path, path)).context()
    assert served(context) == (der(path), "TLSv1.3")


def test_an_ip_address_is_named_as_one() -> None:
    cert = x509.load_pem_x509_certificate(self_signed("127.0.0.1", NOW))
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_tls_below_1_2_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pair.pem"
    path.write_bytes(self_signed("reply.example.com", NOW))
    context = ServerCertificate(KeyPair(path, path)).context()
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_the_pair_is_generated_once_privately_and_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        pair = generated_pair(tmp_path, "reply.example.com", NOW)
        first = pair.cert.read_bytes()
        again = generated_pair(tmp_path, "reply.example.com", NOW + timedelta(days=1))
    assert again == pair and pair.cert == tmp_path / "tls" / "self-signed.pem"
    assert again.cert.read_bytes() == first
    assert stat.S_IMODE(pair.cert.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.cert.parent.stat().st_mode) == 0o700
    said = [r.getMessage() for r in caplog.records if "self-signed" in r.getMessage()]
    assert len(said) == 1 and str(pair.cert) in said[0]
    serialization.load_pem_private_key(first, password=None)  # key and certificate, one file


def test_a_renewed_certificate_serves_the_next_session(tmp_path: Path) -> None:
    authority = Authority.create()
    pair = authority.issue("mx.reply.example.com", tmp_path / "live")
    certificate = ServerCertificate(pair)
    old = certificate.context()
    assert certificate.context() is old  # nothing changed: nothing loaded
    renewed = authority.issue("mx.reply.example.com", tmp_path / "new")
    os.replace(renewed.key, pair.key)
    os.replace(renewed.cert, pair.cert)
    assert served(certificate.context())[0] == der(pair.cert) != served(old)[0]


def test_a_half_written_renewal_keeps_the_old_certificate_until_it_loads(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    authority = Authority.create()
    pair = authority.issue("mx.reply.example.com", tmp_path / "live")
    old_der = der(pair.cert)
    certificate = ServerCertificate(pair)
    renewed = authority.issue("mx.reply.example.com", tmp_path / "new")
    with caplog.at_level(logging.WARNING):
        os.replace(renewed.cert, pair.cert)  # the key is not there yet: they do not match
        assert served(certificate.context())[0] == old_der
        assert served(certificate.context())[0] == old_der
        pair.key.unlink()  # being replaced
        assert served(certificate.context())[0] == old_der
        os.replace(renewed.key, pair.key)
        assert served(certificate.context())[0] == der(pair.cert) != old_der
    assert len([r for r in caplog.records if "does not load" in r.getMessage()]) == 1


def test_a_bad_pair_stops_the_start(tmp_path: Path) -> None:
    one = Authority.create().issue("a.example", tmp_path / "one")
    other = Authority.create().issue("a.example", tmp_path / "other")
    with pytest.raises(ssl.SSLError):
        ServerCertificate(KeyPair(one.cert, other.key))


def test_a_session_in_clear_has_no_tls_version() -> None:
    assert negotiated(None) is None
    assert negotiated({"sslcontext": ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)}) is None
