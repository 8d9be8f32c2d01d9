"""The banking demo runs as a program (on both stores), says what happened, and checks the money."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    CloseAccount,
    DepositMoney,
    OpenAccount,
    TransferMoney,
    banking_serializer,
)
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.infrastructure.file import FileEventStore

ROOT = Path(__file__).resolve().parents[2]


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bases.orchestrix.banking_demo.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_first_run(out: str) -> None:
    assert "run 1," in out
    for account, opening in (
        ("alice", "1,000.00"),
        ("bob", "500.00"),
        ("carol", "250.00"),
        ("dave-r1", "0.00"),
    ):
        assert re.search(rf"^  {account} +.* opened with {opening}$", out, re.M), account
    assert re.search(r"^  r1-rent +alice -> bob +250\.00  COMPLETED$", out, re.M)
    assert re.search(r"^  r1-yacht +carol -> alice +10,000\.00  FAILED$", out, re.M)
    assert "reason: debit refused: account 'carol': balance 250 is less than 10000" in out
    assert re.search(r"^  r1-gift +bob -> dave-r1 +75\.00  FAILED$", out, re.M)
    assert "reason: credit refused: account 'dave-r1' is SUSPENDED: cannot deposit" in out
    assert "compensated: 75.00 re-credited to bob" in out
    assert (
        "12 more transfers sent at once (r1-ring-00 .. r1-ring-11), handled concurrently: 12 COMPLETED" in out
    )
    assert "dave-r1 suspended" in out and "dave-r1 reactivated" in out and "dave-r1 closed" in out
    # Final balances: the ring moves 5+20+35+50 alice->bob, 10+25+40+55 bob->carol, 15+30+45+60 carol->alice.
    assert re.search(r"^  alice +Alice Anderson +990\.00  ACTIVE$", out, re.M)
    assert re.search(r"^  bob +Bob Brown +730\.00  ACTIVE$", out, re.M)
    assert re.search(r"^  carol +Carol Chen +230\.00  ACTIVE$", out, re.M)
    assert re.search(r"^  dave-r1 +Dave Davis +0\.00  CLOSED$", out, re.M)
    # Audit trails show transfer legs with their transfer ids, and the reversal.
    assert re.search(r"withdrawal +-250\.00 +950\.00  Transfer r1-rent to bob  \[transfer r1-rent\]", out)
    assert re.search(
        r"deposit +\+75\.00 .* Reversal of transfer r1-gift \(credit refused: .*\)  \[transfer r1-gift\]", out
    )
    assert "== Stuck sagas\n  none" in out
    # Accounts are snapshotted every 10 of their events, and the demo says how many it took.
    assert re.search(r"^== Snapshots\n  [1-9][0-9]* account snapshots taken this run", out, re.M)
    assert "accounts 1,950.00 + held by unfinished transfers 0.00 = 1,950.00" in out
    assert "openings 1,750.00 + deposits 200.00 - withdrawals 0.00 = 1,950.00" in out
    assert "4 accounts, 15 transfers (13 COMPLETED, 2 FAILED)" in out
    assert out.rstrip().endswith(
        "OK: money is conserved, no balance is negative, every transfer finished, no key applied twice"
    )


def test_the_demo_on_the_memory_store() -> None:
    result = demo("--store", "memory")
    assert result.returncode == 0, result.stderr
    assert "on the in-memory store" in result.stdout
    check_first_run(result.stdout)


def test_the_demo_on_the_file_store_continues_from_its_stored_state(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = demo("--data", str(data))
    assert first.returncode == 0, first.stderr
    assert f"on the file store in {data}" in first.stdout
    check_first_run(first.stdout)

    second = demo("--store", "file", "--data", str(data))
    assert second.returncode == 0, second.stderr
    out = second.stdout
    assert "run 2," in out
    assert re.search(r"^  alice +Alice Anderson +already open, balance 990\.00$", out, re.M)
    assert re.search(r"^  r2-rent +alice -> bob +250\.00  COMPLETED$", out, re.M)
    assert "compensated: 75.00 re-credited to bob" in out
    assert "accounts 2,150.00 + held by unfinished transfers 0.00 = 2,150.00" in out
    assert "5 accounts, 30 transfers (26 COMPLETED, 4 FAILED)" in out
    assert out.rstrip().endswith("no key applied twice")

    fresh = demo("--data", str(data), "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    check_first_run(fresh.stdout)


def test_a_run_that_dies_mid_transfer_is_resumed_by_the_next_run(tmp_path: Path) -> None:
    """A real crash (the process exits at once after a debit): the next process finishes the transfer.

    How far the other transfers got before the exit varies: the runner steps the sagas of a page
    concurrently, and appends acknowledged in one group with the rent's debit (a gift's debit, a
    ring leg) are stored even though the rent's task is the one that exits. So the found state is
    checked for consistency, not for one outcome; only the rent's is fixed.
    """
    data = tmp_path / "data"
    crashed = demo("--data", str(data), "--crash-after-debit")
    assert crashed.returncode == 3, crashed.stderr
    assert crashed.stdout.rstrip().endswith(
        "** crash: the process dies right after the rent transfer's debit, before its credit **"
    )
    assert "Conservation" not in crashed.stdout

    resumed = demo("--data", str(data))
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout
    assert "run 2," in out
    found = _section(out, "Unfinished transfers found in the store (an earlier run stopped mid-way)")
    assert re.match(r"  r1-rent +alice -> bob +250\.00  INITIATED, 250\.00 debited and held\n", found)
    *lines, total = found.splitlines()
    unfinished = [_UNFINISHED.fullmatch(line) for line in lines]
    assert all(unfinished), lines
    held = sum((_amount(m["held"]) for m in unfinished if m and m["held"]), Decimal(0))
    assert total == (
        f"  held by unfinished transfers: {held:,.2f}; "
        "accounts + held = 1,950.00 = money in - money out = 1,950.00"
    )

    finished = _section(out, "Transfers left unfinished by an earlier run, resumed by this run's runner")
    assert re.match(r"  r1-rent +alice -> bob +250\.00  COMPLETED\n", finished)
    outcomes = dict(re.findall(r"^  (r1-\S+) +\S+ -> \S+ +[\d,.]+  (\w+)$", finished, re.M))
    assert set(outcomes) == {m["id"] for m in unfinished if m}
    assert set(outcomes.values()) <= {"COMPLETED", "FAILED"}, outcomes
    # The earlier run's transfers are finished before this run's story touches the same accounts.
    assert out.index("resumed by this run's runner") < out.index("== Accounts")
    assert re.search(r"^  r2-rent +alice -> bob +250\.00  COMPLETED$", out, re.M)
    assert "held by unfinished transfers 0.00" in out
    assert out.rstrip().endswith("no key applied twice")


_UNFINISHED = re.compile(
    r"  (?P<id>r1-\S+) +\S+ -> \S+ +[\d,.]+  [A-Z]+, "
    r"(?:(?P<held>[\d,.]+) debited and held|nothing debited yet)"
)


def _section(out: str, heading: str) -> str:
    """The lines under ``== heading``, up to the blank line that ends the section."""
    return out.split(f"== {heading}\n", 1)[1].split("\n\n", 1)[0] + "\n"


def _amount(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def test_the_demo_refuses_to_wipe_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = demo("--data", str(tmp_path), "--fresh")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "not an orchestrix file store" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_the_demo_fails_loudly_when_a_transfer_cannot_finish(tmp_path: Path) -> None:
    """A transfer whose reversal is refused stays stuck: the check says so and the exit status is 1."""
    data = tmp_path / "data"
    store = FileEventStore(data, serializer=banking_serializer())
    bank = BankingCommandHandlers(AggregateRepository(store))
    bank.handle(OpenAccount("erin", "Erin", Decimal("100")))
    bank.handle(OpenAccount("frank", "Frank", Decimal("0")))
    bank.handle(CloseAccount("frank"))
    # The reversal's key is already used for something else, so the account refuses the reversal.
    bank.handle(DepositMoney("erin", Decimal("1"), "odd", idempotency_key="x1:reverse"))
    bank.handle(TransferMoney("x1", "erin", "frank", Decimal("40")))
    store.close()

    result = demo("--data", str(data))
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "transfer x1: COMPENSATING, reversal to 'erin' refused" in out
    assert "held by unfinished transfers 40.00" in out
    assert "VIOLATED: transfer x1 is STUCK" in out
    assert "OK: money is conserved" not in out


@pytest.mark.parametrize("args", [["--store", "sqlite"], ["--bogus"]])
def test_bad_arguments_are_refused(args: list[str]) -> None:
    result = demo(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_the_readme_shows_the_output_of_a_real_first_run() -> None:
    readme = (ROOT / "bases" / "orchestrix" / "banking_demo" / "README.md").read_text()
    match = re.search(r"<!-- demo-output: first run -->\n```text\n(.*?)```", readme, re.S)
    assert match, "README.md lost its demo output block"
    assert "on the file store in orchestrix-data" in match.group(1)
    check_first_run(match.group(1))
