"""The file store: the contract suite, plus what only a durable, multi-process store promises."""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrix.core.errors import (
    ConcurrencyError,
    CorruptionError,
    DuplicateEventIdError,
    StoreClosedError,
    StoreError,
    StoreFailedError,
    StoreFormatError,
)
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, AppendResult, EventStore
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file import _commit as file_commit
from orchestrix.infrastructure.file._format import (
    FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    pack_segment_header,
    prepare_record,
    seal_record,
    type_field,
    unpack_store,
)
from orchestrix.infrastructure.file.errors import BatchTooLargeError, InvalidStoreOptionError
from orchestrix.testing import ContractEvent, EventStoreContract, contract_serializer
from tests.infrastructure import file_workers


class TestFileEventStore(EventStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[FileEventStore]:
        self.opened = [FileEventStore(tmp_path / "store", contract_serializer())]
        yield self.opened[0]
        for store in self.opened:
            store.close()

    def reopen(self, store: EventStore) -> EventStore:
        assert isinstance(store, FileEventStore)
        store.close()
        again = FileEventStore(store.path, contract_serializer())
        self.opened.append(again)
        return again


# -- helpers --------------------------------------------------------------------------------------


def _open(path: Path, **options: object) -> FileEventStore:
    return FileEventStore(path, contract_serializer(), **options)  # type: ignore[arg-type]


def _events(*numbers: int) -> list[NewEvent]:
    return [NewEvent(ContractEvent(n)) for n in numbers]


def _numbers(store: FileEventStore, stream: str | None = None) -> list[int]:
    records = store.read_all() if stream is None else store.read_stream(stream)
    return [r.event.n for r in records]


def _assert_lock_comes_free(path: Path, why: str, within: float = 5.0) -> None:
    """Another process could take the store's writer lock within ``within`` seconds.

    (A second open file description stands in for the other process: flock tells them apart.)
    """
    import fcntl

    from orchestrix.infrastructure.file._format import LOCK_FILE

    fd = os.open(path / LOCK_FILE, os.O_RDWR)
    try:
        deadline = time.monotonic() + within
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, why
                time.sleep(0.005)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _append_noting(store: FileEventStore, stream: str, number: int, outcomes: list[str]) -> None:
    """Append one event; note "stored", or "failed" if the store has failed."""
    try:
        store.append(stream, _events(number))
        outcomes.append("stored")
    except StoreFailedError:
        outcomes.append("failed")


def _hold_syncs(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make every fdatasync wait until the returned event is set (5 s at most)."""
    real_sync, gate = os.fdatasync, threading.Event()

    def held_sync(fd: int) -> None:
        gate.wait(5)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", held_sync)
    return gate


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("segment-*.log"))


def _record_offsets(segment: Path) -> list[int]:
    """Where each record of a segment starts (walking the frames as docs/file-format.md says)."""
    data = segment.read_bytes()
    offsets, at = [], SEGMENT_HEADER_SIZE
    while at < len(data) and data[at : at + 4] != bytes(4):  # zeros: preallocated, no record yet
        offsets.append(at)
        at += 12 + int.from_bytes(data[at + 8 : at + 12], "little")
    return offsets


# -- bad inputs -----------------------------------------------------------------------------------


def test_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "store"
    target.write_bytes(b"not a directory")
    with pytest.raises(StoreFormatError, match="not a directory"):
        _open(target)
    assert target.read_bytes() == b"not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_directory_that_is_not_a_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError, match="not an orchestrix file store"):
        _open(tmp_path)
    assert _snapshot(tmp_path) == {"notes.txt": b"mine"}


def test_a_store_of_a_newer_format_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path) as store:
        store.append("s-1", _events(1))
    marker = bytearray((path / "STORE").read_bytes())
    marker[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    (path / "STORE").write_bytes(bytes(marker))
    before = _snapshot(path)
    with pytest.raises(StoreFormatError, match="newer format version 2"):
        _open(path)
    assert _snapshot(path) == before


def test_a_segment_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path) as store:
        store.append("s-1", _events(1))
    (segment,) = _segments(path)
    data = bytearray(segment.read_bytes())
    data[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    segment.write_bytes(bytes(data))
    (path / "index.sqlite3").unlink()
    with pytest.raises(StoreFormatError, match="newer format"):
        _open(path)


def test_a_damaged_store_marker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _open(path).close()
    (path / "STORE").write_bytes(b"garbage")
    with pytest.raises(StoreFormatError, match="not an orchestrix file store"):
        _open(path)


def _try_open_as(user: int, path: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import os, sys\n"
        "from orchestrix.core.errors import StoreError\n"
        "from orchestrix.infrastructure.file import FileEventStore\n"
        "from orchestrix.testing import contract_serializer\n"
        "serializer = contract_serializer()\n"
        f"os.setgid({user}); os.setuid({user})\n"
        "try:\n"
        "    FileEventStore(sys.argv[1], serializer)\n"
        "except StoreError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("existing", [False, True], ids=["new store", "existing store"])
def test_no_permission_is_a_store_error_and_nothing_is_written(tmp_path: Path, existing: bool) -> None:
    # Root ignores file modes, so as root the attempt runs in a child that drops to "nobody".
    base = Path(tempfile.mkdtemp(prefix="orx-perm-"))
    try:
        base.chmod(0o755)
        path = base / "store"
        if existing:
            with _open(path) as store:
                store.append("s-1", _events(1))
            path.chmod(0o555)
            for f in path.iterdir():
                f.chmod(0o444)
        else:
            base.chmod(0o555)
        before = _snapshot(path) if existing else None
        if os.geteuid() == 0:
            result = _try_open_as(65534, path)
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.startswith("StoreError") and "ermission denied" in result.stdout
        else:
            with pytest.raises(StoreError, match="ermission denied"):
                _open(path)
        if existing:
            assert _snapshot(path) == before
        else:
            assert not path.exists()
    finally:
        base.chmod(0o755)
        if (base / "store").exists():
            (base / "store").chmod(0o755)
        shutil.rmtree(base)


def test_an_os_error_while_opening_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refusing_open(name: str, *args: object, **kwargs: object) -> int:
        if str(name).endswith("LOCK"):
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(StoreError, match="Permission denied"):
        _open(tmp_path / "store")


# -- reopening, segments, the index --------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("segment_size", 100),
        ("segment_size", 1 << 41),
        ("segment_size", 4096.0),
        ("segment_size", True),
        ("checkpoint_events", 0),
        ("checkpoint_events", "10"),
        ("loop_sync_max", -0.001),
        ("loop_sync_max", float("nan")),
        ("loop_sync_max", float("inf")),
        ("loop_sync_max", "fast"),
    ],
)
def test_an_option_out_of_range_is_refused_before_anything_is_created(
    tmp_path: Path, option: str, value: object
) -> None:
    with pytest.raises(InvalidStoreOptionError, match=option):
        _open(tmp_path / "store", **{option: value})
    assert not (tmp_path / "store").exists()


def test_reopening_continues_from_the_stored_state(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path) as store:
        assert store.append("s-1", _events(0, 1), NO_STREAM).positions == (1, 2)
    with _open(path) as store:
        assert store.append("s-1", _events(2), 1).positions == (3,)
        assert _numbers(store) == [0, 1, 2]


def test_segments_roll_over_and_everything_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, segment_size=1024, checkpoint_events=7) as store:
        for i in range(120):
            store.append(f"s-{i % 3}", _events(i), ANY)
        assert len(_segments(path)) > 10
        assert _numbers(store) == list(range(120))
        assert _numbers(store, "s-1") == list(range(1, 120, 3))
        assert [r.event.n for r in store.read_all(57, limit=5)] == [57, 58, 59, 60, 61]
    with _open(path, segment_size=1024) as store:
        assert _numbers(store) == list(range(120))
        assert [r.version for r in store.read_stream("s-2", 30)] == list(range(30, 40))
        assert store.verify() == 120
        assert store.append("s-0", _events(120), 39).positions == (121,)


def test_reads_come_from_index_and_memory_alike(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, checkpoint_events=10) as store:
        batches = [store.append(f"s-{i % 4}", _events(i, i + 1000), ANY) for i in range(100)]
        _wait_for_index(store)
        assert _numbers(store, "s-3") == [n for i in range(3, 100, 4) for n in (i, i + 1000)]
        assert [r.version for r in store.read_stream("s-0", 17)] == list(range(17, 50))
        assert [r.position for r in store.read_all(101, limit=3)] == [102, 103, 104]
        assert store.stream_version("s-2") == 49
    with _open(path) as store:
        assert [r.position for r in store.read_all()] == list(range(1, 201))
        assert store.append("s-0", _events(7), 49).versions == (50,)
        assert [b.positions for b in batches[:3]] == [(1, 2), (3, 4), (5, 6)]


def _wait_for_index(store: FileEventStore) -> None:
    """Let the background checkpoint catch up (the test checks reads from the index)."""
    store._view.flush()


def _old_batch_only_in_the_index(path: Path) -> tuple[list[NewEvent], AppendResult]:
    """A store whose first batch (on "s-1") and 50 more streams are all indexed; the batch and its result."""
    old = _events(1, 2)
    with _open(path, checkpoint_events=1) as store:
        first = store.append("s-1", old, NO_STREAM)
        for i in range(50):
            store.append(f"other-{i}", _events(i), NO_STREAM)
    return old, first


def test_idempotent_appends_hold_across_restarts_from_the_index(tmp_path: Path) -> None:
    path = tmp_path / "store"
    old, first = _old_batch_only_in_the_index(path)
    with _open(path) as store:
        assert store._view.tail.bound == 52, "the old batch is only in the index"
        assert store.append("s-1", old, NO_STREAM) == first
        with pytest.raises(DuplicateEventIdError):
            store.append("s-2", old[:1], NO_STREAM)
        with pytest.raises(DuplicateEventIdError):
            store.append("s-1", [old[0], *_events(3)], ANY)
        assert store.last_position() == 52


def _wait_for_filters(store: FileEventStore) -> None:
    deadline = time.monotonic() + 30
    while not store._view.seen.ready:
        assert time.monotonic() < deadline, "the index filters were never built"
        time.sleep(0.01)


def test_with_the_index_filters_built_indexed_ids_and_streams_are_still_found(tmp_path: Path) -> None:
    path = tmp_path / "store"
    old, first = _old_batch_only_in_the_index(path)
    with _open(path, checkpoint_events=10) as store:
        assert not store._view.seen.ready, "a store that only opened builds nothing"
        store.append("new-0", _events(0), NO_STREAM)  # the first append starts the build
        _wait_for_filters(store)
        assert store._view.tail.bound == 52, "the old batch is only in the index"
        indexed = [r for r in store.read_all() if r.position <= 52]
        ids = [r.event_id.bytes for r in indexed]
        assert store._view.seen.may_hold_ids(ids) == ids, "every indexed id is in the filter"
        assert all(store._view.seen.may_hold_stream(r.stream) for r in indexed)
        assert store.append("s-1", old, NO_STREAM) == first
        with pytest.raises(DuplicateEventIdError):
            store.append("s-2", old[:1], NO_STREAM)
        with pytest.raises(ConcurrencyError):
            store.append("other-7", _events(9), NO_STREAM)  # a stream only the index knows
        assert store.append("other-8", _events(9), 0).versions == (1,)
        # records handed over to the index after the build are in the filters too
        later = [store.append(f"later-{i}", _events(i), NO_STREAM) for i in range(30)]
        batch = _events(99)
        again = store.append("late", batch, NO_STREAM)
        for i in range(30):
            store.append(f"more-{i}", _events(i), NO_STREAM)
        _wait_for_index(store)
        assert store._view.tail.bound >= again.positions[0], "the batch is only in the index now"
        assert store.append("late", batch, NO_STREAM) == again
        with pytest.raises(ConcurrencyError):
            store.append("later-3", _events(5), NO_STREAM)
        assert store.stream_version("later-29") == later[29].last_version


def test_records_another_store_indexed_are_found_by_a_store_with_built_filters(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, checkpoint_events=5) as first, _open(path, checkpoint_events=5) as second:
        second.append("warm-up", _events(0), NO_STREAM)
        first.append("warm-up-1", _events(0), NO_STREAM)
        _wait_for_index(first)
        second.append("warm-up", _events(1), 0)
        _wait_for_index(second)
        second.append("warm-up", _events(2), 1)  # the first append with an index behind it builds
        _wait_for_filters(second)
        batch = _events(5)
        stored = first.append("theirs", batch, NO_STREAM)
        for i in range(20):
            first.append(f"filler-{i}", _events(i), NO_STREAM)
        _wait_for_index(first)
        second.append("mine", _events(1), NO_STREAM)  # takes in what the first one wrote
        _wait_for_index(second)
        assert second._view.tail.bound >= stored.positions[0]
        assert second.append("theirs", batch, NO_STREAM) == stored
        with pytest.raises(ConcurrencyError):
            second.append("theirs", _events(6), NO_STREAM)


def test_a_failed_filter_build_leaves_appends_asking_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from orchestrix.infrastructure.file import _seen

    def no_memory(self: object, keys: int) -> None:
        raise MemoryError("no room for a filter")

    path = tmp_path / "store"
    old, first = _old_batch_only_in_the_index(path)
    monkeypatch.setattr(_seen._Bloom, "__init__", no_memory)
    with caplog.at_level(logging.ERROR, logger="orchestrix.file"), _open(path) as store:
        store.append("new-0", _events(0), NO_STREAM)  # starts the build, which fails
        store._view.seen._thread.join()  # type: ignore[union-attr]
        assert not store._view.seen.ready
        assert store.append("s-1", old, NO_STREAM) == first
        with pytest.raises(ConcurrencyError):
            store.append("other-3", _events(9), NO_STREAM)
    assert "building the index filters failed" in caplog.text


def test_the_bloom_filter_has_no_false_negatives_and_few_false_positives() -> None:
    from orchestrix.infrastructure.file._seen import _Bloom

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


def test_a_missing_index_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, checkpoint_events=5) as store:
        batch = _events(0)
        first = store.append("s-1", batch, NO_STREAM)
        for i in range(1, 40):
            store.append(f"s-{i % 3}", _events(i), ANY)
    for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (path / name).unlink(missing_ok=True)
    with _open(path, checkpoint_events=5) as store:
        assert _numbers(store) == list(range(40))
        assert store.append("s-1", batch, NO_STREAM) == first
        assert store.stream_version("s-2") == 12
    assert (path / "index.sqlite3").exists()


def test_a_stale_index_is_completed_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path) as store:
        store.append("s-1", _events(0, 1), NO_STREAM)
    old_index = (path / "index.sqlite3").read_bytes()
    with _open(path) as store:
        late = _events(2)
        store.append("s-1", late, 1)
        store.append("s-2", _events(3), NO_STREAM)
    (path / "index.sqlite3").write_bytes(old_index)
    with _open(path) as store:
        assert _numbers(store) == [0, 1, 2, 3]
        assert store.stream_version("s-1") == 2
        assert store.append("s-1", late, 1).positions == (3,)


def test_an_index_ahead_of_the_log_or_damaged_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    with _open(path) as store:
        store.append("s-1", _events(0), NO_STREAM)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    with _open(path) as store:
        store.append("s-1", _events(1), 0)
    # the log of the first state with the index of the second: the index describes a record the log lacks
    shutil.copy(path / "index.sqlite3", copy / "index.sqlite3")
    with caplog.at_level(logging.WARNING), _open(copy) as store:
        assert _numbers(store) == [0]
        assert store.append("s-1", _events(5), 0).versions == (1,)
    assert "does not match the log" in caplog.text
    (copy / "index.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with _open(copy) as store:
        assert _numbers(store) == [0, 5]


# -- torn tails and corruption -------------------------------------------------------------------


def _build_with_tail(path: Path) -> tuple[int, list[int]]:
    """A store whose last three appends are small; returns where they start and the survivors' numbers."""
    with _open(path) as store:
        store.append("s-1", _events(0, 1), NO_STREAM)
        store.append("s-2", _events(2), NO_STREAM)
        store.append("s-1", _events(3, 4), 1)
        store.append("s-2", _events(5), 0)
        store.append("s-3", _events(6), NO_STREAM)
    (segment,) = _segments(path)
    return _record_offsets(segment)[2], [0, 1, 2]


def test_a_torn_tail_at_every_offset_opens_to_a_consistent_prefix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    tail_start, _ = _build_with_tail(path)
    (segment,) = _segments(path)
    offsets = _record_offsets(segment)
    full = segment.read_bytes()
    full = full[: offsets[-1] + 12 + int.from_bytes(full[offsets[-1] + 8 : offsets[-1] + 12], "little")]
    survivors = {offsets[2]: [0, 1, 2], offsets[3]: [0, 1, 2, 3, 4], offsets[4]: [0, 1, 2, 3, 4, 5]}
    for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (path / name).unlink(missing_ok=True)
    pristine = _snapshot(path)
    for cut in range(tail_start, len(full)):
        for name, data in pristine.items():
            (path / name).write_bytes(data)
        (path / "index.sqlite3").unlink(missing_ok=True)
        segment.write_bytes(full[:cut])
        expected = survivors[max(o for o in survivors if o <= cut)]
        caplog.clear()
        with caplog.at_level(logging.WARNING), _open(path, sync=False) as store:
            assert _numbers(store) == expected, f"cut at {cut}"
            assert store.last_position() == len(expected)
        if cut not in survivors:
            assert f"at offset {max(o for o in survivors if o <= cut)}" in caplog.text
        assert segment.stat().st_size == max(o for o in survivors if o <= cut)
        if cut % 10 == 0 or cut in survivors:
            with _open(path) as store:  # a second open finds nothing to repair; the store is writable
                assert _numbers(store) == expected
                store.append("s-9", _events(99), NO_STREAM)
                assert _numbers(store)[-1] == 99


def test_a_zero_filled_tail_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _build_with_tail(path)
    (segment,) = _segments(path)
    offsets = _record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[4] :] = bytes(len(data) - offsets[4])
    segment.write_bytes(bytes(data))
    (path / "index.sqlite3").unlink()
    with _open(path) as store:
        assert _numbers(store) == [0, 1, 2, 3, 4, 5]


def _record(position: int, version: int, durable: int, n: int) -> bytes:
    """A record as a writer makes it: event ``n`` at ``position``, written when ``durable`` was on disk."""
    type_name, payload = contract_serializer().encode(ContractEvent(n))
    event = (uuid.uuid4().bytes, None, None, type_field(type_name), payload)
    record = prepare_record(b"s-9", [event])
    seal_record(record, durable, position, version, 0)
    return bytes(record)


def _two_in_flight(path: Path, second_durable: int, across_segments: bool) -> tuple[Path, int]:
    """Positions 1-2 stored; then records 3 and 4 written together, 3 torn (a crash image).

    Returns the segment holding record 3 and its offset.
    """
    with _open(path) as store:
        store.append("s-1", _events(0, 1), NO_STREAM)
    (first,) = _segments(path)
    at = _record_offsets(first)[-1]
    at += 12 + int.from_bytes(first.read_bytes()[at + 8 : at + 12], "little")
    third, fourth = _record(3, 0, 2, 3), _record(4, 1, second_durable, 4)
    torn = third[:20] + bytes(len(third) - 40) + third[-20:]  # its middle never reached the disk
    with open(first, "r+b") as f:
        f.truncate(at)
        f.seek(at)
        f.write(torn if across_segments else torn + fourth)
    if across_segments:
        store_id = unpack_store((path / "STORE").read_bytes())
        (path / "segment-00000002.log").write_bytes(pack_segment_header(2, store_id, 3) + fourth)
    (path / "index.sqlite3").unlink()
    return first, at


@pytest.mark.parametrize("across_segments", [False, True], ids=["one segment", "two segments"])
def test_two_groups_in_flight_at_a_crash_leave_a_consistent_prefix(
    tmp_path: Path, across_segments: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The next group is written while the previous one syncs; a power cut can keep the later one
    # and lose the earlier. The later one says it was written before position 3 was on disk.
    path = tmp_path / "store"
    _, at = _two_in_flight(path, second_durable=2, across_segments=across_segments)
    with caplog.at_level(logging.WARNING), _open(path) as store:
        assert _numbers(store) == [0, 1]
        store.append("s-1", _events(9), 1)
    assert f"at offset {at}" in caplog.text
    assert [p.name for p in _segments(path)] == ["segment-00000001.log"]
    with _open(path) as store:
        assert _numbers(store) == [0, 1, 9]


@pytest.mark.parametrize("across_segments", [False, True], ids=["one segment", "two segments"])
def test_a_damaged_record_that_a_later_one_saw_on_disk_is_corruption(
    tmp_path: Path, across_segments: bool
) -> None:
    path = tmp_path / "store"
    segment, at = _two_in_flight(path, second_durable=3, across_segments=across_segments)
    log_before = {p.name: p.read_bytes() for p in _segments(path)}
    with pytest.raises(CorruptionError) as raised:
        _open(path)
    assert (raised.value.path, raised.value.offset) == (str(segment), at)
    assert {p.name: p.read_bytes() for p in _segments(path)} == log_before  # nothing cut, nothing dropped


def test_a_bit_flip_in_the_middle_is_corruption_naming_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _build_with_tail(path)
    (segment,) = _segments(path)
    offsets = _record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[2] + 40] ^= 0x10
    segment.write_bytes(bytes(data))
    # the index covers the damaged record: reading it (or verify) finds the damage
    with _open(path) as store:
        with pytest.raises(CorruptionError) as raised:
            list(store.read_all())
        assert (raised.value.path, raised.value.offset) == (str(segment), offsets[2])
        assert "checksum" in str(raised.value) and str(segment) in str(raised.value)
        assert _numbers(store, "s-2") == [2, 5]  # streams without the damaged record still read
        with pytest.raises(CorruptionError):
            store.verify()
    # without the index, opening scans the log and refuses it; nothing is cut off
    (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError) as raised:
        _open(path)
    assert (raised.value.path, raised.value.offset) == (str(segment), offsets[2])
    assert "was written after position 4 was on disk" in raised.value.reason
    assert segment.read_bytes() == bytes(data)


def test_a_damaged_segment_header_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, segment_size=512) as store:
        for i in range(20):
            store.append("s", _events(i))
    first = _segments(path)[0]
    data = bytearray(first.read_bytes())
    data[20] ^= 1
    first.write_bytes(bytes(data))
    (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError) as raised:
        _open(path, segment_size=512)
    assert (raised.value.path, raised.value.offset) == (str(first), 0)


