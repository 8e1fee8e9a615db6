"""The short notice at the top of every relayed message, in the recipient's language: who
wrote (display name only, never an address), about which booking, that a reply goes back
through the platform, and, for suppliers, until when they can still write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape

from babel.dates import format_date

from mailveil.i18n import resolve, translator

# Inline styles only (webmail strips <style>); the table carries the padding because
# Outlook's Word engine ignores padding on a <div>.
BOX_STYLE = ("margin:0 0 16px 0;border:1px solid #d0d7de;border-left:4px solid #1a73e8;"
        "background-color:#f6f8fa;")
_CELL = ("padding:8px 12px;font-family:Arial,Helvetica,sans-serif;font-size:13px;"
         "line-height:18px;color:#24292f;")
_LINE = "margin:0;padding:0;"


@dataclass(frozen=True)
class Banner:
    text: str  # complete lines ending with a separator; prepend it to the text body
    html: str  # one <div>; insert it at the top of the HTML body


def banner(locale: str, sender_name: str, reference: str, platform_name: str,
           open_until: datetime | None, recipient_is_supplier: bool,
           box_style: str = BOX_STYLE, unverified: bool = False) -> Banner:
    """The banner for one recipient; ``open_until`` is shown to suppliers only.

    ``box_style`` is the operator's CSS for the outer box (``MAILVEIL_BANNER_STYLE``), to
    match the platform's colours. ``unverified`` warns that nothing proved the sender's
    domain sent the message (no SPF, DKIM or DMARC passed): the name shown is a claim."""
    _ = translator(locale).gettext
    name = " ".join(sender_name.split())
    # Each line is a template and its values, so the HTML can escape and emphasise the
    # values without ever treating a translation or a name as markup.
    lines: list[tuple[str, dict[str, str]]] = [
        # TRANSLATORS: {sender} is the display name of the person who wrote.
        (_("{sender} wrote to you about booking {reference}."),
         {"sender": name, "reference": reference}) if name else
        (_("New message about booking {reference}."), {"reference": reference}),
        (_("Reply to this e-mail as usual: your reply goes through {platform}, and neither "
           "of you sees the other's e-mail address."), {"platform": platform_name}),
    ]
    if unverified:
        lines.insert(1, (
            # TRANSLATORS: {sender} is the display name of the person the message claims
            # to come from; the sender's mail domain publishes nothing that proves it.
            _("We could not verify that this message comes from {sender}."),
            {"sender": name}) if name else (_("We could not verify who sent this message."), {}))
    if recipient_is_supplier and open_until is not None:
        when = format_date(open_until, format="long", locale=resolve(locale))
        lines.append((_("You can write to this customer until {date}."), {"date": when}))
    text = "\n".join(template.format(**values) for template, values in lines)
    # A line a paragraph: a name or a translation, not the whole banner, makes a line long.
    paragraphs = "\n".join(
        f'<p style="{_LINE}">' + escape(template).format(**{
            key: f"<strong>{escape(value)}</strong>" for key, value in values.items()
        }) + "</p>"
        for template, values in lines)
    html = (f'<div lang="{resolve(locale).language}" style="{escape(box_style)}">'
            f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
            f'border="0"><tr><td style="{_CELL}">\n{paragraphs}\n</td></tr></table></div>')
    return Banner(text=f"{text}\n{'-' * 40}\n", html=html)
