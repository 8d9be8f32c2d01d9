"""A file store opened read-only: no writer lock, nothing written or repaired, writes refused."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrix.cli import main
from orchestrix.core.errors import StoreFormatError
from orchestrix.infrastructure.file import FileEventStore, ReadOnlyStoreError
from orchestrix.testing import contract_serializer
from tests.infrastructure.file_support import (
    events,
    in_thread,
    numbers,
    open_store,
    record_offsets,
    segments,
    snapshot,
)

_WRITER = """
import fcntl, os, sys
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.testing import ContractEvent, contract_serializer

store = FileEventStore(sys.argv[1], contract_serializer(), segment_size=1024)
n, lock = 0, -1
for line in sys.stdin:  # each line: append that many events, then hold the writer lock, say so
    if lock >= 0:
        os.close(lock)  # let the store take it again
    for _ in range(int(line)):
        store.append(f"s-{n % 3}", [ContractEvent(n)])
        n += 1
    lock = os.open(os.path.join(sys.argv[1], "LOCK"), os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a writer mid-commit holds it (flock: per open file)
    print(n, flush=True)
os.close(lock)
store.close()
"""


def _read_only(path: Path) -> FileEventStore:
    return FileEventStore(path, contract_serializer(), read_only=True)


def test_a_read_only_open_beside_a_live_writer_reads_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write("30\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "30"
        lock = os.open(path / "LOCK", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # the writer holds the lock: a writer would wait
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(lock)
        before = snapshot(path)
        # the command: inspect, verify and tail, while the writer holds its lock
        # (a command that waited for the lock would hang: in_thread says "HUNG" after 20 s)
        assert in_thread(lambda: main(["inspect", str(path), "--json"]), 20) == 0
        assert json.loads(capsys.readouterr().out)["count"] == 30
        assert in_thread(lambda: main(["verify", str(path), "--json"]), 20) == 0
        assert json.loads(capsys.readouterr().out)["count"] == 30
        assert in_thread(lambda: main(["tail", str(path), "-n", "2", "--json"]), 20) == 0
        assert [json.loads(line)["position"] for line in capsys.readouterr().out.splitlines()] == [29, 30]
        assert snapshot(path) == before
        with _read_only(path) as store:
            assert numbers(store) == list(range(30))
            assert numbers(store, "s-1") == list(range(1, 30, 3))
            assert store.stream_version("s-2") == 9
            assert store.verify() == 30
            seen = []
            store.verify(progress=lambda n, total: seen.append((n, total)))
            assert seen[-1] == (30, 30) and len(seen) == 30
            assert store.checkpoints().load("runner") == 0
        assert snapshot(path) == before  # not a byte written, not a file created
        with _read_only(path) as store:  # and it follows what the writer appends next
            writer.stdin.write("5\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "35"
            assert store.wait_for_events(30, 5.0)
            assert [e.position for e in store.read_all(30)] == [31, 32, 33, 34, 35]
            before = snapshot(path)
        assert snapshot(path) == before
    finally:
        if writer.stdin is not None:
            writer.stdin.close()
        writer.wait(30)
        if writer.stdout is not None:
            writer.stdout.close()
    assert writer.returncode == 0


def test_a_read_only_open_never_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s", events(1, 2))
        store.append("s", events(3))
    (segment,) = segments(path)
    data = segment.read_bytes()
    torn = data[: record_offsets(segment)[-1] + 30]  # the last write torn, as a crash leaves it
    segment.write_bytes(torn)
    for name in ("HEAD", "index.sqlite3"):
        (path / name).unlink()
    before = snapshot(path)
    with _read_only(path) as store:
        assert numbers(store) == [1, 2]
        assert store.last_position() == 2
    assert snapshot(path) == before
    with open_store(path) as store:  # a writer repairs it
        assert numbers(store) == [1, 2]
    assert len(segment.read_bytes()) < len(torn)


def test_a_read_only_store_refuses_appends_and_checkpoint_saves(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s", events(1))
        store.checkpoints().save("runner", 1)
    before = snapshot(path)
    with _read_only(path) as store:
        with pytest.raises(ReadOnlyStoreError, match="cannot append: the file store"):
            store.append("s", events(2))
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            asyncio.run(store.append_async("s", events(2)))
        with pytest.raises(ReadOnlyStoreError, match="cannot save checkpoint 'runner'"):
            store.checkpoints().save("runner", 2)
        assert store.checkpoints().load("runner") == 1
        assert numbers(store) == [1]
    assert snapshot(path) == before


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "foreign"])
def test_a_read_only_open_of_no_store_creates_nothing(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "store"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_bytes(b"x")
    elif kind == "foreign":
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError):
        _read_only(path)
    if kind == "missing":
        assert not path.exists()
    elif kind == "empty":
        assert list(path.iterdir()) == []


def test_a_read_only_open_builds_its_index_in_memory_when_the_file_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, segment_size=1024, checkpoint_events=4) as store:
        for n in range(40):
            store.append(f"s-{n % 4}", events(n))
    (path / "index.sqlite3").write_bytes(b"not a database" * 100)
    before = snapshot(path)
    with FileEventStore(path, contract_serializer(), read_only=True, checkpoint_events=4) as store:
        assert numbers(store) == list(range(40))
        assert numbers(store, "s-3") == list(range(3, 40, 4))
        assert [e.event.n for e in store.read_all(20, 3)] == [20, 21, 22]
    assert snapshot(path) == before
