"""Stores written by the banking demo before its events evolved, read by today's classes.

tests/fixtures/banking_v1 holds a file store written by one run of the demo as it was before
``MoneyDeposited`` gained a currency (version 2) and ``TransferSettled`` was renamed
``TransferHoldReleased``, and a PostgreSQL dump of the same events. Every read path decodes
them into today's classes; nothing a read does changes the stored bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.main import run_demo
from bases.orchestrix.banking_demo.models import (
    DepositMoney,
    MoneyDeposited,
    TransferHoldReleased,
    banking_serializer,
)
from orchestrix.cli import main as cli_main
from orchestrix.core.eventsourcing import AggregateRepository, EventStore
from orchestrix.core.execution import InMemoryCheckpointStore, Projection, ProjectionRunner, projects
from orchestrix.core.messaging import RawSerializer
from orchestrix.infrastructure.file import FileEventStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "banking_v1"
D = Decimal
# What the demo that wrote the fixture reported for its accounts (balance, aggregate version).
ACCOUNTS = {"alice": (D("990"), 15), "bob": (D("730"), 15), "carol": (D("230"), 13), "dave-r1": (D("0"), 4)}
TYPES = Counter(
    {
        "MoneyDeposited": 15,
        "TransferInitiated": 15,
        "MoneyWithdrawn": 14,
        "TransferDebited": 14,
        "TransferHoldReleased": 13,
        "TransferCompleted": 13,
        "AccountOpened": 4,
        "KeyRefused": 2,
        "TransferFailed": 2,
        "AccountSuspended": 1,
        "TransferCreditFailed": 1,
        "TransferReversed": 1,
        "AccountReactivated": 1,
        "AccountClosed": 1,
    }
)


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A copy of the fixture store: opening a store adds its lock and index, never in the repository."""
    path = tmp_path / "banking"
    shutil.copytree(FIXTURES / "store", path)
    return path


def log_digest(path: Path) -> str:
    return hashlib.sha256((path / "segment-00000001.log").read_bytes()).hexdigest()


def test_the_fixture_holds_events_of_the_old_schema(old_store: Path) -> None:
    with FileEventStore(old_store, RawSerializer()) as store:
        raw = list(store.read_all())
    names = Counter(r.event_type for r in raw)
    assert names["TransferSettled"] == 13 and "TransferHoldReleased" not in names
    assert not any("@" in r.event_type for r in raw)
    deposits = [r.event.data for r in raw if r.event_type == "MoneyDeposited"]
    assert len(deposits) == 15 and not any("currency" in d for d in deposits)


def check_old_events(store: EventStore) -> None:
    """What every store holding the fixture's events must read, on every path."""
    events = list(store.read_all())
    assert len(events) == 97
    assert Counter(type(r.event).__name__ for r in events) == TYPES
    deposits = [r.event for r in events if isinstance(r.event, MoneyDeposited)]
    assert {d.currency for d in deposits} == {"EUR"}
    released = [r for r in events if isinstance(r.event, TransferHoldReleased)]
    assert {r.event_type for r in released} == {"TransferSettled"}  # the envelope keeps the stored name
    for stream in {r.stream for r in events}:
        assert list(store.read_stream(stream)) == [r for r in events if r.stream == stream]

    async def read_async() -> list[object]:
        return [r async for r in store.read_all_async()]

    assert asyncio.run(read_async()) == events
    repository = AggregateRepository(store)
    for account_id, (balance, version) in ACCOUNTS.items():
        account = repository.load(Account, account_id)
        assert (account.balance, account.version) == (balance, version)


def test_the_old_file_store_reads_with_todays_classes_and_is_not_rewritten(old_store: Path) -> None:
    before = log_digest(old_store)
    with FileEventStore(old_store, banking_serializer()) as store:
        check_old_events(store)
    assert log_digest(old_store) == before


