"""The banking demo: accounts, transfers that complete, fail or are compensated, and a money check.

Run from the repository root (``python bases/orchestrix/banking_demo/main.py`` works too)::

    python -m bases.orchestrix.banking_demo.main                  # file store in ./orchestrix-data
    python -m bases.orchestrix.banking_demo.main --store memory   # nothing kept
    python -m bases.orchestrix.banking_demo.main --fresh          # forget earlier runs first
    python -m bases.orchestrix.banking_demo.main --slow-destination  # a credit that times out
    python -m bases.orchestrix.banking_demo.main --help           # every option

Each run adds to what earlier runs stored (new transfers, new deposits) and ends by checking,
over the whole store, that money is conserved. It exits with status 1 if that check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import attrs

if not __package__:  # run as a file, so sys.path starts at this folder: add the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.errors import BankingError
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    AccountOpened,
    CloseAccount,
    DepositMoney,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    TransferInitiated,
    TransferMoney,
    banking_serializer,
)
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.errors import StoreError
from orchestrix.core.eventsourcing import NO_STREAM, AggregateRepository, EventStore
from orchestrix.core.eventsourcing.snapshot import Snapshot, SnapshotStore
from orchestrix.core.execution import CheckpointStore, InMemoryCheckpointStore, SagaRunner
from orchestrix.core.execution.retry import RetryPolicy

__all__ = ["Audit", "audit", "main", "run_demo"]

D = Decimal
FOUNDERS = (
    ("alice", "Alice Anderson", D("1000")),
    ("bob", "Bob Brown", D("500")),
    ("carol", "Carol Chen", D("250")),
)


def _money(amount: Decimal, sign: bool = False) -> str:
    return f"{amount:+,.2f}" if sign else f"{amount:,.2f}"


# -- the conservation check ------------------------------------------------------------------------


@attrs.define
class Audit:
    """What the store says about all money, every account and every transfer."""

    balances: dict[str, Decimal] = attrs.Factory(dict)
    openings: Decimal = attrs.field(factory=Decimal)
    deposits: Decimal = attrs.field(factory=Decimal)
    withdrawals: Decimal = attrs.field(factory=Decimal)
    held: Decimal = attrs.field(factory=Decimal)
    held_by: dict[str, Decimal] = attrs.Factory(dict)
    transfers: dict[str, str] = attrs.Factory(dict)
    keys_applied_twice: list[str] = attrs.Factory(list)

    @property
    def total(self) -> Decimal:
        """Money in the accounts plus money held by transfers that are debited but not finished."""
        return sum(self.balances.values(), D("0")) + self.held

    @property
    def expected(self) -> Decimal:
        """Money that came in from outside, less money that left."""
        return self.openings + self.deposits - self.withdrawals

    @property
    def problems(self) -> list[str]:
        """Every way the store breaks the banking invariant (empty when all is well)."""
        found = []
        if self.total != self.expected:
            found.append(f"money not conserved: {_money(self.total)} != {_money(self.expected)}")
        found += [f"{a} has a negative balance {_money(b)}" for a, b in self.balances.items() if b < 0]
        found += [
            f"transfer {t} is {status}"
            for t, status in self.transfers.items()
            if status not in ("COMPLETED", "FAILED")
        ]
        found += [f"idempotency key {k} applied twice" for k in self.keys_applied_twice]
        return found


async def audit(store: EventStore, bank: BankingCommandHandlers) -> Audit:
    """Read the whole store and total its money, as the conservation check needs it."""
    result = Audit()
    keys: Counter[str] = Counter()
    transfer_ids = []
    async for recorded in store.read_all_async():
        event = recorded.event
        if isinstance(event, AccountOpened):
            result.balances[event.account_id] = D("0")
            result.openings += event.initial_balance
        elif isinstance(event, TransferInitiated):
            transfer_ids.append(event.transfer_id)
        elif isinstance(event, MoneyDeposited | MoneyWithdrawn):
            if event.idempotency_key is not None:
                keys[event.idempotency_key] += 1
            deposit = isinstance(event, MoneyDeposited)
            if event.transfer_id is not None:
                # A transfer leg: a debit is held until it is credited or reversed.
                leg = -event.amount if deposit else event.amount
                result.held += leg
                result.held_by[event.transfer_id] = result.held_by.get(event.transfer_id, D("0")) + leg
            elif deposit:
                result.deposits += event.amount
            else:
                result.withdrawals += event.amount
    for account_id in result.balances:
        result.balances[account_id] = (await bank.repository.load_async(Account, account_id)).balance
    for transfer_id in transfer_ids:
        transfer = await bank.repository.load_async(TransferSaga, transfer_id)
        result.transfers[transfer_id] = "STUCK" if transfer.stuck_reason else transfer.state
    result.keys_applied_twice = sorted(k for k, n in keys.items() if n > 1)
    return result


# -- stores ---------------------------------------------------------------------------------------


def open_stores(kind: str, data: Path, fresh: bool) -> tuple[EventStore, CheckpointStore]:
    """The composition root's only choice: which store and checkpoints the demo runs on."""
    if kind == "memory":
        from orchestrix.infrastructure.memory.store import InMemoryEventStore

        return InMemoryEventStore(serializer=banking_serializer()), InMemoryCheckpointStore()
    from orchestrix.infrastructure.file import FileEventStore

    if fresh and data.exists():
        FileEventStore.destroy(data)  # refuses a folder that is not a file store
    store = FileEventStore(data, serializer=banking_serializer())
    return store, store.checkpoints()