def test_a_segment_whose_creation_was_torn_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path) as store:
        store.append("s", _events(1))
    (path / "segment-00000002.log").write_bytes(b"\x89ORX")
    with _open(path) as store:
        assert _numbers(store) == [1]
        store.append("s", _events(2))
    assert [p.name for p in _segments(path)] == ["segment-00000001.log"]


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, segment_size=512) as store:
        for i in range(20):
            store.append("s", _events(i))
    _segments(path)[1].unlink()
    with pytest.raises(CorruptionError, match="missing"):
        _open(path, segment_size=512)


# -- durability and failure ----------------------------------------------------------------------


def test_a_failed_fsync_poisons_the_store_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    store = _open(path)
    store.append("s-1", _events(0), NO_STREAM)
    real = os.fdatasync
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(StoreFailedError, match="failed to sync"):
        store.append("s-1", _events(1), 0)
    monkeypatch.setattr(os, "fdatasync", real)
    with pytest.raises(StoreFailedError):
        store.append("s-1", _events(2), ANY)  # never retry an fsync and carry on
    assert len(calls) == 1
    assert _numbers(store, "s-1") == [0]  # reads still work, and never show the unsynced record
    store.close()
    with _open(path) as store:
        numbers = _numbers(store, "s-1")
        assert numbers in ([0], [0, 1])  # the failed append's outcome is unknown, never partial
        assert store.append("s-1", _events(3), len(numbers) - 1).versions == (len(numbers),)


