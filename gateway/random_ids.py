"""Request, reservation and audit entry ids: 128 random bits as 32 hex digits, like
``uuid.uuid4().hex`` (or a version 4 UUID's text), without a system call each.

``uuid4`` reads the kernel's random source on every call, which measured 2 of the 3 per-request
``os.urandom`` calls at about 12 us each on the event loop under load (the 2-core benchmark box).
These ids are unique, not secret (they are echoed to clients and written to the audit log), so a
generator seeded from the kernel once, and again in a forked child, serves them.
"""
from __future__ import annotations

import os
import random

_generator = random.Random()


def _reseed() -> None:
    _generator.seed(os.urandom(32))


_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked gateway process never repeats its parent's ids


def new_hex_id() -> str:
    """A fresh id: 32 lower-case hex digits (128 bits)."""
    return f"{_generator.getrandbits(128):032x}"


# The version (4) and variant (RFC 4122) bits of a UUID as ``uuid.UUID(int=..., version=4)`` sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_uuid4() -> str:
    """A fresh random UUID (version 4) in its 36-character form, as ``str(uuid.uuid4())`` gives it."""
    h = f"{(_generator.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
