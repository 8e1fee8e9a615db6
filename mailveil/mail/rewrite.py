"""Turning an incoming message into the one the other party receives.

Only the top-level header block is rebuilt, from an allow-list. Below it, the MIME tree
from :mod:`mailveil.mail.mime` is kept slice for slice: attachments and signed or encrypted
subtrees go out byte for byte, and a text part is re-encoded only when scrubbing or the
banner actually changed it. Part headers (``filename``, ``name``, Content-Description...)
are scrubbed like text: they are what a mail program shows for an attachment, and
changing them leaves the attachment's bytes alone.

Text attachments (``text/*`` with a file name: ``.txt``, ``.html``, ``.csv``) are scrubbed
like inline text, without a banner: mail programs show them inline or one click away, and
they are where a party's address travels most (an exported confirmation, a guest list).
Only an address changes, so one without goes out byte for byte. Calendar invitations and
vCards, in whatever type or encoding they come, are rewritten by
:mod:`mailveil.mail.calendar`, so that an iMIP "Accept" finds its way back through the relay.
Other attachments are opaque bytes.

A forwarded message (``message/rfc822`` or ``message/global``: "forward as attachment")
carries the real From, To, Received... of the mail it quotes. Its header fields are all
kept but scrubbed (no allow-list: the party chose to forward them), and its body is treated
like a top-level body, without banner, to ``MAX_FORWARD_DEPTH`` levels of forwarding.

Signed and encrypted subtrees (``multipart/signed``, ``multipart/encrypted``) are neither
scrubbed nor given a banner: any change would break the signature the recipient checks,
and an encrypted part cannot be read anyway. The cost is that a real address inside a
signed body reaches the recipient; the sender chose to sign that text.

No line that leaves is longer than ``MAX_LINE`` (RFC 5322 2.1.1), though real programs
send longer ones (Outlook's 7bit HTML, one-line base64, JSON) and the listener takes them.
A part with such a line is re-encoded so that its *decoded* content stays the same, byte
for byte, line ends included: a base64 or quoted-printable body is re-wrapped in its own
encoding, a raw one becomes quoted-printable if it is text, base64 otherwise. Parts without
a long line keep their bytes. A long line that is not a part's body is broken as Postfix
breaks it, a line break and a space, so the new line can never be a boundary delimiter: in
a multipart's preamble or epilogue, which readers ignore, and in a forwarded message, whose
bodies are already within the limit but where a header field of the forwarded mail (a
provider's 1,242-character ``X-GMX-...``) is thereby folded; RFC 2046 allows no base64 for
a forwarded message, and readers such as Python's do not decode it.

Inside a signed subtree too: a part with a long line is re-encoded, which breaks the
signature. Left alone it would not survive either: an MTA that keeps to the limit (Postfix:
``smtp_line_length_limit = 998``) breaks the line on the way, and then the signature fails
*and* the content is damaged; re-encoded, at least the content arrives intact. A
signature part (``application/pkcs7-signature`` on one long line) is not covered by the
signature and is merely re-wrapped.

Known limits, left on purpose:

* An id that merely contains an address (``<1.ann@example.org>`` in a forwarded
  Message-ID or References, ``cid:part1.ann@example.org``) is kept: nobody can write to it,
  and changing it would break the link between an HTML part and its images, or threading.
  (The top-level Message-ID, In-Reply-To and References are replaced anyway.)
* An address split by markup (``ann<span>@</span>example.org``, ``<b>ann</b>@…``) is not
  found: a reader sees it, but matching across tags would also rewrite markup.
* Past ``MAX_FORWARD_DEPTH`` nested forwards, a message is scrubbed as plain bytes: plain
  spellings and encoded words are still replaced, but base64 or quoted-printable bodies
  and RFC 2231 parameters there are not decoded.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from email.headerregistry import Address
from email.utils import formatdate, quote

from mailveil.budget import spend
from mailveil.mail import charsets
from mailveil.mail.calendar import card_replacements, rewrite_card
from mailveil.mail.mime import (
    MAX_LINE,
    Entity,
    Field,
    Part,
    fold,
    header_text,
    is_plain_addr_spec,
    parse,
    payload,
    serialize,
)
from mailveil.mail.scrub import may_name_address, scrub_bytes, scrub_filename, scrub_text
from mailveil.mail.steps import Step, run

KEPT_HEADERS = frozenset(
    {
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-language",
        "subject",
        "date",
        "auto-submitted",
        "importance",
        "priority",
        "x-priority",
        "thread-topic",
        "thread-index",
        "accept-language",
        "precedence",
    }
)
"""Top-level headers that reveal nothing about the sender's mailbox; all others are dropped.

