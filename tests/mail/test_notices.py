"""Refusal notices are well-formed DSNs that thread, speak the sender's language and never
name the other party."""

from __future__ import annotations

import dataclasses
import operator
import re
from collections import Counter
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.domain.verdicts import Outcome
from mailveil.mail.bounces import parse_report
from mailveil.mail.notices import (
    REFUSALS,
    UNDELIVERABLE,
    Explanation,
    Notice,
    UndeliverableCause,
    build_notice,
)
from tests.support.long_lines import long_lines

SENDER = "ann.supplier@tours-ann.example"
RELAY = "customer-0123456789ab@reply.example.com"
NOREPLY = "no-reply@reply.example.com"
# What the relay knows but must never tell the sender: the other party's real mailbox.
HIDDEN = ("bob.customer@private-mail.example", "private-mail.example")
ORIGINAL_HEADERS = (
    f"From: Ann Supplier <{SENDER}>\r\nTo: {RELAY}\r\nSubject: Pick-up time\r\n"
    "Message-ID: <orig-1@tours-ann.example>\r\nDate: Sat, 01 Mar 2025 09:00:00 +0100\r\n\r\n"
).encode()

REFUSED = [outcome for outcome in Outcome if outcome.startswith("refused_")]
ALL_CASES = [(Outcome.REFUSED_UNDELIVERABLE, cause) for cause in [*UndeliverableCause, None]] + [
    (reason, None) for reason in REFUSED if reason is not Outcome.REFUSED_UNDELIVERABLE]


def notice(**changes: object) -> Notice:
    base = Notice(
        reason=Outcome.REFUSED_UNDELIVERABLE, cause=UndeliverableCause.MAILBOX_FULL, locale="en",
        to_name="Ann Supplier", to_address=SENDER, relay_domain="reply.example.com",
        noreply_address=NOREPLY, platform_name="Tourly", booking_reference="GYG-7Q2X",
        original_subject="Pick-up time", original_message_id="<orig-1@tours-ann.example>",
        original_headers=ORIGINAL_HEADERS, final_recipient=RELAY,
        contact_form_url="https://tourly.example/contact", max_attachment_mb=10,
        message_id="<notice-1@reply.example.com>",
        date=datetime(2025, 3, 1, 8, 5, tzinfo=UTC),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    return message_from_bytes(raw, policy=policy.default)


def parts(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.iter_parts() if isinstance(p, EmailMessage)]


def content(part: EmailMessage) -> str:
    """A text part as its reader sees it (the wire form has CRLF line ends)."""
    return str(part.get_content()).replace("\r\n", "\n")


def human_text(raw: bytes) -> str:
    return content(parts(parse(raw))[0])


def status_groups(msg: EmailMessage) -> list[Message]:
    payload = parts(msg)[1].get_payload()
    assert isinstance(payload, list)
    return [group for group in payload if isinstance(group, Message)]


def everything(raw: bytes) -> str:
    """Headers and every decoded part, as someone reading the notice would see them."""
    msg = parse(raw)
    texts = [str(v) for _, v in msg.items()] + [human_text(raw)]
    texts += [str(v) for group in status_groups(msg) for _, v in group.items()]
    texts.append(content(parts(msg)[2]))
    return "\n".join(texts)


@pytest.mark.parametrize(("reason", "cause"), ALL_CASES)
def test_is_a_well_formed_delivery_status_notification(
        reason: Outcome, cause: UndeliverableCause | None) -> None:
    raw = build_notice(notice(reason=reason, cause=cause))
    assert b"\n" not in raw.replace(b"\r\n", b""), "CRLF line endings only"
    assert raw.isascii(), "7-bit safe for any hop"
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(msg)] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert parts(msg)[0].get_content_charset() == "utf-8"
    per_message, per_recipient = status_groups(msg)
    assert per_message["Reporting-MTA"] == "dns; reply.example.com"
    assert per_recipient["Final-Recipient"] == f"rfc822; {RELAY}"
    assert per_recipient["Action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", str(per_recipient["Status"]))
    assert str(per_recipient["Diagnostic-Code"]).startswith("smtp; 5")
    assert str(per_recipient["Status"]) in str(per_recipient["Diagnostic-Code"])


@pytest.mark.parametrize(("reason", "cause", "status"), [
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.MAILBOX_FULL, "5.2.2"),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.ADDRESS_INVALID, "5.1.1"),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.HOST_UNREACHABLE, "5.4.1"),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.TIMED_OUT, "5.4.7"),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.REJECTED, "5.7.1"),
    (Outcome.REFUSED_UNDELIVERABLE, None, "5.0.0"),
    (Outcome.REFUSED_TOO_LARGE, None, "5.3.4"),
    (Outcome.REFUSED_VIRUS, None, "5.7.1"),
    (Outcome.REFUSED_SEVERAL_CUSTOMERS, None, "5.7.1"),
    (Outcome.REFUSED_EXPIRED, None, "5.2.1"),
])
def test_status_code_matches_the_reason(reason: Outcome, cause: UndeliverableCause | None,
                                        status: str) -> None:
    assert status_groups(parse(build_notice(notice(reason=reason, cause=cause))))[1][
        "Status"] == status


