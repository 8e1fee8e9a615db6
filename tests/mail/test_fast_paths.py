"""The header fast paths of :mod:`mailveil.mail.mime` give exactly what the stdlib gives.

Each fast path is compared with the stdlib on generated values: plain ones (which must
take the fast path) and plain ones with a tricky fragment spliced in (comments, groups,
encoded words, escapes, RFC 2231 sections, non-ASCII...), which must fall back or agree.
Then ``facts`` and ``rewrite`` are run on real-world messages with the fast paths
switched off and on: the results must not differ by a byte.
"""

from __future__ import annotations

import contextlib
import email
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.utils import format_datetime, formatdate
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.mail import mime
from mailveil.mail import rewrite as rewrite_module
from mailveil.mail.inspect import facts
from mailveil.mail.mime import MAX_STRUCTURED_HEADER, Field, fold, is_plain_addr_spec, parse
from mailveil.mail.rewrite import RewritePlan, rewrite

CORPORA = Path(__file__).parents[1] / "corpora"
GOLDEN = Path(__file__).parent / "golden"
MESSAGES = [
    pytest.param(path, id=str(path.relative_to(path.parents[1])))
    for folder in (CORPORA, GOLDEN)
    for path in (sorted(folder.rglob("*")) if folder.is_dir() else [])
    if path.is_file() and path.name not in ("LICENSE", "README.md", "SOURCE.txt")
]
PLAN = RewritePlan(
    from_name="Ann Lee via Marketplace",
    from_address="customer-12ab3456cd78@reply.example.com",
    to_name="Sunset Tours",
    to_address="desk@supplier.example",
    message_id="<m-0001@reply.example.com>",
    in_reply_to=("<r-1@reply.example.com>",),
    references=("<r-0@reply.example.com>", "<r-1@reply.example.com>"),
    replacements={"ann@example.org": "customer-12ab3456cd78@reply.example.com"},
    banner_text="Répondez au-dessus de cette ligne.",
    banner_html="<p>Reply above this line.</p>",
)
GENERATED_DATE = "Tue, 03 Mar 2026 10:00:00 GMT"

ADDRESS_FIELDS = ["From", "To", "Cc", "Reply-To", "Sender", "Resent-From"]
UNSTRUCTURED_FIELDS = ["Subject", "In-Reply-To", "References", "X-Mailer", "Thread-Topic"]
TRICKY = [
    "(comment)", "(", ")", '"', "\\", "\\\"", ",", ", ", ";", ":", "<", ">", "@", ".", "..",
    " ", "  ", "\t", "=?utf-8?q?caf=C3=A9?=", "=?", "?=", "é", "\x00", "\x7f", "[1.2.3.4]",
    "undisclosed-recipients:;", "Team: a@b.example;", "*", "*0", "*=utf-8''%C3%A9", "'", "%",
    "=", "/", "; a=1", "; A=2", "; a*0=x; a*1=y", "\u0e44", "\udcff", "x" * 80,
]  # fmt: skip
"""Spliced into plain values: each may make the stdlib read the value its own way."""

ATEXT = st.text("abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6)
DOT_ATOM = st.lists(ATEXT, min_size=1, max_size=3).map(".".join)
ADDR_SPEC = st.builds("{}@{}".format, DOT_ATOM, DOT_ATOM)
PHRASE = st.lists(ATEXT, min_size=1, max_size=4).map(" ".join)
QUOTED = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters='"\\'),
                 max_size=12).map('"{}"'.format)  # fmt: skip
MAILBOX = st.one_of(
    ADDR_SPEC,
    ADDR_SPEC.map("<{}>".format),
    st.builds("{} <{}>".format, st.one_of(PHRASE, QUOTED), ADDR_SPEC),
)
PLAIN_MAILBOXES = st.builds(
    lambda boxes, separator: separator.join(boxes),
    st.lists(MAILBOX, min_size=1, max_size=4),
    st.sampled_from([",", ", ", ",\t", ",  \t "]),
)
TOKEN = st.text("abcXYZ019!#$&+.^_`{|}~-", min_size=1, max_size=10)
PARAM_VALUE = st.one_of(TOKEN, QUOTED)
PARAM_SEPARATOR = st.sampled_from([";", "; ", " ;", ";\t", " ; "])
PLAIN_PARAMS = st.lists(
    st.builds("{}{}={}".format, PARAM_SEPARATOR, TOKEN, PARAM_VALUE), max_size=4
).map("".join)
PLAIN_CONTENT_TYPE = st.builds(
    "{}/{}{}{}".format, TOKEN, TOKEN, PLAIN_PARAMS, st.sampled_from(["", ";", " ;"])
)
PLAIN_DISPOSITION = st.builds(
    "{}{}{}".format,
    st.one_of(st.sampled_from(["attachment", "inline", "INLINE"]), TOKEN),
    PLAIN_PARAMS,
    st.sampled_from(["", ";"]),
)
PLAIN_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=90)
ASCII_TEXT = st.text(st.characters(max_codepoint=127, blacklist_characters="\r\n"), max_size=90)