# -- the story ------------------------------------------------------------------------------------


class Demo:
    """One run of the demo: writes what happens to ``out``."""

    def __init__(
        self,
        store: EventStore,
        checkpoints: CheckpointStore,
        out: TextIO,
        crash_after_debit: bool = False,
        slow_destination: bool = False,
    ) -> None:
        self.store = store
        self.out = out
        self.snapshots = _CountedSnapshots(store.snapshots()) if hasattr(store, "snapshots") else None
        self.bank = BankingCommandHandlers(AggregateRepository(store, snapshots=self.snapshots))
        self.crash_after_debit = crash_after_debit
        self.slow_destination = slow_destination
        self.run_number = 0
        self.dispatcher: object = _CrashAfterDebit(self) if crash_after_debit else self.bank
        transfers: type[TransferSaga] = TransferSaga
        if slow_destination:
            self.dispatcher = _SlowBank(self.dispatcher, SLOW_BANK_PREFIX)
            transfers = TransferSaga.configured(credit_timeout=CREDIT_TIMEOUT, retry_policy=CREDIT_RETRY)
        self.runner = SagaRunner(
            store,
            [transfers],
            self.dispatcher,
            checkpoints,
            name="banking-demo",
            stuck_after=timedelta(seconds=30),
        )

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def heading(self, text: str) -> None:
        self.say()
        self.say(f"== {text}")

    async def run(self, description: str) -> int:
        self.run_number = run = await self._run_number()
        self.say(f"orchestrix banking demo, run {run}, on {description}")
        earlier = await self._unfinished()
        stop = asyncio.Event()
        runner = asyncio.create_task(self.runner.run_forever_async(stop, idle_timeout=0.05))
        try:
            if earlier:
                # Finish them before the story starts: resumed legs on alice, bob and carol racing
                # the story's own commands on those accounts made the story's deposit lose all its
                # retries now and then, and the balances it prints depend on who won.
                self.heading("Transfers left unfinished by an earlier run, resumed by this run's runner")
                for transfer in (await self._wait(earlier)).values():
                    self._print_transfer(_command_of(transfer), transfer)
            await self._story(run)
            if self.slow_destination:
                await self._slow_destination(run)
        finally:
            stop.set()
            await runner
        return await self._report(run)

    async def _unfinished(self) -> list[str]:
        """Transfers an earlier run left unfinished (it crashed): shown now, finished by the runner."""
        before = await audit(self.store, self.bank)
        unfinished = [t for t, status in before.transfers.items() if status not in ("COMPLETED", "FAILED")]
        if unfinished:
            self.heading("Unfinished transfers found in the store (an earlier run stopped mid-way)")
            for transfer_id in unfinished:
                transfer = await self.bank.repository.load_async(TransferSaga, transfer_id)
                held = before.held_by.get(transfer_id, D("0"))
                route = f"{transfer.from_account_id} -> {transfer.to_account_id}"
                self.say(
                    f"  {transfer_id:<12} {route:<17} {_money(transfer.amount):>10}  {transfer.state}"
                    + (f", {_money(held)} debited and held" if held else ", nothing debited yet")
                )
            self.say(
                f"  held by unfinished transfers: {_money(before.held)}; "
                f"accounts + held = {_money(before.total)} = money in - money out = {_money(before.expected)}"
            )
        return unfinished

    async def _run_number(self) -> int:
        run = 1
        while await self.store.stream_version_async(TransferSaga.stream_name(f"r{run}-rent")) != NO_STREAM:
            run += 1
        return run

    async def _story(self, run: int) -> None:
        dave = f"dave-r{run}"
        self.heading("Accounts")
        for account_id, owner, opening in FOUNDERS:
            await self._open(account_id, owner, opening)
        await self._open(dave, "Dave Davis", D("0"))

        self.heading("Deposit")
        tx = await self.bank.deposit_money(
            DepositMoney("alice", D("200"), f"Salary (run {run})", idempotency_key=f"r{run}:salary")
        )
        self.say(
            f"  alice   {_money(tx.amount, True):>12}  {tx.description}; balance {_money(tx.balance_after)}"
        )

        self.heading("Account lifecycle, part 1")
        await self.bank.suspend_account(SuspendAccount(dave, "identity check pending"))
        self.say(f"  {dave} suspended (identity check pending)")

        self.heading("Transfers (the saga runner works in the background)")
        story = [
            TransferMoney(f"r{run}-rent", "alice", "bob", D("250"), "Rent"),
            TransferMoney(f"r{run}-yacht", "carol", "alice", D("10000"), "A yacht"),
            TransferMoney(f"r{run}-gift", "bob", dave, D("75"), "Birthday gift"),
        ]
        people = [a for a, _, _ in FOUNDERS]
        ring = [
            TransferMoney(
                f"r{run}-ring-{i:02}", people[i % 3], people[(i + 1) % 3], D(5 + 5 * i), f"Ring {i}"
            )
            for i in range(12)
        ]
        for command in story:
            await self.bank.transfer_money(command)
        await asyncio.gather(*(self.bank.transfer_money(c) for c in ring))
        finished = await self._wait([c.transfer_id for c in story + ring])
        for command in story:
            self._print_transfer(command, finished[command.transfer_id])
        outcomes = Counter(finished[c.transfer_id].state for c in ring)
        self.say(
            f"  {len(ring)} more transfers sent at once ({ring[0].transfer_id} .. {ring[-1].transfer_id}), "
            f"handled concurrently: " + ", ".join(f"{n} {state}" for state, n in sorted(outcomes.items()))
        )

        self.heading("Account lifecycle, part 2")
        await self.bank.reactivate_account(ReactivateAccount(dave))
        self.say(f"  {dave} reactivated")
        await self.bank.close_account(CloseAccount(dave))
        self.say(f"  {dave} closed (empty, no transfer in flight)")
        try:
            await self.bank.close_account(CloseAccount("bob"))
        except BankingError as refused:
            self.say(f"  closing bob refused: {refused}")

    async def _slow_destination(self, run: int) -> None:
        erin = f"{SLOW_BANK_PREFIX}-r{run}"
        self.heading(
            f"A slow destination: credits to {erin} time out after {CREDIT_TIMEOUT.total_seconds():g} s"
        )
        await self._open(erin, "Erin Evans", D("0"))
        self.say(f"  {erin} banks elsewhere, and that bank does not answer today")
        command = TransferMoney(f"r{run}-slow", "alice", erin, D("30"), "Invoice 17")
        await self.bank.handle_async(command)
        transfer = (await self._wait([command.transfer_id]))[command.transfer_id]
        self._print_transfer(command, transfer)
        attempts = [
            r.event
            async for r in self.store.read_stream_async(transfer.stream)
            if r.event_type == "StepFailed"
        ]
        waits = ", ".join(f"{(f.retry_at - f.occurred_at).total_seconds():g} s" for f in attempts[:4])
        self.say(
            f"  {'':<12} the credit failed {len(attempts)} time{'' if len(attempts) == 1 else 's'}, "
            "each retried after its backoff "
            f"({waits}{', ...' if len(attempts) > 4 else ''}); then the credit-timeout deadline fired"
        )

    async def _open(self, account_id: str, owner: str, opening: Decimal) -> None:
        try:
            account = await self.bank.open_account(OpenAccount(account_id, owner, opening))
        except BankingError:
            account = await self.bank.repository.load_async(Account, account_id)
            self.say(
                f"  {account_id:<8} {account.owner_name:<15} already open, balance {_money(account.balance)}"
            )
            return
        self.say(f"  {account_id:<8} {account.owner_name:<15} opened with {_money(opening)}")

    async def _wait(self, transfer_ids: Sequence[str], timeout: float = 60.0) -> dict[str, TransferSaga]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            transfers = {t: await self.bank.repository.load_async(TransferSaga, t) for t in transfer_ids}
            done = all(t.completed or t.stuck_reason for t in transfers.values())
            if done or loop.time() > deadline:
                return transfers
            await asyncio.sleep(0.02)

    def _print_transfer(self, command: TransferMoney, transfer: TransferSaga) -> None:
        route = f"{command.from_account_id} -> {command.to_account_id}"
        self.say(f"  {command.transfer_id:<12} {route:<17} {_money(command.amount):>10}  {transfer.state}")
        if transfer.failure_reason:
            self.say(f"  {'':<12} reason: {transfer.failure_reason}")
        if transfer.reversed:
            self.say(
                f"  {'':<12} compensated: {_money(transfer.amount)} re-credited to {transfer.from_account_id}"
            )

    async def _report(self, run: int) -> int:
        self.heading("Balances")
        result = await audit(self.store, self.bank)
        for account_id, balance in result.balances.items():
            account = await self.bank.repository.load_async(Account, account_id)
            self.say(f"  {account_id:<8} {account.owner_name:<15} {_money(balance):>12}  {account.status}")

        for account_id in ("alice", "bob", "carol", f"dave-r{run}"):
            await self._print_trail(account_id)

        self.heading("Stuck sagas")
        stuck = await self.runner.stuck_async()
        for saga in stuck:
            self.say(f"  {saga.saga_type} {saga.saga_id}: {saga.state}, {saga.reason}")
        if not stuck:
            self.say("  none")

        if self.snapshots is not None:
            self.heading("Snapshots")
            self.say(
                f"  {self.snapshots.taken} account snapshots taken this run "
                f"(one every {Account.snapshot_every} events of an account); "
                "loads replay only the events after them"
            )

        self.heading("Conservation check (whole store, every run so far)")
        self.say(
            f"  accounts {_money(sum(result.balances.values(), D('0')))} "
            f"+ held by unfinished transfers {_money(result.held)} = {_money(result.total)}"
        )
        self.say(
            f"  openings {_money(result.openings)} + deposits {_money(result.deposits)} "
            f"- withdrawals {_money(result.withdrawals)} = {_money(result.expected)}"
        )
        statuses = Counter(result.transfers.values())
        self.say(
            f"  {len(result.balances)} accounts, {len(result.transfers)} transfers ("
            + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
            + ")"
        )
        problems = result.problems + [f"saga {s.saga_id} is stuck: {s.reason}" for s in stuck]
        if problems:
            for problem in problems:
                self.say(f"  VIOLATED: {problem}")
            return 1
        self.say(
            "  OK: money is conserved, no balance is negative, every transfer finished, no key applied twice"
        )
        return 0

    async def _print_trail(self, account_id: str, last: int = 12) -> None:
        account: Account = await self.bank.repository.load_async(Account, account_id)
        self.heading(f"Audit trail: {account_id} ({account.owner_name}, {account.status})")
        entries = account.transactions
        if len(entries) > last:
            earlier = len(entries) - last
            self.say(f"  ... {earlier} earlier {'entry' if earlier == 1 else 'entries'}")
        for entry in entries[-last:]:
            sign = entry.amount if entry.kind.value != "withdrawal" else -entry.amount
            transfer = f"  [transfer {entry.transfer_id}]" if entry.transfer_id else ""
            self.say(
                f"  {entry.kind.value:<10} {_money(sign, True):>12} {_money(entry.balance_after):>12}  "
                f"{entry.description}{transfer}"
            )
        if not entries:
            self.say("  (no money movements)")


