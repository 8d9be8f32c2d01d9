"""The file store's SQLite index and its filters: reads and lookups through them, rebuilds from the log."""

from __future__ import annotations

import gc
import logging
import shutil
import sqlite3
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from orchestrix.core.errors import (
    ConcurrencyError,
    CorruptionError,
    DuplicateEventIdError,
)
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, AppendResult
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file._index import POSITION, Index, event_ids, new_entry
from orchestrix.testing import ContractEvent, contract_serializer
from tests.infrastructure.file_support import (
    events,
    flush_index,
    index_covers,
    index_filters,
    numbers,
    open_store,
    snapshot,
    wait_for_filter_build,
    wait_for_filters,
)

# -- reads and lookups through the index -----------------------------------------------------------


def test_reads_come_from_index_and_memory_alike(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, checkpoint_events=10) as store:
        batches = [store.append(f"s-{i % 4}", events(i, i + 1000), ANY) for i in range(100)]
        flush_index(store)
        assert numbers(store, "s-3") == [n for i in range(3, 100, 4) for n in (i, i + 1000)]
        assert [r.version for r in store.read_stream("s-0", 17)] == list(range(17, 50))
        assert [r.position for r in store.read_all(101, limit=3)] == [102, 103, 104]
        assert store.stream_version("s-2") == 49
    with open_store(path) as store:
        assert [r.position for r in store.read_all()] == list(range(1, 201))
        assert store.append("s-0", events(7), 49).versions == (50,)
        assert [b.positions for b in batches[:3]] == [(1, 2), (3, 4), (5, 6)]


def _old_batch_only_in_the_index(path: Path) -> tuple[list[NewEvent], AppendResult]:
    """A store whose first batch (on "s-1") and 50 more streams are all indexed; the batch and its result."""
    old = events(1, 2)
    with open_store(path, checkpoint_events=1) as store:
        first = store.append("s-1", old, NO_STREAM)
        for i in range(50):
            store.append(f"other-{i}", events(i), NO_STREAM)
    return old, first


def test_idempotent_appends_hold_across_restarts_from_the_index(tmp_path: Path) -> None:
    path = tmp_path / "store"
    old, first = _old_batch_only_in_the_index(path)
    with open_store(path) as store:
        assert index_covers(store) == 52, "the old batch is only in the index"
        assert store.append("s-1", old, NO_STREAM) == first
        with pytest.raises(DuplicateEventIdError):
            store.append("s-2", old[:1], NO_STREAM)
        with pytest.raises(DuplicateEventIdError):
            store.append("s-1", [old[0], *events(3)], ANY)
        assert store.last_position() == 52


# -- the index filters -----------------------------------------------------------------------------


def test_with_the_index_filters_built_indexed_ids_and_streams_are_still_found(tmp_path: Path) -> None:
    path = tmp_path / "store"
    old, first = _old_batch_only_in_the_index(path)
    with open_store(path, checkpoint_events=10) as store:
        assert not index_filters(store).ready, "a store that only opened builds nothing"
        store.append("new-0", events(0), NO_STREAM)  # the first append starts the build
        wait_for_filters(store)
        assert index_covers(store) == 52, "the old batch is only in the index"
        indexed = [r for r in store.read_all() if r.position <= 52]
        ids = [r.event_id.bytes for r in indexed]
        assert index_filters(store).may_hold_ids(ids) == ids, "every indexed id is in the filter"
        assert all(index_filters(store).may_hold_stream(r.stream) for r in indexed)
        assert store.append("s-1", old, NO_STREAM) == first
        with pytest.raises(DuplicateEventIdError):
            store.append("s-2", old[:1], NO_STREAM)
        with pytest.raises(ConcurrencyError):
            store.append("other-7", events(9), NO_STREAM)  # a stream only the index knows
        assert store.append("other-8", events(9), 0).versions == (1,)
        # records handed over to the index after the build are in the filters too
        later = [store.append(f"later-{i}", events(i), NO_STREAM) for i in range(30)]
        batch = events(99)
        again = store.append("late", batch, NO_STREAM)
        for i in range(30):
            store.append(f"more-{i}", events(i), NO_STREAM)
        flush_index(store)
        assert index_covers(store) >= again.positions[0], "the batch is only in the index now"
        assert store.append("late", batch, NO_STREAM) == again
        with pytest.raises(ConcurrencyError):
            store.append("later-3", events(5), NO_STREAM)
        assert store.stream_version("later-29") == later[29].last_version


