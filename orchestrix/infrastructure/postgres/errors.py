"""Errors only the PostgreSQL backend raises; each derives from the core hierarchy.

::

    StoreError
    ├── DatabaseUnavailableError     PostgreSQL unreachable for longer than the retry budget
    ├── DatabaseConfigurationError   the DSN is unusable, or the server refused it: no retries
    ├── DatabaseError                any other error PostgreSQL reported (sqlstate)
    └── StoreFormatError
        └── SchemaNotInitializedError  no orchestrix tables in the schema, and none may be created
    LeaseTimeoutError (TimeoutError) no partition of a runner group came free in time

``BatchTooLargeError`` (``limit_name == "events"``: more events in one append than a
transaction can number) and ``InvalidCheckpointNameError`` (the core's
``InvalidCheckpointError``) are the core's classes, shared with the other stores; the names are
kept here so that older imports work.
"""

from __future__ import annotations

from orchestrix.core import errors as _core
from orchestrix.core.errors import OrchestrixError, StoreError, StoreFormatError

__all__ = [
    "BatchTooLargeError",
    "DatabaseConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "InvalidCheckpointNameError",
    "LeaseTimeoutError",
    "SchemaNotInitializedError",
]


def _one_line(exc: BaseException) -> str:
    """A driver error's words on one line (libpq puts hints on lines of their own), minus
    psycopg's "connection failed:" prefix, which the words that follow say better."""
    text = " ".join(str(exc).split())
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    return text


class DatabaseUnavailableError(StoreError):
    """PostgreSQL could not be reached (or kept failing) for longer than the retry budget.

    The operation may or may not have taken effect if the connection broke during commit;
    retrying an append with the same event ids is safe: a stored batch is returned, not doubled.
    """

    def __init__(self, operation: str, attempts: int, waited: float, cause: BaseException) -> None:
        last = _one_line(cause)
        super().__init__(
            f"PostgreSQL unavailable: {operation} failed {attempts} time(s) over {waited:.1f} s; "
            f"last error: {last}"
        )
        self.operation = operation
        self.attempts = attempts
        self.waited = waited


class DatabaseConfigurationError(StoreError):
    """The connection settings cannot work, so the store fails at once instead of retrying.

    Either the DSN itself is unusable (not a string, malformed, an unknown option or a bad
    value: ``refused_by_server`` is false), or the server answered and refused it (an unknown
    database or role, failed authentication, no ``CONNECT`` privilege: ``refused_by_server``
    is true). ``reason`` is libpq's or the server's own words, with any password hidden.
    """

    def __init__(self, reason: str, *, refused_by_server: bool) -> None:
        what = "PostgreSQL refused the connection" if refused_by_server else "unusable PostgreSQL DSN"
        super().__init__(f"{what}: {reason}")
        self.reason = reason
        self.refused_by_server = refused_by_server


class DatabaseError(StoreError):
    """PostgreSQL refused an operation for a reason retrying cannot fix (see ``sqlstate``)."""

    def __init__(self, operation: str, sqlstate: str | None, cause: BaseException) -> None:
        super().__init__(f"PostgreSQL error in {operation} (SQLSTATE {sqlstate}): {cause}")
        self.operation = operation
        self.sqlstate = sqlstate


BatchTooLargeError = _core.BatchTooLargeError
"""The core's :class:`~orchestrix.core.errors.BatchTooLargeError`, by its older import path."""

InvalidCheckpointNameError = _core.InvalidCheckpointError
"""The core's :class:`~orchestrix.core.errors.InvalidCheckpointError`, by its older name."""


class LeaseTimeoutError(OrchestrixError, TimeoutError):
    """Every partition of a runner group stayed claimed by other processes until the timeout."""

    def __init__(self, group: str, count: int, timeout: float) -> None:
        super().__init__(f"runner group {group!r}: all {count} partitions stayed claimed for {timeout:.1f} s")
        self.group = group
        self.count = count
        self.timeout = timeout


class SchemaNotInitializedError(StoreFormatError):
    """The schema holds no orchestrix tables, and the store was opened with ``create_schema=False``."""

    def __init__(self, schema: str) -> None:
        hint = "no orchestrix tables (open with create_schema=True to create them)"
        super().__init__(f"PostgreSQL schema {schema!r}", hint)
        self.schema = schema