def _command_of(transfer: TransferSaga) -> TransferMoney:
    return TransferMoney(
        transfer.id or "",
        transfer.from_account_id,
        transfer.to_account_id,
        transfer.amount,
        transfer.description,
    )


SLOW_BANK_PREFIX = "erin"
CREDIT_TIMEOUT = timedelta(seconds=1)
CREDIT_RETRY = RetryPolicy(
    max_attempts=50, initial_delay=0.1, backoff_multiplier=2.0, max_delay=0.4, transient=(ConnectionError,)
)
"""The slow destination's failures are transient; the credit timeout ends the retrying."""


class DestinationUnavailable(ConnectionError):
    """The destination's bank did not answer."""


class _CountedSnapshots:
    """The store's snapshots, counting the saves: the demo says how many it took."""

    def __init__(self, snapshots: SnapshotStore) -> None:
        self.inner = snapshots
        self.taken = 0

    def save(self, snapshot: Snapshot) -> None:
        self.inner.save(snapshot)
        self.taken += 1

    async def save_async(self, snapshot: Snapshot) -> None:
        await self.inner.save_async(snapshot)
        self.taken += 1

    def load(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        return self.inner.load(stream, schema_version)

    async def load_async(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        return await self.inner.load_async(stream, schema_version)

    def delete(self, stream: str) -> None:
        self.inner.delete(stream)

    async def delete_async(self, stream: str) -> None:
        await self.inner.delete_async(stream)


class _SlowBank:
    """The bank, except that deposits to accounts held at another bank (``erin-...``) get no answer."""

    def __init__(self, bank: object, prefix: str) -> None:
        self.bank = bank
        self.prefix = prefix

    def handle(self, command: object) -> object:
        self._check(command)
        return self.bank.handle(command)  # type: ignore[attr-defined]

    async def handle_async(self, command: object) -> object:
        self._check(command)
        return await self.bank.handle_async(command)  # type: ignore[attr-defined]

    def _check(self, command: object) -> None:
        if isinstance(command, DepositMoney) and command.account_id.startswith(f"{self.prefix}-"):
            raise DestinationUnavailable(f"the bank of {command.account_id!r} did not answer")


class _CrashAfterDebit:
    """The bank, except that the process dies right after this run's rent transfer is debited.

    ``os._exit`` skips every cleanup, as a power cut or ``kill -9`` would: the debit is stored,
    the saga has not recorded it, the credit has not happened. The next run resumes it.
    """

    def __init__(self, demo: Demo) -> None:
        self.demo = demo

    def handle(self, command: object) -> object:
        result = self.demo.bank.handle(command)
        self._maybe_crash(command)
        return result

    async def handle_async(self, command: object) -> object:
        result = await self.demo.bank.handle_async(command)
        self._maybe_crash(command)
        return result

    def _maybe_crash(self, command: object) -> None:
        if getattr(command, "idempotency_key", None) == f"r{self.demo.run_number}-rent:debit":
            self.demo.say(
                "  ** crash: the process dies right after the rent transfer's debit, before its credit **"
            )
            self.demo.out.flush()
            os._exit(3)


async def run_demo(
    store_kind: str,
    data: Path,
    fresh: bool,
    out: TextIO = sys.stdout,
    crash_after_debit: bool = False,
    slow_destination: bool = False,
) -> int:
    """Run the demo once; returns the exit status (0 when the conservation check holds)."""
    store, checkpoints = open_stores(store_kind, data, fresh)
    where = "the in-memory store" if store_kind == "memory" else f"the file store in {data}"
    try:
        return await Demo(store, checkpoints, out, crash_after_debit, slow_destination).run(where)
    finally:
        store.close()
        close = getattr(checkpoints, "close", None)
        if close is not None:
            close()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m bases.orchestrix.banking_demo.main", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--store", choices=("file", "memory"), default="file", help="where events live (default: file)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("orchestrix-data"),
        help="file store folder (default: ./orchestrix-data)",
    )
    parser.add_argument("--fresh", action="store_true", help="forget what earlier runs stored in --data")
    parser.add_argument(
        "--crash-after-debit",
        action="store_true",
        help="die (exit status 3) right after the rent transfer's debit, to let the next run resume it",
    )
    parser.add_argument(
        "--slow-destination",
        action="store_true",
        help="add a transfer to an account whose bank does not answer: its credit is retried with "
        f"backoff until a {CREDIT_TIMEOUT.total_seconds():g} s deadline compensates it",
    )
    args = parser.parse_args(argv)
    try:
        return asyncio.run(
            run_demo(
                args.store,
                args.data,
                args.fresh,
                crash_after_debit=args.crash_after_debit,
                slow_destination=args.slow_destination,
            )
        )
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
