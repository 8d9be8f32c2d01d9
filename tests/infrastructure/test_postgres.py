"""The PostgreSQL store: the whole contract suite, plus what only this backend promises."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import attrs
import pytest

from tests.infrastructure.pg_support import drop_schema, dsn_or_skip, sql_execute, throwaway_schema

DSN = dsn_or_skip()

import psycopg  # noqa: E402  (after the skip: the extra may be missing where the DSN is)
from psycopg_pool import AsyncConnectionPool, ConnectionPool  # noqa: E402

from orchestrix.core.errors import (  # noqa: E402
    ConcurrencyError,
    InvalidStreamNameError,
    SerializationError,
    StoreClosedError,
    StoreFormatError,
)
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, EventStore  # noqa: E402
from orchestrix.core.execution.checkpoint import CheckpointStore  # noqa: E402
from orchestrix.core.execution.subscription import subscribe_async  # noqa: E402
from orchestrix.core.messaging.messages import Event, NewEvent  # noqa: E402
from orchestrix.core.messaging.serializer import Serializer  # noqa: E402
from orchestrix.infrastructure.postgres import (  # noqa: E402
    MAX_BATCH_SIZE,
    SCHEMA_VERSION,
    BatchTooLargeError,
    DatabaseUnavailableError,
    InvalidCheckpointNameError,
    PostgresCheckpointStore,
    PostgresEventStore,
    _ops,
)
from orchestrix.testing import (  # noqa: E402
    CheckpointStoreContract,
    ContractEvent,
    EventImportContract,
    EventStoreContract,
    FencingContract,
    MoneyMoved,
    contract_serializer,
)


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN) as name:
        yield name


def open_store(schema: str, **options: object) -> PostgresEventStore:
    return PostgresEventStore(DSN, contract_serializer(), schema=schema, pool_size=8, **options)  # type: ignore[arg-type]


class TestPostgresEventStore(EventStoreContract, FencingContract, EventImportContract):
    @pytest.fixture
    def store(self, schema: str) -> Iterator[PostgresEventStore]:
        self.opened = [open_store(schema, poll_interval=0.2)]
        yield self.opened[0]
        for store in self.opened:
            store.close()

    def reopen(self, store: EventStore) -> EventStore:
        assert isinstance(store, PostgresEventStore)
        store.close()
        again = open_store(store.schema, poll_interval=0.2)
        self.opened.append(again)
        return again


class TestPostgresCheckpointStore(CheckpointStoreContract):
    @pytest.fixture
    def checkpoints(self, schema: str) -> Iterator[PostgresCheckpointStore]:
        self.opened = [PostgresCheckpointStore(DSN, schema=schema, pool_size=2)]
        yield self.opened[0]
        for checkpoints in self.opened:
            checkpoints.close()

    def reopen(self, checkpoints: CheckpointStore) -> CheckpointStore:
        assert isinstance(checkpoints, PostgresCheckpointStore)
        checkpoints.close()
        again = PostgresCheckpointStore(DSN, schema=self.schema_name, pool_size=2)
        self.opened.append(again)
        return again

    @pytest.fixture(autouse=True)
    def _remember_schema(self, schema: str) -> None:
        self.schema_name = schema


class TestPostgresSharedCheckpointStore(CheckpointStoreContract):
    """The checkpoints an event store hands out share its connections; the same promises hold."""

    @pytest.fixture
    def checkpoints(self, schema: str) -> Iterator[CheckpointStore]:
        store = open_store(schema)
        yield store.checkpoints()
        store.close()


def _events(*numbers: int) -> list[NewEvent]:
    return [NewEvent(ContractEvent(n)) for n in numbers]


class TestPostgresSpecifics:
    @pytest.fixture
    def store(self, schema: str) -> Iterator[PostgresEventStore]:
        store = open_store(schema, poll_interval=0.2)
        yield store
        store.close()

    # -- protocols and schema -------------------------------------------------------------------

    def test_satisfies_the_protocols(self, store: PostgresEventStore) -> None:
        assert isinstance(store, EventStore)
        assert isinstance(store.checkpoints(), CheckpointStore)

    def test_a_newer_schema_version_is_refused(self, store: PostgresEventStore) -> None:
        sql_execute(DSN, f'UPDATE "{store.schema}".schema_version SET version = 99')
        with pytest.raises(StoreFormatError, match="newer"):
            open_store(store.schema)

    def test_a_schema_version_3_store_is_migrated_to_byte_order_stream_names(self, schema: str) -> None:
        with open_store(schema) as store:
            store.append("Straße-1", _events(1, 2), NO_STREAM)
            store.append("b", _events(3), NO_STREAM)
        # Back to the layout of schema version 3: stream names in the database's collation.
        sql_execute(DSN, f'ALTER TABLE "{schema}".events ALTER COLUMN stream TYPE text COLLATE "default"')
        sql_execute(DSN, f'UPDATE "{schema}".schema_version SET version = 3')
        with open_store(schema) as store:
            assert sql_execute(DSN, f'SELECT version FROM "{schema}".schema_version') == [(SCHEMA_VERSION,)]
            collation = sql_execute(
                DSN,
                "SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation "
                "WHERE a.attrelid = %s::regclass AND a.attname = 'stream'",
                (f'"{schema}".events',),
            )
            assert collation == [("C",)]
            assert [r.event for r in store.read_stream("Straße-1")] == [ContractEvent(1), ContractEvent(2)]
            assert store.stream_version("b") == 0
            with pytest.raises(ConcurrencyError):  # UNIQUE (stream, version) was rebuilt, not lost
                store.append("Straße-1", _events(4), 0)
            assert store.append("Straße-1", _events(4), 1).versions == (2,)

    def test_events_restored_into_a_younger_cluster_are_refused(self, store: PostgresEventStore) -> None:
        store.append("s", _events(1), NO_STREAM)
        sql_execute(
            DSN,
            f'UPDATE "{store.schema}".events SET position = '
            "(pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000) * 1048576",
        )
        with pytest.raises(StoreFormatError, match="restored into another cluster"):
            open_store(store.schema)

    def test_without_create_schema_a_missing_schema_is_refused(self, schema: str) -> None:
        with pytest.raises(StoreFormatError, match="create_schema"):
            open_store(schema, create_schema=False)
        assert sql_execute(DSN, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)) == []

    def test_a_schema_name_with_quotes_is_an_identifier_not_sql(self) -> None:
        name = f"orx \"q'uote; DROP {uuid.uuid4().hex[:8]}"
        try:
            store = open_store(name)
            store.append("s", _events(1), NO_STREAM)
            assert [r.event.n for r in store.read_all()] == [1]
            store.close()
        finally:
            drop_schema(DSN, name)

    def test_an_unreachable_server_gives_a_clear_store_error(self) -> None:
        with pytest.raises(DatabaseUnavailableError) as raised:
            PostgresEventStore(
                "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1",
                contract_serializer(),
                retry_timeout=0.3,
            )
        assert raised.value.attempts >= 1

    def test_a_caller_owned_pool_stays_open(self, schema: str) -> None:
        pool = ConnectionPool(DSN, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True)
        try:
            store = PostgresEventStore(pool, contract_serializer(), schema=schema)
            store.append("s", _events(1), NO_STREAM)
            store.close()
            with pool.connection() as conn:
                assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone() == (1,)
        finally:
            pool.close()

    def test_a_pool_given_its_connection_arguments_as_a_function_is_used(self, schema: str) -> None:
        # psycopg_pool 3.3 takes kwargs as a function, called for each connection; the store reads
        # the libpq parameters among them for the connections it makes itself (notifications).
        pool = ConnectionPool(DSN, min_size=1, max_size=2, kwargs=lambda: {"autocommit": True}, open=True)
        try:
            store = PostgresEventStore(pool, contract_serializer(), schema=schema)
            store.append("s", _events(1, 2), NO_STREAM)
            assert [r.event.n for r in store.read_stream("s")] == [1, 2]
            store.close()
        finally:
            pool.close()

    def test_a_pool_without_autocommit_still_commits_and_conflicts_cleanly(self, schema: str) -> None:
        pool = ConnectionPool(DSN, min_size=1, max_size=2, open=True)
        try:
            store = PostgresEventStore(pool, contract_serializer(), schema=schema)
            first = _events(1)
            store.append("s", first, NO_STREAM)
            with pytest.raises(ConcurrencyError):
                store.append("s", _events(2), NO_STREAM)
            assert store.append("s", first, NO_STREAM).versions == (0,)
            store.close()
            reader = open_store(schema)
            assert [r.event.n for r in reader.read_all()] == [1]
            reader.close()
        finally:
            pool.close()

    def test_calls_after_close_raise_store_closed(self, store: PostgresEventStore) -> None:
        store.close()
        with pytest.raises(StoreClosedError):
            store.append("s", _events(1))
        with pytest.raises(StoreClosedError):
            list(store.read_all())

    # -- positions --------------------------------------------------------------------------------

    def test_positions_of_one_append_are_consecutive_and_returned(self, store: PostgresEventStore) -> None:
        result = store.append("s", _events(*range(5)), NO_STREAM)
        assert list(result.positions) == list(range(result.positions[0], result.positions[0] + 5))
        assert [r.position for r in store.read_all()] == list(result.positions)

    def test_a_batch_larger_than_a_transaction_can_number_is_refused(
        self, store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert MAX_BATCH_SIZE == 2**20 - 1
        monkeypatch.setattr("orchestrix.infrastructure.postgres.store.MAX_BATCH_SIZE", 3)
        with pytest.raises(BatchTooLargeError) as raised:
            store.append("s", _events(1, 2, 3, 4), NO_STREAM)
        assert (raised.value.size, raised.value.limit) == (4, 3)
        assert store.stream_version("s") == NO_STREAM

    def test_a_reopened_store_sees_what_was_committed_before_it_opened_despite_an_older_transaction(
        self, store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The flake of test_events_survive_reopening, made deterministic: a transaction that began
        before the appends (another test's, anywhere in the cluster) holds the horizon back while
        the store is reopened. The new store waits for it, as the writer would, and sees the events."""
        older = psycopg.connect(DSN)
        older.execute("SELECT pg_current_xact_id()")  # takes a transaction id below the appends'
        try:
            store.append("s-1", _events(0, 1), NO_STREAM)
            store.append("s-2", _events(2), NO_STREAM)
            store.close()
            again = open_store(store.schema)

            waits: list[float] = []
            next_delay = _ops._Backoff.next_delay

            def end_older_on_first_wait(backoff: _ops._Backoff) -> float:
                # The older transaction ends while the reopened store waits for the horizon (on
                # main it did not wait at all and read nothing).
                if not waits:
                    older.rollback()
                waits.append(1.0)
                return next_delay(backoff)

            monkeypatch.setattr(_ops._Backoff, "next_delay", end_older_on_first_wait)
            try:
                assert [r.event.n for r in again.read_all()] == [0, 1, 2]
                assert waits
            finally:
                again.close()
        finally:
            older.close()

    def test_a_reader_never_sees_a_later_position_while_an_earlier_one_may_commit(self, schema: str) -> None:
        """The order proof, made deterministic: an append is held open after taking its position."""
        held = 7_240_001
        writer = open_store(schema, visibility_timeout=0.2)
        reader = open_store(schema, visibility_timeout=0.2)
        sql_execute(
            DSN,
            f"""CREATE FUNCTION "{schema}".hold() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_advisory_xact_lock_shared({held}); RETURN NULL; END $$""",
        )
        sql_execute(
            DSN,
            f"""CREATE TRIGGER hold AFTER INSERT ON "{schema}".events FOR EACH ROW
                WHEN (NEW.stream = 'slow') EXECUTE FUNCTION "{schema}".hold()""",
        )
        blocker = psycopg.connect(DSN, autocommit=True)
        blocker.execute("SELECT pg_advisory_lock(%s)", (held,))
        results: dict[str, object] = {}
        slow = threading.Thread(target=lambda: results.update(slow=writer.append("slow", _events(1))))
        try:
            slow.start()
            _wait_until(lambda: _waiting_on_advisory_lock(held))
            fast = writer.append("fast", _events(2))
            # The slow append took its position first, so the fast one sorts after it; until the
            # slow one ends, neither may be read, or a reader at the fast position would skip it.
            assert list(reader.read_all()) == []
            assert reader.last_position() == 0
            assert reader.wait_for_events(0, 0.2) is False
            # The writer waits (bounded) to read its own append, then returns what is safe.
            assert list(writer.read_all()) == []
        finally:
            blocker.execute("SELECT pg_advisory_unlock(%s)", (held,))
            blocker.close()
            slow.join()
        first = results["slow"]
        assert first.last_position < fast.last_position  # type: ignore[attr-defined]
        assert reader.wait_for_events(0, 10.0) is True
        assert [r.event.n for r in reader.read_all()] == [1, 2]
        writer.close()
        reader.close()

    # -- bad input ----------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "note",
        ["a\x00b", "\x00", "quote ' and \" and \\", "$$ $x$ ;--", "\u2028\ufeff\U0001f600", "x" * 3_000_000],
        ids=["nul-inside", "nul-only", "quotes", "dollar-quotes", "unicode", "3MB"],
    )
    def test_payload_strings_go_through_as_data(self, store: PostgresEventStore, note: str) -> None:
        store.append("s", [ContractEvent(1, note)], NO_STREAM)
        (recorded,) = store.read_stream("s")
        assert recorded.event.note == note

    def test_a_type_name_with_nul_is_refused_and_nothing_is_stored(self, schema: str) -> None:
        @attrs.frozen
        class Odd(Event):
            n: int

        serializer = contract_serializer()
        serializer.register(Odd, name="Odd\x00Name")
        store = PostgresEventStore(DSN, serializer, schema=schema)
        with pytest.raises(SerializationError, match="NUL"):
            store.append("s", [ContractEvent(1), Odd(2)], NO_STREAM)
        assert list(store.read_all()) == []
        store.close()

    def test_decimal_money_is_stored_as_exact_text(self, store: PostgresEventStore) -> None:
        amount = Decimal("12345678901234567890.123456789")
        store.append("m", [MoneyMoved(amount, datetime(2026, 1, 2, tzinfo=UTC), uuid.uuid4())], NO_STREAM)
        (data,) = sql_execute(DSN, f'SELECT data FROM "{store.schema}".events')[0]
        assert '"12345678901234567890.123456789"' in data
        assert next(store.read_stream("m")).event.amount == amount

    @pytest.mark.parametrize("name", ["", "a\x00b", 7, "x" * 256])
    def test_bad_checkpoint_names_are_refused(self, store: PostgresEventStore, name: object) -> None:
        with pytest.raises(InvalidCheckpointNameError):
            store.checkpoints().save(name, 1)  # type: ignore[arg-type]

    def test_bad_stream_names_never_reach_the_database(self, store: PostgresEventStore) -> None:
        with pytest.raises(InvalidStreamNameError):
            store.stream_version("a\x00b")

    # -- checkpoints --------------------------------------------------------------------------------

    def test_checkpoints_round_trip_and_survive_reopening(self, schema: str) -> None:
        checkpoints = PostgresCheckpointStore(DSN, schema=schema)
        assert checkpoints.load("runner") == 0
        checkpoints.save("runner", 2**60)
        checkpoints.save('runner\'s "other"', 5)
        checkpoints.close()
        again = PostgresCheckpointStore(DSN, schema=schema)
        assert again.load("runner") == 2**60
        assert again.load('runner\'s "other"') == 5

        async def scenario() -> int:
            await again.save_async("runner", 3)
            return await again.load_async("runner")

        assert asyncio.run(scenario()) == 3
        again.close()

    # -- asyncio ------------------------------------------------------------------------------------

    def test_async_calls_work_across_event_loops(self, store: PostgresEventStore) -> None:
        for n in range(3):

            async def scenario(n: int = n) -> list[int]:
                await store.append_async("s", _events(n), n - 1)
                return [r.event.n async for r in store.read_all_async()]

            assert asyncio.run(scenario()) == list(range(n + 1))

    def test_async_wait_does_not_block_the_loop(self, store: PostgresEventStore) -> None:
        async def scenario() -> tuple[bool, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            waiter = asyncio.create_task(store.wait_for_events_async(0, 30.0))
            while ticks < 5:  # the loop runs while the waiter waits
                await asyncio.sleep(0.01)
            assert not waiter.done()
            await store.append_async("s", _events(1), NO_STREAM)
            woke = await waiter
            task.cancel()
            return woke, ticks

        woke, ticks = asyncio.run(scenario())
        assert woke and ticks >= 5

    def test_async_subscription_catches_up_and_goes_live(self, store: PostgresEventStore) -> None:
        store.append("s", _events(0, 1), NO_STREAM)

        async def scenario() -> list[int]:
            seen: list[int] = []

            async def late_writer() -> None:
                for n in range(2, 5):
                    await store.append_async("s", _events(n), ANY)

            writer = asyncio.create_task(late_writer())
            async for recorded in subscribe_async(store, 0, idle_timeout=0.1):
                seen.append(recorded.event.n)
                if len(seen) == 5:
                    break
            await writer
            return seen

        assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]

    def test_a_caller_owned_async_pool_is_used(self, schema: str) -> None:
        async def scenario() -> list[int]:
            async with AsyncConnectionPool(DSN, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
                store = await asyncio.to_thread(
                    PostgresEventStore, DSN, contract_serializer(), schema=schema, async_pool=pool
                )
                await store.append_async("s", _events(1, 2), NO_STREAM)
                got = [r.event.n async for r in store.read_stream_async("s")]
                store.close()
                return got

        assert asyncio.run(scenario()) == [1, 2]

    def test_serializer_is_per_store(self, schema: str) -> None:
        writer = open_store(schema)
        writer.append("s", _events(1), NO_STREAM)
        writer.close()
        blind = PostgresEventStore(DSN, Serializer(), schema=schema)
        with pytest.raises(SerializationError, match="ContractEvent"):
            list(blind.read_all())
        blind.close()


def _wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def _waiting_on_advisory_lock(key: int) -> bool:
    rows = sql_execute(
        DSN,
        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s::bigint::oid",
        (key,),
    )
    return bool(rows)


def test_reads_page_through_streams_and_the_global_order_in_every_form(schema: str) -> None:
    store = open_store(schema)
    store.page_size = 3  # small pages, so every read crosses page boundaries
    try:
        for n in range(10):
            store.append(f"s-{n % 2}", _events(n))
        positions = [r.position for r in store.read_all()]
        assert len(positions) == 10 and positions == sorted(positions)

        def numbers(records: object) -> list[int]:
            return [r.event.n for r in records]  # type: ignore[attr-defined]

        assert numbers(store.read_stream("s-0")) == [0, 2, 4, 6, 8]
        assert numbers(store.read_stream("s-1", 2)) == [5, 7, 9]
        assert numbers(store.read_all(positions[1], limit=7)) == list(range(2, 9))
        assert numbers(store.read_all(positions[5], limit=3)) == [6, 7, 8]
        assert numbers(store.read_all(positions[-1])) == []

        async def async_forms() -> tuple[list[int], list[int], list[int]]:
            stream = [r.event.n async for r in store.read_stream_async("s-1")]
            everything = [r.event.n async for r in store.read_all_async()]
            limited = [r.event.n async for r in store.read_all_async(positions[2], limit=4)]
            return stream, everything, limited

        assert asyncio.run(async_forms()) == ([1, 3, 5, 7, 9], list(range(10)), [3, 4, 5, 6])
    finally:
        store.close()


def test_the_import_statements_are_the_multi_stream_append_with_times() -> None:
    # They are derived from append_streams by replacing text: a change there must not leave
    # them without their times (the import would then stamp now(), silently).
    from orchestrix.infrastructure.postgres._statements import Statements

    st = Statements("orchestrix")
    for statement in (st.import_streams, st.import_streams_fenced):
        assert "recorded_at)" in statement and "b.r FROM" in statement and "%(times)b" in statement
    assert "FOR SHARE" in st.import_streams_fenced and "FOR SHARE" not in st.import_streams