def test_records_another_store_indexed_are_found_by_a_store_with_built_filters(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, checkpoint_events=5) as first, open_store(path, checkpoint_events=5) as second:
        second.append("warm-up", events(0), NO_STREAM)
        first.append("warm-up-1", events(0), NO_STREAM)
        flush_index(first)
        second.append("warm-up", events(1), 0)
        flush_index(second)
        second.append("warm-up", events(2), 1)  # the first append with an index behind it builds
        wait_for_filters(second)
        batch = events(5)
        stored = first.append("theirs", batch, NO_STREAM)
        for i in range(20):
            first.append(f"filler-{i}", events(i), NO_STREAM)
        flush_index(first)
        second.append("mine", events(1), NO_STREAM)  # takes in what the first one wrote
        flush_index(second)
        assert index_covers(second) >= stored.positions[0]
        assert second.append("theirs", batch, NO_STREAM) == stored
        with pytest.raises(ConcurrencyError):
            second.append("theirs", events(6), NO_STREAM)


def test_a_failed_filter_build_leaves_appends_asking_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from orchestrix.infrastructure.file import _locator

    def no_memory(self: object, keys: int) -> None:
        raise MemoryError("no room for a filter")

    path = tmp_path / "store"
    old, first = _old_batch_only_in_the_index(path)
    monkeypatch.setattr(_locator._Bloom, "__init__", no_memory)
    with caplog.at_level(logging.ERROR, logger="orchestrix.infrastructure.file"), open_store(path) as store:
        store.append("new-0", events(0), NO_STREAM)  # starts the build, which fails
        wait_for_filter_build(store)
        assert not index_filters(store).ready
        assert store.append("s-1", old, NO_STREAM) == first
        with pytest.raises(ConcurrencyError):
            store.append("other-3", events(9), NO_STREAM)
    assert "building the index filters failed" in caplog.text


def test_the_bloom_filter_has_no_false_negatives_and_few_false_positives() -> None:
    from orchestrix.infrastructure.file._locator import _Bloom

    keys = [uuid.uuid4().bytes for _ in range(100_000)]
    bloom = _Bloom(len(keys))
    bloom.add_all(keys)
    assert all(k in bloom for k in keys)
    others = [uuid.uuid4().bytes for _ in range(20_000)]
    false_positives = sum(k in bloom for k in others)
    assert false_positives < 0.03 * len(others), f"{false_positives} of {len(others)}"
    names = _Bloom(10)
    names.add_all(["Account-1", "Account-2"])
    assert "Account-1" in names and "Account-2" in names


# -- a missing, stale or damaged index -------------------------------------------------------------


def test_a_missing_index_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, checkpoint_events=5) as store:
        batch = events(0)
        first = store.append("s-1", batch, NO_STREAM)
        for i in range(1, 40):
            store.append(f"s-{i % 3}", events(i), ANY)
    for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (path / name).unlink(missing_ok=True)
    with open_store(path, checkpoint_events=5) as store:
        assert numbers(store) == list(range(40))
        assert store.append("s-1", batch, NO_STREAM) == first
        assert store.stream_version("s-2") == 12
    assert (path / "index.sqlite3").exists()


def test_a_stale_index_is_completed_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s-1", events(0, 1), NO_STREAM)
    old_index = (path / "index.sqlite3").read_bytes()
    with open_store(path) as store:
        late = events(2)
        store.append("s-1", late, 1)
        store.append("s-2", events(3), NO_STREAM)
    (path / "index.sqlite3").write_bytes(old_index)
    with open_store(path) as store:
        assert numbers(store) == [0, 1, 2, 3]
        assert store.stream_version("s-1") == 2
        assert store.append("s-1", late, 1).positions == (3,)


