"""Helpers shared by the workloads: payload, timing, memory, temp dirs and the 'not landed' signal."""

from __future__ import annotations

import gc
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PAYLOAD_CHARS = 128
PG_DSN = os.environ.get("ORCHESTRIX_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class NotLanded(Exception):
    """The orchestrix part this workload measures does not exist yet (import failed)."""


def payload(i: int = 0) -> str:
    """A 128-character text, different per event so nothing is interned or shared."""
    head = f"event {i:09d} "
    return (head + "x" * PAYLOAD_CHARS)[:PAYLOAD_CHARS]


def clock() -> float:
    """The timer used everywhere: monotonic, high resolution."""
    return time.perf_counter()


def rate(events: int, seconds: float) -> dict[str, Any]:
    """A throughput result (events per second)."""
    return {"value": events / seconds, "events": events, "seconds": seconds}


def duration(seconds: float, **extra: Any) -> dict[str, Any]:
    """A latency/duration result in seconds."""
    return {"value": seconds, "seconds": seconds, **extra}


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """Current resident set size, from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_during(action: Callable[[], Any]) -> tuple[int, int, float]:
    """Run ``action``; return (peak RSS growth in bytes, baseline RSS, seconds)."""
    gc.collect()
    baseline = maxrss_bytes()
    start = clock()
    action()
    seconds = clock() - start
    return maxrss_bytes() - baseline, current_rss_bytes(), seconds


@contextmanager
def temp_dir(prefix: str = "orxbench-") -> Iterator[str]:
    """A fresh directory on the root filesystem (/tmp is the same ext4 disk here), removed after."""
    path = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("ORCHESTRIX_BENCH_TMP"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def require(module: str, *names: str) -> Any:
    """Import ``module`` and return its attribute(s), or raise NotLanded naming what is missing."""
    import importlib

    try:
        mod = importlib.import_module(module)
        values = [getattr(mod, name) for name in names]
    except (ImportError, AttributeError) as exc:
        raise NotLanded(f"{module}: {exc}") from None
    return values[0] if len(values) == 1 else values
