"""The tables, their migrations, and every SQL statement the backend runs.

Positions: an event's global position is ``transaction_id * 2**20 + index`` where
``transaction_id`` is the 64-bit ``pg_current_xact_id()`` of the appending transaction and
``index`` its place in the batch. Readers only return positions below
``pg_snapshot_xmin(pg_current_snapshot()) * 2**20``: every transaction with a smaller id has
ended, so nothing can commit below that horizon later. docs/postgres.md explains why this
order never skips.
"""

from __future__ import annotations

import hashlib
from typing import LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from orchestrix.core.errors import StoreError, StoreFormatError
from orchestrix.infrastructure.postgres.errors import SchemaNotInitializedError

__all__: list[str] = []

SCHEMA_VERSION = 3
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

_HORIZON = sql.SQL("(pg_snapshot_xmin(pg_current_snapshot())::text::bigint * {shift})").format(
    shift=sql.Literal(POSITION_SHIFT)
)

# The data comes back as its UTF-8 bytes: the serializer parses bytes without the detour
# through str (and a binary cursor hands bytea over as is), a third of the cost of a read.
_EVENT_COLUMNS = sql.SQL(
    "position, stream, version, event_id, event_type, convert_to(data, 'UTF8') AS data, "
    "correlation_id, causation_id, recorded_at"
)