@st.composite
def spliced(draw: st.DrawFn, plain: st.SearchStrategy[str]) -> str:
    """A plain value with up to two tricky fragments inserted anywhere in it."""
    value = draw(plain)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(st.sampled_from(TRICKY)) + value[at:]
    return value


def field(name: str, value: str) -> Field:
    """The field as ``parse`` finds it in a message (so ``text`` is unfolded and stripped)."""
    raw = f"{name}: {value}\r\n\r\n".encode("utf-8", "surrogateescape")
    found = parse(raw).get(name)
    assert found is not None
    return found


def stdlib_header(found: Field) -> Any:
    """``Field.parsed`` as it was before the fast paths: always the stdlib parser."""
    if len(found.text) > MAX_STRUCTURED_HEADER:
        return None
    try:
        header: BaseHeader = policy.default.header_factory(found.key, found.text)
    except Exception:
        return None
    return header


def stdlib_fold(name: str, value: str, newline: bytes) -> bytes:
    folding = policy.default.clone(linesep=newline.decode("ascii"))
    try:
        folded: str = folding.header_factory(name, value).fold(policy=folding)
    except Exception:
        text = value.encode("utf-8", "replace").decode("utf-8")
        try:
            folding.header_factory(name, text)
        except Exception:
            return b""  # unreadable by the stdlib's parser even as text: not written
        folded = HeaderRegistry(use_default_map=False)(name, text).fold(policy=folding)
    return folded.encode("utf-8", "surrogatepass")


def stdlib_decoded(found: Field) -> str:
    header = stdlib_header(found)
    if header is not None:
        return str(header)
    try:
        return str(make_header(decode_header(found.text)))
    except Exception:
        return found.text


def stdlib_mailboxes(found: Field) -> tuple[tuple[str, str], ...] | None:
    addresses = getattr(stdlib_header(found), "addresses", None)
    return None if addresses is None else tuple((a.display_name, a.addr_spec) for a in addresses)


def stdlib_mime(found: Field) -> tuple[str | None, dict[str, str]]:
    header = stdlib_header(found)
    value = getattr(header, found.key.replace("-", "_"), None)
    params = {k: str(v) for k, v in getattr(header, "params", {}).items()}
    return None if value is None else str(value), params


def facts_and_rewrite(raw: bytes) -> tuple[object, bytes]:
    """Both results, with the Date that ``rewrite`` generates when there is none pinned."""
    with mock.patch("mailveil.mail.rewrite.formatdate", return_value=GENERATED_DATE):
        return facts(raw), rewrite(raw, PLAN)


@contextlib.contextmanager
def stdlib_only() -> Iterator[None]:
    """Every fast path declines, so all header work goes through the stdlib."""
    with (
        mock.patch.multiple(
            mime,
            _plain_line=lambda name, value: None,
            _plain_unstructured=lambda name, text: False,
            _plain_mailboxes=lambda text: None,
            _plain_mime_value=lambda key, text: None,
        ),
        mock.patch.object(rewrite_module, "is_plain_addr_spec", lambda text: False),
    ):
        yield


# --- fold ----------------------------------------------------------------------------------


def assert_folds_like_the_stdlib(name: str, value: str, *, fast: bool = False) -> None:
    """The stdlib folds the value made safe (control characters and encoded words
    defused); where its result is not one well-formed field, ``fold`` must give one.
    Non-ASCII unstructured text is ``fold``'s own (the stdlib loses spaces between
    non-ASCII words): it must read back as its decoded text."""
    safe = mime.safe_value(value)
    if issubclass(mime._kind(name), UnstructuredHeader) and not safe.isascii():
        folded = fold(name, value)
        assert mime._well_folded(folded.decode("ascii"), "\r\n")
        reread = email.message_from_bytes(folded + b"\r\n", policy=policy.default)[name]
        shown = mime.header_text(value).encode("utf-8", "replace").decode("utf-8")
        assert reread == " ".join(shown.split())  # lone surrogates: undecodable bytes
        return
    for newline in (b"\r\n", b"\n"):
        linesep = newline.decode("ascii")
        expected = stdlib_fold(name, safe, newline)
        if expected.isascii() and mime._well_folded(expected.decode("ascii"), linesep):
            assert fold(name, value, newline) == expected
        else:
            assert mime._well_folded(fold(name, value, newline).decode("ascii"), linesep)
    if fast and len(name) + 2 + len(value) <= 78:
        assert mime._plain_line(name, value) is not None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ADDRESS_FIELDS), PLAIN_MAILBOXES.filter(lambda v: "=?" not in v))
