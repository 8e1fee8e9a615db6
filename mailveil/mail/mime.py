"""A byte-level MIME tree splitter that never loses a byte.

``email.message_from_bytes`` followed by ``as_bytes`` re-wraps lines, re-quotes parameters
and normalises line endings, which breaks attachments and signatures of real-world mail.
Here an entity only records where its pieces start and end, so ``serialize(parse(raw))``
gives back ``raw`` for any input; the stdlib is used to *read* headers, never to write bodies.
"""

from __future__ import annotations

import binascii
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from email import policy
from email.header import Header
from email.headerregistry import (
    AddressHeader,
    BaseHeader,
    ContentTransferEncodingHeader,
    DateHeader,
    HeaderRegistry,
    MessageIDHeader,
    MIMEVersionHeader,
    UnstructuredHeader,
)
from email.utils import format_datetime, parsedate_to_datetime
from functools import cached_property
from typing import NamedTuple, cast

from mailveil.budget import spend
from mailveil.mail.charsets import ENCODED_RUN, decode_words, for_stdlib

MAX_DEPTH = 50
"""Nesting deeper than this is kept as one opaque leaf: no mail client shows it anyway."""

MAX_STRUCTURED_HEADER = 20_000
"""The stdlib header parser is slow on huge values (quadratic in places); past this, fall back."""

MAX_LINE = 998
"""RFC 5322 2.1.1: the longest line, CRLF not counted, that every receiver must take."""

MAX_ENCODING_DEPTH = 8
"""Encoded words inside encoded words are decoded this deep; beyond, they are defused."""

_NAME = rb"[!-9;-~]+"
_REST = rb"[ \t]*:[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*"
_JUNK = rb"(?:(?:\xef\xbb\xbf)?(?:[ \t][^\n]*\n)*(?=%s[ \t]*:))?" % _NAME
"""A byte-order mark or blank-ish lines before the first field, as some mailers write."""
_HEADER_BLOCK = re.compile(rb"%s(?:%s%s)*(?:\r?\n)?" % (_JUNK, _NAME, _REST))
_LEADING_JUNK = re.compile(_JUNK)
_FIELD = re.compile(rb"(%s)%s" % (_NAME, _REST))
_TOKEN = re.compile(r"[\w.-]+")
_LINE_BREAK = re.compile(r"\r?\n")
BARE_LF = re.compile(rb"\n(?<!\r\n)")
"""An LF without its CR. Led by the literal, re skips from LF to LF at memchr speed: 3.4 ms
a 5 MB message, against 4.7 + 1.5 for counting CRLFs and LFs and 74 for a lookbehind first."""
_UNSTRUCTURED = HeaderRegistry(use_default_map=False)
_MIME_TOKEN = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"
_SIMPLE_TYPE = re.compile(rf"({_MIME_TOKEN}/{_MIME_TOKEN})[ \t]*(?:;|\Z)")

