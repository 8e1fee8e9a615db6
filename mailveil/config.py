"""Settings read once from the environment and passed explicitly to every component.

Nothing reads ``os.environ`` after start-up: a wrong value fails here, naming the variable,
instead of surfacing as a puzzling error deep inside a delivery attempt.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from mailveil.delivery.transport import TlsMode
from mailveil.domain.review import DEFAULT as DEFAULT_REVIEW_PATTERNS
from mailveil.domain.review import ReviewAction, ReviewPatterns, ReviewPolicy
from mailveil.smtp.limits import Limits, Rate, parse_networks, parse_rate

PREFIX = "MAILVEIL_"
MAX_HORIZON_DAYS = 36525
"""A century: activity dates further out are mistakes, and the window stays computable."""


class ConfigError(ValueError):
    """A setting is missing or malformed; the message starts with the variable's name."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("var")
    database_url: str = ""
    relay_domain: str = "reply.example.com"
    smtp_listen: HostPort = HostPort("127.0.0.1", 2525)
    policy_listen: HostPort | None = None  # the Postfix policy service (smtp/policy.py)
    policy_trust_seconds: int = 5  # how long its lookup serves Postfix's relay (smtp/vouched.py)
    # Peers whose XFORWARD (the client address they saw) the listener believes: a Postfix
    # in front. None by default: anyone else could claim any address.
    trusted_peers: tuple[str, ...] = ()
    trusted_authserv_id: str | None = None  # whose Authentication-Results are believed
    http_listen: HostPort = HostPort("127.0.0.1", 8025)
    smarthost: HostPort | None = None
    smarthost_implicit_tls: bool = False  # given as smtps://host:port
    smarthost_tls: TlsMode = TlsMode.OPPORTUNISTIC
    smarthost_ca: Path | None = None  # None: the system's trust store
    tls_cert: Path | None = None  # None: a self-signed pair generated in data_dir/tls/
    tls_key: Path | None = None
    api_token: str | None = None
    customer_prefix: str = "customer-"
    supplier_prefix: str = "local-partner-"
    bounce_prefix: str = "bounce-"
    noreply_local: str = "no-reply"
    grace_period: timedelta = timedelta(days=7)
    booking_horizon: timedelta = timedelta(days=730)
    platform_name: str = "mailveil"
    display_name_template: str = "{name} via {platform}"
    max_message_bytes: int = 14 * 1024 * 1024
    smtp_timeout: timedelta = timedelta(minutes=5)
    smtp_max_connections: int = 1000
    limits: Limits = field(default_factory=Limits)  # per client address and per sender
    retry_for: timedelta = timedelta(days=3)
    retry_first: timedelta = timedelta(seconds=60)
    retry_max_interval: timedelta = timedelta(hours=1)
    contact_form_url: str | None = None  # None: the portal's own form, per booking
    dkim_selector: str = "mailveil"
    dkim_key_path: Path | None = None
    worker_batch: int = 50
    clamd: str | None = None
    dns: str | None = None  # host:port of the resolver for SPF/DKIM/DMARC; None: the system's
    lease: timedelta = timedelta(minutes=5)
    cpu_budget_seconds: int = 10  # CPU a message may cost to process (mailveil/budget.py)
    retention_body: timedelta = timedelta(days=180)
    retention_metadata: timedelta = timedelta(days=730)
    banner: bool = True
    banner_style: str | None = None
    # Mail that no SPF, DKIM or DMARC proves: relayed with a warning (False) or refused.
    refuse_unverified: bool = False
    portal_url: str | None = None  # public base of the supplier portal; None: http_listen
    portal_link_lifetime: timedelta = timedelta(minutes=15)  # one-time sign-in links
    portal_session_lifetime: timedelta = timedelta(hours=12)
    portal_secret: str | None = None  # signs cookies; None: generated into data_dir
    cancellation_answer_days: int = 14  # how long a customer's confirm/decline links work
    webhook_url: str | None = None  # where events for the marketplace go; None: no events
    webhook_secret: str | None = None  # signs them; None: generated into data_dir
    review: ReviewPolicy = field(default_factory=ReviewPolicy)  # review requests elsewhere

    @property
    def capture_dir(self) -> Path:
        """Maildir where outgoing mail lands when no smarthost is configured."""
        return self.data_dir / "captured"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'mailveil.sqlite3').resolve()}"


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_LOCAL_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,30}$")


def _host_port(name: str, value: str) -> HostPort:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{PREFIX}{name}: expected host:port, got {value!r}")
    return HostPort(host, int(port))


