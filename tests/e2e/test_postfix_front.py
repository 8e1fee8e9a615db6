"""mailveil behind a real MX: Debian's Postfix in front of it (the MX of the relay domain,
asking mailveil's policy service at RCPT) and behind it (its smarthost), configured with
exactly deploy/postfix/main.cf and master.cf, ports aside. The world on the far side is the
receiving test server; the DNS is the test DNS server. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.message
import dns.query
import pytest

from mailveil.smtp import replies
from tests.conftest import RELAY_DOMAIN, Mailveil
from tests.e2e.test_refusals import parse_dsn
from tests.support import dns as test_dns_server
from tests.support import sqllog
from tests.support.client import CUSTOMER, SUPPLIER, archive, mail, register
from tests.support.dns import DKIM_SELECTOR, SPOOFED_DOMAIN, dkim_key
from tests.support.net import free_port, wait_for_port
from tests.support.postfix import POSTFIX, Postfix, deployed, running_postfix
from tests.support.sink import Sink

CLIENT = "127.0.0.2"  # the sender's server, as Postfix sees it (and forwards it to mailveil)
CLIENT_HELO = "mx.customer.example"
AUTHSERV_ID = "mx.reply.example.com"  # deploy/postfix's checkers
# The RCPT's booking lookup (mailveil.store.repository.booking_by_token), as executed; the
# worker reads its bookings with IN (...), the web role checks a new token without the join.
BOOKING_LOOKUP = re.compile(r"\bJOIN suppliers\b.* WHERE bookings\.(customer|supplier)_token = ")


@pytest.fixture
def ports() -> dict[str, int]:
    """The example's ports (deploy/postfix/), but mailveil's, and this test's free ones."""
    return {"25": free_port(), "10025": free_port(), "10040": free_port()}


@pytest.fixture
def extra_env(tmp_path: Path, ports: dict[str, int]) -> dict[str, str]:
    """mailveil as deploy/ runs it behind Postfix: the policy service on, Postfix trusted
    for XFORWARD, Postfix's second listener as the smarthost; a DKIM key the test DNS knows."""
    key = tmp_path / "dkim.pem"
    key.write_bytes(dkim_key())
    return {"MAILVEIL_POLICY_LISTEN": f"127.0.0.1:{ports['10040']}",
            "MAILVEIL_TRUSTED_PEERS": "127.0.0.1/32", "MAILVEIL_TRUSTED_AUTHSERV_ID": AUTHSERV_ID,
            "MAILVEIL_SMARTHOST": f"127.0.0.1:{ports['10025']}",
            "MAILVEIL_DKIM_KEY": str(key), "MAILVEIL_DKIM_SELECTOR": DKIM_SELECTOR}


@pytest.fixture
def postfix(mailveil: Mailveil, sink: Sink, ports: dict[str, int]) -> Iterator[Postfix]:
    """One Postfix with deploy/postfix's three services; what it delivers to the world goes
    to the receiving test server (``relayhost``). ``debug_peer_list`` logs the dialogues."""
    if not Path(POSTFIX).exists():
        pytest.fail(f"{POSTFIX} is missing (make system-packages installs postfix)")
    main, services = deployed({**ports, "2525": mailveil.smtp_port}, sink.port)
    with running_postfix(ports["25"], relay_domain=RELAY_DOMAIN,
                         next_hop_port=mailveil.smtp_port, services=services,
                         settings={**main, "debug_peer_list": "127.0.0.1"}) as running:
        yield running
        print(running.log_text()[-12000:])  # shown by pytest only when the test failed


def dkim_valid(raw: bytes) -> bool:
    """dkimpy's verdict, with the key from the test DNS server."""
    host, port = test_dns_server.test_dns().rsplit(":", 1)

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        answer = dns.query.udp(dns.message.make_query(name.decode(), "TXT"), host,
                               port=int(port), timeout=timeout)
        texts = [b"".join(r.strings) for rrset in answer.answer for r in rrset]
        return texts[0] if texts else None

    return bool(dkim.verify(raw, dnsfunc=lookup))


def send_to_mx(postfix: Postfix, sender: str, rcpts: list[str], data: bytes) -> dict[
        str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30, local_hostname=CLIENT_HELO,
                      source_address=(CLIENT, 0)) as smtp:
        return smtp.sendmail(sender, rcpts, data)


