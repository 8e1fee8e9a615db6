"""The splitter must give back every byte, whatever comes in, and still find the parts."""

from __future__ import annotations

import base64
import binascii
import email
import re
from email import policy
from email.header import Header
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailveil.mail.mime import MAX_DEPTH, Entity, fold, parse, payload, serialize

CORPORA = Path(__file__).parents[1] / "corpora"
CORPUS_FILES = [
    pytest.param(path, id=str(path.relative_to(CORPORA)))
    for path in (sorted(CORPORA.rglob("*")) if CORPORA.is_dir() else [])
    if path.is_file()
] or [pytest.param(None, marks=pytest.mark.skip(reason=f"corpus folder {CORPORA} not present"))]

TEXTS = [
    ("tis-620", "สวัสดีครับ ทัวร์เชียงใหม่"),
    ("iso-2022-jp", "こんにちは、予約の件です"),
    ("windows-1252", "Café \u2013 5 € «merci»"),
    ("koi8-r", "Привет, экскурсия"),
    ("utf-8", "Ünïcødé ✓ ไทย"),
    ("us-ascii", "plain words"),
]
SUBTYPES = ["mixed", "alternative", "related", "signed", "digest", "report"]
BOUNDARY_CHARS = "abcXYZ0189'()+_,-./:=?"


def encode_body(data: bytes, cte: str, newline: bytes) -> bytes:
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", newline)
    if cte == "quoted-printable":
        return binascii.b2a_qp(data, istext=False)
    return data


@st.composite
def leaf(draw: st.DrawFn, newline: bytes) -> tuple[bytes, list[bytes]]:
    charset, text = draw(st.sampled_from(TEXTS))
    cte = draw(st.sampled_from(["7bit", "8bit", "base64", "quoted-printable"]))
    data = text.encode(charset)
    subject = Header(text, charset).encode().encode("ascii")
    header = newline.join(
        [
            b"Content-Type: text/plain; charset=" + charset.encode(),
            b"Content-Transfer-Encoding: " + cte.encode(),
            b"Content-Description: " + subject,
        ]
    )
    return header + newline * 2 + encode_body(data, cte, newline), [data]


@st.composite
def entity(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, list[bytes]]:
    """A message as bytes, with the decoded payload of each of its leaves in order."""
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    if depth >= 3 or not draw(st.booleans()):
        return draw(leaf(newline))
    boundary = f"d{depth}" + draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=30))
    subtype = draw(st.sampled_from([s for s in SUBTYPES if s != "digest"]))
    children = draw(st.lists(entity(depth + 1), min_size=1, max_size=3))
    delimiter = newline + b"--" + boundary.encode()
    header = b'Content-Type: multipart/%s; boundary="%s"' % (subtype.encode(), boundary.encode())
    body = draw(st.sampled_from([b"", b"This is a multi-part message in MIME format." + newline]))
    for raw, _ in children:
        body += delimiter + newline + raw
    body += draw(st.sampled_from([delimiter + b"--" + newline, delimiter + b"--", b""]))
    return header + newline * 2 + body, [p for _, payloads in children for p in payloads]


MIMEISH = st.lists(
    st.sampled_from(
        [b"--b", b"--b--", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"x", b"X-A: 1", b"\x00",
         b"\xff\xfe", b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: text/plain",
         b"Content-Type: message/rfc822", b"Content-Transfer-Encoding: base64", b"=?utf-8?q?=C3?="]
    ),
    max_size=60,
).map(b"".join)  # fmt: skip


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_any_bytes_round_trip(raw: bytes) -> None:
    assert serialize(parse(raw)) == raw


@settings(max_examples=500)
@given(MIMEISH)
def test_mime_like_bytes_round_trip(raw: bytes) -> None:
    assert serialize(parse(raw)) == raw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity())
def test_generated_mime_round_trips_and_splits(message: tuple[bytes, list[bytes]]) -> None:
    raw, payloads = message
    root = parse(raw)
    assert serialize(root) == raw
    leaves = [e for e in root.walk() if not e.multipart]
    assert [payload(e) for e in leaves] == payloads


def test_parts_preamble_epilogue_and_delimiters() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=xy\r\n\r\npre\r\n--xy\r\n"
        b"Content-Type: text/plain\r\n\r\none\r\n--xy \r\n\r\ntwo\r\n--xy--\r\nepi\r\n"
    )
    root = parse(raw)
    assert root.multipart
    assert root.preamble == b"pre"
    assert [p.delimiter for p in root.parts] == [b"\r\n--xy\r\n", b"\r\n--xy \r\n"]
    assert [p.entity.body for p in root.parts] == [b"one", b"two"]
    assert root.parts[1].entity.header == b"\r\n"
    assert root.closing == b"\r\n--xy--\r\n"
    assert root.epilogue == b"epi\r\n"


