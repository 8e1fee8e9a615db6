"""Replacing real addresses by relay addresses wherever a reader could still see them.

Mail programs quote the other party in many shapes: plain text, ``mailto:`` links,
URL-encoded ``%40``, HTML entities (``&#64;``), and RFC 2047 encoded words pasted into
bodies. Each shape keeps its own "@" spelling so that links and markup stay valid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from email.charset import Charset
from functools import lru_cache

from mailveil.mail.charsets import decode_words

_AT_FORMS = r"(?:@|%40|=40|&#0*64;|&#[xX]0*40;|&commat;)"
_BEFORE = r"(?:(?<![\w.+-])|(?<=%[0-9A-Fa-f]{2}))"
_AFTER = r"(?![\w-]|\.[\w-])"
_BEFORE_IN_FILE_NAME = r"(?:(?<![^\W_])|(?<=%[0-9A-Fa-f]{2}))"
_AFTER_IN_FILE_NAME = r"(?![^\W_])"
_ENCODED_WORD = r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?="
_ENCODED_RUN = re.compile(rf"{_ENCODED_WORD}(?:\s+{_ENCODED_WORD})*")
_MAY_SPELL_AN_ADDRESS = re.compile(rf"{_AT_FORMS}|=\?", re.IGNORECASE)
_UTF8 = Charset("utf-8")


def scrub_text(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with every real address in ``replacements`` (case-insensitive) swapped."""
    return _scrub(text, replacements, in_file_name=False)


def scrub_filename(name: str, replacements: Mapping[str, str]) -> str:
    """Like :func:`scrub_text`, but only letters and digits extend an address.

    File names join words with ``-``, ``_`` and ``.``: in "voucher-ann@example.org.pdf" a
    reader sees the sender's address. In running text that would be another address
    (``voucher-ann@…``, ``ann@example.org.uk``); in a file name, replacing too much is the
    safe side.
    """
    return _scrub(name, replacements, in_file_name=True)


def may_name_address(text: str) -> bool:
    """False only when ``text`` holds no "@" spelling, not even in an encoded word.

    A cheap test that spares parsing the many header fields that cannot name anyone.
    """
    return _MAY_SPELL_AN_ADDRESS.search(text) is not None


def scrub_bytes(data: bytes, replacements: Mapping[str, str]) -> bytes:
    """Scrub bytes of unknown charset; latin-1 maps each byte to one char, so the rest is kept."""
    return scrub_text(data.decode("latin-1"), replacements).encode("latin-1", "replace")


def _scrub(text: str, replacements: Mapping[str, str], *, in_file_name: bool) -> str:
    pairs = _pairs(replacements)
    if not pairs:
        return text
    locals_ = {real.rpartition("@")[0].casefold() for real, _ in pairs}

    def swap(part: str) -> str:
        # Most text names nobody: a substring test spares building the pattern, which
        # costs most of a millisecond for a conversation not seen recently.
        folded = part.casefold()
        if not any(local in folded for local in locals_):
            return part
        return _swapper(pairs, in_file_name)(part)

    return swap(_ENCODED_RUN.sub(lambda m: _scrub_encoded(m.group(0), swap), text))


def _pairs(replacements: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Keys without "@" cannot be spelled in the shapes above and are ignored."""
    usable = ((real.strip(), relay.strip()) for real, relay in replacements.items())
    return tuple(sorted((real, relay) for real, relay in usable if "@" in real and "@" in relay))


@lru_cache(maxsize=1024)
def _swapper(pairs: tuple[tuple[str, str], ...], in_file_name: bool) -> Callable[[str], str]:
    """One compiled pattern per replacement set; the named group tells which address hit."""
    alternatives = []
    for index, (real, _relay) in enumerate(pairs):
        local, _, domain = real.rpartition("@")
        alternatives.append(rf"{re.escape(local)}(?P<at{index}>{_AT_FORMS}){re.escape(domain)}")
    before, after = (
        (_BEFORE_IN_FILE_NAME, _AFTER_IN_FILE_NAME) if in_file_name else (_BEFORE, _AFTER)
    )
    pattern = re.compile(rf"{before}(?:{'|'.join(alternatives)}){after}", re.IGNORECASE)

    def relay_for(match: re.Match[str]) -> str:
        group = match.lastgroup or "at0"
        local, _, domain = pairs[int(group[2:])][1].rpartition("@")
        return f"{local}{match.group(group)}{domain}"

    return lambda text: pattern.sub(relay_for, text)


def _scrub_encoded(run: str, swap: Callable[[str], str]) -> str:
    """Decode a run of encoded words; re-encode it as UTF-8 only when an address was in it."""
    decoded = decode_words(run)
    scrubbed = swap(decoded)
    return run if scrubbed == decoded else _UTF8.header_encode(scrubbed)
