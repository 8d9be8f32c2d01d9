"""The file store's group commit: appends of threads and tasks share writes and syncs, return once durable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from orchestrix.core.errors import (
    ConcurrencyError,
)
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file._format import SEGMENT_HEADER_SIZE
from orchestrix.testing import ContractEvent
from tests.infrastructure.file_support import (
    IOUnderTest,
    SlowSync,
    events,
    numbers,
    open_store,
    record_ends,
    segments,
)

# -- sharing syncs, returning when durable ---------------------------------------------------------


def _returned_before_durable(path: Path, returns: list[tuple[str, int, int]]) -> list[str]:
    """Who returned before its record was durable: (who, position, durable end then) against the file."""
    (segment,) = segments(path)
    ends = record_ends(segment)
    return [
        f"{who} returned before its record was synced" for who, p, durable in returns if ends[p] > durable
    ]


def test_concurrent_appends_share_fsyncs_and_return_only_when_durable(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = IOUnderTest()
    store = open_store(path, io=io)
    sync = SlowSync(io, 0.004)
    returns: list[tuple[str, int, int]] = []

    def writer(me: int) -> None:
        for i in range(25):
            result = store.append(f"w-{me}", events(i), ANY)
            returns.append((f"writer {me}", result.positions[0], sync.durable))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert len(returns) == 200 and _returned_before_durable(path, returns) == []
    assert sync.count < 200 / 2, f"{sync.count} fsyncs for 200 appends: no group commit"
    with open_store(path) as again:
        assert again.last_position() == 200


def test_concurrent_asyncio_appends_share_fsyncs_and_return_only_when_durable(tmp_path: Path) -> None:
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io)
    sync = SlowSync(io, 0.002)
    returns = asyncio.run(_eight_tasks_append(store, sync, 25))
    store.close()
    assert len(returns) == 200 and _returned_before_durable(tmp_path / "store", returns) == []
    assert sync.count <= 200 / 4, f"{sync.count} fsyncs for 200 appends by 8 tasks: no group commit"
    with open_store(tmp_path / "store") as again:
        assert again.last_position() == 200
        assert [again.stream_version(f"w-{k}") for k in range(8)] == [24] * 8


async def _eight_tasks_append(
    store: FileEventStore, sync: SlowSync, rounds: int
) -> list[tuple[str, int, int]]:
    returns: list[tuple[str, int, int]] = []

    async def writer(me: int) -> None:
        for i in range(rounds):
            result = await store.append_async(f"w-{me}", events(i), i - 1)
            returns.append((f"task {me}", result.positions[0], sync.durable))

    await asyncio.gather(*(writer(k) for k in range(8)))
    return returns


def test_on_a_fast_disk_the_event_loop_commits_its_groups_itself(tmp_path: Path) -> None:
    io = IOUnderTest()
    # every disk counts as fast; no turn for other processes mid-test
    store = open_store(tmp_path / "store", io=io, loop_sync_max=10.0, lock_hold=60.0)
    sync = SlowSync(io, 0)
    returns = asyncio.run(_eight_tasks_append(store, sync, 25))
    loop_thread = threading.get_ident()
    store.close()
    assert _returned_before_durable(tmp_path / "store", returns) == []
    on_loop = sync.threads.count(loop_thread)
    # The first group takes the writer lock in a thread (it may have to wait for another process).
    assert on_loop >= len(sync.threads) - 2, f"{on_loop} of {len(sync.threads)} syncs ran on the loop"
    assert len(sync.threads) <= 200 / 4, f"{len(sync.threads)} fsyncs for 200 appends: no group commit"
    with open_store(tmp_path / "store") as again:
        assert [again.stream_version(f"w-{k}") for k in range(8)] == [24] * 8


@pytest.mark.parametrize(("loop_sync_max", "delay"), [(0.001, 0.002), (0, 0)], ids=["slow disk", "never"])
def test_on_a_slow_disk_or_when_told_so_the_event_loop_never_waits_for_a_sync(
    tmp_path: Path, loop_sync_max: float, delay: float
) -> None:
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io, loop_sync_max=loop_sync_max)
    sync = SlowSync(io, delay)
    returns = asyncio.run(_eight_tasks_append(store, sync, 10))
    loop_thread = threading.get_ident()
    store.close()
    assert _returned_before_durable(tmp_path / "store", returns) == []
    assert sync.threads and loop_thread not in sync.threads


def test_threads_and_asyncio_tasks_append_to_one_store_together(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    conflicts: list[str] = []

    def thread_writer(me: int) -> None:
        for i in range(30):
            store.append(f"t-{me}", events(i), i - 1)
            try:
                store.append("shared", events(1000 + i), NO_STREAM)
            except ConcurrencyError:
                conflicts.append("thread")

    async def task_writer(me: int) -> None:
        for i in range(30):
            await store.append_async(f"a-{me}", events(i), i - 1)
            try:
                await store.append_async("shared", events(2000 + i), NO_STREAM)
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
            assert numbers(store, f"{prefix}-{k}") == list(range(30))
    positions = [r.position for r in store.read_all()]
    assert positions == list(range(1, 8 * 30 + 2))
    store.close()


def test_unsafe_mode_appends_and_reads(tmp_path: Path) -> None:
    io = IOUnderTest()
    path = tmp_path / "store"
    with open_store(path, io=io, sync=False, segment_size=1024) as store:
        for i in range(30):
            store.append("s", events(i))
        assert numbers(store) == list(range(30))
        assert len(segments(path)) > 1
    # creating the store made its STORE file durable; nothing else is synced
    syncs = [c[:2] for c in io.calls if "sync" in c[0]]
    assert syncs == [("fsync", "STORE.tmp"), ("fsync_directory", "store")]
    io.calls.clear()
    with open_store(path, io=io, sync=False, segment_size=1024) as store:
        store.append("s", events(30))
    assert io.calls and not [c for c in io.calls if "sync" in c[0]]


def test_every_write_and_sync_goes_through_the_io_seam_in_a_durable_order(tmp_path: Path) -> None:
    # What a power-loss test replays: before an append returns, its record's bytes were written
    # and then synced; before a record goes into a new segment, the segment and its directory
    # entry were synced.
    io = IOUnderTest()
    path = tmp_path / "store"
    with open_store(path, io=io, segment_size=1024) as store:
        for i in range(40):
            store.append("s", events(i))
            calls = list(io.calls)
            last = segments(path)[-1].name
            wrote = max(k for k, c in enumerate(calls) if c[:2] == ("pwrite", last) and c[2][2])  # type: ignore[index]
            assert ("fdatasync", last) in [c[:2] for c in calls[wrote:]], f"append {i} returned unsynced"
    assert len(segments(path)) > 3
    for segment in segments(path):
        name = segment.name
        created = io.calls.index(("open", name, True))
        first_record = next(
            k
            for k, c in enumerate(io.calls)
            if c[:2] == ("pwrite", name) and c[2][0] >= SEGMENT_HEADER_SIZE  # type: ignore[index]
        )
        between = [c[:2] for c in io.calls[created:first_record]]
        assert ("fsync", name) in between and ("fsync_directory", "store") in between, name


# -- asyncio callers and their loops ---------------------------------------------------------------


def test_an_asyncio_append_whose_task_is_cancelled_leaves_a_consistent_store(tmp_path: Path) -> None:
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io)
    SlowSync(io, 0.05)

    async def scenario() -> None:
        append = asyncio.create_task(store.append_async("s", events(1), NO_STREAM))
        while not io.syncing.is_set():
            await asyncio.sleep(0.001)
        append.cancel()
        with pytest.raises(asyncio.CancelledError):
            await append
        # the cancelled append completes on its own: it is stored, whole, at version 0
        assert (await store.append_async("s", events(2), 0)).versions == (1,)

    asyncio.run(scenario())
    assert numbers(store, "s") == [1, 2]
    store.close()


def test_asyncio_reads_see_what_another_store_on_the_directory_appended(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as reader, open_store(tmp_path / "s") as writer:

        async def scenario() -> None:
            assert await reader.stream_version_async("a") == NO_STREAM
            writer.append("a", events(1, 2), NO_STREAM)
            assert await reader.stream_version_async("a") == 1
            assert [r.event.n async for r in reader.read_stream_async("a")] == [1, 2]
            writer.append("a", events(3), 1)
            assert [r.event.n async for r in reader.read_all_async(1)] == [2, 3]
            assert [r.event.n async for r in reader.read_stream_async("a", 2)] == [3]

        asyncio.run(scenario())


def test_a_loop_that_stops_before_starting_its_append_does_not_hold_up_other_loops(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    loop = asyncio.new_event_loop()
    orphan = loop.create_task(store.append_async("orphan", events(1), NO_STREAM))
    loop.call_soon(loop.stop)  # runs the task up to its await, then stops before the writer starts
    loop.run_forever()
    assert not orphan.done()
    positions: list[int] = []

    async def elsewhere() -> None:
        positions.extend((await store.append_async("s", events(2), NO_STREAM)).positions)

    other = threading.Thread(target=asyncio.run, args=(elsewhere(),), daemon=True)
    other.start()
    other.join(timeout=20)
    assert positions, "another loop's append was held up by the stopped loop's"
    assert store.stream_version("orphan") == 0  # the next group took the orphan's record along
    store.close()
    orphan.cancel()
    loop.run_until_complete(asyncio.gather(orphan, return_exceptions=True))
    loop.close()


def test_close_on_the_loop_while_an_asyncio_append_waits_for_its_writer_returns(tmp_path: Path) -> None:
    """close() on the loop thread, right after a task queued its append: the writer start the
    append waits for is a callback of the very loop close() blocks, so close() starts it."""
    store = open_store(tmp_path / "s", sync=False)
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
    store = open_store(tmp_path / "s", sync=False)
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
    with open_store(tmp_path / "s") as again:
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


# -- races found by review -------------------------------------------------------------------------


def test_a_group_retiring_while_the_next_one_is_planned_keeps_versions_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Group A retires (forgets what it planned) just as group B is planned on the same stream;
    # group C, planned while B is in flight, must see B's versions, not the older tail's.
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io, lock_hold=100.0)
    commits = store._commits
    groups = commits._groups
    syncs: list[int] = []
    gates = {1: threading.Event(), 2: threading.Event()}

    def gated_sync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) in gates:
            gates[len(syncs)].wait(5)
        io.fdatasync_now(fd)

    class SlowForget(dict):  # type: ignore[type-arg]
        def get(self, key: object, *default: object) -> object:
            found = dict.get(self, key, *default)
            if default:  # the retiring group's check: another writer may run right here
                time.sleep(0.2)
            return found

    real_view, a_published, b_writer = groups.view, threading.Event(), []

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

    monkeypatch.setattr(groups, "view", View())
    monkeypatch.setattr(commits, "_write_group", write_group)
    io.sync_hook = gated_sync
    groups.versions = SlowForget()
    results: dict[str, object] = {}

    def append(name: str, expected: int = ANY) -> None:
        try:
            results[name] = store.append("s-1", events(0), expected)
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


def test_closing_from_two_threads_at_once_closes_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path / "store")
    store.append("s-1", events(0))
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
