"""Power loss: every disk state a POSIX file system may leave after a power cut opens correctly.

In the manner of ALICE and CrashMonkey. A small workload (appends of batches of 1 to 10 events
to three streams, a quarter of them multi-stream appends over two or three of the streams, with
segment rolls and index checkpoints) runs once against a real store
whose I/O seam (:class:`~orchestrix.infrastructure.file._io.FileIO`) records every file
creation, write, truncation, sync, rename, removal and directory sync, and when each append was
acknowledged. Then, at every sync point (just before each fsync, fdatasync or directory fsync,
and at the end), the test builds the disk states a power cut may leave, per the model below,
opens each with a fresh store, and checks that:

* every batch acknowledged before the cut is there, whole, where it was;
* the events form a prefix of the batches in log order: no unacknowledged batch half-visible,
  nothing else (positions and every stream's versions gapless, ids, streams and payloads right);
* the store opens (a power cut is no damage: no state may raise CorruptionError), and for
  every 25th state, still takes an append.

The model (what a power cut may keep of what was not yet synced):

* a file's data since its last fsync/fdatasync: any prefix of its writes and truncations, any
  of them left out (later ones kept: reordering), and the last kept write torn at 512-byte
  sectors (any subset of its sectors, unwritten ones reading as zeros);
* directory entries (created, renamed or removed files) since the directory's last fsync: any
  prefix of those operations (a newly created file missing, with its data, unless its
  directory was synced);
* HEAD (a memory-mapped hint, never synced): any value it ever held up to the cut, or zeros;
* the index (SQLite, not through the seam): lost; each state rebuilds it from the log.

Where one sync point has more states than its share of the budget, a seeded sample is taken
(always with the extremes: nothing kept, everything kept). ``ORCHESTRIX_POWER_LOSS_STATES``
sets the budget (default 10,000 distinct states; e.g. 100000 for the long run, which also runs a
longer workload).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from orchestrix.core.eventsourcing.store import ANY, AppendResult, StreamAppend
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file._io import FileIO
from orchestrix.infrastructure.file._policy import FilePolicy
from orchestrix.testing import ContractEvent, contract_serializer
from tests.infrastructure.file_support import events

STATES = int(os.environ.get("ORCHESTRIX_POWER_LOSS_STATES", "10000"))
APPENDS = 120 if STATES <= 10000 else 400
SECTOR = 512
SEGMENT_SIZE = 2048
APPEND_CHECK_EVERY = 25


# -- recording the workload ------------------------------------------------------------------------


class Op(NamedTuple):
    kind: str  # open, write, truncate, sync, dirsync, rename, unlink, head, ack
    name: str = ""
    offset: int = 0
    data: bytes = b""
    other: str = ""
    fd: int = -1


class RecordingIO(FileIO):
    """The store's I/O, done for real and recorded in order."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ops: list[Op] = []
        self.positions: dict[int, int] = {}  # for write(): each fd's file position
        self._head = b""

    def _note_head(self) -> None:
        try:
            with open(os.path.join(self.directory, "HEAD"), "rb") as f:
                head = f.read(32)
        except FileNotFoundError:
            return
        if head != self._head:
            self._head = head
            self.ops.append(Op("head", data=head))

    def _record(self, op: Op) -> None:
        self._note_head()
        self.ops.append(op)

    def ack(self, batch: int) -> None:
        self._note_head()
        self.ops.append(Op("ack", offset=batch))

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:  # type: ignore[override]
        existed = os.path.exists(path)
        fd = os.open(path, flags, mode)
        created = bool(flags & os.O_CREAT) and not existed
        self._record(Op("open", os.path.basename(path), int(created), fd=fd))
        if flags & os.O_TRUNC and existed:
            self._record(Op("truncate", os.path.basename(path), 0, fd=fd))
        self.positions[fd] = 0
        return fd

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:  # type: ignore[override]
        written = os.pwrite(fd, data, offset)
        self._record(Op("write", offset=offset, data=bytes(data[:written]), fd=fd))
        return written

    def write(self, fd: int, data: bytes | memoryview) -> int:  # type: ignore[override]
        written = os.write(fd, data)
        offset = self.positions.get(fd, 0)
        self.positions[fd] = offset + written
        self._record(Op("write", offset=offset, data=bytes(data[:written]), fd=fd))
        return written

    def ftruncate(self, fd: int, size: int) -> None:  # type: ignore[override]
        os.ftruncate(fd, size)
        self._record(Op("truncate", offset=size, fd=fd))

    def fsync(self, fd: int) -> None:  # type: ignore[override]
        os.fsync(fd)
        self._record(Op("sync", fd=fd))

    def fdatasync(self, fd: int) -> None:  # type: ignore[override]
        os.fdatasync(fd)
        self._record(Op("sync", fd=fd))

    def fsync_directory(self, path: str) -> None:  # type: ignore[override]
        super().fsync_directory(path)
        self._record(Op("dirsync"))

    def replace(self, src: str, dst: str) -> None:  # type: ignore[override]
        os.replace(src, dst)
        self._record(Op("rename", os.path.basename(src), other=os.path.basename(dst)))

    def unlink(self, path: str) -> None:  # type: ignore[override]
        os.unlink(path)
        self._record(Op("unlink", os.path.basename(path)))


