"""Every reply the listener gives, named, with its enhanced status code (RFC 3463).

Senders' mail servers show these texts to people, and operators grep logs for them, so
each says plainly what happened and none names a real address.
"""

from typing import Final

S250_QUEUED: Final = "250 2.0.0 Ok: queued as {id}"
S250_RCPT_OK: Final = "250 2.1.5 Ok"
S550_UNKNOWN: Final = "550 5.1.1 No such relay address here"
S550_NOT_PARTY: Final = ("550 5.7.1 This relay address accepts mail only from the other party "
                         "of its booking, from the address registered for it")
S550_NULL_SENDER: Final = "550 5.7.1 Relay addresses do not accept mail from the null sender"
S452_TOO_MANY_RCPTS: Final = "452 4.5.3 Too many recipients"
S451_STORE_DOWN: Final = "451 4.3.0 Temporary storage problem, please try again later"
S451_SCANNER_DOWN: Final = "451 4.7.1 Attachment scanner unavailable, please try again later"
S421_SHUTTING_DOWN: Final = "421 4.3.2 Service shutting down, please try again later"
S554_NO_VALID_RCPT: Final = "554 5.5.1 No valid recipients"
