"""Two runners on one partition, the old holder paused inside a dispatch: no money is made or lost.

The reproductions of the issue "Two runners driving one saga can create or destroy money", on
the memory store. Each runs with ``guard="keys"`` (no lease: receivers decide each key once,
refusals included) and ``guard="lease"`` (the runners hold a lease, so the old holder's late
writes are also fenced). Either guard alone keeps these two races safe; the lease is what keeps
a receiver that did not exist yet safe (it has no stream to remember a refusal in).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    DepositMoney,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    TransferMoney,
    TransferStatus,
    banking_serializer,
)
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.errors import FencedError, KeyAlreadyRefusedError, LeaseLostError, SagaError
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner
from orchestrix.infrastructure.memory import InMemoryEventStore, InMemoryLease
from tests.banking.split_brain import Background, PausingDispatcher

D = Decimal
LEASE = "transfers[0/1]"


class Partition:
    """One store, one bank, one checkpoint store; runners on partition (0, 1) built like processes."""

    def __init__(self, guard: str, mode: str) -> None:
        self.guard = guard
        self.mode = mode
        self.store = InMemoryEventStore(serializer=banking_serializer())
        self.bank = BankingCommandHandlers(AggregateRepository(self.store))
        self.checkpoints = InMemoryCheckpointStore()

    def runner(self, dispatcher: Any = None) -> SagaRunner:
        lease = None
        if self.guard == "lease":
            lease = InMemoryLease(self.store, LEASE)
            lease.claim()  # a later runner takes the partition over from an earlier one
        bank = BankingCommandHandlers(AggregateRepository(self.store))  # each process has its own
        return SagaRunner(self.store, [TransferSaga], dispatcher or bank, self.checkpoints, lease=lease)

    def drain(self, runner: SagaRunner) -> int:
        if self.mode == "sync":
            return runner.run_until_idle()
        return asyncio.run(runner.run_until_idle_async())

    def open(self, account_id: str, balance: str) -> None:
        self.bank.handle(OpenAccount(account_id, account_id.title(), D(balance)))

    def balance(self, account_id: str) -> Decimal:
        return self.bank.get_account(account_id).balance

    def keys_applied(self) -> list[str]:
        return [
            r.event.idempotency_key
            for r in self.store.read_all()
            if isinstance(r.event, MoneyDeposited | MoneyWithdrawn) and r.event.idempotency_key
        ]

    def paused_runner(self, key: str) -> tuple[PausingDispatcher, Background]:
        """Start the old holder; return once it is paused right before dispatching ``key``."""
        dispatcher = PausingDispatcher(BankingCommandHandlers(AggregateRepository(self.store)), key)
        old = self.runner(dispatcher)
        running = Background(lambda: self.drain(old))
        assert dispatcher.paused.wait(10), f"the old holder never reached {key}"
        return dispatcher, running

    def check_stale_outcome(self, dispatcher: PausingDispatcher, running: Background, key: str) -> None:
        """The old holder's late command was refused: fenced (lease) or decided already (keys)."""
        if self.guard == "lease":
            # The receiver refuses first (it decided the key already) or the fence does; either
            # way the old holder's next write, at the latest, is fenced and it stops.
            assert isinstance(running.error, FencedError)
            assert dispatcher.outcomes[-1] in ((key, "FencedError"), (key, "KeyAlreadyRefusedError"))
        else:
            assert running.error is None
            assert (key, "KeyAlreadyRefusedError") in dispatcher.outcomes