def _batch_numbers(batch: int, size: int) -> list[int]:
    return [batch * 100 + i for i in range(size)]


class Workload(NamedTuple):
    ops: list[Op]
    log: list[tuple[tuple[str, bytes], uuid.UUID, str, int, int]]
    """Every event appended, in log order: (type name and stored JSON, id, stream, version, position)."""
    numbers: list[int]
    """Each event's number (``ContractEvent(n)``), in log order."""
    ends: list[int]
    """``ends[k]``: how many events the first k batches hold."""


def _run_workload(directory: str, appends: int) -> Workload:
    io = RecordingIO(directory)
    rng = random.Random(14)
    batch_sizes: list[int] = []
    spread_batches = 0
    store = FileEventStore(
        directory,
        contract_serializer(),
        segment_size=SEGMENT_SIZE,
        checkpoint_events=16,  # index checkpoints run during the workload, as in production
        policy=FilePolicy(io=io, reserve_margin=0),
    )
    serializer = contract_serializer()
    log: list[tuple[tuple[str, bytes], uuid.UUID, str, int, int]] = []
    numbers: list[int] = []
    versions: dict[str, int] = {}
    with store:
        for batch in range(appends):
            # a quarter of the batches are multi-stream appends over two or three streams: one
            # write and one sync, so a cut keeps all of their streams' events or none of them
            streams = [f"s-{k}" for k in range(3)]
            rng.shuffle(streams)
            spread = rng.choice([2, 2, 3]) if rng.randrange(4) == 0 else 1
            first = 0
            parts: list[tuple[str, list[int]]] = []
            for stream in streams[:spread]:
                size = rng.choice([1, 1, 1, 1, 2, 10]) if spread == 1 else rng.choice([1, 1, 2])
                parts.append((stream, _batch_numbers(batch, first + size)[first:]))
                first += size
            appended = [(stream, part, events(*part)) for stream, part in parts]
            if spread == 1:
                ((stream, _, batch_events),) = appended
                results: tuple[AppendResult, ...] = (store.append(stream, batch_events, ANY),)
            else:
                results = store.append_many([StreamAppend(s, e, ANY) for s, _, e in appended])
            io.ack(batch)
            for (stream, part, batch_events), result in zip(appended, results, strict=True):
                for n, event, version, position in zip(
                    part, batch_events, result.versions, result.positions, strict=True
                ):
                    assert version == versions.get(stream, -1) + 1 and position == len(log) + 1
                    versions[stream] = version
                    log.append((_stored(serializer, n), event.event_id, stream, version, position))
                    numbers.append(n)
            batch_sizes.append(first)
            spread_batches += spread > 1
    assert spread_batches >= appends // 8, f"only {spread_batches} multi-stream batches"
    ends = [0]
    for size in batch_sizes:
        ends.append(ends[-1] + size)
    return Workload(io.ops, log, numbers, ends)


# -- the file system model -------------------------------------------------------------------------


class Inode:
    __slots__ = ("durable", "pending")

    def __init__(self) -> None:
        self.durable = bytearray()
        self.pending: list[Op] = []


def _apply(content: bytearray, op: Op, sectors: set[int] | None = None) -> None:
    """Apply a write or truncation; ``sectors``: only those 512-byte sectors of a write."""
    if op.kind == "truncate":
        del content[op.offset :]
        content.extend(bytes(op.offset - len(content)))
        return
    start, data = op.offset, op.data
    if sectors is None:
        pieces = [(start, data)]
    else:
        pieces = []
        for s in sectors:
            lo, hi = max(start, s * SECTOR), min(start + len(data), (s + 1) * SECTOR)
            pieces.append((lo, data[lo - start : hi - start]))
    for at, piece in pieces:
        if len(content) < at + len(piece):
            content.extend(bytes(at + len(piece) - len(content)))
        content[at : at + len(piece)] = piece