def _positive_int(name: str, value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise ConfigError(f"{PREFIX}{name}: expected a positive whole number, got {value!r}")
    return int(value)


def _rate(name: str, value: str) -> Rate:
    rate = parse_rate(value)
    if rate is None:
        raise ConfigError(f"{PREFIX}{name}: expected count/seconds such as 20/600, got {value!r}")
    return rate


def _networks(name: str, value: str, example: str) -> tuple[str, ...]:
    networks = parse_networks(value)
    if networks is None:
        raise ConfigError(f"{PREFIX}{name}: expected networks such as {example}, got {value!r}")
    return networks


def _limits(get: Callable[[str], str | None]) -> Limits:
    values: dict[str, object] = {}
    for name, attr in (("SMTP_MAX_PER_CLIENT", "max_per_client"),
                       ("SMTP_SESSION_SECONDS", "session_seconds"),
                       ("SMTP_MIN_DATA_RATE", "min_data_rate"),
                       ("SMTP_COOLDOWN_SECONDS", "cooldown_seconds")):
        if (v := get(name)) is not None:
            values[attr] = _positive_int(name, v)
    for name, attr in (("SMTP_CONNECT_RATE", "connect_rate"),
                       ("SMTP_UNKNOWN_RCPT_RATE", "harvest"), ("RATE_SENDER", "sender"),
                       ("RATE_NOTICES", "notices")):
        if (v := get(name)) is not None:
            values[attr] = _rate(name, v)
    if (v := get("SMTP_LIMIT_EXEMPT")) is not None:
        values["exempt"] = _networks("SMTP_LIMIT_EXEMPT", v, "192.0.2.0/24, 2001:db8::/32 or none")
    return Limits(**values)  # type: ignore[arg-type]


def _prefix(name: str, value: str) -> str:
    if not _LOCAL_PREFIX_RE.match(value):
        raise ConfigError(
            f"{PREFIX}{name}: expected a short lower-case local-part prefix, got {value!r}")
    return value


def _review(get: Callable[[str], str | None]) -> ReviewPolicy:
    """REVIEW_ACTION (flag or hold) and REVIEW_PATTERNS_FILE (one regular expression a
    line, replacing the defaults of mailveil/domain/review.py)."""
    action = (get("REVIEW_ACTION") or ReviewAction.FLAG.value).lower()
    if action not in {a.value for a in ReviewAction}:
        raise ConfigError(f"{PREFIX}REVIEW_ACTION: expected flag or hold, got {action!r}")
    patterns = DEFAULT_REVIEW_PATTERNS
    if (v := get("REVIEW_PATTERNS_FILE")) is not None:
        try:
            patterns = ReviewPatterns.parse(Path(v).read_text(encoding="utf-8"))
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"{PREFIX}REVIEW_PATTERNS_FILE: cannot read {v!r}: {exc}") from None
        except re.error as exc:
            raise ConfigError(f"{PREFIX}REVIEW_PATTERNS_FILE: {exc.pattern!r}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}REVIEW_PATTERNS_FILE: {exc}") from None
        if not patterns.sources:
            raise ConfigError(f"{PREFIX}REVIEW_PATTERNS_FILE: no pattern in {v!r}")
    return ReviewPolicy(ReviewAction(action), patterns)


