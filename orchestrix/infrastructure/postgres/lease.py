"""Partition leases: runner processes claim partitions with session advisory locks.

Start any number of runner processes with the same ``group`` and ``count``; each claims a free
partition (index 0 .. count-1) and drives only the sagas of that partition
(``SagaRunner(partition=(lease.index, count))``), so no saga is handled by two processes at
once. Extra processes wait as standbys. PostgreSQL drops a session's advisory locks when the
session ends, so a process that dies (or loses its connection) frees its partition at once and
a standby takes it over from that partition's checkpoint::

    with PartitionLease(store, group="sagas", count=4) as lease:
        runner = SagaRunner(store, sagas, bank, checkpoints, partition=(lease.index, 4), lease=lease)
        try:
            while not stop.is_set():
                if runner.run_once() < runner.page_size:
                    store.wait_for_events(runner.position or 0, 0.5)
        except LeaseLostError:
            pass  # another process holds the partition now; claim again or exit

A lock is not enough on its own: a holder can pause (GC, VM migration, SIGSTOP) for longer than
it takes a standby to see its connection gone and take over, and then wake up and act. So each
claim is also a *grant* with a generation that only grows (the ``fences`` table), and a runner
given ``lease=`` runs every step under :attr:`PartitionLease.fence`: the store refuses, in the
same transaction as the write, any append made under an older generation. The runner also
checks :meth:`holds` right before each dispatch and each checkpoint. docs/postgres.md argues
why this is safe against pauses of any length.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from orchestrix.core.errors import LeaseLostError, StoreFormatError
from orchestrix.core.eventsourcing.fencing import Fence
from orchestrix.infrastructure.postgres._connect import with_defaults
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
        self.schema: str = validate_schema_name(schema or "orchestrix")
        self.group = group
        self.count = count
        self.index: int | None = None
        self._conninfo = conninfo
        self._conn: psycopg.Connection | None = None
        self._fence: Fence | None = None
        self._grant = sql.SQL(
            "INSERT INTO {fences} (name, generation) VALUES (%s, 1) ON CONFLICT (name) DO UPDATE "
            "SET generation = {fences}.generation + 1, granted_at = now() RETURNING generation"
        ).format(fences=sql.Identifier(self.schema, "fences"))

    def name(self, index: int) -> str:
        """The lease name of one partition, as its fences carry it: ``group[index/count]``."""
        return f"{self.group}[{index}/{self.count}]"

    def key(self, index: int) -> int:
        """The advisory-lock key of one partition (64 bits of a hash of schema, group, count, index)."""
        name = f"orchestrix-lease\0{self.schema}\0{self.group}\0{self.count}\0{index}".encode()
        return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)

    def try_claim(self) -> int | None:
        """Claim the first free partition and return its index, or None if all are taken.

        A claim takes the partition's advisory lock, then grants the partition's lease anew
        (raises its generation in the ``fences`` table) before returning: from then on, every
        append the partition's previous holder makes under its fence is refused.
        """
        if self.index is not None and self.holds():
            return self.index
        conn = self._connection()
        for index in range(self.count):
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key(index),)).fetchone()
            if row is not None and row[0]:
                self._fence = Fence(self.name(index), self._raise_generation(conn, index))
                self.index = index
                return index
        return None

    def _raise_generation(self, conn: psycopg.Connection, index: int) -> int:
        try:
            granted = conn.execute(self._grant, (self.name(index),)).fetchone()
        except pg_errors.UndefinedTable:
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key(index),))
            raise StoreFormatError(
                f"PostgreSQL schema {self.schema!r}",
                "no fences table: open a PostgresEventStore on this schema once to create or migrate it",
            ) from None
        assert granted is not None
        return int(granted[0])

    @property
    def fence(self) -> Fence:
        """The fence of the current grant, for ``SagaRunner(lease=...)``; LeaseLostError if not held."""
        if self.index is None or self._fence is None:
            raise LeaseLostError(f"{self.group}[?/{self.count}]", "no partition is claimed")
        return self._fence

    def claim(self, timeout: float | None = None, poll: float = 0.5) -> int:
        """Claim a partition, waiting up to ``timeout`` seconds (None: for ever) for one to free up.

        Tries every ``poll`` seconds; a lost connection while trying is dropped and made anew.
        Raises LeaseTimeoutError when ``timeout`` passes without a free partition.
        """
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
        """True while the partition is still ours: a round trip on the lease's connection.

        False once the connection is gone (the server then released the advisory lock, and a
        standby may hold the partition). True means "held when the server answered": a pause
        after it can outlast the lease, which is why appends are fenced too.
        """
        if self.index is None or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop_connection()
            return False
        return True

    async def holds_async(self) -> bool:
        """Asyncio form of :meth:`holds` (the round trip runs in a worker thread)."""
        return await asyncio.to_thread(self.holds)

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
        conn, self._conn, self.index, self._fence = self._conn, None, None, None
        if conn is not None:
            conn.close()