def test_a_message_goes_through_postfix_mailveil_and_postfix_signed(
        mailveil: Mailveil, sink: Sink, postfix: Postfix) -> None:
    relay = register(mailveil, "GYG-MX")["supplier_relay_address"]
    msg = mail(CUSTOMER, relay, "Meeting point", "Where do we meet?\n")
    assert send_to_mx(postfix, CUSTOMER, [relay], msg.as_bytes()) == {}
    [copy] = sink.wait_for(1, timeout=60)
    assert copy.rcpt_tos == (SUPPLIER,)
    assert dkim_valid(copy.data)
    # It left through Postfix: the copy's only trace header is Postfix's, from mailveil
    # (the sender's own Received lines never leave the relay: they name their hosts).
    [received] = re.findall(rb"^Received: (.*?)\r\n(?=\S)", copy.data, flags=re.M | re.S)
    assert b"by postfix-test.example (Postfix)" in received and CLIENT.encode() not in received
    # Postfix in front told mailveil who the client was; mailveil took it.
    log = postfix.log_text()
    assert re.search(rf"> 127\.0\.0\.1\[127\.0\.0\.1\]:{mailveil.smtp_port}: XFORWARD .*"
                     rf"ADDR={re.escape(CLIENT)}\b", log)
    assert re.search(rf"< 127\.0\.0\.1\[127\.0\.0\.1\]:{mailveil.smtp_port}: 250 2\.0\.0 Ok",
                     log)
    # The archive names that client, not Postfix (127.0.0.1, which said "postfix-test...").
    [entry] = archive(mailveil, "GYG-MX", 1)
    assert (entry["client_address"], entry["client_helo"]) == (CLIENT, CLIENT_HELO)


def test_unknown_and_unauthorised_addresses_are_refused_at_postfixs_rcpt(
        mailveil: Mailveil, sink: Sink, postfix: Postfix) -> None:
    relay = register(mailveil, "GYG-RCPT")["supplier_relay_address"]
    unknown = f"local-partner-000000000000@{RELAY_DOMAIN}"
    for sender, rcpt, reply in [(CUSTOMER, unknown, replies.S550_UNKNOWN),
                                ("mallory@elsewhere.example", relay, replies.S550_NOT_PARTY)]:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send_to_mx(postfix, sender, [rcpt], mail(sender, rcpt, "Hi", "Hi\n").as_bytes())
        [(code, text)] = refused.value.recipients.values()
        # Postfix's words around mailveil's: "5.1.1 <rcpt>: Recipient address rejected: ..."
        status, words = reply.removeprefix("550 ").split(" ", 1)
        assert code == 550 and text.decode().startswith(status) and text.decode().endswith(
            f"Recipient address rejected: {words}")
    # Nothing was queued for a bounce: Postfix never accepted them.
    assert "status=bounced" not in postfix.log_text()
    assert sink.messages == []


def test_a_sender_spoofing_a_party_is_refused(mailveil: Mailveil, sink: Sink,
                                              postfix: Postfix) -> None:
    """spoofed.example allows no host by SPF and asks for p=reject. The policy service
    passes the envelope (it names the party); the spoofer's own Authentication-Results in
    the name of Postfix's checkers are removed by Postfix (deploy/postfix's header_checks),
    so mailveil checks the message itself, with SPF for the client Postfix forwarded, and
    refuses it at DATA. Postfix's notice of that goes to the party's own registered
    address, never to a third party."""
    party = f"ann@{SPOOFED_DOMAIN}"
    relay = register(mailveil, "GYG-SPOOF", customer=party)["supplier_relay_address"]
    msg = mail(party, relay, "Pay here", "New IBAN\n")
    msg["Authentication-Results"] = f"{AUTHSERV_ID}; spf=pass; dmarc=pass header.from={party}"
    send_to_mx(postfix, party, [relay], msg.as_bytes())
    [notice] = sink.wait_for(1, timeout=60)
    assert notice.rcpt_tos == (party,) and notice.mail_from == ""
    assert b"5.7.26" in notice.data  # mailveil's DMARC refusal, as Postfix reports it
    assert sink.to(SUPPLIER) == []