def test_fold_plain_address_list(name: str, value: str) -> None:
    assert_folds_like_the_stdlib(name, value, fast="\t" not in value)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ADDRESS_FIELDS), spliced(PLAIN_MAILBOXES))
def test_fold_tricky_address_list(name: str, value: str) -> None:
    assert_folds_like_the_stdlib(name, value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(UNSTRUCTURED_FIELDS), PLAIN_TEXT.filter(lambda v: "=?" not in v))
def test_fold_plain_unstructured(name: str, value: str) -> None:
    assert_folds_like_the_stdlib(name, value, fast=True)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(UNSTRUCTURED_FIELDS), st.one_of(ASCII_TEXT, spliced(PLAIN_TEXT)))
def test_fold_tricky_unstructured(name: str, value: str) -> None:
    assert_folds_like_the_stdlib(name, value)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["Message-ID", "Content-Transfer-Encoding", "MIME-Version"]),
    st.one_of(
        spliced(st.builds("<{}@{}>".format, DOT_ATOM, DOT_ATOM)),
        spliced(TOKEN),
        spliced(st.sampled_from(["1.0", "1.1", "10.20"])),
    ),
)
def test_fold_ids_encodings_and_versions(name: str, value: str) -> None:
    assert_folds_like_the_stdlib(name, value)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.one_of(
            st.none(),
            st.just(UTC),
            st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
        ),
    ),
    st.booleans(),
)
def test_fold_dates(when: datetime, usegmt: bool) -> None:
    if when.tzinfo is not None:
        rendered = format_datetime(when, usegmt=usegmt and when.tzinfo is UTC)
        assert_folds_like_the_stdlib("Date", rendered)
    assert_folds_like_the_stdlib("Date", formatdate(when.timestamp(), usegmt=usegmt))
    assert_folds_like_the_stdlib("Resent-Date", formatdate(when.timestamp(), localtime=True))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Date", "Tue, 3 Mar 2026 10:00:00 +0700"),  # re-rendered as "03 Mar"
        ("Date", "Tue, 03 Mar 2026 10:00:00 GMT"),  # re-rendered as "+0000"
        ("Date", "3 Mar 26 10:00 EST"),
        ("Date", "junk"),  # the stdlib drops it
        ("Date", "Tue, 31 Feb 2026 10:00:00 +0000"),
        ("Message-ID", "<a@b> junk"),  # the stdlib drops the junk
        ("Message-ID", "<a@[1.2.3.4]>"),
        ("From", '"Ann L. via Tours" <a@b.example>'),
        ("From", '"a\\"b" <a@b.example>'),  # the stdlib re-quotes an escaped quote
        ("From", '"a\\b" <a@b.example>'),  # and drops a needless backslash
        ("From", "Ann  Lee <a@b.example>"),
        ("To", "undisclosed-recipients:;"),
        ("To", "a@b.example (Ann)"),
        ("To", "a@b.example ,c@d.example"),
        ("To", "Ann Lee via Marketplace <customer-12ab3456cd78@reply.example.com>, x@y.example"),
        ("Subject", " leading and trailing  "),
        ("Subject", "   "),
        ("Subject", ""),
        ("Subject", "=?utf-8?q?caf=C3=A9?="),
        ("Subject", "x" * 72),
        ("Subject", "x" * 73),
        ("X-A-Rather-Long-Field-Name-That-Takes-Most-Of-The-Line-On-Its-Own-Already", "1"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("MIME-Version", "1.0 (generated)"),
    ],
)
def test_fold_tricky_cases(name: str, value: str) -> None:
    assert_folds_like_the_stdlib(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("From", "Ann Lee via Marketplace <customer-12ab34@reply.example.com>"),
        ("To", '"Sunset Tours, Ltd" <desk@supplier.example>'),
        ("Message-ID", "<171234.5678.90@reply.example.com>"),
        ("References", "<r-0@reply.example.com> <r-1@reply.example.com>"),
        ("Date", formatdate(usegmt=True)),
        ("Content-Transfer-Encoding", "quoted-printable"),
        ("MIME-Version", "1.0"),
        ("Subject", "Meeting point? mvb001x0000001"),
    ],
)
def test_fold_what_rewrite_writes_takes_the_fast_path(name: str, value: str) -> None:
    assert mime._plain_line(name, value) is not None
    assert_folds_like_the_stdlib(name, value)


