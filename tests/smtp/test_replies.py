import re

import pytest

from mailveil.authn.authenticity import FromShape, Refusal, Verdict, verdict_of
from mailveil.smtp import replies

NAMES = [n for n in dir(replies) if re.match(r"^S\d{3}_", n)]


def test_every_reply_has_matching_basic_and_enhanced_codes() -> None:
    assert NAMES
    for name in NAMES:
        text = getattr(replies, name)
        code, enhanced, _ = text.split(" ", 2)
        assert name[1:4] == code, name
        assert re.match(r"^[245]\.\d{1,3}\.\d{1,3}$", enhanced), name
        assert enhanced[0] == code[0], name


def test_no_reply_names_an_address() -> None:
    assert not [name for name in NAMES if "@" in getattr(replies, name)]


def test_every_sender_refusal_has_one_reply_of_its_verdicts_class() -> None:
    assert set(replies.FROM_REFUSED) == set(FromShape) - {FromShape.ONE}
    assert set(replies.SENDER_REFUSED) == set(Refusal) - {Refusal.FROM_SHAPE}
    every = [*replies.FROM_REFUSED.values(), *replies.SENDER_REFUSED.values()]
    assert len(set(every)) == len(every), "one reply per refusal"
    assert set(every) <= {getattr(replies, name) for name in NAMES}, "named replies only"


@pytest.mark.parametrize("refusal", list(Refusal))
def test_a_refusal_is_answered_5xx_unless_it_is_temporary(refusal: Refusal) -> None:
    shapes = [s for s in FromShape if s is not FromShape.ONE]
    for shape in shapes if refusal is Refusal.FROM_SHAPE else shapes[:1]:
        reply = replies.sender_refused(refusal, shape)
        assert reply[0] == ("4" if verdict_of(refusal) is Verdict.TEMPFAIL else "5"), reply
