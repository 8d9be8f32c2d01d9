"""Helpers shared by the file store's test modules: opening stores, reading the files, I/O under test.

Timings and the I/O come in through the store's policy (``FilePolicy``), never by patching module
globals: :class:`IOUnderTest` is the store's I/O seam with hooks a test sets while the store runs.
The few reads of private state the tests still need (has the background checkpoint run, are the
index filters built) live here, named for what they wait for.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from orchestrix.core.errors import StoreFailedError
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file._format import FRAME_SIZE, LOCK_FILE, SEGMENT_HEADER_SIZE
from orchestrix.infrastructure.file._io import FileIO
from orchestrix.infrastructure.file._locator import Seen
from orchestrix.infrastructure.file._policy import FilePolicy
from orchestrix.testing import ContractEvent, contract_serializer

Hook = Callable[[int], None]


def open_store(
    path: Path,
    *,
    io: FileIO | None = None,
    lock_hold: float | None = None,
    lease: float | None = None,
    retake_pause: float | None = None,
    **options: object,
) -> FileEventStore:
    """A store on ``path`` with the contract serializer; the policy's fields as keywords."""
    given = {"io": io, "lock_hold": lock_hold, "lease": lease, "retake_pause": retake_pause}
    policy = FilePolicy(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    return FileEventStore(path, contract_serializer(), policy=policy, **options)  # type: ignore[arg-type]


def events(*numbers: int) -> list[NewEvent]:
    return [NewEvent(ContractEvent(n)) for n in numbers]


def numbers(store: FileEventStore, stream: str | None = None) -> list[int]:
    records = store.read_all() if stream is None else store.read_stream(stream)
    return [r.event.n for r in records]


def append_noting(store: FileEventStore, stream: str, number: int, outcomes: list[str]) -> None:
    """Append one event; note "stored", or "failed" if the store has failed."""
    try:
        store.append(stream, events(number))
        outcomes.append("stored")
    except StoreFailedError:
        outcomes.append("failed")


def in_thread(fn: Callable[[], object], timeout: float = 5.0) -> object:
    """Run ``fn`` in a thread; its result, its exception, or "HUNG" if it did not return in time."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["result"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return "HUNG" if thread.is_alive() else out["result"]


# -- the I/O seam under test -----------------------------------------------------------------------


class IOUnderTest(FileIO):
    """The store's I/O with hooks: ``sync_hook`` replaces every fdatasync while it is set.

    ``syncing`` is set once an fdatasync starts; :meth:`hold` makes every fdatasync wait until
    :meth:`release` (5 s at most); ``calls`` records every call that changes a file, in order,
    as (name, file name, detail), the way a power-loss test would replay them (a pwrite's
    detail: offset, bytes written, and whether they are data rather than reserved zeros).
    """

    def __init__(self) -> None:
        self.sync_hook: Hook | None = None
        self.syncing = threading.Event()
        self.calls: list[tuple[str, object, object]] = []
        self._gate = threading.Event()
        self._gate.set()
        self.paths: dict[int, str] = {}
        self.data_end: dict[int, int] = {}
        """Per file descriptor: where the last byte of data (not reserved zeros) written so far ends."""

    def hold(self) -> None:
        """Make every fdatasync wait until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:  # type: ignore[override]
        fd = os.open(path, flags, mode)
        self.paths[fd] = os.path.basename(path)
        self.calls.append(("open", os.path.basename(path), flags & os.O_CREAT != 0))
        return fd

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:  # type: ignore[override]
        written = os.pwrite(fd, data, offset)
        is_data = bool(bytes(data[:written]).strip(b"\0"))  # else: space reserved
        self.calls.append(("pwrite", self.paths.get(fd, fd), (offset, written, is_data)))
        if is_data:
            self.data_end[fd] = max(self.data_end.get(fd, 0), offset + written)
        return written

    def ftruncate(self, fd: int, size: int) -> None:  # type: ignore[override]
        os.ftruncate(fd, size)
        self.calls.append(("ftruncate", self.paths.get(fd, fd), size))

    def fsync(self, fd: int) -> None:  # type: ignore[override]
        os.fsync(fd)
        self.calls.append(("fsync", self.paths.get(fd, fd), os.fstat(fd).st_size))

    def fsync_directory(self, path: str) -> None:  # type: ignore[override]
        super().fsync_directory(path)
        self.calls.append(("fsync_directory", os.path.basename(path), None))

    def replace(self, src: str, dst: str) -> None:  # type: ignore[override]
        os.replace(src, dst)
        self.calls.append(("replace", os.path.basename(src), os.path.basename(dst)))

    def unlink(self, path: str) -> None:  # type: ignore[override]
        os.unlink(path)
        self.calls.append(("unlink", os.path.basename(path), None))

    def fdatasync(self, fd: int) -> None:  # type: ignore[override]
        self.syncing.set()
        self._gate.wait(5)
        hook = self.sync_hook
        if hook is None:
            self.fdatasync_now(fd)
        else:
            hook(fd)

    def fdatasync_now(self, fd: int) -> None:
        """The real fdatasync, recorded (what a hook calls to sync after all)."""
        os.fdatasync(fd)
        self.calls.append(("fdatasync", self.paths.get(fd, fd), os.fstat(fd).st_size))

    def syncs(self, name: str = "fdatasync") -> list[tuple[str, object, object]]:
        return [c for c in self.calls if c[0] == name]


def failing_sync(fd: int) -> None:
    raise OSError(5, "Input/output error")


class SlowSync:
    """A sync hook for ``io`` that takes ``delay`` longer; notes up to where it made the data durable.

    ``durable`` is the end of the data written before the latest finished sync started (what
    it certainly made durable); ``threads`` which thread ran each sync.
    """

    def __init__(self, io: IOUnderTest, delay: float) -> None:
        self.io = io
        self.delay = delay
        self.durable = 0
        self.count = 0
        self.threads: list[int] = []
        io.sync_hook = self

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        end = self.io.data_end.get(fd, 0)
        time.sleep(self.delay)
        os.fdatasync(fd)
        self.durable = max(self.durable, end)  # syncs may overlap and end in any order
        self.count += 1


# -- the files, read as docs/file-format.md describes them -------------------------------------------


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("segment-*.log"))


