"""Refusal notices: a real DSN (RFC 3464 inside an RFC 6522 ``multipart/report``) telling the
author of a message that did not go through why, and what to do, in their language.

People read part 1; mail software reads part 2 (so their client can show "undelivered" and
their provider can stop retrying); part 3 gives back their own headers so they can tell
which message it was. The only recipient named anywhere is the relay address they wrote
to, and the diagnostic is one of our fixed sentences, never the remote server's reply,
which could name the other party's real address or provider.

Send it with an empty envelope sender (``MAIL FROM:<>``, RFC 3464 section 2) so that a
notice can never bounce back and start a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from enum import StrEnum
from gettext import NullTranslations

from mailveil.i18n import resolve, translator
from mailveil.mail.bounces import UndeliverableCause
from mailveil.mail.mime import MAX_LINE, header_text

__all__ = ["Notice", "Reason", "UndeliverableCause", "build_notice"]

# 7bit: every part is encoded to survive any hop (and any DKIM canonicalisation) unchanged.
_POLICY = policy.SMTP.clone(cte_type="7bit")
# Header fields are folded only past RFC 5322's limit: the stdlib turns a Message-ID longer
# than a 78-column line into encoded words, which no mail program threads on.
_HEADERS = _POLICY.clone(max_line_length=MAX_LINE)
# The folder counts characters, the limit octets: a UTF-8 character takes up to four.
_UTF8_HEADERS = _HEADERS.clone(utf8=True, max_line_length=MAX_LINE // 4)
_THREADING = "In-Reply-To: "

MAX_NAME = 200
"""Characters of a display name written (the API's limit for a party's name): one word
longer than a header line cannot be folded, and no one's name is that long."""


class Reason(StrEnum):
    """The refusals a sender is told about by mail (the seeds' four errors, and a too
    large attachment, which the seeds count as undeliverable)."""

    UNDELIVERABLE = "undeliverable"
    VIRUS = "virus"
    SEVERAL_CUSTOMERS = "several_customers"
    EXPIRED = "expired"
    TOO_LARGE = "too_large"
    TOO_COMPLEX = "too_complex"  # parked: it cost more CPU than any real mail (issue 16.7)


@dataclass(frozen=True)
class Notice:
    reason: Reason
    cause: UndeliverableCause | None  # for UNDELIVERABLE
    locale: str
    to_name: str
    to_address: str  # the sender of the refused message (real address)
    relay_domain: str
    noreply_address: str
    platform_name: str
    booking_reference: str
    original_subject: str
    original_message_id: str | None
    original_headers: bytes  # raw header block of the refused message
    final_recipient: str  # the relay address they wrote to
    contact_form_url: str
    max_attachment_mb: int
    message_id: str
    date: datetime
    grace_days: int = 7  # how long after the activity a conversation stays open


# (reply code, enhanced status, diagnostic) for part 2: fixed words that reveal nothing,
# short enough that the Diagnostic-Code line never folds.
_MACHINE: dict[Reason | UndeliverableCause | None, tuple[int, str, str]] = {
    Reason.VIRUS: (554, "5.7.1", "Attachment failed the virus scan"),
    Reason.SEVERAL_CUSTOMERS: (550, "5.7.1", "Several customer addresses in To or Cc"),
    Reason.EXPIRED: (550, "5.2.1", "Relay address expired"),
    Reason.TOO_LARGE: (552, "5.3.4", "Message too large"),
    Reason.TOO_COMPLEX: (554, "5.6.0", "Message too complex to process"),
    UndeliverableCause.MAILBOX_FULL: (552, "5.2.2", "Recipient mailbox full"),
    UndeliverableCause.HOST_UNREACHABLE: (550, "5.4.1", "Recipient mail server unreachable"),
    UndeliverableCause.ADDRESS_INVALID: (550, "5.1.1", "Recipient address not accepted"),
    UndeliverableCause.REJECTED: (550, "5.7.1", "Message refused by the recipient's server"),
    UndeliverableCause.TIMED_OUT: (550, "5.4.7", "Delivery time expired"),
    None: (550, "5.0.0", "Message could not be delivered"),
}


