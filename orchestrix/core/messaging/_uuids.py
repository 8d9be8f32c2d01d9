"""UUIDs built without the checks of ``UUID.__init__``: every append makes one, every read many.

Both constructors are checked against the standard ones at import; a Python whose UUID
internals differ gets the standard constructors instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

_VERSION_BITS = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def _constructors() -> tuple[Callable[[bytes], uuid.UUID], Callable[[], uuid.UUID]]:
    new, setattr_, from_bytes, urandom, safe = (
        object.__new__,
        object.__setattr__,
        int.from_bytes,
        os.urandom,
        uuid.SafeUUID.unknown,
    )
    uuid_cls = uuid.UUID

    def from_raw(raw: bytes) -> uuid.UUID:
        u = new(uuid_cls)
        setattr_(u, "int", from_bytes(raw))
        setattr_(u, "is_safe", safe)
        return u

    def uuid4() -> uuid.UUID:
        u = new(uuid_cls)
        setattr_(u, "int", (from_bytes(urandom(16)) & _VERSION_BITS) | _VERSION_4)
        setattr_(u, "is_safe", safe)
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