def record_offsets(segment: Path) -> list[int]:
    """Where each record of a segment starts (walking the frames as docs/file-format.md says)."""
    data = segment.read_bytes()
    offsets, at = [], SEGMENT_HEADER_SIZE
    while at < len(data) and data[at : at + 4] != bytes(4):  # zeros: preallocated, no record yet
        offsets.append(at)
        at += FRAME_SIZE + int.from_bytes(data[at + 8 : at + 12], "little")
    return offsets


def record_ends(segment: Path) -> dict[int, int]:
    """The offset just past each record of a single-segment store, by the record's first position."""
    data = segment.read_bytes()
    ends = {}
    for at in record_offsets(segment):
        position = int.from_bytes(data[at + 20 : at + 28], "little")
        ends[position] = at + FRAME_SIZE + int.from_bytes(data[at + 8 : at + 12], "little")
    return ends


def assert_lock_comes_free(path: Path, why: str, within: float = 5.0) -> None:
    """Another process could take the store's writer lock within ``within`` seconds.

    (A second open file description stands in for the other process: flock tells them apart.)
    """
    fd = os.open(path / LOCK_FILE, os.O_RDWR)
    try:
        take_lock(fd, why, within)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def take_lock(fd: int, why: str, within: float = 5.0) -> None:
    """Take the writer lock on ``fd`` (another process's LOCK file descriptor) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            assert time.monotonic() < deadline, why
            time.sleep(0.005)


# -- waiting for background work (the only private state read here) -----------------------------------


def flush_index(store: FileEventStore) -> None:
    """Run the index checkpoint now, as the background thread would (the test reads from the index)."""
    store._view.flush()


def index_covers(store: FileEventStore) -> int:
    """Up to which position the index covers the log: records after it are read from memory."""
    with store._view.state:
        return store._view.locator.bound


def wait_for_filters(store: FileEventStore) -> None:
    deadline = time.monotonic() + 30
    while not index_filters(store).ready:
        assert time.monotonic() < deadline, "the index filters were never built"
        time.sleep(0.01)


def index_filters(store: FileEventStore) -> Seen:
    """The store's filters over the indexed event ids and streams (white-box tests of the filters)."""
    return store._view.locator.seen


def wait_for_filter_build(store: FileEventStore) -> None:
    """Wait until a started build of the index filters has ended, whether it succeeded or not."""
    thread = index_filters(store)._thread
    if thread is not None:
        thread.join()
