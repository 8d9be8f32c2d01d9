"""A damaged file store never reads as valid: copied records, missing segments, a full disk."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrix.core.errors import CorruptionError
from orchestrix.core.execution.subscription import subscribe, subscribe_async
from orchestrix.infrastructure.file._format import SEGMENT_HEADER_SIZE
from orchestrix.infrastructure.file._io import FileIO
from orchestrix.infrastructure.file._policy import DEFAULT_POLICY
from tests.infrastructure.file_support import events, numbers, open_store, record_offsets, segments, snapshot

# -- a CRC-valid record where it does not belong ---------------------------------------------------


def _store_with_copied_record(path: Path) -> tuple[Path, int]:
    """Two segments; record 1 copied to the end of the full first one. Returns (segment, offset)."""
    with open_store(path, segment_size=1024) as store:
        for i in range(14):
            store.append(f"s-{i % 3}", events(i))
    first = segments(path)[0]
    assert len(segments(path)) >= 2
    data = first.read_bytes()
    at = record_offsets(first)[0]
    size = 12 + int.from_bytes(data[at + 8 : at + 12], "little")
    first.write_bytes(data + data[at : at + size])
    return first, len(data)


def test_a_record_copied_to_the_end_of_a_full_segment_is_corruption_on_every_read_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    first, at = _store_with_copied_record(path)

    def refused(read: object) -> None:
        with pytest.raises(CorruptionError) as raised:
            list(read)  # type: ignore[call-overload]
        assert (raised.value.path, raised.value.offset) == (str(first), at)
        assert "record starts at position 1" in raised.value.reason

    with open_store(path, segment_size=1024) as store:
        refused(store.read_all())
        refused(store.read_all(3))
        refused(subscribe(store, 0, idle_timeout=0.01))
        with pytest.raises(CorruptionError):
            store.verify()

        async def read_async() -> list[int]:
            got = [e.position async for e in store.read_all_async()]
            async for e in subscribe_async(store, 0, idle_timeout=0.01):
                got.append(e.position)
            return got

        with pytest.raises(CorruptionError) as raised:
            asyncio.run(read_async())
        assert (raised.value.path, raised.value.offset) == (str(first), at)
        assert numbers(store, "s-0")[:2] == [0, 3]  # streams read through the index still read
    # without the index, opening scans the log and refuses it
    (path / "index.sqlite3").unlink()
    (path / "HEAD").unlink()
    with pytest.raises(CorruptionError) as raised:
        open_store(path, segment_size=1024)
    assert (raised.value.path, raised.value.offset) == (str(first), at)


# -- a log shorter than it was -------------------------------------------------------------------


def _store_of_segments(path: Path) -> list[Path]:
    with open_store(path, segment_size=1024) as store:
        for i in range(20):
            store.append(f"s-{i % 3}", events(i))
    found = segments(path)
    assert len(found) >= 3
    return found


@pytest.mark.parametrize("index", ["kept", "dropped"])
def test_a_deleted_last_segment_is_corruption_naming_it(tmp_path: Path, index: str) -> None:
    path = tmp_path / "store"
    last = _store_of_segments(path)[-1]
    last.unlink()
    if index == "dropped":
        (path / "index.sqlite3").unlink()
    before = _log_files(path)
    with pytest.raises(CorruptionError, match="segment file missing from the log") as raised:
        open_store(path, segment_size=1024)
    assert raised.value.path == str(last)
    assert "says position 20 was stored" in raised.value.reason
    assert _log_files(path) == before  # nothing cut, no segment created, HEAD as it was


def _log_files(path: Path) -> dict[str, bytes]:
    """The store's files but the index (derived: an open may create an empty one)."""
    return {k: v for k, v in snapshot(path).items() if not k.startswith("index.sqlite3")}


def test_every_segment_deleted_is_corruption_not_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    for segment in _store_of_segments(path):
        segment.unlink()
    (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError, match="missing"):
        open_store(path, segment_size=1024)
    assert segments(path) == []


@pytest.mark.parametrize("index", ["kept", "dropped"])
def test_a_last_segment_cut_short_is_corruption_not_a_torn_write(tmp_path: Path, index: str) -> None:
    path = tmp_path / "store"
    last = _store_of_segments(path)[-1]
    offsets = record_offsets(last)
    data = last.read_bytes()
    last.write_bytes(data[: offsets[-1] + 5])  # the last acknowledged record loses its end
    if index == "dropped":
        (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError, match="says position 20 was stored") as raised:
        open_store(path, segment_size=1024)
    assert raised.value.path == str(last)
    assert last.read_bytes() == data[: offsets[-1] + 5]


