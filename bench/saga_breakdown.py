#!/usr/bin/env python3
"""Where one TransferSaga transfer's time goes, step by step (bench/README.md shows the output).

    bench/.venv/bin/python bench/saga_breakdown.py [--n 1000] [--store file|memory] [--no-sync]

Runs ``n`` transfers one at a time with the sync driver (no event loop, no concurrency: the
cost of one transfer end to end, not a throughput), each as the benchmark does it: the client's
``transfer_money``, then the runner's page (it starts the saga from the page's event and drives
it to the end: debit, save, credit, settle, save), then the page of the saga's own events
(ignored: the saga is known complete), then a subscriber reading the six events. Each store
call, fdatasync and checkpoint save is timed exclusively (time inside a nested timed call is
charged to that call only); what remains is the library's and the demo's own Python.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from decimal import Decimal
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_stack: list[list[float]] = []
spent: collections.Counter[str] = collections.Counter()
calls: collections.Counter[str] = collections.Counter()


def timed(label: str, func: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        frame = [0.0]
        _stack.append(frame)
        start = time.perf_counter()
        try:
            result = func(*args, **kwargs)
            if label.startswith("read") and not isinstance(result, list | tuple):
                result = list(result)  # the lazy iterators decode as they are consumed
            return result
        finally:
            took = time.perf_counter() - start
            _stack.pop()
            spent[label] += took - frame[0]
            calls[label] += 1
            if _stack:
                _stack[-1][0] += took

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--store", default="file", choices=("file", "memory"))
    parser.add_argument("--no-sync", action="store_true")
    args = parser.parse_args()

    from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
    from bases.orchestrix.banking_demo.models import OpenAccount, TransferMoney, banking_serializer
    from bases.orchestrix.banking_demo.saga import TransferSaga
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner
    from orchestrix.infrastructure.file import FileCheckpointStore, FileEventStore
    from orchestrix.infrastructure.file import store as file_store_module
    from orchestrix.infrastructure.file._io import FileIO
    from orchestrix.infrastructure.memory.store import InMemoryEventStore

    store_cls: Any = FileEventStore if args.store == "file" else InMemoryEventStore
    FileIO.fdatasync = staticmethod(timed("fdatasync", os.fdatasync))  # type: ignore[method-assign]
    for name in ("append", "read_all", "read_stream", "stream_version"):
        setattr(store_cls, name, timed(f"{name} (store)", getattr(store_cls, name)))
    file_store_module.prepare = timed("append: encode + checks", file_store_module.prepare)  # type: ignore[attr-defined]
    FileCheckpointStore.save = timed("checkpoint save", FileCheckpointStore.save)  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory() as path:
        if args.store == "file":
            es = FileEventStore(os.path.join(path, "store"), banking_serializer(), sync=not args.no_sync)
            checkpoints: Any = FileCheckpointStore(os.path.join(path, "checkpoints.json"))
        else:
            es, checkpoints = InMemoryEventStore(), InMemoryCheckpointStore()
        bank = BankingCommandHandlers(AggregateRepository(es))
        accounts = [f"acc-{i:05d}" for i in range(32)]
        for account in accounts:
            bank.handle(OpenAccount(account, account.upper(), Decimal("1000000")))
        runner = SagaRunner(es, [TransferSaga], bank, checkpoints)
        runner.run_until_idle()
        for k in range(32):  # every account once through the cache, outside the timing
            bank.handle(TransferMoney(f"w{k}", accounts[k], accounts[(k + 1) % 32], Decimal("1")))
        runner.run_until_idle()
        seen = es.last_position()
        spent.clear()
        calls.clear()
        phases: collections.Counter[str] = collections.Counter()
        for k in range(args.n):
            t0 = time.perf_counter()
            source, target = accounts[k % 32], accounts[(k + 1) % 32]
            bank.handle(TransferMoney(f"t{k:07d}", source, target, Decimal("1.00")))
            t1 = time.perf_counter()
            runner.run_once()  # the page with TransferInitiated: the whole saga
            t2 = time.perf_counter()
            runner.run_once()  # the page with the saga's own five events: ignored
            t3 = time.perf_counter()
            for recorded in es.read_all(seen):  # what a subscriber waiting for the end reads
                seen = recorded.position
            t4 = time.perf_counter()
            phases["1 transfer_money"] += t1 - t0
            phases["2 runner page: the saga"] += t2 - t1
            phases["3 runner page: its own events"] += t3 - t2
            phases["4 subscriber"] += t4 - t3
        es.close()

    n = args.n
    total = sum(phases.values())
    out = {
        "n": n,
        "store": args.store,
        "sync": not args.no_sync,
        "us_per_transfer": round(total / n * 1e6, 1),
        "phases_us": {k: round(v / n * 1e6, 1) for k, v in sorted(phases.items())},
        "store_calls_us": {k: round(v / n * 1e6, 1) for k, v in spent.most_common()},
        "store_calls_per_transfer": {k: round(v / n, 2) for k, v in calls.most_common()},
        "python_us": round((total - sum(spent.values())) / n * 1e6, 1),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