# The fast paths below read (or write) values plain enough that the result provably equals
# the stdlib's (tests/mail/test_fast_paths.py checks each against it); anything else goes to
# the stdlib parser, which costs 0.3 to 1 ms a field.
_FACTORY = cast(HeaderRegistry, policy.default.header_factory)
_MAX_LINE = policy.default.max_line_length or sys.maxsize
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_ADDR_SPEC = rf"{_DOT_ATOM}@{_DOT_ATOM}"
_QUOTED = r'"([ !#-\[\]-~]*)"'
"""A quoted string without escapes: printable ASCII but quote and backslash."""
_PLAIN_MAILBOX = re.compile(
    rf"(?:({_ATOM}(?: {_ATOM})*)|{_QUOTED}) <({_ADDR_SPEC})>|<({_ADDR_SPEC})>|({_ADDR_SPEC})"
)
_MAILBOX_SEPARATOR = re.compile(r",[ \t]*")
_PLAIN_ADDR_SPEC = re.compile(_ADDR_SPEC)
_PLAIN_LINE = re.compile(r"[ -~]+")
_LOSSLESS = (
    (UnstructuredHeader, _PLAIN_LINE),
    (MessageIDHeader, re.compile(rf"<{_ADDR_SPEC}>")),
    (ContentTransferEncodingHeader, re.compile(_MIME_TOKEN)),
    (MIMEVersionHeader, re.compile(r"[0-9]+\.[0-9]+")),
)
"""Parsers that give a value of this shape back unchanged, and so fold it unchanged."""
_PARAM_TOKEN = r"[!#$&+.^_`{|}~0-9A-Za-z-]+"
"""A MIME token without ``*'%``, which the stdlib reads as RFC 2231 syntax in parameters."""
_PLAIN_MIME_VALUE = {
    "content-type": re.compile(rf"{_PARAM_TOKEN}/{_PARAM_TOKEN}"),
    "content-disposition": re.compile(_PARAM_TOKEN),
}
_PLAIN_PARAM = re.compile(rf"[ \t]*;[ \t]*({_PARAM_TOKEN})=(?:({_PARAM_TOKEN})|{_QUOTED})")
_PARAMS_END = re.compile(r"(?:[ \t]*;)?\Z")

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
"""What would break a header line or hide in one: C0, DEL, C1 (NEL) and Unicode line breaks."""
_FOLD_AT = 78
"""RFC 5322's recommended line length, where :func:`fold_text` breaks lines."""
_SHORT_RUN = 2_000
"""Values up to this length have their encoded words written by the stdlib."""
_WORD_BYTES = 45
"""UTF-8 bytes per encoded word: base64 makes 60 characters, 72 with ``=?utf-8?b?...?=``."""
_BAD_IN_LINE = re.compile(r"[^\t -~]")
_ID_FIELDS = frozenset({"in-reply-to", "references"})
_ID_LIST = re.compile(r"<[!-;=?-~]+>(?:[ \t]+<[!-;=?-~]+>)*")
"""Id lists, which the stdlib folds as unstructured text, writing an id longer than a line
as encoded words: the recipient's program could then not match it to the messages it has
(threading). They are folded only between ids. (Message-ID has a parser that keeps ids.)"""
"""In a folded line: anything but printable ASCII, space and tab."""


class Mailbox(NamedTuple):
    display_name: str
    addr_spec: str


class MimeValue(NamedTuple):
    """A Content-Type or Content-Disposition: ``text/plain`` or ``inline``, and parameters."""

    value: str | None
    params: Mapping[str, str]


@dataclass(frozen=True)
class Field:
    """One header field, kept exactly as received (name, folding and line ending)."""

    name: str
    raw: bytes

    @cached_property
    def key(self) -> str:
        return self.name.lower()

    @cached_property
    def text(self) -> str:
        """The unfolded value, RFC 2047 words still encoded; 8-bit bytes read as UTF-8."""
        value = self.raw[self.raw.index(b":") + 1 :]
        try:
            decoded = value.decode("utf-8")
        except UnicodeDecodeError:
            decoded = value.decode("latin-1")
        return _LINE_BREAK.sub("", decoded).strip()

    @cached_property
    def parsed(self) -> BaseHeader | None:
        """The stdlib's structured view, or None when the value defeats its parser."""
        text = self.text
        if len(text) > MAX_STRUCTURED_HEADER:
            return None
        try:
            # A parameter in a refused charset would lose the field all its parameters.
            value = for_stdlib(text) if self.key in _PLAIN_MIME_VALUE else text
            header: BaseHeader = policy.default.header_factory(self.key, value)
        except Exception:
            return None
        return header

    @property
    def decoded(self) -> str:
        """The human-readable value: encoded words decoded at every depth, folding removed,
        control characters replaced (see :func:`header_text`).

        An unstructured ASCII value without encoded words is its own decoded value.
        """
        text = self.text
        if _plain_unstructured(self.key, text) and not _CONTROLS.search(text):
            return text
        if self.parsed is not None:
            return header_text(str(self.parsed))
        return header_text(decode_words(text))

    @cached_property
    def hides_a_line_break(self) -> bool:
        """Whether a reader decoding its encoded words meets a control character or more
        encoded words, which may hold one: written out again, it must be decoded first."""
        if "=?" not in self.text:
            return False
        once = decode_words(self.text)
        return "=?" in once or _CONTROLS.search(once) is not None

    @cached_property
    def too_long(self) -> bool:
        """Whether a line of the field is over ``MAX_LINE`` characters."""
        return any(len(line.rstrip(b"\r")) > MAX_LINE for line in self.raw.split(b"\n"))

    @cached_property
    def mailboxes(self) -> tuple[Mailbox, ...] | None:
        """The mailboxes of an address field, groups flattened; None when it is unreadable
        (or not an address field).

        A plain list (``addr``, ``<addr>``, ``Name <addr>``, ``"Name" <addr>``) is read
        without the stdlib parser.
        """
        text = self.text
        plain = (
            _plain_mailboxes(text)
            if issubclass(_kind(self.key), AddressHeader) and len(text) <= MAX_STRUCTURED_HEADER
            else None
        )
        if plain is not None:
            return tuple(plain)
        addresses = getattr(self.parsed, "addresses", None)
        if addresses is None:
            return None
        return tuple(Mailbox(str(a.display_name), str(a.addr_spec)) for a in addresses)

    @cached_property
    def mime(self) -> MimeValue:
        """The type or disposition, and the parameters by lower-case name, of a Content-Type
        or Content-Disposition field (others have neither).

        Tokens and quoted strings without escapes, encoded words, RFC 2231 sections or a
        repeated name are read without the stdlib parser.
        """
        plain = _plain_mime_value(self.key, self.text)
        if plain is not None:
            return plain
        if self.key not in _PLAIN_MIME_VALUE:
            return MimeValue(None, {})
        header = self.parsed
        value = getattr(header, self.key.replace("-", "_"), None)
        params = getattr(header, "params", {})
        return MimeValue(
            None if value is None else str(value), {k: str(v) for k, v in params.items()}
        )


