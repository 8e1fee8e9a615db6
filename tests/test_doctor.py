"""``mailveil doctor`` against a DNS server of its own (bench/dns_server.py, as
tests/support/dns.py uses), a TLS smarthost of a test authority, SQLite and clamd: a good
configuration holds everywhere (exit 0), and each record missing or wrong, each service
down or misconfigured, is named with its fix (exit 1) while the rest still holds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.dns_server import running_dns
from mailveil import cli
from mailveil.config import HostPort, Settings
from mailveil.delivery.transport import TlsMode
from mailveil.doctor import (
    Finding,
    examine,
    open_files_finding,
    signatures_finding,
)
from mailveil.mail.dkim import dns_txt_record
from mailveil.smtp.tls import self_signed, server_context
from mailveil.store.db import migrate
from tests.scan.clamd_fixture import ClamdInfo
from tests.support.certs import Authority
from tests.support.net import free_port
from tests.support.sink import Sink

DOMAIN = "relay.example"
MX = f"mx.{DOMAIN}"
SELECTOR = "s1"
NOW = datetime.now(UTC)
CHECKS = ["MX", "SPF", "DKIM", "DMARC", "certificate", "smarthost", "database", "clamd",
          "clamd signatures", "open files"]


def zone(dkim_value: str) -> dict[tuple[str, str], list[str]]:
    return {
        (f"{DOMAIN}.", "MX"): [f"10 {MX}."],
        (f"{MX}.", "A"): ["127.0.0.1"],
        (f"{DOMAIN}.", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
        (f"{SELECTOR}._domainkey.{DOMAIN}.", "TXT"): [dkim_value],
        (f"_dmarc.{DOMAIN}.", "TXT"): ["v=DMARC1; p=reject"],
    }


def other_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return dns_txt_record(key, SELECTOR, DOMAIN)[1]


class _Clamd(socketserver.BaseRequestHandler):
    """Answers PING and VERSION as a clamd with freshclam's database does. The real clamd
    of the tests loads a two-signature database that VERSION gives no date for (see
    test_a_real_clamd_without_official_signatures), and no official one may be fetched."""

    def handle(self) -> None:
        command = self.request.recv(64)
        date = NOW.strftime("%a %b %d %H:%M:%S %Y")
        answer = {b"zPING\0": "PONG", b"zVERSION\0": f"ClamAV 1.4.6/27473/{date}"}[command]
        self.request.sendall(answer.encode() + b"\0")


@contextlib.contextmanager
def clamd_with_signatures() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Clamd)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Setup:
    """A configuration where everything holds, and the pieces a case may break."""

    settings: Settings
    records: dict[tuple[str, str], list[str]]
    authority: Authority
    folder: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    authority = Authority.create()
    data_dir = tmp_path / "var"
    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048)
                         .private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    pair = authority.issue(MX, tmp_path / "listener", valid_for=timedelta(days=90))
    database = f"sqlite:///{tmp_path / 'mailveil.sqlite3'}"
    migrate(database)
    with (Sink.running(tls=server_context(authority.issue("127.0.0.1", tmp_path / "sink")))
          as sink, clamd_with_signatures() as clamd):
        settings = Settings(
            data_dir=data_dir, database_url=database, relay_domain=DOMAIN,
            smarthost=HostPort("127.0.0.1", sink.port), smarthost_tls=TlsMode.REQUIRED,
            smarthost_ca=authority.write(tmp_path / "ca.pem"), tls_cert=pair.cert,
            tls_key=pair.key, dkim_selector=SELECTOR, dkim_key_path=key_path, clamd=clamd,
            smtp_max_connections=100)
        records = zone(dns_txt_record(key_path.read_bytes(), SELECTOR, DOMAIN)[1])
        yield Setup(settings, records, authority, tmp_path)


def run(setup: Setup) -> list[Finding]:
    with running_dns(setup.records) as (host, port):
        settings = dataclasses.replace(setup.settings, dns=f"{host}:{port}")
        return asyncio.run(examine(settings, ["127.0.0.1"]))


def test_a_good_configuration_holds_everywhere(setup: Setup, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    findings = run(setup)
    assert [f.check for f in findings] == CHECKS
    assert [str(f) for f in findings if not f.ok] == []
    s = setup.settings
    with running_dns(setup.records) as (host, port):
        for name, value in {
                "DNS": f"{host}:{port}", "DATA_DIR": str(s.data_dir),
                "DATABASE_URL": s.database_url, "RELAY_DOMAIN": DOMAIN,
                "SMARTHOST": str(s.smarthost), "SMARTHOST_TLS": "required",
                "SMARTHOST_CA": str(s.smarthost_ca), "TLS_CERT": str(s.tls_cert),
                "TLS_KEY": str(s.tls_key), "DKIM_SELECTOR": SELECTOR,
                "DKIM_KEY": str(s.dkim_key_path), "CLAMD": str(s.clamd),
                "SMTP_MAX_CONNECTIONS": "100"}.items():
            monkeypatch.setenv(f"MAILVEIL_{name}", value)
        assert cli.main(["doctor"]) == 0  # SPF checked for the MX host's address
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(CHECKS) and all(line.startswith("ok    ") for line in out)
    assert f"ok    MX: {DOMAIN} is served by {MX}" in out
    assert f"ok    SPF: {DOMAIN} allows 127.0.0.1" in out


def _drop(name: str, rdtype: str) -> Callable[[Setup], None]:
    def change(setup: Setup) -> None:
        del setup.records[(name, rdtype)]
    return change


def _set(name: str, rdtype: str, value: str | Callable[[], str]) -> Callable[[Setup], None]:
    def change(setup: Setup) -> None:
        setup.records[(name, rdtype)] = [value if isinstance(value, str) else value()]
    return change


def _settings(**changes: object) -> Callable[[Setup], None]:
    def change(setup: Setup) -> None:
        setup.settings = dataclasses.replace(setup.settings, **changes)  # type: ignore[arg-type]
    return change


def _certificate(make: Callable[[Setup], Path]) -> Callable[[Setup], None]:
    def change(setup: Setup) -> None:
        setup.settings = dataclasses.replace(setup.settings, tls_cert=make(setup))
    return change


def _self_signed(setup: Setup) -> Path:
    path = setup.folder / "self-signed.pem"
    path.write_bytes(self_signed(MX, NOW))
    return path


def _unmigrated(setup: Setup) -> None:
    setup.settings = dataclasses.replace(
        setup.settings, database_url=f"sqlite:///{setup.folder / 'empty.sqlite3'}")


CASES: dict[str, tuple[Callable[[Setup], None], str, str]] = {
    # case: (change, the check that fails, words of its line)
    "mx missing": (_drop(f"{DOMAIN}.", "MX"), "MX", "has no MX record"),
    "mx null": (_set(f"{DOMAIN}.", "MX", "0 ."), "MX", "null MX"),
    "mx host without address": (_drop(f"{MX}.", "A"), "MX", "has no address"),
    "spf missing": (_drop(f"{DOMAIN}.", "TXT"), "SPF", "does not allow 127.0.0.1: none"),
    "spf elsewhere": (_set(f"{DOMAIN}.", "TXT", "v=spf1 ip4:192.0.2.1 -all"), "SPF",
                      "does not allow 127.0.0.1: fail"),
    "dkim missing": (_drop(f"{SELECTOR}._domainkey.{DOMAIN}.", "TXT"), "DKIM", "no DKIM key"),
    "dkim other key": (_set(f"{SELECTOR}._domainkey.{DOMAIN}.", "TXT", other_key), "DKIM",
                       "another key"),
    "dmarc missing": (_drop(f"_dmarc.{DOMAIN}.", "TXT"), "DMARC", "0 DMARC records"),
    "dmarc without policy": (_set(f"_dmarc.{DOMAIN}.", "TXT", "v=DMARC1; rua=mailto:a@b.c"),
                             "DMARC", "no valid policy"),
    "certificate for another name": (
        _certificate(lambda s: s.authority.issue("other.example", s.folder / "o",
                                                 valid_for=timedelta(days=90)).cert),
        "certificate", "not for mx.relay.example"),
    "certificate expiring": (
        _certificate(lambda s: s.authority.issue(MX, s.folder / "e",
                                                 valid_for=timedelta(days=7)).cert),
        "certificate", "in less than 14 days"),
    "certificate self-signed": (_certificate(_self_signed), "certificate", "self-signed"),
    "smarthost down": (_settings(smarthost=HostPort("127.0.0.1", free_port())), "smarthost",
                       "is not reachable"),
    "smarthost certificate unverified": (_settings(smarthost_ca=None), "smarthost",
                                         "CERTIFICATE_VERIFY_FAILED"),
    "database not migrated": (_unmigrated, "database", "run `mailveil migrate`"),
    "database unreachable": (_settings(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/mailveil"),
        "database", "not reachable"),
    "clamd down": (_settings(clamd=f"127.0.0.1:{free_port()}"), "clamd", "cannot reach"),
    "open files": (_settings(smtp_max_connections=10_000_000), "open files", "is below"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_fault_is_named_with_its_fix(setup: Setup, case: str) -> None:
    change, check, words = CASES[case]
    change(setup)
    findings = run(setup)
    wrong = [f for f in findings if not f.ok]
    assert [f.check for f in wrong] == [check], [str(f) for f in wrong]
    assert words in str(wrong[0]) and wrong[0].fix


def test_a_smarthost_without_starttls(setup: Setup) -> None:
    with Sink.running() as plain:
        setup.settings = dataclasses.replace(setup.settings,
                                             smarthost=HostPort("127.0.0.1", plain.port))
        [wrong] = [f for f in run(setup) if not f.ok]
    assert (wrong.check, wrong.text.endswith("offers no STARTTLS: mail would leave in clear")
            ) == ("smarthost", True)


def test_a_real_clamd_without_official_signatures(setup: Setup, clamd: ClamdInfo) -> None:
    """The test clamd answers PING and VERSION, but its database has no date: freshclam."""
    setup.settings = dataclasses.replace(setup.settings, clamd=clamd.tcp_address)
    findings = {f.check: f for f in run(setup)}
    assert findings["clamd"].ok and "ClamAV " in findings["clamd"].text
    assert not findings["clamd signatures"].ok
    assert "freshclam" in findings["clamd signatures"].fix


def test_signature_age() -> None:
    assert signatures_finding("ClamAV 1.4.6/27473/Sat Nov 29 09:36:02 2026",
                              datetime(2026, 11, 30, tzinfo=UTC)).ok
    old = signatures_finding("ClamAV 1.4.6/27473/Sat Nov 29 09:36:02 2026",
                             datetime(2026, 12, 3, tzinfo=UTC))
    assert not old.ok and "older than 3 days" in old.text


def test_open_files_against_the_connection_cap() -> None:
    assert open_files_finding(1124, 1000).ok
    low = open_files_finding(1024, 1000)
    assert not low.ok and "LimitNOFILE" in low.fix
