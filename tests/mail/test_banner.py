"""The banner on relayed messages: the recipient's language, the right facts, safe HTML."""

from __future__ import annotations

import operator
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.mail.banner import banner
from mailveil.mail.rewrite import RewritePlan, rewrite
from tests.support.long_lines import long_lines

UNTIL = datetime(2025, 3, 12, 17, 0, tzinfo=UTC)


class Tags(HTMLParser):
    """Records the element structure, attributes and text of a fragment."""

    VOID = frozenset({"br", "img", "hr"})

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.text = ""
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data: str) -> None:
        self.text += data


@pytest.mark.parametrize(("locale", "lines"), [
    ("en", ["Ann wrote to you about booking GYG-7Q2X.", "goes through Tourly",
            "You can write to this customer until March 12, 2025."]),
    ("en-GB", ["until 12 March 2025."]),
    ("fr", ["Ann vous a écrit au sujet de la réservation GYG-7Q2X.", "passe par Tourly",
            "Vous pouvez écrire à ce client jusqu\u2019au 12 mars 2025."]),
    ("th-TH", ["Ann ส่งข้อความถึงคุณเกี่ยวกับการจองหมายเลข GYG-7Q2X", "ส่งผ่าน Tourly",
               "จนถึงวันที่ 12 มีนาคม ค.ศ. 2025"]),
    ("de", ["Ann hat Ihnen zur Buchung GYG-7Q2X geschrieben.", "über Tourly",
            "bis zum 12. März 2025 schreiben."]),
    ("es", ["Ann le ha escrito sobre la reserva GYG-7Q2X.", "pasará por Tourly",
            "hasta el 12 de marzo de 2025."]),
])
def test_supplier_banner_in_the_recipients_language(locale: str, lines: list[str]) -> None:
    b = banner(locale, "Ann", "GYG-7Q2X", "Tourly", UNTIL, recipient_is_supplier=True)
    for line in lines:
        assert line in b.text
        assert line in Tags(b.html).text


def test_unknown_language_gets_english() -> None:
    b = banner("pt-BR", "Ann", "GYG-7Q2X", "Tourly", UNTIL, recipient_is_supplier=True)
    assert "Ann wrote to you about booking GYG-7Q2X." in b.text
    assert "March 12, 2025" in b.text


def test_customers_are_not_shown_a_closing_date() -> None:
    b = banner("en", "Tours Ann", "GYG-7Q2X", "Tourly", UNTIL, recipient_is_supplier=False)
    assert "until" not in b.text and "2025" not in b.html
    assert b.text.splitlines()[:2] == [
        "Tours Ann wrote to you about booking GYG-7Q2X.",
        "Reply to this e-mail as usual: your reply goes through Tourly, and neither of you "
        "sees the other's e-mail address.",
    ]


def test_supplier_without_a_known_end_gets_no_date_line() -> None:
    b = banner("fr", "Ann", "GYG-7Q2X", "Tourly", None, recipient_is_supplier=True)
    assert "jusqu\u2019au" not in b.text and len(b.text.splitlines()) == 3


def test_a_missing_display_name_is_not_an_empty_sentence() -> None:
    b = banner("de", "  ", "GYG-7Q2X", "Tourly", None, recipient_is_supplier=False)
    assert b.text.startswith("Neue Nachricht zur Buchung GYG-7Q2X.\n")


def test_text_ends_with_a_separator_line() -> None:
    b = banner("en", "Ann", "GYG-7Q2X", "Tourly", None, recipient_is_supplier=False)
    assert b.text.endswith("\n" + "-" * 40 + "\n")


def test_every_value_is_escaped_in_html() -> None:
    evil_name = '<script>alert("x")</script> & Co'
    b = banner("en", evil_name, "GYG<1>&2", "Tour\"ly<b>", UNTIL, recipient_is_supplier=True)
    assert "<script" not in b.html and "<b>" not in b.html
    tags = Tags(b.html)
    assert not tags.open
    assert {tag for tag, _ in tags.starts} == {"div", "table", "tr", "td", "p", "strong"}
    assert evil_name in tags.text and "GYG<1>&2" in tags.text and 'Tour"ly<b>' in tags.text
    assert evil_name in b.text  # the text part is plain text: nothing to escape


