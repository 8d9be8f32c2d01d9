"""TransferSaga and transfer_money: every path, redeliveries, crashes, stuck reversals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given

from bases.orchestrix.banking_demo import errors
from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    CloseAccount,
    DepositMoney,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    ReactivateAccount,
    SettleTransfer,
    SuspendAccount,
    TransferCompleted,
    TransferCreditFailed,
    TransferDebited,
    TransferFailed,
    TransferInitiated,
    TransferMoney,
    TransferReversed,
    TransferStatus,
    WithdrawMoney,
    banking_serializer,
)
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.errors import AggregateNotFoundError, InvalidStreamNameError
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner, SagaStuck
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import AggregateScenario, SagaScenario, invalid_amounts, like
from tests.core.test_saga_support import CrashingStore, SimulatedCrash

D = Decimal


class Hooked:
    """Banking handlers with hooks that run before chosen commands (to change the world mid-saga)."""

    def __init__(self, bank: BankingCommandHandlers) -> None:
        self.bank = bank
        self.before: list[Callable[[Any], None]] = []
        self.after: list[Callable[[Any], None]] = []

    def handle(self, command: Any) -> Any:
        for hook in list(self.before):
            hook(command)
        try:
            return self.bank.handle(command)
        finally:
            for hook in list(self.after):
                hook(command)

    async def handle_async(self, command: Any) -> Any:
        for hook in list(self.before):
            hook(command)
        try:
            return await self.bank.handle_async(command)
        finally:
            for hook in list(self.after):
                hook(command)


class World:
    """A store, a bank on it, and runners built the way a restarted process would build them."""

    def __init__(self, store: Any | None = None) -> None:
        self.store = store or InMemoryEventStore(serializer=banking_serializer())
        self.checkpoints = InMemoryCheckpointStore()
        self.bank = BankingCommandHandlers(AggregateRepository(self.store))
        self.hooked = Hooked(self.bank)

    def runner(self, store: Any | None = None, **options: Any) -> SagaRunner:
        if store is None:
            return SagaRunner(self.store, [TransferSaga], self.hooked, self.checkpoints, **options)
        bank = BankingCommandHandlers(AggregateRepository(store))
        return SagaRunner(store, [TransferSaga], bank, self.checkpoints, **options)

    def drain(self, mode: str = "sync", **options: Any) -> SagaRunner:
        runner = self.runner(step_threads=mode == "threads", **options)
        if mode == "sync":
            runner.run_until_idle()
        else:
            asyncio.run(runner.run_until_idle_async())
        return runner

    def open(self, account_id: str, balance: str = "0") -> None:
        self.bank.handle(OpenAccount(account_id, account_id.title(), D(balance)))

    def account(self, account_id: str) -> Account:
        return self.bank.get_account(account_id)

    def balance(self, account_id: str) -> Decimal:
        return self.account(account_id).balance

    def transfer(self, transfer_id: str) -> TransferSaga:
        return self.bank.get_transfer(transfer_id)

    def send(self, transfer_id: str, source: str, target: str, amount: str) -> TransferSaga:
        return self.bank.handle(TransferMoney(transfer_id, source, target, D(amount), "test"))

    def transfer_events(self, transfer_id: str) -> list[type]:
        return [type(r.event) for r in self.store.read_stream(f"transfer-{transfer_id}")]

    def keys_applied(self) -> list[str]:
        return [
            r.event.idempotency_key
            for r in self.store.read_all()
            if isinstance(r.event, MoneyDeposited | MoneyWithdrawn) and r.event.idempotency_key
        ]


@pytest.fixture
def world() -> World:
    w = World()
    w.open("alice", "100")
    w.open("bob", "50")
    return w


@pytest.fixture(params=["sync", "async", "threads"])
def mode(request: pytest.FixtureRequest) -> str:
    """How the runner runs: sync, asyncio, or asyncio with each step in a worker thread."""
    return request.param


# -- the command: validated up front, TransferInitiated first --------------------------------------


def transfer_command(*history: object) -> AggregateScenario[TransferSaga]:
    """Given alice (100) and bob (50), then ``history``; when a command, then what it stored."""
    return AggregateScenario(
        TransferSaga, "t1", handlers=BankingCommandHandlers, serializer=banking_serializer()
    ).given_commands(OpenAccount("alice", "Alice", D("100")), OpenAccount("bob", "Bob", D("50")), *history)


def test_transfer_money_stores_only_the_initiated_event_in_the_transfer_stream() -> None:
    scenario = transfer_command().when(TransferMoney("t1", "alice", "bob", D("30")))
    scenario.then(like(TransferInitiated, transfer_id="t1", from_account_id="alice", amount=D("30")))
    assert scenario.result.status is TransferStatus.INITIATED
    assert scenario.aggregate.version == 0  # in the transfer's own stream
    bank = scenario.handlers
    assert (bank.get_account("alice").balance, bank.get_account("bob").balance) == (D("100"), D("50"))


def test_transfer_money_under_asyncio_does_the_same(world: World) -> None:
    transfer = asyncio.run(world.bank.transfer_money(TransferMoney("t1", "alice", "bob", D("30"))))
    assert transfer.status is TransferStatus.INITIATED
    assert world.transfer_events("t1") == [TransferInitiated]


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (TransferMoney("t1", "alice", "alice", D("10")), errors.SelfTransfer),
        (TransferMoney("t1", "nobody", "bob", D("10")), errors.AccountNotOpen),
        (TransferMoney("", "alice", "bob", D("10")), InvalidStreamNameError),
        (TransferMoney("t1", "alice", "", D("10")), InvalidStreamNameError),
        (TransferMoney("t\x00", "alice", "bob", D("10")), InvalidStreamNameError),
        (TransferMoney("t1", "alice", "bob", D("0")), errors.InvalidAmount),
        (TransferMoney("t1", "alice", "bob", D("-5")), errors.InvalidAmount),
        (TransferMoney("t1", "alice", "bob", D("1.001")), errors.InvalidAmount),
        (TransferMoney("t1", "alice", "bob", 10.0), errors.InvalidAmount),  # type: ignore[arg-type]
    ],
)
def test_a_bad_transfer_is_refused_and_nothing_is_stored(command: TransferMoney, error: type) -> None:
    scenario = transfer_command().when(command).then_error(error)
    scenario.when(lambda _: asyncio.run(scenario.handlers.transfer_money(command))).then_error(error)


@given(amount=invalid_amounts())
def test_no_invalid_amount_starts_a_transfer(amount: object) -> None:
    w = World()
    w.open("alice", "100")
    with pytest.raises(errors.InvalidAmount):
        w.bank.handle(TransferMoney("t1", "alice", "bob", amount))  # type: ignore[arg-type]
    assert w.store.last_position() == 1


@pytest.mark.parametrize(
    ("inactive", "error"),
    [
        (SuspendAccount("carol", "audit"), errors.AccountSuspended),
        (CloseAccount("carol"), errors.AccountClosed),
    ],
)
def test_an_inactive_source_is_refused_up_front(inactive: object, error: type) -> None:
    scenario = transfer_command(OpenAccount("carol", "Carol"), inactive)
    scenario.when(TransferMoney("t1", "carol", "bob", D("1"))).then_error(error, "send transfer 't1'")


def test_the_same_transfer_sent_again_is_an_idempotent_repeat() -> None:
    scenario = transfer(TransferMoney("t1", "alice", "bob", D("30"), "test"))
    assert (
        scenario.handlers.handle(TransferMoney("t1", "alice", "bob", D("30.00"), "test")).status
        == "INITIATED"
    )
    scenario.then(WithdrawMoney, DepositMoney, SettleTransfer, state="COMPLETED")
    position = scenario.store.last_position()
    again = scenario.handlers.handle(TransferMoney("t1", "alice", "bob", D("30"), "test"))
    assert again.status is TransferStatus.COMPLETED
    assert scenario.store.last_position() == position


def test_a_transfer_id_reused_for_a_different_transfer_is_refused() -> None:
    scenario = transfer_command(TransferMoney("t1", "alice", "bob", D("30"), "test"))
    scenario.when(TransferMoney("t1", "alice", "bob", D("31"), "test"))
    scenario.then_error(errors.TransferIdReused, r"amount Decimal\('30'\) \(asked: Decimal\('31'\)\)")
    scenario.when(
        lambda _: asyncio.run(
            scenario.handlers.transfer_money(TransferMoney("t1", "alice", "carol", D("30"), "test"))
        )
    )
    scenario.then_error(errors.TransferIdReused, "to_account_id")


def test_an_unknown_transfer_is_not_found() -> None:
    with pytest.raises(AggregateNotFoundError):
        transfer_command().handlers.get_transfer("nope")


# -- the saga's paths ---------------------------------------------------------------------------------


def transfer(*history: object, mode: str = "sync") -> SagaScenario[TransferSaga]:
    """Given alice (100) and bob (50), then ``history``: the TransferSaga of t1, run in ``mode``."""
    return SagaScenario(
        TransferSaga,
        "t1",
        handlers=BankingCommandHandlers,
        serializer=banking_serializer(),
        driver="sync" if mode == "sync" else "asyncio",
        runner_options={"step_threads": mode == "threads"},
    ).given_commands(OpenAccount("alice", "Alice", D("100")), OpenAccount("bob", "Bob", D("50")), *history)


def balances(scenario: SagaScenario[TransferSaga], *accounts: str) -> tuple[Decimal, ...]:
    return tuple(scenario.handlers.get_account(a).balance for a in accounts)


def test_a_transfer_debits_credits_and_completes(mode: str) -> None:
    scenario = transfer(mode=mode).when_commands(TransferMoney("t1", "alice", "bob", D("30")))
    scenario.then(
        WithdrawMoney("alice", D("30"), "Transfer t1 to bob", "t1", "t1:debit"),
        DepositMoney("bob", D("30"), "Transfer t1 from alice", "t1", "t1:credit"),
        SettleTransfer("alice", "t1"),
        state="COMPLETED",
        events=[TransferDebited, TransferCompleted],
    )
    assert scenario.saga.completed and scenario.saga.held == 0
    assert balances(scenario, "alice", "bob") == (D("70"), D("80"))
    assert scenario.handlers.get_account("alice").transfers_in_flight == {}
    [_, debit] = scenario.handlers.get_account("alice").transactions
    [_, credit] = scenario.handlers.get_account("bob").transactions
    assert (debit.kind.value, debit.amount, debit.transfer_id) == ("withdrawal", D("30"), "t1")
    assert (credit.kind.value, credit.amount, credit.transfer_id) == ("deposit", D("30"), "t1")


@pytest.mark.parametrize(
    ("source", "meanwhile", "reason"),
    [
        ("alice", [], "balance 100 is less than 500"),
        ("carol", [SuspendAccount("carol")], "is SUSPENDED: cannot withdraw"),
        ("carol", [WithdrawMoney("carol", D("10")), CloseAccount("carol")], "is CLOSED: cannot withdraw"),
    ],
)
def test_a_refused_debit_fails_the_transfer_without_moving_money(
    mode: str, source: str, meanwhile: list[object], reason: str
) -> None:
    amount = D("500") if source == "alice" else D("10")
    scenario = transfer(OpenAccount("carol", "Carol", D("10")), mode=mode)
    scenario.when_commands(TransferMoney("t1", source, "bob", amount), *meanwhile)
    before = balances(scenario, "alice", "bob", "carol")
    scenario.then(like(WithdrawMoney, idempotency_key="t1:debit"), state="FAILED", events=[TransferFailed])
    assert scenario.saga.failure_reason is not None
    assert (
        scenario.saga.failure_reason.startswith("debit refused: ") and reason in scenario.saga.failure_reason
    )
    assert balances(scenario, "alice", "bob", "carol") == before


@pytest.mark.parametrize(
    ("target", "setup", "reason"),
    [
        ("dora", [SuspendAccount("dora")], "is SUSPENDED: cannot deposit"),
        ("dora", [CloseAccount("dora")], "is CLOSED: cannot deposit"),
        ("ghost", [], "has not been opened"),
    ],
)
def test_a_refused_credit_is_compensated_by_reversing_the_debit(
    mode: str, target: str, setup: list[object], reason: str
) -> None:
    scenario = transfer(OpenAccount("dora", "Dora"), *setup, mode=mode)
    scenario.when_commands(TransferMoney("t1", "alice", target, D("40")))
    scenario.then(
        like(WithdrawMoney, account_id="alice", idempotency_key="t1:debit"),
        like(DepositMoney, account_id=target, idempotency_key="t1:credit"),
        like(DepositMoney, account_id="alice", amount=D("40"), idempotency_key="t1:reverse"),
        state="FAILED",
        events=[TransferDebited, TransferCreditFailed, TransferReversed, TransferFailed],
    )
    saga = scenario.saga
    assert saga.reversed and saga.failure_reason is not None
    assert saga.failure_reason.startswith("credit refused: ") and reason in saga.failure_reason
    alice = scenario.handlers.get_account("alice")
    assert alice.balance == D("100") and alice.transfers_in_flight == {}
    assert [(t.kind.value, t.amount, t.transfer_id) for t in alice.transactions[1:]] == [
        ("withdrawal", D("40"), "t1"),
        ("deposit", D("40"), "t1"),
    ]


def test_the_reversal_lands_even_if_the_source_was_suspended_meanwhile(world: World, mode: str) -> None:
    def before(command: Any) -> None:
        if isinstance(command, DepositMoney) and command.idempotency_key == "t1:credit":
            world.bank.handle(SuspendAccount("alice", "fraud check"))
            world.bank.handle(SuspendAccount("bob", "fraud check"))

    world.hooked.before.append(before)
    world.send("t1", "alice", "bob", "60")
    world.drain(mode)
    assert world.transfer("t1").status is TransferStatus.FAILED
    alice = world.account("alice")
    assert (alice.balance, alice.status.value) == (D("100"), "SUSPENDED")
    assert world.balance("bob") == D("50")


def test_the_source_cannot_be_closed_while_a_transfer_holds_its_money(world: World) -> None:
    """Our answer to "what if the source is closed meanwhile": it cannot be, until the transfer ends."""
    world.open("carol", "25")
    refusals: list[Exception] = []

    def before(command: Any) -> None:
        if isinstance(command, DepositMoney) and command.idempotency_key == "t1:credit":
            assert world.balance("carol") == 0
            try:
                world.bank.handle(CloseAccount("carol"))
            except errors.AccountHasTransfersInFlight as exc:
                refusals.append(exc)

    world.hooked.before.append(before)
    world.send("t1", "carol", "bob", "25")
    world.drain()
    assert [e.transfer_ids for e in refusals] == [("t1",)]  # type: ignore[attr-defined]
    assert world.transfer("t1").status is TransferStatus.COMPLETED
    world.bank.handle(CloseAccount("carol"))  # settled: now it may close
    assert world.account("carol").status.value == "CLOSED"


def test_a_source_closed_before_the_debit_fails_the_transfer_cleanly() -> None:
    scenario = transfer(OpenAccount("carol", "Carol", D("5")))
    scenario.when_commands(
        TransferMoney("t1", "carol", "bob", D("5")), WithdrawMoney("carol", D("5")), CloseAccount("carol")
    )
    scenario.then(like(WithdrawMoney, idempotency_key="t1:debit"), state="FAILED")


def test_transfers_from_one_account_never_overdraw_it(world: World, mode: str) -> None:
    for i in range(10):
        world.send(f"t{i}", "alice", "bob", "30")
    world.drain(mode, max_concurrency=10)
    statuses = [world.transfer(f"t{i}").status for i in range(10)]
    assert statuses.count(TransferStatus.COMPLETED) == 3
    assert statuses.count(TransferStatus.FAILED) == 7
    assert (world.balance("alice"), world.balance("bob")) == (D("10"), D("140"))


def test_many_transfers_in_flight_at_once_all_finish_and_conserve_money(mode: str) -> None:
    w = World()
    names = [f"acc{i}" for i in range(8)]
    for name in names:
        w.open(name, "1000")
    w.open("frozen")
    w.bank.handle(SuspendAccount("frozen"))
    for i in range(64):
        target = "frozen" if i % 9 == 0 else names[(i * 3 + 1) % 8]
        source = names[i % 8]
        if source != target:
            w.send(f"t{i}", source, target, str(10 + i))
    runner = w.drain(mode, max_concurrency=32)
    transfers = [
        w.transfer(r.stream.removeprefix("transfer-"))
        for r in w.store.read_all()
        if r.event_type == "TransferInitiated"
    ]
    assert all(t.status in (TransferStatus.COMPLETED, TransferStatus.FAILED) for t in transfers)
    assert sum(w.balance(n) for n in names) == D("8000")
    assert runner.stuck() == [] and runner.stats.failed == 0
    assert len(w.keys_applied()) == len(set(w.keys_applied()))


# -- stuck compensation: visible, never silent ---------------------------------------------------------


class BankOffline(errors.BankingError):
    """A refusal the test injects once."""


def test_a_reversal_that_is_refused_leaves_the_transfer_stuck_holding_the_money(
    world: World, mode: str
) -> None:
    world.open("dora")
    world.bank.handle(SuspendAccount("dora"))
    refused = [0]

    def before(command: Any) -> None:
        if isinstance(command, DepositMoney) and command.idempotency_key == "t1:reverse" and refused[0] == 0:
            refused[0] += 1
            raise BankOffline("core banking is offline")

    world.hooked.before.append(before)
    world.send("t1", "alice", "dora", "40")
    runner = world.drain(mode)
    transfer = world.transfer("t1")
    assert transfer.status is TransferStatus.COMPENSATING and not transfer.completed
    assert transfer.held == D("40")
    assert world.balance("alice") + world.balance("bob") + world.balance("dora") + transfer.held == D("150")
    assert world.transfer_events("t1")[-1] is SagaStuck
    [stuck] = runner.stuck()
    assert (stuck.saga_type, stuck.saga_id, stuck.state) == ("transfer", "t1", "COMPENSATING")
    assert stuck.reason == "reversal to 'alice' refused: core banking is offline"

    retried = (
        runner.retry(TransferSaga, "t1")
        if mode == "sync"
        else asyncio.run(runner.retry_async(TransferSaga, "t1"))
    )
    assert isinstance(retried, TransferSaga)
    assert retried.status is TransferStatus.FAILED and retried.held == 0
    assert world.balance("alice") == D("100")
    assert runner.stuck() == []
    assert world.keys_applied() == ["t1:debit", "t1:reverse"]


def test_a_reversal_blocked_by_a_conflicting_key_stays_stuck_and_listed() -> None:
    # Someone used the reversal's key for another deposit: the account refuses the real reversal.
    scenario = transfer(
        DepositMoney("alice", D("1"), "odd", idempotency_key="t1:reverse"),
        OpenAccount("dora", "Dora"),
        CloseAccount("dora"),
    )
    scenario.when_commands(TransferMoney("t1", "alice", "dora", D("40")))
    # Stuck, and held: a redelivery sends nothing.
    scenario.then(
        WithdrawMoney,
        DepositMoney,
        DepositMoney,
        state="COMPENSATING",
        events=[TransferDebited, TransferCreditFailed, SagaStuck],
    )
    [stuck] = scenario.runner.stuck()
    assert "IdempotencyKeyReused" not in stuck.reason and "reused" in stuck.reason
    assert scenario.runner.retry(TransferSaga, "t1").stuck_reason is not None
    assert scenario.saga.held == D("40")
    # A restarted runner still lists it (from the stored history), with its state and reason.
    fresh = SagaRunner(scenario.store, [TransferSaga], scenario.handlers, scenario.checkpoints)
    assert [(s.saga_id, s.state) for s in fresh.stuck()] == [("t1", "COMPENSATING")]


# -- redelivery and restarts ---------------------------------------------------------------------------


def _scenario(w: World) -> None:
    w.open("alice", "100")
    w.open("bob", "50")
    w.open("dora")
    w.bank.handle(SuspendAccount("dora"))
    w.send("ok", "alice", "bob", "30")
    w.send("poor", "bob", "alice", "500")
    w.send("back", "alice", "dora", "20")


EXPECTED = {
    "status": {"ok": TransferStatus.COMPLETED, "poor": TransferStatus.FAILED, "back": TransferStatus.FAILED},
    "balances": {"alice": D("70"), "bob": D("80"), "dora": D("0")},
    "keys": ["ok:credit", "ok:debit", "back:debit", "back:reverse"],
}


def _check(w: World) -> None:
    assert {t: w.transfer(t).status for t in EXPECTED["status"]} == EXPECTED["status"]
    assert {a: w.balance(a) for a in EXPECTED["balances"]} == EXPECTED["balances"]
    assert sorted(w.keys_applied()) == sorted(EXPECTED["keys"])  # each key exactly once


def test_redelivering_every_event_of_a_finished_run_writes_nothing(mode: str) -> None:
    w = World()
    _scenario(w)
    w.drain(mode)
    position = w.store.last_position()
    w.drain(mode)  # the same checkpoint: nothing new
    again = w.runner()  # a runner that lost its memory
    for recorded in list(w.store.read_all()):
        if mode == "sync":
            again.handle(recorded)
        else:
            asyncio.run(again.handle_async(recorded))
    fresh = World(w.store).runner()  # a runner with no checkpoint: everything redelivered
    fresh.run_until_idle()
    assert w.store.last_position() == position
    _check(w)


def test_redelivering_each_event_right_after_it_was_handled_changes_no_outcome(mode: str) -> None:
    w = World()
    _scenario(w)
    runner = w.runner(page_size=1)
    while True:
        before = runner.position or 0
        read = runner.run_once() if mode == "sync" else asyncio.run(runner.run_once_async())
        if read == 0:
            break
        for recorded in list(w.store.read_all(0, limit=runner.position)):
            if recorded.position > before - 3:
                runner.handle(recorded) if mode == "sync" else asyncio.run(runner.handle_async(recorded))
    _check(w)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_between_any_two_steps_then_a_restart_finishes_every_transfer_once(
    when: str, mode: str
) -> None:
    crash_at = 0
    while True:
        w = World()
        _scenario(w)
        crashing = CrashingStore(w.store, crash_at=crash_at, when=when)
        runner = w.runner(crashing, page_size=1)
        try:
            runner.run_until_idle() if mode == "sync" else asyncio.run(runner.run_until_idle_async())
        except SimulatedCrash:
            pass
        else:
            _check(w)
            break
        # Restart: every object is rebuilt from the store and the stored checkpoint.
        restarted = World(w.store)
        restarted.checkpoints = w.checkpoints
        again = restarted.runner(page_size=1)
        again.run_until_idle() if mode == "sync" else asyncio.run(again.run_until_idle_async())
        _check(restarted)
        crash_at += 1
    # ok: debit, Debited, credit, settle, Completed; poor: the debit's refusal (KeyRefused), Failed;
    # back: debit, Debited, the credit's refusal (KeyRefused), CreditFailed, reverse, Reversed+Failed.
    # Each append was a crash point, before and after it was written.
    assert crash_at == 13


def test_a_crash_mid_saga_then_a_restart_resumes_from_the_saga_stream_with_a_fresh_runner() -> None:
    w = World()
    _scenario(w)
    crashing = CrashingStore(w.store, crash_at=2, when="after")  # ok: the credit is written, then the crash
    with pytest.raises(SimulatedCrash):
        w.runner(crashing).run_until_idle()
    assert w.transfer("ok").status is TransferStatus.DEBITED
    assert w.balance("bob") == D("80")  # credited, but the saga has not recorded it yet
    # The checkpoint was never stored: a new process starts from scratch, and still applies nothing twice.
    World(w.store).runner().run_until_idle()
    _check(w)


def test_reactivating_the_destination_after_a_failed_credit_does_not_undo_the_reversal(world: World) -> None:
    world.open("dora")
    world.bank.handle(SuspendAccount("dora"))
    world.send("t1", "alice", "dora", "40")
    world.drain()
    world.bank.handle(ReactivateAccount("dora"))
    World(world.store).runner().run_until_idle()  # everything redelivered
    assert world.transfer("t1").status is TransferStatus.FAILED
    assert (world.balance("alice"), world.balance("dora")) == (D("100"), D("0"))


@pytest.mark.parametrize("step", ["debit", "credit", "reverse"])
def test_a_crash_right_after_a_leg_then_a_changed_world_never_applies_a_leg_twice(
    step: str, mode: str
) -> None:
    """The decision to compensate is stored before the reversal: a destination that comes back
    between the crash and the restart is not credited on top of the reversal."""
    w = World()
    w.open("alice", "100")
    w.open("dora")
    w.bank.handle(SuspendAccount("dora"))
    w.send("t1", "alice", "dora", "40")

    def crash(command: Any) -> None:
        if getattr(command, "idempotency_key", None) == f"t1:{step}":
            raise SimulatedCrash(step)

    w.hooked.after.append(crash)
    with pytest.raises(SimulatedCrash):
        w.drain(mode)
    w.bank.handle(ReactivateAccount("dora"))  # the world changes while the process is down
    restarted = World(w.store)
    restarted.checkpoints = w.checkpoints
    restarted.drain(mode)
    transfer = w.transfer("t1")
    legs = w.keys_applied()
    assert len(legs) == len(set(legs))
    if step == "debit":  # the credit was never tried: it now succeeds
        assert (transfer.status, legs) == (TransferStatus.COMPLETED, ["t1:debit", "t1:credit"])
        assert (w.balance("alice"), w.balance("dora")) == (D("60"), D("40"))
    else:  # dora decided the credit's key (refused) before the crash: it stays refused, compensated
        assert (transfer.status, legs) == (TransferStatus.FAILED, ["t1:debit", "t1:reverse"])
        assert (w.balance("alice"), w.balance("dora")) == (D("100"), D("0"))
