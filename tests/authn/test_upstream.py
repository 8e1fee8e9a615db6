"""Results of a trusted upstream (RFC 8601), as OpenDMARC, OpenDKIM and policyd-spf write
them: read for the configured authserv-id only, and judged as mailveil's own checks are."""

from __future__ import annotations

from mailveil.authn.authenticity import FromShape, Verdict
from mailveil.authn.upstream import trusted_results

ID = "mx.reply.example.com"
SENDER = "ann@customer.example"


def head(*fields: str, sender: str = SENDER) -> bytes:
    return "".join(f"{f}\r\n" for f in (*fields, f"From: Ann <{sender}>", "Subject: hi")
                   ).encode() + b"\r\n"


def test_the_checkers_fields_together_decide() -> None:
    """Three fields, one per checker, folded as milters fold them."""
    result = trusted_results(head(
        f"Authentication-Results: {ID};\r\n\tdmarc=pass (p=reject dis=none) "
        "header.from=customer.example",
        f"Authentication-Results: {ID} (1024-bit key; unprotected)\r\n\theader.d=customer.example"
        " header.i=@customer.example header.b=\"AbCd\"; dkim=pass (1024-bit key) "
        "header.d=customer.example",
        f"Authentication-Results: {ID}; spf=pass (sender SPF authorized) "
        f"smtp.mailfrom={SENDER}"), ID, mail_from=SENDER)
    assert result is not None
    assert (result.spf, result.dkim, result.dmarc, result.policy) == (
        "pass", (("customer.example", "pass"),), "pass", "reject")
    assert result.verdict is Verdict.ACCEPT and result.verified


def test_other_authserv_ids_are_not_read() -> None:
    """The sender's own claims, or another hop's, say nothing: mailveil checks itself."""
    assert trusted_results(head("Authentication-Results: mx.elsewhere.example; dmarc=pass",
                                f"Authentication-Results: {ID}.evil.example; dmarc=pass"),
                           ID, mail_from=SENDER) is None


def test_a_dmarc_fail_is_refused_unless_the_policy_is_none() -> None:
    for field, verdict in [("dmarc=fail (p=reject dis=reject) header.from=c.example",
                            Verdict.REJECT),
                           ("dmarc=fail policy.dmarc=quarantine header.from=c.example",
                            Verdict.REJECT),
                           ("dmarc=fail header.from=c.example", Verdict.REJECT),  # unknown
                           ("dmarc=fail (p=none dis=none) header.from=c.example",
                            Verdict.ACCEPT)]:
        result = trusted_results(head(f"Authentication-Results: {ID}; {field}"), ID,
                                 mail_from=SENDER)
        assert result is not None and result.verdict is verdict, field


def test_the_from_shape_is_still_the_messages() -> None:
    """The upstream proved the domain; only mailveil knows which mailbox may write."""
    result = trusted_results(head(f"Authentication-Results: {ID}; dmarc=pass",
                                  sender="bob@customer.example"), ID, mail_from=SENDER)
    assert result is not None
    assert result.from_shape is FromShape.ONE and result.verdict is Verdict.REJECT


def test_a_quoted_semicolon_or_a_comment_does_not_start_a_result() -> None:
    result = trusted_results(head(f'Authentication-Results: {ID}; dkim=fail reason="bad; '
                                  f'dmarc=pass" header.d=c.example (x; dmarc=pass)'),
                             ID, mail_from=SENDER)
    assert result is not None and result.dmarc == "none" and result.dkim == (("c.example",
                                                                              "fail"),)