@dataclass(frozen=True)
class Part:
    """A child of a multipart with the delimiter line that introduced it.

    The delimiter owns the line break before ``--boundary`` (RFC 2046 §5.1.1), so a
    child's bytes end exactly where its content ends.
    """

    delimiter: bytes
    entity: Entity


@dataclass(frozen=True)
class Entity:
    """A MIME entity as raw slices: a header block, then a leaf body or a multipart layout."""

    header: bytes
    body: bytes = b""
    preamble: bytes = b""
    parts: tuple[Part, ...] = ()
    closing: bytes = b""
    epilogue: bytes = b""
    multipart: bool = False
    default_type: str = field(default="text/plain", compare=False)

    @cached_property
    def fields(self) -> tuple[Field, ...]:
        found: list[Field] = []
        position = self._fields_start
        while match := _FIELD.match(self.header, position):
            found.append(Field(match.group(1).decode("ascii"), match.group(0)))
            position = match.end()
        return tuple(found)

    @cached_property
    def _fields_start(self) -> int:
        junk = _LEADING_JUNK.match(self.header)
        return junk.end() if junk else 0

    def get(self, name: str) -> Field | None:
        """The first field of that name (rules and rewriting ask dozens of times a message)."""
        return self._first.get(name.lower())

    @cached_property
    def _first(self) -> dict[str, Field]:
        return {f.key: f for f in reversed(self.fields)}

    @property
    def content_type(self) -> str:
        """``maintype/subtype`` in lower case; RFC 2045 defaults when absent or unreadable.

        A plain ``type/subtype`` is read without the stdlib parser, which costs about
        0.3 ms a field: a message of many small parts would otherwise spend seconds here.
        """
        found = self.get("content-type")
        simple = _SIMPLE_TYPE.match(found.text) if found is not None else None
        if simple:
            return simple.group(1).lower()
        ctype = getattr(None if found is None else found.parsed, "content_type", "")
        return str(ctype) if "/" in str(ctype) else self.default_type

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    def param(self, name: str) -> str | None:
        found = self.get("content-type")
        return None if found is None else found.mime.params.get(name.lower())

    @property
    def cte(self) -> str:
        found = self.get("content-transfer-encoding")
        token = _TOKEN.match(found.text) if found is not None else None
        return token.group(0).lower() if token else "7bit"

    @property
    def disposition(self) -> str | None:
        found = self.get("content-disposition")
        value = None if found is None else found.mime.value
        return None if value is None else value.lower()

    @property
    def filename(self) -> str | None:
        found = self.get("content-disposition")
        name = None if found is None else found.mime.params.get("filename")
        return name if name is not None else self.param("name")

    @property
    def is_attachment(self) -> bool:
        """A leaf carried for its bytes rather than read as the message text."""
        if self.multipart or self.maintype == "multipart":
            return False
        named = self.disposition == "attachment" or self.filename is not None
        return self.maintype != "text" or named

    @property
    def newline(self) -> bytes:
        """The line ending this entity mostly uses, for lines we add to it."""
        sample = self.header or self.body[:4096] or self.preamble
        return b"\r\n" if b"\r\n" in sample or not sample.count(b"\n") else b"\n"

    def walk(self) -> list[Entity]:
        """This entity and all its descendants, depth first in document order."""
        found = [self]
        for part in self.parts:
            found.extend(part.entity.walk())
        return found

    def with_field(self, name: str, value: str) -> Entity:
        """A copy with the first ``name`` field replaced (or added) by a freshly folded one."""
        new = fold(name, value, self.newline)
        old = self.get(name)
        raws = [new if f is old else f.raw for f in self.fields]
        return self._with_raw_fields(raws if old is not None else [*raws, new])

    def refolded(self, value_of: Callable[[Field], str | None]) -> Entity:
        """A copy in which each field ``value_of`` gives a value for is folded afresh with it.

        The other fields keep their bytes; with no new value at all, this entity itself.
        """
        values = [(f, value_of(f)) for f in self.fields]
        if all(value is None for _, value in values):
            return self
        newline = self.newline
        return self._with_raw_fields(
            [f.raw if value is None else fold(f.name, value, newline) for f, value in values]
        )

    def _with_raw_fields(self, raws: list[bytes]) -> Entity:
        """A copy whose fields are ``raws``; leading junk and the blank line are kept."""
        start = self._fields_start
        blank = self.header[start + sum(len(f.raw) for f in self.fields) :]
        pieces: list[bytes] = []
        for raw in raws:
            if pieces and not pieces[-1].endswith(b"\n"):  # a last field that ended the input
                pieces.append(self.newline)
            pieces.append(raw)
        head = self.header[:start] + b"".join(pieces)
        return replace(self, header=head + (blank or self.newline))