@pytest.fixture(params=["keys", "lease"])
def guard(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def test_credit_race_a_late_credit_after_the_compensation_creates_no_money(guard: str, mode: str) -> None:
    p = Partition(guard, mode)
    p.open("alice", "100")
    p.open("bob", "0")
    p.bank.handle(TransferMoney("t-1", "alice", "bob", D("30"), "rent"))
    dispatcher, running = p.paused_runner("t-1:credit")  # debited; about to credit bob

    p.bank.handle(SuspendAccount("bob", "review"))
    p.drain(p.runner())  # the new holder: credit refused, debit reversed, t-1 FAILED
    assert p.bank.get_transfer("t-1").status is TransferStatus.FAILED
    p.bank.handle(ReactivateAccount("bob"))

    dispatcher.resume()  # the old holder wakes up and sends its credit (key t-1:credit)
    running.join()
    p.check_stale_outcome(dispatcher, running, "t-1:credit")
    p.drain(p.runner())  # whoever runs next finds nothing left to do
    assert (p.balance("alice"), p.balance("bob")) == (D("100"), D("0"))
    assert p.keys_applied() == ["t-1:debit", "t-1:reverse"]
    assert p.bank.get_transfer("t-1").status is TransferStatus.FAILED
    assert p.bank.get_account("alice").transfers_in_flight == {}


def test_debit_race_a_late_debit_after_the_failure_takes_no_money(guard: str, mode: str) -> None:
    p = Partition(guard, mode)
    p.open("alice", "10")
    p.open("bob", "0")
    p.bank.handle(TransferMoney("t-1", "alice", "bob", D("30"), "rent"))
    dispatcher, running = p.paused_runner("t-1:debit")

    p.drain(p.runner())  # the new holder: debit refused (10 < 30), t-1 FAILED
    assert p.bank.get_transfer("t-1").status is TransferStatus.FAILED
    p.bank.handle(DepositMoney("alice", D("50"), "salary"))

    dispatcher.resume()  # the old holder's debit (key t-1:debit) arrives now that alice has 60
    running.join()
    p.check_stale_outcome(dispatcher, running, "t-1:debit")
    p.drain(p.runner())
    assert (p.balance("alice"), p.balance("bob")) == (D("60"), D("0"))
    assert p.keys_applied() == []
    assert p.bank.get_account("alice").transfers_in_flight == {}  # she can still close her account
    assert p.bank.get_transfer("t-1").status is TransferStatus.FAILED


def test_a_receiver_that_did_not_exist_is_kept_safe_by_the_fence(mode: str) -> None:
    p = Partition("lease", mode)
    p.open("alice", "100")
    p.bank.handle(TransferMoney("t-1", "alice", "carol", D("30"), "gift"))
    dispatcher, running = p.paused_runner("t-1:credit")
    p.drain(p.runner())  # carol has no account: credit refused, reversed, FAILED
    p.open("carol", "0")  # carol opens an account before the old holder wakes up
    dispatcher.resume()
    running.join()
    assert isinstance(running.error, FencedError)
    assert (p.balance("alice"), p.balance("carol")) == (D("100"), D("0"))


class FlakyLease:
    """A lease that says "lost" from the ``holds_left``-th check on, while its fence stays valid:
    so only the runner's own check can stop it."""

    def __init__(self, lease: InMemoryLease, holds_left: int) -> None:
        self.lease = lease
        self.holds_left = holds_left

    def holds(self) -> bool:
        self.holds_left -= 1
        return self.holds_left >= 0

    @property
    def fence(self) -> Any:
        return self.lease.fence


@pytest.mark.parametrize("checks_before_loss", [1, 2, 3])
def test_a_runner_checks_its_lease_right_before_each_dispatch_and_checkpoint(
    mode: str, checks_before_loss: int
) -> None:
    p = Partition("keys", mode)
    p.open("alice", "100")
    p.open("bob", "0")
    p.bank.handle(TransferMoney("t-1", "alice", "bob", D("30"), "rent"))
    lease = InMemoryLease(p.store, LEASE)
    lease.claim()
    sent: list[str] = []

    class Recording(BankingCommandHandlers):
        def handle(self, command: Any) -> Any:
            sent.append(type(command).__name__)
            return super().handle(command)

        async def handle_async(self, command: Any) -> Any:
            sent.append(type(command).__name__)
            return await super().handle_async(command)

    runner = SagaRunner(
        p.store,
        [TransferSaga],
        Recording(AggregateRepository(p.store)),
        p.checkpoints,
        lease=FlakyLease(lease, checks_before_loss),
    )
    with pytest.raises(LeaseLostError):
        p.drain(runner)
    # check 1 starts the page, then one check before each dispatch: debit, credit, settle
    assert sent == ["WithdrawMoney", "DepositMoney", "SettleTransfer"][: checks_before_loss - 1]
    assert p.checkpoints.load(runner.checkpoint_name) == 0


def test_a_lease_needs_a_store_that_checks_fences() -> None:
    class NoFences(InMemoryEventStore):
        checks_fences = False

    store = NoFences(serializer=banking_serializer())
    lease = InMemoryLease(store, LEASE)
    with pytest.raises(SagaError, match="cannot check fences"):
        SagaRunner(
            store,
            [TransferSaga],
            BankingCommandHandlers(AggregateRepository(store)),
            InMemoryCheckpointStore(),
            lease=lease,
        )


def test_a_refused_key_is_refused_again_with_the_same_reason() -> None:
    p = Partition("keys", "sync")
    p.open("alice", "10")
    from bases.orchestrix.banking_demo.models import WithdrawMoney

    with pytest.raises(Exception) as first:
        p.bank.handle(WithdrawMoney("alice", D("30"), idempotency_key="k-1"))
    p.bank.handle(DepositMoney("alice", D("50")))
    with pytest.raises(KeyAlreadyRefusedError) as again:
        p.bank.handle(WithdrawMoney("alice", D("30"), idempotency_key="k-1"))
    assert str(again.value) == str(first.value)
    assert (again.value.key, again.value.error_type) == ("k-1", "InsufficientFunds")
    assert p.balance("alice") == D("60")
    # The record survives a reload: a new process refuses it too.
    fresh = BankingCommandHandlers(AggregateRepository(p.store, cache_size=0))
    with pytest.raises(KeyAlreadyRefusedError):
        fresh.handle(WithdrawMoney("alice", D("1"), idempotency_key="k-1"))
