"""Every SQL statement the PostgreSQL backend runs against a store's tables, composed once per schema.

The tables and their migrations are ``_schema.py``'s, which also explains positions
(``transaction_id * 2**20 + index``) and the horizon readers stop below.
"""

from __future__ import annotations

import hashlib
from typing import LiteralString

from psycopg import sql

from orchestrix.infrastructure.postgres._schema import POSITION_SHIFT

__all__: list[str] = []

_HORIZON = sql.SQL("(pg_snapshot_xmin(pg_current_snapshot())::text::bigint * {shift})").format(
    shift=sql.Literal(POSITION_SHIFT)
)

# The data comes back as its UTF-8 bytes: the serializer parses bytes without the detour
# through str (and a binary cursor hands bytea over as is), a third of the cost of a read.
_EVENT_COLUMNS = sql.SQL(
    "position, stream, version, event_id, event_type, convert_to(data, 'UTF8') AS data, "
    "correlation_id, causation_id, recorded_at"
)


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel for a schema (hashed: a channel name is at most 63 bytes)."""
    return "orchestrix_" + hashlib.sha256(schema.encode()).hexdigest()[:24]


SMALL_MULTI_APPEND = 64
"""A multi-stream append of at most this many events uses ``Statements.append_streams_small``."""


def own_sql(text: str) -> LiteralString:
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
            return own_sql(sql.SQL(own_sql(template)).format(**fmt).as_string(None))

        self.schema = schema
        self.channel = channel_name(schema)
        self.notify = own_sql(sql.SQL("NOTIFY {}").format(sql.Identifier(self.channel)).as_string(None))
        self.listen = own_sql(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)).as_string(None))
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