Not a top-level Content-ID: nothing refers to the whole message by it, and programs build it
from the sender's address (``<cid.ann@customer.example>``)."""

SEALED = frozenset({"multipart/signed", "multipart/encrypted"})
FORWARDED = frozenset({"message/rfc822", "message/global"})

MAX_FORWARD_DEPTH = 5
"""A forward of a forward is already rare, and each level holds one more copy of its bytes
while it is rewritten."""

_SEVEN_BIT = frozenset({"7bit", "7-bit", "us-ascii"})
"""Declared 7-bit: 8-bit text we add must go quoted-printable (8-bit already there stays)."""

_PARAMETERIZED = frozenset({"content-type", "content-disposition"})
_FILE_NAMES = frozenset({"name", "filename"})
_RFC2231_VALUE = re.compile(r"\*\s*=")
"""``filename*=utf-8''…`` or a continuation: may spell "%40" only once put together."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPECIALS = frozenset('()<>@,:;."[]\\')
"""What makes the stdlib quote a display name (``email._header_value_parser.SPECIALS``)."""
_BODY_TAG = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_END = re.compile(rb"\r?\n")
_LONG_LINE = re.compile(rb"\n(?:[^\n]{%d}|[^\n]{%d}[^\r\n])[^\n]*" % (MAX_LINE + 2, MAX_LINE))
"""A line over ``MAX_LINE`` (a CR is a character unless it ends the line) after its line
break: led by a literal, re skips to each line at memchr speed (a 9 MB body in 60 ms,
against 1 s for ``^`` in multi-line mode)."""
_OVERFLOW = re.compile(rb"[^\n]{%d}(?=[^\r\n]|\r[^\n])" % (MAX_LINE - 1))
"""``MAX_LINE - 1`` characters that the line goes on after: room for the space we add."""
_ENCODED = frozenset({"quoted-printable", "base64"})
_LEADING_DASH = re.compile(rb"\n-(?=-)")


@dataclass(frozen=True)
class RewritePlan:
    """What the caller decided about this delivery; ``rewrite`` only applies it."""

    from_name: str
    from_address: str
    to_name: str
    to_address: str
    message_id: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    replacements: Mapping[str, str] = field(hash=False)
    banner_text: str | None = None
    banner_html: str | None = None
    sign: Callable[[bytes], bytes] | None = field(default=None, compare=False)  # DKIM


def rewrite(raw: bytes, plan: RewritePlan) -> bytes:
    """The outgoing message for ``raw``: every step of :data:`STEPS`; never raises on any
    ``raw``."""
    return run(STEPS, raw, plan).raw


def scrub(root: Entity, plan: RewritePlan) -> Entity:
    """Real addresses replaced in everything below the top-level header, forwarded
    messages whole (see :func:`_forwarded`); calendars and vCards are :func:`cards`'s."""
    cards = card_replacements(plan.replacements, plan.to_address)
    return _scrubbed(root, plan.replacements, cards, 0)


def cards(root: Entity, plan: RewritePlan) -> Entity:
    """Calendar invitations and vCards rewritten by :mod:`mailveil.mail.calendar`. After
    :func:`scrub`, which leaves alone exactly the cards this rewrites."""
    return _carded(root, card_replacements(plan.replacements, plan.to_address))


def banner(root: Entity, plan: RewritePlan) -> Entity:
    """The first readable text/plain and text/html part each get their banner."""
    targets = _banner_targets(root, plan)
    return _bannered(root, targets, plan.replacements) if targets else root


def within_limit(root: Entity, plan: RewritePlan) -> Entity:
    """No body line over ``MAX_LINE``, decoded contents unchanged (:func:`_within_limit`)."""
    return _within_limit(root)


def headers(root: Entity, plan: RewritePlan) -> Entity:
    """The top-level header block rebuilt (:func:`_header_block`)."""
    return replace(root, header=_header_block(root, plan) + b"\r\n")


def sign(raw: bytes, plan: RewritePlan) -> bytes:
    return plan.sign(raw) if plan.sign is not None else raw


