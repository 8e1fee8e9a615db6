"""What the operator and a care agent do in the console tests: add an agent with the CLI,
sign in through the printed link, and a conversation holding an HTML message that tries
script, remote images and a form."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.conftest import REPO, Mailveil
from tests.support.client import CUSTOMER, mail, send
from tests.support.portal import base, use_link

AGENT = "agent@care.tourly.example"
LINK = re.compile(r"^http://127\.0\.0\.1:\d+/care/link/[A-Za-z0-9_-]+$", re.MULTILINE)
HOSTILE_HTML = (
    '<html><body><p id="hello">Hello from the HTML part</p>'
    '<script>document.title = "pwned"; fetch("http://127.0.0.1:{port}/script");</script>'
    '<img src="http://127.0.0.1:{port}/pixel.png" alt="tracker">'
    '<form action="http://127.0.0.1:{port}/form" method="post"><input name="card">'
    '<button>Pay</button></form></body></html>')


def care(mv: Mailveil, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailveil", "care", *args], env=mv.env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def add_agent(mv: Mailveil, email: str = AGENT) -> str:
    """The one-time link ``mailveil care add-agent`` prints."""
    done = care(mv, "add-agent", email)
    assert done.returncode == 0, done.stderr
    found = LINK.search(done.stdout)
    assert found, done.stdout
    return found.group(0)


@contextmanager
def agent_client(mv: Mailveil, email: str = AGENT) -> Iterator[httpx.Client]:
    """A browser signed in to the console as a (new) agent."""
    with httpx.Client(base_url=base(mv), timeout=10) as client:
        r = use_link(client, add_agent(mv, email))
        assert r.status_code == 303 and r.headers["location"] == "/care/", r.text
        yield client


def send_hostile_html(mv: Mailveil, booking: dict[str, str], port: int) -> None:
    msg = mail(CUSTOMER, booking["supplier_relay_address"], "Invoice attached",
               "Hello from the text part\n")
    msg.add_alternative(HOSTILE_HTML.format(port=port), subtype="html")
    send(mv, msg, CUSTOMER, [booking["supplier_relay_address"]])


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def check_export(files: dict[str, bytes], entries: list[dict[str, Any]]) -> None:
    """The manifest names every other file with its digest, and each .eml's digest is the
    one the archive recorded."""
    manifest = {}
    for line in files["SHA256SUMS"].decode().splitlines():
        digest, name = line.split("  ", 1)
        manifest[name] = digest
    assert set(manifest) == set(files) - {"SHA256SUMS"}
    for name, digest in manifest.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest
    archived = {f"received/{e['inbound_id']}.eml": e["sha256"] for e in entries}
    archived |= {f"delivered/{o['id']}.eml": o["sha256"]
                 for e in entries for o in e["outbound"]}
    assert {n: d for n, d in manifest.items() if n.endswith(".eml")} == archived
    assert "transcript.html" in manifest
