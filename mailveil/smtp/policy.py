"""The RCPT-time gate for a Postfix in front: a policy service (``check_policy_service``).

With Postfix as the MX, mailveil's listener sees a message only after Postfix accepted it;
a relay address refused there would have to be bounced by Postfix, to a sender who may be
forged (backscatter). So Postfix asks this service at each RCPT, with the Postfix policy
delegation protocol (http://www.postfix.org/SMTPD_POLICY_README.html): ``name=value`` lines
ending with an empty line, one answer ``action=...`` and an empty line, many requests per
connection. The verdict is the listener's own (:func:`mailveil.smtp.gate.rcpt_reply` over
the same store lookup), so Postfix refuses exactly what the listener would.

Why a policy service and not ``smtpd_proxy_filter`` or a lookup table: a lookup table
(``tcp_table``, ``socketmap``) answers for the recipient alone, and the gate also needs the
sender (only the other party may write); a proxy filter puts mailveil in the middle of
every SMTP session before Postfix's queue, so a slow scan or commit holds the sender and
Postfix's queue no longer decouples them. The policy service sees sender and recipient,
costs one store lookup per RCPT, and Postfix keeps its connections to it open. The
lookup of an accepted recipient is left in :class:`mailveil.smtp.vouched.Vouched`, so the
listener does not repeat it when Postfix relays the message a moment later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from mailveil.metrics import RCPT_REFUSED
from mailveil.smtp import replies
from mailveil.smtp.gate import Lookup, rcpt_reply
from mailveil.smtp.vouched import Vouched

log = logging.getLogger(__name__)

MAX_LINE = 2048  # Postfix's attributes are short; a longer line is not Postfix talking
MAX_ATTRIBUTES = 100
IDLE_SECONDS = 300.0  # Postfix closes idle policy connections after 300 s by default

DUNNO = "DUNNO"  # no opinion: Postfix goes on with its other restrictions


class PolicyError(ValueError):
    """A request that is not the policy delegation protocol: the connection is closed."""


def parse_request(lines: list[bytes]) -> dict[str, str]:
    """The attributes of one request (its lines, without the empty line that ends it)."""
    if len(lines) > MAX_ATTRIBUTES:
        raise PolicyError("too many attributes")
    request: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.decode("utf-8", "replace").partition("=")
        if not sep or not name:
            raise PolicyError("not name=value")
        request[name] = value
    return request


def recipient_of(request: Mapping[str, str]) -> str | None:
    """The recipient to look up, or ``None`` when the request is not for a RCPT command."""
    if request.get("request") != "smtpd_access_policy":
        raise PolicyError("not an access policy request")
    if request.get("protocol_state", "").upper() != "RCPT":
        return None
    return request.get("recipient") or None


def action(request: Mapping[str, str], lookup: Lookup | None) -> str:
    """The answer's action: ``DUNNO`` to let Postfix go on, else the listener's refusal
    (Postfix takes ``5xx``/``4xx`` text as a REJECT/DEFER with that reply)."""
    if lookup is None:
        return DUNNO
    return rcpt_reply(request.get("sender", ""), lookup) or DUNNO


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           lookup: Callable[[str], Lookup], vouched: Vouched) -> None:
    """Answer requests until Postfix closes the connection, idles, or speaks nonsense."""
    try:
        while True:
            lines: list[bytes] = []
            while line := (await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_SECONDS)
                           ).rstrip(b"\r\n"):
                if len(line) > MAX_LINE:
                    raise PolicyError("line too long")
                lines.append(line)
            request = parse_request(lines)
            recipient = recipient_of(request)
            try:
                found = None if recipient is None else await asyncio.to_thread(lookup, recipient)
            except Exception:
                log.exception("policy: recipient lookup failed")
                answer = replies.S451_STORE_DOWN
            else:
                answer = action(request, found)
                if answer == DUNNO and recipient is not None and found is not None:
                    vouched.put(request.get("sender", ""), recipient, found)
            if answer != DUNNO:
                RCPT_REFUSED.labels(code=answer[:9]).inc()  # as the listener counts its own
            writer.write(f"action={answer}\n\n".encode())
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass
    except (PolicyError, asyncio.LimitOverrunError) as exc:
        log.warning("policy: closing a connection that does not speak the protocol",
                    extra={"reason": str(exc)})
    finally:
        writer.close()


async def start(host: str, port: int, lookup: Callable[[str], Lookup], vouched: Vouched
                ) -> asyncio.Server:
    """A listening policy service; ``lookup`` is the listener's (a blocking store call),
    ``vouched`` the listener's too."""
    return await asyncio.start_server(
        lambda r, w: serve_connection(r, w, lookup, vouched), host=host, port=port,
        limit=MAX_LINE * 2)
