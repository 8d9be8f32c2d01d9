"""PostgreSQL fails fast and clearly: a DSN that cannot work is refused at once with the server's
reason, what can heal is retried, and a table that is not orchestrix's is refused at open.

The retrying tests use a small fake server that answers every connection with one chosen
error, so "the database system is starting up" (57P03) can be had without restarting a real
server. Tests that must not retry give a long ``retry_timeout``: a retried error would show
as a DatabaseUnavailableError after it, not as the error the test expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.infrastructure.pg_support import dsn_or_skip, new_schema_name, sql_execute, throwaway_schema

DSN = dsn_or_skip()

from psycopg import conninfo as pg_conninfo  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402

from orchestrix.core.errors import StoreFormatError  # noqa: E402
from orchestrix.infrastructure.postgres import (  # noqa: E402
    DatabaseConfigurationError,
    DatabaseUnavailableError,
    PostgresCheckpointStore,
    PostgresEventStore,
    SchemaNotInitializedError,
)
from orchestrix.testing import contract_serializer  # noqa: E402
from orchestrix.testing.contract import ContractEvent  # noqa: E402

NEVER = 30.0
"""A retry budget no test waits out: an error that was retried would surface only after it."""


def _with(dsn: str, **changes: str) -> str:
    return pg_conninfo.make_conninfo(dsn, **changes)


def _open(dsn: object, **options: object) -> PostgresEventStore:
    return PostgresEventStore(dsn, contract_serializer(), **options)  # type: ignore[arg-type]


# -- a DSN that cannot work fails at once, with the server's reason --------------------------


def test_an_unknown_database_is_refused_at_once_with_the_servers_reason() -> None:
    name = f"orx_no_such_db_{uuid.uuid4().hex[:8]}"
    with pytest.raises(DatabaseConfigurationError) as raised:
        _open(_with(DSN, dbname=name), retry_timeout=NEVER)
    assert raised.value.refused_by_server
    assert f'database "{name}" does not exist' in str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_unknown_role_is_refused_at_once() -> None:
    role = f"orx_no_such_role_{uuid.uuid4().hex[:8]}"
    with pytest.raises(DatabaseConfigurationError, match=f'role "{role}" does not exist'):
        PostgresCheckpointStore(_with(DSN, user=role), retry_timeout=NEVER)


def test_a_role_that_may_not_log_in_is_refused_at_once() -> None:
    role = f"orx_nologin_{uuid.uuid4().hex[:8]}"
    sql_execute(DSN, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)).as_string(None))
    try:
        with pytest.raises(DatabaseConfigurationError, match="not permitted to log in") as raised:
            _open(_with(DSN, user=role), retry_timeout=NEVER)
        assert raised.value.refused_by_server
    finally:
        sql_execute(DSN, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)).as_string(None))


@pytest.mark.parametrize(
    ("dsn", "words"),
    [
        ("postgresql://app:s3cret@[::1/shop", 'matching "]"'),
        ("host=127.0.0.1 bogus=1 password=s3cret", 'invalid connection option "bogus"'),
        ("postgresql://app:s3cret@127.0.0.1/shop?sslmode=bogus", 'invalid sslmode value: "bogus"'),
        (
            "host=127.0.0.1 port=abc password=s3cret",
            "invalid integer value 'abc' for connection option 'port'",
        ),
        ("host=127.0.0.1 connect_timeout=soon", "'connect_timeout'"),
    ],
)
def test_a_malformed_dsn_is_refused_at_once_without_its_password(dsn: str, words: str) -> None:
    with pytest.raises(DatabaseConfigurationError) as raised:
        _open(dsn, retry_timeout=NEVER)
    assert not raised.value.refused_by_server
    assert words in str(raised.value)
    assert "s3cret" not in str(raised.value)
    # psycopg's own error quotes the DSN: it is neither the cause nor shown as the context.
    error = raised.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize("dsn", [None, 5432, b"dbname=test"])
def test_a_dsn_that_is_not_a_string_is_refused_naming_its_type(dsn: object) -> None:
    with pytest.raises(DatabaseConfigurationError, match=f"not {type(dsn).__name__}"):
        _open(dsn)
    with pytest.raises(DatabaseConfigurationError, match=f"not {type(dsn).__name__}"):
        PostgresCheckpointStore(dsn)  # type: ignore[arg-type]


def test_a_caller_owned_pool_on_an_unknown_database_says_why_after_one_pool_timeout() -> None:
    name = f"orx_no_such_db_{uuid.uuid4().hex[:8]}"
    pool = ConnectionPool(_with(DSN, dbname=name), min_size=1, kwargs={"autocommit": True}, open=True)
    try:
        with pytest.raises(DatabaseConfigurationError, match=f'database "{name}" does not exist'):
            # Without the diagnosis this would be a DatabaseUnavailableError once the budget ran out.
            _open(pool, retry_timeout=0.5)
    finally:
        pool.close()


def test_a_database_dropped_under_a_running_store_fails_with_the_reason_sync_and_async() -> None:
    name = f"orx_dropped_{uuid.uuid4().hex[:8]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string(None)
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)).as_string(None)
    sql_execute(DSN, create)
    try:
        store = _open(_with(DSN, dbname=name), retry_timeout=0.5, pool_size=1)
        try:
            assert store.last_position() == 0
            sql_execute(DSN, drop)
            with pytest.raises(DatabaseConfigurationError, match=f'database "{name}" does not exist'):
                asyncio.run(store.last_position_async())
            with pytest.raises(DatabaseConfigurationError, match=f'database "{name}" does not exist'):
                store.last_position()
        finally:
            store.close()
    finally:
        sql_execute(DSN, drop)


# -- what can heal is retried, and the error says what it was -----------------------------------


def test_a_refused_connection_is_retried_and_the_error_names_it() -> None:
    with pytest.raises(DatabaseUnavailableError) as raised:
        _open("postgresql://postgres@127.0.0.1:1/test?connect_timeout=1", retry_timeout=0.3)
    assert raised.value.attempts > 1
    assert "Connection refused" in str(raised.value)
    assert "couldn't get a connection" not in str(raised.value)
    assert "\n" not in str(raised.value)


class FakeServer:
    """Answers every connection (and libpq's SSL request) with one ErrorResponse, then hangs up."""

    def __init__(self, sqlstate: str, message: str) -> None:
        self.fields = b"".join(
            code + text.encode() + b"\0"
            for code, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
        )
        self.connections = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._socket.accept()
                with conn:
                    self.connections += 1
                    self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                (length,) = struct.unpack("!i", _read(conn, 4))
                body = _read(conn, length - 4)
                code = struct.unpack("!i", body[:4])[0]
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: "not here"
                    conn.sendall(b"N")
                    continue
                error = self.fields + b"\0"
                conn.sendall(b"E" + struct.pack("!i", len(error) + 4) + error)
                return

    def close(self) -> None:
        self._socket.close()


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("the client hung up")
        data += chunk
    return data


@pytest.fixture
def fake_server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    server = FakeServer(*request.param)
    yield server
    server.close()


@pytest.mark.parametrize(
    "fake_server",
    [
        ("57P03", "the database system is starting up"),
        ("57P03", "the database system is shutting down"),
        ("53300", "sorry, too many clients already"),
    ],
    indirect=True,
)
def test_a_server_that_cannot_take_connections_yet_is_retried(fake_server: FakeServer) -> None:
    with pytest.raises(DatabaseUnavailableError) as raised:
        _open(f"host=127.0.0.1 port={fake_server.port} user=app dbname=shop", retry_timeout=0.5)
    assert raised.value.attempts > 1
    assert fake_server.fields.split(b"M")[-1].rstrip(b"\0").decode() in str(raised.value)


@pytest.mark.parametrize(
    "fake_server",
    [("28P01", 'password authentication failed for user "app"'), ("3D000", 'database "shop" does not exist')],
    indirect=True,
)
def test_a_server_that_refuses_the_dsn_is_not_retried(fake_server: FakeServer) -> None:
    with pytest.raises(DatabaseConfigurationError) as raised:
        _open(f"host=127.0.0.1 port={fake_server.port} user=app dbname=shop", retry_timeout=NEVER)
    assert raised.value.refused_by_server
    assert fake_server.fields.split(b"M")[-1].rstrip(b"\0").decode() in raised.value.reason


# -- a table that is not orchestrix's is refused at open ----------------------------------------


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN, "foreign") as name:
        yield name


