"""Reading why a message did not arrive: SMTP replies and the bounces (DSNs) that come back
later to a VERP address.

Standard reports (RFC 3464) are read field by field with the stdlib parser, which already
splits ``message/delivery-status`` into per-recipient groups. Everything else (qmail and
Exim text bounces, Gmail's old plain-text notices, reports whose machine part is mangled)
is read roughly from the human-readable text: good enough to tell a full mailbox from a
mistyped address, which is all the sender's notice needs.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage, Message, MIMEPart
from enum import StrEnum


class UndeliverableCause(StrEnum):
    """Why the other party's mail system would not take a message (the seeds' list; a too
    large attachment is its own notice reason)."""

    MAILBOX_FULL = "mailbox_full"
    HOST_UNREACHABLE = "host_unreachable"
    ADDRESS_INVALID = "address_invalid"
    REJECTED = "rejected"  # refused for another reason (policy, spam, content)
    TIMED_OUT = "timed_out"  # kept failing until the retry deadline


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's group of a report; empty strings where the report said nothing."""

    action: str  # lower case: failed, delayed, delivered, relayed, expanded
    status: str  # enhanced status code (RFC 3463), e.g. "5.1.1"
    diagnostic: str  # the remote server's words, whitespace folded


@dataclass(frozen=True)
class BounceReport:
    """What a bounce to a VERP address says. Not who failed: the VERP token says which copy,
    and so which recipient."""

    permanent: bool  # the message will not arrive; a delay warning is not permanent
    cause: UndeliverableCause