def test_html_is_one_inline_styled_div() -> None:
    b = banner("th", "Ann", "GYG-7Q2X", "Tourly", UNTIL, recipient_is_supplier=True)
    tags = Tags(b.html)
    tag, attrs = tags.starts[0]
    assert tag == "div" and attrs["lang"] == "th" and "border" in (attrs["style"] or "")
    assert b.html.endswith("</div>")
    assert "<style" not in b.html and "class=" not in b.html
    strong = [t for t, _ in tags.starts if t == "strong"]
    assert len(strong) == 4  # name, reference, platform, date


def test_the_banner_names_no_address() -> None:
    b = banner("en", "Ann", "GYG-7Q2X", "Tourly", UNTIL, recipient_is_supplier=True)
    assert "@" not in b.text and "@" not in b.html


def test_operator_restyles_the_box_and_values_stay_escaped() -> None:
    b = banner("en", "Ann <b>", "R-1", "Tourly", None, False,
               box_style="border-left:4px solid #ff5533")
    assert 'style="border-left:4px solid #ff5533"' in b.html
    assert "Ann &lt;b&gt;" in b.html


@pytest.mark.parametrize(("locale", "warning"), [
    ("en", "We could not verify that this message comes from Sunny <b>Tours</b>."),
    ("fr", "Nous n\u2019avons pas pu vérifier que ce message vient bien de Sunny <b>Tours</b>."),
    ("de", "Wir konnten nicht überprüfen, ob diese Nachricht wirklich von Sunny <b>Tours</b> "
           "stammt."),
    ("es", "No hemos podido verificar que este mensaje proceda de Sunny <b>Tours</b>."),
    ("th", "เราไม่สามารถยืนยันได้ว่าข้อความนี้มาจาก Sunny <b>Tours</b> จริง"),
])
def test_unverified_sender_is_said_in_the_recipients_language(locale: str, warning: str) -> None:
    warned = banner(locale, "Sunny <b>Tours</b>", "GYG-1", "Tourly", None, False,
                    unverified=True)
    assert warned.text.splitlines()[1] == warning
    assert Tags(warned.html).text.count(warning) == 1  # the name escaped, shown as text
    plain = banner(locale, "Sunny <b>Tours</b>", "GYG-1", "Tourly", None, False)
    assert warning not in plain.text and warning not in Tags(plain.html).text


def test_unverified_sender_without_a_name() -> None:
    warned = banner("en", " ", "GYG-1", "Tourly", None, False, unverified=True)
    assert "We could not verify who sent this message." in warned.text.splitlines()


ODD_TEXT = st.one_of(
    st.text(max_size=3000),
    st.builds(operator.mul, st.sampled_from(["x", "é", "ไ", "😀", "<b>", "&", "a b", "\n"]),
              st.integers(0, 2500)),
)
RELAYED = (b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           + "Bonjour, à demain.\r\n".encode() + b"--b\r\n"
           b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           + "<html><body><p>Bonjour, à demain.</p></body></html>\r\n".encode() + b"--b--\r\n")


@settings(max_examples=150, deadline=None)
@given(name=ODD_TEXT, reference=ODD_TEXT, platform=ODD_TEXT, style=ODD_TEXT,
       locale=st.sampled_from(["en", "fr", "th", "de", "es"]), supplier=st.booleans(),
       unverified=st.booleans())
def test_relayed_mail_has_no_line_over_998_whatever_the_names(
        name: str, reference: str, platform: str, style: str, locale: str, supplier: bool,
        unverified: bool) -> None:
    b = banner(locale, name, reference, platform, UNTIL, supplier, style, unverified)
    plan = RewritePlan(from_name=name, from_address="customer-1@reply.example.com",
                       to_name="Bob", to_address="bob@tours.example", message_id="<m@r.example>",
                       in_reply_to=(), references=(), replacements={},
                       banner_text=b.text, banner_html=b.html)
    assert long_lines(rewrite(RELAYED, plan)) == []


@settings(max_examples=100, deadline=None)
@given(name=st.text(min_size=1, max_size=200),
       reference=st.from_regex(r"[A-Z0-9-]{1,64}", fullmatch=True),
       locale=st.sampled_from(["en", "fr", "th", "de", "es"]), unverified=st.booleans())
def test_a_banner_of_names_the_api_takes_keeps_its_lines_short(
        name: str, reference: str, locale: str, unverified: bool) -> None:
    """So the banner alone never makes a relayed part quoted-printable."""
    b = banner(locale, name, reference, "Tourly", UNTIL, True, unverified=unverified)
    assert long_lines(b.text.encode()) == [] and long_lines(b.html.encode()) == []
