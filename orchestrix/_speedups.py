"""Every shortcut through CPython internals, in one place, each beside its plain equivalent.

The stores build an object per event they write or read, and the serializer encodes and parses
every payload: on those paths the standard library's public entry points cost more than the work
itself. Each shortcut here is checked against its plain form when this module is imported, and
falls back to the plain form on an interpreter whose internals differ; the tests check that both
forms give identical results on generated inputs (``tests/test_speedups.py``).

============================  =============================================  ======================
shortcut                      what it skips                                  plain form
============================  =============================================  ======================
``slots_constructor``         attrs' frozen ``__init__`` (slot setters)      the class itself
``uuid_from_bytes``           ``UUID.__init__``'s argument checks            ``UUID(bytes=raw)``
``new_uuid4``                 one ``getrandom`` call per id                  ``uuid.uuid4``
``uuid5_in``                  hashing the namespace again; ``UUID.__init__``  ``uuid.uuid5``
``dumps``                     ``JSONEncoder.encode``'s per-call set-up       ``plain_dumps``
``quote``                     (``json``'s own C string writer)               ``plain_quote``
``loads``                     ``json.loads``' encoding detection, regexes    ``json.loads``
``signal_module``             ``signal``'s enum wrapping (~3 us a call)      ``signal``
============================  =============================================  ======================
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import signal
import uuid
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

# -- constructors of slotted attrs classes -----------------------------------------------------


def slots_constructor(cls: type[T], probe: tuple[Any, ...]) -> Callable[..., T]:
    """``cls``'s constructor (all fields, positional) without attrs' frozen ``__setattr__``.

    Stores build these objects for every event they write or read; setting each slot through
    its descriptor costs half of what the generated ``__init__`` does. The result is checked
    against the real constructor on ``probe``; a class that is not a plain slotted attrs class
    gets its own constructor back (the plain form).
    """
    import attrs  # here: the rest of this module needs nothing outside the standard library

    names = [field.name for field in attrs.fields(cls)]  # type: ignore[arg-type]
    try:
        setters = {f"s{k}": cls.__dict__[name].__set__ for k, name in enumerate(names)}
    except (KeyError, AttributeError):  # not slotted
        return cls
    args = ", ".join(f"a{k}" for k in range(len(names)))
    body = "".join(f"    s{k}(r, a{k})\n" for k in range(len(names)))
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls, **setters}
    source = f"def make({args}):\n    r = new(cls)\n{body}    return r\n"
    exec(compile(source, f"<orchestrix constructor for {cls.__qualname__}>", "exec"), namespace)
    make: Callable[..., T] = namespace["make"]
    if len(probe) == len(names) and make(*probe) == cls(*probe):
        return make
    return cls  # pragma: no cover - attrs changed how it builds these classes


# -- UUIDs -------------------------------------------------------------------------------------

# Random bits still come from ``os.urandom``, but 4 KiB at a time: one ``getrandom`` call per
# 16 bytes cost more than the rest of a new event id (1-7 us per call, and every append makes
# one). Each number is handed out once: deque.popleft is atomic, and threads that refill at the
# same time only add more fresh numbers. A forked child drops what it inherited, or parent and
# child would hand out the same ids.
_VERSION_BITS = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)
_BATCH = 256
_random: deque[int] = deque()
os.register_at_fork(after_in_child=_random.clear)


def _refill() -> int:
    raw = os.urandom(16 * _BATCH)
    from_bytes = int.from_bytes
    _random.extend([from_bytes(raw[k : k + 16]) for k in range(16, 16 * _BATCH, 16)])
    return from_bytes(raw[:16])


def plain_uuid_from_bytes(raw: bytes) -> uuid.UUID:
    """``UUID(bytes=raw)``: the plain form of :func:`uuid_from_bytes`."""
    return uuid.UUID(bytes=raw)


def _uuid_constructors() -> tuple[Callable[[bytes], uuid.UUID], Callable[[], uuid.UUID]]:
    uuid_cls = uuid.UUID
    try:  # UUID's slots, set through their descriptors: UUID.__setattr__ refuses, by design
        set_int = uuid_cls.__dict__["int"].__set__
        set_safe = uuid_cls.__dict__["is_safe"].__set__
    except (KeyError, AttributeError):  # pragma: no cover - another Python's UUID internals
        return plain_uuid_from_bytes, uuid.uuid4
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
    return plain_uuid_from_bytes, uuid.uuid4  # pragma: no cover


uuid_from_bytes, new_uuid4 = _uuid_constructors()
"""``uuid_from_bytes(raw)`` is ``UUID(bytes=raw)``; ``new_uuid4()`` is ``uuid.uuid4()``."""

_VERSION_5 = (0x5000 << 64) | (0x8000 << 48)


def plain_uuid5_in(namespace: uuid.UUID) -> Callable[[str], uuid.UUID]:
    """``lambda name: uuid.uuid5(namespace, name)``: the plain form of :func:`uuid5_in`."""
    return functools.partial(uuid.uuid5, namespace)


def uuid5_in(namespace: uuid.UUID) -> Callable[[str], uuid.UUID]:
    """``name -> uuid.uuid5(namespace, name)``, three times as fast.

    Deterministic ids (saga decisions, keyed transactions, refusal records) are made several
    times per saga step; the plain form hashes the namespace again each time and checks its
    arguments in ``UUID.__init__``. This one starts from a copy of the hash of the namespace
    and builds the UUID from its integer. Checked against the plain form on probes; the plain
    form where they differ.
    """
    uuid_cls = uuid.UUID
    try:  # UUID's slots, set through their descriptors, as in _uuid_constructors
        set_int = uuid_cls.__dict__["int"].__set__
        set_safe = uuid_cls.__dict__["is_safe"].__set__
    except (KeyError, AttributeError):  # pragma: no cover - another Python's UUID internals
        return plain_uuid5_in(namespace)
    copy = hashlib.sha1(namespace.bytes, usedforsecurity=False).copy
    new, from_bytes, safe = object.__new__, int.from_bytes, uuid.SafeUUID.unknown

    def uuid5(name: str) -> uuid.UUID:
        h = copy()
        h.update(name.encode("utf-8"))
        u = new(uuid_cls)
        set_int(u, (from_bytes(h.digest()[:16]) & _VERSION_BITS) | _VERSION_5)
        set_safe(u, safe)
        return u

    try:
        for probe in ("", "a", "transfer-t1\x00debit", "\u00e9\u4e2d\U0001f600" * 40):
            made, plain = uuid5(probe), uuid.uuid5(namespace, probe)
            if not (made == plain and str(made) == str(plain) and hash(made) == hash(plain)):
                return plain_uuid5_in(namespace)  # pragma: no cover - another Python's uuid5
            if (made.version, made.variant, made.is_safe) != (5, uuid.RFC_4122, plain.is_safe):
                return plain_uuid5_in(namespace)  # pragma: no cover
    except Exception:  # pragma: no cover - another Python's UUID internals
        return plain_uuid5_in(namespace)
    return uuid5


# -- JSON --------------------------------------------------------------------------------------

# Built once: json.dumps with non-default options constructs a new encoder on every call.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
# The C encoder behind _JSON, made once instead of on every call (about half the cost of
# encoding a small event). Circular checks are off: callers hand it values built fresh.
_C_ENCODE = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _JSON.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def plain_dumps(value: Any) -> str:
    """Compact JSON (no spaces, not ASCII-escaped, NaN refused): the plain form of :func:`dumps`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False)