def fold(name: str, value: str, newline: bytes = b"\r\n") -> bytes:
    """``name: value`` folded per RFC 5322, non-ASCII as RFC 2047 words or RFC 2231 params;
    empty when it cannot be written within ``MAX_LINE`` (the field is then dropped).

    ``value`` is header syntax, as a reader would unfold it. Whatever it holds, the result
    is one field: the value is first made safe (:func:`safe_value`), and a stdlib result
    with a line break that is not a fold, a control character or a line over ``MAX_LINE``
    is replaced by :func:`fold_text`'s. Huge values skip the stdlib folder, which is
    quadratic in their length, and so does non-ASCII unstructured text: the stdlib writes
    two words as two encoded words with a space between, which readers drop. A value the
    structured parser cannot fold is folded as unstructured text, lone surrogates
    (undecodable bytes) replaced, unless the parser cannot read that either (the field is
    then dropped: a reader's parser would fail on it).
    """
    value = safe_value(value)
    line = _plain_line(name, value)
    if line is not None:
        return line.encode("ascii") + newline
    if name.lower() in _ID_FIELDS and _ID_LIST.fullmatch(value):
        return _fold_ids(name, value.split(), newline)
    linesep = newline.decode("ascii")
    unstructured = issubclass(_kind(name), UnstructuredHeader)
    if len(value) <= MAX_STRUCTURED_HEADER and not (unstructured and not value.isascii()):
        folding = policy.default.clone(linesep=linesep)
        try:
            folded: str = folding.header_factory(name, value).fold(policy=folding)
        except Exception:
            text = value.encode("utf-8", "replace").decode("utf-8")
            try:
                folding.header_factory(name, text)
            except Exception:
                return b""  # a reader's parser would fail on it as ours did (``From: <``)
            folded = _UNSTRUCTURED(name, text).fold(policy=folding)
        if _well_folded(folded, linesep):
            return folded.encode("ascii")
    return fold_text(name, header_text(value), newline, encode_long=unstructured)


def header_text(value: str) -> str:
    """What a reader may be shown of ``value`` at any depth: encoded words decoded again and
    again until none is left, control characters replaced by a space after each step.

    Decoded text is attacker-controlled: a CR LF inside an encoded word, or inside an
    encoded word inside one, would start a new header line wherever it is written out. Past
    ``MAX_ENCODING_DEPTH``, and where a word cannot be decoded (broken base64), the words
    left are defused (``=?`` becomes ``= ?``), which keeps the work linear.
    """
    text = _CONTROLS.sub(" ", value)
    for _ in range(MAX_ENCODING_DEPTH):
        if "=?" not in text:
            return text
        decoded = _CONTROLS.sub(" ", decode_words(text))
        if decoded == text:
            break
        text = decoded
    return text.replace("=?", "= ?") if ENCODED_RUN.search(text) else text


