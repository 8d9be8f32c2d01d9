"""TransferSaga's credit timeout: a slow destination gets the transfer compensated, once, in time."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import DepositMoney, OpenAccount, TransferMoney, banking_serializer
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner
from orchestrix.core.execution.retry import RetryPolicy
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from tests.core.deadline_support import Clock

D = Decimal


class DestinationUnavailable(Exception):
    """The destination bank does not answer (yet)."""


class SlowDestination:
    """The bank, except that deposits to ``slow`` fail transiently until ``answers`` is set."""

    def __init__(self, bank: BankingCommandHandlers, slow: str) -> None:
        self.bank, self.slow, self.answers, self.refused = bank, slow, False, 0

    def handle(self, command: Any) -> Any:
        if isinstance(command, DepositMoney) and command.account_id == self.slow and not self.answers:
            self.refused += 1
            raise DestinationUnavailable(f"{self.slow} is not answering")
        return self.bank.handle(command)

    async def handle_async(self, command: Any) -> Any:
        return self.handle(command)


RETRY = RetryPolicy(max_attempts=20, initial_delay=1.0, max_delay=4.0, transient=(DestinationUnavailable,))
Transfers = TransferSaga.configured(credit_timeout=timedelta(seconds=30), retry_policy=RETRY)


def setup() -> tuple[Any, BankingCommandHandlers, SlowDestination, Clock, SagaRunner]:
    store = InMemoryEventStore(serializer=banking_serializer())
    bank = BankingCommandHandlers(AggregateRepository(store))
    bank.handle(OpenAccount("alice", "Alice", D("100")))
    bank.handle(OpenAccount("erin", "Erin", D("0")))
    slow, clock = SlowDestination(bank, "erin"), Clock()
    runner = SagaRunner(store, [Transfers], slow, InMemoryCheckpointStore(), clock=clock)
    bank.handle(TransferMoney("t-1", "alice", "erin", D("40"), "to a slow bank"))
    return store, bank, slow, clock, runner


def run_for(runner: SagaRunner, clock: Clock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1)
        runner.run_until_idle()


def test_a_credit_that_does_not_succeed_in_time_is_compensated() -> None:
    store, bank, slow, clock, runner = setup()
    runner.run_until_idle()
    assert bank.get_account("alice").balance == D("60")  # debited, the credit is being retried
    run_for(runner, clock, 29)
    assert bank.get_transfer("t-1").state == "DEBITED" and slow.refused > 3
    run_for(runner, clock, 2)
    transfer = bank.get_transfer("t-1")
    assert transfer.state == "FAILED" and transfer.reversed
    assert transfer.failure_reason == (
        "credit not confirmed within 30 s (DestinationUnavailable: erin is not answering)"
    )
    assert bank.get_account("alice").balance == D("100") and bank.get_account("erin").balance == D("0")
    types = [r.event_type for r in store.read_stream("transfer-t-1")]
    # every failure but the last had its retry fired; the timeout fired while the last one waited
    assert types.count("DeadlineFired") == types.count("StepFailed")
    assert types[-1] == "DeadlineCancelled"  # the retry still pending when the transfer failed
    run_for(runner, clock, 60)
    assert [r.event_type for r in store.read_stream("transfer-t-1")] == types  # nothing fires later


def test_a_credit_that_succeeds_in_time_cancels_the_timeout() -> None:
    store, bank, slow, clock, runner = setup()
    runner.run_until_idle()
    run_for(runner, clock, 5)
    slow.answers = True
    run_for(runner, clock, 60)
    assert bank.get_transfer("t-1").state == "COMPLETED"
    assert bank.get_account("erin").balance == D("40")
    types = [r.event_type for r in store.read_stream("transfer-t-1")]
    assert "TransferCompleted" in types and "TransferReversed" not in types
    fired = [r.event.name for r in store.read_stream("transfer-t-1") if r.event_type == "DeadlineFired"]
    assert "credit-timeout" not in fired


def test_a_credit_applied_but_not_recorded_is_found_by_the_last_attempt() -> None:
    # The destination answers only once the deadline is due; the last idempotent attempt completes.
    store, bank, slow, clock, runner = setup()
    runner.run_until_idle()
    run_for(runner, clock, 29)
    bank.handle(DepositMoney("erin", D("40"), "Transfer t-1 from alice", "t-1", "t-1:credit"))
    slow.answers = True
    run_for(runner, clock, 2)
    assert bank.get_transfer("t-1").state == "COMPLETED"
    assert bank.get_account("erin").balance == D("40") and bank.get_account("alice").balance == D("60")
    fired = [r.event.name for r in store.read_stream("transfer-t-1") if r.event_type == "DeadlineFired"]
    assert fired[-1] == "credit-timeout"  # retries ran at 1, 3, 7 .. 27 s; the next was due at 31 s


def test_the_credit_timeout_survives_a_restart() -> None:
    store, bank, slow, clock, runner = setup()
    runner.run_until_idle()
    clock.advance(3600)  # the runner was down for an hour
    restarted = SagaRunner(store, [Transfers], slow, InMemoryCheckpointStore(), clock=clock)
    restarted.run_until_idle()
    restarted.run_until_idle()
    assert bank.get_transfer("t-1").state == "FAILED"
    assert bank.get_account("alice").balance == D("100")


def test_without_a_credit_timeout_no_deadline_is_scheduled() -> None:
    store = InMemoryEventStore(serializer=banking_serializer())
    bank = BankingCommandHandlers(AggregateRepository(store))
    bank.handle(OpenAccount("alice", "Alice", D("100")))
    bank.handle(OpenAccount("bob", "Bob", D("0")))
    bank.handle(TransferMoney("t-1", "alice", "bob", D("40"), "plain"))
    SagaRunner(store, [TransferSaga], bank, InMemoryCheckpointStore()).run_until_idle()
    assert "DeadlineScheduled" not in [r.event_type for r in store.read_stream("transfer-t-1")]


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1), 30])
def test_a_credit_timeout_must_be_a_positive_timedelta(bad: Any) -> None:
    with pytest.raises(ValueError, match="credit_timeout"):
        TransferSaga.configured(credit_timeout=bad)


def test_the_configured_saga_keeps_the_transfer_stream() -> None:
    assert Transfers.category == "transfer" and Transfers.stream_name("t-1") == "transfer-t-1"
    assert Transfers.credit_timeout == timedelta(seconds=30) and TransferSaga.credit_timeout is None


# -- the demo program --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SLOW_SECTION = re.compile(
    r"== A slow destination: credits to erin-r1 time out after 1 s\n"
    r"  erin-r1 +Erin Evans +opened with 0\.00\n"
    r"  erin-r1 banks elsewhere, and that bank does not answer today\n"
    r"  r1-slow +alice -> erin-r1 +30\.00  FAILED\n"
    r" +reason: credit not confirmed within 1 s "
    r"\(DestinationUnavailable: the bank of 'erin-r1' did not answer\)\n"
    r" +compensated: 30\.00 re-credited to alice\n"
    r" +the credit failed (\d+) times?, each retried after its backoff "
    r"\(0\.1 s(, 0\.2 s)?(, 0\.4 s)*(, \.\.\.)?\); "
    r"then the credit-timeout deadline fired\n"
)


def test_the_demo_shows_a_slow_destination_compensated_by_its_deadline() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bases.orchestrix.banking_demo.main",
            "--store",
            "memory",
            "--slow-destination",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    match = SLOW_SECTION.search(out)
    assert match, out
    assert int(match.group(1)) >= 1
    assert re.search(r"^  alice +Alice Anderson +990\.00  ACTIVE$", out, re.M)
    assert re.search(r"^  erin-r1 +Erin Evans +0\.00  ACTIVE$", out, re.M)
    assert "5 accounts, 16 transfers (13 COMPLETED, 3 FAILED)" in out
    assert out.rstrip().endswith("no key applied twice")


def test_the_readme_shows_a_real_slow_destination_run() -> None:
    readme = (ROOT / "bases" / "orchestrix" / "banking_demo" / "README.md").read_text()
    match = re.search(r"<!-- demo-output: slow destination -->\n```text\n(.*?)```", readme, re.S)
    assert match, "README.md lost its slow destination block"
    assert SLOW_SECTION.search(match.group(1))
    assert "5 accounts, 16 transfers (13 COMPLETED, 3 FAILED)" in match.group(1)
