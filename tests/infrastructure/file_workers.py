"""Other processes for the file store tests: racers, a writer, and the crash-loop child.

Run as a script, this module is a *zygote*: it imports the store once, then forks a crash
child per ``fork`` command read from stdin, so a kill loop does not pay Python's start-up
for every child. Protocol (one line each way):

    fork <store> <ack file> <seed> <writers>  ->  <pid>   (after the child opened the store)
    reap <pid>                                 ->  <signal number or -exit status>
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import traceback
from typing import Any

import attrs

from orchestrix.core.errors import ConcurrencyError
from orchestrix.core.eventsourcing.store import ANY
from orchestrix.core.messaging.messages import Event
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file import FileEventStore
from tests.infrastructure._kill_workers import Parts, next_append, start_writers

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

    def acknowledge(parts: Parts, results: Any) -> None:
        lines = []
        for (stream, events), result in zip(parts, results, strict=True):
            first = events[0].event
            ids = [e.event_id.hex for e in events]
            lines.append(
                json.dumps([stream, first.batch, ids, result.versions, result.positions, first.index])
            )
        os.write(ack, ("\n".join(lines) + "\n").encode())  # one write: a kill leaves whole lines or a cut one

    def spread_append(rng: random.Random, me: int) -> tuple[Parts, bool]:
        # A batch to one stream, or (one in three) spread over two or three streams, atomically.
        return next_append(
            rng, CRASH_STREAMS, (1, 1, 2, 3), lambda batch, i, size: Appended(batch, i, size, me)
        )

    start_writers(store, seed, writers, spread_append, acknowledge)
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
