"""The ``orchestrix`` commands that read a store: ``inspect``, ``verify``, ``tail``, ``replay``.

Part of the command line (cli.py wires these in and handles errors and exit codes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from orchestrix._cli_format import Progress, dumps, event_json, event_line, name_word, payload, timestamp
from orchestrix._cli_open import Found, Opened, open_store
from orchestrix.core.errors import CorruptionError
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.messaging.messages import RecordedEvent

__all__: list[str] = []

_FOLLOW_LINES = 10
"""Events ``tail --follow`` shows before waiting when neither ``-n`` nor ``--after`` says, as ``tail -f``."""


def _progress(args: argparse.Namespace, what: str, target: int, *, json_lines: bool = False) -> Progress:
    """Progress toward position ``target``: reports on stderr as text, or with ``json_lines``
    on stdout as JSON lines."""
    if json_lines:
        return Progress(what, args.progress_every, target, lambda r: _print_json(r.json()))
    return Progress(what, args.progress_every, target, lambda r: print(r.text(), file=sys.stderr, flush=True))


def _print_json(value: Any) -> None:
    print(dumps(value), flush=True)


def _position(recorded: RecordedEvent) -> int:
    """How far into the global order an event is: the target of a whole-store read is a position."""
    return recorded.position


def inspect(args: argparse.Namespace) -> int:
    with open_store(args) as opened:
        if args.stream is not None:
            return _inspect_stream(opened, args.stream, args.json)
        store: EventStore = opened.store
        last = store.last_position()
        per_stream: Counter[str] = Counter()
        per_type: Counter[str] = Counter()
        first = latest = None
        progress = _progress(args, "inspect", last)
        for recorded in progress.counted(store.read_all(0, None), _position):
            per_stream[recorded.stream] += 1
            per_type[recorded.event_type] += 1
            if first is None:
                first = recorded.recorded_at
            latest = recorded.recorded_at
        total = per_type.total()
        top = per_stream.most_common(args.top)
        if args.json:
            _print_json(
                {
                    "store": {"kind": opened.kind, "location": opened.where},
                    "count": total,
                    "last_position": last,
                    "streams": len(per_stream),
                    "first_recorded_at": None if first is None else timestamp(first),
                    "last_recorded_at": None if latest is None else timestamp(latest),
                    "top_streams": [{"stream": name, "count": n} for name, n in top],
                    "event_types": [{"type": name, "count": n} for name, n in per_type.most_common()],
                }
            )
            return 0
        print(f"store:         {opened.kind} {opened.where}")
        print(f"events:        {total:,} (last position {last:,})")
        print(f"streams:       {len(per_stream):,}")
        if first is not None and latest is not None:
            print(f"recorded:      {timestamp(first)} .. {timestamp(latest)}")
        if per_stream:
            print(f"top streams:   ({len(top)} of {len(per_stream):,}, by events)")
            _counts(top)
            print("event types:")
            _counts(per_type.most_common())
    return 0


def _counts(rows: Iterable[tuple[str, int]]) -> None:
    rows = list(rows)
    width = max(len(f"{n:,}") for _, n in rows)
    for name, n in rows:
        print(f"  {n:>{width},}  {name_word(name)}")


def _inspect_stream(opened: Opened, stream: str, as_json: bool) -> int:
    serializer = opened.serializer
    events = list(opened.store.read_stream(stream))
    if not events:
        raise Found(f"stream {stream!r} has no events")
    if as_json:
        _print_json(
            {
                "stream": stream,
                "count": len(events),
                "version": events[-1].version,
                "events": [event_json(e, serializer) for e in events],
            }
        )
        return 0
    print(f"stream {stream!r}: {len(events):,} events, version {events[-1].version}")
    for e in events:
        when = timestamp(e.recorded_at)
        print(f"  {e.version:>4}  {e.position:>8}  {when}  {e.event_type}  {payload(e.event)}")
    return 0


def verify(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}
    try:
        with open_store(args) as opened:
            result["store"] = {"kind": opened.kind, "location": opened.where}
            if opened.kind == "file":
                count = _verify_file(opened.store, args)
                checked = ["checksums", "positions"]
                problem = None
            else:
                progress = _progress(args, "verify", opened.store.last_position())
                events = progress.counted(opened.store.read_all(0, None), _position)
                problem, count = _check_order(events)
                checked = ["positions", "stream versions"]
    except CorruptionError as exc:  # opening can find damage too, beyond what the index covers
        result.update(ok=False, problem=str(exc), file=exc.path, offset=exc.offset)
        return _verified(args, result, f"CORRUPT: {exc}")
    if problem is not None:
        result.update(ok=False, problem=problem, count=count)
        return _verified(args, result, f"CORRUPT: {problem}")
    result.update(ok=True, count=count, checked=checked)
    return _verified(args, result, f"OK: {count:,} events, {' and '.join(checked)} verified")


def _verified(args: argparse.Namespace, result: dict[str, Any], text: str) -> int:
    if args.json:
        _print_json(result)
    else:
        print(text)
    return 0 if result["ok"] else 1


def _verify_file(store: Any, args: argparse.Namespace) -> int:
    """``FileEventStore.verify()``, reporting how far it got (positions are dense: events checked
    measure it)."""
    progress = _progress(args, "verify", store.last_position())

    def checked(events: int, total: int) -> None:
        progress.tick(events, events)

    count: int = store.verify(progress=checked)
    return count


def _check_order(events: Iterable[RecordedEvent]) -> tuple[str | None, int]:
    """The first ordering problem among ``events`` (None if there is none), and how many were read."""
    next_version: dict[str, int] = {}
    last = 0
    count = 0
    for e in events:
        count += 1
        if e.position <= last:
            return f"position {e.position} ({e.stream}@{e.version}) follows position {last}", count
        last = e.position
        expected = next_version.get(e.stream, 0)
        if e.version != expected:
            return (
                f"stream {e.stream!r}: version {e.version} at position {e.position}, expected {expected}",
                count,
            )
        next_version[e.stream] = expected + 1
    return None, count


def tail(args: argparse.Namespace) -> int:
    with open_store(args) as opened:
        store: EventStore = opened.store
        after, remaining = _tail_start(store, args), args.limit
        try:
            while True:
                for recorded in store.read_all(after, remaining):
                    if args.json:
                        print(dumps(event_json(recorded, opened.serializer)))
                    else:
                        print(event_line(recorded))
                    after = recorded.position
                    if remaining is not None:
                        remaining -= 1
                sys.stdout.flush()
                if not args.follow or remaining == 0:
                    return 0
                store.wait_for_events(after, 1.0)
        except KeyboardInterrupt:
            return 0  # Ctrl-C is how --follow ends


def _tail_start(store: EventStore, args: argparse.Namespace) -> int:
    """The position ``tail`` starts after: ``--after``, ``-n`` events before the end, or the start."""
    if args.after is not None:
        return int(args.after)
    lines = args.lines if args.lines is not None else _FOLLOW_LINES if args.follow else None
    return 0 if lines is None else start_of_last(store, lines)


def start_of_last(store: EventStore, n: int) -> int:
    """The position after which the store's last ``n`` events lie.

    Positions need not be dense (PostgreSQL's are a transaction id times 2**20), so events are
    counted, in a window before the end that grows until it holds ``n`` of them: by the density
    it found (at most 16 times, so a dense stretch is not overshot far), so a few reads of
    about ``n`` events each find the start, not a read of the whole store.
    """
    last = store.last_position()
    if n == 0:
        return last
    span = n
    while True:
        after = max(0, last - span)
        window: deque[int] = deque(maxlen=n + 1)
        for recorded in store.read_all(after, None):
            if recorded.position > last:
                break  # appended since we looked: after the start, whatever it is
            window.append(recorded.position)
        if len(window) > n:
            return window[0]
        if len(window) == n or after == 0:
            return after
        span *= min(16, max(2, -(-2 * n // max(len(window), 1))))


def _versions_read(recorded: RecordedEvent) -> int:
    """How far into its stream an event is: the target of a stream's replay is its event count."""
    return recorded.version + 1


def replay(args: argparse.Namespace) -> int:
    with open_store(args) as opened:
        store: EventStore = opened.store
        if args.all:
            what, events = "the whole store", store.read_all(0, None)
            target, reached = store.last_position(), _position
        else:
            what, events = f"stream {args.stream!r}", store.read_stream(args.stream)
            target, reached = store.stream_version(args.stream) + 1, _versions_read
        mode = "decoded" if args.serializer else "raw JSON"
        started = time.perf_counter()
        count = 0
        progress = _progress(args, "replay", target, json_lines=args.json)
        for _ in progress.counted(events, reached):
            count += 1
        seconds = time.perf_counter() - started
    if count == 0:
        raise Found(f"{what} has no events")
    rate = count / max(seconds, 1e-9)
    if args.json:
        _print_json(
            {
                "kind": "result",
                "stream": None if args.all else args.stream,
                "count": count,
                "decoded": bool(args.serializer),
                "seconds": round(seconds, 6),
                "rate": round(rate, 1),
            }
        )
        return 0
    print(f"replayed {count:,} events of {what} ({mode}) in {seconds:.3f} s: {rate:,.0f} events/s")
    return 0
