"""UUIDs built without the checks of ``UUID.__init__``: every append makes one, every read many.

Both constructors are checked against the standard ones at import; a Python whose UUID
internals differ gets the standard constructors instead. Random bits still come from
``os.urandom``, but 4 KiB at a time: one ``getrandom`` call per 16 bytes cost more than the
rest of a new event id (1-7 us per call here, and every append makes one).
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Callable

_VERSION_BITS = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)
_BATCH = 256
"""Random 128-bit numbers drawn from one ``os.urandom`` call."""

# Each number is handed out once: deque.popleft is atomic, and threads that refill at the same
# time only add more fresh numbers. A forked child drops what it inherited, or parent and child
# would hand out the same ids.
_random: deque[int] = deque()
os.register_at_fork(after_in_child=_random.clear)


def _refill() -> int:
    raw = os.urandom(16 * _BATCH)
    from_bytes = int.from_bytes
    _random.extend([from_bytes(raw[k : k + 16]) for k in range(16, 16 * _BATCH, 16)])
    return from_bytes(raw[:16])


def _constructors() -> tuple[Callable[[bytes], uuid.UUID], Callable[[], uuid.UUID]]:
    uuid_cls = uuid.UUID
    try:  # UUID's slots, set through their descriptors: UUID.__setattr__ refuses, by design
        set_int = uuid_cls.__dict__["int"].__set__
        set_safe = uuid_cls.__dict__["is_safe"].__set__
    except (KeyError, AttributeError):  # pragma: no cover - another Python's UUID internals
        return (lambda raw: uuid_cls(bytes=raw)), uuid.uuid4
    new, from_bytes, take, safe = object.__new__, int.from_bytes, _random.popleft, uuid.SafeUUID.unknown

    def from_raw(raw: bytes) -> uuid.UUID:
        u = new(uuid_cls)
        set_int(u, from_bytes(raw))
        set_safe(u, safe)
        return u

    def uuid4() -> uuid.UUID:
        try:
            bits = take()
        except IndexError:
            bits = _refill()
        u = new(uuid_cls)
        set_int(u, (bits & _VERSION_BITS) | _VERSION_4)
        set_safe(u, safe)
        return u

    try:
        probe = uuid.uuid4()
        made = from_raw(probe.bytes)
        fresh = uuid4()
        again = uuid.UUID(str(fresh))
        if (
            made == probe
            and hash(made) == hash(probe)
            and str(made) == str(probe)
            and fresh == again
            and hash(fresh) == hash(again)
            and (fresh.version, fresh.variant) == (4, uuid.RFC_4122)
        ):
            return from_raw, uuid4
    except Exception:  # pragma: no cover - another Python's UUID internals
        pass
    return (lambda raw: uuid_cls(bytes=raw)), uuid.uuid4  # pragma: no cover


uuid_from_bytes, new_uuid4 = _constructors()
"""``uuid_from_bytes(raw)`` is ``UUID(bytes=raw)``; ``new_uuid4()`` is ``uuid.uuid4()``."""