def _c_dumps(value: Any) -> str:
    return "".join(_C_ENCODE(value, 0))  # type: ignore[misc]


dumps: Callable[[Any], str] = plain_dumps if _C_ENCODE is None else _c_dumps
"""``plain_dumps``, through the C encoder made once."""


def plain_quote(text: str) -> str:
    """A JSON string literal, not ASCII-escaped: the plain form of :func:`quote`."""
    return json.dumps(text, ensure_ascii=False)


quote: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring", None) or plain_quote
"""``plain_quote``, by the C function ``json`` itself writes strings with."""

_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(data: bytes | str) -> Any:
    """``json.loads``, minus its encoding detection and whitespace regexes for compact objects.

    A compact object starts with ``{`` followed by a non-NUL byte, which ``json.loads`` would
    detect as UTF-8 too; the scanner alone then parses it (the two regex matches
    ``JSONDecoder.decode`` spends on surrounding whitespace are a fifth of a replay). Anything
    unusual goes to ``json.loads``, which raises its usual errors.
    """
    if type(data) is bytes and data[:1] == b"{" and data[1:2] != b"\x00":
        text = data.decode("utf-8", "surrogatepass")
        try:
            parsed, end = _SCAN(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return parsed
    return json.loads(data)


# -- signals -----------------------------------------------------------------------------------


def _signal_module() -> ModuleType:
    try:  # the C module: signal's own wrappers turn every handler into an enum, ~3 us a call
        fast = importlib.import_module("_signal")
    except ImportError:  # pragma: no cover - an interpreter without it
        return signal
    if getattr(fast, "default_int_handler", None) is not signal.default_int_handler:  # pragma: no cover
        return signal
    return fast


signal_module: ModuleType = _signal_module()
"""``_signal`` where it is the C module behind ``signal``, else ``signal`` (the plain form):
``getsignal``, ``signal``, ``SIGINT`` and ``default_int_handler`` as in ``signal``."""
