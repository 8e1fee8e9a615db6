"""The real mail of tests/corpora (MimeKit's and flanker's test messages, a copy of
/work/shared/corpora), one message at a time."""

from __future__ import annotations

import email.message
import re
from collections.abc import Iterator
from email import policy
from pathlib import Path

CORPORA = Path(__file__).parents[1] / "corpora"

MBOX_SEPARATOR = re.compile(rb"(?:^|\n)From [^\n]*\n")
NOT_MESSAGES = {"LICENSE", "SOURCE.txt"}


def wrapped(blob: bytes, filename: str) -> bytes:
    """Raw TNEF streams are what Outlook attaches as winmail.dat; carry them that way."""
    message = email.message.EmailMessage()
    message["From"] = "Corpus Sender <corpus.sender@example.net>"
    message["Subject"] = f"{filename} attached"
    message.set_content("See the attachment, or write to corpus.sender@example.net.\n")
    message.add_attachment(blob, maintype="application", subtype="ms-tnef", filename="winmail.dat")
    return message.as_bytes(policy=policy.SMTP)


def corpus_messages() -> Iterator[tuple[str, bytes]]:
    """One message per file; mbox files (and files with an mbox envelope line) are split."""
    for path in sorted(CORPORA.rglob("*")) if CORPORA.is_dir() else []:
        if not path.is_file() or path.name in NOT_MESSAGES:
            continue
        name, raw = str(path.relative_to(CORPORA)), path.read_bytes()
        if path.suffix == ".tnef":
            yield name, wrapped(raw, path.name)
        elif raw.startswith(b"From "):
            for index, chunk in enumerate(MBOX_SEPARATOR.split(raw)[1:]):
                yield f"{name}#{index}", chunk
        else:
            yield name, raw
