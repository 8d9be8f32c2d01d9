"""The banking state machine (tests/banking/stateful.py) on the memory and the file store.

CI size: 300 examples x 25 steps on each store. The file store runs with ``sync=False``
(fsync off: the file format's crash safety is the file store suite's job; here a crash closes
the store and opens it again from its directory, dropping every object above it).
Bigger: HYPOTHESIS_PROFILE=long (2,000 random examples each) and ORCHESTRIX_STATEFUL_STEPS=60.
"""

from __future__ import annotations

import shutil
import tempfile

from bases.orchestrix.banking_demo.models import banking_serializer
from orchestrix.core.eventsourcing import EventStore
from orchestrix.core.execution import CheckpointStore, InMemoryCheckpointStore
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from tests.banking.stateful import banking_machine


class MemoryBackend:
    """One in-memory store per example; a crash drops everything but the store's contents."""

    def __init__(self) -> None:
        self.store = InMemoryEventStore(serializer=banking_serializer())
        self.checkpoints = InMemoryCheckpointStore()

    def open(self) -> tuple[EventStore, CheckpointStore]:
        return self.store, self.checkpoints

    def crash(self) -> None:
        pass

    def close(self) -> None:
        self.store.close()


class FileBackend:
    """One file store (and its checkpoint file) per example, in a temporary directory.

    An example writes a few KiB (16 at most in CI), so at the default sizes its log never
    leaves the first segment and never reaches the index. Small sizes put segment rollovers and
    index checkpoints between the saga steps and the crashes, and keep short the preallocated
    tail that every reopen reads.
    """

    SEGMENT_SIZE = 2048
    CHECKPOINT_EVENTS = 8

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="orchestrix-stateful-")
        self.store: FileEventStore | None = None

    def open(self) -> tuple[EventStore, CheckpointStore]:
        self.store = FileEventStore(
            self.path,
            serializer=banking_serializer(),
            sync=False,
            segment_size=self.SEGMENT_SIZE,
            checkpoint_events=self.CHECKPOINT_EVENTS,
        )
        return self.store, self.store.checkpoints()

    def crash(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def close(self) -> None:
        self.crash()
        shutil.rmtree(self.path, ignore_errors=True)


TestMemoryBank = banking_machine(MemoryBackend, examples=300, steps=25, name="MemoryBank").TestCase
TestFileBank = banking_machine(FileBackend, examples=300, steps=25, name="FileBank").TestCase
