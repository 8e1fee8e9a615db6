from datetime import timedelta
from pathlib import Path

import pytest

from mailveil.config import ConfigError, HostPort, from_env
from mailveil.delivery.transport import TlsMode
from mailveil.domain.review import DEFAULT, ReviewAction, ReviewPolicy
from mailveil.smtp.limits import Limits, Rate


def test_defaults_run_embedded() -> None:
    s = from_env({})
    assert s.smtp_listen == HostPort("127.0.0.1", 2525)
    assert s.http_listen == HostPort("127.0.0.1", 8025)
    assert s.smarthost is None
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.resolved_database_url.endswith("var/mailveil.sqlite3")
    assert s.grace_period == timedelta(days=7)


def test_values_are_read() -> None:
    s = from_env({"MAILVEIL_DATA_DIR": "/srv/mv", "MAILVEIL_RELAY_DOMAIN": "Reply.Tours.Example",
                  "MAILVEIL_SMARTHOST": "[::1]:25", "MAILVEIL_GRACE_DAYS": "3",
                  "MAILVEIL_BOOKING_HORIZON_DAYS": "400", "MAILVEIL_POLICY_TRUST_SECONDS": "30",
                  "MAILVEIL_API_TOKEN": "x" * 20, "OTHER": "ignored"})
    assert s.data_dir == Path("/srv/mv")
    assert s.relay_domain == "reply.tours.example"
    assert s.smarthost == HostPort("::1", 25)
    assert s.grace_period == timedelta(days=3)
    assert s.booking_horizon == timedelta(days=400)
    assert s.policy_trust_seconds == 30
    assert from_env({}).policy_trust_seconds == 5


@pytest.mark.parametrize(("name", "value"), [
    ("SMTP_LISTEN", "localhost"),
    ("SMTP_LISTEN", "127.0.0.1:99999"),
    ("HTTP_LISTEN", ":80"),
    ("SMARTHOST", "mx.example.com"),
    ("DATABASE_URL", "mysql://x"),
    ("RELAY_DOMAIN", "not a domain"),
    ("API_TOKEN", "short"),
    ("GRACE_DAYS", "seven"),
    ("BOOKING_HORIZON_DAYS", "0"),
    ("BOOKING_HORIZON_DAYS", "999999999"),
    ("CUSTOMER_PREFIX", "Bad Prefix"),
    ("DISPLAY_NAME", "{nom} via {platform}"),
    ("CONTACT_FORM_URL", "contact us"),
    ("CLAMD", "clamd"),
    ("BANNER", "maybe"),
    ("UNVERIFIED_SENDERS", "drop"),
    ("DNS", "resolver.example"),
    ("BANNER_STYLE", "color:red\"><script>"),
    ("SMARTHOST_TLS", "always"),
    ("SMARTHOST_CA", "/nonexistent/ca.pem"),
    ("TLS_CERT", "/nonexistent/cert.pem"),
    ("TLS_KEY", "/nonexistent/key.pem"),
    ("SMTP_MAX_PER_CLIENT", "0"),
    ("SMTP_SESSION_SECONDS", "ten"),
    ("SMTP_MIN_DATA_RATE", "-1"),
    ("SMTP_COOLDOWN_SECONDS", "0"),
    ("POLICY_TRUST_SECONDS", "0"),
    ("SMTP_CONNECT_RATE", "60"),
    ("SMTP_UNKNOWN_RCPT_RATE", "20/0"),
    ("RATE_SENDER", "60 per hour"),
    ("RATE_NOTICES", "0/3600"),
    ("SMTP_LIMIT_EXEMPT", "10.0.0.0/33"),
])
def test_wrong_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^MAILVEIL_{name}"):
        from_env({f"MAILVEIL_{name}": value})


def test_smtp_listener_limits() -> None:
    assert from_env({}).smtp_timeout == timedelta(minutes=5)
    assert from_env({}).smtp_max_connections == 1000
    s = from_env({"MAILVEIL_SMTP_TIMEOUT": "2", "MAILVEIL_SMTP_MAX_CONNECTIONS": "300"})
    assert s.smtp_timeout == timedelta(seconds=2)
    assert s.smtp_max_connections == 300
    for name in ("SMTP_TIMEOUT", "SMTP_MAX_CONNECTIONS"):
        with pytest.raises(ConfigError, match=f"^MAILVEIL_{name}"):
            from_env({f"MAILVEIL_{name}": "0"})


def test_limits_per_client_and_sender() -> None:
    assert from_env({}).limits == Limits()
    s = from_env({"MAILVEIL_SMTP_MAX_PER_CLIENT": "5", "MAILVEIL_SMTP_CONNECT_RATE": "30/60",
                  "MAILVEIL_SMTP_SESSION_SECONDS": "120", "MAILVEIL_SMTP_MIN_DATA_RATE": "100",
                  "MAILVEIL_SMTP_UNKNOWN_RCPT_RATE": "10/300",
                  "MAILVEIL_SMTP_COOLDOWN_SECONDS": "60", "MAILVEIL_RATE_SENDER": "20/600",
                  "MAILVEIL_RATE_NOTICES": "3/86400",
                  "MAILVEIL_SMTP_LIMIT_EXEMPT": "192.0.2.10, 2001:db8::/32"})
    assert s.limits == Limits(max_per_client=5, connect_rate=Rate(30, 60), session_seconds=120,
                              min_data_rate=100, harvest=Rate(10, 300), cooldown_seconds=60,
                              sender=Rate(20, 600), notices=Rate(3, 86400),
                              exempt=("192.0.2.10/32", "2001:db8::/32"))
    assert from_env({"MAILVEIL_SMTP_LIMIT_EXEMPT": "none"}).limits.exempt == ()


