"""Random appends, replays, reopens and reads against the file store always agree with a simple model.

The store runs with tiny segments and a tiny index checkpoint, so rollovers, index flushes,
replays answered from the index (through its filters, once built) and reopen-time recovery
all happen within a few steps.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestrix.core.errors import ConcurrencyError, DuplicateEventIdError
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, STREAM_EXISTS, AppendResult
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.testing import ContractEvent, contract_serializer

STREAMS = ["a", "b", "c/../d", "é"]


class FileStoreModel(RuleBasedStateMachine):
    """The store next to a list of (stream, version, n, id) and the batches it acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="orx-model-")
        self.path = f"{self.directory}/store"
        self.store = self._open()
        self.log: list[tuple[str, int, int, uuid.UUID]] = []
        self.batches: list[tuple[str, list[NewEvent], AppendResult]] = []
        self.counter = 0

    def _open(self) -> FileEventStore:
        return FileEventStore(
            self.path, contract_serializer(), sync=False, segment_size=600, checkpoint_events=4
        )

    def version(self, stream: str) -> int:
        return max((v for s, v, _, _ in self.log if s == stream), default=NO_STREAM)

    @initialize()
    def nothing_yet(self) -> None:
        assert self.store.last_position() == 0

    @rule(
        stream=st.sampled_from(STREAMS),
        size=st.integers(1, 3),
        mode=st.sampled_from(["any", "no_stream", "exists", "exact", "stale"]),
    )
    def append(self, stream: str, size: int, mode: str) -> None:
        current = self.version(stream)
        expected = {
            "any": ANY,
            "no_stream": NO_STREAM,
            "exists": STREAM_EXISTS,
            "exact": current,
            "stale": current - 1 if current >= 0 else 0,
        }[mode]
        allowed = (
            mode in ("any", "exact")
            or (mode == "no_stream" and current == NO_STREAM)
            or (mode == "exists" and current != NO_STREAM)
        )
        if mode == "exact" and current == NO_STREAM:
            expected, allowed = NO_STREAM, True
        batch = [NewEvent(ContractEvent(self.counter + i)) for i in range(size)]
        self.counter += size
        try:
            result = self.store.append(stream, batch, expected)
        except ConcurrencyError:
            assert not allowed
            return
        assert allowed
        position = len(self.log)
        assert result.versions == tuple(range(current + 1, current + 1 + size))
        assert result.positions == tuple(range(position + 1, position + 1 + size))
        for k, new in enumerate(batch):
            self.log.append((stream, current + 1 + k, new.event.n, new.event_id))
        self.batches.append((stream, batch, result))

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        stream, batch, result = data.draw(st.sampled_from(self.batches))
        assert self.store.append(stream, batch, data.draw(st.sampled_from([ANY, NO_STREAM, 0]))) == result

    @precondition(lambda self: self.batches)
    @rule(data=st.data(), other=st.sampled_from(STREAMS))
    def reuse_an_id_elsewhere(self, data: st.DataObject, other: str) -> None:
        stream, batch, _ = data.draw(st.sampled_from(self.batches))
        if other == stream:
            batch = [*batch, NewEvent(ContractEvent(-1))]
        try:
            self.store.append(other, batch, ANY)
        except DuplicateEventIdError:
            return
        raise AssertionError("a stored id was accepted again")

    @rule()
    def let_the_index_filters_build(self) -> None:
        """Appends after this step check ids and streams against the filters, not the index."""
        building = self.store._view.seen._thread
        if building is not None:  # an append with an index behind it started the build
            building.join()

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self._open()

    @rule(stream=st.sampled_from(STREAMS), from_version=st.integers(0, 6))
    def read_stream(self, stream: str, from_version: int) -> None:
        got = [(r.version, r.event.n, r.event_id) for r in self.store.read_stream(stream, from_version)]
        assert got == [(v, n, i) for s, v, n, i in self.log if s == stream and v >= from_version]

    @rule(after=st.integers(0, 40), limit=st.none() | st.integers(1, 5))
    def read_all(self, after: int, limit: int | None) -> None:
        got = [(r.position, r.stream, r.version, r.event.n) for r in self.store.read_all(after, limit)]
        want = [(p, s, v, n) for p, (s, v, n, _) in enumerate(self.log, 1) if p > after]
        assert got == (want if limit is None else want[:limit])

    @invariant()
    def versions_and_position_agree(self) -> None:
        assert self.store.last_position() == len(self.log)
        for stream in STREAMS:
            assert self.store.stream_version(stream) == self.version(stream)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


FileStoreModel.TestCase.settings = settings(stateful_step_count=30)
TestFileStoreModel = FileStoreModel.TestCase
