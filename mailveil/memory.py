"""Large blocks go back to the system as soon as they are freed.

glibc's malloc serves a block above its mmap threshold with a mapping of its own, unmapped
when freed. But the threshold follows the largest block freed so far, up to 32 MiB: after
the first large message, every copy of the next ones (up to 32 MiB) comes from the heap
arenas (one per thread that allocated), which keep freed memory resident. Twenty 13 MiB
messages at once then left the process hundreds of MiB above what it used at any moment
(docs/operations.md, "Memory"). A fixed threshold keeps message-sized blocks mapped.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
# Above the listener's socket reads (256 KiB) and most of a small message's copies, which
# the heap serves without a system call; below any copy of a large message.
MMAP_THRESHOLD = 1024 * 1024


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; ``False`` where there is no glibc
    (musl's mallopt does nothing) or the operator set ``MALLOC_MMAP_THRESHOLD_`` (theirs
    is already in force)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, ValueError, AttributeError):  # no such name, no such symbol
        return False
    if not glibc:
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold %d: %s", threshold, "set" if done else "refused")
    return done