def test_a_downstream_550_reaches_the_sender_as_the_usual_notice(
        mailveil: Mailveil, sink: Sink, postfix: Postfix) -> None:
    """The world refuses the copy: Postfix behind bounces it to mailveil's VERP address
    (through Postfix's own transport to mailveil), and mailveil tells the sender."""
    relay = register(mailveil, "GYG-550")["supplier_relay_address"]
    sink.rcpt_reply[SUPPLIER] = "550 5.1.1 <bookings@sunny-tours.example>: no such user"
    send_to_mx(postfix, CUSTOMER, [relay], mail(CUSTOMER, relay, "Lunch", "Included?\n")
               .as_bytes())
    [notice] = sink.wait_for(1, timeout=60)
    assert notice.rcpt_tos == (CUSTOMER,)
    _, text, fields = parse_dsn(notice)
    assert "Lunch" in text and str(fields["Status"]).startswith("5.")
    assert b"sunny-tours" not in notice.data
    assert dkim_valid(notice.data)


def test_the_upstreams_results_are_believed_from_trusted_peers_only(
        mailveil: Mailveil, sink: Sink, postfix: Postfix) -> None:
    """Mail whose results a trusted peer's checkers wrote is judged by them: a party at
    spoofed.example that the upstream found DMARC-aligned is relayed, though this DNS would
    refuse it. From anyone else, XFORWARD is an unknown command and the same fields are the
    sender's word: mailveil checks, and refuses."""
    party = f"ann@{SPOOFED_DOMAIN}"
    relay = register(mailveil, "GYG-TRUST", customer=party)["supplier_relay_address"]
    msg = mail(party, relay, "Checked upstream", "Hello\n")
    msg["Authentication-Results"] = (f"{AUTHSERV_ID}; dmarc=pass (p=reject dis=none) "
                                     f"header.from={SPOOFED_DOMAIN}")
    refused: dict[str, tuple[int, bytes]] = {}
    for source in ("127.0.0.1", CLIENT):  # MAILVEIL_TRUSTED_PEERS=127.0.0.1/32
        with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30,
                          source_address=(source, 0)) as smtp:
            smtp.ehlo("mx.reply.example.com")
            assert smtp.has_extn("xforward") is (source != CLIENT)
            code, _ = smtp.docmd("XFORWARD", "NAME=mx.customer.example ADDR=192.0.2.7 "
                                             "HELO=mx.customer.example")
            assert code == (250 if source != CLIENT else 500)
            try:
                smtp.sendmail(party, [relay], msg.as_bytes())
            except smtplib.SMTPDataError as exc:
                error = exc.smtp_error
                refused[source] = (exc.smtp_code,
                                   error if isinstance(error, bytes) else error.encode())
    assert list(refused) == [CLIENT] and refused[CLIENT][0] == 550
    assert b"5.7.26" in refused[CLIENT][1]
    [copy] = sink.wait_for(1, timeout=60)  # through Postfix behind
    assert copy.rcpt_tos == (SUPPLIER,) and b"Checked upstream" in copy.data


def test_postfix_and_mailveil_look_a_recipient_up_once(
        mailveil: Mailveil, sink: Sink, postfix: Postfix, ports: dict[str, int],
        tmp_path: Path) -> None:
    """The policy service's lookup, which let Postfix accept the recipient, serves mailveil's
    own RCPT when Postfix relays the message: one booking lookup per message, not two. An
    unknown address is still refused at Postfix's RCPT, after its one lookup."""
    log = tmp_path / "sql.log"
    mailveil.stop()  # again, counting its statements; Postfix has not asked it anything yet
    mailveil.env[sqllog.ENV] = str(log)
    mailveil.env["MAILVEIL_POLICY_TRUST_SECONDS"] = "600"  # the count must not hang on speed
    mailveil.module = "tests.support.sqllog"
    mailveil.start()
    wait_for_port(ports["10040"], proc=mailveil.proc)

    def lookups() -> int:
        return sum(1 for statement in sqllog.statements(log) if BOOKING_LOOKUP.search(statement))

    relay = register(mailveil, "GYG-ONCE")["supplier_relay_address"]
    before = lookups()
    for n in range(3):
        msg = mail(CUSTOMER, relay, f"Question {n}", "Is lunch included?\n")
        assert send_to_mx(postfix, CUSTOMER, [relay], msg.as_bytes()) == {}
    copies = sink.wait_for(3, timeout=60)
    assert [c.rcpt_tos for c in copies] == [(SUPPLIER,)] * 3
    assert lookups() == before + 3  # the policy service's: mailveil's RCPT asked none
    unknown = f"local-partner-000000000000@{RELAY_DOMAIN}"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send_to_mx(postfix, CUSTOMER, [unknown], mail(CUSTOMER, unknown, "Hi", "Hi\n").as_bytes())
    [(code, _)] = refused.value.recipients.values()
    assert code == 550
    assert lookups() == before + 4
