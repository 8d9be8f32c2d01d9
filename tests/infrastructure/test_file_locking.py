"""The file store shared by processes: the writer lock, its lease, and seeing other processes' appends."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from orchestrix.core.errors import (
    ConcurrencyError,
)
from orchestrix.core.eventsourcing.store import NO_STREAM
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file._policy import DEFAULT_POLICY, FilePolicy
from tests.infrastructure import file_workers
from tests.infrastructure.file_support import (
    assert_lock_comes_free,
    events,
    numbers,
    open_store,
)

# -- several processes -----------------------------------------------------------------------------


def test_two_processes_racing_on_expected_versions_have_one_winner_per_round(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    open_store(Path(path)).close()
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
    with open_store(tmp_path / "s") as one, open_store(tmp_path / "s") as two:
        one.append("a", events(1), NO_STREAM)
        with pytest.raises(ConcurrencyError):
            two.append("a", events(2), NO_STREAM)
        two.append("a", events(2), 0)
        assert numbers(one, "a") == [1, 2]
        assert one.wait_for_events(1, 5.0) is True


def test_async_waiters_wake_on_an_append_in_this_process(tmp_path: Path) -> None:
    with open_store(tmp_path / "store") as store:

        async def scenario() -> bool:
            waiting = asyncio.create_task(store.wait_for_events_async(0, 30.0))
            await asyncio.sleep(0.01)
            await store.append_async("s", events(1))
            return await waiting

        assert asyncio.run(scenario()) is True


# -- the writer lock lease -------------------------------------------------------------------------


def test_after_a_long_burst_the_writer_lock_is_let_go(tmp_path: Path) -> None:
    # The keeper looks less often while appends go on; once they stop it must still let go.

    with open_store(tmp_path / "store", sync=False) as store:
        started = time.monotonic()
        k = 0
        while time.monotonic() - started < 4 * DEFAULT_POLICY.lock_hold:
            store.append(f"s-{k % 4}", events(k))
            k += 1
        assert_lock_comes_free(tmp_path / "store", "the idle store never let go of the writer lock")


def test_between_sparse_appends_the_writer_lock_is_free_for_other_processes(tmp_path: Path) -> None:
    # Appends every 1.5 leases: an idle stretch reaches the lease before the next one, so another
    # process taking the lock waits about a lease, not until the busy process's lock hold ends.
    import fcntl
    import statistics

    from orchestrix.infrastructure.file._format import LOCK_FILE

    policy = FilePolicy(lock_hold=0.5)
    stop = threading.Event()
    with open_store(tmp_path / "store", sync=False, lock_hold=policy.lock_hold) as store:

        def append_now_and_then() -> None:
            k = 0
            while not stop.is_set():
                store.append(f"s-{k % 4}", events(k))
                k += 1
                time.sleep(1.5 * policy.lease)

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
    assert statistics.median(waits) < 0.1 * policy.lock_hold, [round(w, 4) for w in waits]


def test_a_process_that_never_pauses_still_lets_another_one_write(tmp_path: Path) -> None:
    # flock is not fair: a busy process that let go after its lock hold and at once took the lock
    # again kept it for several holds while another process waited.
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
    late = [round(w, 3) for w in waits if w > 1.5 * DEFAULT_POLICY.lock_hold]
    assert len(late) < 10, sorted(waits)