def from_env(env: Mapping[str, str]) -> Settings:
    """Build settings from ``MAILVEIL_*`` variables; every other key is ignored."""

    def get(name: str) -> str | None:
        value = env.get(PREFIX + name)
        return value.strip() if value is not None and value.strip() else None

    values: dict[str, object] = {}
    if (v := get("DATA_DIR")) is not None:
        values["data_dir"] = Path(v)
    if (v := get("DATABASE_URL")) is not None:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ConfigError(
                f"{PREFIX}DATABASE_URL: expected sqlite:///path or "
                f"postgresql+psycopg://..., got {v!r}")
        values["database_url"] = v
    if (v := get("RELAY_DOMAIN")) is not None:
        if not _DOMAIN_RE.match(v.lower()):
            raise ConfigError(f"{PREFIX}RELAY_DOMAIN: expected a domain name, got {v!r}")
        values["relay_domain"] = v.lower()
    for name, attr in (("SMTP_LISTEN", "smtp_listen"), ("HTTP_LISTEN", "http_listen"),
                       ("POLICY_LISTEN", "policy_listen")):
        if (v := get(name)) is not None:
            values[attr] = _host_port(name, v)
    if (v := get("SMARTHOST")) is not None:
        values["smarthost_implicit_tls"] = v.lower().startswith("smtps://")
        if values["smarthost_implicit_tls"] and not re.search(r":\d+$", v):
            v += ":465"
        values["smarthost"] = _host_port("SMARTHOST", re.sub(r"^smtps?://", "", v, flags=re.I))
    if (v := get("SMARTHOST_TLS")) is not None:
        if v.lower() not in tuple(TlsMode):
            raise ConfigError(f"{PREFIX}SMARTHOST_TLS: expected opportunistic, required or off, "
                              f"got {v!r}")
        values["smarthost_tls"] = TlsMode(v.lower())
    if values.get("smarthost_implicit_tls") and values.get("smarthost_tls") is TlsMode.OFF:
        raise ConfigError(f"{PREFIX}SMARTHOST_TLS: off contradicts an smtps:// smarthost")
    for name, attr in (("SMARTHOST_CA", "smarthost_ca"), ("TLS_CERT", "tls_cert"),
                       ("TLS_KEY", "tls_key")):
        if (v := get(name)) is not None:
            if not Path(v).is_file():
                raise ConfigError(f"{PREFIX}{name}: no such file {v!r}")
            values[attr] = Path(v)
    if "tls_key" in values and "tls_cert" not in values:
        raise ConfigError(f"{PREFIX}TLS_KEY: set MAILVEIL_TLS_CERT too")
    if (v := get("API_TOKEN")) is not None:
        if len(v) < 16:
            raise ConfigError(f"{PREFIX}API_TOKEN: use at least 16 characters")
        values["api_token"] = v
    for name, attr in (("CUSTOMER_PREFIX", "customer_prefix"),
                       ("SUPPLIER_PREFIX", "supplier_prefix"),
                       ("BOUNCE_PREFIX", "bounce_prefix")):
        if (v := get(name)) is not None:
            values[attr] = _prefix(name, v)
    if (v := get("GRACE_DAYS")) is not None:
        if not v.isdigit():
            raise ConfigError(f"{PREFIX}GRACE_DAYS: expected a whole number of days, got {v!r}")
        values["grace_period"] = timedelta(days=int(v))
    if (v := get("BOOKING_HORIZON_DAYS")) is not None:
        days = _positive_int("BOOKING_HORIZON_DAYS", v)
        if days > MAX_HORIZON_DAYS:
            raise ConfigError(
                f"{PREFIX}BOOKING_HORIZON_DAYS: at most {MAX_HORIZON_DAYS} days, got {v!r}")
        values["booking_horizon"] = timedelta(days=days)
    if (v := get("RETRY_SECONDS")) is not None:
        values["retry_for"] = timedelta(seconds=_positive_int("RETRY_SECONDS", v))
    if (v := get("RETRY_FIRST_SECONDS")) is not None:
        values["retry_first"] = timedelta(seconds=_positive_int("RETRY_FIRST_SECONDS", v))
    if (v := get("RETENTION_BODY_DAYS")) is not None:
        values["retention_body"] = timedelta(days=_positive_int("RETENTION_BODY_DAYS", v))
    if (v := get("RETENTION_DAYS")) is not None:
        values["retention_metadata"] = timedelta(days=_positive_int("RETENTION_DAYS", v))
    if (v := get("POLICY_TRUST_SECONDS")) is not None:
        values["policy_trust_seconds"] = _positive_int("POLICY_TRUST_SECONDS", v)
    if (v := get("CPU_BUDGET_SECONDS")) is not None:
        values["cpu_budget_seconds"] = _positive_int("CPU_BUDGET_SECONDS", v)
    if (v := get("LEASE_SECONDS")) is not None:
        values["lease"] = timedelta(seconds=_positive_int("LEASE_SECONDS", v))
    if (v := get("MAX_MESSAGE_BYTES")) is not None:
        values["max_message_bytes"] = _positive_int("MAX_MESSAGE_BYTES", v)
    if (v := get("SMTP_TIMEOUT")) is not None:
        values["smtp_timeout"] = timedelta(seconds=_positive_int("SMTP_TIMEOUT", v))
    if (v := get("SMTP_MAX_CONNECTIONS")) is not None:
        values["smtp_max_connections"] = _positive_int("SMTP_MAX_CONNECTIONS", v)
    values["limits"] = _limits(get)
    if (v := get("PLATFORM_NAME")) is not None:
        values["platform_name"] = v
    if (v := get("DISPLAY_NAME")) is not None:
        if "{name}" not in v:
            raise ConfigError(f"{PREFIX}DISPLAY_NAME: must contain {{name}}, got {v!r}")
        try:
            v.format(name="x", platform="y")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"{PREFIX}DISPLAY_NAME: only {{name}} and {{platform}} allowed") from exc
        values["display_name_template"] = v
    if (v := get("CONTACT_FORM_URL")) is not None:
        if not re.match(r"^https?://\S+$", v):
            raise ConfigError(f"{PREFIX}CONTACT_FORM_URL: expected an http(s) URL, got {v!r}")
        values["contact_form_url"] = v
    if (v := get("DKIM_SELECTOR")) is not None:
        values["dkim_selector"] = v
    if (v := get("DKIM_KEY")) is not None:
        if not Path(v).is_file():
            raise ConfigError(f"{PREFIX}DKIM_KEY: no such file {v!r}")
        values["dkim_key_path"] = Path(v)
    if (v := get("CLAMD")) is not None:
        if not (v.startswith("/") or re.match(r"^[\w.\[\]:-]+:\d+$", v)):
            raise ConfigError(f"{PREFIX}CLAMD: expected host:port or a unix socket path, got {v!r}")
        values["clamd"] = v
    if (v := get("BANNER_STYLE")) is not None:
        if re.search(r"[<>\"\\]", v):
            raise ConfigError(f"{PREFIX}BANNER_STYLE: CSS declarations only, got {v!r}")
        values["banner_style"] = v
    if (v := get("DNS")) is not None:
        _host_port("DNS", v)
        values["dns"] = v
    if (v := get("TRUSTED_PEERS")) is not None:
        values["trusted_peers"] = _networks("TRUSTED_PEERS", v, "127.0.0.1/32")
    if (v := get("TRUSTED_AUTHSERV_ID")) is not None:
        if not re.match(r"^[a-z0-9.-]{1,253}$", v.lower()):
            raise ConfigError(f"{PREFIX}TRUSTED_AUTHSERV_ID: expected a host name, got {v!r}")
        values["trusted_authserv_id"] = v.lower()
    if (v := get("BANNER")) is not None:
        if v.lower() not in ("on", "off"):
            raise ConfigError(f"{PREFIX}BANNER: expected on or off, got {v!r}")
        values["banner"] = v.lower() == "on"
    if (v := get("UNVERIFIED_SENDERS")) is not None:
        if v.lower() not in ("mark", "refuse"):
            raise ConfigError(f"{PREFIX}UNVERIFIED_SENDERS: expected mark or refuse, got {v!r}")
        values["refuse_unverified"] = v.lower() == "refuse"
    if (v := get("PORTAL_URL")) is not None:
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", v):
            raise ConfigError(f"{PREFIX}PORTAL_URL: expected an http(s) URL, got {v!r}")
        values["portal_url"] = v.rstrip("/")
    if (v := get("PORTAL_LINK_MINUTES")) is not None:
        values["portal_link_lifetime"] = timedelta(minutes=_positive_int("PORTAL_LINK_MINUTES", v))
    if (v := get("PORTAL_SESSION_HOURS")) is not None:
        values["portal_session_lifetime"] = timedelta(
            hours=_positive_int("PORTAL_SESSION_HOURS", v))
    if (v := get("PORTAL_SECRET")) is not None:
        if len(v) < 32:
            raise ConfigError(f"{PREFIX}PORTAL_SECRET: use at least 32 characters")
        values["portal_secret"] = v
    if (v := get("CANCELLATION_ANSWER_DAYS")) is not None:
        values["cancellation_answer_days"] = _positive_int("CANCELLATION_ANSWER_DAYS", v)
    if (v := get("WEBHOOK_URL")) is not None:
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", v):
            raise ConfigError(f"{PREFIX}WEBHOOK_URL: expected an http(s) URL, got {v!r}")
        values["webhook_url"] = v
    if (v := get("WEBHOOK_SECRET")) is not None:
        if len(v) < 32:
            raise ConfigError(f"{PREFIX}WEBHOOK_SECRET: use at least 32 characters")
        values["webhook_secret"] = v
    values["review"] = _review(get)
    s = Settings(**values)  # type: ignore[arg-type]
    if s.retention_metadata < s.retention_body:
        raise ConfigError(f"{PREFIX}RETENTION_DAYS must not be shorter than RETENTION_BODY_DAYS")
    prefixes = {s.customer_prefix, s.supplier_prefix, s.bounce_prefix, s.noreply_local}
    if len(prefixes) != 4:
        raise ConfigError(f"{PREFIX}CUSTOMER_PREFIX/SUPPLIER_PREFIX/BOUNCE_PREFIX must differ")
    return s
