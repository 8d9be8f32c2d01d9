"""Snapshots in the event store's database: the ``snapshots`` table, one row per stream."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, LiteralString

from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from orchestrix.core._checks import check_stream_name
from orchestrix.core.eventsourcing.snapshot import (
    EncodedSnapshot,
    Snapshot,
    check_schema_version,
    decode_wanted,
    encode_snapshot,
)
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.postgres._db import Database
from orchestrix.infrastructure.postgres._ops import Op, Query
from orchestrix.infrastructure.postgres._schema import ensure_schema, validate_schema_name
from orchestrix.infrastructure.postgres._statements import own_sql

__all__ = ["PostgresSnapshotStore"]


class _Statements:
    """The snapshot table's SQL for one schema, composed once."""

    load: LiteralString
    save: LiteralString
    delete: LiteralString

    def __init__(self, schema: str) -> None:
        table = sql.SQL("{}.snapshots").format(sql.Identifier(schema))

        def text(template: str) -> LiteralString:
            return own_sql(sql.SQL(own_sql(template)).format(snapshots=table).as_string(None))

        columns = "stream, version, event_id, schema_version, state_type, state, refusals"
        self.load = text(f"SELECT {columns} FROM {{snapshots}} WHERE stream = %s")
        # One statement, so the comparison with the stored row and the write cannot be split by
        # another writer: the row locked by ON CONFLICT is the one compared.
        self.save = text(
            f"INSERT INTO {{snapshots}} ({columns}) VALUES (%s, %s::bigint, %s, %s::bigint, %s, %s, %s) "
            "ON CONFLICT (stream) DO UPDATE SET version = excluded.version, event_id = excluded.event_id, "
            "schema_version = excluded.schema_version, state_type = excluded.state_type, "
            "state = excluded.state, refusals = excluded.refusals, taken_at = now() "
            "WHERE {snapshots}.schema_version <> excluded.schema_version "
            "OR {snapshots}.version <= excluded.version"
        )
        self.delete = text("DELETE FROM {snapshots} WHERE stream = %s")


def _load_op(st: _Statements, stream: str) -> Op[EncodedSnapshot | None]:
    rows = yield Query(st.load, (stream,))
    return EncodedSnapshot(*rows[0]) if rows else None


def _save_op(st: _Statements, e: EncodedSnapshot) -> Op[None]:
    params = (e.stream, e.version, e.event_id, e.schema_version, e.state_type, e.state, e.refusals)
    yield Query(st.save, params, fetch=False)


def _delete_op(st: _Statements, stream: str) -> Generator[Query, Any, None]:
    yield Query(st.delete, (stream,), fetch=False)


class PostgresSnapshotStore:
    """A SnapshotStore in the ``snapshots`` table of an orchestrix schema.

    ``save`` returns once the row is committed. Build one from a DSN or pool, or share an event
    store's connections and serializer with ``PostgresEventStore.snapshots()``.
    """

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool,
        serializer: Serializer,
        *,
        schema: str = "orchestrix",
        create_schema: bool = True,
        pool_size: int = 4,
        async_pool: AsyncConnectionPool | None = None,
        retry_timeout: float = 15.0,
    ) -> None:
        validate_schema_name(schema)
        self._serializer = serializer
        self._db = Database(
            dsn_or_pool, pool_size=pool_size, retry_timeout=retry_timeout, async_pool=async_pool
        )
        self._st = _Statements(schema)
        self._owns_db = True
        try:
            self._db.open(lambda conn: ensure_schema(conn, schema, create=create_schema))
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def _sharing(cls, db: Database, schema: str, serializer: Serializer) -> PostgresSnapshotStore:
        store = cls.__new__(cls)
        store._db, store._st, store._serializer, store._owns_db = db, _Statements(schema), serializer, False
        return store

    def save(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` unless a newer one of the same schema version is kept; committed on return."""
        encoded = encode_snapshot(self._serializer, snapshot)
        self._db.run("save_snapshot", lambda: _save_op(self._st, encoded))

    def load(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """The stream's snapshot (of ``schema_version``, if given), or None."""
        check_stream_name(stream)
        check_schema_version(schema_version)
        encoded = self._db.run("load_snapshot", lambda: _load_op(self._st, stream))
        return decode_wanted(self._serializer, encoded, schema_version)

    def delete(self, stream: str) -> None:
        """Forget the stream's snapshot."""
        check_stream_name(stream)
        self._db.run("delete_snapshot", lambda: _delete_op(self._st, stream))

    async def save_async(self, snapshot: Snapshot) -> None:
        """Asyncio form of :meth:`save`."""
        encoded = encode_snapshot(self._serializer, snapshot)
        await self._db.run_async("save_snapshot", lambda: _save_op(self._st, encoded))

    async def load_async(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """Asyncio form of :meth:`load`."""
        check_stream_name(stream)
        check_schema_version(schema_version)
        encoded = await self._db.run_async("load_snapshot", lambda: _load_op(self._st, stream))
        return decode_wanted(self._serializer, encoded, schema_version)

    async def delete_async(self, stream: str) -> None:
        """Asyncio form of :meth:`delete`."""
        check_stream_name(stream)
        await self._db.run_async("delete_snapshot", lambda: _delete_op(self._st, stream))

    def close(self) -> None:
        """Close the connections this object opened (a shared store's stay open)."""
        if self._owns_db:
            self._db.close()
