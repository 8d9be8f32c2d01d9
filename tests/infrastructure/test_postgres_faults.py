"""Faults: killed connections, a killed LISTEN connection, a server restart mid-run.

The restart test restarts the local cluster with ``pg_ctlcluster`` (root only, as in CI) and
always leaves the server running, even when it fails.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.infrastructure.pg_support import (
    can_restart_server,
    dsn_or_skip,
    ensure_server_running,
    restart_server,
    sql_execute,
    throwaway_schema,
)

DSN = dsn_or_skip()

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers  # noqa: E402
from bases.orchestrix.banking_demo.models import (  # noqa: E402
    OpenAccount,
    TransferMoney,
    TransferStatus,
    banking_serializer,
)
from bases.orchestrix.banking_demo.saga import TransferSaga  # noqa: E402
from orchestrix.core.eventsourcing.aggregate import AggregateRepository  # noqa: E402
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM  # noqa: E402
from orchestrix.core.execution.runner import SagaRunner  # noqa: E402
from orchestrix.core.execution.subscription import subscribe  # noqa: E402
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent  # noqa: E402
from orchestrix.infrastructure.postgres import (  # noqa: E402
    PostgresCheckpointStore,
    PostgresEventStore,
)
from tests.infrastructure.pg_workers import Tick, worker_serializer  # noqa: E402


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN, "fault") as name:
        yield name


def tagged_dsn(tag: str) -> str:
    """The test DSN with an application_name, so a test can find (and kill) that store's backends."""
    separator = "&" if "?" in DSN else "?"
    return f"{DSN}{separator}application_name={tag}"


def kill_backends(application_name: str) -> int:
    rows = sql_execute(
        DSN,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (application_name,),
    )
    return len(rows)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.01)


def ticks(*numbers: int) -> list[NewEvent]:
    return [NewEvent(Tick(n)) for n in numbers]


class Subscriber:
    """A thread that tails the store from its checkpoint, saving the checkpoint after each event."""

    def __init__(
        self, store: PostgresEventStore, checkpoints: PostgresCheckpointStore, until: int, idle: float = 0.5
    ) -> None:
        self.seen: list[RecordedEvent] = []
        self.errors: list[BaseException] = []
        self._store, self._checkpoints, self._until, self._idle = store, checkpoints, until, idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            after = self._checkpoints.load("tail")
            for recorded in subscribe(self._store, after, stop=self._stop, idle_timeout=self._idle):
                self.seen.append(recorded)
                self._checkpoints.save("tail", recorded.position)
                if len(self.seen) >= self._until:
                    return
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.seen) >= count or not self._thread.is_alive())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()


def test_killed_pool_connections_are_replaced_and_the_call_succeeds(schema: str) -> None:
    tag = f"orx-kill-{uuid.uuid4().hex[:8]}"
    store = PostgresEventStore(tagged_dsn(tag), worker_serializer(), schema=schema)
    store.append("s", ticks(0), NO_STREAM)
    assert kill_backends(tag) >= 1
    assert store.append("s", ticks(1), 0).versions == (1,)
    assert [r.event.n for r in store.read_all()] == [0, 1]

    async def asyncio_side() -> list[int]:
        await store.append_async("s", ticks(2), 1)
        assert kill_backends(tag) >= 1  # the pooled and the asyncio connections
        await store.append_async("s", ticks(3), 2)
        return [r.event.n async for r in store.read_all_async()]

    assert asyncio.run(asyncio_side()) == [0, 1, 2, 3]
    store.close()


def test_a_subscriber_whose_connections_are_killed_reconnects_and_resumes_from_its_checkpoint(
    schema: str,
) -> None:
    """With polling slowed to a minute, only LISTEN/NOTIFY can deliver within the test's waits."""
    tag = f"orx-sub-{uuid.uuid4().hex[:8]}"
    writer = PostgresEventStore(DSN, worker_serializer(), schema=schema)
    reader = PostgresEventStore(tagged_dsn(tag), worker_serializer(), schema=schema, poll_interval=60.0)
    checkpoints = PostgresCheckpointStore(tagged_dsn(tag), schema=schema)
    subscriber = Subscriber(reader, checkpoints, until=10, idle=60.0)
    try:
        wait_until(lambda: reader.listener.connected)
        writer.append("s", ticks(*range(5)), NO_STREAM)
        subscriber.wait_for(5)

        assert kill_backends(tag) >= 2  # the LISTEN connection and the pooled ones
        # Appended while the LISTEN connection may still be down: its notification is lost,
        # and the reconnect (LISTEN first, then read) must find these events anyway.
        writer.append("s", ticks(*range(5, 10)), 4)
        wait_until(lambda: reader.listener.connections_made >= 2)
        subscriber.wait_for(10)
        assert subscriber.errors == []
        assert [r.event.n for r in subscriber.seen] == list(range(10))

        # A new subscriber (a restarted process) resumes after the stored checkpoint.
        writer.append("s", ticks(*range(10, 15)), 9)
        resumed = Subscriber(reader, checkpoints, until=5, idle=60.0)
        resumed.wait_for(5)
        assert resumed.errors == []
        assert [r.event.n for r in resumed.seen] == list(range(10, 15))
    finally:
        subscriber.stop()
        checkpoints.close()
        reader.close()
        writer.close()


