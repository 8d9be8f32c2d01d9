"""``orchestrix copy SOURCE TARGET``: copy a store (file directory or PostgreSQL DSN) into another.

The engine is :mod:`orchestrix.core.eventsourcing.copy`; this module opens the two stores,
reports progress on stderr, verifies the copy and prints the summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from orchestrix._cli_format import UsageError, dumps
from orchestrix._cli_open import (
    Found,
    Opened,
    hide_password,
    is_dsn,
    open_file,
    open_postgres,
    scrub,
    serializer_from,
)
from orchestrix.core.eventsourcing.copy import (
    PassThroughSerializer,
    copy_store,
    tally,
)
from orchestrix.core.execution.progress import Progress as ProgressReport
from orchestrix.core.execution.progress import ProgressReporter


def add_parser(commands: Any, non_negative_float: Any, positive_int: Any) -> None:
    """Add the ``copy`` subcommand to ``commands`` (the ``orchestrix`` subparsers)."""
    copy = commands.add_parser(
        "copy",
        help="copy every event of a store into another (file store <-> PostgreSQL), resumably",
        description="Copy every event of SOURCE into TARGET, keeping stream names, versions, event "
        "ids, each event's recorded_at and the global order, then verify the copy. Stopped (Ctrl-C, "
        "a kill), it resumes where it stopped when run again, writing no event twice.",
    )
    copy.add_argument("source", metavar="SOURCE", help="a file store directory, or a postgresql:// DSN")
    copy.add_argument(
        "target", metavar="TARGET", help="a file store directory (created if missing), or a postgresql:// DSN"
    )
    copy.add_argument(
        "--schema", default="orchestrix", help="PostgreSQL schema of the source (default: orchestrix)"
    )
    copy.add_argument(
        "--target-schema",
        default=None,
        help="PostgreSQL schema of the target (default: --schema); created if missing",
    )
    copy.add_argument(
        "--upcast",
        action="store_true",
        help="decode each event through --serializer and encode it again, writing it as its class "
        "encodes now (its newest schema); without it, events are copied as stored",
    )
    copy.add_argument("--serializer", metavar="MODULE:FACTORY", help="your serializer factory (for --upcast)")
    copy.add_argument(
        "--page", type=positive_int, default=1000, help="events per atomic page (default: 1000)"
    )
    copy.add_argument(
        "--progress-every",
        type=non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between progress reports on stderr (default: 1)",
    )
    copy.add_argument("--json", action="store_true", help="write the summary to stdout as one JSON object")
    copy.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.upcast and args.serializer is None:
        raise UsageError("--upcast needs --serializer: events are decoded and encoded again through it")
    if args.serializer is not None and not args.upcast:
        raise UsageError("--serializer is only used with --upcast (a plain copy keeps the stored JSON)")
    decode_with = serializer_from(args.serializer) if args.upcast else None
    passthrough = PassThroughSerializer()
    source = _open_source(args, decode_with or passthrough)
    try:
        target = _open_target(args.target, args.target_schema or args.schema, passthrough)
        try:
            return _run(args, source, target, decode_with)
        finally:
            target.close()
    finally:
        source.close()


def _open_source(args: argparse.Namespace, serializer: Any) -> Any:
    if is_dsn(args.source):
        return open_postgres(args.source, args.schema, serializer)
    return open_file(args.source, serializer)


def _open_target(where: str, schema: str, serializer: Any) -> Any:
    if is_dsn(where):
        from orchestrix.infrastructure.postgres import PostgresEventStore

        shown = hide_password(where)
        try:
            store = PostgresEventStore(
                where, serializer, schema=schema, create_schema=True, retry_timeout=3.0
            )
        except Exception as exc:
            raise Found(f"cannot open {shown}: {scrub(str(exc), where)}") from None
        return Opened(store, "postgresql", f"{shown} (schema {schema})")
    from orchestrix.infrastructure.file import FileEventStore

    if os.path.exists(where) and not os.path.isdir(where):
        raise Found(f"{where}: is a file, not a file store directory; nothing was copied")
    if os.path.isdir(where) and os.listdir(where) and not FileEventStore.is_store(where):
        raise Found(f"{where}: a directory that is not an orchestrix file store; nothing was copied")
    return Opened(FileEventStore(where, serializer), "file", os.path.abspath(where))


def _run(args: argparse.Namespace, source: Any, target: Any, decode_with: Any) -> int:
    reporter: ProgressReporter[ProgressReport] | None = None

    def progress(start: int, position: int, copied: int, last: int) -> None:
        nonlocal reporter
        if reporter is None:  # made at the first page: a resumed run's way starts where it resumed
            reporter = ProgressReporter(
                "copy", _report, record=ProgressReport, start=start, target=last, every=args.progress_every
            )
        reporter.reached(position, copied)

    result = copy_store(
        source.store, target.store, decode_with=decode_with, page=args.page, progress=progress
    )
    if reporter is not None:
        reporter.finish(result.source_position, result.copied)
    # Verification reads both stores whole: the source as the copy wrote it (re-encoded with
    # --upcast), the target as stored.
    check = decode_with or PassThroughSerializer()
    expected = tally(source.store.read_all(), check, times=result.kept_times)
    found = tally(target.store.read_all(), PassThroughSerializer(), times=result.kept_times)
    differences = expected.differences(found)
    summary = {
        "kind": "copy",
        "source": source.where,
        "target": target.where,
        "copied": result.copied,
        "resumed_after": result.skipped,
        "events": found.events,
        "streams": len(found.versions),
        "seconds": round(result.seconds, 3),
        "rate": round(result.copied / result.seconds, 1) if result.seconds > 0 else None,
        "upcast": bool(args.upcast),
        "verified": not differences,
        "differences": differences,
        "checksum": found.checksum,
        "kept_times": result.kept_times,
    }
    if args.json:
        print(dumps(summary), flush=True)
    else:
        resumed = f" (resumed after {result.skipped:,} copied before)" if result.skipped else ""
        print(
            f"copied {result.copied:,} events{resumed} from {source.where} to {target.where} "
            f"in {result.seconds:.1f}s"
        )
        if not differences:
            print(
                f"verified: {found.events:,} events, {len(found.versions):,} streams at the same versions, "
                f"the same event ids and times, checksum {found.checksum[:16]}",
            )
    if differences:
        raise Found("verification failed: " + "; ".join(differences))
    return 0


def _report(record: ProgressReport) -> None:
    print(record.text().replace("events read", "events copied"), file=sys.stderr, flush=True)