def test_every_refusal_has_exactly_one_row_and_nothing_else_has_one() -> None:
    assert Counter(row.outcome for row in REFUSALS) == Counter(REFUSED)
    assert set(UNDELIVERABLE) == set(UndeliverableCause)  # a dict: one entry per cause


@pytest.mark.parametrize("said", [row.said for row in REFUSALS] + list(UNDELIVERABLE.values()))
def test_reply_code_and_enhanced_status_agree(said: Explanation) -> None:
    assert said.code // 100 == 5 and said.status.startswith("5.")
    assert len(f"Diagnostic-Code: smtp; {said.code} {said.status} {said.diagnostic}") <= 78


@pytest.mark.parametrize("cause", list(UndeliverableCause))
def test_bounce_reader_understands_our_own_notices(cause: UndeliverableCause) -> None:
    report = parse_report(build_notice(notice(cause=cause)))
    assert report is not None and report.permanent and report.cause is cause


def test_headers_thread_and_stop_auto_replies() -> None:
    msg = parse(build_notice(notice()))
    assert msg["From"].addresses[0].display_name == "Tourly"
    assert msg["From"].addresses[0].addr_spec == NOREPLY
    assert msg["To"].addresses[0].addr_spec == SENDER
    assert msg["To"].addresses[0].display_name == "Ann Supplier"
    assert msg["Subject"] == "Undelivered: Pick-up time"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<orig-1@tours-ann.example>"
    assert msg["References"] == "<orig-1@tours-ann.example>"
    assert msg["Message-ID"] == "<notice-1@reply.example.com>"
    assert msg["Date"].datetime == datetime(2025, 3, 1, 8, 5, tzinfo=UTC)
    assert msg["MIME-Version"] == "1.0"


def test_bare_message_ids_are_bracketed() -> None:
    msg = parse(build_notice(notice(message_id="n2@reply.example.com",
                                    original_message_id="orig-2@tours-ann.example")))
    assert msg["Message-ID"] == "<n2@reply.example.com>"
    assert msg["In-Reply-To"] == "<orig-2@tours-ann.example>"


def test_without_an_original_message_id_nothing_threads() -> None:
    msg = parse(build_notice(notice(original_message_id=None)))
    assert "In-Reply-To" not in msg and "References" not in msg


@pytest.mark.parametrize(("locale", "subject", "phrases"), [
    ("en", "Undelivered: Pick-up time",
     ["Hello Ann Supplier,", "booking GYG-7Q2X", "mailbox is full"]),
    ("fr-FR", "Non remis : Pick-up time",
     ["Bonjour Ann Supplier,", "« Pick-up time »", "réservation GYG-7Q2X", "boîte de réception",
      "Veuillez réessayer"]),
    ("th-TH", "ส่งไม่สำเร็จ: Pick-up time",
     ["เรียน คุณ Ann Supplier", "“Pick-up time”", "GYG-7Q2X", "กล่องจดหมายของผู้รับเต็ม"]),
    ("de_DE", "Unzustellbar: Pick-up time",
     ["Guten Tag Ann Supplier,", "„Pick-up time“", "Buchung GYG-7Q2X", "Postfach",
      "versuchen Sie es"]),
    ("es-ES", "No entregado: Pick-up time",
     ["Hola, Ann Supplier:", "«Pick-up time»", "reserva GYG-7Q2X", "buzón", "Vuelva a intentarlo"]),
])
def test_speaks_the_senders_language(locale: str, subject: str, phrases: list[str]) -> None:
    raw = build_notice(notice(locale=locale))
    msg = parse(raw)
    assert msg["Subject"] == subject
    assert parts(msg)[0]["Content-Language"] == locale[:2]
    text = human_text(raw)
    for phrase in phrases:
        assert phrase in text
    if locale != "en":
        assert "Hello" not in text and "booking" not in text


@pytest.mark.parametrize("locale", ["pt-BR", "", "xx", "zh_Hant_TW"])
def test_unknown_locales_get_english(locale: str) -> None:
    raw = build_notice(notice(locale=locale))
    assert parse(raw)["Subject"] == "Undelivered: Pick-up time"
    assert "Hello Ann Supplier," in human_text(raw)
    assert parts(parse(raw))[0]["Content-Language"] == "en"


@pytest.mark.parametrize(("reason", "cause", "phrases"), [
    (Outcome.REFUSED_VIRUS, None, ["virus scan", "remove the infected file", "contact form"]),
    (Outcome.REFUSED_SEVERAL_CUSTOMERS, None, ["To or CC", "BCC", "separate message", "privacy"]),
    (Outcome.REFUSED_EXPIRED, None, ["conversation is closed", "7 days after the activity",
                            "contact form: https://tourly.example/contact"]),
    (Outcome.REFUSED_TOO_LARGE, None, ["up to 10 MB", "smaller file", "link"]),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.ADDRESS_INVALID,
     [f"copied the whole relay address, {RELAY},", "mistyped"]),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.HOST_UNREACHABLE,
     ["could not be reached", "try again later"]),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.TIMED_OUT,
     ["several times", "try again later"]),
    (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause.REJECTED, ["refused", "contact form"]),
    (Outcome.REFUSED_UNDELIVERABLE, None, ["could not be delivered", "contact form"]),
])
def test_says_what_happened_and_what_to_do(reason: Outcome, cause: UndeliverableCause | None,
                                           phrases: list[str]) -> None:
    text = human_text(build_notice(notice(reason=reason, cause=cause)))
    assert "“Pick-up time” about booking GYG-7Q2X was not delivered" in text
    for phrase in phrases:
        assert phrase in text
    assert "do not reply" in text


