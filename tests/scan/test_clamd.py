import asyncio
import base64
import io
import random
import signal
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailveil.scan.clamd import Clamd, Finding, ScannerUnavailable, scan_message
from tests.scan.clamd_fixture import ClamdInfo, eicar, forwarded_with_bad_padding
from tests.support.net import free_port

MB = 1024 * 1024


@pytest.fixture(params=["tcp", "unix"])
def scanner(request: pytest.FixtureRequest, clamd: ClamdInfo) -> Clamd:
    address = clamd.tcp_address if request.param == "tcp" else str(clamd.socket_path)
    return Clamd(address, timeout=30)


def _message(*attachments: tuple[str, bytes]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "customer-0123456789ab@reply.example.com"
    msg["To"] = "ops@supplier.example"
    msg["Subject"] = "Your tickets"
    msg.set_content("Tickets attached.\n")
    for filename, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream",
                           filename=filename)
    return msg.as_bytes()


def _zip(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def test_ping(scanner: Clamd) -> None:
    asyncio.run(scanner.ping())


def test_clean_message_is_clean(scanner: Clamd) -> None:
    raw = _message(("map.pdf", b"%PDF-1.4\n% a harmless map\n"))
    result = asyncio.run(scan_message(raw, scanner))
    assert result.clean
    assert result.findings == ()


def test_eicar_attachment_is_found_with_its_filename(scanner: Clamd) -> None:
    raw = _message(("map.pdf", b"%PDF-1.4\n"), ("ticket.com", eicar()))
    result = asyncio.run(scan_message(raw, scanner))
    assert not result.clean
    [finding] = result.findings
    assert finding.filename == "ticket.com"
    assert finding.part == 3  # 0 multipart, 1 body, 2 map.pdf, 3 ticket.com
    assert finding.signature.startswith("Test.EICAR")


def test_text_attachment_is_scanned_as_a_part(scanner: Clamd) -> None:
    msg = EmailMessage()
    msg.set_content("See the notes.\n")
    msg.add_attachment(eicar().decode("ascii"), filename="notes.txt")
    result = asyncio.run(scan_message(msg.as_bytes(), scanner))
    assert [f.filename for f in result.findings] == ["notes.txt"]


def test_eicar_inside_a_zip_is_found(scanner: Clamd) -> None:
    raw = _message(("tickets.zip", _zip("ticket.com", eicar())))
    result = asyncio.run(scan_message(raw, scanner))
    [finding] = result.findings
    assert finding.filename == "tickets.zip"
    assert finding.signature.startswith("Test.EICAR")


EICAR_B64 = base64.encodebytes(eicar()).replace(b"\n", b"\r\n")
HEAD = b"From: a@x.example\r\nMIME-Version: 1.0\r\n"
ATTACHMENT = (b"Content-Type: application/octet-stream; name=\"t.com\"\r\n"
              b"Content-Disposition: attachment; filename=\"t.com\"\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n")
BROKEN = {
    # The declared boundary never appears: the stdlib sees one opaque part; clamd's own
    # mail parser still finds the attachment in the whole-message scan.
    "boundary_mismatch": HEAD + b"Content-Type: multipart/mixed; boundary=\"AAA\"\r\n\r\n"
    b"--BBB\r\nContent-Type: text/plain\r\n\r\nhi\r\n--BBB\r\n" + ATTACHMENT + EICAR_B64
    + b"--BBB--\r\n",
    # Says base64 but is not: decoding garbles it, the raw bytes still carry it.
    "encoding_lies": HEAD + b"Content-Type: multipart/mixed; boundary=\"AAA\"\r\n\r\n--AAA\r\n"
    + ATTACHMENT + eicar() + b"\r\n--AAA--\r\n",
    # Padding stripped, junk lines inside the base64, no closing boundary.
    "damaged_base64": HEAD + b"Content-Type: multipart/mixed; boundary=\"AAA\"\r\n\r\n--AAA\r\n"
    + ATTACHMENT + EICAR_B64.replace(b"=", b"").replace(b"\r\n", b"\r\n!!\r\n"),
    # No blank line after the top headers: clamd does not take it for mail at all, the
    # stdlib walk still reaches the part.
    "no_header_separator": b"Content-Type: multipart/mixed; boundary=AAA\r\n--AAA\r\n"
    b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + EICAR_B64 + b"--AAA--\r\n",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_eicar_in_broken_mime_is_found(scanner: Clamd, case: str) -> None:
    result = asyncio.run(scan_message(BROKEN[case], scanner))
    assert not result.clean
    assert result.findings[0].signature.startswith("Test.EICAR")


def test_base64_encoded_forwarded_message(scanner: Clamd) -> None:
    """RFC 2046 forbids base64 on message/rfc822, so nothing else decodes it: we do."""
    inner = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    raw = (HEAD + b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(inner + EICAR_B64))
    assert not asyncio.run(scan_message(raw, scanner)).clean


def test_forwarded_message_with_bad_base64_padding_is_still_scanned(scanner: Clamd) -> None:
    """Strict decoding raised "Incorrect padding" and the sender got a 500 (issue 12)."""
    inner = HEAD + b"Content-Type: multipart/mixed; boundary=\"AAA\"\r\n\r\n--AAA\r\n"
    raw = HEAD + forwarded_with_bad_padding(inner + ATTACHMENT + EICAR_B64 + b"--AAA--\r\n")
    findings = asyncio.run(scan_message(raw, scanner)).findings
    assert findings and {f.signature[:10] for f in findings} == {"Test.EICAR"}


def test_a_13_mb_clean_attachment_scans(scanner: Clamd) -> None:
    raw = _message(("video.bin", random.Random(13).randbytes(13 * MB)))
    assert asyncio.run(scan_message(raw, scanner)).clean


def test_above_stream_max_length_is_no_verdict(scanner: Clamd) -> None:
    with pytest.raises(ScannerUnavailable):
        asyncio.run(scanner.instream(bytes(26 * MB)))  # the fixture's limit is 25M


def _fails_fast(scanner: Clamd, limit: float) -> None:
    started = time.monotonic()
    with pytest.raises(ScannerUnavailable):
        asyncio.run(scan_message(_message(("a.bin", b"x")), scanner))
    assert time.monotonic() - started < limit


def test_nothing_listening_on_the_port() -> None:
    _fails_fast(Clamd(f"127.0.0.1:{free_port()}"), limit=1.0)


def test_no_socket_at_the_path(tmp_path: Path) -> None:
    _fails_fast(Clamd(f"{tmp_path}/clamd.sock"), limit=1.0)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_stalled_clamd_times_out(own_clamd: ClamdInfo, transport: str) -> None:
    address = own_clamd.tcp_address if transport == "tcp" else str(own_clamd.socket_path)
    own_clamd.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    _fails_fast(Clamd(address, timeout=0.5), limit=2.0)


def test_clamd_killed_mid_scan(own_clamd: ClamdInfo) -> None:
    scanner = Clamd(own_clamd.tcp_address, timeout=30)
    own_clamd.process.send_signal(signal.SIGSTOP)  # so the scan is surely under way

    async def scan_then_kill() -> None:
        scan = asyncio.create_task(scanner.instream(bytes(13 * MB)))
        await asyncio.sleep(0.3)
        own_clamd.process.kill()
        await scan

    started = time.monotonic()
    with pytest.raises(ScannerUnavailable):
        asyncio.run(scan_then_kill())
    assert time.monotonic() - started < 3.0


def test_address_must_be_host_port_or_a_path() -> None:
    with pytest.raises(ValueError):
        Clamd("localhost")


def test_finding_names_the_whole_message_when_no_part_holds_it(scanner: Clamd) -> None:
    raw = HEAD + b"Content-Type: text/plain\r\n\r\n" + eicar() + b"\r\n"
    result = asyncio.run(scan_message(raw, scanner))
    assert result.findings == (Finding("Test.EICAR.Pattern.UNOFFICIAL", None, None),)
