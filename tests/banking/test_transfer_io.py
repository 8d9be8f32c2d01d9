"""What one transfer asks of the store: the saga path reads no stream.

The store calls are what a transfer costs on a durable store (each append waits for its sync,
each read decodes a stream), so their count is pinned here: a transfer that starts to read
again is a regression the benchmark would show only as noise.
"""

from __future__ import annotations

import collections
from decimal import Decimal
from typing import Any

import pytest

from bases.orchestrix.banking_demo import errors
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    OpenAccount,
    SuspendAccount,
    TransferMoney,
    TransferStatus,
)
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner
from orchestrix.infrastructure.memory.store import InMemoryEventStore

D = Decimal
_COUNTED = ("append", "read_stream", "stream_version")


class CountingStore:
    """The memory store, counting the calls a transfer makes (sync and asyncio forms alike)."""

    def __init__(self) -> None:
        self.inner = InMemoryEventStore()
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        base = name.removesuffix("_async")
        if base in _COUNTED:

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls[base] += 1
                return attribute(*args, **kwargs)

            return counted
        return attribute


def _bank() -> tuple[CountingStore, BankingCommandHandlers, SagaRunner]:
    store = CountingStore()
    bank = BankingCommandHandlers(AggregateRepository(store))  # type: ignore[arg-type]
    bank.handle(OpenAccount("alice", "Alice", D("100")))
    bank.handle(OpenAccount("bob", "Bob", D("0")))
    runner = SagaRunner(store, [TransferSaga], bank, InMemoryCheckpointStore())  # type: ignore[arg-type]
    bank.handle(TransferMoney("t0", "alice", "bob", D("1")))  # both accounts now in the cache
    runner.run_until_idle()
    store.calls.clear()
    return store, bank, runner


def test_one_transfer_appends_six_times_and_reads_no_stream() -> None:
    store, bank, runner = _bank()
    bank.handle(TransferMoney("t1", "alice", "bob", D("30")))
    runner.run_until_idle()
    # TransferInitiated, MoneyWithdrawn, TransferDebited, MoneyDeposited, the settlement,
    # TransferCompleted; one version check per account command on a cached account (the
    # source check, debit, credit, settle); the saga starts from the page's TransferInitiated.
    assert store.calls == {"append": 6, "stream_version": 4}
    assert bank.get_transfer("t1").status is TransferStatus.COMPLETED
    assert bank.get_account("alice").balance == D("69")
    assert bank.get_account("bob").balance == D("31")


def test_a_repeated_transfer_is_answered_from_its_stream() -> None:
    _store, bank, runner = _bank()
    first = bank.handle(TransferMoney("t1", "alice", "bob", D("30")))
    again = bank.handle(TransferMoney("t1", "alice", "bob", D("30")))
    assert again.version == first.version == 0
    with pytest.raises(errors.TransferIdReused):
        bank.handle(TransferMoney("t1", "alice", "bob", D("31")))
    runner.run_until_idle()
    assert bank.get_account("bob").balance == D("31")


def test_a_repeat_is_answered_even_once_its_source_is_refused() -> None:
    _store, bank, runner = _bank()
    bank.handle(TransferMoney("t1", "alice", "bob", D("30")))
    runner.run_until_idle()
    bank.handle(SuspendAccount("alice", "audit"))
    assert bank.handle(TransferMoney("t1", "alice", "bob", D("30"))).status is TransferStatus.COMPLETED
    with pytest.raises(errors.AccountSuspended):
        bank.handle(TransferMoney("t2", "alice", "bob", D("30")))


def test_a_saga_whose_stream_moved_after_the_page_was_read_runs_from_its_stream() -> None:
    # The page says TransferInitiated is the stream's head; before the step runs, another runner
    # completes the transfer. The step's debit repeats its key (the account answers with the
    # original debit), its save loses the version race, and the step reads the stream and stops.
    store, bank, runner = _bank()
    bank.handle(TransferMoney("t1", "alice", "bob", D("30")))
    other = SagaRunner(store, [TransferSaga], bank, InMemoryCheckpointStore())  # type: ignore[arg-type]
    read_all = store.inner.read_all
    raced: list[int] = []

    def read_then_race(after: int, limit: int | None = None, **kwargs: Any) -> Any:
        page = list(read_all(after, limit=limit, **kwargs))
        if page and not raced:
            raced.append(len(page))
            other.run_until_idle()
        return page

    store.read_all = read_then_race  # type: ignore[attr-defined]
    runner.run_until_idle()
    assert raced == [1]
    assert bank.get_transfer("t1").status is TransferStatus.COMPLETED
    assert bank.get_transfer("t1").version == 2
    assert bank.get_account("alice").balance == D("69")
    assert bank.get_account("bob").balance == D("31")
    assert runner.stats.failed == 0
