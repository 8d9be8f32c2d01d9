"""Helpers shared by the workloads: payload, timing, writer threads and processes, memory, temp
dirs and the 'not landed' signal."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import threading
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


def run_threads(count: int, work: Callable[[int], Any]) -> float:
    """Run ``work(i)`` in ``count`` threads released together; wall seconds until all are done."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    start = clock()
    barrier.wait()
    for t in threads:
        t.join()
    seconds = clock() - start
    if errors:
        raise errors[0]
    return seconds


def run_processes(
    procs: int, target: Callable[..., None], args: tuple[Any, ...], timeout: float = 900.0
) -> float:
    """Start ``procs`` spawned ``target(i, barrier, results, *args)`` processes, released together.

    Each puts ``(start, end)`` (its own timed span) or an error text on ``results``; returns the
    wall seconds from the first start to the last end, or raises the first error.
    """
    import multiprocessing as mp  # here, not at the top: spawned children import this module

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [ctx.Process(target=target, args=(i, barrier, results, *args)) for i in range(procs)]
    for w in workers:
        w.start()
    spans = [results.get(timeout=timeout) for _ in workers]
    for w in workers:
        w.join()
    errors = [s for s in spans if isinstance(s, str)]
    if errors:
        raise RuntimeError(errors[0])
    seconds: float = max(end for _, end in spans) - min(start for start, _ in spans)
    return seconds


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    # Linux >= 4.0: writing 5 resets VmHWM (the peak RSS) to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss(open_store: Callable[[], Any], load: Callable[[Any], Any]) -> dict[str, Any]:
    """Peak RSS growth over the post-import baseline while opening a store and loading from it.

    Returns ``value`` (bytes: the highest RSS seen during open + load, minus the RSS before the
    open), ``load_growth`` (peak during the load alone over the RSS just before it), timings,
    and ``loaded`` is dropped so that it does not outlive the measurement.
    """
    gc.collect()
    baseline = _status_kib("VmRSS")
    _reset_peak()
    start = clock()
    handle = open_store()
    opened = clock()
    peak_open = _status_kib("VmHWM")
    before_load = _status_kib("VmRSS")
    _reset_peak()
    load(handle)
    loaded = clock()
    peak_load = _status_kib("VmHWM")
    return {
        "value": (max(peak_open, peak_load) - baseline) * 1024,
        "load_growth": (peak_load - before_load) * 1024,
        "open_growth": (peak_open - baseline) * 1024,
        "baseline_rss": baseline * 1024,
        "open_seconds": opened - start,
        "load_seconds": loaded - opened,
        "handle": handle,
    }


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
