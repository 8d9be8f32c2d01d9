"""The argument checks of every store's public calls, in one place.

Each store calls these before it touches its storage, so bad input gets the same error on the
memory, file and PostgreSQL stores and nothing is stored. What is accepted:

==================  =========================================================================
argument            accepted
==================  =========================================================================
``stream``          a non-empty printable ``str`` of at most 255 UTF-8 bytes
``expected_version`` an ``int`` from 0 to 2**63-1, or ``NO_STREAM``, ``STREAM_EXISTS``, ``ANY``
``events``          a ``list`` or ``tuple`` of events (bare or in ``NewEvent``), not empty
``appends``         a non-empty ``list`` or ``tuple`` of ``StreamAppend``, each stream at most once
``from_version``    an ``int`` from 0 to 2**63-1 (a version is never negative)
``after``           an ``int`` from 0 to 2**63-1 (position 0 is "before the first event")
``limit``           ``None`` (no limit) or an ``int`` from 0 to 2**63-1 (0 reads nothing)
``types``           ``None`` (every event) or a collection of classes (``set``, ``frozenset``,
                    ``list`` or ``tuple``; empty reads nothing)
``timeout``         an ``int`` or ``float`` of seconds, finite and >= 0
checkpoint name     a non-empty printable ``str`` of at most 255 characters
checkpoint position an ``int`` from 0 to 2**63-1
==================  =========================================================================

``bool`` is refused wherever an ``int`` is asked for (``True`` is no version), and so are
floats and numeric strings: a store once read ``1.5`` as "skip version 1". 2**63-1 is the
largest number PostgreSQL's ``bigint`` holds, so every store shares that bound. The checks are a
few ``type`` tests each: they run on every append and read.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrix.core.errors import InvalidArgumentError, InvalidCheckpointError
from orchestrix.core.eventsourcing.store import (
    MAX_POSITION,
    StreamAppend,
)
from orchestrix.core.eventsourcing.store import (
    validate_expected_version as check_expected_version_arg,
)
from orchestrix.core.eventsourcing.store import (
    validate_stream_name as check_stream_name,
)

__all__ = [
    "MAX_POSITION",
    "check_after",
    "check_appends",
    "check_checkpoint_name",
    "check_checkpoint_position",
    "check_events",
    "check_expected_version_arg",
    "check_from_version",
    "check_limit",
    "check_stream_name",
    "check_timeout",
    "check_types",
]

MAX_CHECKPOINT_NAME = 255
"""Characters a checkpoint name may have (PostgreSQL keeps it in a ``varchar(255)``)."""


def _count(parameter: str, value: object) -> InvalidArgumentError:
    return InvalidArgumentError(parameter, value, "an int from 0 to 2**63-1")


def check_from_version(value: object) -> int:
    """Return ``value`` if it is a stream version to read from."""
    if type(value) is not int or not 0 <= value <= MAX_POSITION:
        raise _count("from_version", value)
    return value


def check_after(value: object) -> int:
    """Return ``value`` if it is a global position to read or wait after."""
    if type(value) is not int or not 0 <= value <= MAX_POSITION:
        raise _count("after", value)
    return value


def check_limit(value: object) -> int | None:
    """Return ``value`` if it is None (no limit) or a number of events to read at most."""
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_POSITION):
        raise InvalidArgumentError("limit", value, "None or an int from 0 to 2**63-1")
    return value


def check_types(value: object) -> frozenset[type] | None:
    """Return ``value`` as a frozenset if it is None (every event) or a collection of classes."""
    if value is None:
        return None
    if not isinstance(value, set | frozenset | list | tuple) or not all(isinstance(t, type) for t in value):
        raise InvalidArgumentError("types", value, "None or a set, list or tuple of event classes")
    return frozenset(value)


def check_timeout(value: object) -> float:
    """Return ``value`` if it is a finite, non-negative number of seconds."""
    kind = type(value)
    if (kind is not float and kind is not int) or not 0 <= value < math.inf:  # type: ignore[operator]
        # NaN fails the comparison too: a NaN deadline never passes, and a waiter spun for ever.
        raise InvalidArgumentError("timeout", value, "a finite number of seconds, 0 or more")
    return value  # type: ignore[return-value]


def check_events(value: Any) -> list[Any] | tuple[Any, ...]:
    """Return ``value`` if it is a list or tuple (of events; an empty one is refused later, naming
    the stream)."""
    if type(value) is not list and type(value) is not tuple and not isinstance(value, list | tuple):
        raise InvalidArgumentError(
            "events", value, f"a list or tuple of events, not {type(value).__name__} (wrap one event in [ ])"
        )
    return value


def check_appends(value: Any) -> list[StreamAppend] | tuple[StreamAppend, ...]:
    """Return ``value`` if it is a non-empty list or tuple of StreamAppend naming each stream once,
    with a valid stream name, expected version and list of events in each.

    A stream given twice is refused rather than merged: its two parts would each expect a
    version, and which of the two a merged batch should honour is the caller's decision.
    """
    if not isinstance(value, list | tuple) or not value:
        raise InvalidArgumentError("appends", value, "a non-empty list or tuple of StreamAppend")
    seen: set[str] = set()
    for part in value:
        if type(part) is not StreamAppend:
            raise InvalidArgumentError(
                "appends",
                part,
                f"a StreamAppend(stream, events, expected_version), not {type(part).__name__}",
            )
        stream = check_stream_name(part.stream)
        check_expected_version_arg(part.expected_version)
        check_events(part.events)
        if stream in seen:
            raise InvalidArgumentError(
                "appends", stream, "each stream at most once per call (join its events in one StreamAppend)"
            )
        seen.add(stream)
    return value


def check_checkpoint_name(name: object) -> str:
    """Return ``name`` if it is a usable checkpoint name."""
    if not isinstance(name, str) or not name:
        raise InvalidCheckpointError("name", name, "a name is a non-empty str")
    if len(name) > MAX_CHECKPOINT_NAME:
        raise InvalidCheckpointError("name", name, f"longer than {MAX_CHECKPOINT_NAME} characters")
    if not name.isprintable():
        raise InvalidCheckpointError("name", name, "a name must not contain NUL or other control characters")
    return name


def check_checkpoint_position(position: object) -> int:
    """Return ``position`` if it is a position a checkpoint can hold."""
    if type(position) is not int or not 0 <= position <= MAX_POSITION:
        raise InvalidCheckpointError("position", position, "a position is an int from 0 to 2**63-1")
    return position
