"""Turning an incoming message into the one the other party receives.

Only the top-level header block is rebuilt, from an allow-list. Below it, the MIME tree
from :mod:`mailveil.mail.mime` is kept slice for slice: attachments, ``message/*`` parts
and signed or encrypted subtrees go out byte for byte, and a text part is re-encoded
only when scrubbing or the banner actually changed it.

Signed and encrypted subtrees (``multipart/signed``, ``multipart/encrypted``) are neither
scrubbed nor given a banner: any change would break the signature the recipient checks,
and an encrypted part cannot be read anyway. The cost is that a real address inside a
signed body reaches the recipient; the sender chose to sign that text.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from email import policy
from email.headerregistry import Address, HeaderRegistry
from email.utils import formatdate, quote

from mailveil.mail.mime import Entity, Part, body_bytes, parse, payload
from mailveil.mail.scrub import scrub_bytes, scrub_text

KEPT_HEADERS = frozenset(
    {
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-language",
        "content-id",
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
"""Top-level headers that reveal nothing about the sender's mailbox; all others are dropped."""

SEALED = frozenset({"multipart/signed", "multipart/encrypted"})

_SEVEN_BIT = frozenset({"7bit", "7-bit", "us-ascii"})
"""Declared 7-bit: 8-bit text we add must go quoted-printable (8-bit already there stays)."""

_SMTP = policy.SMTP
_UNSTRUCTURED = HeaderRegistry(use_default_map=False)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_BODY_TAG = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_END = re.compile(rb"\r?\n")


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


def rewrite(raw: bytes, plan: RewritePlan) -> bytes:
    """The outgoing message for ``raw``; never raises on any ``raw``."""
    root = parse(raw)
    banners = _banner_targets(root, plan)
    root = _transform(root, plan.replacements, banners)
    return _header_block(root, plan) + b"\r\n" + body_bytes(root)


def _header_block(root: Entity, plan: RewritePlan) -> bytes:
    """New headers first, then the allow-listed ones as received (scrubbed if they must be).

    A kept field keeps its bytes and folding; only its line breaks become CRLF so that the
    header block is uniform. The first of duplicated fields wins, as in most readers.
    """
    kept: dict[str, bytes] = {}
    for found in root.fields:
        if found.key not in KEPT_HEADERS or found.key in kept:
            continue
        scrubbed = scrub_text(found.decoded, plan.replacements)
        if scrubbed != found.decoded:
            kept[found.key] = _fold(found.name, _clean(scrubbed))
        else:
            kept[found.key] = _LINE_END.sub(b"\r\n", found.raw.rstrip(b"\r\n")) + b"\r\n"
    new = [
        ("From", str(Address(_clean(plan.from_name), addr_spec=_clean(plan.from_address)))),
        ("To", str(Address(_clean(plan.to_name), addr_spec=_clean(plan.to_address)))),
        ("Date", "" if "date" in kept else formatdate(usegmt=True)),
        ("Message-ID", _ids((plan.message_id,))),
        ("In-Reply-To", _ids(plan.in_reply_to)),
        ("References", _ids(plan.references)),
        ("MIME-Version", "" if "mime-version" in kept else "1.0"),
    ]
    generated = b"".join(_fold(name, value) for name, value in new if value)
    return generated + b"".join(kept.values())


def _fold(name: str, value: str) -> bytes:
    """RFC 5322 folding with RFC 2047 words; unstructured when the value defeats the parser."""
    try:
        folded: str = _SMTP.header_factory(name, value).fold(policy=_SMTP)
    except Exception:
        folded = _UNSTRUCTURED(name, _clean(value)).fold(policy=_SMTP)
    return folded.encode("ascii", "replace")


def _clean(value: str) -> str:
    """Control characters (caller data, CR LF from encoded words) would inject headers."""
    return _CONTROL.sub(" ", value).strip()


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


def _transform(entity: Entity, replacements: Mapping[str, str], banners: dict[int, str]) -> Entity:
    if entity.content_type in SEALED or entity.is_attachment:
        return entity
    if entity.multipart:
        return replace(
            entity,
            preamble=scrub_bytes(entity.preamble, replacements),
            parts=tuple(
                Part(p.delimiter, _transform(p.entity, replacements, banners)) for p in entity.parts
            ),
            epilogue=scrub_bytes(entity.epilogue, replacements),
        )
    if entity.maintype != "text":
        return replace(entity, body=scrub_bytes(entity.body, replacements))
    return _rewrite_text(entity, replacements, banners.get(id(entity)))


def _rewrite_text(entity: Entity, replacements: Mapping[str, str], banner: str | None) -> Entity:
    """Scrub (and maybe banner) one text leaf; an unchanged part is returned as it came."""
    declared = _codec(entity.param("charset") or "us-ascii")
    text, codec = _decode(payload(entity), declared)
    new = scrub_text(text, replacements)
    if banner:
        new = _with_banner(new, banner, html=entity.content_type == "text/html")
    if new == text:
        return entity
    try:
        data = new.encode(codec)
    except UnicodeEncodeError:
        codec, data = "utf-8", new.encode("utf-8")
    if codec == "utf-8" and declared != "utf-8":
        entity = entity.with_field("Content-Type", _with_charset(entity, "utf-8"))
    if entity.cte in _SEVEN_BIT and entity.body.isascii() and not data.isascii():
        entity = entity.with_field("Content-Transfer-Encoding", "quoted-printable")
    return replace(entity, body=_transfer_encode(data, entity))


def _codec(charset: str) -> str | None:
    """Python's name for a MIME charset, or None when Python has no text codec for it."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _decode(data: bytes, declared: str | None) -> tuple[str, str]:
    """Declared charset first, then UTF-8 (the usual lie), then latin-1, which reads anything."""
    for codec in (declared, "utf-8"):
        if codec is not None:
            try:
                return data.decode(codec), codec
            except (UnicodeError, LookupError):
                continue
    return data.decode("latin-1"), "latin-1"


def _with_banner(text: str, banner: str, *, html: bool) -> str:
    newline = "\r\n" if "\r\n" in text else "\n" if "\n" in text else "\r\n"
    if html:
        body = _BODY_TAG.search(text)
        at = body.end() if body else 0
        return text[:at] + banner + text[at:]
    return _LINE_BREAK.sub(newline, banner.strip("\r\n")) + newline * 2 + text


def _with_charset(entity: Entity, charset: str) -> str:
    current = entity.get("Content-Type")
    params = dict(getattr(current.parsed, "params", {})) if current else {}
    params["charset"] = charset
    return entity.content_type + "".join(f'; {k}="{quote(str(v))}"' for k, v in params.items())


def _transfer_encode(data: bytes, entity: Entity) -> bytes:
    """Encode like the original body: same encoding, same line ending, same trailing break."""
    if entity.cte == "quoted-printable":
        return binascii.b2a_qp(data, istext=True)
    if entity.cte != "base64":
        return data
    old = entity.body
    newline = b"\r\n" if b"\r\n" in old else b"\n" if b"\n" in old else entity.newline
    encoded = base64.encodebytes(data).rstrip(b"\n").replace(b"\n", newline)
    return encoded + old[len(old.rstrip(b"\r\n")) :]
