"""The file store when a write or a sync fails: it fails, and refuses every later append until reopened."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from orchestrix.core.errors import ConcurrencyError, StoreClosedError, StoreFailedError
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM
from tests.infrastructure.file_support import (
    IOUnderTest,
    append_noting,
    assert_lock_comes_free,
    events,
    failing_sync,
    numbers,
    open_store,
)


def test_a_failed_fsync_poisons_the_store_until_reopened(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = IOUnderTest()
    store = open_store(path, io=io)
    store.append("s-1", events(0), NO_STREAM)
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        failing_sync(fd)

    io.sync_hook = failing
    with pytest.raises(StoreFailedError, match="failed to sync"):
        store.append("s-1", events(1), 0)
    io.sync_hook = None
    with pytest.raises(StoreFailedError):
        store.append("s-1", events(2), ANY)  # never retry an fsync and carry on
    assert len(calls) == 1
    assert numbers(store, "s-1") == [0]  # reads still work, and never show the unsynced record
    store.close()
    with open_store(path) as store:
        stored = numbers(store, "s-1")
        assert stored in ([0], [0, 1])  # the failed append's outcome is unknown, never partial
        assert store.append("s-1", events(3), len(stored) - 1).versions == (len(stored),)


def test_a_failed_store_lets_go_of_the_writer_lock_when_its_last_writer_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group's sync fails while the next writer is starting: that writer writes nothing, and no
    # group completes after it. Other processes must still get the lock, before close().
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io, lock_hold=60.0)  # only the failure may let go
    store.append("s-0", events(0), NO_STREAM)
    commits = store._commits
    release_sync, failed = threading.Event(), threading.Event()
    real_write_group = commits._write_group

    def sync_fails(fd: int) -> None:
        release_sync.wait(5)
        failed.set()  # the store fails as this raises
        failing_sync(fd)

    def write_group() -> object:
        if threading.current_thread().name.startswith("late"):
            failed.wait(5)
            time.sleep(0.2)  # the failed group completes while this writer is still "writing"
        return real_write_group()

    monkeypatch.setattr(commits, "_write_group", write_group)
    io.sync_hook = sync_fails
    outcomes: list[str] = []

    def writer(k: int) -> None:
        append_noting(store, f"s-{k}", k, outcomes)

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
    assert_lock_comes_free(tmp_path / "store", "a failed store kept the writer lock")
    store.close()


def test_a_failed_fsync_fails_the_groups_written_after_it(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = IOUnderTest()
    store = open_store(path, io=io)
    first = threading.Event()

    def first_fails(fd: int) -> None:
        if not first.is_set():
            first.set()
            time.sleep(0.05)  # the next group is written and synced meanwhile
            failing_sync(fd)
        io.fdatasync_now(fd)

    io.sync_hook = first_fails
    outcomes: list[str] = []

    def writer(me: int) -> None:
        append_noting(store, f"w-{me}", me, outcomes)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert outcomes == ["failed"] * 6  # nothing after a failed sync is acknowledged
    assert store.last_position() == 0
    store.close()
    with open_store(path) as again:  # the records did reach the page cache: reopening may adopt them
        assert [r.position for r in again.read_all()] == list(range(1, again.last_position() + 1))


def test_asyncio_appends_fail_like_sync_ones(tmp_path: Path) -> None:
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io)

    async def scenario() -> None:
        await store.append_async("s", events(1), NO_STREAM)
        with pytest.raises(ConcurrencyError):
            await store.append_async("s", events(2), NO_STREAM)
        io.sync_hook = failing_sync
        with pytest.raises(StoreFailedError, match="failed to sync"):
            await store.append_async("s", events(3), 0)
        with pytest.raises(StoreFailedError):
            await store.append_async("s", events(4), ANY)

    asyncio.run(scenario())
    store.close()
    with pytest.raises(StoreClosedError):
        asyncio.run(store.append_async("s", events(5)))
