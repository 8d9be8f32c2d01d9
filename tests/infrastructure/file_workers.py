"""Other processes for the file store tests: racers, a writer, and the crash-loop child.

Run as a script, this module is a *zygote*: it imports the store once, then forks a crash
child per ``fork`` command read from stdin, so a kill loop does not pay Python's start-up
for every child. Protocol (one line each way):

    fork <store> <ack file> <seed> <writers>  ->  <pid>   (after the child opened the store)
    reap <pid>                                 ->  <signal number or -exit status>
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import threading
import traceback
import uuid
from typing import Any

import attrs

from orchestrix.core.errors import ConcurrencyError
from orchestrix.core.eventsourcing.store import ANY, StreamAppend
from orchestrix.core.messaging.messages import Event, NewEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file import FileEventStore

CRASH_SEGMENT_SIZE = 64 * 1024
CRASH_CHECKPOINT_EVENTS = 300
CRASH_STREAMS = 6


@attrs.frozen
class Appended(Event):
    """One event of a batch, saying which batch it belongs to and how big that batch is."""

    batch: str
    index: int
    size: int
    writer: int


def serializer() -> Serializer:
    """The serializer every worker and its parent use."""
    return Serializer([Appended])


def open_crash_store(path: str) -> FileEventStore:
    """The store as the crash loop opens it: small segments and frequent index checkpoints."""
    return FileEventStore(
        path, serializer(), segment_size=CRASH_SEGMENT_SIZE, checkpoint_events=CRASH_CHECKPOINT_EVENTS
    )


# -- multiprocessing targets -------------------------------------------------------------------


def race(path: str, me: int, rounds: int, barrier: Any, results: Any) -> None:
    """Each round, try to append at the version the round expects; report the rounds won."""
    store = FileEventStore(path, serializer())
    won = []
    try:
        for round_ in range(rounds):
            barrier.wait()
            try:
                store.append("race", [Appended(f"{me}:{round_}", 0, 1, me)], round_ - 1)
                won.append(round_)
            except ConcurrencyError:
                pass
    finally:
        store.close()
    results.put((me, won))


def write_events(path: str, stream: str, count: int) -> None:
    """Append ``count`` one-event batches to ``stream``."""
    store = FileEventStore(path, serializer())
    try:
        for i in range(count):
            store.append(stream, [Appended(f"w:{i}", 0, 1, 0)], ANY)
    finally:
        store.close()


def append_without_pause(path: str, started: Any, stop: Any) -> None:
    """Append one-event batches as fast as possible until ``stop`` is set (fsync off)."""
    store = FileEventStore(path, serializer(), sync=False)
    try:
        i = 0
        while not stop.is_set():
            store.append("hog", [Appended(f"h:{i}", 0, 1, 0)], ANY)
            i += 1
            if i == 100:
                started.set()
    finally:
        store.close()


# -- the crash child -------------------------------------------------------------------------


def crash_child(path: str, ack_path: str, seed: int, writers: int, ready_fd: int) -> None:
    """Append for ever from ``writers`` threads and as many asyncio tasks (both commit paths at
    once), one-stream and multi-stream batches, logging each acknowledged batch to ``ack_path``
    (a line per stream it touched)."""
    store = open_crash_store(path)
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(ready_fd, b"r")
    os.close(ready_fd)

    def next_append(rng: random.Random, me: int) -> tuple[list[tuple[str, list[NewEvent]]], bool]:
        """One append: a batch to one stream, or (one in three) a batch spread over two or three
        streams, appended atomically; each event says its place in the whole batch."""
        batch = uuid.UUID(int=rng.getrandbits(128)).hex
        streams = [f"s-{k}" for k in rng.sample(range(CRASH_STREAMS), rng.choice((1, 1, 2, 3)))]
        sizes = [rng.randint(1, 3) for _ in streams]
        total, first = sum(sizes), 0
        parts = []
        for stream, size in zip(streams, sizes, strict=True):
            parts.append((stream, [NewEvent(Appended(batch, first + i, total, me)) for i in range(size)]))
            first += size
        return parts, rng.random() < 0.3

    def acknowledge(parts: list[tuple[str, list[NewEvent]]], results: Any) -> None:
        lines = []
        for (stream, events), result in zip(parts, results, strict=True):
            first = events[0].event
            ids = [e.event_id.hex for e in events]
            lines.append(
                json.dumps([stream, first.batch, ids, result.versions, result.positions, first.index])
            )
        os.write(ack, ("\n".join(lines) + "\n").encode())  # one write: a kill leaves whole lines or a cut one

    def appends(parts: list[tuple[str, list[NewEvent]]], versions: list[int]) -> list[StreamAppend]:
        return [StreamAppend(s, events, v) for (s, events), v in zip(parts, versions, strict=True)]

    def writer(me: int) -> None:
        rng = random.Random(seed * 1000 + me)
        try:
            while True:
                parts, checked = next_append(rng, me)
                versions = [store.stream_version(s) if checked else ANY for s, _ in parts]
                try:
                    if len(parts) == 1:
                        results: Any = (store.append(parts[0][0], parts[0][1], versions[0]),)
                    else:
                        results = store.append_many(appends(parts, versions))
                except ConcurrencyError:
                    continue
                acknowledge(parts, results)
        except BaseException:
            traceback.print_exc()
            os._exit(3)  # a writer that fails for any reason but the kill is a test failure

    async def task_writer(me: int) -> None:
        rng = random.Random(seed * 1000 + me)
        while True:
            parts, checked = next_append(rng, me)
            versions = [await store.stream_version_async(s) if checked else ANY for s, _ in parts]
            try:
                if len(parts) == 1:
                    results: Any = (await store.append_async(parts[0][0], parts[0][1], versions[0]),)
                else:
                    results = await store.append_many_async(appends(parts, versions))
            except ConcurrencyError:
                continue
            acknowledge(parts, results)

    async def task_writers() -> None:
        await asyncio.gather(*(task_writer(100 + k) for k in range(writers)))

    def loop() -> None:
        try:
            asyncio.run(task_writers())
        except BaseException:
            traceback.print_exc()
            os._exit(3)

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(writers)]
    threads.append(threading.Thread(target=loop, daemon=True))
    for t in threads:
        t.start()
    threading.Event().wait()


def zygote() -> None:
    """Serve ``fork`` and ``reap`` commands from stdin (see the module docstring)."""
    for line in sys.stdin:
        command, *args = line.split()
        if command == "fork":
            path, ack_path, seed, writers = args
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                try:
                    crash_child(path, ack_path, int(seed), int(writers), ready_w)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(4)
            os.close(ready_w)
            os.read(ready_r, 1)  # empty if the child died while opening; the reap says how
            os.close(ready_r)
            print(pid, flush=True)
        elif command == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            code = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
            print(code, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    zygote()
