"""A process step under SIGKILL: each TransferCompleted becomes exactly one statement line.

The parent keeps adding completed transfers (and events the process ignores); a child process
runs the ``statements`` step and is killed at a random (seeded) moment, again and again. After
every kill the store must show: each transfer up to the step's stored position has exactly one
statement line, none after it has any, and no line is repeated. At the end a last run catches up
and every transfer has exactly one line. No idempotency key is involved: the lines' event ids
are fresh each time; only the atomic append of output and checkpoint keeps them single.

25 kills by default; ``ORCHESTRIX_PROCESS_KILLS=200`` runs the long version.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from bases.orchestrix.banking_demo.models import TransferCompleted
from orchestrix.core.eventsourcing.store import StreamAppend
from orchestrix.infrastructure.file import FileEventStore
from tests.infrastructure.kill_support import kill_child_at_random
from tests.infrastructure.process_workers import Noise, StatementLine, serializer, step

KILLS = int(os.environ.get("ORCHESTRIX_PROCESS_KILLS", "25"))
WORKER = Path(__file__).with_name("process_workers.py")
ROOT = Path(__file__).parents[2]


def _add_work(store: FileEventStore, rng: random.Random, count: int) -> None:
    for _ in range(count):
        transfer = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
        done = TransferCompleted(
            transfer,
            f"acc-{rng.randrange(5)}",
            Decimal(rng.randint(1, 999)) / 100,
            uuid.uuid4(),
            datetime.now(UTC),
        )
        if rng.random() < 0.5:
            store.append(f"Transfer-{transfer}", [done])
        else:  # now and then stored with an unrelated stream in one append
            store.append_many(
                [StreamAppend(f"Transfer-{transfer}", [done]), StreamAppend("noise", [Noise(1)])]
            )


def _check(store: FileEventStore, final: bool) -> int:
    """Every transfer up to the stored position has one line, later ones none; the position."""
    handled = step(store).position()
    transfers = {r.position: r.event for r in store.read_all() if isinstance(r.event, TransferCompleted)}
    lines = [r.event for r in store.read_all() if isinstance(r.event, StatementLine)]
    counts = Counter(line.source_position for line in lines)
    repeated = {p: n for p, n in counts.items() if n > 1}
    assert not repeated, f"statement lines written more than once: {repeated}"
    assert all(p <= handled for p in counts), "a line for a transfer past the stored position"
    missing = [p for p in transfers if p <= handled and p not in counts]
    assert not missing, f"transfers handled but without a line: {missing}"
    for line in lines:
        transfer = transfers[line.source_position]
        assert (line.transfer_id, line.amount) == (transfer.transfer_id, transfer.amount)
    if final:
        assert sorted(counts) == sorted(transfers)
    return handled


@pytest.mark.slow
def test_each_transfer_becomes_exactly_one_statement_line_under_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20_261_205)
    path = tmp_path / "store"
    with FileEventStore(path, serializer()) as store:
        _add_work(store, rng, 40)
    progress = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's orchestrix, not an installed one
    for kill in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(WORKER), str(path), str(kill)], stdout=subprocess.PIPE, text=True, env=env
        )
        kill_child_at_random(child, rng, (0.0, 0.2), f"kill {kill}")
        with FileEventStore(path, serializer()) as store:
            progress.append(_check(store, final=False))
            _add_work(store, rng, rng.randint(0, 15))
    with FileEventStore(path, serializer()) as store:
        step(store).run_until_caught_up()
        _check(store, final=True)
    moved = sum(b > a for a, b in itertools.pairwise(progress))
    assert moved > KILLS // 3, f"the process made progress between too few kills: {progress}"