# -- a full disk -----------------------------------------------------------------------------------

MARGIN = DEFAULT_POLICY.reserve_margin


class _NearlyFullDisk(FileIO):
    """The store's I/O on a disk with ``free`` bytes left; ``zeros_fail_after`` cuts a reservation short."""

    def __init__(self, free: int, zeros_fail_after: int | None = None) -> None:
        self.free = free
        self.zeros_fail_after = zeros_fail_after
        self.zeros = 0

    def statvfs(self, path: str) -> os.statvfs_result:  # type: ignore[override]
        real = os.statvfs(path)
        fields = list(real)
        fields[0] = fields[1] = 4096  # f_bsize, f_frsize
        fields[3] = fields[4] = self.free // 4096  # f_bfree, f_bavail
        return os.statvfs_result(fields)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:  # type: ignore[override]
        if self.zeros_fail_after is not None and not bytes(data).strip(b"\0"):
            room = self.zeros_fail_after - self.zeros
            if room <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            data = data[:room]
            self.zeros += len(data)
        return os.pwrite(fd, data, offset)


def _records_end(segment: Path) -> int:
    offsets = record_offsets(segment)
    data = segment.read_bytes()
    return offsets[-1] + 12 + int.from_bytes(data[offsets[-1] + 8 : offsets[-1] + 12], "little")


@pytest.mark.parametrize(
    ("free", "reserved"),
    [(MARGIN + (1 << 20), 1 << 20), (MARGIN // 2, 0), (MARGIN + (64 << 20), 4 << 20)],
    ids=["1 MiB above the margin", "below the margin", "plenty"],
)
def test_a_reservation_never_takes_the_space_the_store_needs(
    tmp_path: Path, free: int, reserved: int
) -> None:
    path = tmp_path / "store"
    with open_store(path, io=_NearlyFullDisk(free)) as store:
        store.append("s", events(1))
        (segment,) = segments(path)
        size = segment.stat().st_size
        if reserved:
            assert size == SEGMENT_HEADER_SIZE + reserved
        else:
            assert size == _records_end(segment)  # no reservation: the file grows with its records
        store.append("s", events(2))
    with open_store(path) as store:
        assert numbers(store) == [1, 2]


def test_a_reservation_cut_short_by_a_full_disk_gives_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, io=_NearlyFullDisk(1 << 40, zeros_fail_after=65536)) as store:
        store.append("s", events(1))
        (segment,) = segments(path)
        assert segment.stat().st_size == _records_end(segment)  # not 64 KiB of zeros kept
        store.append("s", events(2))
        assert numbers(store) == [1, 2]


_FSIZE_SCRIPT = """
import os, resource, signal, sys
from orchestrix.core.errors import OrchestrixError, StoreFailedError
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.testing import ContractEvent, contract_serializer

path = sys.argv[1]
store = FileEventStore(path, contract_serializer())
store.append("s", [ContractEvent(1)])
checkpoints = store.checkpoints()
checkpoints.save("runner", 1)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (400, 400))
outcomes = []
try:
    for i in range(100):  # the file grows past the limit
        checkpoints.save(f"another-runner-{i:03d}", 2)
    outcomes.append("saved")
except OrchestrixError as exc:
    outcomes.append(type(exc).__name__)
try:
    for i in range(2, 200):
        store.append("s", [ContractEvent(i)])
    outcomes.append("appended")
except OrchestrixError as exc:
    outcomes.append(type(exc).__name__)
store.close()
outcomes.append("closed")
print(" ".join(outcomes))
print(" ".join(sorted(os.listdir(path))))
"""


def test_a_file_size_limit_fails_every_write_path_with_an_error_of_the_tree(tmp_path: Path) -> None:
    path = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", _FSIZE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    outcomes, files = done.stdout.splitlines()
    assert outcomes == "StoreFailedError StoreFailedError closed"
    assert "checkpoints.json.tmp" not in files.split()
    with open_store(path) as store:
        stored = numbers(store)
        assert stored == list(range(1, len(stored) + 1))  # whole batches, gapless
        assert store.checkpoints().load("runner") == 1
        store.append("s", events(999))