def test_a_failed_store_lets_go_of_the_writer_lock_when_its_last_writer_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group's sync fails while the next writer is starting: that writer writes nothing, and no
    # group completes after it. Other processes must still get the lock, before close().

    monkeypatch.setattr(file_commit, "LOCK_HOLD", 60.0)  # only the failure may let go
    store = _open(tmp_path / "store")
    store.append("s-0", _events(0), NO_STREAM)
    commits = store._commits
    release_sync, failed = threading.Event(), threading.Event()
    real_fail, real_write_group = commits._fail, commits._write_group

    def sync_fails(fd: int) -> None:
        release_sync.wait(5)
        raise OSError(errno.EIO, "Input/output error")

    def fail(what: str) -> StoreFailedError:
        error = real_fail(what)
        failed.set()
        return error

    def write_group() -> object:
        if threading.current_thread().name.startswith("late"):
            failed.wait(5)
            time.sleep(0.2)  # the failed group completes while this writer is still "writing"
        return real_write_group()

    monkeypatch.setattr(commits, "_fail", fail)
    monkeypatch.setattr(commits, "_write_group", write_group)
    monkeypatch.setattr(os, "fdatasync", sync_fails)
    outcomes: list[str] = []

    def writer(k: int) -> None:
        _append_noting(store, f"s-{k}", k, outcomes)

    first = threading.Thread(target=writer, args=(1,), name="first")
    first.start()
    time.sleep(0.2)
    late = [threading.Thread(target=writer, args=(k,), name=f"late-{k}") for k in range(2, 5)]
    for t in late:
        t.start()
        time.sleep(0.05)
    release_sync.set()
    for t in [first, *late]:
        t.join()
    assert outcomes == ["failed"] * 4
    _assert_lock_comes_free(tmp_path / "store", "a failed store kept the writer lock")
    store.close()


