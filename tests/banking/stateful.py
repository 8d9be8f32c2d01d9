"""The banking state machine: random accounts, transfers, runner steps, redeliveries and crashes.

Reusable on any store: give :func:`banking_machine` a factory of :class:`Backend` objects (one
per example) and run the returned class's ``TestCase``::

    class PostgresBackend:
        def open(self): ...      # (store, checkpoint store) on the durable state
        def crash(self): ...     # drop every connection and object; the durable state stays
        def close(self): ...     # end of the example: release and delete everything

    TestPostgresBank = banking_machine(PostgresBackend, examples=50, steps=25).TestCase

A *crash* drops the handlers, the runner and the store objects, then rebuilds them all from the
backend. A *crash in a step* runs the runner on a store that dies at its k-th append (before or
after writing it), which puts a crash between every pair of saga steps.

Invariants after every step:

* conservation: sum(balances) + money held by unfinished transfers == openings + deposits - withdrawals
  (held = transfer debits - transfer credits - reversals, read from the accounts' own events);
* no balance below zero; each transfer leg at most once, and never both credited and reversed;
* no idempotency key applied twice;
* every account's status is what the accepted commands made it.

After a catch-up (a rule, and at the end of every example): every transfer is COMPLETED or FAILED,
its legs match its outcome, nothing is held, and no saga is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bases.orchestrix.banking_demo import errors
from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    AccountOpened,
    AccountStatus,
    CloseAccount,
    DepositMoney,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    TransferMoney,
    TransferStatus,
    WithdrawMoney,
)
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.eventsourcing import AggregateRepository, EventStore
from orchestrix.core.execution import CheckpointStore, SagaRunner
from tests.core.test_saga_support import CrashingStore, SimulatedCrash

__all__ = ["Backend", "banking_machine"]

ACCOUNTS = ("a0", "a1", "a2", "a3")
GHOST = "ghost"  # never opened: a transfer to it fails at the credit and is compensated
ZERO = Decimal("0")
RUNS = ("sync", "async", "threads")  # the runner's forms: sync, asyncio, asyncio with steps in threads


class Backend(Protocol):
    """Durable state for one example, which survives :meth:`crash`."""

    def open(self) -> tuple[EventStore, CheckpointStore]:
        """The store and checkpoints on the durable state (a fresh connection after a crash)."""
        ...

    def crash(self) -> None:
        """Drop every in-memory object; what was durably written stays."""
        ...

    def close(self) -> None:
        """Release and remove everything at the end of the example."""
        ...


def _amounts(low: str = "0.01", high: str = "60") -> st.SearchStrategy[Decimal]:
    cents = st.integers(int(Decimal(low) * 100), int(Decimal(high) * 100))
    whole = st.integers(max(1, int(Decimal(low))), int(Decimal(high)))
    return st.one_of(whole.map(Decimal), cents.map(lambda c: Decimal(c).scaleb(-2)))


class BankingMachine(RuleBasedStateMachine):
    """Accounts and transfers driven at random; see the module docstring for what is checked."""

    backend_factory: Callable[[], Backend]

    def __init__(self) -> None:
        super().__init__()
        self.backend = type(self).backend_factory()
        self.store: EventStore
        self.checkpoints: CheckpointStore
        self._connect()
        self.status: dict[str, AccountStatus] = {}
        self.money_in = ZERO  # openings + accepted deposits
        self.money_out = ZERO  # accepted withdrawals
        self.transfers: dict[str, TransferMoney] = {}
        self.next_transfer = 0
        self._cached: tuple[tuple[int, int], Ledger] | None = None

    # -- wiring, as a (re)started process does it ----------------------------------------------

    def _connect(self) -> None:
        self.store, self.checkpoints = self.backend.open()
        self.bank = BankingCommandHandlers(AggregateRepository(self.store))
        self.runner = self._runner(self.store)

    def _runner(self, store: EventStore) -> SagaRunner:
        bank = BankingCommandHandlers(AggregateRepository(store))
        return SagaRunner(store, [TransferSaga], bank, self.checkpoints, page_size=4, max_concurrency=4)

    def teardown(self) -> None:
        try:
            self.catch_up()
        finally:
            self.backend.close()

    # -- accounts -------------------------------------------------------------------------------

    @initialize(balances=st.lists(_amounts("0", "200"), min_size=3, max_size=3))
    def open_first_accounts(self, balances: list[Decimal]) -> None:
        for account, balance in zip(ACCOUNTS, balances, strict=False):
            self.open_account(account, balance)

    @rule(account=st.sampled_from(ACCOUNTS), initial=st.one_of(st.just(ZERO), _amounts("0", "100")))
    def open_account(self, account: str, initial: Decimal) -> None:
        try:
            self.bank.handle(OpenAccount(account, f"Owner {account}", initial))
        except errors.AccountAlreadyOpen:
            assert account in self.status
            return
        assert account not in self.status
        self.status[account] = AccountStatus.ACTIVE
        self.money_in += initial

    @rule(account=st.sampled_from((*ACCOUNTS, GHOST)), amount=_amounts())
    def deposit(self, account: str, amount: Decimal) -> None:
        try:
            self.bank.handle(DepositMoney(account, amount, "cash"))
        except errors.AccountNotOpen:
            assert account not in self.status
            return
        except errors.AccountNotActive:
            assert self.status[account] is not AccountStatus.ACTIVE
            return
        assert self.status[account] is AccountStatus.ACTIVE
        self.money_in += amount

    @rule(account=st.sampled_from((*ACCOUNTS, GHOST)), amount=_amounts())
    def withdraw(self, account: str, amount: Decimal) -> None:
        try:
            self.bank.handle(WithdrawMoney(account, amount, "cash"))
        except errors.AccountNotOpen:
            assert account not in self.status
            return
        except errors.AccountNotActive:
            assert self.status[account] is not AccountStatus.ACTIVE
            return
        except errors.InsufficientFunds:
            assert self.bank.get_account(account).balance < amount
            return
        assert self.status[account] is AccountStatus.ACTIVE
        self.money_out += amount

    @rule(account=st.sampled_from(ACCOUNTS))
    def suspend(self, account: str) -> None:
        try:
            self.bank.handle(SuspendAccount(account, "review"))
        except (errors.AccountNotOpen, errors.AccountNotActive):
            assert self.status.get(account) is not AccountStatus.ACTIVE
            return
        self.status[account] = AccountStatus.SUSPENDED

    @rule(account=st.sampled_from(ACCOUNTS))
    def reactivate(self, account: str) -> None:
        try:
            self.bank.handle(ReactivateAccount(account))
        except (errors.AccountNotOpen, errors.AccountNotSuspended):
            assert self.status.get(account) is not AccountStatus.SUSPENDED
            return
        self.status[account] = AccountStatus.ACTIVE

    @rule(account=st.sampled_from(ACCOUNTS), drain=st.booleans())
    def close(self, account: str, drain: bool) -> None:
        if drain and self.status.get(account) is AccountStatus.ACTIVE:
            balance = self.bank.get_account(account).balance
            if balance > 0:
                self.withdraw(account, balance)
        try:
            self.bank.handle(CloseAccount(account))
        except (errors.AccountNotOpen, errors.AccountNotActive):
            assert self.status.get(account) is not AccountStatus.ACTIVE
            return
        except errors.NonZeroBalanceOnClose:
            assert self.bank.get_account(account).balance > 0
            return
        except errors.AccountHasTransfersInFlight as refused:
            # Only a debited transfer that is not yet settled or reversed blocks closing.
            assert refused.transfer_ids and set(refused.transfer_ids) <= set(self.transfers)
            return
        assert self.status[account] is AccountStatus.ACTIVE
        self.status[account] = AccountStatus.CLOSED

    # -- transfers ------------------------------------------------------------------------------

    @rule(
        source=st.sampled_from((*ACCOUNTS, GHOST)),
        destination=st.sampled_from((*ACCOUNTS, GHOST)),
        amount=_amounts(),
        use_async=st.booleans(),
    )
    def start_transfer(self, source: str, destination: str, amount: Decimal, use_async: bool) -> None:
        transfer_id = f"t{self.next_transfer}"
        self.next_transfer += 1
        command = TransferMoney(transfer_id, source, destination, amount, "rent")
        before = self.store.last_position()
        try:
            if use_async:
                transfer = asyncio.run(self.bank.transfer_money(command))
            else:
                transfer = self.bank.handle(command)
        except errors.SelfTransfer:
            assert source == destination
        except errors.AccountNotOpen:
            assert source not in self.status
        except errors.AccountNotActive:
            assert self.status[source] is not AccountStatus.ACTIVE
        else:
            assert source != destination and self.status[source] is AccountStatus.ACTIVE
            assert transfer.status is TransferStatus.INITIATED
            self.transfers[transfer_id] = command
            return
        assert self.store.last_position() == before

    @rule(
        batch=st.lists(
            st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), _amounts("1", "40")),
            min_size=1,
            max_size=5,
        )
    )
    def start_transfers(self, batch: list[tuple[str, str, Decimal]]) -> None:
        for source, destination, amount in batch:
            self.start_transfer(source, destination, amount, use_async=False)

    @precondition(lambda self: self.transfers)
    @rule(pick=st.integers(0, 10_000), change=st.booleans())
    def repeat_transfer(self, pick: int, change: bool) -> None:
        ids = sorted(self.transfers)
        command = self.transfers[ids[pick % len(ids)]]
        if change:
            command = TransferMoney(
                command.transfer_id,
                command.from_account_id,
                command.to_account_id,
                command.amount + 1,
                command.description,
            )
        before = self.store.last_position()
        try:
            self.bank.handle(command)
        except errors.TransferIdReused:
            assert change
        else:
            assert not change
        assert self.store.last_position() == before

    # -- the runner, redeliveries, crashes ------------------------------------------------------

    @rule(pages=st.integers(1, 3), how=st.sampled_from(RUNS))
    def run_runner(self, pages: int, how: str) -> None:
        _run(self.runner, how, max_pages=pages)

    @rule(pick=st.integers(0, 10_000), use_async=st.booleans())
    def redeliver(self, pick: int, use_async: bool) -> None:
        events = list(self.store.read_all())
        if not events:
            return
        recorded = events[pick % len(events)]
        if use_async:
            asyncio.run(self.runner.handle_async(recorded))
        else:
            self.runner.handle(recorded)

    @rule()
    def crash(self) -> None:
        self.backend.crash()
        self._connect()

    @rule(at=st.integers(0, 6), how=st.sampled_from(RUNS))
    def crash_in_a_step(self, at: int, how: str) -> None:
        # "Before append k+1" leaves the same durable state as "after append k", so after is enough.
        crashing = CrashingStore(self.store, crash_at=at, when="after")
        with contextlib.suppress(SimulatedCrash):
            _run(self._runner(crashing), how)
        self.crash()

    @rule(
        step=st.sampled_from(("debit", "credit", "reverse")),
        nth=st.integers(1, 3),
        how=st.sampled_from(RUNS),
        reactivate=st.booleans(),
    )
    def crash_after_a_command(self, step: str, nth: int, how: str, reactivate: bool) -> None:
        """Die right after the nth ``step`` command took effect, before its saga recorded it.

        With ``reactivate``, every suspended account is reactivated while the process is down, so
        a step run again after the restart meets a different world (a credit that was refused
        may now succeed: only a recorded decision keeps the saga from applying both outcomes).
        """
        bank = BankingCommandHandlers(AggregateRepository(self.store))
        runner = SagaRunner(
            self.store, [TransferSaga], _CrashAfter(bank, f":{step}", nth), self.checkpoints, page_size=4
        )
        with contextlib.suppress(SimulatedCrash):
            _run(runner, how)
        self.crash()
        if reactivate:
            for account, status in sorted(self.status.items()):
                if status is AccountStatus.SUSPENDED:
                    self.reactivate(account)

    @rule()
    def catch_up(self) -> None:
        self.runner.run_until_idle()
        ledger = self._ledger()
        for transfer_id in self.transfers:
            saga = self.bank.get_transfer(transfer_id)
            legs = ledger.legs.get(transfer_id, Counter())
            if saga.status is TransferStatus.COMPLETED:
                assert legs == Counter(debit=1, credit=1), (transfer_id, legs)
            else:
                assert saga.status is TransferStatus.FAILED, (transfer_id, saga.status, saga.stuck_reason)
                assert legs in (Counter(), Counter(debit=1, reverse=1)), (transfer_id, legs)
        assert ledger.held == 0
        assert self.runner.stuck() == []
        for account, balance in ledger.balances.items():
            assert not self.bank.get_account(account).transfers_in_flight, (account, balance)

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def money_is_conserved_and_never_negative(self) -> None:
        ledger = self._ledger()
        assert all(balance >= 0 for balance in ledger.balances.values()), ledger.balances
        assert sum(ledger.balances.values()) + ledger.held == self.money_in - self.money_out
        assert ledger.opened_total + ledger.external == self.money_in - self.money_out

    @invariant()
    def no_idempotency_key_is_applied_twice(self) -> None:
        ledger = self._ledger()
        assert not [key for key, n in ledger.keys.items() if n > 1]

    @invariant()
    def every_transfer_leg_happens_at_most_once(self) -> None:
        for transfer_id, legs in self._ledger().legs.items():
            assert transfer_id in self.transfers
            assert max(legs.values(), default=0) <= 1, (transfer_id, legs)
            assert legs["credit"] + legs["reverse"] <= legs["debit"], (transfer_id, legs)

    @invariant()
    def account_status_follows_the_accepted_commands(self) -> None:
        accounts = self._ledger().accounts
        assert {a: accounts[a].status for a in self.status} == self.status

    def _ledger(self) -> Ledger:
        # Invariants run after every step; read the store once per state, not once per invariant.
        key = (id(self.store), self.store.last_position())
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, Ledger(self.store, self.transfers))
        return self._cached[1]


class _CrashAfter:
    """Banking handlers that die right after the nth command (done or refused) keyed ``*suffix``."""

    def __init__(self, bank: BankingCommandHandlers, suffix: str, nth: int) -> None:
        self.bank, self.suffix, self.left = bank, suffix, nth

    def handle(self, command: Any) -> Any:
        try:
            return self.bank.handle(command)
        finally:
            self._after(command)

    async def handle_async(self, command: Any) -> Any:
        try:
            return await self.bank.handle_async(command)
        finally:
            self._after(command)

    def _after(self, command: Any) -> None:
        if (getattr(command, "idempotency_key", None) or "").endswith(self.suffix):
            self.left -= 1
            if self.left == 0:
                raise SimulatedCrash(f"crash right after {command.idempotency_key}")


def _run(runner: SagaRunner, how: str, max_pages: int | None = None) -> None:
    """Run the runner in one of its forms: sync, asyncio, or asyncio with steps in threads."""
    if how == "sync":
        runner.run_until_idle(max_pages=max_pages)
        return
    runner.step_threads = how == "threads"
    asyncio.run(runner.run_until_idle_async(max_pages=max_pages))


class Ledger:
    """Everything the invariants need, read from the store alone."""

    def __init__(self, store: EventStore, transfers: dict[str, TransferMoney]) -> None:
        self.balances: dict[str, Decimal] = {}
        self.keys: Counter[str] = Counter()
        self.legs: dict[str, Counter[str]] = {}
        self.opened_total = ZERO
        self.external = ZERO
        self.held = ZERO
        repository = AggregateRepository(store)
        for recorded in store.read_all():
            event = recorded.event
            if isinstance(event, AccountOpened):
                self.balances[event.account_id] = ZERO
                self.opened_total += event.initial_balance
            elif isinstance(event, MoneyDeposited | MoneyWithdrawn):
                if event.idempotency_key is not None:
                    self.keys[event.idempotency_key] += 1
                sign = 1 if isinstance(event, MoneyDeposited) else -1
                if event.transfer_id is None:
                    self.external += sign * event.amount
                    continue
                leg = (event.idempotency_key or "").rpartition(":")[2]
                self.legs.setdefault(event.transfer_id, Counter())[leg] += 1
                assert event.amount == transfers[event.transfer_id].amount
                self.held -= sign * event.amount
        self.accounts = {account: repository.load(Account, account) for account in self.balances}
        for account, loaded in self.accounts.items():
            self.balances[account] = loaded.balance


def banking_machine(
    backend_factory: Callable[[], Backend],
    *,
    examples: int,
    steps: int,
    name: str = "BankingMachine",
    base: type[BankingMachine] = BankingMachine,
) -> type[BankingMachine]:
    """A machine class on ``backend_factory``; its ``TestCase`` runs ``examples`` x ``steps`` steps.

    Under ``HYPOTHESIS_PROFILE=long`` the profile's (larger) example count wins, under
    ``interpreters`` (the other Pythons' runs) its smaller one does, and
    ``ORCHESTRIX_STATEFUL_STEPS`` overrides the step count.
    """
    count = examples
    if os.environ.get("HYPOTHESIS_PROFILE") == "long":
        count = max(examples, settings.default.max_examples)
    elif os.environ.get("HYPOTHESIS_PROFILE") == "interpreters":
        count = min(examples, settings.default.max_examples)
    steps = int(os.environ.get("ORCHESTRIX_STATEFUL_STEPS", steps))
    machine = type(name, (base,), {"backend_factory": staticmethod(backend_factory)})
    machine.TestCase.settings = settings(max_examples=count, stateful_step_count=steps, deadline=None)
    return machine