def build_notice(n: Notice) -> bytes:
    """The complete notice, CRLF line endings, ready to sign and send."""
    t = translator(n.locale)
    _ = t.gettext
    subject = _one_line(n.original_subject) or _("(no subject)")
    # An internationalised address (RFC 6531) can only be written in UTF-8 headers.
    msg = EmailMessage(policy=_HEADERS if n.to_address.isascii() else _UTF8_HEADERS)
    msg["From"] = Address(_display_name(n.platform_name), addr_spec=n.noreply_address)
    local, _at, domain = n.to_address.rpartition("@")  # addr_spec= refuses UTF-8 local parts
    msg["To"] = Address(_display_name(n.to_name), local, domain)
    # TRANSLATORS: subject of the notice; {subject} is the subject of the sender's message.
    msg["Subject"] = _("Undelivered: {subject}").format(subject=subject)
    msg["Date"] = n.date
    msg["Message-ID"] = _bracketed(n.message_id)
    original = _bracketed(n.original_message_id or "")
    if n.original_message_id and len(_THREADING + original) <= MAX_LINE:
        msg["In-Reply-To"] = original
        msg["References"] = original
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: nothing should answer this
    msg["X-Auto-Response-Suppress"] = "All"  # the same, for Exchange's out-of-office replies
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"
    msg.set_payload([_human_part(n, t, subject), _status_part(n),
                     _headers_part(n.original_headers)])
    return msg.as_bytes()


def _human_part(n: Notice, t: NullTranslations, subject: str) -> MIMEPart:
    _ = t.gettext
    name = _one_line(n.to_name)
    title, explanation, advice = _why(n, t)
    paragraphs = [
        _("Hello {name},").format(name=name) if name else _("Hello,"),
        # TRANSLATORS: {subject} is the subject of the sender's message, {reference} the
        # booking reference; quote the subject the way your language does.
        _("Your message “{subject}” about booking {reference} was not delivered.").format(
            subject=subject, reference=n.booking_reference),
        f"{title}\n{explanation}",
        advice,
        _("This message was sent automatically by {platform}; please do not reply to it. "
          "The headers of your message are attached.").format(platform=n.platform_name),
    ]
    part = MIMEPart(policy=_POLICY)
    part.set_content("\n\n".join(paragraphs) + "\n", charset="utf-8")
    part["Content-Language"] = resolve(n.locale).language
    part["Content-Description"] = "Notification"
    return part


def _why(n: Notice, t: NullTranslations) -> tuple[str, str, str]:
    """Title, explanation and what to do next, worded after the seed help pages."""
    _ = t.gettext
    url = n.contact_form_url
    match n.reason:
        case Reason.VIRUS:
            return (_("Attachment blocked by the virus scan"),
                    _("Your message contains an attachment (a ticket, a map…) that our virus "
                      "scan found to be infected."),
                    _("Please remove the infected file, or replace it with a clean copy, then "
                      "send your message again. If you need help sending this document, "
                      "please use our contact form: {url}").format(url=url))
        case Reason.SEVERAL_CUSTOMERS:
            return (_("Several customers in To or CC"),
                    _("Your message has several customer addresses in the To or CC field. To "
                      "protect our customers' privacy, such messages are not delivered."),
                    _("To write to several customers, put their addresses in the BCC field, "
                      "or send each customer a separate message."))
        case Reason.EXPIRED:
            return (_("Relay address expired"),
                    t.ngettext("This message cannot be delivered because the conversation is "
                               "closed: a conversation closes {days} day after the activity.",
                               "This message cannot be delivered because the conversation is "
                               "closed: a conversation closes {days} days after the activity.",
                               n.grace_days).format(days=n.grace_days),
                    _("If you still need to get in touch, please use our contact form: "
                      "{url}").format(url=url))
        case Reason.TOO_LARGE:
            return (_("Attachment too large"),
                    # TRANSLATORS: {size} is a whole number of megabytes, e.g. 10.
                    _("Your message is too large to be delivered: attachments can be up to "
                      "{size} MB in total.").format(size=n.max_attachment_mb),
                    _("Please send the attachment as a smaller file, or share it as a link, "
                      "then send your message again."))
        case Reason.TOO_COMPLEX:
            return (_("Message too complex to deliver"),
                    _("Your message could not be processed: reading it takes far more work "
                      "than its size would need (for example a header of thousands of lines, "
                      "or thousands of parts)."),
                    _("Please send it again in a simpler form, for example as plain text with "
                      "your documents attached. If you need help, please use our contact "
                      "form: {url}").format(url=url))
        case Reason.UNDELIVERABLE:
            return (_("Message undeliverable"), *_undeliverable(n, t))