def safe_value(value: str) -> str:
    """``value`` with no control character, and every encoded word replaced by a fresh one
    of its :func:`header_text`: the structure (a word in a display name or a parameter
    stays one) is kept, but nothing a reader decodes, at any depth, can break a line."""
    value = _CONTROLS.sub(" ", value)
    if "=?" not in value:
        return value
    by_stdlib = len(value) <= _SHORT_RUN
    return ENCODED_RUN.sub(
        lambda run: _encoded(header_text(run.group(0)), by_stdlib=by_stdlib), value
    )


def fold_text(name: str, text: str, newline: bytes = b"\r\n", *, encode_long: bool) -> bytes:
    """``name: text`` folded in linear time at its spaces, lines kept to 78 characters
    where the words allow; empty when that is impossible within ``MAX_LINE``.

    ``text`` is what the reader is to see: words with non-ASCII or ``=?`` become UTF-8
    encoded words (a run of them together, since the space between two encoded words is
    not text), and so do words too long for a line when ``encode_long``. Without it (a
    structured field, where that would change the meaning) a word too long for any line
    makes the field impossible. Runs of white space become one space.
    """
    head = f"{name}:"
    if len(head) >= MAX_LINE or _BAD_IN_LINE.search(name):
        return b""
    atoms: list[str] = []
    pending: list[str] = []
    by_stdlib = len(text) <= _SHORT_RUN
    for word in _CONTROLS.sub(" ", text).split(" "):
        if not word:
            continue
        plain = word.isascii() and "=?" not in word
        if plain and (len(word) <= _FOLD_AT or (not encode_long and len(word) < MAX_LINE)):
            atoms.extend(_encoded_words(" ".join(pending), by_stdlib=by_stdlib))
            pending = []
            atoms.append(word)
        elif plain and not encode_long:
            return b""
        else:
            pending.append(word)
    atoms.extend(_encoded_words(" ".join(pending), by_stdlib=by_stdlib))
    lines = [head]
    for atom in atoms:
        wanted = len(lines[-1]) + 1 + len(atom)
        if wanted > _FOLD_AT and (lines[-1] != head or wanted > MAX_LINE):
            lines.append("")
        lines[-1] += " " + atom
    return newline.join(line.encode("ascii") for line in lines) + newline


def _fold_ids(name: str, ids: list[str], newline: bytes) -> bytes:
    """Ids joined on one line while it stays within ``_FOLD_AT``, else one more line each;
    empty (the field dropped) when a single id cannot fit within ``MAX_LINE``."""
    lines = [f"{name}:"]
    for one in ids:
        if len(lines[-1]) + 1 + len(one) > _FOLD_AT and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {one}"
    if any(len(line) > MAX_LINE for line in lines):
        return b""
    return newline.join(line.encode("ascii") for line in lines) + newline


def _well_folded(folded: str, linesep: str) -> bool:
    """Whether ``folded`` is one field: each line break a fold, no line over ``MAX_LINE``."""
    lines = folded.split(linesep)
    return (
        lines[-1] == ""
        and all(0 < len(line) <= MAX_LINE for line in lines[:-1])
        and all(line[0] in " \t" and line.strip() for line in lines[1:-1])
        and not any(_BAD_IN_LINE.search(line) for line in lines[:-1])
    )


def _encoded(text: str, *, by_stdlib: bool) -> str:
    """``text`` as UTF-8 encoded words, or nothing when there is no text."""
    return " ".join(_encoded_words(text, by_stdlib=by_stdlib))


def _encoded_words(text: str, *, by_stdlib: bool) -> list[str]:
    """``text`` as UTF-8 encoded words of at most 76 characters, cut between characters.

    ``by_stdlib``, the stdlib's ``Header`` writes them (Q or B, whichever is shorter, as
    the rest of the relay's headers); otherwise, for the long values only hostile mail has
    (``Header`` costs 0.2 ms a call), they are cut in base64 words here, in linear time.
    """
    data = text.encode("utf-8", "replace")  # lone surrogates (undecodable bytes) too
    if by_stdlib:
        return Header(data.decode("utf-8"), "utf-8").encode(maxlinelen=76).split()
    words: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and end > start + 1 and data[end] & 0xC0 == 0x80:
            end -= 1  # not in the middle of a character
        words.append(f"=?utf-8?b?{binascii.b2a_base64(data[start:end], newline=False).decode()}?=")
        start = end
    return words


