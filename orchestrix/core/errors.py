"""The orchestrix error hierarchy.

Every exception orchestrix raises on purpose derives from :class:`OrchestrixError`.
Errors carry their facts as attributes, so callers branch on data, not on messages::

    OrchestrixError
    ├── ConcurrencyError                 stream, expected, actual
    │   └── MultiStreamConflictError     conflicts: every stream of a multi-stream append that failed
    ├── DuplicateEventIdError            an event id already stored somewhere else
    ├── NotFoundError (LookupError)
    │   ├── StreamNotFoundError          stream
    │   └── AggregateNotFoundError       aggregate type, aggregate id
    ├── InvalidArgumentError (ValueError, TypeError)  parameter, value, expected: nothing was done
    │   ├── InvalidStreamNameError       stream, reason
    │   ├── InvalidExpectedVersionError
    │   ├── InvalidCheckpointError       a checkpoint name or position that cannot be stored
    │   ├── EmptyBatchError              an append with no events
    │   └── InvalidEventIdError          an event, correlation or causation id that is no UUID
    ├── BatchTooLargeError (ValueError)  stream, limit_name, limit, value: a store's batch limit
    ├── SerializationError               type name
    │   ├── UnknownEventTypeError (LookupError)
    │   └── SchemaEvolutionError         type name, versions: a schema history that cannot be read
    ├── UnhandledEventError              an aggregate has no apply handler for an event type
    ├── AggregateError                   misuse of an aggregate (no id, wrong id)
    ├── SnapshotError                    stream, version, reason: a snapshot that does not fit its stream
    │   └── SnapshotAheadError           stream_version: a snapshot past the end of its stream
    ├── StoreError                       a backend cannot do its work
    │   ├── StoreClosedError
    │   ├── StoreFailedError             a failed fsync poisoned the store until reopened
    │   ├── CorruptionError              file, offset
    │   ├── StoreFormatError             path: not a store, or a newer format
    │   └── CopyTargetError              stream, version: a copy's target holds other events
    ├── ProjectionError                  projection, position: a projection's handler or hook failed
    ├── SagaError                        saga and runner problems
    │   ├── UnknownCommandError (LookupError)  no handler for a command a saga sent
    │   ├── InvalidDeadlineError (ValueError)  name, detail: a deadline no handler takes, a naive time
    │   ├── InvalidRetryPolicyError (ValueError)  field, value
    │   ├── DeadLetterNotFoundError (LookupError)  dead_letter_id
    │   ├── SagaNotStuckError (LookupError)  stream: a retry asked for a saga that is not stuck
    │   └── LeaseLostError               a runner no longer holds its partition lease
    │       └── FencedError              a store refused an append made under an old lease
    └── DomainError                      base of business-rule violations that bases subclass
        └── KeyAlreadyRefusedError       a keyed command whose key was refused before
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "AggregateError",
    "AggregateNotFoundError",
    "BatchTooLargeError",
    "ConcurrencyError",
    "CorruptionError",
    "DomainError",
    "DuplicateEventIdError",
    "EmptyBatchError",
    "EventLoopRequiredError",
    "DeadLetterNotFoundError",
    "FencedError",
    "InvalidArgumentError",
    "InvalidCheckpointError",
    "InvalidEventIdError",
    "InvalidDeadlineError",
    "InvalidExpectedVersionError",
    "InvalidRetryPolicyError",
    "InvalidStreamNameError",
    "KeyAlreadyRefusedError",
    "LeaseLostError",
    "MultiStreamConflictError",
    "NotFoundError",
    "OrchestrixError",
    "ProjectionError",
    "SagaError",
    "SagaNotStuckError",
    "SchemaEvolutionError",
    "SerializationError",
    "SnapshotAheadError",
    "SnapshotError",
    "StoreClosedError",
    "StoreError",
    "StoreFailedError",
    "StoreFormatError",
    "CopyTargetError",
    "StreamNotFoundError",
    "UnhandledEventError",
    "UnknownCommandError",
    "UnknownEventTypeError",
    "ImportOrderError",
    "InvalidRecordedAtError",
]


class OrchestrixError(Exception):
    """Root of every error orchestrix raises on purpose."""


def _describe_version(version: int) -> str:
    # Imported lazily to keep this module free of other orchestrix imports.
    names = {-1: "NO_STREAM", -2: "ANY", -4: "STREAM_EXISTS"}
    return names.get(version, str(version))


class ConcurrencyError(OrchestrixError):
    """The stream was not at the expected version; nothing was written."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        actual_text = "no stream" if actual == -1 else f"version {actual}"
        super().__init__(
            f"stream {stream!r}: expected version {_describe_version(expected)}, found {actual_text}"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class MultiStreamConflictError(ConcurrencyError):
    """Streams of a multi-stream append were not at their expected versions; nothing was written.

    ``conflicts`` holds one :class:`ConcurrencyError` per stream whose expectation failed, in the
    order the streams were given; ``stream``, ``expected`` and ``actual`` are the first one's,
    so code that handles a plain ConcurrencyError (a retry loop) handles this one too.
    """

    def __init__(self, conflicts: Iterable[ConcurrencyError]) -> None:
        self.conflicts: tuple[ConcurrencyError, ...] = tuple(conflicts)
        if not self.conflicts:
            raise ValueError("a MultiStreamConflictError needs at least one conflict")
        first = self.conflicts[0]
        super().__init__(first.stream, first.expected, first.actual)
        self.args: tuple[Any, ...] = ("; ".join(str(c) for c in self.conflicts),)

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams whose expected version failed."""
        return tuple(c.stream for c in self.conflicts)


class DuplicateEventIdError(OrchestrixError):
    """An event id in the batch is already stored at another place; nothing was written."""

    def __init__(self, stream: str, event_id: object, detail: str) -> None:
        super().__init__(f"stream {stream!r}: event id {event_id} {detail}")
        self.stream = stream
        self.event_id = event_id


class NotFoundError(OrchestrixError, LookupError):
    """Something that was asked for does not exist."""


class StreamNotFoundError(NotFoundError):
    """The stream has no events."""

    def __init__(self, stream: str) -> None:
        super().__init__(f"stream {stream!r} does not exist")
        self.stream = stream


class AggregateNotFoundError(NotFoundError):
    """No events are stored for this aggregate."""

    def __init__(self, aggregate_type: type, aggregate_id: str, stream: str) -> None:
        super().__init__(f"{aggregate_type.__name__} {aggregate_id!r} not found (stream {stream!r} is empty)")
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.stream = stream


class InvalidArgumentError(OrchestrixError, ValueError, TypeError):
    """An argument of a public call has the wrong type or is out of range; nothing was done.

    ``parameter`` names the argument, ``value`` is what was passed and ``expected`` says what
    is accepted. It is both a ValueError and a TypeError, so code that caught the builtin a
    store used to raise for such input keeps working.
    """

    def __init__(self, parameter: str, value: object, expected: str, *, message: str | None = None) -> None:
        super().__init__(message or f"invalid {parameter} {_show(value)}: {expected}")
        self.parameter = parameter
        self.value = value
        self.expected = expected


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


class InvalidStreamNameError(InvalidArgumentError):
    """A stream name is empty, too long, not text, or holds control characters."""

    def __init__(self, stream: object, reason: str) -> None:
        shown = stream if not isinstance(stream, str) or len(stream) <= 60 else stream[:60] + "…"
        super().__init__("stream", stream, reason, message=f"invalid stream name {shown!r}: {reason}")
        self.stream = stream
        self.reason = reason


class InvalidExpectedVersionError(InvalidArgumentError):
    """The expected version is neither a version nor one of the named modes."""

    def __init__(self, value: object) -> None:
        super().__init__(
            "expected_version",
            value,
            "use an int from 0 to 2**63-1, NO_STREAM, STREAM_EXISTS or ANY",
        )


class InvalidCheckpointError(InvalidArgumentError):
    """A checkpoint name or position cannot be stored; nothing was saved.

    ``parameter`` is ``"name"`` or ``"position"``; every checkpoint store raises this one class.
    """

    def __init__(self, parameter: str, value: object, reason: str) -> None:
        shown = value if not isinstance(value, str) or len(value) <= 60 else value[:60] + "…"
        super().__init__(
            parameter, value, reason, message=f"invalid checkpoint {parameter} {shown!r}: {reason}"
        )
        self.reason = reason


class EmptyBatchError(InvalidArgumentError):
    """An append was given no events."""

    def __init__(self, stream: str) -> None:
        super().__init__(
            "events", [], "at least one event", message=f"stream {stream!r}: append needs at least one event"
        )
        self.stream = stream


class InvalidEventIdError(InvalidArgumentError):
    """An appended event's id, correlation id or causation id is not a ``uuid.UUID``; nothing was written."""

    def __init__(self, stream: str, field: str, value: object) -> None:
        required = "a uuid.UUID" if field == "event_id" else "a uuid.UUID or None"
        kind = type(value).__name__
        message = f"stream {stream!r}: NewEvent.{field} must be {required}, not {kind} ({value!r:.60})"
        super().__init__(f"NewEvent.{field}", value, required, message=message)
        self.stream = stream
        self.field = field
        self.value = value


_BATCH_UNITS = {"record_bytes": "bytes in one record", "events": "events in one append"}


class BatchTooLargeError(OrchestrixError, ValueError):
    """An append exceeds one of its store's limits on a batch; nothing was written.

    ``limit_name`` says which limit: ``"record_bytes"`` (the file store: one append is one
    record of at most ``limit`` bytes) or ``"events"`` (PostgreSQL: at most ``limit`` events
    in one append). ``value`` is what the batch needed.
    """

    def __init__(self, stream: str, limit_name: str, limit: int, value: int) -> None:
        unit = _BATCH_UNITS.get(limit_name, limit_name)
        super().__init__(f"stream {stream!r}: the batch needs {value} {unit}; at most {limit} are allowed")
        self.stream = stream
        self.limit_name = limit_name
        self.limit = limit
        self.value = value

    @property
    def size(self) -> int:
        """``value``, by the name the store-specific classes used."""
        return self.value


class SerializationError(OrchestrixError):
    """A value cannot be encoded or decoded."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


class UnknownEventTypeError(SerializationError, LookupError):
    """A type name or class is not registered with the serializer."""

    def __init__(self, type_name: str, registered: Iterable[str]) -> None:
        known = ", ".join(sorted(registered)) or "none"
        super().__init__(type_name, f"not registered with this serializer (registered: {known})")
        self.registered: tuple[str, ...] = tuple(sorted(registered))


class SchemaEvolutionError(SerializationError):
    """A type's schema history cannot be read: a gap in its upcasters, two for one step, an
    upcaster for a type that is not registered, or a stored version newer than the type's.

    ``versions`` names the step (from, to) or the version concerned; empty when none applies.
    """

    def __init__(self, type_name: str, message: str, versions: tuple[int, ...]) -> None:
        super().__init__(type_name, message)
        self.versions = versions


class UnhandledEventError(OrchestrixError):
    """An aggregate was asked to apply an event type it has no handler for."""

    def __init__(self, aggregate_type: type, event_type: type) -> None:
        super().__init__(f"{aggregate_type.__name__} has no apply handler for {event_type.__name__}")
        self.aggregate_type = aggregate_type
        self.event_type = event_type


class AggregateError(OrchestrixError):
    """An aggregate was used wrongly (saved without an id, loaded from a foreign stream)."""


class SnapshotError(OrchestrixError):
    """A stored snapshot does not belong to its stream as it is now; the aggregate is not loaded.

    A snapshot is never trusted beyond its stream: it names the event it was taken at (version
    and event id), and loading checks that event is still there.
    """

    def __init__(self, stream: str, version: int, reason: str) -> None:
        super().__init__(f"snapshot of stream {stream!r} at version {version}: {reason}")
        self.stream = stream
        self.version = version
        self.reason = reason


class SnapshotAheadError(SnapshotError):
    """A snapshot was taken at a version its stream does not reach (restored from an older backup,
    or its events deleted): it is refused, not trusted."""

    def __init__(self, stream: str, version: int, stream_version: int) -> None:
        super().__init__(
            stream,
            version,
            f"the stream ends at version {stream_version}, before the snapshot; delete the snapshot "
            "(SnapshotStore.delete) to rebuild the aggregate from its events",
        )
        self.stream_version = stream_version


class ProjectionError(OrchestrixError):
    """A projection's handler or hook failed; the runner stopped before ``position``.

    ``event_type`` and ``stream`` name the event whose handler raised (None when a hook such as
    ``commit`` failed); the original exception is the ``__cause__``.
    """

    def __init__(
        self,
        projection: str,
        position: int,
        message: str,
        *,
        event_type: str | None = None,
        stream: str | None = None,
    ) -> None:
        super().__init__(f"projection {projection!r} at position {position}: {message}")
        self.projection = projection
        self.position = position
        self.event_type = event_type
        self.stream = stream


class StoreError(OrchestrixError):
    """A store backend cannot do what was asked."""


class StoreClosedError(StoreError):
    """The store was closed."""


class StoreFailedError(StoreError):
    """A write failed in a way that may have lost data; the store refuses writes until reopened."""


class CorruptionError(StoreError):
    """Stored data is damaged in a way that recovery must not guess about."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt store file {path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class StoreFormatError(StoreError):
    """A path is not a store of this kind, or was written by a newer format version."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CopyTargetError(StoreError):
    """A copy's target ends with an event that is not the source's: it holds other events, so
    the copy cannot resume there (copy into an empty store, or the one it started)."""

    def __init__(self, stream: str, version: int) -> None:
        super().__init__(
            f"the target's last event (stream {stream!r}, version {version}) is not in the source: "
            "the target holds other events; copy into an empty store"
        )
        self.stream = stream
        self.version = version


class SagaError(OrchestrixError):
    """A saga or the saga runner cannot proceed."""


class UnknownCommandError(SagaError, LookupError):
    """No handler is registered for the type of a command a saga sent."""

    def __init__(self, command_type: type, registered: Iterable[type]) -> None:
        known = ", ".join(sorted(t.__name__ for t in registered)) or "none"
        super().__init__(f"no handler for command {command_type.__name__} (registered: {known})")
        self.command_type = command_type


class InvalidDeadlineError(SagaError, ValueError):
    """A saga scheduled a deadline it cannot keep: no ``@on_deadline`` handler takes the name,
    or the due time is not a timezone-aware datetime. Nothing was scheduled."""

    def __init__(self, saga_type: str, name: str, detail: str) -> None:
        super().__init__(f"{saga_type}: deadline {name!r}: {detail}")
        self.saga_type = saga_type
        self.name = name
        self.detail = detail


class InvalidRetryPolicyError(SagaError, ValueError):
    """A RetryPolicy was built with a value it cannot work with (a field, and why)."""

    def __init__(self, field: str, value: object, detail: str) -> None:
        super().__init__(f"RetryPolicy {field}={value!r}: {detail}")
        self.field = field
        self.value = value


class SagaNotStuckError(SagaError, LookupError):
    """A retry was asked for a saga stream that holds no unresolved ``SagaStuck``."""

    def __init__(self, stream: str, detail: str) -> None:
        super().__init__(f"saga stream {stream!r}: {detail}")
        self.stream = stream


class DeadLetterNotFoundError(SagaError, LookupError):
    """No dead-letter record has this id (or it was discarded, for an operation that needs it open)."""

    def __init__(self, dead_letter_id: str, detail: str = "no such dead letter") -> None:
        super().__init__(f"dead letter {dead_letter_id!r}: {detail}")
        self.dead_letter_id = dead_letter_id


class EventLoopRequiredError(OrchestrixError, RuntimeError):
    """Code run by a sync form (``run_once``, ``CommandBus.handle`` ...) awaited something that
    only an event loop provides; call the asyncio form (``run_once_async`` ...) instead."""

    def __init__(self, code: str, awaited: object) -> None:
        super().__init__(
            f"{code} awaited {awaited!r}, which needs an event loop: orchestrix's sync forms run "
            "coroutines that await only orchestrix operations; call the asyncio form instead"
        )
        self.code = code


class DomainError(OrchestrixError):
    """Base for business-rule violations; bases subclass it for each rule."""


class LeaseLostError(SagaError):
    """A runner acted for a partition lease it no longer holds; it dispatched nothing more.

    The runner stops (like on a store failure) without moving its checkpoint; whoever holds the
    lease now carries on from the stored state.
    """

    def __init__(self, lease: str, detail: str) -> None:
        super().__init__(f"lease {lease!r} lost: {detail}")
        self.lease = lease


class FencedError(LeaseLostError):
    """A store refused an append made under a lease that was granted again since; nothing was written.

    ``generation`` is the grant the append acted under, ``current`` the newest grant the store
    knows (None if it knows no grant of this lease at all).
    """

    def __init__(self, lease: str, generation: int, current: int | None) -> None:
        now = "no grant" if current is None else f"generation {current}"
        super().__init__(lease, f"append made under generation {generation}, the store knows {now}")
        self.generation = generation
        self.current = current


class KeyAlreadyRefusedError(DomainError):
    """A keyed command came again after its key was refused: it is refused again, for the same reason.

    The outcome of an idempotency key is decided once. ``error_type`` names the refusal first
    raised (for people; it is never used to find a class), and the message is its message.
    """

    def __init__(self, key: str, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.error_type = error_type
        self.reason = reason


class InvalidRecordedAtError(InvalidArgumentError):
    """An imported event's ``recorded_at`` is not a timezone-aware ``datetime``; nothing was stored.

    A naive time names no instant (each store would read it in another zone), so it is refused
    rather than guessed. ``stream`` and ``version`` name the event.
    """

    def __init__(self, stream: str, version: int, value: object) -> None:
        super().__init__(
            "recorded_at",
            value,
            "a timezone-aware datetime",
            message=f"event {version} of stream {stream!r}: recorded_at {_show(value)} "
            "is not a timezone-aware datetime",
        )
        self.stream = stream
        self.version = version


class ImportOrderError(InvalidArgumentError):
    """Imported events do not continue their streams in order; nothing was stored.

    An import gives each event its version: a stream's events must come as one run of
    consecutive versions (a stream that comes back later in the same import would break the
    global order the import keeps). ``stream`` names the stream, ``detail`` what was wrong.
    """

    def __init__(self, stream: str, detail: str) -> None:
        super().__init__("events", stream, detail, message=f"cannot import stream {stream!r}: {detail}")
        self.stream = stream
        self.detail = detail
