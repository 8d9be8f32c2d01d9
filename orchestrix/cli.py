"""The ``orchestrix`` command: inspect, verify, tail and replay an event store.

This module parses the command line and turns what goes wrong into an exit status; the commands
live beside it: ``inspect``, ``verify``, ``tail`` and ``replay`` in ``_cli_read.py``; ``deadlines``,
``dead-letters`` and ``sagas`` (pending deadlines, parked messages, stuck sagas) in
``_cli_sagas.py``; ``copy`` in ``_cli_copy.py``. Opening a store is ``_cli_open.py``'s; writing
events and progress, ``_cli_format.py``'s.

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
import os
import sys
from collections.abc import Sequence

from orchestrix import _cli_read, _cli_sagas
from orchestrix._cli_format import UsageError
from orchestrix._cli_open import Found
from orchestrix.core.errors import OrchestrixError

__all__ = ["main"]

_DEFAULT_TOP = 10


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
    except Found as exc:
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
    inspect.set_defaults(run=_cli_read.inspect)

    verify = commands.add_parser(
        "verify",
        parents=[store],
        help="check the whole store for damage",
        description="File store: check every record's checksum and position. PostgreSQL: check "
        "that positions increase and every stream's versions run 0, 1, 2... without gaps.",
    )
    verify.set_defaults(run=_cli_read.verify)

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
    tail.set_defaults(run=_cli_read.tail)

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
    replay.set_defaults(run=_cli_read.replay)
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