STEPS: tuple[Step[RewritePlan], ...] = (
    # Both parties' real addresses become relay addresses: bodies, part headers, forwards.
    Step("scrub", "real addresses replaced below the top-level header", tree=scrub),
    # The recipient gets their own address back, so that an iMIP "Accept" finds its way.
    Step("cards", "calendar invitations and vCards rewritten", tree=cards),
    # After scrubbing: the banner names nobody's real address, and must not be scrubbed.
    Step("banner", "the banner added to the first text and HTML part", tree=banner),
    # After every change to a body: a part that now has a long line is re-encoded too.
    Step("line-length", "parts with lines over 998 octets re-encoded", tree=within_limit),
    # Last on the tree: a text leaf at the top may have had its Content-Type changed.
    Step("headers", "the top-level header rebuilt from the allow-list", tree=headers),
    # Over the final bytes, so it runs last; without a key (tests) it changes nothing.
    Step("dkim-sign", "signed with the relay domain's DKIM key", raw=sign),
)
"""What happens to a relayed copy, in order (:mod:`mailveil.mail.steps` runs them)."""


def _header_block(root: Entity, plan: RewritePlan) -> bytes:
    """New headers first, then the allow-listed ones as received (written afresh if they
    must be: see :func:`_new_value`).

    A kept field keeps its bytes and folding; only its line breaks become CRLF so that the
    header block is uniform. The first of duplicated fields wins, as in most readers. One
    that cannot be folded within the line limit is dropped.
    """
    kept: dict[str, bytes] = {}
    for found in root.fields:
        if found.key not in KEPT_HEADERS or found.key in kept:
            continue
        value = _new_value(found, plan.replacements, boundary=_has_boundary(root))
        if value is None and found.too_long:
            value = found.decoded
        if value is not None:
            kept[found.key] = fold(found.name, value)
        else:
            kept[found.key] = _LINE_END.sub(b"\r\n", found.raw.rstrip(b"\r\n")) + b"\r\n"
    new = [
        ("From", _mailbox(_name(plan.from_name), _clean(plan.from_address))),
        ("To", _mailbox(_name(plan.to_name), _clean(plan.to_address))),
        ("Date", "" if "date" in kept else formatdate(usegmt=True)),
        ("Message-ID", _ids((plan.message_id,))),
        ("In-Reply-To", _ids(plan.in_reply_to)),
        ("References", _ids(plan.references)),
        ("MIME-Version", "" if "mime-version" in kept else "1.0"),
    ]
    generated = b"".join(fold(name, value) for name, value in new if value)
    return generated + b"".join(kept.values())


def _new_value(found: Field, replacements: Mapping[str, str], *, boundary: bool) -> str | None:
    """The value to write the field afresh with, or None to keep its bytes: it names a real
    address, or hides a line break in its encoded words (which a program that decodes and
    writes it again would turn into a header of its own)."""
    scrubbed = _scrubbed_value(found, replacements, boundary=boundary)
    if scrubbed is None and found.hides_a_line_break:
        return found.decoded
    return scrubbed


def _scrubbed_value(found: Field, replacements: Mapping[str, str], *, boundary: bool) -> str | None:
    """The field's value with real addresses replaced, or None when it names none.

    Both the raw text and the decoded value are searched: the decoded value of an address
    field drops comments, which still show in the source. File names are matched more
    loosely (:func:`scrub_filename`). A multipart's Content-Type (``boundary``) is never
    changed: its boundary must keep matching the delimiter lines. Every decoded piece is
    decoded to the end (:func:`header_text`) before it is written again, and display names
    are quoted: the folder must get no encoded word whose text could break a line.
    """
    text = found.text
    if (boundary and found.key == "content-type") or not (
        may_name_address(text) or _RFC2231_VALUE.search(text)
    ):
        return None
    if found.key in _PARAMETERIZED and (params := _params(found)):
        main = found.mime.value  # the type, the disposition
        scrubbed = {
            k: (scrub_filename if k in _FILE_NAMES else scrub_text)(header_text(v), replacements)
            for k, v in params.items()
        }
        if main and scrubbed != params:
            return _with_params(str(main), scrubbed)
    decoded = found.decoded
    new = scrub_text(decoded, replacements)
    if new == decoded and scrub_text(text, replacements) == text:
        return None
    try:
        return ", ".join(
            _mailbox(scrub_text(_name(name), replacements), scrub_text(addr, replacements))
            for name, addr in found.mailboxes or ()
        ) or new
    except Exception:  # the stdlib parser trips on some addresses: the field is then text
        return new