MAX_REPORT_BYTES = 64 * 1024
"""A bounce to a VERP address is about one recipient; what follows is the returned message."""

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY = re.compile(r"(?<![\d.])([245]\d\d)[\s-]+([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
# A bare reply code only where a server's reply is quoted, never any three-digit number.
_QUOTED_CODE = re.compile(r"(?:^|said:|returned was:|error:)\s*([245]\d\d)\b", re.I | re.M)
_LEADING_CODE = re.compile(r"^\s*([245]\d\d)\b")

# Searched in this order; the first that matches names the cause.
_TEXT_CAUSES = (
    (UndeliverableCause.MAILBOX_FULL, re.compile(
        r"mailbox (?:is )?full|over ?quota|quota exceeded|exceeded storage|"
        r"insufficient (?:system )?storage|mailbox size limit", re.I)),
    (UndeliverableCause.ADDRESS_INVALID, re.compile(
        r"user unknown|unknown (?:user|recipient|address|mailbox)|no ?such ?(?:user|mailbox|"
        r"address|recipient)|no mailbox here|does ?n[o']t exist|invalid (?:recipient|address|"
        r"mailbox)|(?:user|mailbox|recipient|account|domain name) not found|"
        r"recipient address rejected", re.I)),
    (UndeliverableCause.HOST_UNREACHABLE, re.compile(
        r"connect|unreachable|no route to host|network is|timed? ?out|"
        r"host not found|name or service not known|no mx|dns|refused to talk", re.I)),
    (UndeliverableCause.TIMED_OUT, re.compile(
        r"expired|too long|retry time|could not be delivered for|given up|\d+ attempts", re.I)),
)

# Enhanced status "class.subject.detail" (RFC 3463) -> cause, most specific first.
_STATUS_CAUSES = (
    ("1.7.", UndeliverableCause.REJECTED),  # our sender address, not theirs
    ("1.8.", UndeliverableCause.REJECTED),
    ("1.", UndeliverableCause.ADDRESS_INVALID),
    ("2.1.", UndeliverableCause.ADDRESS_INVALID),  # mailbox disabled
    ("2.2.", UndeliverableCause.MAILBOX_FULL),
    ("3.1.", UndeliverableCause.MAILBOX_FULL),  # mail system full
    ("3.", UndeliverableCause.REJECTED),
    ("4.7.", UndeliverableCause.TIMED_OUT),  # delivery time expired
    ("4.", UndeliverableCause.HOST_UNREACHABLE),
    ("5.", UndeliverableCause.REJECTED),  # protocol
    ("6.", UndeliverableCause.REJECTED),  # content
    ("7.", UndeliverableCause.REJECTED),  # security or policy
)
_CODE_CAUSES = {
    552: UndeliverableCause.MAILBOX_FULL,
    551: UndeliverableCause.ADDRESS_INVALID,
    553: UndeliverableCause.ADDRESS_INVALID,
    421: UndeliverableCause.HOST_UNREACHABLE,
}

_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_COPY_MARKER = re.compile(r"^.*(?:original message|copy of the message|message follows).*$",
                          re.I | re.M)
_WARNING = re.compile(r"warning|delayed|will be retried|still being retried|will retry|"
                      r"not yet been delivered", re.I)
_BOUNCE_SUBJECT = re.compile(r"undeliver|delivery status notification|failure notice|"
                             r"returned mail|delivery fail|mail delivery|could not be delivered",
                             re.I)
_DAEMON = re.compile(r"mailer-daemon|mail delivery (?:system|subsystem)", re.I)


def classify(code: int | None, enhanced: str | None, text: str) -> tuple[bool, UndeliverableCause]:
    """(permanent?, cause) of an SMTP reply, or of a failure that got no reply at all
    (``code`` None: refused or dropped connection, timeout, DNS).

    The reply code decides permanence (5xx), else the enhanced code's class; a specific
    enhanced code (given, or opening ``text`` as in "5.1.1 User unknown") decides the
    cause, then the words, then the bare reply code.
    """
    enhanced_match = _ENHANCED.search(enhanced or "") or _ENHANCED.match(text.lstrip())
    status = enhanced_match.group(0) if enhanced_match else ""
    permanent = 500 <= code < 600 if code is not None else status.startswith("5")
    cause = _status_cause(status) or _text_cause(text) or _CODE_CAUSES.get(code or 0)
    if cause is None:
        cause = (UndeliverableCause.HOST_UNREACHABLE if code is None and not status
                 else UndeliverableCause.REJECTED)
    return permanent, cause


def parse_report(raw: bytes) -> BounceReport | None:
    """What a bounce says, or ``None`` when the message is not a bounce at all (a read
    receipt, an abuse report, an out-of-office reply, spam).

    Only the first ``MAX_REPORT_BYTES`` are read: the human part and the status fields come
    first, and the stdlib parser costs about 2 s a megabyte of recipient groups.
    """
    msg = message_from_bytes(raw[:MAX_REPORT_BYTES], policy=policy.default)
    leaves = list(_leaves(msg))
    status_part = next((p for p in leaves if p.get_content_type() in _STATUS_TYPES), None)
    if status_part is None and msg.get_content_type() == "multipart/report":
        return None  # a report, but not about delivery (MDN, ARF feedback)
    notification = _notification(leaves)
    recipients = _recipients(status_part) if status_part is not None else []
    if recipients:
        return _report(recipients, notification)
    if status_part is None and not _looks_like_bounce(msg):
        return None
    return _text_report(msg, notification)


def _status_cause(status: str) -> UndeliverableCause | None:
    rest = status[2:] + "."
    return next((cause for prefix, cause in _STATUS_CAUSES if rest.startswith(prefix)), None)


def _text_cause(text: str) -> UndeliverableCause | None:
    return next((cause for cause, pattern in _TEXT_CAUSES if pattern.search(text)), None)


def _leaves(part: MIMEPart) -> Iterator[MIMEPart]:
    """Parts of the report itself; never inside the returned original message."""
    if part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():
            yield from _leaves(sub)
    else:
        yield part


def _notification(leaves: list[MIMEPart]) -> str:
    """The human-readable explanation, cut before any copy of the original message."""
    for part in leaves:
        if part.get_content_type() == "text/plain":
            try:
                text = str(part.get_content())
            except LookupError:  # a charset Python does not know
                text = bytes(part.get_payload(decode=True)).decode("utf-8", "replace")
            marker = _COPY_MARKER.search(text)
            return text[: marker.start()] if marker else text
    return ""


def _groups(status_part: MIMEPart) -> list[Message]:
    """The field groups of a delivery-status body. The stdlib splits
    ``message/delivery-status`` itself; the UTF-8 ``global`` variant (RFC 6533) is re-read
    as one so the same parser splits it."""
    payload = status_part.get_payload()
    if status_part.get_content_type() == "message/delivery-status":
        return [g for g in payload if isinstance(g, Message)] if isinstance(payload, list) else []
    body = status_part.get_content()
    if str(status_part.get("Content-Transfer-Encoding", "")).lower() == "base64":
        body = base64.b64decode(body)  # the parser read the encoded text as a message
    return _groups(message_from_bytes(b"Content-Type: message/delivery-status\n\n" + body,
                                      policy=policy.default))


def _recipients(status_part: MIMEPart) -> list[RecipientStatus]:
    entries = []
    for fields in (chunk for group in _groups(status_part) for chunk in _split(group)):
        recipient = fields.get("final-recipient") or fields.get("original-recipient")
        if recipient is None and "status" not in fields and "action" not in fields:
            continue  # the per-message group, or an empty one left by extra blank lines
        diagnostic = _fold(fields.get("diagnostic-code", ""))
        diagnostic = diagnostic.partition(";")[2].strip() if ";" in diagnostic else diagnostic
        status = _ENHANCED.search(fields.get("status", "")) or _ENHANCED.search(diagnostic)
        entries.append(RecipientStatus(
            action=fields.get("action", "").strip().lower(),
            status=status.group(0) if status else "",
            diagnostic=diagnostic,
        ))
    return entries


def _split(group: Message) -> list[dict[str, str]]:
    """A group's fields by lower-case name, split where a field repeats: some MTAs leave
    out the blank line between two recipients' groups."""
    chunks: list[dict[str, str]] = [{}]
    for name, value in group.items():
        if name.lower() in chunks[-1]:
            chunks.append({})
        chunks[-1][name.lower()] = str(value)
    return chunks


def _report(recipients: list[RecipientStatus], notification: str) -> BounceReport:
    verdicts = [_verdict(r, notification) for r in recipients]
    permanent_causes = [cause for permanent, cause in verdicts if permanent]
    cause = permanent_causes[0] if permanent_causes else verdicts[0][1]
    return BounceReport(bool(permanent_causes), cause)


def _verdict(r: RecipientStatus, notification: str) -> tuple[bool, UndeliverableCause]:
    code = _LEADING_CODE.match(r.diagnostic)
    # Without the server's words, the explanation written for people is the next best.
    permanent, cause = classify(int(code.group(1)) if code else None, r.status or None,
                                r.diagnostic or notification)
    if r.action == "failed":  # the reporting MTA has given up, whatever the code's class
        return True, cause
    if r.action:
        return False, cause
    return permanent, cause


def _text_report(msg: EmailMessage, notification: str) -> BounceReport:
    """A bounce with no usable machine-readable part, read from its words."""
    reply = _REPLY.search(notification)
    code_match = _QUOTED_CODE.search(notification)
    enhanced_match = _ENHANCED.search(notification)
    code = int(reply.group(1)) if reply else int(code_match.group(1)) if code_match else None
    status = reply.group(2) if reply else enhanced_match.group(0) if enhanced_match else ""
    if code is None and not status:
        cause = _text_cause(notification) or UndeliverableCause.REJECTED
    else:
        cause = classify(code, status or None, notification)[1]
    permanent = not _WARNING.search(f"{msg.get('Subject', '')}\n{notification}")
    return BounceReport(permanent, cause)


def _looks_like_bounce(msg: EmailMessage) -> bool:
    return ("X-Failed-Recipients" in msg
            or bool(_DAEMON.search(str(msg.get("From", ""))))
            or bool(_BOUNCE_SUBJECT.search(str(msg.get("Subject", "")))))


def _fold(value: str) -> str:
    return " ".join(value.split())
