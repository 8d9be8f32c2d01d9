"""Partition leases: runner processes claim partitions with session advisory locks.

Start any number of runner processes with the same ``group`` and ``count``; each claims a free
partition (index 0 .. count-1) and drives only the sagas of that partition
(``SagaRunner(partition=(lease.index, count))``), so no saga is handled by two processes at
once. Extra processes wait as standbys. PostgreSQL drops a session's advisory locks when the
session ends, so a process that dies (or loses its connection) frees its partition at once and
a standby takes it over from that partition's checkpoint::

    with PartitionLease(store, group="sagas", count=4) as lease:
        runner = SagaRunner(store, sagas, bank, checkpoints, partition=(lease.index, 4))
        while lease.holds() and not stop.is_set():
            if runner.run_once() < runner.page_size:
                store.wait_for_events(runner.position or 0, 0.5)

A runner must stop when :meth:`PartitionLease.holds` turns false: its lock went with its
connection and another process may own the partition now. Sagas stay correct even if two
runners overlap for a moment (their steps are idempotent and versioned); the lease keeps that
from being the normal case.
"""

from __future__ import annotations

import hashlib
import time

import psycopg

from orchestrix.infrastructure.postgres._db import with_defaults
from orchestrix.infrastructure.postgres._schema import validate_schema_name
from orchestrix.infrastructure.postgres.errors import LeaseTimeoutError
from orchestrix.infrastructure.postgres.store import PostgresEventStore

__all__ = ["PartitionLease"]


class PartitionLease:
    """One claimed partition of a runner group, held while this object's connection lives."""

    def __init__(
        self, dsn_or_store: str | PostgresEventStore, *, group: str, count: int, schema: str | None = None
    ) -> None:
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, not {count!r}")
        if isinstance(dsn_or_store, PostgresEventStore):
            conninfo = dsn_or_store._db.conninfo
            schema = schema or dsn_or_store.schema
        else:
            conninfo = with_defaults(dsn_or_store)
        self.schema = validate_schema_name(schema or "orchestrix")
        self.group = group
        self.count = count
        self.index: int | None = None
        self._conninfo = conninfo
        self._conn: psycopg.Connection | None = None

    def key(self, index: int) -> int:
        """The advisory-lock key of one partition (64 bits of a hash of schema, group, count, index)."""
        name = f"orchestrix-lease\0{self.schema}\0{self.group}\0{self.count}\0{index}".encode()
        return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)

    def try_claim(self) -> int | None:
        """Claim the first free partition and return its index, or None if all are taken."""
        if self.index is not None and self.holds():
            return self.index
        conn = self._connection()
        for index in range(self.count):
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key(index),)).fetchone()
            if row is not None and row[0]:
                self.index = index
                return index
        return None

    def claim(self, timeout: float | None = None, poll: float = 0.5) -> int:
        """Claim a partition, waiting (polling every ``poll`` s) up to ``timeout`` s for one to free up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                index = self.try_claim()
            except psycopg.OperationalError:
                self._drop_connection()
                index = None
            if index is not None:
                return index
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseTimeoutError(self.group, self.count, timeout or 0.0)
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def holds(self) -> bool:
        """True while the partition is still ours (the lease's connection is alive)."""
        if self.index is None or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop_connection()
            return False
        return True

    def release(self) -> None:
        """Give the partition up (closing the connection releases the lock)."""
        self._drop_connection()

    def __enter__(self) -> PartitionLease:
        self.claim()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.Connection.connect(self._conninfo, autocommit=True)
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn, self.index = self._conn, None, None
        if conn is not None:
            conn.close()
