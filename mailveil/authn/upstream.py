"""SPF, DKIM and DMARC as a trusted MTA in front already found them (RFC 8601).

With Postfix in front running the checks (policyd-spf, OpenDKIM, OpenDMARC), checking
again here would cost the same DNS queries twice and could disagree with what Postfix
decided. So for mail that came through a trusted peer (one that may say XFORWARD,
``MAILVEIL_TRUSTED_PEERS``), the ``Authentication-Results`` fields whose authserv-id is
``MAILVEIL_TRUSTED_AUTHSERV_ID`` stand for the checks (often one per checker: policyd-spf,
OpenDKIM, OpenDMARC). RFC 8601 5 has the upstream remove such fields from the mail it
receives, before its checkers add theirs (deploy/postfix does it with ``header_checks``),
so none of them is the sender's. Without such a field, mailveil checks as usual. The
verdict (:class:`~mailveil.authn.authenticity.Authenticity`) is the same either way; the
From shape is still read from the message.

A DMARC ``fail`` is refused unless the upstream says the policy was ``none`` (in a
``policy.dmarc`` property or OpenDMARC's ``(p=none ...)`` comment): a fail whose policy is
unknown fails closed.

Parsed here, not with the ``authres`` package: its last release (2019) ships only as a
source archive and without type hints, and three method results are all that is read.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

from dns.asyncresolver import Resolver

from mailveil.authn.authenticity import Authenticity, DkimResult, DmarcResult, Policy, check
from mailveil.authn.authenticity import from_shape as read_from_shape
from mailveil.authn.spf import SpfResult
from mailveil.mail.mime import header_block

_FIELD = re.compile(rb"^Authentication-Results[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
# A comment, a quoted string, or anything else (an MTA nests no comments in its results).
_TOKEN = re.compile(r'\((?:[^()\\]|\\.)*\)|"(?:[^"\\]|\\.)*"|[^\s;()"]+|;')
_SPF: Final[dict[str, SpfResult]] = {r: r for r in (
    "pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")}
_DKIM: Final[dict[str, DkimResult]] = {"pass": "pass", "fail": "fail", "temperror": "temperror"}
_DMARC: Final[dict[str, DmarcResult]] = {"pass": "pass", "fail": "fail", "none": "none",
                                         "temperror": "temperror"}
_POLICIES: Final[dict[str, Policy]] = {"none": "none", "quarantine": "quarantine",
                                       "reject": "reject"}


def _statements(value: str) -> list[list[str]]:
    """The field's value as statements (split at ``;``) of tokens, comments kept."""
    statements: list[list[str]] = [[]]
    for token in _TOKEN.findall(" ".join(value.split())):
        if token == ";":
            statements.append([])
        else:
            statements[-1].append(token)
    return statements


def trusted_results(head: bytes, authserv_id: str, *, mail_from: str,
                    refuse_unverified: bool = False) -> Authenticity | None:
    """What the results of ``authserv_id`` in the header block ``head`` say, or ``None``
    when it added none (then the message must be checked here)."""
    results: list[list[str]] = []
    for match in _FIELD.finditer(head):
        statements = _statements(match[1].decode("utf-8", "replace"))
        first = [t for t in statements[0] if not t.startswith("(")]
        if first and first[0].lower() == authserv_id.lower():
            results += statements[1:]
    return _authenticity(results, head, mail_from, refuse_unverified) if results else None


def _dmarc_policy(tokens: list[str], properties: dict[str, str]) -> Policy | None:
    """``policy.dmarc=`` (RFC 8601 registry), else OpenDMARC's ``(p=... dis=...)``."""
    named = properties.get("policy.dmarc", "").lower()
    if named in _POLICIES:
        return _POLICIES[named]
    for comment in (t for t in tokens if t.startswith("(")):
        for word in comment.strip("()").lower().split():
            if word.startswith("p=") and word[2:] in _POLICIES:
                return _POLICIES[word[2:]]
    return None


def _authenticity(statements: list[list[str]], head: bytes, mail_from: str,
                  refuse_unverified: bool) -> Authenticity:
    spf: SpfResult = "none"
    dkim: list[tuple[str, DkimResult]] = []
    dmarc: DmarcResult = "none"
    policy: Policy | None = None
    for tokens in statements:
        method, _, result = (tokens[0].lower().partition("=") if tokens else ("", "", ""))
        method = method.split("/")[0]
        properties = {k.lower(): v.strip('"') for k, _, v in
                      (t.partition("=") for t in tokens[1:] if not t.startswith("("))}
        if method == "spf" and result in _SPF:
            spf = _SPF[result]
        elif method == "dkim":
            dkim.append((properties.get("header.d", "").lower(), _DKIM.get(result, "fail")))
        elif method == "dmarc" and result in _DMARC:
            dmarc, policy = _DMARC[result], _dmarc_policy(tokens[1:], properties)
    shape, from_address = read_from_shape(head)
    return Authenticity(spf=spf, dkim=tuple(dkim), dmarc=dmarc,
                        policy=policy or ("reject" if dmarc == "fail" else "none"),
                        from_shape=shape, from_address=from_address, mail_from=mail_from,
                        refuse_unverified=refuse_unverified)


async def check_or_trust(raw: bytes, *, client_ip: str, helo: str, mail_from: str,
                         upstream: bool, authserv_id: str | None, resolver: Resolver,
                         refuse_unverified: bool = False) -> Authenticity:
    """The upstream's results for mail a trusted peer forwarded (``upstream``), when it
    added them; else :func:`~mailveil.authn.authenticity.check`."""
    if upstream and authserv_id:
        head = header_block(raw)
        trusted = await asyncio.to_thread(trusted_results, head, authserv_id,
                                          mail_from=mail_from,
                                          refuse_unverified=refuse_unverified)
        if trusted is not None:
            return trusted
    return await check(raw, client_ip=client_ip, helo=helo, mail_from=mail_from,
                       resolver=resolver, refuse_unverified=refuse_unverified)
