"""Tripwires on the upstream internals mailveil relies on (issue 12.7).

mailveil reaches past three public APIs, each for a measured reason:

* aiosmtpd 1.4's ``SMTP`` (mailveil/smtp/protocol.py): it overrides ``_timeout_cb``,
  ``_call_handler_hook``, ``_getaddr``, ``smtp_STARTTLS`` and ``handle_exception``,
  calls ``_set_post_data_state`` and ``_reset_timeout``, reads ``_reader``/``_writer``,
  and replaces ``smtp_DATA`` with a chunked reader modelled on 1.4's;
* asyncio's ``StreamReader._buffer`` (same module): to drop unread input on a ``421``, to
  see data sent before our ``354``, and to hand back commands pipelined after the data;
* dkimpy's ``hash_headers``, ``rfc822_parse``, ``fold`` and ``CanonicalizationPolicy``
  (mailveil/mail/dkim.py): signing hashes the header block only and lets OpenSSL do RSA.

pyproject.toml bounds those packages and requirements.lock pins them; an upgrade (``make
lock``) that changes any of these makes this module fail and name what changed. Then read
the new upstream code, adapt mailveil, run tests/smtp, tests/e2e/test_hostile_smtp.py and
tests/mail/test_dkim.py (which pin the behaviour), and update the digest here.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import aiosmtpd
import dkim
import dkim.util
import pytest
from aiosmtpd.smtp import MISSING, SMTP, syntax
from dkim.canonicalization import CanonicalizationPolicy

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


def digest(function: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# The source of each aiosmtpd 1.4.6 method mailveil overrides, calls or copies.
AIOSMTPD = {
    "smtp_DATA": "3a33f30d3fd6d02f",  # replaced by RelaySMTP.smtp_DATA / _receive_data
    "_timeout_cb": "10a7351f9bec2818",  # overridden: 421 with an enhanced code
    "_call_handler_hook": "6ff23a6634ea0307",  # overridden: tallies replies, marks hooks
    "_set_post_data_state": "1dc8a8abca2a8164",  # called after our DATA
    "_getaddr": "0aeb21c56ac1260e",  # overridden: plain paths without the header parser
    "_reset_timeout": "fef19b94d28dff31",  # called while a long DATA is read
    "connection_made": "77a45df5065bba34",  # sets _reader and _writer
    "_handle_client": "0e4d096403af6c74",  # the command loop that reads _reader
    "push": "15f4f1de5e30c337",  # overridden: a 421 hangs up, multiline in one write
    # Extended: a handshake we cut short ends the session; connection_made (above) drops
    # what was pipelined behind STARTTLS in clear.
    "smtp_STARTTLS": "6565289f4131fa13",
    "handle_exception": "33be80d97d2d75ee",  # overridden: a failed handshake is a log line
}

DKIMPY: dict[str, tuple[Callable[..., Any], str]] = {
    "dkim.hash_headers": (dkim.hash_headers, "216b8155ca91b6f8"),
    "dkim.rfc822_parse": (dkim.rfc822_parse, "7f14c5bce64fa86a"),
    "dkim.fold": (dkim.fold, "4a8b005293a2ebe2"),
    "CanonicalizationPolicy.canonicalize_headers": (
        CanonicalizationPolicy.canonicalize_headers, "27767e34bb62dde7"),
    "CanonicalizationPolicy.canonicalize_body": (
        CanonicalizationPolicy.canonicalize_body, "d519bdb228166bb3"),
    "CanonicalizationPolicy.from_c_value": (
        CanonicalizationPolicy.from_c_value, "f98529bc72b8f416"),
    "CanonicalizationPolicy.to_c_value": (CanonicalizationPolicy.to_c_value, "f3b3517779e9366b"),
}


def test_aiosmtpd_is_the_1_4_line() -> None:
    assert aiosmtpd.__version__.startswith("1.4."), (
        f"aiosmtpd {aiosmtpd.__version__}: mailveil/smtp/protocol.py is written against "
        "1.4's internals")


@pytest.mark.parametrize("name", AIOSMTPD)
def test_aiosmtpd_internal_is_unchanged(name: str) -> None:
    method = getattr(SMTP, name, None)
    assert method is not None, f"aiosmtpd.smtp.SMTP.{name} is gone"
    assert digest(method) == AIOSMTPD[name], (
        f"aiosmtpd.smtp.SMTP.{name} changed upstream: read it and check "
        "mailveil/smtp/protocol.py")


def test_aiosmtpd_signatures_we_call() -> None:
    assert parameters(SMTP._call_handler_hook) == ["self", "command", "args"], \
        "SMTP._call_handler_hook"
    assert parameters(SMTP._getaddr) == ["self", "arg"], "SMTP._getaddr"
    assert parameters(SMTP._set_post_data_state) == ["self"], "SMTP._set_post_data_state"
    assert parameters(SMTP._reset_timeout)[:2] == ["self", "duration"], "SMTP._reset_timeout"
    assert MISSING is not None and callable(syntax), "aiosmtpd.smtp.MISSING / syntax"


def test_streamreader_buffer_is_a_bytearray_we_may_edit() -> None:
    """What protocol.py does with ``StreamReader._buffer``: peek, push back, drop."""

    async def use() -> tuple[bool, bytes, bytes, bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"RSET\r\n")
        buffer = getattr(reader, "_buffer", None)
        assert isinstance(buffer, bytearray), "asyncio.StreamReader._buffer is not a bytearray"
        peeked = bool(buffer)
        buffer[:0] = b"NOOP\r\n"  # hand back commands pipelined after the data
        first = await reader.readline()
        second = await reader.readline()
        reader.feed_data(b"unread")
        buffer.clear()  # drop what the client sent before we hang up
        reader.feed_eof()
        return peeked, first, second, await reader.read() == b""

    assert asyncio.run(use()) == (True, b"NOOP\r\n", b"RSET\r\n", True), \
        "asyncio.StreamReader._buffer no longer behaves as protocol.py expects"


@pytest.mark.parametrize("name", DKIMPY)
def test_dkimpy_internal_is_unchanged(name: str) -> None:
    function, expected = DKIMPY[name]
    assert digest(function) == expected, (
        f"dkimpy's {name} changed upstream: read it and check mailveil/mail/dkim.py")


def test_dkimpy_signatures_we_call() -> None:
    assert parameters(dkim.hash_headers) == [
        "hasher", "canonicalize_headers", "headers", "include_headers", "sigheader", "sig"], \
        "dkim.hash_headers"
    assert parameters(dkim.fold) == ["header", "namelen", "linesep"], "dkim.fold"
    assert parameters(dkim.DKIM.verify) == ["self", "idx", "dnsfunc"], "dkim.DKIM.verify"
    assert parameters(dkim.util.parse_tag_value) == ["tag_list"], "dkim.util.parse_tag_value"


def test_the_tests_run_on_the_locked_versions() -> None:
    """``make install`` installs requirements.lock; a venv that drifted from it (or a lock
    not regenerated after pyproject.toml changed) tests something else than CI ships."""
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.MULTILINE))
    assert "aiosmtpd" in pinned and "dkimpy" in pinned
    drifted = {name: (version, metadata.version(name)) for name, version in pinned.items()
               if metadata.version(name) != version}
    assert drifted == {}, f"installed versions differ from requirements.lock: {drifted}"
