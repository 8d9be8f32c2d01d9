"""Checkpoints in the event store's database, so a runner's progress lives next to the events."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from orchestrix.core._checks import check_checkpoint_name, check_checkpoint_position
from orchestrix.infrastructure.postgres import _ops
from orchestrix.infrastructure.postgres._db import Database
from orchestrix.infrastructure.postgres._schema import ensure_schema, validate_schema_name
from orchestrix.infrastructure.postgres._statements import Statements

__all__ = ["PostgresCheckpointStore"]


class PostgresCheckpointStore:
    """A CheckpointStore in the ``checkpoints`` table of an orchestrix schema.

    ``save`` returns once the position is committed (durable under the server's
    ``synchronous_commit``). Build one from a DSN or pool, or share an event store's
    connections with ``PostgresEventStore.checkpoints()``.
    """

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool,
        *,
        schema: str = "orchestrix",
        create_schema: bool = True,
        pool_size: int = 4,
        async_pool: AsyncConnectionPool | None = None,
        retry_timeout: float = 15.0,
    ) -> None:
        validate_schema_name(schema)
        self._db = Database(
            dsn_or_pool, pool_size=pool_size, retry_timeout=retry_timeout, async_pool=async_pool
        )
        self._st = Statements(schema)
        self._owns_db = True
        try:
            self._db.open(lambda conn: ensure_schema(conn, schema, create=create_schema))
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def _sharing(cls, db: Database, st: Statements) -> PostgresCheckpointStore:
        store = cls.__new__(cls)
        store._db, store._st, store._owns_db = db, st, False
        return store

    def load(self, name: str) -> int:
        """The stored position for ``name``, or 0 if none was saved."""
        check_checkpoint_name(name)
        return self._db.run("load_checkpoint", lambda: _ops.load_checkpoint_op(self._st, name))

    def save(self, name: str, position: int) -> None:
        """Store ``position`` for ``name``; committed when this returns."""
        check_checkpoint_name(name)
        check_checkpoint_position(position)
        self._db.run("save_checkpoint", lambda: _ops.save_checkpoint_op(self._st, name, position))

    async def load_async(self, name: str) -> int:
        """Asyncio form of :meth:`load`."""
        check_checkpoint_name(name)
        return await self._db.run_async("load_checkpoint", lambda: _ops.load_checkpoint_op(self._st, name))

    async def save_async(self, name: str, position: int) -> None:
        """Asyncio form of :meth:`save`."""
        check_checkpoint_name(name)
        check_checkpoint_position(position)
        await self._db.run_async("save_checkpoint", lambda: _ops.save_checkpoint_op(self._st, name, position))

    def close(self) -> None:
        """Close the connections this object opened (a shared store's stay open)."""
        if self._owns_db:
            self._db.close()
