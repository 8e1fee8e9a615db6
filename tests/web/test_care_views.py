"""What the console shows of a message, and the export's files: pure functions of bytes."""

from __future__ import annotations

import hashlib
import io
import zipfile
from email.message import EmailMessage

from mailveil.web.care.views import MANIFEST, TRANSCRIPT, dispute_zip, html_of, manifest, shown


def _message(html: str | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = "=?utf-8?q?Ann_L=C3=A9e?= <ann@example.org>"
    m["Subject"] = "<b>not markup</b>"
    m.set_content("Bonjour\n")
    if html is not None:
        m.add_alternative(html, subtype="html")
    return m.as_bytes()


def test_headers_are_decoded_in_order_and_the_text_is_the_plain_part() -> None:
    s = shown(_message("<p>hi</p>"))
    assert s.headers[0] == ("From", "Ann Lée <ann@example.org>")
    assert ("Subject", "<b>not markup</b>") in s.headers  # escaped when rendered, not here
    assert s.text == "Bonjour\n" and s.has_html


def test_a_message_without_html_has_none() -> None:
    assert html_of(_message()) is None
    assert not shown(_message()).has_html
    assert html_of(_message("<p>hi</p>")) == "<p>hi</p>\n"


def test_a_broken_charset_still_shows_its_text() -> None:
    raw = (b"From: a@example.org\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n"
           b"caf\xc3\xa9\r\n")
    assert shown(raw).text.startswith("café")


def test_the_manifest_lists_every_file_and_checks_with_sha256sum_format() -> None:
    entries = [("received/1.eml", b"one"), ("delivered/2.eml", b"two")]
    with zipfile.ZipFile(io.BytesIO(dispute_zip(entries, "<p>t</p>"))) as z:
        files = {n: z.read(n) for n in z.namelist()}
    assert set(files) == {"received/1.eml", "delivered/2.eml", TRANSCRIPT, MANIFEST}
    lines = files[MANIFEST].decode().splitlines()
    assert lines == [f"{hashlib.sha256(files[n]).hexdigest()}  {n}"
                     for n in ("received/1.eml", "delivered/2.eml", TRANSCRIPT)]
    assert manifest([]) == b""
