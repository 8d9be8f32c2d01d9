"""The writers of the crash-loop children (file and PostgreSQL): both commit paths at once.

A child starts ``writers`` threads and as many asyncio tasks on one store; each appends random
batches, one-stream or spread over several streams (atomic), some with checked expected
versions, and hands every acknowledged append to the child's ``acknowledge``. A writer that
fails for any reason but the kill ends the child with status 3: the parent sees a failure.

Children import this module (stdlib and orchestrix only, no pytest), so it stays light.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from orchestrix.core.errors import ConcurrencyError
from orchestrix.core.eventsourcing.store import ANY, StreamAppend
from orchestrix.core.messaging.messages import Event, NewEvent

Parts = list[tuple[str, list[NewEvent]]]


def next_append(
    rng: random.Random,
    streams: int,
    spread: Sequence[int],
    event: Callable[[str, int, int], Event],
) -> tuple[Parts, bool]:
    """One append: a batch over ``rng.choice(spread)`` of the ``streams`` streams, each event made
    by ``event(batch, index in the whole batch, batch size)``; and whether to check versions (30%)."""
    batch = uuid.UUID(int=rng.getrandbits(128)).hex
    names = [f"s-{k}" for k in rng.sample(range(streams), rng.choice(spread))]
    sizes = [rng.randint(1, 3) for _ in names]
    total, first = sum(sizes), 0
    parts = []
    for stream, size in zip(names, sizes, strict=True):
        parts.append((stream, [NewEvent(event(batch, first + i, total)) for i in range(size)]))
        first += size
    return parts, rng.random() < 0.3


def _appends(parts: Parts, versions: list[Any]) -> list[StreamAppend]:
    return [StreamAppend(s, events, v) for (s, events), v in zip(parts, versions, strict=True)]


def start_writers(
    store: Any,
    seed: int,
    writers: int,
    next_append: Callable[[random.Random, int], tuple[Parts, bool]],
    acknowledge: Callable[[Parts, Any], None],
) -> None:
    """Start ``writers`` daemon threads (writers 0..) and a thread running as many asyncio tasks
    (writers 100..), each appending ``next_append(rng, me)`` for ever with its own seeded rng."""

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
                        results = store.append_many(_appends(parts, versions))
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
                    results = await store.append_many_async(_appends(parts, versions))
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