def _undeliverable(n: Notice, t: NullTranslations) -> tuple[str, str]:
    _ = t.gettext
    url = n.contact_form_url
    retry = _("Please try again later. If the problem continues, please use our contact "
              "form: {url}").format(url=url)
    get_help = _("Please use our contact form to get help: {url}").format(url=url)
    match n.cause:
        case UndeliverableCause.MAILBOX_FULL:
            return (_("The recipient's mailbox is full and could not accept your message."),
                    _("Please try again in a few days. If it is urgent, please use our "
                      "contact form: {url}").format(url=url))
        case UndeliverableCause.HOST_UNREACHABLE:
            return _("The recipient's mail server could not be reached."), retry
        case UndeliverableCause.TIMED_OUT:
            return (_("We tried to deliver your message several times without success, and "
                      "have now stopped trying."), retry)
        case UndeliverableCause.ADDRESS_INVALID:
            return (_("The recipient's e-mail address was not accepted; it may have been "
                      "mistyped."),
                    # TRANSLATORS: {address} is the relay address the sender wrote to.
                    _("Please check that you copied the whole relay address, {address}, and "
                      "try again. If it is correct, please use our contact form: "
                      "{url}").format(address=n.final_recipient, url=url))
        case UndeliverableCause.REJECTED:
            return _("The recipient's mail server refused your message."), get_help
        case None:
            return _("Your message could not be delivered to the recipient."), get_help


def _status_part(n: Notice) -> MIMEPart:
    """Part 2, ``message/delivery-status``: one per-message and one per-recipient group."""
    code, status, words = _MACHINE[n.cause if n.reason is Reason.UNDELIVERABLE else n.reason]
    per_message, per_recipient = Message(policy=_POLICY), Message(policy=_POLICY)
    per_message["Reporting-MTA"] = f"dns; {n.relay_domain}"
    per_recipient["Final-Recipient"] = f"rfc822; {n.final_recipient}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"smtp; {code} {status} {words}"
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload([per_message, per_recipient])
    return part


def _headers_part(raw_headers: bytes) -> MIMEPart:
    """Part 3, ``text/rfc822-headers``: the sender's own headers, returned as they sent
    them (undecodable bytes replaced, the blank line that ended them dropped)."""
    text = raw_headers.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n") + "\n"
    part = MIMEPart(policy=_POLICY)
    part.set_content(text, subtype="rfc822-headers", charset="utf-8")
    part["Content-Description"] = "Undelivered Message Headers"
    return part


def _one_line(value: str) -> str:
    """Header-safe text: a subject or name with folded lines, or with encoded words that
    hide a line break at any depth (the stdlib decodes them when it writes the header),
    never injects a header."""
    return " ".join(header_text(value).split())


def _display_name(value: str) -> str:
    name = _one_line(value)
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "\u2026"


def _bracketed(message_id: str) -> str:
    message_id = message_id.strip()
    return message_id if message_id.startswith("<") else f"<{message_id}>"
