"""The file store: the contract suite, opening and its options, a store's life from creation to destroy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrix.core.errors import (
    CorruptionError,
    StoreClosedError,
    StoreError,
    StoreFormatError,
)
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, EventStore
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file import _request as file_request
from orchestrix.infrastructure.file._format import (
    FORMAT_VERSION,
)
from orchestrix.infrastructure.file._policy import FilePolicy
from orchestrix.infrastructure.file.errors import BatchTooLargeError, InvalidStoreOptionError
from orchestrix.testing import ContractEvent, EventImportContract, EventStoreContract, contract_serializer
from tests.infrastructure.file_support import (
    IOUnderTest,
    events,
    numbers,
    open_store,
    segments,
    snapshot,
)


class TestFileEventStore(EventStoreContract, EventImportContract):
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


# -- bad inputs ------------------------------------------------------------------------------------


def test_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "store"
    target.write_bytes(b"not a directory")
    with pytest.raises(StoreFormatError, match="not a directory"):
        open_store(target)
    assert target.read_bytes() == b"not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_directory_that_is_not_a_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError, match="not an orchestrix file store"):
        open_store(tmp_path)
    assert snapshot(tmp_path) == {"notes.txt": b"mine"}


def test_a_store_of_a_newer_format_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s-1", events(1))
    (path / "STORE").write_bytes(_as_newer_format((path / "STORE").read_bytes(), 32))
    before = snapshot(path)
    with pytest.raises(StoreFormatError, match=f"newer format version {FORMAT_VERSION + 1}"):
        open_store(path)
    assert snapshot(path) == before


def _as_newer_format(data: bytes, check_at: int) -> bytes:
    """``data`` (a STORE file or segment header) as a newer format writes it: version and version check."""
    out = bytearray(data)
    out[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    out[check_at : check_at + 4] = zlib.crc32(bytes(out[:12])).to_bytes(4, "little")
    return bytes(out)


def test_a_bit_flip_in_the_store_marker_version_is_damage_not_a_newer_format(tmp_path: Path) -> None:
    path = tmp_path / "store"
    open_store(path).close()
    marker = bytearray((path / "STORE").read_bytes())
    marker[9] ^= 0x10  # version 2 reads as 4098
    (path / "STORE").write_bytes(bytes(marker))
    with pytest.raises(StoreFormatError, match="damaged: its version field reads 4098") as raised:
        open_store(path)
    assert "newer" not in str(raised.value)


def test_a_segment_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s-1", events(1))
    (segment,) = segments(path)
    segment.write_bytes(_as_newer_format(segment.read_bytes(), 40))
    (path / "index.sqlite3").unlink()
    with pytest.raises(StoreFormatError, match="newer format"):
        open_store(path)


@pytest.mark.parametrize("index", ["kept", "dropped"])
def test_a_bit_flip_in_a_segment_header_version_is_corruption_not_a_newer_format(
    tmp_path: Path, index: str
) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s-1", events(1))
    (segment,) = segments(path)
    data = bytearray(segment.read_bytes())
    data[9] ^= 0x10  # version 2 reads as 4098
    segment.write_bytes(bytes(data))
    if index == "dropped":
        (path / "index.sqlite3").unlink()
    flipped = pytest.raises(CorruptionError, match="version field reads 4098")
    with flipped as raised, open_store(path) as store:
        list(store.read_all())
    assert (raised.value.path, raised.value.offset) == (str(segment), 0)


def test_a_store_of_format_1_still_opens_and_reads(tmp_path: Path) -> None:
    # format 1 had no version check (bytes 32-35 of STORE, 40-43 of a segment header were zero)
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s-1", events(1, 2))
    for name, check_at in (("STORE", 32), (segments(path)[0].name, 40)):
        data = bytearray((path / name).read_bytes())
        data[8:12] = (1).to_bytes(4, "little")
        data[check_at : check_at + 4] = bytes(4)
        end = 36 if name == "STORE" else 44
        data[end : end + 4] = zlib.crc32(bytes(data[:end])).to_bytes(4, "little")
        (path / name).write_bytes(bytes(data))
    (path / "index.sqlite3").unlink()
    with open_store(path) as store:
        assert numbers(store) == [1, 2]
        store.append("s-1", events(3))
        assert numbers(store) == [1, 2, 3]


def test_a_damaged_store_marker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    open_store(path).close()
    (path / "STORE").write_bytes(b"garbage")
    with pytest.raises(StoreFormatError, match="not an orchestrix file store"):
        open_store(path)


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
            with open_store(path) as store:
                store.append("s-1", events(1))
            path.chmod(0o555)
            for f in path.iterdir():
                f.chmod(0o444)
        else:
            base.chmod(0o555)
        before = snapshot(path) if existing else None
        if os.geteuid() == 0:
            result = _try_open_as(65534, path)
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.startswith("StoreError") and "ermission denied" in result.stdout
        else:
            with pytest.raises(StoreError, match="ermission denied"):
                open_store(path)
        if existing:
            assert snapshot(path) == before
        else:
            assert not path.exists()
    finally:
        base.chmod(0o755)
        if (base / "store").exists():
            (base / "store").chmod(0o755)
        shutil.rmtree(base)


def test_an_os_error_while_opening_is_a_store_error(tmp_path: Path) -> None:
    class RefusingIO(IOUnderTest):
        def open(self, path: str, flags: int, mode: int = 0o777) -> int:  # type: ignore[override]
            if path.endswith("LOCK"):
                raise PermissionError(13, "Permission denied", path)
            return super().open(path, flags, mode)

    with pytest.raises(StoreError, match="Permission denied"):
        open_store(tmp_path / "store", io=RefusingIO())


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
        open_store(tmp_path / "store", **{option: value})  # type: ignore[arg-type]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("lease", -0.001), ("lock_hold", float("nan")), ("retake_pause", "short"), ("io", os)],
)
def test_a_policy_out_of_range_is_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidStoreOptionError, match=f"policy.{field}"):
        FilePolicy(**{field: value})  # type: ignore[arg-type]


def test_a_store_given_something_else_than_a_policy_is_refused_before_anything_is_created(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidStoreOptionError, match="policy"):
        FileEventStore(tmp_path / "store", contract_serializer(), policy={"lease": 0.1})  # type: ignore[arg-type]
    assert not (tmp_path / "store").exists()


# -- reopening, segments, space --------------------------------------------------------------------


def test_reopening_continues_from_the_stored_state(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        assert store.append("s-1", events(0, 1), NO_STREAM).positions == (1, 2)
    with open_store(path) as store:
        assert store.append("s-1", events(2), 1).positions == (3,)
        assert numbers(store) == [0, 1, 2]


def test_segments_roll_over_and_everything_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, segment_size=1024, checkpoint_events=7) as store:
        for i in range(120):
            store.append(f"s-{i % 3}", events(i), ANY)
        assert len(segments(path)) > 10
        assert numbers(store) == list(range(120))
        assert numbers(store, "s-1") == list(range(1, 120, 3))
        assert [r.event.n for r in store.read_all(57, limit=5)] == [57, 58, 59, 60, 61]
    with open_store(path, segment_size=1024) as store:
        assert numbers(store) == list(range(120))
        assert [r.version for r in store.read_stream("s-2", 30)] == list(range(30, 40))
        assert store.verify() == 120
        assert store.append("s-0", events(120), 39).positions == (121,)


def test_reopening_and_appending_does_not_reserve_more_space_each_time(tmp_path: Path) -> None:
    from orchestrix.infrastructure.file._log import PREALLOCATE

    path = tmp_path / "store"
    segment = path / "segment-00000001.log"
    sizes = []
    for cycle in range(6):
        with open_store(path) as store:
            store.append("s", events(cycle), cycle - 1)
        sizes.append(segment.stat().st_size)
    assert sizes == [sizes[0]] * 6  # the first run's reservation serves the later ones
    assert sizes[0] <= PREALLOCATE + 4096
    with open_store(path) as store:
        assert numbers(store, "s") == list(range(6))


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    store.append("s", events(1))
    store.close()
    store.close()
    with pytest.raises(StoreClosedError):
        store.append("s", events(2))
    with pytest.raises(StoreClosedError):
        list(store.read_stream("s"))
    with pytest.raises(StoreClosedError):
        store.read_all()
    assert store.wait_for_events(0, 0.01) is True
    assert store.wait_for_events(5, 0.01) is False


def test_a_batch_bigger_than_a_record_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The format's limit (1 GiB) made small: a real batch that big would not fit in a test's memory.
    monkeypatch.setattr(file_request, "MAX_BODY", 1000)
    with open_store(tmp_path / "store") as store:
        with pytest.raises(BatchTooLargeError):
            store.append("s", [ContractEvent(1, "x" * 2000)])
        assert store.last_position() == 0
        store.append("s", events(1))
        assert numbers(store) == [1]


def test_reading_a_long_stream_keeps_memory_flat(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, sync=False) as store:
        for k in range(40):
            store.append("long", events(*range(k * 500, k * 500 + 500)), ANY)
    with open_store(path) as store:
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


# -- starting afresh, checkpoints beside the log ---------------------------------------------------


def test_destroy_removes_a_store_so_the_next_open_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, segment_size=512) as store:
        for i in range(20):
            store.append("s", events(i))
        store.checkpoints().save("runner", 20)
    FileEventStore.destroy(path)
    assert not path.exists()
    with open_store(path) as store:
        assert store.last_position() == 0
        assert store.checkpoints().load("runner") == 0


def test_destroy_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(StoreFormatError, match="not deleting"):
        FileEventStore.destroy(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_checkpoints_live_beside_the_log(tmp_path: Path) -> None:
    with open_store(tmp_path / "store") as store:
        store.checkpoints().save("runner", 3)
    with open_store(tmp_path / "store") as store:
        assert store.checkpoints().load("runner") == 3


def test_is_store_tells_a_store_from_other_directories_without_creating_one(tmp_path: Path) -> None:
    assert not FileEventStore.is_store(tmp_path / "missing")
    assert not FileEventStore.is_store(tmp_path)
    with open_store(tmp_path / "store"):
        pass
    assert FileEventStore.is_store(tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing created on the way