def test_an_index_ahead_of_the_log_is_refused_and_a_damaged_one_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s-1", events(0), NO_STREAM)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    with open_store(path) as store:
        store.append("s-1", events(1), 0)
    # the log of the first state with the index of the second: the index covers only acknowledged
    # events, so the log lost one; opening refuses it rather than forget the event
    shutil.copy(path / "index.sqlite3", copy / "index.sqlite3")
    before = snapshot(copy)
    with pytest.raises(CorruptionError, match="the index says position 2 was stored"):
        open_store(copy)
    assert snapshot(copy) == before
    # deleting the index (and so accepting what is lost) opens the log as it is
    Index.remove(str(copy / "index.sqlite3"))
    with open_store(copy) as store:
        assert numbers(store) == [0]
        assert store.append("s-1", events(5), 0).versions == (1,)
    (copy / "index.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with caplog.at_level(logging.WARNING), open_store(copy) as store:
        assert numbers(store) == [0, 5]
    assert "rebuilding the index" in caplog.text


# -- what the index stores -------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [False, True], ids=["consecutive", "with-a-gap"])
def test_the_index_stores_each_event_id_at_its_own_position(tmp_path: Path, gap: bool) -> None:
    # Consecutive records go in with one statement; anything else row by row. Both must agree.
    from orchestrix.infrastructure.file._index import Index, new_entry

    index = Index(str(tmp_path / "index.sqlite3"), b"store-id")
    assert index.add([]) == 0  # nothing to add: what is covered
    entries, position = [], 1
    for k, count in enumerate([1, 3, 1, 2]):
        ids = tuple(uuid.uuid4().bytes for _ in range(count))
        entries.append(new_entry(position, count, 1, f"s-{k}", 1, 64 + 100 * k, 100, 0, ids))
        position += count + (1 if gap and k == 1 else 0)
    index.add(entries)
    expected = {i: e[POSITION] + n for e in entries for n, i in enumerate(event_ids(e))}
    assert index.positions_of([*expected, uuid.uuid4().bytes]) == expected
    index.close()


def test_a_streams_later_records_fill_up_its_last_index_chunk(tmp_path: Path) -> None:
    # A stream's first record needs no lookup of an earlier chunk; every later one must find it.
    from orchestrix.infrastructure.file._index import Index, new_entry

    index = Index(str(tmp_path / "index.sqlite3"), b"store-id")
    position = 1
    for version in range(3):  # one checkpoint per record
        entries = [
            new_entry(
                position + k, 1, version, stream, 1, 64 + 100 * (position + k), 100, 0, (uuid.uuid4().bytes,)
            )
            for k, stream in enumerate(["a", "b"])
        ]
        index.add(entries)
        position += 2
    conn = index.connect()
    rows = conn.execute("SELECT stream, first_version FROM chunks ORDER BY stream").fetchall()
    conn.close()
    assert rows == [("a", 0), ("b", 0)]
    assert [r[:3] for r in index.stream_records("a", 0, position)] == [(0, 1, 1), (1, 1, 3), (2, 1, 5)]
    assert index.stream_version("b", position) == 2
    index.close()


# -- the tail in memory -------------------------------------------------------------------------


def test_the_tail_leaves_nothing_per_record_for_the_garbage_collector_to_walk(tmp_path: Path) -> None:
    # Every object the collector tracks is walked by each full collection: with a checkpoint's
    # worth of records in memory, each tracked (NamedTuple records, a list per stream) stalled
    # an event loop for 15-51 ms per collection under load (bench/README.md, issue 19).
    with open_store(tmp_path / "store", sync=False, checkpoint_events=100_000) as store:
        store.append("warm-up", events(0), NO_STREAM)
        gc.collect()
        before = len(gc.get_objects())
        for i in range(2_000):  # new streams, one record each
            store.append(f"s-{i}", events(i), NO_STREAM)
        for i in range(500):  # one stream, records of two events
            store.append("hot", events(i, i + 1), ANY)
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert store.stream_version("hot") == 999
        assert numbers(store, "s-1999") == [1999]
    assert grown < 500  # it was one per record and one per stream: 4,500 here


def test_reads_find_a_streams_tail_records_as_the_tail_is_handed_over(tmp_path: Path) -> None:
    # A stream's tail records are chained by number; the checkpoint drops the oldest ones.
    path = tmp_path / "store"
    with open_store(path, sync=False, checkpoint_events=7) as store:
        for i in range(60):
            store.append(f"s-{i % 3}", events(i, i + 100) if i % 2 else events(i), ANY)
            if i % 11 == 0:
                flush_index(store)
            expected = [n for k in range(i + 1) if k % 3 == 0 for n in ((k, k + 100) if k % 2 else (k,))]
            assert numbers(store, "s-0") == expected
            assert [r.event.n for r in store.read_stream("s-0", max(0, len(expected) - 2))] == expected[-2:]
            assert store.stream_version("s-0") == len(expected) - 1


# -- newer Pythons ------------------------------------------------------------------------------


def test_indexing_raises_no_deprecation_warning(tmp_path: Path) -> None:
    # Numbered placeholders ("?1") bound from a sequence warn from Python 3.12 and fail from 3.14.
    index = Index(str(tmp_path / "index.sqlite3"), b"store-id")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ids = tuple(uuid.uuid4().bytes for _ in range(3))
            assert index.add([new_entry(1, 3, 0, "s", 1, 64, 100, 0, ids)]) == 3
            assert index.positions_of(ids) == {i: 1 + k for k, i in enumerate(ids)}
    finally:
        index.close()


def test_a_damaged_index_leaves_no_database_connection_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    with FileEventStore(path, contract_serializer()) as store:
        store.append("s", [NewEvent(ContractEvent(1))])
    (path / "index.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    for name in ("index.sqlite3-wal", "index.sqlite3-shm"):
        (path / name).unlink(missing_ok=True)
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    with FileEventStore(path, contract_serializer()) as store:
        assert [r.event.n for r in store.read_all()] == [1]
    still_open = []
    for conn in opened:
        try:
            conn.execute("SELECT 1")
            still_open.append(conn)
        except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
            pass
    assert len(opened) >= 3 and still_open == []


def test_a_checkpoint_works_in_slices_and_lets_other_threads_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In one go, a checkpoint of thousands of records held the GIL for the interpreter's whole
    # switch interval at a time: an event loop's 1 ms ticks woke 5-30 ms late (issue 19).
    from orchestrix.infrastructure.file import _gil

    pauses: list[int] = []
    monkeypatch.setattr(_gil, "pause", lambda: pauses.append(1))
    path = tmp_path / "store"
    n = 3 * _gil.SLICE + 5
    with open_store(path, sync=False, checkpoint_events=10 * n) as store:
        for i in range(n):
            store.append(f"s-{i % 7}", events(i), ANY)
        flush_index(store)
        assert index_covers(store) == n
        assert len(pauses) >= 3 * 3  # index, filters and tail, each in 4 slices
        assert numbers(store, "s-3") == list(range(3, n, 7))
    with open_store(path) as store:
        assert store.stream_version("s-0") == len(range(0, n, 7)) - 1


# -- disk use ----------------------------------------------------------------------------------


def test_the_index_wal_stays_bounded_however_much_is_added_at_once(tmp_path: Path) -> None:
    # One add of many records used to be one transaction, and SQLite never shrinks its WAL:
    # the file kept the size of the biggest checkpoint (a store's whole index after a rebuild).
    path = str(tmp_path / "index.sqlite3")
    index = Index(path, b"store-id", sync=False)
    try:
        for round in range(2):
            entries = [
                new_entry(p, 1, round, f"stream-{p % 50_000}", 1, 64 + 100 * p, 100, 0, (uuid.uuid4().bytes,))
                for p in range(1 + 100_000 * round, 1 + 100_000 * (round + 1))
            ]
            assert index.add(entries) == 100_000 * (round + 1)
            assert Path(path + "-wal").stat().st_size <= 8 << 20  # WAL_LIMIT
        some = [event_ids(entries[k])[0] for k in (0, 54_321, 99_999)]
        assert index.positions_of(some) == {
            i: 100_001 + k for i, k in zip(some, (0, 54_321, 99_999), strict=True)
        }
    finally:
        index.close()


def test_event_ids_are_found_in_every_generation_of_the_index(tmp_path: Path) -> None:
    # Ids are kept by generation (2**18 positions each): a lookup must search them all.
    from orchestrix.infrastructure.file._index import GENERATION_BITS

    index = Index(str(tmp_path / "index.sqlite3"), b"store-id", sync=False)
    try:
        span = (1 << GENERATION_BITS) + 5
        ids = tuple(uuid.uuid4().bytes for _ in range(span))
        first = new_entry(1, span, 0, "big", 1, 64, 100, 0, ids)
        later = new_entry(span + 1, 1, 0, "s", 1, 164, 100, 0, (uuid.uuid4().bytes,))
        assert index.add([first]) == span
        assert index.add([later]) == span + 1
        wanted = [ids[0], ids[(1 << GENERATION_BITS) - 2], ids[-1], event_ids(later)[0], uuid.uuid4().bytes]
        assert index.positions_of(wanted) == {
            ids[0]: 1,
            ids[(1 << GENERATION_BITS) - 2]: (1 << GENERATION_BITS) - 1,
            ids[-1]: span,
            event_ids(later)[0]: span + 1,
        }
    finally:
        index.close()
