"""Crash loop: SIGKILL a writing process at random moments; every acknowledged event must survive.

A child process appends batches from several threads and as many asyncio tasks (both commit
paths at once), a third of them multi-stream appends spread over two or three streams, and logs
each acknowledged batch. The test kills it at a random (seeded) moment, reopens the store and
checks: every acknowledged batch is stored where its append said, whole in every stream it
touched; no batch is partly visible (a multi-stream one takes consecutive positions, so a
partial one would show as a gap in its indexes); positions and every stream's versions are
gapless, and opening again changes nothing.

50 kills by default; ``ORCHESTRIX_CRASH_KILLS=500`` runs the long version.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrix.infrastructure.file import FileEventStore
from tests.infrastructure.file_workers import open_crash_store

KILLS = int(os.environ.get("ORCHESTRIX_CRASH_KILLS", "50"))
WRITERS = 4
WORKERS = Path(__file__).with_name("file_workers.py")
ROOT = Path(__file__).parents[2]
FULL_CHECK_EVERY = 10


class Model:
    """What the parent has verified so far: the log as a list, and each stream's last version."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int, str, int, int]] = []  # id, stream, version, batch, index, size
        self.versions: dict[str, int] = {}
        self.acked = 0

    def take_new(self, store: FileEventStore) -> None:
        """Check and add the events after the verified prefix."""
        fresh = list(store.read_all(len(self.log)))
        for k, r in enumerate(fresh):
            assert r.position == len(self.log) + 1, "positions must be gapless"
            assert r.version == self.versions.get(r.stream, -1) + 1, f"gap in {r.stream}"
            self.versions[r.stream] = r.version
            e = r.event
            self.log.append((r.event_id.hex, r.stream, r.version, e.batch, e.index, e.size))
            if e.index == 0:
                whole = fresh[k : k + e.size]
                assert [x.event.batch for x in whole] == [e.batch] * e.size, "a batch is partly visible"
                assert [x.event.index for x in whole] == list(range(e.size))
        if fresh:
            last = self.log[-1]
            assert last[4] == last[5] - 1, "the last batch is partly visible"

    def check_acks(self, ack_file: Path) -> None:
        """Every acknowledged batch is stored exactly where its append said."""
        raw = ack_file.read_bytes() if ack_file.exists() else b""
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            # A line the kill cut short (a write across a page boundary can stop halfway) was
            # never acknowledged; drop it, or the next child's first line would extend it.
            os.truncate(ack_file, end)
        complete = raw[:end].split(b"\n")[:-1]
        for line in complete[self.acked :]:
            stream, batch, ids, versions, positions, first = json.loads(line)
            for i, (event_id, version, position) in enumerate(
                zip(ids, versions, positions, strict=True), first
            ):
                assert position <= len(self.log), f"acknowledged position {position} lost"
                stored = self.log[position - 1]
                assert stored[:5] == (event_id, stream, version, batch, i), f"position {position} differs"
        self.acked = len(complete)

    def check_all(self, store: FileEventStore) -> None:
        """The whole log still reads exactly as verified."""
        seen = [(r.event_id.hex, r.stream, r.version) for r in store.read_all()]
        assert seen == [entry[:3] for entry in self.log]
        assert store.verify() == len(self.log)


def _ask(zygote: subprocess.Popen[str], line: str) -> str:
    assert zygote.stdin is not None and zygote.stdout is not None
    zygote.stdin.write(line + "\n")
    zygote.stdin.flush()
    answer = zygote.stdout.readline()
    assert answer, "the zygote process died"
    return answer.strip()


@pytest.mark.slow
def test_every_acknowledged_event_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(1_234_567)
    path, ack_file = tmp_path / "store", tmp_path / "acks"
    zygote = subprocess.Popen(
        [sys.executable, str(WORKERS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's orchestrix, not an installed one
    )
    model = Model()
    try:
        for kill in range(KILLS):
            pid = int(_ask(zygote, f"fork {path} {ack_file} {kill} {WRITERS}"))
            time.sleep(rng.uniform(0.0, 0.15))
            with contextlib.suppress(ProcessLookupError):  # it may have failed by itself: the reap tells
                os.kill(pid, signal.SIGKILL)
            code = int(_ask(zygote, f"reap {pid}"))
            assert code == signal.SIGKILL, f"kill {kill}: the child ended by itself ({code}); see stderr"
            store = open_crash_store(str(path))
            try:
                model.take_new(store)
                model.check_acks(ack_file)
                if kill % FULL_CHECK_EVERY == FULL_CHECK_EVERY - 1 or kill == KILLS - 1:
                    model.check_all(store)
                    store.close()
                    store = open_crash_store(str(path))  # opening again changes nothing
                    model.check_all(store)
            finally:
                store.close()
    finally:
        assert zygote.stdin is not None and zygote.stdout is not None
        zygote.stdin.close()
        zygote.wait(timeout=30)
        zygote.stdout.close()
    assert model.acked > KILLS, "the children acknowledged too little to test anything"
    streams_of: dict[str, set[str]] = {}
    for _, stream, _, batch, _, _ in model.log:
        streams_of.setdefault(batch, set()).add(stream)
    spread = sum(len(streams) > 1 for streams in streams_of.values())
    assert spread > KILLS, f"only {spread} multi-stream batches were stored"
    assert len(model.log) >= model.acked