# --- reading fields ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["To", "From", "Cc"]), PLAIN_MAILBOXES.filter(lambda v: "=?" not in v))
def test_plain_mailboxes(name: str, value: str) -> None:
    found = field(name, value)
    assert mime._plain_mailboxes(found.text) is not None
    assert found.mailboxes == stdlib_mailboxes(found)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["To", "From", "Cc", "Subject"]), spliced(PLAIN_MAILBOXES))
def test_tricky_mailboxes(name: str, value: str) -> None:
    found = field(name, value)
    assert found.mailboxes == stdlib_mailboxes(found)


@pytest.mark.parametrize(
    "value",
    [
        '"Lee, Ann" <ann@example.org>, bob@example.org',
        "Ann  Lee <ann@example.org>",  # the stdlib collapses the spaces
        "Ann\tLee <ann@example.org>",
        '"  Ann  Lee " <ann@example.org>',  # but not inside quotes
        '"Ann \\"Annie\\" Lee" <ann@example.org>',
        '"" <ann@example.org>',
        "Ann<ann@example.org>",
        "Ann L. Lee <ann@example.org>",
        "ann@example.org (Ann Lee)",
        "Ann (work) <ann@example.org>",
        "undisclosed-recipients:;",
        "Team: ann@example.org, <bob@example.org>;, carol@example.org",
        "=?utf-8?q?Ann_L=C3=A9a?= <ann@example.org>",
        "Ann <=?utf-8?q?ann?=@example.org>",
        "Léa <lea@example.org>",
        "ann@example.org,\tbob@example.org,",
        "ann@[192.0.2.1]",
        '"ann lee"@example.org',
        "<@route.example:ann@example.org>",
        "ann@example.org bob@example.org",
        "<ann@example.org",
        "",
    ],
)
def test_mailbox_tricky_cases(value: str) -> None:
    for name in ("To", "From"):
        found = field(name, value)
        assert found.mailboxes == stdlib_mailboxes(found)


@settings(max_examples=400, deadline=None)
@given(st.one_of(PLAIN_CONTENT_TYPE, spliced(PLAIN_CONTENT_TYPE)))
def test_content_type_params(value: str) -> None:
    found = field("Content-Type", value)
    assert found.mime == stdlib_mime(found)
    entity = parse(f"Content-Type: {value}\r\n\r\n".encode("utf-8", "surrogateescape"))
    for name in ("charset", "CHARSET", "boundary", "name", "a"):
        assert entity.param(name) == stdlib_mime(found)[1].get(name.lower())


@settings(max_examples=400, deadline=None)
@given(st.one_of(PLAIN_DISPOSITION, spliced(PLAIN_DISPOSITION)), PLAIN_CONTENT_TYPE)
def test_content_disposition(value: str, content_type: str) -> None:
    found = field("Content-Disposition", value)
    assert found.mime == stdlib_mime(found)
    raw = f"Content-Type: {content_type}\r\nContent-Disposition: {value}\r\n\r\n"
    entity = parse(raw.encode("utf-8", "surrogateescape"))
    disposition, params = stdlib_mime(found)
    assert entity.disposition == (None if disposition is None else disposition.lower())
    name = params.get("filename")
    assert entity.filename == (name if name is not None else entity.param("name"))


def test_plain_mime_values_take_the_fast_path() -> None:
    for name, value in [
        ("Content-Type", 'text/plain; charset="utf-8"; format=flowed'),
        ("Content-Type", 'multipart/mixed;\r\n\tboundary="----=_Part_1_2.3"'),
        ("Content-Disposition", 'attachment; filename="pass.pdf"'),
    ]:
        found = field(name, value)
        assert mime._plain_mime_value(found.key, found.text) is not None
        assert found.mime == stdlib_mime(found)