def test_lf_endings_and_missing_final_boundary() -> None:
    root = parse(b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\na\n--b\n\nb\n")
    assert [p.entity.body for p in root.parts] == [b"a", b"b\n"]
    assert root.closing == b""


def test_outer_boundary_wins_over_a_longer_inner_one() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="x"\n\n--x\n'
        b'Content-Type: multipart/alternative; boundary="xy"\n\n--xy\n\ninner\n--xy--\n--x--\n'
    )
    inner = parse(raw).parts[0].entity
    assert inner.multipart
    assert inner.parts[0].entity.body == b"inner"


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\nno delimiter here\r\n",
        b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n',
    ],
)
def test_multipart_without_usable_boundary_is_a_leaf(raw: bytes) -> None:
    root = parse(raw)
    assert not root.multipart
    assert serialize(root) == raw


def test_header_block_without_blank_line_ends_at_first_non_header_line() -> None:
    root = parse(b"From: a@b.c\r\nSubject: hi\r\n  folded\r\nHello there\r\n")
    assert root.header == b"From: a@b.c\r\nSubject: hi\r\n  folded\r\n"
    assert root.body == b"Hello there\r\n"
    assert root.get("subject") is not None
    assert root.get("SUBJECT").text == "hi  folded"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "header"),
    [(b"", b""), (b"\r\nbody", b"\r\n"), (b"just text\n\nmore", b""), (b"X: 1", b"X: 1")],
)
def test_degenerate_header_blocks(raw: bytes, header: bytes) -> None:
    assert parse(raw).header == header


def test_nesting_is_capped() -> None:
    depth = MAX_DEPTH + 20
    level = b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n"
    raw = b"".join(level % (i, i) for i in range(depth))
    root = parse(raw + b"\nbottom\n")
    assert serialize(root) == raw + b"\nbottom\n"
    assert _depth(root) == MAX_DEPTH


def _depth(entity: Entity) -> int:
    return 1 + max((_depth(p.entity) for p in entity.parts), default=-1)


def test_digest_children_default_to_message_rfc822() -> None:
    root = parse(b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nFrom: x\n\nhi\n--d--\n")
    assert root.parts[0].entity.content_type == "message/rfc822"
    assert root.parts[0].entity.is_attachment


def test_header_helpers_decode_tolerantly() -> None:
    root = parse(
        b"Subject: =?utf-8?q?caf=C3=A9?= \xc3\xa0 la\r\n"
        b"Content-Type: TEXT/Plain; charset*=utf-8''%C3%A9; name=\"a.txt\"\r\n"
        b"Content-Transfer-Encoding: Base64 (comment)\r\n"
        b"Content-Disposition: INLINE\r\n\r\n"
    )
    assert root.get("subject").decoded == "café à la"  # type: ignore[union-attr]
    assert root.content_type == "text/plain"
    assert root.param("charset") == "é"
    assert root.cte == "base64"
    assert root.disposition == "inline"
    assert root.filename == "a.txt"
    assert root.is_attachment


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b"", "text/plain"),
        (b"Content-Type: text\n", "text/plain"),
        (b"Content-Type: ;;\n", "text/plain"),
    ],
)
def test_content_type_defaults(content_type: bytes, expected: str) -> None:
    assert parse(content_type + b"\nx").content_type == expected


TYPE_TOKENS = ["text", "Plain", "/", " ", "\t", ";", "(c)", "x-y", "a.b", "=", '"q"', "é", "*"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(TYPE_TOKENS), min_size=1, max_size=8).map("".join))
def test_content_type_fast_path_reads_like_the_stdlib(value: str) -> None:
    """The oracle reads the value as a header field carries it, without the trailing
    whitespace that unfolding leaves out: the stdlib parses "Plain/;text* " as plain/plain
    but raises on "Plain/;text*", which is the same field. Where the stdlib raises on a
    parameter ("text/text;text*": IndexError), a mail program still reads the plain
    ``type/subtype`` before it, and so do we; anything else gets the default."""
    try:
        ctype = str(policy.default.header_factory("content-type", value.strip()).content_type)
    except Exception:
        token = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"  # RFC 2045
        plain = re.fullmatch(rf"({token}/{token})[ \t]*", value.partition(";")[0])
        ctype = plain.group(1).lower() if plain and ";" in value else ""
    expected = ctype if "/" in ctype else "text/plain"
    assert parse(f"Content-Type: {value}\n\nx".encode()).content_type == expected