def test_a_failed_fsync_fails_the_groups_written_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    store = _open(path)
    real = os.fdatasync
    first = threading.Event()

    def first_fails(fd: int) -> None:
        if not first.is_set():
            first.set()
            time.sleep(0.05)  # the next group is written and synced meanwhile
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", first_fails)
    outcomes: list[str] = []

    def writer(me: int) -> None:
        _append_noting(store, f"w-{me}", me, outcomes)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert outcomes == ["failed"] * 6  # nothing after a failed sync is acknowledged
    assert store.last_position() == 0
    store.close()
    monkeypatch.setattr(os, "fdatasync", real)
    with _open(path) as again:  # the records did reach the page cache: reopening may adopt them
        assert [r.position for r in again.read_all()] == list(range(1, again.last_position() + 1))


class _SlowSync:
    """An fdatasync that takes ``delay`` longer and records how much of the file it made durable."""

    def __init__(self, delay: float) -> None:
        self.real = os.fdatasync
        self.delay = delay
        self.durable = 0
        self.sizes: list[int] = []

    def __call__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(self.delay)
        self.real(fd)
        self.durable = max(self.durable, size)  # syncs may overlap and end in any order
        self.sizes.append(size)


def test_concurrent_appends_share_fsyncs_and_return_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    store = _open(path)
    sync = _SlowSync(0.004)
    monkeypatch.setattr(os, "fdatasync", sync)
    problems: list[str] = []

    def writer(me: int) -> None:
        for i in range(25):
            result = store.append(f"w-{me}", _events(i), ANY)
            entry = store._view.tail.entry_at(result.positions[0])
            if entry is None or entry.offset + entry.size > sync.durable:
                problems.append(f"writer {me} returned before its record was synced")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert problems == []
    assert len(sync.sizes) < 200 / 2, f"{len(sync.sizes)} fsyncs for 200 appends: no group commit"
    with _open(path) as again:
        assert again.last_position() == 200


def test_concurrent_asyncio_appends_share_fsyncs_and_return_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open(tmp_path / "store")
    sync = _SlowSync(0.002)
    monkeypatch.setattr(os, "fdatasync", sync)
    problems: list[str] = []

    async def writer(me: int) -> None:
        for i in range(25):
            result = await store.append_async(f"w-{me}", _events(i), i - 1)
            entry = store._view.tail.entry_at(result.positions[0])
            if entry is None or entry.offset + entry.size > sync.durable:
                problems.append(f"task {me} returned before its record was synced")

    async def main() -> None:
        await asyncio.gather(*(writer(k) for k in range(8)))

    asyncio.run(main())
    store.close()
    assert problems == []
    assert len(sync.sizes) <= 200 / 4, f"{len(sync.sizes)} fsyncs for 200 appends by 8 tasks: no group commit"
    with _open(tmp_path / "store") as again:
        assert again.last_position() == 200
        assert [again.stream_version(f"w-{k}") for k in range(8)] == [24] * 8


