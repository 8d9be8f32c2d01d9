"""The file store and Ctrl-C: an interrupted caller or writer leaves the store usable and nobody waiting."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from orchestrix.core.errors import StoreFailedError
from orchestrix.core.eventsourcing.store import NO_STREAM, AppendResult
from orchestrix.infrastructure.file import _commit as file_commit
from orchestrix.infrastructure.file._format import LOCK_FILE
from tests.infrastructure.file_support import (
    IOUnderTest,
    SlowSync,
    assert_lock_comes_free,
    events,
    in_thread,
    numbers,
    open_store,
    take_lock,
)


def _press_ctrl_c() -> None:
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]


@pytest.mark.parametrize("woken", [False, True], ids=["before-its-wait-ends", "after-its-wait-ended"])
def test_a_caller_interrupted_while_waiting_leaves_the_store_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, woken: bool
) -> None:
    # Ctrl-C reaches a thread waiting for its turn just as the writing is handed to it: CPython
    # may raise it before the wait ends or right after (the lock then taken). Only the lock a
    # waiting caller sleeps on is replaced: no signal can be timed that finely.
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io)
    store.append("warm", events(0))
    io.hold()
    io.syncing.clear()

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

    first = threading.Thread(target=lambda: store.append("a", events(1)))
    first.start()
    assert io.syncing.wait(5), "the first append never reached its sync"
    monkeypatch.setattr(file_commit, "threading", Threading())
    threading.Timer(0.05, io.release).start()
    with pytest.raises(KeyboardInterrupt):
        store.append("b", events(2))
    first.join()
    monkeypatch.setattr(file_commit, "threading", real_threading)
    # the writing passed on: the next append is written at once, after "a" and without "b"
    assert in_thread(lambda: store.append("c", events(3))) == AppendResult("c", (0,), (3,))
    assert in_thread(store.close) is None


def test_a_writer_interrupted_in_its_sync_fails_the_store_and_leaves_nobody_waiting(tmp_path: Path) -> None:
    # The sync's outcome is unknown: the store fails, the interrupt goes on, nothing hangs.
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io)
    store.append("warm", events(0))

    def interrupted(fd: int) -> None:
        io.sync_hook = None
        raise KeyboardInterrupt

    io.sync_hook = interrupted
    with pytest.raises(KeyboardInterrupt):
        store.append("a", events(1))
    assert isinstance(in_thread(lambda: store.append("b", events(2))), StoreFailedError)
    assert_lock_comes_free(tmp_path / "store", "an interrupted writer kept the writer lock", within=0.0)
    assert in_thread(store.close) is None


def test_an_interrupt_while_a_group_is_planned_stays_with_the_writer_that_got_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store fails (what was planned may or may not be written); the other callers of the
    # group get that failure, not the writer's KeyboardInterrupt, and nothing waits forever.
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io)
    store.append("warm", events(0))
    groups = store._commits._groups
    real_plan = groups.plan
    io.hold()

    def interrupted_plan(group: object) -> object:
        if len(group.requests) > 1:  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        return real_plan(group)  # type: ignore[arg-type]

    monkeypatch.setattr(groups, "plan", interrupted_plan)
    outcomes: dict[str, str] = {}

    def append(name: str) -> None:
        try:
            store.append(name, events(1))
            outcomes[name] = "stored"
        except BaseException as exc:
            outcomes[name] = type(exc).__name__

    threads = [threading.Thread(target=append, args=(f"s-{k}",)) for k in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    io.release()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    kinds = sorted(outcomes.values())
    assert kinds.count("KeyboardInterrupt") == 1 and "stored" in kinds, kinds
    assert set(kinds) <= {"KeyboardInterrupt", "StoreFailedError", "stored"}, kinds
    assert in_thread(store.close) is None


def test_a_caller_interrupted_while_taking_the_lock_after_its_turn_came_leaves_the_store_usable(
    tmp_path: Path,
) -> None:
    # Its turn came after a drain let the lock go (a lock hold of 0: every group lets go); it
    # pauses before taking the lock again, another process takes it meanwhile, and Ctrl-C
    # reaches the caller while it waits: its append is taken back, and the next writer goes on.
    io = IOUnderTest()
    path = tmp_path / "store"
    store = open_store(path, io=io, lock_hold=0.0, retake_pause=0.3)
    store.append("warm", events(0))
    io.hold()
    io.syncing.clear()
    first = threading.Thread(target=lambda: store.append("a", events(1)))
    first.start()
    assert io.syncing.wait(5), "the first append never reached its sync"
    fd = os.open(path / LOCK_FILE, os.O_RDWR)
    returned = threading.Event()

    def other_process() -> None:
        time.sleep(0.1)  # the main thread's append waits behind the group in flight by now
        io.release()  # that group completes and lets the lock go; the main thread's turn comes
        take_lock(fd, "the busy process never let go of the writer lock")
        time.sleep(0.1)
        _press_ctrl_c()
        returned.wait(3)
        fcntl.flock(fd, fcntl.LOCK_UN)

    other = threading.Thread(target=other_process)
    other.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            store.append("b", events(2))
    finally:
        returned.set()
        other.join()
        first.join()
        os.close(fd)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert in_thread(lambda: store.append("c", events(3))) == AppendResult("c", (0,), (3,))
    assert store.stream_version("b") == NO_STREAM  # taken back: never written
    assert in_thread(store.close) is None


def test_ctrl_c_during_an_append_lets_it_finish_and_then_interrupts(tmp_path: Path) -> None:
    # A real SIGINT while the main thread writes and syncs its own append: the append is made
    # durable and published, then KeyboardInterrupt; the store stays healthy.
    io = IOUnderTest()
    store = open_store(tmp_path / "store", io=io)
    store.append("warm", events(0))
    io.syncing.clear()
    SlowSync(io, 0.3)

    def press_ctrl_c() -> None:
        io.syncing.wait(5)
        _press_ctrl_c()

    threading.Thread(target=press_ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        store.append("a", events(1))
    io.sync_hook = None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert numbers(store, "a") == [1]  # finished before the interrupt
    assert store.append("b", events(2)).positions == (3,)  # not failed
    store.close()


def test_ctrl_c_ends_a_wait_for_another_processs_lock(tmp_path: Path) -> None:
    # Another process holds the writer lock (say it was suspended): Ctrl-C must still get the
    # appender out, its append taken back, the store healthy.
    store = open_store(tmp_path / "store")
    store.append("warm", events(0))
    fd = os.open(tmp_path / "store" / LOCK_FILE, os.O_RDWR)
    take_lock(fd, "the idle store never let go of the writer lock")  # the other process, after the lease
    returned = threading.Event()

    def press_ctrl_c() -> None:
        time.sleep(0.2)
        _press_ctrl_c()
        if not returned.wait(3):  # still stuck: let it go on, so that the test fails, not hangs
            fcntl.flock(fd, fcntl.LOCK_UN)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            store.append("a", events(1))
    finally:
        returned.set()
        presser.join()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert in_thread(lambda: store.append("b", events(2))) == AppendResult("b", (0,), (2,))
    assert store.stream_version("a") == NO_STREAM
    assert in_thread(store.close) is None
