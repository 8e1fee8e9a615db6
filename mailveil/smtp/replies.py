"""Every reply the listener gives, named, with its enhanced status code (RFC 3463).

Senders' mail servers show these texts to people, and operators grep logs for them, so
each says plainly what happened and none names a real address.
"""

from typing import Final

from mailveil.authn.authenticity import FromShape, Refusal

S250_QUEUED: Final = "250 2.0.0 Ok: queued as {id}"
S250_RCPT_OK: Final = "250 2.1.5 Ok"
S550_UNKNOWN: Final = "550 5.1.1 No such relay address here"
S550_NOT_PARTY: Final = ("550 5.7.1 This relay address accepts mail only from the other party "
                         "of its booking, from the address registered for it")
S550_NULL_SENDER: Final = "550 5.7.1 Relay addresses do not accept mail from the null sender"
S452_TOO_MANY_RCPTS: Final = "452 4.5.3 Too many recipients"
S451_STORE_DOWN: Final = "451 4.3.0 Temporary storage problem, please try again later"
# A bug of ours must never bounce the sender's mail: a 5xx would, a 4xx makes it retry.
S451_INTERNAL: Final = "451 4.3.0 Temporary problem here, please try again later (trace {trace})"
S451_SCANNER_DOWN: Final = "451 4.7.1 Attachment scanner unavailable, please try again later"
S421_SHUTTING_DOWN: Final = "421 4.3.2 Service shutting down, please try again later"
S554_NO_VALID_RCPT: Final = "554 5.5.1 No valid recipients"

# Hostile or broken clients. Every 421 closes the connection (RFC 5321 3.8).
S421_TIMEOUT: Final = "421 4.4.2 Nothing received for too long, closing connection"
S421_TOO_MANY_CONNECTIONS: Final = "421 4.7.0 Too many connections, please try again later"
S421_TOO_MANY_REFUSED: Final = "421 4.7.0 Too many refused recipients, closing connection"
S500_COMMAND_TOO_LONG: Final = "500 5.5.2 Command line too long"
S501_CONTROL_IN_HOSTNAME: Final = "501 5.5.2 Control characters are not allowed in a host name"
S552_TOO_BIG: Final = "552 5.3.4 Message too big"
S554_EARLY_DATA: Final = ("554 5.5.0 Message data sent before the 354 reply; "
                          "wait for it (RFC 2920), closing connection")
S554_NUL: Final = ("554 5.6.0 Message contains a NUL character (byte 0), which mail text "
                   "cannot carry; binary data must be encoded")
S554_TLS_ACTIVE: Final = "554 5.5.1 TLS is already active"  # RFC 3207 4.2, Postfix's words

# Limits per client address and per sender (mailveil/smtp/limits.py).
S421_CLIENT_SESSIONS: Final = ("421 4.7.0 Too many simultaneous connections from your address "
                               "(at most {limit}), please try again later")
S421_CLIENT_RATE: Final = ("421 4.7.0 Too many new connections from your address (at most "
                           "{count} in {seconds} seconds), please try again later")
S421_SESSION_TOO_LONG: Final = ("421 4.7.0 Session took too long or data arrived too slowly, "
                                "closing connection")
S421_COOLDOWN: Final = ("421 4.7.0 Too many unknown relay addresses from your address, "
                        "please try again in {minutes} minutes")
S451_SENDER_RATE: Final = ("451 4.7.1 Too many messages from this sender to this conversation "
                           "(at most {count} in {seconds} seconds), please try again in "
                           "{retry} seconds")

# The DATA-time sender check (mailveil/authn/authenticity.py), RFC 7372's codes where it
# has one. None names an address.
S550_FROM_MISSING: Final = ("550 5.7.1 The message has no From header: it must show exactly "
                            "one sender address")
S550_FROM_SEVERAL_FIELDS: Final = ("550 5.7.1 The message has several From headers: it must "
                                   "have exactly one")
S550_FROM_SEVERAL_ADDRESSES: Final = ("550 5.7.1 The From header shows several addresses: it "
                                      "must show exactly one")
S550_FROM_GROUP: Final = ("550 5.7.1 The From header is a group: it must show the sender's "
                          "own address")
S550_FROM_NO_ADDRESS: Final = ("550 5.7.1 The From header shows no readable address: it must "
                               "show the sender's own address")
S550_FROM_MISMATCH: Final = ("550 5.7.1 The From header must show the sender address "
                             "registered for this booking")
S550_DMARC_FAIL: Final = ("550 5.7.26 Message fails DMARC authentication and the sender's "
                          "domain asks receivers to refuse such mail")
S550_SPF_FAIL: Final = ("550 5.7.23 The sending server is not allowed by the SPF record of the "
                        "sender's domain, and no valid DKIM signature of that domain covers "
                        "the message")
S550_UNVERIFIED: Final = ("550 5.7.27 The sender's domain publishes no SPF, DKIM or DMARC "
                          "that proves it sent this message, and this relay accepts only mail "
                          "it can verify")
S451_SENDER_DNS: Final = ("451 4.4.3 The sender's SPF, DKIM or DMARC records cannot be looked "
                          "up now, please try again later")

FROM_REFUSED: Final[dict[FromShape, str]] = {
    FromShape.MISSING: S550_FROM_MISSING,
    FromShape.SEVERAL_FIELDS: S550_FROM_SEVERAL_FIELDS,
    FromShape.SEVERAL_ADDRESSES: S550_FROM_SEVERAL_ADDRESSES,
    FromShape.GROUP: S550_FROM_GROUP,
    FromShape.NO_ADDRESS: S550_FROM_NO_ADDRESS,
}
SENDER_REFUSED: Final[dict[Refusal, str]] = {
    Refusal.FROM_MISMATCH: S550_FROM_MISMATCH,
    Refusal.DMARC_FAIL: S550_DMARC_FAIL,
    Refusal.SPF_FAIL: S550_SPF_FAIL,
    Refusal.UNVERIFIED: S550_UNVERIFIED,
    Refusal.DNS_TEMPFAIL: S451_SENDER_DNS,
}


def sender_refused(refusal: Refusal, shape: FromShape) -> str:
    """The reply for a message the sender check refuses; a From of the wrong shape is told
    which shape it has."""
    return FROM_REFUSED[shape] if refusal is Refusal.FROM_SHAPE else SENDER_REFUSED[refusal]