def _sectors(op: Op) -> list[int]:
    return list(range(op.offset // SECTOR, (op.offset + len(op.data) - 1) // SECTOR + 1))


def _data_variants(inode: Inode, rng: random.Random) -> list[bytes]:
    """The contents a power cut may leave of one file: see the module docstring."""
    pending = inode.pending
    outcomes: list[list[tuple[Op, set[int] | None]]] = []
    for p in range(len(pending) + 1):  # in order: every prefix
        outcomes.append([(op, None) for op in pending[:p]])
        if p < len(pending) and pending[p].kind == "write":  # and the next write torn
            sectors = _sectors(pending[p])
            subsets = [set(c) for r in range(1, len(sectors)) for c in itertools.combinations(sectors, r)]
            if len(subsets) > 6:
                subsets = rng.sample(subsets, 6)
            outcomes.extend([*[(op, None) for op in pending[:p]], (pending[p], s)] for s in subsets)
    for i in range(len(pending) - 1):  # reordered: one left out, the later ones kept
        outcomes.append([(op, None) for k, op in enumerate(pending) if k != i])
    contents = []
    for outcome in outcomes:
        content = bytearray(inode.durable)
        for op, sectors in outcome:
            _apply(content, op, sectors)
        contents.append(bytes(content))
    return list(dict.fromkeys(contents))


class Model:
    """The durable and the pending state of the store directory, op by op."""

    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {}
        self.durable_dir: dict[str, int] = {}
        self.live_dir: dict[str, int] = {}
        self.pending_dir: list[Op] = []
        self.fds: dict[int, int] = {}
        self.heads: list[bytes] = [bytes(32)]

    def step(self, op: Op) -> None:
        if op.kind == "open":
            if op.offset:  # created
                ino = len(self.inodes) + 1
                self.inodes[ino] = Inode()
                self.live_dir[op.name] = ino
                self.pending_dir.append(Op("create", op.name, ino))
            self.fds[op.fd] = self.live_dir[op.name]
        elif op.kind in ("write", "truncate"):
            self.inodes[self.fds[op.fd]].pending.append(op)
        elif op.kind == "sync":
            inode = self.inodes[self.fds[op.fd]]
            for pending in inode.pending:
                _apply(inode.durable, pending)
            inode.pending = []
        elif op.kind == "dirsync":
            self.durable_dir = _apply_dir(self.durable_dir, self.pending_dir)
            self.pending_dir = []
        elif op.kind == "rename":
            self.live_dir[op.other] = self.live_dir.pop(op.name)
            self.pending_dir.append(op)
        elif op.kind == "unlink":
            del self.live_dir[op.name]
            self.pending_dir.append(op)
        elif op.kind == "head":
            self.heads.append(op.data)

    def states(self, rng: random.Random) -> Iterator[dict[str, bytes]]:
        """Disk states a power cut now may leave: the extremes first, then the rest in a seeded order."""
        dirs = [_apply_dir(self.durable_dir, self.pending_dir[:p]) for p in range(len(self.pending_dir) + 1)]
        inos = sorted({ino for d in dirs for ino in d.values()})
        variants = {ino: _data_variants(self.inodes[ino], rng) for ino in inos}
        heads = list(dict.fromkeys(self.heads))
        axes = [len(dirs), len(heads), *[len(variants[ino]) for ino in inos]]
        total = 1
        for axis in axes:
            total *= axis
        first = tuple(0 for _ in axes)
        last = tuple(axis - 1 for axis in axes)
        if total <= 4096:
            rest = [p for p in itertools.product(*map(range, axes)) if p not in (first, last)]
            rng.shuffle(rest)
            picks: Iterator[tuple[int, ...]] = iter([first, last, *rest])
        else:
            picks = _sampled(axes, first, last, rng)
        for pick in picks:
            entries = dirs[pick[0]]
            contents = {ino: variants[ino][k] for ino, k in zip(inos, pick[2:], strict=True)}
            files = {name: contents[ino] for name, ino in entries.items()}
            if "HEAD" in files:
                files["HEAD"] = heads[pick[1]] + bytes(4096 - 32)
            yield files


def _sampled(
    axes: list[int], first: tuple[int, ...], last: tuple[int, ...], rng: random.Random
) -> Iterator[tuple[int, ...]]:
    yield first
    yield last
    seen = {first, last}
    misses = 0
    while misses < 1000:
        pick = tuple(rng.randrange(axis) for axis in axes)
        if pick in seen:
            misses += 1
            continue
        seen.add(pick)
        yield pick


def _apply_dir(entries: dict[str, int], ops: list[Op]) -> dict[str, int]:
    out = dict(entries)
    for op in ops:
        if op.kind == "create":
            out[op.name] = op.offset
        elif op.kind == "rename":
            if op.name in out:
                out[op.other] = out.pop(op.name)
        elif op.kind == "unlink":
            out.pop(op.name, None)
    return out


# -- checking a state ------------------------------------------------------------------------------


class _Payloads:
    """A serializer that decodes nothing: reads yield each event's stored JSON, compared as bytes.

    (Decoding every event of every state would cost more than opening the store; the payloads
    are checked exactly all the same.)
    """

    def decode(self, type_name: str, payload: bytes) -> tuple[str, bytes]:
        return type_name, bytes(payload)


def _stored(serializer: Serializer, n: int) -> tuple[str, bytes]:
    """What a stored ContractEvent(n) reads as through :class:`_Payloads`."""
    type_name, payload = serializer.encode(ContractEvent(n))
    return type_name, bytes(payload)


def _check_state(
    directory: Path,
    files: dict[str, bytes],
    work: Workload,
    boundaries: set[int],
    serializer: Serializer,
    acked: int,
    append: bool,
) -> None:
    for name in os.listdir(directory):
        os.unlink(directory / name)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    reading = _Payloads() if not append else serializer
    with FileEventStore(directory, reading, segment_size=SEGMENT_SIZE) as store:  # type: ignore[arg-type]
        got = [(r.event, r.event_id, r.stream, r.version, r.position) for r in store.read_all()]
        n = len(got)
        expected = work.log[:n]
        if append:  # decoded events: compare them with the events appended
            expected = [(ContractEvent(work.numbers[i]), *rest) for i, (_, *rest) in enumerate(expected)]
        where = f"{sorted((k, len(v)) for k, v in files.items())}, {acked} batches acknowledged"
        assert got == expected, f"{where}: the events are not the first {n} appended"
        assert n in boundaries, f"{where}: a batch is partly visible ({n} events)"
        assert n >= work.ends[acked], f"{where}: acknowledged events are missing ({n} events)"
        assert store.last_position() == n
        versions = {stream: version for _, _, stream, version, _ in got}
        for stream, version in versions.items():
            assert store.stream_version(stream) == version
        if append:
            result = store.append("s-new", [ContractEvent(-1)])
            assert result.positions == (n + 1,)
            assert [r.event.n for r in store.read_all(n)] == [-1]


def test_every_disk_state_a_power_cut_may_leave_opens_to_the_acknowledged_batches() -> None:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    serializer = contract_serializer()  # one for every state: building its decoders costs more than a state
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = _run_workload(os.path.join(tmp, "store"), APPENDS)
        boundaries = set(work.ends)
        points = sum(op.kind in ("sync", "dirsync") for op in work.ops) + 1
        rng = random.Random(8)
        model = Model()
        seen: set[bytes] = set()
        checked = acked = point = 0
        directory = Path(tmp, "state")
        directory.mkdir()
        for op in [*work.ops, Op("end")]:
            if op.kind in ("sync", "dirsync", "end"):
                # this point's share of what is left of the budget (a point with few states leaves
                # the rest to the later ones, which have more pending writes and HEAD values)
                share = max(1, (STATES - checked) // (points - point))
                point += 1
                found = 0
                for files in model.states(rng):
                    key = hashlib.blake2b(repr(sorted(files.items())).encode(), digest_size=16).digest()
                    if key in seen:
                        continue
                    seen.add(key)
                    checked += 1
                    found += 1
                    append = checked % APPEND_CHECK_EVERY == 0
                    _check_state(directory, files, work, boundaries, serializer, acked, append)
                    if found >= share:
                        break
            if op.kind == "ack":
                acked = op.offset + 1
            model.step(op)
        shutil.rmtree(directory)
    print(f"power loss: {checked:,} distinct crash states at {points} sync points")
    assert acked == APPENDS
    assert checked >= STATES, f"only {checked} distinct states"
