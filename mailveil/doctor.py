"""``mailveil doctor``: is this configuration ready for the internet, and if not, what to do.

Each check fetches what it needs (DNS, files, sockets) and hands plain values to a pure
function that says what is right or wrong and how to fix it, one :class:`Finding` each.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import resource
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography import x509
from dns.asyncresolver import Resolver

from mailveil.authn.lookup import TempError, make_resolver, query
from mailveil.authn.spf import check_spf
from mailveil.config import Settings
from mailveil.mail.dkim import dns_txt_record
from mailveil.scan.clamd import Clamd, ScannerUnavailable
from mailveil.store.db import alembic_config, make_engine

CERTIFICATE_MARGIN = timedelta(days=14)
SIGNATURES_MAX_AGE = timedelta(days=3)  # freshclam updates several times a day
FILES_BESIDE_SESSIONS = 100  # database pool, clamd, smarthost, logs, the web API
TIMEOUT = 10.0


@dataclass(frozen=True)
class Finding:
    ok: bool
    check: str
    text: str
    fix: str = ""

    def __str__(self) -> str:
        line = f"{'ok  ' if self.ok else 'FAIL'}  {self.check}: {self.text}"
        return line if self.ok else f"{line}\n      fix: {self.fix}"


def _ok(check: str, text: str) -> Finding:
    return Finding(True, check, text)


def _wrong(check: str, text: str, fix: str) -> Finding:
    return Finding(False, check, text, fix)


# Pure decisions ---------------------------------------------------------------------------

def mx_finding(domain: str, hosts: list[str] | None, addresses: dict[str, list[str]]
               ) -> Finding:
    """``hosts``: the MX names (``None``: no such domain); ``addresses``: theirs."""
    fix = f"publish MX records for {domain} naming the hosts that run `mailveil smtp`"
    if not hosts:
        return _wrong("MX", f"{domain} has no MX record", fix)
    names = [h.rstrip(".") for h in hosts]
    if names == [""]:
        return _wrong("MX", f"{domain} has a null MX (RFC 7505): it takes no mail", fix)
    unresolved = [n for n in names if not addresses.get(n)]
    if unresolved:
        return _wrong("MX", f"{', '.join(unresolved)} (MX of {domain}) has no address",
                      f"publish A or AAAA records for {', '.join(unresolved)}")
    return _ok("MX", f"{domain} is served by {', '.join(names)}")


def spf_finding(domain: str, results: dict[str, str]) -> Finding:
    """``results``: the SPF result of the relay domain for each address mail leaves from."""
    refused = {ip: r for ip, r in results.items() if r != "pass"}
    if not results:
        return _wrong("SPF", "no address to check", "pass --ip with the address mail leaves from")
    if refused:
        said = ", ".join(f"{ip}: {r}" for ip, r in refused.items())
        return _wrong("SPF", f"the SPF record of {domain} does not allow {said}",
                      f'publish TXT {domain} "v=spf1 ' + " ".join(
                          f"ip{ipaddress.ip_address(ip).version}:{ip}" for ip in results)
                      + ' -all" (or add these to its record)')
    return _ok("SPF", f"{domain} allows {', '.join(results)}")


def _tags(record: str) -> dict[str, str]:
    tags = (t.partition("=") for t in record.split(";") if "=" in t)
    return {k.strip().lower(): re.sub(r"\s+", "", v) for k, _, v in tags}


def dkim_finding(name: str, published: list[str] | None, expected: str) -> Finding:
    """The DKIM key published at ``name`` against the one mailveil signs with."""
    fix = f'publish TXT {name} "{expected}"'
    keys = [_tags(r).get("p") for r in published or () if "p=" in r]
    if not keys:
        return _wrong("DKIM", f"no DKIM key at {name}", fix)
    if _tags(expected)["p"] not in keys:
        return _wrong("DKIM", f"{name} publishes another key than the one in use", fix)
    return _ok("DKIM", f"{name} publishes the key in use")


def dmarc_finding(domain: str, published: list[str] | None) -> Finding:
    name = f"_dmarc.{domain}"
    fix = f'publish TXT {name} "v=DMARC1; p=quarantine"'
    records = [r for r in published or () if r.replace(" ", "").lower().startswith("v=dmarc1")]
    if len(records) != 1:
        return _wrong("DMARC", f"{name} has {len(records)} DMARC records, not one", fix)
    policy = _tags(records[0]).get("p")
    if policy not in ("none", "quarantine", "reject"):
        return _wrong("DMARC", f"{name} has no valid policy (p=)", fix)
    return _ok("DMARC", f"{name} asks for p={policy}")


def _covers(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        return name.count(".") == pattern.count(".") and name.endswith(pattern[1:])
    return pattern == name


def certificate_finding(pem: bytes | None, mx_names: Sequence[str], now: datetime) -> Finding:
    """The listener's certificate: issued by a CA, valid now and for 14 days, for the MX."""
    fix = ("set MAILVEIL_TLS_CERT and MAILVEIL_TLS_KEY to a certificate from a CA "
           f"(e.g. Let's Encrypt) for {', '.join(mx_names) or 'the MX host name'}")
    if pem is None:
        return _wrong("certificate", "no certificate file", fix)
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return _wrong("certificate", "the file holds no PEM certificate", fix)
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    ends = cert.not_valid_after_utc
    if cert.issuer == cert.subject:
        return _wrong("certificate", "self-signed: senders that verify will not deliver", fix)
    if not cert.not_valid_before_utc <= now < ends:
        return _wrong("certificate", f"not valid now (valid until {ends:%Y-%m-%d})", fix)
    if ends - now < CERTIFICATE_MARGIN:
        return _wrong("certificate", f"expires on {ends:%Y-%m-%d}, in less than 14 days",
                      "renew it (mailveil picks the new files up without a restart)")
    missing = [m for m in mx_names if not any(_covers(n, m) for n in names)]
    if missing:
        return _wrong("certificate", f"issued for {', '.join(names) or 'no name'}, "
                      f"not for {', '.join(missing)}", fix)
    return _ok("certificate", f"for {', '.join(names) or 'no name'}, valid until "
               f"{ends:%Y-%m-%d}" + ("" if mx_names else " (no MX name to compare with)"))


