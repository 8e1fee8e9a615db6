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
from gettext import NullTranslations

from mailveil.domain.verdicts import Outcome
from mailveil.i18n import resolve, translator
from mailveil.mail.bounces import UndeliverableCause
from mailveil.mail.mime import MAX_LINE, header_text

__all__ = ["REFUSALS", "UNDELIVERABLE", "Notice", "UndeliverableCause", "build_notice"]

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


@dataclass(frozen=True)
class Explanation:
    """One refusal as the notice tells it: part 2's fixed words for mail software (reply
    code, enhanced status and a diagnostic that reveals nothing, short enough that the
    Diagnostic-Code line never folds) and part 1's msgids for people, translated when a
    notice is built. Placeholders: ``{url}`` (contact form), ``{size}`` (MB of attachments
    allowed), ``{days}`` (grace days; an ``explanation`` pair is counted by them),
    ``{address}`` (the relay address written to) and ``{platform}`` (the platform's name)."""

    code: int
    status: str
    diagnostic: str
    title: str
    explanation: str | tuple[str, str]  # a msgid, or a singular and plural pair
    advice: str


@dataclass(frozen=True)
class Refusal:
    """A refusal a sender is told about by mail, and how."""

    outcome: Outcome
    said: Explanation


def N_(message: str) -> str:
    """Marks a msgid for pybabel without translating it: the notice translates it."""
    return message


def ngettext(singular: str, plural: str) -> tuple[str, str]:
    """Marks a plural pair for pybabel (``ngettext`` is one of its keywords)."""
    return singular, plural

@dataclass(frozen=True)
class Notice:
    reason: Outcome  # a refused_* one
    cause: UndeliverableCause | None  # for REFUSED_UNDELIVERABLE, when known
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


_UNDELIVERABLE = N_("Message undeliverable")
_RETRY = N_("Please try again later. If the problem continues, please use our contact form: "
            "{url}")
_GET_HELP = N_("Please use our contact form to get help: {url}")

REFUSALS: tuple[Refusal, ...] = (
    # A cause-less undeliverable copy; a known cause is told as in UNDELIVERABLE below.
    Refusal(Outcome.REFUSED_UNDELIVERABLE, Explanation(
        550, "5.0.0", "Message could not be delivered", _UNDELIVERABLE,
        N_("Your message could not be delivered to the recipient."), _GET_HELP)),
    # The seeds' help pages: virus, several customers, expired.
    Refusal(Outcome.REFUSED_VIRUS, Explanation(
        554, "5.7.1", "Attachment failed the virus scan",
        N_("Attachment blocked by the virus scan"),
        N_("Your message contains an attachment (a ticket, a map…) that our virus scan found "
           "to be infected."),
        N_("Please remove the infected file, or replace it with a clean copy, then send your "
           "message again. If you need help sending this document, please use our contact "
           "form: {url}"))),
    Refusal(Outcome.REFUSED_SEVERAL_CUSTOMERS, Explanation(
        550, "5.7.1", "Several customer addresses in To or Cc",
        N_("Several customers in To or CC"),
        N_("Your message has several customer addresses in the To or CC field. To protect our "
           "customers' privacy, such messages are not delivered."),
        N_("To write to several customers, put their addresses in the BCC field, or send each "
           "customer a separate message."))),
    Refusal(Outcome.REFUSED_EXPIRED, Explanation(
        550, "5.2.1", "Relay address expired",
        N_("Relay address expired"),
        ngettext("This message cannot be delivered because the conversation is closed: a "
                 "conversation closes {days} day after the activity.",
                 "This message cannot be delivered because the conversation is closed: a "
                 "conversation closes {days} days after the activity."),
        N_("If you still need to get in touch, please use our contact form: {url}"))),
    # The seeds count it as undeliverable; its own words say what the limit is.
    Refusal(Outcome.REFUSED_TOO_LARGE, Explanation(
        552, "5.3.4", "Message too large",
        N_("Attachment too large"),
        # TRANSLATORS: {size} is a whole number of megabytes, e.g. 10.
        N_("Your message is too large to be delivered: attachments can be up to {size} MB in "
           "total."),
        N_("Please send the attachment as a smaller file, or share it as a link, then send "
           "your message again."))),
    # Parked: it cost more CPU than any real mail (issue 16.7).
    Refusal(Outcome.REFUSED_TOO_COMPLEX, Explanation(
        554, "5.6.0", "Message too complex to process",
        N_("Message too complex to deliver"),
        N_("Your message could not be processed: reading it takes far more work than its size "
           "would need (for example a header of thousands of lines, or thousands of parts)."),
        N_("Please send it again in a simpler form, for example as plain text with your "
           "documents attached. If you need help, please use our contact form: {url}"))),
    # The FAQ: reviews on the platform only; held for care, which refused it.
    Refusal(Outcome.REFUSED_REVIEW, Explanation(
        550, "5.7.1", "Review request refused by policy",
        N_("Request for a review on another site"),
        # TRANSLATORS: {platform} is the marketplace's name, e.g. Tourly.
        N_("Your message asks the customer for a review on another site. Reviews of bookings "
           "made on {platform} are collected on {platform} only, so our care team did not "
           "deliver it."),
        N_("You may send your message again without that request; the customer is invited to "
           "review the activity on {platform}. If you have a question, please use our contact "
           "form: {url}"))),
)
"""Every refusal told by mail, one row each (``tests/mail/test_notices.py`` checks that
each ``refused_*`` outcome has exactly one)."""