def _tables(schema: str) -> list[str]:
    rows = sql_execute(DSN, "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))
    return [row[0] for row in rows]


def test_a_foreign_events_table_is_refused_at_open_saying_what_differs_and_nothing_is_created(
    schema: str,
) -> None:
    sql_execute(DSN, f'CREATE SCHEMA "{schema}"')
    sql_execute(DSN, f'CREATE TABLE "{schema}".events (id serial PRIMARY KEY, payload jsonb NOT NULL)')
    with pytest.raises(StoreFormatError) as raised:
        _open(DSN, schema=schema)
    message = str(raised.value)
    assert "table events: no column position (bigint)" in message
    assert "extra column payload (jsonb) is NOT NULL without a default" in message
    assert "no unique constraint events_event_id_key on (event_id)" in message
    assert "checkpoints" not in message  # that table was made in the transaction that was undone
    assert _tables(schema) == ["events"]


def test_a_changed_column_type_is_refused_at_the_next_open(schema: str) -> None:
    _open(DSN, schema=schema).close()
    sql_execute(DSN, f'ALTER TABLE "{schema}".events ALTER COLUMN data TYPE jsonb USING data::jsonb')
    sql_execute(DSN, f'ALTER TABLE "{schema}".checkpoints ALTER COLUMN position DROP NOT NULL')
    with pytest.raises(StoreFormatError) as raised:
        _open(DSN, schema=schema)
    assert "table events: column data is jsonb, expected text" in str(raised.value)
    assert "table checkpoints: column position is nullable" in str(raised.value)
    with pytest.raises(StoreFormatError, match="column data is jsonb"):
        PostgresCheckpointStore(DSN, schema=schema, create_schema=False)


def test_a_missing_unique_constraint_is_refused(schema: str) -> None:
    _open(DSN, schema=schema).close()
    sql_execute(DSN, f'ALTER TABLE "{schema}".events DROP CONSTRAINT events_stream_version_key')
    with pytest.raises(
        StoreFormatError, match=r"no unique constraint events_stream_version_key on \(stream, version\)"
    ):
        _open(DSN, schema=schema)


def test_an_extra_nullable_column_is_allowed(schema: str) -> None:
    _open(DSN, schema=schema).close()
    sql_execute(DSN, f'ALTER TABLE "{schema}".events ADD COLUMN note text')
    with _open(DSN, schema=schema) as store:
        store.append("s", [ContractEvent(1)])
        assert store.stream_version("s") == 0


def test_a_schema_without_tables_is_a_schema_not_initialized_error() -> None:
    name = new_schema_name("missing")
    with pytest.raises(SchemaNotInitializedError) as raised:
        _open(DSN, schema=name, create_schema=False)
    assert raised.value.schema == name
    assert isinstance(raised.value, StoreFormatError)


def test_a_fresh_store_passes_its_own_layout_check(schema: str) -> None:
    for _ in range(2):  # created, then opened as it is
        with _open(DSN, schema=schema) as store:
            assert store.last_position() == 0
    assert _tables(schema) == ["checkpoints", "events", "fences", "schema_version", "snapshots"]