# Each migration is a list of statements run in one transaction under the DDL lock.
_MIGRATIONS: dict[int, list[sql.SQL]] = {
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


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel for a schema (hashed: a channel name is at most 63 bytes)."""
    return "orchestrix_" + hashlib.sha256(schema.encode()).hexdigest()[:24]


SMALL_MULTI_APPEND = 64
"""A multi-stream append of at most this many events uses ``Statements.append_streams_small``."""


def _own_sql(text: str) -> LiteralString:
    # psycopg types a query as LiteralString to flag SQL text built from input. This module's
    # text is its own: literals and integer constants, each name quoted by sql.Identifier. Only
    # rendering it once to a str (so that no statement is composed per call) loses the mark.
    # (mypy reads LiteralString as str; pyright alone sees the difference.)
    return text  # pyright: ignore[reportReturnType]


class Statements:
    """The SQL text for one schema, composed once."""

    # Declared, as a checker would widen an inferred LiteralString attribute to str, and psycopg
    # takes a query's text as LiteralString.
    notify: LiteralString
    listen: LiteralString
    append_one: LiteralString
    append_new: LiteralString
    append_many: LiteralString
    append_one_fenced: LiteralString
    append_many_fenced: LiteralString
    append_streams: LiteralString
    append_streams_fenced: LiteralString
    import_streams: LiteralString
    import_streams_fenced: LiteralString
    append_streams_small: LiteralString
    append_streams_small_fenced: LiteralString
    stream_versions: LiteralString
    fence_generation: LiteralString
    grant_fence: LiteralString
    lookup_ids: LiteralString
    stream_version: LiteralString
    read_stream: LiteralString
    read_all: LiteralString
    read_all_horizon: LiteralString
    last_position: LiteralString
    committed_position: LiteralString
    events_after: LiteralString
    load_checkpoint: LiteralString
    save_checkpoint: LiteralString

    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema)
        events = sql.SQL("{}.events").format(s)
        checkpoints = sql.SQL("{}.checkpoints").format(s)
        fences = sql.SQL("{}.fences").format(s)
        fmt = {
            "events": events,
            "checkpoints": checkpoints,
            "fences": fences,
            "cols": _EVENT_COLUMNS,
            "horizon": _HORIZON,
        }

        def text(template: str) -> LiteralString:
            return _own_sql(sql.SQL(_own_sql(template)).format(**fmt).as_string(None))

        self.schema = schema
        self.channel = channel_name(schema)
        self.notify = _own_sql(sql.SQL("NOTIFY {}").format(sql.Identifier(self.channel)).as_string(None))
        self.listen = _own_sql(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)).as_string(None))
        # One statement, so one round trip and one implicit transaction in autocommit mode.
        # The expected version is checked against the version the statement itself read; a
        # writer that raced us in between makes the INSERT hit UNIQUE(stream, version). No
        # row comes back when the check fails. A single event skips unnest() and its array
        # parsing, which costs about as much again as the insert itself.
        check = (
            "WHERE %(expected)s::bigint = -2 OR (%(expected)s::bigint = -4 AND cur.v >= 0) "
            "OR cur.v = %(expected)s::bigint"
        )
        current = "(SELECT coalesce(max(version), -1) AS v FROM {events} WHERE stream = %(stream)s) cur"
        columns = "(position, stream, version, event_id, event_type, data, correlation_id, causation_id)"
        base = f"pg_current_xact_id()::text::bigint * {POSITION_SHIFT}"
        self.append_one = text(
            f"INSERT INTO {{events}} {columns} "
            f"SELECT {base}, %(stream)s, cur.v + 1, %(id)s, %(type)s, %(data)s, %(corr)s, %(caus)s "
            f"FROM {current} {check} RETURNING position, version"
        )
        # A new stream (NO_STREAM) needs no look at the stream: its first event is version 0,
        # and UNIQUE(stream, version) refuses it if the stream exists. The subquery that
        # append_one runs costs about a tenth of a single-event append.
        self.append_new = text(
            f"INSERT INTO {{events}} {columns} "
            f"VALUES ({base}, %(stream)s, 0, %(id)s, %(type)s, %(data)s, %(corr)s, %(caus)s) "
            "RETURNING position, version"
        )
        self.append_many = text(
            f"INSERT INTO {{events}} {columns} "
            f"SELECT {base} + b.i - 1, %(stream)s, cur.v + b.i, b.id, b.t, b.d, b.c, b.k "
            f"FROM {current}, unnest(%(ids)s::uuid[], %(types)s::text[], %(data)s::text[], "
            "%(corr)s::uuid[], %(caus)s::uuid[]) WITH ORDINALITY AS b(id, t, d, c, k, i) "
            f"{check} RETURNING position, version"
        )
        # Fenced forms: the same statements, joined to the lease's row locked FOR SHARE. A claim
        # that raises the generation (UPDATE) waits for a fenced append in flight to commit, and a
        # fenced append that comes after the claim re-reads the row and finds no match: so every
        # append of the old holder is either committed before the takeover or not at all.
        fence = (
            ", (SELECT 1 FROM {fences} WHERE name = %(fence)s AND generation = %(gen)s::bigint "
            "FOR SHARE) fenced"
        )
        self.append_one_fenced = self.append_one.replace(
            text(f"FROM {current} {check}"), text(f"FROM {current}{fence} {check}")
        )
        self.append_many_fenced = self.append_many.replace(
            text(f"FROM {current}, unnest("), text(f"FROM {current}{fence}, unnest(")
        )
        # A multi-stream append, also one statement: each stream's current version is read and
        # checked, and the rows of every stream are inserted only if all checks pass. Positions
        # follow the order the streams were given (b.i); rows are inserted in stream-name order,
        # so two appends touching the same streams wait for each other's unique-index entries in
        # one order, and do not deadlock.
        many_current = (
            "WITH req AS (SELECT r.stream, r.expected, r.k, "
            "(SELECT coalesce(max(version), -1) FROM {events} WHERE stream = r.stream) AS v "
            "FROM unnest(%(streams)b::text[], %(expecteds)b::bigint[]) "
            "WITH ORDINALITY AS r(stream, expected, k)), "
            "ok AS (SELECT bool_and(expected = -2 OR (expected = -4 AND v >= 0) OR v = expected) AS good "
            "FROM req) "
        )
        # The arrays go in binary (%b): parsing a thousand-element array literal cost the server
        # about as much as the insert; binary halves a 1,000-event append_many.
        many_rows = (
            "unnest(%(parts)b::bigint[], %(nums)b::bigint[], %(ids)b::uuid[], %(types)b::text[], "
            "%(data)b::text[], %(corr)b::uuid[], %(caus)b::uuid[]) "
            "WITH ORDINALITY AS b(part, n, id, t, d, c, k, i) JOIN req ON req.k = b.part "
            "WHERE ok.good ORDER BY req.stream, b.n RETURNING position, stream, version"
        )
        self.append_streams = text(
            f"{many_current}INSERT INTO {{events}} {columns} "
            f"SELECT {base} + b.i - 1, req.stream, req.v + b.n, b.id, b.t, b.d, b.c, b.k FROM ok, {many_rows}"
        )
        self.append_streams_fenced = text(
            f"{many_current}INSERT INTO {{events}} {columns} "
            f"SELECT {base} + b.i - 1, req.stream, req.v + b.n, b.id, b.t, b.d, b.c, b.k FROM ok{fence}, "
            f"{many_rows}"
        )

        # An import (orchestrix copy): the multi-stream append, each row bringing its recorded_at.
        def with_times(statement: LiteralString) -> LiteralString:
            return (
                statement.replace(text(columns), text(columns[:-1] + ", recorded_at)"))
                .replace(text("b.c, b.k FROM"), text("b.c, b.k, b.r FROM"))
                .replace(
                    text("%(caus)b::uuid[]) WITH"), text("%(caus)b::uuid[], %(times)b::timestamptz[]) WITH")
                )
                .replace(text("b(part, n, id, t, d, c, k, i)"), text("b(part, n, id, t, d, c, k, r, i)"))
            )

        self.import_streams = with_times(self.append_streams)
        self.import_streams_fenced = with_times(self.append_streams_fenced)

        # The same statements for small appends (SMALL_MULTI_APPEND events at most), with the
        # streams and the events each passed as one JSON text, read by json_to_recordset().
        # unnest() estimates its rows from a constant array, so with arrays each custom plan
        # (the arrays as constants) looked cheaper than the generic one and PostgreSQL planned
        # the statement again on every call: 0.18 ms of planning against 0.09 ms of execution
        # for two one-event streams. json_to_recordset() estimates the same either way, so the
        # prepared statement keeps its generic plan; and json.dumps() costs a fraction of
        # dumping nine arrays (0.13 ms in psycopg). A page of thousands of events (a copy) is
        # better off with a plan made for its arrays (a generic one was 20-60% slower there),
        # so it keeps the array form.
        small_current = (
            "WITH req AS (SELECT r.s AS stream, r.e AS expected, r.k, "
            "(SELECT coalesce(max(version), -1) FROM {events} WHERE stream = r.s) AS v "
            "FROM json_to_recordset(%(streams)s::json) AS r(s text, e bigint, k bigint)), "
            "ok AS (SELECT bool_and(expected = -2 OR (expected = -4 AND v >= 0) OR v = expected) AS good "
            "FROM req) "
        )
        small_rows = (
            "json_to_recordset(%(events)s::json) "
            "AS b(p bigint, n bigint, i bigint, id uuid, t text, d text, c uuid, k uuid) "
            "JOIN req ON req.k = b.p WHERE ok.good ORDER BY req.stream, b.n "
            "RETURNING position, stream, version"
        )
        small_values = f"SELECT {base} + b.i - 1, req.stream, req.v + b.n, b.id, b.t, b.d, b.c, b.k"
        self.append_streams_small = text(
            f"{small_current}INSERT INTO {{events}} {columns} {small_values} FROM ok, {small_rows}"
        )
        self.append_streams_small_fenced = text(
            f"{small_current}INSERT INTO {{events}} {columns} {small_values} FROM ok{fence}, {small_rows}"
        )
        self.stream_versions = text(
            "SELECT s.stream, (SELECT coalesce(max(version), -1) FROM {events} WHERE stream = s.stream) "
            "FROM unnest(%s::text[]) AS s(stream)"
        )
        self.fence_generation = text("SELECT generation FROM {fences} WHERE name = %s")
        self.grant_fence = text(
            "INSERT INTO {fences} (name, generation) VALUES (%s, 1) ON CONFLICT (name) DO UPDATE "
            "SET generation = {fences}.generation + 1, granted_at = now() RETURNING generation"
        )
        self.lookup_ids = text(
            "SELECT event_id, stream, version, position FROM {events} WHERE event_id = ANY(%s::uuid[])"
        )
        self.stream_version = text("SELECT coalesce(max(version), -1) FROM {events} WHERE stream = %s")
        self.read_stream = text(
            "SELECT {cols} FROM {events} WHERE stream = %s AND version >= %s::bigint "
            "ORDER BY version LIMIT %s::bigint"
        )
        # A page is a walk of the position index from ``after`` that stops after ``limit`` rows;
        # the horizon then cuts it (rows come in position order, so what remains is every
        # readable row of the walk). Given both bounds in one WHERE, the planner, without
        # statistics (a table just filled) or with stale ones, guesses that a handful of rows
        # lie between them, and fetches every row past ``after`` to sort them: each page then
        # costs the whole rest of the store. PostgreSQL does not push a condition into a
        # subquery with a LIMIT, so this walk stays a walk.
        page = "SELECT {cols} FROM {events} WHERE position > %s::bigint ORDER BY position LIMIT %s::bigint"
        # (SELECT horizon): computed once for the statement, not once per row.
        self.read_all = text(
            f"SELECT * FROM ({page}) e WHERE e.position < (SELECT {{horizon}}) ORDER BY e.position"
        )
        # The same page, with the horizon in front even when no event comes back (LEFT JOIN),
        # for a reader waiting for its own recent appends to pass it. An extra column and a
        # join cost a quarter of a page's fetch, so only that reader pays for them.
        self.read_all_horizon = text(
            "SELECT h.horizon, e.* FROM (SELECT (SELECT {horizon}) AS horizon) h LEFT JOIN LATERAL ("
            f"SELECT * FROM ({page}) p WHERE p.position < h.horizon ORDER BY p.position) e ON true"
        )
        self.last_position = text(
            "SELECT h.horizon, (SELECT coalesce(max(position), 0) FROM {events} WHERE position < h.horizon) "
            "FROM (SELECT {horizon} AS horizon) h"
        )
        # Everything committed, horizon or not: a store opening learns what it must wait to see.
        self.committed_position = text("SELECT coalesce(max(position), 0) FROM {events}")
        # One probe of the position index: the first event after ``after`` (committed, seen by
        # this snapshot) and the horizon. Two EXISTS over position ranges let the planner pick
        # a sequential scan of every row past ``after``, which it expects to find at once but
        # which, rows lying in position order, reads half the table for a mid-store position.
        self.events_after = text(
            "SELECT {horizon}, (SELECT position FROM {events} WHERE position > %s::bigint "
            "ORDER BY position LIMIT 1)"
        )
        self.load_checkpoint = text("SELECT position FROM {checkpoints} WHERE name = %s")
        self.save_checkpoint = text(
            "INSERT INTO {checkpoints} (name, position) VALUES (%s, %s::bigint) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()"
        )


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
            for statement in _MIGRATIONS[version]:
                conn.execute(statement.format(schema=sql.Identifier(schema)))
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