class _SyncThreads(_SlowSync):
    """A _SlowSync that also notes which thread ran each fdatasync."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.threads: list[int] = []

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        super().__call__(fd)


async def _eight_tasks_append(store: FileEventStore, sync: _SlowSync, rounds: int) -> list[str]:
    problems: list[str] = []

    async def writer(me: int) -> None:
        for i in range(rounds):
            result = await store.append_async(f"w-{me}", _events(i), i - 1)
            entry = store._view.tail.entry_at(result.positions[0])
            if entry is None or entry.offset + entry.size > sync.durable:
                problems.append(f"task {me} returned before its record was synced")

    await asyncio.gather(*(writer(k) for k in range(8)))
    return problems


def test_on_a_fast_disk_the_event_loop_commits_its_groups_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_commit, "LOCK_HOLD", 60.0)  # no turn for other processes mid-test
    store = _open(tmp_path / "store", loop_sync_max=10.0)  # every disk counts as fast
    sync = _SyncThreads(0)
    monkeypatch.setattr(os, "fdatasync", sync)
    problems = asyncio.run(_eight_tasks_append(store, sync, 25))
    loop_thread = threading.get_ident()
    store.close()
    assert problems == []
    on_loop = sync.threads.count(loop_thread)
    # The first group takes the writer lock in a thread (it may have to wait for another process).
    assert on_loop >= len(sync.threads) - 2, f"{on_loop} of {len(sync.threads)} syncs ran on the loop"
    assert len(sync.threads) <= 200 / 4, f"{len(sync.threads)} fsyncs for 200 appends: no group commit"
    with _open(tmp_path / "store") as again:
        assert [again.stream_version(f"w-{k}") for k in range(8)] == [24] * 8


@pytest.mark.parametrize(("loop_sync_max", "delay"), [(0.001, 0.002), (0, 0)], ids=["slow disk", "never"])
def test_on_a_slow_disk_or_when_told_so_the_event_loop_never_waits_for_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop_sync_max: float, delay: float
) -> None:
    store = _open(tmp_path / "store", loop_sync_max=loop_sync_max)
    sync = _SyncThreads(delay)
    monkeypatch.setattr(os, "fdatasync", sync)
    problems = asyncio.run(_eight_tasks_append(store, sync, 10))
    loop_thread = threading.get_ident()
    store.close()
    assert problems == []
    assert sync.threads and loop_thread not in sync.threads


def test_threads_and_asyncio_tasks_append_to_one_store_together(tmp_path: Path) -> None:
    store = _open(tmp_path / "store")
    conflicts: list[str] = []

    def thread_writer(me: int) -> None:
        for i in range(30):
            store.append(f"t-{me}", _events(i), i - 1)
            try:
                store.append("shared", _events(1000 + i), NO_STREAM)
            except ConcurrencyError:
                conflicts.append("thread")

    async def task_writer(me: int) -> None:
        for i in range(30):
            await store.append_async(f"a-{me}", _events(i), i - 1)
            try:
                await store.append_async("shared", _events(2000 + i), NO_STREAM)
            except ConcurrencyError:
                conflicts.append("task")

    async def tasks() -> None:
        await asyncio.gather(*(task_writer(k) for k in range(4)))

    threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    assert len(conflicts) == 8 * 30 - 1  # exactly one append created "shared"
    assert store.stream_version("shared") == 0
    for prefix in ("t", "a"):
        for k in range(4):
            assert _numbers(store, f"{prefix}-{k}") == list(range(30))
    positions = [r.position for r in store.read_all()]
    assert positions == list(range(1, 8 * 30 + 2))
    store.close()


def test_an_asyncio_append_whose_task_is_cancelled_leaves_a_consistent_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open(tmp_path / "store")
    real = os.fdatasync
    syncing = threading.Event()

    def slow_sync(fd: int) -> None:
        syncing.set()
        time.sleep(0.05)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)

    async def scenario() -> None:
        append = asyncio.create_task(store.append_async("s", _events(1), NO_STREAM))
        while not syncing.is_set():
            await asyncio.sleep(0.001)
        append.cancel()
        with pytest.raises(asyncio.CancelledError):
            await append
        # the cancelled append completes on its own: it is stored, whole, at version 0
        assert (await store.append_async("s", _events(2), 0)).versions == (1,)

    asyncio.run(scenario())
    assert _numbers(store, "s") == [1, 2]
    store.close()


def test_asyncio_appends_fail_like_sync_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _open(tmp_path / "store")

    async def scenario() -> None:
        await store.append_async("s", _events(1), NO_STREAM)
        with pytest.raises(ConcurrencyError):
            await store.append_async("s", _events(2), NO_STREAM)
        monkeypatch.setattr(os, "fdatasync", _failing_sync)
        with pytest.raises(StoreFailedError, match="failed to sync"):
            await store.append_async("s", _events(3), 0)
        with pytest.raises(StoreFailedError):
            await store.append_async("s", _events(4), ANY)

    asyncio.run(scenario())
    store.close()
    with pytest.raises(StoreClosedError):
        asyncio.run(store.append_async("s", _events(5)))


def _failing_sync(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_asyncio_reads_see_what_another_store_on_the_directory_appended(tmp_path: Path) -> None:
    with _open(tmp_path / "s") as reader, _open(tmp_path / "s") as writer:

        async def scenario() -> None:
            assert await reader.stream_version_async("a") == NO_STREAM
            writer.append("a", _events(1, 2), NO_STREAM)
            assert await reader.stream_version_async("a") == 1
            assert [r.event.n async for r in reader.read_stream_async("a")] == [1, 2]
            writer.append("a", _events(3), 1)
            assert [r.event.n async for r in reader.read_all_async(1)] == [2, 3]
            assert [r.event.n async for r in reader.read_stream_async("a", 2)] == [3]

        asyncio.run(scenario())


def test_reopening_and_appending_does_not_reserve_more_space_each_time(tmp_path: Path) -> None:
    from orchestrix.infrastructure.file._log import PREALLOCATE

    path = tmp_path / "store"
    segment = path / "segment-00000001.log"
    sizes = []
    for cycle in range(6):
        with _open(path) as store:
            store.append("s", _events(cycle), cycle - 1)
        sizes.append(segment.stat().st_size)
    assert sizes == [sizes[0]] * 6  # the first run's reservation serves the later ones
    assert sizes[0] <= PREALLOCATE + 4096
    with _open(path) as store:
        assert _numbers(store, "s") == list(range(6))


def test_unsafe_mode_appends_and_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    with _open(tmp_path / "store", sync=False) as store:
        for i in range(10):
            store.append("s", _events(i))
        assert _numbers(store) == list(range(10))
    assert calls == []


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = _open(tmp_path / "store")
    store.append("s", _events(1))
    store.close()
    store.close()
    with pytest.raises(StoreClosedError):
        store.append("s", _events(2))
    with pytest.raises(StoreClosedError):
        list(store.read_stream("s"))
    with pytest.raises(StoreClosedError):
        store.read_all()
    assert store.wait_for_events(0, 0.01) is True
    assert store.wait_for_events(5, 0.01) is False


def test_a_batch_bigger_than_a_record_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_commit, "MAX_BODY", 1000)
    with _open(tmp_path / "store") as store:
        with pytest.raises(BatchTooLargeError):
            store.append("s", [ContractEvent(1, "x" * 2000)])
        assert store.last_position() == 0
        store.append("s", _events(1))
        assert _numbers(store) == [1]


# -- streaming -----------------------------------------------------------------------------------


def test_reading_a_long_stream_keeps_memory_flat(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, sync=False) as store:
        for k in range(40):
            store.append("long", _events(*range(k * 500, k * 500 + 500)), ANY)
    with _open(path) as store:
        tracemalloc.start()
        try:
            count = 0
            for recorded in store.read_stream("long"):
                count += recorded.event.n >= 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == 20_000
    assert peak < 3_000_000, f"peak {peak} bytes while streaming 20,000 events"


# -- several processes ---------------------------------------------------------------------------


def test_two_processes_racing_on_expected_versions_have_one_winner_per_round(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    _open(Path(path)).close()
    ctx = multiprocessing.get_context("spawn")
    rounds = 30
    barrier, results = ctx.Barrier(2), ctx.Queue()
    racers = [
        ctx.Process(target=file_workers.race, args=(path, me, rounds, barrier, results)) for me in (0, 1)
    ]
    for p in racers:
        p.start()
    won = dict(results.get(timeout=120) for _ in racers)
    for p in racers:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(won[0] + won[1]) == list(range(rounds)), "exactly one winner per round"
    with FileEventStore(path, file_workers.serializer()) as store:
        stored = [r.event.batch for r in store.read_stream("race")]
    winners = {r: me for me in (0, 1) for r in won[me]}
    assert stored == [f"{winners[r]}:{r}" for r in range(rounds)]


def test_readers_see_and_wait_for_another_process_appends(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    reader = FileEventStore(path, file_workers.serializer())
    try:
        assert reader.last_position() == 0
        ctx = multiprocessing.get_context("spawn")
        writer = ctx.Process(target=file_workers.write_events, args=(path, "elsewhere", 5))
        writer.start()
        assert reader.wait_for_events(0, 60.0) is True
        writer.join(timeout=60)
        assert writer.exitcode == 0
        assert [r.event.batch for r in reader.read_all()] == [f"w:{i}" for i in range(5)]
        assert reader.stream_version("elsewhere") == 4
        reader.append("elsewhere", [file_workers.Appended("mine", 0, 1, 1)], 4)

        async def wait_async() -> bool:
            return await reader.wait_for_events_async(6, 60.0)

        writer = ctx.Process(target=file_workers.write_events, args=(path, "again", 1))
        writer.start()
        assert asyncio.run(wait_async()) is True
        writer.join(timeout=60)
        assert [r.stream for r in reader.read_all(6)] == ["again"]
    finally:
        reader.close()


def test_two_stores_in_one_process_share_a_directory(tmp_path: Path) -> None:
    with _open(tmp_path / "s") as one, _open(tmp_path / "s") as two:
        one.append("a", _events(1), NO_STREAM)
        with pytest.raises(ConcurrencyError):
            two.append("a", _events(2), NO_STREAM)
        two.append("a", _events(2), 0)
        assert _numbers(one, "a") == [1, 2]
        assert one.wait_for_events(1, 5.0) is True


def test_async_waiters_wake_on_an_append_in_this_process(tmp_path: Path) -> None:
    with _open(tmp_path / "store") as store:

        async def scenario() -> bool:
            waiting = asyncio.create_task(store.wait_for_events_async(0, 30.0))
            await asyncio.sleep(0.01)
            await store.append_async("s", _events(1))
            return await waiting

        assert asyncio.run(scenario()) is True


# -- starting afresh, checkpoints beside the log ----------------------------------------------------


def test_destroy_removes_a_store_so_the_next_open_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with _open(path, segment_size=512) as store:
        for i in range(20):
            store.append("s", _events(i))
        store.checkpoints().save("runner", 20)
    FileEventStore.destroy(path)
    assert not path.exists()
    with _open(path) as store:
        assert store.last_position() == 0
        assert store.checkpoints().load("runner") == 0


def test_destroy_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(StoreFormatError, match="not deleting"):
        FileEventStore.destroy(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_checkpoints_live_beside_the_log(tmp_path: Path) -> None:
    with _open(tmp_path / "store") as store:
        store.checkpoints().save("runner", 3)
    with _open(tmp_path / "store") as store:
        assert store.checkpoints().load("runner") == 3


def test_a_loop_that_stops_before_starting_its_append_does_not_hold_up_other_loops(tmp_path: Path) -> None:
    store = _open(tmp_path / "store")
    loop = asyncio.new_event_loop()
    orphan = loop.create_task(store.append_async("orphan", _events(1), NO_STREAM))
    loop.call_soon(loop.stop)  # runs the task up to its await, then stops before the writer starts
    loop.run_forever()
    assert not orphan.done()
    positions: list[int] = []

    async def elsewhere() -> None:
        positions.extend((await store.append_async("s", _events(2), NO_STREAM)).positions)

    other = threading.Thread(target=asyncio.run, args=(elsewhere(),), daemon=True)
    other.start()
    other.join(timeout=20)
    assert positions, "another loop's append was held up by the stopped loop's"
    assert store.stream_version("orphan") == 0  # the next group took the orphan's record along
    store.close()
    orphan.cancel()
    loop.run_until_complete(asyncio.gather(orphan, return_exceptions=True))
    loop.close()


def test_is_store_tells_a_store_from_other_directories_without_creating_one(tmp_path: Path) -> None:
    assert not FileEventStore.is_store(tmp_path / "missing")
    assert not FileEventStore.is_store(tmp_path)
    with _open(tmp_path / "store"):
        pass
    assert FileEventStore.is_store(tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing created on the way


def test_close_on_the_loop_while_an_asyncio_append_waits_for_its_writer_returns(tmp_path: Path) -> None:
    """close() on the loop thread, right after a task queued its append: the writer start the
    append waits for is a callback of the very loop close() blocks, so close() starts it."""
    store = _open(tmp_path / "s", sync=False)
    closed = threading.Event()

    async def main() -> None:
        task = asyncio.create_task(store.append_async("s-1", [NewEvent(ContractEvent(1))]))
        await asyncio.sleep(0)  # the task queues its append and schedules _kick after us
        store.close()  # sync close on the loop: waits for the queue to drain
        closed.set()
        await task

    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    assert closed.wait(5), "store.close() on the event loop thread hung (queued append, _kick never runs)"


def test_close_after_the_loop_stopped_before_starting_its_writer_returns(tmp_path: Path) -> None:
    """A loop stopped (loop.stop from a signal handler, say) in the iteration in which a task
    queued its append: close() writes the queued append instead of waiting for ever."""
    store = _open(tmp_path / "s", sync=False)
    loop = asyncio.new_event_loop()

    tasks = []

    async def main() -> None:
        tasks.append(loop.create_task(store.append_async("s-1", [NewEvent(ContractEvent(1))])))
        loop.call_soon(loop.stop)  # runs in the same iteration as the task's first step
        await asyncio.Event().wait()

    tasks.append(loop.create_task(main()))
    loop.run_forever()
    closed = threading.Event()

    def close() -> None:
        store.close()
        closed.set()

    threading.Thread(target=close, daemon=True).start()
    ok = closed.wait(5)
    assert ok, "store.close() hung: an append queued by a stopped loop is never written"
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
    with _open(tmp_path / "s") as again:
        assert again.stream_version("s-1") == 0  # written by close, though nobody awaited it


def test_asyncio_appends_go_on_while_the_interpreter_exits(tmp_path: Path) -> None:
    """A non-daemon thread appends from asyncio while the main thread ends: the writer threads
    keep serving it (a concurrent.futures pool refuses work once the interpreter exits)."""
    script = textwrap.dedent(
        f"""
        import asyncio, threading, time
        from orchestrix.core.messaging.messages import NewEvent
        from orchestrix.infrastructure.file import FileEventStore
        from orchestrix.testing import ContractEvent, contract_serializer

        store = FileEventStore({str(tmp_path / "s")!r}, contract_serializer(), sync=True)

        async def work():
            for i in range(400):
                appends = [store.append_async("s-%d" % k, [NewEvent(ContractEvent(i))]) for k in range(4)]
                await asyncio.gather(*appends)
            print("worker done", flush=True)

        threading.Thread(target=asyncio.run, args=(work(),)).start()  # non-daemon
        time.sleep(0.05)
        # the main thread ends here: threading._shutdown runs concurrent.futures' atexit hook first
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert "worker done" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("gap", [False, True], ids=["consecutive", "with-a-gap"])
def test_the_index_stores_each_event_id_at_its_own_position(tmp_path: Path, gap: bool) -> None:
    # Consecutive records go in with one statement; anything else row by row. Both must agree.
    from orchestrix.infrastructure.file._index import Entry, Index

    index = Index(str(tmp_path / "index.sqlite3"), b"store-id")
    assert index.add([]) == 0  # nothing to add: what is covered
    entries, position = [], 1
    for k, count in enumerate([1, 3, 1, 2]):
        ids = tuple(uuid.uuid4().bytes for _ in range(count))
        entries.append(Entry(position, count, 1, f"s-{k}", 1, 64 + 100 * k, 100, 0, ids))
        position += count + (1 if gap and k == 1 else 0)
    index.add(entries)
    expected = {i: e.position + n for e in entries for n, i in enumerate(e.ids)}
    assert index.positions_of([*expected, uuid.uuid4().bytes]) == expected
    index.close()