def _scrub_fields(entity: Entity, replacements: Mapping[str, str]) -> Entity:
    """The entity's own fields scrubbed; a MIME field with a line over the limit is folded
    afresh, which keeps its meaning (long parameters become RFC 2231 sections). Other long
    fields (a forwarded message's provider headers) keep their text: :func:`_broken`
    breaks their lines."""
    boundary = _has_boundary(entity)

    def value_of(found: Field) -> str | None:
        new = _new_value(found, replacements, boundary=boundary)
        mime_field = found.key.startswith("content-")
        return found.decoded if new is None and mime_field and found.too_long else new

    return entity.refolded(value_of)


def _has_boundary(entity: Entity) -> bool:
    return entity.multipart or entity.maintype == "multipart"


def _clean(value: str) -> str:
    """Control characters in an address or id (caller data) would inject headers."""
    return _CONTROL.sub(" ", value).strip()


def _name(value: str) -> str:
    """A display name as it is to be shown: decoded to the end, on one line, trimmed."""
    return " ".join(header_text(value).split())


def _mailbox(name: str, address: str) -> str:
    """``str(Address(name, addr_spec=address))``, which parses the address (0.3 ms): a plain
    one is written as the stdlib would, the name quoted if it holds a special."""
    if not is_plain_addr_spec(address) or "\r" in name or "\n" in name:
        return str(Address(name, addr_spec=address))
    if not _SPECIALS.isdisjoint(name):
        name = f'"{quote(name)}"'
    return f"{name} <{address}>" if name else address


def _ids(ids: tuple[str, ...]) -> str:
    return " ".join("".join(_clean(one).split()) for one in ids if one.strip())


def _banner_targets(root: Entity, plan: RewritePlan) -> dict[int, str]:
    """The first readable text/plain and text/html part each get their banner."""
    wanted = {"text/plain": plan.banner_text, "text/html": plan.banner_html}
    targets: dict[int, str] = {}
    for entity in _readable(root):
        banner = wanted.pop(entity.content_type, None)
        if banner:
            targets[id(entity)] = banner
    return targets


def _readable(entity: Entity) -> Iterator[Entity]:
    """Text parts a reader sees as the message, in document order, outside sealed subtrees."""
    if entity.content_type in SEALED:
        return
    if entity.multipart:
        for part in entity.parts:
            yield from _readable(part.entity)
    elif entity.maintype == "text" and not entity.is_attachment:
        yield entity


def _scrubbed(
    entity: Entity, replacements: Mapping[str, str], cards: Mapping[str, str], depth: int
) -> Entity:
    """``entity`` scrubbed, but for its own header, which is its parent's business.

    ``cards`` are the replacements for calendars and vCards (:mod:`mailveil.mail.calendar`),
    which are left to :func:`cards` when it changes them; ``depth`` counts the forwarded
    messages around ``entity``.
    """
    if entity.content_type in FORWARDED:
        return _forwarded(entity, replacements, cards, depth)
    if rewrite_card(entity, cards) is not None:
        return entity
    if entity.content_type in SEALED or (entity.is_attachment and entity.maintype != "text"):
        return entity
    if entity.multipart:
        return replace(
            entity,
            preamble=scrub_bytes(entity.preamble, replacements),
            parts=tuple(
                Part(
                    p.delimiter,
                    _scrub_fields(_scrubbed(p.entity, replacements, cards, depth), replacements),
                )
                for p in entity.parts
            ),
            epilogue=scrub_bytes(entity.epilogue, replacements),
        )
    if entity.maintype != "text":
        return replace(entity, body=scrub_bytes(entity.body, replacements))
    return _edited(entity, lambda text: scrub_text(text, replacements), replacements) or _opaque(
        entity, replacements
    )


def _carded(entity: Entity, cards: Mapping[str, str]) -> Entity:
    """Calendars and vCards outside sealed subtrees and forwarded messages (which
    :func:`_forwarded` rewrites whole)."""
    if entity.content_type in SEALED or entity.content_type in FORWARDED:
        return entity
    if entity.multipart:
        return replace(
            entity, parts=tuple(Part(p.delimiter, _carded(p.entity, cards)) for p in entity.parts)
        )
    card = rewrite_card(entity, cards)
    return entity if card is None else replace(entity, body=_transfer_encode(card, entity))