def test_writers_add_the_newest_version_beside_the_old_records(old_store: Path) -> None:
    with FileEventStore(old_store, RawSerializer()) as store:
        old = [(r.event_type, dict(r.event.data)) for r in store.read_stream("Account-alice")]
    with FileEventStore(old_store, banking_serializer()) as store:
        repository = AggregateRepository(store)
        account = repository.load(Account, "alice")
        account.deposit(DepositMoney("alice", D("10"), "after the upgrade"))
        repository.save(account)
        assert repository.load(Account, "alice").balance == D("1000")
    with FileEventStore(old_store, RawSerializer()) as store:
        stored = [(r.event_type, dict(r.event.data)) for r in store.read_stream("Account-alice")]
    assert stored[:-1] == old  # the old records, as they were
    assert stored[-1][0] == "MoneyDeposited@2" and stored[-1][1]["currency"] == "EUR"


class DepositsByCurrency(Projection):
    name = "deposits-by-currency"

    def __init__(self) -> None:
        super().__init__()
        self.totals: Counter[str] = Counter()

    @projects(MoneyDeposited)
    def deposited(self, event: MoneyDeposited) -> None:
        self.totals[event.currency] += event.amount  # type: ignore[assignment]

    def reset(self) -> None:
        self.totals.clear()


def test_a_projection_reads_old_deposits_with_their_currency(old_store: Path) -> None:
    with FileEventStore(old_store, banking_serializer()) as store:
        projection = DepositsByCurrency()
        ProjectionRunner(store, [projection], InMemoryCheckpointStore()).run_until_idle()
        expected = sum(
            (r.event.amount for r in store.read_all() if isinstance(r.event, MoneyDeposited)), D(0)
        )
    assert projection.totals == {"EUR": expected}


def test_the_command_line_decodes_old_records_with_the_banking_serializer(
    old_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serializer = "bases.orchestrix.banking_demo.models:banking_serializer"
    assert cli_main(["tail", str(old_store), "--serializer", serializer]) == 0
    out = capsys.readouterr().out
    assert out.count("currency='EUR'") == 15
    assert out.count(" TransferSettled TransferHoldReleased(") == 13


def test_the_demo_runs_on_the_store_an_older_demo_wrote(old_store: Path) -> None:
    out = io.StringIO()
    status = asyncio.run(run_demo("file", old_store, False, out=out))
    report = out.getvalue()
    assert status == 0, report
    assert "orchestrix banking demo, run 2" in report
    assert "OK: money is conserved" in report


def test_the_old_postgres_dump_reads_with_todays_classes(old_store: Path) -> None:
    from tests.infrastructure.pg_support import dsn_or_skip, throwaway_schema

    dsn = dsn_or_skip()
    import psycopg
    from psycopg import sql

    from orchestrix.infrastructure.postgres.store import PostgresEventStore

    script = (FIXTURES / "postgres.sql").read_text()
    with throwaway_schema(dsn, "upcast") as schema:
        PostgresEventStore(dsn, banking_serializer(), schema=schema).close()  # today's tables
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            with conn.transaction():
                conn.execute(script.encode())
        store = PostgresEventStore(dsn, banking_serializer(), schema=schema)
        try:
            before = store_rows(dsn, schema)
            check_old_events(store)
            with FileEventStore(old_store, banking_serializer()) as file_store:
                expected = [
                    (r.event_id, r.stream, r.version, r.event_type, r.event) for r in file_store.read_all()
                ]
            assert [
                (r.event_id, r.stream, r.version, r.event_type, r.event) for r in store.read_all()
            ] == expected
            assert store_rows(dsn, schema) == before
        finally:
            store.close()


def store_rows(dsn: str, schema: str) -> list[tuple[object, ...]]:
    from psycopg import sql

    from tests.infrastructure.pg_support import sql_execute

    query = sql.SQL("SELECT position, event_type, data FROM {}.events ORDER BY position").format(
        sql.Identifier(schema)
    )
    return sql_execute(dsn, query.as_string(None))
