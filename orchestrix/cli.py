"""The ``orchestrix`` command: inspect, verify, tail and replay an event store.

It reads stored events as :class:`~orchestrix.core.messaging.serializer.RawEvent` records (type
name plus JSON), so it works on any store without the user's event classes and never imports a
name found in the data. ``--serializer module:factory`` is the user naming their own serializer
on the command line; events are then decoded into their classes.

Exit status: 0 success, 1 a problem was found (damage, a missing store or stream, an error from
orchestrix), 2 a usage error. This is the only library module that prints.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from orchestrix.core.errors import CorruptionError, OrchestrixError
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.messaging.messages import RecordedEvent
from orchestrix.core.messaging.serializer import RawEvent, RawSerializer, Serializer

__all__ = ["main"]

PG_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_TOP = 10
PROGRESS_CHECK = 1024
"""Events between two looks at the clock: a clock read per event would show in replay rates."""


class UsageError(Exception):
    """A command line that names something unusable (exit status 2)."""


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
        help="seconds between progress lines on stderr during long reads (default: 1)",
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
        "--top", type=_positive_int, default=DEFAULT_TOP, metavar="N", help="streams to list (default: 10)"
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
        description="Print events in global order: position, stream@version, type, payload.",
    )
    tail.add_argument(
        "--after", type=_non_negative_int, default=0, metavar="POS", help="start after this position"
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

    def close(self) -> None:
        self.store.close()


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[_Opened]:
    serializer = _serializer(args.serializer)
    target: str = args.store
    if _is_dsn(target):
        opened = _open_postgres(target, args.schema, serializer)
    else:
        opened = _open_file(target, serializer)
    try:
        yield opened
    finally:
        opened.close()


def _open_file(path: str, serializer: Serializer) -> _Opened:
    from orchestrix.infrastructure.file import FileEventStore

    # FileEventStore creates a store in a missing or empty directory; an inspecting tool must
    # not, so a path is only opened once it holds a store's STORE marker.
    if not os.path.isdir(path):
        raise _Found(f"{path}: no such directory, so not a file store (nothing was created)")
    if not FileEventStore.is_store(path):
        raise _Found(f"{path}: not an orchestrix file store (no STORE file); nothing was changed")
    return _Opened(FileEventStore(path, serializer), "file", os.path.abspath(path))


def _open_postgres(dsn: str, schema: str, serializer: Serializer) -> _Opened:
    try:
        from orchestrix.infrastructure.postgres import (
            DatabaseConfigurationError,
            DatabaseUnavailableError,
            PostgresEventStore,
            SchemaNotInitializedError,
        )
    except ImportError as exc:
        raise _Found(
            f"PostgreSQL support is not installed ({exc}); pip install 'orchestrix-es[postgres]'"
        ) from None
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
    if target.lower().startswith(PG_SCHEMES):
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
    if not dsn.lower().startswith(PG_SCHEMES):
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


# -- printing events ---------------------------------------------------------------------------


def _payload(event: Any) -> str:
    if isinstance(event, RawEvent):
        return json.dumps(dict(event.data), separators=(",", ":"), ensure_ascii=False)
    return repr(event)


def _line(recorded: RecordedEvent) -> str:
    r = recorded
    return f"{r.position} {r.stream}@{r.version} {r.event_type} {_payload(r.event)}"


class _Progress:
    """A line on stderr every ``interval`` seconds while a long read goes on."""

    def __init__(self, what: str, interval: float, out: TextIO | None = None) -> None:
        self._what = what
        self._interval = interval
        self._out = out if out is not None else sys.stderr
        self._started = self._last = time.monotonic()

    def counted(self, events: Iterable[RecordedEvent]) -> Iterator[RecordedEvent]:
        """Yield ``events`` unchanged, reporting progress as they pass."""
        for n, event in enumerate(events, 1):
            yield event
            if n % PROGRESS_CHECK == 0:
                now = time.monotonic()
                if now - self._last >= self._interval:
                    self._last = now
                    rate = n / max(now - self._started, 1e-9)
                    print(f"{self._what}: {n:,} events read ({rate:,.0f}/s)", file=self._out, flush=True)


# -- the commands ------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    with _open(args) as opened:
        if args.stream is not None:
            return _inspect_stream(opened.store, args.stream)
        store: EventStore = opened.store
        last = store.last_position()
        per_stream: Counter[str] = Counter()
        per_type: Counter[str] = Counter()
        first = latest = None
        for recorded in _Progress("inspect", args.progress_every).counted(store.read_all()):
            per_stream[recorded.stream] += 1
            per_type[recorded.event_type] += 1
            if first is None:
                first = recorded.recorded_at
            latest = recorded.recorded_at
        total = per_type.total()
        print(f"store:         {opened.kind} {opened.where}")
        print(f"events:        {total:,} (last position {last:,})")
        print(f"streams:       {len(per_stream):,}")
        if first is not None and latest is not None:
            print(f"recorded:      {_time(first)} .. {_time(latest)}")
        if per_stream:
            shown = per_stream.most_common(args.top)
            print(f"top streams:   ({len(shown)} of {len(per_stream):,}, by events)")
            _counts(shown)
            print("event types:")
            _counts(per_type.most_common())
    return 0


def _counts(rows: Iterable[tuple[str, int]]) -> None:
    rows = list(rows)
    width = max(len(f"{n:,}") for _, n in rows)
    for name, n in rows:
        print(f"  {n:>{width},}  {name}")


def _time(moment: Any) -> str:
    return str(moment.isoformat(timespec="milliseconds"))


def _inspect_stream(store: EventStore, stream: str) -> int:
    events = list(store.read_stream(stream))
    if not events:
        raise _Found(f"stream {stream!r} has no events")
    print(f"stream {stream!r}: {len(events):,} events, version {events[-1].version}")
    for e in events:
        print(
            f"  {e.version:>4}  {e.position:>8}  {_time(e.recorded_at)}  {e.event_type}  {_payload(e.event)}"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        with _open(args) as opened:
            if opened.kind == "file":
                count = opened.store.verify()
                print(f"OK: {count:,} events, checksums and positions verified")
                return 0
            problem, count = _check_order(
                _Progress("verify", args.progress_every).counted(opened.store.read_all())
            )
    except CorruptionError as exc:  # opening can find damage too, beyond what the index covers
        print(f"CORRUPT: {exc}")
        return 1
    if problem is not None:
        print(f"CORRUPT: {problem}")
        return 1
    print(f"OK: {count:,} events, positions and stream versions verified")
    return 0


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
        after, remaining = args.after, args.limit
        try:
            while True:
                for recorded in store.read_all(after, remaining):
                    print(_line(recorded))
                    after = recorded.position
                    if remaining is not None:
                        remaining -= 1
                sys.stdout.flush()
                if not args.follow or remaining == 0:
                    return 0
                store.wait_for_events(after, 1.0)
        except KeyboardInterrupt:
            return 0  # Ctrl-C is how --follow ends


def _replay(args: argparse.Namespace) -> int:
    with _open(args) as opened:
        store: EventStore = opened.store
        if args.all:
            what, events = "the whole store", store.read_all()
        else:
            what, events = f"stream {args.stream!r}", store.read_stream(args.stream)
        mode = "decoded" if args.serializer else "raw JSON"
        started = time.perf_counter()
        count = 0
        for _ in _Progress("replay", args.progress_every).counted(events):
            count += 1
        seconds = time.perf_counter() - started
    if count == 0:
        raise _Found(f"{what} has no events")
    rate = count / max(seconds, 1e-9)
    print(f"replayed {count:,} events of {what} ({mode}) in {seconds:.3f} s: {rate:,.0f} events/s")
    return 0
