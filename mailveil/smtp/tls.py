"""The listener's certificate: configured or generated, and reloaded when its files change.

An MX without STARTTLS makes every sender's mail cross the internet in clear, so a fresh
install generates a self-signed certificate: senders encrypt opportunistically and do not
verify an MX's certificate (RFC 3207 and RFC 7435), so any certificate beats none. A
configured one is read again when its files change, so a renewal (certbot's, say) needs no
restart; until the new files load, the previous certificate stays in use.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

MIN_VERSION = ssl.TLSVersion.TLSv1_2  # what RFC 8996 and RFC 9325 leave standing
GENERATED_VALIDITY = timedelta(days=3650)
"""Nobody can verify a self-signed certificate, so its end date protects nothing; a long one
spares the operator a renewal no one would notice."""


@dataclass(frozen=True)
class KeyPair:
    """PEM files; ``key`` may be the certificate's own file when it holds both."""

    cert: Path
    key: Path


def self_signed(hostname: str, now: datetime) -> bytes:
    """A PEM private key followed by its self-signed certificate for ``hostname`` (a name
    or an IP address), valid from ``now`` for :data:`GENERATED_VALIDITY`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # every client has RSA
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))  # clocks differ a little
            .not_valid_after(now + GENERATED_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + cert.public_bytes(
                                 serialization.Encoding.PEM)


def generated_pair(data_dir: Path, hostname: str, now: datetime) -> KeyPair:
    """The self-signed pair in ``data_dir/tls/``, made on first start.

    Key and certificate share one file, written privately and hard-linked into place: a
    crash leaves no half-written pair, and of two listeners starting at once the first wins.
    """
    path = data_dir / "tls" / "self-signed.pem"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tls-") as folder:
            fresh = Path(folder) / "pair.pem"
            fresh.write_bytes(self_signed(hostname, now))
            fresh.chmod(0o600)
            with contextlib.suppress(FileExistsError):
                os.link(fresh, path)
        log.warning("MAILVEIL_TLS_CERT is not set: generated a self-signed certificate for "
                    "%s in %s; STARTTLS is offered with it", hostname, path)
    return KeyPair(path, path)


def server_context(pair: KeyPair) -> ssl.SSLContext:
    """Raises :class:`OSError` or :class:`ssl.SSLError` when the files do not make a pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.load_cert_chain(pair.cert, pair.key)
    return context


_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(pair: KeyPair) -> _Stamp:
    """What changes when a file is rewritten or replaced: two ``stat`` calls, cheap enough
    for every connection."""
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns)
                 for s in (os.stat(pair.cert), os.stat(pair.key)))


class ServerCertificate:
    """The TLS context for each new session, from the pair's current files."""

    def __init__(self, pair: KeyPair) -> None:
        self._pair = pair
        self._stamp = _stamp(pair)
        self._context = server_context(pair)  # a bad pair stops the start, naming the file
        self._failed: _Stamp | None = None

    def context(self) -> ssl.SSLContext:
        """Loads the files again when they changed. A renewal may be caught between writing
        the certificate and the key: the previous context serves until both load."""
        try:
            stamp = _stamp(self._pair)
        except OSError:  # being replaced right now
            return self._context
        if stamp != self._stamp:
            try:
                context = server_context(self._pair)
            except (OSError, ssl.SSLError) as exc:
                if stamp != self._failed:
                    self._failed = stamp
                    log.warning("TLS certificate changed but does not load; the previous one "
                                "stays in use", extra={"cert": str(self._pair.cert),
                                                       "error": str(exc)})
                return self._context
            self._context, self._stamp = context, stamp
            log.info("TLS certificate reloaded", extra={"cert": str(self._pair.cert)})
        return self._context


def negotiated(extra: Mapping[str, Any] | None) -> str | None:
    """The TLS version of a session (aiosmtpd's ``session.ssl``), ``None`` in clear."""
    ssl_object = None if extra is None else extra.get("ssl_object")
    return ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else None
