import re

from mailveil.smtp import replies

CLASS_OF = {"2": "2", "4": "4", "5": "5"}


def test_every_reply_has_matching_basic_and_enhanced_codes() -> None:
    names = [n for n in dir(replies) if re.match(r"^S\d{3}_", n)]
    assert names
    for name in names:
        text = getattr(replies, name)
        code, enhanced, _ = text.split(" ", 2)
        assert name[1:4] == code, name
        assert re.match(r"^[245]\.\d{1,3}\.\d{1,3}$", enhanced), name
        assert enhanced[0] == code[0], name
