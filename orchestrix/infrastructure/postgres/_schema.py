"""The tables and their migrations: creating, migrating and checking a store's schema.

The statements run against the tables are ``_statements.py``'s.

Positions: an event's global position is ``transaction_id * 2**20 + index`` where
``transaction_id`` is the 64-bit ``pg_current_xact_id()`` of the appending transaction and
``index`` its place in the batch. Readers only return positions below
``pg_snapshot_xmin(pg_current_snapshot()) * 2**20``: every transaction with a smaller id has
ended, so nothing can commit below that horizon later. docs/postgres.md explains why this
order never skips.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from orchestrix.core.errors import StoreError, StoreFormatError
from orchestrix.infrastructure.postgres.errors import SchemaNotInitializedError

__all__: list[str] = []

SCHEMA_VERSION = 4
"""The layout this code reads and writes; older layouts are migrated on open."""

POSITION_SHIFT = 2**20
"""Positions per transaction: the factor between a transaction id and its first position."""

MAX_BATCH_SIZE = POSITION_SHIFT - 1
"""The most events one append may carry."""

MAX_TRANSACTION_ID = (2**63 - 1) // POSITION_SHIFT
"""Past this 64-bit transaction id, positions would not fit a bigint (about 8.8e12 transactions)."""

MIN_SERVER_VERSION = 130000  # pg_current_xact_id() and pg_current_snapshot() arrived in 13

EVENT_ID_CONSTRAINT = "events_event_id_key"
STREAM_VERSION_CONSTRAINT = "events_stream_version_key"

# A fixed advisory-lock key taken around all orchestrix DDL (the first 8 bytes of a hash of a
# name, so it does not collide with small keys applications pick by hand).
DDL_LOCK_KEY = int.from_bytes(hashlib.sha256(b"orchestrix-schema-ddl").digest()[:8], "big", signed=True)


def _stream_names_in_byte_order(conn: psycopg.Connection, schema: str) -> None:
    """Put ``events.stream`` in the "C" collation.

    Every append inserts into UNIQUE (stream, version), and most look the stream up first; in a
    libc collation (even C.UTF-8) each of the ~15-20 comparisons of an index descent copies both
    strings and calls strcoll, about 0.5 us more than a byte comparison: ~10 us of server CPU
    per single-event append, a fifth of what its INSERT costs the server before the commit.
    Equality, all an event store asks of stream names, is the same in every deterministic
    collation. Rebuilds the (stream, version) index once, holding the table meanwhile.
    """
    # A table of another application is refused as it is (the transaction rolls back), not
    # failed on with the raw error of an ALTER that does not fit it.
    _check_tables(conn, schema)
    conn.execute(
        sql.SQL('ALTER TABLE {}.events ALTER COLUMN stream TYPE text COLLATE "C"').format(
            sql.Identifier(schema)
        )
    )


# Each migration is a list of steps run in one transaction under the DDL lock: statements
# (formatted with the schema) or functions of the connection and the schema.
_MIGRATIONS: dict[int, list[sql.SQL | Callable[[psycopg.Connection, str], None]]] = {
    1: [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {schema}.events (
                position bigint NOT NULL,
                stream text NOT NULL,
                version bigint NOT NULL,
                event_id uuid NOT NULL,
                event_type text NOT NULL,
                data text NOT NULL,
                correlation_id uuid,
                causation_id uuid,
                recorded_at timestamptz NOT NULL DEFAULT now(),
                CONSTRAINT events_pkey PRIMARY KEY (position),
                CONSTRAINT events_stream_version_key UNIQUE (stream, version),
                CONSTRAINT events_event_id_key UNIQUE (event_id),
                CONSTRAINT events_version_check CHECK (version >= 0)
            )"""
        ),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {schema}.checkpoints (
                name text NOT NULL PRIMARY KEY,
                position bigint NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )"""
        ),
    ],
    # Lease grants, for fencing: each claim of a lease raises its generation, and an append made
    # under an older generation is refused (docs/postgres.md, "Two runners, one partition").
    2: [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {schema}.fences (
                name text NOT NULL PRIMARY KEY,
                generation bigint NOT NULL CHECK (generation >= 1),
                granted_at timestamptz NOT NULL DEFAULT now()
            )"""
        ),
    ],
    # Aggregate snapshots, one per stream, apart from the events (docs/snapshots.md).
    3: [
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {schema}.snapshots (
                stream text NOT NULL,
                version bigint NOT NULL CHECK (version >= 0),
                event_id uuid NOT NULL,
                schema_version bigint NOT NULL CHECK (schema_version >= 0),
                state_type text NOT NULL,
                state text NOT NULL,
                refusals text NOT NULL,
                taken_at timestamptz NOT NULL DEFAULT now(),
                CONSTRAINT snapshots_pkey PRIMARY KEY (stream)
            )"""
        ),
    ],
    # Stream names compare byte by byte ("C"), not by the database's collation (see
    # _stream_names_in_byte_order).
    4: [_stream_names_in_byte_order],
}


# The tables as the migrations above leave them, for telling a foreign table of the same name
# apart from ours: column -> (type as format_type() names it, NOT NULL, filled by a default).
_LAYOUT: dict[str, dict[str, tuple[str, bool, bool]]] = {
    "events": {
        "position": ("bigint", True, False),
        "stream": ("text", True, False),
        "version": ("bigint", True, False),
        "event_id": ("uuid", True, False),
        "event_type": ("text", True, False),
        "data": ("text", True, False),
        "correlation_id": ("uuid", False, False),
        "causation_id": ("uuid", False, False),
        "recorded_at": ("timestamp with time zone", True, True),
    },
    "checkpoints": {
        "name": ("text", True, False),
        "position": ("bigint", True, False),
        "updated_at": ("timestamp with time zone", True, True),
    },
    "snapshots": {
        "stream": ("text", True, False),
        "version": ("bigint", True, False),
        "event_id": ("uuid", True, False),
        "schema_version": ("bigint", True, False),
        "state_type": ("text", True, False),
        "state": ("text", True, False),
        "refusals": ("text", True, False),
        "taken_at": ("timestamp with time zone", True, True),
    },
}
# The unique constraints appends and checkpoints rely on (by name: a unique violation is told
# apart by its constraint), with their columns in order.
_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "events": {
        "events_pkey": ("position",),
        STREAM_VERSION_CONSTRAINT: ("stream", "version"),
        EVENT_ID_CONSTRAINT: ("event_id",),
    },
    "checkpoints": {"checkpoints_pkey": ("name",)},
    "snapshots": {"snapshots_pkey": ("stream",)},
}


def validate_schema_name(schema: object) -> str:
    """Return ``schema`` if PostgreSQL can hold it as a schema name without truncating it."""
    if not isinstance(schema, str) or not schema:
        raise StoreError(f"schema must be a non-empty str, not {schema!r}")
    if len(schema.encode()) > 63 or not schema.isprintable():
        raise StoreError(f"schema {schema!r}: at most 63 bytes, printable characters only")
    if schema.startswith("pg_"):
        raise StoreError(f"schema {schema!r}: names starting with pg_ are reserved by PostgreSQL")
    return schema


def ensure_schema(conn: psycopg.Connection, schema: str, *, create: bool = True) -> None:
    """Create or migrate the schema, race-free; a no-op (one query) when it is current.

    All DDL runs in one transaction holding ``pg_advisory_xact_lock(DDL_LOCK_KEY)``, so
    processes starting together wait for each other instead of colliding in the catalogs.
    """
    where = f"PostgreSQL schema {schema!r}"
    version_table = sql.SQL("{}.schema_version").format(sql.Identifier(schema))
    server = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_encoding')"
    ).fetchone()
    if server is None or server[0] < MIN_SERVER_VERSION:
        raise StoreError(f"orchestrix needs PostgreSQL 13 or newer (server version {server and server[0]})")
    if server[1] != "UTF8":
        raise StoreError(f"orchestrix needs a UTF8 database, this one is {server[1]}")
    current = _read_version(conn, version_table)
    if current == SCHEMA_VERSION:
        _check_tables(conn, schema)
        _check_positions_behind_cluster(conn, schema)
        return
    if current is not None and current > SCHEMA_VERSION:
        raise StoreFormatError(
            where, f"schema version {current} is newer than this orchestrix ({SCHEMA_VERSION})"
        )
    if not create:
        raise SchemaNotInitializedError(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists is None:  # CREATE SCHEMA IF NOT EXISTS would need CREATE rights even when it exists
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY CHECK (id = 1), version int NOT NULL, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(version_table)
        )
        row = conn.execute(
            sql.SQL("SELECT version FROM {} WHERE id = 1 FOR UPDATE").format(version_table)
        ).fetchone()
        current = 0 if row is None else row[0]
        if current > SCHEMA_VERSION:
            raise StoreFormatError(where, f"schema version {current} is newer than this orchestrix")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for step in _MIGRATIONS[version]:
                if isinstance(step, sql.SQL):
                    conn.execute(step.format(schema=sql.Identifier(schema)))
                else:
                    step(conn, schema)
        # CREATE TABLE IF NOT EXISTS keeps a table of another application that has the same
        # name; refusing it here rolls the whole transaction back, so nothing is recorded.
        _check_tables(conn, schema)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, version) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version, updated_at = now()"
            ).format(version_table),
            (SCHEMA_VERSION,),
        )


def _check_tables(conn: psycopg.Connection, schema: str) -> None:
    """Refuse tables that are not laid out as orchestrix made them, saying what differs.

    A table of another application (or one changed by hand) would otherwise open fine and
    fail at the first append with a raw database error, or, missing a unique constraint,
    quietly break optimistic concurrency.
    """
    columns = conn.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY a.attnum",
        (schema, list(_LAYOUT)),
    ).fetchall()
    keys = conn.execute(
        "SELECT c.relname, k.conname, k.contype, "
        "ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(num, i) "
        "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.i) "
        "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) AND k.contype IN ('p', 'u')",
        (schema, list(_LAYOUT)),
    ).fetchall()
    found: dict[str, dict[str, tuple[str, bool, bool]]] = {table: {} for table in _LAYOUT}
    for table, column, kind, not_null, has_default in columns:
        found[table][column] = (kind, not_null, has_default)
    found_keys: dict[str, dict[str, tuple[str, ...]]] = {table: {} for table in _KEYS}
    for table, name, _, key_columns in keys:
        found_keys[table][name] = tuple(key_columns)
    problems = [
        f"table {table}: {problem}"
        for table in _LAYOUT
        for problem in _differences(found[table], _LAYOUT[table], found_keys[table], _KEYS[table])
    ]
    if problems:
        raise StoreFormatError(
            f"PostgreSQL schema {schema!r}",
            "not an orchestrix store (a table of another application? use another schema): "
            + "; ".join(problems),
        )


def _differences(
    columns: dict[str, tuple[str, bool, bool]],
    expected: dict[str, tuple[str, bool, bool]],
    keys: dict[str, tuple[str, ...]],
    expected_keys: dict[str, tuple[str, ...]],
) -> list[str]:
    if not columns:
        return ["missing"]
    problems = []
    for name, (kind, not_null, filled) in expected.items():
        if name not in columns:
            problems.append(f"no column {name} ({kind})")
            continue
        found_kind, found_not_null, found_default = columns[name]
        if found_kind != kind:
            problems.append(f"column {name} is {found_kind}, expected {kind}")
        elif found_not_null != not_null:
            problems.append(f"column {name} is {'NOT NULL' if found_not_null else 'nullable'}")
        elif filled and not found_default:
            problems.append(f"column {name} has no default")
    for name, (found_kind, found_not_null, found_default) in columns.items():
        if name not in expected and found_not_null and not found_default:
            problems.append(f"extra column {name} ({found_kind}) is NOT NULL without a default")
    for name, key_columns in expected_keys.items():
        if keys.get(name) != key_columns:
            problems.append(f"no unique constraint {name} on ({', '.join(key_columns)})")
    return problems


def _read_version(conn: psycopg.Connection, version_table: sql.Composable) -> int | None:
    try:
        with conn.transaction():
            row = conn.execute(
                sql.SQL("SELECT version FROM {} WHERE id = 1").format(version_table)
            ).fetchone()
    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName):
        return None
    return None if row is None else row[0]


def _check_positions_behind_cluster(conn: psycopg.Connection, schema: str) -> None:
    """Refuse a store whose positions are ahead of this cluster's transaction ids.

    That happens after a logical dump is restored into another (younger) cluster: new appends
    would get positions below the stored ones, and readers past those would never see them.
    """
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT max(position) FROM {}.events), "
            "pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        ).format(sql.Identifier(schema))
    ).fetchone()
    if row is None or row[0] is None:
        return
    newest, next_xid = row
    if newest // POSITION_SHIFT >= next_xid:
        raise StoreFormatError(
            f"PostgreSQL schema {schema!r}",
            f"the newest event was written by transaction {newest // POSITION_SHIFT}, but this cluster's "
            f"next transaction id is {next_xid}: the events were restored into another cluster, and "
            "new positions would sort before them (docs/postgres.md, Backups, explains the fix)",
        )
