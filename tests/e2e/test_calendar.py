"""A calendar invitation and its "Accept" (iMIP, RFC 6047), both ways through a real
``mailveil serve``: each side sees the other only by relay address, and itself by its own."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage

from tests.conftest import Mailveil
from tests.support.client import CUSTOMER, SUPPLIER, archive, mail, register, send
from tests.support.sink import Sink

UID = "040000008200E00074C5B7101A82E0080000000090F3B7B1C4D6DC01"


def invitation(organizer: str, guest: str) -> str:
    """What Thunderbird sends when Ann invites the supplier (folded at 75 octets)."""
    lines = [
        "BEGIN:VCALENDAR", "PRODID:-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN",
        "VERSION:2.0", "METHOD:REQUEST", "BEGIN:VEVENT", "CREATED:20260601T080000Z",
        f"UID:{UID}", "SUMMARY:Pick-up at the h\u00f4tel",
        f"ORGANIZER;CN=Ann Lee:mailto:{organizer}",
        f"ATTENDEE;RSVP=TRUE;PARTSTAT=NEEDS-ACTION;ROLE=REQ-PARTICIPANT;CN={guest}:mailto:{guest}",
        f"ATTENDEE;PARTSTAT=ACCEPTED;ROLE=CHAIR;CN=Ann Lee:mailto:{organizer}",
        f"DESCRIPTION:Call me if you are late: +66 2 123 4567 or write to {organizer}\\, thanks",
        "DTSTART:20300601T020000Z", "DTEND:20300601T030000Z", "SEQUENCE:0",
        "END:VEVENT", "END:VCALENDAR",
    ]
    return "".join(fold(line) for line in lines)


def fold(line: str) -> str:
    data, out = line.encode(), list[str]()
    while len(data) > 75:
        cut = 75 if not out else 74
        while 0x80 <= data[cut] < 0xC0:
            cut -= 1
        out.append(data[:cut].decode())
        data = data[cut:]
    out.append(data.decode())
    return "\r\n ".join(out) + "\r\n"


def content_lines(ics: str) -> list[str]:
    return [line for line in re.sub(r"\r?\n[ \t]", "", ics).splitlines() if line]


def prop(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if re.match(rf"{name}[;:]", line, re.IGNORECASE)]


def mailto(line: str) -> str:
    return line.rpartition(":mailto:")[2]


def calendars(raw: bytes) -> list[str]:
    """Every calendar of a received message, as a calendar program reads them."""
    msg = message_from_bytes(raw, policy=policy.default)
    found = []
    for part in msg.walk():
        if part.get_content_type() in ("text/calendar", "application/ics"):
            content = part.get_content()
            found.append(content if isinstance(content, str) else content.decode())
    return found


def with_calendar(msg: EmailMessage, ics: str, method: str) -> EmailMessage:
    """Text, the calendar as an alternative, and the same as an ``.ics`` file (Outlook)."""
    msg.add_alternative(ics, subtype="calendar", params={"method": method})
    msg.add_attachment(ics.encode(), maintype="application", subtype="ics",
                       filename="invite.ics")
    return msg


def test_an_invitation_and_its_acceptance_cross_the_relay(mailveil: Mailveil,
                                                           sink: Sink) -> None:
    b = register(mailveil)
    customer_relay, supplier_relay = b["customer_relay_address"], b["supplier_relay_address"]
    request = with_calendar(mail(f"Ann Lee <{CUSTOMER}>", supplier_relay, "Pick-up",
                                 "Invitation: pick-up at the hotel\n"),
                            invitation(CUSTOMER, supplier_relay), "REQUEST")
    send(mailveil, request, CUSTOMER, [supplier_relay])

    got = sink.wait_for(1)[0]
    assert got.rcpt_tos == (SUPPLIER,)
    assert CUSTOMER.encode() not in got.data.lower()
    received = calendars(got.data)
    assert len(received) == 2
    for ics in received:
        lines = content_lines(ics)
        assert [mailto(line) for line in prop(lines, "ORGANIZER")] == [customer_relay]
        # The supplier's program finds its own user among the attendees: it may answer.
        assert [mailto(line) for line in prop(lines, "ATTENDEE")] == [SUPPLIER, customer_relay]
        assert f"write to {customer_relay}\\, thanks" in prop(lines, "DESCRIPTION")[0]
        assert prop(lines, "UID") == [f"UID:{UID}"]
        assert all(len(line.encode()) <= 75 for line in ics.splitlines())

    # "Accept": the REPLY keeps the ORGANIZER it got and names the supplier as the attendee,
    # sent to the organizer's address (RFC 6047 2.4).
    invite = content_lines(received[0])
    organizer = prop(invite, "ORGANIZER")[0]
    reply_ics = "".join(fold(line) for line in [
        "BEGIN:VCALENDAR", "PRODID:-//Apple Inc.//macOS 15//EN", "VERSION:2.0", "METHOD:REPLY",
        "BEGIN:VEVENT", f"UID:{UID}", "DTSTAMP:20260602T090000Z", organizer,
        f"ATTENDEE;PARTSTAT=ACCEPTED;CN=Sunny Tours:mailto:{SUPPLIER}",
        "SEQUENCE:0", "END:VEVENT", "END:VCALENDAR"])
    reply = with_calendar(mail(f"Sunny Tours <{SUPPLIER}>", mailto(organizer),
                               "Accepted: Pick-up", "Sunny Tours has accepted.\n"),
                          reply_ics, "REPLY")
    send(mailveil, reply, SUPPLIER, [mailto(organizer)])

    back = sink.wait_for(2)[1]
    assert back.rcpt_tos == (CUSTOMER,)
    assert SUPPLIER.encode() not in back.data.lower()
    answers = calendars(back.data)
    assert len(answers) == 2
    for ics in answers:
        lines = content_lines(ics)
        # Ann's program matches it to her event: same UID, she is the organizer, and the
        # attendee is the address she invited.
        assert prop(lines, "UID") == [f"UID:{UID}"]
        assert prop(lines, "ORGANIZER") == [f"ORGANIZER;CN=Ann Lee:mailto:{CUSTOMER}"]
        assert prop(lines, "ATTENDEE") == [
            f"ATTENDEE;PARTSTAT=ACCEPTED;CN=Sunny Tours:mailto:{supplier_relay}"]
        assert prop(lines, "METHOD") == ["METHOD:REPLY"]
    assert [e["outcome"] for e in archive(mailveil, "GYG-1001", 2)] == ["relayed", "relayed"]


def test_a_vcard_reaches_the_other_side_with_the_relay_address(mailveil: Mailveil,
                                                                sink: Sink) -> None:
    b = register(mailveil)
    card = (f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ann Lee\r\nEMAIL;TYPE=INTERNET:{CUSTOMER}\r\n"
            "TEL:+66 2 123 4567\r\nEND:VCARD\r\n")
    msg = mail(CUSTOMER, b["supplier_relay_address"], "My card", "My details.\n")
    msg.add_attachment(card.encode(), maintype="text", subtype="vcard", filename="ann.vcf")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    got = sink.wait_for(1)[0]
    assert CUSTOMER.encode() not in got.data.lower()
    parts = [p for p in message_from_bytes(got.data, policy=policy.default).walk()
             if p.get_content_type() == "text/vcard"]
    assert [p.get_content() for p in parts] == [
        card.replace(CUSTOMER, b["customer_relay_address"])]
