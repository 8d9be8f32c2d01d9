"""Several runner processes on one partition, interleaved step by step, with takeovers: money holds.

The banking state machine (tests/banking/stateful.py: random accounts, deposits, suspensions,
closures, transfers, and all its invariants after every step) with its runner replaced by
*runner processes*: each is a thread running a leased ``SagaRunner`` that stops before every
page and every dispatch until the machine lets it take one step. Rules start a new process,
which claims the partition's lease (a takeover: every older process now acts under a stale
fence), and step any live process, old or new, in any order, in the sync or the asyncio form.
So an old holder may wake up at any point of any saga, after any number of the new holder's
steps, and go on. After every step no transfer leg happened twice and no transfer was both
credited and reversed; at the end, every transfer ended once and all money is where it belongs.

CI size: 300 examples x 40 steps; more with HYPOTHESIS_PROFILE=long / ORCHESTRIX_STATEFUL_STEPS.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.errors import LeaseLostError
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import SagaRunner
from orchestrix.infrastructure.memory import InMemoryLease
from tests.banking.stateful import ACCOUNTS, BankingMachine, banking_machine
from tests.banking.test_stateful import MemoryBackend
from tests.core.test_saga_support import SimulatedCrash

LEASE = "transfers[0/1]"
MAX_PROCESSES = 4


class RunnerProcess:
    """A leased runner in its own thread that waits for a permit before each page and dispatch."""

    def __init__(self, machine: TwoRunnersMachine, how: str) -> None:
        self.lease = InMemoryLease(machine.store, LEASE)
        self.lease.claim()
        self.bank = BankingCommandHandlers(AggregateRepository(machine.store))
        self.runner = SagaRunner(
            machine.store,
            [TransferSaga],
            self,
            machine.checkpoints,
            page_size=20,
            max_concurrency=2,
            lease=self.lease,
        )
        self.how = how
        self.alive = True
        self.stopping = False
        self.error: BaseException | None = None
        self.parks = 0
        self.parked_at: Any = None  # the command it stopped before, or None (before a page)
        self._permits = threading.Semaphore(0)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._wait_for(0)

    # -- the dispatcher the runner calls: a stop before every command ---------------------------

    def handle(self, command: Any) -> Any:
        self._park(command)
        return self.bank.handle(command)

    async def handle_async(self, command: Any) -> Any:
        self._park(command)  # blocks this process's own loop: nothing else of it runs meanwhile
        return await self.bank.handle_async(command)

    # -- driving --------------------------------------------------------------------------------

    def step(self) -> None:
        """Let the process run to its next stop (or its end)."""
        if not self.alive:
            return
        seen = self.parks
        self._permits.release()
        self._wait_for(seen)

    def kill(self) -> None:
        """The process dies wherever it stands."""
        if self.alive:
            self.stopping = True
            self.step()
        self._thread.join(10)
        assert not self._thread.is_alive()

    def _main(self) -> None:
        try:
            while True:
                self._park()
                if self.how == "sync":
                    self.runner.run_once()
                else:
                    asyncio.run(self.runner.run_once_async())
        except (LeaseLostError, SimulatedCrash):
            pass  # fenced or told to die: the process is gone, as it would be
        except BaseException as exc:
            self.error = exc
        finally:
            with self._changed:
                self.alive = False
                self._changed.notify_all()

    def _park(self, command: Any = None) -> None:
        if self.stopping:  # the process is dying: its other asyncio lanes die too, without a stop
            raise SimulatedCrash("killed")
        with self._changed:
            self.parks += 1
            self.parked_at = command
            self._changed.notify_all()
        self._permits.acquire()
        if self.stopping:
            raise SimulatedCrash("killed")

    def _wait_for(self, seen: int) -> None:
        with self._changed:
            moved = self._changed.wait_for(lambda: self.parks > seen or not self.alive, timeout=20)
        assert moved, "a runner process neither stopped again nor ended"


class TwoRunnersMachine(BankingMachine):
    """See the module docstring; account rules and invariants come from BankingMachine."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[RunnerProcess] = []

    def _live(self) -> list[RunnerProcess]:
        return [p for p in self.processes if p.alive]

    @precondition(lambda self: len(self._live()) < MAX_PROCESSES)
    @rule(how=st.sampled_from(("sync", "async")))
    def start_a_process(self, how: str) -> None:
        """A new process claims the lease: every older one is now a stale holder, maybe paused."""
        self.processes.append(RunnerProcess(self, how))

    @rule(
        schedule=st.lists(
            st.tuples(
                st.integers(0, MAX_PROCESSES - 1),
                st.sampled_from(("step",) * 6 + ("takeover", "suspend", "reactivate", "deposit")),
            ),
            min_size=1,
            max_size=40,
        ),
        how=st.sampled_from(("sync", "async")),
    )
    def interleave(self, schedule: list[tuple[int, str]], how: str) -> None:
        """Steps of any live processes in any order, with takeovers and changes of the world between."""
        for pick, what in schedule:
            account = ACCOUNTS[pick % len(ACCOUNTS)]
            if what == "suspend":
                self.suspend(account)
                continue
            if what == "reactivate":
                self.reactivate(account)
                continue
            if what == "deposit":
                self.deposit(account, Decimal(25))
                continue
            live = self._live()
            if not live or (what == "takeover" and len(live) < MAX_PROCESSES):
                self.start_a_process(how)
                continue
            process = live[pick % len(live)]
            process.step()
            assert process.error is None, process.error

    @precondition(lambda self: len(self._live()) < MAX_PROCESSES)
    @rule(
        steps=st.integers(1, 30),
        how=st.sampled_from(("sync", "async")),
        account=st.sampled_from((*ACCOUNTS, "the paused command's")),
        suspended=st.booleans(),
        lead=st.integers(0, 4),
        wake=st.integers(0, 3),
    )
    def take_over_and_run_ahead(
        self, steps: int, how: str, account: str, suspended: bool, lead: int, wake: int
    ) -> None:
        """A standby takes over while the holder is paused and gets far ahead of it, in a world
        that changes around it: an account (often the one a paused process is about to credit)
        is suspended while the new holder runs and reactivated after (or gets money after), so
        a late command of the old holder meets another world. The holder first goes ``lead``
        steps on; the old processes are woken ``wake`` steps each at the end."""
        old = self._live()
        for _ in range(lead):
            if old:
                old[-1].step()
        if account not in ACCOUNTS:
            paused = [p.parked_at for p in self._live() if p.parked_at is not None]
            account = paused[0].account_id if paused else ACCOUNTS[0]
        if suspended:
            self.suspend(account)
        process = RunnerProcess(self, how)
        self.processes.append(process)
        for _ in range(steps):
            process.step()
        assert process.error is None, process.error
        if suspended:
            self.reactivate(account)
        else:
            self.deposit(account, Decimal(50))
        for process in old:
            for _ in range(wake):
                process.step()
            assert process.error is None, process.error

    @precondition(lambda self: self._live())
    @rule(pick=st.integers(0, MAX_PROCESSES - 1))
    def kill_a_process(self, pick: int) -> None:
        live = self._live()
        live[pick % len(live)].kill()

    @rule()
    def catch_up(self) -> None:
        """Every process dies; a last one takes the lease over and finishes everything."""
        for process in self.processes:
            process.kill()
            assert process.error is None, process.error
        self.processes.clear()
        lease = InMemoryLease(self.store, LEASE)
        lease.claim()
        bank = BankingCommandHandlers(AggregateRepository(self.store))
        self.runner = SagaRunner(self.store, [TransferSaga], bank, self.checkpoints, page_size=4, lease=lease)
        super().catch_up()

    # The single-runner machine's runner rules do not apply: every runner here is a process above.
    run_runner = redeliver = crash = crash_in_a_step = crash_after_a_command = None  # type: ignore[assignment]
    # Fewer kinds of account steps, so that most steps drive the runner processes (still callable).
    repeat_transfer = None  # type: ignore[assignment]

    def open_account(self, account: str, initial: Any) -> None:
        BankingMachine.open_account(self, account, initial)

    def withdraw(self, account: str, amount: Any) -> None:
        BankingMachine.withdraw(self, account, amount)

    def start_transfer(self, source: str, destination: str, amount: Any, use_async: bool) -> None:
        BankingMachine.start_transfer(self, source, destination, amount, use_async)


TestTwoRunners = banking_machine(
    MemoryBackend, examples=300, steps=40, name="TwoRunnersMachine", base=TwoRunnersMachine
).TestCase