def test_unverified_senders_are_marked_unless_refused() -> None:
    assert from_env({}).refuse_unverified is False
    assert from_env({"MAILVEIL_UNVERIFIED_SENDERS": "Refuse"}).refuse_unverified is True
    assert from_env({"MAILVEIL_UNVERIFIED_SENDERS": "mark"}).refuse_unverified is False


def test_review_requests_are_flagged_unless_held_with_the_operators_patterns(
        tmp_path: Path) -> None:
    assert from_env({}).review == ReviewPolicy(ReviewAction.FLAG, DEFAULT)
    assert from_env({"MAILVEIL_REVIEW_ACTION": "HOLD"}).review.action is ReviewAction.HOLD
    ours = tmp_path / "patterns.txt"
    ours.write_text("# sites we do not allow\n\\bkudos\\.example\\b\n\nrate us\n")
    s = from_env({"MAILVEIL_REVIEW_PATTERNS_FILE": str(ours)})
    assert s.review.patterns.sources == (r"\bkudos\.example\b", "rate us")
    with pytest.raises(ConfigError, match="REVIEW_ACTION: expected flag or hold"):
        from_env({"MAILVEIL_REVIEW_ACTION": "sometimes"})
    for text, error in (("broken(\n", "'broken\\(': missing \\)"), ("# none\n", "no pattern"),
                        ("TripAdvisor\n", "lower case"),
                        (None, "cannot read")):
        if text is not None:
            ours.write_text(text)
        path = str(ours) if text is not None else str(tmp_path / "missing.txt")
        with pytest.raises(ConfigError, match=f"REVIEW_PATTERNS_FILE: .*{error}"):
            from_env({"MAILVEIL_REVIEW_PATTERNS_FILE": path})


def test_prefixes_must_differ() -> None:
    with pytest.raises(ConfigError, match="PREFIX"):
        from_env({"MAILVEIL_SUPPLIER_PREFIX": "customer-"})


def test_tls_settings(tmp_path: Path) -> None:
    s = from_env({})
    assert (s.smarthost_tls, s.smarthost_implicit_tls, s.smarthost_ca) == (
        TlsMode.OPPORTUNISTIC, False, None)
    assert (s.tls_cert, s.tls_key) == (None, None)
    pem = tmp_path / "pair.pem"
    pem.write_text("checked when the listener loads it")
    s = from_env({"MAILVEIL_SMARTHOST": "smtps://relay.example.net",
                  "MAILVEIL_SMARTHOST_TLS": "Required", "MAILVEIL_SMARTHOST_CA": str(pem),
                  "MAILVEIL_TLS_CERT": str(pem)})
    assert (s.smarthost, s.smarthost_implicit_tls) == (HostPort("relay.example.net", 465), True)
    assert (s.smarthost_tls, s.smarthost_ca, s.tls_cert, s.tls_key) == (
        TlsMode.REQUIRED, pem, pem, None)
    s = from_env({"MAILVEIL_SMARTHOST": "smtp://relay.example.net:587"})
    assert (s.smarthost, s.smarthost_implicit_tls) == (HostPort("relay.example.net", 587), False)
    with pytest.raises(ConfigError, match=r"^MAILVEIL_SMARTHOST_TLS"):
        from_env({"MAILVEIL_SMARTHOST": "smtps://relay.example.net:465",
                  "MAILVEIL_SMARTHOST_TLS": "off"})
    with pytest.raises(ConfigError, match=r"^MAILVEIL_TLS_KEY"):
        from_env({"MAILVEIL_TLS_KEY": str(pem)})


def test_portal_settings() -> None:
    s = from_env({})
    assert (s.portal_url, s.portal_link_lifetime) == (None, timedelta(minutes=15))
    s = from_env({"MAILVEIL_PORTAL_URL": "https://partners.tourly.example/",
                  "MAILVEIL_PORTAL_LINK_MINUTES": "5", "MAILVEIL_PORTAL_SESSION_HOURS": "2",
                  "MAILVEIL_PORTAL_SECRET": "k" * 32, "MAILVEIL_CANCELLATION_ANSWER_DAYS": "3"})
    assert s.portal_url == "https://partners.tourly.example"
    assert s.portal_link_lifetime == timedelta(minutes=5)
    assert s.portal_session_lifetime == timedelta(hours=2)
    assert (s.portal_secret, s.cancellation_answer_days) == ("k" * 32, 3)
    s = from_env({"MAILVEIL_WEBHOOK_URL": "https://market.example/hooks",
                  "MAILVEIL_WEBHOOK_SECRET": "w" * 32})
    assert (s.webhook_url, s.webhook_secret) == ("https://market.example/hooks", "w" * 32)
    for name, value in [("PORTAL_URL", "ftp://x"), ("PORTAL_URL", "https://a b"),
                        ("PORTAL_LINK_MINUTES", "0"), ("PORTAL_SECRET", "short"),
                        ("CANCELLATION_ANSWER_DAYS", "-1"), ("WEBHOOK_URL", "hooks"),
                        ("WEBHOOK_SECRET", "short")]:
        with pytest.raises(ConfigError, match=f"MAILVEIL_{name}"):
            from_env({f"MAILVEIL_{name}": value})
