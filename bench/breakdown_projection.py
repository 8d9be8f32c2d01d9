#!/usr/bin/env python3
"""Where a projection catch-up's time goes, per event, layer by layer (CPU time, best of 5).

    bench/.venv/bin/python bench/breakdown_projection.py [EVENTS]

Builds a file store of EVENTS events (default 100,000; streams of 10, 128-character notes) in a
temp dir, then times each layer over all of it: each row is the one before plus one more step.
CPU time rather than the wall clock, so that the figures hold on a shared machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [BENCH, os.environ.get("ORCHESTRIX_BENCH_CODE") or os.path.dirname(BENCH)]

from workloads import projection  # noqa: E402
from workloads.orx_model import serializer  # noqa: E402

from orchestrix._speedups import loads  # noqa: E402
from orchestrix.core.execution.checkpoint import InMemoryCheckpointStore  # noqa: E402
from orchestrix.core.execution.projection import ProjectionRunner  # noqa: E402
from orchestrix.infrastructure.file import FileEventStore  # noqa: E402
from orchestrix.infrastructure.file._format import decode_events  # noqa: E402


def main(n: int) -> None:
    """Build the store, time every layer, print the table."""
    with tempfile.TemporaryDirectory() as path:
        projection.orx_build(path, n)
        ser = serializer()
        store = FileEventStore(os.path.join(path, "store"), ser, sync=False)
        view = store._view

        def frames() -> None:
            segment, offset, first = view.start_of(1)
            for _ in view.log.frames(segment, offset, view.end, first=first):
                pass

        def layer(decode: Callable[[str, bytes], Any]) -> Callable[[], None]:
            def run() -> None:
                segment, offset, first = view.start_of(1)
                for _, _, buf, i, _, _ in view.log.frames(segment, offset, view.end, first=first):
                    for _ in decode_events(buf, i, decode, 0, 1):
                        pass

            return run

        def read_all() -> None:
            for _ in store.read_all():
                pass

        def catch_up() -> None:
            runner = ProjectionRunner(
                store, [projection._orx_projection()], InMemoryCheckpointStore(), page_size=500
            )
            assert runner.run_until_idle() == n

        steps = [
            ("frames", frames),
            ("envelope", layer(lambda t, b: None)),
            ("JSON", layer(lambda t, b: loads(b))),
            ("checks+build", layer(ser.decode)),
            ("read_all", read_all),
            ("runner", catch_up),
        ]
        best: dict[str, float] = {}
        for _ in range(5):
            for name, step in steps:
                cpu = time.process_time()
                step()
                best[name] = min(best.get(name, float("inf")), time.process_time() - cpu)
        store.close()
    before = 0.0
    for name, _ in steps:
        us = best[name] / n * 1e6
        print(f"{name:<14} {us:5.2f} us/event  (+{us - before:5.2f})  {n / best[name]:>10,.0f} ev/s of CPU")
        before = us
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
