"""The resolver the authenticity checks share: one server, or the system's."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailveil.authn.lookup import DNS_TIMEOUT, make_resolver


def test_make_resolver_targets_one_server() -> None:
    resolver = make_resolver("127.0.0.1:5353", timeout=2)
    assert (resolver.nameservers, resolver.port, resolver.lifetime) == (["127.0.0.1"], 5353, 2)
    assert make_resolver("[::1]:53").nameservers == ["::1"]


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:", ":53", "127.0.0.1:dns"])
def test_make_resolver_needs_host_and_port(value: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        make_resolver(value)


@pytest.mark.skipif(not Path("/etc/resolv.conf").exists(), reason="no system resolver")
def test_make_resolver_uses_the_system_resolver() -> None:
    assert make_resolver(None).lifetime == DNS_TIMEOUT