def test_after_a_long_burst_the_writer_lock_is_let_go(tmp_path: Path) -> None:
    # The keeper looks less often while appends go on; once they stop it must still let go.

    with FileEventStore(tmp_path / "store", contract_serializer(), sync=False) as store:
        started = time.monotonic()
        k = 0
        while time.monotonic() - started < 4 * file_commit.LOCK_HOLD:
            store.append(f"s-{k % 4}", _events(k))
            k += 1
        _assert_lock_comes_free(tmp_path / "store", "the idle store never let go of the writer lock")


def test_a_streams_later_records_fill_up_its_last_index_chunk(tmp_path: Path) -> None:
    # A stream's first record needs no lookup of an earlier chunk; every later one must find it.
    from orchestrix.infrastructure.file._index import Entry, Index

    index = Index(str(tmp_path / "index.sqlite3"), b"store-id")
    position = 1
    for version in range(3):  # one checkpoint per record
        entries = [
            Entry(
                position + k, 1, version, stream, 1, 64 + 100 * (position + k), 100, 0, (uuid.uuid4().bytes,)
            )
            for k, stream in enumerate(["a", "b"])
        ]
        index.add(entries)
        position += 2
    rows = index._read.execute("SELECT stream, first_version FROM chunks ORDER BY stream").fetchall()
    assert rows == [("a", 0), ("b", 0)]
    assert [r[:3] for r in index.stream_records("a", 0, position)] == [(0, 1, 1), (1, 1, 3), (2, 1, 5)]
    assert index.stream_version("b", position) == 2
    index.close()


