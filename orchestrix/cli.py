"""The ``orchestrix`` command: inspect, verify, tail and replay an event store.

``deadlines``, ``dead-letters`` and ``sagas`` (pending deadlines, parked messages, stuck sagas)
live in ``_cli_sagas.py``.

It reads stored events as :class:`~orchestrix.core.messaging.serializer.RawEvent` records (type
name plus JSON), so it works on any store without the user's event classes and never imports a
name found in the data. ``--serializer module:factory`` is the user naming their own serializer
on the command line; events are then decoded into their classes.

With ``--json`` every command writes JSON to stdout: one object per line (NDJSON) for ``tail``
(an event each) and ``replay`` (progress reports, then the result), one object for ``inspect``
and ``verify``. The text form of ``tail`` writes a stream or type name that holds a space, a
quote or a character that does not print as a JSON string, so every line splits unambiguously.

Exit status: 0 success, 1 a problem was found (damage, a missing store or stream, an error from
orchestrix), 2 a usage error. This is the only library module that prints.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrix import _cli_sagas
from orchestrix._cli_format import (
    Progress,
    UsageError,
    dumps,
    event_json,
    event_line,
    name_word,
    payload,
    timestamp,
)
from orchestrix.core.errors import CorruptionError, OrchestrixError
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.messaging.messages import RecordedEvent
from orchestrix.core.messaging.serializer import RawSerializer, Serializer

__all__ = ["main"]

_PG_SCHEMES = ("postgresql://", "postgres://")
_DEFAULT_TOP = 10
_FOLLOW_LINES = 10
"""Events ``tail --follow`` shows before waiting when neither ``-n`` nor ``--after`` says, as ``tail -f``."""


class _Found(Exception):
    """A problem the command found and has described in one line (exit status 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``orchestrix`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage (status 2) or --help (status 0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"orchestrix: error: {exc} (see orchestrix --help)", file=sys.stderr)
        return 2
    except _Found as exc:
        print(f"orchestrix: {exc}", file=sys.stderr)
        return 1
    except OrchestrixError as exc:
        print(f"orchestrix: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("orchestrix: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (``| head``) left; Python would complain again when flushing stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- the command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "store", metavar="STORE", help="a file store directory, or a postgresql:// DSN (postgres extra)"
    )
    store.add_argument(
        "--schema", default="orchestrix", help="PostgreSQL schema of the store (default: orchestrix)"
    )
    store.add_argument(
        "--serializer",
        metavar="MODULE:FACTORY",
        help="your serializer factory, e.g. myapp.events:serializer; events are then decoded into "
        "your classes (default: read them raw, as type name and JSON)",
    )
    store.add_argument(
        "--progress-every",
        type=_non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between progress reports during long reads, on stderr (replay --json: JSON "
        "lines on stdout) (default: 1)",
    )
    store.add_argument(
        "--json",
        action="store_true",
        help="write JSON to stdout: one object per line for tail and replay, one object for "
        "inspect and verify",
    )

    parser = argparse.ArgumentParser(
        prog="orchestrix",
        description="Inspect, verify, tail and replay an orchestrix event store.",
        epilog="Exit status: 0 success, 1 a problem was found, 2 a usage error.",
    )
    from orchestrix import __version__

    parser.add_argument("--version", action="version", version=f"orchestrix {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect",
        parents=[store],
        help="summarize a store, or list one stream's events",
        description="Summarize a store: events, streams, the busiest streams, event types. "
        "With --stream, list that stream's events.",
    )
    inspect.add_argument("--stream", metavar="NAME", help="list this stream's events instead")
    inspect.add_argument(
        "--top", type=_positive_int, default=_DEFAULT_TOP, metavar="N", help="streams to list (default: 10)"
    )
    inspect.set_defaults(run=_inspect)

    verify = commands.add_parser(
        "verify",
        parents=[store],
        help="check the whole store for damage",
        description="File store: check every record's checksum and position. PostgreSQL: check "
        "that positions increase and every stream's versions run 0, 1, 2... without gaps.",
    )
    verify.set_defaults(run=_verify)

    tail = commands.add_parser(
        "tail",
        parents=[store],
        help="print events in global order, one line each",
        description="Print events in global order, one line each: position, stream@version, type, "
        "payload. A stream or type name that holds a space, a double quote or a character that does "
        'not print is written as a JSON string ("my stream"@0). Starts at the first event, unless '
        "-n or --after says otherwise (--follow alone: the last 10).",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--after", type=_non_negative_int, metavar="POS", help="start after this global position"
    )
    start.add_argument(
        "-n",
        "--lines",
        type=_non_negative_int,
        metavar="N",
        help="start N events before the end (events are counted, whatever the positions)",
    )
    tail.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N events")
    tail.add_argument("--follow", "-f", action="store_true", help="keep waiting for new events (Ctrl-C ends)")
    tail.set_defaults(run=_tail)

    replay = commands.add_parser(
        "replay",
        parents=[store],
        help="read a stream or the whole store and report the rate",
        description="Read every event of a stream (or of the store) and report events per second. "
        "With --serializer the events are decoded into your classes, as a real replay does.",
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--stream", metavar="NAME", help="replay this stream")
    which.add_argument("--all", action="store_true", help="replay the whole store in global order")
    replay.set_defaults(run=_replay)
    _cli_sagas.add_commands(commands, store)

    from orchestrix import _cli_copy

    _cli_copy.add_parser(commands, _non_negative_float, _positive_int)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text}")
    return value


# -- opening a store ---------------------------------------------------------------------------


class _Opened:
    """An open store, what kind it is, and how to name it without secrets."""

    def __init__(self, store: Any, kind: str, where: str) -> None:
        self.store = store
        self.kind = kind
        self.where = where
        self.serializer: Serializer = RawSerializer()

    def close(self) -> None:
        self.store.close()


@contextlib.contextmanager
def _open(args: argparse.Namespace, *, writable: bool = False) -> Iterator[_Opened]:
    serializer = _serializer(args.serializer)
    target: str = args.store
    if _is_dsn(target):
        opened = _open_postgres(target, args.schema, serializer)
    else:
        opened = _open_file(target, serializer, writable=writable)
    opened.serializer = serializer
    try:
        yield opened
    finally:
        opened.close()


def _open_file(path: str, serializer: Serializer, *, writable: bool = False) -> _Opened:
    from orchestrix.infrastructure.file import FileEventStore

    # FileEventStore creates a store in a missing or empty directory; an inspecting tool must
    # not, so a path is only opened once it holds a store's STORE marker.
    if os.path.exists(path) and not os.path.isdir(path):
        raise _Found(f"{path}: is a file, not a file store (a store is a directory); nothing was changed")
    if not os.path.isdir(path):
        raise _Found(f"{path}: no such directory, so not a file store (nothing was created)")
    if not FileEventStore.is_store(path):
        raise _Found(f"{path}: not an orchestrix file store (no STORE file); nothing was changed")
    # A command that only reads opens read-only: no writer lock (a live writer is never held
    # up), no repair of a torn tail, no file created or written. Only the commands that store a
    # request (dead-letters retry/discard, sagas retry) open the store as a writer.
    store = FileEventStore(path, serializer, read_only=not writable)
    return _Opened(store, "file", os.path.abspath(path))


def _open_postgres(dsn: str, schema: str, serializer: Serializer) -> _Opened:
    try:
        from orchestrix.infrastructure.postgres import (
            DatabaseConfigurationError,
            DatabaseUnavailableError,
            PostgresEventStore,
            SchemaNotInitializedError,
        )
    except ImportError as exc:
        raise _Found(f"PostgreSQL support is not installed: {exc}") from None  # names the extra
    # The pool logs each failed connection attempt; its cause (no such database, a refused
    # port) is worth one line, not one per retry.
    pool_log = logging.getLogger("psycopg.pool")
    if not any(isinstance(f, _Once) for f in pool_log.filters):
        pool_log.addFilter(_Once())
    # create_schema=False: inspecting a database must never create tables in it. A short
    # retry budget: a tool should report an unreachable server, not wait out an outage.
    # The store's errors carry the server's own reason (no such database, a refused password)
    # and hide the password; the line adds which store, and hints in terms of this command.
    where = _hide_password(dsn)
    try:
        store = PostgresEventStore(
            dsn, serializer, schema=schema, create_schema=False, pool_size=2, retry_timeout=3.0
        )
    except SchemaNotInitializedError:
        raise _Found(
            f"{where}: no orchestrix tables in schema {schema!r}, so no store there (nothing was created); "
            "name the store's schema with --schema"
        ) from None
    except DatabaseConfigurationError as exc:
        raise _Found(f"cannot open {where}: {_scrub(str(exc), dsn)}") from None
    except DatabaseUnavailableError as exc:
        raise _Found(f"cannot reach {where}: {_scrub(str(exc), dsn)}") from None
    except OrchestrixError:
        raise
    except Exception as exc:  # psycopg refusing a DSN: its message may quote the password
        raise _Found(f"cannot use {where}: {_scrub(str(exc), dsn)}") from None
    return _Opened(store, "postgresql", f"{where} (schema {schema})")


def _is_dsn(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database (a URI or libpq ``key=value`` words), not a path."""
    if target.lower().startswith(_PG_SCHEMES):
        return True
    keywords = re.search(r"(^|\s)(host|hostaddr|dbname|user|port)=", target)
    return keywords is not None and not os.path.exists(target)


def _passwords(dsn: str) -> list[str]:
    found = re.findall(r"(?:^|\s)password=(\S+)", dsn)
    found += re.findall(r"^[a-zA-Z]+://[^:/@\s]*:([^@\s]*)@", dsn)
    return [p for p in found if p]


def _scrub(text: str, dsn: str) -> str:
    for password in _passwords(dsn):
        text = text.replace(password, "***")
    return text


class _Once(logging.Filter):
    """Lets each distinct log message through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


def _hide_password(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, fit to print."""
    if not dsn.lower().startswith(_PG_SCHEMES):
        return _scrub(dsn, dsn)  # libpq key=value words
    try:
        parts = urlsplit(dsn)
    except ValueError:  # malformed (an unclosed [IPv6] host, say): hide what looks like one
        return _scrub(dsn, dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _serializer(spec: str | None) -> Serializer:
    if spec is None:
        return RawSerializer()
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"--serializer wants MODULE:FACTORY, not {spec!r}")
    # The console script's sys.path lacks the working directory, where `python -m` has it;
    # a user naming their own module from their project directory expects it to be found.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for name in attribute.split("."):
            target = getattr(target, name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--serializer {spec}: {exc}") from None
    serializer = target
    if callable(target) and not isinstance(target, Serializer):
        try:
            serializer = target()
        except Exception as exc:  # the user's own factory: say what it raised, not where
            raise UsageError(f"--serializer {spec}: calling it raised {type(exc).__name__}: {exc}") from None
    if not isinstance(serializer, Serializer):
        raise UsageError(f"--serializer {spec} gave {type(serializer).__name__}, not a Serializer")
    return serializer


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


# -- the commands ------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    with _open(args) as opened:
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


def _inspect_stream(opened: _Opened, stream: str, as_json: bool) -> int:
    serializer = opened.serializer
    events = list(opened.store.read_stream(stream))
    if not events:
        raise _Found(f"stream {stream!r} has no events")
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


def _verify(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}
    try:
        with _open(args) as opened:
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


def _tail(args: argparse.Namespace) -> int:
    with _open(args) as opened:
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
    return 0 if lines is None else _start_of_last(store, lines)


def _start_of_last(store: EventStore, n: int) -> int:
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


def _replay(args: argparse.Namespace) -> int:
    with _open(args) as opened:
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
        raise _Found(f"{what} has no events")
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
