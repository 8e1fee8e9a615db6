"""Which declared charsets the relay reads as text, and RFC 2047 encoded words read with them.

Python's codec registry holds more than text encodings: ``punycode`` and ``idna`` decode
any bytes a sender labels with them, the first in time that grows with the square of the
input (39 s of CPU for 2 MB), the second raising on ordinary text. A charset label comes
from the sender, so only the encodings mail programs actually read are decoded: the WHATWG
Encoding Standard's list (https://encoding.spec.whatwg.org/#names-and-labels), which is
what browsers and the mail programs built on them (Thunderbird, webmails) show, plus the
spellings MIME itself uses for what it names differently:

* ``us-ascii`` and ``iso-8859-1`` (WHATWG reads both as windows-1252) keep their own codec,
  so that an unchanged byte is re-encoded to itself;
* ``utf-7`` is decoded although WHATWG leaves it out: Outlook still shows UTF-7 mail, so an
  address spelled in it must be found, and Python's codec for it is linear;
* ``gb2312``, ``cp932``/``windows-31j``, ``cp949`` and ``big5-hkscs``: the supersets that
  WHATWG decodes their labels with, under their own names;
* ``iso-2022-kr``, ``hz-gb-2312`` and the other labels WHATWG maps to its "replacement"
  encoding, and everything else (``punycode``, ``idna``, ``rot13``, ``utf-32``, unknown
  labels), are not text to the relay: such a part is relayed as opaque bytes (but for
  addresses spelled in ASCII), such an encoded word is read as ASCII, as the stdlib reads
  a charset it does not know, and kept as written unless it spells an address.

Every codec allowed here is written in C and linear in its input.
"""

from __future__ import annotations

import binascii
import codecs
import re
from typing import Final

MAX_LABEL: Final = 64
"""Longer than any registered charset name (RFC 2978 allows 40 characters)."""

_ALIASES: Final = {
    # WHATWG labels that Python's registry does not know, to the codec WHATWG means.
    "iso-8859-8-i": "iso8859-8",
    "iso_8859-8-i": "iso8859-8",
    "csiso88598i": "iso8859-8",
    "logical": "iso8859-8",
    "windows-874": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-ukrainian": "mac-cyrillic",
    "x-sjis": "shift_jis",
    "windows-31j": "cp932",
    "unicode-1-1-utf-8": "utf-8",
    "unicode11utf8": "utf-8",
    "unicode20utf8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "x-gbk": "gbk",
    "x-x-big5": "big5",
    "x-euc-jp": "euc_jp",
}

MAIL_CODECS: Final = frozenset(
    {
        "utf-8", "utf-16", "utf-16-be", "utf-16-le", "utf-7", "ascii",
        "iso8859-1", "iso8859-2", "iso8859-3", "iso8859-4", "iso8859-5", "iso8859-6",
        "iso8859-7", "iso8859-8", "iso8859-9", "iso8859-10", "iso8859-11", "iso8859-13",
        "iso8859-14", "iso8859-15", "iso8859-16", "tis-620",
        "cp866", "koi8-r", "koi8-u", "mac-roman", "mac-cyrillic", "cp874",
        "cp1250", "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257",
        "cp1258",
        "gbk", "gb2312", "gb18030", "big5", "big5hkscs", "cp950",
        "euc_jp", "iso2022_jp", "shift_jis", "cp932", "euc_kr", "cp949",
    }
)
"""Python's names of the codecs read as text (see the module's docstring)."""

ASCII_INCOMPATIBLE: Final = frozenset({"utf-16", "utf-16-be", "utf-16-le", "utf-7"})
"""Mail codecs in which an address is not spelled in ASCII bytes: text in them must be read
with them, even where some bytes are broken, to be searched at all."""

_WORD_PATTERN = r"=\?([^?]*)\?([bBqQ])\?([^?]*)\?="
_WORD = re.compile(_WORD_PATTERN)
"""An RFC 2047 encoded word as leniently as any reader takes one (white space inside, an
unknown charset, a charset ``*language``); linear, as no two matches scan the same text."""
ENCODED_RUN: Final = re.compile(rf"{_WORD_PATTERN}(?:\s+{_WORD_PATTERN})*")
"""Adjacent encoded words: the white space between them is not part of the text."""
_DECLARED = re.compile(
    r"(=\?)([^?*]*)(?=(?:\*[^?]*)?\?[bBqQ]\?[^?]*\?=)|(\*[ \t]*=[ \t]*\"?)([^'\";\s]*)(?=')"
)
"""The charset of an encoded word (``=?cs?``) or of an RFC 2231 value (``*=cs'``)."""


def codec(label: str) -> str | None:
    """Python's codec for a MIME charset label, or None when the relay must not decode it."""
    label = label.strip().lower()
    if len(label) > MAX_LABEL:
        return None
    try:
        name = codecs.lookup(_ALIASES.get(label, label)).name
    except (LookupError, ValueError):
        return None
    return name if name in MAIL_CODECS else None


def for_stdlib(text: str) -> str:
    """``text`` with each charset named by an encoded word or an RFC 2231 value that
    :func:`codec` refuses renamed ``unknown-8bit``, which the stdlib's header parser reads
    as ASCII. Left as they are, its parser runs their codec (punycode: quadratic) or fails
    on the whole field (idna raises), which loses every parameter of a Content-Type: a
    ``filename*=idna''…`` would hide the ``charset`` of a part."""
    return _DECLARED.sub(_renamed, text)


def _renamed(match: re.Match[str]) -> str:
    prefix, name = match.group(1, 2) if match.group(1) else match.group(3, 4)
    return prefix + (name if not name or codec(name) else "unknown-8bit")


def decode_words(text: str) -> str:
    """``text`` with its encoded words decoded (RFC 2047 6.2: the white space between two
    of them dropped), as a reader may be shown it: a word in a charset :func:`codec`
    refuses reads as ASCII, as the stdlib reads an unknown one (so an address spelled in
    it is found), a word whose base64 is broken is kept as written.

    In one pass: ``email.header.decode_header`` joins adjacent words by concatenating
    bytes again and again, and ``make_header`` decodes whatever codec a word names.
    Adjacent words of one charset are decoded together, as a character may span them.
    """
    out: list[str] = []
    run: list[bytes] = []
    run_codec: str | None = None
    position = 0

    def flush() -> None:
        if run_codec is not None:
            out.append(b"".join(run).decode(run_codec, "replace"))
            run.clear()

    for match in _WORD.finditer(text):
        gap = text[position : match.start()]
        position = match.end()
        name = codec(match.group(1).partition("*")[0]) or "ascii"
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            flush()
            run_codec = None
            out.append(gap + match.group(0))
            continue
        if run_codec is None or (gap and not gap.isspace()):
            flush()
            out.append(gap)
        elif name != run_codec:
            flush()
        run_codec = name
        run.append(data)
    flush()
    out.append(text[position:])
    return "".join(out)


def _word_bytes(encoding: str, encoded: str) -> bytes | None:
    data = encoded.encode("ascii", "replace")
    if encoding in "qQ":
        return binascii.a2b_qp(data, header=True)
    data = data.translate(None, b" \t\r\n")
    try:
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    except binascii.Error:
        return None