def test_between_sparse_appends_the_writer_lock_is_free_for_other_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Appends every 1.5 LEASE: an idle stretch reaches LEASE before the next one, so another
    # process taking the lock waits about a LEASE, not until the busy process's LOCK_HOLD ends.
    import fcntl
    import statistics

    from orchestrix.infrastructure.file._format import LOCK_FILE

    monkeypatch.setattr(file_commit, "LOCK_HOLD", 0.5)
    stop = threading.Event()
    with FileEventStore(tmp_path / "store", contract_serializer(), sync=False) as store:

        def append_now_and_then() -> None:
            k = 0
            while not stop.is_set():
                store.append(f"s-{k % 4}", _events(k))
                k += 1
                time.sleep(1.5 * file_commit.LEASE)

        appender = threading.Thread(target=append_now_and_then)
        appender.start()
        fd = os.open(tmp_path / "store" / LOCK_FILE, os.O_RDWR)
        waits = []
        try:
            for _ in range(11):
                time.sleep(0.013)
                started = time.monotonic()
                fcntl.flock(fd, fcntl.LOCK_EX)
                waits.append(time.monotonic() - started)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            stop.set()
            appender.join()
    assert statistics.median(waits) < 0.1 * file_commit.LOCK_HOLD, [round(w, 4) for w in waits]


# -- interrupted callers and writers, races found by review -------------------------------------


def _in_thread(fn: object, timeout: float = 5.0) -> object:
    """Run ``fn`` in a thread; its result, its exception, or "HUNG" if it did not return in time."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = fn()  # type: ignore[operator]
        except BaseException as exc:
            out["result"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return "HUNG" if thread.is_alive() else out["result"]


@pytest.mark.parametrize("woken", [False, True], ids=["before-its-wait-ends", "after-its-wait-ended"])
def test_a_caller_interrupted_while_waiting_leaves_the_store_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, woken: bool
) -> None:
    # Ctrl-C reaches a thread waiting for its turn just as the writing is handed to it: CPython
    # may raise it before the wait ends or right after (the lock then taken).
    store = _open(tmp_path / "store")
    store.append("warm", _events(0))
    gate = _hold_syncs(monkeypatch)

    class InterruptedWake:
        """The waiting caller's lock: the wait ends in KeyboardInterrupt once it is handed the writing."""

        def __init__(self) -> None:
            self.real = real_threading.Lock()
            self.waits = 0

        def acquire(self, *args: object) -> bool:
            self.waits += 1
            if self.waits == 1:
                return self.real.acquire()
            if woken:
                self.real.acquire()
            else:
                while self.real.locked():  # until the hand-over releases it
                    time.sleep(0.001)
            raise KeyboardInterrupt

        def release(self) -> None:
            self.real.release()

        def locked(self) -> bool:
            return self.real.locked()

    real_threading = threading

    class Threading:
        def __getattr__(self, name: str) -> object:
            return getattr(real_threading, name)

        Lock = InterruptedWake

    first = threading.Thread(target=lambda: store.append("a", _events(1)))
    first.start()
    while not store._commits._in_flight:
        time.sleep(0.001)
    monkeypatch.setattr(file_commit, "threading", Threading())
    threading.Timer(0.05, gate.set).start()
    with pytest.raises(KeyboardInterrupt):
        store.append("b", _events(2))
    first.join()
    monkeypatch.setattr(file_commit, "threading", real_threading)
    commits = store._commits
    assert (commits._writing, commits._queue) == (False, [])
    assert _in_thread(lambda: store.append("c", _events(3))) == AppendResult("c", (0,), (3,))
    assert _in_thread(store.close) is None


def test_a_writer_interrupted_in_its_sync_fails_the_store_and_leaves_nobody_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sync's outcome is unknown: the store fails, the interrupt goes on, nothing hangs.
    store = _open(tmp_path / "store")
    store.append("warm", _events(0))
    real_sync = os.fdatasync

    def interrupted(fd: int) -> None:
        monkeypatch.setattr(os, "fdatasync", real_sync)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdatasync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.append("a", _events(1))
    assert store._commits._in_flight == deque()
    assert isinstance(_in_thread(lambda: store.append("b", _events(2))), StoreFailedError)
    _assert_lock_comes_free(tmp_path / "store", "an interrupted writer kept the writer lock", within=0.0)
    assert _in_thread(store.close) is None


def test_a_group_retiring_while_the_next_one_is_planned_keeps_versions_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Group A retires (forgets what it planned) just as group B is planned on the same stream;
    # group C, planned while B is in flight, must see B's versions, not the older tail's.
    monkeypatch.setattr(file_commit, "LOCK_HOLD", 100.0)
    store = _open(tmp_path / "store")
    commits = store._commits
    real_sync = os.fdatasync
    syncs: list[int] = []
    gates = {1: threading.Event(), 2: threading.Event()}

    def gated_sync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) in gates:
            gates[len(syncs)].wait(5)
        real_sync(fd)

    class SlowForget(dict):  # type: ignore[type-arg]
        def get(self, key: object, *default: object) -> object:
            found = dict.get(self, key, *default)
            if default:  # the retiring group's check: another writer may run right here
                time.sleep(0.2)
            return found

    real_view, a_published, b_writer = commits.view, threading.Event(), []

    class State:  # B's writer plans only once A is published, i.e. while A retires
        def __enter__(self) -> object:
            if b_writer and b_writer[0] == threading.get_ident():
                a_published.wait(5)
            return real_view.state.__enter__()

        def __exit__(self, *exc: object) -> None:
            real_view.state.__exit__(*exc)

    class View:
        state = State()

        def __getattr__(self, name: str) -> object:
            return getattr(real_view, name)

        def publish(self, entries: object, end: object) -> None:
            real_view.publish(entries, end)
            a_published.set()

    real_write_group = commits._write_group

    def write_group() -> object:
        if commits._seq == 1:
            b_writer.append(threading.get_ident())
        return real_write_group()

    monkeypatch.setattr(commits, "view", View())
    monkeypatch.setattr(commits, "_write_group", write_group)
    monkeypatch.setattr(os, "fdatasync", gated_sync)
    commits._versions = SlowForget()
    results: dict[str, object] = {}

    def append(name: str, expected: int = ANY) -> None:
        try:
            results[name] = store.append("s-1", _events(0), expected)
        except ConcurrencyError as exc:
            results[name] = exc

    a = threading.Thread(target=append, args=("A",))
    a.start()
    while not syncs:
        time.sleep(0.001)
    b = [threading.Thread(target=append, args=(f"B{k}",)) for k in range(3)]
    for t in b:
        t.start()
        time.sleep(0.02)
    time.sleep(0.1)
    gates[1].set()
    while len(syncs) < 2:
        time.sleep(0.001)
    a.join()
    c = [threading.Thread(target=append, args=(f"C{k}", 0 if k == 0 else ANY)) for k in range(3)]
    for t in c:
        t.start()
        time.sleep(0.02)
    time.sleep(0.2)
    gates[2].set()
    for t in b + c:
        t.join()
    assert isinstance(results["C0"], ConcurrencyError)  # expected version 0 of a stream at 3
    assert [r.version for r in store.read_stream("s-1")] == list(range(6))
    store.close()