@pytest.fixture
def restartable_server() -> Iterator[None]:
    reason = can_restart_server()
    if reason is not None:
        pytest.skip(reason)
    try:
        yield
    finally:
        ensure_server_running(DSN)


def test_a_server_restart_mid_run_loses_nothing_acknowledged(schema: str, restartable_server: None) -> None:
    """Writers ride out the restart with their bounded retry; the subscriber and the saga runner
    resume from their checkpoints; every acknowledged event is kept and every transfer ends."""
    serializer = banking_serializer()
    serializer.register(Tick)
    writer = PostgresEventStore(DSN, serializer, schema=schema, retry_timeout=60.0)
    reader = PostgresEventStore(DSN, serializer, schema=schema, retry_timeout=60.0, poll_interval=0.2)
    checkpoints = PostgresCheckpointStore(DSN, schema=schema, retry_timeout=60.0)
    bank = BankingCommandHandlers(AggregateRepository(writer))
    accounts = [f"acc-{i}" for i in range(3)]
    for account in accounts:
        bank.handle(OpenAccount(account, account, Decimal("100")))
    acked: list[uuid.UUID] = []
    transfers: list[str] = []
    failures: list[BaseException] = []
    stop, runner_stop = threading.Event(), threading.Event()

    def write(me: int) -> None:
        n = 0
        while not stop.is_set():
            batch = ticks(me * 100_000 + n)
            try:
                writer.append(f"w-{me}", batch, ANY)
            except BaseException as exc:  # DatabaseUnavailableError is allowed, but not expected here
                failures.append(exc)
                return
            acked.append(batch[0].event_id)
            n += 1

    def transfer() -> None:
        n = 0
        while not stop.is_set():
            source, target = accounts[n % 3], [*accounts, "ghost"][(n + 1 + n // 3) % 4]
            try:
                bank.handle(TransferMoney(f"tr-{n}", source, target, Decimal(n % 7 + 1), "rent"))
            except BaseException as exc:
                failures.append(exc)
                return
            transfers.append(f"tr-{n}")
            n += 1
            time.sleep(0.01)

    def drive_sagas() -> None:
        runner = SagaRunner(writer, [TransferSaga], bank, checkpoints, page_size=50)
        try:
            runner.run_forever(runner_stop, idle_timeout=0.2)
        except BaseException as exc:
            failures.append(exc)

    subscriber = Subscriber(reader, checkpoints, until=10**9)
    threads = [threading.Thread(target=write, args=(me,), daemon=True) for me in range(2)]
    threads.append(threading.Thread(target=transfer, daemon=True))
    sagas = threading.Thread(target=drive_sagas, daemon=True)
    try:
        for thread in [*threads, sagas]:
            thread.start()
        wait_until(lambda: len(acked) >= 30 and len(transfers) >= 5)
        started = sql_execute(DSN, "SELECT pg_postmaster_start_time()")
        restart_server()
        assert sql_execute(DSN, "SELECT pg_postmaster_start_time()") != started
        after_restart = len(acked), len(transfers)
        wait_until(lambda: len(acked) >= after_restart[0] + 30 and len(transfers) >= after_restart[1] + 5, 60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    try:
        assert failures == []
        wait_until(lambda: {r.event_id for r in subscriber.seen} >= set(acked), timeout=60)
        wait_until(lambda: all(_finished(bank, t) for t in transfers), timeout=60)
    finally:
        subscriber.stop()
        runner_stop.set()
        sagas.join(timeout=30)
    assert subscriber.errors == [] and failures == []
    positions = [r.position for r in subscriber.seen]
    assert positions == sorted(set(positions)), "the subscriber saw an event twice or out of order"
    stored = [r.event_id for r in reader.read_all()]
    assert len(stored) == len(set(stored))
    assert set(acked) <= set(stored)
    assert sum(bank.get_account(a).balance for a in accounts) == Decimal("300")
    for store in (checkpoints, reader, writer):
        store.close()


def _finished(bank: BankingCommandHandlers, transfer_id: str) -> bool:
    return bank.get_transfer(transfer_id).status in (TransferStatus.COMPLETED, TransferStatus.FAILED)