def is_plain_addr_spec(text: str) -> bool:
    """Whether ``text`` is a ``dot-atom@dot-atom`` address, which the stdlib reads as is."""
    return "=?" not in text and _PLAIN_ADDR_SPEC.fullmatch(text) is not None


def _plain_line(name: str, value: str) -> str | None:
    """``name: value`` as the stdlib folds it when that is one plain line it leaves as it is
    (a date: as it re-renders it); None when only its parser can tell."""
    kind = _kind(name)
    if issubclass(kind, DateHeader):
        try:
            value = format_datetime(parsedate_to_datetime(value))
        except Exception:
            return None
    elif issubclass(kind, AddressHeader):
        if _plain_mailboxes(value) is None:
            return None
    elif not any(issubclass(kind, k) and plain.fullmatch(value) for k, plain in _LOSSLESS):
        return None
    line = f"{name}: {value}"
    fits = len(line) <= _MAX_LINE
    return line if fits and _PLAIN_LINE.fullmatch(line) and "=?" not in value else None


def _kind(name: str) -> type:
    """The stdlib's parser class for a field name (unstructured when it has none)."""
    return _FACTORY.registry.get(name.lower(), _FACTORY.default_class)


def _plain_unstructured(name: str, text: str) -> bool:
    """Whether ``text`` is an unstructured value the stdlib reads as it is (ASCII, no
    encoded word)."""
    return (
        issubclass(_kind(name), UnstructuredHeader)
        and text.isascii()
        and "=?" not in text
        and len(text) <= MAX_STRUCTURED_HEADER
    )


def _plain_mailboxes(text: str) -> list[Mailbox] | None:
    """The mailboxes of a plain address list (see :attr:`Field.mailboxes`), else None."""
    if "=?" in text:
        return None
    found: list[Mailbox] = []
    position = 0
    while match := _PLAIN_MAILBOX.match(text, position):
        phrase, quoted, named, angled, bare = match.groups()
        found.append(Mailbox(phrase or quoted or "", named or angled or bare))
        if match.end() == len(text):
            return found
        separator = _MAILBOX_SEPARATOR.match(text, match.end())
        if separator is None:
            return None
        position = separator.end()
    return None


def _plain_mime_value(key: str, text: str) -> MimeValue | None:
    """A plain Content-Type or Content-Disposition (see :attr:`Field.mime`), else None."""
    pattern = _PLAIN_MIME_VALUE.get(key)
    if pattern is None or "=?" in text or len(text) > MAX_STRUCTURED_HEADER:
        return None
    main = pattern.match(text)
    if main is None:
        return None
    params: dict[str, str] = {}
    position = main.end()
    while param := _PLAIN_PARAM.match(text, position):
        name, token, quoted = param.groups()
        if name.lower() in params:  # the stdlib keeps the first or the last, by case
            return None
        params[name.lower()] = quoted if token is None else token
        position = param.end()
    return MimeValue(main.group(0).lower(), params) if _PARAMS_END.match(text, position) else None


def header_block(raw: bytes) -> bytes:
    """The header section of a message, blank line included (all of it if none ends it):
    a slice, for the readers that need no more than the headers of a large message.

    A bare-LF blank line is looked for only before the first CRLF one: searching a 13 MiB
    CRLF message for one that is not there took 25 ms with the GIL held."""
    crlf_end = raw.find(b"\r\n\r\n")
    lf_end = raw.find(b"\n\n", 0, None if crlf_end == -1 else crlf_end)
    if lf_end != -1:
        return raw[: lf_end + 2]
    return raw if crlf_end == -1 else raw[: crlf_end + 4]


def parse(raw: bytes) -> Entity:
    """Split ``raw`` into an entity tree; never raises, and loses nothing."""
    return _entity(raw, 0, len(raw), 0, "text/plain")


def serialize(entity: Entity) -> bytes:
    return b"".join(_pieces(entity))


def body_bytes(entity: Entity) -> bytes:
    """Everything after the header block, as it will be written."""
    return entity.body if not entity.multipart else b"".join(_body_pieces(entity))


