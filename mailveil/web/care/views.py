"""What the console shows of a stored message, and the dispute export: pure functions of
bytes and rows, so the pages, the API and the tests see the same thing."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

from mailveil.store.care import Message

# The HTML part of a message, served alone: no script, no remote content, no form, no
# navigation; only images inlined as data: URLs may show.
HTML_POLICY = "sandbox; default-src 'none'; img-src data:; frame-ancestors 'self'"
MANIFEST = "SHA256SUMS"
TRANSCRIPT = "transcript.html"


@dataclass(frozen=True)
class Shown:
    headers: list[tuple[str, str]]
    text: str
    has_html: bool


def _parse(raw: bytes) -> EmailMessage:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _content(part: EmailMessage | None) -> str | None:
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown charset or broken encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else None


def shown(raw: bytes) -> Shown:
    """Headers as decoded text (escaped when rendered) and the plain-text body."""
    message = _parse(raw)
    headers = [(name, str(value)) for name, value in message.items()]
    plain = message.get_body(("plain",))
    text = _content(plain) if isinstance(plain, EmailMessage) else None
    html = message.get_body(("html",))
    return Shown(headers, text if text is not None else "", html is not None)


def html_of(raw: bytes) -> str | None:
    html = _parse(raw).get_body(("html",))
    return _content(html) if isinstance(html, EmailMessage) else None


def files(messages: list[Message]) -> list[tuple[str, bytes]]:
    """Every stored original: as received, and each copy as it was sent (purged bodies
    have nothing left to export and are named in the transcript instead)."""
    found = []
    for m in messages:
        if m.inbound.purged_at is None:
            found.append((f"received/{m.inbound.id}.eml", m.inbound.raw))
        found.extend((f"delivered/{c.row.id}.eml", c.row.raw)
                     for c in m.copies if c.row.purged_at is None)
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(entries: list[tuple[str, bytes]]) -> bytes:
    """``sha256sum -c`` input: anyone can check the files without mailveil."""
    return "".join(f"{sha256(data)}  {name}\n" for name, data in entries).encode()


def dispute_zip(entries: list[tuple[str, bytes]], transcript: str) -> bytes:
    every = [*entries, (TRANSCRIPT, transcript.encode())]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in [*every, (MANIFEST, manifest(every))]:
            z.writestr(name, data)
    return out.getvalue()