def _bannered(entity: Entity, targets: dict[int, str], replacements: Mapping[str, str]) -> Entity:
    if entity.multipart:
        parts = tuple(Part(p.delimiter, _bannered(p.entity, targets, replacements))
                      for p in entity.parts)
        return replace(entity, parts=parts)
    text = targets.get(id(entity))
    if text is None:
        return entity
    html = entity.content_type == "text/html"
    return _edited(entity, lambda shown: _with_banner(shown, text, html=html), replacements) or (
        entity
    )


def _forwarded(
    entity: Entity, replacements: Mapping[str, str], cards: Mapping[str, str], depth: int
) -> Entity:
    """A forwarded message: its header fields scrubbed, its body like a top-level one (its
    calendars and line lengths included: it is one leaf of the tree, parsed here once).

    The transfer encoding (base64 happens, though RFC 2046 forbids it) is undone and redone.
    An unchanged message goes out byte for byte.
    """
    data = payload(entity)
    if depth >= MAX_FORWARD_DEPTH:
        inner = scrub_bytes(data, replacements)
    else:
        message = _scrubbed(parse(data), replacements, cards, depth + 1)
        message = _within_limit(_carded(message, cards))
        inner = serialize(_scrub_fields(message, replacements))
    inner = _broken(inner, entity.newline)
    return entity if inner == data else replace(entity, body=_transfer_encode(inner, entity))


def _edited(
    entity: Entity, edit: Callable[[str], str], replacements: Mapping[str, str]
) -> Entity | None:
    """One text leaf with ``edit`` applied to its text, re-encoded only if that changed it;
    None when it cannot be read as text (see :func:`_shown`)."""
    declared = charsets.codec(entity.param("charset") or "us-ascii")
    data = _shown(entity, declared, replacements)
    if declared is None or data is None:
        return None
    text, codec = _decode(data, declared)
    new = edit(text)
    if new == text:
        return entity
    try:
        data = new.encode(codec)
    except UnicodeEncodeError:
        codec, data = "utf-8", new.encode("utf-8")
    if codec == "utf-8" and declared != "utf-8":
        entity = entity.with_field("Content-Type", _with_charset(entity, "utf-8"))
    added_8bit = entity.cte in _SEVEN_BIT and entity.body.isascii() and not data.isascii()
    if entity.cte not in _ENCODED and (added_8bit or _has_long_line(data)):
        entity = entity.with_field("Content-Transfer-Encoding", "quoted-printable")
    return replace(entity, body=_transfer_encode(data, entity))


def _within_limit(entity: Entity) -> Entity:
    """``entity`` with no body line over ``MAX_LINE`` and the same decoded content; as it
    came when it has none (see the module's docstring)."""
    if entity.multipart:
        return replace(
            entity,
            preamble=_broken(entity.preamble, entity.newline),
            parts=tuple(Part(p.delimiter, _within_limit(p.entity)) for p in entity.parts),
            epilogue=_broken(entity.epilogue, entity.newline),
        )
    if not _has_long_line(entity.body):
        return entity
    data = payload(entity)
    if entity.cte not in _ENCODED:
        cte = "quoted-printable" if entity.maintype == "text" else "base64"
        entity = entity.with_field("Content-Transfer-Encoding", cte)
    return replace(entity, body=_transfer_encode(data, entity))


def _broken(data: bytes, newline: bytes) -> bytes:
    """``data`` with lines over ``MAX_LINE`` broken, Postfix-style (see the module's
    docstring)."""
    if not _has_long_line(data):
        return data

    def fold(line: re.Match[bytes]) -> bytes:
        return _OVERFLOW.sub(lambda piece: piece.group(0) + newline + b" ", line.group(0))

    return _LONG_LINE.sub(fold, b"\n" + data)[1:]


def _has_long_line(data: bytes) -> bool:
    if _lines_within(data, MAX_LINE):
        return False
    return bool(_LONG_LINE.search(data) or _LONG_LINE.match(b"\n" + data[: MAX_LINE + 2]))


def _lines_within(data: bytes, limit: int) -> bool:
    """Whether no line holds more than ``limit`` bytes before its LF (then none is long).

    The regex tries every line (45,000 in a 3 MB base64 photo: 5 ms). Here, when every
    line is as wide as the first (base64), one strided slice shows it; else one ``rfind``
    per ``limit`` bytes."""
    width = data.find(b"\n") + 1
    if 0 < width <= limit + 1:
        every = data[width - 1 :: width]
        if every.count(b"\n") == len(every):
            return True
    start = 0
    while len(data) - start > limit:
        newline = data.rfind(b"\n", start, start + limit + 1)
        if newline == -1:
            return False
        start = newline + 1
    return True