UNDELIVERABLE: dict[UndeliverableCause, Explanation] = {
    UndeliverableCause.MAILBOX_FULL: Explanation(
        552, "5.2.2", "Recipient mailbox full", _UNDELIVERABLE,
        N_("The recipient's mailbox is full and could not accept your message."),
        N_("Please try again in a few days. If it is urgent, please use our contact form: "
           "{url}")),
    UndeliverableCause.HOST_UNREACHABLE: Explanation(
        550, "5.4.1", "Recipient mail server unreachable", _UNDELIVERABLE,
        N_("The recipient's mail server could not be reached."), _RETRY),
    UndeliverableCause.ADDRESS_INVALID: Explanation(
        550, "5.1.1", "Recipient address not accepted", _UNDELIVERABLE,
        N_("The recipient's e-mail address was not accepted; it may have been mistyped."),
        # TRANSLATORS: {address} is the relay address the sender wrote to.
        N_("Please check that you copied the whole relay address, {address}, and try again. "
           "If it is correct, please use our contact form: {url}")),
    UndeliverableCause.REJECTED: Explanation(
        550, "5.7.1", "Message refused by the recipient's server", _UNDELIVERABLE,
        N_("The recipient's mail server refused your message."), _GET_HELP),
    UndeliverableCause.TIMED_OUT: Explanation(
        550, "5.4.7", "Delivery time expired", _UNDELIVERABLE,
        N_("We tried to deliver your message several times without success, and have now "
           "stopped trying."), _RETRY),
}
"""What an undeliverable copy's notice says, by cause (a dict: one entry per cause)."""

_REFUSAL_OF = {row.outcome: row.said for row in REFUSALS}

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


def _said(n: Notice) -> Explanation:
    """The cause's words for an undeliverable copy whose cause is known, else the refusal's."""
    if n.reason is Outcome.REFUSED_UNDELIVERABLE and n.cause is not None:
        return UNDELIVERABLE[n.cause]
    return _REFUSAL_OF[n.reason]


def _why(n: Notice, t: NullTranslations) -> tuple[str, str, str]:
    """Title, explanation and what to do next, worded after the seed help pages."""
    said = _said(n)
    values = {"url": n.contact_form_url, "size": n.max_attachment_mb, "days": n.grace_days,
              "address": n.final_recipient, "platform": n.platform_name}
    explanation = (t.ngettext(*said.explanation, n.grace_days)
                   if isinstance(said.explanation, tuple) else t.gettext(said.explanation))
    return (t.gettext(said.title), explanation.format(**values),
            t.gettext(said.advice).format(**values))

def _status_part(n: Notice) -> MIMEPart:
    """Part 2, ``message/delivery-status``: one per-message and one per-recipient group."""
    said = _said(n)
    code, status, words = said.code, said.status, said.diagnostic
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