@pytest.mark.parametrize(("locale", "days", "phrase"), [
    ("en", 1, "1 day after"), ("en", 3, "3 days after"),
    ("fr", 1, "1 jour après"), ("fr", 3, "3 jours après"),
    ("de", 1, "1 Tag nach"), ("es", 14, "14 días después"), ("th", 7, "7 วันหลังจาก"),
])
def test_grace_period_is_counted_in_words(locale: str, days: int, phrase: str) -> None:
    assert phrase in human_text(build_notice(notice(reason=Outcome.REFUSED_EXPIRED, locale=locale,
                                                    grace_days=days)))


@pytest.mark.parametrize(("reason", "cause"), ALL_CASES)
@pytest.mark.parametrize("locale", ["en", "fr", "th", "de", "es"])
def test_never_names_the_other_party(locale: str, reason: Outcome,
                                     cause: UndeliverableCause | None) -> None:
    seen = everything(build_notice(notice(locale=locale, reason=reason, cause=cause)))
    assert not any(hidden in seen for hidden in HIDDEN)
    addresses = set(re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", seen))
    assert addresses <= {SENDER, RELAY, NOREPLY, "orig-1@tours-ann.example",
                         "notice-1@reply.example.com"}


def test_returns_the_senders_own_headers() -> None:
    returned = content(parts(parse(build_notice(notice())))[2])
    assert returned == ORIGINAL_HEADERS.decode().replace("\r\n", "\n").rstrip("\n") + "\n"


def test_a_subject_cannot_inject_headers() -> None:
    raw = build_notice(notice(original_subject="Hi\r\nBcc: victim@evil.example",
                              to_name="Ann\nX-Evil: 1"))
    msg = parse(raw)
    assert "Bcc" not in msg and "X-Evil" not in msg
    assert msg["Subject"] == "Undelivered: Hi Bcc: victim@evil.example"


def test_an_empty_subject_and_name_still_read_well() -> None:
    raw = build_notice(notice(original_subject="  ", to_name="", locale="fr"))
    assert parse(raw)["Subject"] == "Non remis : (sans objet)"
    assert human_text(raw).startswith("Bonjour,\n\n")


def test_an_internationalised_sender_address_gets_utf8_headers() -> None:
    raw = build_notice(notice(to_address="jörg@bücher.example", to_name="Jörg"))
    msg = message_from_string(raw.decode("utf-8"), policy=policy.SMTPUTF8)
    assert msg["To"].addresses[0].addr_spec == "jörg@bücher.example"


ODD_TEXT = st.one_of(
    st.text(max_size=3000),
    st.builds(operator.mul, st.sampled_from(["x", "é", "ไ", "😀", '"', "\\", "a b", "=?"]),
              st.integers(0, 2500)),
)


@settings(max_examples=200, deadline=None)
@given(name=ODD_TEXT, subject=ODD_TEXT, platform=ODD_TEXT,
       message_id=st.from_regex(r"<[!-;=?-~]{1,1200}>", fullmatch=True),
       headers=st.binary(max_size=3000) | st.builds(  # a provider's long header line
           lambda n: b"X-GMX-Antispam: " + b"v" * n + b"\r\n\r\n", st.integers(900, 3000)),
       utf8_address=st.booleans(),
       locale=st.sampled_from(["en", "fr", "th", "de", "es"]), case=st.sampled_from(ALL_CASES))
def test_no_line_is_longer_than_998_whatever_the_names_and_subjects(
        name: str, subject: str, platform: str, message_id: str, headers: bytes,
        utf8_address: bool, locale: str, case: tuple[Outcome, UndeliverableCause | None]) -> None:
    raw = build_notice(notice(
        to_name=name, original_subject=subject, platform_name=platform,
        original_message_id=message_id, original_headers=headers,
        to_address="añn@tours-ann.example" if utf8_address else SENDER, locale=locale,
        reason=case[0], cause=case[1]))
    assert long_lines(raw) == []
    msg = parse(raw)
    assert msg["In-Reply-To"] in (None, message_id)  # threads as is, or not at all
    assert (msg["In-Reply-To"] is None) == (len(f"In-Reply-To: {message_id}") > 998)


def test_a_long_message_id_still_threads() -> None:
    long_id = "<" + "a" * 80 + "@mail.example.com>"
    msg = parse(build_notice(notice(original_message_id=long_id)))
    assert msg["In-Reply-To"] == long_id and msg["References"] == long_id