def _decode(data: bytes, declared: str) -> tuple[str, str]:
    """The text of a leaf and the codec to write it back with.

    Declared charset first, then UTF-8 (the usual lie), then latin-1, which reads anything;
    UTF-16 or UTF-7 with broken bytes is read with replacement characters instead, as any
    other reading would hide an address from the scrubber but not from the reader.
    """
    spend()
    for codec in (declared, "utf-8"):
        try:
            return data.decode(codec), codec
        except UnicodeError:
            if declared in charsets.ASCII_INCOMPATIBLE:
                return data.decode(declared, "replace"), declared
    return data.decode("latin-1"), "latin-1"


def _shown(entity: Entity, declared: str | None, replacements: Mapping[str, str]) -> bytes | None:
    """The leaf's content; None for a body that is not the base64 it claims to be (then
    :func:`payload` would make garbage of it), unless that garbage, which lenient mail
    programs show too, holds a real address: then it is what goes out, scrubbed."""
    if entity.cte != "base64":
        return payload(entity)
    compact = entity.body.translate(None, b" \t\r\n")
    try:
        return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4), strict_mode=True)
    except binascii.Error:
        lenient = payload(entity)
    text = lenient.decode(declared or "latin-1", "replace")
    return lenient if scrub_text(text, replacements) != text else None


def _opaque(entity: Entity, replacements: Mapping[str, str]) -> Entity:
    """A text leaf that cannot be read as text goes out like an attachment: its bytes as
    they came, but for real addresses spelled in ASCII (see :func:`scrub_bytes`); no banner.

    A broken base64 body is scrubbed as it stands (its long lines broken: readers decode it
    leniently, skipping white space, so they show the same), a readable one decoded and
    re-encoded.
    """
    data = _shown(entity, None, replacements)
    if data is None:
        return replace(entity, body=_broken(scrub_bytes(entity.body, replacements),
                                            entity.newline))
    new = scrub_bytes(data, replacements)
    if new == data:
        return entity
    return replace(entity, body=_transfer_encode(new, entity))


def _with_banner(text: str, banner: str, *, html: bool) -> str:
    newline = "\r\n" if "\r\n" in text else "\n" if "\n" in text else "\r\n"
    if html:
        body = _BODY_TAG.search(text)
        at = body.end() if body else 0
        return text[:at] + _LINE_BREAK.sub(newline, banner) + text[at:]
    return _LINE_BREAK.sub(newline, banner.strip("\r\n")) + newline * 2 + text


def _with_charset(entity: Entity, charset: str) -> str:
    current = entity.get("Content-Type")
    params = _params(current) if current else {}
    params["charset"] = charset
    return _with_params(entity.content_type, params)


def _params(found: Field) -> dict[str, str]:
    return dict(found.mime.params)


def _with_params(main: str, params: Mapping[str, str]) -> str:
    return main + "".join(f'; {k}="{quote(v)}"' for k, v in params.items())


def _transfer_encode(data: bytes, entity: Entity) -> bytes:
    """Encode like the original body: same encoding, same line ending, same trailing break.

    Quoted-printable keeps the line breaks of ``data`` as line breaks only when they are all
    alike: the encoder writes them all as the first one, so mixed ones are encoded instead
    (``=0D=0A``) and decode as they were. No quoted-printable line starts with ``--``: a
    soft break could otherwise make a line of text the delimiter of the enclosing multipart.
    """
    if entity.cte == "quoted-printable":
        breaks = data.count(b"\n")
        alike = data.count(b"\r") in (0, breaks) and data.count(b"\r\n") in (0, breaks)
        encoded = binascii.b2a_qp(data, istext=alike)
        return _LEADING_DASH.sub(b"\n=2D", b"\n" + encoded)[1:]
    if entity.cte != "base64":
        return data
    old = entity.body
    newline = b"\r\n" if b"\r\n" in old else b"\n" if b"\n" in old else entity.newline
    encoded = base64.encodebytes(data).rstrip(b"\n").replace(b"\n", newline)
    return encoded + old[len(old.rstrip(b"\r\n")) :]