def test_huge_header_is_read_without_the_structured_parser() -> None:
    value = b" ".join(b"=?utf-8?q?word=C3=A9?=" for _ in range(5000))
    subject = parse(b"Subject: " + value + b"\r\n\r\n").get("subject")
    assert subject is not None and subject.parsed is None
    assert subject.decoded.startswith("wordéwordé")


def test_with_field_replaces_in_place_and_adds_before_the_blank_line() -> None:
    root = parse(b"X-Content-Type: a\nContent-Type: text/plain\nB: 2\n\nbody")
    replaced = root.with_field("Content-Type", "text/plain; charset=utf-8")
    assert (
        replaced.header == b'X-Content-Type: a\nContent-Type: text/plain; charset="utf-8"\nB: 2\n\n'
    )
    added = replaced.with_field("Content-Transfer-Encoding", "quoted-printable")
    assert added.header.endswith(b"B: 2\nContent-Transfer-Encoding: quoted-printable\n\n")
    assert parse(b"").with_field("A", "1").header == b"A: 1\r\n\r\n"


def test_refolded_changes_only_the_fields_given_a_value() -> None:
    root = parse(b"\xef\xbb\xbfA: 1\nB: x\n folded\nC: 3\n\nbody")
    assert root.refolded(lambda found: None) is root
    changed = root.refolded(lambda found: "caf\xe9" if found.key == "b" else None)
    assert changed.header == b"\xef\xbb\xbfA: 1\nB: =?utf-8?b?Y2Fmw6k=?=\nC: 3\n\n"
    assert changed.body == b"body"
    assert parse(b"A: 1").refolded(lambda found: "2").header == b"A: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("name", "value", "folded"),
    [
        ("To", "a@b.example, c@d.example", b"To: a@b.example, c@d.example\n"),
        ("From", "<", b""),  # the address parser raises IndexError: so would a reader's
        ("From", "\u0e44\udcff<", b""),  # both folders raise
    ],
)
def test_fold_never_raises(name: str, value: str, folded: bytes) -> None:
    assert fold(name, value, b"\n") == folded


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"YWJj\r\nZGVm\r\n", b"abcdef"), (b"YWJjZA", b"abcd"), (b"Y", b"Y"), (b"!!YW Jj", b"abc")],
)
def test_base64_payload_tolerates_bad_padding(body: bytes, expected: bytes) -> None:
    assert payload(parse(b"Content-Transfer-Encoding: base64\n\n" + body)) == expected


@pytest.mark.parametrize("path", CORPUS_FILES)
def test_corpus_round_trips(path: Path) -> None:
    raw = path.read_bytes()
    assert serialize(parse(raw)) == raw


_ID = st.from_regex(r"<[a-z0-9.]{1,120}@[a-z0-9.]{1,60}>", fullmatch=True)


@given(ids=st.lists(_ID, min_size=1, max_size=8))
def test_long_ids_fold_between_ids_and_are_never_encoded(ids: list[str]) -> None:
    """A recipient's program matches In-Reply-To and References byte for byte against the
    ids it knows: an id written as encoded words, or split, no longer threads."""
    for name in ("In-Reply-To", "References"):
        folded = fold(name, " ".join(ids)).decode("ascii")
        assert "=?" not in folded
        assert all(len(line) <= 78 or line.count("<") == 1 for line in folded.splitlines())
        unfolded = folded.split(":", 1)[1].replace("\r\n", "")
        assert unfolded.split() == ids


def test_an_id_longer_than_a_line_drops_the_field() -> None:
    assert fold("References", "<" + "a" * 1000 + "@x.org>") == b""


def test_a_delimiter_after_a_bare_cr_is_one_as_for_the_stdlib() -> None:
    """A recipient's program reads ``\\r--b`` as a delimiter; if we did not, a part hidden
    behind it (base64 text naming a real address) would never be scrubbed."""
    hidden = base64.b64encode(b"write to ann@example.org")
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nvisible\r--b\r"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + hidden + b"\r\n--b--\r\n")
    ours = [payload(e) for e in parse(raw).walk() if not e.multipart]
    theirs = [p.get_payload(decode=True)
              for p in email.message_from_bytes(raw, policy=policy.default).walk()
              if not p.is_multipart()]
    assert ours == theirs == [b"visible", b"write to ann@example.org"]
    assert serialize(parse(raw)) == raw