def _pieces(entity: Entity) -> Iterator[bytes]:
    """The slices an entity is written from, joined once: concatenating level by level
    copied a 5 MB message about seven times (10 ms, against 1.5)."""
    yield entity.header
    yield from _body_pieces(entity)


def _body_pieces(entity: Entity) -> Iterator[bytes]:
    if not entity.multipart:
        yield entity.body
        return
    yield entity.preamble
    for part in entity.parts:
        yield part.delimiter
        yield from _pieces(part.entity)
    yield entity.closing
    yield entity.epilogue


def payload(entity: Entity) -> bytes:
    """The leaf body with its transfer encoding undone (unknown encodings: as is)."""
    if entity.cte == "quoted-printable":
        return binascii.a2b_qp(entity.body)
    if entity.cte != "base64":
        return entity.body
    for padding in (b"", b"=="):
        try:
            return binascii.a2b_base64(entity.body + padding)
        except (binascii.Error, ValueError):
            continue
    return entity.body


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def payload_size(entity: Entity) -> int:
    """``len(payload(entity))`` without decoding a well-formed base64 body (the usual
    attachment): counting its alphabet costs 1.5 ms a 3 MB photo, decoding it 10.5 ms.
    Anything else in the body but line breaks and final padding: decoded after all."""
    if entity.cte != "base64":
        return len(payload(entity))
    body = entity.body
    others = body.translate(None, _BASE64_ALPHABET)
    padding = others.translate(None, b"\r\n")
    if padding.strip(b"=") or not body.rstrip(b"\r\n").endswith(padding):
        return len(payload(entity))
    data = len(body) - len(others)
    # One base64 character past a multiple of four cannot be decoded: payload() keeps it.
    return len(body) if data % 4 == 1 else data * 3 // 4


def _entity(raw: bytes, start: int, end: int, depth: int, default_type: str) -> Entity:
    spend()  # 50,000 tiny parts in 2 MB cost seconds: a part is a step of the CPU budget
    match = _HEADER_BLOCK.match(raw, start, end)
    body_start = match.end() if match else start
    head = Entity(raw[start:body_start], default_type=default_type)
    boundary = head.param("boundary") if head.maintype == "multipart" else None
    cuts = _delimiters(raw, body_start, end, boundary) if boundary and depth < MAX_DEPTH else []
    if not cuts:
        return replace(head, body=raw[body_start:end])
    child_type = "message/rfc822" if head.content_type == "multipart/digest" else "text/plain"
    parts = []
    for index, (cut, after, closing) in enumerate(cuts):
        if closing:
            break
        child_end = cuts[index + 1][0] if index + 1 < len(cuts) else end
        parts.append(Part(raw[cut:after], _entity(raw, after, child_end, depth + 1, child_type)))
    last_cut, last_after, last_closing = cuts[-1]
    return replace(
        head,
        preamble=raw[body_start : cuts[0][0]],
        parts=tuple(parts),
        closing=raw[last_cut:last_after] if last_closing else b"",
        epilogue=raw[last_after:end] if last_closing else b"",
        multipart=True,
    )


def _delimiters(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int, bool]]:
    """(start, end, is_closing) of each delimiter line up to the closing one.

    A delimiter starts at the line break before ``--boundary`` unless that break already
    ended the previous delimiter (an empty part). A bare CR is a line break too, as in the
    stdlib's parser and so in the mail programs that read what we relay: the listener never
    stores one, but a forwarded message's decoded bytes may hold one, and a delimiter that
    only the recipient saw would hide a part (say, base64 text) from scrubbing.
    """
    dashed = re.escape(b"--" + boundary.encode("utf-8", "replace"))
    # The literal comes first so that re can skip through attachments at memchr speed; the
    # lookbehind then keeps only delimiters at the start of a line (30x faster than ``^``).
    pattern = re.compile(dashed + rb"(?<![^\r\n]" + dashed + rb")(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
    cuts: list[tuple[int, int, bool]] = []
    previous_end = start
    for match in pattern.finditer(raw, start, end):
        cut = match.start()
        for newline in (b"\r\n", b"\n", b"\r"):
            if raw.endswith(newline, previous_end, cut):
                cut -= len(newline)
                break
        cuts.append((cut, match.end(), match.group(1) is not None))
        previous_end = match.end()
        if match.group(1):
            break
    return cuts