@pytest.mark.parametrize(
    "value",
    [
        "text/plain; charset=utf-8; charset=latin1",  # the stdlib keeps the first
        "text/plain; charset=utf-8; CHARSET=latin1",  # and here the last
        "text/plain; name*=utf-8''caf%C3%A9.txt",
        "text/plain; name*0=a; name*1=b",
        'text/plain; name="=?utf-8?q?caf=C3=A9?="',
        'text/plain; name="a\\"b"',
        "text/plain; charset=utf-8 (comment)",
        "text/plain; charset=",
        "text/plain; charset",
        'text/plain; name="caf\u00e9"',
    ],
)
def test_content_type_tricky_cases(value: str) -> None:
    found = field("Content-Type", value)
    assert found.mime == stdlib_mime(found)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([*UNSTRUCTURED_FIELDS, "To", "Date"]),
    st.one_of(ASCII_TEXT, spliced(PLAIN_TEXT)),
)
def test_decoded(name: str, value: str) -> None:
    found = field(name, value)
    assert found.decoded == mime.header_text(stdlib_decoded(found))


def test_huge_fields_keep_the_stdlib_fallbacks() -> None:
    to = ", ".join(f"u{i}@example.org" for i in range(MAX_STRUCTURED_HEADER // 10))
    assert field("To", to).mailboxes is None
    subject = field("Subject", "x " * MAX_STRUCTURED_HEADER)
    assert subject.decoded == stdlib_decoded(subject)
    content_type = field("Content-Type", "text/plain; a=" + "x" * MAX_STRUCTURED_HEADER)
    assert content_type.mime == (None, {})


def mailbox_or_error(write: Any, name: str, address: str) -> str:
    try:
        return str(write(name, address))
    except Exception as error:
        return f"raises {type(error).__name__}"


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.text(max_size=20), spliced(PHRASE), spliced(QUOTED)),
    st.one_of(ADDR_SPEC, spliced(ADDR_SPEC)),
)
def test_generated_from_and_to_are_written_like_the_stdlib(name: str, address: str) -> None:
    """``rewrite`` writes From and To as ``str(Address(name, addr_spec=address))``."""
    expected = mailbox_or_error(lambda n, a: Address(n, addr_spec=a), name, address)
    assert mailbox_or_error(rewrite_module._mailbox, name, address) == expected


@pytest.mark.parametrize(
    "name",
    ["", "Ann Lee via Marketplace", "Ann L. via Tours", 'Ann "Annie" Lee', "C:\\dir", "Lee, Ann",
     "Ann (work)", "<Ann>", "[Ann]", "a@b", "a;b", "Léa ไทย", "  Ann  ", "Ann\r\nBcc: x@y"],
)  # fmt: skip
def test_display_names_are_quoted_like_the_stdlib(name: str) -> None:
    for address in ("ann@example.org", "ann@[192.0.2.1]", "a..b@example.org"):
        expected = mailbox_or_error(lambda n, a: Address(n, addr_spec=a), name, address)
        assert mailbox_or_error(rewrite_module._mailbox, name, address) == expected


def test_plain_addresses_are_written_without_the_stdlib() -> None:
    assert is_plain_addr_spec("customer-12ab3456cd78@reply.example.com")
    assert not is_plain_addr_spec("=?utf-8?q?a?=@example.org")
    assert not is_plain_addr_spec('"ann lee"@example.org')


# --- whole messages ------------------------------------------------------------------------


@pytest.mark.parametrize("path", MESSAGES)
def test_real_world_messages_come_out_the_same(path: Path) -> None:
    raw = path.read_bytes()
    with stdlib_only():
        expected = facts_and_rewrite(raw)
    assert facts_and_rewrite(raw) == expected


HEADER_LINES = st.lists(
    st.one_of(
        st.builds("{}: {}".format, st.sampled_from(ADDRESS_FIELDS), spliced(PLAIN_MAILBOXES)),
        st.builds("Subject: {}".format, spliced(PLAIN_TEXT)),
        st.builds("Content-Type: {}".format, spliced(PLAIN_CONTENT_TYPE)),
        st.builds("Content-Disposition: {}".format, spliced(PLAIN_DISPOSITION)),
        st.builds("Content-Description: {}".format, spliced(PLAIN_MAILBOXES)),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(HEADER_LINES)
def test_generated_messages_come_out_the_same(lines: list[str]) -> None:
    head = "".join(line.replace("\r", "").replace("\n", "") + "\r\n" for line in lines)
    raw = head.encode("utf-8", "surrogateescape") + b"\r\nHello ann@example.org\r\n"
    with stdlib_only():
        expected = facts_and_rewrite(raw)
    assert facts_and_rewrite(raw) == expected