_VERSION = re.compile(r"^ClamAV [^/]+/(\d+)/(.+)$")


def signatures_finding(version: str, now: datetime) -> Finding:
    """clamd's VERSION answer: how old its signature database is."""
    fix = "run freshclam (the clamav-freshclam service) so clamd gets current signatures"
    found = _VERSION.match(version.strip())
    if not found:
        return _wrong("clamd signatures", f"{version!r} names no signature database", fix)
    try:
        date = datetime.strptime(found[2].strip(), "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)
    except ValueError:
        return _wrong("clamd signatures", f"unreadable date in {version!r}", fix)
    if now - date > SIGNATURES_MAX_AGE:
        return _wrong("clamd signatures", f"version {found[1]} of {date:%Y-%m-%d}, older "
                      f"than {SIGNATURES_MAX_AGE.days} days", fix)
    return _ok("clamd signatures", f"version {found[1]} of {date:%Y-%m-%d %H:%M}")


def open_files_finding(soft_limit: int, max_connections: int) -> Finding:
    needed = max_connections + FILES_BESIDE_SESSIONS
    if soft_limit != resource.RLIM_INFINITY and soft_limit < needed:
        return _wrong("open files", f"limit {soft_limit} is below the {max_connections} "
                      f"sessions of MAILVEIL_SMTP_MAX_CONNECTIONS + {FILES_BESIDE_SESSIONS}",
                      f"raise it to {needed} or more (systemd LimitNOFILE=, ulimit -n), or "
                      "lower MAILVEIL_SMTP_MAX_CONNECTIONS")
    return _ok("open files", f"limit {soft_limit} holds {max_connections} sessions")


# Fetching ---------------------------------------------------------------------------------

async def _dns(settings: Settings, resolver: Resolver, ips: Sequence[str]) -> list[Finding]:
    domain = settings.relay_domain
    hosts = await query(resolver, domain, "MX")
    names = [h.rstrip(".") for h in hosts or () if h.rstrip(".")]
    addresses = {n: [*(await query(resolver, n, "A") or ()),
                     *(await query(resolver, n, "AAAA") or ())] for n in names}
    findings = [mx_finding(domain, hosts, addresses)]
    senders = list(ips) or [a for found in addresses.values() for a in found]
    findings.append(spf_finding(domain, {ip: await check_spf(resolver, ip, domain)
                                         for ip in senders}))
    key_path = (settings.dkim_key_path
                or settings.data_dir / "dkim" / f"{settings.dkim_selector}.pem")
    if not Path(key_path).is_file():
        findings.append(_wrong("DKIM", f"no key at {key_path}",
                               "start `mailveil worker` once to generate it, or set "
                               "MAILVEIL_DKIM_KEY"))
    else:
        name, expected = dns_txt_record(Path(key_path).read_bytes(), settings.dkim_selector,
                                        domain)
        findings.append(dkim_finding(name, await query(resolver, name, "TXT"), expected))
    findings.append(dmarc_finding(domain, await query(resolver, f"_dmarc.{domain}", "TXT")))
    cert = settings.tls_cert or settings.data_dir / "tls" / "self-signed.pem"
    findings.append(certificate_finding(cert.read_bytes() if cert.is_file() else None, names,
                                        datetime.now(UTC)))
    return findings


def _smarthost(settings: Settings) -> Finding:
    host = settings.smarthost
    if host is None:
        return _wrong("smarthost", "none: outgoing mail is captured in a maildir, not sent",
                      "set MAILVEIL_SMARTHOST to the MTA that delivers to the internet")
    context = ssl.create_default_context(
        cafile=str(settings.smarthost_ca) if settings.smarthost_ca else None)
    try:
        if settings.smarthost_implicit_tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(host.host, host.port, timeout=TIMEOUT,
                                                    context=context)
        else:
            client = smtplib.SMTP(host.host, host.port, timeout=TIMEOUT)
    except ssl.SSLError as exc:
        return _certificate_refused(host.host, exc)
    except OSError as exc:
        return _wrong("smarthost", f"{host} is not reachable ({exc})",
                      "start it, or correct MAILVEIL_SMARTHOST")
    with client:
        client.ehlo(settings.relay_domain)
        if not settings.smarthost_implicit_tls:
            if not client.has_extn("starttls"):
                return _wrong("smarthost", f"{host} offers no STARTTLS: mail would leave "
                              "in clear", "enable TLS on the smarthost")
            try:
                client.starttls(context=context)
            except ssl.SSLError as exc:
                return _certificate_refused(host.host, exc)
        assert isinstance(client.sock, ssl.SSLSocket)
        version = client.sock.version()
    return _ok("smarthost", f"{host} reachable, {version}, certificate verified "
               f"(MAILVEIL_SMARTHOST_TLS={settings.smarthost_tls.value})")


def _certificate_refused(host: str, exc: ssl.SSLError) -> Finding:
    return _wrong("smarthost", f"TLS with {host} failed: {exc.reason or exc}",
                  "give the smarthost a certificate for its name from a CA, or its CA in "
                  "MAILVEIL_SMARTHOST_CA")


def _database(settings: Settings) -> Finding:
    url = settings.resolved_database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        return _wrong("database", f"not reachable ({type(exc).__name__}: {exc})",
                      "check MAILVEIL_DATABASE_URL and that the server runs")
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current != head:
        return _wrong("database", f"at migration {current or 'none'}, code needs {head}",
                      "run `mailveil migrate`")
    return _ok("database", f"reachable, migrated ({head})")


async def _clamd(settings: Settings) -> list[Finding]:
    if settings.clamd is None:
        return [_wrong("clamd", "not configured: attachments are not scanned",
                       "set MAILVEIL_CLAMD to clamd's host:port or socket path")]
    clamd = Clamd(settings.clamd, timeout=TIMEOUT)
    try:
        await clamd.ping()
        version = await clamd.version()
    except ScannerUnavailable as exc:
        return [_wrong("clamd", str(exc), "start clamd, or correct MAILVEIL_CLAMD")]
    return [_ok("clamd", f"{settings.clamd} answers PING; {version}"),
            signatures_finding(version, datetime.now(UTC))]


async def examine(settings: Settings, ips: Sequence[str] = ()) -> list[Finding]:
    """Every check of the configuration; ``ips``: the addresses mail leaves from (default:
    the MX hosts' own)."""
    try:
        findings = await _dns(settings, make_resolver(settings.dns), ips)
    except TempError as exc:
        findings = [_wrong("DNS", f"no answer ({exc})", "check MAILVEIL_DNS or the resolver")]
    findings.append(await asyncio.to_thread(_smarthost, settings))
    findings.append(await asyncio.to_thread(_database, settings))
    findings += await _clamd(settings)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    findings.append(open_files_finding(soft, settings.smtp_max_connections))
    return findings