def test_a_process_that_never_pauses_still_lets_another_one_write(tmp_path: Path) -> None:
    # flock is not fair: a busy process that let go after LOCK_HOLD and at once took the lock
    # again kept it for several LOCK_HOLDs while another process waited.
    path = str(tmp_path / "store")
    FileEventStore(path, file_workers.serializer()).close()
    ctx = multiprocessing.get_context("spawn")
    started, stop = ctx.Event(), ctx.Event()
    hog = ctx.Process(target=file_workers.append_without_pause, args=(path, started, stop))
    hog.start()
    waits = []
    try:
        assert started.wait(30), "the busy process never started"
        with FileEventStore(path, file_workers.serializer(), sync=False) as store:
            for i in range(40):
                began = time.monotonic()
                store.append("other", [file_workers.Appended(f"o:{i}", 0, 1, 1)])
                waits.append(time.monotonic() - began)
                time.sleep(0.01)
    finally:
        stop.set()
        hog.join(30)
    late = [round(w, 3) for w in waits if w > 1.5 * file_commit.LOCK_HOLD]
    assert len(late) < 10, sorted(waits)


def test_closing_from_two_threads_at_once_closes_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open(tmp_path / "store")
    store.append("s-1", _events(0))
    closed: list[int] = []
    real_close = os.close

    def counting_close(fd: int) -> None:
        closed.append(fd)
        time.sleep(0.001)  # widen the window in which a second close could slip in
        real_close(fd)

    real_commits_close = store._commits.close

    def slow_commits_close() -> None:
        real_commits_close()
        time.sleep(0.05)  # every thread is past the "already closed?" check by now

    monkeypatch.setattr(store._commits, "close", slow_commits_close)
    monkeypatch.setattr(os, "close", counting_close)
    threads = [threading.Thread(target=store.close) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(os, "close", real_close)
    assert closed and len(closed) == len(set(closed)), closed


def test_an_interrupt_while_a_group_is_planned_stays_with_the_writer_that_got_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store fails (what was planned may or may not be written); the other callers of the
    # group get that failure, not the writer's KeyboardInterrupt, and nothing waits forever.
    store = _open(tmp_path / "store")
    store.append("warm", _events(0))
    commits = store._commits
    real_plan, gate = commits._plan, _hold_syncs(monkeypatch)

    def interrupted_plan(group: object) -> object:
        if len(group.requests) > 1:  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        return real_plan(group)  # type: ignore[arg-type]

    monkeypatch.setattr(commits, "_plan", interrupted_plan)
    outcomes: dict[str, str] = {}

    def append(name: str) -> None:
        try:
            store.append(name, _events(1))
            outcomes[name] = "stored"
        except BaseException as exc:
            outcomes[name] = type(exc).__name__

    threads = [threading.Thread(target=append, args=(f"s-{k}",)) for k in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    gate.set()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    kinds = sorted(outcomes.values())
    assert kinds.count("KeyboardInterrupt") == 1 and "stored" in kinds, kinds
    assert set(kinds) <= {"KeyboardInterrupt", "StoreFailedError", "stored"}, kinds
    assert _in_thread(store.close) is None


def test_a_caller_interrupted_while_taking_the_lock_after_its_turn_came_leaves_the_store_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its turn came after a drain let the lock go; Ctrl-C reaches it while it waits for the lock
    # (another process holds it): its append is taken back, and the next writer goes on.
    store = _open(tmp_path / "store")
    store.append("warm", _events(0))
    gate = _hold_syncs(monkeypatch)
    lock = store._view.log.lock
    real_enter, main = lock.__enter__, threading.get_ident()

    def interrupted_enter() -> object:
        if threading.get_ident() == main:
            raise KeyboardInterrupt
        return real_enter()

    def drain_then_sync() -> None:
        while not store._commits._queue:  # the main thread waits behind the group in flight
            time.sleep(0.001)
        monkeypatch.setattr(file_commit, "LOCK_HOLD", 0.0)  # its completion lets the lock go
        gate.set()

    monkeypatch.setattr(lock, "__enter__", interrupted_enter)
    first = threading.Thread(target=lambda: store.append("a", _events(1)))
    first.start()
    while not store._commits._in_flight:
        time.sleep(0.001)
    threading.Thread(target=drain_then_sync).start()
    with pytest.raises(KeyboardInterrupt):
        store.append("b", _events(2))
    first.join()
    monkeypatch.setattr(file_commit, "LOCK_HOLD", 0.05)
    commits = store._commits
    assert (commits._writing, commits._queue) == (False, [])
    assert _in_thread(lambda: store.append("c", _events(3))) == AppendResult("c", (0,), (3,))
    assert store.stream_version("b") == NO_STREAM  # taken back: never written
    assert _in_thread(store.close) is None


def test_ctrl_c_during_an_append_lets_it_finish_and_then_interrupts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real SIGINT while the main thread writes and syncs its own append: the append is made
    # durable and published, then KeyboardInterrupt; the store stays healthy.
    import signal

    store = _open(tmp_path / "store")
    store.append("warm", _events(0))
    real_sync, syncing = os.fdatasync, threading.Event()

    def slow_sync(fd: int) -> None:
        syncing.set()
        time.sleep(0.3)
        real_sync(fd)

    def press_ctrl_c() -> None:
        syncing.wait(5)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    threading.Thread(target=press_ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        store.append("a", _events(1))
    monkeypatch.setattr(os, "fdatasync", real_sync)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _numbers(store, "a") == [1]  # finished before the interrupt
    assert store.append("b", _events(2)).positions == (3,)  # not failed
    store.close()


def test_ctrl_c_ends_a_wait_for_another_processs_lock(tmp_path: Path) -> None:
    # Another process holds the writer lock (say it was suspended): Ctrl-C must still get the
    # appender out, its append taken back, the store healthy.
    import fcntl
    import signal

    from orchestrix.infrastructure.file._format import LOCK_FILE

    store = _open(tmp_path / "store")
    store.append("warm", _events(0))
    with store._commits._lock:
        store._commits._release_lock()  # as after an idle lease (nothing is in flight)
    fd = os.open(tmp_path / "store" / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the other process
    returned = threading.Event()

    def press_ctrl_c() -> None:
        time.sleep(0.2)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]
        if not returned.wait(3):  # still stuck: let it go on, so that the test fails, not hangs
            fcntl.flock(fd, fcntl.LOCK_UN)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            store.append("a", _events(1))
    finally:
        returned.set()
        presser.join()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _in_thread(lambda: store.append("b", _events(2))) == AppendResult("b", (0,), (2,))
    assert store.stream_version("a") == NO_STREAM
    assert _in_thread(store.close) is None
