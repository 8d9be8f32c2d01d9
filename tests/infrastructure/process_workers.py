"""The child of the process-step kill loop: run a statement process over a file store for ever.

Run as ``python process_workers.py <store> <seed>``: it opens the store and runs the
``statements`` process step (each ``TransferCompleted`` becomes one line in the statement of the
account credited) in small pages, until it is killed.
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from decimal import Decimal

import attrs

from bases.orchestrix.banking_demo.models import TransferCompleted
from orchestrix.core.eventsourcing.store import ANY, StreamAppend
from orchestrix.core.execution.process import PROCESS_EVENTS, ProcessStep
from orchestrix.core.messaging.messages import Event, NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file import FileEventStore


@attrs.frozen
class StatementLine(Event):
    """One line of an account's statement: the transfer it shows, and where that was stored."""

    transfer_id: str
    amount: Decimal
    source_position: int


@attrs.frozen
class Noise(Event):
    """An event the process ignores."""

    n: int


def serializer() -> Serializer:
    return Serializer([TransferCompleted, StatementLine, Noise, *PROCESS_EVENTS])


def statement_line(recorded: RecordedEvent) -> list[StreamAppend] | None:
    """A TransferCompleted's output: one line in the credited account's statement."""
    event = recorded.event
    if not isinstance(event, TransferCompleted):
        return None
    line = StatementLine(event.transfer_id, event.amount, recorded.position)
    return [StreamAppend(f"statement-{event.to_account_id}", [NewEvent(line)], ANY)]


def step(store: FileEventStore, page_size: int = 5) -> ProcessStep:
    return ProcessStep("statements", store, statement_line, page_size=page_size, checkpoint_every=7)


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    store = FileEventStore(path, serializer())
    process = step(store, page_size=rng.randint(1, 6))
    print("ready", flush=True)
    while True:
        if process.run_once().read == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    try:
        main(sys.argv[1], int(sys.argv[2]))
    except BaseException:
        traceback.print_exc()
        sys.exit(3)
